"""The explicit solvers on torch: torchdiffeq's Runge-Kutta methods, one shared step size
for the whole batch, or, without gradients, kinabs' own ``dopri5`` (``dopri5``).

With torchdiffeq every member of a batch advances with the same steps, so a failure (too
many steps, a step size that underflows) fails them all; ``_simulate.solve`` finds the
failing members one by one where that matters. Gradients are autograd's through the
steps, or torchdiffeq's continuous adjoint (``odeint_adjoint``) with ``adjoint=True``.
A ``dopri5`` solve that needs no gradient (:func:`per_member`) runs kinabs' own loop
instead: the same method with far fewer torch operations per step, each member its own
step size (its steps are counted and a failure is the member's own).

Example:
    >>> import torch
    >>> from kinabs.backends.torch._solvers.explicit import explicit_solve
    >>> rhs = lambda t, y, k: -k * y
    >>> y0 = torch.ones(2, 1, dtype=torch.float64)
    >>> k = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    >>> ys, status, steps = explicit_solve(rhs, torch.tensor([1.0]), 0.0, y0, k)
    >>> ys[:, 0, 0], status
    (tensor([0.3679, 0.1353], dtype=torch.float64), array([0, 0]))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kinabs.backends.torch._solvers.dopri5 import dopri5_solve

__all__ = ["TorchDiffEq", "explicit_solve", "per_member"]

#: What the explicit solver sees instead of a NaN or infinite derivative: a finite value,
#: so that the step's error is huge rather than NaN, and the step is rejected and shrunk.
_NAN_STANDIN = 1e300


class _StepCapReached(Exception):
    """An explicit solve attempted more than ``max_steps`` steps (status 1)."""


@dataclass(frozen=True)
class TorchDiffEq:
    """An explicit torchdiffeq method by name (``"dopri5"``, ``"dopri8"``, ``"bosh3"``...);
    pass ``SolverOptions(method=TorchDiffEq("dopri8"))`` to choose one."""

    method: str = "dopri5"


#: torchdiffeq's adaptive Runge-Kutta methods (they take ``jump_t``)
_ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "tsit5")


def per_member(method: str, ts: torch.Tensor, t0: float, y0: torch.Tensor,
               k: torch.Tensor, adjoint: bool = False) -> bool:
    """Whether :func:`explicit_solve` runs kinabs' own ``dopri5`` (each member its own
    step size): ``dopri5``, no gradient wanted, save times sorted and not before ``t0``."""
    if method != "dopri5" or adjoint:
        return False
    if torch.is_grad_enabled() and (y0.requires_grad or k.requires_grad):
        return False
    if ts.requires_grad and torch.is_grad_enabled():
        return False
    ts_np = ts.detach().cpu().numpy()
    return bool(ts_np.size == 0 or (ts_np[0] >= t0 and np.all(np.diff(ts_np) >= 0)))


def explicit_solve(rhs: Callable, ts: torch.Tensor, t0: float, y0: torch.Tensor,
                   k: torch.Tensor, *, method: str = "dopri5", rtol: float = 1e-8,
                   atol: float = 1e-10, max_steps: int = 100_000, dt0: float | None = None,
                   adjoint: bool = False, breaks: Sequence[float] = ()):
    """Solve with torchdiffeq (one shared step size for the batch). A failure fails every
    member: status 1 (max_steps) or 3 (step size underflow or another solver error).
    ``breaks``: times where the vector field may jump (torchdiffeq's ``jump_t``, for its
    adaptive solvers). Where :func:`per_member` holds, kinabs' own ``dopri5`` solves
    instead (each member its own steps and status)."""
    if per_member(method, ts, t0, y0, k, adjoint):
        return dopri5_solve(rhs, ts, t0, y0, k, rtol=rtol, atol=atol, max_steps=max_steps,
                            dt0=dt0, breaks=breaks)
    import torchdiffeq

    b = y0.shape[0]
    t_all, inverse = torch.unique(torch.cat([ts.new_tensor([float(t0)]), ts]),
                                  return_inverse=True)
    if t_all.shape[0] == 1:
        ys = y0[:, None, :].expand(b, ts.shape[0], y0.shape[-1])
        return ys, np.zeros(b, np.int64), np.zeros(b, np.int64)
    options = {"max_num_steps": int(max_steps)}
    if dt0:
        options["first_step"] = float(dt0)
    inside = [x for x in breaks if float(t_all[0]) < x < float(t_all[-1])]
    if inside and method in _ADAPTIVE:
        options["jump_t"] = torch.tensor(inside, dtype=y0.dtype, device=y0.device)

    def func(t, y):
        # A NaN or infinite derivative at a trial stage (e.g. a rate law undefined past a
        # threshold that the step overshoots) must reject the step, as a large error does;
        # torchdiffeq would turn a NaN error (or inf - inf) into a NaN step size and stop.
        return torch.nan_to_num(rhs(t, y, k), nan=_NAN_STANDIN, posinf=_NAN_STANDIN,
                                neginf=-_NAN_STANDIN)

    # torchdiffeq's max_num_steps counts the steps between two output times, not the
    # solve's: with 50 save times a cap of 2,000 let a stiff model take 100,000 steps.
    # Count every attempted step of the solve ourselves.
    attempted = [0]

    def count_step(t0, y0, dt):
        attempted[0] += 1
        if attempted[0] > max_steps:
            raise _StepCapReached

    func.callback_step = count_step
    solve = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
    extra = {"adjoint_params": (k,), "adjoint_options": {"norm": "seminorm"}} if adjoint else {}
    try:
        sol = solve(func, y0, t_all, rtol=rtol, atol=atol, method=method, options=options,
                    **extra)
    except (AssertionError, _StepCapReached) as exc:
        code = 1 if isinstance(exc, _StepCapReached) or "max_num_steps" in str(exc) else 3
        ys = torch.full((b, ts.shape[0], y0.shape[-1]), math.nan, dtype=y0.dtype,
                        device=y0.device)
        return ys, np.full(b, code, np.int64), np.full(b, -1, np.int64)
    ys = sol[inverse[1:]].transpose(0, 1)  # (T, B, S) -> (B, T, S)
    finite = torch.isfinite(ys).all(dim=(1, 2)).cpu().numpy()
    return ys, np.where(finite, 0, 2).astype(np.int64), np.full(b, -1, np.int64)
