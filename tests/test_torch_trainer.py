"""The Trainer on torch: the same losses, gradients and training curves as on JAX (serine
model), per-start independence (failed starts frozen, per-start optimiser state, resets),
loss thresholds, custom losses, rounds, results, and errors for the wrong optimiser kinds.

Eager torch costs ~0.1-0.3 s per iteration here, so the fits are a few iterations long.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")

import kinabs  # noqa: E402
from kinabs import BackendError  # noqa: E402
from kinabs.backends.torch import AdaBelief, ClipUpdates, TorchTrainingProgram  # noqa: E402

SEED = 11
TIGHT = kinabs.SolverOptions(rtol=1e-12, atol=1e-14, max_steps=20_000)
ADAM_LR = 1e-2


def _trainer(model, backend="torch", n_iter=3, n=3, **kwargs):
    """The tutorial's starts: base parameters all ones, bounds 1/10 and 10."""
    trainer = kinabs.Trainer(model=model, data=kinabs.example_data_path(), n_iter=n_iter,
                             backend=backend, progress=False, **kwargs)
    trainer.latinhypercube_sampling({p: 1.0 for p in trainer.parameters}, lower_bound=1 / 10,
                                    upper_bound=10, N=n, seed=SEED)
    return trainer


def _truth(model, trainer):
    values = model.parameter_values()
    return np.array([[values[p] for p in trainer.parameters]])


def _jax_value_and_grad(program, theta):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    with jax.enable_x64(True):
        vg = jax.jit(jax.vmap(jax.value_and_grad(lambda th: program._loss_one(th)[0])))
        loss, grad = vg(jnp.asarray(theta))
        return np.asarray(loss), np.asarray(grad)


# -- the same numbers as on JAX ----------------------------------------------------------
@pytest.mark.parametrize("space", ["log", "linear"])
def test_loss_and_gradient_match_jax(model, space):
    """At the true parameters and at three Latin hypercube sets. Tight tolerances: the
    loss at the true parameters is ~1e-14, all of it rounding of the data and solver
    error, so a relative 1e-6 needs solutions good to ~1e-14."""
    pytest.importorskip("jax")
    out = {}
    for backend in ("jax", "torch"):
        tr = kinabs.Trainer(model=model, data=kinabs.example_data_path(), backend=backend,
                            optim_space=space, progress=False, solver=TIGHT)
        lhs = tr.latinhypercube_sampling(model.parameter_values(), lower_bound=0.5,
                                         upper_bound=2.0, N=3, seed=0).to_numpy()
        linear = np.vstack([_truth(model, tr), lhs])
        theta = np.log2(linear) if space == "log" else linear
        program = tr._get_program()
        if backend == "jax":
            out[backend] = _jax_value_and_grad(program, theta)
        else:
            loss, status, grad = program.value_and_grad(theta)
            np.testing.assert_array_equal(status, 0)
            out[backend] = loss, grad
    (lj, gj), (lt, gt) = out["jax"], out["torch"]
    assert lj[0] < 1e-12 and np.all(lj[1:] > 1e-5) and np.all(np.isfinite(gj))
    np.testing.assert_allclose(lt, lj, rtol=1e-6)
    for a, b in zip(gt, gj):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


@pytest.mark.parametrize("optimizer", ["adam", pytest.param("default", marks=pytest.mark.slow)])
def test_training_curves_match_jax(model, optimizer):
    """Ten iterations from the same starts: Adam (same learning rate in optax and
    torch.optim), and each backend's default (AdaBelief with updates clipped per start)."""
    optax = pytest.importorskip("optax")
    opts = {"adam": (optax.adam(ADAM_LR), functools.partial(torch.optim.Adam, lr=ADAM_LR)),
            "default": (None, None)}[optimizer]
    res = {}
    for backend, opt in zip(("jax", "torch"), opts):
        tr = _trainer(model, backend, n_iter=10, optimizer=opt)
        res[backend] = tr.train()
    j, t = res["jax"], res["torch"]
    assert t.meta["backend"] == "torch" and t.status == ["ok"] * 3
    assert np.isfinite(t.loss_history).all()
    np.testing.assert_allclose(t.loss_history, j.loss_history, rtol=1e-4)
    np.testing.assert_allclose(t.final_loss, j.final_loss, rtol=1e-4)
    np.testing.assert_allclose(t.parameters.to_numpy(), j.parameters.to_numpy(), rtol=1e-5)
    assert np.all(t.final_loss < t.loss_history[:, 0])


