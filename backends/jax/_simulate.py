"""Solving on JAX with diffrax: the pieces training shares, and one jit-compiled, vmapped
solve per batch for :func:`simulate`.

Example:
    >>> from kinabs.backends.jax._simulate import make_solver
    >>> type(make_solver("auto")).__name__, type(make_solver("stiff")).__name__
    ('Tsit5', 'Rosenbrock')
"""

from __future__ import annotations

import functools
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from kinabs._backend import RawSolution
from kinabs._errors import BackendError, UnsupportedFeatureError
from kinabs._lowering.events import refuse_events
from kinabs._lowering.jacobian import generate_jacobian
from kinabs._options import AdjointOptions, SolverOptions
from kinabs._stages import SolveStage, run_stages, solve_stages
from kinabs.backends.jax._ops import JaxOps
from kinabs.backends.jax._rosenbrock import JacobianTerm, Rosenbrock

__all__ = ["simulate", "lowered", "bound_once", "make_solver", "make_adjoint", "solve_one",
           "over_members", "step_controller", "gated_term", "symbolic_jacobian",
           "AUTO_EXPLICIT_STEP_CAP"]

#: Explicit solves in "auto" mode that need more steps than this are redone implicitly.
#: Measured on serine (rtol 1e-8, atol 1e-10, one vmapped batch): 100 perturbed
#: parameter sets take 20 / 39 / 54 / 100 / 902 ms with caps of 200 / 500 / 1000 / 2000 /
#: 20,000 (every member steps until the slowest explicit one stops), 16 ms all Rodas5;
#: the default parameters need 270 Tsit5 steps, which a cap of 500 leaves explicit.
AUTO_EXPLICIT_STEP_CAP = 500


def bound_once(system, key: str, bind):
    """``bind(JaxOps())`` made once per system and kept in its cache under ``key``.

    Bound eagerly even when first asked for inside a trace (the symbolic Jacobian is
    bound where a solve is traced): its constants must be arrays, not tracers that
    would leak into the system's cache (and fail to pickle with it)."""
    fns = system._cache.get(key)
    if fns is None:
        with jax.enable_x64(True), jax.ensure_compile_time_eval():
            fns = bind(JaxOps())
        system._cache[key] = fns
    return fns


def lowered(system):
    """The system's generated functions bound to jax.numpy (made once per system)."""
    return bound_once(system, "jax", system.generated.bind)


def symbolic_jacobian(system):
    """``jac(t, y, k) -> (S, S)``, the system's generated Jacobian bound to jax.numpy
    (made once per system), or None where it cannot be printed (the Rosenbrock solver
    then differentiates the vector field itself)."""
    def bind(ops):
        try:
            return generate_jacobian(system).bind(ops).jac
        except UnsupportedFeatureError:
            return None

    return bound_once(system, "jax-jacobian", bind)


def gated_term(rhs, solver, system=None) -> diffrax.ODETerm:
    """The term of every JAX solve: ``rhs(t, y, k)`` with ``args = (k, active)``, zero
    where ``active`` is False. For a :class:`Rosenbrock` solver it carries the symbolic
    Jacobian of ``system`` (where there is one)."""
    def vf(t, y, args):
        return jnp.where(args[1], rhs(t, y, args[0]), 0.0)

    jac = (symbolic_jacobian(system)
           if system is not None and isinstance(solver, Rosenbrock) else None)
    if jac is None:
        return diffrax.ODETerm(vf)
    return JacobianTerm(vf, lambda t, y, args: jnp.where(args[1], jac(t, y, args[0]), 0.0))


def _name(method: Any) -> str:
    """A solver as users wrote it: strings as themselves, objects by type (a torch
    Rosenbrock's repr is kilobytes of tableau)."""
    return repr(method) if isinstance(method, str) else type(method).__name__ + "(...)"


