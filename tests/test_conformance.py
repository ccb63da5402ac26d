"""Cross-backend conformance (``kinabs.check_conformance`` and ``kinabs conformance``): on the
serine model with its dataset, JAX, torch and the scipy reference agree on trajectories,
losses and gradients at the true parameters and 6 seeded Latin hypercube sets in log and
linear space (the command's README table is for 20 sets; 6 keep the default run short), and Adam runs give the same loss curves; the command's exit statuses, JSON
report and "unsupported on <backend>" rows.

The training check is the issue's: 50 Adam iterations from the same starts in both
spaces (about 1.5 minutes of CPU here).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import kinabs
from kinabs._cli import main
from kinabs._conformance import backends as cb
from kinabs._conformance.reference import ScipyReference
from tests._shared import SHARED

pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")
pytest.importorskip("diffrax")
pytest.importorskip("scipy")

SERINE = str(kinabs.example_model_path())
SERINE_DATA = str(kinabs.example_data_path())


def _rows(report):
    return {r.check: r for r in report.rows}


@pytest.fixture(scope="module")
def serine_report():
    """The true parameters and 6 Latin hypercube sets, both spaces, all three opinions
    (finite-difference reference gradients at the true parameters and two sets)."""
    return kinabs.check_conformance(SERINE, SERINE_DATA, parameter_sets=6, seed=0,
                                    train_iterations=0, method_iterations=0)


def test_serine_backends_and_reference_agree(serine_report):
    rows = _rows(serine_report)
    defaults = "defaults (rtol 1e-08, atol 1e-12) vs reference"
    assert list(rows) == ["trajectory", defaults, "loss (log)", "gradient (log)",
                          "loss (linear)", "gradient (linear)"]
    bad = [f"{r.check}: {r.largest_difference:.3g} > {r.tolerance:.3g} ({r.detail})"
           for r in serine_report.rows if r.verdict != "agree"]
    assert not bad, "\n".join(bad)
    assert serine_report.ok
    assert rows["loss (log)"].tolerance == 1e-6 and rows["gradient (log)"].tolerance == 1e-4
    assert rows["trajectory"].tolerance == pytest.approx(10 * 1e-10)
    assert rows["trajectory"].jax == rows["trajectory"].torch == "7/7 solved"
    # the default tolerances end within 1e-4 of each species' largest value, and are not
    # converged themselves (each backend's largest error is above the trajectory check's)
    assert rows[defaults].tolerance == 1e-4
    assert 1e-9 < float(rows[defaults].jax) < 1e-4 and 1e-9 < float(rows[defaults].torch) < 1e-4
    # the loss at the true parameters is the data's rounding error (~6e-15), yet the
    # backends agree on it to a relative 1e-6
    assert 1e-15 < float(rows["loss (log)"].jax) < 1e-14
    np.testing.assert_allclose(float(rows["loss (log)"].torch), float(rows["loss (log)"].jax),
                               rtol=1e-6)
    assert serine_report.meta["parameter_sets"] == 6
    assert serine_report.meta["parameters"] == list(
        kinabs.lower(kinabs.load_sbml(SERINE)).kinetic_parameters)


def test_serine_report_table_and_json(serine_report, tmp_path):
    df = serine_report.table()
    assert list(df.columns) == ["check", "jax", "torch", "reference", "largest_difference",
                                "tolerance", "verdict", "detail"]
    assert (df["largest_difference"] <= df["tolerance"]).all()
    doc = json.loads(serine_report.to_json(tmp_path / "r.json").read_text())
    assert doc["ok"] is True and len(doc["checks"]) == 6
    assert doc["meta"]["seed"] == 0 and "LSODA" in doc["meta"]["reference"]
    assert "largest rel. diff" in serine_report.format().splitlines()[0]


def test_serine_training_50_iterations_both_spaces():
    """Adam (optax.adam and torch.optim.Adam) from the same 3 starts, 50 iterations, in log
    space (learning rate 1e-2) and linear space (1e-2 times the smallest start value):
    loss curves within 1e-4 at every iteration, and both fits make progress."""
    report = kinabs.check_conformance(SERINE, SERINE_DATA, parameter_sets=3,
                                      reference=False, train_iterations=50)
    rows = {r.check.split(",")[0]: r for r in report.rows if r.check.startswith("training")}
    assert set(rows) == {"training (log", "training (linear"}
    for row in rows.values():
        assert row.verdict == "agree", row
        assert row.largest_difference < 1e-4
        np.testing.assert_allclose(float(row.torch), float(row.jax), rtol=1e-4)
    assert 0 < float(rows["training (log"].jax) < 1e-2
    assert "50 it" in rows["training (log"].check
    # Levenberg-Marquardt, written once for both backends: the same iterates
    its = {r.check.split(",")[0]: r for r in report.rows if r.check.startswith("iterates")}
    assert set(its) == {"iterates (log"}
    for row in its.values():
        assert row.verdict == "agree", row
        assert row.tolerance == 1e-6 and row.largest_difference < 1e-6
        assert "10 it" in row.check


# -- the reference on its own ----------------------------------------------------------------
def test_reference_gradient_matches_jax_at_true_parameters(model):
    """The fourth-order finite-difference reference gradient against JAX's exact one
    (tight solvers), 30 % off the true parameters."""
    tr = kinabs.Trainer(model=model, data=SERINE_DATA, progress=False)
    ref = ScipyReference(tr._problem())
    rows = np.asarray([[model.parameter_values()[p] for p in tr.parameters]]) * 1.3
    out = ref.loss_and_gradient(rows)
    loss, status, grad = cb.loss_and_gradient(
        "jax", model, tr.data, np.log2(rows), space="log", parameters=tr.parameters,
        solver=kinabs.SolverOptions(rtol=1e-10, atol=1e-12))
    assert status[0] == 0
    np.testing.assert_allclose(out["log"][0], loss, rtol=1e-6)
    assert np.max(np.abs(out["log"][1] - grad)) / np.max(np.abs(grad)) < 1e-5


# -- bad input and unsupported models --------------------------------------------------------
def test_data_that_does_not_match_the_model_is_the_trainers_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(",php,nonsense\n0,0.6,1\n1,0.5,2\n")
    with pytest.raises(kinabs.DataError, match="nonsense"):
        kinabs.check_conformance(SERINE, str(bad), parameter_sets=1)


def _fake_backends(monkeypatch, *, torch_scale=1.0, torch_unsupported=None):
    """Backends answered by the scipy reference (fast and deterministic): torch's losses
    scaled by ``torch_scale``, or torch raising UnsupportedFeatureError."""

    def trajectories(backend, system, data, parameters, *, solver):
        _maybe_unsupported(backend)
        tr = kinabs.Trainer(model=system, data=data, progress=False)
        return ScipyReference(tr._problem()).trajectories(parameters), np.zeros(len(parameters))

    def loss_and_gradient(backend, model, data, theta, *, space, parameters, solver):
        _maybe_unsupported(backend)
        tr = kinabs.Trainer(model=model, data=data, parameters=parameters, progress=False)
        rows = np.exp2(theta) if space == "log" else theta
        loss, grad, _ = ScipyReference(tr._problem()).loss_and_gradient(rows)[space]
        scale = torch_scale if backend == "torch" else 1.0
        return loss * scale, np.zeros(len(loss), dtype=int), grad

    def adam_training(backend, *args, n_iter, **kwargs):
        _maybe_unsupported(backend)
        return np.ones((1, n_iter)), ["ok"]

    def _maybe_unsupported(backend):
        if backend == "torch" and torch_unsupported:
            raise kinabs.UnsupportedFeatureError("S1", torch_unsupported)

    monkeypatch.setattr(cb, "trajectories", trajectories)
    monkeypatch.setattr(cb, "loss_and_gradient", loss_and_gradient)
    monkeypatch.setattr(cb, "adam_training", adam_training)


FAST = ["--parameter-sets", "1", "--space", "log", "--train-iterations", "2",
        "--reference-gradient-sets", "1"]


def test_cli_exit_0_and_json_when_all_agree(monkeypatch, tmp_path, capsys):
    _fake_backends(monkeypatch)
    out = tmp_path / "report.json"
    assert main(["conformance", SERINE, "--data", SERINE_DATA, *FAST, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "all checks agree" in text and "largest rel. diff" in text
    doc = json.loads(out.read_text())
    assert doc["ok"] and {c["verdict"] for c in doc["checks"]} == {"agree"}


def test_cli_exit_1_on_a_disagreement(monkeypatch, tmp_path, capsys):
    _fake_backends(monkeypatch, torch_scale=1 + 1e-3)
    assert main(["conformance", SERINE, "--data", SERINE_DATA, *FAST,
                 "--out", str(tmp_path)]) == 1
    doc = json.loads((tmp_path / "conformance-report.json").read_text())
    loss = next(c for c in doc["checks"] if c["check"] == "loss (log)")
    assert loss["verdict"] == "disagree"
    assert loss["largest_difference"] == pytest.approx(1e-3, rel=0.05)
    assert "DISAGREEMENT" in capsys.readouterr().out


def test_cli_unsupported_on_torch_is_not_a_disagreement(monkeypatch, tmp_path, capsys):
    _fake_backends(monkeypatch, torch_unsupported="a feature torch cannot lower")
    assert main(["conformance", SERINE, *FAST, "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "unsupported on torch: a feature torch cannot lower (element 'S1')" in text
    doc = json.loads((tmp_path / "conformance-report.json").read_text())
    assert {c["verdict"] for c in doc["checks"]} == {"unsupported"}
    assert doc["meta"]["data"].startswith("synthetic")


def test_cli_exit_2_on_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text(",php,nonsense\n0,0.6,1\n1,0.5,2\n")
    assert main(["conformance", SERINE, "--data", str(bad), *FAST]) == 2
    err = capsys.readouterr().err
    assert "nonsense" in err
    assert main(["conformance", str(tmp_path / "missing.xml")]) == 2


def test_model_no_backend_can_load_is_unsupported_on_both(tmp_path):
    path = SHARED / "data" / "jaxkineticmodel" / "models" / "Bertozzi2020.xml"
    if not path.exists():
        pytest.skip(f"no shared models at {path.parent}")
    report = kinabs.check_conformance(str(path), parameter_sets=1)
    assert report.ok and [r.verdict for r in report.rows] == ["unsupported"]
    assert report.rows[0].detail.startswith("unsupported on jax and torch: event")


# -- the loss floor ---------------------------------------------------------------------------
@pytest.mark.parametrize("space", ["log", "linear"])
def test_loss_floor_bounds_the_change_trajectory_differences_can_make(space):
    """Near a perfect fit (residuals 1e-7 relative) trajectories that differ by the
    trajectory check's tolerance change the loss by at most ``floor * loss_rtol``, and the
    bound is not loose by more than a factor 2 (the worst perturbation reaches it)."""
    from types import SimpleNamespace

    import array_api_compat.numpy as xp

    from kinabs._conformance.check import _loss_floor
    from kinabs._losses import DEFAULT_TERMS

    rng = np.random.default_rng(0)
    obs = rng.uniform(0.1, 10.0, size=(12, 3))
    obs[3, 1] = np.nan
    mask = np.isfinite(obs)
    data = SimpleNamespace(experiments=[SimpleNamespace(values=obs, mask=mask)])
    pred = np.where(mask, obs, 1.0) * (1 + 1e-7 * rng.choice([-1.0, 1.0], size=obs.shape))
    rtol, atol, factor, loss_rtol = 1e-10, 1e-14, 10.0, 1e-6
    floor = _loss_floor([pred[None]], data, space, rtol, atol, factor, loss_rtol)[0]

    def loss(p):
        sse, n = DEFAULT_TERMS[space](p, obs, mask, xp)
        return sse / n

    # the worst case: every point moved away from its datum by the full tolerance
    worst = pred + np.sign(pred - np.where(mask, obs, 0.0)) * factor * (rtol * np.abs(pred)
                                                                        + atol)
    change = abs(loss(worst) - loss(pred))
    assert change <= floor * loss_rtol * (1 + 1e-6)
    assert change >= 0.5 * floor * loss_rtol
    # and the floor is what lets a loss of ~1e-14 be judged at all: 8e-4 relative apart
    assert floor * loss_rtol > 1e-3 * loss(pred)


# -- trajectories beyond the tolerance: the solvers' resolution ----------------------------
def _trajectory_row(**kw):
    report = kinabs.check_conformance(
        SERINE, SERINE_DATA, parameter_sets=1, train_iterations=0, spaces=("log",),
        reference_gradient_sets=0, solver=kinabs.SolverOptions(rtol=1e-8, atol=1e-10),
        tolerances=kinabs.ConformanceTolerances(trajectory_factor=1e-3), **kw)
    return next(r for r in report.rows if r.check == "trajectory")


def test_trajectory_differences_that_shrink_with_rtol_agree():
    """At rtol 1e-8 the opinions differ by ~2e-8, far over a tolerance of 1e-11; re-solved
    at rtol 1e-9 every pair differs ~10x less: the solvers' global error, converging."""
    row = _trajectory_row()
    assert row.largest_difference > 1e3 * row.tolerance
    assert row.verdict == "agree" and "converging" in row.detail
    assert row.detail.count("->") == 3  # jax-torch, jax-reference, torch-reference


