"""Gradients of a Rosenbrock solve by redoing each accepted step, in memory that does not
grow with the number of operations per step.

Autograd through a whole solve keeps every operation of every attempted step until the
backward pass: on a large time-dependent model at a tight tolerance (Chassagnole 2002,
18 states, vectorised rate laws, rtol 1e-12) that is tens of thousands of steps of
hundreds of operations each, and it ran out of 24 GB. Here the forward runs without
autograd and records only where each accepted step started (:class:`Checkpoint`: time,
state, step size, which members accepted); the backward walks the steps in reverse and,
for each, redoes the step with autograd on and takes the vector-Jacobian product of its
result with the state's adjoint. Memory: one state per step plus one step's graph.

The gradient is autograd's through the same steps: the redone step is the forward's
(the same function, :func:`rosenbrock.step_function`, on the same inputs), only the members
that accepted are redone (a rejected member's NaN never meets the gradient), and the
step sizes are not differentiated (as in diffrax and the discrete adjoint).

Used for every Rosenbrock solve whose gradient is wanted and which has no discrete
adjoint (``adjoint``): systems that depend on time, and those too large for the
generated step functions. The discrete adjoint is faster where it applies (no redone
steps, no autograd); this path is general.

Example:
    >>> import torch
    >>> from kinabs.backends.torch._solvers.checkpoint import checkpointed_rosenbrock_solve
    >>> rhs = lambda t, y, k: -k * y * (1 + t[:, None])
    >>> jac = lambda t, y, k: (-k * (1 + t[:, None]))[..., None]
    >>> dfdt = lambda t, y, k: -k * y
    >>> k = torch.tensor([[0.5]], dtype=torch.float64, requires_grad=True)
    >>> y0 = torch.ones(1, 1, dtype=torch.float64)
    >>> ys, status, steps = checkpointed_rosenbrock_solve(
    ...     rhs, jac, dfdt, None, torch.tensor([1.0]), 0.0, y0, k, rtol=1e-10, atol=1e-12)
    >>> ys.sum().backward()  # y(1) = exp(-1.5 k): dy/dk = -1.5 exp(-0.75)
    >>> round(float(k.grad), 7)
    -0.7085498
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kinabs.backends.torch._solvers.rosenbrock import (
    Tape,
    first_derivatives_only,
    rosenbrock_solve,
    single_threaded,
    step_function,
)
from kinabs.backends.torch._solvers.tableaus import RODAS5

__all__ = ["checkpointed_rosenbrock_solve"]


class _Solve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y0, k, run):  # noqa: D102 - see checkpointed_rosenbrock_solve
        tape = Tape(full=False)
        ys, status, steps = run(y0, k, tape)
        run.result = (status, steps)
        ctx.tape, ctx.run = tape, run
        ctx.save_for_backward(k)
        return ys

    @staticmethod
    def backward(ctx, grad_ys):  # noqa: D102
        first_derivatives_only()
        (k,) = ctx.saved_tensors
        with single_threaded(grad_ys[:, 0]):
            y_bar, k_bar = _backward(ctx.tape, ctx.run, k.detach(), grad_ys)
        return y_bar, k_bar, None


def _backward(tape: Tape, run: _Run, k: torch.Tensor, grad_ys: torch.Tensor):
    """The adjoints of the initial state and the constants: every accepted step redone
    and differentiated, last first."""
    b, _, s = grad_ys.shape
    dev = grad_ys.device
    rows = torch.arange(b, device=dev)[:, None]
    idx = torch.as_tensor(tape.snap_idx, device=dev)
    g = grad_ys.new_zeros((tape.n_snaps, b, s))
    g = g.index_put((idx, rows), torch.nan_to_num(grad_ys), accumulate=True)
    y_bar = grad_ys.new_zeros((b, s))
    k_bar = torch.zeros_like(k)
    step = run.step
    for cp in reversed(tape.steps):
        if cp.snap >= 0:
            y_bar = y_bar + g[cp.snap]
        members = torch.nonzero(cp.accept).squeeze(1)
        with torch.enable_grad():
            y_in = cp.y[members].detach().requires_grad_(True)
            k_in = k[members].requires_grad_(True)
            y_new = step(cp.t[members], y_in, k_in, cp.h[members])
            dy, dk = torch.autograd.grad(y_new, (y_in, k_in), y_bar[members],
                                         allow_unused=True)
        y_bar = y_bar.index_copy(0, members, dy)
        if dk is not None:
            k_bar = k_bar.index_add(0, members, dk)
    return y_bar + g[0], k_bar


class _Run:
    """The forward solve and the step it redoes, with the solver's options."""

    def __init__(self, rhs, jac, dfdt, rhs_jac, ts, t0, tableau, like, options):
        self.args = (rhs, jac, dfdt, ts, t0)
        self.rhs_jac, self.tableau, self.options = rhs_jac, tableau, options
        self.step = step_function(tableau, rhs, jac, dfdt, rhs_jac, like)
        self.result: Any = None

    def __call__(self, y0, k, tape):
        rhs, jac, dfdt, ts, t0 = self.args
        return rosenbrock_solve(rhs, jac, dfdt, ts, t0, y0, k, tableau=self.tableau,
                                rhs_jac=self.rhs_jac, tape=tape, **self.options)


def checkpointed_rosenbrock_solve(rhs, jac, dfdt, rhs_jac, ts: torch.Tensor, t0: float,
                                  y0: torch.Tensor, k: torch.Tensor, *, tableau=RODAS5,
                                  **options) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``rosenbrock_solve(rhs, jac, dfdt, ts, t0, y0, k, rhs_jac=rhs_jac, ...)`` whose
    gradient with respect to ``y0`` and ``k`` redoes each accepted step (see the module);
    same returns. ``options``: ``rosenbrock_solve``'s keywords (``rtol``, ``breaks``...)."""
    run = _Run(rhs, jac, dfdt, rhs_jac, ts, t0, tableau, y0, options)
    ys = _Solve.apply(y0, k, run)
    status, steps = run.result
    return ys, status, steps
