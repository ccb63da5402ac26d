"""The stiff solver on torch: an adaptive, batched Rosenbrock method.

It takes batched tensors (``y0``: (B, S), ``k``: (B, K)) and returns
``(ys (B, T, S), status (B,) numpy, steps (B,) numpy)`` with status codes of
``kinabs._backend.STATUS``, as the explicit solver (``explicit``) does. Save times are
hit exactly (steps are clipped to them), so no dense output is needed. Gradients flow by
autograd through the accepted steps (or, with a tape, by ``adjoint`` or ``checkpoint``);
step-size decisions are not differentiated (as in diffrax).

Each batch member has its own time and step size; one loop advances all members together
(finished ones are masked), so the number of torch operations per step does not grow with
the batch.

Example:
    >>> import torch
    >>> from kinabs.backends.torch._solvers.rosenbrock import rosenbrock_solve
    >>> rhs = lambda t, y, k: -k * y
    >>> jac = lambda t, y, k: -k[..., None] * torch.eye(1, dtype=y.dtype)
    >>> y0 = torch.ones(2, 1, dtype=torch.float64)
    >>> k = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    >>> ys, status, steps = rosenbrock_solve(rhs, jac, None, torch.tensor([1.0]), 0.0, y0, k)
    >>> ys[:, 0, 0]
    tensor([0.3679, 0.1353], dtype=torch.float64)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from kinabs.backends.torch._solvers.tableaus import RODAS5, RosenbrockTableau

__all__ = [
    "Rosenbrock", "rosenbrock_solve", "Tape", "TapeStep", "Checkpoint", "single_threaded",
    "step_function", "first_derivatives_only", "mixing",
]

SAFETY, FACTOR_MIN, FACTOR_MAX = 0.9, 0.2, 10.0


@dataclass(frozen=True)
class Rosenbrock:
    """The stiff solver: an adaptive Rosenbrock method (``RODAS5`` or ``RODAS4``);
    pass ``SolverOptions(method=Rosenbrock(...))`` to choose one."""

    tableau: RosenbrockTableau = RODAS5


def _rms(x: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.mean(x * x, dim=-1))


def _initial_step(rhs, t0, y0, k, rtol, atol, order, span) -> np.ndarray:
    """Hairer's starting step size, per batch member (``t0``: a number or (B,))."""
    with torch.no_grad():
        t = torch.as_tensor(np.array(np.broadcast_to(np.asarray(t0, dtype=np.float64), y0.shape[:1])),
                            dtype=y0.dtype, device=y0.device)
        f0 = rhs(t, y0, k)
        sc = atol + rtol * y0.abs()
        d0, d1 = _rms(y0 / sc), _rms(f0 / sc)
        h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1)
        f1 = rhs(t + h0, y0 + h0[:, None] * f0, k)
        d2 = _rms((f1 - f0) / sc) / h0
        big = torch.maximum(d1, d2)
        h1 = torch.where(big <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6),
                         (0.01 / big) ** (1.0 / (order + 1)))
        h = torch.minimum(100 * h0, h1)
    h = h.cpu().numpy()
    h = np.where(np.isfinite(h) & (h > 0), h, 1e-6)
    span = np.where(np.asarray(span) > 0, span, 1.0)
    return np.minimum(h, span)


def next_step(h, h_try, e, expo, active, accept, clipped, t):
    """Step-size control after an attempt of size ``h_try`` with error norm ``e`` (B,):
    the next step sizes, and which active members were rejected with a step too small to
    go on (relative to their time)."""
    finite = np.isfinite(e)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        factor = np.clip(SAFETY * np.where(e > 0, e, 1e-10) ** expo, FACTOR_MIN, FACTOR_MAX)
    factor = np.where(finite, factor, 0.25)
    factor = np.where(accept, factor, np.minimum(factor, 1.0))
    h_next = h_try * factor
    # a step clipped to a save time does not shrink the step size
    h = np.where(active, np.where(accept & clipped, np.maximum(h_next, h), h_next), h)
    too_small = active & ~accept & (h < 1e-14 * np.maximum(np.abs(t), 1e-300))
    return h, too_small


def _coefficients(tab: RosenbrockTableau, like: torch.Tensor) -> list[torch.Tensor | None]:
    """Per stage ``i``: an (i, 2) tensor with columns ``A[i, :i]`` and ``C[i, :i]``."""
    out: list[torch.Tensor | None] = [None]
    for i in range(1, tab.stages):
        out.append(torch.as_tensor(np.stack([tab.A[i, :i], tab.C[i, :i]], axis=-1),
                                   dtype=like.dtype, device=like.device))
    return out