def test_default_optimizer_is_optax_default():
    """AdaBelief + per-start clipping equals optax.chain(adabelief, clip_by_global_norm)
    step by step, for gradients that make the clipping act on one start only."""
    optax = pytest.importorskip("optax")
    jax = pytest.importorskip("jax")
    from kinabs.backends.jax._train import default_optimizer as jax_default

    rng = np.random.default_rng(0)
    theta0 = rng.normal(size=(2, 4))
    grads = [rng.normal(size=(2, 4)) * np.array([[1.0], [1e-9]]) for _ in range(5)]
    with jax.enable_x64(True):
        opt = jax_default()
        th = jax.numpy.asarray(theta0)
        state = jax.vmap(opt.init)(th)
        ref = []
        for g in grads:
            upd, state = jax.vmap(opt.update)(jax.numpy.asarray(g), state, th)
            th = optax.apply_updates(th, upd)
            ref.append(np.asarray(th))
    factory = kinabs.get_backend("torch").default_optimizer()
    assert isinstance(factory, ClipUpdates) and factory.max_norm == pytest.approx(math.log(4))
    params = [torch.tensor(r, requires_grad=True) for r in theta0]
    opt = factory(params)
    assert isinstance(opt, AdaBelief)
    for g, want in zip(grads, ref):
        before = torch.stack([p.detach() for p in params])
        for p, gi in zip(params, g):
            p.grad = torch.as_tensor(gi)
        opt.step()
        with torch.no_grad():  # the clipping the training program applies per start
            delta = torch.stack([p.detach() for p in params]) - before
            norm = torch.linalg.vector_norm(delta, dim=1, keepdim=True)
            after = torch.where(norm < factory.max_norm, before + delta,
                                before + delta / norm * factory.max_norm)
            for p, a in zip(params, after):
                p.copy_(a)
        np.testing.assert_allclose(after.numpy(), want, rtol=1e-12, atol=1e-14)


# -- per-start independence ----------------------------------------------------------------
@pytest.fixture(scope="module")
def frozen(model):
    """The true parameters need ~120 solver steps, these Latin hypercube starts fewer
    than 60: with max_steps=60 the first start fails at once and the others train."""
    solver = kinabs.SolverOptions(max_steps=60)
    tr = _trainer(model, n_iter=3, n=2, solver=solver,
                  optimizer=functools.partial(torch.optim.Adam, lr=ADAM_LR))
    lhs = tr.parameter_sets
    tr.parameter_sets = pd.DataFrame(np.vstack([_truth(model, tr), lhs.to_numpy()]),
                                     columns=tr.parameters)
    both = tr.train()
    tr.parameter_sets = lhs
    alone = tr.train()
    return both, alone


def test_failed_start_is_frozen_with_its_status(frozen):
    both, _ = frozen
    assert both.status == ["failed: max_steps_reached", "ok", "ok"]
    assert np.isnan(both.loss_history[0]).all()
    assert np.isnan(both.final_loss[0])
    np.testing.assert_allclose(both.parameters.iloc[0].to_numpy(),
                               both.initial_parameters.iloc[0].to_numpy(), rtol=1e-15)
    state = both._state
    assert not state.optimizer.state.get(state.params[0])  # never stepped
    assert int(state.optimizer.state[state.params[1]]["step"]) == 3


def test_failed_start_does_not_disturb_the_others(frozen):
    both, alone = frozen
    np.testing.assert_allclose(both.loss_history[1:], alone.loss_history, rtol=1e-12)
    np.testing.assert_allclose(both.parameters.to_numpy()[1:], alone.parameters.to_numpy(),
                               rtol=1e-12)


def test_reset_gives_a_member_fresh_optimiser_state(model):
    tr = _trainer(model, n=2, optimizer=functools.partial(torch.optim.Adam, lr=ADAM_LR))
    program = tr._get_program()
    theta0 = np.log2(tr.parameter_sets.to_numpy())
    state, first = program.run(program.init(theta0), 2)
    state = program.reset(state, np.array([True, False]), theta0)
    state, again = program.run(state, 2)
    np.testing.assert_allclose(again[0], first[0], rtol=1e-12)  # member 0 starts over
    assert np.all(again[1] < first[1, -1])  # member 1 goes on


def test_states_are_not_mutated_resume_twice(model):
    tr = _trainer(model, n_iter=2, n=2)
    r1 = tr.train()
    a = tr.train(resume=r1)
    b = tr.train(resume=r1)
    np.testing.assert_array_equal(a.loss_history, b.loss_history)
    tr.n_iter = 4
    once = tr.train()
    np.testing.assert_allclose(once.loss_history, a.loss_history, rtol=1e-12)
    np.testing.assert_allclose(a.loss_history[:, 2], r1.final_loss, rtol=1e-12)


def test_loss_threshold_stops_a_start_at_the_parameters_that_met_it(model):
    tr = _trainer(model, n_iter=3, n=1, loss_threshold=1e-10)
    lhs = tr.parameter_sets.to_numpy()
    tr.parameter_sets = pd.DataFrame(np.vstack([_truth(model, tr), lhs]), columns=tr.parameters)
    res = tr.train()
    assert res.loss_history[0, 0] < 1e-10 and np.isnan(res.loss_history[0, 1:]).all()
    assert np.isfinite(res.loss_history[1]).all()
    np.testing.assert_allclose(res.parameters.iloc[0].to_numpy(),
                               res.initial_parameters.iloc[0].to_numpy(), rtol=1e-15)
    assert res.final_loss[0] < 1e-10 and res.status == ["ok", "ok"]
    assert list(res.summary().sort_index()["iterations"]) == [1, 3]


