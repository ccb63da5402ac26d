"""kinabs' own methods (:class:`kinabs.LevenbergMarquardt`, :class:`kinabs.BFGS`) on torch.

The iterations are the backend-neutral ones of :mod:`kinabs._optim`, run eagerly on
batched float64 tensors (``array_api_compat.torch``), so both backends take the same
iterates. One iteration (:func:`method_step`):

* the live starts (status 0, not stopped, not converged) are evaluated once, at their
  ``trial`` rows: residuals and Jacobian or loss and gradient, as the method ``needs``
  (a least-squares method may ask for the residuals alone at further points);
* an evaluation is ok when the solve succeeded (status 0) and the value and derivative
  are finite. A start without an accepted point yet (``f`` inf) whose evaluation fails
  takes the failure code (the solve's, or 4 for a non-finite value or derivative) and
  stops, its method state untouched; a start with an accepted point hands ``ok=False``
  to the method, which rejects the trial point and tries a shorter step;
* the updated rows are scattered back; a start whose loss falls below the problem's
  ``loss_threshold`` stops.

Example:
    >>> import torch, kinabs
    >>> from kinabs.backends.torch._methods import init_state, method_step
    >>> method = kinabs.LevenbergMarquardt()
    >>> def residuals(points):  # r = x - 1
    ...     return points - 1.0, torch.ones(points.shape[0], dtype=torch.bool)
    >>> def evaluate(trial):  # residuals, Jacobian I, status, ok
    ...     b, n = trial.shape
    ...     ok = torch.ones(b, dtype=torch.bool).numpy()
    ...     return trial - 1.0, torch.eye(n, dtype=trial.dtype).expand(b, n, n), 0 * ok, ok
    >>> state = init_state(method, torch.zeros(2, 3, dtype=torch.float64), n_residuals=3)
    >>> for _ in range(20):
    ...     _ = method_step(method, state, evaluate, None, None, None, residuals)
    >>> bool(torch.allclose(state.method["x"], torch.ones(2, 3, dtype=torch.float64)))
    True
    >>> method_status(state)  # 5: converged
    array([5, 5])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import array_api_compat.torch as xp
import numpy as np
import torch

from kinabs._problem import CONVERGED
from kinabs.backends.torch._solvers.rosenbrock import single_threaded

__all__ = ["MethodState", "init_state", "reset_state", "method_step", "batched_solve",
           "method_status"]


class MethodState:
    """The training state of a method: its batched state (a dict of tensors, one row per
    start), the status codes (N,) and which starts reached the loss threshold (N,)."""

    def __init__(self, method: dict[str, torch.Tensor], status: np.ndarray,
                 stopped: np.ndarray):
        self.method = method
        self.status = status
        self.stopped = stopped

    def copy(self) -> MethodState:
        return MethodState({k: v.clone() for k, v in self.method.items()},
                           self.status.copy(), self.stopped.copy())


def batched_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a x = b`` for (B, n, n) and (B, n) -> (B, n); NaN rows where ``a`` is singular
    (never raises). Small systems are solved on one thread (see
    ``rosenbrock.single_threaded``)."""
    with single_threaded(b):
        x, info = torch.linalg.solve_ex(a, b[..., None])
    x = x[..., 0]
    return torch.where((info != 0)[:, None], torch.full_like(x, float("nan")), x)


def init_state(method: Any, theta: torch.Tensor, n_residuals: int = 0) -> MethodState:
    """A fresh state for the starts ``theta`` (N, n); ``n_residuals``: the length of the
    residual vector (methods that need residuals)."""
    n = theta.shape[0]
    return MethodState(method.init(theta, xp, n_residuals), np.zeros(n, dtype=np.int64),
                       np.zeros(n, dtype=bool))


def reset_state(method: Any, state: MethodState, mask: np.ndarray, theta: torch.Tensor,
                n_residuals: int = 0) -> MethodState:
    """A copy of ``state`` whose rows ``mask`` start afresh from ``theta`` (N, n)."""
    state = state.copy()
    rows = np.flatnonzero(np.asarray(mask, dtype=bool))
    if rows.size:
        idx = torch.as_tensor(rows, device=theta.device)
        fresh = method.init(theta[idx], xp, n_residuals)
        state.method = {k: v.index_copy(0, idx, fresh[k]) for k, v in state.method.items()}
        state.status[rows] = 0
        state.stopped[rows] = False
    return state


def method_status(state: MethodState) -> np.ndarray:
    """The status codes, :data:`kinabs._problem.CONVERGED` where a start converged."""
    status = state.status.copy()
    converged = state.method["converged"].cpu().numpy()
    status[(status == 0) & converged] = CONVERGED
    return status


Evaluate = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]]
Residuals = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def method_step(method: Any, state: MethodState, evaluate: Evaluate, lower: Any, upper: Any,
                threshold: float | None, residuals: Residuals | None = None) -> np.ndarray:
    """One iteration of every live start, in place on ``state`` (see the module);
    ``evaluate(trial (B, n)) -> (value, derivative, status (B,), ok (B,))`` (numpy status
    and ok); ``residuals(points (B, n)) -> (r (B, m), ok (B,))`` (tensors): the residuals
    alone, for methods that need residuals. ``lower``/``upper``: (n,) tensors or None.
    Returns the loss of each start after the update (N,), NaN where it did not train."""
    ms = state.method
    n_all, n = ms["x"].shape
    recorded = np.full(n_all, np.nan)
    converged = ms["converged"].cpu().numpy()
    live = (state.status == 0) & ~state.stopped & ~converged
    members = np.flatnonzero(live)
    if members.size == 0:
        return recorded
    idx = torch.as_tensor(members, device=ms["x"].device)
    sub = {k: v[idx] for k, v in ms.items()}
    value, deriv, status, ok = evaluate(sub["trial"])
    ok = np.asarray(ok, dtype=bool)
    status = np.asarray(status, dtype=np.int64)
    if lower is None:
        lower = torch.full((n,), -np.inf, dtype=ms["x"].dtype, device=idx.device)
    if upper is None:
        upper = torch.full((n,), np.inf, dtype=ms["x"].dtype, device=idx.device)
    new = method.update(sub, value, deriv, torch.as_tensor(ok, device=idx.device), lower,
                        upper, xp, batched_solve, residuals)
    first = ~torch.isfinite(sub["f"]).cpu().numpy()
    fail = ~ok & first
    go = ~fail
    if go.any():
        keep = torch.as_tensor(np.flatnonzero(go), device=idx.device)
        rows = idx[keep]
        state.method = {k: v.index_copy(0, rows, new[k][keep]) for k, v in ms.items()}
        f = new["f"][keep].cpu().numpy()
        f = np.where(np.isfinite(f), f, np.nan)
        recorded[members[go]] = f
        if threshold is not None:
            state.stopped[members[go][f < threshold]] = True
    bad = members[fail]
    state.status[bad] = np.where(status[fail] != 0, status[fail], 4)
    return recorded