#: Solves whose batch x states is at most this run on one CPU thread (see
#: :func:`single_threaded`).
SMALL = 4096


@contextlib.contextmanager
def single_threaded(x: torch.Tensor):
    """Run the block on one CPU thread when ``x`` (B, S) is small. torch parallelises
    operations on tensors above a grain size (and batched factorisations) over its thread
    pool, whose wake-up costs milliseconds per call on a loaded machine (measured: the
    adjoint's batched calls over all steps and stages, 1640 rows: 15 ms on 2 threads,
    0.75 ms on one); tiny operations gain nothing from threads."""
    if x.device.type != "cpu" or x.numel() > SMALL or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def first_derivatives_only() -> None:
    """Called first in the backward pass of a solve's own gradient (``adjoint``,
    ``checkpoint``): those passes are not differentiable themselves, so a second
    derivative through them (``create_graph=True``, which runs the backward with grad
    mode on) would silently miss the solve's part. Raise instead."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "kinabs' torch Rosenbrock solves give first derivatives only, and a backward "
            "pass with create_graph=True asked for more (a Hessian or a gradient "
            "penalty). Use the JAX backend for second derivatives, or solve with "
            "SolverOptions(method='nonstiff') (torchdiffeq, plain autograd).")


def _inverse(w: torch.Tensor) -> torch.Tensor:
    """Batched inverse of small matrices. On CPU, torch parallelises a batched
    factorisation over its thread pool, whose start-up costs ~18 ms per call on a loaded
    machine (measured: 16 2x2 matrices, 2 threads) against ~20 us on one thread; small
    systems are therefore inverted on one thread."""
    if w.device.type != "cpu" or w.shape[-1] > 32 or w.shape[0] == 1:
        return torch.linalg.inv(w)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.inv(w)
    finally:
        torch.set_num_threads(threads)


def _attempt(tab: RosenbrockTableau, coef, rhs, jac, dfdt, t, y, k, h, rhs_jac=None):
    """One Rosenbrock step of size ``h`` (B,) from ``(t, y)``: returns (y_new, error).

    Written for few torch operations per stage: earlier stages are combined with one
    matmul, and the stage matrix is inverted once (a matmul per stage, not a solve).
    ``rhs_jac(t, y, k) -> (f, J)``, when given, evaluates both at the step's start."""
    _, _, c, d, _ = tab.coefficients
    hc = h[:, None]
    inv_h = torch.reciprocal(hc)
    if rhs_jac is not None:
        f0, jy = rhs_jac(t, y, k)
    else:
        f0, jy = None, jac(t, y, k)
    w = torch.diag_embed((inv_h / tab.gamma).expand(y.shape)) - jy
    w_inv_t = _inverse(w).transpose(-1, -2)
    ft = dfdt(t, y, k) if dfdt is not None else None
    stages: list[torch.Tensor] = []
    yi = y
    for i in range(tab.stages):
        # stage times even when d rhs/dt = 0: a rate that switches at a time (piecewise
        # in t) must be seen switching inside a step, or the error estimate misses it
        ti = t if c[i] == 0.0 else t + c[i] * h
        if i == 0:
            rhs_i = f0 if f0 is not None else rhs(ti, y, k)
        else:
            mix = torch.stack(stages, dim=-1) @ coef[i]  # (B, S, 2)
            yi = y + mix[..., 0]
            rhs_i = rhs(ti, yi, k) + mix[..., 1] * inv_h
        if ft is not None and d[i] != 0.0:
            rhs_i = rhs_i + (d[i] * hc) * ft
        stages.append((rhs_i.unsqueeze(-2) @ w_inv_t).squeeze(-2))
    # Stiffly accurate: the solution is the last stage's input plus the last stage.
    return yi + stages[-1], _unless_singular(stages[-1], jy)


def step_function(tab: RosenbrockTableau, rhs, jac, dfdt, rhs_jac, like: torch.Tensor):
    """``step(t, y, k, h) -> y_new``: one Rosenbrock step as :func:`rosenbrock_solve`
    takes it when autograd is on or ``dfdt`` is given (for redoing recorded steps)."""
    coef = _coefficients(tab, like)

    def step(t, y, k, h):
        return _attempt(tab, coef, rhs, jac, dfdt, t, y, k, h, rhs_jac)[0]

    return step