# -- custom losses ------------------------------------------------------------------------
def sse_loss(params, ts, ys, model, scale):
    """Linear-space squared error, written with torch: ``model`` simulates from ys[0]."""
    pred = model(ts, ys[0], params)
    mask = ~torch.isnan(ys)
    return scale * torch.sum(torch.where(mask, pred - torch.nan_to_num(ys), 0.0) ** 2)


def test_custom_loss_receives_tensors_and_matches_the_default(model):
    tr = kinabs.Trainer(model=model, data=kinabs.example_data_path(), n_iter=1,
                        backend="torch", optim_space="linear", progress=False)
    theta = tr.latinhypercube_sampling(model.parameter_values(), lower_bound=0.5,
                                       upper_bound=2, N=2, seed=0).to_numpy()
    default_loss, _, default_grad = tr._get_program().value_and_grad(theta)
    tr._create_loss_func(sse_loss, scale=0.5)
    loss, status, grad = tr._get_program().value_and_grad(theta)
    count = np.isfinite(tr.data.experiments[0].values).sum()
    np.testing.assert_array_equal(status, 0)
    np.testing.assert_allclose(loss, 0.5 * count * default_loss, rtol=1e-10)
    np.testing.assert_allclose(grad, 0.5 * count * default_grad, rtol=1e-8)
    res = tr.train()
    assert res.status == ["ok", "ok"] and np.isfinite(res.loss_history).all()


@pytest.mark.parametrize("value, match", [
    (lambda params, ts, ys: torch.zeros(2, dtype=torch.float64), "scalar"),
    (lambda params, ts, ys: np.float64(1.0), "torch tensor"),
    (lambda params, ts, ys: sum(params.values()).float(), "float32"),
])
def test_custom_loss_errors(model, value, match):
    tr = _trainer(model, n_iter=1, n=1, loss=value)
    with pytest.raises(BackendError, match=match):
        tr.train()


def test_model_rejects_tensors_of_the_wrong_dtype(model):
    def loss(params, ts, ys, model):
        return model(ts, None, {"PDH.kcatA": torch.tensor(1.0)}).sum()  # float32

    tr = _trainer(model, n_iter=1, n=1, loss=loss)
    with pytest.raises(BackendError, match="float32.*float64"):
        tr.train()


# -- the Trainer's outputs on torch ------------------------------------------------------------
def test_results_plots_and_progress_bar(model, tmp_path, capsys):
    import matplotlib.pyplot as plt

    tr = _trainer(model, n_iter=2, n=2)
    tr.progress = True
    res = tr.train()
    assert "training" in capsys.readouterr().err
    optimized_parameters, loss_per_iteration = res
    assert loss_per_iteration.shape == (2, 2) and sorted(optimized_parameters) == [0, 1]
    assert res.meta["backend"] == "torch"
    fig = res.plot_loss(tmp_path / "loss.png")
    plt.close(fig)
    fig = res.plot_fit(tmp_path / "fit.png")
    plt.close(fig)
    assert (tmp_path / "fit.png").stat().st_size > 0
    back = kinabs.TrainingResults.load(res.save(tmp_path / "fit"))
    np.testing.assert_array_equal(back.loss_history, res.loss_history)


# -- optimiser kinds --------------------------------------------------------------------------
def test_optax_optimizer_on_torch_is_an_error(model):
    optax = pytest.importorskip("optax")
    with pytest.raises(BackendError, match="optax transformation: use backend='jax'"):
        _trainer(model, optimizer=optax.adam(1e-3))


def test_torch_optimizer_on_jax_is_an_error(model):
    pytest.importorskip("optax")
    with pytest.raises(BackendError, match="torch optimizer: use backend='torch'"):
        _trainer(model, backend="jax", optimizer=torch.optim.Adam)


@pytest.mark.parametrize("optimizer, match", [
    (torch.optim.Adam([torch.zeros(1, requires_grad=True)]), "not an instance"),
    ("adam", "class or factory"),
    (torch.optim.LBFGS, "LBFGS"),
    (lambda params: "not an optimizer", "returned str"),
    (functools.partial(torch.optim.Adam, learning_rate=1e-3), "failed when called"),
])
def test_wrong_torch_optimizers(model, optimizer, match):
    with pytest.raises(BackendError, match=match):
        _trainer(model, optimizer=optimizer)


def test_optimizer_classes_and_factories_are_accepted(model):
    for opt in (functools.partial(torch.optim.SGD, lr=1e-3),
                torch.optim.Adam, ClipUpdates(torch.optim.Adam, 0.5)):
        _trainer(model, optimizer=opt)


def test_unsupported_adjoint_fails_before_training(model):
    tr = _trainer(model, adjoint=kinabs.AdjointOptions("forward"))
    with pytest.raises(BackendError, match="forward"):
        tr.train()


def test_program_is_a_training_program(model):
    tr = _trainer(model)
    assert isinstance(tr._get_program(), TorchTrainingProgram)