def test_trajectory_differences_that_do_not_shrink_disagree(monkeypatch):
    """The same differences at the tighter tolerance (as a lowering difference would be):
    a disagreement."""
    from kinabs._conformance import check as conf

    real = conf._trajectories
    first = []

    def frozen(*args):
        if not first:
            first.append(real(*args))
        return first[0]

    monkeypatch.setattr(conf, "_trajectories", frozen)
    row = _trajectory_row()
    assert row.verdict == "disagree" and "not converging" in row.detail


def test_reference_gradient_refines_steps_where_truncation_matters():
    """A component whose second- and fourth-order differences disagree is differenced
    with 10x smaller steps until two agree; a smooth one keeps its first step."""
    from kinabs._losses import DEFAULT_TERMS

    def fake(row, j, h):  # component 0: truncation 1e5 h^2 (a spiky loss); 1: smooth
        d4 = 1.0 + (1e5 * h * h if j == 0 else 0.0)
        d2 = 1.0 + (1e6 * h if j == 0 else 1e-9)
        return (h, dict.fromkeys(DEFAULT_TERMS, d4), dict.fromkeys(DEFAULT_TERMS, d2), [])

    ref = object.__new__(ScipyReference)
    ref._differences = fake
    steps = ref._refined(np.ones(2), [fake(None, j, 1e-3) for j in range(2)])
    assert steps[0][0] == pytest.approx(1e-5) and steps[1][0] == 1e-3
    assert abs(steps[0][1]["log"] - 1.0) < 2e-5 and steps[1][1]["log"] == 1.0


