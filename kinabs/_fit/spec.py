"""What a fit is, apart from where and how long it runs: a :class:`FitSpec`.

The Trainer checks the user's options and freezes them into a FitSpec; the executor
pickles the same FitSpec to its workers. Both build the backend's training program from
it, so a chunk trained on a Dask worker runs the very program the Trainer would run.

Example:
    >>> import kinabs
    >>> from kinabs._fit.spec import FitSpec
    >>> spec = FitSpec(model=kinabs.load_sbml(kinabs.example_model_path()),
    ...                data=kinabs.TrainingData.from_csv(kinabs.example_data_path()),
    ...                parameters=("PSP.kcatB", "PSP.KBser"))
    >>> problem = spec.problem()
    >>> problem.train_names, problem.space, len(problem.experiments)
    (('PSP.kcatB', 'PSP.KBser'), 'log', 1)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kinabs._backend import get_backend
from kinabs._fit.data import TrainingData
from kinabs._lowering.system import OdeSystem, as_system
from kinabs._optim import BFGS, Bounds, LevenbergMarquardt, Method
from kinabs._options import AdjointOptions, SolverOptions
from kinabs._problem import CustomLoss, ExperimentArrays, FitProblem, TrainingProgram

__all__ = ["FitSpec", "default_method"]


def default_method(loss: CustomLoss | None) -> Method:
    """The Trainer's default optimiser: Levenberg-Marquardt on residuals (the default
    loss, or a :class:`kinabs.ResidualLoss`), BFGS on a custom loss that returns a scalar
    (see the README's "Optimisers" section for the measurements behind it)."""
    if loss is None or loss.residuals:
        return LevenbergMarquardt()
    return BFGS()


@dataclass(frozen=True)
class FitSpec:
    """A picklable, backend-neutral description of a fit.

    ``optimizer`` is ``None`` for the default (:func:`default_method`); ``loss`` is
    ``None`` for the default loss of ``optim_space``; ``bounds`` maps parameter names to
    (lower, upper) linear values. The fields are taken as given: the Trainer has checked
    them.
    """

    model: Any  # kinabs.Model
    data: TrainingData
    parameters: tuple[str, ...]
    backend: str = "jax"
    optim_space: str = "log"
    optimizer: Any = None
    loss: CustomLoss | None = None
    solver: SolverOptions = field(default_factory=lambda: SolverOptions(max_steps=4096))
    adjoint: AdjointOptions = field(default_factory=AdjointOptions)
    loss_threshold: float | None = None
    bounds: tuple[tuple[str, float, float], ...] = ()

    @property
    def system(self) -> OdeSystem:
        """The model's ODE system (lowered once and cached on the model)."""
        return as_system(self.model)

    def problem(self) -> FitProblem:
        """The arrays a backend trains on: every experiment aligned with the system."""
        system = self.system
        experiments = []
        for e in self.data.experiments:
            y0, y0_mask, p_index, p_values = system.initial_arrays(e.initial)
            keys = [system.output_key(s, "concentration") for s in e.species]
            experiments.append(ExperimentArrays(
                t0=float(e.times[0]), times=e.times, values=e.values, mask=e.mask,
                output_index=np.asarray([system.output_index[k] for k in keys]),
                y0=y0, y0_mask=y0_mask, p_index=p_index, p_values=p_values,
                species=e.species))
        box = Bounds.from_mapping({n: (lo, hi) for n, lo, hi in self.bounds},
                                  list(self.parameters), space=self.optim_space)
        return FitProblem(
            lower=box.lower, upper=box.upper,
            system=system, experiments=tuple(experiments),
            base_parameters=system.parameter_vector(),
            train_index=np.asarray([system.parameter_index[n] for n in self.parameters]),
            train_names=tuple(self.parameters), space=self.optim_space, solver=self.solver,
            adjoint=self.adjoint, loss=self.loss, loss_threshold=self.loss_threshold)

    def program(self, n_iter: int = 1) -> TrainingProgram:
        """The backend's compiled training program (it serves rounds of any length)."""
        backend = get_backend(self.backend)
        optimizer = default_method(self.loss) if self.optimizer is None else self.optimizer
        if self.system.events is not None:
            # a host-driven loop of solves between events, differentiated by replay
            from kinabs._event_gradients import EventTrainingProgram

            return EventTrainingProgram(self.problem(), optimizer, backend)
        return backend.training_program(self.problem(), optimizer, n_iter)
