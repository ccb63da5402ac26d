"""The Trainer on JAX: the seed's workflow on the bundled serine model, rounds, options,
custom losses, failures, thresholds and results.

Compiling a training program costs seconds, so the tests share a few trainers (module
fixtures) and reuse their programs: a trainer keeps its program across ``train()`` calls
and ``n_iter`` changes, and a fresh trainer with the default settings loads the program
from the session's disk cache (KINABS_JAX_CACHE, a temporary folder here). Programs
compiled here: the seed workflow (default settings, N=3), its gradient, two experiments
with missing values and a loss threshold, linear space with Adam, a custom loss, and a
solver with few steps.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
pytest.importorskip("diffrax")

import jax.numpy as jnp  # noqa: E402

import kinabs  # noqa: E402
from kinabs import BackendError, DataError  # noqa: E402
from kinabs._problem import CustomLoss  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
SEED = 11
SPECIES = ["php", "pser"]
SOLVER = kinabs.SolverOptions(max_steps=20_000)  # the Trainer's default solver
# Explicit only, for tests that are not about the solver.
EXPLICIT = kinabs.SolverOptions(method="nonstiff", max_steps=20_000)


def _seed_trainer(model, n_iter=30, **kwargs):
    """The tutorial: base parameters all ones, bounds 1/10 and 10, three starts."""
    trainer = kinabs.Trainer(model=model, data=kinabs.example_data_path(), n_iter=n_iter,
                             progress=False, **kwargs)
    trainer.latinhypercube_sampling({p: 1.0 for p in trainer.parameters}, lower_bound=1 / 10,
                                    upper_bound=10, N=3, seed=SEED)
    return trainer


@pytest.fixture(scope="module")
def trainer(model):
    return _seed_trainer(model)


@pytest.fixture(scope="module")
def round1(trainer):
    trainer.n_iter = 30
    return trainer.train()


@pytest.fixture(scope="module")
def round2(trainer, round1):
    trainer.n_iter = 5
    try:
        return trainer.train(resume=round1)
    finally:
        trainer.n_iter = 30


@pytest.fixture
def no_compile(monkeypatch):
    """Fail the test if a training program starts to be built."""
    from kinabs.backends.jax import _train

    def refuse(self):
        raise AssertionError("a training program was built; the error should come first")

    monkeypatch.setattr(_train.JaxTrainingProgram, "_make_loss", refuse)


def _simulate(model, params: pd.DataFrame, experiment):
    """Each row of ``params`` simulated at an experiment's times from its initial values."""
    sim = kinabs.simulate(model, experiment.times, parameters=params, initial=experiment.initial,
                          t0=float(experiment.times[0]), outputs=list(experiment.species),
                          solver=SOLVER)
    assert sim.ok
    return sim.values  # (rows, times, species)


def _mean_centered(pred, obs):
    """sse and count of the default log-space loss for one experiment (numpy)."""
    mask = np.isfinite(obs)
    obs0 = np.where(mask, obs, 0.0)
    scale = (mask * (obs0 + 1.0)).sum(0) / mask.sum(0)
    resid = np.where(mask, (pred - obs0) / scale, 0.0)
    return (resid**2).sum(), mask.sum()


def tutorial_loss(params, ts, ys, model, to_include):
    """The tutorial's custom loss: log-space parameters exponentiated (base 2), NaNs masked,
    species scaled by their mean, only the species in ``to_include`` kept."""
    params = kinabs.exponentiate_parameters(params)
    mask = ~jnp.isnan(jnp.array(ys))
    ys = jnp.atleast_2d(ys)
    y0 = ys[0, :]
    y_pred = model(ts, y0, params)
    ys = jnp.where(mask, ys, 0)
    ys += 1
    y_pred += 1
    scale = jnp.mean(ys, axis=0)
    ys /= scale
    y_pred /= scale
    y_pred = jnp.where(mask, y_pred, 0)
    ys = ys[:, to_include]
    y_pred = y_pred[:, to_include]
    non_nan_count = jnp.sum(mask)
    return jnp.sum((y_pred - ys) ** 2) / non_nan_count


