"""The torch backend's face to kinabs: :class:`TorchBackend`, which hands simulation to
``_simulate`` and training to ``_train``."""

from __future__ import annotations

import functools
from typing import Any

import torch

from kinabs._backend import Backend, RawSolution
from kinabs.backends.torch._event_gradients import TorchEventEngine
from kinabs.backends.torch._events import event_segment
from kinabs.backends.torch._simulate import simulate
from kinabs.backends.torch._train import (
    TorchTrainingProgram,
    check_optimizer,
    default_optimizer,
)

__all__ = ["TorchBackend"]


class TorchBackend(Backend):
    """Backend on PyTorch: a batched Rosenbrock solver and torchdiffeq."""

    name = "torch"

    def event_engine(self, system, solver):
        return TorchEventEngine(system, solver)

    def event_segment(self, system, times, t_start, t_stop, y, k, sides, solver):
        return event_segment(system, times, t_start, t_stop, y, k, sides, solver)

    def simulate(self, system, times, parameters, *, t0, y0, y0_mask, output_index,
                 solver) -> RawSolution:
        return simulate(system, times, parameters, t0=t0, y0=y0, y0_mask=y0_mask,
                        output_index=output_index, solver=solver)

    def default_optimizer(self) -> Any:
        """AdaBelief (learning rate 1e-3) with updates clipped to a global norm of log(4)
        per initialisation: the JAX default, on torch (see ``_train.default_optimizer``)."""
        return default_optimizer()

    def check_optimizer(self, optimizer: Any) -> None:
        check_optimizer(optimizer)

    def adam(self, learning_rate: float) -> Any:
        return functools.partial(torch.optim.Adam, lr=learning_rate)

    def training_program(self, problem: Any, optimizer: Any, n_iter: int, *,
                         optimizer_key: str | None = None) -> TorchTrainingProgram:
        return TorchTrainingProgram(problem, optimizer, n_iter, optimizer_key=optimizer_key)
