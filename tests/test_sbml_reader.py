"""The SBML reader: every SBML feature kinabs reads, checked against an analytic answer on
every backend."""

from __future__ import annotations

import numpy as np
import pytest
import sympy

import kinabs
from kinabs import SolverOptions
from kinabs._model import AVOGADRO, TIME, sym
from tests._shared import SHARED

SOLVER = SolverOptions(rtol=1e-10, atol=1e-12)
TIMES = np.array([0.0, 0.5, 1.0, 2.0])
SUITE = SHARED / "sbml-test-suite" / "semantic"


def document(*, compartments: str = '<compartment id="c" size="2" constant="true"/>',
             species: str = "", parameters: str = "", reactions: str = "",
             rules: str = "", initial: str = "", functions: str = "",
             level: int = 3, version: int = 2) -> str:
    """A small SBML document from its lists' contents."""
    ns = (f"http://www.sbml.org/sbml/level{level}/version{version}"
          + ("/core" if level == 3 else ""))

    def part(tag: str, body: str) -> str:
        return f"<{tag}>{body}</{tag}>" if body else ""

    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<sbml xmlns="{ns}" level="{level}" '
            f'version="{version}"><model id="m">'
            + part("listOfFunctionDefinitions", functions)
            + part("listOfCompartments", compartments) + part("listOfSpecies", species)
            + part("listOfParameters", parameters)
            + part("listOfInitialAssignments", initial) + part("listOfRules", rules)
            + part("listOfReactions", reactions) + "</model></sbml>")


def math(body: str) -> str:
    return f'<math xmlns="http://www.w3.org/1998/Math/MathML">{body}</math>'


def species(sid: str, attrs: str = 'initialConcentration="2"', hosu: str = "false",
            compartment: str = "c") -> str:
    return (f'<species id="{sid}" compartment="{compartment}" {attrs} '
            f'hasOnlySubstanceUnits="{hosu}" boundaryCondition="false" constant="false"/>')


def param(pid: str, value: float | None, constant: bool = True) -> str:
    v = "" if value is None else f' value="{value}"'
    return f'<parameter id="{pid}"{v} constant="{str(constant).lower()}"/>'


def reaction(rid: str, law: str, reactants: str = "", products: str = "", locals_: str = "",
             extra: str = "") -> str:
    def refs(tag: str, text: str) -> str:
        if not text:
            return ""
        items = []
        for item in text.split():
            sp, _, st = item.partition(":")
            items.append(f'<speciesReference species="{sp}" stoichiometry="{st or 1}" '
                         'constant="true"/>')
        return f"<{tag}>{''.join(items)}</{tag}>"

    lp = f"<listOfLocalParameters>{locals_}</listOfLocalParameters>" if locals_ else ""
    return (f'<reaction id="{rid}" reversible="false"{extra}>'
            + refs("listOfReactants", reactants) + refs("listOfProducts", products)
            + f"<kineticLaw>{math(law)}{lp}</kineticLaw></reaction>")


def ci(name: str) -> str:
    return f"<ci>{name}</ci>"


def times(*args: str) -> str:
    return f"<apply><times/>{''.join(args)}</apply>"


def simulate(text: str, outputs, backend: str, times_=TIMES):
    model = kinabs.read_sbml_string(text)
    result = kinabs.simulate(model, times_, outputs=outputs, solver=SOLVER, backend=backend)
    return result.values[0]


# -- species units -----------------------------------------------------------------------
DECAY = reaction("R", times(ci("k"), ci("S"), ci("c")), reactants="S")


@pytest.mark.parametrize("attrs", ['initialAmount="4"', 'initialConcentration="2"'])
def test_decay_from_amount_or_concentration(attrs, backend):
    text = document(species=species("S", attrs), parameters=param("k", 0.5), reactions=DECAY)
    got = simulate(text, ["S", kinabs.amount("S")], backend)
    np.testing.assert_allclose(got[:, 0], 2 * np.exp(-0.5 * TIMES), rtol=1e-7)
    np.testing.assert_allclose(got[:, 1], 4 * np.exp(-0.5 * TIMES), rtol=1e-7)