# -- the seed's workflow -------------------------------------------------------------------
def test_tutorial_workflow_shapes_and_types(model, trainer, round1):
    assert trainer.parameters == list(kinabs.lower(model).kinetic_parameters)
    sets = trainer.parameter_sets
    assert sets.shape == (3, 10) and list(sets.columns) == trainer.parameters
    assert ((sets >= 0.1) & (sets <= 10)).all().all()
    optimized_parameters, loss_per_iteration = round1
    assert isinstance(optimized_parameters, dict)
    assert sorted(optimized_parameters) == [0, 1, 2]
    for row in optimized_parameters.values():
        assert list(row) == trainer.parameters
        assert all(isinstance(v, float) and v > 0 for v in row.values())
    assert isinstance(loss_per_iteration, np.ndarray)
    assert loss_per_iteration.shape == (3, 30)
    assert np.isfinite(loss_per_iteration).all()
    assert round1.status == ["ok"] * 3
    np.testing.assert_array_equal(round1.initial_parameters.to_numpy(), sets.to_numpy())
    assert round1.meta["n_iter"] == 30 and round1.meta["backend"] == "jax"
    assert round1.meta["optim_space"] == "log"
    assert trainer.results is not None


def test_latinhypercube_sampling_is_seeded(trainer):
    base = {p: 1.0 for p in trainer.parameters}
    keep = trainer.parameter_sets
    try:
        a = trainer.latinhypercube_sampling(base, lower_bound=0.1, upper_bound=10, N=3,
                                            seed=SEED)
        b = trainer.latinhypercube_sampling(base, lower_bound=0.1, upper_bound=10, N=3,
                                            seed=SEED + 1)
        pd.testing.assert_frame_equal(a, keep)
        assert not np.allclose(a.to_numpy(), b.to_numpy())
        # a partial base: the other parameters are sampled around the model's values
        c = trainer.latinhypercube_sampling({"PDH.kcatA": 1.0}, lower_bound=1, upper_bound=1,
                                            N=2, seed=0)
        assert (c["PDH.kcatA"] == 1.0).all() and (c["PSP.KBser"] == 0.15).all()
    finally:
        trainer.parameter_sets = keep


def test_default_loss_is_the_mean_centred_loss(model, trainer, round1):
    """The first recorded loss of each start is the mean-centred loss at its start,
    computed here from kinabs.simulate."""
    (e,) = trainer.data.experiments
    pred = _simulate(model, round1.initial_parameters, e)
    for i in range(3):
        sse, n = _mean_centered(pred[i], e.values)
        assert round1.loss_history[i, 0] == pytest.approx(sse / n, rel=1e-6)


def test_losses_decrease(round1):
    h = round1.loss_history
    assert np.all(h[:, -1] < h[:, 0])
    assert np.all(round1.final_loss < h[:, -1])
    assert np.mean(np.diff(h, axis=1) < 0) > 0.9


def test_resume_joins_rounds_and_continues(round1, round2):
    assert round2.loss_history.shape == (3, 35)
    np.testing.assert_array_equal(round2.loss_history[:, :30], round1.loss_history)
    np.testing.assert_allclose(round2.loss_history[:, 30], round1.final_loss, rtol=1e-10)
    pd.testing.assert_frame_equal(round2.initial_parameters, round1.initial_parameters)
    assert round2.meta["n_iter"] == 35
    assert np.all(round2.final_loss < round1.final_loss)
    assert not np.allclose(round2.parameters.to_numpy(), round1.parameters.to_numpy())


def test_resume_equals_one_long_run(trainer, round1, round2):
    """Resuming carries the optimiser state: 30 + 5 iterations are 35 iterations."""
    program = trainer._get_program()
    trainer.n_iter = 35
    try:
        once = trainer.train()
    finally:
        trainer.n_iter = 30
    assert once._program is program is round1._program  # no new program for a new n_iter
    np.testing.assert_allclose(once.loss_history, round2.loss_history, rtol=1e-12)
    np.testing.assert_allclose(once.parameters.to_numpy(), round2.parameters.to_numpy(),
                               rtol=1e-12)


