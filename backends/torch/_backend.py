"""Simulation on torch: the Rosenbrock solver (stiff) and torchdiffeq (explicit).

``method="auto"`` mirrors the JAX backend: an explicit solve first, with a step cap, and
the solves it cannot finish are redone with the stiff solver. torchdiffeq shares one step
size across the batch, so a failure there redoes the whole batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kinabs._backend import Backend, RawSolution
from kinabs._errors import BackendError
from kinabs._options import AdjointOptions, SolverOptions
from kinabs.backends.torch._adjoint import adjoint_rosenbrock_solve
from kinabs.backends.torch._checkpoint import checkpointed_rosenbrock_solve
from kinabs.backends.torch._module import Lowered, lowered
from kinabs.backends.torch._ops import Columns, TorchOps
from kinabs.backends.torch._solvers import (
    Rosenbrock,
    TorchDiffEq,
    explicit_solve,
    rosenbrock_solve,
)
from kinabs.backends.torch._stepfns import adjoint_functions

__all__ = ["TorchBackend", "solve", "AUTO_EXPLICIT_STEP_CAP"]

#: Explicit solves in "auto" mode that need more steps than this are redone implicitly.
#: Lower than the JAX backend's cap: an eager torch step costs far more than a compiled
#: one, and past this many steps the Rosenbrock solver is the cheaper way.
AUTO_EXPLICIT_STEP_CAP = 2_000


def _adjoint_flag(adjoint: AdjointOptions | None, explicit: bool) -> bool:
    adjoint = adjoint or AdjointOptions()
    if not isinstance(adjoint, AdjointOptions):
        raise TypeError(f"adjoint must be a kinabs.AdjointOptions; got {type(adjoint).__name__}")
    if adjoint.method == "forward":
        raise BackendError("the torch backend has no forward-mode sensitivities; use "
                           "AdjointOptions('checkpoint') (autograd) or 'backsolve'.")
    if adjoint.method == "checkpoint" and adjoint.checkpoints is not None:
        raise BackendError("the torch backend backpropagates through every step and cannot "
                           "limit checkpoints; leave AdjointOptions.checkpoints=None.")
    if adjoint.method == "backsolve" and not explicit:
        raise BackendError("AdjointOptions('backsolve') needs an explicit torchdiffeq solver "
                           "on torch: use SolverOptions(method='nonstiff').")
    return adjoint.method == "backsolve"


def _stage_functions(low: Lowered, k: torch.Tensor):
    """``(rhs, jac, dfdt, rhs_jac)`` of a solve with constants ``k``, each called as
    ``f(t, y, kk)`` with ``kk`` either ``k`` itself or a subset of its rows. With step
    functions (``low.step``), the constants are prepared once per solve; otherwise ``k``
    is split once (the generated functions read it only through ``ops.get``). The last
    subset is prepared once too: a step redone for some members (``_checkpoint``) calls
    every stage with the same subset, and under autograd one split costs one operation
    where reading a tensor's columns one by one costs one per read."""
    step = low.step
    prep = Columns if step is None else (lambda kk: step.columns(step.prep(kk)))
    whole = prep(k)
    last: list = [None, None]

    def prepared(kk):
        if kk is k:
            return whole
        if kk is not last[0]:
            last[:] = [kk, prep(kk)]
        return last[1]

    if step is not None:
        def rhs(t, y, kk):
            return step.rhs(t, y, prepared(kk))

        def rhs_jac(t, y, kk):
            return step.rhs_jac(t, y, prepared(kk))

        def jac(t, y, kk):
            return step.rhs_jac(t, y, prepared(kk))[1]

        dfdt = None
        if step.dfdt is not None:
            def dfdt(t, y, kk):
                return step.dfdt(t, y, prepared(kk))
        return rhs, jac, dfdt, rhs_jac

    def rhs(t, y, kk):  # noqa: F811 - the other branch returned
        return low.fns.rhs(t, y, prepared(kk))

    def jac(t, y, kk):  # noqa: F811
        return low.jac(t, y, prepared(kk))

    dfdt = None
    if low.dfdt is not None:
        def dfdt(t, y, kk):  # noqa: F811
            return low.dfdt(t, y, prepared(kk))
    return rhs, jac, dfdt, None