def test_has_only_substance_units_species_is_an_amount_in_math(backend):
    law = times(ci("k"), ci("S"))  # S is the amount here: no compartment factor
    text = document(species=species("S", 'initialAmount="4"', hosu="true"),
                    parameters=param("k", 0.5), reactions=reaction("R", law, reactants="S"))
    model = kinabs.read_sbml_string(text)
    assert model.species["S"].has_only_substance_units
    got = simulate(text, [kinabs.amount("S"), kinabs.concentration("S")], backend)
    np.testing.assert_allclose(got[:, 0], 4 * np.exp(-0.5 * TIMES), rtol=1e-7)
    np.testing.assert_allclose(got[:, 1], 2 * np.exp(-0.5 * TIMES), rtol=1e-7)


def test_elements_are_read_with_their_attributes():
    text = document(
        compartments='<compartment id="c" size="2" constant="true" spatialDimensions="2"/>',
        species=species("S") + species("P", 'initialAmount="1"') + species("E")
        + '<species id="B" compartment="c" initialConcentration="1" hasOnlySubstanceUnits='
          '"false" boundaryCondition="true" constant="true"/>',
        parameters=param("k", 0.5) + param("v", None, constant=False),
        reactions=reaction("R", times(ci("k"), ci("S"), ci("E")), "S", "P",
                           extra=' name="the reaction"').replace(
            "<kineticLaw>", '<listOfModifiers><modifierSpeciesReference species="E"/>'
                            "</listOfModifiers><kineticLaw>"),
        rules=f'<assignmentRule variable="v">{math(times(ci("k"), "<cn>2</cn>"))}'
              "</assignmentRule>")
    m = kinabs.read_sbml_string(text, source="inline")
    assert m.id == "m" and m.source == "inline"
    assert m.compartments["c"] == kinabs.Compartment("c", 2.0, True, 2.0)
    assert m.species["P"].initial_amount == 1.0 and m.species["P"].initial_concentration is None
    assert m.species["B"].boundary_condition and m.species["B"].constant
    assert m.parameters["v"].value is None and not m.parameters["v"].constant
    r = m.reactions["R"]
    assert r.name == "the reaction" and not r.reversible and r.modifiers == ("E",)
    assert r.reactants == (kinabs.SpeciesReference("S", 1.0),)
    assert r.rate == sym("k") * sym("S") * sym("E")
    assert m.assignment_rules["v"] == 2.0 * sym("k")


# -- parameters, stoichiometry, functions --------------------------------------------------
def test_local_parameter_shadows_global(backend):
    law = times(ci("k"), ci("S"), ci("c"))
    text = document(species=species("S"), parameters=param("k", 100.0),
                    reactions=reaction("R", law, "S", locals_='<localParameter id="k" '
                                                              'value="0.5"/>'))
    m = kinabs.read_sbml_string(text)
    assert m.parameters["R.k"].reaction == "R" and m.parameters["R.k"].local_id == "k"
    assert m.reactions["R"].rate.free_symbols == {sym("R.k"), sym("S"), sym("c")}
    np.testing.assert_allclose(simulate(text, ["S"], backend)[:, 0], 2 * np.exp(-0.5 * TIMES),
                               rtol=1e-7)


