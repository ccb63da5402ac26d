"""Small CPU solves in numpy (``kinabs.backends.torch._solvers.host``): the same solutions,
steps, statuses and gradients as the torch path they replace, the copies of an expanded
batch solved once, and the solves that must stay in torch (dual tensors, float32,
non-autonomous systems).

No timings here: speed is measured in benchmarks/bench_serine_fit.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy

import kinabs
from kinabs._model import TIME

torch = pytest.importorskip("torch")

import torch.autograd.forward_ad as fwad  # noqa: E402

from kinabs.backends.torch import _simulate as torch_backend  # noqa: E402
from kinabs.backends.torch import lowered  # noqa: E402
from kinabs.backends.torch._solvers import host  # noqa: E402
from tests._models import forced_model, robertson_model  # noqa: E402


@pytest.fixture(scope="module")
def serine():
    return kinabs.lower(kinabs.load_sbml(kinabs.example_model_path()))


def _systems(serine):
    return {"serine": serine, "robertson": kinabs.lower(robertson_model()),
            "switch": kinabs.lower(forced_model(
                "switch", sympy.Piecewise((1.0, TIME < 2.0), (2.0, True))))}


def _inputs(system, rows: int, seed: int):
    low = lowered(system)
    rng = np.random.default_rng(seed)
    p = torch.as_tensor(system.parameter_defaults * rng.uniform(0.5, 2.0, size=(rows, len(
        system.parameters))))
    y0, k = low.fns.init(torch.tensor(0.0, dtype=torch.float64), p)
    return low, p, y0, k


def _solve(low, y0, k, enabled: bool, monkeypatch, **solver):
    ts = torch.linspace(0.5, 10.0, 7, dtype=torch.float64)
    opts = kinabs.SolverOptions(method="stiff", **({"rtol": 1e-8, "atol": 1e-10} | solver))
    with monkeypatch.context() as m:
        m.setattr(host, "ENABLED", enabled)
        return torch_backend.solve(low, ts, 0.0, y0, k, solver=opts)


@pytest.mark.parametrize("name", ["serine", "robertson", "switch"])
def test_plain_solve_equals_the_torch_path(serine, name, monkeypatch):
    system = _systems(serine)[name]
    low, _, y0, k = _inputs(system, 4, 0)
    assert host.host_ready(low.step, y0, k) is not None
    with torch.no_grad():
        ys, status, steps = _solve(low, y0, k, True, monkeypatch)
        ref_ys, ref_status, ref_steps = _solve(low, y0, k, False, monkeypatch)
    assert isinstance(ys, torch.Tensor) and ys.dtype == torch.float64
    np.testing.assert_array_equal(status, ref_status)
    np.testing.assert_array_equal(status, 0)
    if name != "switch":  # error estimates at rounding level early on: steps may differ
        np.testing.assert_array_equal(steps, ref_steps)
    torch.testing.assert_close(ys, ref_ys, rtol=1e-12 if name != "switch" else 1e-6,
                               atol=1e-300)


def test_a_member_out_of_steps_fails_alone(serine, monkeypatch):
    """The true parameters need ~120 steps here, slower kinetics ~40: with at most 80,
    the first member fails (status 1, NaN from then on), the others are solved."""
    low = lowered(serine)
    base = serine.parameter_defaults
    kinetic = np.isin(serine.parameters, serine.kinetic_parameters)
    slower = np.where(kinetic, base * 0.3, base)
    p = torch.as_tensor(np.stack([base, slower, slower * 1.05]))
    y0, k = low.fns.init(torch.tensor(0.0, dtype=torch.float64), p)
    with torch.no_grad():
        ys, status, steps = _solve(low, y0, k, True, monkeypatch, max_steps=80)
        ref = _solve(low, y0, k, False, monkeypatch, max_steps=80)
    np.testing.assert_array_equal(status, ref[1])
    np.testing.assert_array_equal(status, [1, 0, 0])
    assert torch.isnan(ys[status == 1][:, -1]).all()
    ok = status == 0
    torch.testing.assert_close(ys[ok], ref[0][ok], rtol=1e-12, atol=1e-300)


def _loss_and_grads(low, p, y_scale, weights, enabled, monkeypatch):
    p = p.clone().requires_grad_(True)
    y0, k = low.fns.init(torch.tensor(0.0, dtype=torch.float64), p)
    y0 = (y0 * y_scale).detach().requires_grad_(True)
    ys, status, _ = _solve(low, y0, k, enabled, monkeypatch)
    loss = (torch.nan_to_num(ys) ** 2 * weights).sum()
    loss.backward()
    return ys.detach(), p.grad, y0.grad, status


@pytest.mark.parametrize("name", ["serine", "robertson"])
def test_adjoint_equals_the_torch_discrete_adjoint(serine, name, monkeypatch):
    system = _systems(serine)[name]
    low, p, _, _ = _inputs(system, 3, 2)
    rng = np.random.default_rng(3)
    y_scale = torch.as_tensor(rng.uniform(0.8, 1.2, size=(3, len(system.states))))
    weights = torch.as_tensor(rng.uniform(1.0, 2.0, size=(3, 7, 1)))
    fast = _loss_and_grads(low, p, y_scale, weights, True, monkeypatch)
    slow = _loss_and_grads(low, p, y_scale, weights, False, monkeypatch)
    np.testing.assert_array_equal(fast[3], 0)
    torch.testing.assert_close(fast[0], slow[0], rtol=1e-12, atol=1e-300)
    for a, b in zip(fast[1:3], slow[1:3]):
        assert torch.isfinite(a).all() and a.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-13 * b.abs().max().item())


def test_copies_of_a_member_are_solved_once_with_their_own_adjoints(serine, monkeypatch):
    """An expanded batch (rows repeated, as reverse-mode Jacobians make it): each copy
    keeps its own adjoint, equal to that of the member solved alone with its weights."""
    low, p, _, _ = _inputs(serine, 2, 4)
    order = [0, 1, 0, 0, 1]  # member 0 three times, member 1 twice, interleaved
    rng = np.random.default_rng(5)
    weights = torch.as_tensor(rng.uniform(1.0, 2.0, size=(5, 7, 1)))
    ones = torch.ones((5, 2), dtype=torch.float64)
    solved = []
    real = host._solve

    def counting(fns, ts, t0, y0, q, *args):
        solved.append(y0.shape[0])
        return real(fns, ts, t0, y0, q, *args)

    monkeypatch.setattr(host, "_solve", counting)
    ys, p_grad, y_grad, status = _loss_and_grads(low, p[order], ones, weights, True,
                                                 monkeypatch)
    assert solved == [2]
    for row, member in enumerate(order):
        one = _loss_and_grads(low, p[member:member + 1], ones[:1], weights[row:row + 1],
                              True, monkeypatch)
        torch.testing.assert_close(ys[row], one[0][0], rtol=1e-13, atol=1e-300)
        for got, want in ((p_grad[row], one[1][0]), (y_grad[row], one[2][0])):
            torch.testing.assert_close(got, want, rtol=1e-10,
                                       atol=1e-12 * want.abs().max().item())


def test_groups_keep_first_appearance_order():
    rows = np.array([[2.0, 1.0], [1.0, 5.0], [2.0, 1.0], [0.0, 0.0], [1.0, 5.0]])
    g = host._Groups(rows)
    np.testing.assert_array_equal(g.unique(rows), [[2.0, 1.0], [1.0, 5.0], [0.0, 0.0]])
    np.testing.assert_array_equal(g.which, [0, 1, 0, 2, 1])
    np.testing.assert_array_equal(g.copy, [0, 0, 1, 0, 1])
    assert g.g == 2
    np.testing.assert_array_equal(g.expand(g.unique(rows)), rows)
    values = np.arange(5.0)[:, None] * np.ones((5, 3))
    seeds = g.seeds(values)
    assert seeds.shape == (3, 2, 3) and np.all(seeds[2, 1] == 0)
    np.testing.assert_array_equal(g.rows(seeds), values)


def test_what_stays_in_torch(serine):
    low, _, y0, k = _inputs(serine, 2, 6)
    assert host.host_ready(low.step, y0, k) is not None
    assert host.host_ready(low.step, y0.float(), k.float()) is None
    with fwad.dual_level():
        dual = fwad.make_dual(k, torch.ones_like(k))
        assert host.host_ready(low.step, y0, dual) is None
    # a rate with explicit time dependence (d rhs/dt != 0): the torch path's dfdt
    timed = kinabs.lower(forced_model("timed", 1.0 + 0.1 * TIME))
    step = lowered(timed).step
    assert step is None or host.host_ready(step, y0, k) is None


def test_forward_and_reverse_jacobians_agree_on_an_expanded_batch(serine):
    """The host adjoint under reverse-mode Jacobians (copies per residual) against
    forward mode (dual tensors, torch path)."""
    from kinabs.backends.torch._jacobian import forward_jacobian, reverse_jacobian

    low, p, _, _ = _inputs(serine, 3, 7)
    ts = torch.linspace(0.5, 10.0, 7, dtype=torch.float64)
    opts = kinabs.SolverOptions(method="stiff")

    def residuals(theta):
        y0, k = low.fns.init(torch.tensor(0.0, dtype=torch.float64), torch.exp(theta))
        ys, status, _ = torch_backend.solve(low, ts, 0.0, y0, k, solver=opts)
        return ys.reshape(ys.shape[0], -1), status

    theta = torch.log(p)
    r_rev, st_rev, j_rev = reverse_jacobian(residuals, theta, 14)
    r_fwd, st_fwd, j_fwd = forward_jacobian(residuals, theta)
    np.testing.assert_array_equal(st_rev, 0)
    torch.testing.assert_close(r_rev, r_fwd, rtol=1e-12, atol=1e-300)
    scale = j_fwd.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(j_rev, j_fwd, rtol=1e-8, atol=1e-12 * scale)


@pytest.mark.parametrize("enabled", [True, False])
def test_auto_jacobian_is_reverse_mode_on_the_host(enabled, monkeypatch):
    """``jacobian="auto"`` with 20 starts: reverse mode where its solves run in numpy,
    forward mode (from FORWARD_MIN_STARTS on) where they would not."""
    from kinabs._fit.spec import FitSpec
    from kinabs._optim import LevenbergMarquardt
    from kinabs.backends.torch import _train

    model = kinabs.load_sbml(kinabs.example_model_path())
    data = kinabs.TrainingData.from_csv(kinabs.example_data_path())
    names = ("PSP.kcatB", "PSP.KBser")
    prog = FitSpec(model=model, data=data, parameters=names, backend="torch",
                   optimizer=LevenbergMarquardt()).program()
    assert prog._host_solves() and prog._forward_jacobian
    seen = []
    monkeypatch.setattr(host, "ENABLED", enabled)
    monkeypatch.setattr(_train, "forward_jacobian", lambda *a: seen.append("forward"))
    monkeypatch.setattr(_train, "reverse_jacobian", lambda *a: seen.append("reverse"))
    theta = torch.zeros((_train.FORWARD_MIN_STARTS, len(names)), dtype=torch.float64)
    prog._jacobian(theta)
    assert seen == ["reverse" if enabled else "forward"]
