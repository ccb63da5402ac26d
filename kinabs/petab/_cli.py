"""``kinabs petab evaluate`` and ``kinabs petab simulate``.

Wiring into the ``kinabs`` command is one call in ``kinabs/_cli.py``'s parser:
``add_parser(sub)`` (``sub`` being its ``add_subparsers()`` object). Each handler takes the
parsed arguments and returns an exit code; kinabs' own errors propagate to ``main``, which
prints them.

``--parameters FILE`` is a TSV file with a ``parameterId`` column and either
``nominalValue`` (linear values, as in a PEtab parameter table) or ``value`` (on the scale
``--parameter-scale`` names: ``linear`` by default, or ``scaled`` for the parameter table's
``parameterScale``). Parameters it leaves out keep their nominal values.

Example:
    >>> import argparse
    >>> from kinabs.petab._cli import add_parser
    >>> parser = argparse.ArgumentParser(prog="kinabs")
    >>> add_parser(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["petab", "evaluate", "problem.yaml", "--json"])
    >>> args.problem, args.json, args.func.__name__
    ('problem.yaml', True, 'evaluate_command')
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from kinabs._backend import BACKENDS
from kinabs._errors import DataError
from kinabs._options import SolverOptions
from kinabs.petab._problem import load

__all__ = ["add_parser", "evaluate_command", "simulate_command"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("problem", help="PEtab v1 problem YAML file")
    p.add_argument("--backend", choices=sorted(BACKENDS), default=None)
    p.add_argument("--parameters", default=None, metavar="TSV",
                   help="parameter values: parameterId with nominalValue (linear) or value")
    p.add_argument("--parameter-scale", choices=("linear", "scaled"), default="linear",
                   help="scale of a 'value' column in --parameters (default linear)")
    p.add_argument("--method", choices=("auto", "stiff", "nonstiff"), default="auto")
    p.add_argument("--rtol", type=float, default=SolverOptions.rtol)
    p.add_argument("--atol", type=float, default=SolverOptions.atol)
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--no-lint", action="store_true", help="skip petab's linter")


def add_parser(subparsers: Any) -> None:
    """Add ``petab evaluate`` and ``petab simulate`` to the ``kinabs`` command."""
    petab = subparsers.add_parser("petab", help="PEtab v1 problems: objective, simulations")
    sub = petab.add_subparsers(dest="petab_command", required=True)
    e = sub.add_parser("evaluate", help="llh and chi2 at the nominal (or given) parameters")
    _common(e)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--priors", action="store_true",
                   help="also report the objective priors' log density and the log posterior")
    e.set_defaults(func=evaluate_command)
    s = sub.add_parser("simulate", help="write PEtab's simulation table")
    _common(s)
    s.add_argument("--out", default=None, metavar="TSV",
                   help="output file (default: print the table)")
    s.set_defaults(func=simulate_command)


def _read_parameters(path: str | None) -> tuple[dict[str, float] | None, str | None]:
    if path is None:
        return None, None
    import pandas as pd

    df = pd.read_csv(path, sep="\t")
    if "parameterId" not in df.columns:
        raise DataError(f"{path}: a parameters file needs a 'parameterId' column.")
    if "nominalValue" in df.columns:
        column, scale = "nominalValue", "linear"
    elif "value" in df.columns:
        column, scale = "value", None
    else:
        raise DataError(f"{path}: a parameters file needs a 'nominalValue' (linear) or a "
                        "'value' column.")
    values = {}
    for i, (pid, v) in enumerate(zip(df["parameterId"], df[column])):
        try:
            values[str(pid)] = float(v)
        except (TypeError, ValueError):
            raise DataError(f"{path} line {i + 2}: {column} {v!r} is not a number.") from None
    return values, scale


def _run(args: argparse.Namespace, priors: bool = False):
    problem = load(args.problem, lint=not args.no_lint)
    values, scale = _read_parameters(args.parameters)
    solver = SolverOptions(method=args.method, rtol=args.rtol, atol=args.atol,
                           max_steps=args.max_steps)
    return problem.evaluate(values, parameter_scale=scale or (
        "scaled" if args.parameter_scale == "scaled" else "linear"),
        backend=args.backend, solver=solver, priors=priors)


def _number(x: float) -> float | None:
    return x if math.isfinite(x) else None


def evaluate_command(args: argparse.Namespace) -> int:
    """``kinabs petab evaluate``: print llh and chi2 (exit 1 if a simulation failed)."""
    result = _run(args, priors=args.priors)
    if args.json:
        out = result.to_dict()
        out["problem"] = str(args.problem)
        for k in ("llh", "chi2", "log_prior", "log_posterior"):
            if k in out:
                out[k] = _number(out[k])
        print(json.dumps(out, allow_nan=False))
    else:
        print(f"llh  {result.llh:.12g}")
        print(f"chi2 {result.chi2:.12g}")
        if result.log_prior is not None:
            print(f"log_prior {result.log_prior:.12g}")
        for cond, status in result.status.items():
            if status != "success":
                print(f"failed: {cond}: {status}")
    return 0 if result.ok else 1


def simulate_command(args: argparse.Namespace) -> int:
    """``kinabs petab simulate``: write (or print) the simulation table."""
    result = _run(args)
    df = result.simulation_df
    if args.out:
        df.to_csv(Path(args.out), sep="\t", index=False)
        print(f"wrote {args.out}")
    else:
        print(df.to_csv(sep="\t", index=False), end="")
    for cond, status in result.status.items():
        if status != "success":
            print(f"failed: {cond}: {status}")
    return 0 if result.ok else 1
