"""Multi-start fits of Benchmark-Models-PEtab problems with ``kinabs.petab.fit``, side by
side with the field's reference tool, pyPESTO + AMICI + Fides, from the same starts.

For each problem: ``--starts`` Latin hypercube starts within the parameter table's bounds
(on each parameter's scale, ``--seed``; ``latin_hypercube`` below, the points
``kinabs.petab.fit`` draws, passed to it as ``starts=``), fitted by ``kinabs.petab.fit``
with its default method (recorded as ``method``) on the compiled JAX objective, at most
``--max-iterations`` evaluations per start. Prints the best nllh (and the nllh at the
problem's nominal values), the starts within 0.1 of the best ("converged" as the field
counts them), compile seconds, mean seconds per start and **seconds per converged start**,
beside PEtab.jl's published seconds per converged start, and the median time of one
gradient at the nominal values (after the compiling call).

``--peer`` (the default; ``--skip-peer`` to leave it out): the same start points, written
to a CSV, go to ``benchmarks/peer_pypesto.py`` run by the Python of pyPESTO's own venv
(made once by ``benchmarks/_pypesto_env.sh``, ``$PYPESTO_VENV``, default
/work/pypesto-venv): pyPESTO's PEtab importer with an AMICI model and Fides with at most
``--max-iterations`` iterations. Its AMICI model build is timed apart (and cached in the
venv), and it times the gradient at the nominal values with forward and with adjoint
sensitivities. One side-by-side table per problem: kinabs-JAX, pyPESTO, PEtab.jl, ratios.
``--skip-kinabs`` runs the peer alone (e.g. with more starts than kinabs has time for).

Run:  python benchmarks/bench_petab_fit.py [--problems Boehm_JProteomeRes2014 ...]
      [--starts 100] [--max-iterations 200] [--skip-peer | --skip-kinabs] [--out r.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
COLLECTION = HERE.parents[1] / "shared" / "petab" / "benchmark-models"
PROBLEMS = ("Boehm_JProteomeRes2014", "Bruno_JExpBot2016", "Crauste_CellSystems2017",
            "Fiedler_BMCSystBiol2016", "Fujita_SciSignal2010", "Sneyd_PNAS2002",
            "Brannmark_JBC2010")
#: PEtab.jl's published seconds per converged start (quoted in the issue)
PETAB_JL = {"Boehm_JProteomeRes2014": 0.006, "Bruno_JExpBot2016": 0.002,
            "Sneyd_PNAS2002": 0.037, "Crauste_CellSystems2017": 0.063,
            "Fiedler_BMCSystBiol2016": 0.085, "Brannmark_JBC2010": 0.31,
            "Fujita_SciSignal2010": 1.9}
MARKER = "=== RESULT JSON ==="


def _statuses(status) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in status:
        key = s.split(":")[0]
        out[key] = out.get(key, 0) + 1
    return out


def gradient_seconds(problem, repeats: int) -> dict:
    """kinabs-JAX's llh gradient at the nominal values: the first (compiling) call and
    the median of ``repeats`` more."""
    x = problem.x_nominal()
    t0 = time.perf_counter()
    objective = problem.objective()
    llh, _ = objective.value_and_grad(x)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t1 = time.perf_counter()
        llh, grad = objective.value_and_grad(x)
        times.append(time.perf_counter() - t1)
    return {"gradient_first_call_s": round(first, 3), "gradient_s": float(np.median(times)),
            "gradient_nllh": -float(llh), "gradient_norm": float(np.linalg.norm(grad))}


def latin_hypercube(problem, n_starts: int, seed: int) -> np.ndarray:
    """The Latin hypercube points ``kinabs.petab.fit`` draws first for ``seed``."""
    try:
        from kinabs.petab._multistart import latin_hypercube as draw
    except ImportError:  # a kinabs without the hook: the same draw as fit's
        from scipy.stats import qmc

        from kinabs.petab._multistart import scaled_bounds

        def draw(problem, n_starts, seed):
            lower, upper = scaled_bounds(problem)
            sampler = qmc.LatinHypercube(d=lower.size, seed=np.random.default_rng(seed))
            return qmc.scale(sampler.random(n_starts), lower, upper)
    return draw(problem, n_starts, seed)


def run_kinabs(problem, starts: np.ndarray, max_iterations: int, grad_repeats: int,
               seed: int) -> dict:
    import inspect

    import kinabs.petab as kp

    out = {"tool": "kinabs-JAX", "nominal_nllh": -problem.evaluate().llh}
    out.update(gradient_seconds(problem, grad_repeats))
    t0, c0 = time.perf_counter(), time.process_time()
    if "starts" in inspect.signature(kp.fit).parameters:
        result = kp.fit(problem, starts=starts, max_iterations=max_iterations,
                        progress=False)
    else:  # the same first points (failing ones are redrawn, unlike the peer's)
        result = kp.fit(problem, n_starts=len(starts), seed=seed,
                        max_iterations=max_iterations, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    within = result.n_within(0.1)
    n = len(starts)
    out.update({
        "starts": n, "max_iterations": max_iterations, "best_nllh": result.best_nllh,
        "within_0.1": within, "statuses": _statuses(result.status),
        "compile_s": round(result.compile_seconds, 2), "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2), "cpu_s_per_start": cpu / n,
        "s_per_start": wall / n,
        "s_per_converged_start": wall / within if within else float("inf"),
        "s_per_converged_start_without_compile":
            (wall - result.compile_seconds) / within if within else float("inf"),
        "median_evaluations": float(np.median(result.evaluations)),
        "method": result.meta.get("method"),
        "nllh": sorted(float(v) for v in result.nllh if np.isfinite(v)),
    })
    return out


def peer_python(make: bool) -> str | None:
    """The python of pyPESTO's venv; made by ``_pypesto_env.sh`` when ``make``."""
    venv = Path(os.environ.get("PYPESTO_VENV", "/work/pypesto-venv"))
    if make:
        proc = subprocess.run(["bash", str(HERE / "_pypesto_env.sh")], text=True,
                              stdout=subprocess.PIPE)
        if proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout.strip().splitlines()[-1]
        return None
    python = venv / "bin" / "python"
    return str(python) if python.exists() else None


