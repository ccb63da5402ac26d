"""The backend-neutral description of a fit, handed by the Trainer to a backend.

A :class:`FitProblem` holds numpy arrays only; each backend turns it into a compiled
training program (:class:`TrainingProgram`) that trains all initialisations together.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kinabs._errors import DataError

__all__ = ["ExperimentArrays", "FitProblem", "TrainingProgram", "CustomLoss", "FIT_STATUS"]

#: Status of one initialisation during a fit.
FIT_STATUS = {
    0: "ok",
    1: "failed: max_steps_reached",
    2: "failed: nonfinite solution",
    3: "failed: solver error",
    4: "failed: nonfinite loss or gradient",
}


@dataclass(frozen=True)
class ExperimentArrays:
    """One experiment in array form, aligned with an OdeSystem."""

    t0: float
    times: np.ndarray  # (T,)
    values: np.ndarray  # (T, M), NaN = missing
    mask: np.ndarray  # (T, M) bool
    output_index: np.ndarray  # (M,) into system.outputs (species concentrations/amounts)
    y0: np.ndarray  # (S,) natural initial values where y0_mask
    y0_mask: np.ndarray  # (S,) bool
    p_index: np.ndarray  # (Q,) free parameters this experiment overrides (constant species)
    p_values: np.ndarray  # (Q,)
    species: tuple[str, ...] = ()


@dataclass(frozen=True)
class CustomLoss:
    """A user loss ``fn(params, ts, ys, [model], **kwargs)``.

    ``params`` is a dict name -> value in the optimisation space (log2 values in log space,
    as in the seed), ``ts`` and ``ys`` one experiment's times and data (NaN for missing;
    the first row's NaNs filled with the model's initial values), and ``model`` (passed
    when the function takes it) a callable ``model(ts, y0, params)`` that simulates the
    experiment's species from ``y0`` (NaN entries keep the model's value) with ``params`` in
    linear space. The loss of a fit is the sum over experiments.
    """

    fn: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise DataError(f"a loss function must be callable; got {type(self.fn).__name__}.")
        try:
            params = inspect.signature(self.fn).parameters
        except (TypeError, ValueError):
            return
        missing = [a for a in ("params", "ts", "ys") if a not in params]
        if missing:
            raise DataError(
                f"loss function {getattr(self.fn, '__name__', self.fn)!r} lacks the mandatory "
                f"argument(s) {missing}; its signature must start with (params, ts, ys, ...)."
            )
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        unknown = [k for k in self.kwargs if k not in params and not accepts_any]
        if unknown:
            raise DataError(f"loss function does not take the keyword argument(s) {unknown}.")

    @property
    def wants_model(self) -> bool:
        try:
            return "model" in inspect.signature(self.fn).parameters
        except (TypeError, ValueError):
            return False


@dataclass(frozen=True)
class FitProblem:
    """Everything a backend needs to build a training program."""

    system: Any
    experiments: tuple[ExperimentArrays, ...]
    base_parameters: np.ndarray  # (P,)
    train_index: np.ndarray  # (R,) into system.parameters
    train_names: tuple[str, ...]
    space: str  # "log" (log2 values) or "linear"
    solver: Any
    adjoint: Any
    loss: CustomLoss | None
    loss_threshold: float | None


class TrainingProgram(ABC):
    """A compiled program that trains N initialisations together.

    The state is opaque; ``theta`` is (N, R) in the optimisation space."""

    @abstractmethod
    def init(self, theta: np.ndarray) -> Any: ...

    @abstractmethod
    def run(self, state: Any, n_iter: int) -> tuple[Any, np.ndarray]:
        """Run ``n_iter`` iterations (<= ``chunk``); returns (state, losses (N, n_iter))."""

    @abstractmethod
    def reset(self, state: Any, mask: np.ndarray, theta: np.ndarray) -> Any:
        """Restart members ``mask`` from ``theta`` with fresh optimiser state."""

    @abstractmethod
    def theta(self, state: Any) -> np.ndarray: ...

    @abstractmethod
    def status(self, state: Any) -> np.ndarray:
        """(N,) codes of :data:`FIT_STATUS` (0: the start trains on)."""

    @abstractmethod
    def stopped(self, state: Any) -> np.ndarray:
        """(N,) bool: the start reached the problem's ``loss_threshold`` and stopped."""

    @abstractmethod
    def final_loss(self, state: Any) -> np.ndarray:
        """Loss of each member at its current parameters (NaN where it fails)."""

    @abstractmethod
    def value_and_grad(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Loss (N,), status (N,) and gradient (N, R) in the optimisation space of each row
        of ``theta`` (N, R): what one iteration computes (solver fallbacks included),
        without an update."""

    chunk: int = 25
