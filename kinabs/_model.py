"""The backend-neutral symbolic model.

A :class:`Model` is what the SBML reader and the Python builder both produce. It keeps
SBML's meaning (compartments, species in amounts or concentrations, parameters, reactions,
rules) with every piece of math as a sympy expression whose free symbols are model ids,
:data:`TIME`, or local parameter ids of the form ``"<reaction id>.<local id>"``.

Conventions (the lowering in ``kinabs._lowering.system`` relies on them):

* A species symbol stands for its *concentration* unless ``has_only_substance_units`` is
  true, in which case it stands for its *amount* (SBML semantics).
* A reaction's ``rate`` is in substance per time (SBML's kinetic law), and a reaction id
  used as a symbol in math stands for that rate.
* A local parameter is stored in ``Model.parameters`` under ``"<reaction>.<local>"`` with
  ``reaction`` set; the reaction's rate refers to it by that qualified symbol, so it shadows
  any global of the same local id.
* Function definitions are already inlined; nothing refers to them.

Example:
    >>> import kinabs
    >>> m = kinabs.load_sbml(kinabs.example_model_path())
    >>> sorted(m.species)[:3]
    ['p3g', 'php', 'pser']
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import sympy

from kinabs._errors import ModelError

__all__ = [
    "TIME",
    "AVOGADRO",
    "Compartment",
    "Species",
    "Parameter",
    "SpeciesReference",
    "Reaction",
    "Model",
    "sym",
    "RateOf",
    "Rem",
    "Quotient",
    "Event",
]

#: The symbol for simulation time (SBML csymbol ``time``). Its name is not a valid SBML id,
#: so it can never clash with a model element called ``time``.
TIME = sympy.Symbol("@time", real=True)

#: Avogadro's number as SBML Level 3 defines it (csymbol ``avogadro``).
AVOGADRO = 6.02214179e23


class RateOf(sympy.Function):
    """SBML L3V2 csymbol ``rateOf``: the rate of change of its argument (a symbol)."""

    nargs = 1


class Rem(sympy.Function):
    """SBML/MathML ``rem``: truncated remainder, ``x - y*trunc(x/y)``."""

    nargs = 2


class Quotient(sympy.Function):
    """SBML/MathML ``quotient``: ``trunc(x/y)``."""

    nargs = 2


def sym(element_id: str) -> sympy.Symbol:
    """The sympy symbol that stands for model element ``element_id`` in math."""
    return sympy.Symbol(element_id)


@dataclass(frozen=True)
class Compartment:
    """A compartment. ``size`` is its initial size (``None`` when only a rule gives it).

    Example:
        >>> import kinabs
        >>> kinabs.load_sbml(kinabs.example_model_path()).compartments["cell"]
        Compartment(id='cell', size=1.0, constant=True, spatial_dimensions=3.0, name='cell')
        >>> b = kinabs.ModelBuilder("growing")
        >>> b.compartment("V", size=1.0)
        V
        >>> b.rate_rule("V", "0.1*V")  # a rule makes the size non-constant
        V
        >>> b.build().compartments["V"].constant
        False
    """

    id: str
    size: float | None = 1.0
    constant: bool = True
    spatial_dimensions: float = 3.0
    name: str = ""


@dataclass(frozen=True)
class Species:
    """A species. Exactly one of ``initial_amount``/``initial_concentration`` is normally set
    (both ``None`` when an initial assignment or an assignment rule gives the value).

    Example:
        >>> import kinabs
        >>> model = kinabs.load_sbml(kinabs.example_model_path())
        >>> php = model.species["php"]
        >>> php.name, php.compartment, php.initial_concentration
        ('phosphohydroxypyruvate', 'cell', 0.6)
        >>> model.species["p3g"].boundary_condition  # no reaction changes it
        True
    """

    id: str
    compartment: str
    initial_amount: float | None = None
    initial_concentration: float | None = None
    has_only_substance_units: bool = False
    boundary_condition: bool = False
    constant: bool = False
    conversion_factor: str | None = None
    name: str = ""


@dataclass(frozen=True)
class Parameter:
    """A global parameter, or a local one (then ``reaction`` is the owning reaction's id
    and ``id`` is ``"<reaction>.<local id>"``).

    Example:
        >>> import kinabs
        >>> model = kinabs.load_sbml(kinabs.example_model_path())
        >>> kcat = model.parameters["PDH.kcatA"]  # local to reaction PDH
        >>> kcat.value, kcat.reaction, kcat.local_id
        (0.55, 'PDH', 'kcatA')
        >>> kinabs.Parameter("k", 0.5).local_id  # a global one
        'k'
    """

    id: str
    value: float | None
    constant: bool = True
    reaction: str | None = None
    name: str = ""

    @property
    def local_id(self) -> str:
        """The id as written inside its kinetic law (the id itself for a global)."""
        return self.id.split(".", 1)[1] if self.reaction else self.id


@dataclass(frozen=True)
class SpeciesReference:
    """A reactant or product of a reaction. ``id`` is the L3 species-reference id, if any;
    when a rule or initial assignment targets that id, it overrides ``stoichiometry``.

    Example:
        >>> import kinabs
        >>> b = kinabs.ModelBuilder("dimer")
        >>> b.species("A", initial_concentration=1.0)
        A
        >>> b.species("A2", initial_concentration=0.0)
        A2
        >>> b.parameter("k", 1.0)
        k
        >>> b.reaction("dimerise", "2 A -> A2", rate="k*A^2")
        dimerise
        >>> b.build().reactions["dimerise"].reactants
        (SpeciesReference(species='A', stoichiometry=2.0, id=None),)
    """

    species: str
    stoichiometry: float = 1.0
    id: str | None = None


@dataclass(frozen=True)
class Reaction:
    """A reaction with its rate law in substance per time.

    Example:
        >>> import kinabs
        >>> pdh = kinabs.load_sbml(kinabs.example_model_path()).reactions["PDH"]
        >>> pdh.name, pdh.reversible
        ('phosphoglycerate dehydrogenase', True)
        >>> [r.species for r in pdh.reactants], [r.species for r in pdh.products]
        (['p3g'], ['php'])
        >>> sorted(str(s) for s in pdh.rate.free_symbols)
        ['PDH.KAp3g', 'PDH.KAphp', 'PDH.KiAser', 'PDH.kcatA', 'cell', 'p3g', 'php', 'ser', 'serA']
    """

    id: str
    rate: sympy.Expr
    reactants: tuple[SpeciesReference, ...] = ()
    products: tuple[SpeciesReference, ...] = ()
    modifiers: tuple[str, ...] = ()
    reversible: bool = False
    name: str = ""


@dataclass(frozen=True)
class Event:
    """An SBML event: when ``trigger`` turns true, after ``delay``, set each variable of
    ``assignments`` to its value (in the variable's own units: a species' concentration
    unless it has only substance units).

    ``initial_value`` is the trigger's value just before the start (False: a trigger true
    at the start fires there); a non-``persistent`` event whose trigger turns false before
    its delay has passed is cancelled; ``use_values_from_trigger_time`` computes the
    assigned values when the trigger fires rather than when the event executes; events
    due at the same time execute by decreasing ``priority``.

    Example:
        >>> import kinabs, sympy
        >>> from kinabs._model import TIME
        >>> e = kinabs.Event("dose", trigger=TIME >= 5, assignments=(("A", sympy.Integer(1)),))
        >>> e.persistent, e.delay is None
        (True, True)
    """

    id: str
    trigger: sympy.Basic
    assignments: tuple[tuple[str, sympy.Expr], ...] = ()
    delay: sympy.Expr | None = None
    priority: sympy.Expr | None = None
    initial_value: bool = True
    persistent: bool = True
    use_values_from_trigger_time: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        # numbers may be given as Python numbers; text is never parsed here
        def expr(value, what):
            if isinstance(value, bool) or not isinstance(value, (int, float, sympy.Basic)):
                raise ModelError(f"event '{self.id}': {what} must be a number or a sympy "
                                 f"expression; got {type(value).__name__}.")
            return sympy.sympify(value) if not isinstance(value, sympy.Basic) else value

        object.__setattr__(self, "assignments", tuple(
            (str(var), expr(value, f"the value assigned to '{var}'"))
            for var, value in self.assignments))
        for name in ("delay", "priority"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, expr(getattr(self, name), f"the {name}"))
        if isinstance(self.trigger, bool):
            object.__setattr__(self, "trigger", sympy.true if self.trigger else sympy.false)
        elif not isinstance(self.trigger, sympy.Basic):
            raise ModelError(f"event '{self.id}': the trigger must be a sympy condition (e.g. "
                             f"kinabs.TIME >= 2); got {type(self.trigger).__name__}.")


@dataclass
class Model:
    """A kinetic model: the one type that the SBML reader and the builder produce.

    All mappings keep the order of the source (SBML document order or build order).

    Example:
        >>> import kinabs
        >>> model = kinabs.load_sbml(kinabs.example_model_path())
        >>> model
        Model(id='BIOMD0000000458', compartments=1, species=7, parameters=10, reactions=3, rules=0+0, initial_assignments=0)
        >>> list(model.reactions), model.kinetic_parameters[:2]
        (['PDH', 'PSA', 'PSP'], ('PDH.kcatA', 'PDH.KAp3g'))
        >>> faster = model.with_parameters({"PDH.kcatA": 1.1})  # a copy
        >>> faster.parameter_values()["PDH.kcatA"], model.parameter_values()["PDH.kcatA"]
        (1.1, 0.55)
        >>> faster.fingerprint() == model.fingerprint()
        False
    """

    id: str = "model"
    name: str = ""
    compartments: dict[str, Compartment] = field(default_factory=dict)
    species: dict[str, Species] = field(default_factory=dict)
    parameters: dict[str, Parameter] = field(default_factory=dict)
    reactions: dict[str, Reaction] = field(default_factory=dict)
    #: variable id -> expression, valid at all times (SBML assignment rules).
    assignment_rules: dict[str, sympy.Expr] = field(default_factory=dict)
    #: variable id -> d(variable)/dt (SBML rate rules).
    rate_rules: dict[str, sympy.Expr] = field(default_factory=dict)
    #: variable id -> value at the start time (SBML initial assignments).
    initial_assignments: dict[str, sympy.Expr] = field(default_factory=dict)
    #: model-level conversion factor (a parameter id), SBML L3.
    conversion_factor: str | None = None
    #: event id (or ``"event #n"`` for one without an id) -> :class:`Event`.
    events: dict[str, Event] = field(default_factory=dict)
    #: where the model came from (a file path), for messages.
    source: str | None = None

    # -- queries ---------------------------------------------------------------
    def ids(self) -> set[str]:
        """Every id a math expression may refer to."""
        out = set(self.compartments) | set(self.species) | set(self.parameters)
        out |= set(self.reactions)
        for r in self.reactions.values():
            out |= {ref.id for ref in (*r.reactants, *r.products) if ref.id}
        return out

    def species_references(self) -> dict[str, tuple[str, SpeciesReference]]:
        """Species-reference id -> (reaction id, reference), for references that have an id."""
        out: dict[str, tuple[str, SpeciesReference]] = {}
        for r in self.reactions.values():
            for ref in (*r.reactants, *r.products):
                if ref.id:
                    out[ref.id] = (r.id, ref)
        return out

    @property
    def kinetic_parameters(self) -> tuple[str, ...]:
        """Ids of the constant parameters (global and local) that no rule or initial
        assignment determines: the quantities a fit estimates by default."""
        ruled = set(self.assignment_rules) | set(self.rate_rules) | set(self.initial_assignments)
        return tuple(
            p.id for p in self.parameters.values() if p.constant and p.id not in ruled
        )

    def parameter_values(self) -> dict[str, float]:
        """Default values of :attr:`kinetic_parameters`."""
        return {k: float(self.parameters[k].value) for k in self.kinetic_parameters
                if self.parameters[k].value is not None}

    def with_parameters(self, values: Mapping[str, float]) -> Model:
        """A copy with new values for some parameters (unknown ids raise ``ModelError``)."""
        unknown = [k for k in values if k not in self.parameters]
        if unknown:
            raise ModelError(
                f"unknown parameter id(s) {unknown}; the model's parameters are "
                f"{list(self.parameters)[:20]}"
            )
        params = dict(self.parameters)
        for k, v in values.items():
            params[k] = dataclasses.replace(params[k], value=float(v))
        return dataclasses.replace(self, parameters=params)

    def fingerprint(self) -> str:
        """A stable hash of the model's content (for caches and run folders)."""
        h = hashlib.sha256()
        for part in (self.compartments, self.species, self.parameters):
            for k, v in part.items():
                h.update(f"{k}={v!r};".encode())
        for r in self.reactions.values():
            h.update(f"{r.id}:{r.reactants!r}{r.products!r}:{sympy.srepr(r.rate)};".encode())
        for name, rules in (("a", self.assignment_rules), ("r", self.rate_rules),
                            ("i", self.initial_assignments)):
            for k, v in rules.items():
                h.update(f"{name}{k}={sympy.srepr(v)};".encode())
        h.update(f"cf={self.conversion_factor}".encode())
        for e in self.events.values():
            h.update(f"e{e.id}:{sympy.srepr(e.trigger)}:{e.assignments!r}:{e.delay!r}:"
                     f"{e.priority!r}:{e.initial_value}{e.persistent}"
                     f"{e.use_values_from_trigger_time};".encode())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return (
            f"Model(id={self.id!r}, compartments={len(self.compartments)}, "
            f"species={len(self.species)}, parameters={len(self.parameters)}, "
            f"reactions={len(self.reactions)}, rules={len(self.assignment_rules)}+"
            f"{len(self.rate_rules)}, initial_assignments={len(self.initial_assignments)}"
            + (f", events={len(self.events)})" if self.events else ")")
        )
