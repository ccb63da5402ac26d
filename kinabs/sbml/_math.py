"""SBML math (a libsbml ``ASTNode`` tree) to sympy, one node at a time.

No text from a file is ever parsed or evaluated here: every node type maps to one sympy
constructor. The meaning follows SBML L3V2 and MathML:

* ``log`` takes its ``logbase`` first (default 10), ``root`` its ``degree`` first (default 2);
* n-ary ``plus``/``times`` with no argument are 0/1; n-ary relations chain pairwise with
  *and*; n-ary ``xor`` is true for an odd number of true arguments;
* a boolean used as a number becomes ``Piecewise((1, b), (0, True))``, a number used as a
  boolean becomes ``Ne(x, 0)``;
* operations whose arguments are all numbers are folded in float64 the IEEE way (so
  ``1/0`` is ``inf``, ``0/0`` and ``sqrt(-1)`` are ``nan``, never sympy's ``zoo`` or ``I``);
* function definitions are inlined at every call: the body is converted with its
  arguments bound to the caller's converted expressions (a simultaneous substitution);
* csymbol ``time`` is :data:`kinabs._model.TIME`, ``avogadro`` the number
  :data:`kinabs._model.AVOGADRO`, ``rateOf(x)`` is :class:`kinabs._model.RateOf`;
  ``delay`` raises :class:`~kinabs._errors.UnsupportedFeatureError`.

Example:
    >>> import libsbml
    >>> from kinabs.sbml._math import sympy_from_ast
    >>> node = libsbml.readMathMLFromString(
    ...     '<math xmlns="http://www.w3.org/1998/Math/MathML"><apply><log/>'
    ...     '<logbase><ci>b</ci></logbase><ci>x</ci></apply></math>')
    >>> sympy_from_ast(node)
    log(x)/log(b)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import libsbml
import numpy as np
import sympy
from sympy.core.relational import Relational
from sympy.logic.boolalg import Boolean, BooleanAtom, BooleanFunction

from kinabs._errors import ModelError, SBMLError, UnsupportedFeatureError
from kinabs._model import AVOGADRO, TIME, Quotient, RateOf, Rem, sym

__all__ = ["MathConverter", "sympy_from_ast", "number"]


def _gamma(x: float) -> float:
    from scipy.special import gamma

    return float(gamma(x))


def _inv(f: Callable[[float], float]) -> Callable[[float], float]:
    return lambda x: f(np.float64(1.0) / np.float64(x))


def _recip(f: Callable[[float], float]) -> Callable[[float], float]:
    return lambda x: np.float64(1.0) / f(np.float64(x))


#: one-argument MathML functions: AST type -> (sympy constructor, float64 meaning).
_UNARY: dict[int, tuple[Callable, Callable]] = {
    libsbml.AST_FUNCTION_EXP: (sympy.exp, np.exp),
    libsbml.AST_FUNCTION_LN: (sympy.log, np.log),
    libsbml.AST_FUNCTION_ABS: (sympy.Abs, np.abs),
    libsbml.AST_FUNCTION_FLOOR: (sympy.floor, np.floor),
    libsbml.AST_FUNCTION_CEILING: (sympy.ceiling, np.ceil),
    libsbml.AST_FUNCTION_FACTORIAL: (sympy.factorial, lambda x: _gamma(x + 1.0)),
    libsbml.AST_FUNCTION_SIN: (sympy.sin, np.sin),
    libsbml.AST_FUNCTION_COS: (sympy.cos, np.cos),
    libsbml.AST_FUNCTION_TAN: (sympy.tan, np.tan),
    libsbml.AST_FUNCTION_SEC: (sympy.sec, _recip(np.cos)),
    libsbml.AST_FUNCTION_CSC: (sympy.csc, _recip(np.sin)),
    libsbml.AST_FUNCTION_COT: (sympy.cot, _recip(np.tan)),
    libsbml.AST_FUNCTION_SINH: (sympy.sinh, np.sinh),
    libsbml.AST_FUNCTION_COSH: (sympy.cosh, np.cosh),
    libsbml.AST_FUNCTION_TANH: (sympy.tanh, np.tanh),
    libsbml.AST_FUNCTION_SECH: (sympy.sech, _recip(np.cosh)),
    libsbml.AST_FUNCTION_CSCH: (sympy.csch, _recip(np.sinh)),
    libsbml.AST_FUNCTION_COTH: (sympy.coth, _recip(np.tanh)),
    libsbml.AST_FUNCTION_ARCSIN: (sympy.asin, np.arcsin),
    libsbml.AST_FUNCTION_ARCCOS: (sympy.acos, np.arccos),
    libsbml.AST_FUNCTION_ARCTAN: (sympy.atan, np.arctan),
    libsbml.AST_FUNCTION_ARCSEC: (sympy.asec, _inv(np.arccos)),
    libsbml.AST_FUNCTION_ARCCSC: (sympy.acsc, _inv(np.arcsin)),
    libsbml.AST_FUNCTION_ARCCOT: (sympy.acot, _inv(np.arctan)),
    libsbml.AST_FUNCTION_ARCSINH: (sympy.asinh, np.arcsinh),
    libsbml.AST_FUNCTION_ARCCOSH: (sympy.acosh, np.arccosh),
    libsbml.AST_FUNCTION_ARCTANH: (sympy.atanh, np.arctanh),
    libsbml.AST_FUNCTION_ARCSECH: (sympy.asech, _inv(np.arccosh)),
    libsbml.AST_FUNCTION_ARCCSCH: (sympy.acsch, _inv(np.arcsinh)),
    libsbml.AST_FUNCTION_ARCCOTH: (sympy.acoth, _inv(np.arctanh)),
}

_RELATIONAL: dict[int, tuple[Callable, Callable]] = {
    libsbml.AST_RELATIONAL_EQ: (sympy.Eq, lambda a, b: a == b),
    libsbml.AST_RELATIONAL_NEQ: (sympy.Ne, lambda a, b: a != b),
    libsbml.AST_RELATIONAL_LT: (sympy.Lt, lambda a, b: a < b),
    libsbml.AST_RELATIONAL_LEQ: (sympy.Le, lambda a, b: a <= b),
    libsbml.AST_RELATIONAL_GT: (sympy.Gt, lambda a, b: a > b),
    libsbml.AST_RELATIONAL_GEQ: (sympy.Ge, lambda a, b: a >= b),
}


def number(value: float) -> sympy.Expr:
    """A float as a sympy number, with IEEE inf and nan as sympy's ``oo`` and ``nan``."""
    value = float(value)
    if math.isnan(value):
        return sympy.nan
    if math.isinf(value):
        return sympy.oo if value > 0 else -sympy.oo
    return sympy.Float(value)


