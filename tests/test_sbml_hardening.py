"""Hostile or damaged SBML: deep nesting, DTDs, libsbml's own messages first, names that
must survive export, and NaN/INF values the simulation would use."""

from __future__ import annotations

import bz2
import gzip
import math
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kinabs
from kinabs import Compartment, Model, ModelError, Parameter, Reaction, SBMLError, Species
from kinabs import SpeciesReference as Ref
from kinabs._model import sym
from kinabs.sbml._xmlcheck import MAX_XML_DEPTH, check_xml_text
from tests._shared import SHARED
from tests.test_sbml_errors import PARAMS, SPECIES, model, reaction
from tests.test_sbml_errors import math as mathml

SUITE = SHARED / "sbml-test-suite" / "semantic"


def deep_model(apply_levels: int, *, broken: bool = False) -> str:
    """A valid model whose one assignment rule nests ``apply_levels`` <apply> elements."""
    law = "<apply><minus/>" * apply_levels + "<ci>k</ci>" + "</apply>" * apply_levels
    rules = (f'<listOfRules><assignmentRule variable="y">{mathml(law)}</assignmentRule>'
             "</listOfRules>")
    params = ('<listOfParameters><parameter id="k" value="1" constant="true"/>'
              '<parameter id="y" constant="false"/></listOfParameters>')
    text = model(params + "\n" + rules)
    return text[:-20] if broken else text


def _xml_depth_of_rule(apply_levels: int) -> int:
    # sbml > model > listOfRules > assignmentRule > math > apply... (minus/ci one deeper)
    return 5 + apply_levels + 1