def make_solver(method: Any) -> diffrax.AbstractSolver:
    """Map a SolverOptions.method to a diffrax solver."""
    if method == "stiff":
        return Rosenbrock()
    if method in ("nonstiff", "auto"):
        return diffrax.Tsit5()
    if isinstance(method, diffrax.AbstractSolver):
        return method
    raise BackendError(
        f"the jax backend cannot use solver {_name(method)}: give 'auto', 'stiff', 'nonstiff' or a "
        "diffrax solver instance (e.g. diffrax.Kvaerno5())."
    )


def over_members(one, batching: str, n_mapped: int):
    """``one`` applied to each member of a batch: its first ``n_mapped`` arguments have a
    leading batch axis, the others are shared. Sequential (``lax.map``: a batch costs the
    sum of its members' steps) or vmapped (every member steps in lockstep with the
    slowest), as ``SolverOptions.batching`` says (its ``"auto"`` is vmap). A batch of one is solved unbatched (a
    vmapped while loop of one member cost serine 0.3 ms of its 0.9)."""
    def batched(*args):
        mapped, shared = args[:n_mapped], args[n_mapped:]
        if mapped[0].shape[0] == 1:
            out = one(*(a[0] for a in mapped), *shared)
            return jax.tree.map(lambda x: x[None], out)
        if batching == "sequential":
            return jax.lax.map(lambda m: one(*m, *shared), tuple(mapped))
        axes = (0,) * n_mapped + (None,) * len(shared)
        return jax.vmap(one, in_axes=axes)(*args)

    return batched


def make_adjoint(adjoint: AdjointOptions | None) -> diffrax.AbstractAdjoint:
    """Map AdjointOptions (default: checkpointed backpropagation) to a diffrax adjoint."""
    adjoint = adjoint or AdjointOptions()
    if adjoint.method == "checkpoint":
        return diffrax.RecursiveCheckpointAdjoint(checkpoints=adjoint.checkpoints)
    if adjoint.method == "backsolve":
        return diffrax.BacksolveAdjoint()
    return diffrax.ForwardMode()


def step_controller(opts: SolverOptions, solver: diffrax.AbstractSolver, breaks,
                    ts=None, *, dtmax=None) -> diffrax.PIDController:
    """The adaptive step-size controller of every JAX solve. Steps end at ``breaks``
    (the times where the vector field jumps: a rate piecewise in time). A
    :class:`Rosenbrock` solve also lands on the save times ``ts``: its dense output is
    cubic Hermite, whose error between steps (2e-6 of a state's largest value on serine
    at rtol 1e-8) would exceed the solve's; at the save times themselves it is exact
    (2e-7)."""
    return diffrax.PIDController(
        rtol=opts.rtol, atol=opts.atol, dtmax=dtmax,
        jump_ts=jnp.asarray(breaks, dtype=jnp.float64) if breaks else None,
        step_ts=ts if ts is not None and isinstance(solver, Rosenbrock) else None)


