"""Optimisers that use the structure of a fit, written once for every backend.

:class:`LevenbergMarquardt` (least squares on the residual vector) and :class:`BFGS`
(quasi-Newton on any scalar loss) are typed option objects; their iterations are
functions of batched arrays (one row per start) written against the array API, so the
JAX program runs them inside its compiled, vmapped loop and torch runs them eagerly: the
same iterates on both backends. Box bounds are respected by projection with an active
set. See :mod:`kinabs._optim.methods`.
"""

from kinabs._optim.methods import (
    BFGS,
    Bounds,
    LevenbergMarquardt,
    Method,
    is_method,
)

__all__ = ["BFGS", "Bounds", "LevenbergMarquardt", "Method", "is_method"]