# -- 1. depth: refused before libsbml, which segfaults ---------------------------------------
def test_crash_depth_is_refused_with_a_message_in_a_subprocess(tmp_path):
    # 7,000 levels segfaulted libsbml (exit 139) before the depth check; a subprocess keeps
    # a regression from killing the test run.
    path = tmp_path / "deep.xml"
    path.write_text(deep_model(7000))
    code = textwrap.dedent(f"""
        import sys, kinabs
        for read in (lambda: kinabs.load_sbml({str(path)!r}),
                     lambda: kinabs.read_sbml_string(open({str(path)!r}).read())):
            try:
                read()
            except kinabs.SBMLError as e:
                print(e.summary)
            else:
                sys.exit("read without error")
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert f"nested {_xml_depth_of_rule(7000)} deep" in line
        assert f"at most {MAX_XML_DEPTH} levels" in line and "at line 3" in line
    assert "deep.xml" in lines[0]


def test_depth_limit_is_exact():
    check_xml_text("<a>" * MAX_XML_DEPTH + "</a>" * MAX_XML_DEPTH, "ok.xml")
    over = MAX_XML_DEPTH + 1
    with pytest.raises(SBMLError, match=f"nested {over} deep.*<a> at line 1.*at most "
                                        f"{MAX_XML_DEPTH}"):
        check_xml_text("<a>" * over + "</a>" * over, "deep.xml")


def test_deep_math_is_refused_in_process_well_below_the_crash_depth(tmp_path):
    text = deep_model(400)
    with pytest.raises(SBMLError, match=f"nested {_xml_depth_of_rule(400)} deep"):
        kinabs.read_sbml_string(text, source="deep.xml")
    path = tmp_path / "deep.xml"
    path.write_text(text)
    with pytest.raises(SBMLError, match="deep.xml.*nested"):
        kinabs.load_sbml(path)


def test_math_just_under_the_limit_still_loads():
    levels = MAX_XML_DEPTH - 6
    m = kinabs.read_sbml_string(deep_model(levels))
    assert m.assignment_rules["y"] == sym("k")  # an even number of minus signs


def test_deep_annotation_is_refused_too():
    annotation = "<annotation>" + "<x>" * 1000 + "</x>" * 1000 + "</annotation>"
    text = model(PARAMS).replace('<model id="m">', f'<model id="m">{annotation}')
    with pytest.raises(SBMLError, match="nested 1003 deep"):
        kinabs.read_sbml_string(text)


def test_deep_and_truncated_reports_the_depth():
    with pytest.raises(SBMLError, match=f"nested {_xml_depth_of_rule(400)} deep"):
        kinabs.read_sbml_string(deep_model(400, broken=True))


@pytest.mark.parametrize("suffix, compress", [
    (".xml.gz", gzip.compress), (".xml.bz2", bz2.compress), (".zip", None)])
def test_compressed_files_are_checked_and_still_load(tmp_path, suffix, compress):
    def write(path, text):
        if compress is None:
            with zipfile.ZipFile(path, "w") as z:
                z.writestr("model.xml", text)
        else:
            path.write_bytes(compress(text.encode()))

    good, bad = tmp_path / f"good{suffix}", tmp_path / f"bad{suffix}"
    write(good, kinabs.example_model_path().read_text())
    write(bad, deep_model(400))
    assert set(kinabs.load_sbml(good).reactions) == {"PDH", "PSA", "PSP"}
    with pytest.raises(SBMLError, match=f"nested {_xml_depth_of_rule(400)} deep"):
        kinabs.load_sbml(bad)


def test_a_compression_bomb_is_refused_before_libsbml_reads_it(tmp_path, monkeypatch):
    """3 MiB of whitespace inside a valid model compress to a few KiB; with the limit at
    2 MiB the file is refused, naming the limit and how to raise it; at 4 MiB it loads."""
    text = kinabs.example_model_path().read_text()
    head, tail = text.split("<model", 1)
    path = tmp_path / "bomb.xml.gz"
    path.write_bytes(gzip.compress((head + " " * (3 << 20) + "<model" + tail).encode()))
    assert path.stat().st_size < 64 << 10
    monkeypatch.setenv("KINABS_MAX_SBML_MB", "2")
    with pytest.raises(SBMLError, match=r"more than 2 MiB of SBML text after decompression.*"
                                        r"KINABS_MAX_SBML_MB"):
        kinabs.load_sbml(path)
    monkeypatch.setenv("KINABS_MAX_SBML_MB", "4")
    assert set(kinabs.load_sbml(path).reactions) == {"PDH", "PSA", "PSP"}
    monkeypatch.setenv("KINABS_MAX_SBML_MB", "lots")
    with pytest.raises(SBMLError, match="KINABS_MAX_SBML_MB must be a positive number"):
        kinabs.load_sbml(path)


def test_corrupt_gzip_is_an_sbml_error(tmp_path):
    path = tmp_path / "m.xml.gz"
    path.write_bytes(gzip.compress(b"<sbml/>")[:-12] + b"garbage!")
    with pytest.raises(SBMLError, match="cannot read SBML file"):
        kinabs.load_sbml(path)


@pytest.mark.parametrize("doctype", [
    '<!DOCTYPE sbml [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>',
    '<!DOCTYPE sbml [<!ENTITY x SYSTEM "file:///etc/hostname">]>',
    '<!DOCTYPE sbml SYSTEM "http://example.invalid/sbml.dtd">',
], ids=["entity-bomb", "xxe", "external-dtd"])
def test_doctype_is_refused(tmp_path, doctype):
    text = model(PARAMS).replace("?>\n", f"?>\n{doctype}\n").replace(
        '<model id="m">', '<model id="m" name="&b;">' if "ENTITY a" in doctype else
        '<model id="m">')
    with pytest.raises(SBMLError, match="line 2 has a <!DOCTYPE sbml.*Delete"):
        kinabs.read_sbml_string(text)
    path = tmp_path / "dtd.xml"
    path.write_text(text)
    with pytest.raises(SBMLError, match="dtd.xml.*DOCTYPE"):
        kinabs.load_sbml(path)


def test_lone_surrogate_in_text():
    with pytest.raises(SBMLError, match="surrogate"):
        kinabs.read_sbml_string(model(PARAMS).replace('id="m"', 'id="m" name="\ud800"'))


# -- 2. libsbml's own message leads; "a CSV?" only for text that is not XML ----------------
def test_libsbml_message_is_the_headline():
    text = model(SPECIES + PARAMS + reaction()).replace('stoichiometry="1"',
                                                        'stoichiometry="1e400"')
    with pytest.raises(SBMLError) as info:
        kinabs.read_sbml_string(text, source="big.xml")
    summary = info.value.summary
    assert summary.startswith("'big.xml' is not valid SBML: libsbml says line 2: "
                              "[Error 1016] Data type mismatch")
    assert "stoichiometry" in summary and "CSV" not in summary
    assert "well-formed" not in summary


def test_truncated_xml_names_the_line_and_does_not_guess_csv():
    with pytest.raises(SBMLError, match=r"not well-formed XML \(line 2, column") as info:
        kinabs.read_sbml_string(model(SPECIES)[:-20])
    assert "CSV" not in info.value.summary and info.value.messages


def test_csv_is_called_not_xml(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("time,S\n0,1\n1,2\n")
    with pytest.raises(SBMLError, match=r"data.csv' is not XML \(line 1.*a CSV"):
        kinabs.load_sbml(path)


# -- 3. names survive write -> read ---------------------------------------------------------
def named_model(name: str) -> Model:
    return Model(
        id="m", name=name, compartments={"c": Compartment("c", 1.0, name=name)},
        species={"S": Species("S", "c", initial_concentration=1.0, name=name)},
        parameters={"k": Parameter("k", 2.0, name=name),
                    "R.kl": Parameter("R.kl", 3.0, reaction="R", name=name)},
        reactions={"R": Reaction("R", sym("k") * sym("R.kl") * sym("S"), (Ref("S"),),
                                 name=name)})


def names_of(m: Model) -> list[str]:
    return [m.name, m.compartments["c"].name, m.species["S"].name, m.parameters["k"].name,
            m.parameters["R.kl"].name, m.reactions["R"].name]


@pytest.mark.parametrize("name", ["line one\nline two", "A &amp; B", "a&#10;b", "x&y",
                                  "tab\there", "cr\rlf\r\n", "<b>\"q\" 'a'</b>", "]]>",
                                  " spaced  ", "ATP⁺ 😀"])
def test_names_round_trip(name, tmp_path):
    model_ = named_model(name)
    path = tmp_path / "named.xml"
    kinabs.write_sbml(model_, path)
    assert names_of(kinabs.load_sbml(path)) == [name] * 6


def test_name_that_aborted_libsbml_round_trips_in_a_subprocess():
    # libsbml aborts the whole process (std::out_of_range) writing a name with "&#"; names
    # no longer reach libsbml's writer, and a subprocess keeps a regression contained.
    code = textwrap.dedent("""
        import kinabs
        from tests.test_sbml_hardening import named_model, names_of
        for name in ("&#", "a&#", "&#x"):
            text = kinabs.sbml_string(named_model(name))
            assert names_of(kinabs.read_sbml_string(text)) == [name] * 6, name
        print("ok")
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode,
                                                                  done.stderr[-2000:])


