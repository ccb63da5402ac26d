"""Simulation on JAX with diffrax: one jit-compiled, vmapped solve per batch."""

from __future__ import annotations

import functools
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from kinabs._backend import Backend, RawSolution
from kinabs._errors import BackendError
from kinabs._options import AdjointOptions, SolverOptions
from kinabs.backends.jax._ops import JaxOps

__all__ = ["JaxBackend", "lowered", "make_solver", "solve_one"]

#: Explicit solves in "auto" mode that need more steps than this are redone implicitly.
AUTO_EXPLICIT_STEP_CAP = 20_000


def lowered(system):
    """The system's generated functions bound to jax.numpy (made once per system)."""
    fns = system._cache.get("jax")
    if fns is None:
        with jax.enable_x64(True):
            fns = system.generated.bind(JaxOps())
        system._cache["jax"] = fns
    return fns


def make_solver(method: Any) -> diffrax.AbstractSolver:
    """Map a SolverOptions.method to a diffrax solver."""
    if method == "stiff":
        return diffrax.Kvaerno5()
    if method in ("nonstiff", "auto"):
        return diffrax.Tsit5()
    if isinstance(method, diffrax.AbstractSolver):
        return method
    raise BackendError(
        f"the jax backend cannot use solver {method!r}: give 'auto', 'stiff', 'nonstiff' or a "
        "diffrax solver instance (e.g. diffrax.Kvaerno5())."
    )


def make_adjoint(adjoint: AdjointOptions | None) -> diffrax.AbstractAdjoint:
    adjoint = adjoint or AdjointOptions()
    if adjoint.method == "checkpoint":
        return diffrax.RecursiveCheckpointAdjoint(checkpoints=adjoint.checkpoints)
    if adjoint.method == "backsolve":
        return diffrax.BacksolveAdjoint()
    return diffrax.ForwardMode()


def solve_one(fns, solver: diffrax.AbstractSolver, opts: SolverOptions, ts, t0, y0, k,
              *, max_steps: int, adjoint: diffrax.AbstractAdjoint | None = None,
              active=None):
    """Solve one system from (t0, y0) with constants k; returns (ys (T, S), status, steps).

    Status codes follow ``kinabs._backend.STATUS``. ``active`` (a traced bool) set to
    False replaces the vector field by zero, so that a batch member whose result is not
    needed (a frozen start in a vmapped fit) costs a handful of steps, not a full solve."""
    if active is None:
        term = diffrax.ODETerm(lambda t, y, args: fns.rhs(t, y, args))
    else:
        k = (k, active)
        term = diffrax.ODETerm(
            lambda t, y, args: jnp.where(args[1], fns.rhs(t, y, args[0]), 0.0))
    # steps end at the times where the vector field jumps (a rate piecewise in time)
    breaks = fns.generated.time_breaks
    controller = diffrax.PIDController(
        rtol=opts.rtol, atol=opts.atol,
        jump_ts=jnp.asarray(breaks, dtype=jnp.float64) if breaks else None)
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
    if isinstance(solver, diffrax.AbstractImplicitSolver):
        # A Jacobian that is not finite at the start (A**0.5 at A = 0) makes the Newton
        # update 0: the state never leaves its initial value, and the solve "succeeds".
        j0 = jax.jacfwd(lambda y: term.vf(t0, y, k))(y0)
        finite = finite & jax.lax.stop_gradient(jnp.all(jnp.isfinite(j0)))
    status = jnp.where(ok, jnp.where(finite, 0, 2), jnp.where(max_steps_hit, 1, 3))
    return ys, status, sol.stats["num_accepted_steps"]


class JaxBackend(Backend):
    """Backend on JAX + diffrax (the default)."""

    name = "jax"

    def ops(self):
        with jax.enable_x64(True):
            return JaxOps()

    def default_optimizer(self):
        from kinabs.backends.jax._train import default_optimizer

        return default_optimizer()

    def check_optimizer(self, optimizer):
        import optax

        if not isinstance(optimizer, optax.GradientTransformation):
            hint = ""
            if isinstance(optimizer, type) or "torch" in type(optimizer).__module__:
                hint = " It looks like a torch optimizer: use backend='torch' for those."
            raise BackendError(
                "the jax backend needs an optax.GradientTransformation as optimizer, e.g. "
                f"optax.adam(1e-3); got {optimizer!r}.{hint}"
            )

    def adam(self, learning_rate):
        import optax

        return optax.adam(learning_rate)

    def training_program(self, problem, optimizer, n_iter, *, optimizer_key=None):
        from kinabs.backends.jax._train import JaxTrainingProgram

        return JaxTrainingProgram(problem, optimizer, n_iter, optimizer_key=optimizer_key)

    @functools.lru_cache(maxsize=64)  # noqa: B019 - a few compiled solvers per process
    def _compiled(self, system, method, opts: SolverOptions, max_steps: int, has_y0: bool,
                  output_index: tuple[int, ...]):
        fns = lowered(system)
        solver = make_solver(method)
        outputs = fns.outputs_at(output_index)  # bound outside the trace

        def one(p, y0_nat, mask, ts, t0):
            y0, k = fns.init(t0, p)
            if has_y0:
                factors = fns.to_state(t0, y0, k)
                y0 = jnp.where(mask, y0_nat * factors, y0)
            ys, status, steps = solve_one(fns, solver, opts, ts, t0, y0, k, max_steps=max_steps)
            out = outputs(ts, ys, k)
            return out, status, steps

        return jax.jit(jax.vmap(one, in_axes=(0, 0, None, None, None)))

    def simulate(self, system, times, parameters, *, t0, y0, y0_mask, output_index, solver):
        b = parameters.shape[0]
        has_y0 = y0 is not None
        with jax.enable_x64(True):
            y0_arr = jnp.asarray(y0 if has_y0 else np.zeros((b, len(system.states))))
            mask = jnp.asarray(y0_mask if has_y0 else np.zeros(len(system.states), bool))
            args = (jnp.asarray(parameters), y0_arr, mask, jnp.asarray(times),
                    jnp.asarray(t0, dtype=jnp.float64))
            oi = tuple(int(i) for i in output_index)
            method = solver.method
            first_steps = solver.max_steps
            if method == "auto":
                first_steps = min(solver.max_steps, AUTO_EXPLICIT_STEP_CAP)
            fn = self._compiled(system, method, solver, first_steps, has_y0, oi)
            ys, status, steps = (np.asarray(a) for a in fn(*args))
            # "auto": what the capped explicit solve fails is redone implicitly, and what
            # that fails too (Kvaerno5's chord iterations can fail to converge at rtol
            # 1e-12) explicitly with every step allowed
            fallbacks = [("stiff", solver.max_steps)]
            if first_steps < solver.max_steps:
                fallbacks.append(("nonstiff", solver.max_steps))
            for which, max_steps in fallbacks if method == "auto" else []:
                redo = np.flatnonzero(status != 0)
                if not redo.size:
                    break
                fn2 = self._compiled(system, which, solver, max_steps, has_y0, oi)
                sub = (args[0][redo], args[1][redo], *args[2:])
                ys2, st2, steps2 = (np.asarray(a) for a in fn2(*sub))
                ys, status, steps = ys.copy(), status.copy(), steps.copy()
                ys[redo], status[redo], steps[redo] = ys2, st2, steps2
        return RawSolution(ys=ys, status=status, steps=steps)