def run_peer(python: str, name: str, starts_csv: Path | None, n_starts: int,
             max_iterations: int, grad_repeats: int, timeout: float | None) -> dict:
    cmd = [python, str(HERE / "peer_pypesto.py"), "--problem", name,
           "--collection", str(COLLECTION), "--max-iterations", str(max_iterations),
           "--grad-repeats", str(grad_repeats)]
    cmd += ["--starts", str(starts_csv)] if starts_csv else ["--n-starts", str(n_starts)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, text=True, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if MARKER not in proc.stdout:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)[-600:]}
    out = json.loads(proc.stdout.split(MARKER, 1)[1])
    out["subprocess_s"] = round(time.perf_counter() - t0, 2)
    return out


def _ratios(row: dict) -> None:
    k, p = row.get("kinabs") or {}, row.get("pypesto") or {}
    for key, a, b in (("ratio_pypesto_over_kinabs_s_per_converged_start",
                       "s_per_converged_start", "s_per_converged_start"),
                      ("ratio_pypesto_over_kinabs_s_per_start", "s_per_start",
                       "s_per_start"),
                      ("ratio_pypesto_over_kinabs_cpu_s_per_start", "cpu_s_per_start",
                       "cpu_s_per_start"),
                      ("ratio_amici_forward_over_kinabs_gradient", "gradient_s",
                       "gradient_forward_s"),
                      ("ratio_amici_adjoint_over_kinabs_gradient", "gradient_s",
                       "gradient_adjoint_s")):
        if k.get(a) and p.get(b) and np.isfinite(k[a]) and np.isfinite(p[b]):
            row[key] = p[b] / k[a]


