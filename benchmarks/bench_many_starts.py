"""Many starts in one program: the serine fit with N Latin hypercube starts.

Two figures of the Trainer issue:
* ``--inits 1000 --n-iter 300``: wall time and peak memory of 1000 starts x 300
  iterations in one run (must finish in under 10 minutes on a 2-core machine);
* ``--defaults``: the defaults must fit without knowing the answer: all-ones base values,
  log-uniform bounds 1/1000..1000, 100 starts, 2000 iterations; reports the best loss
  (target < 1e-4) and how far its parameters are from the model file's values.

Run:  python benchmarks/bench_many_starts.py --inits 1000 --n-iter 300
      python benchmarks/bench_many_starts.py --defaults
(on an accelerator, e.g. ``--inits 10000``: starts x iterations per second are printed)
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inits", type=int, default=None, help="1000 (100 with --defaults)")
    ap.add_argument("--n-iter", type=int, default=None, help="300 (2000 with --defaults)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--defaults", action="store_true",
                    help="100 starts, 2000 iterations, log-uniform 1/1000..1000 around ones")
    ap.add_argument("--out", default=None, help="write the figures as JSON")
    ap.add_argument("--save", default=None, help="save the TrainingResults to this folder")
    args = ap.parse_args()
    args.inits = args.inits or (100 if args.defaults else 1000)
    args.n_iter = args.n_iter or (2000 if args.defaults else 300)
    t0 = time.perf_counter()
    import jax

    import kinabs

    model = kinabs.load_sbml(kinabs.example_model_path())
    trainer = kinabs.Trainer(model=model, data=kinabs.example_data_path(), n_iter=args.n_iter)
    base = dict.fromkeys(trainer.parameters, 1.0)
    if args.defaults:
        trainer.latinhypercube_sampling(base, lower_bound=1e-3, upper_bound=1e3, N=args.inits,
                                        seed=args.seed, log=True)
    else:
        trainer.latinhypercube_sampling(base, lower_bound=0.1, upper_bound=10, N=args.inits,
                                        seed=args.seed)
    results = trainer.train()
    wall = time.perf_counter() - t0
    ok = sum(s == "ok" for s in results.status)
    out = dict(inits=args.inits, n_iter=args.n_iter, wall_s=wall,
               train_s=results.meta["seconds"],
               start_iterations_per_s=args.inits * args.n_iter / results.meta["seconds"],
               peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               device=str(jax.devices()[0]), ok=ok, best_loss=results.best_loss)
    if args.defaults:
        truth = model.parameter_values()
        best = results.best_parameters
        ratio = {k: best[k] / truth[k] for k in best}
        out["best_over_true"] = ratio
        out["max_abs_log10_ratio"] = float(max(abs(np.log10(r)) for r in ratio.values()))
        out["starts_below_1e-4"] = int(np.sum(results.final_loss < 1e-4))
        below = np.flatnonzero(np.nanmin(results.loss_history, axis=0) < 1e-4)
        out["first_iteration_below_1e-4"] = int(below[0]) + 1 if below.size else None
    if args.save:
        results.save(args.save)
    print(json.dumps(out, indent=1))
    print(results.summary(top=5)[["final_loss", "status", "iterations"]])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
