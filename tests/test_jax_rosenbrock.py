"""The JAX backend's Rosenbrock solver (``backends/jax/_rosenbrock.py``) and how batches
are solved (``SolverOptions.batching``): order of convergence, stiff references, the
symbolic Jacobian against ``jacfwd``, gradients against finite differences, and the
same numbers sequential and vmapped."""

import math

import numpy as np
import pytest

import kinabs
from tests._models import robertson_model, robertson_reference

jax = pytest.importorskip("jax")
diffrax = pytest.importorskip("diffrax")
jnp = jax.numpy

from kinabs._tableaus import RODAS4, RODAS5  # noqa: E402
from kinabs.backends.jax._rosenbrock import JacobianTerm, Rosenbrock  # noqa: E402


def _fixed_step_solve(tab, n: int) -> float:
    """y' = -y^2 + cos(t), y(0) = 1, on [0, 1] with ``n`` equal steps."""
    with jax.enable_x64(True):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, a: -y * y + jnp.cos(t)), Rosenbrock(tab),
            t0=0.0, t1=1.0, dt0=1.0 / n, y0=jnp.array([1.0]),
            stepsize_controller=diffrax.ConstantStepSize(), max_steps=10_000)
        return float(sol.ys[-1, 0])


@pytest.mark.parametrize("tab", [RODAS4, RODAS5], ids=lambda t: t.name)
def test_order_of_convergence(tab):
    """Halving a fixed step divides the error by 2**order on a nonlinear,
    non-autonomous problem (so the df/dt terms count too)."""
    ref = _fixed_step_solve(tab, 640)
    errors = [abs(_fixed_step_solve(tab, n) - ref) for n in (10, 20, 40)]
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert min(orders) > tab.order - 0.5, orders


def test_robertson_matches_radau_reference():
    """The classic stiff test (rates 0.04, 1e4, 3e7) against scipy's Radau at tight
    tolerances, through kinabs.simulate with method="stiff"."""
    times = np.array([0.4, 4.0, 40.0])
    ref = robertson_reference(times)
    opts = kinabs.SolverOptions(method="stiff", rtol=1e-8, atol=1e-14)
    res = kinabs.simulate(robertson_model(), times, backend="jax", solver=opts)
    np.testing.assert_allclose(res.values[0], ref, rtol=2e-6)
    assert res.steps[0] < 2000


def test_stiff_agrees_with_torch_rodas5(model):
    """The same method on both backends: serine at rtol 1e-10."""
    pytest.importorskip("torch")
    opts = kinabs.SolverOptions(method="stiff", rtol=1e-10, atol=1e-14)
    ts = np.linspace(0.0, 10.0, 6)
    a = kinabs.simulate(model, ts, solver=opts, backend="jax")
    b = kinabs.simulate(model, ts, solver=opts, backend="torch")
    np.testing.assert_allclose(a.values, b.values, rtol=1e-8, atol=1e-14)


def test_symbolic_jacobian_gives_the_same_solution_as_jacfwd(model):
    """A JacobianTerm (kinabs' generated Jacobian) and a plain ODETerm (jacfwd) are the
    same method: equal solutions to rounding."""
    from kinabs.backends.jax._simulate import lowered, symbolic_jacobian

    system = kinabs.lower(model)
    with jax.enable_x64(True):
        fns = lowered(system)
        jac = symbolic_jacobian(system)
        y0, k = fns.init(0.0, jnp.asarray(system.parameter_defaults))
        vf = lambda t, y, args: fns.rhs(t, y, args)  # noqa: E731
        terms = {"symbolic": JacobianTerm(vf, jac), "jacfwd": diffrax.ODETerm(vf)}
        ys = {}
        for name, term in terms.items():
            sol = diffrax.diffeqsolve(
                term, Rosenbrock(), t0=0.0, t1=10.0, dt0=None, y0=y0, args=k,
                saveat=diffrax.SaveAt(ts=jnp.linspace(0.0, 10.0, 5)),
                stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-12))
            ys[name] = np.asarray(sol.ys)
    np.testing.assert_allclose(ys["symbolic"], ys["jacfwd"], rtol=1e-12, atol=1e-15)


def test_gradient_through_the_stiff_solver_matches_finite_differences():
    """d(sum of outputs)/d(parameters) through Rodas5 by reverse mode (checkpointed
    backpropagation through the steps and the symbolic Jacobian) against central
    differences of tightly solved values, on Robertson's stiff problem (rate constants
    4e-2, 3e7 and 1e4: ten decades of stiffness, and a three-state program that compiles
    in seconds)."""
    from kinabs.backends.jax._simulate import lowered, solve_one

    system = kinabs.lower(robertson_model())
    opts = kinabs.SolverOptions(method="stiff", rtol=1e-12, atol=1e-14)
    ts = jnp.asarray([0.0, 0.4, 4.0, 40.0])
    with jax.enable_x64(True):
        fns = lowered(system)

        def loss(p):
            y0, k = fns.init(0.0, p)
            ys, _, _ = solve_one(fns, Rosenbrock(), opts, ts, jnp.float64(0.0), y0, k,
                                 max_steps=100_000, system=system)
            return jnp.sum(ys * jnp.asarray([1.0, 1e4, 1.0]))

        p0 = jnp.asarray(system.parameter_defaults)
        grad = np.asarray(jax.jit(jax.grad(loss))(p0))
        value = jax.jit(loss)
        for i, name in enumerate(system.parameters):
            h = 1e-6 * float(p0[i])
            fd = (float(value(p0.at[i].add(h))) - float(value(p0.at[i].add(-h)))) / (2 * h)
            assert grad[i] == pytest.approx(fd, rel=1e-5, abs=1e-10), name
            assert abs(grad[i]) > 1e-12, name  # every rate constant moves the outputs


@pytest.mark.parametrize("method", ["auto", "stiff"])
def test_sequential_and_vmapped_batches_agree(model, method):
    """The batching changes only the schedule: each member has its own step sizes in
    both (diffrax's vmapped while loop masks finished members), so the numbers agree to
    rounding."""
    system = kinabs.lower(model)
    rng = np.random.default_rng(0)
    sets = system.parameter_defaults[None] * 10 ** rng.uniform(-0.5, 0.5, (3, len(
        system.parameters)))
    ts = np.linspace(0.0, 10.0, 5)
    out = {}
    for batching in ("sequential", "vmap"):
        opts = kinabs.SolverOptions(method=method, batching=batching, rtol=1e-8,
                                    atol=1e-12)
        res = kinabs.simulate(model, ts, parameters=sets, solver=opts, backend="jax")
        assert res.ok
        out[batching] = (res.values, res.steps)
    np.testing.assert_allclose(out["sequential"][0], out["vmap"][0], rtol=1e-10,
                               atol=1e-14)
    np.testing.assert_array_equal(out["sequential"][1], out["vmap"][1])


def test_batching_must_be_one_of_the_choices():
    with pytest.raises(kinabs.DataError, match="SolverOptions.batching must be one of"):
        kinabs.SolverOptions(batching="parallel")
