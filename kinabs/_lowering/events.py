"""Lowering of SBML events: triggers, delays, priorities and assignments over primitives.

Every relation in a trigger (``S1 < 0.1``, ``time >= t_on``) becomes an *atom*: a
continuous function ``g = lhs - rhs`` of ``(t, y, k)`` whose sign says whether the
relation holds. The solvers root-find the atoms' zero crossings, so an event fires at the
crossing to the solver's tolerance, not at the end of the step that passed it; the
trigger itself is a boolean function of the atoms' truth values (``And``, ``Or``, ``Not``,
``Xor``), evaluated by :func:`truth` without any ``eval``.

The variables that events assign are states of the ODE system (a parameter an event sets
is a state with zero derivative), so an event changes the state vector only; assigned
values are in the variable's own units and :meth:`EventSystem.bind` gives the functions
that compute them, with the atoms, delays and priorities, for any backend.

Example:
    >>> import kinabs, sympy
    >>> from kinabs._model import TIME
    >>> b = kinabs.ModelBuilder("dose")
    >>> b.species("A", initial_concentration=1.0)
    A
    >>> b.parameter("k", 1.0)
    k
    >>> b.reaction("r", "A ->", rate="k*A")
    r
    >>> model = b.build()
    >>> model.events["dose"] = kinabs.Event("dose", trigger=TIME >= 2,
    ...                                     assignments=(("A", sympy.Integer(1)),))
    >>> ev = kinabs.lower(model).events
    >>> ev.atom_kinds, [str(a) for a in ev.atoms]
    (('>=',), ['@time - 2.0'])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy
from sympy.core.relational import Relational
from sympy.logic.boolalg import BooleanAtom, BooleanFunction

from kinabs._errors import UnsupportedFeatureError
from kinabs._lowering import rate_of as _rate_of
from kinabs._lowering.codegen import compile_source, emit
from kinabs._lowering.printer import Printer
from kinabs._model import Model, RateOf

__all__ = ["EventSystem", "LoweredEvent", "lower_events", "truth", "atom_truth",
           "event_targets", "refuse_events"]

_KINDS = {sympy.StrictGreaterThan: ">", sympy.GreaterThan: ">=",
          sympy.StrictLessThan: "<", sympy.LessThan: "<=",
          sympy.Equality: "==", sympy.Unequality: "!="}
#: Relations that are never root-found: they may only change value at an event (an
#: equality on parameters that events set), and their side is +1 where they hold.
DISCRETE = ("==", "!=")


def refuse_events(system: Any, what: str) -> None:
    """Raise :class:`UnsupportedFeatureError` naming the first event when ``system`` has
    events and ``what`` (a way of solving it) would ignore them."""
    if getattr(system, "events", None) is not None:
        first = system.events.events[0].id
        raise UnsupportedFeatureError(
            first, "event", f"{what} does not apply events yet (kinabs.simulate does, on "
            "both backends); remove the events or simulate with kinabs.simulate.")


def event_targets(model: Model) -> set[str]:
    """The ids that some event assigns (they become states of the system)."""
    return {var for e in model.events.values() for var, _ in e.assignments}


@dataclass(frozen=True)
class LoweredEvent:
    """One event over atoms and states: ``trigger`` is a boolean over the symbols
    ``@a<i>`` (atom ``i`` holds); ``targets`` the state index of each assignment."""

    id: str
    trigger: sympy.Basic
    targets: tuple[int, ...]
    has_delay: bool
    has_priority: bool
    initial_value: bool
    persistent: bool
    use_values_from_trigger_time: bool


@dataclass(frozen=True, eq=False)
class EventSystem:
    """The events of an ODE system, lowered (see the module docstring)."""

    events: tuple[LoweredEvent, ...]
    #: per atom: ">", ">=", "<" or "<=" (``g`` against zero)
    atom_kinds: tuple[str, ...]
    atoms: tuple[sympy.Expr, ...]
    #: every event's assigned values in event order, in the variables' own units
    values: tuple[sympy.Expr, ...]
    delays: tuple[sympy.Expr, ...]
    priorities: tuple[sympy.Expr, ...]
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def groups(self) -> list[np.ndarray]:
        """Per atom, the indices of the atoms with the same function ``g`` (and both
        root-found, or both discrete)."""
        if "groups" not in self._cache:
            by_g: dict = {}
            keys = [(g, kind in DISCRETE) for g, kind in zip(self.atoms, self.atom_kinds)]
            for i, key in enumerate(keys):
                by_g.setdefault(key, []).append(i)
            self._cache["groups"] = [np.asarray(by_g[key]) for key in keys]
        return self._cache["groups"]

    @property
    def value_slices(self) -> list[slice]:
        """Per event, its slice of :attr:`values`."""
        out, start = [], 0
        for e in self.events:
            out.append(slice(start, start + len(e.targets)))
            start += len(e.targets)
        return out

    def source(self) -> str:
        """Generated source of ``make(ops, N) -> (atoms, values, delays, priorities)``,
        each a function of ``(t, y, k)`` batched over leading axes."""
        pr = Printer()
        body: list[str] = []
        yk = {"y": "y", "k": "k"}
        for name, exprs in (("atoms", self.atoms), ("values", self.values),
                            ("delays", self.delays), ("priorities", self.priorities)):
            body.append(f"    def {name}(t, y, k):")
            if exprs:
                body += emit(pr, exprs, "        ", yk, "out", "y")
            else:
                body.append("        out = y[..., :0]")
            body.append("        return out")
        head = ["# generated by kinabs._lowering.events; do not edit", "def make(ops, N):"]
        head += [f"    {name} = {text}" for text, name in pr.consts.items()]
        return "\n".join([*head, *body, "    return atoms, values, delays, priorities", ""])

    def bind(self, ops: Any) -> tuple[Callable, Callable, Callable, Callable]:
        """``(atoms, values, delays, priorities)`` bound to ``ops`` (made once per ops
        type)."""
        key = type(ops).__name__
        if key not in self._cache:
            self._cache[key] = compile_source(self.source())(ops, None)
        return self._cache[key]

    def initial_sides(self, g: np.ndarray) -> np.ndarray:
        """Each atom's side of zero (+1 or -1) from its value ``g`` (A,), where ``g == 0``
        takes the side on which the relation has the truth value it has at zero."""
        return np.asarray([_side(v, kind, None) for v, kind in zip(g, self.atom_kinds)],
                          dtype=np.float64)

    def update_sides(self, sides: np.ndarray, g: np.ndarray) -> np.ndarray:
        """Sides after the atoms moved to ``g``: the sign of ``g`` (at zero, the side where
        the relation has its value at zero), the old side where ``g`` is not a number."""
        return np.asarray([_side(v, kind, s) for v, kind, s in
                           zip(g, self.atom_kinds, sides)], dtype=np.float64)

    def truths(self, sides: np.ndarray) -> list[bool]:
        """Each event's trigger value when the atoms are on ``sides``."""
        held = atom_truth(sides, self.atom_kinds)
        return [truth(e.trigger, held) for e in self.events]


