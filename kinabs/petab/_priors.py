"""PEtab v1 objective priors: log densities of the parameter table's
``objectivePriorType`` / ``objectivePriorParameters``.

The ``parameterScale*`` types are densities of the value on its ``parameterScale``; the
others are densities of the linear value (no Jacobian of the scale, as PEtab v1 states).
A parameter without a prior type contributes nothing.

Example:
    >>> import numpy as np
    >>> from kinabs.petab._priors import Prior
    >>> prior = Prior("normal", (1.0, 2.0), "lin")
    >>> round(float(prior.log_density(np.array([1.0]))[0]), 6)  # -log(2 sqrt(2 pi))
    -1.612086
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kinabs._errors import DataError

__all__ = ["Prior", "PRIOR_TYPES", "scale_values", "unscale_values"]

PRIOR_TYPES = ("uniform", "normal", "laplace", "logNormal", "logLaplace",
               "parameterScaleUniform", "parameterScaleNormal", "parameterScaleLaplace")


def scale_values(x: np.ndarray, scale: str) -> np.ndarray:
    """Linear values to ``scale`` (lin, log, log10)."""
    with np.errstate(all="ignore"):
        return {"lin": lambda v: v, "log": np.log, "log10": np.log10}[scale](x)


def unscale_values(x: np.ndarray, scale: str) -> np.ndarray:
    """Values on ``scale`` (lin, log, log10) to linear values."""
    with np.errstate(all="ignore"):
        return {"lin": lambda v: v, "log": np.exp, "log10": lambda v: 10.0 ** v}[scale](x)


def _normal(x, mu, sigma):
    return -0.5 * np.log(2 * np.pi * sigma ** 2) - 0.5 * ((x - mu) / sigma) ** 2


def _laplace(x, mu, b):
    return -np.log(2 * b) - np.abs(x - mu) / b


def _uniform(x, lo, hi):
    return np.where((x >= lo) & (x <= hi), -np.log(hi - lo), -np.inf)


@dataclass(frozen=True)
class Prior:
    """One parameter's objective prior: ``kind`` (a PEtab v1 prior type), its two
    parameters, and the parameter's ``parameterScale``."""

    kind: str
    parameters: tuple[float, float]
    scale: str

    def __post_init__(self) -> None:
        if self.kind not in PRIOR_TYPES:
            raise DataError(f"unknown objectivePriorType {self.kind!r}; PEtab v1 has "
                            f"{PRIOR_TYPES}.")

    def log_density(self, linear: np.ndarray) -> np.ndarray:
        """The log density at linear parameter values ``linear`` (any shape)."""
        a, b = self.parameters
        x = np.asarray(linear, dtype=float)
        with np.errstate(all="ignore"):
            if self.kind.startswith("parameterScale"):
                x = scale_values(x, self.scale)
            if self.kind in ("uniform", "parameterScaleUniform"):
                return _uniform(x, a, b)
            if self.kind in ("normal", "parameterScaleNormal"):
                return _normal(x, a, b)
            if self.kind in ("laplace", "parameterScaleLaplace"):
                return _laplace(x, a, b)
            if self.kind == "logNormal":
                return _normal(np.log(x), a, b) - np.log(x)
            return _laplace(np.log(x), a, b) - np.log(x)  # logLaplace
