"""Algebraic rules: solved exactly into assignment rules where the solution is unique, a
clear UnsupportedFeatureError naming the rule everywhere else (kinabs.sbml._algebraic)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy

import kinabs
from kinabs import SBMLError, UnsupportedFeatureError
from kinabs._model import sym

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from conformance._suite_data import default_suite_dir, read_index  # noqa: E402
from conformance.sbml_test_suite import run_case  # noqa: E402

SUITE = default_suite_dir()
needs_suite = pytest.mark.skipif(not (SUITE / "cases-index.tsv").exists(),
                                 reason=f"no SBML Test Suite at {SUITE}")
BACKENDS = ["scipy", pytest.param("torch", marks=pytest.mark.skipif(
    importlib.util.find_spec("torchdiffeq") is None, reason="torch backend not installed"))]

L3V2 = "http://www.sbml.org/sbml/level3/version2/core"
MATHML = "http://www.w3.org/1998/Math/MathML"


def math(body: str) -> str:
    return f'<math xmlns="{MATHML}">{body}</math>'


def apply(op: str, *args: str) -> str:
    return f"<apply><{op}/>{''.join(args)}</apply>"


def ci(x: str) -> str:
    return f"<ci>{x}</ci>"


def cn(x: float) -> str:
    return f"<cn>{x}</cn>"


def algebraic(body: str, rid: str | None = None) -> str:
    attr = f' id="{rid}"' if rid else ""
    return f"<algebraicRule{attr}>{math(body)}</algebraicRule>"


def document(*, species: str = "", parameters: str = "", rules: str = "",
             reactions: str = "") -> str:
    def part(tag: str, body: str) -> str:
        return f"<{tag}>{body}</{tag}>" if body else ""

    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<sbml xmlns="{L3V2}" level="3" '
            'version="2"><model id="m"><listOfCompartments><compartment id="c" size="2" '
            'constant="true"/></listOfCompartments>' + part("listOfSpecies", species)
            + part("listOfParameters", parameters) + part("listOfRules", rules)
            + part("listOfReactions", reactions) + "</model></sbml>")


def species(sid: str, value: float) -> str:
    return (f'<species id="{sid}" compartment="c" initialConcentration="{value}" '
            'hasOnlySubstanceUnits="false" boundaryCondition="false" constant="false"/>')


def param(pid: str, value: float, constant: bool = True) -> str:
    return f'<parameter id="{pid}" value="{value}" constant="{str(constant).lower()}"/>'


# S1 decays (reactions drive it); S2 is free, so "0 = S1 + S2 - T" determines S2.
DECAY = ('<reaction id="decay" reversible="false"><listOfReactants><speciesReference '
         'species="S1" stoichiometry="1" constant="true"/></listOfReactants><kineticLaw>'
         + math(apply("times", ci("c"), ci("k"), ci("S1"))) + "</kineticLaw></reaction>")
CONSERVED = document(
    species=species("S1", 1.5) + species("S2", 0.0),
    parameters=param("T", 2.0) + param("k", 0.7),
    rules=algebraic(apply("minus", apply("plus", ci("S1"), ci("S2")), ci("T")), "total"),
    reactions=DECAY)


def test_a_rule_on_a_free_species_becomes_an_assignment_rule():
    model = kinabs.read_sbml_string(CONSERVED)
    assert set(model.assignment_rules) == {"S2"}
    assert sympy.simplify(model.assignment_rules["S2"] - (sym("T") - sym("S1"))) == 0
    # The rule holds at all times, t0 included (S2's initial 0 is overridden).
    times = np.array([0.0, 0.5, 1.0, 2.0])
    sim = kinabs.simulate(model, times, outputs=["S1", "S2"], backend="torch",
                          solver=kinabs.SolverOptions(rtol=1e-10, atol=1e-12)) \
        if importlib.util.find_spec("torchdiffeq") else None
    if sim is not None:
        s1 = 1.5 * np.exp(-0.7 * times)
        np.testing.assert_allclose(sim.values[0][:, 0], s1, rtol=1e-7)
        np.testing.assert_allclose(sim.values[0][:, 1], 2.0 - s1, rtol=1e-7)


def test_a_linear_system_of_rules_is_solved_together():
    rules = (algebraic(apply("minus", apply("plus", ci("x"), ci("y")), ci("total")), "sum")
             + algebraic(apply("minus", ci("x"), apply("times", cn(2), ci("y"))), "ratio"))
    text = document(parameters=param("total", 9.0) + param("x", 0.0, False)
                    + param("y", 0.0, False), rules=rules)
    model = kinabs.read_sbml_string(text)
    # <cn>2</cn> is the float 2.0, so the solution's coefficients are floats.
    got = {k: float(v.subs(sym("total"), 9.0)) for k, v in model.assignment_rules.items()}
    assert got == pytest.approx({"x": 6.0, "y": 3.0}, rel=1e-15)
    assert all(v.free_symbols == {sym("total")} for v in model.assignment_rules.values())


def test_an_assignment_rule_inside_the_rule_is_seen_through():
    # 0 = y - 3 with y := 2 x: the rule determines x (= 1.5), not the ruled y.
    rules = (f'<assignmentRule variable="y">{math(apply("times", cn(2), ci("x")))}'
             "</assignmentRule>" + algebraic(apply("minus", ci("y"), cn(3))))
    text = document(parameters=param("x", 0.0, False) + param("y", 0.0, False), rules=rules)
    model = kinabs.read_sbml_string(text)
    assert float(model.assignment_rules["x"]) == pytest.approx(1.5)


def test_several_roots_refuse_naming_the_rule():
    square = apply("minus", apply("power", ci("x"), cn(2)), cn(4))
    text = document(parameters=param("x", 1.0, False), rules=algebraic(square, "sq"))
    with pytest.raises(UnsupportedFeatureError, match=r"algebraic rule.*'sq'.*2 solutions"
                       ) as info:
        kinabs.read_sbml_string(text)
    assert info.value.element_id == "sq" and info.value.feature == "algebraic rule"


def test_under_determined_rules_refuse_naming_the_rule():
    rule = algebraic(apply("minus", apply("plus", ci("x"), ci("y")), cn(1)))
    text = document(parameters=param("x", 0.0, False) + param("y", 0.0, False),
                    rules=f'<assignmentRule variable="z">{math(cn(1))}</assignmentRule>'
                    + rule)
    text = text.replace("</listOfParameters>", param("z", 0.0, False) + "</listOfParameters>")
    with pytest.raises(UnsupportedFeatureError,
                       match=r"'algebraic rule #1'.*Under-determined.*'x', 'y'"):
        kinabs.read_sbml_string(text)


def test_a_rule_on_reaction_driven_species_names_the_rule():
    # Both species are changed by reactions: nothing is left for the rule to determine, an
    # over-determined model (a DAE) that libsbml calls invalid; the error names the rule.
    reaction = DECAY.replace("</listOfReactants>", '</listOfReactants><listOfProducts>'
                             '<speciesReference species="S2" stoichiometry="1" '
                             'constant="true"/></listOfProducts>')
    text = CONSERVED.replace(DECAY, reaction)
    with pytest.raises(SBMLError, match=r"algebraic rule 'total' over-determines.*10601.*"
                       r"'S1' is changed by reactions; 'S2' is changed by reactions"):
        kinabs.read_sbml_string(text)


def test_over_determined_rules_name_the_rules():
    rules = (algebraic(apply("minus", ci("x"), cn(1)), "one")
             + algebraic(apply("minus", ci("x"), cn(2)), "two"))
    text = document(parameters=param("x", 0.0, False), rules=rules)
    with pytest.raises(SBMLError, match=r"over-determines.*\['one', 'two'\] can determine "
                       r"only 'x'"):
        kinabs.read_sbml_string(text)


def test_no_closed_form_refuses_naming_the_rule():
    # 0 = x + sin(x) - 1 has one real root, but no closed form.
    body = apply("minus", apply("plus", ci("x"), apply("sin", ci("x"))), cn(1))
    text = document(parameters=param("x", 0.0, False), rules=algebraic(body, "implicit"))
    with pytest.raises(UnsupportedFeatureError, match=r"'implicit'.*closed form"):
        kinabs.read_sbml_string(text)


# -- SBML Test Suite cases that now pass -------------------------------------------------
@needs_suite
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", [
    "00039",  # a free species: S2 = k1 - S1, with a reaction driving S1
    "00539",  # a compartment
    "01350",  # comp-flattened, the rule uses a reaction's rate
    "01482",  # rateOf in the rule
    "01502",  # 36 rules at once
])
def test_suite_cases_pass(case, backend):
    result = run_case(read_index(SUITE)[case], SUITE, backend)
    assert result.outcome == "pass", result.line()