def solve_one(fns, solver: diffrax.AbstractSolver, opts: SolverOptions, ts, t0, y0, k,
              *, max_steps: int, adjoint: diffrax.AbstractAdjoint | None = None,
              active=None, system=None):
    """Solve one system from (t0, y0) with constants k; returns (ys (T, S), status, steps).

    Status codes follow ``kinabs._backend.STATUS``. ``active`` (a traced bool) set to
    False replaces the vector field by zero, so that a batch member whose result is not
    needed (a frozen start in a vmapped fit) costs a handful of steps, not a full solve.
    A member whose initial state or derivative at ``t0`` is not finite (a NaN value, a
    division by zero) is inactive too and reported ``nonfinite``: it could only fail,
    after ``max_steps`` rejected steps. ``system``, where given, lends a Rosenbrock
    solver its symbolic Jacobian."""
    # one evaluation of the vector field; its value is never differentiated
    start_ok = jax.lax.stop_gradient(
        jnp.all(jnp.isfinite(y0)) & jnp.all(jnp.isfinite(fns.rhs(t0, y0, k))))
    active = start_ok if active is None else active & start_ok
    k = (k, active)
    term = gated_term(fns.rhs, solver, system)
    controller = step_controller(opts, solver, fns.generated.time_breaks, ts)
    t1 = ts[-1]
    # diffrax needs t1 > t0; a zero-length solve returns y0 at every time.
    t1_safe = jnp.where(t1 > t0, t1, t0 + 1.0)
    sol = diffrax.diffeqsolve(
        term, solver, t0=t0, t1=t1_safe, dt0=opts.dt0, y0=y0, args=k,
        saveat=diffrax.SaveAt(ts=jnp.where(t1 > t0, ts, t0)),
        stepsize_controller=controller, max_steps=max_steps, throw=False,
        adjoint=adjoint or diffrax.RecursiveCheckpointAdjoint(),
    )
    ys = sol.ys
    ok = sol.result == diffrax.RESULTS.successful
    max_steps_hit = sol.result == diffrax.RESULTS.max_steps_reached
    finite = jnp.all(jnp.isfinite(ys))
    if isinstance(solver, (diffrax.AbstractImplicitSolver, Rosenbrock)):
        # A Jacobian that is not finite at the start (A**0.5 at A = 0) makes the Newton
        # update 0: the state never leaves its initial value, and the solve "succeeds";
        # a Rosenbrock step would only be rejected until max_steps.
        j0 = jax.jacfwd(lambda y: term.vf(t0, y, k))(y0)
        finite = finite & jax.lax.stop_gradient(jnp.all(jnp.isfinite(j0)))
    status = jnp.where(ok, jnp.where(finite, 0, 2), jnp.where(max_steps_hit, 1, 3))
    status = jnp.where(start_ok, status, 2)
    return ys, status, sol.stats["num_accepted_steps"]


# Module level, not per backend instance: a compiled solve depends only on its arguments,
# and a few of them per process cover every stage of "auto".
@functools.lru_cache(maxsize=64)
def _compiled(system, method, opts: SolverOptions, max_steps: int, has_y0: bool,
              output_index: tuple[int, ...]):
    fns = lowered(system)
    solver = make_solver(method)
    outputs = fns.outputs_at(output_index)  # bound outside the trace

    def one(p, y0_nat, mask, ts, t0):
        y0, k = fns.init(t0, p)
        if has_y0:
            factors = fns.to_state(t0, y0, k)
            y0 = jnp.where(mask, y0_nat * factors, y0)
        ys, status, steps = solve_one(fns, solver, opts, ts, t0, y0, k, max_steps=max_steps,
                                      system=system)
        out = outputs(ts, ys, k)
        # a start that is not finite fails on every solver: no later stage for it
        retry = jnp.all(jnp.isfinite(y0)) & jnp.all(jnp.isfinite(fns.rhs(t0, y0, k)))
        return out, status, steps, retry

    return jax.jit(over_members(one, opts.batching, 2))


def simulate(system, times, parameters, *, t0, y0, y0_mask, output_index, solver
             ) -> RawSolution:
    """``Backend.simulate`` on JAX: each stage of the solver policy (``kinabs._stages``)
    is one compiled solve of the members the stages before it failed. Arguments go in as
    numpy arrays (the compiled call converts them; a ``jnp.asarray`` each costs a
    dispatch)."""
    refuse_events(system, "Backend.simulate")
    has_y0 = y0 is not None
    parameters = np.asarray(parameters)
    y0 = np.asarray(y0) if has_y0 else np.zeros((parameters.shape[0], len(system.states)))
    oi = tuple(int(i) for i in output_index)
    stages = solve_stages(solver, explicit_cap=AUTO_EXPLICIT_STEP_CAP)
    with jax.enable_x64(True):
        mask = np.asarray(y0_mask if has_y0 else np.zeros(len(system.states), bool))
        shared = (mask, np.asarray(times, dtype=np.float64), np.float64(t0))

        def solve(stage: SolveStage, members: np.ndarray):
            fn = _compiled(system, stage.method, solver, stage.max_steps, has_y0, oi)
            return fn(parameters[members], y0[members], *shared)

        ys, status, steps, _ = run_stages(stages, parameters.shape[0], solve)
    return RawSolution(ys=ys, status=status, steps=steps)
