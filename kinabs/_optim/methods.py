"""The optimiser options (typed, checked when made) and the protocol of their iterations.

A :class:`Method` iterates on batched arrays: ``x`` is (B, n), one row per start, in the
optimisation space. Each iteration evaluates the problem once at ``state["trial"]``
(residuals and their Jacobian for a least-squares method, loss and gradient otherwise)
and hands the values to :meth:`Method.update`, which accepts or rejects the trial point,
tests convergence and proposes the next trial point. A start whose evaluation fails
(``ok`` false) has its trial point rejected and tries a shorter step; the program
decides whether the failure ends the start instead (at its first point, or to hand it
to another solver).

Example:
    >>> import kinabs
    >>> kinabs.LevenbergMarquardt()
    LevenbergMarquardt(ftol=1e-08, xtol=1e-08, gtol=1e-08, initial_damping=0.001, jacobian='auto')
    >>> kinabs.BFGS(gtol=0)
    Traceback (most recent call last):
        ...
    kinabs._errors.DataError: BFGS.gtol must be a positive number; got 0.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np

from kinabs._errors import DataError
from kinabs._optim.bfgs import bfgs_init, bfgs_update
from kinabs._optim.lm import lm_init, lm_update

__all__ = ["Method", "LevenbergMarquardt", "BFGS", "Bounds", "is_method"]

_JACOBIANS = ("auto", "forward", "reverse")


def _positive(owner: str, name: str, value: Any) -> None:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not value > 0):
        raise DataError(f"{owner}.{name} must be a positive number; got {value!r}.")


class Method(ABC):
    """The protocol of an optimiser whose iterations kinabs runs itself.

    ``needs`` says what one evaluation computes: ``"residuals"`` (residual vector (B, m)
    and Jacobian (B, m, n), loss = sum of squares) or ``"gradient"`` (loss (B,) and
    gradient (B, n)). The state is a dict of arrays with a leading batch axis; it holds
    at least ``x`` (accepted point), ``trial`` (next point to evaluate), ``f`` (loss at
    ``x``; inf before the first evaluation), ``converged`` (bool), ``iterations``
    (accepted steps) and ``evaluations``.
    """

    needs: str = "gradient"

    @abstractmethod
    def init(self, x: Any, xp: Any, n_residuals: int = 0) -> dict[str, Any]:
        """The state of starts ``x`` (B, n); ``n_residuals``: the length of the residual
        vector (methods that need residuals)."""

    @abstractmethod
    def update(self, state: dict[str, Any], value: Any, deriv: Any, ok: Any, lower: Any,
               upper: Any, xp: Any, solve: Any, residuals: Any = None) -> dict[str, Any]:
        """The state after evaluating ``state["trial"]``: ``value``/``deriv`` as ``needs``
        says, ``ok`` (B,) false where the evaluation failed; ``lower``/``upper`` (n,)
        bounds (+-inf where none); ``solve(A, b)`` a batched linear solve (B, n, n) x
        (B, n) -> (B, n) (NaN where singular, never raising); ``residuals(points)`` ->
        ``(r (B, m), ok (B,))``: the residuals alone at (B, n) points (methods that need
        residuals use it for extra evaluations without derivatives)."""

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            if f.name in ("ftol", "xtol", "gtol", "initial_damping", "max_step"):
                _positive(type(self).__name__, f.name, getattr(self, f.name))


@dataclass(frozen=True)
class LevenbergMarquardt(Method):
    """Levenberg-Marquardt least squares on the fit's residual vector, with geodesic
    acceleration (Transtrum and Sethna, 2012) and box bounds.

    Each iteration takes the damped Gauss-Newton velocity ``v = -(J'J + lambda I)^-1
    J'r`` plus half the geodesic acceleration along it (one more evaluation of the
    residuals alone, at ``x + 0.1 v``), projects the step onto the bounds (a parameter
    at a bound whose gradient points outwards is held there) and accepts it when the
    loss falls. ``lambda`` starts at ``initial_damping``, is divided by 3 after an
    accepted step and doubled after a rejected one or one whose acceleration is large
    against its velocity. On sloppy models (most kinetic models) the acceleration keeps
    the steps in the curved valleys where plain Levenberg-Marquardt crawls or throws a
    start onto a plateau: on the serine example from ``benchmarks/serine_starts.csv``
    all five starts reach a loss of 7.4e-12 or below within 100 iterations (one goes to
    3.4e-16, below the 5.9e-15 of the model file's own values), against one of five
    without it. The Jacobian comes
    from forward-mode sensitivities (``jacobian="forward"``), reverse mode
    (``"reverse"``), or by the shape of the problem (``"auto"``: forward unless the
    fitted parameters outnumber the residuals by more than the backend's measured
    crossover: 4 on JAX, 1 on torch).

    A start has converged (defaults as scipy's ``least_squares``) when an accepted step
    lowers the loss by at most ``ftol`` of its value, when a step is shorter than
    ``xtol * (xtol + |x|)``, or when the largest component of the projected gradient is
    at most ``gtol`` times the loss (relative: the losses of a fit range over many
    decades). On serine, 1e-8 against 1e-10 ends the same five fits at the same losses
    after 61-87 evaluations instead of 62-100.

    Example:
        >>> import kinabs
        >>> model = kinabs.load_sbml(kinabs.example_model_path())
        >>> trainer = kinabs.Trainer(model=model, data=kinabs.example_data_path(), n_iter=40,
        ...                          optimizer=kinabs.LevenbergMarquardt(), progress=False)
        >>> _ = trainer.latinhypercube_sampling({}, lower_bound=0.5, upper_bound=2, N=2,
        ...                                     seed=1)
        >>> results = trainer.train()
        >>> bool(results.final_loss.max() < 1e-9), results.status
        (True, ['converged', 'converged'])
    """

    ftol: float = 1e-8
    xtol: float = 1e-8
    gtol: float = 1e-8
    initial_damping: float = 1e-3
    jacobian: Literal["auto", "forward", "reverse"] = "auto"

    needs = "residuals"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.jacobian not in _JACOBIANS:
            raise DataError(f"LevenbergMarquardt.jacobian must be one of {_JACOBIANS}; got "
                            f"{self.jacobian!r}.")

    def forward_jacobian(self, n_parameters: int, n_residuals: int,
                         crossover: float = 1.0) -> bool:
        """Whether the Jacobian is taken by forward-mode sensitivities: as asked, or
        (``"auto"``) where the parameters are at most ``crossover`` times the residuals;
        each backend measures its own crossover (a reverse pass costs more than a
        tangent)."""
        if self.jacobian == "auto":
            return n_parameters <= crossover * n_residuals
        return self.jacobian == "forward"

    def init(self, x, xp, n_residuals=0):
        return lm_init(self, x, xp, n_residuals)

    def update(self, state, value, deriv, ok, lower, upper, xp, solve, residuals=None):
        if residuals is None:
            raise TypeError("LevenbergMarquardt.update needs residuals(points)")
        return lm_update(self, state, value, deriv, ok, lower, upper, xp, solve, residuals)


@dataclass(frozen=True)
class BFGS(Method):
    """BFGS quasi-Newton on any scalar loss (custom losses included), with box bounds.

    A backtracking line search along the projected direction: each iteration evaluates
    one trial point, accepted when it meets Armijo's condition, else the step is cut
    (by quadratic interpolation, to between a tenth and a half). Steps are at most
    ``max_step`` long in the optimisation space (log2 units in log space). Parameters at
    a bound whose gradient points outwards are held there. Convergence tests as for
    :class:`LevenbergMarquardt`.

    Example:
        >>> import kinabs
        >>> model = kinabs.load_sbml(kinabs.example_model_path())
        >>> trainer = kinabs.Trainer(model=model, data=kinabs.example_data_path(), n_iter=5,
        ...                          optimizer=kinabs.BFGS(), progress=False)
        >>> trainer.parameter_sets = [model.parameter_values()]
        >>> r = trainer.train()
        >>> bool(r.loss_history[0, -1] <= r.loss_history[0, 0])
        True
    """

    ftol: float = 1e-10
    xtol: float = 1e-10
    gtol: float = 1e-10
    max_step: float = 2.0

    needs = "gradient"

    def init(self, x, xp, n_residuals=0):
        return bfgs_init(self, x, xp)

    def update(self, state, value, deriv, ok, lower, upper, xp, solve, residuals=None):
        return bfgs_update(self, state, value, deriv, ok, lower, upper, xp)


def is_method(optimizer: Any) -> bool:
    """Whether ``optimizer`` is one of kinabs' own methods (on every backend)."""
    return isinstance(optimizer, Method)


@dataclass(frozen=True)
class Bounds:
    """Box bounds of the fitted parameters in the optimisation space: (n,) arrays,
    -inf/+inf where a parameter is free. Made by :meth:`from_mapping` from linear values.

    Example:
        >>> from kinabs._optim import Bounds
        >>> b = Bounds.from_mapping({"k": (0.25, 4.0)}, ["k", "v"], space="log")
        >>> b.lower.tolist(), b.upper.tolist()
        ([-2.0, -inf], [2.0, inf])
    """

    lower: np.ndarray
    upper: np.ndarray

    @classmethod
    def from_mapping(cls, bounds: Mapping[str, Any] | None, names: list[str], *,
                     space: str) -> Bounds:
        n = len(names)
        lower, upper = np.full(n, -np.inf), np.full(n, np.inf)
        if bounds is None:
            return cls(lower, upper)
        if not isinstance(bounds, Mapping):
            raise DataError("bounds must map parameter names to (lower, upper) in linear "
                            f"values, e.g. {{'k1': (1e-3, 1e3)}}; got {type(bounds).__name__}.")
        unknown = [k for k in bounds if k not in names]
        if unknown:
            raise DataError(f"bounds name parameter(s) {unknown} that are not fitted; fitted "
                            f"parameters are {names[:30]}.")
        for name, pair in bounds.items():
            try:
                if isinstance(pair, (str, bytes)):
                    raise TypeError
                lo, hi = (float(v) for v in pair)
            except (TypeError, ValueError):
                raise DataError(f"bounds[{name!r}] must be a pair (lower, upper) of numbers; "
                                f"got {pair!r}.") from None
            if math.isnan(lo) or math.isnan(hi):
                raise DataError(f"bounds[{name!r}] holds NaN; give numbers (use -inf or inf "
                                "for no bound).")
            if not lo < hi:
                raise DataError(f"bounds[{name!r}] = ({lo}, {hi}) is the wrong way round or "
                                "empty: the lower bound must be below the upper one.")
            if space == "log":
                if hi <= 0:
                    raise DataError(f"bounds[{name!r}] = ({lo}, {hi}): in log space the upper "
                                    "bound must be positive.")
                lo = math.log2(lo) if lo > 0 else -math.inf
                hi = math.log2(hi)
            i = names.index(name)
            lower[i], upper[i] = lo, hi
        return cls(lower, upper)

    def check(self, theta: np.ndarray, names: list[str]) -> None:
        """DataError naming the first start and parameter outside the bounds."""
        bad = (theta < self.lower) | (theta > self.upper)
        if bad.any():
            row, col = (int(v[0]) for v in np.nonzero(bad))
            raise DataError(
                f"start {row} has {names[col]} outside its bounds; every start must lie "
                "within the bounds (sample the starts within them, or widen the bounds).")

    @property
    def any(self) -> bool:
        return bool(np.isfinite(self.lower).any() or np.isfinite(self.upper).any())
