"""Fit one Benchmark-Models-PEtab problem with the field's reference tool: pyPESTO's PEtab
importer (an AMICI model: CVODES with sensitivities) and Fides (trust region, pyPESTO's
default hybrid FIM/BFGS Hessian), from GIVEN start points.

Run with the peer's own virtual environment (``bash benchmarks/_pypesto_env.sh``), never
with kinabs' one; ``benchmarks/bench_petab_fit.py --peer`` runs it as a subprocess:

    /work/pypesto-venv/bin/python benchmarks/peer_pypesto.py \
        --problem Boehm_JProteomeRes2014 --starts starts.csv --max-iterations 100

What it does and times, separately:

1. **build**: AMICI's C++ model of the problem (pyPESTO's importer,
   ``AmiciObjectiveCreator.create_model``), cached in ``--models-dir/<problem>``
   (default ``<venv>/amici_models``) and reused when it is there: ``build_s`` is the
   compile (or only the load, ``build_cached``); never part of the per-start times.
2. **check**: the llh at the parameter table's nominal values against AMICI's reference
   value (``/work/shared/petab/README.md``).
3. **gradient**: nllh and gradient at the nominal values with forward and with adjoint
   sensitivities, the median of ``--grad-repeats`` calls after one warm-up call each.
4. **fit**: ``pypesto.optimize.minimize`` with ``FidesOptimizer`` (at most
   ``--max-iterations`` iterations, Fides' ``maxiter``), one start per row of ``--starts``
   (a CSV whose header names the estimated parameters, values on their PEtab scales, as
   kinabs' ``latin_hypercube`` draws them), on one core (``SingleCoreEngine``).

Output: one JSON object on stdout after a line ``=== RESULT JSON ===`` (and in ``--out``).
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

SHARED = Path(os.environ.get("KINABS_SHARED_PETAB", "/work/shared/petab"))
MARKER = "=== RESULT JSON ==="


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problem", required=True, help="e.g. Boehm_JProteomeRes2014")
    ap.add_argument("--collection", type=Path, default=SHARED / "benchmark-models")
    ap.add_argument("--starts", type=Path, default=None,
                    help="CSV of start points (header: parameter ids; PEtab scale). "
                         "Default: --n-starts points of pyPESTO's own Latin hypercube.")
    ap.add_argument("--n-starts", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-iterations", type=int, default=200)
    ap.add_argument("--grad-repeats", type=int, default=10)
    ap.add_argument("--models-dir", type=Path,
                    default=Path(sys.prefix) / "amici_models")
    ap.add_argument("--no-fit", action="store_true", help="build, check and time only")
    ap.add_argument("--out", type=Path, default=None)
    return ap.parse_args(argv)


def amici_reference(problem: str) -> float | None:
    """AMICI's reference llh at the nominal values: the last column of the problem's row
    of the benchmark table in the shared data's README."""
    try:
        text = (SHARED / "README.md").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == problem and len(cells) > 5:
            try:
                return float(cells[-1])
            except ValueError:
                return None
    return None


