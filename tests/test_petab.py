"""kinabs.petab: reading PEtab v1 problems, the objective against the PEtab test suite
(v1.0.0, each case's expected llh, chi2 and simulations at its own tolerances), the noise
models against petab's own ``calculate_llh``, steady states, errors, and the commands."""

import argparse
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

import kinabs
from tests._shared import SHARED

petab = pytest.importorskip("petab.v1")
import kinabs.petab as kp  # noqa: E402
from kinabs.petab._cli import add_parser  # noqa: E402
from kinabs.petab._errors import UnsupportedPetabFeature  # noqa: E402
from kinabs.petab._formulas import evaluate, parse  # noqa: E402
from kinabs.petab._priors import Prior  # noqa: E402

SUITE = SHARED / "petab" / "test-suite" / "v1.0.0" / "sbml"
CASES = [f"{i:04d}" for i in range(1, 21)]
needs_suite = pytest.mark.skipif(not SUITE.is_dir(), reason=f"no PEtab test suite at {SUITE}")


def _case(case: str):
    folder = SUITE / case
    solution = yaml.safe_load((folder / f"_{case}_solution.yaml").read_text())
    expected = pd.read_csv(folder / solution["simulation_files"][0], sep="\t")
    return folder / f"_{case}.yaml", solution, expected


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    """As petabtests' evaluate.py compares simulation tables: sorted by the grouping
    columns."""
    cols = [c for c in ("observableId", "simulationConditionId", "time",
                        "preequilibrationConditionId") if c in df.columns]
    return df.sort_values(cols, kind="stable").reset_index(drop=True)


def _check_case(case: str, backend: str) -> kp.EvaluationResult:
    path, solution, expected = _case(case)
    result = kp.load(path).evaluate(backend=backend)
    assert result.ok, result.status
    assert abs(result.llh - solution["llh"]) < solution["tol_llh"]
    assert abs(result.chi2 - solution["chi2"]) < solution["tol_chi2"]
    ours, theirs = _sorted(result.simulation_df), _sorted(expected)
    assert len(ours) == len(theirs)
    for col in ("observableId", "simulationConditionId"):
        assert ours[col].tolist() == theirs[col].tolist()
    np.testing.assert_allclose(ours["time"], theirs["time"])
    mean_abs = np.abs(ours["simulation"] - theirs["simulation"]).sum() / len(ours)
    assert mean_abs < solution["tol_simulations"]
    # far tighter than the suite asks: the values agree to the solver's tolerance
    np.testing.assert_allclose(result.llh, solution["llh"], rtol=1e-7, atol=1e-7)
    return result


@needs_suite
@pytest.mark.parametrize("case", CASES)
def test_petab_test_suite_on_jax(case):
    _check_case(case, "jax")


@needs_suite
@pytest.mark.parametrize("case", ["0001", "0009", "0012", "0016", "0018", "0019"])
def test_petab_test_suite_on_torch(case):
    pytest.importorskip("torch")
    _check_case(case, "torch")


@needs_suite
@pytest.mark.parametrize("case", ["0007", "0014", "0016"])
def test_llh_equals_petab_calculate_llh_on_our_simulations(case):
    """Our noise model and petab's calculate_llh/chi2 agree on the same simulations."""
    path, _, _ = _case(case)
    problem = kp.load(path)
    result = problem.evaluate(backend="torch")
    pp = problem.tables.problem
    args = (pp.measurement_df, result.simulation_df, pp.observable_df, pp.parameter_df)
    assert result.llh == pytest.approx(petab.calculate_llh(*args), rel=1e-12)
    assert result.chi2 == pytest.approx(petab.calculate_chi2(*args), rel=1e-12)


# -- small problems written here ------------------------------------------------------------
def _write(folder, model, *, observables, measurements, parameters, conditions=None):
    kinabs.write_sbml(model, folder / "model.xml")
    tables = {"observables": observables, "measurements": measurements,
              "parameters": parameters,
              "conditions": conditions if conditions is not None else
              pd.DataFrame({"conditionId": ["c0"], "conditionName": ["c0"]})}
    for name, df in tables.items():
        pd.DataFrame(df).to_csv(folder / f"{name}.tsv", sep="\t", index=False)
    config = {"format_version": 1, "parameter_file": "parameters.tsv", "problems": [{
        "sbml_files": ["model.xml"], "condition_files": ["conditions.tsv"],
        "measurement_files": ["measurements.tsv"], "observable_files": ["observables.tsv"]}]}
    (folder / "problem.yaml").write_text(yaml.safe_dump(config))
    return folder / "problem.yaml"


