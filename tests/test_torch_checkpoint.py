"""Gradients of torch Rosenbrock solves that have no discrete adjoint (systems that depend
on time, systems without step functions): each accepted step is redone with autograd
(``_checkpoint``). The gradient must be autograd's through the whole solve, to rounding,
and the analytic one where there is one."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import sympy

import kinabs
from kinabs._model import TIME, sym

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")

from kinabs.backends.torch import _simulate as torch_backend  # noqa: E402
from kinabs.backends.torch import lowered  # noqa: E402
from kinabs.backends.torch._solvers import checkpoint as _checkpoint  # noqa: E402
from tests._models import forced_model  # noqa: E402

R = kinabs.SpeciesReference
F64 = torch.float64


def ramp_model() -> kinabs.Model:
    """A -> B at rate k A u(t), u a ramp that stops rising at t = 2 (a kink: a time
    break), and B removed at rate kb B^2. d rhs/dt != 0, so there is no discrete adjoint."""
    return forced_model("ramp", sympy.Piecewise((0.5 + TIME, TIME < 2.0), (2.5, True)))


def _spy(monkeypatch) -> list:
    """A list that gets an entry for each checkpointed solve ``solve`` makes."""
    calls: list = []
    real = _checkpoint.checkpointed_rosenbrock_solve
    monkeypatch.setattr(torch_backend, "checkpointed_rosenbrock_solve",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    return calls


def _run(low, p, y_scale, solver, *, plain, monkeypatch):
    """Loss, solution, gradients by the parameters and the initial state, status."""
    calls = _spy(monkeypatch)
    if plain:  # autograd through every attempt, the whole graph kept
        monkeypatch.setattr(torch_backend, "_wants_gradient", lambda y0, k: False)
    p = p.clone().requires_grad_(True)
    y0, k = low.fns.init(torch.tensor(0.0, dtype=F64), p)
    y0 = (y0 * y_scale).detach().requires_grad_(True)
    ts = torch.linspace(0.5, 6.0, 9, dtype=F64)
    ys, status, _ = torch_backend.solve(low, ts, 0.0, y0, k, solver=solver)
    weights = torch.linspace(1.0, 2.0, ys.shape[1], dtype=F64)[None, :, None]
    loss = (torch.nan_to_num(ys) ** 2 * weights).sum()
    loss.backward()
    monkeypatch.undo()
    assert calls == ([] if plain else [1])  # the path under test was taken
    return loss.detach(), ys.detach(), p.grad, y0.grad, status


def _lowered(system, *, step_functions: bool):
    low = lowered(system)
    return low if step_functions else dataclasses.replace(low, step=None)


@pytest.mark.parametrize("case", ["ramp", "ramp-generated", "serine-generated"])
def test_checkpointed_gradient_equals_autograd_through_the_solve(model, case, monkeypatch):
    """The same steps and the same arithmetic: gradients equal to rounding, for every
    member of a batch, with and without the step functions."""
    name, _, kind = case.partition("-")
    system = kinabs.lower(ramp_model() if name == "ramp" else model)
    low = _lowered(system, step_functions=kind == "")
    rng = np.random.default_rng(3)
    defaults = system.parameter_defaults
    p = torch.as_tensor(defaults * rng.uniform(0.5, 2.0, size=(3, defaults.size)))
    y_scale = torch.as_tensor(rng.uniform(0.8, 1.2, size=(3, len(system.states))))
    solver = kinabs.SolverOptions(method="stiff", rtol=1e-9, atol=1e-11)
    new = _run(low, p, y_scale, solver, plain=False, monkeypatch=monkeypatch)
    old = _run(low, p, y_scale, solver, plain=True, monkeypatch=monkeypatch)
    np.testing.assert_array_equal(new[4], 0)
    torch.testing.assert_close(new[1], old[1], rtol=1e-13, atol=1e-300)
    for a, b in zip(new[2:4], old[2:4]):
        assert torch.isfinite(a).all() and a.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13 * b.abs().max().item())


def decay_model() -> kinabs.Model:
    """A' = -k (1 + t) A: A(T) = A0 exp(-k (T + T^2 / 2))."""
    return kinabs.Model(
        id="decay",
        compartments={"c": kinabs.Compartment("c", 1.0)},
        species={"A": kinabs.Species("A", "c", initial_concentration=1.5)},
        parameters={"k": kinabs.Parameter("k", 0.4)},
        reactions={"r": kinabs.Reaction("r", sym("k") * (1 + TIME) * sym("A"), (R("A"),), ())},
    )