def _side(g: float, kind: str, old: float | None) -> float:
    if kind in DISCRETE:
        if not g == g:
            return old if old is not None else -1.0
        return 1.0 if (g == 0) == (kind == "==") else -1.0
    if g > 0:
        return 1.0
    if g < 0:
        return -1.0
    if old is not None and not g == 0:
        return old  # not a number: no news
    # at zero: ">=" and "<=" hold, ">" and "<" do not
    return {">": -1.0, ">=": 1.0, "<": 1.0, "<=": -1.0}[kind]


def atom_truth(sides: np.ndarray, kinds: Sequence[str]) -> dict[str, bool]:
    """Atom symbol name -> whether its relation holds on ``sides``."""
    return {f"@a{i}": (s > 0) == (kind in (">", ">=", "==", "!=")) for i, (s, kind) in
            enumerate(zip(sides, kinds))}


def truth(expr: sympy.Basic, held: Mapping[str, bool]) -> bool:
    """The value of a boolean over atom symbols (``held``: name -> value).

    Example:
        >>> a0, a1 = sympy.Symbol("@a0"), sympy.Symbol("@a1")
        >>> truth(sympy.And(a0, sympy.Not(a1)), {"@a0": True, "@a1": False})
        True
    """
    if expr is sympy.true:
        return True
    if expr is sympy.false:
        return False
    if isinstance(expr, sympy.Symbol):
        return held[expr.name]
    args = [truth(a, held) for a in expr.args]
    if isinstance(expr, sympy.And):
        return all(args)
    if isinstance(expr, sympy.Or):
        return any(args)
    if isinstance(expr, sympy.Not):
        return not args[0]
    if isinstance(expr, sympy.Xor):
        return sum(args) % 2 == 1
    raise TypeError(f"not a boolean over atoms: {expr}")