def test_optimized_parameters_round_trip_as_parameter_sets(trainer, round1):
    keep = trainer.parameter_sets
    optimized_parameters, _ = round1
    trainer.parameter_sets = pd.DataFrame(optimized_parameters).T
    trainer.n_iter = 2
    try:
        np.testing.assert_array_equal(trainer.parameter_sets.to_numpy(),
                                      round1.parameters.to_numpy())
        again = trainer.train()
    finally:
        trainer.n_iter = 30
        trainer.parameter_sets = keep
    assert again.loss_history.shape == (3, 2)
    np.testing.assert_allclose(again.loss_history[:, 0], round1.final_loss, rtol=1e-10)


def test_resume_from_results_loaded_from_disk(trainer, round1, tmp_path):
    loaded = kinabs.TrainingResults.load(round1.save(tmp_path / "round1"))
    trainer.n_iter = 3
    try:
        more = trainer.train(resume=loaded)
    finally:
        trainer.n_iter = 30
    assert more.loss_history.shape == (3, 33)
    np.testing.assert_allclose(more.loss_history[:, 30], round1.final_loss, rtol=1e-10)


def test_summary_save_load(round2, tmp_path):
    s = round2.summary()
    assert list(s["final_loss"]) == sorted(round2.final_loss)
    assert s.index[0] == round2.best_index
    assert list(s["iterations"]) == [35] * 3 and list(s["restarts"]) == [0] * 3
    assert list(s.columns[4:]) == list(round2.parameters.columns)
    back = kinabs.TrainingResults.load(round2.save(tmp_path / "fit"))
    np.testing.assert_array_equal(back.parameters.to_numpy(), round2.parameters.to_numpy())
    np.testing.assert_array_equal(back.loss_history, round2.loss_history)
    np.testing.assert_array_equal(back.final_loss, round2.final_loss)
    assert back.status == round2.status
    assert back.meta["model"] == round2.meta["model"]
    assert back.meta["model_fingerprint"] == round2.meta["model_fingerprint"]


def test_plots_write_png(model, round2, tmp_path):
    import matplotlib.pyplot as plt

    fig = round2.plot_loss(tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == PNG
    assert len(fig.axes[0].lines) == 3 and fig.axes[0].lines[0].get_xdata().size == 35
    plt.close(fig)
    fig = round2.plot_fit(tmp_path / "fit.png")
    assert (tmp_path / "fit.png").read_bytes()[:8] == PNG
    ax = fig.axes[0]
    assert len(ax.lines) == 4  # curve and data points of each species
    e = round2._trainer.data.experiments[0]
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), e.values[:, 0])
    plt.close(fig)
    # results loaded from disk plot with the model and data given
    back = kinabs.TrainingResults.load(round2.save(tmp_path / "fit"))
    fig = back.plot_fit(tmp_path / "fit2.png", model=model, data=kinabs.example_data_path())
    assert (tmp_path / "fit2.png").read_bytes()[:8] == PNG
    plt.close(fig)


def test_gradient_matches_finite_differences(trainer, round1):
    program = trainer._get_program()
    theta0 = np.log2(round1.initial_parameters.to_numpy()[0])
    with jax.enable_x64(True):
        vg = jax.jit(jax.value_and_grad(lambda th: program._loss_one(th)[0]))
        value, grad = vg(jnp.asarray(theta0))
        grad = np.asarray(grad)
        h = 1e-3
        fd = np.empty_like(theta0)
        for i in range(theta0.size):
            step = np.zeros_like(theta0)
            step[i] = h
            fd[i] = (float(vg(jnp.asarray(theta0 + step))[0])
                     - float(vg(jnp.asarray(theta0 - step))[0])) / (2 * h)
    assert float(value) == pytest.approx(round1.loss_history[0, 0], rel=1e-12)
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-4 * np.abs(grad).max())