def test_l2_local_parameter_and_any_id(backend):
    # L2 kinetic-law <parameter>; ids may look like anything SBML allows, e.g. "time" or "_x".
    law = times(ci("time"), ci("_x"), ci("c"))
    r = reaction("R", law, "_x").replace(
        "<listOfLocalParameters>", "").replace(
        "</kineticLaw>", '<listOfParameters><parameter id="time" value="0.5"/>'
                         "</listOfParameters></kineticLaw>")
    r = r.replace(' constant="true"', "")
    sp = '<species id="_x" compartment="c" initialConcentration="2"/>'
    text = document(compartments='<compartment id="c" size="2"/>', species=sp,
                    reactions=r, level=2, version=4)
    m = kinabs.read_sbml_string(text)
    assert "R.time" in m.parameters and sym("R.time") in m.reactions["R"].rate.free_symbols
    np.testing.assert_allclose(simulate(text, ["_x"], backend)[:, 0], 2 * np.exp(-0.5 * TIMES),
                               rtol=1e-7)


def test_non_integer_stoichiometry(backend):
    law = times(ci("k"), ci("A"), ci("c"))
    text = document(species=species("A") + species("B", 'initialConcentration="0"'),
                    parameters=param("k", 0.5), reactions=reaction("R", law, "A", "B:2.5"))
    got = simulate(text, ["A", "B"], backend)
    np.testing.assert_allclose(got[:, 1], 2.5 * (2 - got[:, 0]), rtol=1e-7)
    np.testing.assert_allclose(got[:, 0], 2 * np.exp(-0.5 * TIMES), rtol=1e-7)


def test_l3_missing_stoichiometry_defaults_to_one_and_ref_ids_are_read(backend):
    r = reaction("R", times(ci("k"), ci("A"), ci("c")), "A", "B").replace(
        'species="B" stoichiometry="1"', 'species="B" id="sref"')
    text = document(species=species("A") + species("B", 'initialConcentration="0"'),
                    parameters=param("k", 0.5), reactions=r)
    m = kinabs.read_sbml_string(text)
    assert m.reactions["R"].products == (kinabs.SpeciesReference("B", 1.0, "sref"),)
    got = simulate(text, ["A", "B"], backend)
    np.testing.assert_allclose(got[:, 0] + got[:, 1], 2.0, rtol=1e-8)


def test_stoichiometry_set_by_initial_assignment_on_a_reference_id(backend):
    r = reaction("R", times(ci("k"), ci("A"), ci("c")), "A", "B").replace(
        'species="B" stoichiometry="1"', 'species="B" id="sref"')
    text = document(species=species("A") + species("B", 'initialConcentration="0"'),
                    parameters=param("k", 0.5), reactions=r,
                    initial=f'<initialAssignment symbol="sref">{math("<cn>3</cn>")}'
                            "</initialAssignment>")
    got = simulate(text, ["A", "B"], backend)
    np.testing.assert_allclose(got[:, 1], 3 * (2 - got[:, 0]), rtol=1e-7)


def test_nested_function_definitions_used_before_they_are_defined(backend):
    f = ("<functionDefinition id=\"f\">" + math(
        "<lambda><bvar><ci>a</ci></bvar><bvar><ci>b</ci></bvar>"
        "<apply><ci>g</ci><apply><times/><ci>a</ci><ci>b</ci></apply></apply></lambda>")
         + "</functionDefinition>")
    g = ("<functionDefinition id=\"g\">" + math(
        "<lambda><bvar><ci>a</ci></bvar><apply><divide/><ci>a</ci><cn>2</cn></apply></lambda>")
         + "</functionDefinition>")
    law = f"<apply><ci>f</ci>{ci('k')}<apply><times/>{ci('S')}{ci('c')}</apply></apply>"
    text = document(functions=f + g, species=species("S"), parameters=param("k", 1.0),
                    reactions=reaction("R", law, "S"))
    m = kinabs.read_sbml_string(text)
    assert m.reactions["R"].rate == sympy.Float(0.5) * sym("k") * sym("S") * sym("c")
    np.testing.assert_allclose(simulate(text, ["S"], backend)[:, 0], 2 * np.exp(-0.5 * TIMES),
                               rtol=1e-7)


