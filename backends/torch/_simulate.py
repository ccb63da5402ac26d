"""Simulation on torch: which solver runs, and how its gradient is taken.

:func:`solve` is the one way a torch solve starts: ``kinabs.simulate`` (through
:func:`simulate`), ``VectorField.solve`` and training all call it.

``method="auto"`` follows the policy of every backend (``kinabs._stages``): Dormand-Prince
first, capped at :data:`AUTO_EXPLICIT_STEP_CAP` steps; what it cannot finish, the
Rosenbrock solver; what that cannot finish either, Dormand-Prince without a cap.
torchdiffeq shares one step size across the batch, so when any member of its first stage
fails, the whole batch counts as failed and is redone; without gradients kinabs' own
Dormand-Prince runs instead (``_solvers.dopri5``), each member its own steps and status.

A Rosenbrock solve whose gradient is wanted takes it by a discrete adjoint
(``_solvers.adjoint``) for autonomous systems with step functions, else by redoing each
accepted step with autograd (``_solvers.checkpoint``); an explicit solve, by autograd
through torchdiffeq or by its backsolve adjoint. Rosenbrock solves on the CPU in float64
of autonomous systems with step functions, plain or with the discrete adjoint, run in
numpy (``_solvers.host``) unless a forward-mode tangent rides on them.

Example:
    >>> import torch, kinabs
    >>> from kinabs.backends.torch._lowered import lowered
    >>> from kinabs.backends.torch._simulate import solve
    >>> system = kinabs.lower(kinabs.load_sbml(kinabs.example_model_path()))
    >>> low = lowered(system)
    >>> y0, k = low.fns.init(torch.tensor(0.0, dtype=torch.float64),
    ...                      torch.as_tensor(system.parameter_defaults)[None])
    >>> ys, status, steps = solve(low, torch.tensor([1.0, 2.0], dtype=torch.float64), 0.0,
    ...                           y0, k, solver=kinabs.SolverOptions(method="stiff"))
    >>> tuple(ys.shape), status
    ((1, 2, 2), array([0]))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kinabs._backend import RawSolution
from kinabs._errors import BackendError
from kinabs._lowering.events import refuse_events
from kinabs._options import AdjointOptions, SolverOptions, adjoint_options
from kinabs._stages import SolveStage, run_stages, solve_stages
from kinabs.backends.torch._lowered import Lowered, lowered
from kinabs.backends.torch._ops import Columns
from kinabs.backends.torch._solvers import (
    Rosenbrock,
    TorchDiffEq,
    adjoint_functions,
    adjoint_rosenbrock_solve,
    checkpointed_rosenbrock_solve,
    explicit_solve,
    host_adjoint_solve,
    host_ready,
    host_rosenbrock_solve,
    per_member,
    rosenbrock_solve,
)

__all__ = ["AUTO_EXPLICIT_STEP_CAP", "simulate", "solve", "torch_solver", "uses_backsolve"]

#: Explicit solves in "auto" mode that need more steps than this are redone implicitly.
#: Lower than the JAX backend's cap: an eager torch step costs far more than a compiled
#: one, and past this many steps the Rosenbrock solver is the cheaper way.
AUTO_EXPLICIT_STEP_CAP = 2_000


def torch_solver(method: Any) -> Rosenbrock | TorchDiffEq:
    """The torch solver of a ``SolverOptions.method`` other than ``"auto"`` (which
    :func:`kinabs._stages.solve_stages` turns into these)."""
    if method == "stiff":
        return Rosenbrock()
    if method == "nonstiff":
        return TorchDiffEq()
    if isinstance(method, (Rosenbrock, TorchDiffEq)):
        return method
    raise BackendError(
        f"the torch backend cannot use solver {method!r}: give 'auto', 'stiff', "
        "'nonstiff', kinabs.backends.torch.Rosenbrock(...) or TorchDiffEq('dopri8')."
    )


def uses_backsolve(adjoint: AdjointOptions | None, explicit: bool) -> bool:
    """Whether a solve takes its gradient by torchdiffeq's backsolve adjoint; raises for
    the adjoints torch cannot give (``explicit``: whether the solve may be torchdiffeq's)."""
    adjoint = adjoint_options(adjoint, AdjointOptions())
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
    subset is prepared once too: a step redone for some members (``_solvers.checkpoint``)
    calls every stage with the same subset, and under autograd one split costs one
    operation where reading a tensor's columns one by one costs one per read."""
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
    (``_solvers.adjoint``: autonomous systems with step functions, gradients wanted), else
    None (each accepted step redone with autograd, ``_solvers.checkpoint``, when gradients
    are wanted)."""
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
    stages = solve_stages(opts, explicit_cap=AUTO_EXPLICIT_STEP_CAP)
    explicit = any(isinstance(torch_solver(s.method), TorchDiffEq) for s in stages)
    backsolve = uses_backsolve(adjoint, explicit)
    n = y0.shape[0]
    if y0.shape[-1] == 0:
        # No state (every species constant or a boundary condition): nothing to solve;
        # the outputs depend on time and constants only.
        ys = y0[:, None, :].expand(n, times.shape[0], 0)
        return ys, np.zeros(n, np.int64), np.zeros(n, np.int64)
    common = dict(rtol=opts.rtol, atol=opts.atol, dt0=opts.dt0)
    rhs, jac, dfdt, rhs_jac = _stage_functions(low, k)
    breaks = low.fns.generated.time_breaks

    def stiff(y0, k, tableau, max_steps):
        adj = _discrete_adjoint(low, y0, k)
        host = host_ready(low.step, y0, k)
        if host is not None and (adj is not None or not _wants_gradient(y0, k)):
            # small CPU solves in numpy (_solvers.host): the same steps, cheaper operations
            if adj is None:
                return host_rosenbrock_solve(host, low.step, times, t0, y0, k,
                                             tableau=tableau, max_steps=max_steps,
                                             breaks=breaks, **common)
            if host.adjoint:
                return host_adjoint_solve(host, low.step, times, t0, y0, k, tableau=tableau,
                                          max_steps=max_steps, breaks=breaks, **common)
        if adj is not None:
            return adjoint_rosenbrock_solve(low.step, adj, times, t0, y0, k, tableau=tableau,
                                            max_steps=max_steps, breaks=breaks, **common)
        if _wants_gradient(y0, k):
            return checkpointed_rosenbrock_solve(
                rhs, jac, dfdt, rhs_jac, times, t0, y0, k, tableau=tableau,
                max_steps=max_steps, breaks=breaks, **common)
        return rosenbrock_solve(rhs, jac, dfdt, times, t0, y0, k, max_steps=max_steps,
                                tableau=tableau, rhs_jac=rhs_jac, breaks=breaks, **common)

    def nonstiff(y0, k, method, max_steps):
        return explicit_solve(rhs, times, t0, y0, k, method=method, max_steps=max_steps,
                              adjoint=backsolve, breaks=breaks, **common)

    def run(stage: SolveStage, members: np.ndarray):
        # the whole batch as the very tensors given: _stage_functions prepared k itself
        sub_y0, sub_k = y0, k
        if members.size < n:
            idx = torch.as_tensor(members, device=y0.device)
            sub_y0, sub_k = y0[idx], k[idx]
        method = torch_solver(stage.method)
        if isinstance(method, Rosenbrock):
            return stiff(sub_y0, sub_k, method.tableau, stage.max_steps)
        ys, status, steps = nonstiff(sub_y0, sub_k, method.method, stage.max_steps)
        if (not status.any() or members.size == 1
                or per_member(method.method, times, t0, sub_y0, sub_k, backsolve)):
            return ys, status, steps  # each member's own result
        if stage is not stages[-1]:
            # one step size for the batch: its members' results are one solve's, so the
            # next stage redoes them all (3, solver_failed, until it overwrites them)
            return ys, np.where(status != 0, status, 3), steps
        if len(stages) == 1:
            # the explicit solver is the user's choice: find which members fail by
            # solving them one by one (the members "auto" leaves to its last, uncapped
            # explicit stage keep their shared result: one full solve each is too dear)
            parts = [nonstiff(sub_y0[i:i + 1], sub_k[i:i + 1], method.method,
                              stage.max_steps) for i in range(members.size)]
            return (torch.cat([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                    np.concatenate([p[2] for p in parts]))
        return ys, status, steps

    return _run_stages(stages, n, run)


def _run_stages(stages: tuple[SolveStage, ...], n: int, run):
    """:func:`kinabs._stages.run_stages` with states that stay torch tensors (and keep
    their graph): ``run_stages`` tracks, per member, the row of the stages' stacked
    results that finished it; a stage no member keeps stays out of the graph (its
    failed members' NaN could reach the gradient)."""
    parts: list[torch.Tensor] = []
    starts = [0]

    def solve_members(stage, members):
        ys, status, steps = run(stage, members)
        parts.append(ys)
        starts.append(starts[-1] + members.size)
        return np.arange(starts[-2], starts[-1]), status, steps

    rows, status, steps = run_stages(stages, n, solve_members)
    which = np.searchsorted(starts, rows, side="right") - 1
    kept = np.unique(which)
    if kept.size == 1 and parts[kept[0]].shape[0] == n:
        return parts[kept[0]], status, steps  # one stage solved every member
    offset = np.zeros(len(parts), dtype=np.int64)
    offset[kept] = np.cumsum([0] + [parts[i].shape[0] for i in kept[:-1]])
    local = rows - np.asarray(starts)[which] + offset[which]
    stacked = torch.cat([parts[i] for i in kept])
    return stacked[torch.as_tensor(local, device=stacked.device)], status, steps


def simulate(system, times, parameters, *, t0, y0, y0_mask, output_index,
             solver) -> RawSolution:
    """``Backend.simulate`` on torch (see :class:`kinabs._backend.Backend`)."""
    refuse_events(system, "Backend.simulate")
    low = lowered(system)
    fns = low.fns
    with torch.no_grad():
        p = torch.as_tensor(np.asarray(parameters, dtype=np.float64))
        ts = torch.tensor(np.asarray(times, dtype=np.float64))  # a copy: may be read-only
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
