"""``kinabs conformance PROBLEM.yaml``: the backends on a PEtab problem.

At the nominal parameters (or ``shift`` away from them, seeded, on the parameters'
scales, where the gradient is not all noise):

==========================  ================================================================
check                       agreement
==========================  ================================================================
llh                         the numpy-driven ``evaluate`` on each backend:
                            ``|a - b| <= llh_rtol * (|b| + 1)`` (1e-6)
llh (compiled)              each compiled objective against ``evaluate`` on its backend
gradient                    each compiled gradient against central differences of the
                            compiled llh (step ``fd_step`` on the parameters' scales):
                            ``max_i |a_i - b_i| <= gradient_rtol * max_i |b_i|`` (1e-4);
                            ``unsupported`` on a backend without a compiled objective
==========================  ================================================================

Example:
    >>> from kinabs._conformance.petab import check_petab_conformance  # doctest: +SKIP
    >>> check_petab_conformance("Boehm_JProteomeRes2014.yaml").ok  # doctest: +SKIP
    True
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from kinabs._conformance.report import CheckRow, ConformanceReport
from kinabs._errors import BackendError
from kinabs._options import SolverOptions

__all__ = ["check_petab_conformance"]


def _verdict(worst: float, tol: float) -> str:
    return "agree" if worst <= tol else "disagree"


def check_petab_conformance(yaml_path: str | Path, *, backends: tuple[str, ...] = (
        "jax", "torch"), rtol: float = 1e-10, shift: float = 0.1, seed: int = 0,
        fd_step: float = 1e-3, llh_rtol: float = 1e-6, gradient_rtol: float = 1e-4
        ) -> ConformanceReport:
    """Compare the backends' log-likelihoods and the compiled gradient on a PEtab problem
    (see the module docstring)."""
    import kinabs.petab as kp

    t_start = time.perf_counter()
    problem = kp.load(yaml_path)
    solver = SolverOptions(method="stiff", rtol=rtol, atol=rtol / 100, max_steps=100_000)
    x0 = problem.x_nominal()
    x = x0 + shift * np.random.default_rng(seed).standard_normal(x0.size)
    rows: list[CheckRow] = []
    llh = {b: problem.evaluate(x, backend=b, solver=solver).llh for b in backends}
    worst = max((abs(llh[a] - llh[b]) / (abs(llh[b]) + 1.0)
                 for i, a in enumerate(backends) for b in backends[i + 1:]), default=0.0)
    rows.append(CheckRow(
        check="llh", jax=f"{llh.get('jax', float('nan')):.10g}",
        torch=f"{llh.get('torch', float('nan')):.10g}", reference="-",
        largest_difference=float(worst), tolerance=llh_rtol,
        verdict=_verdict(worst, llh_rtol) if len(backends) > 1 else "skipped",
        detail="evaluate() on each backend"))
    # the compiled objectives, where a backend has one
    compiled: dict[str, tuple[float, np.ndarray, np.ndarray]] = {}
    unsupported: dict[str, str] = {}
    for b in backends:
        try:
            objective = problem.objective(backend=b, solver=solver)
        except BackendError as exc:
            unsupported[b] = str(exc).split(" (")[0]
            continue
        value, grad = objective.value_and_grad(x)
        n = x.size
        steps = np.zeros((2 * n, n))
        steps[0::2][np.arange(n), np.arange(n)] = fd_step
        steps[1::2][np.arange(n), np.arange(n)] = -fd_step
        values = np.asarray(objective.value(x + steps), float)
        fd = (values[0::2] - values[1::2]) / (2 * fd_step)
        compiled[b] = (float(np.ravel(value)[0]), np.ravel(np.asarray(grad, float)), fd)
    if compiled:
        cols = {k: (f"{compiled[k][0]:.10g}" if k in compiled else
                    "unsupported" if k in unsupported else "-") for k in ("jax", "torch")}
        diff = max(abs(v[0] - llh[b]) / (abs(llh[b]) + 1.0) for b, v in compiled.items())
        rows.append(CheckRow(
            check="llh (compiled)", jax=cols["jax"], torch=cols["torch"], reference="-",
            largest_difference=float(diff), tolerance=llh_rtol,
            verdict=_verdict(diff, llh_rtol) if not unsupported or diff > llh_rtol
            else "unsupported",
            detail="each compiled objective against evaluate() on its backend"))
        gdiffs = {}
        for b, (_, g, fd) in compiled.items():
            scale = float(np.max(np.abs(fd))) if fd.size else 0.0
            ok = np.all(np.isfinite(fd)) and np.all(np.isfinite(g))
            gdiffs[b] = (float(np.max(np.abs(g - fd)) / scale) if scale > 0 else 0.0) \
                if ok else float("inf")
        gworst = max(gdiffs.values())
        gcols = {k: (f"{np.max(np.abs(compiled[k][1])):.6g}" if k in compiled else
                     "unsupported" if k in unsupported else "-") for k in ("jax", "torch")}
        any_fd = next(iter(compiled.values()))[2]
        rows.append(CheckRow(
            check="gradient", jax=gcols["jax"], torch=gcols["torch"],
            reference=f"{np.max(np.abs(any_fd)):.6g}", largest_difference=gworst,
            tolerance=gradient_rtol,
            verdict=_verdict(gworst, gradient_rtol) if not unsupported
            or gworst > gradient_rtol else "unsupported",
            detail=f"compiled gradient against central differences (step {fd_step:g}) of "
                   "the compiled llh" + "".join(f"; unsupported on {k}: {v}"
                                                for k, v in unsupported.items())))
    meta = {"model": Path(yaml_path).name, "data": "the problem's measurement table",
            "parameters": list(problem.x_free_ids), "point": x.tolist(),
            "solver": repr(solver), "backends": list(backends),
            "unsupported": unsupported,
            "seconds": round(time.perf_counter() - t_start, 2)}
    return ConformanceReport(model=Path(yaml_path).name, rows=rows, meta=meta)


def run(args: Any) -> ConformanceReport:
    """The ``kinabs conformance PROBLEM.yaml`` handler's work."""
    return check_petab_conformance(args.model, rtol=max(args.rtol, 1e-10), seed=args.seed)