# -- rules and initial assignments -----------------------------------------------------------
def test_assignment_rules_in_reverse_dependency_order(backend):
    rules = (f'<assignmentRule variable="y">{math(times("<cn>2</cn>", ci("z")))}</assignmentRule>'
             f'<assignmentRule variable="z">{math(times("<cn>3</cn>", ci("p")))}</assignmentRule>')
    text = document(parameters=param("p", 1.5) + param("y", None, False)
                    + param("z", None, False), rules=rules)
    np.testing.assert_allclose(simulate(text, ["y", "z"], backend)[0], [9.0, 4.5])


def csymbol(name: str) -> str:
    url = f"http://www.sbml.org/sbml/symbols/{name}"
    return f'<csymbol encoding="text" definitionURL="{url}">{name}</csymbol>'


def test_initial_assignments_in_reverse_order_and_csymbols(backend):
    initial = (f'<initialAssignment symbol="a">{math(times("<cn>2</cn>", ci("b")))}'
               "</initialAssignment>"
               f'<initialAssignment symbol="b">{math(csymbol("avogadro"))}'
               "</initialAssignment>")
    rules = (f'<assignmentRule variable="y">{math(times("<cn>2</cn>", csymbol("time")))}'
             "</assignmentRule>")
    text = document(parameters=param("a", 0) + param("b", 0) + param("y", None, False),
                    initial=initial, rules=rules)
    m = kinabs.read_sbml_string(text)
    assert m.assignment_rules["y"] == 2.0 * TIME
    got = simulate(text, ["a", "b", "y"], backend)
    np.testing.assert_allclose(got[:, 0], 2 * AVOGADRO)
    np.testing.assert_allclose(got[:, 2], 2 * TIMES)


def test_rate_rules_on_a_parameter_and_a_compartment_dilute_species(backend):
    rules = (f'<rateRule variable="p">{math("<cn>2</cn>")}</rateRule>'
             f'<rateRule variable="V">{math("<cn>1</cn>")}</rateRule>')
    # S is changed by a reaction (of rate 0), so its amount is conserved while V grows.
    text = document(compartments='<compartment id="V" size="1" constant="false"/>',
                    species=species("S", 'initialConcentration="1"', compartment="V"),
                    parameters=param("p", 1.0, constant=False),
                    reactions=reaction("R", "<cn>0</cn>", "S"), rules=rules)
    got = simulate(text, ["p", "V", "S", kinabs.amount("S")], backend)
    np.testing.assert_allclose(got[:, 0], 1 + 2 * TIMES, rtol=1e-8)
    np.testing.assert_allclose(got[:, 1], 1 + TIMES, rtol=1e-8)
    np.testing.assert_allclose(got[:, 2], 1 / (1 + TIMES), rtol=1e-7)
    np.testing.assert_allclose(got[:, 3], 1.0, rtol=1e-8)


def test_piecewise_in_a_rate_rule(backend):
    t = csymbol("time")
    pw = (f"<piecewise><piece><cn>1</cn><apply><lt/>{t}<cn>1</cn></apply></piece>"
          "<otherwise><cn>0</cn></otherwise></piecewise>")
    text = document(parameters=param("p", 0.0, constant=False),
                    rules=f'<rateRule variable="p">{math(pw)}</rateRule>')
    got = simulate(text, ["p"], backend, np.array([0.0, 0.5, 2.0, 3.0]))
    np.testing.assert_allclose(got[:, 0], [0.0, 0.5, 1.0, 1.0], atol=1e-6)


def test_species_conversion_factor_and_model_conversion_factor(backend):
    law = times(ci("k"), ci("S"), ci("c"))
    sp = species("S").replace("/>", ' conversionFactor="cf"/>')
    text = document(species=sp + species("P", 'initialConcentration="0"'),
                    parameters=param("k", 0.5) + param("cf", 2.0) + param("mcf", 3.0),
                    reactions=reaction("R", law, "S", "P"))
    text = text.replace('<model id="m">', '<model id="m" conversionFactor="mcf">')
    m = kinabs.read_sbml_string(text)
    assert m.conversion_factor == "mcf" and m.species["S"].conversion_factor == "cf"
    got = simulate(text, ["S", "P"], backend)
    np.testing.assert_allclose(got[:, 0], 2 * np.exp(-1.0 * TIMES), rtol=1e-7)


