"""Multi-start fits of Benchmark-Models-PEtab problems with ``kinabs.petab.fit``.

For each problem: ``--starts`` Latin hypercube starts within the parameter table's bounds
(on each parameter's scale, ``--seed``), projected BFGS on the negative log-likelihood
(the compiled JAX objective, all starts in one batched call per iteration), at most
``--max-iterations`` evaluations per start. Prints the best nllh (and the nllh at the
problem's nominal values), the starts within 0.1 of the best ("converged" as the field
counts them), compile seconds, mean seconds per start and **seconds per converged start**,
beside PEtab.jl's published seconds per converged start.

pyPESTO with AMICI and Fides (the issue's reference peer) needs its own venv with AMICI's
C++ model builds; it is not run by this script yet.

Run:  python benchmarks/bench_petab_fit.py [--problems Boehm_JProteomeRes2014 ...]
      [--starts 100] [--max-iterations 200] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

COLLECTION = Path(__file__).resolve().parents[2] / "shared" / "petab" / "benchmark-models"
PROBLEMS = ("Boehm_JProteomeRes2014", "Bruno_JExpBot2016", "Crauste_CellSystems2017",
            "Fiedler_BMCSystBiol2016", "Fujita_SciSignal2010", "Sneyd_PNAS2002",
            "Brannmark_JBC2010")
#: PEtab.jl's published seconds per converged start (quoted in the issue)
PETAB_JL = {"Boehm_JProteomeRes2014": 0.006, "Bruno_JExpBot2016": 0.002,
            "Sneyd_PNAS2002": 0.037, "Crauste_CellSystems2017": 0.063,
            "Fiedler_BMCSystBiol2016": 0.085, "Brannmark_JBC2010": 0.31,
            "Fujita_SciSignal2010": 1.9}


def run(name: str, starts: int, max_iterations: int, seed: int) -> dict:
    import kinabs.petab as kp

    problem = kp.load(COLLECTION / name / f"{name}.yaml")
    nominal = -problem.evaluate().llh
    t0 = time.perf_counter()
    result = kp.fit(problem, n_starts=starts, seed=seed, max_iterations=max_iterations,
                    progress=False)
    wall = time.perf_counter() - t0
    within = result.n_within(0.1)
    statuses = {s.split(":")[0]: 0 for s in result.status}
    for s in result.status:
        statuses[s.split(":")[0]] += 1
    return {
        "problem": name, "parameters": len(problem.x_free_ids), "starts": starts,
        "nominal_nllh": nominal, "best_nllh": result.best_nllh, "within_0.1": within,
        "statuses": statuses, "compile_s": round(result.compile_seconds, 2),
        "wall_s": round(wall, 2), "s_per_start": wall / starts,
        "s_per_converged_start": wall / within if within else float("inf"),
        "s_per_converged_start_without_compile":
            (wall - result.compile_seconds) / within if within else float("inf"),
        "median_evaluations": float(np.median(result.evaluations)),
        "petab_jl_s_per_converged_start": PETAB_JL.get(name),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    ap.add_argument("--starts", type=int, default=100)
    ap.add_argument("--max-iterations", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    print(f"{'problem':28s} {'F':>3s} {'nominal':>10s} {'best':>10s} {'<=0.1':>6s} "
          f"{'compile s':>9s} {'s/start':>8s} {'s/conv':>8s} {'PEtab.jl':>8s}")
    for name in args.problems:
        try:
            r = run(name, args.starts, args.max_iterations, args.seed)
        except Exception as exc:  # noqa: BLE001 - a row per problem, whatever happens
            r = {"problem": name, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            print(f"{name:28s} error: {r['error']}", flush=True)
            rows.append(r)
            continue
        rows.append(r)
        jl = r["petab_jl_s_per_converged_start"]
        print(f"{name:28s} {r['parameters']:3d} {r['nominal_nllh']:10.4f} "
              f"{r['best_nllh']:10.4f} {r['within_0.1']:6d} {r['compile_s']:9.1f} "
              f"{r['s_per_start']:8.3f} {r['s_per_converged_start']:8.3f} "
              f"{jl if jl is not None else float('nan'):8.3f}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
