"""The functions a torch solve calls at every stage, generated with fewer operations.

Eager torch costs a few microseconds per operation whatever the tensor size, and on small
models (serine: 2 states, 3 reactions) a solve is thousands of tiny operations. These
functions compute the same mathematics as the generated ``rhs`` and the symbolic Jacobian
(``kinabs._lowering.codegen``, ``kinabs._lowering.jacobian``) with far fewer operations per call:

* **constants hoisted**: every subexpression that depends only on the constants ``k``
  (``k11 / k1``, ``1 + k12 / k3``, the product of a rate's constant factors, the
  per-state scale ``1 / cell``...) is computed once per solve by ``prep(k) -> q`` (one
  column per hoisted value); the per-stage functions read ``q`` and the state only;
* **one expression per state**: ``rhs_i = scale_i * sum_j N[j, i] v_j + extra_i`` is
  printed directly (no stoichiometry product), with one common-subexpression pass over
  the right-hand side and the Jacobian (``rhs_jac`` evaluates both at a step's start);
* **torch calls only where they are C functions**: ``1 / x`` is ``torch.reciprocal``
  (``Tensor.__rtruediv__`` is a Python function), states are split with one ``unbind``.

Used for small systems only (see :data:`MAX_TERMS`, :data:`SMALL_TERMS`): larger ones
keep the generated code, vectorised (``kinabs._lowering.vectorize``) where rate laws share a
shape, whose size grows with the number of shapes rather than reactions. Mathematically
the same functions, so results agree with the generated ones to rounding (the order of
some products differs).

Example:
    >>> import torch, kinabs
    >>> from kinabs.backends.torch._solvers.stepfns import step_functions
    >>> system = kinabs.lower(kinabs.load_sbml(kinabs.example_model_path()))
    >>> fns = step_functions(system)
    >>> p = torch.as_tensor(system.parameter_defaults)[None]
    >>> q = fns.columns(fns.prep(p))
    >>> f, jac = fns.rhs_jac(None, torch.tensor([[0.6, 0.09]], dtype=torch.float64), q)
    >>> f.shape, jac.shape
    (torch.Size([1, 2]), torch.Size([1, 2, 2]))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy
import torch

from kinabs._errors import UnsupportedFeatureError
from kinabs._lowering.jacobian import jacobian_entries
from kinabs._lowering.powers import guard_powers
from kinabs._lowering.printer import Printer, cse_block
from kinabs._lowering.system import k_symbol, p_symbol, y_symbol
from kinabs._lowering.vectorize import MIN_GROUP, group_by_template
from kinabs._model import TIME
from kinabs.backends.torch._ops import Columns, TorchOps

__all__ = ["StepFunctions", "AdjointFunctions", "step_functions", "adjoint_functions",
           "MAX_TERMS", "SMALL_TERMS"]

#: Systems whose rates, scales and extra terms have more operations than this (sympy
#: ``count_ops``) keep the generated functions; so do those above ``SMALL_TERMS`` whose
#: generated code is vectorised.
MAX_TERMS = 2_000
SMALL_TERMS = 300


class _StepPrinter(Printer):
    """The kinabs printer with fewer and cheaper torch calls: reciprocals as
    ``ops.recip`` (``Tensor.__rtruediv__`` is a Python function), negative terms
    subtracted and negative products negated (no multiplication by a Python -1.0),
    integer powers of a compound base computed once."""

    def p(self, e: sympy.Basic) -> str:
        if isinstance(e, sympy.Add):
            fused = self._fused_add(e)
            if fused is not None:
                return fused
            pos, neg = [], []
            for a in e.args:
                (neg if a.could_extract_minus_sign() else pos).append(a)
            if neg:
                if not pos:
                    return f"(-{self.p(sympy.Add(*[-a for a in neg]))})"
                text = " + ".join(self.p(a) for a in pos)
                return "(" + text + "".join(f" - {self.p(-a)}" for a in neg) + ")"
        return super().p(e)

    #: whether sums of products print as ``ops.addcmul`` (torch); numpy (``host``) has no
    #: fused call, and a Python function per product costs more than the two operations
    fuse = True

    def _fused_add(self, e: sympy.Add) -> str | None:
        """``a + b*c + d*e`` as ``addcmul(addcmul(a, b, c), d, e)``: one torch call per
        product term instead of two. Only products of two or more factors without a
        number coefficient or a denominator are fused, onto a sum that prints as a tensor
        (never a Python number); ``None`` where nothing is fused."""
        if not self.fuse:
            return None
        products = [a for a in e.args if _fusable(a)]
        if not products:
            return None
        rest = [a for a in e.args if not _fusable(a)]
        if rest:
            text = self.p(sympy.Add(*rest, evaluate=False)) if len(rest) > 1 else self.p(rest[0])
        else:
            text = self.p(products.pop(0))
        if _is_number_text(text.strip("()")) or not products:
            return None
        for m in products:
            first, *others = m.args
            second = others[0] if len(others) == 1 else sympy.Mul(*others, evaluate=False)
            text = f"ops.addcmul({text}, {self.p(first)}, {self.p(second)})"
        return text

    def _mul(self, e: sympy.Mul) -> str:
        coeff, rest = e.as_coeff_Mul()
        if coeff == -1 and rest != 1:
            return f"(-{self.p(rest)})"
        num, den = [], []
        for a in e.args:
            if isinstance(a, sympy.Pow) and a.exp.is_Number and a.exp < 0:
                den.append(self.p(a.base ** (-a.exp)))
            else:
                num.append(self.p(a))
        if not den:
            return "(" + " * ".join(num) + ")"
        den_text = den[0] if len(den) == 1 else "(" + " * ".join(den) + ")"
        if not num:
            return f"ops.recip({den_text})"
        if all(_is_number_text(t) for t in num):
            # a number over a tensor: Tensor.__rtruediv__ is a Python function
            return f"({' * '.join(num)} * ops.recip({den_text}))"
        return f"({' * '.join(num)} / {den_text})"

    def _pow(self, base: sympy.Basic, exp: sympy.Basic) -> str:
        if exp == -1:
            return f"ops.recip({self.p(base)})"
        if exp == 2:  # the base printed once (CSE does not see inside powers)
            return f"ops.square({self.p(base)})"
        if exp == -2:
            return f"ops.recip(ops.square({self.p(base)}))"
        if exp == 3:
            return f"ops.cube({self.p(base)})"
        if exp == -3:
            return f"ops.recip(ops.cube({self.p(base)}))"
        return super()._pow(base, exp)


def _fusable(a: sympy.Basic) -> bool:
    """A product of two or more factors, none a number or a negative power."""
    return (isinstance(a, sympy.Mul) and len(a.args) >= 2
            and not any(f.is_Number for f in a.args)
            and not any(isinstance(f, sympy.Pow) and f.exp.is_Number and f.exp < 0
                        for f in a.args))


def _is_number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class _Hoister:
    """Replaces subexpressions that depend on constants only by symbols ``@p{i}``."""

    def __init__(self, variables: set[sympy.Symbol]) -> None:
        self.variables = variables
        self.table: dict[sympy.Expr, sympy.Symbol] = {}

    def symbol(self, e: sympy.Expr) -> sympy.Symbol:
        if e not in self.table:
            self.table[e] = p_symbol(len(self.table))
        return self.table[e]

    def constant(self, e: sympy.Basic) -> bool:
        return isinstance(e, sympy.Expr) and not (e.free_symbols & self.variables)

    def __call__(self, e: sympy.Basic) -> sympy.Basic:
        if not e.free_symbols:
            return e  # numbers and constant booleans stay literals
        if self.constant(e):
            return self.symbol(e)
        if isinstance(e, (sympy.Add, sympy.Mul)):
            fixed = [a for a in e.args if self.constant(a)]
            varying = [self(a) for a in e.args if not self.constant(a)]
            if fixed:  # numbers too: a Python number operand costs more than a tensor
                fixed = [self.symbol(e.func(*fixed))]
            return e.func(*fixed, *varying, evaluate=False)
        if not e.args:
            return e
        return e.func(*[self(a) for a in e.args])


@dataclass(frozen=True)
class StepFunctions:
    """``prep(k) -> q`` (B, H) once per solve; then, with ``q`` split by :meth:`columns`:
    ``rhs(t, y, q) -> (B, S)``, ``rhs_jac(t, y, q) -> ((B, S), (B, S, S))``,
    ``jac(t, y, q) -> (B, S, S)`` and
    ``dfdt(t, y, q)`` (``None`` for autonomous systems)."""

    prep: Any
    rhs: Any
    rhs_jac: Any
    jac: Any
    dfdt: Any
    n_hoisted: int
    system: Any = field(repr=False, default=None)
    device: Any = None
    dtype: Any = None

    @staticmethod
    def columns(q: torch.Tensor) -> Columns:
        return Columns(q)


@dataclass(frozen=True)
class AdjointFunctions:
    """Vector-Jacobian products for a discrete adjoint of the Rosenbrock step, by the
    state (``*_y``: (B, S)) or by the hoisted constants (``*_q``: (B, H)):

    * ``f_vjp_q(t, y, q, lam)``: ``lam . f(y, q)`` differentiated;
    * ``jac_vjp_*(t, y, q, m)``: ``sum_e m_e J_e(y, q)`` differentiated, with ``m`` the
      weights of the Jacobian's structurally nonzero entries:
      ``M.flatten(-2)[..., entries]``.
    """

    f_vjp_q: Any
    jac_vjp_y: Any
    jac_vjp_q: Any
    entries: torch.Tensor
    n_states: int


@dataclass(frozen=True)
class _Hoisted:
    """The system's right-hand side and Jacobian entries over states and hoisted
    constants (``@p{i}`` is ``consts[i]``, an expression in ``k``)."""

    n: int
    consts: list
    rhs: list
    jac: list
    keys: list  # (row, column) of each Jacobian entry
    dfdt: list  # empty when autonomous


def _hoisted(system) -> _Hoisted:
    n = len(system.states)
    hoist = _Hoister({y_symbol(i) for i in range(n)} | {TIME})
    stoich = np.asarray(system.stoichiometry, dtype=float)
    scale = list(system.scale) if system.scale is not None else [sympy.Integer(1)] * n

    def num(x: float) -> sympy.Expr:
        return sympy.Integer(int(x)) if float(x).is_integer() else sympy.Float(x)

    rhs = []
    for i in range(n):
        flux = sympy.Add(*[num(stoich[j, i]) * system.rates[j]
                           for j in range(len(system.rates)) if stoich[j, i] != 0])
        rhs.append(guard_powers(scale[i] * flux + system.extra[i]))
    entries, dfdt = jacobian_entries(system)
    keys = sorted(entries)
    has_time = any(d != 0 for d in dfdt)
    f_h = [hoist(e) for e in rhs]
    j_h = [hoist(entries[key]) for key in keys]
    d_h = [hoist(e) for e in dfdt] if has_time else []
    return _Hoisted(n, list(hoist.table), f_h, j_h, keys, d_h)


_IND = "        "
_ARRAYS = {"y": "y", "p": "q"}
_HEAD = [f"{_IND}y = ops.columns(y)"]


def _source(h: _Hoisted, printer: type[_StepPrinter] | None = None
            ) -> tuple[str, np.ndarray | None]:
    n, keys = h.n, h.keys
    pr = (printer or _StepPrinter)()
    ind = _IND
    body = ["    def prep(k):", f"{ind}k = ops.columns(k)"]
    lines, outs = cse_block(pr, h.consts, ind, {"k": "k"})
    body += lines
    body.append(f"{ind}return ops.stack([{', '.join(outs)}], like=k)")

    lines, outs = cse_block(pr, h.rhs, ind, _ARRAYS)
    body += ["    def rhs(t, y, q):", *_HEAD, *lines, f"{ind}return {_stack(h.rhs, outs)}"]

    gather = None
    if len(keys) < n * n:
        gather = np.full(n * n, len(keys), dtype=np.int64)
        for pos, (i, col) in enumerate(keys):
            gather[i * n + col] = pos

    def matrix(j_out: list[str]) -> list[str]:
        if gather is None:
            return [f"{ind}flat = {_stack(h.jac, j_out)}"]
        return [f"{ind}flat = ops.pad_last({_stack(h.jac, j_out)})[..., gather]"]

    lines, outs = cse_block(pr, [*h.rhs, *h.jac], ind, _ARRAYS)
    f_out, j_out = outs[:n], outs[n:]
    body += ["    def rhs_jac(t, y, q):", *_HEAD, *lines,
             f"{ind}f = {_stack(h.rhs, f_out)}", *matrix(j_out),
             f"{ind}return f, flat.reshape(*y.shape, {n})"]
    lines, j_out = cse_block(pr, h.jac, ind, _ARRAYS)
    body += ["    def jac(t, y, q):", *_HEAD, *lines, *matrix(j_out),
             f"{ind}return flat.reshape(*y.shape, {n})"]

    body.append("    def dfdt(t, y, q):")
    if h.dfdt:
        lines, outs = cse_block(pr, h.dfdt, ind, _ARRAYS)
        body += [*_HEAD, *lines, f"{ind}return ops.stack([{', '.join(outs)}], like=y.tensor)"]
    else:
        body.append(f"{ind}return None")
    top = ["# generated by kinabs.backends.torch._solvers.stepfns; do not edit",
           "def make(ops, gather):"]
    top += [f"    {name} = {text}" for text, name in pr.consts.items()]
    source = "\n".join([*top, *body, "    return prep, rhs, rhs_jac, jac, dfdt", ""])
    return source, gather


def _adjoint_source(h: _Hoisted, printer: type[_StepPrinter] | None = None) -> str:
    """Three functions ``name(t, y, q, w)``: ``sum_a w_a e_a(y, q)`` differentiated by the
    state (``*_y``: (B, S)) or by the hoisted constants (``*_q``: (B, H)), with ``e`` the
    right-hand side (``f_vjp_*``) or the Jacobian's nonzero entries in ``keys`` order
    (``jac_vjp_*``). Entries that are zero are not computed (a gather fills them)."""
    n, n_q = h.n, len(h.consts)
    pr = (printer or _StepPrinter)()
    ind = _IND
    body = []
    names = []
    for name, exprs in (("f_vjp", h.rhs), ("jac_vjp", h.jac)):
        total = sympy.Add(*[k_symbol(a) * e for a, e in enumerate(exprs)])
        # hoisted numbers (a column of the same value) need no derivative
        parts = [("q", [p_symbol(j) if h.consts[j].free_symbols else None
                        for j in range(n_q)])]
        if name == "jac_vjp":
            parts.insert(0, ("y", [y_symbol(i) for i in range(n)]))
        for part, wrt in parts:
            grads = [sympy.Integer(0) if v is None else _checked(sympy.diff(total, v))
                     for v in wrt]
            nonzero = [i for i, g in enumerate(grads) if g != 0]
            lines, outs = cse_block(pr, [grads[i] for i in nonzero], ind, {**_ARRAYS, "k": "w"})
            fn = f"{name}_{part}"
            names.append(fn)
            body += [f"    def {fn}(t, y, q, w):", *_HEAD, f"{ind}w = ops.columns(w)", *lines]
            if not nonzero:
                body.append(f"{ind}return ops.zeros_last(y.tensor, {len(grads)})")
            elif len(nonzero) == len(grads):
                body.append(f"{ind}return {_stack(grads, outs)}")
            else:
                gather = [len(nonzero)] * len(grads)
                for pos, i in enumerate(nonzero):
                    gather[i] = pos
                g = pr.hoist(f"ops.index({gather!r})")
                kept = [grads[i] for i in nonzero]
                body.append(f"{ind}return ops.pad_last({_stack(kept, outs)})[..., {g}]")
    top = ["# generated by kinabs.backends.torch._solvers.stepfns; do not edit",
           "def make(ops):"]
    top += [f"    {name} = {text}" for text, name in pr.consts.items()]
    return "\n".join([*top, *body, f"    return {', '.join(names)}", ""])


def _stack(exprs: list, outs: list[str]) -> str:
    """Stacking printed ``outs`` along a new last axis: one ``torch.stack`` call when
    every expression depends on the state (so all have the state's batch shape), else
    ``ops.stack``, which broadcasts numbers and constant-only columns first (and makes
    the empty stack of a right-hand side that depends on no state)."""
    if exprs and all(any(s.name.startswith("@y") for s in sympy.sympify(e).free_symbols)
                     for e in exprs):
        return f"ops.stack_full([{', '.join(outs)}])"
    return f"ops.stack([{', '.join(outs)}], like=y.tensor)"


def _checked(e: sympy.Expr) -> sympy.Expr:
    if e.has(sympy.Derivative, sympy.Subs):
        bad = next(iter(e.atoms(sympy.Derivative, sympy.Subs)))
        raise UnsupportedFeatureError(None, f"a symbolic second derivative of '{bad}'")
    return e


class _StepOps(TorchOps):
    """TorchOps plus what the step functions print."""

    def recip(self, x):
        return torch.reciprocal(x)

    addcmul = staticmethod(torch.addcmul)

    def square(self, x):
        return torch.square(x)

    def cube(self, x):
        return torch.pow(x, 3)

    def __init__(self, device: Any = None, dtype: torch.dtype = torch.float64) -> None:
        super().__init__(device, dtype)
        self._numbers: dict[float, torch.Tensor] = {}

    def stack(self, items, like):
        shape = like.shape[:-1]
        if not items:
            return torch.zeros((*shape, 0), dtype=self.dtype, device=self.device)
        return torch.stack([x if type(x) is torch.Tensor and x.shape == shape
                            else self._expand(x, shape) for x in items], dim=-1)

    def _expand(self, x, shape):
        if not isinstance(x, torch.Tensor):
            value = float(x)
            x = self._numbers.get(value)
            if x is None:
                with torch.inference_mode(False):  # cached: never an inference tensor
                    x = self._numbers[value] = self.const(value)
        return x.expand(shape)

    @staticmethod
    def stack_full(items):
        return torch.stack(items, dim=-1)

    def zeros_last(self, like, m):
        return torch.zeros((*like.shape[:-1], m), dtype=self.dtype, device=self.device)

    def pad_last(self, x):
        """``x`` with a column of zeros appended (the target of gathered zeros)."""
        return torch.nn.functional.pad(x, (0, 1))


def _bind(source: str, ops: Any, *args: Any) -> tuple:
    namespace: dict[str, Any] = {}
    # The source is kinabs' own printer output, never text from an input file.
    exec(compile(source, "<kinabs torch step functions>", "exec"), namespace)  # noqa: S102
    return namespace["make"](ops, *args)


def _cached_hoisted(system) -> _Hoisted | None:
    if "torch-step-hoisted" not in system._cache:
        out = None
        exprs = [*system.rates, *(system.scale or ()), *system.extra]
        # models whose generated code is vectorised (groups of same-shaped rate laws)
        # keep it unless they are small: its operation count grows with the number of
        # rate-law shapes, the step functions' with the number of reactions
        size = sum(sympy.count_ops(e) for e in exprs)
        if size <= SMALL_TERMS or (size <= MAX_TERMS and not group_by_template(
                exprs, min_group=MIN_GROUP)):
            try:
                out = _hoisted(system)
            except UnsupportedFeatureError:
                out = None
        system._cache["torch-step-hoisted"] = out
    return system._cache["torch-step-hoisted"]


def step_functions(system, device: Any = None, dtype: torch.dtype = torch.float64
                   ) -> StepFunctions | None:
    """The step functions of ``system`` on ``device``/``dtype``, or ``None`` when the
    system is too large for them or has no symbolic Jacobian (cached on the system)."""
    key = ("torch-step", str(device), str(dtype))
    if key not in system._cache:
        out = None
        h = _cached_hoisted(system)
        if h is not None:
            source, gather = _source(h)
            ops = _StepOps(device, dtype)
            g = None if gather is None else torch.as_tensor(gather, device=ops.device)
            prep, rhs, rhs_jac, jac, dfdt = _bind(source, ops, g)
            out = StepFunctions(prep, rhs, rhs_jac, jac, dfdt if h.dfdt else None,
                                len(h.consts), system, device, dtype)
        system._cache[key] = out
    return system._cache[key]


def adjoint_functions(fns: StepFunctions) -> AdjointFunctions | None:
    """The derivatives a discrete adjoint needs (see :class:`AdjointFunctions`), made on
    first use; ``None`` where sympy cannot differentiate twice."""
    system = fns.system
    key = ("torch-adjoint", str(fns.device), str(fns.dtype))
    if key not in system._cache:
        out = None
        h = _cached_hoisted(system)
        try:
            source = _adjoint_source(h)
        except UnsupportedFeatureError:
            source = None
        if source is not None:
            ops = _StepOps(fns.device, fns.dtype)
            fns4 = _bind(source, ops)
            idx = [i * h.n + c for i, c in h.keys]
            out = AdjointFunctions(*fns4, torch.as_tensor(idx, device=ops.device), h.n)
        system._cache[key] = out
    return system._cache[key]