def test_l2_stoichiometry_math_becomes_a_rule_on_the_reference(backend):
    r = reaction("R", times(ci("k"), ci("A"), ci("c")), "A", "B").replace(
        '<speciesReference species="B" stoichiometry="1" constant="true"/>',
        f'<speciesReference species="B"><stoichiometryMath>{math("<cn>3</cn>")}'
        "</stoichiometryMath></speciesReference>").replace(' constant="true"', "")
    sp = ('<species id="A" compartment="c" initialConcentration="2"/>'
          '<species id="B" compartment="c" initialConcentration="0"/>')
    text = document(compartments='<compartment id="c" size="2"/>', species=sp,
                    parameters='<parameter id="k" value="0.5"/>', reactions=r,
                    level=2, version=4)
    m = kinabs.read_sbml_string(text)
    (ref,) = m.reactions["R"].products
    assert float(m.assignment_rules[ref.id]) == 3.0
    got = simulate(text, ["A", "B"], backend)
    np.testing.assert_allclose(got[:, 1], 3 * (2 - got[:, 0]), rtol=1e-7)


def test_example_model_loads():
    m = kinabs.load_sbml(kinabs.example_model_path())
    assert m.source == str(kinabs.example_model_path())
    assert set(m.reactions) == {"PDH", "PSA", "PSP"}


# -- SBML test suite: a few core cases load and match their results -----------------------
SUITE_CASES = {
    "00001": "basic reaction", "00003": "non-unity stoichiometry",
    "00025": "function definition", "00027": "local parameters, initial assignment",
    "00029": "assignment rule", "00031": "rate rule", "00051": "non-unity compartment",
    "00068": "stoichiometryMath", "00060": "hasOnlySubstanceUnits",
    "00851": "csymbol time", "00960": "csymbol avogadro", "00975": "conversion factors",
    "01282": "BoolNumericSwap", "01272": "L3V2 MathML", "01822": "comp declared, unused",
}


@pytest.mark.skipif(not SUITE.is_dir(), reason="SBML test suite not available")
@pytest.mark.parametrize("case", sorted(SUITE_CASES))
def test_sbml_test_suite_cases_load(case):
    files = sorted((SUITE / case).glob(f"{case}-sbml-l*v*.xml"))
    assert files
    model = kinabs.load_sbml(files[-1])  # the highest level/version
    assert model.species or model.parameters
    for expr in [r.rate for r in model.reactions.values()] + list(
            model.assignment_rules.values()):
        assert not expr.has(sympy.zoo)


@pytest.mark.skipif(not SUITE.is_dir(), reason="SBML test suite not available")
@pytest.mark.parametrize("case", ["00001", "00025", "00027"])
def test_sbml_test_suite_results(case, backend):
    import pandas as pd

    settings = dict(line.split(":", 1) for line in
                    (SUITE / case / f"{case}-settings.txt").read_text().splitlines()
                    if ":" in line)
    expected = pd.read_csv(SUITE / case / f"{case}-results.csv")
    names = [v.strip() for v in settings["variables"].split(",")]
    amounts = {v.strip() for v in settings.get("amount", "").split(",") if v.strip()}
    model = kinabs.load_sbml(SUITE / case / f"{case}-sbml-l3v2.xml")
    outputs = [kinabs.amount(n) if n in amounts else n for n in names]
    got = kinabs.simulate(model, expected["time"].to_numpy(), outputs=outputs,
                          solver=SOLVER, backend=backend).values[0]
    np.testing.assert_allclose(got, expected[names].to_numpy(),
                               rtol=float(settings["relative"]),
                               atol=float(settings["absolute"]))