@pytest.mark.slow
def test_program_loss_matches_training_losses(trainer, round1):
    program = trainer._get_program()
    loss, status = program.loss(np.log2(round1.initial_parameters.to_numpy()))
    np.testing.assert_allclose(loss, round1.loss_history[:, 0], rtol=1e-12)
    np.testing.assert_array_equal(status, 0)


# -- two experiments, missing values, a loss threshold -----------------------------------
@pytest.fixture(scope="module")
def two_experiments(model):
    """Data simulated at the model's own parameters: experiment A (the model's start, times
    0..10) and B (another start at t=0.5, other times), with missing values, one of them in
    A's first row (so that pser starts from the model's value there)."""
    ta = np.linspace(0.0, 10.0, 8)
    a = kinabs.simulate(model, ta, outputs=SPECIES, solver=SOLVER).to_frame()
    tb = np.array([0.5, 1.0, 2.0, 4.0, 8.0])
    b = kinabs.simulate(model, tb, initial={"php": 0.3, "pser": 0.2}, t0=0.5,
                        outputs=SPECIES, solver=SOLVER).to_frame()
    a.iloc[0, 1] = np.nan
    a.iloc[3, 0] = np.nan
    a.iloc[5, 1] = np.nan
    b.iloc[2, 0] = np.nan
    b.iloc[4, 1] = np.nan
    trainer = kinabs.Trainer(model=model, data=[a, b], n_iter=8, progress=False,
                             loss_threshold=1e-12, solver=EXPLICIT)
    truth = model.parameter_values()
    trainer.parameter_sets = pd.DataFrame([truth, {k: 1.5 * v for k, v in truth.items()}])
    return trainer, trainer.train()


def test_experiments_keep_their_own_times_and_starts(two_experiments):
    trainer, _ = two_experiments
    a, b = trainer.data.experiments
    assert a.initial == {"php": 0.6}
    assert b.initial == {"php": pytest.approx(0.3), "pser": pytest.approx(0.2)}
    np.testing.assert_array_equal(b.times, [0.5, 1.0, 2.0, 4.0, 8.0])


def test_perfect_fit_scores_zero_with_missing_values(two_experiments):
    trainer, res = two_experiments
    assert 0.0 <= res.loss_history[0, 0] < 1e-14
    # the seed's loss gives the same perfect fit a constant per missing value
    seed_total, count = 0.0, 0
    for e in trainer.data.experiments:
        mask = e.mask
        ys = np.where(mask, e.values, 0.0) + 1.0
        scale = ys.mean(0)
        seed_total += (((1.0 / scale) ** 2)[np.nonzero(~mask)[1]]).sum()
        count += mask.sum()
    assert seed_total / count > 1e-2


def test_two_experiments_pooled_loss(model, two_experiments):
    """The loss pools both experiments, each simulated from its own start and times."""
    trainer, res = two_experiments
    start = res.initial_parameters.iloc[[1]]
    sse = n = 0.0
    for e in trainer.data.experiments:
        s, c = _mean_centered(_simulate(model, start, e)[0], e.values)
        sse, n = sse + s, n + c
    assert n == 5 * 2 + 8 * 2 - 5
    assert res.loss_history[1, 0] == pytest.approx(sse / n, rel=1e-6)
    assert res.status == ["ok", "ok"]
    assert res.loss_history[1, -1] < res.loss_history[1, 0]


def test_loss_threshold_stops_a_start(two_experiments):
    _, res = two_experiments
    assert np.isfinite(res.loss_history[0, 0])
    assert np.isnan(res.loss_history[0, 1:]).all()
    assert np.isfinite(res.loss_history[1]).all()
    assert list(res.summary().sort_index()["iterations"]) == [1, 8]
    assert res.best_index == 0


def test_stopped_perfect_start_keeps_its_parameters(model, two_experiments):
    trainer, res = two_experiments
    np.testing.assert_allclose(res.parameters.iloc[0].to_numpy(),
                               res.initial_parameters.iloc[0].to_numpy(), rtol=1e-12)
    assert res.final_loss[0] < trainer.loss_threshold


