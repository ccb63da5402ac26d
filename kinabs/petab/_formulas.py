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


def _piecewise(expr: sympy.Piecewise, env, xp) -> Any:
    values = [evaluate(e, env, xp=xp) for e, _ in expr.args]
    conds = [xp.asarray(evaluate(c, env, xp=xp), dtype=bool) for _, c in expr.args]
    shape = np.broadcast_shapes(*(np.shape(v) for v in values), *(np.shape(c) for c in conds))
    return xp.select([xp.broadcast_to(c, shape) for c in conds],
                     [xp.broadcast_to(xp.asarray(v, dtype=xp.float64), shape) for v in values],
                     default=np.nan)


# sympy node type -> f(xp) -> the operation on array namespace ``xp`` (numpy, jax.numpy)
_FUNCTIONS = {
    sympy.Add: lambda xp: _nary(xp.add),
    sympy.Mul: lambda xp: _nary(xp.multiply),
    sympy.Pow: lambda xp: lambda a, b: xp.power(xp.asarray(a, dtype=xp.float64), b),
    sympy.exp: lambda xp: xp.exp,
    sympy.log: lambda xp: xp.log,
    sympy.Abs: lambda xp: xp.abs,
    sympy.sign: lambda xp: xp.sign,
    sympy.Min: lambda xp: _nary(xp.minimum),
    sympy.Max: lambda xp: _nary(xp.maximum),
    sympy.floor: lambda xp: xp.floor,
    sympy.ceiling: lambda xp: xp.ceil,
    sympy.sin: lambda xp: xp.sin, sympy.cos: lambda xp: xp.cos, sympy.tan: lambda xp: xp.tan,
    sympy.sec: lambda xp: lambda x: 1 / xp.cos(x),
    sympy.csc: lambda xp: lambda x: 1 / xp.sin(x),
    sympy.cot: lambda xp: lambda x: 1 / xp.tan(x),
    sympy.sinh: lambda xp: xp.sinh, sympy.cosh: lambda xp: xp.cosh,
    sympy.tanh: lambda xp: xp.tanh,
    sympy.sech: lambda xp: lambda x: 1 / xp.cosh(x),
    sympy.csch: lambda xp: lambda x: 1 / xp.sinh(x),
    sympy.coth: lambda xp: lambda x: 1 / xp.tanh(x),
    sympy.asin: lambda xp: xp.arcsin, sympy.acos: lambda xp: xp.arccos,
    sympy.atan: lambda xp: xp.arctan,
    sympy.asec: lambda xp: lambda x: xp.arccos(1 / x),
    sympy.acsc: lambda xp: lambda x: xp.arcsin(1 / x),
    sympy.acot: lambda xp: lambda x: xp.arctan(1 / x),
    sympy.asinh: lambda xp: xp.arcsinh, sympy.acosh: lambda xp: xp.arccosh,
    sympy.atanh: lambda xp: xp.arctanh,
    sympy.asech: lambda xp: lambda x: xp.arccosh(1 / x),
    sympy.acsch: lambda xp: lambda x: xp.arcsinh(1 / x),
    sympy.acoth: lambda xp: lambda x: xp.arctanh(1 / x),
    sympy.StrictLessThan: lambda xp: xp.less, sympy.LessThan: lambda xp: xp.less_equal,
    sympy.StrictGreaterThan: lambda xp: xp.greater,
    sympy.GreaterThan: lambda xp: xp.greater_equal,
    sympy.Equality: lambda xp: xp.equal, sympy.Unequality: lambda xp: xp.not_equal,
    sympy.And: lambda xp: _nary(xp.logical_and), sympy.Or: lambda xp: _nary(xp.logical_or),
    sympy.Not: lambda xp: xp.logical_not, sympy.Xor: lambda xp: _nary(xp.logical_xor),
}


def evaluate(expr: sympy.Basic, env: Mapping[str, Any], *, xp: Any = np) -> Any:
    """The value of ``expr`` with each free symbol's value from ``env`` (numbers or arrays
    of the namespace ``xp``, broadcast together), walking the tree; IEEE rules give NaN or
    inf where the math is undefined (``log(-1)``, ``1/0``).

    ``xp`` is the array namespace of the operations: numpy (the default) or ``jax.numpy``
    (inside a traced, differentiable JAX function: the walk happens at trace time, and
    only array operations end up in the program)."""
    if xp is np:
        with np.errstate(all="ignore"):
            return _walk(expr, env, xp)
    return _walk(expr, env, xp)


def _walk(expr: sympy.Basic, env: Mapping[str, Any], xp: Any) -> Any:
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
        return _piecewise(expr, env, xp)
    fn = _FUNCTIONS.get(expr.func)
    if fn is None:
        raise UnsupportedPetabFeature(
            f"math operation {expr.func.__name__}", f"in the formula {expr}",
            "kinabs evaluates arithmetic, powers, exp/log, trigonometric functions, abs, "
            "sign, min/max, piecewise and comparisons.")
    return fn(xp)(*(_walk(a, env, xp) for a in expr.args))