def test_jax_gradient_check_goes_on_with_forward_sensitivities(model, monkeypatch):
    """As training does: a row whose reverse-mode gradient is NaN while its loss is
    finite is redone with forward-mode sensitivities (the same gradient)."""
    import jax
    import jax.numpy as jnp

    monkeypatch.setenv("KINABS_JAX_CACHE", "0")
    tr = kinabs.Trainer(model=model, data=SERINE_DATA, progress=False,
                        solver=kinabs.SolverOptions(method="stiff"),
                        optimizer=kinabs.get_backend("jax").default_optimizer())
    theta = np.log2([[model.parameter_values()[p] * 1.3 for p in tr.parameters]] * 2)
    program = tr._get_program()
    plain = program.value_and_grad(theta)

    @jax.custom_vjp
    def poison(t):
        return t

    poison.defvjp(lambda t: (t, None), lambda _, g: (g * jnp.nan,))
    main_fn = program._loss_fns["main"]
    program._loss_fns["main"] = lambda t, active: main_fn(poison(t), active)
    program._vg_batched = {}  # rebuilt with the poisoned loss
    loss, status, grad = program.value_and_grad(theta)
    assert np.all(status == 0) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(loss, plain[0], rtol=1e-12)
    np.testing.assert_allclose(grad, plain[2], rtol=1e-7, atol=1e-12 * np.abs(grad).max())


