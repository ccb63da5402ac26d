"""Projected BFGS with a backtracking line search, on batched arrays (see
:class:`kinabs.BFGS`).

Every iteration evaluates one trial point ``x + alpha d``, projected onto the bounds.
Accepted (Armijo): the inverse Hessian takes the BFGS update (scaled by ``s'y / y'y``
at the first one), ``alpha`` returns to 1. Rejected: ``alpha`` shrinks by quadratic
interpolation, to between 0.1 and 0.5 of itself (0.25 where the evaluation failed).
"""

from __future__ import annotations

from typing import Any

from kinabs._optim._common import (
    batched_dot,
    held,
    norm,
    project,
    projected_gradient_norm,
    step_small,
    where_rows,
)

__all__ = ["bfgs_init", "bfgs_update"]

_ARMIJO = 1e-4


def bfgs_init(opts: Any, x: Any, xp: Any) -> dict[str, Any]:
    b, n = x.shape
    zeros = xp.zeros((b,), dtype=x.dtype)
    eye = xp.eye(n, dtype=x.dtype)
    return dict(x=x, trial=x, f=zeros + float("inf"), g=xp.zeros_like(x),
                Hinv=xp.zeros((b, n, n), dtype=x.dtype) + eye,
                alpha=zeros + 1.0, scaled=xp.zeros((b,), dtype=xp.bool),
                converged=xp.zeros((b,), dtype=xp.bool),
                iterations=xp.zeros((b,), dtype=xp.int64),
                evaluations=xp.zeros((b,), dtype=xp.int64))


def bfgs_update(opts: Any, s: dict[str, Any], f_t: Any, g_t: Any, ok: Any, lower: Any,
                upper: Any, xp: Any) -> dict[str, Any]:
    x, trial, f, g = s["x"], s["trial"], s["f"], s["g"]
    f_t = xp.where(ok, f_t, float("inf"))
    g_t = xp.where(ok[:, None], g_t, 0.0)
    has = xp.isfinite(f)
    dx = trial - x
    slope = batched_dot(g, dx, xp)
    accept = ok & (~has | (f_t <= f + _ARMIJO * slope))
    stepped = accept & has
    # BFGS update of the inverse Hessian on accepted steps with positive curvature
    y = g_t - g
    sy = batched_dot(dx, y, xp)
    yy = batched_dot(y, y, xp)
    curved = stepped & (sy > 1e-12 * norm(dx, xp) * xp.sqrt(yy))
    n = x.shape[-1]
    eye = xp.eye(n, dtype=x.dtype)
    H0 = xp.where((curved & ~s["scaled"])[:, None, None],
                  (sy / xp.where(yy > 0, yy, 1.0))[:, None, None] * eye, s["Hinv"])
    rho = 1.0 / xp.where(curved, sy, 1.0)
    V = eye - rho[:, None, None] * (dx[:, :, None] * y[:, None, :])
    H_new = (V @ H0 @ xp.matrix_transpose(V)
             + rho[:, None, None] * (dx[:, :, None] * dx[:, None, :]))
    Hinv = where_rows(curved, H_new, s["Hinv"], xp)
    # line search: back to a full step after an accepted one, shorter after a rejection
    fall = f_t - f - slope
    quad = xp.where(xp.isfinite(fall) & (fall > 0), -0.5 * slope / xp.where(fall > 0, fall, 1.0),
                    0.5)
    cut = xp.where(ok, xp.minimum(xp.maximum(quad, 0.1), 0.5), 0.25)
    alpha = xp.where(accept, 1.0, s["alpha"] * cut)
    x_new = where_rows(accept, trial, x, xp)
    f_new = xp.where(accept, f_t, f)
    g_new = where_rows(accept, g_t, g, xp)
    # convergence tests, as for Levenberg-Marquardt; relative to |f|, since an objective
    # that is not a sum of squares (a negative log-likelihood) may be negative
    actual = f - f_t
    size = xp.abs(f_new)
    small_fall = stepped & (actual <= opts.ftol * size)
    short = stepped & step_small(dx, x, opts.xtol, xp)
    flat = xp.isfinite(f_new) & (projected_gradient_norm(x_new, g_new, lower, upper, xp)
                                 <= opts.gtol * size)
    exact = f_new == 0.0
    # the next direction: quasi-Newton on the free parameters, steepest descent if that
    # is not a descent direction
    free = xp.astype(~held(x_new, g_new, lower, upper), x.dtype)
    d = -(Hinv @ (g_new * free)[..., None])[..., 0] * free
    descent = batched_dot(d, g_new, xp) < 0
    d = where_rows(descent, d, -g_new * free, xp)
    Hinv = where_rows(descent | ~accept, Hinv, Hinv * 0.0 + eye, xp)
    length = norm(d, xp)
    d = d * xp.minimum(1.0, opts.max_step / xp.where(length > 0, length, 1.0))[:, None]
    trial_new = project(x_new + alpha[:, None] * d, lower, upper, xp)
    stalled = xp.isfinite(f_new) & step_small(trial_new - x_new, x_new, opts.xtol, xp)
    converged = s["converged"] | small_fall | short | flat | exact | stalled
    return dict(x=x_new, trial=trial_new, f=f_new, g=g_new, Hinv=Hinv, alpha=alpha,
                scaled=s["scaled"] | curved, converged=converged,
                iterations=s["iterations"] + xp.astype(stepped, xp.int64),
                evaluations=s["evaluations"] + 1)
