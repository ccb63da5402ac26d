"""The seed's serine fit: kinabs on JAX and on torch against jaxkineticmodel 0.0.4.

5 Latin hypercube starts x 300 iterations from the SAME starting points
(benchmarks/serine_starts.csv). ``--optimizer seed``: the peer's default optimiser
(AdaBelief 1e-3 with updates clipped to a global norm of log 4) on every side, the
comparison this script was written for. ``--optimizer default`` (the default): kinabs
trains with its Trainer's default (Levenberg-Marquardt: ``--n-iter`` caps each start's
evaluations, converged starts stop early) while the peer runs as it always does
(AdaBelief, all iterations). Each run is a fresh process, timed from
before the first import to the results (its peak memory is its own ``ru_maxrss``):
kinabs-JAX with a cold cache (empty cache folder) and a warm one (the same folder again),
kinabs-torch (nothing to cache: eager), and the peer as it runs (it never caches).
Prints a table and the ratios.

Per-iteration times: JAX from a second round of the same fit (the compiled program
reused; with ``--optimizer default`` a second fit from the same starts, since converged
starts would not iterate in a second round, divided by the evaluations it made); torch
from the training chunks after the first (the first also generates the step and adjoint
functions: the "compile s" column), divided by the evaluations they made; the peer from
its own step timings. With ``--optimizer default`` "ms/iter/start" is per evaluation of
one start (one iteration = one evaluation) and "ms/iter" that times the starts.

Run:  python benchmarks/bench_serine_fit.py [--skip-peer] [--backends jax,torch]
      [--optimizer default|seed] [--n-iter 300] [--inits 5] [--out results.json]
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
    optimizer = None
    if args.optimizer == "seed":
        optimizer = kinabs.get_backend(args.backend).default_optimizer()
    trainer = kinabs.Trainer(model=model, data=kinabs.example_data_path(),
                             n_iter=args.n_iter, progress=False, backend=args.backend,
                             solver=kinabs.SolverOptions(method=args.method),
                             optimizer=optimizer)
    trainer.parameter_sets = starts
    t_setup = time.perf_counter() - t0
    chunks = _time_chunks(trainer) if args.backend == "torch" else None
    results = trainer.train()
    t_total = time.perf_counter() - t0
    t_train = t_total - t_setup
    # start-evaluations of the fit (all n_iter x inits for the seed's optimiser; fewer
    # where starts converge)
    evaluations = int(sum(results.evaluations))
    if chunks is None and args.optimizer == "seed":
        # steady state: a second round reuses the compiled program
        t1 = time.perf_counter()
        trainer.train(resume=results)
        steady = (time.perf_counter() - t1) / (args.n_iter * args.inits)
    elif chunks is None:
        # converged starts stop (a second round would not iterate them): the same fit again,
        # on the compiled program, per evaluation actually made
        t1 = time.perf_counter()
        again = trainer.train()
        steady = (time.perf_counter() - t1) / max(1, int(sum(again.evaluations)))
    else:
        # eager: every chunk after the first (which also generates the step and adjoint
        # functions) is steady
        later = [c for c in chunks[1:] if c[2] > 0] or chunks
        steady = sum(c[0] for c in later) / max(1, sum(c[2] for c in later))
    out = dict(
        backend=args.backend, end_to_end_s=t_total, import_s=t_import, setup_s=t_setup,
        train_s=t_train,
        compile_s=max(0.0, t_train - steady * evaluations),
        per_iteration_per_start_ms=steady * 1e3,
        per_iteration_ms=steady * args.inits * 1e3,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        cpu_s=time.process_time(),
        final_loss=[float(x) for x in results.final_loss], status=results.status,
        optimizer=args.optimizer, method=repr(trainer.optimizer),
        iterations=[int(x) for x in results.iterations],
        evaluations=[int(x) for x in results.evaluations],
    )
    if args.backend == "torch":
        import torch

        out["torch"] = dict(version=torch.__version__, threads=torch.get_num_threads())
    print("KINABS-RESULT " + json.dumps(out))


def _time_chunks(trainer) -> list[tuple[float, int, int]]:
    """Wrap the training program's ``run`` (one chunk of iterations) to time each call:
    (seconds, iterations asked for, start-evaluations made)."""
    program = trainer._get_program()
    run = program.run
    chunks: list[tuple[float, int, int]] = []

    def evaluated(state) -> int:
        counts = program.counts(state)
        return -1 if counts is None else int(sum(counts[1]))

    def timed(state, n_iter):
        before = evaluated(state)
        t = time.perf_counter()
        out = run(state, n_iter)
        seconds = time.perf_counter() - t
        after = evaluated(out[0])
        # optimisers without counts evaluate every start once per iteration
        made = n_iter * len(program.theta(state)) if before < 0 else after - before
        chunks.append((seconds, n_iter, made))
        return out

    program.run = timed
    return chunks


def run_kinabs(args, cache: str, backend: str) -> dict:
    env = dict(os.environ, KINABS_JAX_CACHE=cache)
    cmd = [sys.executable, __file__, "--child", "--n-iter", str(args.n_iter), "--inits",
           str(args.inits), "--starts", str(args.starts), "--method", args.method,
           "--backend", backend, "--optimizer", args.optimizer]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"the {backend} run failed:\n{proc.stderr[-3000:]}")
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
                        str(args.starts), "--n-iter", str(args.peer_n_iter or args.n_iter),
                        "--n-starts",
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
    ap.add_argument("--optimizer", choices=("default", "seed"), default="default",
                    help="kinabs' optimiser: default (the Trainer's, Levenberg-Marquardt) "
                         "or seed (AdaBelief 1e-3 + clipping, as the peer); the peer always "
                         "runs its own (AdaBelief)")
    ap.add_argument("--backend", default="jax", help=argparse.SUPPRESS)  # child
    ap.add_argument("--backends", default="jax,torch",
                    help="kinabs backends to run, comma-separated (default: jax,torch)")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--peer-n-iter", type=int, default=None,
                    help="the peer's iterations (default: --n-iter); the issue's comparison "
                    "is kinabs' default at --n-iter 100 against the peer's seed fit at 300")
    ap.add_argument("--out", type=Path, default=None, help="write all figures as JSON")
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    rows = []
    if "jax" in backends:
        with tempfile.TemporaryDirectory() as cache:
            rows.append(("kinabs-JAX, cold cache", run_kinabs(args, cache, "jax")))
            rows.append(("kinabs-JAX, warm cache", run_kinabs(args, cache, "jax")))
    if "torch" in backends:
        with tempfile.TemporaryDirectory() as cache:
            rows.append(("kinabs-torch", run_kinabs(args, cache, "torch")))
    peer = None if args.skip_peer else run_peer(args)
    if peer:
        rows.append(("jaxkineticmodel 0.0.4", peer))
    size = (f"{args.inits} starts x {args.n_iter} iterations" if args.optimizer == "seed"
            else f"{args.inits} starts, at most {args.n_iter} evaluations each")
    print(f"\nserine fit: {size}, same starts "
          f"({args.starts.name}); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
          "cores")
    if args.optimizer == "default":
        methods = sorted({r["method"] for _, r in rows if "method" in r})
        print(f"kinabs optimiser: the Trainer's default ({', '.join(methods)}), at most "
              f"{args.n_iter} evaluations per start, converged starts stop; ms/iter/start "
              "= per evaluation of one start; the peer: AdaBelief, all iterations")
        for name, r in rows:
            if "evaluations" in r:
                print(f"  {name}: status {r['status']}, evaluations {r['evaluations']}")
    print()
    print(f"{'run':24s} {'end to end s':>12s} {'compile s':>10s} {'ms/iter/start':>14s} "
          f"{'ms/iter':>8s} {'peak MiB':>9s}  final losses")
    for name, r in rows:
        comp = r.get("compile_s")
        per = r.get("per_iteration_per_start_ms")
        it = None if per is None else per * args.inits
        print(f"{name:24s} {r['end_to_end_s']:12.2f} "
              f"{comp if comp is None else f'{comp:.2f}':>10} "
              f"{per if per is None else f'{per:.3f}':>14} "
              f"{it if it is None else f'{it:.1f}':>8} {r['peak_rss_mib']:9.0f}  "
              + " ".join(f"{x:.5g}" for x in r["final_loss"]))
    if peer:
        print()
        for name, r in rows[:-1]:
            ratio = peer["end_to_end_s"] / r["end_to_end_s"]
            per = peer["per_iteration_per_start_ms"] / r["per_iteration_per_start_ms"]
            no_worse = [k <= p * (1 + 1e-6) + 1e-12
                        for k, p in zip(r["final_loss"], peer["final_loss"])]
            print(f"{name:24s} vs peer: {ratio:.2f}x end to end, {per:.2f}x per iteration; "
                  f"final loss no worse, start by start: {no_worse}")
    if args.out:
        args.out.write_text(json.dumps(dict(rows=dict(rows), peer=peer,
                                            optimizer=args.optimizer,
                                            load_average=os.getloadavg()), indent=1))


if __name__ == "__main__":
    main()
