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

__all__ = ["ExperimentArrays", "FitProblem", "TrainingProgram", "CustomLoss", "ResidualLoss",
           "FIT_STATUS", "FAILED", "CONVERGED", "MAX_ITERATIONS", "STATUS_KINDS",
           "status_kind"]

#: Status of one initialisation during a fit.
FIT_STATUS = {
    0: "ok",
    1: "failed: max_steps_reached",
    2: "failed: nonfinite solution",
    3: "failed: solver error",
    4: "failed: nonfinite loss or gradient",
    5: "converged",
    6: "max_iterations",
}

#: The codes of :data:`FIT_STATUS` that mean a start failed (and may be resampled).
FAILED = (1, 2, 3, 4)
#: A start that met its method's convergence test: it trains no further, also on resume.
CONVERGED = 5
#: A start of a method with convergence tests that ran out of iterations (set at the end
#: of a round; it trains on in the next).
MAX_ITERATIONS = 6


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

    With ``residuals=True`` (see :class:`ResidualLoss`) ``fn`` returns an array of
    residuals instead, and the loss is the sum of their squares over experiments.
    """

    fn: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    residuals: bool = False

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
class ResidualLoss:
    """Marks a custom loss as returning residuals: ``fn(params, ts, ys, [model], **kw)``
    returns an array (any shape) whose squares, summed over the array and over
    experiments, are the loss. Least-squares methods (:class:`kinabs.LevenbergMarquardt`)
    need this form; every other optimiser minimises the sum of squares.

    Example:
        >>> import kinabs
        >>> def residuals(params, ts, ys, model):
        ...     return model(ts, ys[0])[1:, 0] - ys[1:, 0]
        >>> model = kinabs.load_sbml(kinabs.example_model_path())
        >>> trainer = kinabs.Trainer(model=model, data=kinabs.example_data_path(), n_iter=2,
        ...                          loss=kinabs.ResidualLoss(residuals), progress=False,
        ...                          optimizer=kinabs.LevenbergMarquardt())
        >>> trainer.loss.residuals
        True
    """

    fn: Callable[..., Any]


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
    #: box bounds (R,) in the optimisation space; -inf/inf where a parameter is free
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None

    @property
    def n_residuals(self) -> int:
        """Length of the default loss's residual vector (every (time, species) cell)."""
        return int(sum(e.values.size for e in self.experiments))


#: The kinds of status a start can end with: its status string is one of the first
#: three, or a failure (``"failed: <reason>"``).
STATUS_KINDS = (FIT_STATUS[0], FIT_STATUS[CONVERGED], FIT_STATUS[MAX_ITERATIONS], "failed")


def status_kind(status: str) -> str:
    """``"ok"``, ``"converged"`` or ``"max_iterations"`` for those statuses, ``"failed"`` for
    every other one (``"failed: <reason>"``)."""
    return status if status in STATUS_KINDS[:3] else "failed"


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

    def counts(self, state: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """(iterations, evaluations) of each start so far for methods that count them
        (accepted steps, and evaluations of loss and derivative); ``None`` for optimisers
        whose every iteration is one step."""
        return None

    chunk: int = 25
    #: whether the program's optimiser has convergence tests (statuses "converged" and
    #: "max_iterations" instead of "ok")
    tests_convergence: bool = False
