"""The torch backend's fast paths: generated step functions (hoisted constants) equal the
generated right-hand side and Jacobian; the discrete adjoint of a Rosenbrock solve gives
autograd's gradient through the same steps; stateless systems and rate laws undefined
past a threshold solve.

No timings here: speed is measured in benchmarks/bench_serine_fit.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy

import kinabs
from kinabs._model import sym

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")

from kinabs.backends.torch import _simulate as torch_backend  # noqa: E402
from kinabs.backends.torch import lowered  # noqa: E402
from kinabs.backends.torch._ops import Columns  # noqa: E402
from kinabs.backends.torch._solvers.stepfns import adjoint_functions  # noqa: E402
from tests._models import forced_model, robertson_model  # noqa: E402

R = kinabs.SpeciesReference


def switch_model() -> kinabs.Model:
    """A -> B at rate k A, doubled from t = 2: time appears only in a piecewise-constant
    factor (d rhs / dt = 0), so the solve counts as autonomous and uses the adjoint."""
    from kinabs._model import TIME

    return forced_model("switch", sympy.Piecewise((1.0, TIME < 2.0), (2.0, True)))


def power_model(n: float = 1.0000000000001) -> kinabs.Model:
    """A made at rate p from A = 0, removed at rate k A^n, the exponent n a parameter (as
    Merkle 2016's SOCS3prom): sympy's d(A^n)/dA = n A^n / A is 0/0 at the start, and
    d(A^n)/dn = A^n log A is 0 * -inf."""
    return kinabs.Model(
        id="power",
        compartments={"c": kinabs.Compartment("c", 1.0)},
        species={"A": kinabs.Species("A", "c", initial_concentration=0.0)},
        parameters={"p": kinabs.Parameter("p", 0.6), "k": kinabs.Parameter("k", 0.4),
                    "n": kinabs.Parameter("n", n)},
        reactions={"make": kinabs.Reaction("make", sym("p"), (), (R("A"),)),
                   "use": kinabs.Reaction("use", sym("k") * sym("A") ** sym("n"),
                                          (R("A"),), ())},
    )


def _systems(model):
    return {"serine": kinabs.lower(model), "robertson": kinabs.lower(robertson_model()),
            "switch": kinabs.lower(switch_model()),
            # n > 2 when scaled: at A = 0 the step's derivative by A (through J' =
            # n (n-1) A^(n-2)) is finite, so is the gradient by the initial state
            "power": kinabs.lower(power_model(5.0))}


@pytest.mark.parametrize("name", ["serine", "robertson", "switch", "power"])
def test_step_functions_equal_the_generated_functions(model, name):
    system = _systems(model)[name]
    low = lowered(system)
    assert low.step is not None
    rng = np.random.default_rng(0)
    p = system.parameter_defaults * rng.uniform(0.5, 2.0, size=(4, len(system.parameters)))
    p = torch.as_tensor(p)
    y0, k = low.fns.init(torch.tensor(0.0, dtype=torch.float64), p)
    y = y0 * torch.as_tensor(rng.uniform(0.3, 1.5, size=y0.shape)) + 1e-3
    q = low.step.columns(low.step.prep(k))
    for t in (0.5, 3.0):  # before and after the switch's time
        t = torch.tensor(t, dtype=torch.float64)
        want_f = low.fns.rhs(t, y, Columns(k))
        want_j = low.jac(t, y, Columns(k))
        f, j = low.step.rhs_jac(t, y, q)
        torch.testing.assert_close(low.step.rhs(t, y, q), want_f, rtol=1e-12, atol=0)
        torch.testing.assert_close(f, want_f, rtol=1e-12, atol=0)
        torch.testing.assert_close(j, want_j, rtol=1e-12, atol=1e-300)
        torch.testing.assert_close(low.step.jac(t, y, q), want_j, rtol=1e-12, atol=1e-300)


def _loss_and_grads(system, p, y_scale, solver, adjoint: bool, monkeypatch):
    if not adjoint:
        monkeypatch.setattr(torch_backend, "_discrete_adjoint", lambda *a: None)
    low = lowered(system)
    p = p.clone().requires_grad_(True)
    y0, k = low.fns.init(torch.tensor(0.0, dtype=torch.float64), p)
    y0 = (y0 * y_scale).detach().requires_grad_(True)
    ts = torch.linspace(0.5, 10.0, 7, dtype=torch.float64)
    ys, status, steps = torch_backend.solve(low, ts, 0.0, y0, k, solver=solver)
    weights = torch.linspace(1.0, 2.0, ys.shape[1], dtype=torch.float64)[None, :, None]
    loss = (torch.nan_to_num(ys) ** 2 * weights).sum()
    loss.backward()
    monkeypatch.undo()
    return loss.detach(), ys.detach(), p.grad, y0.grad, status, steps


@pytest.mark.parametrize("name", ["serine", "robertson", "switch", "power"])
def test_discrete_adjoint_equals_autograd_through_the_steps(model, name, monkeypatch):
    """Same steps (the solve is the same), so the same gradient to rounding, by the
    parameters and by the initial state, for every member of a batch."""
    system = _systems(model)[name]
    assert adjoint_functions(lowered(system).step) is not None
    rng = np.random.default_rng(1)
    p = torch.as_tensor(system.parameter_defaults * rng.uniform(0.5, 2.0, size=(3, len(
        system.parameters))))
    y_scale = torch.as_tensor(rng.uniform(0.8, 1.2, size=(3, len(system.states))))
    solver = kinabs.SolverOptions(method="stiff", rtol=1e-8, atol=1e-10)
    fast = _loss_and_grads(system, p, y_scale, solver, True, monkeypatch)
    slow = _loss_and_grads(system, p, y_scale, solver, False, monkeypatch)
    np.testing.assert_array_equal(fast[4], 0)
    np.testing.assert_array_equal(fast[5], slow[5])  # as many accepted steps
    # The adjoint's forward (no autograd) rounds differently from autograd's; on serine
    # and Robertson the step sizes still come out the same, so solutions and gradients
    # agree to rounding. The switch's error estimates are at rounding level early on, so
    # its steps differ slightly: the solutions then agree to the tolerance only.
    same_steps = name != "switch"
    rtol = 1e-12 if same_steps else 1e-5
    torch.testing.assert_close(fast[1], slow[1], rtol=rtol, atol=1e-300)
    for a, b in zip(fast[2:4], slow[2:4]):
        assert torch.isfinite(a).all() and a.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-8 if same_steps else 1e-4,
                                   atol=1e-12 * b.abs().max().item())


@pytest.mark.parametrize("method", ["stiff", "auto"])
def test_symbolic_exponent_at_a_zero_state(method):
    """The Jacobian at A = 0 is finite (0 for n > 1), so Rosenbrock steps succeed: the
    solve was 'nonfinite' from the first step. With n = 1 + 1e-13 the solution is
    p/k (1 - exp(-k t)) to ~1e-12."""
    system = kinabs.lower(power_model())
    jac = lowered(system).jac
    y = torch.zeros((1, 1), dtype=torch.float64)
    k = torch.as_tensor(system.parameter_defaults[None, :])
    assert float(jac(torch.tensor(0.0, dtype=torch.float64), y, Columns(k))[0, 0, 0]) == 0.0
    times = np.array([0.5, 2.0, 8.0])
    sim = kinabs.simulate(power_model(), times, backend="torch",
                          solver=kinabs.SolverOptions(method=method, rtol=1e-10, atol=1e-12))
    assert sim.ok
    np.testing.assert_allclose(sim.values[0][:, 0], 0.6 / 0.4 * (1 - np.exp(-0.4 * times)),
                               rtol=1e-8)


def test_symbolic_exponent_gradients_at_a_zero_state(monkeypatch):
    """The discrete adjoint's parameter gradient is finite (d(A^n)/dn = A^n log A is 0 at
    A = 0), and matches central differences of the same solves."""
    system = kinabs.lower(power_model())
    p = torch.as_tensor(system.parameter_defaults[None, :])
    ones = torch.ones((1, 1), dtype=torch.float64)
    solver = kinabs.SolverOptions(method="stiff", rtol=1e-12, atol=1e-14)
    loss, _, grad, _, status, _ = _loss_and_grads(system, p, ones, solver, True, monkeypatch)
    assert status[0] == 0 and torch.isfinite(grad).all()
    # one-sided (second order) differences: below n = 1 the rate is not Lipschitz at 0
    for i in range(len(system.parameters)):
        h = 1e-4 * float(p[0, i])
        values = []
        for step in (0.0, h, 2 * h):
            q = p.clone()
            q[0, i] += step
            values.append(float(_loss_and_grads(system, q, ones, solver, True,
                                                monkeypatch)[0]))
        fd = (-3 * values[0] + 4 * values[1] - values[2]) / (2 * h)
        np.testing.assert_allclose(float(grad[0, i]), fd, rtol=1e-5)


def test_infinite_jacobian_at_the_start_fails_the_implicit_solvers():
    """A' = p - k A^0.5 from A = 0: J = -inf there, so an implicit step's update is 0 and
    the state never left 0, a 'success' on both backends. Now the implicit solvers
    report non-finite; "auto" (explicit first) solves it, the same on both."""
    opts = {m: kinabs.SolverOptions(method=m, rtol=1e-10, atol=1e-12) for m in ("stiff",
                                                                              "auto")}
    runs = {(b, m): kinabs.simulate(power_model(0.5), [0.5, 2.0, 8.0], backend=b,
                                    solver=o, on_failure="nan")
            for b in ("jax", "torch") for m, o in opts.items()}
    for b in ("jax", "torch"):
        assert runs[b, "stiff"].status == ("nonfinite",)
        assert runs[b, "auto"].ok and runs[b, "auto"].values[0, 0, 0] > 0.2
    np.testing.assert_allclose(runs["torch", "auto"].values, runs["jax", "auto"].values,
                               rtol=1e-8)


def test_discrete_adjoint_with_a_failing_member(model, monkeypatch):
    """A member that runs out of steps is NaN from then on; the other members' gradients
    are autograd's, and the failed one's gradient does not poison theirs."""
    system = kinabs.lower(model)
    base = system.parameter_defaults
    kinetic = np.isin(system.parameters, system.kinetic_parameters)
    rng = np.random.default_rng(2)
    slower = [np.where(kinetic, base * 0.3 * rng.uniform(0.9, 1.1, base.shape), base)
              for _ in range(2)]
    p = torch.as_tensor(np.stack([base, *slower]))
    y_scale = torch.ones((3, len(system.states)), dtype=torch.float64)
    # the true parameters need ~120 steps here, the slower kinetics ~40
    solver = kinabs.SolverOptions(method="stiff", rtol=1e-8, atol=1e-10, max_steps=80)
    fast = _loss_and_grads(system, p, y_scale, solver, True, monkeypatch)
    slow = _loss_and_grads(system, p, y_scale, solver, False, monkeypatch)
    assert list(fast[4]) == list(slow[4]) and fast[4][0] != 0 and np.all(fast[4][1:] == 0)
    for a, b in zip(fast[2:4], slow[2:4]):
        torch.testing.assert_close(a[1:], b[1:], rtol=1e-8, atol=1e-12 * b[1:].abs().max().item())


@pytest.mark.parametrize("method", ["auto", "nonstiff"])
def test_rate_that_switches_at_a_time(method):
    """d rhs/dt = 0 almost everywhere, but the rate doubles at t = 2. (Rodas5, "stiff", is
    only good to ~2e-5 here: its error estimate, the last stage, does not see a switch
    inside a step even with every stage at its own time; see docs/torch.md.)"""
    times = np.array([1.0, 2.5, 4.0])
    sim = kinabs.simulate(switch_model(), times, outputs=["A"], backend="torch",
                          solver=kinabs.SolverOptions(method=method, rtol=1e-10,
                                                      atol=1e-12))
    k = 0.3
    expected = 2.0 * np.where(times < 2, np.exp(-k * times),
                              np.exp(-2 * k) * np.exp(-2 * k * (times - 2)))
    np.testing.assert_allclose(sim.values[0][:, 0], expected, rtol=1e-7)


def test_stateless_system_simulates_on_torch():
    """Every species a boundary condition: no state; outputs come from constants."""
    model = kinabs.Model(
        id="stateless",
        compartments={"c": kinabs.Compartment("c", 2.0)},
        species={s: kinabs.Species(s, "c", initial_amount=v, boundary_condition=True)
                 for s, v in (("A", 3.0), ("B", 1.5))},
        parameters={"k": kinabs.Parameter("k", 0.5)},
        reactions={"r": kinabs.Reaction("r", sym("k") * sym("A"), (R("A"),), (R("B"),))},
    )
    times = [0.0, 1.0, 2.5]
    for method in ("auto", "stiff", "nonstiff"):
        sim = kinabs.simulate(model, times, outputs=["A", "B"], backend="torch",
                              solver=kinabs.SolverOptions(method=method))
        assert sim.ok
        np.testing.assert_allclose(sim.values[0], [[1.5, 0.75]] * 3)


def test_rate_undefined_past_a_threshold_is_solved_explicitly():
    """SBML Test Suite 00028: rate ceiling(4 S1)! / 25, a gamma pole once S1 < 0. Trial
    steps that overshoot get NaN/inf derivatives; they must be rejected, not stop the
    solver (which then fell back to Rodas5, whose error estimate misses the rate's
    jump at S1 = 0.75 inside a step)."""
    s1 = sym("S1")
    rate = sympy.factorial(sympy.ceiling(s1 * sym("p1"))) / sym("p2")
    model = kinabs.Model(
        id="jumps",
        compartments={"c": kinabs.Compartment("c", 1.0)},
        species={"S1": kinabs.Species("S1", "c", initial_amount=1.0),
                 "S2": kinabs.Species("S2", "c", initial_amount=0.0)},
        parameters={"p1": kinabs.Parameter("p1", 4.0), "p2": kinabs.Parameter("p2", 25.0)},
        reactions={"r": kinabs.Reaction("r", rate, (R("S1"),), (R("S2"),))},
    )
    # rate 24/25 until S1 = 0.75 (t = 0.25 / 0.96), then 6/25 until S1 = 0.5
    t_switch = 0.25 / 0.96
    times = np.array([0.2, 0.28, 0.6])
    expected_s2 = [0.96 * 0.2, 0.25 + 0.24 * (0.28 - t_switch), 0.25 + 0.24 * (0.6 - t_switch)]
    sim = kinabs.simulate(model, times, outputs=["S2"], backend="torch",
                          solver=kinabs.SolverOptions(rtol=1e-10, atol=1e-12))
    assert sim.ok
    np.testing.assert_allclose(sim.values[0][:, 0], expected_s2, rtol=1e-6)