def merge(paths: list[Path]) -> list[dict]:
    """Rows of several ``--out`` files, one per problem: each side from the last file
    that has it without an error (runs of one side alone, e.g. ``--skip-kinabs``, from
    the same ``--starts``/``--seed``/``--max-iterations``, whose starts are the same)."""
    merged: dict[str, dict] = {}
    builds: dict[str, dict] = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        if isinstance(data, dict):  # a peer_pypesto.py --out of its own (e.g. --no-fit)
            if data.get("build_cached") is False:  # its AMICI model was compiled then
                builds[data["problem"]] = {"build_s": data["build_s"],
                                           "from_file": Path(path).name}
            continue
        for row in data:
            name = row["problem"]
            if not any(row.get(side) and "error" not in row[side]
                       for side in ("kinabs", "pypesto")):
                continue  # nothing to take from it
            m = merged.setdefault(name, {k: v for k, v in row.items()
                                         if k not in ("kinabs", "pypesto")})
            for key in ("starts", "seed", "max_iterations"):
                if m.get(key) != row.get(key):
                    raise SystemExit(f"{path}: {name} has {key} {row.get(key)}, another "
                                     f"file {m.get(key)}: not the same starts")
            for side in ("kinabs", "pypesto"):
                d = row.get(side)
                if d and "error" not in d:
                    merged[name][side] = dict(d, from_file=Path(path).name,
                                              kinabs_git=row.get("kinabs_git"),
                                              load_average_1_5_15=row.get(
                                                  "load_average_1_5_15"))
    rows = list(merged.values())
    for row in rows:
        if row["problem"] in builds:
            row["amici_model_build_uncached"] = builds[row["problem"]]
        row.pop("kinabs_git", None)
        row.pop("load_average_1_5_15", None)
        _ratios(row)
    return rows


