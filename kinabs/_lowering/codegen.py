"""Code generation: an :class:`~kinabs._lowering.system.OdeSystem` becomes Python source over ``ops``.

The source is generated once per system, with common-subexpression elimination, and
bound to any backend's operator table (``kinabs._lowering.ops``): the same text runs on numpy,
JAX and torch. Only kinabs' own printer writes it: model ids never appear in the source
(states, constants and parameters are array components ``y[..., i]``, ``k[..., j]``,
``p[..., j]``; numbers are printed with ``repr(float)``), so no text from an input file is
ever executed. Unknown sympy node types raise :class:`UnsupportedFeatureError`.

The generated ``make(ops, N)`` returns five functions, each batched over leading axes:

* ``init(t0, p) -> (y0, k)``
* ``rates(t, y, k) -> v``
* ``rhs(t, y, k) -> dy/dt``  (``(v @ N) * scale + extra``)
* ``outputs(t, y, k) -> every output of the system``
* ``to_state(t, y, k) -> factors from species' natural values to state values``

and :meth:`BoundFunctions.outputs_at` gives ``outputs`` restricted to some outputs,
generated for just those. Training and simulation use it: an output nobody asked for
must not touch the gradient (``log(offset + scale * x)`` with offset and scale 0 is
``-inf``, and its zero cotangent times an infinite derivative is NaN in every state's
gradient).

Example:
    >>> import kinabs, numpy as np
    >>> from kinabs._lowering.ops import numpy_ops
    >>> system = kinabs.lower(kinabs.load_sbml(kinabs.example_model_path()))
    >>> f = system.generated.bind(numpy_ops())
    >>> y0, k = f.init(np.float64(0.0), system.parameter_defaults)
    >>> f.rhs(np.float64(0.0), y0, k).shape
    (2,)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy

from kinabs._errors import UnsupportedFeatureError
from kinabs._lowering.ops import Quotient, Rem
from kinabs._lowering.powers import PowerLog, PowerOf, plain_powers
from kinabs._lowering.vectorize import group_by_template, vector_block
from kinabs._model import TIME

__all__ = ["generate", "Generated", "BoundFunctions", "time_breaks"]

#: Expressions sharing one template are printed as one vector expression from this many on.
MIN_GROUP = 8

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


class _Printer:
    """Prints sympy expressions over primitive symbols as Python over ``ops``."""

    def __init__(self) -> None:
        self.consts: dict[str, str] = {}  # literal text -> hoisted name

    def const(self, value: float | bool) -> str:
        if isinstance(value, bool):
            return self.hoist(f"ops.const_bool({value!r})")
        return self.hoist(f"ops.const({_float(value)})")

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
            return _symbol_name(e)
        if e is sympy.nan:
            return "ops.nan"
        if e is sympy.oo or e is sympy.zoo:
            return "ops.inf"
        if e is sympy.S.NegativeInfinity:
            return "(-ops.inf)"
        if e.is_Number or e in (sympy.pi, sympy.E, sympy.EulerGamma):
            return _float(float(e))
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


def _float(value: float) -> str:
    if math.isnan(value):
        return "ops.nan"
    if math.isinf(value):
        return "ops.inf" if value > 0 else "(-ops.inf)"
    return repr(float(value))


def _symbol_name(s: sympy.Symbol) -> str:
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


def _block(printer: _Printer, exprs: Sequence[sympy.Expr], indent: str, array_arg: dict
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


@dataclass(frozen=True)
class BoundFunctions:
    """The generated functions bound to one backend's operator table."""

    init: Any
    rates: Any
    rhs: Any
    outputs: Any
    to_state: Any
    ops: Any
    generated: Generated = field(compare=False, repr=False)
    _subsets: dict = field(default_factory=dict, compare=False, repr=False)

    def outputs_at(self, index: Sequence[int]) -> Any:
        """``outputs(t, y, k)[..., index]``, generated for just those outputs (cached):
        the others are neither computed nor differentiated."""
        key = tuple(int(i) for i in np.asarray(index).reshape(-1))
        fn = self._subsets.get(key)
        if fn is None:
            if not key:
                full, idx = self.outputs, list(key)

                def fn(t, y, k, _full=full, _idx=idx):
                    return _full(t, y, k)[..., _idx]
            else:
                fn = self.generated.bind_outputs(self.ops, key)
            self._subsets[key] = fn
        return fn


