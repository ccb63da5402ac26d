"""The Trainer on torch only: torch.optim classes and factories as the optimiser kind,
ClipUpdates and the default optimiser against optax's, per-start optimiser state, and the
errors only torch can give (a custom loss that is not a float64 tensor, adjoints torch
lacks). The behaviour both backends share is tested once for both in tests/test_trainer.py.
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
from kinabs._problem import TrainingProgram  # noqa: E402
from kinabs.backends.torch import AdaBelief, ClipUpdates, TorchTrainingProgram  # noqa: E402
from tests._training import refuse_training_programs, seed_trainer  # noqa: E402

ADAM = functools.partial(torch.optim.Adam, lr=1e-2)


@pytest.fixture
def no_compile(monkeypatch):
    refuse_training_programs(monkeypatch, "torch")


def test_default_optimizer_is_optax_default():
    """AdaBelief + per-start clipping equals optax.chain(adabelief, clip_by_global_norm)
    step by step, for gradients that make the clipping act on one start only."""
    optax = pytest.importorskip("optax")
    jax = pytest.importorskip("jax")

    rng = np.random.default_rng(0)
    theta0 = rng.normal(size=(2, 4))
    grads = [rng.normal(size=(2, 4)) * np.array([[1.0], [1e-9]]) for _ in range(5)]
    with jax.enable_x64(True):
        opt = kinabs.get_backend("jax").default_optimizer()
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


def test_a_failed_start_never_steps_its_optimiser(model):
    """The true parameters need ~120 Rosenbrock steps, the Latin hypercube starts fewer
    than 60: with max_steps=60 the first start fails at once and the others train. A
    frozen start has no gradient, so torch.optim leaves its state empty."""
    tr = seed_trainer(model, "torch", n_iter=3, optimizer=ADAM,
                      solver=kinabs.SolverOptions(max_steps=60))
    values = model.parameter_values()
    sets = tr.parameter_sets.to_numpy().copy()
    sets[0] = [values[p] for p in tr.parameters]
    tr.parameter_sets = pd.DataFrame(sets, columns=tr.parameters)
    res = tr.train()
    assert res.status == ["failed: max_steps_reached", "ok", "ok"]
    state = res._state
    assert not state.optimizer.state.get(state.params[0])  # never stepped
    assert int(state.optimizer.state[state.params[1]]["step"]) == 3


# -- custom losses: torch tensors only ----------------------------------------------------
@pytest.mark.parametrize("value, match", [
    (lambda params, ts, ys: np.float64(1.0), "must return a torch tensor"),
    (lambda params, ts, ys: sum(params.values()).float(), "float32"),
])
def test_custom_loss_errors(model, value, match):
    tr = seed_trainer(model, "torch", n_iter=1, loss=value)
    with pytest.raises(BackendError, match=match):
        tr.train()


def test_model_rejects_tensors_of_the_wrong_dtype(model):
    def loss(params, ts, ys, model):
        return model(ts, None, {"PDH.kcatA": torch.tensor(1.0)}).sum()  # float32

    tr = seed_trainer(model, "torch", n_iter=1, loss=loss)
    with pytest.raises(BackendError, match="float32.*float64"):
        tr.train()


# -- optimiser kinds --------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer, match", [
    (torch.optim.Adam([torch.zeros(1, requires_grad=True)]), "not an instance"),
    ("adam", "class or factory"),
    (torch.optim.LBFGS, "LBFGS"),
    (lambda params: "not an optimizer", "returned str"),
    (functools.partial(torch.optim.Adam, learning_rate=1e-3), "failed when called"),
])
def test_wrong_torch_optimizers(model, optimizer, match, no_compile):
    with pytest.raises(BackendError, match=match):
        seed_trainer(model, "torch", optimizer=optimizer)


def test_optimizer_classes_and_factories_are_accepted(model, no_compile):
    for opt in (functools.partial(torch.optim.SGD, lr=1e-3),
                torch.optim.Adam, ClipUpdates(torch.optim.Adam, 0.5)):
        assert seed_trainer(model, "torch", optimizer=opt).optimizer is opt


@pytest.mark.parametrize("max_norm", [0.0, -1.0, "1"])
def test_clip_updates_needs_a_positive_norm(max_norm):
    with pytest.raises(BackendError, match="ClipUpdates.max_norm"):
        ClipUpdates(torch.optim.Adam, max_norm)


def test_unsupported_adjoint_fails_before_training(model):
    tr = seed_trainer(model, "torch", adjoint=kinabs.AdjointOptions("forward"))
    with pytest.raises(BackendError, match="forward"):
        tr.train()


def test_program_is_a_training_program(model):
    program = seed_trainer(model, "torch")._get_program()
    assert isinstance(program, TorchTrainingProgram)
    assert isinstance(program, TrainingProgram)