def _between_events(g: sympy.Expr, static: set[str]) -> bool:
    """Whether ``g`` is constant between events: no time, only constants and the states
    named in ``static`` (whose derivative is zero)."""
    return all(s.name.startswith("@k") or s.name in static for s in g.free_symbols)


def lower_events(model: Model, dyn: Mapping[str, sympy.Expr], state_index: Mapping[str, int],
                 rates_of: Callable[[set[str]], Mapping[sympy.Symbol, sympy.Expr]],
                 static: set[str] = frozenset()) -> EventSystem | None:
    """The model's events over primitives (``dyn``: id -> expression over ``t, y, k``;
    ``rates_of(ids)``: rateOf placeholder -> time derivative, see
    ``kinabs._lowering.rate_of``; ``static``: the names of the state symbols whose
    derivative is zero)."""
    if not model.events:
        return None
    atoms: list[sympy.Expr] = []
    kinds: list[str] = []
    seen: dict[tuple[str, sympy.Expr], int] = {}
    lowered, values, delays, priorities = [], [], [], []

    def resolve(expr: sympy.Basic, eid: str, part: str) -> sympy.Basic:
        if expr.has(RateOf):
            expr = expr.replace(RateOf, _rate_of.placeholder)
        ids = {s for s in expr.free_symbols if not s.name.startswith("@")}
        expr = expr.xreplace({s: dyn[s.name] for s in ids})
        names = _rate_of.targets([expr])
        if names:
            unknown = sorted(n for n in names if n not in dyn)
            if unknown:
                raise UnsupportedFeatureError(eid, f"rateOf of {unknown} in an event's {part}")
            expr = expr.xreplace(rates_of(names))
        return expr

    def atomise(expr: sympy.Basic, eid: str) -> sympy.Basic:
        if isinstance(expr, BooleanAtom):
            return expr
        if isinstance(expr, Relational):
            kind = _KINDS[type(expr)]
            # numbers as floats, so that "S > 4" and "S > 4.0" are one atom
            g = sympy.expand(resolve(expr.lhs - expr.rhs, eid, "trigger")).evalf()
            if kind in DISCRETE and not _between_events(g, static):
                raise UnsupportedFeatureError(
                    eid, f"trigger relation '{type(expr).__name__}' ({expr}) on a quantity "
                    "that changes continuously",
                    "kinabs root-finds <, <=, > and >= in triggers, and evaluates == and != "
                    "only where events alone change their sides; a solver almost never "
                    "meets an equality of a changing quantity exactly. Write it as an "
                    "inequality.")
            key = (kind, g)
            if key not in seen:
                seen[key] = len(atoms)
                atoms.append(g)
                kinds.append(kind)
            return sympy.Symbol(f"@a{seen[key]}")
        if isinstance(expr, (sympy.And, sympy.Or, sympy.Not, sympy.Xor)):
            return expr.func(*[atomise(a, eid) for a in expr.args], evaluate=False)
        kind = "boolean" if isinstance(expr, BooleanFunction) else type(expr).__name__
        raise UnsupportedFeatureError(eid, f"trigger of form '{kind}' ({expr})")

    for e in model.events.values():
        trigger = atomise(e.trigger, e.id)
        targets = tuple(state_index[var] for var, _ in e.assignments)
        values += [resolve(x, e.id, "assignment") for _, x in e.assignments]
        delays.append(resolve(e.delay, e.id, "delay") if e.delay is not None
                      else sympy.Integer(0))
        priorities.append(resolve(e.priority, e.id, "priority") if e.priority is not None
                          else sympy.Integer(0))
        lowered.append(LoweredEvent(
            id=e.id, trigger=trigger, targets=targets, has_delay=e.delay is not None,
            has_priority=e.priority is not None, initial_value=e.initial_value,
            persistent=e.persistent,
            use_values_from_trigger_time=e.use_values_from_trigger_time))
    return EventSystem(events=tuple(lowered), atom_kinds=tuple(kinds), atoms=tuple(atoms),
                       values=tuple(values), delays=tuple(delays),
                       priorities=tuple(priorities))
