"""Segments of a simulation with events on torch: the batched Rosenbrock method (each
member its own step size, its own start and stop time) with root finding of the
trigger atoms inside the solver.

After each accepted step, every member's atoms are evaluated at the step's end; a member
where one's relation no longer has the value of its side (``kinabs._events``) finds the first crossing inside the step by bisection on the step's cubic Hermite
interpolant, then redoes the step from its start to that time, so the state at the
event has the solver's accuracy, not the interpolant's. Steps end at the save times (no
dense output is needed for the saves) and just before the times where the vector field
jumps (``Generated.time_breaks``), as in the solver without events.

Every ``SolverOptions.method`` runs the Rosenbrock method here (RODAS5, or the tableau of
a ``Rosenbrock(...)`` given as the method): one step size per member, which an event at
its own time needs.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from kinabs._events import SegmentResult
from kinabs.backends.torch._lowered import lowered
from kinabs.backends.torch._ops import TorchOps
from kinabs.backends.torch._simulate import _stage_functions
from kinabs.backends.torch._solvers import Rosenbrock
from kinabs.backends.torch._solvers.rosenbrock import (
    _attempt,
    _coefficients,
    _initial_step,
    _rms,
    next_step,
    single_threaded,
)
from kinabs.backends.torch._solvers.tableaus import RODAS5

__all__ = ["event_segment"]

#: Bisection steps on a step's interpolant that isolate the first atom to cross.
BISECTIONS = 10
#: Regula-falsi steps on the solver's own steps after the bisection.
REFINEMENTS = 6


def _atoms(system):
    fns = system._cache.get("torch-events")
    if fns is None:
        fns = system.events.bind(TorchOps())
        system._cache["torch-events"] = fns
    return fns[0]


class _Stateless:
    """A system without states as :func:`_stage_functions` sees it: one state, zero
    derivative."""

    def __init__(self, low):
        self.step, self.dfdt = None, None
        gen = low.fns.generated

        class _Fns:
            generated = gen

            @staticmethod
            def rhs(t, y, k):
                return torch.zeros_like(y)

        self.fns = _Fns()

    def jac(self, t, y, k):
        return torch.zeros(*y.shape, y.shape[-1], dtype=y.dtype)


def _hermite(theta, h, y0, y1, f0, f1):
    """The cubic Hermite interpolant of a step at ``theta`` (B,) in [0, 1]."""
    th = theta[:, None]
    hh = h[:, None]
    return ((1 - th) * y0 + th * y1
            + th * (th - 1) * ((1 - 2 * th) * (y1 - y0) + (th - 1) * hh * f0 + th * hh * f1))


def event_segment(system, times, t_start, t_stop, y, k, sides, solver) -> SegmentResult:
    """``Backend.event_segment`` on torch (see :class:`kinabs.Backend`)."""
    low = lowered(system)
    atoms = _atoms(system)
    tab = solver.method.tableau if isinstance(solver.method, Rosenbrock) else RODAS5
    with torch.no_grad():
        y0 = torch.as_tensor(np.asarray(y, dtype=np.float64))
        kk = torch.as_tensor(np.asarray(k, dtype=np.float64))
        sd = torch.as_tensor(np.asarray(sides, dtype=np.float64))
        with single_threaded(y0):
            return _segment(low, atoms, tab, np.asarray(times, dtype=np.float64),
                            np.asarray(t_start, dtype=np.float64),
                            np.asarray(t_stop, dtype=np.float64), y0, kk, sd, solver,
                            system.events.atom_kinds)


def _flips(kinds):
    """``flipped(g, sides)``: where each atom's relation at ``g`` differs from the value
    its side gives (at ``g == 0`` the relation decides: ``>=`` holds, ``>`` does not)."""
    strict = torch.as_tensor([kind in (">", "<") for kind in kinds])
    greater = torch.as_tensor([kind in (">", ">=") for kind in kinds])
    discrete = torch.as_tensor([kind in ("==", "!=") for kind in kinds])

    def flipped(g, sides):
        holds = torch.where(greater, torch.where(strict, g > 0, g >= 0),
                            torch.where(strict, g < 0, g <= 0))
        # == and != never cross between events (kinabs._lowering.events.DISCRETE)
        holds = torch.where(discrete, sides > 0, holds)
        was = (sides > 0) == (greater | discrete)
        return holds != was

    return flipped


def _segment(low, atoms, tab, ts, t_start, t_stop, y, k, sides, opts, kinds) -> SegmentResult:
    if y.shape[1] == 0:
        # no state (events on time alone): integrate one dummy state that stays 0, so the
        # solver still steps and finds the crossings
        seg = _segment(_Stateless(low), lambda t, yy, kk: atoms(t, yy[..., :0], kk), tab, ts,
                       t_start, t_stop, torch.zeros(y.shape[0], 1, dtype=y.dtype), k,
                       sides, opts, kinds)
        return SegmentResult(ys=seg.ys[..., :0], t_end=seg.t_end, y_end=seg.y_end[:, :0],
                             fired=seg.fired, status=seg.status, steps=seg.steps)
    b, n_s = y.shape
    n_t = ts.size
    rhs, jac, dfdt, rhs_jac = _stage_functions(low, k)
    coef = _coefficients(tab, y)
    rtol, atol = opts.rtol, opts.atol
    flipped = _flips(kinds)
    t = t_start.copy()
    ys = np.full((b, n_t, n_s), np.nan)
    status = np.zeros(b, dtype=np.int64)
    steps = np.zeros(b, dtype=np.int64)
    attempts = np.zeros(b, dtype=np.int64)
    fired = np.full(b, -1, dtype=np.int64)
    done = ~(t_stop > t_start)
    nxt = np.searchsorted(ts, t_start, side="left")
    brk = np.asarray([*sorted(low.fns.generated.time_breaks), math.inf])
    h = (np.full(b, float(opts.dt0)) if opts.dt0 else
         _initial_step(rhs, t, y, k, rtol, atol, tab.order, np.where(done, 1.0, t_stop - t)))
    expo = -1.0 / (tab.error_order + 1)

    def signed(tt, yy, rows):
        """Per atom (R, A): ``-side * g``, positive once it has left its side."""
        tv = torch.as_tensor(tt, dtype=y.dtype)
        r = torch.as_tensor(rows)
        return -sides[r] * atoms(tv, yy, k[r])

    def cond(tt, yy, rows):
        """Per atom (R, A): whether it crossed, i.e. its relation now differs from its
        side's where it did not at the segment's last step end (so a restart at a root
        where the relation is a rounding error off does not stop at once)."""
        tv = torch.as_tensor(tt, dtype=y.dtype)
        r = torch.as_tensor(rows)
        return flipped(atoms(tv, yy, k[r]), sides[r]) & ~before[r]

    before = (flipped(atoms(torch.as_tensor(t, dtype=y.dtype), y, k), sides)
              if sides.shape[1] else None)
    while True:
        # save what each member has reached (a save time equal to its time)
        for m in np.flatnonzero(~done & (status == 0)):
            while nxt[m] < n_t and ts[nxt[m]] <= t[m]:
                ys[m, nxt[m]] = y[m].numpy()
                nxt[m] += 1
        active = ~done & (status == 0)
        if not active.any():
            break
        target = np.where(nxt < n_t, ts[np.minimum(nxt, n_t - 1)], math.inf)
        target = np.minimum(target, t_stop)
        nb = brk[np.minimum(np.searchsorted(brk, t, side="right"), brk.size - 1)]
        to_break = (nb > t) & (nb <= target)
        target = np.where(to_break, np.nextafter(nb, -np.inf), target)
        h_try = np.where(active, np.minimum(h, target - t), 1.0)
        clipped = active & (h >= target - t)
        th = torch.as_tensor(t, dtype=y.dtype)
        hh = torch.as_tensor(h_try, dtype=y.dtype)
        y_new, err = _attempt(tab, coef, rhs, jac, dfdt, th, y, k, hh, rhs_jac)
        sc = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        e = _rms(err / sc).numpy()
        finite = np.isfinite(e)
        accept = active & finite & (e <= 1.0)
        attempts += active
        t_new = np.where(clipped, np.where(to_break, np.nextafter(nb, np.inf), target),
                         t + h_try)
        if accept.any():
            rows = np.flatnonzero(accept)
            c1 = cond(t_new[rows], y_new[rows], rows) if sides.shape[1] else None
            crossed = np.zeros(b, dtype=bool)
            if c1 is not None:
                crossed[rows] = c1.any(dim=-1).numpy()
            if crossed.any():
                y_new = _to_crossing(y, y_new, t, t_new, crossed, cond, signed, rhs, k,
                                     tab, coef, jac, dfdt, rhs_jac, fired)
            if c1 is not None:
                r = torch.as_tensor(rows)
                before[r] = flipped(atoms(torch.as_tensor(t_new[rows], dtype=y.dtype),
                                          y_new[r], k[r]), sides[r])
            mask = torch.as_tensor(accept)
            y = torch.where(mask[:, None], y_new, y)
            t = np.where(accept, t_new, t)
            steps += accept
            done |= crossed | (accept & (t >= t_stop))
        h, too_small = next_step(h, h_try, e, expo, active, accept, clipped, t)
        status = np.where(too_small, np.where(~finite, 2, 3), status)
        status = np.where(active & (status == 0) & (attempts >= opts.max_steps), 1, status)
    t_end = t
    return SegmentResult(ys=ys, t_end=t_end, y_end=y.numpy(), fired=fired, status=status,
                         steps=steps)


def _illinois(f, a, b, fa, fb, iterations, tol):
    """Illinois regula falsi for the roots of ``f`` (numpy (R,) -> (R,)) in the brackets
    ``[a, b]`` with ``fa < 0 <= fb`` (R,); returns the right ends (where ``f >= 0``)."""
    side = np.zeros(a.shape)
    last = np.full(a.shape, np.nan)
    for _ in range(iterations):
        with np.errstate(divide="ignore", invalid="ignore"):
            c = np.where(fb != fa, b - fb * (b - a) / (fb - fa), 0.5 * (a + b))
        c = np.where((c > a) & (c < b), c, 0.5 * (a + b))
        # converged: the bracket, or the trial point's move, below the tolerance
        small = tol * np.maximum(np.abs(b), 1.0)
        if np.all((b - a <= small) | (np.abs(c - last) <= small)):
            break
        last = c
        fc = f(c)
        right = fc >= 0
        b, fb = np.where(right, c, b), np.where(right, fc, fb)
        a, fa = np.where(right, a, c), np.where(right, fa, fc)
        fa = np.where(right & (side > 0), 0.5 * fa, fa)  # an end kept twice: halve it
        fb = np.where(~right & (side < 0), 0.5 * fb, fb)
        side = np.where(right, 1.0, -1.0)
    return b


def _to_crossing(y, y_new, t, t_new, crossed, cond, signed, rhs, k, tab, coef, jac, dfdt,
                 rhs_jac, fired):
    """For the ``crossed`` members: the first crossing in the step. A few bisections on
    the step's Hermite interpolant bracket the first atom to cross; regula falsi finds
    its root on the interpolant, then again with the step itself redone to each trial
    time, so that the crossing has the solver's accuracy. ``t_new`` and ``fired`` are
    updated in place; the states at the crossings are returned in ``y_new``'s rows."""
    rows = np.flatnonzero(crossed)
    idx = torch.as_tensor(rows)
    ta, tb = t[rows], t_new[rows]
    span = tb - ta
    h = torch.as_tensor(span, dtype=y.dtype)
    ya, yb, kr = y[idx], y_new[idx], k[idx]
    fa = rhs(torch.as_tensor(ta, dtype=y.dtype), ya, kr)
    fb = rhs(torch.as_tensor(tb, dtype=y.dtype), yb, kr)

    def interp(theta):
        return _hermite(torch.as_tensor(theta, dtype=y.dtype), h, ya, yb, fa, fb)

    lo, hi = np.zeros(rows.size), np.ones(rows.size)
    for _ in range(BISECTIONS):
        mid = 0.5 * (lo + hi)
        up = cond(ta + mid * span, interp(mid), rows).any(-1).numpy()
        hi, lo = np.where(up, mid, hi), np.where(up, lo, mid)
    atom = torch.argmax(cond(ta + hi * span, interp(hi), rows).to(torch.int8), -1)
    fired[rows] = atom.numpy()
    pick = atom[:, None]

    def value(tc, yc):
        return signed(tc, yc, rows).gather(1, pick)[:, 0].numpy()

    def on_interp(theta):
        return value(ta + theta * span, interp(theta))

    theta = _illinois(on_interp, lo, hi, np.minimum(on_interp(lo), -1e-300),
                      np.maximum(on_interp(hi), 0.0), 40, 1e-15)
    th = torch.as_tensor(ta, dtype=y.dtype)

    def step_to(tc):
        # a crossing at the step's start (a root exactly at a save time) is its state
        moved = tc > ta
        hc = torch.as_tensor(np.where(moved, tc - ta, 1.0), dtype=y.dtype)
        yc, _ = _attempt(tab, coef, rhs, jac, dfdt, th, ya, kr, hc, rhs_jac)
        return torch.where(torch.as_tensor(moved)[:, None], yc, ya)

    def on_steps(tc):
        return value(tc, step_to(tc))

    # the interpolant's root, bracketed again by the solver's own states, refined
    guess = ta + theta * span
    s_g = on_steps(guess)
    ok = s_g >= 0
    a, b = np.where(ok, ta, guess), np.where(ok, guess, tb)
    f_a = np.minimum(np.where(ok, value(ta, ya), s_g), -1e-300)
    f_b = np.maximum(np.where(ok, s_g, value(tb, yb)), 0.0)
    t_c = _illinois(on_steps, a, b, f_a, f_b, REFINEMENTS, 1e-13)
    t_new[rows] = t_c
    out = y_new.clone()
    out[idx] = step_to(t_c)
    return out
