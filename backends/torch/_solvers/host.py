"""Small Rosenbrock solves on the CPU in numpy: the same method, steps and adjoint as
``rosenbrock`` and ``adjoint``, with a fraction of the cost per operation.

An eager torch operation costs a few microseconds whatever the size of its tensors
(dispatch, autograd and inference-mode bookkeeping, the output's allocation), a numpy
ufunc on the same tiny arrays a fraction of one; and a small model's solve is thousands
of such operations on arrays of a few hundred numbers. Measured on serine (2 states,
RODAS5, about 200 steps per solve near the optimum; 2 shared cores): one elementwise
operation on 5 float64 values, 3.8 us in torch (3.3 us in inference mode) against 0.8 us
in numpy; a batched 2x2 inverse 55 us against 14 us.

So a solve on the CPU in float64 whose step functions exist (``stepfns``: small
autonomous systems with a symbolic Jacobian) runs here when no torch tensor of it needs
autograd's or forward-mode's derivatives (:func:`host_ready`):

* :func:`host_rosenbrock_solve`: the plain solve (no gradient), as ``rosenbrock_solve``
  takes it on the fast path (``_attempt_nograd``); returns torch tensors;
* :func:`host_adjoint_solve`: a solve whose gradient is the discrete adjoint
  (``adjoint``): the forward solve records its tape here, and the backward pass walks it
  here, in a ``torch.autograd.Function`` whose inputs are the initial states and the
  hoisted constants ``q = prep(k)`` (``prep`` stays in torch: autograd carries ``q``'s
  gradient on to the parameters).

The step functions are the very source ``stepfns`` prints for torch, bound to numpy
operations (:class:`HostOps`); the loop is ``rosenbrock._rosenbrock_solve``'s, with the
same step-size control (``next_step``) and save-time bookkeeping. Results agree with the
torch path to rounding (the order of a few products differs; a 2x2 inverse is written
out), and so do the step counts as long as no error estimate sits at a rounding-level
boundary. Forward-mode Jacobians (dual tensors) and solves on other devices or dtypes
stay in torch.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.autograd.forward_ad as fwad

from kinabs._errors import UnsupportedFeatureError
from kinabs._lowering.ops import _NumpyOps
from kinabs._tableaus import RosenbrockTableau
from kinabs.backends.torch._solvers.rosenbrock import (
    Tape,
    TapeStep,
    _advance_saves,
    first_derivatives_only,
    next_step,
)
from kinabs.backends.torch._solvers.stepfns import (
    StepFunctions,
    _adjoint_source,
    _bind,
    _cached_hoisted,
    _source,
    _StepPrinter,
)

__all__ = ["HostOps", "host_functions", "host_ready", "host_rosenbrock_solve",
           "host_adjoint_solve"]


class _Columns(tuple):
    """An array split once along its last axis: a tuple of its columns (``HostOps.get``
    is then ``operator.getitem``, a C call), with the array as ``tensor``."""

    def __new__(cls, a: np.ndarray) -> _Columns:
        out = super().__new__(cls, a.T if a.ndim == 2 else
                              [a[..., i] for i in range(a.shape[-1])])
        out.tensor = a
        return out

    @property
    def shape(self):
        return self.tensor.shape


class HostOps(_NumpyOps):
    """The operations the step functions print (``stepfns._StepOps``), on numpy arrays."""

    def __init__(self) -> None:
        import array_api_compat.numpy as xnp

        super().__init__(xnp)

    def const(self, value: float) -> Any:
        return np.float64(value)

    def columns(self, a: np.ndarray) -> _Columns:
        return _Columns(a)

    #: the step functions read their arrays only through ``columns``
    get = staticmethod(operator.getitem)

    def column(self, a, i):
        return a[i][..., None]

    def take(self, a, idx):
        if type(a) is _Columns:
            a = a.tensor
        return a[..., idx]

    recip = staticmethod(np.reciprocal)
    square = staticmethod(np.square)

    @staticmethod
    def addcmul(a, b, c):
        return a + b * c

    @staticmethod
    def cube(x):
        return x * x * x

    @staticmethod
    def stack_full(items):
        shape = items[0].shape
        for x in items:
            if x.shape != shape:  # the adjoint's functions broadcast weights over members
                shape = np.broadcast_shapes(*(np.shape(x) for x in items))
                break
        out = np.empty((*shape, len(items)))
        for i, x in enumerate(items):
            out[..., i] = x
        return out

    def stack(self, items, like):
        shape = np.broadcast_shapes(tuple(like.shape[:-1]),
                                    *(np.shape(x) for x in items))
        out = np.empty((*shape, len(items)))
        for i, x in enumerate(items):
            out[..., i] = x
        return out

    @staticmethod
    def zeros_last(like, m):
        return np.zeros((*like.shape[:-1], m))

    @staticmethod
    def pad_last(x):
        out = np.zeros((*x.shape[:-1], x.shape[-1] + 1))
        out[..., :-1] = x
        return out

    def index(self, values):
        return np.asarray(values, dtype=np.int64)


class _HostPrinter(_StepPrinter):
    fuse = False


@dataclass(frozen=True)
class HostFunctions:
    """The step functions on numpy (``rhs``, ``rhs_jac``) and, where sympy can
    differentiate twice, the adjoint's (``f_vjp_q``, ``jac_vjp_y``, ``jac_vjp_q``,
    ``entries``: the flat indices of the Jacobian's nonzero entries); ``adjoint`` false
    without them."""

    rhs: Any
    rhs_jac: Any
    adjoint: bool
    f_vjp_q: Any = None
    jac_vjp_y: Any = None
    jac_vjp_q: Any = None
    entries: Any = None


def host_functions(step: StepFunctions) -> HostFunctions | None:
    """The numpy step functions of ``step``'s system (cached on it), or None where the
    system has none (too large, or no symbolic Jacobian) or is not autonomous."""
    system = step.system
    key = "torch-host-step"
    if system is None:
        return None
    if key not in system._cache:
        out = None
        h = _cached_hoisted(system)
        if h is not None and not h.dfdt:
            ops = HostOps()
            source, gather = _source(h, _HostPrinter)
            _prep, rhs, rhs_jac, _jac, _dfdt = _bind(source, ops, gather)
            try:
                adj = _bind(_adjoint_source(h, _HostPrinter), HostOps())
            except UnsupportedFeatureError:  # sympy cannot differentiate twice
                adj = None
            if adj is None:
                out = HostFunctions(rhs, rhs_jac, False)
            else:
                entries = np.asarray([i * h.n + c for i, c in h.keys], dtype=np.int64)
                out = HostFunctions(rhs, rhs_jac, True, *adj, entries)
        system._cache[key] = out
    return system._cache[key]


#: Whether solves may run here at all (tests compare both paths).
ENABLED = True


def _is_dual(x: torch.Tensor) -> bool:
    return fwad.unpack_dual(x).tangent is not None


def host_ready(step: StepFunctions | None, *tensors: torch.Tensor) -> HostFunctions | None:
    """The numpy step functions when a solve of ``tensors`` (its initial states and
    constants) can run here: on the CPU, in float64, no dual tensor (forward mode), and
    the system has them; else None."""
    if not ENABLED or step is None or step.dfdt is not None:
        return None
    for x in tensors:
        if x.device.type != "cpu" or x.dtype != torch.float64 or _is_dual(x):
            return None
    return host_functions(step)


# -- the method's numbers as numpy arrays --------------------------------------------------
@dataclass(frozen=True)
class _Mix:
    fa: np.ndarray  # (s, 2, s + 1)
    fc: np.ndarray
    ba: np.ndarray  # (s, s + 1, 2)
    bc: np.ndarray
    last: np.ndarray  # (s + 1, 1)
    c: np.ndarray  # (s,)
    stages: int
    gamma: float
    order: int
    error_order: int


_MIX: dict = {}


def _mix(tab: RosenbrockTableau) -> _Mix:
    out = _MIX.get(id(tab))
    if out is None:
        s = tab.stages
        fa = np.zeros((s, 2, s + 1))
        fc = np.zeros((s, 2, s + 1))
        fa[:, 0, 0] = 1.0
        fa[:, 0, 1:] = tab.A
        fc[:, 1, 1:] = tab.C
        ba = np.zeros((s, s + 1, 2))
        ba[:, :s, 0] = tab.A
        ba[:, s, 0] = 1.0
        bc = np.zeros((s, s + 1, 2))
        bc[:, :s, 1] = tab.C
        last = np.zeros((s + 1, 1))
        last[s - 1] = 1.0
        out = _MIX[id(tab)] = _Mix(fa, fc, ba, bc, last, np.asarray(tab.c, np.float64), s,
                                   float(tab.gamma), tab.order, tab.error_order)
    return out


# -- one step ---------------------------------------------------------------------------
def _inverse(w: np.ndarray) -> np.ndarray:
    """Inverses of a stack of small matrices; NaN where one is singular (a rejected
    step), never an exception. 1x1 and 2x2 written out."""
    n = w.shape[-1]
    if n == 1:
        return np.reciprocal(w)
    if n == 2:
        a, b, c, d = w[:, 0, 0], w[:, 0, 1], w[:, 1, 0], w[:, 1, 1]
        inv_det = np.reciprocal(a * d - b * c)
        out = np.empty_like(w)
        out[:, 0, 0] = d * inv_det
        out[:, 0, 1] = -b * inv_det
        out[:, 1, 0] = -c * inv_det
        out[:, 1, 1] = a * inv_det
        return out
    try:
        return np.linalg.inv(w)
    except np.linalg.LinAlgError:
        out = np.full_like(w, np.nan)
        for i in range(w.shape[0]):
            try:
                out[i] = np.linalg.inv(w[i])
            except np.linalg.LinAlgError:
                pass
        return out


def _attempt(mix: _Mix, fns: HostFunctions, t, y, q, h, record: bool):
    """``rosenbrock._attempt_nograd`` on numpy: (y_new, err[, what the adjoint needs])."""
    b, n = y.shape
    s = mix.stages
    inv_h = np.reciprocal(h)
    tc = t[:, None] + h[:, None] * mix.c  # (B, s)
    f0, jy = fns.rhs_jac(t, y, q)
    w = (inv_h * (1.0 / mix.gamma))[:, None, None] * np.eye(n) - jy
    w_inv = _inverse(w)
    w_inv_t = w_inv.transpose(0, 2, 1)
    m = mix.fa + mix.fc * inv_h[:, None, None, None]  # (B, s, 2, s + 1)
    u = np.zeros((b, s + 1, n))
    u[:, 0] = y
    u[:, 1] = np.matmul(f0[:, None, :], w_inv_t)[:, 0]
    inputs, jacs = [y], [jy]
    yi = y
    for i in range(1, s):
        yc = np.matmul(m[:, i], u)
        yi, ci = yc[:, 0], yc[:, 1]
        if record:
            fi, ji = fns.rhs_jac(tc[:, i], yi, q)
            inputs.append(yi)
            jacs.append(ji)
        else:
            fi = fns.rhs(tc[:, i], yi, q)
        u[:, i + 1] = np.matmul((fi + ci)[:, None, :], w_inv_t)[:, 0]
    err = u[:, s]
    bad = ~np.isfinite(jy).all(axis=(1, 2))
    if bad.any():
        err = np.where(bad[:, None], np.nan, err)
    if record:
        return yi + err, err, (tc, w_inv, jacs, inputs, u[:, 1:])
    return yi + err, err


def _rms(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(x * x, axis=-1))


def _initial_step(fns, t0, y0, q, rtol, atol, order, span) -> np.ndarray:
    """``rosenbrock._initial_step`` on numpy."""
    t = np.full(y0.shape[0], float(t0))
    f0 = fns.rhs(t, y0, q)
    sc = atol + rtol * np.abs(y0)
    d0, d1 = _rms(y0 / sc), _rms(f0 / sc)
    h0 = np.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1)
    f1 = fns.rhs(t + h0, y0 + h0[:, None] * f0, q)
    d2 = _rms((f1 - f0) / sc) / h0
    big = np.maximum(d1, d2)
    h1 = np.where(big <= 1e-15, np.maximum(h0 * 1e-3, 1e-6),
                  (0.01 / big) ** (1.0 / (order + 1)))
    h = np.minimum(100 * h0, h1)
    h = np.where(np.isfinite(h) & (h > 0), h, 1e-6)
    span = np.where(np.asarray(span) > 0, span, 1.0)
    return np.minimum(h, span)


# -- the solve ---------------------------------------------------------------------------
def _solve(fns: HostFunctions, ts: np.ndarray, t0: float, y0: np.ndarray, q: np.ndarray,
           rtol: float, atol: float, max_steps: int, dt0: float | None,
           tableau: RosenbrockTableau, tape: Tape | None, breaks=()):
    """``rosenbrock._rosenbrock_solve``'s loop on numpy arrays (the fast path: no
    autograd, full tape or none). Returns ``(ys (B, T, S), status, accepted)``."""
    b, n_t = y0.shape[0], int(ts.shape[0])
    mix = _mix(tableau)
    qc = _Columns(q)
    t = np.full(b, float(t0))
    span = float(ts[-1] - t0) if n_t else 0.0
    h = np.full(b, float(dt0)) if dt0 else _initial_step(
        fns, t0, y0, qc, rtol, atol, tableau.order, span)
    expo = -1.0 / (tableau.error_order + 1)
    status = np.zeros(b, dtype=np.int64)
    attempts = np.zeros(b, dtype=np.int64)
    accepted = np.zeros(b, dtype=np.int64)
    snaps = [y0]
    snap_idx = np.full((b, n_t), -1, dtype=np.int64)
    nxt = np.zeros(b, dtype=np.int64)
    _advance_saves(nxt, snap_idx, ts, t, np.ones(b, bool), 0)
    y = y0
    record = tape is not None
    nonfinite = np.zeros(b, dtype=bool)
    brk = np.asarray([*sorted(breaks), math.inf], dtype=np.float64)
    while True:
        active = (nxt < n_t) & (status == 0)
        if not active.any():
            break
        t_target = ts[np.minimum(nxt, n_t - 1)]
        if brk.size > 1:
            nb = brk[np.minimum(np.searchsorted(brk, t, side="right"), brk.size - 1)]
            to_break = (nb > t) & (nb <= t_target)
            t_target = np.where(to_break, np.nextafter(nb, -np.inf), t_target)
        else:
            to_break = None
        h_try = np.where(active, np.minimum(h, t_target - t), 1.0)
        clipped = active & (h >= t_target - t)
        out = _attempt(mix, fns, t, y, qc, h_try, record)
        y_new, err = out[0], out[1]
        sc = atol + rtol * np.maximum(np.abs(y), np.abs(y_new))
        e = _rms(err / sc)
        finite = np.isfinite(e)
        accept = active & finite & (e <= 1.0)
        nonfinite = np.where(active, ~finite, nonfinite)
        attempts += active
        if accept.any():
            if record:
                tape.steps.append(TapeStep(accept, h_try, y, *out[2]))
            y = np.where(accept[:, None], y_new, y)
            t_end = (t_target if to_break is None
                     else np.where(to_break, np.nextafter(nb, np.inf), t_target))
            t = np.where(accept, np.where(clipped, t_end, t + h_try), t)
            accepted += accept
            hit = accept & clipped & (nxt < n_t) & (ts[np.minimum(nxt, n_t - 1)] <= t)
            if hit.any():
                snaps.append(y)
                _advance_saves(nxt, snap_idx, ts, t, hit, len(snaps) - 1)
                if record:
                    tape.steps[-1].snap = len(snaps) - 1
        h, too_small = next_step(h, h_try, e, expo, active, accept, clipped, t)
        status = np.where(too_small, np.where(nonfinite, 2, 3), status)
        status = np.where(active & (status == 0) & (attempts >= max_steps) & (nxt < n_t),
                          1, status)
    snaps.append(np.full_like(y0, np.nan))
    snap_idx = np.where(snap_idx < 0, len(snaps) - 1, snap_idx)
    stacked = np.stack(snaps)  # (n_snaps, B, S)
    ys = stacked[snap_idx, np.arange(b)[:, None]]
    if record:
        tape.snap_idx, tape.n_snaps = snap_idx, len(snaps)
    return ys, status, accepted


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy()


def host_rosenbrock_solve(fns: HostFunctions, step: StepFunctions, ts: torch.Tensor,
                          t0: float, y0: torch.Tensor, k: torch.Tensor, *, tableau,
                          rtol: float, atol: float, max_steps: int, dt0=None, breaks=()):
    """``rosenbrock_solve`` of an autonomous system with step functions, without
    gradients, in numpy (see the module); same returns (``ys`` a torch tensor)."""
    with torch.no_grad():
        q = step.prep(k)
    with np.errstate(all="ignore"):
        ys, status, steps = _solve(fns, _numpy(ts).astype(np.float64), t0, _numpy(y0),
                                   _numpy(q), rtol, atol, max_steps, dt0, tableau, None,
                                   breaks)
    return torch.from_numpy(ys), status, steps


# -- the discrete adjoint ------------------------------------------------------------------
class _HostSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y0, q, run):  # noqa: D102 - see host_adjoint_solve
        y0n, qn = _numpy(y0), _numpy(q)
        # an expanded batch (reverse-mode Jacobians: each start repeated once per
        # residual) holds each distinct member many times: solve each once, and take
        # the copies' adjoints together in the backward pass (a seed axis)
        groups = _Groups(np.concatenate([y0n, qn], axis=1))
        tape = Tape()
        with np.errstate(all="ignore"):
            ys, status, steps = run(groups.unique(y0n), groups.unique(qn), tape)
        run.result = (groups.expand(status), groups.expand(steps))
        ctx.tape, ctx.run, ctx.groups = tape, run, groups
        ctx.save_for_backward(q)
        return torch.from_numpy(groups.expand(ys))

    @staticmethod
    def backward(ctx, grad_ys):  # noqa: D102
        first_derivatives_only()
        (q,) = ctx.saved_tensors
        groups = ctx.groups
        with np.errstate(all="ignore"):
            y_bar, q_bar = _backward(ctx.run.fns, _mix(ctx.run.tableau), ctx.tape,
                                     groups.unique(_numpy(q)),
                                     groups.seeds(_numpy(grad_ys).astype(np.float64)))
        return (torch.from_numpy(groups.rows(y_bar)), torch.from_numpy(groups.rows(q_bar)),
                None)


class _Groups:
    """The distinct rows of a batch (each member's initial state and constants): row
    ``r`` is distinct member ``which[r]``, its copy number ``copy[r]`` of ``g`` at most."""

    def __init__(self, rows: np.ndarray) -> None:
        b = rows.shape[0]
        _, first, which = np.unique(rows, axis=0, return_index=True, return_inverse=True)
        which = which.reshape(-1)
        # keep the distinct members in the order of their first rows
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        self.first = first[order]
        self.which = rank[which]
        counts = np.bincount(self.which, minlength=self.first.size)
        by = np.argsort(self.which, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.copy = np.empty(b, dtype=np.int64)
        self.copy[by] = np.arange(b) - offsets[self.which[by]]
        self.g = int(counts.max()) if b else 1

    def unique(self, x: np.ndarray) -> np.ndarray:
        return x[self.first]

    def expand(self, x: np.ndarray) -> np.ndarray:
        return x[self.which]

    def seeds(self, grad: np.ndarray) -> np.ndarray:
        """(B, ...) adjoints -> (U, G, ...) (zero where a member has fewer copies)."""
        out = np.zeros((self.first.size, self.g, *grad.shape[1:]))
        out[self.which, self.copy] = grad
        return out

    def rows(self, x: np.ndarray) -> np.ndarray:
        """(U, G, ...) -> (B, ...)."""
        return x[self.which, self.copy]


class _HostRun:
    def __init__(self, fns, tableau, ts, t0, options):
        self.fns, self.tableau, self.ts, self.t0 = fns, tableau, ts, t0
        self.options = options
        self.result: Any = None

    def __call__(self, y0, q, tape):
        o = self.options
        return _solve(self.fns, self.ts, self.t0, y0, q, o["rtol"], o["atol"],
                      o["max_steps"], o.get("dt0"), self.tableau, tape, o.get("breaks", ()))


def host_adjoint_solve(fns: HostFunctions, step: StepFunctions, ts: torch.Tensor, t0: float,
                       y0: torch.Tensor, k: torch.Tensor, *, tableau, **options):
    """``adjoint.adjoint_rosenbrock_solve`` in numpy: the forward solve records its tape
    and the backward pass walks it here (see the module); same returns."""
    q = step.prep(k)
    run = _HostRun(fns, tableau, _numpy(ts).astype(np.float64), t0, options)
    ys = _HostSolve.apply(y0, q, run)
    status, steps = run.result
    return ys, status, steps


def _backward(fns: HostFunctions, mix: _Mix, tape: Tape, q: np.ndarray, seeds: np.ndarray):
    """``adjoint._backward`` on numpy, for ``G`` adjoints of each of the ``U`` members
    solved at once: ``seeds`` (U, G, T, S) -> the adjoints of the initial states
    (U, G, S) and of ``q`` (U, G, H)."""
    u, g_n, _, s = seeds.shape
    g = np.zeros((tape.n_snaps, u, g_n, s))
    np.add.at(g, (tape.snap_idx, np.arange(u)[:, None]),
              np.nan_to_num(seeds).transpose(0, 2, 1, 3))
    # the per-step functions see a member's values against its G adjoints: (U, 1) columns
    q1 = _Columns(q[:, None, :])
    y_bar = np.zeros((u, g_n, s))
    r_bars, j_bars = [], []
    for step in reversed(tape.steps):
        if step.snap >= 0:
            y_bar = y_bar + g[step.snap]
        dy, r_bar, j_bar = _step_adjoint(fns, mix, step, q1, y_bar)
        keep = step.accept[:, None, None]
        y_bar = np.where(keep, dy, y_bar)
        r_bars.append(np.where(keep[:, None], r_bar, 0.0))
        j_bars.append(np.where(keep, j_bar, 0.0))
    y_bar = y_bar + g[0]
    q_bar = np.zeros((u, g_n, q.shape[1]))
    if tape.steps:
        # the constants' adjoint feeds nothing back into the steps: the derivatives of
        # the right-hand side and of the Jacobian's entries by q at every stage of every
        # step (one call each, a unit weight per component), contracted with the
        # adjoints of all G copies by one batched matmul
        steps = tape.steps[::-1]
        n = len(steps)
        qc = _Columns(q)
        inputs = np.stack([np.stack(st.inputs) for st in steps])  # (n, s, U, S)
        tcs = np.stack([st.tc for st in steps]).transpose(0, 2, 1)  # (n, s, U)
        h_n = q.shape[1]
        # rejected members' values may be anything (NaN, inf): zero their derivatives
        accept = np.stack([st.accept for st in steps])  # (n, U)
        f_q = fns.f_vjp_q(tcs, inputs, qc, np.eye(s)[:, None, None, None, :])
        f_q = np.where(accept[None, :, None, :, None],
                       np.broadcast_to(f_q, (s, n, mix.stages, u, h_n)), 0.0)
        r = np.stack(r_bars)  # (n, U, s, G, S)
        f_q = f_q.transpose(3, 1, 2, 0, 4).reshape(u, -1, h_n)  # (U, n s S, H)
        r = r.transpose(1, 3, 0, 2, 4).reshape(u, g_n, -1)  # (U, G, n s S)
        q_bar = _contract(r, f_q)
        nnz = fns.entries.size
        ys = np.stack([st.y for st in steps])  # (n, U, S)
        j_q = fns.jac_vjp_q(tcs[:, 0], ys, qc, np.eye(nnz)[:, None, None, :])
        j_q = np.where(accept[None, :, :, None], np.broadcast_to(j_q, (nnz, n, u, h_n)), 0.0)
        j_q = j_q.transpose(2, 1, 0, 3).reshape(u, n * nnz, -1)
        jb = np.stack(j_bars).transpose(1, 2, 0, 3).reshape(u, g_n, n * nnz)
        q_bar = q_bar + _contract(jb, j_q)
    return y_bar, q_bar


def _contract(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for (U, G, K) and (U, K, H) with K large (every stage of every step), by
    torch on one thread: numpy's OpenBLAS starts its thread pool for such products,
    which on a loaded machine cost ~20 ms each against ~0.5 ms."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.bmm(torch.from_numpy(np.ascontiguousarray(a)),
                         torch.from_numpy(np.ascontiguousarray(b))).numpy()
    finally:
        torch.set_num_threads(threads)


def _step_adjoint(fns: HostFunctions, mix: _Mix, step: TapeStep, q1, y_bar):
    """``adjoint._step_adjoint`` on numpy, for G adjoints per member: ``y_bar``
    (U, G, S); returns the state's adjoint before the step (U, G, S), the stages' r^
    (U, s, G, S) and the weights of the Jacobian's entries J^ (U, G, nonzeros)."""
    n_st = mix.stages
    u, g_n, s = y_bar.shape
    inv_h = np.reciprocal(step.h)
    mt = mix.ba + mix.bc * inv_h[:, None, None, None]  # (U, s, s + 1, 2)
    # rows 0..s-1: the stages' adjoints; row s: the state's (see ``adjoint``)
    u_bar = (mix.last * y_bar.reshape(u, 1, g_n * s))  # (U, s + 1, G S)
    r_mat = np.empty((u, n_st, g_n, s))
    both = np.empty((u, 2, g_n * s))  # [Y_i^; r_i^], flattened over the adjoints
    for i in range(n_st - 1, -1, -1):
        r_bar = np.matmul(u_bar[:, i].reshape(u, g_n, s), step.w_inv)  # (U, G, S)
        y_i = np.matmul(r_bar, step.jacs[i])
        if i == n_st - 1:
            y_i = y_i + y_bar
        both[:, 0] = y_i.reshape(u, g_n * s)
        both[:, 1] = r_bar.reshape(u, g_n * s)
        u_bar = u_bar + np.matmul(mt[:, i], both)
        r_mat[:, i] = r_bar
    # J^ = sum_i r_i^ U_i^T: (U, G, S, S)
    j_full = np.matmul(r_mat.transpose(0, 2, 3, 1), step.stages[:, None])
    j_bar = j_full.reshape(u, g_n, s * s)[..., fns.entries]
    dy = fns.jac_vjp_y(step.tc[:, :1], step.y[:, None, :], q1, j_bar)
    return u_bar[:, n_st].reshape(u, g_n, s) + dy, r_mat, j_bar
