"""PEtab math: text to sympy with petab's own parser, sympy to numpy by walking the tree.

Observable and noise formulas are text in TSV files. They are parsed with
``petab.v1.math.sympify_petab`` (an ANTLR grammar of PEtab math, not sympy's ``eval``-based
``sympify``), and evaluated by :func:`evaluate`, which walks the sympy tree and maps each
node type to one numpy function from a fixed table. Why not ``sympy.lambdify``: it prints
the tree to Python source and ``exec``s it, with sympy's printer deciding what each node
means; a table of node types keeps one meaning per operation (as kinabs' own printer does
for the ODE right-hand side), runs no generated code, and raises an error naming the
node for anything outside the table. Formulas are evaluated once per observable over all
of its measurement rows (and parameter sets) at once, so the walk costs little.

Example:
    >>> import numpy as np
    >>> from kinabs.petab._formulas import parse, evaluate
    >>> expr = parse("scale * log10(A + 1) + piecewise(1, time > 5, 0)", where="example")
    >>> sorted(s.name for s in expr.free_symbols)
    ['A', 'scale', 'time']
    >>> evaluate(expr, {"scale": 2.0, "A": np.array([9.0, 99.0]), "time": np.array([1.0, 10.0])})
    array([2., 5.])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import sympy
from sympy.logic.boolalg import BooleanFalse, BooleanTrue

from kinabs._errors import DataError
from kinabs.petab._errors import UnsupportedPetabFeature

__all__ = ["parse", "evaluate", "symbol_names"]


def parse(text: Any, *, where: str) -> sympy.Expr:
    """``text`` (a PEtab math string or a number) as a sympy expression; ``where`` names the
    file, table row and column for the error message."""
    from petab.v1.math import sympify_petab

    if isinstance(text, (int, float, np.integer, np.floating)) and not isinstance(text, bool):
        if not np.isfinite(float(text)):
            raise DataError(f"{where}: the formula is {text!r}; give a finite number or a "
                            "formula.")
        return sympy.Float(float(text))
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: the formula is empty; give a number or a PEtab math "
                        "expression.")
    try:
        return sympify_petab(text)
    except (ValueError, TypeError, AssertionError) as e:
        raise DataError(f"{where}: cannot parse the formula {text!r}: {e}") from None


def symbol_names(expr: sympy.Expr) -> set[str]:
    """Names of the free symbols of ``expr``."""
    return {s.name for s in expr.free_symbols}


def _nary(fn):
    def apply(*args):
        out = args[0]
        for a in args[1:]:
            out = fn(out, a)
        return out
    return apply


def _piecewise(expr: sympy.Piecewise, env) -> np.ndarray:
    values = [evaluate(e, env) for e, _ in expr.args]
    conds = [np.asarray(evaluate(c, env), dtype=bool) for _, c in expr.args]
    shape = np.broadcast_shapes(*(np.shape(v) for v in values), *(np.shape(c) for c in conds))
    return np.select([np.broadcast_to(c, shape) for c in conds],
                     [np.broadcast_to(np.asarray(v, float), shape) for v in values],
                     default=np.nan)


_FUNCTIONS = {
    sympy.Add: _nary(np.add),
    sympy.Mul: _nary(np.multiply),
    sympy.Pow: lambda a, b: np.power(np.asarray(a, float), b),
    sympy.exp: np.exp,
    sympy.log: np.log,
    sympy.Abs: np.abs,
    sympy.sign: np.sign,
    sympy.Min: _nary(np.minimum),
    sympy.Max: _nary(np.maximum),
    sympy.floor: np.floor,
    sympy.ceiling: np.ceil,
    sympy.sin: np.sin, sympy.cos: np.cos, sympy.tan: np.tan,
    sympy.sec: lambda x: 1 / np.cos(x), sympy.csc: lambda x: 1 / np.sin(x),
    sympy.cot: lambda x: 1 / np.tan(x),
    sympy.sinh: np.sinh, sympy.cosh: np.cosh, sympy.tanh: np.tanh,
    sympy.sech: lambda x: 1 / np.cosh(x), sympy.csch: lambda x: 1 / np.sinh(x),
    sympy.coth: lambda x: 1 / np.tanh(x),
    sympy.asin: np.arcsin, sympy.acos: np.arccos, sympy.atan: np.arctan,
    sympy.asec: lambda x: np.arccos(1 / x), sympy.acsc: lambda x: np.arcsin(1 / x),
    sympy.acot: lambda x: np.arctan(1 / x),
    sympy.asinh: np.arcsinh, sympy.acosh: np.arccosh, sympy.atanh: np.arctanh,
    sympy.asech: lambda x: np.arccosh(1 / x), sympy.acsch: lambda x: np.arcsinh(1 / x),
    sympy.acoth: lambda x: np.arctanh(1 / x),
    sympy.StrictLessThan: np.less, sympy.LessThan: np.less_equal,
    sympy.StrictGreaterThan: np.greater, sympy.GreaterThan: np.greater_equal,
    sympy.Equality: np.equal, sympy.Unequality: np.not_equal,
    sympy.And: _nary(np.logical_and), sympy.Or: _nary(np.logical_or),
    sympy.Not: np.logical_not, sympy.Xor: _nary(np.logical_xor),
}


def evaluate(expr: sympy.Basic, env: Mapping[str, Any]) -> np.ndarray | float:
    """The value of ``expr`` with each free symbol's value from ``env`` (numbers or numpy
    arrays, broadcast together), walking the tree; numpy's IEEE rules give NaN or inf
    where the math is undefined (``log(-1)``, ``1/0``)."""
    if isinstance(expr, sympy.Symbol):
        try:
            return env[expr.name]
        except KeyError:
            raise DataError(f"no value for the symbol '{expr.name}'") from None
    if isinstance(expr, BooleanTrue):
        return True
    if isinstance(expr, BooleanFalse):
        return False
    if expr.is_Number or isinstance(expr, sympy.NumberSymbol):
        return float(expr)
    if isinstance(expr, sympy.Piecewise):
        return _piecewise(expr, env)
    fn = _FUNCTIONS.get(expr.func)
    if fn is None:
        raise UnsupportedPetabFeature(
            f"math operation {expr.func.__name__}", f"in the formula {expr}",
            "kinabs evaluates arithmetic, powers, exp/log, trigonometric functions, abs, "
            "sign, min/max, piecewise and comparisons.")
    with np.errstate(all="ignore"):
        return fn(*(evaluate(a, env) for a in expr.args))
