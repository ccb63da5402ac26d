"""Build a :class:`kinabs.Model` in Python: :class:`ModelBuilder`.

The builder collects declarations in any order and checks them when :meth:`~ModelBuilder.build`
is called; the result is the same :class:`kinabs.Model` that :func:`kinabs.load_sbml`
returns, with SBML's meaning (see ``kinabs._model``).

Conventions:

* **Strings are math.** Wherever math is expected (rates, rules, rate-law arguments) a
  string is parsed as a formula whose names are model ids (``"vmax*glc/(km + glc)"``);
  numbers are literals; sympy expressions are used as they are. In a formula, ``time``
  means simulation time (:data:`kinabs.TIME`) unless the model declares an id ``time``.
* **Rate units.** ``reaction(..., rate_units="concentration")`` (the default) takes a rate
  in concentration per time, as every law in :mod:`kinabs.ratelaws` gives, and multiplies it
  by the size of the reaction's compartment to get SBML's substance per time. The
  compartment is the one all reactants and products live in; a reaction across
  compartments must name it (``compartment=``) or give ``rate_units="substance"``.
* **Unknown ids are errors.** Every id in a rate must be a species, compartment, reaction,
  global parameter, or a *local* parameter given as ``reaction(..., parameters={"km": 0.1})``
  (stored as ``"<reaction>.km"``; it shadows a global ``km``). Anything else raises
  :class:`kinabs.ModelError` listing the unknown ids.
* A species with ``expression=`` gets an assignment rule (e.g. a time-dependent boundary
  species); parameters and compartments that a rule targets are non-constant.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import sympy

from kinabs._errors import ModelError
from kinabs._model import (
    TIME,
    Compartment,
    Model,
    Parameter,
    Reaction,
    Species,
    SpeciesReference,
    sym,
)
from kinabs.ratelaws import Term, as_expr

__all__ = ["ModelBuilder", "parse_equation"]

_SID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NUMBER = r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_TERM = re.compile(rf"\s*(?:({_NUMBER})\s*\*?\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*\Z")
_ARROWS = (("<->", True), ("<=>", True), ("->", False), ("=>", False))
_DEFAULT_COMPARTMENT = "default_compartment"


def _check_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not _SID.match(value):
        raise ModelError(f"{what} must be an SBML id: a letter or '_' then letters, digits or "
                         f"'_' (e.g. 'glc_ext'); got {value!r}.")
    return value


def _check_number(value: object, what: str, *, positive: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if not ok or not math.isfinite(value) or (positive and value <= 0):
        need = "a finite positive number" if positive else "a finite number"
        raise ModelError(f"{what} must be {need}; got {value!r}.")
    return float(value)


def parse_equation(text: str) -> tuple[dict[str, float], dict[str, float], bool]:
    """Parse ``"2 A + B -> C"`` into ``(reactants, products, reversible)``.

    Arrows: ``->`` or ``=>`` (irreversible), ``<->`` or ``<=>`` (reversible). Either side may
    be empty (``"-> A"``, ``"A ->"``); a coefficient is a number before the id, optionally
    with ``*``; repeated species add up.

    >>> parse_equation("2 A + B <-> C")
    ({'A': 2.0, 'B': 1.0}, {'C': 1.0}, True)
    """
    if not isinstance(text, str):
        raise ModelError(f"a reaction equation must be a string like '2 A + B -> C'; got "
                         f"{type(text).__name__}.")
    for arrow, two_way in _ARROWS:
        if arrow in text:
            left, _, right = text.partition(arrow)
            reversible = two_way
            break
    else:
        raise ModelError(f"reaction equation {text!r} has no arrow; write e.g. 'A + B -> C' "
                         "(irreversible) or 'A <-> B' (reversible).")
    if any(a in side for side in (left, right) for a in ("->", "=>", "<")):
        raise ModelError(f"reaction equation {text!r} must have exactly one arrow.")
    return _side(left, text), _side(right, text), reversible


def _side(side: str, text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    if not side.strip():
        return out
    for term in side.split("+"):
        m = _TERM.match(term)
        if not m:
            raise ModelError(f"cannot read {term.strip()!r} in reaction equation {text!r}; "
                             "each term is a species id with an optional coefficient, "
                             "e.g. '2 A' or '0.5*B'.")
        coeff = float(m.group(1)) if m.group(1) else 1.0
        out[m.group(2)] = out.get(m.group(2), 0.0) + coeff
    return out


@dataclass
class _Species:
    id: str
    compartment: str | None
    initial_amount: float | None
    initial_concentration: float | None
    has_only_substance_units: bool
    boundary: bool
    constant: bool
    name: str


@dataclass
class _Reaction:
    id: str
    rate: sympy.Expr
    reactants: dict[str, float]
    products: dict[str, float]
    modifiers: tuple[str, ...]
    reversible: bool
    local: dict[str, float]
    rate_units: str
    compartment: str | None
    name: str


@dataclass
class _Declared:
    compartments: dict[str, Compartment] = field(default_factory=dict)
    species: dict[str, _Species] = field(default_factory=dict)
    parameters: dict[str, Parameter] = field(default_factory=dict)
    constant: dict[str, bool | None] = field(default_factory=dict)
    reactions: dict[str, _Reaction] = field(default_factory=dict)


class ModelBuilder:
    """Declare compartments, species, parameters, reactions and rules; then :meth:`build`.

    Every declaration returns the sympy symbol of its id, for use in later math.

    Example:
        >>> import kinabs
        >>> from kinabs import ratelaws as rl
        >>> b = kinabs.ModelBuilder("toy")
        >>> b.compartment("cell", size=2.0)
        cell
        >>> b.species("S", initial_concentration=1.0)
        S
        >>> b.species("P", initial_concentration=0.0)
        P
        >>> b.parameter("vmax", 1.0)
        vmax
        >>> b.reaction("v1", "S -> P", rate=rl.michaelis_menten("S", vmax="vmax", km="km"),
        ...            parameters={"km": 0.5})
        v1
        >>> model = b.build()
        >>> model.reactions["v1"].rate
        S*cell*vmax/(S + v1.km)
        >>> model.parameters["v1.km"].reaction
        'v1'
    """

    def __init__(self, model_id: str = "model", *, name: str = "") -> None:
        self._id = _check_id(model_id, "the model id")
        self._name = name
        self._d = _Declared()
        self._kinds: dict[str, str] = {}
        self._assignment_rules: dict[str, sympy.Expr] = {}
        self._rate_rules: dict[str, sympy.Expr] = {}
        self._initial_assignments: dict[str, sympy.Expr] = {}

    # -- declarations ------------------------------------------------------------------
    def _new_id(self, element_id: object, kind: str) -> str:
        _check_id(element_id, f"the {kind} id")
        if element_id in self._kinds:
            raise ModelError(f"id '{element_id}' is already used by a "
                             f"{self._kinds[element_id]}; every compartment, species, "
                             "parameter and reaction needs its own id. Rename one of them.")
        self._kinds[element_id] = kind
        return element_id

    def compartment(self, id: str, size: float = 1.0, *, constant: bool | None = None,
                    spatial_dimensions: float = 3.0, name: str = "") -> sympy.Symbol:
        """Declare a compartment of ``size`` (volume; finite and positive)."""
        size = _check_number(size, f"the size of compartment '{id}'", positive=True)
        self._new_id(id, "compartment")
        self._d.compartments[id] = Compartment(id, size, True, float(spatial_dimensions), name)
        self._d.constant[id] = constant
        return sym(id)

    def species(self, id: str, *, compartment: str | None = None,
                initial_concentration: float | None = None,
                initial_amount: float | None = None, boundary: bool = False,
                constant: bool = False, has_only_substance_units: bool = False,
                expression: Term | None = None, name: str = "") -> sympy.Symbol:
        """Declare a species.

        Args:
            compartment: its compartment (default: the only one declared so far; with none,
                the only one at ``build()``, which adds ``default_compartment`` of size 1
                when the model declares no compartment).
            initial_concentration, initial_amount: its initial value (give one, unless an
                ``expression``, assignment rule or initial assignment sets it).
            boundary: SBML boundaryCondition: reactions do not change it.
            constant: it never changes (a constant species in a reaction must be boundary).
            has_only_substance_units: its symbol in math means amount, not concentration.
            expression: its value at all times (an assignment rule), e.g.
                ``2 + sympy.sin(kinabs.TIME)`` for a time-dependent boundary species.
        """
        if initial_concentration is not None and initial_amount is not None:
            raise ModelError(f"species '{id}': give initial_concentration or initial_amount, "
                             "not both.")
        given = {"initial_concentration": initial_concentration,
                 "initial_amount": initial_amount}
        for key, value in given.items():
            if value is not None:
                _check_number(value, f"{key} of species '{id}'")
        if expression is not None and (constant or any(v is not None for v in given.values())):
            raise ModelError(f"species '{id}': expression= sets its value at all times, so it "
                             "takes no initial value and cannot be constant; drop those.")
        if compartment is not None:
            _check_id(compartment, f"the compartment of species '{id}'")
        elif len(self._d.compartments) > 1:
            raise ModelError(f"species '{id}' needs compartment=, one of "
                             f"{list(self._d.compartments)}.")
        elif self._d.compartments:
            compartment = next(iter(self._d.compartments))
        self._new_id(id, "species")
        self._d.species[id] = _Species(
            id, compartment,
            None if initial_amount is None else float(initial_amount),
            None if initial_concentration is None else float(initial_concentration),
            bool(has_only_substance_units), bool(boundary), bool(constant), name)
        if expression is not None:
            self.assignment_rule(id, expression)
        return sym(id)

    def parameter(self, id: str, value: float | None = None, *, constant: bool | None = None,
                  name: str = "") -> sympy.Symbol:
        """Declare a global parameter. ``value=None`` needs a rule or initial assignment;
        ``constant`` defaults to true unless a rule targets the parameter."""
        if value is not None:
            value = _check_number(value, f"the value of parameter '{id}'")
        self._new_id(id, "parameter")
        self._d.parameters[id] = Parameter(id, value, True, None, name)
        self._d.constant[id] = constant
        return sym(id)

    def reaction(self, id: str, equation: str | None = None, *, rate: Term,
                 reactants: Mapping[str, float] | None = None,
                 products: Mapping[str, float] | None = None,
                 modifiers: Iterable[str] = (), reversible: bool | None = None,
                 parameters: Mapping[str, float] | None = None,
                 rate_units: str = "concentration", compartment: str | None = None,
                 name: str = "") -> sympy.Symbol:
        """Declare a reaction by an ``equation`` string or ``reactants``/``products`` maps.

        Args:
            equation: e.g. ``"2 A + B -> C"``, ``"A <-> B"``, ``"-> A"`` (see
                :func:`parse_equation`).
            rate: the rate law (math); in concentration per time by default.
            reactants, products: ``{species id: stoichiometry}`` instead of ``equation``.
            modifiers: species that affect the rate without being consumed (species used in
                the rate are added automatically).
            reversible: SBML's flag (default: from the arrow; false for maps).
            parameters: local parameters ``{name: value}``, stored as ``"<id>.<name>"``.
            rate_units: ``"concentration"`` (rate times compartment size) or
                ``"substance"`` (the rate is already substance per time).
            compartment: the compartment whose size converts a concentration rate (default:
                that of the reaction's species).
        """
        if rate_units not in ("concentration", "substance"):
            raise ModelError(f"reaction '{id}': rate_units must be 'concentration' or "
                             f"'substance'; got {rate_units!r}.")
        if equation is not None:
            if reactants is not None or products is not None:
                raise ModelError(f"reaction '{id}': give an equation string or "
                                 "reactants=/products= maps, not both.")
            left, right, arrow_reversible = parse_equation(equation)
            if reversible is not None and reversible != arrow_reversible:
                raise ModelError(f"reaction '{id}': reversible={reversible} contradicts the "
                                 f"arrow in {equation!r}; use '<->' or '->' instead.")
            reversible = arrow_reversible
        elif reactants is None and products is None:
            raise ModelError(f"reaction '{id}' needs an equation such as 'A -> B', or "
                             "reactants=/products= maps like {'A': 1}.")
        else:
            left, right = dict(reactants or {}), dict(products or {})
        for side in (left, right):
            for sid, n in side.items():
                _check_id(sid, f"a species of reaction '{id}'")
                side[sid] = _check_number(n, f"the stoichiometry of '{sid}' in reaction "
                                             f"'{id}'", positive=True)
        if not left and not right:
            raise ModelError(f"reaction '{id}' has no reactants and no products.")
        local = {}
        for key, value in (parameters or {}).items():
            _check_id(key, f"a local parameter name of reaction '{id}'")
            local[key] = _check_number(value, f"local parameter '{key}' of reaction '{id}'")
        mods = tuple(_check_id(m, f"a modifier of reaction '{id}'") for m in modifiers)
        if compartment is not None:
            _check_id(compartment, f"the compartment of reaction '{id}'")
        expr = as_expr(rate, what=f"the rate of reaction '{id}'")
        self._new_id(id, "reaction")
        self._d.reactions[id] = _Reaction(id, expr, left, right, mods, bool(reversible),
                                          local, rate_units, compartment, name)
        return sym(id)

    def _rule(self, table: dict, kind: str, variable: str, expr: Term,
              conflicts: tuple[tuple[dict, str], ...]) -> sympy.Symbol:
        _check_id(variable, f"the variable of the {kind}")
        for other, other_kind in conflicts:
            if variable in other:
                raise ModelError(f"'{variable}' already has {other_kind}; a variable takes "
                                 f"at most one of them, so it cannot also get {kind}.")
        table[variable] = as_expr(expr, what=f"the {kind} for '{variable}'")
        return sym(variable)

    def assignment_rule(self, variable: str, expr: Term) -> sympy.Symbol:
        """``variable = expr`` at all times (an SBML assignment rule)."""
        return self._rule(self._assignment_rules, "an assignment rule", variable, expr,
                          ((self._assignment_rules, "an assignment rule"),
                           (self._rate_rules, "a rate rule"),
                           (self._initial_assignments, "an initial assignment")))

    def rate_rule(self, variable: str, expr: Term) -> sympy.Symbol:
        """``d(variable)/dt = expr`` (an SBML rate rule; a species' value in its own units)."""
        return self._rule(self._rate_rules, "a rate rule", variable, expr,
                          ((self._assignment_rules, "an assignment rule"),
                           (self._rate_rules, "a rate rule")))

    def initial_assignment(self, variable: str, expr: Term) -> sympy.Symbol:
        """``variable = expr`` at the start time (an SBML initial assignment)."""
        return self._rule(self._initial_assignments, "an initial assignment", variable, expr,
                          ((self._assignment_rules, "an assignment rule"),
                           (self._initial_assignments, "an initial assignment")))

    # -- build -------------------------------------------------------------------------
    def build(self) -> Model:
        """Check every declaration and return the :class:`kinabs.Model`."""
        d = self._d
        compartments = dict(d.compartments)
        if not compartments and d.species:
            if _DEFAULT_COMPARTMENT in self._kinds:
                raise ModelError(f"declare a compartment: the default id "
                                 f"'{_DEFAULT_COMPARTMENT}' is taken by a "
                                 f"{self._kinds[_DEFAULT_COMPARTMENT]}.")
            compartments[_DEFAULT_COMPARTMENT] = Compartment(_DEFAULT_COMPARTMENT, 1.0)
        ruled = set(self._assignment_rules) | set(self._rate_rules)
        for cid, c in d.compartments.items():
            compartments[cid] = Compartment(cid, c.size, self._constant(cid, ruled),
                                            c.spatial_dimensions, c.name)
        species = {sid: self._species(s, compartments) for sid, s in d.species.items()}
        parameters = {pid: Parameter(pid, p.value, self._constant(pid, ruled), None, p.name)
                      for pid, p in d.parameters.items()}
        ids = set(compartments) | set(species) | set(parameters) | set(d.reactions)
        reactions = {}
        for r in d.reactions.values():
            reactions[r.id], local = self._reaction(r, ids, species, compartments)
            parameters.update(local)
        rules = []
        for kind, table in (("assignment rule", self._assignment_rules),
                            ("rate rule", self._rate_rules),
                            ("initial assignment", self._initial_assignments)):
            out = {}
            for x, e in table.items():
                if x not in ids or x in d.reactions:
                    raise ModelError(f"the {kind} for '{x}' targets no species, parameter or "
                                     "compartment; declare it first (e.g. "
                                     f"builder.parameter('{x}', value)).")
                out[x] = _resolve_ids(e, ids, f"the {kind} for '{x}'", "")
            rules.append(out)
        self._check_values(species, parameters, reactions, rules)
        return Model(id=self._id, name=self._name, compartments=compartments,
                     species=species, parameters=parameters, reactions=reactions,
                     assignment_rules=rules[0], rate_rules=rules[1],
                     initial_assignments=rules[2])

    def _constant(self, x: str, ruled: set[str]) -> bool:
        constant = self._d.constant[x]
        if constant and x in ruled:
            raise ModelError(f"'{x}' is declared constant=True but a rule changes it; "
                             "drop constant=True (it then defaults to non-constant).")
        return x not in ruled if constant is None else constant

    def _species(self, s: _Species, compartments: dict[str, Compartment]) -> Species:
        comp = s.compartment
        if comp is None:
            if len(compartments) != 1:
                raise ModelError(f"species '{s.id}' needs compartment=: the model has "
                                 f"{len(compartments)} compartments {list(compartments)}.")
            comp = next(iter(compartments))
        elif comp not in compartments:
            raise ModelError(f"species '{s.id}' is in compartment '{comp}', which is not "
                             f"declared; declare it with builder.compartment('{comp}', "
                             "size=...) or use one of " f"{list(compartments)}.")
        return Species(s.id, comp, s.initial_amount, s.initial_concentration,
                       s.has_only_substance_units, s.boundary, s.constant, name=s.name)

    def _reaction(self, r: _Reaction, ids: set[str], species: dict[str, Species],
                  compartments: dict[str, Compartment]
                  ) -> tuple[Reaction, dict[str, Parameter]]:
        where = f"reaction '{r.id}'"
        for sid in (*r.reactants, *r.products, *r.modifiers):
            if sid not in species:
                raise ModelError(f"{where} uses species '{sid}', which is not declared; "
                                 f"declare it with builder.species('{sid}', ...).")
        clash = [k for k in r.local if k in ids and k not in self._d.parameters]
        if clash:
            raise ModelError(f"{where}: local parameter name(s) {clash} are ids of other "
                             "elements (only global parameters may be shadowed); rename them.")
        rate = _resolve_ids(r.rate, ids | set(r.local), where, r.id)
        rate = rate.xreplace({sym(k): sym(f"{r.id}.{k}") for k in r.local})
        if r.rate_units == "concentration":
            rate = sym(self._reaction_compartment(r, species, compartments)) * rate
        for sid in (*r.reactants, *r.products):
            sp = species[sid]
            if not sp.boundary_condition and (sp.constant or sid in self._assignment_rules
                                              or sid in self._rate_rules):
                raise ModelError(f"{where} changes species '{sid}', which is constant or set "
                                 "by a rule; declare it with boundary=True so reactions "
                                 "leave it alone.")
        mods = list(r.modifiers)
        for s in sorted(rate.free_symbols, key=lambda s: s.name):
            if s.name in species and s.name not in (*r.reactants, *r.products, *mods):
                mods.append(s.name)
        local = {f"{r.id}.{k}": Parameter(f"{r.id}.{k}", v, True, r.id)
                 for k, v in r.local.items()}
        return Reaction(r.id, rate,
                        tuple(SpeciesReference(s, n) for s, n in r.reactants.items()),
                        tuple(SpeciesReference(s, n) for s, n in r.products.items()),
                        tuple(mods), r.reversible, r.name), local

    @staticmethod
    def _reaction_compartment(r: _Reaction, species: dict[str, Species],
                              compartments: dict[str, Compartment]) -> str:
        if r.compartment is not None:
            if r.compartment not in compartments:
                raise ModelError(f"reaction '{r.id}': compartment '{r.compartment}' is not "
                                 f"declared; use one of {list(compartments)}.")
            return r.compartment
        found = list(dict.fromkeys(species[s].compartment for s in (*r.reactants,
                                                                    *r.products)))
        if len(found) != 1:
            raise ModelError(f"reaction '{r.id}' spans compartments {found}, so a rate in "
                             "concentration per time is ambiguous; pass compartment= (whose "
                             "size converts it) or rate_units='substance'.")
        return found[0]

    def _check_values(self, species: dict[str, Species], parameters: dict[str, Parameter],
                      reactions: dict[str, Reaction], rules: list[dict]) -> None:
        set_by_math = set(rules[0]) | set(rules[2])
        for sp in species.values():
            if (sp.initial_amount is None and sp.initial_concentration is None
                    and sp.id not in set_by_math):
                raise ModelError(f"species '{sp.id}' has no initial value; pass "
                                 "initial_concentration= or initial_amount=, or give an "
                                 "expression= or initial_assignment.")
        for p in parameters.values():
            if p.value is None and p.id not in set_by_math:
                raise ModelError(f"parameter '{p.id}' has no value; pass one, or give an "
                                 "assignment rule or initial assignment.")


def _resolve_ids(expr: sympy.Expr, known: set[str], where: str, rid: str) -> sympy.Expr:
    """Map ``time`` to :data:`TIME` (unless it is an id), drop sympy assumptions from id
    symbols (the lowering matches plain ``Symbol(id)``) and reject unknown ids."""
    ids = [s for s in expr.free_symbols if not s.name.startswith("@")]
    expr = expr.xreplace({s: sym(s.name) for s in ids})
    names = {s.name for s in ids}
    if "time" in names and "time" not in known:
        expr = expr.xreplace({sympy.Symbol("time"): TIME})
        names.discard("time")
    unknown = sorted(names - known)
    if unknown:
        fix = ("declare them with builder.parameter(id, value)"
               + (f", or make them local with reaction('{rid}', ..., parameters="
                  f"{{{unknown[0]!r}: value}})" if rid else ""))
        raise ModelError(f"{where} refers to unknown id(s) {unknown}; {fix}. (Species, "
                         "compartments, parameters and reactions are known ids.)")
    return expr
