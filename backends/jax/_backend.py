"""The JAX backend's face: :class:`JaxBackend` hands each call of the ``Backend``
contract to the module that does the work (``_simulate``: solves; ``_train``: training).
"""

from __future__ import annotations

import optax

from kinabs._backend import Backend
from kinabs.backends.jax._event_gradients import JaxEventEngine
from kinabs.backends.jax._events import event_segment
from kinabs.backends.jax._simulate import simulate
from kinabs.backends.jax._train import JaxTrainingProgram, check_optimizer, default_optimizer

__all__ = ["JaxBackend"]


class JaxBackend(Backend):
    """Backend on JAX + diffrax (the default)."""

    name = "jax"

    def simulate(self, system, times, parameters, *, t0, y0, y0_mask, output_index, solver):
        return simulate(system, times, parameters, t0=t0, y0=y0, y0_mask=y0_mask,
                        output_index=output_index, solver=solver)

    def event_engine(self, system, solver):
        return JaxEventEngine(system, solver)

    def event_segment(self, system, times, t_start, t_stop, y, k, sides, solver):
        return event_segment(system, times, t_start, t_stop, y, k, sides, solver)

    def default_optimizer(self):
        return default_optimizer()

    def check_optimizer(self, optimizer):
        check_optimizer(optimizer)

    def adam(self, learning_rate):
        return optax.adam(learning_rate)

    def training_program(self, problem, optimizer, n_iter, *, optimizer_key=None):
        return JaxTrainingProgram(problem, optimizer, n_iter, optimizer_key=optimizer_key)

    def petab_objective(self, problem, *, solver, steady_state, adjoint):
        # imported here: it needs the petab extra, which plain simulation does not
        from kinabs.backends.jax._petab import petab_objective

        return petab_objective(problem, solver=solver, steady_state=steady_state,
                               adjoint=adjoint)