def _decay(inflow: bool = True):
    """``-> A`` at rate k1 and ``A ->`` at rate k2*A: steady state A* = k1/k2."""
    b = kinabs.ModelBuilder("decay")
    b.species("A", initial_concentration=1.0)
    b.parameter("k1", 2.0)
    b.parameter("k2", 0.5)
    if inflow:
        b.reaction("in", "-> A", rate="k1")
    b.reaction("out", "A ->", rate="k2*A")
    return b.build()


def _params(**rows):
    return pd.DataFrame({
        "parameterId": list(rows), "parameterScale": [r[0] for r in rows.values()],
        "lowerBound": [1e-3] * len(rows), "upperBound": [1e3] * len(rows),
        "nominalValue": [r[1] for r in rows.values()],
        "estimate": [r[2] for r in rows.values()]})


def test_time_inf_is_the_steady_state_and_laplace_log10_match_petab(tmp_path):
    path = _write(
        tmp_path, _decay(),
        observables=pd.DataFrame({
            "observableId": ["obs_a", "obs_log"], "observableFormula": ["scale * A", "A"],
            "noiseFormula": ["noiseParameter1_obs_a", "0.1"],
            "observableTransformation": ["lin", "log10"],
            "noiseDistribution": ["laplace", "laplace"]}),
        measurements=pd.DataFrame({
            "observableId": ["obs_a", "obs_a", "obs_log", "obs_log"],
            "simulationConditionId": ["c0"] * 4, "time": [1.0, np.inf, 2.0, np.inf],
            "measurement": [2.5, 8.5, 3.0, 4.2],
            "noiseParameters": ["sd", "sd", "", ""]}),
        parameters=_params(k1=("log10", 2.0, 1), k2=("log10", 0.5, 1),
                           scale=("lin", 2.0, 0), sd=("lin", 0.3, 0)))
    problem = kp.load(path)
    result = problem.evaluate(backend="torch")
    sims = result.simulation_df["simulation"].to_numpy()
    a1 = 4.0 - 3.0 * np.exp(-0.5)  # A(t) = 4 - 3 exp(-t/2)
    np.testing.assert_allclose(sims, [2 * a1, 8.0, 4.0 - 3.0 * np.exp(-1.0), 4.0],
                               rtol=1e-7)
    pp = problem.tables.problem
    args = (pp.measurement_df, result.simulation_df, pp.observable_df, pp.parameter_df)
    assert result.llh == pytest.approx(petab.calculate_llh(*args), rel=1e-12)
    assert result.chi2 == pytest.approx(petab.calculate_chi2(*args), rel=1e-12)


def test_parameters_on_their_scale_or_linear_and_batches(tmp_path):
    path = _write(
        tmp_path, _decay(),
        observables=pd.DataFrame({"observableId": ["obs"], "observableFormula": ["A"],
                                  "noiseFormula": ["0.2"]}),
        measurements=pd.DataFrame({"observableId": ["obs"] * 2,
                                   "simulationConditionId": ["c0"] * 2,
                                   "time": [1.0, 3.0], "measurement": [2.0, 3.0]}),
        parameters=_params(k1=("log10", 2.0, 1), k2=("log", 0.5, 1)))
    problem = kp.load(path)
    assert problem.x_free_ids == ("k1", "k2")
    np.testing.assert_allclose(problem.x_nominal(), [np.log10(2.0), np.log(0.5)])
    lin = problem.evaluate([3.0, 0.7], parameter_scale="linear", backend="torch")
    scaled = problem.evaluate([np.log10(3.0), np.log(0.7)], backend="torch")
    mapping = problem.evaluate({"k1": 3.0, "k2": 0.7}, parameter_scale="linear",
                               backend="torch")
    assert lin.llh == pytest.approx(scaled.llh, rel=1e-10) == mapping.llh
    batch = problem.evaluate_batch([[np.log10(3.0), np.log(0.7)], problem.x_nominal()],
                                   backend="torch")
    # torch's explicit solver takes one step size per batch: equal to solver tolerance
    np.testing.assert_allclose(batch.llh, [lin.llh, problem.evaluate(backend="torch").llh],
                               rtol=1e-6)
    with pytest.raises(kinabs.DataError, match="shape"):
        problem.evaluate([1.0, 2.0, 3.0])
    with pytest.raises(kinabs.DataError, match="unknown parameter"):
        problem.evaluate({"nope": 1.0})