# XML 1.0 characters (no control characters but tab, newline and carriage return, no
# surrogates, no U+FFFE/U+FFFF).
XML_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\ufffe\uffff")
                   .filter(lambda c: c in "\t\n\r" or ord(c) >= 0x20)
                   | st.sampled_from("&<>\"'\n\r\t;#"), max_size=30)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(name=XML_TEXT)
def test_any_name_round_trips(name):
    again = kinabs.read_sbml_string(kinabs.sbml_string(named_model(name)))
    assert names_of(again) == [name] * 6


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x1f", "\ufffe", "\ud800"])
def test_name_xml_cannot_hold_is_a_model_error(char):
    with pytest.raises(ModelError, match=r"name of parameter 'k' holds the character U\+"):
        kinabs.sbml_string(Model(id="m", parameters={"k": Parameter("k", 1.0,
                                                                    name=f"a{char}b")}))


# -- 4. NaN/INF values the simulation would use --------------------------------------------
@pytest.mark.parametrize("value", ["NaN", "INF", "-INF"])
@pytest.mark.parametrize("where, old, new, message", [
    ("compartment size", 'size="1"', 'size="{v}"', "compartment 'c' has size"),
    ("species initialConcentration", 'initialConcentration="1"',
     'initialConcentration="{v}"', "species 'S' has initialConcentration"),
    ("species initialAmount", 'initialConcentration="1"', 'initialAmount="{v}"',
     "species 'S' has initialAmount"),
    ("parameter used in a rate", '<parameter id="k" value="1"', '<parameter id="k" value="{v}"',
     "parameter 'k' has value"),
    ("stoichiometry", 'stoichiometry="1"', 'stoichiometry="{v}"',
     "the species reference to 'S' in reaction 'R1' has stoichiometry"),
])
def test_nonfinite_value_is_refused_naming_the_element(where, old, new, message, value):
    text = model(SPECIES + PARAMS + reaction())
    assert old in text
    text = text.replace(old, new.format(v=value), 1)
    with pytest.raises(SBMLError) as info:
        kinabs.read_sbml_string(text, source="bad.xml")
    summary = info.value.summary
    assert summary.startswith(f"'bad.xml': line 2: {message}=\"{value}\"")
    assert "finite" in summary


