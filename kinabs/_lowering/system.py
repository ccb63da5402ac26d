"""Lowering: a symbolic :class:`~kinabs._model.Model` becomes an :class:`OdeSystem`.

The ODE system has a state vector ``y``, a vector of free parameters ``p`` (every constant
the model gives a number for), and a vector of constants ``k = [p, derived]`` where
``derived`` are constants fixed by initial assignments. Three pieces of math, all written
over the primitive symbols ``t``, ``y[i]``, ``k[j]`` (or ``t``, ``p[j]`` for ``init``):

* ``init(t0, p) -> (y0, derived)``: SBML initial values, initial assignments and assignment
  rules at ``t0``, in dependency order;
* ``rhs(t, y, k) = (v @ N) * scale + extra``: reaction rates ``v``, a numeric stoichiometry
  matrix ``N`` (reactions x states), a per-state ``scale`` (conversion factor over
  compartment size for concentration states) and ``extra`` (rate rules and symbolic
  stoichiometry terms);
* ``outputs(t, y, k)``: every quantity a user may ask for over time.

Why states are what they are: a species driven by reactions is integrated as a
concentration when its compartment is constant (so tolerances act on the numbers users
see) and as an amount when the compartment size changes (so that dilution is right: the
concentration then follows as amount over current size). A rate rule's target is
integrated in its own units, as SBML defines.

Example:
    >>> import kinabs
    >>> system = kinabs.lower(kinabs.load_sbml(kinabs.example_model_path()))
    >>> system.states
    ('php', 'pser')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import sympy

from kinabs._errors import DataError, ModelError
from kinabs._lowering import rate_of as _rate_of
from kinabs._lowering.codegen import generate
from kinabs._lowering.events import EventSystem, event_targets, lower_events
from kinabs._model import TIME, Model, sym

__all__ = ["OdeSystem", "OutputKey", "as_system", "lower", "y_symbol", "k_symbol",
           "p_symbol"]

#: An output: (kind, id) with kind one of "concentration", "amount", "value", "rate".
OutputKey = tuple[str, str]


def y_symbol(i: int) -> sympy.Symbol:
    return sympy.Symbol(f"@y{i}", real=True)


def k_symbol(j: int) -> sympy.Symbol:
    return sympy.Symbol(f"@k{j}", real=True)


def p_symbol(j: int) -> sympy.Symbol:
    return sympy.Symbol(f"@p{j}", real=True)


@dataclass(frozen=True, eq=False)
class OdeSystem:
    """An ODE system lowered from a model; see the module docstring for its meaning.

    Example:
        ``A <-> B`` in a compartment of size 2: two states, and the compartment size is a
        free parameter next to the rate constants.

        >>> import kinabs
        >>> from kinabs import ratelaws as rl
        >>> b = kinabs.ModelBuilder("isomerase")
        >>> b.compartment("cell", size=2.0)
        cell
        >>> b.species("A", initial_concentration=1.0)
        A
        >>> b.species("B", initial_concentration=0.0)
        B
        >>> b.parameter("kf", 2.0)
        kf
        >>> b.parameter("kr", 1.0)
        kr
        >>> b.reaction("r", "A <-> B", rate=rl.reversible_mass_action("kf", "kr", ["A"], ["B"]))
        r
        >>> system = kinabs.lower(b.build())
        >>> system.states, system.parameters, system.kinetic_parameters
        (('A', 'B'), ('kf', 'kr', 'cell'), ('kf', 'kr'))
        >>> system.stoichiometry  # reactions x states
        array([[-1.,  1.]])
        >>> system.parameter_vector({"kf": 3.0})
        array([3., 1., 2.])
        >>> system.outputs[:2]
        (('concentration', 'A'), ('amount', 'A'))
    """

    model: Model
    states: tuple[str, ...]
    state_kinds: tuple[str, ...]
    parameters: tuple[str, ...]
    parameter_kinds: tuple[str, ...]
    parameter_defaults: np.ndarray
    derived: tuple[str, ...]
    outputs: tuple[OutputKey, ...]
    # math over primitives
    init_y0: tuple[sympy.Expr, ...]
    init_derived: tuple[sympy.Expr, ...]
    rates: tuple[sympy.Expr, ...]
    stoichiometry: np.ndarray  # (reactions, states)
    scale: tuple[sympy.Expr, ...] | None  # None means all ones
    extra: tuple[sympy.Expr, ...]
    output_exprs: tuple[sympy.Expr, ...]
    #: per state: state value / species' natural value (1, or the compartment size for
    #: an amount state of a concentration species); converts user initial values.
    natural_to_state: tuple[sympy.Expr, ...] = ()
    reaction_ids: tuple[str, ...] = ()
    #: the model's events, lowered (``kinabs._lowering.events``); None without events
    events: EventSystem | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def constants(self) -> tuple[str, ...]:
        """Ids of the entries of ``k``: the free parameters then the derived constants."""
        return self.parameters + self.derived

    @cached_property
    def parameter_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.parameters)}

    @cached_property
    def state_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.states)}

    @cached_property
    def output_index(self) -> dict[OutputKey, int]:
        return {key: i for i, key in enumerate(self.outputs)}

    @property
    def kinetic_parameters(self) -> tuple[str, ...]:
        """Free parameters that are model parameters (global or local), not compartment
        sizes or initial values: what a fit estimates by default."""
        return tuple(n for n, k in zip(self.parameters, self.parameter_kinds) if k == "parameter")

    def parameter_vector(self, values: dict[str, float] | None = None) -> np.ndarray:
        """The default free-parameter vector with some entries replaced by ``values``."""
        p = self.parameter_defaults.copy()
        for name, v in (values or {}).items():
            if name not in self.parameter_index:
                raise ModelError(
                    f"unknown parameter '{name}'. Free parameters of this model are: "
                    f"{_preview(self.parameters)}"
                )
            p[self.parameter_index[name]] = float(v)
        return p

    def output_key(self, item: str | tuple[str, str], species_units: str) -> OutputKey:
        """Resolve a user's output request (an id, or a (kind, id) pair) to an output key."""
        if isinstance(item, tuple):
            key = (str(item[0]), str(item[1]))
        elif item in self.model.species:
            key = (species_units, item)
        elif item in self.model.reactions:
            key = ("rate", item)
        else:
            key = ("value", item)
        if key not in self.output_index:
            ids = dict.fromkeys(k[1] for k in self.outputs)
            raise ModelError(
                f"unknown output {item!r}. Outputs are species, compartment, parameter and "
                f"reaction ids of the model, e.g. {_preview(ids)}"
            )
        return key

    def initial_arrays(self, initial: Mapping[str, float] | None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A user's initial values of species as arrays: ``(y0, mask, p_index, p_values)``.

        A species that is a state goes into ``y0`` (S,) at its index, in the species' own
        units (concentration unless it has only substance units), with ``mask`` (S,) set
        there; a constant species (a free parameter of the system) becomes a parameter
        override ``p_index`` (Q,) -> ``p_values`` (Q,). Anything else is a DataError.

        Example:
            >>> import kinabs
            >>> system = kinabs.lower(kinabs.load_sbml(kinabs.example_model_path()))
            >>> y0, mask, p_index, p_values = system.initial_arrays({"php": 0.5})
            >>> y0.tolist(), mask.tolist(), p_index.tolist()
            ([0.5, 0.0], [True, False], [])
        """
        y0 = np.zeros(len(self.states))
        mask = np.zeros(len(self.states), dtype=bool)
        p_index, p_values = [], []
        for sid, value in (initial or {}).items():
            if sid in self.state_index and sid in self.model.species:
                y0[self.state_index[sid]] = value
                mask[self.state_index[sid]] = True
            elif sid in self.model.species and sid in self.parameter_index:
                p_index.append(self.parameter_index[sid])
                p_values.append(value)
            else:
                raise DataError(
                    f"initial value given for '{sid}', which is not a species of the model "
                    f"with a settable initial value. Species: "
                    f"{_preview(self.model.species)}"
                )
        return (y0, mask, np.asarray(p_index, dtype=np.int64),
                np.asarray(p_values, dtype=np.float64))

    @property
    def generated(self):
        """The generated source and functions (see ``kinabs._lowering.codegen``), made once."""
        if "generated" not in self._cache:
            self._cache["generated"] = generate(self)
        return self._cache["generated"]


def _preview(names, n: int = 12) -> str:
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def _free_ids(expr: sympy.Expr) -> set[str]:
    # Names starting with "@" are primitives (time, y, k, p), never model ids.
    return {s.name for s in expr.free_symbols if not s.name.startswith("@")}


def _resolve(defs: dict[str, sympy.Expr], base: dict[str, sympy.Expr], context: str
             ) -> dict[str, sympy.Expr]:
    """Resolve ``defs`` (id -> expression over ids) into expressions over ``base``'s
    primitives, in dependency order. Cycles and unknown ids raise ``ModelError``."""
    out: dict[str, sympy.Expr] = dict(base)
    visiting: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str) -> sympy.Expr:
        if name in out:
            return out[name]
        if name not in defs:
            raise ModelError(f"{context}: the math refers to '{name}', which the model does "
                             "not define. Define it (parameter, species, compartment) or fix "
                             "the id.")
        if state.get(name) == 1:
            cycle = visiting[visiting.index(name):] + [name]
            raise ModelError(f"{context}: circular definition {' -> '.join(cycle)}; "
                             "assignment rules and initial assignments must not depend on "
                             "themselves.")
        state[name] = 1
        visiting.append(name)
        expr = defs[name]
        mapping = {sym(d): visit(d) for d in sorted(_free_ids(expr))}
        resolved = expr.xreplace(mapping) if mapping else expr
        visiting.pop()
        state[name] = 2
        out[name] = resolved
        return resolved

    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(defs) + 1000))
    try:
        for name in defs:
            visit(name)
    finally:
        sys.setrecursionlimit(limit)
    return out


class _Lowering:
    """Builds an OdeSystem; one instance per call of :func:`lower`."""

    def __init__(self, model: Model):
        self.model = model
        self.m = model = _rate_of.with_placeholders(model)
        #: what events assign: states, so that an event changes the state vector only
        self.event_targets = event_targets(model)
        self.var_compartments = {
            c.id for c in model.compartments.values()
            if c.id in model.rate_rules or c.id in model.assignment_rules
            or c.id in self.event_targets
        }
        self.refs = model.species_references()

    # -- classification --------------------------------------------------------
    def classify(self) -> None:
        m = self.m
        driven: dict[str, bool] = {}
        for r in m.reactions.values():
            for ref in (*r.reactants, *r.products):
                if ref.species not in m.species:
                    raise ModelError(f"reaction '{r.id}' refers to unknown species "
                                     f"'{ref.species}'")
                sp = m.species[ref.species]
                if not sp.boundary_condition and not sp.constant:
                    driven[sp.id] = True
        for sid in driven:
            if sid in m.rate_rules or sid in m.assignment_rules:
                raise ModelError(f"species '{sid}' is changed by reactions and also by a rule; "
                                 "SBML allows this only for boundary species. Set "
                                 "boundaryCondition=true or remove the rule.")
        states, kinds = [], []
        for sp in m.species.values():
            natural = "amount" if sp.has_only_substance_units else "concentration"
            moving = sp.compartment in self.var_compartments
            if sp.id in m.rate_rules:
                states.append(sp.id)
                kinds.append(natural)
            elif sp.id in driven:
                states.append(sp.id)
                kinds.append("amount" if moving else natural)
            elif moving and sp.id not in m.assignment_rules:
                # No reaction or rule changes it, but its compartment changes size: its
                # amount stays (also for a constant species: test suite cases 01117, 01118)
                states.append(sp.id)
                kinds.append("amount")
            elif sp.id in self.event_targets:
                states.append(sp.id)
                kinds.append(natural)
        for group in (m.compartments, m.parameters):
            for x in group:
                if x in m.rate_rules or x in self.event_targets:
                    states.append(x)
                    kinds.append("value")
        for x in m.rate_rules:
            if x not in m.compartments and x not in m.parameters and x not in m.species:
                if x not in self.refs:
                    raise ModelError(f"rate rule for unknown variable '{x}'")
                states.append(x)  # a stoichiometry that changes in time
                kinds.append("value")
        self.states, self.state_kinds = states, kinds
        self.driven = set(driven)

        # Constants: everything not a state and not assigned.
        ruled = set(m.assignment_rules) | set(m.rate_rules)
        free, free_kinds, defaults, derived = [], [], [], []
        self.fixed: dict[str, tuple[str, float | None]] = {}
        state_set = set(states)

        def add_constant(x: str, kind: str, value: float | None) -> None:
            if x in ruled or x in state_set:
                return
            if x in m.initial_assignments or value is None or not np.isfinite(value):
                # No value (NaN; an error where math uses it) or an infinite one: a fixed
                # constant, not a parameter to set or fit.
                derived.append(x)
                if x not in m.initial_assignments:
                    self.fixed[x] = (kind, value)
                return
            free.append(x)
            free_kinds.append(kind)
            defaults.append(np.nan if value is None else float(value))

        for p in m.parameters.values():
            add_constant(p.id, "parameter", p.value)
        for c in m.compartments.values():
            add_constant(c.id, "compartment", c.size)
        for sp in m.species.values():
            if sp.initial_amount is not None:
                add_constant(sp.id, "initial_amount", sp.initial_amount)
            else:
                add_constant(sp.id, "initial_concentration", sp.initial_concentration)
        # A species-reference id is a fixed number unless a rule or initial assignment
        # sets it; then the stoichiometry is symbolic (see build()).
        self.ref_numbers = {
            rid: sympy.Float(ref.stoichiometry) for rid, (_, ref) in self.refs.items()
            if rid not in ruled and rid not in m.initial_assignments
        }
        for rid in self.refs:
            if rid in m.initial_assignments and rid not in ruled:
                derived.append(rid)
        self.free, self.free_kinds = free, free_kinds
        self.defaults = np.asarray(defaults, dtype=np.float64)
        self.derived = derived
        # Initial values of states come from the same attributes; a state species with an
        # initial assignment gets it from there instead.
        self.state_attr: dict[str, tuple[str, float | None]] = {}
        for x in states:
            if x in m.species:
                sp = m.species[x]
                if sp.initial_amount is not None:
                    self.state_attr[x] = ("initial_amount", sp.initial_amount)
                else:
                    self.state_attr[x] = ("initial_concentration", sp.initial_concentration)
            elif x in m.compartments:
                self.state_attr[x] = ("compartment", m.compartments[x].size)
            elif x in self.refs:
                self.state_attr[x] = ("stoichiometry", self.refs[x][1].stoichiometry)
            else:
                self.state_attr[x] = ("parameter", m.parameters[x].value)
        self._check_values()

    def _check_values(self) -> None:
        m = self.m
        used: set[str] = set()
        for e in (*[r.rate for r in m.reactions.values()], *m.assignment_rules.values(),
                  *m.rate_rules.values(), *m.initial_assignments.values()):
            used |= _free_ids(e)
        for sp in m.species.values():
            if not sp.has_only_substance_units or sp.compartment in self.var_compartments:
                used.add(sp.compartment)
        for x, (_, value) in self.state_attr.items():
            if value is None and x not in m.initial_assignments:
                raise ModelError(f"'{x}' changes over time but has no initial value; give it "
                                 "a value or an initial assignment.")
        for x, (_, value) in self.fixed.items():
            if value is None and x in used:
                raise ModelError(f"'{x}' is used in the model's math but has no value; give "
                                 "it a value or an initial assignment.")

    # -- species value / amount helpers ---------------------------------------
    def _species_value_from_state(self, sid: str, ystate: sympy.Expr, kind: str) -> sympy.Expr:
        sp = self.m.species[sid]
        natural = "amount" if sp.has_only_substance_units else "concentration"
        if kind == natural:
            return ystate
        vol = sym(sp.compartment)
        return ystate / vol if kind == "amount" else ystate * vol

    def _species_defs_from_attr(self, sid: str, value: sympy.Expr, kind: str) -> sympy.Expr:
        """The species' natural value from an initial attribute of kind ``kind``."""
        sp = self.m.species[sid]
        vol = sym(sp.compartment)
        if kind == "initial_amount" and not sp.has_only_substance_units:
            return value / vol
        if kind == "initial_concentration" and sp.has_only_substance_units:
            return value * vol
        return value

    def _common_defs(self) -> dict[str, sympy.Expr]:
        m = self.m
        defs: dict[str, sympy.Expr] = dict(m.assignment_rules)
        for r in m.reactions.values():
            defs.setdefault(r.id, r.rate)
        return defs

    # -- rhs-side resolution ---------------------------------------------------
    def resolve_dynamic(self) -> dict[str, sympy.Expr]:
        m = self.m
        base: dict[str, sympy.Expr] = {"@time": TIME, **self.ref_numbers}
        defs = self._common_defs()
        for j, x in enumerate(self.free + self.derived):
            if x in m.species and j < len(self.free):
                # a species' free parameter is its initial amount or concentration
                defs[x] = self._species_defs_from_attr(x, k_symbol(j), self.free_kinds[j])
            else:
                base[x] = k_symbol(j)
        for x, e in m.rate_rules.items():
            defs["@rr:" + x] = e
        for i, (x, kind) in enumerate(zip(self.states, self.state_kinds)):
            if x in m.species:
                value = self._species_value_from_state(x, y_symbol(i), kind)
                if value is y_symbol(i):
                    base[x] = value
                else:
                    defs[x] = value
            else:
                base[x] = y_symbol(i)
        return _resolve(defs, base, "model math")

    def resolve_initial(self) -> dict[str, sympy.Expr]:
        m = self.m
        base: dict[str, sympy.Expr] = {"@time": TIME, **self.ref_numbers}
        defs = self._common_defs()
        for x, (kind, value) in self.fixed.items():
            v = sympy.nan if value is None else sympy.sympify(float(value))
            if x in m.species:
                defs[x] = self._species_defs_from_attr(x, v, kind)
            else:
                base[x] = v
        for j, (x, kind) in enumerate(zip(self.free, self.free_kinds)):
            if x in m.species:
                defs[x] = self._species_defs_from_attr(x, p_symbol(j), kind)
            else:
                base[x] = p_symbol(j)
        for x in self.states:
            kind, value = self.state_attr[x]
            if x in m.initial_assignments:
                continue
            v = sympy.Float(value)
            defs[x] = self._species_defs_from_attr(x, v, kind) if x in m.species else v
        for x, e in m.initial_assignments.items():
            if x in m.assignment_rules:
                raise ModelError(f"'{x}' has both an initial assignment and an assignment "
                                 "rule; SBML forbids this.")
            defs[x] = e
        return _resolve(defs, base, "initial values")

    # -- assembly --------------------------------------------------------------
    def build(self) -> OdeSystem:
        self.classify()
        m = self.m
        dyn = self.resolve_dynamic()
        ini = self.resolve_initial()
        sidx = {x: i for i, x in enumerate(self.states)}
        rids = tuple(m.reactions)
        rates = tuple(dyn[r] for r in rids)
        n_states = len(self.states)
        stoich = np.zeros((len(rids), n_states))
        extra = [sympy.Integer(0)] * n_states
        scale = [sympy.Integer(1)] * n_states
        for x, i in sidx.items():
            if x in m.rate_rules:
                extra[i] = dyn["@rr:" + x]
        driven_scale: dict[str, sympy.Expr] = {}
        for j, r in enumerate(m.reactions.values()):
            for sign, refs in ((-1.0, r.reactants), (1.0, r.products)):
                for ref in refs:
                    i = sidx.get(ref.species)
                    if i is None or ref.species not in self.driven:
                        continue
                    sp = m.species[ref.species]
                    if ref.species not in driven_scale:
                        cf = sp.conversion_factor or m.conversion_factor
                        s = dyn[cf] if cf else sympy.Integer(1)
                        if self.state_kinds[i] == "concentration":
                            s = s / dyn[sp.compartment]
                        driven_scale[ref.species] = s
                    if ref.id and ref.id not in self.ref_numbers:
                        # stoichiometry set by an initial assignment or a rule: symbolic
                        extra[i] = extra[i] + sign * dyn[ref.id] * rates[j] * driven_scale[
                            ref.species]
                    else:
                        stoich[j, i] += sign * float(ref.stoichiometry)
        for x, s in driven_scale.items():
            scale[sidx[x]] = s
        y0 = []
        for x, kind in zip(self.states, self.state_kinds):
            value = ini[x]
            if x in m.species:
                sp = m.species[x]
                natural = "amount" if sp.has_only_substance_units else "concentration"
                if kind != natural:
                    vol = ini[sp.compartment]
                    value = value * vol if kind == "amount" else value / vol
            y0.append(value)
        init_derived = tuple(ini[x] for x in self.derived)
        to_state = []
        for x, kind in zip(self.states, self.state_kinds):
            factor = sympy.Integer(1)
            if x in m.species:
                sp = m.species[x]
                natural = "amount" if sp.has_only_substance_units else "concentration"
                if kind != natural:
                    vol = dyn[sp.compartment]
                    factor = vol if kind == "amount" else 1 / vol
            to_state.append(factor)
        outputs, out_exprs = self.outputs(dyn)
        exprs = {"rates": rates, "extra": extra, "scale": scale, "outputs": out_exprs,
                 "y0": y0, "derived": init_derived}
        if _rate_of.targets([e for v in exprs.values() for e in v]):
            exprs = self._expand_rate_of(dyn, stoich, exprs)
        rates, extra, scale, out_exprs = (exprs[k] for k in ("rates", "extra", "scale",
                                                              "outputs"))
        y0, init_derived = exprs["y0"], exprs["derived"]
        all_ones = all(s == 1 for s in scale)
        static = {y_symbol(i).name for i in range(n_states)
                  if extra[i] == 0 and not stoich[:, i].any()}
        events = lower_events(m, dyn, sidx, lambda names: self._rates_of(
            names, dyn, stoich, rates, scale, extra), static)
        return OdeSystem(
            model=self.model,
            states=tuple(self.states),
            state_kinds=tuple(self.state_kinds),
            parameters=tuple(self.free),
            parameter_kinds=tuple(self.free_kinds),
            parameter_defaults=self.defaults,
            derived=tuple(self.derived),
            outputs=outputs,
            init_y0=tuple(y0),
            init_derived=init_derived,
            rates=rates,
            stoichiometry=stoich,
            scale=None if all_ones else tuple(scale),
            extra=tuple(extra),
            output_exprs=out_exprs,
            natural_to_state=tuple(to_state),
            reaction_ids=rids,
            events=events,
        )

    def _rates_of(self, names, dyn, stoich, rates, scale, extra):
        """rateOf placeholder -> time derivative over primitives, for event math."""
        n = len(self.states)
        rhs = [sympy.Add(*[float(stoich[j, i]) * r for j, r in enumerate(rates)
                           if stoich[j, i]]) * scale[i] + extra[i] for i in range(n)]
        return _rate_of.time_derivatives(names, dyn.__getitem__, rhs,
                                         [y_symbol(i) for i in range(n)])

    def _expand_rate_of(self, dyn, stoich, exprs):
        """Replace rateOf placeholders by time derivatives (see ``kinabs._lowering.rate_of``)."""
        names = _rate_of.targets([e for v in exprs.values() for e in v])
        unknown = sorted(x for x in names if x not in dyn)
        if unknown:
            raise ModelError(f"rateOf refers to {unknown}, which the model does not define.")
        n = len(self.states)
        rhs = [sympy.Add(*[float(stoich[j, i]) * r for j, r in enumerate(exprs["rates"])
                           if stoich[j, i]]) * exprs["scale"][i] + exprs["extra"][i]
               for i in range(n)]
        ys = [y_symbol(i) for i in range(n)]
        d = _rate_of.time_derivatives(names, dyn.__getitem__, rhs, ys)
        out = {k: _rate_of.substitute(v, d) if k not in ("y0", "derived") else v
               for k, v in exprs.items()}
        # initial values: the derivatives at t0, over the initial states and parameters
        nf = len(self.free)
        for _ in range(len(names) + 2):
            if not _rate_of.targets([*out["y0"], *out["derived"]]):
                return out
            sub = {**{y: e for y, e in zip(ys, out["y0"])},
                   **{k_symbol(j): p_symbol(j) for j in range(nf)},
                   **{k_symbol(nf + j): e for j, e in enumerate(out["derived"])}}
            d0 = {k: e.xreplace(sub) for k, e in d.items()}
            out["y0"] = _rate_of.substitute(out["y0"], d0)
            out["derived"] = _rate_of.substitute(out["derived"], d0)
        raise ModelError("circular rateOf in initial values: an initial value depends on "
                         "its own rate of change.")

    def outputs(self, dyn: dict[str, sympy.Expr]):
        m = self.m
        keys: list[OutputKey] = []
        exprs: list[sympy.Expr] = []
        for sp in m.species.values():
            value = dyn[sp.id]
            vol = dyn[sp.compartment]
            if sp.has_only_substance_units:
                amount, conc = value, value / vol
            else:
                amount, conc = value * vol, value
            keys += [("concentration", sp.id), ("amount", sp.id)]
            exprs += [conc, amount]
        for group in (m.compartments, m.parameters):
            for x in group:
                keys.append(("value", x))
                exprs.append(dyn[x])
        for rid in self.refs:
            keys.append(("value", rid))
            exprs.append(dyn[rid])
        for r in m.reactions:
            keys.append(("rate", r))
            exprs.append(dyn[r])
        return tuple(keys), tuple(exprs)


def lower(model: Model) -> OdeSystem:
    """Lower a symbolic model to an ODE system (see the module docstring).

    Example:
        In the serine model, p3g, ser and the enzymes are constant species: they become
        free parameters (their initial concentrations), and only php and pser are states.

        >>> import kinabs
        >>> system = kinabs.lower(kinabs.load_sbml(kinabs.example_model_path()))
        >>> system.states, system.reaction_ids
        (('php', 'pser'), ('PDH', 'PSA', 'PSP'))
        >>> system.stoichiometry
        array([[ 1.,  0.],
               [-1.,  1.],
               [ 0., -1.]])
        >>> system.parameters[10:]
        ('cell', 'p3g', 'ser', 'serA', 'serC', 'serB')
    """
    return _Lowering(model).build()


def as_system(model: Model | OdeSystem) -> OdeSystem:
    """The ODE system of ``model``, lowered once and cached on the model object (a
    system passes through). Edits to the model between calls are noticed.

    Example:
        >>> import kinabs
        >>> model = kinabs.load_sbml(kinabs.example_model_path())
        >>> as_system(model) is as_system(model)
        True
    """
    if isinstance(model, OdeSystem):
        return model
    if not isinstance(model, Model):
        raise DataError(
            f"expected a kinabs Model (from kinabs.load_sbml or ModelBuilder.build()) or an "
            f"OdeSystem; got {type(model).__name__}."
        )
    key = _content_key(model)
    cached = getattr(model, "_kinabs_system", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    system = lower(model)
    object.__setattr__(model, "_kinabs_system", (key, system))
    return system


def _content_key(model: Model) -> int:
    """A cheap in-process key of the model's content (sympy and frozen dataclasses hash
    in O(1) once computed), to notice edits to a model between calls."""
    return hash((
        tuple(model.compartments.items()), tuple(model.species.items()),
        tuple(model.parameters.items()),
        tuple((r.id, r.rate, r.reactants, r.products) for r in model.reactions.values()),
        tuple(model.assignment_rules.items()), tuple(model.rate_rules.items()),
        tuple(model.initial_assignments.items()), model.conversion_factor,
        tuple(model.events.items()),
    ))
