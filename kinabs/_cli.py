"""The ``kinabs`` command.

``kinabs fit`` fits a model to data (the bundled serine example by default), shows
progress, writes the results tables and three plots (loss curves, the best fit against
the data, the waterfall of final losses) to an output folder and prints the best starts
(final loss, status, iterations) and the best fit. ``kinabs simulate`` writes a simulation as CSV. ``kinabs conformance`` checks that
the backends agree on a model (see :mod:`kinabs._conformance.cli`).

Example:
    $ kinabs fit --n-iter 300 --inits 5 --out kinabs-fit
    $ kinabs fit --inits 1000 --executor dask --workers 2 --run-dir run-1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import kinabs
from kinabs._backend import BACKENDS
from kinabs._conformance.cli import add_conformance_parser
from kinabs._errors import DataError, KinabsError
from kinabs._fit.results import SAVED_FILES, check_output_folder
from kinabs._paths import example_data_path, example_model_path
from kinabs.petab._cli import add_parser as add_petab_parser

__all__ = ["main"]

#: The plots ``kinabs fit`` writes beside the tables.
PLOTS = ("loss.png", "fit.png", "waterfall.png")


def _fit(args: argparse.Namespace) -> int:
    if args.model and Path(args.model).suffix.lower() in (".yaml", ".yml"):
        from kinabs.petab._multistart import fit_command

        return fit_command(args)
    if args.max_steps is None:
        args.max_steps = 4096
    executor = _executor_kind(args)
    chunked = executor == "dask" or args.chunk_size is not None or args.run_dir is not None
    if args.chunk_size is not None and args.chunk_size < 1:
        raise kinabs.DataError(f"--chunk-size must be an integer >= 1 (starts per chunk); got "
                               f"{args.chunk_size}.")
    if chunked and args.resample_failed:
        raise kinabs.DataError("--resample-failed does not combine with chunked runs "
                               "(--executor dask, --chunk-size, --run-dir): new samples "
                               "would depend on which starts share a chunk. Leave one out.")
    if args.run_dir is not None and Path(args.run_dir).is_file():
        raise kinabs.RunFolderError(f"--run-dir {args.run_dir} is a file; give a folder.")
    if args.run_dir is not None:
        check_output_folder(args.run_dir, what="run folder (--run-dir)")
    # before any training: results that cannot be written would be lost after the run
    check_output_folder(args.out, (*SAVED_FILES, *PLOTS),
                        what="output folder (--out)")
    client = None
    if executor == "dask":  # connect first: an unreachable scheduler fails before any work
        client = kinabs.dask_client(args.scheduler, workers=args.workers)
        n_workers = len(client.scheduler_info()["workers"])
        where = args.scheduler or f"a local cluster of {n_workers} workers"
        print(f"running chunks on Dask: {where}", flush=True)
    try:
        return _fit_with(args, kinabs, client, chunked)
    finally:
        if client is not None:
            client.close()


def _fit_with(args: argparse.Namespace, kinabs, client, chunked: bool) -> int:
    import numpy as np


    model_path = Path(args.model) if args.model else example_model_path()
    data_path = [Path(p) for p in args.data] if args.data else [example_data_path()]
    model = kinabs.load_sbml(model_path)
    trainer = kinabs.Trainer(
        model=model, data=[str(p) for p in data_path], n_iter=args.n_iter,
        backend=args.backend, optim_space=args.space,
        solver=kinabs.SolverOptions(rtol=args.rtol, atol=args.atol, max_steps=args.max_steps),
        loss_threshold=args.loss_threshold, resample_failed=args.resample_failed,
    )
    if args.base == "ones":
        base = dict.fromkeys(trainer.parameters, 1.0)
    else:
        values = model.parameter_values()
        base = {k: values.get(k, 1.0) for k in trainer.parameters}
    trainer.latinhypercube_sampling(base, lower_bound=args.lower, upper_bound=args.upper,
                                    N=args.inits, seed=args.seed, log=args.log_sampling)
    print(f"fitting {len(trainer.parameters)} parameters of {model.id} ({model_path.name}) to "
          f"{', '.join(p.name for p in data_path)}: {args.inits} starts x {args.n_iter} "
          f"iterations on {trainer.backend_name}, {args.space} space", flush=True)
    if not chunked:
        results = trainer.train()
    else:
        results = trainer.train(executor=client, chunk_size=args.chunk_size,
                                run_dir=args.run_dir)
        meta = results.meta
        print(f"{meta['n_chunks']} chunks of {meta['chunk_size']}: {meta['chunks_run']} run, "
              f"{meta['chunks_resumed']} read from {args.run_dir}" if args.run_dir else
              f"{meta['n_chunks']} chunks of {meta['chunk_size']} run", flush=True)
    out = Path(args.out)
    results.save(out)
    results.plot_loss(out / "loss.png")
    results.plot_fit(out / "fit.png")
    results.plot_waterfall(out / "waterfall.png")
    import pandas as pd

    with pd.option_context("display.width", 120, "display.max_columns", 12):
        print("\nbest starts:")
        print(results.summary(top=min(5, args.inits))[["final_loss", "status", "iterations",
                                                       "evaluations"]])
        best = pd.Series(results.best_parameters, name="best fit")
        if args.base == "model":
            best = pd.concat([best, pd.Series(base, name="model value")], axis=1)
        print(f"\nbest fit (init {results.best_index}, loss {results.best_loss:.4g}):")
        print(best.to_string())
    counts = results.status_counts()
    print("\nstarts: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
    if counts["failed"]:
        print(f"{counts['failed']} start(s) failed; see {out / 'summary.csv'} for the reasons.")
    print(f"\nwrote {out}/: parameters.csv, loss_history.csv, summary.csv, results.json, "
          f"{', '.join(PLOTS)} ({results.meta['seconds']:.1f} s of training)")
    return 0 if np.isfinite(results.best_loss) else 1


def _executor_kind(args: argparse.Namespace) -> str:
    kind = args.executor or ("dask" if args.scheduler or args.workers else "local")
    if kind == "local" and (args.scheduler or args.workers):
        raise DataError("--scheduler and --workers choose a Dask cluster; use them with "
                        "--executor dask (or leave out --executor).")
    if args.scheduler and args.workers:
        raise DataError("give either --scheduler ADDRESS (an existing Dask cluster) or "
                        "--workers N (a local cluster), not both.")
    return kind


def _simulate(args: argparse.Namespace) -> int:
    import numpy as np


    model = kinabs.load_sbml(args.model)
    times = np.linspace(args.t0, args.t_end, args.points)
    result = kinabs.simulate(model, times, t0=args.t0, backend=args.backend,
                             species_units=args.units)
    df = result.to_frame()
    if args.out:
        df.to_csv(args.out)
        print(f"wrote {args.out}")
    else:
        print(df.to_string())
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kinabs", description="Fit kinetic models to data.")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="multi-start fit (default: the bundled serine example)")
    f.add_argument("model", nargs="?", help="SBML file, or a PEtab problem's YAML file "
                   "(default: bundled serine model)")
    f.add_argument("--data", nargs="+", help="CSV file(s): first column time, one column per "
                   "species (default: bundled serine data)")
    f.add_argument("--n-iter", type=int, default=300)
    f.add_argument("--inits", type=int, default=5, help="number of starts")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--base", choices=("ones", "model"), default="ones",
                   help="base values the bounds multiply: all ones (as the seed) or the "
                   "model file's values")
    f.add_argument("--lower", type=float, default=0.1, help="lower bound factor")
    f.add_argument("--upper", type=float, default=10.0, help="upper bound factor")
    f.add_argument("--log-sampling", action="store_true", help="sample log-uniformly")
    f.add_argument("--space", choices=("log", "linear"), default="log")
    f.add_argument("--backend", choices=sorted(BACKENDS), default=None)
    f.add_argument("--rtol", type=float, default=kinabs.SolverOptions.rtol)
    f.add_argument("--atol", type=float, default=kinabs.SolverOptions.atol)
    f.add_argument("--max-steps", type=int, default=None,
                   help="most steps per solve (default 4096; 100000 for a PEtab problem)")
    f.add_argument("--loss-threshold", type=float, default=None)
    f.add_argument("--resample-failed", action="store_true")
    f.add_argument("--out", default="kinabs-fit", help="output folder")
    f.add_argument("--executor", choices=("local", "dask"), default=None,
                   help="where chunks of starts run: this process (local, default) or a "
                   "Dask cluster (dask)")
    f.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="address of a running Dask scheduler, e.g. tcp://host:8786")
    f.add_argument("--workers", type=int, default=None, metavar="N",
                   help="start a local Dask cluster of N worker processes")
    f.add_argument("--chunk-size", type=int, default=None, metavar="N",
                   help="starts per chunk (default 64 when chunked)")
    f.add_argument("--run-dir", default=None, metavar="DIR",
                   help="keep each finished chunk in DIR; rerunning the same command "
                   "resumes from it")
    f.set_defaults(func=_fit)
    s = sub.add_parser("simulate", help="simulate an SBML model and print or write CSV")
    s.add_argument("model")
    s.add_argument("--t0", type=float, default=0.0)
    s.add_argument("--t-end", type=float, default=10.0)
    s.add_argument("--points", type=int, default=11)
    s.add_argument("--units", choices=("concentration", "amount"), default="concentration")
    s.add_argument("--backend", choices=sorted(BACKENDS), default=None)
    s.add_argument("--out", default=None)
    s.set_defaults(func=_simulate)

    add_conformance_parser(sub)
    add_petab_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kinabs`` command."""
    args = _parser().parse_args(argv)

    try:
        return int(args.func(args))
    except KinabsError as exc:
        print(f"kinabs: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder that cannot be read or written
        print(f"kinabs: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
