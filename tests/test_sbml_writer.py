"""The SBML writer: valid L3V2, exact numbers, and read -> write -> read keeps the model."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import libsbml
import numpy as np
import pytest
import sympy

import kinabs
from kinabs import Compartment, Model, ModelError, Parameter, Reaction, Species
from kinabs import SpeciesReference as Ref
from kinabs._model import TIME, Quotient, RateOf, Rem, sym
from tests._shared import SHARED

DATA = SHARED / "data" / "jaxkineticmodel"
MODELS = sorted((DATA / "models").glob("*.xml"))
FAST_MODELS = ["Smallbone2013_SerineBiosynthesis", "simple_sbml"]
SOLVER = kinabs.SolverOptions(rtol=1e-8, atol=1e-10, max_steps=20_000)
X, Y = sym("x"), sym("y")


def round_trip(model: Model) -> Model:
    text = kinabs.sbml_string(model)
    doc = libsbml.readSBMLFromString(text)
    doc.setConsistencyChecks(libsbml.LIBSBML_CAT_UNITS_CONSISTENCY, False)
    doc.checkConsistency()
    errors = [doc.getError(i).getMessage() for i in range(doc.getNumErrors())
              if doc.getError(i).getSeverity() >= libsbml.LIBSBML_SEV_ERROR]
    assert not errors, errors
    assert (doc.getLevel(), doc.getVersion()) == (3, 2)
    return kinabs.read_sbml_string(text)


def load(path: Path) -> Model:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return kinabs.load_sbml(path)
        except kinabs.UnsupportedFeatureError as e:
            pytest.skip(f"{path.stem}: {e}")


def base_model(**rules) -> Model:
    return Model(id="m", compartments={"c": Compartment("c", 1.0)},
                 parameters={"x": Parameter("x", 0.3), "y": Parameter("y", 2.0),
                             "out": Parameter("out", None, constant=False)},
                 assignment_rules=rules)


# -- the shared models -------------------------------------------------------------------
@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_shared_models_round_trip_to_the_same_model(path):
    model = load(path)
    again = round_trip(model)
    assert again.fingerprint() == model.fingerprint()
    assert list(again.reactions) == list(model.reactions)


def _times(name: str) -> np.ndarray:
    csv = DATA / "datasets" / f"{name}.csv"
    end = 10.0
    if csv.is_file():
        import pandas as pd

        end = float(pd.read_csv(csv, index_col=0).index.max()) or 10.0
    return np.linspace(0.0, end, 6)


def _check_same_simulation(path: Path) -> None:
    model = load(path)
    again = round_trip(model)
    ts = _times(path.stem)
    outputs = list(model.species)
    a = kinabs.simulate(model, ts, outputs=outputs, solver=SOLVER, on_failure="nan")
    b = kinabs.simulate(again, ts, outputs=outputs, solver=SOLVER, on_failure="nan")
    assert a.status == b.status
    np.testing.assert_allclose(b.values, a.values, rtol=1e-9, equal_nan=True)


@pytest.mark.parametrize("name", FAST_MODELS)
def test_round_trip_simulates_identically(name):
    _check_same_simulation(DATA / "models" / f"{name}.xml")


@pytest.mark.slow
@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_round_trip_simulates_identically_all_models(path):
    _check_same_simulation(path)


# -- elements and math -------------------------------------------------------------------
def test_local_parameters_are_written_back_as_local_parameters():
    model = Model(
        id="m", compartments={"c": Compartment("c", 2.0)},
        species={"S": Species("S", "c", initial_concentration=1.0)},
        parameters={"k": Parameter("k", 100.0), "R.k": Parameter("R.k", 0.5, reaction="R")},
        reactions={"R": Reaction("R", sym("R.k") * sym("S") * sym("c"), (Ref("S"),))})
    text = kinabs.sbml_string(model)
    assert '<localParameter id="k" value="0.5"/>' in text
    again = round_trip(model)
    assert again.parameters == model.parameters and again.reactions == model.reactions


def test_species_and_compartment_attributes_round_trip():
    model = Model(
        id="m", compartments={"c": Compartment("c", 2.0, constant=False,
                                               spatial_dimensions=2.0, name="cell")},
        species={"S": Species("S", "c", initial_amount=1.5, has_only_substance_units=True,
                              boundary_condition=True, conversion_factor="cf"),
                 "P": Species("P", "c")},
        parameters={"cf": Parameter("cf", 2.0), "st": Parameter("st", 1.0)},
        reactions={"R": Reaction("R", sym("S"), (Ref("S", 2.5),), (Ref("P", 1.0, "pref"),),
                                 modifiers=("P",), reversible=True)},
        rate_rules={"c": sympy.Integer(1)}, initial_assignments={"pref": 2 * sym("st")},
        conversion_factor="cf")
    again = round_trip(model)
    for part in ("compartments", "species", "parameters", "reactions", "rate_rules",
                 "initial_assignments"):
        assert getattr(again, part) == getattr(model, part), part
    assert again.conversion_factor == "cf"


def test_floats_are_exact():
    tricky = [0.1 + 2**-56, 1 / 3, math.pi, 6.02214179e23, 2.2250738585072014e-308, 123456.78901234567,
              -2.5e-17]
    params = {f"p{i}": Parameter(f"p{i}", v) for i, v in enumerate(tricky)}
    rules = {f"p{i}": sympy.Float(v) * X for i, v in enumerate(tricky)}
    params["x"] = Parameter("x", 1.0)
    model = Model(id="m", parameters={k: Parameter(k, None, constant=False) if k in rules
                                      else v for k, v in params.items()},
                  assignment_rules=rules)
    model.parameters.update({f"q{i}": Parameter(f"q{i}", v) for i, v in enumerate(tricky)})
    again = round_trip(model)
    assert again.assignment_rules == model.assignment_rules
    assert [again.parameters[f"q{i}"].value for i in range(len(tricky))] == tricky


def test_special_numbers_round_trip():
    rules = {"out": sympy.Piecewise((sympy.oo, X < 0), (-sympy.oo, X < 1), (sympy.nan, True))
             + sympy.Rational(1, 3) + sympy.Integer(2**30) * X + sympy.pi + sympy.E}
    again = round_trip(base_model(**rules))
    assert sympy.srepr(again.assignment_rules["out"]) == sympy.srepr(rules["out"])


@pytest.mark.parametrize("expr", [
    sympy.exp(X), sympy.log(X), sympy.Abs(X), sympy.floor(X), sympy.ceiling(X),
    sympy.factorial(X), sympy.sin(X), sympy.cos(X), sympy.tan(X), sympy.sec(X), sympy.csc(X),
    sympy.cot(X), sympy.sinh(X), sympy.cosh(X), sympy.tanh(X), sympy.sech(X), sympy.csch(X),
    sympy.coth(X), sympy.asin(X), sympy.acos(X), sympy.atan(X), sympy.asec(Y),
    sympy.acsc(Y), sympy.acot(X), sympy.asinh(X), sympy.acosh(Y), sympy.atanh(X),
    sympy.asech(X), sympy.acsch(X), sympy.acoth(Y), sympy.Min(X, Y, 1), sympy.Max(X, Y),
    Rem(X, Y), Quotient(X, Y), X**Y, X / Y, X - Y, -X * Y, (X + Y) * -1 / Y, 1 / X,
    sympy.sqrt(X), X ** sympy.Rational(1, 3), sympy.Piecewise((X, X < Y), (Y, True)),
    sympy.Piecewise((X, X < Y)), sympy.Piecewise((X, sympy.And(X < Y, Y >= 1)),
                                                 (Y, sympy.Or(sympy.Eq(X, 1), sympy.Ne(Y, 2)))),
    sympy.Piecewise((1, sympy.Xor(X > 1, Y <= 2, sympy.Not(X > 0))), (0, True)),
    TIME * X,
], ids=str)
def test_math_round_trips(expr):
    again = round_trip(base_model(out=expr))
    assert again.assignment_rules["out"] == expr


def test_gamma_becomes_factorial():
    again = round_trip(base_model(out=sympy.gamma(X)))
    assert again.assignment_rules["out"] == sympy.factorial(X - 1)


def test_rate_of_is_written_as_csymbol():
    text = kinabs.sbml_string(base_model(out=RateOf(X)))
    assert "http://www.sbml.org/sbml/symbols/rateOf" in text
    assert kinabs.read_sbml_string(text).assignment_rules["out"] == RateOf(X)


def test_time_is_written_as_csymbol():
    text = kinabs.sbml_string(base_model(out=TIME))
    assert "http://www.sbml.org/sbml/symbols/time" in text


def test_l2_stoichiometry_math_round_trips_as_a_rule():
    sbml = (
        '<sbml xmlns="http://www.sbml.org/sbml/level2/version4" level="2" version="4">'
        '<model id="m"><listOfCompartments><compartment id="c"/></listOfCompartments>'
        '<listOfSpecies><species id="A" compartment="c" initialConcentration="1"/>'
        '<species id="B" compartment="c" initialConcentration="0"/></listOfSpecies>'
        '<listOfReactions><reaction id="R" reversible="false"><listOfReactants>'
        '<speciesReference species="A"/></listOfReactants><listOfProducts>'
        '<speciesReference species="B"><stoichiometryMath><math xmlns="http://www.w3.org/'
        '1998/Math/MathML"><cn>2</cn></math></stoichiometryMath></speciesReference>'
        '</listOfProducts><kineticLaw><math xmlns="http://www.w3.org/1998/Math/MathML">'
        "<ci>A</ci></math></kineticLaw></reaction></listOfReactions></model></sbml>")
    model = kinabs.read_sbml_string(sbml)
    again = round_trip(model)
    assert again.assignment_rules == model.assignment_rules
    assert again.reactions == model.reactions


def test_write_sbml_to_a_file(tmp_path):
    path = tmp_path / "m.xml"
    model = kinabs.load_sbml(kinabs.example_model_path())
    kinabs.write_sbml(model, path)
    assert kinabs.load_sbml(path).fingerprint() == model.fingerprint()


# -- what SBML cannot say ------------------------------------------------------------------
def test_invalid_id_is_a_model_error():
    model = Model(id="m", parameters={"1bad": Parameter("1bad", 1.0)})
    with pytest.raises(ModelError, match="1bad"):
        kinabs.sbml_string(model)


def test_local_parameter_outside_its_reaction_is_a_model_error():
    model = Model(id="m", parameters={"R.k": Parameter("R.k", 1.0, reaction="R"),
                                      "y": Parameter("y", None, constant=False)},
                  reactions={"R": Reaction("R", sym("R.k"))},
                  assignment_rules={"y": sym("R.k")})
    with pytest.raises(ModelError, match="local parameter"):
        kinabs.sbml_string(model)


def test_local_parameter_shadowing_a_used_global_is_a_model_error():
    model = Model(id="m", parameters={"k": Parameter("k", 2.0),
                                      "R.k": Parameter("R.k", 1.0, reaction="R")},
                  reactions={"R": Reaction("R", sym("R.k") * sym("k"))})
    with pytest.raises(ModelError, match="shadowed"):
        kinabs.sbml_string(model)


def test_math_without_an_sbml_equivalent():
    with pytest.raises(kinabs.UnsupportedFeatureError, match="sign"):
        kinabs.sbml_string(base_model(out=sympy.sign(X)))


def test_not_a_model():
    with pytest.raises(TypeError, match="kinabs Model"):
        kinabs.sbml_string("<sbml/>")
