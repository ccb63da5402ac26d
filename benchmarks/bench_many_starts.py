"""Many starts in one program: the serine fit with N Latin hypercube starts.

Two figures of the Trainer issue:
* ``--inits 1000 --n-iter 300``: wall time and peak memory of 1000 starts x 300
  iterations in one run (must finish in under 10 minutes on a 2-core machine);
* ``--defaults``: the defaults must fit without knowing the answer: all-ones base values,
  log-uniform bounds 1/1000..1000, 100 starts, 2000 iterations; reports the best loss,
  the starts within 1e-6 (relative) of it, the statuses, and how far the best start's
  parameters are from the model file's values.

``--optimizer default`` (the default) trains with the Trainer's default optimiser
(Levenberg-Marquardt for the default loss: ``n_iter`` caps each start's evaluations and
converged starts stop early); ``--optimizer seed`` with the seed's AdaBelief 1e-3 +
clipping (``kinabs.get_backend("jax").default_optimizer()``), every start running all
``n_iter`` iterations, as this script measured before the Trainer had its own optimisers.

Run:  python benchmarks/bench_many_starts.py --inits 1000 --n-iter 300
      python benchmarks/bench_many_starts.py --defaults [--optimizer seed]
(on an accelerator, e.g. ``--inits 10000``: starts x iterations per second are printed)

``benchmarks/bench_optimisers.py --defaults`` calls :func:`run` (100 starts, fewer
iterations).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

OPTIMIZERS = ("default", "seed")


def optimizer_for(name: str, backend: str = "jax"):
    """The ``optimizer`` argument of the Trainer for ``--optimizer``: ``None`` (the
    Trainer's default) or the seed's AdaBelief + clipping of ``backend``."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}; got {name!r}")
    if name == "default":
        return None
    import kinabs

    return kinabs.get_backend(backend).default_optimizer()


def run(*, inits: int, n_iter: int, seed: int = 0, defaults: bool = False,
        optimizer: str = "default", save: str | None = None, progress: bool = True,
        t0: float | None = None, trace: bool = False) -> tuple[dict, object]:
    """One fit of ``inits`` serine starts; returns (figures, TrainingResults).

    ``defaults``: all-ones base values, log-uniform 1/1000..1000 (else linear 1/10..10).
    ``wall_s`` counts from ``t0`` (default: the call of this function). ``trace``: also
    record, after every chunk of iterations, the seconds since ``t0``, the iterations done
    and the best loss so far (``out["trace"]``), and when the best first fell to 1e-10."""
    t0 = time.perf_counter() if t0 is None else t0
    import jax

    import kinabs

    model = kinabs.load_sbml(kinabs.example_model_path())
    trainer = kinabs.Trainer(model=model, data=kinabs.example_data_path(), n_iter=n_iter,
                             optimizer=optimizer_for(optimizer), progress=progress)
    base = dict.fromkeys(trainer.parameters, 1.0)
    if defaults:
        trainer.latinhypercube_sampling(base, lower_bound=1e-3, upper_bound=1e3, N=inits,
                                        seed=seed, log=True)
    else:
        trainer.latinhypercube_sampling(base, lower_bound=0.1, upper_bound=10, N=inits,
                                        seed=seed)
    chunks = _trace_chunks(trainer, t0) if trace else None
    results = trainer.train()
    wall = time.perf_counter() - t0
    counts = results.status_counts()
    evals = np.asarray(results.evaluations)
    out = dict(inits=inits, n_iter=n_iter, optimizer=optimizer,
               method=repr(trainer.optimizer), wall_s=wall,
               train_s=results.meta["seconds"],
               # start-iterations actually run (converged starts stop early)
               start_iterations_per_s=float(evals.sum()) / results.meta["seconds"],
               peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               device=str(jax.devices()[0]),
               # starts that did not fail ("ok", "converged" or "max_iterations")
               ok=inits - counts["failed"], statuses=counts,
               evaluations_mean=float(evals.mean()), evaluations_max=int(evals.max()),
               best_loss=results.best_loss)
    if defaults:
        truth = model.parameter_values()
        best = results.best_parameters
        ratio = {k: best[k] / truth[k] for k in best}
        out["best_over_true"] = ratio
        out["max_abs_log10_ratio"] = float(max(abs(np.log10(r)) for r in ratio.values()))
        fl = np.asarray(results.final_loss)
        out["starts_below_1e-4"] = int(np.sum(fl < 1e-4))
        out["starts_below_1e-10"] = int(np.sum(fl <= 1e-10))
        near = np.sum(fl <= results.best_loss * (1 + 1e-6))
        out["starts_within_1e-6_of_best"] = int(near)
        out["fraction_within_1e-6_of_best"] = float(near / inits)
        below = np.flatnonzero(np.nanmin(results.loss_history, axis=0) < 1e-4)
        out["first_iteration_below_1e-4"] = int(below[0]) + 1 if below.size else None
    stages = _solver_stages(results)
    if stages:
        out["solver_stages"] = stages
    if chunks is not None:
        out["trace"] = chunks
        hit = next((c for c in chunks if c[2] <= 1e-10), None)
        out["best_first_below_1e-10"] = (None if hit is None else
                                         dict(seconds=hit[0], iterations=hit[1]))
    if save:
        results.save(save)
    return out, results


