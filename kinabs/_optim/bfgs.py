"""Projected BFGS with a backtracking line search, on batched arrays (see
:class:`kinabs.BFGS`).

Every iteration evaluates one trial point ``x + alpha d``, projected onto the bounds.
Accepted (Armijo): the inverse Hessian takes the BFGS update (scaled by ``s'y / y'y``
at the first one), ``alpha`` returns to 1. Rejected: ``alpha`` shrinks by quadratic
interpolation, to between 0.1 and 0.5 of itself (0.25 where the evaluation failed).

A short step, a small fall or a stalled line search (the trial step shrunk below
``xtol``) on a quasi-Newton direction does not end a start while its projected gradient
is large: a poor inverse Hessian gives such steps too. The start restarts from steepest
descent instead (``reset``): the inverse Hessian becomes ``gamma I``, ``gamma`` the last
``s'y / y'y`` (1 before any), rescaled at the next curvature update as at the first one,
and ``alpha`` returns to 1. Those tests end the start only on a steepest-descent
direction (its first one, or the one after a restart, before a quasi-Newton step), or
when the projected gradient is small (or the loss zero).
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
    # reset: the direction is steepest descent (the first one, or one after a restart),
    # with no quasi-Newton step since; gamma: the last s'y/y'y, the scale of a restart
    return dict(x=x, trial=x, f=zeros + float("inf"), g=xp.zeros_like(x),
                Hinv=xp.zeros((b, n, n), dtype=x.dtype) + eye,
                alpha=zeros + 1.0, scaled=xp.zeros((b,), dtype=xp.bool),
                gamma=zeros + 1.0, reset=xp.ones((b,), dtype=xp.bool),
                converged=xp.zeros((b,), dtype=xp.bool),
                iterations=xp.zeros((b,), dtype=xp.int64),
                evaluations=xp.zeros((b,), dtype=xp.int64))


def _clip(d: Any, opts: Any, xp: Any) -> Any:
    """``d`` (B, n) shortened to at most ``max_step``."""
    length = norm(d, xp)
    return d * xp.minimum(1.0, opts.max_step / xp.where(length > 0, length, 1.0))[:, None]


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
    gamma = xp.where(curved, sy / xp.where(yy > 0, yy, 1.0), s["gamma"])
    H0 = xp.where((curved & ~s["scaled"])[:, None, None], gamma[:, None, None] * eye,
                  s["Hinv"])
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
    done = flat | exact
    # a short step or a small fall ends the start on a steepest-descent direction; on a
    # quasi-Newton one (the inverse Hessian may be poor) it restarts from steepest descent
    steepest = s["reset"]
    ended = (small_fall | short) & steepest
    restart = (small_fall | short) & ~steepest & ~done
    reset = (steepest & ~curved) | restart
    Hinv = where_rows(restart, gamma[:, None, None] * eye, Hinv, xp)
    scaled = (s["scaled"] | curved) & ~restart
    # the next direction: quasi-Newton on the free parameters, steepest descent if that
    # is not a descent direction
    free = xp.astype(~held(x_new, g_new, lower, upper), x.dtype)
    d = -(Hinv @ (g_new * free)[..., None])[..., 0] * free
    descent = batched_dot(d, g_new, xp) < 0
    d = where_rows(descent, d, -g_new * free, xp)
    Hinv = where_rows(descent | ~accept, Hinv, Hinv * 0.0 + eye, xp)
    reset = reset | ~descent
    trial_new = project(x_new + alpha[:, None] * _clip(d, opts, xp), lower, upper, xp)
    # a line search that stalled: the end on steepest descent, else a restart from it
    stalled = xp.isfinite(f_new) & step_small(trial_new - x_new, x_new, opts.xtol, xp)
    again = stalled & ~reset & ~done & ~ended
    sd = _clip(-gamma[:, None] * g_new * free, opts, xp)
    trial_new = where_rows(again, project(x_new + sd, lower, upper, xp), trial_new, xp)
    Hinv = where_rows(again, gamma[:, None, None] * eye, Hinv, xp)
    alpha = xp.where(again, 1.0, alpha)
    scaled = scaled & ~again
    converged = s["converged"] | done | ended | (stalled & reset)
    return dict(x=x_new, trial=trial_new, f=f_new, g=g_new, Hinv=Hinv, alpha=alpha,
                scaled=scaled, gamma=gamma, reset=reset | again, converged=converged,
                iterations=s["iterations"] + xp.astype(stepped, xp.int64),
                evaluations=s["evaluations"] + 1)