def _wants_gradient(y0: torch.Tensor, k: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (y0.requires_grad or k.requires_grad)


def _discrete_adjoint(low: Lowered, y0: torch.Tensor, k: torch.Tensor):
    """The adjoint functions when a Rosenbrock solve's gradient can be a discrete adjoint
    (``_adjoint``: autonomous systems with step functions, gradients wanted), else None
    (each accepted step redone with autograd, ``_checkpoint``, when gradients are
    wanted)."""
    if not _wants_gradient(y0, k):
        return None
    if low.step is None or low.step.dfdt is not None:
        return None
    return adjoint_functions(low.step)


def solve(low: Lowered, times: torch.Tensor, t0: float, y0: torch.Tensor, k: torch.Tensor,
          *, solver: SolverOptions | None = None, adjoint: AdjointOptions | None = None):
    """Solve a batch (``y0``: (B, S), ``k``: (B, K)) at ``times``; differentiable.

    Returns ``(ys (B, T, S), status (B,), steps (B,))`` (numpy status and steps)."""
    opts = solver or SolverOptions()
    method = opts.method
    if method == "stiff":
        method = Rosenbrock()
    elif method == "nonstiff":
        method = TorchDiffEq()
    elif not isinstance(method, (Rosenbrock, TorchDiffEq)) and method != "auto":
        raise BackendError(
            f"the torch backend cannot use solver {method!r}: give 'auto', 'stiff', "
            "'nonstiff', kinabs.backends.torch.Rosenbrock(...) or TorchDiffEq('dopri8')."
        )
    explicit = method == "auto" or isinstance(method, TorchDiffEq)
    backsolve = _adjoint_flag(adjoint, explicit)
    if y0.shape[-1] == 0:
        # No state (every species constant or a boundary condition): nothing to solve;
        # the outputs depend on time and constants only.
        b = y0.shape[0]
        ys = y0[:, None, :].expand(b, times.shape[0], 0)
        return ys, np.zeros(b, np.int64), np.zeros(b, np.int64)
    common = dict(rtol=opts.rtol, atol=opts.atol, dt0=opts.dt0)

    # The constants are split once per solve: the generated functions read them only
    # through ops.get (see TorchOps.columns); subsets (k[idx]) are passed through as is.
    rhs, jac, dfdt, rhs_jac = _stage_functions(low, k)
    breaks = low.fns.generated.time_breaks

    def stiff(y0, k, tableau=None):
        tab = tableau or Rosenbrock().tableau
        adj = _discrete_adjoint(low, y0, k)
        if adj is not None:
            return adjoint_rosenbrock_solve(low.step, adj, times, t0, y0, k, tableau=tab,
                                            max_steps=opts.max_steps, breaks=breaks,
                                            **common)
        if _wants_gradient(y0, k):
            return checkpointed_rosenbrock_solve(
                rhs, jac, dfdt, rhs_jac, times, t0, y0, k, tableau=tab,
                max_steps=opts.max_steps, breaks=breaks, **common)
        return rosenbrock_solve(rhs, jac, dfdt, times, t0, y0, k, max_steps=opts.max_steps,
                                tableau=tab, rhs_jac=rhs_jac, breaks=breaks, **common)

    if isinstance(method, Rosenbrock):
        return stiff(y0, k, method.tableau)
    name = method.method if isinstance(method, TorchDiffEq) else "dopri5"
    cap = opts.max_steps if method != "auto" else min(opts.max_steps, AUTO_EXPLICIT_STEP_CAP)
    ys, status, steps = explicit_solve(rhs, times, t0, y0, k, method=name, max_steps=cap,
                                       adjoint=backsolve, breaks=breaks, **common)
    if method == "auto" and np.any(status != 0):
        return stiff(y0, k)
    if np.any(status != 0) and y0.shape[0] > 1:
        # One shared step size: find which members fail by solving them one by one.
        parts = [explicit_solve(rhs, times, t0, y0[i:i + 1], k[i:i + 1], method=name,
                                max_steps=cap, adjoint=backsolve, breaks=breaks, **common)
                 for i in range(y0.shape[0])]
        ys = torch.cat([p[0] for p in parts])
        status = np.concatenate([p[1] for p in parts])
        steps = np.concatenate([p[2] for p in parts])
    return ys, status, steps


class TorchBackend(Backend):
    """Backend on PyTorch: a batched Rosenbrock solver and torchdiffeq."""

    name = "torch"

    def ops(self) -> TorchOps:
        return TorchOps()

    def simulate(self, system, times, parameters, *, t0, y0, y0_mask, output_index, solver):
        low = lowered(system)
        fns = low.fns
        with torch.no_grad():
            p = torch.as_tensor(np.asarray(parameters, dtype=np.float64))
            ts = torch.as_tensor(np.asarray(times, dtype=np.float64))
            t0_t = torch.tensor(float(t0), dtype=torch.float64)
            y_init, k = fns.init(t0_t, p)
            if y0 is not None:
                factors = fns.to_state(t0_t, y_init, k)
                mask = torch.as_tensor(np.asarray(y0_mask, dtype=bool))
                y_nat = torch.as_tensor(np.asarray(y0, dtype=np.float64))
                y_init = torch.where(mask, y_nat * factors, y_init)
            ys, status, steps = solve(low, ts, float(t0), y_init, k, solver=solver)
            out = fns.outputs_at(output_index)(ts, ys, k[:, None, :])
        return RawSolution(ys=out.cpu().numpy(), status=np.asarray(status, dtype=np.int64),
                           steps=np.asarray(steps, dtype=np.int64))

    # -- training -----------------------------------------------------------------
    def default_optimizer(self) -> Any:
        """AdaBelief (learning rate 1e-3) with updates clipped to a global norm of log(4)
        per initialisation: the JAX default, on torch (see ``_train.default_optimizer``)."""
        from kinabs.backends.torch._train import default_optimizer

        return default_optimizer()

    def check_optimizer(self, optimizer: Any) -> None:
        from kinabs.backends.torch._train import check_optimizer

        check_optimizer(optimizer)

    def adam(self, learning_rate: float) -> Any:
        import functools

        return functools.partial(torch.optim.Adam, lr=learning_rate)

    def training_program(self, problem: Any, optimizer: Any, n_iter: int, *,
                         optimizer_key: str | None = None) -> Any:
        from kinabs.backends.torch._train import TorchTrainingProgram

        return TorchTrainingProgram(problem, optimizer, n_iter, optimizer_key=optimizer_key)
