"""Bad input and unsupported features: one clear kinabs error each, naming the element."""

from __future__ import annotations

import pytest

import kinabs
from kinabs import ModelError, SBMLError, UnsupportedFeatureError
from tests._shared import SHARED

L3V2 = "http://www.sbml.org/sbml/level3/version2/core"
MATHML = "http://www.w3.org/1998/Math/MathML"
SUITE = SHARED / "sbml-test-suite" / "semantic"


def math(body: str) -> str:
    return f'<math xmlns="{MATHML}">{body}</math>'


def model(body: str, *, head: str = f'<sbml xmlns="{L3V2}" level="3" version="2">') -> str:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n{head}<model id="m">'
            '<listOfCompartments><compartment id="c" size="1" constant="true"/>'
            f"</listOfCompartments>{body}</model></sbml>")


SPECIES = ('<listOfSpecies><species id="S" compartment="c" initialConcentration="1" '
           'hasOnlySubstanceUnits="false" boundaryCondition="false" constant="false"/>'
           "</listOfSpecies>")
PARAMS = '<listOfParameters><parameter id="k" value="1" constant="false"/></listOfParameters>'


def reaction(attrs: str = "", law: str = "<ci>k</ci>") -> str:
    kl = f"<kineticLaw>{math(law)}</kineticLaw>" if law else ""
    return (f'<listOfReactions><reaction id="R1" reversible="false"{attrs}>'
            '<listOfReactants><speciesReference species="S" stoichiometry="1" '
            f'constant="true"/></listOfReactants>{kl}</reaction></listOfReactions>')


# -- bad input -----------------------------------------------------------------------------
def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.xml"
    with pytest.raises(SBMLError, match="nope.xml.*does not exist"):
        kinabs.load_sbml(path)
    with pytest.raises(SBMLError, match="is a directory"):
        kinabs.load_sbml(tmp_path)


def test_malformed_xml(tmp_path):
    path = tmp_path / "broken.xml"
    path.write_text(model(SPECIES)[:-20])
    with pytest.raises(SBMLError, match="not well-formed XML") as info:
        kinabs.load_sbml(path)
    assert "broken.xml" in str(info.value) and info.value.messages


