"""Levenberg-Marquardt on the Fisher information (``kinabs.petab.FisherLM``, the default
method of ``kinabs.petab.fit``): the compiled objective's Fisher information matrix
against its analytic value, the iteration on problems with known minima, and a fit of a
small PEtab problem with an estimated noise parameter to its analytic optimum."""

import math

import numpy as np
import pytest

import kinabs
from kinabs.petab._fisher import FisherLM, minimize

pytest.importorskip("petab.v1")
pytest.importorskip("diffrax")
import kinabs.petab as kp  # noqa: E402

#: A -> at rate k*A from A(0) = 1, measured at these times (values off exp(-0.5 t), as if
#: noisy); k on log10 scale, the noise sd estimated on the linear scale
TIMES = np.array([0.5, 1.0, 2.0, 3.0, 4.0])
MEASURED = np.exp(-0.5 * TIMES) + np.array([0.02, -0.015, 0.01, -0.02, 0.005])
NONSTIFF = kinabs.SolverOptions("nonstiff", rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def decay(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decay")
    b = kinabs.ModelBuilder("decay")
    b.species("A", initial_concentration=1.0)
    b.parameter("k", 0.5)
    b.reaction("r", "A ->", rate="k*A")
    kinabs.write_sbml(b.build(), folder / "model.xml")
    rows = "".join(f"obs\tc0\t{t:g}\t{float(m)!r}\n" for t, m in zip(TIMES, MEASURED))
    tables = {
        "conditions": "conditionId\nc0\n",
        "observables": "observableId\tobservableFormula\tnoiseFormula\nobs\tA\tsd\n",
        "measurements": "observableId\tsimulationConditionId\ttime\tmeasurement\n" + rows,
        "parameters": "parameterId\tparameterScale\tlowerBound\tupperBound\tnominalValue\t"
                      "estimate\nk\tlog10\t0.01\t10\t0.3\t1\nsd\tlin\t0.001\t1\t0.1\t1\n"}
    for name, text in tables.items():
        (folder / f"{name}.tsv").write_text(text)
    (folder / "problem.yaml").write_text(
        "format_version: 1\nparameter_file: parameters.tsv\nproblems:\n"
        "- sbml_files: [model.xml]\n  condition_files: [conditions.tsv]\n"
        "  measurement_files: [measurements.tsv]\n  observable_files: [observables.tsv]\n")
    problem = kp.load(folder / "problem.yaml")
    return problem, problem.objective(solver=NONSTIFF)


def test_fim_is_the_expected_hessian(decay):
    problem, objective = decay
    x = np.array([math.log10(0.4), 0.05])  # k = 0.4, sd = 0.05
    llh, grad, fim = objective.value_grad_fim(x)
    llh2, grad2 = objective.value_and_grad(x)
    assert llh == pytest.approx(llh2, rel=1e-12)
    np.testing.assert_allclose(grad, grad2, rtol=1e-10)
    k, sd = 0.4, 0.05
    y = np.exp(-k * TIMES)
    dy = math.log(10) * k * (-TIMES * y)  # d y / d log10(k)
    expected = np.array([[np.sum(dy**2) / sd**2, 0.0],
                         # normal noise: the Fisher information of sd is 2 / sd^2 per point
                         [0.0, 2 * TIMES.size / sd**2]])
    np.testing.assert_allclose(fim, expected, rtol=1e-7)
    # the llh itself, analytically
    r = (MEASURED - y) / sd
    assert llh == pytest.approx(np.sum(-0.5 * np.log(2 * np.pi * sd**2) - 0.5 * r**2),
                                rel=1e-9)
    # a batch: (B, F, F), each row as the single call
    _, _, batch = objective.value_grad_fim(np.stack([x, x + 0.1]))
    assert batch.shape == (2, 2, 2)
    np.testing.assert_allclose(batch[0], fim, rtol=1e-12)


def test_fit_reaches_the_analytic_optimum(decay):
    from scipy.optimize import minimize_scalar

    problem, _ = decay
    # the optimum: k minimises the residual sum of squares, sd^2 = RSS / M
    rss = minimize_scalar(lambda k: np.sum((MEASURED - np.exp(-k * TIMES)) ** 2),
                          bounds=(0.01, 10), method="bounded", options={"xatol": 1e-12})
    sd = math.sqrt(rss.fun / TIMES.size)
    best = 0.5 * TIMES.size * math.log(2 * math.pi * sd**2) + 0.5 * TIMES.size
    result = kp.fit(problem, n_starts=4, seed=3, max_iterations=100, progress=False,
                    solver=NONSTIFF)
    assert "FisherLM" in result.meta["method"]
    assert result.status == ("converged",) * 4
    np.testing.assert_allclose(result.nllh, best, atol=1e-6)
    np.testing.assert_allclose(result.x_linear, [[rss.x, sd]] * 4, rtol=1e-4)
    assert (result.evaluations <= 40).all() and (result.iterations >= 1).all()
    assert result.history.shape[0] == 4
    assert np.all(np.diff(result.history, axis=1) <= 0)  # the best nllh never rises


def test_rosenbrock_as_least_squares_converges():
    """r = (10 (x1 - x0^2), 1 - x0): the Gauss-Newton matrix J'J is its FIM."""

    def evaluate(x):
        r = np.array([10 * (x[1] - x[0] ** 2), 1 - x[0]])
        J = np.array([[-20 * x[0], 10.0], [-1.0, 0.0]])
        return 0.5 * r @ r, J.T @ r, J.T @ J, True

    out = minimize(evaluate, np.array([-1.2, 1.0]), np.full(2, -5.0), np.full(2, 5.0),
                   FisherLM(fatol=1e-15, gatol=1e-10), max_evaluations=100)
    assert out.status == "converged"
    np.testing.assert_allclose(out.x, [1.0, 1.0], atol=1e-6)
    assert out.evaluations < 40
    assert out.history == sorted(out.history, reverse=True)


def test_bounds_hold_and_a_bound_optimum_is_found():
    """0.5 |x - c|^2 with c outside the box: the optimum is c clipped onto it."""
    c = np.array([3.0, -0.5, -4.0])
    lo, hi = np.full(3, -1.0), np.full(3, 1.0)
    seen = []

    def evaluate(x):
        seen.append(x.copy())
        return 0.5 * np.sum((x - c) ** 2), x - c, np.eye(3), True

    out = minimize(evaluate, np.zeros(3), lo, hi, FisherLM(fatol=1e-15, gatol=1e-10),
                   max_evaluations=50)
    assert out.status == "converged"
    np.testing.assert_allclose(out.x, [1.0, -0.5, -1.0], atol=1e-8)
    assert all(np.all((p >= lo) & (p <= hi)) for p in seen)


def test_failures_are_rejected_steps_or_a_failed_start():
    def fails_far(x):
        if abs(x[0]) > 0.5:  # a solve that fails far from the start
            return math.nan, np.full(1, math.nan), np.full((1, 1), math.nan), False
        return 0.5 * (x[0] - 2.0) ** 2, np.array([x[0] - 2.0]), np.eye(1), True

    out = minimize(fails_far, np.zeros(1), np.full(1, -3.0), np.full(1, 3.0), FisherLM(),
                   max_evaluations=200)
    # the steps towards 2 fail beyond 0.5: the start ends as close as it can get
    assert np.isfinite(out.f) and 0.4 < out.x[0] <= 0.5
    dead = minimize(lambda x: (math.nan, x, np.eye(1), False), np.zeros(1), np.full(1, -1.0),
                    np.ones(1), FisherLM(), max_evaluations=10)
    assert dead.status == "failed" and dead.f == math.inf and dead.evaluations == 1
    with pytest.raises(kinabs.DataError, match="FisherLM.gatol"):
        FisherLM(gatol=-1.0)


#: the problems of issue 15 (multi-start fits against pyPESTO + AMICI + Fides)
FIT_PROBLEMS = ["Boehm_JProteomeRes2014", "Bruno_JExpBot2016", "Crauste_CellSystems2017",
                "Fiedler_BMCSystBiol2016", "Fujita_SciSignal2010", "Sneyd_PNAS2002",
                "Brannmark_JBC2010"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FIT_PROBLEMS)
def test_the_fits_program_matches_amici_at_the_nominal_values(name):
    """The program ``fit`` runs (one start, conditions one after another, the fit's
    solver): the AMICI reference llh, and a FIM that is symmetric positive
    semi-definite."""
    from kinabs.petab._multistart import FIT_SOLVER
    from tests.test_petab_benchmarks import AMICI_LLH, COLLECTION

    folder = COLLECTION / name
    if not folder.is_dir():
        pytest.skip(f"no benchmark collection at {COLLECTION}")
    problem = kp.load(folder / f"{name}.yaml")
    llh, grad, fim = problem.objective(solver=FIT_SOLVER).value_grad_fim(problem.x_nominal())
    assert np.isclose(llh, AMICI_LLH[name], rtol=1e-3, atol=1e-3), (llh, AMICI_LLH[name])
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(fim, fim.T, rtol=1e-10, atol=1e-12 * np.abs(fim).max())
    assert np.linalg.eigvalsh(fim).min() >= -1e-8 * np.abs(fim).max()