def _unless_singular(err: torch.Tensor, jy: torch.Tensor) -> torch.Tensor:
    """``err``, NaN (a rejected step) for members whose Jacobian is not finite. With
    ``J = -inf`` (``A**0.5`` at ``A = 0``) ``W^-1`` is 0: every stage is zero, the step
    "succeeds" and the state never leaves 0 (silently wrong); rejected, the solve ends
    with status 2 (non-finite) instead."""
    bad = ~torch.isfinite(jy).all(dim=-1).all(dim=-1)
    return torch.where(bad[:, None], torch.nan, err)


@dataclass(frozen=True)
class _Mixing:
    """A tableau's stage combinations as tensors, for :func:`_attempt_nograd` and the
    adjoint. Forward: stage ``i``'s input and C-term are ``m[:, i] @ [y; U_0..U_s-1]``
    with ``m = fa + fc / h`` (B, s, 2, s + 1). Backward: ``mt = ba + bc / h``
    (B, s, s + 1, 2), ``mt[:, i]`` = columns ``A[i, :]`` and ``C[i, :] / h`` with a last
    row ``(1, 0)`` (the state's adjoint: the sum of the stage inputs' adjoints)."""

    fa: torch.Tensor
    fc: torch.Tensor
    ba: torch.Tensor
    bc: torch.Tensor
    last: torch.Tensor  # (s + 1, 1): selects the last stage
    c: torch.Tensor  # (s,): the stages' times as fractions of the step
    stages: int
    gamma: float


_MIXING: dict = {}


def mixing(tab: RosenbrockTableau, dtype: torch.dtype, device) -> _Mixing:
    key = (id(tab), dtype, str(device))
    out = _MIXING.get(key)
    if out is None:
        s = tab.stages
        fa = np.zeros((s, 2, s + 1))
        fc = np.zeros((s, 2, s + 1))
        fa[:, 0, 0] = 1.0
        fa[:, 0, 1:] = tab.A
        fc[:, 1, 1:] = tab.C
        ba = np.zeros((s, s + 1, 2))  # row s: the state's adjoint accumulates Y_i^
        ba[:, :s, 0] = tab.A
        ba[:, s, 0] = 1.0
        bc = np.zeros((s, s + 1, 2))
        bc[:, :s, 1] = tab.C
        last = np.zeros((s + 1, 1))
        last[s - 1] = 1.0

        def t(a):
            return torch.as_tensor(a, dtype=dtype, device=device)

        with torch.inference_mode(False):  # cached: never an inference tensor
            out = _MIXING[key] = _Mixing(t(fa), t(fc), t(ba), t(bc), t(last), t(tab.c), s,
                                         tab.gamma)
    return out


def _attempt_nograd(mix: _Mixing, rhs, rhs_jac, t, y, k, h, record=False):
    """:func:`_attempt` without autograd, for autonomous systems with ``rhs_jac``: the
    stages are written into one buffer and each stage input and C-term come from one
    batched matmul (fewer operations per stage). With ``record``, also returns
    ``(W^-1, [J(Y_i)], [Y_i], U)`` for the discrete adjoint (``U``: (B, s, S)); the stage
    Jacobians then come from ``rhs_jac`` with the stage values (one fused call)."""
    b, n = y.shape
    s = mix.stages
    inv_h = torch.reciprocal(h)
    tc = torch.addcmul(t[:, None], h[:, None], mix.c)  # (B, s): the stages' times
    f0, jy = rhs_jac(t, y, k)
    w = torch.diag_embed((inv_h * (1.0 / mix.gamma))[:, None].expand(b, n)) - jy
    w_inv = _inverse(w)
    w_inv_t = w_inv.transpose(1, 2)
    m = torch.addcmul(mix.fa, mix.fc, inv_h[:, None, None, None])  # (B, s, 2, s + 1)
    u = y.new_zeros((b, s + 1, n))
    u[:, 0] = y
    # torch.bmm: the @ operator is a Python function with ~5 us more overhead per call
    u[:, 1:2] = torch.bmm(f0[:, None, :], w_inv_t)
    inputs, jacs = [y], [jy]
    yi = y
    for i in range(1, s):
        yi, ci = torch.bmm(m[:, i], u).unbind(1)
        if record:
            fi, ji = rhs_jac(tc[:, i], yi, k)
            inputs.append(yi)
            jacs.append(ji)
        else:
            fi = rhs(tc[:, i], yi, k)
        u[:, i + 1:i + 2] = torch.bmm((fi + ci)[:, None, :], w_inv_t)
    err = _unless_singular(u[:, s], jy)
    if record:
        return yi + err, err, (tc, w_inv, jacs, inputs, u[:, 1:])
    return yi + err, err


