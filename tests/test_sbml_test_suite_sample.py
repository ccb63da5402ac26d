"""The SBML Test Suite runner: its file parsing and pass rule, a fixed seeded sample of 100
cases on both backends (JAX and torch) in the default run, the per-backend expected
failures, the README report, and the full basic tier as a slow test."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest

import kinabs  # noqa: F401 - import kinabs before the repository root joins sys.path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from conformance._suite_data import (  # noqa: E402
    compare,
    default_suite_dir,
    parse_case_list,
    read_index,
    read_results,
    read_settings,
)
from conformance.sbml_test_suite import (  # noqa: E402
    CaseResult,
    expected_failures,
    main,
    run_case,
    run_cases,
    summary_lines,
)

SUITE = default_suite_dir()
needs_suite = pytest.mark.skipif(not (SUITE / "cases-index.tsv").exists(),
                                 reason=f"no SBML Test Suite at {SUITE}")

#: Features the basic tier may report as unsupported instead of passing.
KNOWN_UNSUPPORTED: set[str] = set()


#: The default run's sample: 100 core/basic cases drawn with ``random.Random(0)``.
SAMPLE_SIZE = 100


def _sample(n: int = SAMPLE_SIZE) -> list[str]:
    if not (SUITE / "cases-index.tsv").exists():
        return []
    index = read_index(SUITE)
    cases = sorted(c for c, info in index.items() if info.tier in ("core", "basic"))
    return sorted(random.Random(0).sample(cases, n))


# -- parsing and the pass rule ------------------------------------------------------------
def test_settings_and_results_parse(tmp_path):
    (tmp_path / "s.txt").write_text(
        "start: 0\nduration: 2.0\nsteps: 4\nvariables: S1, k, R\nabsolute: 1.000000e-007\n"
        "relative: 0.0001 \namount: S1\nconcentration:\n\n")
    s = read_settings(tmp_path / "s.txt")
    assert s.variables == ("S1", "k", "R") and s.amount == ("S1",) and s.concentration == ()
    assert s.absolute == 1e-7 and s.relative == 1e-4
    np.testing.assert_allclose(s.times, [0.0, 0.5, 1.0, 1.5, 2.0])
    (tmp_path / "r.csv").write_text("time, P, Q, R\n0,INF,-inf, NaN\n0.5,1e-3,2,nan\n")
    times, cols = read_results(tmp_path / "r.csv")
    np.testing.assert_array_equal(times, [0.0, 0.5])
    assert np.isposinf(cols["P"][0]) and np.isneginf(cols["Q"][0]) and np.isnan(cols["R"]).all()


def test_pass_rule():
    c = np.array([[1.0, 0.0, np.nan, np.inf, -np.inf]])
    assert compare(c, c.copy(), 0.0, 1e-4).passed
    assert compare(c, c + [[1e-4, 1e-7, 0, 0, 0]], 1e-7, 1e-4).passed
    bad = compare(c, c + [[2.1e-4, 0, 0, 0, 0]], 1e-7, 1e-4)
    assert not bad.passed and bad.column == 0 and bad.ratio > 2
    for actual in ([1.0, 0.0, 0.0, np.inf, -np.inf], [1.0, 0.0, np.nan, -np.inf, -np.inf],
                   [1.0, np.nan, np.nan, np.inf, -np.inf]):
        assert not compare(c, np.array([actual]), 1e-3, 1e-3).passed


def test_case_list():
    assert parse_case_list("1-3, 17,00020,2") == ["00001", "00002", "00003", "00017", "00020"]
    with pytest.raises(ValueError):
        parse_case_list("5-1")


def test_summary_line_format():
    index = {"00001": _info("00001", "core"), "00002": _info("00002", "basic")}
    results = [CaseResult("00001", "core", "pass"), CaseResult("00002", "basic", "fail")]
    assert summary_lines(results, index, "jax", ("core", "basic")) == [
        "tier core on jax: 1 passed, 0 failed, 0 unsupported",
        "tier basic on jax: 1 passed, 1 failed, 0 unsupported",
    ]


def _info(case, tier):
    from conformance._suite_data import CaseInfo

    return CaseInfo(case, "TimeCourse", f"{case}-sbml-l3v2.xml", tier, ())


def test_expected_failures_files_have_one_reason_per_line(tmp_path):
    for backend in ("jax", "torch"):
        for case, reason in expected_failures(backend).items():
            assert len(case) == 5 and case.isdigit(), case
            assert reason, f"{case} on {backend} is listed without a reason"
    (tmp_path / "x.tsv").write_text("# comment\n00028\ta discontinuous rate\n\n")
    assert expected_failures("torch", tmp_path / "x.tsv") == {"00028": "a discontinuous rate"}


def test_report_writes_tables_between_markers(tmp_path):
    from conformance._suite_report import END, START, render, write_into

    results = {
        "jax": {"00001": {"outcome": "pass", "tags": ["Species"]},
                "00002": {"outcome": "pass", "tags": ["Species", "Amount"]}},
        "torch": {"00001": {"outcome": "pass", "tags": ["Species"]},
                  "00002": {"outcome": "fail", "tags": ["Species", "Amount"]}},
    }
    section = render(results, {"00001": "core", "00002": "basic"},
                     {"torch": {"00002": "a reason"}})
    assert "| core (1) | torch | 1 of 1 | 1 | 0 | 0 | 0 |" in section
    assert "| basic (2) | torch | 2 of 2 | 1 | 1 | 0 | 1 |" in section
    assert "| Species | 2 / 0 / 0 | 1 / 1 / 0 |" in section
    assert "00002: jax pass, torch fail" in section
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n\n{START}\nold\n{END}\n\noutro\n")
    write_into(readme, section)
    write_into(readme, section)  # a rerun replaces, never duplicates
    text = readme.read_text()
    assert text.count(START) == 1 and "old" not in text
    assert text.startswith("intro") and text.rstrip().endswith("outro")


def test_unavailable_backend_is_a_clear_error(capsys, monkeypatch):
    import conformance.sbml_test_suite as runner

    monkeypatch.setattr(runner, "_check_backend", lambda name: f"the {name} backend is absent")
    assert main(["--backend", "torch", "--cases", "1"]) == 2
    assert "torch backend is absent" in capsys.readouterr().err


# -- cases --------------------------------------------------------------------------------
@needs_suite
@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize("case", _sample())
def test_sample_case(case, backend):
    pytest.importorskip("diffrax" if backend == "jax" else "torchdiffeq")
    info = read_index(SUITE)[case]
    result = run_case(info, SUITE, backend)
    known = expected_failures(backend)
    if case in known:
        assert result.outcome == "fail", f"{case} is listed as failing ({known[case]}): {result}"
    elif result.outcome == "unsupported":
        assert result.detail in KNOWN_UNSUPPORTED, result.line()
    else:
        assert result.outcome == "pass", result.line()


#: Cases that once failed, one per lowering feature: a constant species in a growing
#: compartment, everything-but-events, rateOf, a rate rule on a stoichiometry, 'implies',
#: a variable called "Time", a 0-D compartment without a size.
REGRESSION_CASES = ["01117", "01121", "01251", "01103", "01497", "01820", "00048"]


@needs_suite
@pytest.mark.parametrize("case", REGRESSION_CASES)
def test_regression_case_on_scipy_reference(case):
    result = run_case(read_index(SUITE)[case], SUITE, "scipy")
    assert result.outcome == "pass", result.line()


@needs_suite
@pytest.mark.slow
def test_basic_tier_on_jax():
    pytest.importorskip("diffrax")
    index = read_index(SUITE)
    infos = [i for i in index.values() if i.tier in ("core", "basic")]
    results = run_cases(infos, suite_dir=SUITE, backend="jax", jobs=2)
    by_case = {r.case: r for r in results}
    core = [r for r in results if r.tier == "core"]
    assert sum(r.outcome == "pass" for r in core) >= 690
    assert sum(r.outcome == "pass" for r in results) >= 900
    known = expected_failures("jax")
    unexpected = [by_case[c].line() for c in sorted(by_case)
                  if by_case[c].outcome == "fail" and c not in known]
    assert not unexpected, "\n".join(unexpected)