def test_a_steady_state_that_is_never_reached_is_a_status_not_a_value(tmp_path):
    b = kinabs.ModelBuilder("growth")
    b.species("A", initial_concentration=1.0)
    b.parameter("k", 1.0)
    b.reaction("make", "-> A", rate="k*A")  # exponential growth
    path = _write(
        tmp_path, b.build(),
        conditions=pd.DataFrame({"conditionId": ["pre", "c0"], "k": [1.0, 2.0]}),
        observables=pd.DataFrame({"observableId": ["obs"], "observableFormula": ["A"],
                                  "noiseFormula": ["1"]}),
        measurements=pd.DataFrame({"observableId": ["obs"], "simulationConditionId": ["c0"],
                                   "preequilibrationConditionId": ["pre"], "time": [1.0],
                                   "measurement": [1.0]}),
        parameters=_params(sd=("lin", 1.0, 0)))
    opts = kp.SteadyStateOptions(horizons=(1.0, 10.0, 100.0))
    result = kp.load(path, lint=False).evaluate(backend="torch", steady_state=opts)
    assert not result.ok
    assert result.status == {"pre>c0": "preequilibration pre: steady_state_not_reached"}
    assert np.isnan(result.llh) and np.isnan(result.simulation_df["simulation"][0])


def test_condition_overrides_of_constant_species_and_rate_rule_parameters(tmp_path):
    """A boundary species given by amount, set in the condition table by concentration;
    a parameter with a rate rule (a state) set as an initial value."""
    b = kinabs.ModelBuilder("mixed")
    b.compartment("cell", size=2.0)
    b.species("S", initial_amount=2.0, boundary=True)
    b.species("P", initial_concentration=0.0)
    b.parameter("k", 1.0)
    b.parameter("q", 0.0)
    b.rate_rule("q", "1")
    b.reaction("r", "S -> P", rate="k*S*cell")
    path = _write(
        tmp_path, b.build(),
        conditions=pd.DataFrame({"conditionId": ["c0"], "S": [3.0], "q": [5.0]}),
        observables=pd.DataFrame({"observableId": ["p", "qq"], "observableFormula": ["P", "q"],
                                  "noiseFormula": ["1", "1"]}),
        measurements=pd.DataFrame({"observableId": ["p", "qq"],
                                   "simulationConditionId": ["c0", "c0"],
                                   "time": [2.0, 2.0], "measurement": [0.0, 0.0]}),
        parameters=_params(k=("lin", 1.0, 1)))
    sims = kp.load(path).evaluate(backend="torch").simulation_df["simulation"].to_numpy()
    # the builder's rates are per volume (the kinetic law is k*S*cell**2): dP/dt = k S cell
    np.testing.assert_allclose(sims, [3.0 * 2.0 * 2.0, 5.0 + 2.0], rtol=1e-7)


# -- errors --------------------------------------------------------------------------------
def _copy_case(tmp_path, case="0001"):
    for f in (SUITE / case).iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    return tmp_path / f"_{case}.yaml"


@needs_suite
def test_unsupported_features_name_the_feature_and_the_row(tmp_path):
    path = _copy_case(tmp_path)
    obs = pd.read_csv(tmp_path / "_observables.tsv", sep="\t")
    obs["noiseDistribution"] = "cauchy"
    obs.to_csv(tmp_path / "_observables.tsv", sep="\t", index=False)
    with pytest.raises(UnsupportedPetabFeature,
                       match=r"noiseDistribution 'cauchy' \(_observables.tsv line 2"):
        kp.load(path, lint=False)
    obs["noiseDistribution"] = "normal"
    obs["observableTransformation"] = "logit"
    obs.to_csv(tmp_path / "_observables.tsv", sep="\t", index=False)
    with pytest.raises(kinabs.UnsupportedFeatureError, match="observableTransformation"):
        kp.load(path, lint=False)
    config = yaml.safe_load(path.read_text())
    config["format_version"] = "2.0.0"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(UnsupportedPetabFeature, match="format_version '2.0.0'"):
        kp.load(path)


@needs_suite
def test_malformed_tables_are_data_errors_naming_the_line(tmp_path):
    path = _copy_case(tmp_path, "0003")  # obs_a = observableParameter1 * A + ...2
    meas = pd.read_csv(tmp_path / "_measurements.tsv", sep="\t")
    meas.loc[1, "observableParameters"] = "0.5"
    meas.to_csv(tmp_path / "_measurements.tsv", sep="\t", index=False)
    with pytest.raises(kinabs.DataError, match=r"_measurements.tsv line 3.*observableParameter2"):
        kp.load(path, lint=False)
    meas.loc[1, "observableParameters"] = "0.5;not_a_parameter"
    meas.to_csv(tmp_path / "_measurements.tsv", sep="\t", index=False)
    with pytest.raises(kinabs.DataError, match="not_a_parameter"):
        kp.load(path, lint=False)
    with pytest.raises(kinabs.DataError, match="linter"):
        kp.load(path)
    with pytest.raises(kinabs.DataError, match="does not exist"):
        kp.load(tmp_path / "missing.yaml")


@needs_suite
def test_unknown_symbol_in_a_formula_names_the_observable(tmp_path):
    path = _copy_case(tmp_path)
    obs = pd.read_csv(tmp_path / "_observables.tsv", sep="\t")
    obs.loc[0, "observableFormula"] = "A + mystery"
    obs.to_csv(tmp_path / "_observables.tsv", sep="\t", index=False)
    with pytest.raises(kinabs.DataError, match=r"_observables.tsv line 2.*'mystery'"):
        kp.load(path, lint=False)