def _trace_chunks(trainer, t0: float) -> list[tuple[float, int, float]]:
    """Wrap the training program's ``run`` (one chunk of iterations) to record
    (seconds since ``t0``, iterations done, best loss so far) after each call."""
    program = trainer._get_program()
    inner = program.run
    rows: list[tuple[float, int, float]] = []

    def timed(state, n_iter):
        out = inner(state, n_iter)
        losses = np.asarray(out[1], dtype=float)
        best = float(np.nanmin(losses)) if np.isfinite(losses).any() else float("inf")
        done, before = (rows[-1][1], rows[-1][2]) if rows else (0, float("inf"))
        rows.append((time.perf_counter() - t0, done + n_iter, min(before, best)))
        return out

    program.run = timed
    return rows


def _solver_stages(results) -> dict[str, int] | None:
    """How many starts ended on each solver stage of JAX's "auto" mode (0 explicit,
    1 implicit, 2 explicit without the step cap; read from the program's private state),
    or None where that is not known."""
    mode = getattr(getattr(results, "_state", None), "mode", None)
    if mode is None:
        return None
    names = list(getattr(results._program, "_loss_fns", {})) or None
    counts = np.bincount(np.asarray(mode, dtype=int))
    return {(str(names[i]) if names and i < len(names) else str(i)): int(c)
            for i, c in enumerate(counts) if c}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inits", type=int, default=None, help="1000 (100 with --defaults)")
    ap.add_argument("--n-iter", type=int, default=None, help="300 (2000 with --defaults)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--defaults", action="store_true",
                    help="100 starts, 2000 iterations, log-uniform 1/1000..1000 around ones")
    ap.add_argument("--optimizer", choices=OPTIMIZERS, default="default",
                    help="default: the Trainer's (Levenberg-Marquardt); seed: AdaBelief 1e-3 "
                         "+ clipping")
    ap.add_argument("--out", default=None, help="write the figures as JSON")
    ap.add_argument("--save", default=None, help="save the TrainingResults to this folder")
    args = ap.parse_args()
    args.inits = args.inits or (100 if args.defaults else 1000)
    args.n_iter = args.n_iter or (2000 if args.defaults else 300)
    t0 = time.perf_counter()
    out, results = run(inits=args.inits, n_iter=args.n_iter, seed=args.seed,
                       defaults=args.defaults, optimizer=args.optimizer, save=args.save,
                       t0=t0)
    print(json.dumps(out, indent=1))
    print(results.summary(top=5)[["final_loss", "status", "iterations", "evaluations"]])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
