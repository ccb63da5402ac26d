"""``kinabs conformance MODEL.xml [--data DATA.csv] [--parameter-sets N]``: check that the
JAX and torch backends (and a scipy reference) agree on a model; print the table and write
a JSON report.

For a PEtab problem (``kinabs conformance PROBLEM.yaml``) see
:mod:`kinabs._conformance.petab`.

Exit status: 0 when every check agrees (checks a backend cannot lower are shown as
``unsupported`` and are not disagreements), 1 on any disagreement, 2 on bad input (a
model or data file that cannot be read, data that does not match the model).

Example:
    $ kinabs conformance model.xml --data data.csv --parameter-sets 5 --json report.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import kinabs
from kinabs._conformance.check import check_conformance

__all__ = ["add_conformance_parser"]


def add_conformance_parser(sub) -> argparse.ArgumentParser:
    """Add the ``conformance`` subcommand to ``kinabs``' subparsers ``sub``."""
    c = sub.add_parser("conformance", help="check that the JAX and torch backends agree on "
                       "a model (trajectories, loss, gradient, training)",
                       description=__doc__.split("\n\n")[0])
    c.add_argument("model", help="SBML file, or a PEtab problem's YAML file (llh on each "
                   "backend, the compiled JAX llh and its gradient against finite "
                   "differences)")
    c.add_argument("--data", nargs="+", help="CSV file(s): first column time, one column per "
                   "species (default: synthetic data from the model's own parameters)")
    c.add_argument("--parameter-sets", type=int, default=20,
                   help="Latin hypercube parameter sets besides the model's own (default 20)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--space", choices=("log", "linear", "both"), default="both")
    c.add_argument("--lower", type=float, default=0.5, help="lower bound factor (0.5)")
    c.add_argument("--upper", type=float, default=2.0, help="upper bound factor (2)")
    c.add_argument("--method-iterations", type=int, default=10,
                   help="Levenberg-Marquardt evaluations whose iterates the backends must "
                   "share (0 skips the check)")
    c.add_argument("--train-iterations", type=int, default=50,
                   help="Adam iterations of the training check (0 skips it)")
    c.add_argument("--learning-rate", type=float, default=1e-2)
    c.add_argument("--reference-gradient-sets", type=int, default=3,
                   help="parameter sets that get a finite-difference reference gradient")
    c.add_argument("--no-reference", action="store_true", help="skip the scipy reference")
    c.add_argument("--rtol", type=float, default=1e-12, help="the backends' rtol for the "
                   "trajectory, loss and gradient checks (atol = rtol / 100); looser is "
                   "faster, but a near-perfect fit then agrees less closely")
    c.add_argument("--json", default=None, help="report path (default: "
                   "conformance-report.json in --out)")
    c.add_argument("--out", default=".", help="folder for the report (default: here)")
    c.set_defaults(func=run_conformance)
    return c


def run_conformance(args: argparse.Namespace) -> int:
    """The handler: returns the exit status."""
    spaces = ("log", "linear") if args.space == "both" else (args.space,)
    if args.parameter_sets < 0:
        raise kinabs.DataError(f"--parameter-sets must be >= 0; got {args.parameter_sets}.")
    if Path(args.model).suffix.lower() in (".yaml", ".yml"):
        from kinabs._conformance.petab import run

        report = run(args)
        return _finish(report, args, "the problem's measurements")
    data = None
    if args.data:
        data = args.data[0] if len(args.data) == 1 else list(args.data)
    report = check_conformance(
        args.model, data, parameter_sets=args.parameter_sets, seed=args.seed, spaces=spaces,
        lower_bound=args.lower, upper_bound=args.upper, train_iterations=args.train_iterations,
        method_iterations=args.method_iterations,
        learning_rate=args.learning_rate, reference=not args.no_reference,
        reference_gradient_sets=args.reference_gradient_sets,
        solver=kinabs.SolverOptions(rtol=args.rtol, atol=args.rtol / 100, max_steps=100_000))
    return _finish(report, args, report.meta.get("data", ""))


def _finish(report, args: argparse.Namespace, data: str) -> int:
    print(f"conformance of {report.model} ({data}):")
    print(report.format())
    path = Path(args.json) if args.json else Path(args.out) / "conformance-report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    report.to_json(path)
    for backend, feature in report.unsupported.items():
        print(f"unsupported on {backend}: {feature}")
    verdict = "all checks agree" if report.ok else "DISAGREEMENT"
    print(f"{verdict}; wrote {path}")
    return 0 if report.ok else 1
