"""The Trainer, written once for every backend (the ``backend`` fixture): the seed's
workflow on the bundled serine model, rounds and resumption, the training-program
contract, options, custom losses, failed starts, loss thresholds, results, and the
errors that come before any compilation. Then the two backends against each other.

Tests that hold for one backend only live in tests/test_jax_trainer.py (compiled-program
reuse, solver fallbacks inside the JAX program, optax specifics) and
tests/test_torch_trainer.py (torch.optim factories, ClipUpdates, per-start optimiser state).

Costs: on JAX a training program compiles in seconds, so the tests share a few trainers
(module fixtures, one per backend) and reuse their programs and batch sizes (a trainer
keeps its program across ``train()`` calls and ``n_iter`` changes; a fresh trainer with
the default settings loads the program from the session's disk cache, KINABS_JAX_CACHE).
On torch an iteration on the serine model costs ~0.1 s, so the fits are short.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from array_api_compat import array_namespace

import kinabs
from kinabs import BackendError, DataError
from kinabs._problem import CustomLoss
from tests._training import (
    QUICK,
    SEED,
    SOLVER,
    mean_centred,
    mean_centred_residuals,
    refuse_training_programs,
    seed_trainer,
    simulate_experiment,
)

PNG = b"\x89PNG\r\n\x1a\n"
SPECIES = ["php", "pser"]


@pytest.fixture
def no_compile(monkeypatch, backend):
    """Fail the test if a training program starts to be built."""
    refuse_training_programs(monkeypatch, backend)


@pytest.fixture(scope="module")
def trainer(model, backend):
    return seed_trainer(model, backend)


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


@pytest.fixture(scope="module")
def theta3(round1):
    """The three starts in log space: every value_and_grad call on the seed program has
    three rows, so that JAX compiles it once."""
    return np.log2(round1.initial_parameters.to_numpy())


def tutorial_loss(params, ts, ys, model, to_include):
    """The tutorial's custom loss (written with the array API, so that one function serves
    JAX and torch): log-space parameters exponentiated (base 2), NaNs masked, species
    scaled by their mean, only the species in ``to_include`` kept."""
    xp = array_namespace(ys)
    params = kinabs.exponentiate_parameters(params)
    mask = ~xp.isnan(ys)
    y0 = ys[0, :]
    y_pred = model(ts, y0, params)
    ys = xp.where(mask, ys, 0.0) + 1
    y_pred = y_pred + 1
    scale = xp.mean(ys, axis=0)
    ys = ys / scale
    y_pred = xp.where(mask, y_pred / scale, 0.0)
    ys = ys[:, to_include]
    y_pred = y_pred[:, to_include]
    return xp.sum((y_pred - ys) ** 2) / xp.sum(mask)


def mean_centred_loss(params, ts, ys, model, weight):
    """The default log-space loss written as a custom loss, times ``weight``."""
    resid = mean_centred_residuals(params, ts, ys, model)
    return weight * (resid**2).sum()


# -- the seed's workflow -------------------------------------------------------------------
def test_tutorial_workflow_shapes_and_types(model, backend, trainer, round1):
    assert trainer.parameters == list(kinabs.lower(model).kinetic_parameters)
    assert trainer.backend_name == backend
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
    assert round1.meta["n_iter"] == 30 and round1.meta["backend"] == backend
    assert round1.meta["optim_space"] == "log"
    assert trainer.results is round1


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


def test_default_loss_is_the_mean_centred_loss(model, backend, trainer, round1):
    """The first recorded loss of each start is the mean-centred loss at its start,
    computed here from kinabs.simulate on the same backend."""
    (e,) = trainer.data.experiments
    pred = simulate_experiment(model, round1.initial_parameters, e, backend)
    for i in range(3):
        sse, n = mean_centred(pred[i], e.values)
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


def test_a_result_resumes_more_than_once(trainer, round1, round2):
    """Resuming does not change the state kept in the results it resumes from."""
    trainer.n_iter = 2
    try:
        a = trainer.train(resume=round1)
        b = trainer.train(resume=round1)
    finally:
        trainer.n_iter = 30
    np.testing.assert_array_equal(a.loss_history, b.loss_history)
    np.testing.assert_array_equal(a.parameters.to_numpy(), b.parameters.to_numpy())
    np.testing.assert_allclose(a.loss_history, round2.loss_history[:, :32], rtol=1e-12)


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


def test_progress_bar(trainer, round1, capsys):
    trainer.progress, trainer.n_iter = True, 2
    try:
        trainer.train(resume=round1)
    finally:
        trainer.progress, trainer.n_iter = False, 30
    err = capsys.readouterr().err
    assert "training" in err and "2/2" in err and "best_loss" in err


def test_summary_save_load(round2, tmp_path):
    s = round2.summary()
    assert list(s["final_loss"]) == sorted(round2.final_loss)
    assert s.index[0] == round2.best_index
    assert list(s["iterations"]) == [35] * 3 and list(s["restarts"]) == [0] * 3
    assert list(s["evaluations"]) == [35] * 3
    assert list(s.columns[5:]) == list(round2.parameters.columns)
    back = kinabs.TrainingResults.load(round2.save(tmp_path / "fit"))
    np.testing.assert_array_equal(back.parameters.to_numpy(), round2.parameters.to_numpy())
    np.testing.assert_array_equal(back.loss_history, round2.loss_history)
    np.testing.assert_array_equal(back.final_loss, round2.final_loss)
    assert back.status == round2.status
    assert back.meta["model"] == round2.meta["model"]
    assert back.meta["backend"] == round2.meta["backend"]
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


# -- the training program's contract -------------------------------------------------------
def test_value_and_grad_matches_the_training_losses(trainer, round1, theta3):
    loss, status, grad = trainer._get_program().value_and_grad(theta3)
    np.testing.assert_allclose(loss, round1.loss_history[:, 0], rtol=1e-12)
    np.testing.assert_array_equal(status, 0)
    assert grad.shape == (3, 10) and np.all(np.isfinite(grad))


def test_gradient_matches_finite_differences(trainer, theta3):
    """Central differences of the program's own loss (three rows per call: the start and
    its two neighbours along one parameter)."""
    program = trainer._get_program()
    theta0, h = theta3[0], 1e-3
    _, _, grad = program.value_and_grad(theta3)
    grad = grad[0]
    fd = np.empty_like(theta0)
    for i in range(theta0.size):
        step = np.zeros_like(theta0)
        step[i] = h
        loss, status, _ = program.value_and_grad(np.stack([theta0 + step, theta0 - step,
                                                           theta0]))
        np.testing.assert_array_equal(status, 0)
        fd[i] = (loss[0] - loss[1]) / (2 * h)
    assert np.abs(grad).max() > 0
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-4 * np.abs(grad).max())


def test_program_init_theta_status_and_final_loss(trainer, round1, theta3):
    program = trainer._get_program()
    state = program.init(theta3)
    np.testing.assert_allclose(program.theta(state), theta3, rtol=1e-15)
    np.testing.assert_array_equal(program.status(state), 0)
    np.testing.assert_array_equal(program.stopped(state), False)
    np.testing.assert_allclose(program.final_loss(state), round1.loss_history[:, 0],
                               rtol=1e-12)
    # the state kept in a result: its parameters and losses are the result's
    np.testing.assert_allclose(program.theta(round1._state),
                               np.log2(round1.parameters.to_numpy()), rtol=1e-12)
    np.testing.assert_allclose(program.final_loss(round1._state), round1.final_loss,
                               rtol=1e-12)


def test_reset_gives_a_member_fresh_optimiser_state(trainer, theta3):
    program = trainer._get_program()
    state, first = program.run(program.init(theta3), 2)
    state = program.reset(state, np.array([True, False, False]), theta3)
    state, again = program.run(state, 2)
    np.testing.assert_allclose(again[0], first[0], rtol=1e-12)  # member 0 starts over
    assert np.all(again[1:, 0] < first[1:, -1])  # the others go on
    np.testing.assert_allclose(program.theta(state)[0], program.theta(
        program.run(program.init(theta3), 2)[0])[0], rtol=1e-12)


# -- two experiments, missing values, a loss threshold -----------------------------------
@pytest.fixture(scope="module")
def two_experiments(model, backend):
    """Data simulated at the model's own parameters: experiment A (the model's start, times
    0..10) and B (another start at t=0.5, other times), with missing values, one of them in
    A's first row (so that pser starts from the model's value there)."""
    ta = np.linspace(0.0, 10.0, 8)
    a = kinabs.simulate(model, ta, outputs=SPECIES, solver=SOLVER, backend=backend).to_frame()
    tb = np.array([0.5, 1.0, 2.0, 4.0, 8.0])
    b = kinabs.simulate(model, tb, initial={"php": 0.3, "pser": 0.2}, t0=0.5,
                        outputs=SPECIES, solver=SOLVER, backend=backend).to_frame()
    a.iloc[0, 1] = np.nan
    a.iloc[3, 0] = np.nan
    a.iloc[5, 1] = np.nan
    b.iloc[2, 0] = np.nan
    b.iloc[4, 1] = np.nan
    trainer = kinabs.Trainer(model=model, data=[a, b], n_iter=8, progress=False,
                             loss_threshold=1e-12, solver=QUICK[backend], backend=backend,
                             optimizer=kinabs.get_backend(backend).default_optimizer())
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


def test_two_experiments_pooled_loss(model, backend, two_experiments):
    """The loss pools both experiments, each simulated from its own start and times."""
    trainer, res = two_experiments
    start = res.initial_parameters.iloc[[1]]
    sse = n = 0.0
    for e in trainer.data.experiments:
        s, c = mean_centred(simulate_experiment(model, start, e, backend)[0], e.values)
        sse, n = sse + s, n + c
    assert n == 5 * 2 + 8 * 2 - 5
    assert res.loss_history[1, 0] == pytest.approx(sse / n, rel=1e-6)
    assert res.status == ["ok", "ok"]
    assert res.loss_history[1, -1] < res.loss_history[1, 0]


def test_loss_threshold_stops_a_start(two_experiments):
    trainer, res = two_experiments
    assert np.isfinite(res.loss_history[0, 0])
    assert np.isnan(res.loss_history[0, 1:]).all()
    assert np.isfinite(res.loss_history[1]).all()
    assert list(res.summary().sort_index()["iterations"]) == [1, 8]
    assert res.best_index == 0
    np.testing.assert_array_equal(trainer._get_program().stopped(res._state), [True, False])


def test_stopped_perfect_start_keeps_its_parameters(two_experiments):
    trainer, res = two_experiments
    np.testing.assert_allclose(res.parameters.iloc[0].to_numpy(),
                               res.initial_parameters.iloc[0].to_numpy(), rtol=1e-12)
    assert res.final_loss[0] < trainer.loss_threshold
    assert res.status == ["ok", "ok"]


def test_plot_fit_two_experiments(two_experiments, tmp_path):
    import matplotlib.pyplot as plt

    _, res = two_experiments
    fig = res.plot_fit(tmp_path / "two.png", index=1)
    assert (tmp_path / "two.png").read_bytes()[:8] == PNG
    assert len(fig.axes) == 2
    plt.close(fig)


# -- linear space, another optimiser -------------------------------------------------------
def test_linear_space_uses_mean_squared_error(model, backend, adam):
    truth = model.parameter_values()
    trainer = kinabs.Trainer(model=model, data=kinabs.example_data_path(), n_iter=4,
                             optim_space="linear", optimizer=adam(1e-5), progress=False,
                             solver=QUICK[backend], backend=backend)
    trainer.parameter_sets = pd.DataFrame([{k: 1.2 * v for k, v in truth.items()},
                                           {k: 0.9 * v for k, v in truth.items()}])
    res = trainer.train()
    (e,) = trainer.data.experiments
    pred = simulate_experiment(model, res.initial_parameters, e, backend)
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
def test_custom_loss_set_after_training_takes_effect(model, backend, round1):
    trainer = seed_trainer(model, backend, n_iter=3)  # JAX: the default program, from disk
    first = trainer.train()
    np.testing.assert_allclose(first.loss_history, round1.loss_history[:, :3], rtol=1e-12)
    trainer._create_loss_func(tutorial_loss, to_include=[0])
    custom = trainer.train()
    assert custom._program is not first._program
    (e,) = trainer.data.experiments
    pred = simulate_experiment(model, custom.initial_parameters, e, backend)
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


def test_custom_loss_written_like_the_default_gives_its_loss_and_gradient(
        model, backend, trainer, theta3):
    """The default log-space loss rewritten as a custom loss (``model`` simulating from the
    data's first row, a keyword argument scaling it): the same values and gradients."""
    loss0, _, grad0 = trainer._get_program().value_and_grad(theta3)
    custom = seed_trainer(model, backend, n_iter=1, loss=mean_centred_loss,
                          loss_kwargs={"weight": 2.5})
    loss, status, grad = custom._get_program().value_and_grad(theta3)
    np.testing.assert_array_equal(status, 0)
    np.testing.assert_allclose(loss, 2.5 * loss0, rtol=1e-10)
    np.testing.assert_allclose(grad, 2.5 * grad0, rtol=1e-8, atol=1e-12)


def test_custom_loss_through_the_constructor(model, backend, no_compile):
    trainer = kinabs.Trainer(model=model, data=kinabs.example_data_path(), loss=tutorial_loss,
                             loss_kwargs={"to_include": [0]}, progress=False, backend=backend)
    assert trainer.loss == CustomLoss(tutorial_loss, {"to_include": [0]})
    assert trainer.loss.wants_model
    other = kinabs.Trainer(model=model, data=kinabs.example_data_path(), progress=False,
                           backend=backend)
    assert other.loss is None
    assert other._create_loss_func(tutorial_loss, to_include=[0]) == trainer.loss


def test_custom_loss_must_return_a_scalar(model, backend):
    def vector_loss(params, ts, ys):
        return array_namespace(ys).stack([params[k] for k in params])

    trainer = seed_trainer(model, backend, n_iter=1, loss=vector_loss)
    with pytest.raises(BackendError, match="the custom loss must return a scalar"):
        trainer.train()


def test_custom_loss_signature_checked_before_compiling(model, backend, no_compile):
    data = kinabs.example_data_path()
    with pytest.raises(DataError, match="ys"):
        kinabs.Trainer(model=model, data=data, loss=lambda params, ts: 0.0, backend=backend)
    with pytest.raises(DataError, match="to_exclude"):
        kinabs.Trainer(model=model, data=data, loss=tutorial_loss,
                       loss_kwargs={"to_exclude": [0]}, backend=backend)
    with pytest.raises(DataError, match="callable"):
        kinabs.Trainer(model=model, data=data, loss="mse", backend=backend)
    trainer = seed_trainer(model, backend)
    with pytest.raises(DataError, match="params"):
        trainer.loss = lambda p, ts, ys: 0.0


# -- errors before any compilation ---------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_bad_n_iter(model, backend, no_compile, bad):
    with pytest.raises(DataError, match="n_iter must be an integer >= 1"):
        kinabs.Trainer(model=model, data=kinabs.example_data_path(), n_iter=bad,
                       backend=backend)
    trainer = seed_trainer(model, backend)
    with pytest.raises(DataError, match="n_iter must be an integer >= 1"):
        trainer.n_iter = bad
    assert trainer.n_iter == 30


def test_unknown_names_and_bad_bounds(model, backend, no_compile):
    trainer = seed_trainer(model, backend)
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
        kinabs.Trainer(model=model, data=kinabs.example_data_path(), parameters=["nope"],
                       backend=backend)


def test_partial_parameter_sets_take_model_values(model, backend, no_compile):
    trainer = seed_trainer(model, backend)
    trainer.parameter_sets = pd.DataFrame({"PDH.kcatA": [2.0, 3.0]})
    sets = trainer.parameter_sets
    assert list(sets.columns) == trainer.parameters
    assert list(sets["PDH.kcatA"]) == [2.0, 3.0]
    assert (sets["PSP.KBser"] == 0.15).all()


def test_linear_space_takes_non_positive_starts(model, backend, no_compile):
    trainer = kinabs.Trainer(model=model, data=kinabs.example_data_path(), backend=backend,
                             optim_space="linear", progress=False)
    trainer.parameter_sets = pd.DataFrame({"PDH.kcatA": [0.0, -1.0]})
    assert list(trainer.parameter_sets["PDH.kcatA"]) == [0.0, -1.0]
    log = seed_trainer(model, backend)
    with pytest.raises(DataError, match="optim_space='linear'"):
        log.parameter_sets = pd.DataFrame({"PDH.kcatA": [0.0]})


def test_bad_options(model, backend, no_compile):
    data = kinabs.example_data_path()
    with pytest.raises(DataError, match="optim_space"):
        kinabs.Trainer(model=model, data=data, optim_space="exp", backend=backend)
    with pytest.raises(DataError, match="loss_threshold"):
        kinabs.Trainer(model=model, data=data, loss_threshold=0.0, backend=backend)
    with pytest.raises(DataError, match="'glucose'"):
        kinabs.Trainer(model=model, data=pd.DataFrame({"glucose": [1.0, 2.0]}, index=[0., 1.]),
                       backend=backend)
    with pytest.raises(DataError, match="latinhypercube_sampling"):
        kinabs.Trainer(model=model, data=data, backend=backend).train()


@pytest.mark.parametrize("bad", ["stiff", {"rtol": 1e-6}])
def test_a_solver_that_is_not_solver_options_reads_the_same_everywhere(model, backend, bad,
                                                                       no_compile):
    with pytest.raises(DataError, match="solver must be a kinabs.SolverOptions") as fit:
        kinabs.Trainer(model=model, data=kinabs.example_data_path(), solver=bad,
                       backend=backend)
    with pytest.raises(DataError) as sim:
        kinabs.simulate(model, [0.0, 1.0], solver=bad, backend=backend)
    assert str(fit.value) == str(sim.value)


def test_an_adjoint_that_is_not_adjoint_options_is_a_data_error(model, backend, no_compile):
    with pytest.raises(DataError, match="adjoint must be a kinabs.AdjointOptions"):
        kinabs.Trainer(model=model, data=kinabs.example_data_path(), adjoint="forward",
                       backend=backend)


def _foreign_solver(backend):
    """A solver object of the other backend."""
    if backend == "jax":
        torch_backend = pytest.importorskip("kinabs.backends.torch")
        return torch_backend.Rosenbrock()
    return pytest.importorskip("diffrax").Kvaerno5()


def test_a_solver_object_of_another_backend_is_a_backend_error_everywhere(model, backend):
    solver = kinabs.SolverOptions(method=_foreign_solver(backend))
    with pytest.raises(BackendError, match=f"the {backend} backend cannot use solver") as sim:
        kinabs.simulate(model, [0.0, 1.0], solver=solver, backend=backend)
    trainer = seed_trainer(model, backend, n_iter=1, solver=solver)
    with pytest.raises(BackendError) as fit:
        trainer.train()
    assert str(fit.value) == str(sim.value)


def test_a_name_is_not_an_optimizer(model, backend):
    with pytest.raises(BackendError, match=f"the {backend} backend needs"):
        kinabs.Trainer(model=model, data=kinabs.example_data_path(), optimizer="adam",
                       backend=backend)
    trainer = seed_trainer(model, backend)
    with pytest.raises(BackendError, match=f"the {backend} backend needs"):
        trainer.optimizer = "adam"  # checked when assigned, not when training


@pytest.mark.parametrize("kind", ["adam", "default"])
def test_an_optimizer_of_the_other_backend_is_refused(model, backend, other_backend, kind,
                                                      no_compile):
    other = kinabs.get_backend(other_backend)
    optimizer = other.adam(1e-3) if kind == "adam" else other.default_optimizer()
    with pytest.raises(BackendError, match=f"the {backend} backend needs") as err:
        kinabs.Trainer(model=model, data=kinabs.example_data_path(), optimizer=optimizer,
                       backend=backend)
    assert f"use backend='{other_backend}'" in str(err.value)


# -- failing starts ----------------------------------------------------------------------
#: Few solver steps: starts around all-ones parameters need ~10-60 steps, the model's own
#: parameters more than 100, so start 0 (the model's parameters) fails. On JAX the explicit
#: solver ("auto" would redo that start with the implicit one); on torch "auto" (the
#: Rosenbrock method, each start with its own step size, as under jax.vmap; torchdiffeq's
#: explicit solvers share one step size across the batch).
FAIL_SOLVER = {"jax": kinabs.SolverOptions(method="nonstiff", max_steps=100),
               "torch": kinabs.SolverOptions(max_steps=100)}


@pytest.fixture(scope="module")
def failing(model, backend):
    trainer = kinabs.Trainer(model=model, data=kinabs.example_data_path(), n_iter=30,
                             progress=False, solver=FAIL_SOLVER[backend], backend=backend,
                             optimizer=kinabs.get_backend(backend).default_optimizer())
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
    np.testing.assert_array_equal(trainer._get_program().status(res._state), [1, 0, 0])


def test_resample_failed_replaces_failed_starts(failing):
    """The failed start is replaced after the first chunk by a new sample within the bounds
    and trains for the rest of the round; the other starts do not notice."""
    trainer, plain = failing
    chunk = trainer._get_program().chunk
    assert chunk < trainer.n_iter
    trainer.resample_failed = True
    try:
        res = trainer.train()
    finally:
        trainer.resample_failed = False
    np.testing.assert_array_equal(res.restarts, [1, 0, 0])
    assert res.status == ["ok", "ok", "ok"]
    assert np.isnan(res.loss_history[0, :chunk]).all()
    assert np.isfinite(res.loss_history[0, chunk:]).all()
    new_start = res.initial_parameters.iloc[0].to_numpy()
    assert np.all((new_start >= 0.5) & (new_start <= 2.0))
    np.testing.assert_allclose(res.loss_history[1:], plain.loss_history[1:], rtol=1e-12)
    pd.testing.assert_frame_equal(res.initial_parameters.iloc[1:],
                                  plain.initial_parameters.iloc[1:])
    # the trainer's own starts are not changed
    assert trainer.parameter_sets.iloc[0]["PSP.KBser"] == 0.15


# -- the backends against each other -------------------------------------------------------
TIGHT = kinabs.SolverOptions(rtol=1e-12, atol=1e-14, max_steps=20_000)
ADAM_LR = 1e-2


def _both_backends():
    for name in ("jax", "torch"):
        try:
            kinabs.get_backend(name)
        except BackendError:
            pytest.skip(f"the {name} backend is not installed")


@pytest.mark.parametrize("space", ["log", "linear"])
def test_loss_and_gradient_agree_across_backends(model, space):
    """At the true parameters and at three Latin hypercube sets. Tight tolerances: the
    loss at the true parameters is ~1e-14, all of it rounding of the data and solver
    error, so a relative 1e-6 needs solutions good to ~1e-14."""
    _both_backends()
    out = {}
    for backend in ("jax", "torch"):
        tr = kinabs.Trainer(model=model, data=kinabs.example_data_path(), backend=backend,
                            optim_space=space, progress=False, solver=TIGHT)
        lhs = tr.latinhypercube_sampling(model.parameter_values(), lower_bound=0.5,
                                         upper_bound=2.0, N=3, seed=0).to_numpy()
        values = model.parameter_values()
        linear = np.vstack([[values[p] for p in tr.parameters], lhs])
        theta = np.log2(linear) if space == "log" else linear
        loss, status, grad = tr._get_program().value_and_grad(theta)
        np.testing.assert_array_equal(status, 0)
        out[backend] = loss, grad
    (lj, gj), (lt, gt) = out["jax"], out["torch"]
    assert lj[0] < 1e-12 and np.all(lj[1:] > 1e-5) and np.all(np.isfinite(gj))
    np.testing.assert_allclose(lt, lj, rtol=1e-6)
    for a, b in zip(gt, gj):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


@pytest.mark.parametrize("optimizer", ["adam", pytest.param("default", marks=pytest.mark.slow)])
def test_training_curves_agree_across_backends(model, optimizer):
    """Ten iterations from the same starts: Adam (``Backend.adam``, the same on both), and
    each backend's default (AdaBelief with updates clipped per start)."""
    _both_backends()
    res = {}
    for backend in ("jax", "torch"):
        opt = kinabs.get_backend(backend).adam(ADAM_LR) if optimizer == "adam" else None
        res[backend] = seed_trainer(model, backend, n_iter=10, optimizer=opt).train()
    j, t = res["jax"], res["torch"]
    assert t.meta["backend"] == "torch" and t.status == j.status == ["ok"] * 3
    assert np.isfinite(t.loss_history).all()
    np.testing.assert_allclose(t.loss_history, j.loss_history, rtol=1e-4)
    np.testing.assert_allclose(t.final_loss, j.final_loss, rtol=1e-4)
    np.testing.assert_allclose(t.parameters.to_numpy(), j.parameters.to_numpy(), rtol=1e-5)
    assert np.all(t.final_loss < t.loss_history[:, 0])