def rosenbrock_solve(
    rhs: Callable, jac: Callable, dfdt: Callable | None, ts: torch.Tensor, t0: float,
    y0: torch.Tensor, k: torch.Tensor, *, rtol: float = 1e-8, atol: float = 1e-10,
    max_steps: int = 100_000, dt0: float | None = None, tableau: RosenbrockTableau = RODAS5,
    rhs_jac: Callable | None = None, tape: Tape | None = None, breaks: Sequence[float] = (),
):
    """Solve ``dy/dt = rhs(t, y, k)`` from ``(t0, y0)`` and save at ``ts`` (see the module
    docstring). ``jac(t, y, k) -> (B, S, S)``; ``dfdt`` is ``None`` for autonomous systems;
    ``rhs_jac(t, y, k) -> (rhs, jac)`` (optional) computes both in one call. With a
    ``tape`` (and autograd off), every accepted step is recorded on it for a discrete
    adjoint (``adjoint``). ``breaks``: times where the vector field may jump (see
    ``Generated.time_breaks``); a step ends just before each and the next starts just
    after it, so that no step's stages straddle a jump."""
    with single_threaded(y0):
        return _rosenbrock_solve(rhs, jac, dfdt, ts, t0, y0, k, rtol, atol, max_steps, dt0,
                                 tableau, rhs_jac, tape, breaks)


def _rosenbrock_solve(rhs, jac, dfdt, ts, t0, y0, k, rtol, atol, max_steps, dt0, tableau,
                      rhs_jac, tape, breaks=()):
    b, n_t = y0.shape[0], int(ts.shape[0])
    dev, dt = y0.device, y0.dtype
    ts_np = ts.detach().cpu().numpy().astype(np.float64)
    t = np.full(b, float(t0))
    span = float(ts_np[-1] - t0) if n_t else 0.0
    h = np.full(b, float(dt0)) if dt0 else _initial_step(
        rhs, t0, y0, k, rtol, atol, tableau.order, span)
    expo = -1.0 / (tableau.error_order + 1)
    status = np.zeros(b, dtype=np.int64)
    attempts = np.zeros(b, dtype=np.int64)
    accepted = np.zeros(b, dtype=np.int64)
    snaps = [y0]
    snap_idx = np.full((b, n_t), -1, dtype=np.int64)
    nxt = np.zeros(b, dtype=np.int64)
    _advance_saves(nxt, snap_idx, ts_np, t, np.ones(b, bool), 0)
    y = y0
    coef = _coefficients(tableau, y0)
    # a full tape (the discrete adjoint) records what _attempt_nograd computes; a light
    # one (checkpoints) records each step's start, to redo it with _attempt: the same
    # function in both passes, so the redone step is the forward's to the last bit
    light = tape is not None and not tape.full
    fast = (rhs_jac is not None and dfdt is None and not torch.is_grad_enabled()
            and not light)
    if tape is not None and not (fast or light):
        raise ValueError("a tape needs rhs_jac, an autonomous system and autograd off")
    if light and torch.is_grad_enabled():
        raise ValueError("a tape of checkpoints needs autograd off")
    mix = mixing(tableau, dt, dev) if fast else None
    nonfinite = np.zeros(b, dtype=bool)
    # the jump times, then inf: "the next jump after t" always exists
    brk = np.asarray([*sorted(breaks), math.inf], dtype=np.float64)
    while True:
        active = (nxt < n_t) & (status == 0)
        if not active.any():
            break
        t_target = ts_np[np.minimum(nxt, n_t - 1)]
        # the next jump (after t) before the next save time: end the step one ulp
        # before it; after it the next step starts one ulp after (no stage sees both)
        nb = brk[np.minimum(np.searchsorted(brk, t, side="right"), brk.size - 1)]
        to_break = (nb > t) & (nb <= t_target)
        t_target = np.where(to_break, np.nextafter(nb, -np.inf), t_target)
        h_try = np.where(active, np.minimum(h, t_target - t), 1.0)
        clipped = active & (h >= t_target - t)
        th = torch.as_tensor(t, dtype=dt, device=dev)
        hh = torch.as_tensor(h_try, dtype=dt, device=dev)
        if fast:
            out = _attempt_nograd(mix, rhs, rhs_jac, th, y, k, hh, record=tape is not None)
        else:
            out = _attempt(tableau, coef, rhs, jac, dfdt, th, y, k, hh, rhs_jac)
        y_new, err = out[0], out[1]
        with torch.no_grad():
            sc = atol + rtol * torch.maximum(y.abs(), y_new.abs())
            e = _rms(err / sc).cpu().numpy()
        finite = np.isfinite(e)
        accept = active & finite & (e <= 1.0)
        nonfinite = np.where(active, ~finite, nonfinite)
        attempts += active
        if accept.any():
            if torch.is_grad_enabled() and (active & ~finite).any():
                # Keep NaN/inf from rejected members out of the gradient graph.
                idx = torch.as_tensor(np.flatnonzero(accept), device=dev)
                y_sub, _ = _attempt(tableau, coef, rhs, jac, dfdt, th[idx], y[idx], k[idx],
                                    hh[idx], rhs_jac)
                y = y.index_put((idx,), y_sub)
            else:
                mask = torch.as_tensor(accept, device=dev)
                if light:
                    tape.steps.append(Checkpoint(mask, th, hh, y))
                elif tape is not None:
                    tape.steps.append(TapeStep(mask, hh, y, *out[2]))
                y = torch.where(mask[:, None], y_new, y)
            t_end = np.where(to_break, np.nextafter(nb, np.inf), t_target)
            t = np.where(accept, np.where(clipped, t_end, t + h_try), t)
            accepted += accept
            hit = accept & clipped & (nxt < n_t) & (ts_np[np.minimum(nxt, n_t - 1)] <= t)
            if hit.any():
                snaps.append(y)
                _advance_saves(nxt, snap_idx, ts_np, t, hit, len(snaps) - 1)
                if tape is not None:
                    tape.steps[-1].snap = len(snaps) - 1
        h, too_small = next_step(h, h_try, e, expo, active, accept, clipped, t)
        status = np.where(too_small, np.where(nonfinite, 2, 3), status)
        status = np.where(active & (status == 0) & (attempts >= max_steps) & (nxt < n_t),
                          1, status)
    snaps.append(torch.full_like(y0, math.nan))
    snap_idx = np.where(snap_idx < 0, len(snaps) - 1, snap_idx)
    stacked = torch.stack(snaps)  # (n_snaps, B, S)
    rows = torch.arange(b, device=dev)[:, None]
    ys = stacked[torch.as_tensor(snap_idx, device=dev), rows]
    if tape is not None:
        tape.snap_idx, tape.n_snaps = snap_idx, len(snaps)
    return ys, status, accepted


