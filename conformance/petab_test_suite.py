"""Run the PEtab test suite (v1.0.0, SBML) on every backend and print one row per case.

Each case's problem is evaluated at its nominal parameters with
:meth:`kinabs.petab.PetabProblem.evaluate`, and compared as the suite's own
``petabtests.evaluate`` does: llh and chi2 within ``tol_llh`` / ``tol_chi2`` of the
case's solution, and the simulation table (sorted by observable, condition, time) within
``tol_simulations`` (mean absolute difference). With ``--compiled`` the compiled JAX
objective (:meth:`~kinabs.petab.PetabProblem.objective`) is checked against the same llh.

Usage::

    python -m conformance.petab_test_suite                 # all cases, jax and torch
    python -m conformance.petab_test_suite --backends jax --cases 0001 0005 --compiled

Example:
    >>> from conformance.petab_test_suite import default_suite_dir
    >>> default_suite_dir().name
    'sbml'
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

__all__ = ["default_suite_dir", "check_case", "main"]

HERE = Path(__file__).parent
SORT = ("observableId", "simulationConditionId", "time", "preequilibrationConditionId")


def default_suite_dir() -> Path:
    """``$KINABS_SHARED/petab/test-suite/v1.0.0/sbml`` or ``../shared/...`` beside the
    repository."""
    shared = Path(os.environ.get("KINABS_SHARED", HERE.resolve().parents[1] / "shared"))
    return shared / "petab" / "test-suite" / "v1.0.0" / "sbml"


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in SORT if c in df.columns]
    return df.sort_values(cols, kind="stable").reset_index(drop=True)


def check_case(folder: Path, backend: str, *, compiled: bool = False) -> dict:
    """One case on one backend: the differences and the verdict (``pass``, ``fail`` or
    ``error: <message>``)."""
    import kinabs.petab as kp

    case = folder.name
    solution = yaml.safe_load((folder / f"_{case}_solution.yaml").read_text())
    expected = pd.read_csv(folder / solution["simulation_files"][0], sep="\t")
    row = {"case": case, "backend": backend}
    t0 = time.perf_counter()
    try:
        problem = kp.load(folder / f"_{case}.yaml")
        result = problem.evaluate(backend=backend)
        ours, theirs = _sorted(result.simulation_df), _sorted(expected)
        sim = (float(np.abs(ours["simulation"].to_numpy() - theirs["simulation"].to_numpy())
                     .sum() / len(ours)) if len(ours) == len(theirs) else float("inf"))
        row.update(llh=result.llh, llh_diff=abs(result.llh - solution["llh"]),
                   chi2_diff=abs(result.chi2 - solution["chi2"]), sim_diff=sim)
        ok = (result.ok and row["llh_diff"] < solution["tol_llh"]
              and row["chi2_diff"] < solution["tol_chi2"] and sim < solution["tol_simulations"])
        if compiled and backend == "jax":
            llh = float(np.asarray(problem.objective(backend="jax").value(
                problem.x_nominal())).reshape(-1)[0])
            row["compiled_llh_diff"] = abs(llh - solution["llh"])
            ok = ok and row["compiled_llh_diff"] < solution["tol_llh"]
        row["verdict"] = "pass" if ok else "fail"
    except Exception as exc:  # noqa: BLE001 - every failure is a row of the table
        row["verdict"] = f"error: {type(exc).__name__}: {str(exc)[:160]}"
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", type=Path, default=default_suite_dir())
    ap.add_argument("--backends", nargs="+", default=["jax", "torch"])
    ap.add_argument("--cases", nargs="+", default=None, help="e.g. 0001 0009")
    ap.add_argument("--compiled", action="store_true",
                    help="also check the compiled JAX objective's llh")
    args = ap.parse_args(argv)
    if not args.suite.is_dir():
        print(f"no PEtab test suite at {args.suite}; set KINABS_SHARED", file=sys.stderr)
        return 2
    cases = args.cases or sorted(p.name for p in args.suite.iterdir()
                                 if p.is_dir() and p.name.isdigit())
    rows = [check_case(args.suite / c, b, compiled=args.compiled)
            for b in args.backends for c in cases]
    df = pd.DataFrame(rows)
    with pd.option_context("display.width", 160, "display.max_colwidth", 80,
                           "display.float_format", "{:.2e}".format):
        print(df.to_string(index=False))
    passed = (df["verdict"] == "pass").groupby(df["backend"]).sum()
    for b in args.backends:
        print(f"{b}: {int(passed.get(b, 0))} of {len(cases)} cases pass")
    return 0 if (df["verdict"] == "pass").all() else 1


if __name__ == "__main__":
    sys.exit(main())