def test_csv_file_is_not_sbml(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("time,S\n0,1\n1,2\n")
    with pytest.raises(SBMLError, match="is not XML.*a CSV"):
        kinabs.load_sbml(path)


def test_plain_xml_is_not_sbml():
    with pytest.raises(SBMLError, match="not an SBML document"):
        kinabs.read_sbml_string('<?xml version="1.0"?><root><a/></root>')


def test_sbml_without_model():
    with pytest.raises(SBMLError, match="without a <model>"):
        kinabs.read_sbml_string(f'<sbml xmlns="{L3V2}" level="3" version="2"></sbml>')


def test_invalid_sbml_reports_libsbml_messages_with_lines():
    bad = model(SPECIES.replace('compartment="c"', 'compartment="nowhere"'))
    with pytest.raises(SBMLError, match="not valid SBML") as info:
        kinabs.read_sbml_string(bad, source="bad.xml")
    assert "bad.xml" in info.value.summary
    assert any(m.startswith("line ") and "nowhere" in m for m in info.value.messages)


def test_unknown_id_in_math_is_reported():
    text = model(SPECIES + reaction(law="<apply><times/><ci>k</ci><ci>ghost</ci></apply>")
                 .replace("<listOfReactions>", PARAMS + "<listOfReactions>"))
    with pytest.raises((SBMLError, ModelError), match="ghost"):
        kinabs.read_sbml_string(text)


def test_warnings_do_not_fail():
    # No units anywhere: libsbml only warns (and units checks are off anyway).
    m = kinabs.read_sbml_string(model(SPECIES + PARAMS + reaction()))
    assert set(m.reactions) == {"R1"}


def test_species_missing_from_modifiers_is_only_a_warning():
    law = "<apply><times/><ci>k</ci><ci>E</ci></apply>"
    species = SPECIES.replace("</listOfSpecies>", '<species id="E" compartment="c" '
                              'initialConcentration="1"/></listOfSpecies>')
    text = (model(species.replace(' hasOnlySubstanceUnits="false" boundaryCondition="false" '
                                  'constant="false"', "") + PARAMS.replace(' constant="false"', "")
                  + reaction(law=law).replace(' constant="true"', ""),
                  head='<sbml xmlns="http://www.sbml.org/sbml/level2/version4" level="2" '
                       'version="4">')
            .replace(' constant="true"', ""))
    with pytest.warns(UserWarning, match="modifiers"):
        m = kinabs.read_sbml_string(text)
    assert m.reactions["R1"].modifiers == ()


def test_string_reader_wants_text():
    with pytest.raises(TypeError, match="load_sbml"):
        kinabs.read_sbml_string(b"<sbml/>")


# -- unsupported features ----------------------------------------------------------------
def test_event_with_an_equality_trigger():
    # events are read (tests/test_events.py); a trigger "S == 2" is refused when lowered,
    # naming the event: a solver almost never meets an equality exactly
    trigger = math("<apply><eq/><ci>S</ci><cn>2</cn></apply>")
    event = (f'<listOfEvents><event id="E1" useValuesFromTriggerTime="true"><trigger '
             f'initialValue="true" persistent="true">{trigger}</trigger>'
             '<listOfEventAssignments><eventAssignment variable="k">'
             f'{math("<cn>2</cn>")}</eventAssignment></listOfEventAssignments></event>'
             "</listOfEvents>")
    m = kinabs.read_sbml_string(model(SPECIES + PARAMS + reaction() + event))
    assert list(m.events) == ["E1"]
    with pytest.raises(UnsupportedFeatureError, match="Equality.*'E1'") as info:
        kinabs.lower(m)
    assert info.value.element_id == "E1"


def test_algebraic_rule():
    # 0 = k^2 - 1 has two roots: no unique assignment rule (tests/test_sbml_algebraic.py).
    square = "<apply><minus/><apply><power/><ci>k</ci><cn>2</cn></apply><cn>1</cn></apply>"
    rules = f'<listOfRules><algebraicRule id="alg">{math(square)}</algebraicRule></listOfRules>'
    with pytest.raises(UnsupportedFeatureError, match="algebraic rule.*'alg'"):
        kinabs.read_sbml_string(model(PARAMS + rules))


def test_delay():
    delay = ('<apply><csymbol encoding="text" definitionURL="http://www.sbml.org/sbml/'
             'symbols/delay">delay</csymbol><ci>S</ci><cn>1</cn></apply>')
    with pytest.raises(UnsupportedFeatureError, match="delay.*'R1'"):
        kinabs.read_sbml_string(model(SPECIES + PARAMS + reaction(law=delay)))


def test_fast_reaction():
    head = '<sbml xmlns="http://www.sbml.org/sbml/level3/version1/core" level="3" version="1">'
    text = model(SPECIES + PARAMS + reaction(' fast="true"'), head=head)
    with pytest.raises(UnsupportedFeatureError, match="fast reaction.*'R1'"):
        kinabs.read_sbml_string(text)


def test_reaction_without_kinetic_law():
    with pytest.raises(UnsupportedFeatureError, match="without kinetic law.*'R1'"):
        kinabs.read_sbml_string(model(SPECIES + PARAMS + reaction(law="")))


def test_constraint_warns():
    positive = math("<apply><gt/><ci>k</ci><cn>0</cn></apply>")
    constraint = f"<listOfConstraints><constraint>{positive}</constraint></listOfConstraints>"
    with pytest.warns(UserWarning, match="constraint"):
        kinabs.read_sbml_string(model(PARAMS + constraint))


COMP = "http://www.sbml.org/sbml/level3/version1/comp/version1"
FBC = "http://www.sbml.org/sbml/level3/version1/fbc/version2"
L3V1 = "http://www.sbml.org/sbml/level3/version1/core"


def test_comp_package_in_use_is_flattened():
    # comp models are flattened by libsbml (tests/test_sbml_comp.py has the details).
    head = (f'<sbml xmlns="{L3V1}" xmlns:comp="{COMP}" level="3" version="1" '
            'comp:required="true">')
    sub = ('<comp:listOfSubmodels><comp:submodel comp:id="sub" comp:modelRef="inner"/>'
           "</comp:listOfSubmodels>")
    text = model(sub, head=head).replace(
        "</model>", "</model><comp:listOfModelDefinitions><comp:modelDefinition id="
                    '"inner"><listOfParameters><parameter id="k" value="2" constant="true"/>'
                    "</listOfParameters></comp:modelDefinition></comp:listOfModelDefinitions>")
    assert kinabs.read_sbml_string(text).parameters["sub__k"].value == 2.0


def test_fbc_package_in_use():
    head = (f'<sbml xmlns="{L3V1}" xmlns:fbc="{FBC}" level="3" version="1" '
            'fbc:required="false">')
    obj = ('<fbc:listOfObjectives fbc:activeObjective="obj"><fbc:objective fbc:id="obj" '
           'fbc:type="maximize"><fbc:listOfFluxObjectives><fbc:fluxObjective '
           'fbc:reaction="R1" fbc:coefficient="1"/></fbc:listOfFluxObjectives>'
           "</fbc:objective></fbc:listOfObjectives>")
    text = model(SPECIES + PARAMS + reaction(' fast="false"') + obj, head=head).replace(
        '<model id="m">', '<model id="m" fbc:strict="false">')
    with pytest.raises(UnsupportedFeatureError, match="package 'fbc'"):
        kinabs.read_sbml_string(text)


@pytest.mark.skipif(not SUITE.is_dir(), reason="SBML test suite not available")
@pytest.mark.parametrize("case", ["01822", "01823"])
def test_comp_declared_but_unused_is_accepted(case):
    assert kinabs.load_sbml(SUITE / case / f"{case}-sbml-l3v2.xml") is not None
