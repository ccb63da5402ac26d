"""SBML's csymbol ``rateOf`` in the lowering (used by ``kinabs._lowering.system``).

``rateOf(x)`` is the time derivative of ``x``'s value. The lowering first swaps every
``RateOf(x)`` for a placeholder symbol ``@rateof:x`` (so rule resolution leaves it alone),
builds the right-hand side, and then replaces each placeholder by the chain rule applied to
``x``'s value over the primitives: ``d/dt e(t, y, k) = de/dt + sum_i de/dy_i * f_i(t, y, k)``
with ``f`` the right-hand side. That covers states (``f_i`` itself, including the dilution
of a concentration in a changing compartment), constants (0), assignment-rule variables
and reaction rates alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import sympy

from kinabs._errors import ModelError, UnsupportedFeatureError
from kinabs._model import TIME, Model, RateOf

__all__ = ["PREFIX", "with_placeholders", "targets", "time_derivatives", "substitute",
           "placeholder"]

PREFIX = "@rateof:"


def placeholder(arg: sympy.Basic) -> sympy.Symbol:
    """The placeholder symbol ``@rateof:x`` of ``RateOf(x)``."""
    if not isinstance(arg, sympy.Symbol) or arg.name.startswith("@"):
        raise UnsupportedFeatureError(None, f"csymbol rateOf of an expression ({arg})",
                                      "rateOf takes the id of a model element.")
    return sympy.Symbol(PREFIX + arg.name, real=True)


def _swap(expr: sympy.Expr) -> sympy.Expr:
    return expr.replace(RateOf, placeholder) if expr.has(RateOf) else expr


def with_placeholders(model: Model) -> Model:
    """A copy of ``model`` whose math has ``@rateof:x`` symbols instead of ``RateOf(x)``
    (the model itself when it uses no rateOf)."""
    rules = (model.assignment_rules, model.rate_rules, model.initial_assignments)
    if not any(e.has(RateOf) for d in rules for e in d.values()) and not any(
            r.rate.has(RateOf) for r in model.reactions.values()):
        return model
    return dataclasses.replace(
        model,
        reactions={k: dataclasses.replace(r, rate=_swap(r.rate))
                   for k, r in model.reactions.items()},
        assignment_rules={k: _swap(e) for k, e in model.assignment_rules.items()},
        rate_rules={k: _swap(e) for k, e in model.rate_rules.items()},
        initial_assignments={k: _swap(e) for k, e in model.initial_assignments.items()},
    )


def targets(exprs: Sequence[sympy.Expr]) -> set[str]:
    """Ids whose rateOf the expressions use."""
    return {s.name[len(PREFIX):] for e in exprs for s in sympy.sympify(e).free_symbols
            if s.name.startswith(PREFIX)}


def _smooth(expr: sympy.Expr) -> sympy.Expr:
    """Rewrite what ``sympy.diff`` leaves behind into printable piecewise math (the
    derivative of a step function is 0 almost everywhere)."""
    expr = expr.replace(lambda e: isinstance(e, sympy.Derivative), lambda e: sympy.Integer(0))
    expr = expr.replace(sympy.sign, lambda x: sympy.Piecewise(
        (1, x > 0), (-1, x < 0), (0, True)))
    return expr.replace(sympy.Heaviside, lambda x, *h: sympy.Piecewise(
        (1, x > 0), (0, True)))


def time_derivatives(names: set[str], value_of: Callable[[str], sympy.Expr],
                     rhs: Sequence[sympy.Expr], state_symbols: Sequence[sympy.Symbol]
                     ) -> dict[sympy.Symbol, sympy.Expr]:
    """Placeholder symbol -> d(value)/dt over primitives, placeholders resolved."""
    out: dict[sympy.Symbol, sympy.Expr] = {}
    for name in sorted(names):
        e = value_of(name)
        d = sympy.diff(e, TIME)
        for y, f in zip(state_symbols, rhs):
            if y in e.free_symbols:
                d += sympy.diff(e, y) * f
        out[sympy.Symbol(PREFIX + name, real=True)] = _smooth(d)
    for _ in range(len(out) + 1):
        if not any(targets([e]) for e in out.values()):
            return out
        out = {k: e.xreplace(out) for k, e in out.items()}
    raise ModelError(f"circular rateOf: the rates of {sorted(names)} depend on each other "
                     "through rateOf; kinabs cannot solve for them.")


def substitute(exprs: Sequence[sympy.Expr], derivatives: dict[sympy.Symbol, sympy.Expr]
               ) -> tuple[sympy.Expr, ...]:
    """``exprs`` with every placeholder replaced."""
    return tuple(sympy.sympify(e).xreplace(derivatives) for e in exprs)
