"""Pieces both methods share: bounds, the active set and the convergence tests, on batched
arrays of any array-API namespace ``xp``."""

from __future__ import annotations

from typing import Any

__all__ = ["project", "held", "projected_gradient_norm", "step_small", "batched_dot"]


def project(x: Any, lower: Any, upper: Any, xp: Any) -> Any:
    """``x`` (B, n) clipped into the box."""
    return xp.minimum(xp.maximum(x, lower), upper)


def held(x: Any, grad: Any, lower: Any, upper: Any) -> Any:
    """(B, n) bool: at a bound with the gradient pointing out of the box (held there)."""
    return ((x <= lower) & (grad > 0)) | ((x >= upper) & (grad < 0))


def projected_gradient_norm(x: Any, grad: Any, lower: Any, upper: Any, xp: Any) -> Any:
    """Largest component of the projected gradient ``x - P(x - grad)`` (B,)."""
    return xp.max(xp.abs(x - project(x - grad, lower, upper, xp)), axis=-1)


def norm(v: Any, xp: Any) -> Any:
    return xp.sqrt(xp.sum(v * v, axis=-1))


def step_small(step: Any, x: Any, xtol: float, xp: Any) -> Any:
    """(B,) bool: a step shorter than ``xtol * (xtol + |x|)``."""
    return norm(step, xp) <= xtol * (xtol + norm(x, xp))


def batched_dot(a: Any, b: Any, xp: Any) -> Any:
    return xp.sum(a * b, axis=-1)


def where_rows(mask: Any, new: Any, old: Any, xp: Any) -> Any:
    """``new`` where the (B,) ``mask`` holds, else ``old`` (any trailing shape)."""
    m = xp.reshape(mask, mask.shape + (1,) * (new.ndim - 1))
    return xp.where(m, new, old)