def test_plot_fit_two_experiments(two_experiments, tmp_path):
    import matplotlib.pyplot as plt

    _, res = two_experiments
    fig = res.plot_fit(tmp_path / "two.png", index=1)
    assert (tmp_path / "two.png").read_bytes()[:8] == PNG
    assert len(fig.axes) == 2
    plt.close(fig)


# -- linear space, another optimiser -------------------------------------------------------
def test_linear_space_uses_mean_squared_error(model):
    truth = model.parameter_values()
    trainer = kinabs.Trainer(model=model, data=kinabs.example_data_path(), n_iter=4,
                             optim_space="linear", optimizer=optax.adam(1e-5), progress=False,
                             solver=EXPLICIT)
    trainer.parameter_sets = pd.DataFrame([{k: 1.2 * v for k, v in truth.items()},
                                           {k: 0.9 * v for k, v in truth.items()}])
    res = trainer.train()
    (e,) = trainer.data.experiments
    pred = _simulate(model, res.initial_parameters, e)
    for i in range(2):
        mse = np.mean((pred[i] - e.values) ** 2)
        assert res.loss_history[i, 0] == pytest.approx(mse, rel=1e-6)
    assert res.meta["optim_space"] == "linear"
    assert res.status == ["ok", "ok"]
    assert np.all(res.final_loss < res.loss_history[:, 0])
    # linear steps: the parameters moved by about n_iter * learning rate (Adam)
    moved = np.abs(res.parameters.to_numpy() - res.initial_parameters.to_numpy())
    assert moved.max() <= 4 * 1e-5 * 1.01 and moved.max() > 1e-6


# -- custom losses -------------------------------------------------------------------------
def test_custom_loss_set_after_training_takes_effect(model, round1):
    trainer = _seed_trainer(model, n_iter=3)  # the default program, from the disk cache
    first = trainer.train()
    np.testing.assert_allclose(first.loss_history, round1.loss_history[:, :3], rtol=1e-12)
    trainer._create_loss_func(tutorial_loss, to_include=[0])
    custom = trainer.train()
    assert custom._program is not first._program
    (e,) = trainer.data.experiments
    pred = _simulate(model, custom.initial_parameters, e)
    scale = (e.values + 1.0).mean(0)
    for i in range(3):
        want = np.sum(((pred[i, :, 0] - e.values[:, 0]) / scale[0]) ** 2) / e.values.size
        assert custom.loss_history[i, 0] == pytest.approx(want, rel=1e-6)
        assert custom.loss_history[i, 0] < first.loss_history[i, 0]
    assert np.all(custom.final_loss < custom.loss_history[:, 0])
    # back to the default loss: the default values again
    trainer.loss = None
    again = trainer.train()
    np.testing.assert_allclose(again.loss_history, first.loss_history, rtol=1e-12)


def test_custom_loss_through_the_constructor(model):
    trainer = kinabs.Trainer(model=model, data=kinabs.example_data_path(), loss=tutorial_loss,
                             loss_kwargs={"to_include": [0]}, progress=False)
    assert trainer.loss == CustomLoss(tutorial_loss, {"to_include": [0]})
    assert trainer.loss.wants_model
    other = kinabs.Trainer(model=model, data=kinabs.example_data_path(), progress=False)
    assert other.loss is None
    assert other._create_loss_func(tutorial_loss, to_include=[0]) == trainer.loss


def test_custom_loss_must_return_a_scalar(model):
    def vector_loss(params, ts, ys):
        return jnp.stack([params[k] for k in params])

    trainer = _seed_trainer(model, n_iter=1, loss=vector_loss)
    with pytest.raises(BackendError, match="scalar"):
        trainer.train()


@pytest.mark.usefixtures("no_compile")
def test_custom_loss_signature_checked_before_compiling(model):
    with pytest.raises(DataError, match="ys"):
        kinabs.Trainer(model=model, data=kinabs.example_data_path(),
                       loss=lambda params, ts: 0.0)
    with pytest.raises(DataError, match="to_exclude"):
        kinabs.Trainer(model=model, data=kinabs.example_data_path(), loss=tutorial_loss,
                       loss_kwargs={"to_exclude": [0]})
    with pytest.raises(DataError, match="callable"):
        kinabs.Trainer(model=model, data=kinabs.example_data_path(), loss="mse")
    trainer = _seed_trainer(model)
    with pytest.raises(DataError, match="params"):
        trainer.loss = lambda p, ts, ys: 0.0