@dataclass(frozen=True)
class Generated:
    """Generated source of one system; :meth:`bind` makes callable functions from it."""

    source: str
    stoichiometry: np.ndarray
    n_states: int
    n_reactions: int
    output_exprs: tuple = field(default=(), compare=False, repr=False)
    #: times at which a condition on time alone switches in the vector field (a rate
    #: ``piecewise(..., time < 4)`` jumps at 4): the solvers step exactly to each
    time_breaks: tuple[float, ...] = ()

    def bind(self, ops: Any) -> BoundFunctions:
        """Compile the source against ``ops`` (an :class:`~kinabs._lowering.ops.ArrayApiOps`)."""
        fns = _compile(self.source)(ops, ops.matrix(self.stoichiometry))
        return BoundFunctions(*fns, ops=ops, generated=self)

    def outputs_source(self, index: Sequence[int]) -> str:
        """Source of ``make(ops, N)`` returning ``outputs(t, y, k)`` of the outputs
        ``index`` only (in that order)."""
        pr = _Printer()
        body = ["    def outputs(t, y, k):"]
        body += _emit(pr, [self.output_exprs[i] for i in index], "        ",
                      {"y": "y", "k": "k"}, "out", "y")
        body.append("        return out")
        head = ["# generated by kinabs._lowering.codegen; do not edit", "def make(ops, N):"]
        head += [f"    {name} = {text}" for text, name in pr.consts.items()]
        return "\n".join([*head, *body, "    return outputs", ""])

    def bind_outputs(self, ops: Any, index: Sequence[int]) -> Any:
        """:meth:`outputs_source` compiled against ``ops``."""
        return _compile(self.outputs_source(index))(ops, None)


def _compile(source: str) -> Any:
    namespace: dict[str, Any] = {}
    code = compile(source, "<kinabs generated>", "exec")
    # The source is kinabs' own printer output, never text from an input file.
    exec(code, namespace)  # noqa: S102
    return namespace["make"]


def _emit(pr: _Printer, exprs: Sequence[sympy.Expr], ind: str, arrays: dict, name: str,
          like: str) -> list[str]:
    """Statements leaving ``name`` = the stacked ``exprs``: vectorised over groups of
    same-shaped expressions when there are any (see kinabs._lowering.vectorize), else scalar CSE."""
    if group_by_template(exprs, min_group=MIN_GROUP):
        return vector_block(pr, exprs, ind, arrays, name, like, min_group=MIN_GROUP)
    lines, outs = _block(pr, exprs, ind, arrays)
    return [*lines, f"{ind}{name} = ops.stack([{', '.join(outs)}], like={like})"]


