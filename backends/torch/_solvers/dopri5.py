"""Dormand-Prince 5(4) without autograd: torchdiffeq's ``dopri5``, lean, each member its
own step size.

A solve that needs no gradient (``kinabs.simulate``, a ``VectorField.solve`` under
``torch.no_grad``) does not need torchdiffeq's autograd-ready machinery: eager torch
costs a few microseconds per operation whatever the tensor size, and on small models the
solve is that overhead. This loop takes the same method (the Dormand-Prince tableau,
the same error norm, torchdiffeq's quartic interpolation at save times) with fewer
operations per step:

* each stage's input is one ``stack @ A[i]`` and one ``addcmul``; the error estimate is
  one ``stack @ E`` and one norm (called as ``torch.matmul``, ~0.4 us cheaper than
  the ``@`` operator);
* step-size control, save times and status run in numpy, one copy to numpy per step;
* the state is only interpolated where a step passes a save time (one batched
  evaluation for every save time a step passed), never past the last save time: steps
  are clipped to it and to the times where the vector field may jump.

Like the Rosenbrock loop (``rosenbrock``), each member has its own time and step size
and one loop advances them all, so one member's failure fails only that member: status 1
(max_steps attempted), 2 (not finite), 3 (step size underflow).

Example:
    >>> import torch
    >>> from kinabs.backends.torch._solvers.dopri5 import dopri5_solve
    >>> rhs = lambda t, y, k: -k * y
    >>> y0 = torch.ones(2, 1, dtype=torch.float64)
    >>> k = torch.tensor([[1.0], [200.0]], dtype=torch.float64)
    >>> ys, status, steps = dopri5_solve(rhs, torch.tensor([0.5, 1.0]), 0.0, y0, k,
    ...                                  max_steps=60)
    >>> ys[0, :, 0], status  # exp(-0.5), exp(-1); the stiff member runs out of steps
    (tensor([0.6065, 0.3679], dtype=torch.float64), array([0, 1]))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from kinabs.backends.torch._solvers.rosenbrock import _initial_step, next_step

__all__ = ["dopri5_solve"]

#: The Dormand-Prince (Shampine) tableau, as torchdiffeq's ``dopri5`` has it.
_C = np.array([0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0])
_A = [
    [],
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
]
#: fifth-order solution minus fourth-order embedded solution, per stage
_E = np.array([35 / 384 - 1951 / 21600, 0.0, 500 / 1113 - 22642 / 50085,
               125 / 192 - 451 / 720, -2187 / 6784 - -12231 / 42400, 11 / 84 - 649 / 6300,
               -1 / 60])
#: the state at the step's midpoint: ``y0 + h * _MID @ k`` (Shampine)
_MID = np.array([6025192743 / 30085553152, 0.0, 51252292925 / 65400821598,
                 -2691868925 / 45128329728, 187940372067 / 1594534317056,
                 -1776094331 / 19743644256, 11237099 / 235043384]) / 2
#: the error estimate's order + 1 sets the step-size exponent
_EXPO = -1.0 / 5.0


def _interpolation_weights(theta: np.ndarray, h: np.ndarray):
    """torchdiffeq's quartic through ``y0``, ``y1``, the midpoint and the derivatives at
    both ends, at fractions ``theta`` (P,) of steps ``h`` (P,), as weights:
    ``y(theta) = a * y0 + b * y1 + K @ g`` with ``K`` the stages (P, S, 7)."""
    t2 = theta * theta
    t3 = t2 * theta
    t4 = t3 * theta
    w_mid = 16 * t2 - 32 * t3 + 16 * t4
    a = 1 - 11 * t2 + 18 * t3 - 8 * t4 + w_mid
    b = -5 * t2 + 14 * t3 - 8 * t4
    g = w_mid[:, None] * _MID
    g[:, 0] += theta - 4 * t2 + 5 * t3 - 2 * t4  # f0 = k_0
    g[:, 6] += t2 - 3 * t3 + 2 * t4  # f1 = k_6 (first same as last)
    return a, b, g * h[:, None]


def dopri5_solve(rhs: Callable, ts: torch.Tensor, t0: float, y0: torch.Tensor,
                 k: torch.Tensor, *, rtol: float = 1e-8, atol: float = 1e-10,
                 max_steps: int = 100_000, dt0: float | None = None,
                 breaks: Sequence[float] = ()):
    """Solve ``dy/dt = rhs(t, y, k)`` (``y0``: (B, S), ``k``: whatever ``rhs`` reads)
    from ``t0`` and save at ``ts`` (T,), non-decreasing and not before ``t0``. Returns
    ``(ys (B, T, S), status (B,), accepted steps (B,))`` (numpy status and steps), with
    NaN rows where a member failed. No gradient flows."""
    with torch.inference_mode():
        ys, status, steps = _solve(rhs, ts, float(t0), y0, k, rtol, atol, int(max_steps),
                                   dt0, breaks)
    return ys.clone(), status, steps  # a clone outside inference mode: an ordinary tensor


def _solve(rhs, ts, t0, y0, k, rtol, atol, max_steps, dt0, breaks):
    b, n = y0.shape
    dev, dtype = y0.device, y0.dtype
    ts_np = ts.detach().cpu().numpy().astype(np.float64)
    n_t = ts_np.shape[0]

    def tensor(a):
        return torch.as_tensor(a, dtype=dtype, device=dev)

    a_rows = [None] + [tensor(row) for row in _A[1:]]
    c, e_col = tensor(_C), tensor(_E)
    out = torch.full((b, n_t, n), math.nan, dtype=dtype, device=dev)
    status = np.zeros(b, dtype=np.int64)
    attempts = np.zeros(b, dtype=np.int64)
    accepted = np.zeros(b, dtype=np.int64)
    nxt = np.zeros(b, dtype=np.int64)  # each member's next save time
    at_start = ts_np <= t0
    if at_start.any():  # save times at t0 take the initial state
        out[:, at_start] = y0[:, None, :]
        nxt[:] = int(at_start.sum())
    t_end = float(ts_np[-1]) if n_t else t0
    t = np.full(b, t0)
    if nxt[0] >= n_t:
        return out, status, accepted
    h = np.full(b, float(dt0)) if dt0 else _initial_step(rhs, t0, y0, k, rtol, atol, 5,
                                                         t_end - t0)
    brk = np.asarray([*sorted(x for x in breaks if t0 < x < t_end), math.inf])
    y = y0
    f0 = rhs(tensor(t), y, k)
    nonfinite = np.zeros(b, dtype=bool)
    scale = 1.0 / math.sqrt(max(n, 1))
    while True:
        active = (nxt < n_t) & (status == 0)
        if not active.any():
            break
        # the end of the solve or the next jump: end the step one ulp before a jump,
        # start the next one ulp after it (no stage sees both sides)
        nb = brk[np.searchsorted(brk, t, side="right")]
        stop = np.where(nb <= t_end, np.nextafter(nb, -math.inf), t_end)
        h_try = np.where(active, np.minimum(h, stop - t), 0.0)
        clipped = active & (h >= stop - t)
        hh = tensor(h_try)
        hc = hh[:, None]
        tc = torch.addcmul(tensor(t)[:, None], hc, c).unbind(1)
        ks = [f0]
        yi = y
        for i in range(1, 7):
            yi = torch.addcmul(y, hc, torch.matmul(torch.stack(ks, -1), a_rows[i]))
            ks.append(rhs(tc[i], yi, k))
        kk = torch.stack(ks, -1)  # (B, S, 7)
        sc = torch.maximum(y.abs(), yi.abs()).mul_(rtol).add_(atol)
        ratio = torch.linalg.vector_norm(torch.matmul(kk, e_col).div_(sc), dim=-1)
        err = ratio.cpu().numpy() * (np.abs(h_try) * scale)
        finite = np.isfinite(err)
        accept = active & finite & (err <= 1.0)
        nonfinite = np.where(active, ~finite, nonfinite)
        attempts += active
        if accept.any():
            t_new = np.where(accept, t + h_try, t)
            t_new = np.where(accept & clipped & (stop < t_end), np.nextafter(nb, math.inf),
                             t_new)
            t_new = np.where(accept & clipped & (stop >= t_end), t_end, t_new)
            _save(out, ts_np, nxt, accept, t, t_new, h_try, y, yi, kk)
            if accept.all():
                y, f0 = yi, ks[6]
            else:
                mask = torch.as_tensor(accept, device=dev)[:, None]
                y, f0 = torch.where(mask, yi, y), torch.where(mask, ks[6], f0)
            jumped = accept & clipped & (stop < t_end)
            t = t_new
            accepted += accept
            if jumped.any():  # past a jump the last stage's derivative is stale
                f0 = rhs(tensor(t), y, k)
        h, too_small = next_step(h, h_try, err, _EXPO, active, accept, clipped, t)
        status = np.where(too_small, np.where(nonfinite, 2, 3), status)
        status = np.where(active & (status == 0) & (attempts >= max_steps) & (nxt < n_t),
                          1, status)
    done = status == 0
    finite_rows = torch.isfinite(out).flatten(1).all(dim=1).cpu().numpy()
    status = np.where(done & ~finite_rows, 2, status)
    if not done.all():
        out[torch.as_tensor(~done, device=dev)] = math.nan
    return out, status, accepted


def _save(out, ts_np, nxt, accept, t, t_new, h, y, y1, kk) -> None:
    """Write the interpolated state at every save time in ``(t, t_new]`` of the members
    that accepted a step (one batched evaluation)."""
    n_t = ts_np.shape[0]
    rows, cols = [], []
    for m in np.flatnonzero(accept & (nxt < n_t)):
        j = nxt[m]
        while j < n_t and ts_np[j] <= t_new[m]:
            rows.append(m)
            cols.append(j)
            j += 1
        nxt[m] = j
    if not rows:
        return
    rows_np, cols_np = np.asarray(rows), np.asarray(cols)
    hr = h[rows_np]
    with np.errstate(divide="ignore", invalid="ignore"):
        theta = np.clip((ts_np[cols_np] - t[rows_np]) / hr, 0.0, 1.0)
    theta = np.where(hr > 0, theta, 1.0)
    a, b, g = _interpolation_weights(theta, hr)
    dev, dtype = y.device, y.dtype
    r = torch.as_tensor(rows_np, device=dev)
    a_t = torch.as_tensor(a, dtype=dtype, device=dev)[:, None]
    b_t = torch.as_tensor(b, dtype=dtype, device=dev)[:, None]
    g_t = torch.as_tensor(g, dtype=dtype, device=dev)[:, :, None]
    vals = a_t * y[r] + b_t * y1[r] + torch.matmul(kk[r], g_t)[..., 0]
    # a save time reached exactly: the step's own end, not the interpolant's rounding
    exact = torch.as_tensor(theta == 1.0, device=dev)[:, None]
    vals = torch.where(exact, y1[r], vals)
    out[r, torch.as_tensor(cols_np, device=dev)] = vals
