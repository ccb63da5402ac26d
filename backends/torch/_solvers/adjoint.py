"""Gradients of a Rosenbrock solve by a discrete adjoint, instead of autograd per operation.

The solve runs without autograd and records its accepted steps (:class:`Tape`); the
backward pass then walks them in reverse, computing for each step exactly what autograd
would (the gradient of the computed solution, not of the ODE's), with generated
vector-Jacobian products (``stepfns.AdjointFunctions``) instead of one recorded
operation per scalar operation of every stage.

For one step ``W = I / (h gamma) - J(y)``, ``Y_i = y + sum_j A_ij U_j``,
``W U_i = f(Y_i) + sum_j (C_ij / h) U_j``, ``y_new = Y_last + U_last``, the adjoint of
``y_new`` is propagated stage by stage, last first:

    r_i^ = W^-T U_i^                      (the stage's right-hand side)
    Y_i^ = f_y(Y_i)^T r_i^  (+ y_new^ for the last stage);   q^ += f_q(Y_i)^T r_i^
    U_j^ += A_ij Y_i^ + (C_ij / h) r_i^   for j < i
    y^  += sum_i Y_i^,   J^ = sum_i r_i^ U_i^T   (W depends on y and q through J)

and ``y^ += d<J^, J(y, q)>/dy``, ``q^ += d<J^, J(y, q)>/dq`` (second derivatives, printed
by sympy). Members that did not accept a step pass their adjoint through unchanged.
``q`` are the hoisted constants (``stepfns``): autograd carries their gradient on to
the parameters, through ``prep`` (once per solve).

Costs: the forward evaluates ``rhs_jac`` (right-hand side and Jacobian, one fused call)
at every stage, so the backward's ``f_y(Y_i)^T r_i^`` is one batched matmul; the
constants' part ``f_q(Y_i)^T r_i^`` (and the one of ``J``) feeds nothing back into the
steps, so it is one call over every stage of every step at the end. Both passes run in
inference mode, on one thread for small systems (``rosenbrock.single_threaded``).

Only for autonomous systems with step functions; other solves use autograd.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kinabs.backends.torch._ops import Columns
from kinabs.backends.torch._solvers.rosenbrock import (
    Tape,
    first_derivatives_only,
    mixing,
    rosenbrock_solve,
    single_threaded,
)

__all__ = ["adjoint_rosenbrock_solve"]


class _Solve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y0, q, run, adj):  # noqa: D102 - see adjoint_rosenbrock_solve
        tape = Tape()
        # inference mode: ~20% less overhead per operation; the tape is only read again
        # in the backward pass, which runs in inference mode too
        with torch.inference_mode():
            ys, status, steps = run(y0, q, tape)
        ys = ys.clone()
        run.result = (status, steps)
        ctx.tape, ctx.adj = tape, adj
        ctx.save_for_backward(q)
        ctx.tableau = run.tableau
        return ys

    @staticmethod
    def backward(ctx, grad_ys):  # noqa: D102
        first_derivatives_only()
        with single_threaded(grad_ys[:, 0]), torch.inference_mode():
            y_bar, q_bar, *rest = _backward(ctx, grad_ys)
        return (y_bar.clone(), q_bar.clone(), *rest)


def _backward(ctx, grad_ys):
    """The adjoint of every recorded step, last first (see the module)."""
    (q,) = ctx.saved_tensors
    tape, adj = ctx.tape, ctx.adj
    b, _, s = grad_ys.shape
    dev, dt = grad_ys.device, grad_ys.dtype
    mix = mixing(ctx.tableau, dt, dev)
    rows = torch.arange(b, device=dev)[:, None]
    idx = torch.as_tensor(tape.snap_idx, device=dev)
    g = torch.zeros((tape.n_snaps, b, s), dtype=dt, device=dev)
    g = g.index_put((idx, rows), torch.nan_to_num(grad_ys), accumulate=True)
    qc = Columns(q)
    y_bar = torch.zeros((b, s), dtype=dt, device=dev)
    r_bars, j_bars = [], []
    for step in reversed(tape.steps):
        if step.snap >= 0:
            y_bar = y_bar + g[step.snap]
        dy, r_bar, j_bar = _step_adjoint(adj, mix, step, qc, y_bar)
        y_bar = torch.where(step.accept[:, None], dy, y_bar)
        r_bars.append(r_bar)
        j_bars.append(j_bar)
    y_bar = y_bar + g[0]
    q_bar = torch.zeros_like(q)
    if tape.steps:
        # the constants' adjoint does not feed back into the steps: one call each
        # for every stage of every step
        steps = tape.steps[::-1]
        accept = torch.stack([st.accept for st in steps])[..., None]  # (n, B, 1)
        inputs = torch.stack([torch.stack(st.inputs) for st in steps])  # (n, s, B, S)
        # at the stages' times (d rhs/dt = 0, but a rate may switch at a time)
        tcs = torch.stack([st.tc for st in steps]).transpose(1, 2)  # (n, s, B)
        zf = adj.f_vjp_q(tcs, inputs, qc, torch.stack(r_bars))  # (n, s, B, H)
        zj = adj.jac_vjp_q(tcs[:, 0], torch.stack([st.y for st in steps]), qc,
                           torch.stack(j_bars))
        q_bar = (torch.where(accept, zf.sum(1), 0.0) + torch.where(accept, zj, 0.0)).sum(0)
    return y_bar, q_bar, None, None


def _step_adjoint(adj, mix, step, q, y_bar):
    """The state's adjoint through one Rosenbrock step (see the module), and what the
    constants' adjoint needs: the stages' r^ (stages, B, S) and the weights of the
    Jacobian's entries J^ (B, nonzeros)."""
    n_st = mix.stages
    inv_h = torch.reciprocal(step.h)
    mt = torch.addcmul(mix.ba, mix.bc, inv_h[:, None, None, None])  # (B, s, s + 1, 2)
    # rows 0..s-1: the stages' adjoints U_j^ (the last one starts as y_new^); row s: the
    # state's adjoint, the sum of the stage inputs' adjoints Y_i^
    u_bar = mix.last * y_bar[:, None, :]
    r_bars = [None] * n_st
    for i in range(n_st - 1, -1, -1):
        r_bar = torch.bmm(u_bar[:, i:i + 1], step.w_inv)  # (B, 1, S): W^-T u_i^
        y_i = torch.bmm(r_bar, step.jacs[i])  # (B, 1, S): J(Y_i)^T r_i^
        if i == n_st - 1:  # y_new = Y_last + U_last
            y_i = y_i + y_bar[:, None, :]
        u_bar = torch.baddbmm(u_bar, mt[:, i], torch.cat([y_i, r_bar], dim=1))
        r_bars[i] = r_bar
    r_mat = torch.cat(r_bars, dim=1)  # (B, s, S)
    j_bar = torch.bmm(r_mat.transpose(1, 2), step.stages).flatten(-2)[..., adj.entries]
    dy = adj.jac_vjp_y(step.tc[:, 0], step.y, q, j_bar)
    return u_bar[:, n_st] + dy, r_mat.transpose(0, 1), j_bar