# -- errors before any compilation ---------------------------------------------------------
@pytest.mark.usefixtures("no_compile")
@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_bad_n_iter(model, bad):
    with pytest.raises(DataError, match="n_iter"):
        kinabs.Trainer(model=model, data=kinabs.example_data_path(), n_iter=bad)
    trainer = _seed_trainer(model)
    with pytest.raises(DataError, match="n_iter"):
        trainer.n_iter = bad
    assert trainer.n_iter == 30


@pytest.mark.usefixtures("no_compile")
def test_unknown_names_and_bad_bounds(model):
    trainer = _seed_trainer(model)
    with pytest.raises(DataError, match="'k_unknown'"):
        trainer.latinhypercube_sampling({"k_unknown": 1.0}, lower_bound=0.1, upper_bound=10,
                                        N=2)
    with pytest.raises(DataError, match="'k_unknown'"):
        trainer.parameter_sets = pd.DataFrame({"PDH.kcatA": [1.0], "k_unknown": [1.0]})
    with pytest.raises(DataError, match="lower_bound"):
        trainer.latinhypercube_sampling({}, lower_bound=10, upper_bound=0.1, N=2)
    with pytest.raises(DataError, match="positive"):
        trainer.latinhypercube_sampling({}, lower_bound=0.0, upper_bound=10, N=2)
    with pytest.raises(DataError, match="positive"):
        trainer.parameter_sets = pd.DataFrame({"PDH.kcatA": [-1.0]})
    with pytest.raises(DataError, match="finite"):
        trainer.parameter_sets = pd.DataFrame({"PDH.kcatA": [np.nan]})
    with pytest.raises(DataError, match="empty"):
        trainer.parameter_sets = pd.DataFrame({"PDH.kcatA": []})
    with pytest.raises(DataError, match="'nope'"):
        kinabs.Trainer(model=model, data=kinabs.example_data_path(), parameters=["nope"])


@pytest.mark.usefixtures("no_compile")
def test_partial_parameter_sets_take_model_values(model):
    trainer = _seed_trainer(model)
    trainer.parameter_sets = pd.DataFrame({"PDH.kcatA": [2.0, 3.0]})
    sets = trainer.parameter_sets
    assert list(sets.columns) == trainer.parameters
    assert list(sets["PDH.kcatA"]) == [2.0, 3.0]
    assert (sets["PSP.KBser"] == 0.15).all()


@pytest.mark.usefixtures("no_compile")
def test_bad_options(model):
    data = kinabs.example_data_path()
    with pytest.raises(DataError, match="optim_space"):
        kinabs.Trainer(model=model, data=data, optim_space="exp")
    with pytest.raises(DataError, match="loss_threshold"):
        kinabs.Trainer(model=model, data=data, loss_threshold=0.0)
    with pytest.raises(DataError, match="SolverOptions"):
        kinabs.Trainer(model=model, data=data, solver={"rtol": 1e-6})
    with pytest.raises(DataError, match="'glucose'"):
        kinabs.Trainer(model=model, data=pd.DataFrame({"glucose": [1.0, 2.0]}, index=[0., 1.]))
    with pytest.raises(DataError, match="latinhypercube_sampling"):
        kinabs.Trainer(model=model, data=data).train()


@pytest.mark.usefixtures("no_compile")
def test_optimizer_must_be_optax(model):
    data = kinabs.example_data_path()
    with pytest.raises(BackendError, match="optax"):
        kinabs.Trainer(model=model, data=data, optimizer="adam")
    with pytest.raises(BackendError, match="optax"):
        kinabs.Trainer(model=model, data=data, optimizer=optax.adam)  # the factory itself
    trainer = _seed_trainer(model)
    trainer.optimizer = "adam"
    with pytest.raises(BackendError, match="optax"):
        trainer.train()


