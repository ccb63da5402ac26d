"""Symbolic Jacobian ``d(rhs)/dy`` (and ``d(rhs)/dt``) of an :class:`~kinabs._lowering.system.OdeSystem`.

Implicit solvers (the torch backend's Rosenbrock method) need the Jacobian of the
right-hand side. It is differentiated once with sympy, per reaction
(``rhs_i = scale_i * sum_j N[j, i] * v_j + extra_i``, so ``dv_j/dy`` is shared by every
state a reaction touches), and printed with the same printer and CSE as
``kinabs._lowering.codegen``: the source calls only ``ops``, binds to every backend, and computes
only the structurally nonzero entries (the zeros come from one gather).

Piecewise-constant operations (floor, ceiling, quotient) differentiate to zero; ``rem(x,
y)`` is ``x - y * quotient(x, y)``; min/max/abs differentiate to piecewise selections.
Operations whose derivative kinabs cannot print (e.g. the gamma function) raise
:class:`~kinabs._errors.UnsupportedFeatureError`; callers then fall back to automatic
differentiation.

Example:
    >>> import numpy as np, kinabs
    >>> from kinabs._lowering.jacobian import generate_jacobian
    >>> from kinabs._lowering.ops import numpy_ops
    >>> m = kinabs.Model(compartments={"c": kinabs.Compartment("c")},
    ...     species={"A": kinabs.Species("A", "c", initial_concentration=1.0)},
    ...     parameters={"k": kinabs.Parameter("k", 2.0)},
    ...     reactions={"r": kinabs.Reaction("r", kinabs._model.sym("k")
    ...         * kinabs._model.sym("A") ** 2, reactants=(kinabs.SpeciesReference("A"),))})
    >>> system = kinabs.lower(m)
    >>> f = generate_jacobian(system).bind(numpy_ops())
    >>> y, k = np.array([3.0]), np.array([2.0, 1.0])
    >>> f.jac(np.float64(0.0), y, k)
    array([[-12.]])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy

from kinabs._errors import UnsupportedFeatureError
from kinabs._lowering.powers import guard_powers
from kinabs._lowering.printer import Printer, cse_block
from kinabs._lowering.system import y_symbol
from kinabs._model import TIME, Quotient, Rem

__all__ = ["generate_jacobian", "GeneratedJacobian", "BoundJacobian", "jacobian_entries"]


@dataclass(frozen=True)
class BoundJacobian:
    """``jac(t, y, k) -> (..., S, S)`` and ``dfdt(t, y, k) -> (..., S)`` (``None`` when the
    right-hand side does not depend on time), bound to one operator table."""

    jac: Any
    dfdt: Any
    ops: Any


@dataclass(frozen=True)
class GeneratedJacobian:
    """Generated Jacobian source of one system; :meth:`bind` compiles it against ``ops``."""

    source: str
    gather: np.ndarray | None  # flat (S*S) -> index into the nonzero entries (+ a zero)
    n_states: int
    nonzeros: int
    has_time: bool

    def bind(self, ops: Any) -> BoundJacobian:
        namespace: dict[str, Any] = {}
        code = compile(self.source, "<kinabs generated jacobian>", "exec")
        # The source is kinabs' own printer output, never text from an input file.
        exec(code, namespace)  # noqa: S102
        gather = None
        if self.gather is not None:
            gather = ops.xp.asarray(self.gather, device=ops.device)
        jac, dfdt = namespace["make"](ops, gather)
        return BoundJacobian(jac=jac, dfdt=dfdt if self.has_time else None, ops=ops)


def _piecewise_constant(exprs: list[sympy.Expr]) -> tuple[list[sympy.Expr], dict]:
    """Replace floor/ceiling/quotient by fresh constants (derivative 0 almost everywhere)
    and rem by its definition; returns the new expressions and the way back."""
    back: dict[sympy.Symbol, sympy.Expr] = {}
    forward: dict[sympy.Expr, sympy.Symbol] = {}

    def freeze(e: sympy.Expr) -> sympy.Symbol:
        if e not in forward:
            s = sympy.Dummy(f"pc{len(forward)}", real=True)
            forward[e] = s
            back[s] = e
        return forward[e]

    def walk(e: sympy.Basic) -> sympy.Basic:
        if not e.args:
            return e
        args = [walk(a) for a in e.args]
        e = e.func(*args) if any(a is not b for a, b in zip(args, e.args)) else e
        if isinstance(e, Rem):
            a, b = e.args
            return a - b * freeze(Quotient(a, b))
        if isinstance(e, (sympy.floor, sympy.ceiling, Quotient)):
            return freeze(e)
        return e

    return [walk(sympy.sympify(e)) for e in exprs], back


_SELECT = {
    sympy.Heaviside: lambda x, *_: sympy.Piecewise(
        (0, x < 0), (1, x > 0), (sympy.Rational(1, 2), True)),
    sympy.sign: lambda x: sympy.Piecewise((1, x > 0), (-1, x < 0), (0, True)),
    sympy.DiracDelta: lambda *_: sympy.Integer(0),
}


def _clean(e: sympy.Expr, back: dict) -> sympy.Expr:
    e = e.replace(lambda x: type(x) in _SELECT, lambda x: _SELECT[type(x)](*x.args))
    e = e.xreplace(back) if back else e
    if e.has(sympy.Derivative, sympy.Subs, sympy.polygamma):
        bad = next(iter(e.atoms(sympy.Derivative, sympy.Subs, sympy.polygamma)))
        raise UnsupportedFeatureError(None, f"a symbolic Jacobian of '{bad}'")
    return e


def jacobian_entries(system) -> tuple[dict[tuple[int, int], sympy.Expr], list[sympy.Expr]]:
    """``{(i, l): d rhs_i / d y_l}`` for the structurally nonzero entries, and the list
    ``d rhs_i / dt`` (all zero when the right-hand side does not depend on time)."""
    n = len(system.states)
    ys = [y_symbol(i) for i in range(n)]
    scale = list(system.scale) if system.scale is not None else [sympy.Integer(1)] * n
    # powers with symbolic exponents differentiate without 0/0 at a zero base
    rates, back = _piecewise_constant([guard_powers(v) for v in system.rates])
    scale, back2 = _piecewise_constant([guard_powers(v) for v in scale])
    extra, back3 = _piecewise_constant([guard_powers(v) for v in system.extra])
    back = {**back, **back2, **back3}
    stoich = np.asarray(system.stoichiometry, dtype=float)
    wrt = [*ys, TIME]

    def num(x: float) -> sympy.Expr:
        return sympy.Integer(int(x)) if float(x).is_integer() else sympy.Float(x)

    # d v_j / d (y_l or t), computed once per reaction
    dv = [{s: sympy.diff(v, s) for s in wrt if v.has(s)} for v in rates]
    entries: dict[tuple[int, int], sympy.Expr] = {}
    dfdt: list[sympy.Expr] = []
    for i in range(n):
        reactions = [j for j in range(len(rates)) if stoich[j, i] != 0]
        flux = sympy.Add(*[num(stoich[j, i]) * rates[j] for j in reactions])
        for col, s in enumerate(wrt):
            d = sympy.Add(*[num(stoich[j, i]) * dv[j][s] for j in reactions if s in dv[j]])
            d = scale[i] * d
            if scale[i].has(s):
                d = d + sympy.diff(scale[i], s) * flux
            if extra[i].has(s):
                d = d + sympy.diff(extra[i], s)
            if s is TIME:
                dfdt.append(_clean(d, back))
            elif d != 0:
                entries[(i, col)] = _clean(d, back)
    return entries, dfdt


def generate_jacobian(system) -> GeneratedJacobian:
    """The generated Jacobian of ``system``, made once and cached in ``system._cache``."""
    cached = system._cache.get("jacobian")
    if isinstance(cached, Exception):
        raise cached
    if cached is not None:
        return cached
    try:
        out = _generate(system)
    except UnsupportedFeatureError as exc:
        system._cache["jacobian"] = exc
        raise
    system._cache["jacobian"] = out
    return out


def _generate(system) -> GeneratedJacobian:
    n = len(system.states)
    entries, dfdt = jacobian_entries(system)
    has_time = any(d != 0 for d in dfdt)
    keys = sorted(entries)
    pr = Printer()
    ind = "        "
    lines, values = cse_block(pr, [entries[key] for key in keys], ind, {"y": "y", "k": "k"})
    body = ["    def jac(t, y, k):", *lines]
    dense = len(keys) == n * n
    gather = None
    if dense:
        body.append(f"{ind}flat = ops.stack([{', '.join(values)}], like=y)")
    else:
        gather = np.full(n * n, len(keys), dtype=np.int64)  # the appended zero
        for pos, (i, col) in enumerate(keys):
            gather[i * n + col] = pos
        body.append(f"{ind}flat = ops.stack([{', '.join([*values, '0.0'])}], like=y)")
        body.append(f"{ind}flat = flat[..., gather]")
    body.append(f"{ind}return ops.xp.reshape(flat, (*y.shape, {n}))")
    body.append("    def dfdt(t, y, k):")
    if has_time:
        lines, outs = cse_block(pr, dfdt, ind, {"y": "y", "k": "k"})
        body += lines
        body.append(f"{ind}return ops.stack([{', '.join(outs)}], like=y)")
    else:
        body.append(f"{ind}return ops.zeros_like(y)")
    head = ["# generated by kinabs._lowering.jacobian; do not edit", "def make(ops, gather):"]
    head += [f"    {name} = {text}" for text, name in pr.consts.items()]
    source = "\n".join([*head, *body, "    return jac, dfdt", ""])
    return GeneratedJacobian(source=source, gather=gather, n_states=n, nonzeros=len(keys),
                             has_time=has_time)
