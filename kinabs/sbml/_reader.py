"""SBML reader: a file or string in SBML Level 2 or 3 becomes a :class:`kinabs.Model`.

The document is read and validated by libsbml (units checks off; only errors fail, with
libsbml's messages and line numbers), then every element is copied into the symbolic
model and every piece of math converted node by node (``kinabs.sbml._math``). Features
kinabs does not simulate (events, algebraic rules, delays, fast reactions, packages that
change the meaning of a model) raise :class:`~kinabs.UnsupportedFeatureError` naming the
element; they are never skipped silently.

Example:
    >>> import kinabs
    >>> model = kinabs.load_sbml(kinabs.example_model_path())
    >>> model.reactions["PDH"].reactants[0].species
    'p3g'
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import libsbml
import sympy

from kinabs._errors import ModelError, SBMLError, UnsupportedFeatureError
from kinabs._model import (
    Compartment,
    Model,
    Parameter,
    Reaction,
    Species,
    SpeciesReference,
    sym,
)
from kinabs.sbml._math import MathConverter

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
        SBMLError: the file is missing, is not well-formed XML, is not SBML, or is invalid.
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
    doc = libsbml.SBMLReader().readSBMLFromFile(str(p))
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
    doc = libsbml.SBMLReader().readSBMLFromString(text)
    return _model_from_document(doc, source)


# -- document level --------------------------------------------------------------------
def _messages(doc: libsbml.SBMLDocument, skip: set[int] | frozenset = frozenset()
              ) -> list[str]:
    """libsbml's error and fatal messages, with line numbers (ids in ``skip`` left out)."""
    out = []
    for i in range(doc.getNumErrors()):
        e = doc.getError(i)
        if e.getSeverity() >= libsbml.LIBSBML_SEV_ERROR and e.getErrorId() not in skip:
            text = " ".join(e.getMessage().split())
            out.append(f"line {e.getLine()}: [{e.getSeverityAsString()} {e.getErrorId()}] "
                       f"{text}")
    return out


def _model_from_document(doc: libsbml.SBMLDocument, source: str | None) -> Model:
    name = f"'{source}'" if source else "the SBML text"
    errors = _messages(doc)
    if errors:
        ids = [doc.getError(i).getErrorId() for i in range(doc.getNumErrors())]
        if any(i < 10000 for i in ids):  # libsbml's XML-layer errors
            raise SBMLError(f"{name} is not well-formed XML, so it cannot be SBML. Expected an "
                            "SBML document (<sbml ...><model>...); got something else (a CSV "
                            "or a truncated/corrupted file?).", errors)
        if doc.getLevel() == 0:
            raise SBMLError(f"{name} is XML but not an SBML document: the root element must "
                            "be <sbml level=... version=...>.", errors)
        raise SBMLError(f"{name} is not valid SBML; fix these libsbml errors:", errors)
    if doc.getModel() is None:
        raise SBMLError(f"{name} is an SBML document without a <model>; nothing to read.")
    _check_packages(doc)
    for category in _SKIPPED_CHECKS:
        doc.setConsistencyChecks(category, False)
    if doc.checkConsistency():
        errors = _messages(doc, skip=set(_DEMOTED_ERRORS))
        for rule, meaning in _DEMOTED_ERRORS.items():
            count = sum(1 for i in range(doc.getNumErrors())
                        if doc.getError(i).getErrorId() == rule)
            if count:
                warnings.warn(f"{name}: {count} x libsbml rule {rule}: {meaning}; read anyway, "
                              "as this does not change the dynamics.", stacklevel=3)
        if errors:
            raise SBMLError(f"{name} is not valid SBML (libsbml consistency check); fix "
                            "these errors:", errors)
    try:
        return _ModelReader(doc, source).read()
    except RecursionError:
        raise SBMLError(f"{name}: math nested too deeply to convert.") from None


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

    def read(self) -> Model:
        self._check_unsupported()
        self._compartments()
        self._species()
        self._parameters()
        self._reactions()
        self._rules()
        if self.sbml.isSetConversionFactor():
            self.m.conversion_factor = self.sbml.getConversionFactor()
        self._check_ids()
        return self.m

    def _check_unsupported(self) -> None:
        s = self.sbml
        if s.getNumEvents():
            e = s.getEvent(0)
            raise UnsupportedFeatureError(e.getId() or "event #1", "event",
                                          f"The model has {s.getNumEvents()} event(s).")
        for i, rule in enumerate(s.getListOfRules()):
            if rule.isAlgebraic():
                raise UnsupportedFeatureError(rule.getIdAttribute() or f"rule #{i + 1}",
                                              "algebraic rule")
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
            if not rule.isSetMath():
                continue
            target = (self.m.assignment_rules if rule.isAssignment() else self.m.rate_rules)
            target[var] = self.math.expr(rule.getMath(), where=var)
        for ia in self.sbml.getListOfInitialAssignments():
            var = ia.getSymbol()
            if not ia.isSetMath():
                continue
            self.m.initial_assignments[var] = self.math.expr(ia.getMath(), where=var)

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
        for where, expr in places:
            unknown = sorted(s.name for s in expr.free_symbols
                             if not s.name.startswith("@") and s.name not in known)
            if unknown:
                raise ModelError(f"{where} refers to {unknown}, which the model does not "
                                 "define. Define them (parameter, species, compartment) or "
                                 "fix the ids.")