def read_starts(path: Path, x_names: list[str]) -> np.ndarray:
    with path.open() as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    missing = [n for n in x_names if n not in header]
    if missing or len(header) != len(x_names):
        raise SystemExit(f"{path}: columns {header} do not match the estimated parameters "
                         f"{x_names} (missing {missing})")
    col = [header.index(n) for n in x_names]
    return np.asarray([[float(r[c]) for c in col] for r in body if r], dtype=float)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # The model's SWIG wrapper must come from the SWIG that built AMICI (the PyPI 'swig'
    # in this venv), not from a system swig earlier on PATH: a mismatch fails at import
    # ("'SwigPyObject' object has no attribute 'module'").
    venv_bin = Path(sys.prefix) / "bin"
    if (venv_bin / "swig").exists():
        os.environ["SWIG"] = str(venv_bin / "swig")
        os.environ["PATH"] = f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"
    import fides
    import petab.v1 as petab
    import pypesto
    import pypesto.optimize as optimize
    from amici.sim.sundials import SensitivityMethod
    from pypesto.petab import PetabImporter

    for logger in ("amici", "pypesto", "fides"):
        logging.getLogger(logger).setLevel(logging.WARNING)

    t_imports = time.perf_counter() - T_START
    name = args.problem
    yaml_path = args.collection / name / f"{name}.yaml"
    out: dict = {"problem": name, "tool": "pyPESTO + AMICI + Fides",
                 "versions": {p: _version(p) for p in ("pypesto", "amici", "fides", "petab")},
                 "python": platform.python_version(), "imports_s": round(t_imports, 2)}

    # -- 1. build (or load) the AMICI model -------------------------------------------------
    t0 = time.perf_counter()
    petab_problem = petab.Problem.from_yaml(yaml_path)
    # AMICI imports no timepoint-specific observable/noise parameter overrides (Fiedler):
    # flatten them into one observable per override, as AMICI's own benchmark tests do,
    # where AMICI's importer would refuse the problem (its own test, scalar numeric noise
    # parameters allowed unless a noise formula is nontrivial)
    out["flattened"] = bool(petab.measurement_table_has_timepoint_specific_mappings(
        petab_problem.measurement_df,
        allow_scalar_numeric_noise_parameters=not petab.lint
        .observable_table_has_nontrivial_noise_formula(petab_problem.observable_df)))
    if out["flattened"]:
        petab.flatten_timepoint_specific_output_overrides(petab_problem)
    folder = args.models_dir / name
    importer = PetabImporter(petab_problem, output_folder=str(folder), model_name=name)
    creator = importer.create_objective_creator()
    try:
        must = creator._must_compile(False)
    except Exception:  # noqa: BLE001 - a broken cached build: build it again
        must = True
    t1 = time.perf_counter()
    model = creator.create_model(force_compile=must, verbose=False)
    try:
        objective = creator.create_objective(model=model)
    except ValueError:  # a cached model of other observables (flattened or not)
        if must:
            raise
        # rebuild it in a fresh process: this one has imported the old module, and AMICI
        # refuses to import a module modified since
        import shutil

        print(f"cached model in {folder} does not fit the problem: rebuilding it",
              file=sys.stderr, flush=True)
        shutil.rmtree(folder)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    out["build_s"] = round(time.perf_counter() - t1, 2)
    out["build_cached"] = not must
    problem = importer.create_problem(objective)
    out["setup_s"] = round(time.perf_counter() - t0 - out["build_s"], 2)
    # pypesto.Problem keeps its own copy of the objective: set that one's solver
    solver = problem.objective.amici_solver
    out["solver"] = {"rtol": solver.get_relative_tolerance(),
                     "atol": solver.get_absolute_tolerance(),
                     "max_steps": solver.get_max_steps()}
    x_names = [problem.x_names[i] for i in problem.x_free_indices]
    out["parameters"] = len(x_names)

    # -- 2. llh at the nominal values against AMICI's reference -------------------------------
    x_nom = np.asarray(petab_problem.x_nominal_free_scaled, dtype=float)
    nllh_nom = float(problem.objective(x_nom))
    ref = amici_reference(name)
    out["nominal_llh"] = -nllh_nom
    out["amici_reference_llh"] = ref
    out["nominal_llh_minus_reference"] = None if ref is None else -nllh_nom - ref

    # -- 3. gradient at the nominal values, forward and adjoint -------------------------------
    grads = {}
    for label, method in (("forward", SensitivityMethod.forward),
                          ("adjoint", SensitivityMethod.adjoint)):
        solver.set_sensitivity_method(method)
        try:
            f, g = problem.objective(x_nom, sensi_orders=(0, 1))
            times = []
            for _ in range(args.grad_repeats):
                ts = time.perf_counter()
                f, g = problem.objective(x_nom, sensi_orders=(0, 1))
                times.append(time.perf_counter() - ts)
            grads[label] = np.asarray(g, float)
            out[f"gradient_{label}_s"] = float(np.median(times))
            out[f"gradient_{label}_nllh"] = float(f)
        except Exception as exc:  # noqa: BLE001 - record it, go on
            out[f"gradient_{label}_s"] = None
            out[f"gradient_{label}_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    if {"forward", "adjoint"} <= grads.keys():
        gf, ga = grads["forward"], grads["adjoint"]
        # relative to the gradient's norm: at the nominal values (a published optimum)
        # single components are near 0
        out["gradient_forward_vs_adjoint_max_abs"] = float(np.max(np.abs(gf - ga)))
        out["gradient_forward_vs_adjoint_rel_to_norm"] = float(
            np.max(np.abs(gf - ga)) / max(float(np.linalg.norm(gf)), 1e-300))
    if "forward" in grads:
        out["gradient_forward_norm"] = float(np.linalg.norm(grads["forward"]))
    solver.set_sensitivity_method(SensitivityMethod.forward)  # Fides' FIM needs forward

    # -- 4. multi-start Fides from the given points -------------------------------------------
    if not args.no_fit:
        if args.starts is not None:
            starts = read_starts(args.starts, x_names)
            out["starts_from"] = str(args.starts)
        else:
            sampler = pypesto.startpoint.LatinHypercubeStartpoints(use_guesses=False)
            np.random.seed(args.seed)
            starts = sampler(args.n_starts, problem)
            out["starts_from"] = f"pyPESTO LatinHypercubeStartpoints, numpy seed {args.seed}"
        lb, ub = np.asarray(problem.lb), np.asarray(problem.ub)
        starts = np.clip(starts, lb, ub)  # CSV rounding must not leave the box
        n = len(starts)
        problem.set_x_guesses(_full(problem, starts))
        optimizer = optimize.FidesOptimizer(
            options={fides.Options.MAXITER: args.max_iterations}, verbose=logging.ERROR)
        t0, c0 = time.perf_counter(), time.process_time()
        result = optimize.minimize(problem, optimizer=optimizer, n_starts=n,
                                   engine=pypesto.engine.SingleCoreEngine(),
                                   progress_bar=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        runs = list(result.optimize_result.list)
        fvals = np.asarray([r.fval if r.fval is not None else np.nan for r in runs], float)
        fvals = np.where(np.isfinite(fvals), fvals, np.nan)
        best = float(np.nanmin(fvals)) if np.isfinite(fvals).any() else float("nan")
        within = int(np.sum(np.isfinite(fvals) & (fvals <= best + 0.1)))
        statuses: dict[str, int] = {}
        for r in runs:
            key = _exitflag(fides, r.exitflag)
            statuses[key] = statuses.get(key, 0) + 1
        out.update({
            "starts": n, "max_iterations": args.max_iterations,
            "optimizer": "Fides (pyPESTO default: HybridFixed FIM/BFGS Hessian)",
            "best_nllh": best, "within_0.1": within, "statuses": statuses,
            "fit_wall_s": round(wall, 3), "fit_cpu_s": round(cpu, 3),
            "cpu_s_per_start": cpu / n,
            "s_per_start": wall / n,
            "s_per_converged_start": wall / within if within else float("inf"),
            "mean_start_time_s": float(np.mean([r.time for r in runs])),
            "median_fevals": float(np.median([r.n_fval or 0 for r in runs])),
            "median_gradient_evals": float(np.median([r.n_grad or 0 for r in runs])),
            "nllh": sorted(float(v) for v in fvals if np.isfinite(v)),
        })
    out["total_s"] = round(time.perf_counter() - T_START, 2)
    text = json.dumps(out, indent=1, default=float)
    print(MARKER)
    print(text, flush=True)
    if args.out:
        args.out.write_text(text)
    return out


def _full(problem, x_free: np.ndarray) -> np.ndarray:
    full = np.full((len(x_free), problem.dim_full), np.nan)
    full[:, problem.x_free_indices] = x_free
    for i, v in zip(problem.x_fixed_indices, problem.x_fixed_vals):
        full[:, i] = v
    return full


def _exitflag(fides, flag) -> str:
    try:
        return fides.ExitFlag(flag).name
    except (ValueError, TypeError):
        return str(flag)


def _version(pkg: str) -> str | None:
    import importlib.metadata as m

    try:
        return m.version(pkg)
    except m.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