class _Run:
    """The forward solve, called by the autograd function with its own inputs."""

    def __init__(self, step, tableau, ts, t0, options):
        self.step, self.tableau, self.ts, self.t0 = step, tableau, ts, t0
        self.options = options
        self.result: Any = None

    def __call__(self, y0, q, tape):
        step = self.step
        cols = step.columns(q)

        def rhs(t, y, kk):
            return step.rhs(t, y, cols if kk is q else step.columns(kk))

        def rhs_jac(t, y, kk):
            return step.rhs_jac(t, y, cols if kk is q else step.columns(kk))

        def jac(t, y, kk):
            return rhs_jac(t, y, kk)[1]

        return rosenbrock_solve(rhs, jac, None, self.ts, self.t0, y0, q, tableau=self.tableau,
                                rhs_jac=rhs_jac, tape=tape, **self.options)


def adjoint_rosenbrock_solve(step, adj, ts: torch.Tensor, t0: float, y0: torch.Tensor,
                             k: torch.Tensor, *, tableau, **options
                             ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``rosenbrock_solve`` with the step functions ``step`` (autonomous) whose gradient
    with respect to ``y0`` and ``k`` is a discrete adjoint (``adj``); same returns."""
    q = step.prep(k)
    run = _Run(step, tableau, ts, t0, options)
    ys = _Solve.apply(y0, q, run, adj)
    status, steps = run.result
    return ys, status, steps
