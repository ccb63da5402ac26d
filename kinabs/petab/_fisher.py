"""Levenberg-Marquardt on the Fisher information of a PEtab problem, one start at a time.

The nllh of normal (or Laplace) noise is a sum of squares plus the noise parameters'
logs; its expected Hessian, the Fisher information matrix (FIM), costs nothing beyond
the forward sensitivities that give the gradient (:meth:`Objective.value_grad_fim`).
Fides, pyPESTO's default optimiser for these problems, takes trust-region steps on the
same matrix; here a step solves ``(FIM + lambda D) p = -grad`` (``D`` the FIM's diagonal,
floored: Marquardt's scaling) on the parameters not held at a bound, is projected onto
the bounds, and is accepted when the nllh falls; ``lambda`` follows the ratio of actual
to predicted fall (Nielsen's update: divided by up to 3 after a good step, doubled,
quadrupled, ... after rejected ones). Such steps converge in tens of evaluations where
BFGS on the gradient alone takes hundreds.

Each start runs on its own (a one-member call of the compiled objective per
evaluation): a start that has converged costs nothing more, and no start waits on the
slowest solve of a batch, which on Boehm and Bruno made a vmapped call of 20 starts
100 times slower than one start's call (see ``benchmarks/README.md``).

Example:
    >>> from kinabs.petab._fisher import FisherLM, minimize
    >>> import numpy as np
    >>> # nllh = 0.5 |A x - b|^2: the FIM is A'A, exact; converges in a few steps
    >>> A, b = np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0]]), np.array([1.0, 2.0, 3.0])
    >>> def evaluate(x):
    ...     r = A @ x - b
    ...     return 0.5 * r @ r, A.T @ r, A.T @ A, True
    >>> out = minimize(evaluate, np.zeros(2), np.full(2, -5.0), np.full(2, 5.0),
    ...                FisherLM(), max_evaluations=50)
    >>> out.status, out.evaluations <= 10
    ('converged', True)
    >>> bool(np.allclose(out.x, np.linalg.lstsq(A, b, rcond=None)[0], atol=1e-6))
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kinabs._errors import DataError

__all__ = ["FisherLM", "StartResult", "minimize"]


@dataclass(frozen=True)
class FisherLM:
    """Levenberg-Marquardt on the gradient and Fisher information of the nllh, with box
    bounds (see the module docstring); the default method of :func:`kinabs.petab.fit`.

    A start has converged when an accepted step lowers the nllh by at most ``fatol +
    frtol * |nllh|`` (Fides' defaults: ``fatol`` 1e-6), when the largest component of
    the projected gradient is at most ``gatol`` (Fides': 1e-6), when a step is shorter
    than ``xtol * (xtol + |x|)``, or when the damping has grown past ``max_damping``
    (no step along the FIM lowers the nllh: the solver's noise floor).

    Example:
        >>> from kinabs.petab import FisherLM
        >>> FisherLM(fatol=0)
        Traceback (most recent call last):
            ...
        kinabs._errors.DataError: FisherLM.fatol must be a positive number; got 0.
    """

    fatol: float = 1e-6
    frtol: float = 1e-9
    gatol: float = 1e-6
    xtol: float = 1e-10
    initial_damping: float = 1e-3
    max_damping: float = 1e10

    def __post_init__(self) -> None:
        for name in ("fatol", "frtol", "gatol", "xtol", "initial_damping", "max_damping"):
            v = getattr(self, name)
            if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                    or not v > 0):
                raise DataError(f"FisherLM.{name} must be a positive number; got {v!r}.")


@dataclass(frozen=True)
class StartResult:
    """One start's end: ``x``, nllh ``f`` (inf if no evaluation succeeded), ``status``
    (``"converged"``, ``"max_iterations"`` or ``"failed"``), accepted steps, evaluations,
    and the best nllh after each evaluation (``history``)."""

    x: np.ndarray
    f: float
    status: str
    iterations: int
    evaluations: int
    history: list[float]


def _projected_gradient(x: np.ndarray, g: np.ndarray, lower: np.ndarray,
                        upper: np.ndarray) -> float:
    return float(np.max(np.abs(x - np.clip(x - g, lower, upper)))) if x.size else 0.0


def _step(x: np.ndarray, g: np.ndarray, H: np.ndarray, lam: float, lower: np.ndarray,
          upper: np.ndarray) -> np.ndarray:
    """The damped step from ``x``, projected onto the box; parameters at a bound whose
    gradient points outwards are held."""
    held = ((x <= lower) & (g > 0)) | ((x >= upper) & (g < 0))
    free = np.flatnonzero(~held)
    p = np.zeros_like(x)
    if free.size:
        Hf = H[np.ix_(free, free)]
        d = np.diag(Hf).copy()
        d = np.maximum(d, 1e-8 * max(float(np.max(d)), 1e-12) + 1e-12)
        A = Hf + lam * np.diag(d)
        try:
            p[free] = np.linalg.solve(A, -g[free])
        except np.linalg.LinAlgError:
            p[free] = np.linalg.lstsq(A, -g[free], rcond=None)[0]
        if not np.all(np.isfinite(p)):
            p[:] = 0.0
    return np.clip(x + p, lower, upper) - x


def minimize(evaluate: Callable[[np.ndarray], tuple[float, np.ndarray, np.ndarray, bool]],
             x0: np.ndarray, lower: np.ndarray, upper: np.ndarray, opts: FisherLM, *,
             max_evaluations: int, first: Any = None) -> StartResult:
    """Minimise from ``x0`` within [lower, upper]: ``evaluate(x) -> (nllh, grad, fim,
    ok)``; at most ``max_evaluations`` evaluations (``first``: the evaluation at ``x0``
    when already made, counted as one)."""
    x = np.asarray(x0, dtype=float).copy()
    f, g, H, ok = first if first is not None else evaluate(x)
    evaluations, iterations = 1, 0
    if not (ok and np.isfinite(f)):
        return StartResult(x, math.inf, "failed", 0, 1, [math.nan])
    history = [float(f)]
    lam, nu = opts.initial_damping, 2.0
    status = "max_iterations"
    if _projected_gradient(x, g, lower, upper) <= opts.gatol:
        status = "converged"
    while status != "converged" and evaluations < max_evaluations:
        p = _step(x, g, H, lam, lower, upper)
        if np.linalg.norm(p) <= opts.xtol * (opts.xtol + np.linalg.norm(x)):
            if lam <= opts.initial_damping:
                status = "converged"
                break
            # a step cut to nothing by the bounds under heavy damping: less damping
            lam, nu = lam / 3.0, 2.0
            continue
        predicted = -(g @ p + 0.5 * p @ H @ p)
        f_t, g_t, H_t, ok_t = evaluate(x + p)
        evaluations += 1
        if ok_t and np.isfinite(f_t) and f_t < f:
            fall = f - f_t
            rho = fall / predicted if predicted > 0 else 0.0
            x, f, g, H = x + p, float(f_t), g_t, H_t
            iterations += 1
            lam *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            nu = 2.0
            if (fall <= opts.fatol + opts.frtol * abs(f)
                    or _projected_gradient(x, g, lower, upper) <= opts.gatol):
                status = "converged"
        else:
            lam *= nu
            nu *= 2.0
            if lam > opts.max_damping:
                status = "converged"
        history.append(f)
    return StartResult(x, f, status, iterations, evaluations, history)


def fit_starts(objective: Any, x0: np.ndarray, redraw: Callable[[], np.ndarray],
               lower: np.ndarray, upper: np.ndarray, opts: FisherLM, *,
               max_evaluations: int, resample: int, bar: Any = None) -> dict[str, Any]:
    """:func:`minimize` from each row of ``x0`` in turn, on ``objective``
    (:class:`kinabs.petab.Objective`; one-member calls). A start whose first evaluation
    fails is replaced by ``redraw()`` up to ``resample`` times. Returns the arrays of
    :class:`kinabs.petab.PetabFitResult` (``x0`` updated with the redrawn starts), the
    seconds of the first call (compilation) and, per failed start, the status of its
    first failing condition."""
    import time

    compile_seconds = None

    def evaluate(x: np.ndarray):
        nonlocal compile_seconds
        t0 = time.perf_counter()
        llh, grad, fim = objective.value_grad_fim(x[None, :])
        if compile_seconds is None:
            compile_seconds = time.perf_counter() - t0
        f, g, h = -float(llh[0]), -grad[0], fim[0]
        ok = bool(np.isfinite(f) and np.all(np.isfinite(g)) and np.all(np.isfinite(h)))
        return f, g, h, ok

    def reason() -> str:
        bad = [str(s) for s in objective.last_status[0] if str(s) != "success"]
        return bad[0] if bad else "the objective or its gradient is not finite"

    x0 = np.array(x0, dtype=float)
    results, reasons = [], {}
    for i in range(x0.shape[0]):
        first = evaluate(x0[i])
        for _ in range(resample):
            if first[3]:
                break
            x0[i] = redraw()
            first = evaluate(x0[i])
        if not first[3]:
            reasons[i] = reason()
        results.append(minimize(evaluate, x0[i], lower, upper, opts,
                                max_evaluations=max_evaluations, first=first))
        if bar is not None:
            bar.update(1)
            best = min(r.f for r in results)
            bar.set_postfix(best=f"{best:.6g}")
    k = max(len(r.history) for r in results)
    history = np.full((len(results), k), np.nan)
    for i, r in enumerate(results):
        history[i, :len(r.history)] = r.history
        history[i, len(r.history):] = r.history[-1]
    return dict(
        starts=x0, x=np.stack([r.x for r in results]),
        nllh=np.asarray([r.f if np.isfinite(r.f) else np.nan for r in results]),
        status=[f"failed: {reasons.get(i, 'no evaluation succeeded')}"
                if r.status == "failed" else r.status for i, r in enumerate(results)],
        iterations=np.asarray([r.iterations for r in results]),
        evaluations=np.asarray([r.evaluations for r in results]),
        history=history, compile_seconds=compile_seconds or 0.0)