def generate(system) -> Generated:
    """Generate the source of ``init``, ``rates``, ``rhs``, ``outputs`` and ``to_state``."""
    pr = _Printer()
    body: list[str] = []
    ind = "        "
    yk = {"y": "y", "k": "k"}

    # init(t, p) -> (y0, k)
    body.append("    def init(t, p):")
    body += _emit(pr, system.init_y0, ind, {"p": "p"}, "y0", "p")
    if system.derived:
        body += _emit(pr, system.init_derived, ind, {"p": "p"}, "d", "p")
        body.append(f"{ind}k = ops.concat(p, d)")
    else:
        body.append(f"{ind}k = p")
    body.append(f"{ind}return y0, k")

    # rates(t, y, k)
    body.append("    def rates(t, y, k):")
    body += _emit(pr, system.rates, ind, yk, "v", "y")
    body.append(f"{ind}return v")

    # rhs(t, y, k) = (v @ N) * scale + extra
    scale = list(system.scale) if system.scale is not None else []
    n_r, n_s = len(system.rates), len(system.extra)
    has_extra = any(e != 0 for e in system.extra)
    use_matrix = bool(n_r and system.stoichiometry.any())
    body.append("    def rhs(t, y, k):")
    exprs = [*system.rates, *scale, *(system.extra if has_extra else [])]
    if group_by_template(exprs, min_group=MIN_GROUP):
        body += vector_block(pr, system.rates, ind, yk, "v", "y", min_group=MIN_GROUP)
        if scale:
            body += vector_block(pr, scale, ind, yk, "sc", "y", min_group=MIN_GROUP)
        if has_extra:
            body += vector_block(pr, system.extra, ind, yk, "ex", "y", min_group=MIN_GROUP)
        v, sc, ex = "v", "sc", "ex"
    else:
        lines, outs = _block(pr, exprs, ind, yk)
        body += lines
        v = f"ops.stack([{', '.join(outs[:n_r])}], like=y)"
        sc = f"ops.stack([{', '.join(outs[n_r:n_r + n_s])}], like=y)"
        ex = f"ops.stack([{', '.join(outs[n_r + len(scale):])}], like=y)"
    terms = []
    if use_matrix:
        body.append(f"{ind}dy = ops.matvec({v}, N)")
        if scale:
            body.append(f"{ind}dy = dy * {sc}")
        terms.append("dy")
    if has_extra:
        terms.append(ex)
    if not terms:
        terms.append("ops.zeros_like(y)")
    body.append(f"{ind}return {' + '.join(terms)}")

    # outputs(t, y, k)
    body.append("    def outputs(t, y, k):")
    body += _emit(pr, system.output_exprs, ind, yk, "out", "y")
    body.append(f"{ind}return out")

    # to_state(t, y, k): factors from natural species values to state values
    body.append("    def to_state(t, y, k):")
    body += _emit(pr, system.natural_to_state, ind, yk, "f", "y")
    body.append(f"{ind}return f")

    head = ["# generated by kinabs._lowering.codegen; do not edit", "def make(ops, N):"]
    head += [f"    {name} = {text}" for text, name in pr.consts.items()]
    tail = ["    return init, rates, rhs, outputs, to_state", ""]
    source = "\n".join(head + body + tail)
    return Generated(source=source, stoichiometry=np.asarray(system.stoichiometry, float),
                     n_states=len(system.states), n_reactions=len(system.rates),
                     output_exprs=tuple(system.output_exprs),
                     time_breaks=time_breaks([*system.rates, *scale, *system.extra]))


def time_breaks(exprs: Sequence[sympy.Expr]) -> tuple[float, ...]:
    """Sorted times where a relation of time alone (``time < 4``, ``2 * time >= 3``)
    changes truth value in ``exprs``; relations that involve anything else (a parameter,
    a state) are not fixed times and are left to the step-size control.

    Example:
        >>> from kinabs._model import TIME
        >>> time_breaks([sympy.Piecewise((0, TIME < 4), (1, 2 * TIME >= 3), (2, True))])
        (1.5, 4.0)
    """
    found: set[float] = set()
    for e in exprs:
        e = sympy.sympify(e)
        for rel in e.atoms(sympy.core.relational.Relational):
            diff = sympy.expand(rel.lhs - rel.rhs)
            if diff.free_symbols != {TIME}:
                continue
            slope, rest = diff.coeff(TIME, 1), diff.subs(TIME, 0)
            if not (slope.is_number and rest.is_number) or sympy.expand(
                    diff - slope * TIME - rest) != 0 or slope == 0:
                continue  # not linear in time
            t = float(-rest / slope)
            if math.isfinite(t):
                found.add(t)
    return tuple(sorted(found))