def test_events_in_the_model_are_refused(tmp_path):
    sbml = SHARED / "petab" / "benchmark-models" / "Smith_BMCSystBiol2013"
    if not sbml.is_dir():
        pytest.skip("no benchmark collection")
    with pytest.raises(kinabs.UnsupportedFeatureError, match="event"):
        kp.load(sbml / "Smith_BMCSystBiol2013.yaml")


# -- formulas and priors ----------------------------------------------------------------------
def test_formulas_are_parsed_by_petab_and_walked_not_evaluated_as_code():
    expr = parse("piecewise(a, a > 1 && b < 2, -b) + min(a, b) + ln(exp(2)) + log(8, 2)",
                 where="t")
    value = evaluate(expr, {"a": np.array([2.0, 0.5]), "b": np.array([1.0, 3.0])})
    np.testing.assert_allclose(value, [2.0 + 1.0 + 5.0, -3.0 + 0.5 + 5.0])
    with pytest.raises(kinabs.DataError, match="where it is: cannot parse"):
        parse("__import__('os').system('true')", where="where it is")
    with pytest.raises(kinabs.DataError, match="no value for the symbol 'c'"):
        evaluate(parse("c + 1", where="t"), {})


@pytest.mark.parametrize("kind, pars, scale, dist", [
    ("normal", (1.0, 2.0), "lin", lambda x: __import__("scipy").stats.norm(1.0, 2.0).logpdf(x)),
    ("laplace", (1.0, 2.0), "lin", lambda x: __import__("scipy").stats.laplace(1.0, 2.0).logpdf(x)),
    ("logNormal", (0.5, 0.7), "lin",
     lambda x: __import__("scipy").stats.lognorm(0.7, scale=np.exp(0.5)).logpdf(x)),
    ("parameterScaleNormal", (-1.0, 0.5), "log10",
     lambda x: __import__("scipy").stats.norm(-1.0, 0.5).logpdf(np.log10(x))),
    ("uniform", (0.0, 4.0), "log", lambda x: __import__("scipy").stats.uniform(0, 4).logpdf(x)),
])
def test_priors_are_the_densities_petab_names(kind, pars, scale, dist):
    x = np.array([0.3, 1.0, 2.5])
    np.testing.assert_allclose(Prior(kind, pars, scale).log_density(x), dist(x), rtol=1e-12)


# -- commands and imports ---------------------------------------------------------------------
def _parse(argv):
    parser = argparse.ArgumentParser(prog="kinabs")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@needs_suite
def test_evaluate_command_prints_json(capsys, tmp_path):
    path, solution, _ = _case("0019")
    args = _parse(["petab", "evaluate", str(path), "--backend", "torch", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert abs(out["llh"] - solution["llh"]) < 1e-6 and out["ok"] is True
    assert abs(out["chi2"] - solution["chi2"]) < 1e-6
    # given parameters: a file of linear values changes the result
    pd.DataFrame({"parameterId": ["k1"], "nominalValue": [0.5]}).to_csv(
        tmp_path / "p.tsv", sep="\t", index=False)
    args = _parse(["petab", "evaluate", str(path), "--backend", "torch", "--json",
                   "--parameters", str(tmp_path / "p.tsv")])
    assert args.func(args) == 0
    other = json.loads(capsys.readouterr().out)
    expected = kp.load(path).evaluate({"k1": 0.5}, parameter_scale="linear", backend="torch")
    assert other["llh"] == pytest.approx(expected.llh, rel=1e-10)
    assert other["llh"] != pytest.approx(out["llh"])


@needs_suite
def test_simulate_command_writes_the_simulation_table(tmp_path, capsys):
    path, solution, expected = _case("0009")
    out = tmp_path / "sim.tsv"
    args = _parse(["petab", "simulate", str(path), "--backend", "torch", "--out", str(out)])
    assert args.func(args) == 0
    table = pd.read_csv(out, sep="\t")
    assert list(table.columns) == list(expected.columns)
    np.testing.assert_allclose(table["simulation"], expected["simulation"], atol=1e-6)
    args = _parse(["petab", "evaluate", str(path), "--backend", "torch"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.startswith("wrote")


def test_importing_kinabs_imports_neither_petab_nor_its_parser_nor_jax():
    """``import kinabs.petab`` loads neither petab (nor its parser) until a problem is
    read, nor jax until a compiled objective is made."""
    code = ("import sys, kinabs, kinabs.petab; "
            "print(any(m == 'petab' or m.startswith(('petab.', 'antlr4')) for m in sys.modules),"
            " any(m == 'jax' or m.startswith('jax.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", "False"]