@dataclass
class TapeStep:
    """One loop iteration of the Rosenbrock solver in which some members accepted:
    ``accept`` (B,) which did, ``h`` (B,) the step sizes, ``y`` the states before, ``tc``
    the stages' times, and
    the attempt's ``W^-1``, stage Jacobians, stage inputs and stages; ``snap``: the
    index of the snapshot taken after it (-1: none)."""

    accept: torch.Tensor
    h: torch.Tensor
    y: torch.Tensor
    tc: torch.Tensor  # (B, s): the stages' times
    w_inv: torch.Tensor
    jacs: list
    inputs: list
    stages: torch.Tensor  # (B, s, S)
    snap: int = -1


@dataclass
class Checkpoint:
    """One loop iteration in which some members accepted, as a light tape records it:
    ``accept`` (B,) which did, from time ``t`` (B,) and state ``y`` with step ``h`` (B,);
    ``snap`` as in :class:`TapeStep`. Enough to redo the step (``checkpoint``)."""

    accept: torch.Tensor
    t: torch.Tensor
    h: torch.Tensor
    y: torch.Tensor
    snap: int = -1


@dataclass
class Tape:
    """What :func:`rosenbrock_solve` records for a gradient: the accepted steps, and
    which snapshot (0: the initial state) each save time took. ``full``: every stage
    (:class:`TapeStep`, for the discrete adjoint); else each step's start only
    (:class:`Checkpoint`)."""

    full: bool = True
    steps: list = field(default_factory=list)
    snap_idx: np.ndarray | None = None
    n_snaps: int = 0


def _advance_saves(nxt, snap_idx, ts_np, t, members, snap) -> None:
    """Record snapshot ``snap`` for every save time that ``members`` have now reached."""
    n_t = len(ts_np)
    for m in np.flatnonzero(members):
        while nxt[m] < n_t and ts_np[nxt[m]] <= t[m]:
            snap_idx[m, nxt[m]] = snap
            nxt[m] += 1
