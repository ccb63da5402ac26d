"""SBML reader: a file or string in SBML Level 2 or 3 becomes a :class:`kinabs.Model`.

Before libsbml sees the text, one streaming expat pass (``kinabs.sbml._xmlcheck``) checks
that it is well-formed XML without a DTD, nested at most 256 elements deep (deeper files
crash libsbml). The document is then read and validated by libsbml (units checks off; only
errors fail, headlined by libsbml's first message with its line number), then every element is copied into the symbolic
model and every piece of math converted node by node (``kinabs.sbml._math``). A
hierarchical (comp) model is flattened first (``kinabs.sbml._comp``); algebraic rules with a
unique closed-form solution become assignment rules (``kinabs.sbml._algebraic``). Features
kinabs does not simulate (other algebraic rules, delays, fast reactions, packages that
change the meaning of a model) raise :class:`~kinabs.UnsupportedFeatureError` naming the
element; they are never skipped silently. A NaN or infinite value that the simulation
would use (an initial value, size, stoichiometry, or a parameter that math refers to) raises
:class:`~kinabs.SBMLError` naming the element, the attribute and the line.

Example:
    >>> import kinabs
    >>> model = kinabs.load_sbml(kinabs.example_model_path())
    >>> model.reactions["PDH"].reactants[0].species
    'p3g'
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import libsbml
import sympy

from kinabs._errors import ModelError, SBMLError, UnsupportedFeatureError
from kinabs._model import (
    Compartment,
    Event,
    Model,
    Parameter,
    Reaction,
    Species,
    SpeciesReference,
    sym,
)
from kinabs.sbml._algebraic import add_algebraic_rules, deferred_checks
from kinabs.sbml._comp import flatten_comp
from kinabs.sbml._math import MathConverter
from kinabs.sbml._messages import first, messages
from kinabs.sbml._xmlcheck import check_xml_file, check_xml_text

__all__ = ["load_sbml", "read_sbml_string"]

# Packages that add layout, graphics or grouping only; they never change the dynamics.
_HARMLESS_PACKAGES = {"layout", "render", "groups", "l3v2extendedmath"}
# Consistency categories that cannot change a simulation, but are slow and noisy.
_SKIPPED_CHECKS = (libsbml.LIBSBML_CAT_UNITS_CONSISTENCY, libsbml.LIBSBML_CAT_MODELING_PRACTICE,
                   libsbml.LIBSBML_CAT_SBO_CONSISTENCY)
# libsbml errors that cannot change the dynamics, reported as warnings instead.
_DEMOTED_ERRORS = {
    21121: "species used in kinetic laws are not listed as modifiers of their reactions",
    10313: "'units' attributes name no unit definition (units never change a simulation)",
}


def load_sbml(path: str | os.PathLike) -> Model:
    """Read an SBML file (Level 2 or 3) into a :class:`kinabs.Model`.

    Raises:
        SBMLError: the file is missing, is not well-formed XML, has a DTD, is nested too
            deep, is not SBML, is invalid, or holds a NaN/infinite value the simulation uses.
        UnsupportedFeatureError: the model uses a feature kinabs does not simulate.

    Example:
        >>> import kinabs
        >>> kinabs.load_sbml(kinabs.example_model_path()).id
        'BIOMD0000000458'
    """
    p = Path(path)
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "does not exist"
        raise SBMLError(f"cannot read SBML file '{p}': the path {what}. Expected the path of "
                        "an SBML (.xml) file; check the spelling and the working directory "
                        f"({Path.cwd()}).")
    # Well-formed, no DTD and not too deep before libsbml, which can crash on deep files.
    check_xml_file(p, f"'{p}'")
    doc = libsbml.SBMLReader().readSBMLFromFile(str(p))
    doc.setLocationURI(p.resolve().as_uri())  # comp: external models sit beside the file
    return _model_from_document(doc, str(p))


def read_sbml_string(text: str, *, source: str | None = None) -> Model:
    """Read SBML from a string; ``source`` names it in messages and in ``Model.source``.

    Example:
        >>> import kinabs
        >>> text = kinabs.example_model_path().read_text()
        >>> len(kinabs.read_sbml_string(text).species)
        7
    """
    if not isinstance(text, str):
        raise TypeError(f"read_sbml_string expects the SBML text as str; got "
                        f"{type(text).__name__}. For a file path use kinabs.load_sbml(path).")
    check_xml_text(text, f"'{source}'" if source else "the SBML text")
    doc = libsbml.SBMLReader().readSBMLFromString(text)
    return _model_from_document(doc, source)


# -- document level --------------------------------------------------------------------
def _model_from_document(doc: libsbml.SBMLDocument, source: str | None) -> Model:
    name = f"'{source}'" if source else "the SBML text"
    errors = messages(doc)
    if errors:
        # The XML is known to be well-formed (kinabs.sbml._xmlcheck): whatever libsbml says
        # is the news, so its first message leads, never a guess about the file.
        if doc.getLevel() == 0:
            raise SBMLError(f"{name} is XML but not an SBML document: the root element must "
                            f"be <sbml level=... version=...>. libsbml says {first(errors)}.",
                            errors)
        raise SBMLError(f"{name} is not valid SBML: libsbml says {first(errors)}. Fix the "
                        "file at that line; all of libsbml's errors:", errors)
    if doc.getModel() is None:
        raise SBMLError(f"{name} is an SBML document without a <model>; nothing to read.")
    doc = flatten_comp(doc, name, tolerated=set(_DEMOTED_ERRORS))  # comp: one flat model
    _check_packages(doc)
    for category in _SKIPPED_CHECKS:
        doc.setConsistencyChecks(category, False)
    if doc.checkConsistency():
        # Over-determined with algebraic rules: add_algebraic_rules names the rule.
        errors = messages(doc, skip=set(_DEMOTED_ERRORS) | deferred_checks(doc))
        for rule, meaning in _DEMOTED_ERRORS.items():
            count = sum(1 for i in range(doc.getNumErrors())
                        if doc.getError(i).getErrorId() == rule)
            if count:
                warnings.warn(f"{name}: {count} x libsbml rule {rule}: {meaning}; read anyway, "
                              "as this does not change the dynamics.", stacklevel=3)
        if errors:
            raise SBMLError(f"{name} is not valid SBML (libsbml consistency check): libsbml "
                            f"says {first(errors)}. Fix the file at that line; all of "
                            "libsbml's errors:", errors)
    try:
        return _ModelReader(doc, source).read()
    except RecursionError:
        raise SBMLError(f"{name}: math nested too deeply to convert (Python's recursion "
                        "limit); expected math nested at most about 300 levels. Simplify the "
                        "deepest expression or break it up with assignment rules.") from None


def _check_packages(doc: libsbml.SBMLDocument) -> None:
    for i in range(doc.getNumUnknownPackages()):
        uri = doc.getUnknownPackageURI(i)
        if doc.getPackageRequired(uri):
            raise UnsupportedFeatureError(None, f"SBML package {uri} (required, unknown to "
                                                "libsbml)")
    model = doc.getModel()
    for i in range(doc.getNumPlugins()):
        pkg = doc.getPlugin(i).getPackageName()
        if pkg in _HARMLESS_PACKAGES:
            continue
        if pkg == "comp":
            dp, mp = doc.getPlugin("comp"), model.getPlugin("comp")
            used = (dp.getNumModelDefinitions() + dp.getNumExternalModelDefinitions()
                    + (mp.getNumSubmodels() + mp.getNumPorts() if mp else 0))
        elif pkg == "fbc":
            mp = model.getPlugin("fbc")
            used = bool(mp) and (mp.getNumObjectives() + mp.getNumFluxBounds()
                                 + mp.getNumGeneProducts()) > 0
            for r in model.getListOfReactions():
                rp = r.getPlugin("fbc")
                used = used or bool(rp and (rp.isSetLowerFluxBound()
                                            or rp.isSetUpperFluxBound()))
        else:
            used = doc.getPackageRequired(pkg)
        if used:
            raise UnsupportedFeatureError(None, f"SBML package '{pkg}'",
                                          "kinabs reads SBML core only; flatten or remove "
                                          f"the '{pkg}' elements first.")


# -- model level -----------------------------------------------------------------------
class _ModelReader:
    def __init__(self, doc: libsbml.SBMLDocument, source: str | None):
        self.doc = doc
        self.sbml = doc.getModel()
        self.level = doc.getLevel()
        functions = {f.getId(): f.getMath() for f in self.sbml.getListOfFunctionDefinitions()}
        self.math = MathConverter(functions)
        self.m = Model(id=self.sbml.getId() or "model", name=self.sbml.getName(),
                       source=source)
        self.name = f"'{source}'" if source else "the SBML text"

    def read(self) -> Model:
        self._check_unsupported()
        self._compartments()
        self._species()
        self._parameters()
        self._reactions()
        self._rules()
        add_algebraic_rules(self.sbml, self.m, self.math)  # 0 = f(x) -> x = g(...), or refuse
        self._events()
        if self.sbml.isSetConversionFactor():
            self.m.conversion_factor = self.sbml.getConversionFactor()
        self._check_ids()
        self._check_finite()
        return self.m

    def _check_unsupported(self) -> None:
        s = self.sbml
        # Algebraic rules: solved into assignment rules after _rules(), or refused there
        # (kinabs.sbml._algebraic).
        if s.getNumConstraints():
            warnings.warn(f"SBML model '{self.m.id}' has {s.getNumConstraints()} "
                          "constraint(s); kinabs does not check constraints during "
                          "simulation.", stacklevel=4)

    def _compartments(self) -> None:
        for c in self.sbml.getListOfCompartments():
            size = c.getSize() if c.isSetSize() else (1.0 if self.level == 1 else None)
            dims = (c.getSpatialDimensionsAsDouble() if c.isSetSpatialDimensions()
                    or self.level < 3 else 3.0)
            self.m.compartments[c.getId()] = Compartment(
                id=c.getId(), size=size, constant=c.getConstant(),
                spatial_dimensions=float(dims), name=c.getName())

    def _species(self) -> None:
        for sp in self.sbml.getListOfSpecies():
            self.m.species[sp.getId()] = Species(
                id=sp.getId(), compartment=sp.getCompartment(),
                initial_amount=sp.getInitialAmount() if sp.isSetInitialAmount() else None,
                initial_concentration=(sp.getInitialConcentration()
                                       if sp.isSetInitialConcentration() else None),
                has_only_substance_units=sp.getHasOnlySubstanceUnits(),
                boundary_condition=sp.getBoundaryCondition(), constant=sp.getConstant(),
                conversion_factor=(sp.getConversionFactor()
                                   if self.level >= 3 and sp.isSetConversionFactor() else None),
                name=sp.getName())

    def _parameters(self) -> None:
        for p in self.sbml.getListOfParameters():
            self.m.parameters[p.getId()] = Parameter(
                id=p.getId(), value=p.getValue() if p.isSetValue() else None,
                constant=p.getConstant(), name=p.getName())

    def _reactions(self) -> None:
        for r in self.sbml.getListOfReactions():
            rid = r.getId()
            if r.isSetFast() and r.getFast():
                raise UnsupportedFeatureError(rid, "fast reaction",
                                              "Set fast='false' to simulate it as a normal "
                                              "reaction.")
            kl = r.getKineticLaw() if r.isSetKineticLaw() else None
            if kl is None or kl.getMath() is None:
                raise UnsupportedFeatureError(rid, "reaction without kinetic law",
                                              "Give the reaction a <kineticLaw> with <math>.")
            env: dict[str, sympy.Expr] = {}
            locals_ = (kl.getListOfLocalParameters() if self.level >= 3
                       else kl.getListOfParameters())
            for lp in locals_:
                qualified = f"{rid}.{lp.getId()}"
                env[lp.getId()] = sym(qualified)
                constant = lp.getConstant() if self.level < 3 else True
                self.m.parameters[qualified] = Parameter(
                    id=qualified, value=lp.getValue() if lp.isSetValue() else None,
                    constant=constant, reaction=rid, name=lp.getName())
            rate = self.math.expr(kl.getMath(), where=rid, env=env)
            self.m.reactions[rid] = Reaction(
                id=rid, rate=rate, reversible=r.getReversible(), name=r.getName(),
                reactants=tuple(self._reference(rid, sr) for sr in r.getListOfReactants()),
                products=tuple(self._reference(rid, sr) for sr in r.getListOfProducts()),
                modifiers=tuple(m.getSpecies() for m in r.getListOfModifiers()))

    def _reference(self, rid: str, sr: libsbml.SpeciesReference) -> SpeciesReference:
        ref_id = sr.getId() if sr.isSetId() else None
        if self.level < 3 and sr.isSetStoichiometryMath():
            # L2 stoichiometryMath is a stoichiometry valid at all times: an assignment rule
            # on the reference's id (a synthetic one if it has none), as SBML L3 writes it.
            if ref_id is None:
                ref_id = f"{rid}_{sr.getSpecies()}_stoichiometry"
                while ref_id in self._taken_ids():
                    ref_id += "_"
            math = sr.getStoichiometryMath().getMath()
            self.m.assignment_rules[ref_id] = self.math.expr(math, where=ref_id)
            return SpeciesReference(species=sr.getSpecies(), stoichiometry=1.0, id=ref_id)
        stoich = sr.getStoichiometry() if sr.isSetStoichiometry() or self.level < 3 else 1.0
        return SpeciesReference(species=sr.getSpecies(), stoichiometry=float(stoich),
                                id=ref_id)

    def _taken_ids(self) -> set[str]:
        out = {e.getId() for e in self.sbml.getListOfAllElements() if e.isSetId()}
        return out | self.m.ids() | set(self.m.assignment_rules)

    def _rules(self) -> None:
        # SBML L3V2: a rule or initial assignment without <math> has no effect.
        for rule in self.sbml.getListOfRules():
            var = rule.getVariable()
            if not rule.isSetMath() or rule.isAlgebraic():  # algebraic: add_algebraic_rules
                continue
            target = (self.m.assignment_rules if rule.isAssignment() else self.m.rate_rules)
            target[var] = self.math.expr(rule.getMath(), where=var)
        for ia in self.sbml.getListOfInitialAssignments():
            var = ia.getSymbol()
            if not ia.isSetMath():
                continue
            self.m.initial_assignments[var] = self.math.expr(ia.getMath(), where=var)

    def _events(self) -> None:
        for i, ev in enumerate(self.sbml.getListOfEvents()):
            eid = ev.getId() or f"event #{i + 1}"
            where = f"event '{eid}'"
            trig = ev.getTrigger()
            if trig is not None and trig.isSetMath():
                trigger = self.math.boolean(trig.getMath(), where=eid)
            else:
                trigger = sympy.false  # SBML L3V2: no trigger, never fires
            l3 = self.level >= 3
            initial = bool(trig.getInitialValue()) if l3 and trig is not None else True
            persistent = bool(trig.getPersistent()) if l3 and trig is not None else True
            delay = priority = None
            if ev.isSetDelay() and ev.getDelay().isSetMath():
                delay = self.math.expr(ev.getDelay().getMath(), where=f"{eid} delay")
            if l3 and ev.isSetPriority() and ev.getPriority().isSetMath():
                priority = self.math.expr(ev.getPriority().getMath(), where=f"{eid} priority")
            assignments = []
            for ea in ev.getListOfEventAssignments():
                var = ea.getVariable()
                self._check_event_target(var, where)
                if ea.isSetMath():
                    assignments.append((var, self.math.expr(ea.getMath(), where=f"{eid}: {var}")))
            self.m.events[eid] = Event(
                id=eid, trigger=trigger, assignments=tuple(assignments), delay=delay,
                priority=priority, initial_value=initial, persistent=persistent,
                use_values_from_trigger_time=(ev.getUseValuesFromTriggerTime()
                                              if ev.isSetUseValuesFromTriggerTime() else True),
                name=ev.getName())

    def _check_event_target(self, var: str, where: str) -> None:
        m = self.m
        element = (m.species.get(var) or m.compartments.get(var) or m.parameters.get(var))
        if element is None:
            if var in m.species_references():
                raise UnsupportedFeatureError(var, "event assignment to a stoichiometry",
                                              f"({where}).")
            raise SBMLError(f"{self.name}: {where} assigns '{var}', which is not a species, "
                            "compartment or parameter of the model; fix the variable id.")
        if element.constant:
            raise SBMLError(f"{self.name}: {where} assigns '{var}', which is constant; "
                            "SBML allows event assignments to non-constant variables only. "
                            "Set constant=\"false\" on it.")
        if var in m.assignment_rules:
            raise SBMLError(f"{self.name}: {where} assigns '{var}', which an assignment "
                            "rule also sets; SBML forbids this.")

    def _check_finite(self) -> None:
        """Refuse NaN/INF values the simulation would use as numbers, naming each one.

        SBML allows "NaN", "INF" and "-INF" for any value, and a value that nothing uses
        (SBML Test Suite case 00951: three such parameters, only reported) or that an
        initial assignment or assignment rule replaces is harmless, so those stay. Every
        other one reaches the ODE's state or right-hand side, where the solver cannot step
        and, after a long time, reports only that it ran out of steps.
        """
        m = self.m
        replaced = set(m.initial_assignments) | set(m.assignment_rules)
        used = set(m.rate_rules) | {m.conversion_factor}
        used |= {sp.conversion_factor for sp in m.species.values()}
        for expr in (*(r.rate for r in m.reactions.values()), *m.assignment_rules.values(),
                     *m.rate_rules.values(), *m.initial_assignments.values()):
            used |= {x.name for x in expr.free_symbols}
        bad: list[str] = []

        def look(element, what: str, attr: str, value: float | None, key: str | None,
                 needed: bool = True) -> None:
            # key: the id an initial assignment or assignment rule would target.
            if value is None or math.isfinite(value) or key in replaced or not needed:
                return
            text = "NaN" if math.isnan(value) else ("INF" if value > 0 else "-INF")
            bad.append(f"line {element.getLine()}: {what} has {attr}=\"{text}\"")

        for c in self.sbml.getListOfCompartments():
            cid = c.getId()
            look(c, f"compartment '{cid}'", "size", m.compartments[cid].size, cid)
        for sp in self.sbml.getListOfSpecies():
            sid = sp.getId()
            look(sp, f"species '{sid}'", "initialAmount", m.species[sid].initial_amount, sid)
            look(sp, f"species '{sid}'", "initialConcentration",
                 m.species[sid].initial_concentration, sid)
        for p in self.sbml.getListOfParameters():
            pid = p.getId()
            look(p, f"parameter '{pid}'", "value", m.parameters[pid].value, pid, pid in used)
        for r in self.sbml.getListOfReactions():
            rid, mine = r.getId(), m.reactions[r.getId()]
            kl = r.getKineticLaw()
            for lp in (kl.getListOfLocalParameters() if self.level >= 3
                       else kl.getListOfParameters()):
                qualified = f"{rid}.{lp.getId()}"
                look(lp, f"local parameter '{lp.getId()}' of reaction '{rid}'", "value",
                     m.parameters[qualified].value, qualified, qualified in used)
            for srs, refs in ((r.getListOfReactants(), mine.reactants),
                              (r.getListOfProducts(), mine.products)):
                for sr, ref in zip(srs, refs):
                    named = f" (id '{ref.id}')" if ref.id else ""
                    look(sr, f"the species reference to '{ref.species}'{named} in reaction "
                             f"'{rid}'", "stoichiometry", ref.stoichiometry, ref.id)
        if bad:
            raise SBMLError(
                f"{self.name}: {bad[0]}, a value the simulation uses as a number; expected a "
                "finite number, as NaN or infinity here makes every solver step fail. Give "
                "the element a finite value (or an initial assignment that computes it)"
                + (f"; {len(bad)} such values, all listed below:" if len(bad) > 1 else "."),
                bad)

    def _check_ids(self) -> None:
        known = self.m.ids()
        places = [(f"reaction '{r.id}'", r.rate) for r in self.m.reactions.values()]
        for kind, rules in (("assignment rule", self.m.assignment_rules),
                            ("rate rule", self.m.rate_rules),
                            ("initial assignment", self.m.initial_assignments)):
            places += [(f"{kind} for '{k}'", e) for k, e in rules.items()]
            unknown_targets = [k for k in rules if k not in known]
            if unknown_targets:
                raise ModelError(f"{kind}(s) for {unknown_targets}, which the model does not "
                                 "define; expected a compartment, species, parameter or "
                                 "species-reference id.")
        for e in self.m.events.values():
            places.append((f"the trigger of event '{e.id}'", e.trigger))
            places += [(f"event '{e.id}' ({part})", x) for part, x in
                       (("delay", e.delay), ("priority", e.priority), *e.assignments)
                       if x is not None]
        for where, expr in places:
            unknown = sorted(s.name for s in expr.free_symbols
                             if not s.name.startswith("@") and s.name not in known)
            if unknown:
                raise ModelError(f"{where} refers to {unknown}, which the model does not "
                                 "define. Define them (parameter, species, compartment) or "
                                 "fix the ids.")
