"""Default losses, written once against the array API (numpy, jax.numpy and torch alike).

Each returns ``(sum of squared residuals, number of observed values)`` for one experiment;
the Trainer adds both over experiments and divides, so a loss is a mean over every
measured value and a perfect fit scores exactly 0 whatever the NaNs. Missing values
(``mask`` false) contribute nothing, neither to the residuals nor to the scales.

* :func:`mean_centered_terms` (default in log space): the seed's mean-centred loss. Data and
  predictions are shifted by +1 and divided, per species, by the mean of the shifted data;
  unlike the seed, missing values are excluded from the means and the residuals.
* :func:`squared_error_terms` (default in linear space): plain mean squared error.

Example:
    >>> import numpy as np, array_api_compat.numpy as xp
    >>> obs = np.array([[1.0, np.nan], [2.0, 4.0]])
    >>> sse, n = mean_centered_terms(obs.copy(), obs, np.isfinite(obs), xp)
    >>> float(sse), int(n)
    (0.0, 3)
"""

from __future__ import annotations

from typing import Any

__all__ = ["mean_centered_terms", "mean_centered_scale", "mean_centered_residuals",
           "squared_error_terms", "squared_error_residuals", "DEFAULT_TERMS",
           "DEFAULT_RESIDUALS"]


def mean_centered_residuals(pred: Any, obs: Any, mask: Any, xp: Any) -> Any:
    """The residuals of :func:`mean_centered_terms`, (times, species), 0 where missing."""
    obs0 = xp.where(mask, obs, 0.0)
    return xp.where(mask, (pred - obs0) / mean_centered_scale(obs, mask, xp), 0.0)


def mean_centered_terms(pred: Any, obs: Any, mask: Any, xp: Any) -> tuple[Any, Any]:
    """Mean-centred squared residuals of one experiment: (times, species) arrays."""
    resid = mean_centered_residuals(pred, obs, mask, xp)
    return xp.sum(resid * resid), xp.sum(xp.astype(mask, pred.dtype))


def mean_centered_scale(obs: Any, mask: Any, xp: Any) -> Any:
    """The per-species divisor of :func:`mean_centered_terms`: the mean of the measured
    values shifted by +1 (1 for a species without measurements)."""
    obs0 = xp.where(mask, obs, 0.0)
    maskf = xp.astype(mask, obs0.dtype)
    count = xp.sum(maskf, axis=0)
    scale = xp.sum(maskf * (obs0 + 1.0), axis=0) / xp.maximum(count, 1.0)
    # an unmeasured species (or one whose shifted mean is 0) must not put inf/NaN into
    # the gradient through the masked branch
    return xp.where(scale == 0.0, 1.0, scale)


def squared_error_residuals(pred: Any, obs: Any, mask: Any, xp: Any) -> Any:
    """Plain residuals of one experiment, 0 where missing."""
    return xp.where(mask, pred - xp.where(mask, obs, 0.0), 0.0)


def squared_error_terms(pred: Any, obs: Any, mask: Any, xp: Any) -> tuple[Any, Any]:
    """Squared residuals of one experiment."""
    resid = squared_error_residuals(pred, obs, mask, xp)
    return xp.sum(resid * resid), xp.sum(xp.astype(mask, pred.dtype))


#: optimisation space -> default loss terms
DEFAULT_TERMS = {"log": mean_centered_terms, "linear": squared_error_terms}

#: optimisation space -> the residuals of the default loss: the loss is the sum of their
#: squares over every experiment, divided by the number of measured values
DEFAULT_RESIDUALS = {"log": mean_centered_residuals, "linear": squared_error_residuals}
