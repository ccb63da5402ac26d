"""Fitting PEtab problems: ``kinabs.petab.fit`` (Latin hypercube starts within the
parameter table's bounds, Levenberg-Marquardt on the Fisher information of the negative
log-likelihood by default, or projected BFGS) and ``kinabs fit
PROBLEM.yaml``. One compiled objective for the module (the CLI run), checked against the
analytic optimum of PEtab test-suite case 0001."""

import math
import shutil

import numpy as np
import pandas as pd
import pytest

import kinabs
from tests._shared import SHARED

pytest.importorskip("petab.v1")
pytest.importorskip("diffrax")
import kinabs.petab as kp  # noqa: E402
from kinabs._cli import main  # noqa: E402
from kinabs.petab._multistart import scaled_bounds  # noqa: E402

CASE = SHARED / "petab" / "test-suite" / "v1.0.0" / "sbml" / "0001"
needs_case = pytest.mark.skipif(not CASE.is_dir(), reason=f"no PEtab test suite at {CASE}")
#: case 0001: A <-> B with four free parameters and two measurements of A (noise 0.5):
#: the model can pass through both, so the optimum is the two normal densities' constants
PERFECT_NLLH = 2 * 0.5 * math.log(2 * math.pi * 0.5**2)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("petab-fit") / "out"
    rc = main(["fit", str(CASE / "_0001.yaml"), "--inits", "4", "--n-iter", "60",
               "--out", str(out)])
    return rc, out


@needs_case
def test_the_command_fits_case_0001_to_its_analytic_optimum(cli_run, capsys):
    rc, out = cli_run
    assert rc == 0
    table = pd.read_csv(out / "results.tsv", sep="\t", index_col=0)
    assert len(table) == 4
    np.testing.assert_allclose(table["nllh"], PERFECT_NLLH, atol=1e-6)
    assert set(table["status"]) == {"converged"}
    assert (table["evaluations"] <= 60).all() and (table["iterations"] >= 1).all()
    # every start within the parameter table's bounds (0..10, linear)
    values = table[["a0", "b0", "k1", "k2"]].to_numpy()
    assert (values >= 0).all() and (values <= 10).all()
    # the fitted a0 is the measurement at t = 0
    np.testing.assert_allclose(table["a0"], 0.7, atol=1e-3)
    best = pd.read_csv(out / "best_parameters.tsv", sep="\t", index_col=0)
    assert best.loc["a0", "nominalValue"] == pytest.approx(0.7, abs=1e-3)
    for png in ("waterfall.png", "fit.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # the best parameters reproduce the nllh on the numpy path (an independent evaluation)
    problem = kp.load(CASE / "_0001.yaml")
    again = problem.evaluate(best.loc[list(problem.x_free_ids), "nominalValue"].to_numpy(),
                             parameter_scale="linear")
    assert -again.llh == pytest.approx(PERFECT_NLLH, abs=1e-6)


@needs_case
def test_flags_that_do_not_apply_to_a_petab_problem_are_refused(tmp_path, capsys):
    rc = main(["fit", str(CASE / "_0001.yaml"), "--data", "x.csv", "--out",
               str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--data" in err and "does not apply" in err.replace("do(es)", "does")
    assert not (tmp_path / "o").exists()


@needs_case
def test_bounds_the_wrong_way_round_name_the_row(tmp_path):
    folder = tmp_path / "case"
    shutil.copytree(CASE, folder)
    params = folder / "_0001_parameters.tsv" if (folder / "_0001_parameters.tsv").exists() \
        else next(folder.glob("*parameters*.tsv"))
    df = pd.read_csv(params, sep="\t")
    df.loc[df["parameterId"] == "k1", ["lowerBound", "upperBound"]] = [10.0, 0.0]
    df.to_csv(params, sep="\t", index=False)
    problem = kp.load(next(folder.glob("_0001.yaml")), lint=False)
    with pytest.raises(kinabs.DataError, match=r"row 'k1'.*not below.*swap"):
        scaled_bounds(problem)
    with pytest.raises(kinabs.DataError, match="n_starts"):
        kp.fit(problem, n_starts=0)


def test_log_scaled_bounds_are_on_the_scale():
    from types import SimpleNamespace

    pt = SimpleNamespace(ids=("a", "b", "c"), scales=("log10", "log", "lin"),
                         lower=np.array([1e-3, 1.0, -2.0]), upper=np.array([1e3, np.e, 2.0]),
                         estimate=np.array([True, True, True]))
    lo, hi = scaled_bounds(SimpleNamespace(parameters=pt))
    np.testing.assert_allclose(lo, [-3.0, 0.0, -2.0])
    np.testing.assert_allclose(hi, [3.0, 1.0, 2.0])
    pt.lower[0] = 0.0  # log10(0): no finite bound to draw starts from
    with pytest.raises(kinabs.DataError, match=r"row 'a'.*not both finite"):
        scaled_bounds(SimpleNamespace(parameters=pt))


def test_a_start_on_a_plateau_of_huge_nllh_is_not_converged_at_once():
    """Boehm's far starts have nllh ~1e11 with gradients of ~20: the fit's BFGS must step
    on (the Trainer's relative gradient test, 1e-10 |f|, called them converged)."""
    import array_api_compat.numpy as xp

    from kinabs.petab._multistart import BFGS_METHOD as DEFAULT_METHOD

    x = np.array([[0.5, 0.5]])
    f = np.array([2.4e11])
    g = np.array([[20.0, -5.0]])
    lo, hi = np.full(2, -5.0), np.full(2, 5.0)
    ok = np.ones(1, bool)
    state = DEFAULT_METHOD.update(DEFAULT_METHOD.init(x, xp), f, g, ok, lo, hi, xp, None)
    assert not state["converged"][0]
    assert state["trial"][0, 0] < 0.5  # a step downhill
    relative = kinabs.BFGS()
    assert relative.update(relative.init(x, xp), f, g, ok, lo, hi, xp, None)["converged"][0]