def _is_bool(e: sympy.Basic) -> bool:
    # Not isinstance(e, Boolean): a sympy Symbol is a Boolean too, and ours are numbers.
    return isinstance(e, (Relational, BooleanFunction, BooleanAtom))


def _is_num(e: sympy.Basic) -> bool:
    return not _is_bool(e) and bool(e.is_number)


def _fold(fn: Callable, *args: sympy.Expr) -> sympy.Expr:
    """Apply the float64 meaning ``fn`` to numeric sympy arguments, IEEE-style."""
    with np.errstate(all="ignore"):
        try:
            return number(fn(*(np.float64(float(a)) for a in args)))
        except (ValueError, OverflowError, ZeroDivisionError):
            return sympy.nan


def _quotient(x: float, y: float) -> float:
    return np.trunc(x / y)


def _rem(x: float, y: float) -> float:
    return x - y * np.trunc(x / y)


def _truth(fn: Callable, *args: sympy.Expr) -> Boolean:
    """A comparison of numeric sympy arguments in float64 (NaN compares false)."""
    with np.errstate(all="ignore"):
        return sympy.true if fn(*(np.float64(float(a)) for a in args)) else sympy.false


def _ieee_div(a: float, b: float) -> float:
    with np.errstate(all="ignore"):
        return float(np.float64(a) / np.float64(b))


