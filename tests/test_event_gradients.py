"""Derivatives through SBML events (``kinabs._event_gradients``) and training of models
with events: gradients against central finite differences, the two backends against
each other, and fits with the Trainer.

Three small models: a state trigger whose threshold is fitted (the event time moves
with the parameters), a delayed event (its delay fitted; values from trigger time and
from execution time), and events that assign a parameter (a switch at a fitted time).
On JAX (compiles of the event segments and of the solve's pullback: 30-50 s a model
on a shared 2-core machine) the checks are in ``-m slow``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sympy

import kinabs
from kinabs import TIME, Event
from kinabs._fit.data import TrainingData
from kinabs._fit.spec import FitSpec

A, B, K = sympy.symbols("A B k")
THR, DOSE, D, T_ON, FAC, KB = sympy.symbols("thr dose d t_on fac kb")


def _base(name: str, **params: float) -> kinabs.Model:
    b = kinabs.ModelBuilder(name)
    b.species("A", initial_concentration=1.0)
    b.species("B", initial_concentration=0.0)
    for n, v in params.items():
        b.parameter(n, v)
    b.reaction("r", "A -> B", rate="k*A")
    return b.build()


def threshold():
    """A refill of A whenever it falls below ``thr`` (fitted): the event times move."""
    m = _base("threshold", k=0.7, thr=0.4, dose=0.8)
    m.events["refill"] = Event("refill", trigger=A < THR, assignments=(("A", A + DOSE),))
    return m, ("k", "thr", "dose")


def delayed():
    """Delayed events: values from trigger time, and from execution time."""
    m = _base("delayed", k=0.7, thr=0.4, dose=0.8, d=0.3)
    m.events["late"] = Event("late", trigger=A < THR, delay=D,
                             assignments=(("A", A + DOSE),))
    m.events["later"] = Event("later", trigger=B > 0.9, delay=2 * D,
                              assignments=(("B", B * 0.5),),
                              use_values_from_trigger_time=False)
    return m, ("k", "thr", "dose", "d")


def switch():
    """Events that assign the parameter k: times k by ``fac`` at ``t_on``, sets it to
    ``kb`` once B passes 0.8."""
    m = _base("switch", k=0.7, t_on=1.3, fac=2.5, kb=0.3)
    m.events["switch"] = Event("switch", trigger=TIME >= T_ON,
                               assignments=(("k", K * FAC),))
    m.events["brake"] = Event("brake", trigger=B > 0.8, assignments=(("k", KB),))
    return m, ("t_on", "fac", "kb")


MODELS = {"threshold": threshold, "delayed": delayed, "switch": switch}
TIMES = np.linspace(0.0, 4.0, 9)


def _data() -> pd.DataFrame:
    return pd.DataFrame({"A": np.exp(-0.6 * TIMES) + 0.1, "B": 0.3 * TIMES},
                        index=pd.Index(TIMES, name="time"))


def _program(model, names, backend, space="linear"):
    spec = FitSpec(model=model, data=TrainingData.coerce(_data()), parameters=names,
                   backend=backend, optim_space=space)
    return spec.program()


def _start(model, names) -> np.ndarray:
    s = kinabs.lower(model)
    return np.asarray([[s.parameter_vector()[s.parameter_index[n]] for n in names]])


def _central(program, theta: np.ndarray, h: float = 1e-5) -> np.ndarray:
    out = []
    for i in range(theta.shape[1]):
        step = np.zeros_like(theta)
        step[0, i] = h * max(1.0, abs(theta[0, i]))
        up = program.value_and_grad(theta + step)[0][0]
        down = program.value_and_grad(theta - step)[0][0]
        out.append((up - down) / (2 * step[0, i]))
    return np.asarray(out)


@pytest.mark.parametrize("name", list(MODELS))
def test_gradient_through_events_matches_finite_differences_on_torch(name):
    model, names = MODELS[name]()
    program = _program(model, names, "torch")
    theta = _start(model, names)
    loss, status, grad = program.value_and_grad(theta)
    assert status.tolist() == [0] and loss[0] > 0
    fd = _central(program, theta)
    np.testing.assert_allclose(grad[0], fd, rtol=1e-5, atol=1e-9)
    if name == "threshold":
        # thr enters the loss only through the refill times: a gradient that held the
        # event times fixed would be 0 here
        assert abs(grad[0, 1]) > 0.05


def _jax_against_torch_and_differences(name):
    model, names = MODELS[name]()
    theta = _start(model, names)
    jax_prog = _program(model, names, "jax")
    loss_j, status, grad_j = jax_prog.value_and_grad(theta)
    loss_t, _, grad_t = _program(model, names, "torch").value_and_grad(theta)
    assert status.tolist() == [0]
    np.testing.assert_allclose(loss_j, loss_t, rtol=1e-6)
    np.testing.assert_allclose(grad_j, grad_t, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(grad_j[0], _central(jax_prog, theta), rtol=1e-5, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_gradient_through_events_on_jax_matches_torch_and_differences(name):
    _jax_against_torch_and_differences(name)


def _fit(backend: str, n_iter: int = 10):
    model, names = threshold()
    # data of the model at thr = 0.3, k = 0.9: the fit moves the refill times
    truth = kinabs.simulate(model, TIMES, parameters={"thr": 0.3, "k": 0.9},
                            backend="torch").values[0]
    data = pd.DataFrame(truth, columns=["A", "B"], index=pd.Index(TIMES, name="time"))
    trainer = kinabs.Trainer(model, data, n_iter=n_iter, backend=backend,
                             parameters=["k", "thr"], progress=False)
    trainer.parameter_sets = pd.DataFrame({"k": [0.7], "thr": [0.4]})
    return trainer.train()


def _check_fit(result):
    losses = result.loss_history[0]
    assert losses[0] > 1e-3 and np.nanmin(losses) < 1e-12
    np.testing.assert_allclose(result.parameters.loc[0, ["k", "thr"]], [0.9, 0.3],
                               rtol=1e-5)
    assert result.status == ["converged"]


def test_trainer_fits_a_model_with_events_on_torch():
    _check_fit(_fit("torch"))


@pytest.mark.slow
def test_trainer_fits_a_model_with_events_on_jax():
    _check_fit(_fit("jax"))


def test_bfgs_trains_a_model_with_events_and_other_optimisers_are_refused():
    model, names = delayed()
    trainer = kinabs.Trainer(model, _data(), n_iter=5, backend="torch",
                             parameters=list(names), optimizer=kinabs.BFGS(),
                             optim_space="linear", progress=False)
    trainer.parameter_sets = pd.DataFrame([dict(zip(names, _start(model, names)[0]))])
    result = trainer.train()
    assert result.loss_history[0, -1] < result.loss_history[0, 0]
    with pytest.raises(kinabs.UnsupportedFeatureError, match="'late'.*event"):
        trainer.optimizer = kinabs.get_backend("torch").adam(1e-2)


def _bertozzi():
    from tests._shared import SHARED

    root = SHARED / "data/jaxkineticmodel"
    model, data = root / "models/Bertozzi2020.xml", root / "datasets/Bertozzi2020.csv"
    if not (model.is_file() and data.is_file()):
        pytest.skip("shared models not found")
    frame = pd.read_csv(data, index_col=0)
    frame.index.name = "time"
    return kinabs.load_sbml(model), frame


@pytest.mark.slow
def test_bertozzi2020_agrees_across_backends_and_fits_with_its_lockdown_events():
    # as shipped the lockdown is off (Trigger_Lockdown = 0: no event fires); on, Ro halves
    # from Lockdown_CA_start to Lockdown_CA_end, whose event times the fit moves
    model, frame = _bertozzi()
    times = frame.index.to_numpy()
    lockdown = model.with_parameters({"Trigger_Lockdown": 1.0})
    for m in (model, lockdown):
        a = kinabs.simulate(m, times, backend="torch")
        b = kinabs.simulate(m, times, backend="jax")
        np.testing.assert_allclose(a.values, b.values, rtol=1e-5, atol=1e-10)
    data = pd.DataFrame(a.values[0], columns=list(a.columns), index=frame.index)
    names = ["gamma_CA", "Lockdown_CA_start", "Lockdown_CA_end"]
    trainer = kinabs.Trainer(lockdown, data, n_iter=25, backend="torch", parameters=names,
                             progress=False)
    trainer.parameter_sets = pd.DataFrame([[0.15, 30.0, 60.0]], columns=names)
    result = trainer.train()
    assert result.loss_history[0, 0] > 1e-3 and np.nanmin(result.loss_history[0]) < 1e-10
    np.testing.assert_allclose(result.parameters.loc[0, names], [0.14, 27.0, 66.0],
                               rtol=1e-4)
