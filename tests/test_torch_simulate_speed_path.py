"""kinabs' own Dormand-Prince on torch (``_solvers.dopri5``): what ``kinabs.simulate``
runs first without gradients. Values against analytic solutions and the JAX backend;
each member its own steps and status; gradients still go through torchdiffeq."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy

import kinabs
from kinabs._model import TIME, sym

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")

from kinabs.backends.torch._solvers import dopri5 as dp  # noqa: E402
from kinabs.backends.torch._solvers.dopri5 import dopri5_solve  # noqa: E402
from kinabs.backends.torch._solvers.explicit import per_member  # noqa: E402

R = kinabs.SpeciesReference
F64 = torch.float64


def decay(t, y, k):
    return -k * y


def test_batch_members_get_their_own_steps_and_status():
    # y' = -k y: the mild members finish; the stiff one (k = 2000) runs out of steps
    # alone, where one shared step size would have failed the whole batch
    k = torch.tensor([[0.5], [2000.0], [3.0]], dtype=F64)
    ts = torch.tensor([0.0, 0.25, 1.0, 2.0], dtype=F64)
    ys, status, steps = dopri5_solve(decay, ts, 0.0, torch.ones(3, 1, dtype=F64), k,
                                     rtol=1e-10, atol=1e-12, max_steps=200)
    assert status.tolist() == [0, 1, 0]
    want = np.exp(-np.outer([0.5, 3.0], ts.numpy()))
    np.testing.assert_allclose(ys[[0, 2], :, 0].numpy(), want, rtol=1e-8, atol=1e-12)
    assert torch.isnan(ys[1]).all()
    assert steps[0] > 10 and steps[2] > steps[0] and steps[1] < 200
    assert not ys.is_inference()


def test_many_save_times_inside_one_step_are_interpolated():
    # 201 save times on a slow exponential: far fewer steps than save times, each save
    # time from torchdiffeq's quartic interpolant (error well under the tolerance)
    ts = torch.linspace(0.0, 4.0, 201, dtype=F64)
    k = torch.tensor([[0.3]], dtype=F64)
    ys, status, steps = dopri5_solve(decay, ts, 0.0, torch.full((1, 1), 2.0, dtype=F64), k,
                                     rtol=1e-9, atol=1e-12)
    assert status.tolist() == [0] and steps[0] < 60
    np.testing.assert_allclose(ys[0, :, 0].numpy(), 2.0 * np.exp(-0.3 * ts.numpy()),
                               rtol=1e-8)


def test_interpolation_weights_reproduce_a_quartic():
    # the quartic through y0, y1, the midpoint and both end slopes is exact for y = t^4
    # on [0, 1] when the "stages" give the exact midpoint and slopes
    theta = np.array([0.0, 0.3, 0.5, 0.8, 1.0])
    a, b, g = dp._interpolation_weights(theta, np.ones(5))
    y0, y1 = 0.0, 1.0
    mid = 0.5 ** 4
    # stages chosen so that y0 + _MID @ k = mid, k_0 = f(0) = 0 and k_6 = f(1) = 4
    k = np.zeros(7)
    k[6] = 4.0
    k[2] = (mid - y0 - dp._MID[6] * k[6]) / dp._MID[2]
    np.testing.assert_allclose(a * y0 + b * y1 + g @ k, theta ** 4, atol=1e-14)


def test_start_time_saves_and_repeated_times():
    ts = torch.tensor([1.0, 1.0, 2.0, 2.0], dtype=F64)
    k = torch.tensor([[1.0]], dtype=F64)
    ys, status, _ = dopri5_solve(decay, ts, 1.0, torch.ones(1, 1, dtype=F64), k)
    assert status.tolist() == [0]
    np.testing.assert_allclose(ys[0, :, 0].numpy(), [1.0, 1.0, math.exp(-1), math.exp(-1)],
                               rtol=1e-7)


def test_a_nan_derivative_fails_the_member_only():
    # y' = -y, NaN past t = c: the member with c = 1 cannot pass it, the one with
    # c = 1e300 is unaffected
    def rhs(t, y, k):
        return -y + 0.0 * torch.sqrt(k - t[:, None])

    k = torch.tensor([[1.0], [1e300]], dtype=F64)
    ys, status, _ = dopri5_solve(rhs, torch.tensor([0.5, 3.0], dtype=F64), 0.0,
                                 torch.ones(2, 1, dtype=F64), k, max_steps=5000)
    assert status.tolist() == [2, 0]
    assert torch.isnan(ys[0]).all()
    np.testing.assert_allclose(ys[1, :, 0].numpy(), np.exp([-0.5, -3.0]), rtol=1e-7)


def switch_model() -> kinabs.Model:
    """A -> B at rate k1*A before t = 2 and k2*A after: A jumps in slope at t = 2."""
    rate = sympy.Piecewise((sym("k1"), TIME < 2), (sym("k2"), True)) * sym("A")
    return kinabs.Model(
        id="switch",
        compartments={"c": kinabs.Compartment("c", 1.0)},
        species={"A": kinabs.Species("A", "c", initial_concentration=1.0),
                 "B": kinabs.Species("B", "c", initial_concentration=0.0)},
        parameters={"k1": kinabs.Parameter("k1", 0.2), "k2": kinabs.Parameter("k2", 3.0)},
        reactions={"r": kinabs.Reaction("r", rate, (R("A"),), (R("B"),))},
    )


def test_a_time_switch_is_stepped_to_exactly():
    ts = np.array([1.0, 2.0, 2.5, 4.0])
    opts = kinabs.SolverOptions(method="nonstiff", rtol=1e-10, atol=1e-12)
    res = kinabs.simulate(switch_model(), ts, solver=opts, backend="torch")
    a = np.where(ts < 2, np.exp(-0.2 * ts), math.exp(-0.4) * np.exp(-3.0 * (ts - 2)))
    col = {c: i for i, c in enumerate(res.columns)}
    np.testing.assert_allclose(res.values[0, :, col["A"]], a, rtol=1e-8)
    np.testing.assert_allclose(res.values[0, :, col["B"]], 1 - a, rtol=1e-8)
    assert res.steps[0] > 0


def test_serine_agrees_with_jax():
    pytest.importorskip("jax")
    model = kinabs.load_sbml(kinabs.example_model_path())
    ts = np.linspace(0, 10, 10)
    opts = kinabs.SolverOptions(rtol=1e-8, atol=1e-10)
    got = kinabs.simulate(model, ts, solver=opts, backend="torch")
    want = kinabs.simulate(model, ts, solver=opts, backend="jax")
    assert got.status == ("success",) and 100 < got.steps[0] < 2000
    # both within their own tolerance of the truth: 1e-6 relative, atol-sized absolute
    np.testing.assert_allclose(got.values, want.values, rtol=1e-6, atol=1e-9)


def test_a_batch_in_auto_mode_keeps_its_explicit_members():
    # one member too stiff for the capped explicit stage: only it goes to the Rosenbrock
    # solver; the others keep their explicit (counted) steps
    model = kinabs.load_sbml(kinabs.example_model_path())
    ts = np.linspace(0, 10, 5)
    sysm = kinabs.lower(model)
    p = np.tile(sysm.parameter_defaults, (3, 1))
    opts = kinabs.SolverOptions(rtol=1e-8, atol=1e-10)
    alone = kinabs.simulate(model, ts, solver=opts, backend="torch")
    res = kinabs.simulate(model, ts, parameters=p, solver=opts, backend="torch")
    assert res.status == ("success",) * 3
    np.testing.assert_array_equal(res.steps, np.repeat(alone.steps, 3))
    np.testing.assert_allclose(res.values, np.repeat(alone.values, 3, axis=0), rtol=1e-12)


def test_gradients_still_go_through_torchdiffeq():
    ts = torch.tensor([1.0], dtype=F64)
    y0 = torch.ones(1, 1, dtype=F64)
    k = torch.tensor([[0.5]], dtype=F64, requires_grad=True)
    assert not per_member("dopri5", ts, 0.0, y0, k)
    assert per_member("dopri5", ts, 0.0, y0, k.detach())
    assert not per_member("dopri8", ts, 0.0, y0, k.detach())
    assert not per_member("dopri5", torch.tensor([2.0, 1.0], dtype=F64), 0.0, y0,
                          k.detach())
    from kinabs.backends.torch._solvers.explicit import explicit_solve
    ys, status, steps = explicit_solve(decay, ts, 0.0, y0, k)
    ys.sum().backward()
    # d/dk exp(-k) = -exp(-k)
    assert k.grad.item() == pytest.approx(-math.exp(-0.5), rel=1e-6)
    assert steps.tolist() == [-1]  # torchdiffeq does not count its steps