class MathConverter:
    """Converts libsbml ASTs to sympy, inlining the model's function definitions.

    Args:
        functions: function id -> its ``<lambda>`` AST (from ``FunctionDefinition.getMath()``).
    """

    def __init__(self, functions: Mapping[str, libsbml.ASTNode] | None = None):
        self.functions = dict(functions or {})
        self._calls: list[str] = []

    # -- public ----------------------------------------------------------------
    def expr(self, node: libsbml.ASTNode | None, *, where: str | None = None,
             env: Mapping[str, sympy.Expr] | None = None) -> sympy.Expr:
        """The numeric sympy expression of ``node``. ``env`` maps names to expressions
        (e.g. local parameters to their qualified symbols); ``where`` names the element
        for error messages."""
        if node is None:
            raise SBMLError(f"element '{where}' has no math; expected a <math> child.")
        return self._num(self._convert(node, dict(env or {}), where))

    def boolean(self, node: libsbml.ASTNode, *, where: str | None = None,
                env: Mapping[str, sympy.Expr] | None = None) -> Boolean:
        """Like :meth:`expr` for a condition: numbers ``x`` become ``Ne(x, 0)``."""
        return self._bool(self._convert(node, dict(env or {}), where))

    # -- coercions -------------------------------------------------------------
    @staticmethod
    def _num(e: sympy.Basic) -> sympy.Expr:
        if _is_bool(e):
            if e is sympy.true or e is sympy.false:
                return sympy.Integer(int(bool(e)))
            return sympy.Piecewise((sympy.Integer(1), e), (sympy.Integer(0), True))
        return e

    @staticmethod
    def _bool(e: sympy.Basic) -> Boolean:
        if _is_bool(e):
            return e
        if _is_num(e):
            return _truth(lambda x: x != 0, e)
        return sympy.Ne(e, 0)

    # -- the walk ----------------------------------------------------------------
    def _convert(self, node: libsbml.ASTNode, env: dict, where: str | None) -> sympy.Basic:
        t = node.getType()
        kids = [node.getChild(i) for i in range(node.getNumChildren())]

        def nums() -> list[sympy.Expr]:
            return [self._num(self._convert(k, env, where)) for k in kids]

        def bools() -> list[Boolean]:
            return [self._bool(self._convert(k, env, where)) for k in kids]

        # -- leaves
        if t == libsbml.AST_INTEGER:
            return sympy.Integer(node.getInteger())
        if t == libsbml.AST_REAL:
            return number(node.getReal())
        if t == libsbml.AST_REAL_E:
            # mantissa * 10**exponent computed in floats can be off by an ulp; the decimal
            # text rebuilt from the two numbers is exact.
            return number(float(f"{node.getMantissa()!r}e{node.getExponent()}"))
        if t == libsbml.AST_RATIONAL:
            n, d = node.getNumerator(), node.getDenominator()
            return number(_ieee_div(n, d)) if d == 0 else sympy.Rational(n, d)
        if t == libsbml.AST_NAME:
            name = node.getName()
            return env[name] if name in env else sym(name)
        if t == libsbml.AST_NAME_TIME:
            return TIME
        if t == libsbml.AST_NAME_AVOGADRO:
            return sympy.Float(AVOGADRO)
        if t == libsbml.AST_CONSTANT_E:
            return sympy.E
        if t == libsbml.AST_CONSTANT_PI:
            return sympy.pi
        if t == libsbml.AST_CONSTANT_TRUE:
            return sympy.true
        if t == libsbml.AST_CONSTANT_FALSE:
            return sympy.false
        # -- arithmetic
        if t == libsbml.AST_PLUS:
            return sympy.Add(*nums())
        if t == libsbml.AST_TIMES:
            return sympy.Mul(*nums())
        if t == libsbml.AST_MINUS:
            a = nums()
            if len(a) == 1:
                return -a[0]
            if len(a) != 2:
                raise SBMLError(f"in '{where}': <minus/> takes 1 or 2 arguments, got {len(a)}.")
            return a[0] - a[1]
        if t == libsbml.AST_DIVIDE:
            a, b = self._arity(nums(), 2, "divide", where)
            return _divide(a, b)
        if t in (libsbml.AST_POWER, libsbml.AST_FUNCTION_POWER):
            a, b = self._arity(nums(), 2, "power", where)
            return _power(a, b)
        if t == libsbml.AST_FUNCTION_ROOT:
            a = nums()
            degree, x = (sympy.Integer(2), a[0]) if len(a) == 1 else a
            return _power(x, _divide(sympy.Integer(1), degree))
        if t == libsbml.AST_FUNCTION_LOG:
            a = nums()
            base, x = (sympy.Integer(10), a[0]) if len(a) == 1 else a
            if _is_num(base) and _is_num(x):
                return _fold(lambda b, v: np.log(v) / np.log(b), base, x)
            return _divide(sympy.log(x), _fold(np.log, base) if _is_num(base) else
                           sympy.log(base))
        if t in _UNARY:
            (x,) = self._arity(nums(), 1, node.getName() or "function", where)
            fn, meaning = _UNARY[t]
            return _fold(meaning, x) if _is_num(x) else fn(x)
        if t in (libsbml.AST_FUNCTION_MIN, libsbml.AST_FUNCTION_MAX):
            a = nums()
            if not a:
                raise SBMLError(f"in '{where}': <min/>/<max/> need at least one argument.")
            is_min = t == libsbml.AST_FUNCTION_MIN
            if all(_is_num(x) for x in a):
                f = np.minimum if is_min else np.maximum
                return _fold(lambda *v: f.reduce(np.asarray(v)), *a)
            return (sympy.Min if is_min else sympy.Max)(*a)
        if t in (libsbml.AST_FUNCTION_REM, libsbml.AST_FUNCTION_QUOTIENT):
            a, b = self._arity(nums(), 2, node.getName(), where)
            is_rem = t == libsbml.AST_FUNCTION_REM
            if _is_num(a) and _is_num(b):
                return _fold(_rem if is_rem else _quotient, a, b)
            return (Rem if is_rem else Quotient)(a, b)
        # -- logic
        if t in _RELATIONAL:
            return self._relation(t, nums())
        if t == libsbml.AST_LOGICAL_AND:
            return sympy.And(*bools())
        if t == libsbml.AST_LOGICAL_OR:
            return sympy.Or(*bools())
        if t == libsbml.AST_LOGICAL_XOR:
            return sympy.Xor(*bools())
        if t == libsbml.AST_LOGICAL_NOT:
            (a,) = self._arity(bools(), 1, "not", where)
            return sympy.Not(a)
        if t == libsbml.AST_LOGICAL_IMPLIES:
            a, b = self._arity(bools(), 2, "implies", where)
            return sympy.Or(sympy.Not(a), b)
        if t == libsbml.AST_FUNCTION_PIECEWISE:
            return self._piecewise(kids, env, where)
        # -- calls and csymbols
        if t == libsbml.AST_FUNCTION:
            return self._call(node.getName(), nums(), where)
        if t == libsbml.AST_FUNCTION_RATE_OF:
            if len(kids) != 1 or kids[0].getType() != libsbml.AST_NAME:
                raise SBMLError(f"in '{where}': rateOf takes one identifier argument.")
            name = kids[0].getName()
            target = env.get(name, sym(name))  # a local parameter shadows a global one
            if not isinstance(target, sympy.Symbol):
                raise UnsupportedFeatureError(where, "rateOf of a function argument")
            return RateOf(target)
        if t == libsbml.AST_FUNCTION_DELAY:
            raise UnsupportedFeatureError(where, "csymbol delay")
        if t == libsbml.AST_LAMBDA:
            raise SBMLError(f"in '{where}': a <lambda> is only allowed as the body of a "
                            "function definition.")
        raise UnsupportedFeatureError(where, f"MathML element '{node.getName() or t}' "
                                             f"(libsbml AST type {t})")

    @staticmethod
    def _arity(args: list, n: int, name: str, where: str | None) -> list:
        if len(args) != n:
            raise SBMLError(f"in '{where}': <{name}/> takes {n} argument(s), got {len(args)}.")
        return args

    @staticmethod
    def _relation(t: int, args: list[sympy.Expr]) -> Boolean:
        fn, meaning = _RELATIONAL[t]
        pairs = []
        for a, b in zip(args, args[1:]):
            if _is_num(a) and _is_num(b):
                pairs.append(_truth(meaning, a, b))
            else:
                pairs.append(fn(a, b))
        return sympy.And(*pairs)  # no or one argument: true, as SBML L3V2 says

    def _piecewise(self, kids: list, env: dict, where: str | None) -> sympy.Expr:
        pieces = []
        for i in range(0, len(kids) - 1, 2):
            value = self._num(self._convert(kids[i], env, where))
            pieces.append((value, self._bool(self._convert(kids[i + 1], env, where))))
        if len(kids) % 2:
            pieces.append((self._num(self._convert(kids[-1], env, where)), sympy.true))
        if not pieces:
            return sympy.nan
        return sympy.Piecewise(*pieces)

    def _call(self, name: str, args: list[sympy.Expr], where: str | None) -> sympy.Basic:
        lam = self.functions.get(name)
        if lam is None:
            raise ModelError(f"in '{where}': the math calls function '{name}', which the "
                             f"model does not define. Defined functions: "
                             f"{sorted(self.functions) or 'none'}.")
        if name in self._calls:
            chain = " -> ".join([*self._calls[self._calls.index(name):], name])
            raise ModelError(f"function definitions call each other in a cycle: {chain}.")
        if lam is None or lam.getType() != libsbml.AST_LAMBDA:
            raise SBMLError(f"function definition '{name}' has no <lambda> body.")
        n = lam.getNumBvars()
        if n != len(args):
            raise SBMLError(f"in '{where}': function '{name}' takes {n} argument(s), "
                            f"got {len(args)}.")
        bound = {lam.getChild(i).getName(): a for i, a in enumerate(args)}
        self._calls.append(name)
        try:
            return self._convert(lam.getChild(n), bound, name)
        finally:
            self._calls.pop()


def _divide(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    if _is_num(b) and b.is_zero:
        if _is_num(a):
            return _fold(_ieee_div, a, b)
        return a * sympy.oo  # IEEE x/0: +-inf by the sign of x, nan for 0 or nan
    if _is_num(a) and _is_num(b) and not (a.is_Rational and b.is_Rational):
        return _fold(_ieee_div, a, b)
    return a / b


def _power(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    if _is_num(a) and _is_num(b):
        if a.is_Rational and b.is_Integer and (b >= 0 or a != 0) and abs(b) < 64:
            return a ** b
        return _fold(np.power, a, b)
    return a ** b


def sympy_from_ast(node: libsbml.ASTNode, functions: Mapping[str, libsbml.ASTNode] | None
                   = None, *, where: str | None = None,
                   env: Mapping[str, sympy.Expr] | None = None) -> sympy.Expr:
    """Convert one libsbml AST to a numeric sympy expression (see the module docstring)."""
    return MathConverter(functions).expr(node, where=where, env=env)
