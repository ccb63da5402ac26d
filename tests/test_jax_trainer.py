"""The Trainer on JAX only: optax as the optimiser kind, and the solver fallbacks inside
the compiled JAX program (what the backend-neutral tests in tests/test_trainer.py cannot
reach). The fallback tests patch the program's private stages, so they compile their own
programs (KINABS_JAX_CACHE=0) and are the slowest tests of the module."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
pytest.importorskip("diffrax")

import jax.numpy as jnp  # noqa: E402

import kinabs  # noqa: E402
from kinabs import BackendError  # noqa: E402
from tests._training import refuse_training_programs, seed_trainer  # noqa: E402


def test_optimizer_must_be_an_optax_transformation(model, monkeypatch):
    refuse_training_programs(monkeypatch, "jax")
    data = kinabs.example_data_path()
    with pytest.raises(BackendError, match="optax.GradientTransformation"):
        kinabs.Trainer(model=model, data=data, optimizer=optax.adam)  # the factory itself
    kinabs.Trainer(model=model, data=data, optimizer=optax.sgd(1e-3))  # any transformation
    torch = pytest.importorskip("torch")
    with pytest.raises(BackendError, match="use backend='torch'"):
        kinabs.Trainer(model=model, data=data, optimizer=torch.optim.Adam)


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
        trainer = seed_trainer(model, "jax", n_iter=30,
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
        trainer = seed_trainer(model, "jax", n_iter=10,
                               solver=kinabs.SolverOptions(method="stiff"))
        program = trainer._get_program()
        assert list(program._loss_fns) == ["main", "sensitivities"]
        if patched:
            program._loss_fns["main"] = _nan_gradient(program._loss_fns["main"])
        runs[patched] = trainer.train()
    assert runs[True].status == runs[False].status == ["ok"] * 3
    np.testing.assert_allclose(runs[True].loss_history, runs[False].loss_history, rtol=1e-8)
