"""The seed's serine fit, kinabs (JAX) against jaxkineticmodel 0.0.4, side by side.

5 Latin hypercube starts x 300 iterations from the SAME starting points
(benchmarks/serine_starts.csv), the peer's default optimiser (AdaBelief 1e-3 with clipped
updates) on both sides. Each run is a fresh process, timed from before the first import
to the results: kinabs with a cold cache (empty cache folder) and a warm one (the same
folder again), the peer as it runs (it never caches). Prints a table and the ratios.

Run:  python benchmarks/bench_serine_fit.py [--skip-peer] [--n-iter 300] [--inits 5]
      (the peer runs in its own venv: bash benchmarks/_peer_env.sh creates it)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STARTS = HERE / "serine_starts.csv"


def peer_name_to_kinabs(name: str) -> str:
    """lp_PDH__kcatA (the peer's local parameter name) -> PDH.kcatA (kinabs')."""
    if name.startswith("lp_") and "__" in name:
        reaction, local = name[3:].split("__", 1)
        return f"{reaction}.{local}"
    return name


def child(args: argparse.Namespace) -> None:
    """One kinabs run, in this process; prints a JSON line."""
    import resource

    t0 = time.perf_counter()
    import pandas as pd

    import kinabs

    t_import = time.perf_counter() - t0
    model = kinabs.load_sbml(kinabs.example_model_path())
    starts = pd.read_csv(args.starts).rename(columns=peer_name_to_kinabs).head(args.inits)
    trainer = kinabs.Trainer(model=model, data=kinabs.example_data_path(),
                             n_iter=args.n_iter, progress=False,
                             solver=kinabs.SolverOptions(method=args.method))
    trainer.parameter_sets = starts
    t_setup = time.perf_counter() - t0
    results = trainer.train()
    t_total = time.perf_counter() - t0
    # steady state: a second round reuses the compiled program
    t1 = time.perf_counter()
    trainer.train(resume=results)
    steady = (time.perf_counter() - t1) / (args.n_iter * args.inits)
    out = dict(
        end_to_end_s=t_total, import_s=t_import, setup_s=t_setup,
        train_s=t_total - t_setup,
        compile_s=max(0.0, (t_total - t_setup) - steady * args.n_iter * args.inits),
        per_iteration_per_start_ms=steady * 1e3,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        final_loss=[float(x) for x in results.final_loss], status=results.status,
    )
    print("KINABS-RESULT " + json.dumps(out))


def run_kinabs(args, cache: str) -> dict:
    env = dict(os.environ, KINABS_JAX_CACHE=cache)
    cmd = [sys.executable, __file__, "--child", "--n-iter", str(args.n_iter), "--inits",
           str(args.inits), "--starts", str(args.starts), "--method", args.method]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("KINABS-RESULT "))
    return json.loads(line.split(" ", 1)[1])


def run_peer(args) -> dict | None:
    venv = Path(os.environ.get("PEER_VENV", "/work/peer-venv"))
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"peer venv not found at {venv}: run bash benchmarks/_peer_env.sh", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "peer.json"
        subprocess.run([str(python), str(HERE / "peer_serine_fit.py"), "--starts",
                        str(args.starts), "--n-iter", str(args.n_iter), "--n-starts",
                        str(args.inits), "--out", str(out)], capture_output=True, text=True,
                       check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
        d = json.loads(out.read_text())
    t = d["timing_s"]
    return dict(end_to_end_s=t["wall_end_to_end"],
                compile_s=t.get("compile_estimate_from_step_times"),
                per_iteration_per_start_ms=1e3 * t["steady_per_iteration_per_start_mean"],
                peak_rss_mib=d["peak_rss_mib"], final_loss=d["final_loss_at_final_params"],
                raw_timing=t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n-iter", type=int, default=300)
    ap.add_argument("--inits", type=int, default=5)
    ap.add_argument("--starts", type=Path, default=STARTS)
    ap.add_argument("--method", default="auto", help="kinabs SolverOptions.method")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="write all figures as JSON")
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory() as cache:
        cold = run_kinabs(args, cache)
        warm = run_kinabs(args, cache)
    peer = None if args.skip_peer else run_peer(args)
    rows = [("kinabs, cold cache", cold), ("kinabs, warm cache", warm)]
    if peer:
        rows.append(("jaxkineticmodel 0.0.4", peer))
    print(f"\nserine fit: {args.inits} starts x {args.n_iter} iterations, same starts "
          f"({args.starts.name}); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
          "cores\n")
    print(f"{'run':24s} {'end to end s':>12s} {'compile s':>10s} {'ms/iter/start':>14s} "
          f"{'peak MiB':>9s}  final losses")
    for name, r in rows:
        comp = r.get("compile_s")
        per = r.get("per_iteration_per_start_ms")
        print(f"{name:24s} {r['end_to_end_s']:12.2f} "
              f"{comp if comp is None else f'{comp:.2f}':>10} "
              f"{per if per is None else f'{per:.3f}':>14} {r['peak_rss_mib']:9.0f}  "
              + " ".join(f"{x:.5g}" for x in r["final_loss"]))
    if peer:
        print(f"\nspeed-up end to end: cold {peer['end_to_end_s'] / cold['end_to_end_s']:.2f}x, "
              f"warm {peer['end_to_end_s'] / warm['end_to_end_s']:.2f}x")
        no_worse = [k <= p * (1 + 1e-6) + 1e-12 for k, p in zip(cold["final_loss"],
                                                                peer["final_loss"])]
        print(f"final loss no worse than the peer's, start by start: {no_worse}")
    if args.out:
        args.out.write_text(json.dumps(dict(cold=cold, warm=warm, peer=peer), indent=1))


if __name__ == "__main__":
    main()
