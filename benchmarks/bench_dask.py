"""Multi-start throughput in-process versus a Dask LocalCluster, and the cost of a chunk.

The serine fit with 256 Latin hypercube starts (seed 0, bounds 1/10..10 around ones),
``--n-iter`` iterations, run four ways after a warm-up that compiles every program (so
that the figures are training, not compilation):

* in-process, one program for all starts (``trainer.train()``);
* in-process, chunks of ``--chunk-size`` written to a run folder;
* a Dask ``LocalCluster`` of ``--workers`` worker processes (one thread each), same chunks
  and run folder;
* for each: start-iterations per second (starts x iterations / wall seconds).

Overhead per chunk = (wall x parallel slots - the sum of the chunks' own training seconds)
/ chunks: everything that is not training inside a worker (shipping the task, writing the
chunk file, scheduling, results coming back).

Run:  python benchmarks/bench_dask.py --out benchmarks/results_dask.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time


def _run(trainer, label, slots, **kwargs):
    t0 = time.perf_counter()
    res = trainer.train(**kwargs)
    wall = time.perf_counter() - t0
    n, n_iter = res.loss_history.shape
    row = dict(run=label, wall_s=wall, start_iterations_per_s=n * n_iter / wall,
               ok=sum(s == "ok" for s in res.status), best_loss=res.best_loss)
    run_dir = kwargs.get("run_dir")
    if run_dir is not None:
        import kinabs

        log = kinabs.RunFolder(run_dir).log()
        busy = sum(e["seconds"] for e in log)
        row.update(chunks=len(log), chunk_train_s=busy,
                   overhead_per_chunk_ms=1e3 * (wall * slots - busy) / len(log),
                   workers=len({e["worker"] for e in log}))
    print(f"{label:34s} {wall:8.2f} s  {row['start_iterations_per_s']:9.0f} start-it/s"
          + (f"  {row['chunks']} chunks, overhead {row['overhead_per_chunk_ms']:.0f} ms/chunk"
             if "chunks" in row else ""), file=sys.stderr, flush=True)
    return res, row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inits", type=int, default=256)
    ap.add_argument("--n-iter", type=int, default=100)
    ap.add_argument("--chunk-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the figures as JSON")
    args = ap.parse_args()
    os.environ.setdefault("KINABS_JAX_CACHE", tempfile.mkdtemp(prefix="kinabs-bench-cache-"))
    import numpy as np

    import kinabs

    model = kinabs.load_sbml(kinabs.example_model_path())
    trainer = kinabs.Trainer(model=model, data=kinabs.example_data_path(), n_iter=args.n_iter,
                             progress=False)
    trainer.latinhypercube_sampling(dict.fromkeys(trainer.parameters, 1.0), lower_bound=0.1,
                                    upper_bound=10, N=args.inits, seed=0)
    tmp = tempfile.mkdtemp(prefix="kinabs-bench-")
    rows = []
    # warm-up: compile the one-program shape and the chunk shape (kept on disk for workers)
    t0 = time.perf_counter()
    n_iter = trainer.n_iter
    trainer.n_iter = 1
    trainer.train()
    trainer.train(chunk_size=args.chunk_size)
    trainer.n_iter = n_iter
    print(f"warm-up (compile) {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    whole, row = _run(trainer, "in-process, one program", 1)
    rows.append(row)
    chunked, row = _run(trainer, f"in-process, chunks of {args.chunk_size}", 1,
                        chunk_size=args.chunk_size, run_dir=f"{tmp}/local")
    rows.append(row)
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = Client(cluster)
    started = time.perf_counter() - t0
    # the workers' first chunk loads the traced program and executable from the disk cache
    trainer.n_iter = 1
    t0 = time.perf_counter()
    trainer.train(executor=client, chunk_size=args.chunk_size)
    warm_workers = time.perf_counter() - t0
    trainer.n_iter = n_iter
    dask_res, row = _run(trainer, f"Dask LocalCluster, {args.workers} workers", args.workers,
                         executor=client, chunk_size=args.chunk_size, run_dir=f"{tmp}/dask")
    rows.append(row)
    client.close()
    cluster.close()
    shutil.rmtree(tmp, ignore_errors=True)

    def rel(a, b):
        return float(np.nanmax(np.abs(a - b) / np.abs(b)))

    out = dict(
        inits=args.inits, n_iter=args.n_iter, chunk_size=args.chunk_size,
        workers=args.workers, cpu_count=os.cpu_count(), load_average=os.getloadavg(),
        cluster_start_s=started, workers_first_chunk_s=warm_workers, runs=rows,
        dask_equals_in_process_chunks=bool(
            np.array_equal(dask_res.loss_history, chunked.loss_history, equal_nan=True)),
        max_rel_diff_chunks_vs_one_program=rel(chunked.parameters.to_numpy(),
                                               whole.parameters.to_numpy()))
    print("=== RESULT JSON ===")
    print(json.dumps(out, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