def _git_state() -> dict:
    """The commit the kinabs side ran from, and its uncommitted files under kinabs/ and
    backends/ (results from a tree in flux say so)."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=HERE.parent, text=True,
                              capture_output=True).stdout.strip()
    try:
        return {"commit": git("rev-parse", "--short", "HEAD"),
                "dirty": git("status", "--porcelain", "--", "kinabs", "backends").split("\n")}
    except OSError:
        return {}


def write_starts(path: Path, ids, starts: np.ndarray) -> None:
    lines = [",".join(ids)] + [",".join(repr(float(v)) for v in row) for row in starts]
    path.write_text("\n".join(lines) + "\n")


def _fmt(v, spec: str = ".4g") -> str:
    if v is None:
        return "-"
    if isinstance(v, dict):
        return ", ".join(f"{k} {n}" for k, n in v.items())
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def side_by_side(row: dict) -> str:
    """One table: metric, kinabs-JAX, pyPESTO+AMICI+Fides, PEtab.jl, pyPESTO / kinabs."""
    k, p = row.get("kinabs") or {}, row.get("pypesto") or {}
    jl = row.get("petab_jl_s_per_converged_start")
    lines = [f"== {row['problem']} ({row.get('parameters')} parameters, "
             f"{row.get('starts')} starts, max {row.get('max_iterations')} iterations)"]
    for side, d in (("kinabs", k), ("pyPESTO", p)):
        if "error" in d:
            lines.append(f"   {side} error: {d['error']}")
    lines.append(f"   {'':34s} {'kinabs-JAX':>14s} {'pyPESTO+AMICI':>14s} {'PEtab.jl':>9s} "
                 f"{'peer/kinabs':>11s}")
    metrics = (
        ("nllh at nominal", k.get("nominal_nllh"),
         None if p.get("nominal_llh") is None else -p["nominal_llh"], None),
        ("best nllh", k.get("best_nllh"), p.get("best_nllh"), None),
        ("starts within 0.1", k.get("within_0.1"), p.get("within_0.1"), None),
        ("mean s per start", k.get("s_per_start"), p.get("s_per_start"), None),
        ("CPU s per start (all threads)", k.get("cpu_s_per_start"),
         p.get("cpu_s_per_start"), None),
        ("s per converged start", k.get("s_per_converged_start"),
         p.get("s_per_converged_start"), jl),
        ("compile / model build s", k.get("compile_s"),
         (row.get("amici_model_build_uncached") or {}).get("build_s", p.get("build_s")),
         None),
        ("gradient s: JAX vs AMICI forward", k.get("gradient_s"),
         p.get("gradient_forward_s"), None),
        ("gradient s: JAX vs AMICI adjoint", k.get("gradient_s"),
         p.get("gradient_adjoint_s"), None),
    )
    for label, a, b, c in metrics:
        ratio = (b / a if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a
                 and np.isfinite(a) and np.isfinite(b) else None)
        lines.append(f"   {label:34s} {_fmt(a):>14s} {_fmt(b):>14s} {_fmt(c):>9s} "
                     f"{_fmt(ratio, '.3g'):>11s}")
    lines.append(f"   statuses: kinabs {_fmt(k.get('statuses'))}; "
                 f"pyPESTO {_fmt(p.get('statuses'))}")
    if k.get("method"):
        lines.append(f"   kinabs method: {k['method']}")
    if p.get("amici_reference_llh") is not None:
        lines.append(f"   AMICI llh at nominal {p['nominal_llh']:.6f}, reference "
                     f"{p['amici_reference_llh']:.6f} (diff "
                     f"{p['nominal_llh_minus_reference']:.2e})")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    ap.add_argument("--starts", type=int, default=100)
    ap.add_argument("--max-iterations", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grad-repeats", type=int, default=10)
    peer = ap.add_mutually_exclusive_group()
    peer.add_argument("--peer", dest="peer", action="store_true", default=True,
                      help="run pyPESTO+AMICI+Fides too (default; makes its venv once)")
    peer.add_argument("--skip-peer", dest="peer", action="store_false")
    ap.add_argument("--skip-kinabs", action="store_true",
                    help="the peer alone, from the same Latin hypercube points")
    ap.add_argument("--peer-timeout", type=float, default=None,
                    help="seconds per problem for the peer's subprocess")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="run nothing: merge these --out files (one side each, same "
                         "starts), print the tables, write --out")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.merge:
        rows = merge(args.merge)
        for row in rows:
            print(side_by_side(row))
        if args.out:
            args.out.write_text(json.dumps(rows, indent=1, default=float))
        return
    import kinabs.petab as kp

    python = peer_python(make=True) if args.peer else None
    if args.peer and python is None:
        print("pyPESTO venv could not be made (benchmarks/_pypesto_env.sh failed); "
              "kinabs only", flush=True)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="kinabs_petab_starts_"))
    git = _git_state()
    for name in args.problems:
        row: dict = {"problem": name, "starts": args.starts, "seed": args.seed,
                     "max_iterations": args.max_iterations,
                     "petab_jl_s_per_converged_start": PETAB_JL.get(name), "kinabs_git": git}
        try:
            problem = kp.load(COLLECTION / name / f"{name}.yaml")
            starts = latin_hypercube(problem, args.starts, args.seed)
            row["parameters"] = len(problem.x_free_ids)
            csv = tmp / f"{name}_starts.csv"
            write_starts(csv, problem.x_free_ids, starts)
        except Exception as exc:  # noqa: BLE001 - a row per problem, whatever happens
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            print(f"{name}: {row['error']}", flush=True)
            rows.append(row)
            continue
        if not args.skip_kinabs:
            try:
                row["kinabs"] = run_kinabs(problem, starts, args.max_iterations,
                                           args.grad_repeats, args.seed)
            except Exception as exc:  # noqa: BLE001
                row["kinabs"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        if python is not None:
            row["pypesto"] = run_peer(python, name, csv, args.starts, args.max_iterations,
                                      args.grad_repeats, args.peer_timeout)
        _ratios(row)
        row["load_average_1_5_15"] = list(os.getloadavg())
        rows.append(row)
        print(side_by_side(row), flush=True)
        if args.out:  # after every problem, so a long run keeps what it has
            args.out.write_text(json.dumps(rows, indent=1, default=float))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