@pytest.mark.usefixtures("no_compile")
def test_torch_optimizer_on_jax_is_refused(model):
    torch = pytest.importorskip("torch")
    with pytest.raises(BackendError, match="torch"):
        kinabs.Trainer(model=model, data=kinabs.example_data_path(),
                       optimizer=torch.optim.Adam)


# -- failing starts ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def failing(model):
    """Few explicit solver steps: starts around all-ones parameters need ~10-30 Tsit5
    steps, the model's own parameters ~270, so start 0 (the model's parameters) fails.
    ("nonstiff": "auto" would redo that start with the implicit solver.)"""
    trainer = kinabs.Trainer(model=model, data=kinabs.example_data_path(), n_iter=30,
                             progress=False,
                             solver=kinabs.SolverOptions(method="nonstiff", max_steps=100))
    trainer.latinhypercube_sampling({p: 1.0 for p in trainer.parameters}, lower_bound=0.5,
                                    upper_bound=2, N=3, seed=5)
    sets = trainer.parameter_sets.copy()
    sets.iloc[0] = pd.Series(model.parameter_values())[trainer.parameters].to_numpy()
    trainer.parameter_sets = sets
    return trainer, trainer.train()


def test_failing_start_is_marked_and_others_train(failing):
    trainer, res = failing
    assert res.status == ["failed: max_steps_reached", "ok", "ok"]
    assert np.isnan(res.loss_history[0]).all()
    assert np.isnan(res.final_loss[0])
    # frozen where it failed (up to the log2/exp2 round trip)
    np.testing.assert_allclose(res.parameters.iloc[0].to_numpy(),
                               trainer.parameter_sets.iloc[0].to_numpy(), rtol=1e-14)
    assert np.isfinite(res.loss_history[1:]).all()
    assert np.all(res.loss_history[1:, -1] < res.loss_history[1:, 0])
    assert np.isfinite(res.final_loss[1:]).all()
    assert res.best_index in (1, 2)
    assert list(res.summary().index)[-1] == 0
    np.testing.assert_array_equal(res.restarts, [0, 0, 0])


def test_resample_failed_replaces_failed_starts(failing):
    trainer, plain = failing
    trainer.resample_failed = True
    try:
        res = trainer.train()
    finally:
        trainer.resample_failed = False
    np.testing.assert_array_equal(res.restarts, [1, 0, 0])
    assert res.status == ["ok", "ok", "ok"]
    # the failed start was replaced after the first chunk (25 iterations) by a new sample
    # within the bounds, and trained for the rest of the round
    assert np.isnan(res.loss_history[0, :25]).all()
    assert np.isfinite(res.loss_history[0, 25:]).all()
    new_start = res.initial_parameters.iloc[0].to_numpy()
    assert np.all((new_start >= 0.5) & (new_start <= 2.0))
    # the other starts are untouched by the restart
    np.testing.assert_array_equal(res.loss_history[1:], plain.loss_history[1:])
    pd.testing.assert_frame_equal(res.initial_parameters.iloc[1:],
                                  plain.initial_parameters.iloc[1:])
    # the trainer's own starts are not changed
    assert trainer.parameter_sets.iloc[0]["PSP.KBser"] == 0.15


# -- the default loss's gradient with a species that is never measured -------------------
def test_mean_centred_gradient_with_an_unmeasured_species():
    from kinabs._losses import mean_centered_terms

    obs = np.array([[1.0, np.nan], [2.0, np.nan], [3.0, np.nan]])
    with jax.enable_x64(True):
        mask = jnp.isfinite(obs)
        grad = jax.grad(lambda p: mean_centered_terms(p, jnp.asarray(obs), mask, jnp)[0])(
            jnp.ones((3, 2)))
    assert np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.slow
