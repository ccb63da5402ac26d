"""The printer: sympy expressions over primitive symbols become Python text over ``ops``.

One meaning for every operation: each sympy node type maps to one call into the operator
table (``kinabs._lowering.ops``), whose one implementation is written against the array
API. Code generation (``codegen``), its vectorised groups (``vectorize``), the symbolic
Jacobian (``jacobian``) and torch's solver step functions all print through this module.
Only model-free names reach the text: states, constants and parameters are array
components (``_y3``, ``_k0``, ``_p2``), numbers are ``repr(float)``; an unknown node type
or an unresolved id raises :class:`~kinabs._errors.UnsupportedFeatureError`.

Example:
    >>> import sympy
    >>> from kinabs._lowering.printer import Printer
    >>> y0 = sympy.Symbol("@y0", real=True)
    >>> Printer().p(sympy.exp(y0) / (1 + y0))
    '(ops.exp(_y0) / (1.0 + _y0))'
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import sympy

from kinabs._errors import UnsupportedFeatureError
from kinabs._lowering.powers import PowerLog, PowerOf, plain_powers
from kinabs._model import TIME, Quotient, Rem

__all__ = ["Printer", "cse_block", "print_float", "symbol_name"]

_UNARY = {
    sympy.exp: "exp", sympy.log: "log", sympy.Abs: "abs", sympy.floor: "floor",
    sympy.ceiling: "ceil", sympy.sin: "sin", sympy.cos: "cos", sympy.tan: "tan",
    sympy.asin: "asin", sympy.acos: "acos", sympy.atan: "atan", sympy.sinh: "sinh",
    sympy.cosh: "cosh", sympy.tanh: "tanh", sympy.asinh: "asinh", sympy.acosh: "acosh",
    sympy.atanh: "atanh", sympy.gamma: "gamma",
}
# Reciprocal functions: f(x) = 1 / g(x), and inverse reciprocals: f(x) = g(1 / x).
_RECIPROCAL = {sympy.sec: "cos", sympy.csc: "sin", sympy.cot: "tan", sympy.sech: "cosh",
               sympy.csch: "sinh", sympy.coth: "tanh"}
_INVERSE_RECIPROCAL = {sympy.asec: "acos", sympy.acsc: "asin", sympy.acot: "atan",
                       sympy.asech: "acosh", sympy.acsch: "asinh", sympy.acoth: "atanh"}
_RELATIONAL = {sympy.StrictLessThan: "lt", sympy.LessThan: "le", sympy.StrictGreaterThan: "gt",
               sympy.GreaterThan: "ge", sympy.Equality: "eq", sympy.Unequality: "ne"}
_BINARY = {Rem: "rem", Quotient: "quotient"}


class Printer:
    """Prints sympy expressions over primitive symbols as Python over ``ops``."""

    def __init__(self) -> None:
        self.consts: dict[str, str] = {}  # literal text -> hoisted name

    def const(self, value: float | bool) -> str:
        if isinstance(value, bool):
            return self.hoist(f"ops.const_bool({value!r})")
        return self.hoist(f"ops.const({print_float(value)})")

    def hoist(self, text: str) -> str:
        """A name for ``text`` (an ops call on literals), evaluated once when bound."""
        if text not in self.consts:
            self.consts[text] = f"_c{len(self.consts)}"
        return self.consts[text]

    def arg(self, e: sympy.Basic) -> str:
        """An argument of an ops function: numbers become hoisted constant arrays."""
        if e.is_Number or e in (sympy.pi, sympy.E):
            return self.const(float(e))
        return self.p(e)

    def p(self, e: sympy.Basic) -> str:  # noqa: C901 - one dispatch table
        if e.is_Symbol:
            return symbol_name(e)
        if e is sympy.nan:
            return "ops.nan"
        if e is sympy.oo or e is sympy.zoo:
            return "ops.inf"
        if e is sympy.S.NegativeInfinity:
            return "(-ops.inf)"
        if e.is_Number or e in (sympy.pi, sympy.E, sympy.EulerGamma):
            return print_float(float(e))
        if e is sympy.true or e is sympy.false:
            return self.const(bool(e))
        if isinstance(e, sympy.Add):
            return "(" + " + ".join(self.p(a) for a in e.args) + ")"
        if isinstance(e, sympy.Mul):
            return self._mul(e)
        if isinstance(e, sympy.Pow):
            return self._pow(*e.args)
        if isinstance(e, (PowerOf, PowerLog)):
            return self.p(plain_powers(e))
        f = type(e)
        if f in _UNARY:
            return f"ops.{_UNARY[f]}({self.arg(e.args[0])})"
        if f in _RECIPROCAL:
            return f"(1.0 / ops.{_RECIPROCAL[f]}({self.arg(e.args[0])}))"
        if f in _INVERSE_RECIPROCAL:
            return f"ops.{_INVERSE_RECIPROCAL[f]}((1.0 / {self.p(e.args[0])}))"
        if f is sympy.factorial:
            return f"ops.gamma(({self.p(e.args[0])} + 1.0))"
        if f in _BINARY:
            a, b = e.args
            return f"ops.{_BINARY[f]}({self.arg(a)}, {self.arg(b)})"
        if f in (sympy.Min, sympy.Max):
            name = "minimum" if f is sympy.Min else "maximum"
            args = [self.arg(a) for a in e.args]
            out = args[0]
            for a in args[1:]:
                out = f"ops.{name}({out}, {a})"
            return out
        if isinstance(e, sympy.Piecewise):
            return self._piecewise(e)
        if f in _RELATIONAL:
            return f"ops.{_RELATIONAL[f]}({self.arg(e.lhs)}, {self.arg(e.rhs)})"
        if isinstance(e, (sympy.And, sympy.Or, sympy.Xor)):
            name = {sympy.And: "logical_and", sympy.Or: "logical_or",
                    sympy.Xor: "logical_xor"}[f]
            args = [self.p(a) for a in e.args]
            out = args[0]
            for a in args[1:]:
                out = f"ops.{name}({out}, {a})"
            return out
        if isinstance(e, sympy.Not):
            return f"ops.logical_not({self.p(e.args[0])})"
        if isinstance(e, sympy.Implies):
            a, b = e.args
            return f"ops.logical_or(ops.logical_not({self.p(a)}), {self.p(b)})"
        if isinstance(e, sympy.ITE):  # sympy's boolean if-then-else (from cse of And/Or)
            c, a, b = e.args
            return f"ops.where({self.p(c)}, {self.arg(a)}, {self.arg(b)})"
        raise UnsupportedFeatureError(None, f"math operation '{f.__name__}' ({e})")

    def _mul(self, e: sympy.Mul) -> str:
        num, den = [], []
        for a in e.args:
            if isinstance(a, sympy.Pow) and a.exp.is_Number and a.exp < 0:
                inv = a.base ** (-a.exp)
                den.append(self.p(inv))
            else:
                num.append(self.p(a))
        text = " * ".join(num) if num else "1.0"
        if den:
            text += " / " + (den[0] if len(den) == 1 else "(" + " * ".join(den) + ")")
        return "(" + text + ")"

    def _pow(self, base: sympy.Basic, exp: sympy.Basic) -> str:
        if exp == sympy.Rational(1, 2):
            return f"ops.sqrt({self.arg(base)})"
        if exp == -1:
            return f"(1.0 / {self.p(base)})"
        if exp == sympy.Rational(-1, 2):
            return f"(1.0 / ops.sqrt({self.arg(base)}))"
        if exp in (2, 3):
            b = self.p(base)
            return "(" + " * ".join([b] * int(exp)) + ")"
        if base is sympy.E:
            return f"ops.exp({self.arg(exp)})"
        return f"ops.pow({self.arg(base)}, {self.arg(exp)})"

    def _piecewise(self, e: sympy.Piecewise) -> str:
        out = "ops.nan"
        for value, cond in reversed(e.args):
            if cond is sympy.true:
                out = self.arg(value)
            elif cond is sympy.false:
                continue
            else:
                out = f"ops.where({self.p(cond)}, {self.arg(value)}, {out})"
        return out


def print_float(value: float) -> str:
    if math.isnan(value):
        return "ops.nan"
    if math.isinf(value):
        return "ops.inf" if value > 0 else "(-ops.inf)"
    return repr(float(value))


def symbol_name(s: sympy.Symbol) -> str:
    name = s.name
    if s is TIME or name == "@time":
        return "t"
    if name.startswith("@") and name[1] in "ykp" and name[2:].isdigit():
        return "_" + name[1:]
    if name.startswith("_x") and name[2:].isdigit():
        return name
    if name.startswith("_g"):  # gathered arrays of kinabs._lowering.vectorize
        return name
    raise UnsupportedFeatureError(name, "an id the model does not define (unresolved symbol)")


def cse_block(printer: Printer, exprs: Sequence[sympy.Expr], indent: str, array_arg: dict
           ) -> tuple[list[str], list[str]]:
    """CSE over ``exprs``: returns (statements, printed results)."""
    exprs = [sympy.sympify(e) for e in exprs]
    repl, reduced = sympy.cse(
        exprs, symbols=sympy.numbered_symbols("_x"), order="none", optimizations=None
    )
    used: set[str] = set()
    for e in [*(r for _, r in repl), *reduced]:
        if isinstance(e, sympy.Basic):
            for s in e.free_symbols:
                used.add(s.name)
    lines = []
    for prefix, arr in array_arg.items():
        idx = sorted(int(n[2:]) for n in used if n.startswith("@" + prefix) and n[2:].isdigit())
        lines += [f"{indent}_{prefix}{i} = ops.get({arr}, {i})" for i in idx]
    for s, r in repl:
        lines.append(f"{indent}{s.name} = {printer.p(r)}")
    return lines, [printer.p(r) for r in reduced]
