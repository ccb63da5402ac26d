"""Levenberg-Marquardt with geodesic acceleration on batched arrays (see
:class:`kinabs.LevenbergMarquardt`).

Transtrum and Sethna's method for sloppy models (arXiv:1201.5885): the velocity
``v = -(J'J + lambda I)^-1 J'r`` is corrected by the acceleration
``a = -(J'J + lambda I)^-1 J' r_vv``, where ``r_vv``, the second directional derivative of
the residuals along ``v``, costs one extra evaluation of the residuals alone at
``x + h v``. The step ``v + a/2`` follows the curved valleys that plain Gauss-Newton
steps leave; a step whose acceleration is large against its velocity
(``2|a| > alpha |v|``) falls back to the plain damped step ``v``, and the damping grows.
(The probe point ``x + h v`` is not projected onto the bounds: the model is evaluated a
tenth of a step beyond them at most.) Damping: divided by 3
after an accepted step, doubled after a rejected one.
"""

from __future__ import annotations

from typing import Any

from kinabs._optim._common import (
    held,
    norm,
    project,
    projected_gradient_norm,
    step_small,
    where_rows,
)

__all__ = ["lm_init", "lm_update"]

#: finite-difference step of the directional second derivative, relative to ``v``
_H = 0.1
#: largest ratio 2|a| / |v| of a step that is tried
_ALPHA = 0.75
_UP, _DOWN = 2.0, 3.0


def lm_init(opts: Any, x: Any, xp: Any, n_residuals: int) -> dict[str, Any]:
    b, n = x.shape
    zeros = xp.zeros((b,), dtype=x.dtype)
    return dict(x=x, trial=x, f=zeros + float("inf"), r=xp.zeros((b, n_residuals), dtype=x.dtype),
                J=xp.zeros((b, n_residuals, n), dtype=x.dtype),
                lam=zeros + opts.initial_damping,
                converged=xp.zeros((b,), dtype=xp.bool),
                iterations=xp.zeros((b,), dtype=xp.int64),
                evaluations=xp.zeros((b,), dtype=xp.int64))


def _damped_solve(J: Any, rhs: Any, lam: Any, free: Any, xp: Any, solve: Any) -> Any:
    """``(J'J + lam I)^-1 rhs`` on the free parameters (0 on the held ones)."""
    n = J.shape[-1]
    eye = xp.eye(n, dtype=J.dtype)
    A = xp.matrix_transpose(J) @ J + lam[:, None, None] * eye
    A = A * free[:, :, None] * free[:, None, :] + (1.0 - free)[:, :, None] * eye
    out = solve(A, rhs * free)
    return xp.where(xp.isfinite(out), out, 0.0) * free


def lm_update(opts: Any, s: dict[str, Any], r: Any, J: Any, ok: Any, lower: Any, upper: Any,
              xp: Any, solve: Any, residuals: Any) -> dict[str, Any]:
    """``residuals(points) -> (r, ok)``: the residuals alone at (B, n) points."""
    x, trial, f = s["x"], s["trial"], s["f"]
    r = xp.where(ok[:, None], r, 0.0)
    J = xp.where(ok[:, None, None], J, 0.0)
    f_t = xp.where(ok, xp.sum(r * r, axis=-1), float("inf"))
    has = xp.isfinite(f)
    dx = trial - x
    actual = xp.where(has, f - f_t, 0.0)
    accept = ok & (~has | (actual > 0))
    stepped = accept & has
    lam = xp.where(stepped, s["lam"] / _DOWN, xp.where(accept, s["lam"], s["lam"] * _UP))
    x_new = where_rows(accept, trial, x, xp)
    f_new = xp.where(accept, f_t, f)
    r_k = where_rows(accept, r, s["r"], xp)
    J_k = where_rows(accept, J, s["J"], xp)
    Jt = xp.matrix_transpose(J_k)
    g = (Jt @ r_k[..., None])[..., 0]
    # convergence: a small relative fall, a short step, a small projected gradient
    small_fall = stepped & (actual <= opts.ftol * f_new)
    short = stepped & step_small(dx, x, opts.xtol, xp)
    flat = xp.isfinite(f_new) & (projected_gradient_norm(x_new, 2.0 * g, lower, upper, xp)
                                 <= opts.gtol * f_new)
    exact = f_new <= 0.0
    # the next trial point: velocity and acceleration on the free parameters
    free = xp.astype(~held(x_new, g, lower, upper), x.dtype)
    v = _damped_solve(J_k, -g, lam, free, xp, solve)
    r_h, ok_h = residuals(x_new + _H * v)
    r_vv = (2.0 / _H) * ((r_h - r_k) / _H - (J_k @ v[..., None])[..., 0])
    r_vv = xp.where(ok_h[:, None], r_vv, 0.0)
    a = _damped_solve(J_k, -(Jt @ r_vv[..., None])[..., 0], lam, free, xp, solve)
    curved = ~ok_h | (2.0 * norm(a, xp) > _ALPHA * norm(v, xp))
    # a large acceleration (or, at the data's floor, one made of solver noise): the plain
    # damped step, with more damping for the next one
    lam = xp.where(curved & xp.isfinite(f_new), lam * _UP, lam)
    step = xp.where(curved[:, None], v, v + 0.5 * a)
    trial_new = project(x_new + step, lower, upper, xp)
    stalled = xp.isfinite(f_new) & step_small(trial_new - x_new, x_new, opts.xtol, xp)
    converged = s["converged"] | small_fall | short | flat | exact | stalled
    return dict(x=x_new, trial=trial_new, f=f_new, r=r_k, J=J_k, lam=lam,
                converged=converged, iterations=s["iterations"] + xp.astype(stepped, xp.int64),
                evaluations=s["evaluations"] + 1)