PETAB_CASE = SHARED / "petab" / "test-suite" / "v1.0.0" / "sbml" / "0009" / "_0009.yaml"


@pytest.mark.skipif(not PETAB_CASE.is_file(), reason=f"no {PETAB_CASE}")
def test_conformance_of_a_petab_problem_with_preequilibration(tmp_path, capsys):
    """``kinabs conformance PROBLEM.yaml``: the llh on both backends, the compiled JAX llh
    and its gradient against central differences; torch's missing compiled objective is
    'unsupported', not a disagreement."""
    pytest.importorskip("petab.v1")
    assert main(["conformance", str(PETAB_CASE), "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "conformance-report.json").read_text())
    rows = {c["check"]: c for c in doc["checks"]}
    assert list(rows) == ["llh", "llh (compiled)", "gradient"]
    assert rows["llh"]["verdict"] == "agree"
    assert rows["llh (compiled)"]["verdict"] == "unsupported"  # judged where it ran
    assert rows["llh"]["largest_difference"] < 1e-7
    assert rows["llh (compiled)"]["largest_difference"] < 1e-9
    assert rows["gradient"]["verdict"] == "unsupported"
    assert rows["gradient"]["largest_difference"] < 1e-4
    assert "unsupported on torch" in capsys.readouterr().out
