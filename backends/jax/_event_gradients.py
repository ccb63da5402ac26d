"""The event engine on JAX (see ``kinabs._event_gradients``): the replay of a recorded
simulation with events runs eagerly on jax arrays under ``jax.vjp``; each solve
between events is one compiled, differentiable ``diffeqsolve`` (padded to a fixed
number of save times, so that one compile serves every segment)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kinabs._options import SolverOptions
from kinabs.backends.jax._events import _atoms
from kinabs.backends.jax._simulate import bound_once, lowered, make_solver, solve_one

__all__ = ["JaxEventEngine"]


@functools.lru_cache(maxsize=16)
def _compiled(system, opts: SolverOptions):
    fns = lowered(system)
    solver = make_solver("stiff")

    def one(ts, t0, y0, k):
        ys, status, _ = solve_one(fns, solver, opts, ts, t0, y0, k,
                                  max_steps=opts.max_steps, system=system)
        return ys, jax.lax.stop_gradient(status)

    return jax.jit(one)


class JaxEventEngine:
    """Arrays, functions, solves and derivative passes of an event replay on JAX."""

    xp = jnp

    def __init__(self, system: Any, solver: SolverOptions):
        self.system = system
        self.opts = solver
        self.fns = lowered(system)
        self.atoms = _atoms(system)
        _, self.values, self.delays, _ = bound_once(system, "jax-events", system.events.bind)
        self._n_t = 0

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
        ys, status = _compiled(self.system, self.opts)(
            jnp.asarray(ts), jnp.asarray(np.float64(t0)), y0, k)
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
            jac = jax.vmap(pull)(jnp.eye(r.shape[0], dtype=r.dtype))[0]
            return np.asarray(r), np.asarray(jac), _worst(statuses)


def _worst(statuses) -> int:
    return max((int(s) for s in statuses), default=0)