def test_local_parameter_and_all_offenders_are_listed():
    law = "<apply><times/><ci>k</ci><ci>kl</ci></apply>"
    local = ('<listOfLocalParameters><localParameter id="kl" value="NaN"/>'
             "</listOfLocalParameters>")
    text = model(SPECIES + PARAMS.replace('value="1"', 'value="INF"')
                 + reaction(law=law).replace("<kineticLaw>", f"<kineticLaw>{local}"))
    with pytest.raises(SBMLError, match="2 such values") as info:
        kinabs.read_sbml_string(text)
    assert any("local parameter 'kl' of reaction 'R1' has value=\"NaN\"" in m
               for m in info.value.messages)
    assert any("parameter 'k' has value=\"INF\"" in m for m in info.value.messages)


def test_nonfinite_values_nothing_uses_or_math_replaces_are_kept():
    # An unused parameter (as in SBML Test Suite case 00951), and values an initial
    # assignment or an assignment rule replaces.
    params = ('<listOfParameters><parameter id="k" value="1" constant="true"/>'
              '<parameter id="unused" value="NaN" constant="true"/>'
              '<parameter id="ruled" value="INF" constant="false"/></listOfParameters>')
    ia = ('<listOfInitialAssignments><initialAssignment symbol="S">'
          f'{mathml("<cn>2</cn>")}</initialAssignment><initialAssignment symbol="st">'
          f'{mathml("<cn>1</cn>")}</initialAssignment></listOfInitialAssignments>'
          f'<listOfRules><assignmentRule variable="ruled">{mathml("<ci>k</ci>")}'
          "</assignmentRule></listOfRules>")
    law = "<apply><times/><ci>k</ci><ci>ruled</ci></apply>"
    text = model(SPECIES.replace('initialConcentration="1"', 'initialConcentration="NaN"')
                 + params + ia + reaction(law=law).replace(
                     'stoichiometry="1"', 'id="st" stoichiometry="NaN"')
                 .replace('constant="true"/></listOfReactants>',
                          'constant="false"/></listOfReactants>'))
    m = kinabs.read_sbml_string(text)
    assert math.isnan(m.parameters["unused"].value)
    assert math.isnan(m.species["S"].initial_concentration)


@pytest.mark.skipif(not SUITE.is_dir(), reason="SBML test suite not available")
def test_suite_case_with_unused_infinite_parameters_still_loads():
    m = kinabs.load_sbml(SUITE / "00951" / "00951-sbml-l3v2.xml")
    assert m.parameters["P"].value == math.inf