def test_a_nan_gradient_of_the_explicit_solver_is_redone_implicitly():
    """Isensee_JCB2018 at its own parameters: Tsit5 gives a finite loss but a NaN
    gradient (rejected trial steps visit states where the vector field is NaN); the start
    must go on with the implicit solver, not fail as it did."""
    from tests._shared import SHARED

    path = SHARED / "data/jaxkineticmodel/models/Isensee_JCB2018.xml"
    if not path.is_file():
        pytest.skip("shared models not found")
    model = kinabs.load_sbml(path)
    ts = np.linspace(0, 10, 50)
    sim = kinabs.simulate(model, ts)
    data = pd.DataFrame(sim.values[0], columns=sim.columns, index=pd.Index(ts, name="time"))
    values = model.parameter_values()
    names = [p for p in kinabs.Trainer(model=model, data=data, n_iter=1,
                                       progress=False).parameters if values[p] > 0]
    trainer = kinabs.Trainer(model=model, data=data, n_iter=3, progress=False,
                             parameters=names)
    trainer.parameter_sets = pd.DataFrame([{p: values[p] for p in names}])
    results = trainer.train()
    assert results.status == ["ok"]
    # synthetic data from these very parameters: the loss is rounding-level
    assert np.all(np.isfinite(results.loss_history)) and results.best_loss < 1e-12


def test_auto_goes_on_without_the_step_cap_where_the_implicit_solver_fails(model, monkeypatch):
    """"auto" runs Tsit5 capped, then Kvaerno5, then Tsit5 with every step allowed
    (Kvaerno5's chord iterations do not converge on Bachmann_MSB2011 at rtol 1e-12). Here
    the cap is 5 steps (every explicit solve fails) and the implicit program is replaced by
    one that always fails: every start must end on the third program, with exactly the
    loss curves of plain Tsit5."""
    import kinabs.backends.jax._train as jt

    monkeypatch.setenv("KINABS_JAX_CACHE", "0")  # the patched programs must not be cached
    monkeypatch.setattr(jt, "AUTO_TRAIN_EXPLICIT_STEPS", 5)
    runs = {}
    for method in ("auto", "nonstiff"):
        trainer = _seed_trainer(model, n_iter=30,
                                solver=kinabs.SolverOptions(method=method, max_steps=20_000))
        program = trainer._get_program()
        if method == "auto":
            assert list(program._loss_fns) == ["main", "stiff", "long", "sensitivities"]
            program._loss_fns["stiff"] = lambda theta, active: (jnp.inf, jnp.asarray(3))
        runs[method] = trainer.train()
    auto, plain = runs["auto"], runs["nonstiff"]
    assert auto.status == plain.status == ["ok"] * 3
    np.testing.assert_allclose(auto.loss_history, plain.loss_history, rtol=1e-12)
    np.testing.assert_allclose(auto.parameters.to_numpy(), plain.parameters.to_numpy(),
                               rtol=1e-12)


def _nan_gradient(fn):
    """``fn`` with the same value and a NaN reverse-mode gradient."""
    @jax.custom_vjp
    def poison(theta):
        return theta

    poison.defvjp(lambda theta: (theta, None), lambda _, g: (g * jnp.nan,))
    return lambda theta, active: fn(poison(theta), active)


def test_a_nan_reverse_mode_gradient_goes_on_with_forward_sensitivities(model, monkeypatch):
    """A finite loss whose reverse-mode gradient is NaN (backpropagation through a
    rejected trial step whose vector field is NaN: Merkle 2016) goes on with forward-mode
    sensitivities. Here the main program's gradient is made NaN: every start must follow
    the loss curve of the unpatched run."""
    monkeypatch.setenv("KINABS_JAX_CACHE", "0")  # the patched program must not be cached
    runs = {}
    for patched in (False, True):
        trainer = _seed_trainer(model, n_iter=10, solver=kinabs.SolverOptions(method="stiff"))
        program = trainer._get_program()
        assert list(program._loss_fns) == ["main", "sensitivities"]
        if patched:
            program._loss_fns["main"] = _nan_gradient(program._loss_fns["main"])
        runs[patched] = trainer.train()
    assert runs[True].status == runs[False].status == ["ok"] * 3
    np.testing.assert_allclose(runs[True].loss_history, runs[False].loss_history, rtol=1e-8)
