"""Hierarchical models (SBML comp): flattened by libsbml before reading, external model files
found beside the file that names them and checked like the main file (kinabs.sbml._comp)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

import kinabs
from kinabs import SBMLError, UnsupportedFeatureError

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from conformance._suite_data import default_suite_dir, read_index  # noqa: E402
from conformance.sbml_test_suite import run_case  # noqa: E402

SUITE = default_suite_dir()
CASES = SUITE / "semantic"
needs_suite = pytest.mark.skipif(not (SUITE / "cases-index.tsv").exists(),
                                 reason=f"no SBML Test Suite at {SUITE}")
BACKENDS = ["scipy", pytest.param("torch", marks=pytest.mark.skipif(
    importlib.util.find_spec("torchdiffeq") is None, reason="torch backend not installed"))]

L3V2 = "http://www.sbml.org/sbml/level3/version2/core"
COMP = "http://www.sbml.org/sbml/level3/version1/comp/version1"
HEAD = (f'<?xml version="1.0" encoding="UTF-8"?>\n<sbml xmlns="{L3V2}" xmlns:comp="{COMP}" '
        'level="3" version="2" comp:required="true">')


def hierarchical(source: str = "inner.xml", model_ref: str = "ext") -> str:
    """A top model whose submodel 'A' is model 'inner' of the external file ``source``."""
    return (HEAD + '<model id="top"><comp:listOfSubmodels><comp:submodel comp:id="A" '
            f'comp:modelRef="{model_ref}"/></comp:listOfSubmodels></model>'
            '<comp:listOfExternalModelDefinitions><comp:externalModelDefinition comp:id="ext" '
            f'comp:source="{source}" comp:modelRef="inner"/>'
            "</comp:listOfExternalModelDefinitions></sbml>")


INNER = (HEAD.replace(' xmlns:comp="' + COMP + '"', "").replace(' comp:required="true"', "")
         + '<model id="inner"><listOfParameters><parameter id="k" value="3" constant="true"/>'
         "</listOfParameters></model></sbml>")


# -- SBML Test Suite cases that now pass -------------------------------------------------
@needs_suite
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", [
    "01124",  # a replaced parameter
    "01165",  # an external model definition, deletions, ports
    "01344",  # reactions and an assignment rule in a submodel
    "01470",  # replacedBy, extent conversion factor
    "01778",  # external model with a conversion factor
])
def test_suite_cases_pass(case, backend):
    result = run_case(read_index(SUITE)[case], SUITE, backend)
    assert result.outcome == "pass", result.line()


@needs_suite
def test_flat_model_keeps_refusing_what_kinabs_does_not_simulate():
    # 01173 flattens fine, but its flat model uses csymbol delay.
    result = run_case(read_index(SUITE)["01173"], SUITE, "scipy")
    assert (result.outcome, result.detail) == ("unsupported", "csymbol delay")


# -- external model definitions ----------------------------------------------------------
@needs_suite
def test_external_files_are_found_beside_the_model_whatever_the_working_directory(
        tmp_path, monkeypatch):
    folder = tmp_path / "case"
    shutil.copytree(CASES / "01165", folder)
    monkeypatch.chdir(tmp_path)  # neither the case's folder nor the suite's
    model = kinabs.load_sbml(Path("case") / "01165-sbml-l3v2.xml")
    assert "A__ES" in model.species and "S" in model.species


def test_external_model_from_a_local_file(tmp_path):
    (tmp_path / "inner.xml").write_text(INNER)
    (tmp_path / "top.xml").write_text(hierarchical())
    assert kinabs.load_sbml(tmp_path / "top.xml").parameters["A__k"].value == 3.0


def test_relative_external_source_in_text_names_the_problem():
    with pytest.raises(SBMLError, match=r"'ext'.*inner.xml.*given as text.*load_sbml"):
        kinabs.read_sbml_string(hierarchical())


def test_missing_external_file(tmp_path):
    (tmp_path / "top.xml").write_text(hierarchical("missing.xml"))
    with pytest.raises(SBMLError, match=r"'ext'.*missing.xml.*does not exist"):
        kinabs.load_sbml(tmp_path / "top.xml")


def test_external_file_gets_the_same_xml_checks(tmp_path):
    (tmp_path / "inner.xml").write_text(INNER.replace("<sbml", "<!DOCTYPE sbml []><sbml", 1))
    (tmp_path / "top.xml").write_text(hierarchical())
    with pytest.raises(SBMLError, match=r"inner.xml.*DOCTYPE"):
        kinabs.load_sbml(tmp_path / "top.xml")


def test_external_url_is_never_fetched():
    with pytest.raises(UnsupportedFeatureError, match=r"URL.*local files only") as info:
        kinabs.read_sbml_string(hierarchical("https://example.org/inner.xml"))
    assert info.value.element_id == "ext"


def test_invalid_hierarchy_reports_libsbml(tmp_path):
    (tmp_path / "inner.xml").write_text(INNER)
    (tmp_path / "top.xml").write_text(hierarchical(model_ref="nowhere"))
    with pytest.raises(SBMLError, match=r"comp.*libsbml says") as info:
        kinabs.load_sbml(tmp_path / "top.xml")
    assert any("nowhere" in m for m in info.value.messages)


def test_a_package_libsbml_cannot_flatten_is_unsupported():
    multi = "http://www.sbml.org/sbml/level3/version1/multi/version1"
    text = (HEAD.replace('comp:required="true"', f'comp:required="true" xmlns:multi="{multi}" '
                         'multi:required="true"')
            + '<model id="top"><comp:listOfSubmodels><comp:submodel comp:id="A" '
            'comp:modelRef="inner"/></comp:listOfSubmodels></model><comp:listOfModelDefinitions>'
            '<comp:modelDefinition id="inner"/></comp:listOfModelDefinitions></sbml>')
    with pytest.raises(UnsupportedFeatureError, match=r"'multi'.*comp"):
        kinabs.read_sbml_string(text)
