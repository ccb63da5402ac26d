"""The event engine on JAX (see ``kinabs._event_gradients``): the replay of a recorded
simulation with events runs eagerly on jax arrays under ``jax.vjp``; each solve
between events is a compiled ``diffeqsolve`` with a compiled pullback (see
:func:`_solver`), its save times padded to a power of two (at least 8), so that a few
compiles serve every segment."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kinabs._options import SolverOptions
from kinabs._stages import solve_stages
from kinabs.backends.jax._events import _atoms
from kinabs.backends.jax._simulate import (
    AUTO_EXPLICIT_STEP_CAP,
    bound_once,
    lowered,
    make_solver,
    solve_one,
)

__all__ = ["JaxEventEngine"]


@functools.lru_cache(maxsize=32)
def _stage(system, method, opts: SolverOptions, max_steps: int):
    """One stage's compiled solve ``(ts, t0, y0, k) -> (ys, status)`` and its compiled
    pullback ``(ts, t0, y0, k, ct_ys) -> (ct_y0, ct_k)``."""
    fns = lowered(system)
    solver = make_solver(method)

    def one(ts, t0, y0, k):
        ys, status, _ = solve_one(fns, solver, opts, ts, t0, y0, k, max_steps=max_steps,
                                  system=system)
        return ys, status

    @jax.jit
    def backward(ts, t0, y0, k, ct):
        _, pull = jax.vjp(lambda a, b: one(ts, t0, a, b)[0], y0, k)
        return pull(ct)

    return jax.jit(one), backward


def _solver(system, opts: SolverOptions):
    """``solve(ts, t0, y0, k) -> (ys, status)``, differentiable in ``y0`` and ``k``: the
    stages of the solver policy (``kinabs._stages``: "auto" is Tsit5 with a step cap,
    then the Rosenbrock solver) one after another until one succeeds, with a custom
    derivative: the eager replay runs under ``jax.vjp`` on concrete values, so the
    stage is chosen on the host, and the pullback of the stage that solved is one
    compiled call (tracing the solve's derivative anew at each use would cost seconds)."""
    stages = solve_stages(opts, explicit_cap=AUTO_EXPLICIT_STEP_CAP)

    def run(ts, t0, y0, k):
        i = 0
        for i, stage in enumerate(stages):  # noqa: B007 - i is the stage that solved
            ys, status = _stage(system, stage.method, opts, stage.max_steps)[0](ts, t0, y0, k)
            if int(status) == 0:
                break
        return (ys, status), i

    @jax.custom_vjp
    def solve(ts, t0, y0, k):
        return run(ts, t0, y0, k)[0]

    def solve_fwd(ts, t0, y0, k):
        out, i = run(ts, t0, y0, k)
        return out, (ts, t0, y0, k, jnp.asarray(i))

    def solve_bwd(res, ct):
        ts, t0, y0, k, i = res
        stage = stages[int(i)]
        backward = _stage(system, stage.method, opts, stage.max_steps)[1]
        d_y0, d_k = backward(ts, t0, y0, k, ct[0])
        return jnp.zeros_like(ts), jnp.zeros_like(t0), d_y0, d_k

    solve.defvjp(solve_fwd, solve_bwd)
    return solve


class JaxEventEngine:
    """Arrays, functions, solves and derivative passes of an event replay on JAX."""

    xp = jnp

    def __init__(self, system: Any, solver: SolverOptions):
        self.system = system
        self.opts = solver
        self.fns = lowered(system)
        self.atoms = _atoms(system)
        _, self.values, self.delays, _ = bound_once(system, "jax-events", system.events.bind)
        self._solve = _solver(system, solver)

    def outputs(self, output_index):
        return self.fns.outputs_at(tuple(int(i) for i in output_index))

    @staticmethod
    def asarray(x):
        return jnp.asarray(np.asarray(x, dtype=np.float64))

    @staticmethod
    def stop(x):
        return jax.lax.stop_gradient(x)

    def solve(self, t0: float, times: np.ndarray, y0, k):
        n = times.size
        width = max(8, 1 << (n - 1).bit_length())  # a few padded shapes, not one per n
        ts = np.concatenate([times, np.full(width - n, times[-1])])
        ys, status = self._solve(jnp.asarray(ts), jnp.asarray(np.float64(t0)), y0, k)
        return ys[:n], status

    def value_and_grad(self, fn, theta: np.ndarray):
        with jax.enable_x64(True):
            def loss(x):
                r, statuses = fn(x)
                return jnp.sum(r * r), statuses

            (value, statuses), grad = jax.value_and_grad(loss, has_aux=True)(
                self.asarray(theta))
            return float(value), np.asarray(grad), _worst(statuses)

    def jacobian(self, fn, theta: np.ndarray):
        with jax.enable_x64(True):
            r, pull, statuses = jax.vjp(fn, self.asarray(theta), has_aux=True)
            # one pullback per residual: each reuses the compiled pullbacks of the
            # solves (a vmap over them would compile a batched one)
            eye = np.eye(r.shape[0])
            jac = np.stack([np.asarray(pull(jnp.asarray(row))[0]) for row in eye]) \
                if r.shape[0] else np.zeros((0, np.size(theta)))
            return np.asarray(r), jac, _worst(statuses)


def _worst(statuses) -> int:
    return max((int(s) for s in statuses), default=0)