@pytest.mark.parametrize("step_functions", [True, False])
def test_checkpointed_gradient_is_the_analytic_one(step_functions, monkeypatch):
    """dA(T)/dk = -(T + T^2/2) A(T) and dA(T)/dA0 = A(T)/A0, to the solver's accuracy,
    for a batch of rate constants."""
    system = kinabs.lower(decay_model())
    low = _lowered(system, step_functions=step_functions)
    rates = np.array([0.2, 0.4, 0.9])
    p = np.tile(system.parameter_defaults, (3, 1))
    p[:, list(system.parameters).index("k")] = rates
    p = torch.as_tensor(p).requires_grad_(True)
    y0, k = low.fns.init(torch.tensor(0.0, dtype=F64), p)
    y0 = y0.detach().requires_grad_(True)
    ts = torch.tensor([1.0, 2.5], dtype=F64)
    calls = _spy(monkeypatch)
    solver = kinabs.SolverOptions(method="stiff", rtol=1e-11, atol=1e-13)
    ys, status, _ = torch_backend.solve(low, ts, 0.0, y0, k, solver=solver)
    assert calls == [1] and np.all(status == 0)
    ys[:, -1, 0].sum().backward()
    s = 2.5 + 2.5 ** 2 / 2
    want = 1.5 * np.exp(-rates * s)
    np.testing.assert_allclose(ys.detach().numpy()[:, -1, 0], want, rtol=1e-9)
    grad_k = p.grad.numpy()[:, list(system.parameters).index("k")]
    np.testing.assert_allclose(grad_k, -s * want, rtol=1e-8)
    np.testing.assert_allclose(y0.grad.numpy()[:, 0], want / 1.5, rtol=1e-8)


def test_checkpointed_gradient_with_a_failing_member(monkeypatch):
    """A member that runs out of steps is NaN from then on; the other members' gradients
    are still autograd's, not poisoned by the failed member's NaN."""
    system = kinabs.lower(ramp_model())
    low = lowered(system)
    base = system.parameter_defaults
    kinetic = np.isin(system.parameters, system.kinetic_parameters)
    p = torch.as_tensor(np.stack([np.where(kinetic, base * f, base) for f in (30, 1, 0.8)]))
    y_scale = torch.ones((3, 2), dtype=F64)
    solver = kinabs.SolverOptions(method="stiff", rtol=1e-9, atol=1e-11, max_steps=120)
    new = _run(low, p, y_scale, solver, plain=False, monkeypatch=monkeypatch)
    old = _run(low, p, y_scale, solver, plain=True, monkeypatch=monkeypatch)
    assert new[4][0] == 1 and np.all(new[4][1:] == 0) and list(new[4]) == list(old[4])
    for a, b in zip(new[2:4], old[2:4]):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a[1:], b[1:], rtol=1e-10,
                                   atol=1e-13 * b[1:].abs().max().item())


@pytest.mark.parametrize("model_name", ["ramp", "serine"])
def test_second_derivatives_raise_rather_than_come_out_wrong(model, model_name):
    """Neither the checkpoints (ramp) nor the discrete adjoint (serine) differentiate
    their own backward pass: asking for a second derivative raises."""
    system = kinabs.lower(ramp_model() if model_name == "ramp" else model)
    low = lowered(system)
    p = torch.as_tensor(system.parameter_defaults[None]).requires_grad_(True)
    y0, k = low.fns.init(torch.tensor(0.0, dtype=F64), p)
    ys, _, _ = torch_backend.solve(low, torch.tensor([1.0, 2.0], dtype=F64), 0.0, y0, k,
                                   solver=kinabs.SolverOptions(method="stiff"))
    # a loss linear in the solution: its gradient's own graph would not see the solve
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(ys.sum() + (p ** 2).sum(), p, create_graph=True)
    (grad,) = torch.autograd.grad(ys.sum(), p)  # first derivatives are fine
    assert torch.isfinite(grad).all()


def test_training_a_time_dependent_model_matches_jax():
    """Training on torch goes through the checkpoints (the ramp has no discrete adjoint):
    the same AdaBelief iterations (the seed's) as on JAX give the same loss curves. Data from a DataFrame
    (read-only values) train without warnings."""
    import warnings

    import pandas as pd

    m = ramp_model()
    ts = np.linspace(0.5, 6.0, 12)
    sim = kinabs.simulate(m, ts, solver=kinabs.SolverOptions(rtol=1e-10, atol=1e-12))
    data = pd.DataFrame(sim.values[0] * [1.1, 0.9], index=pd.Index(ts, name="time"),
                        columns=["A", "B"])
    curves = {}
    for backend in ("jax", "torch"):
        tr = kinabs.Trainer(model=m, data=data, backend=backend, n_iter=15, progress=False,
                            optimizer=kinabs.get_backend(backend).default_optimizer())
        tr.latinhypercube_sampling(m.parameter_values(), lower_bound=0.3, upper_bound=3,
                                   N=2, seed=1)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            curves[backend] = tr.train().loss_history
    assert np.all(np.isfinite(curves["torch"]))
    assert np.all(curves["torch"][:, -1] < curves["torch"][:, 0])
    np.testing.assert_allclose(curves["torch"], curves["jax"], rtol=1e-5)
