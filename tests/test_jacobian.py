"""The symbolic Jacobian (kinabs._lowering.jacobian) against finite differences and jax.jacfwd."""

from __future__ import annotations

import numpy as np
import pytest
import sympy

import kinabs
from kinabs._errors import UnsupportedFeatureError
from kinabs._lowering.jacobian import generate_jacobian, jacobian_entries
from kinabs._lowering.ops import numpy_ops
from kinabs._model import TIME, Rem, sym
from tests._models import robertson_model  # noqa: E402

R = kinabs.SpeciesReference


def kitchen_sink_model() -> kinabs.Model:
    """Time, a variable compartment (amount states), rate rules, min/max/abs, floor, rem
    and piecewise: every way a state or time enters the right-hand side."""
    a, b, x, v = sym("A"), sym("B"), sym("X"), sym("V")
    k1, k2, k3 = sym("k1"), sym("k2"), sym("k3")
    r3 = sympy.Piecewise((k3 * sympy.exp(-TIME), TIME < 2), (k3 * sympy.floor(x + 2) / 10, True))
    return kinabs.Model(
        id="sink",
        compartments={"c": kinabs.Compartment("c", 2.0), "V": kinabs.Compartment("V", 1.5)},
        species={"A": kinabs.Species("A", "c", initial_concentration=1.0),
                 "B": kinabs.Species("B", "V", initial_concentration=0.5)},
        parameters={"k1": kinabs.Parameter("k1", 0.7), "k2": kinabs.Parameter("k2", 1.3),
                    "k3": kinabs.Parameter("k3", 0.4),
                    "X": kinabs.Parameter("X", 0.2, constant=False)},
        reactions={
            "r1": kinabs.Reaction("r1", k1 * a * sym("c") / (1 + b ** 2), (R("A"),), (R("B"),)),
            "r2": kinabs.Reaction("r2", k2 * sympy.Max(b, 0.1) * sympy.Abs(a - 0.5)
                                  + Rem(10 * a, 3) / 100, (R("B", 1.5),), ()),
            "r3": kinabs.Reaction("r3", r3 + sympy.Min(a, x) ** 2, (), (R("A"),)),
        },
        rate_rules={"X": sympy.sin(TIME) * a - x * sympy.sqrt(v), "V": b / 100},
    )


def _point(system, rng):
    f = system.generated.bind(numpy_ops())
    y0, k = f.init(np.float64(0.0), system.parameter_defaults)
    y = y0 * rng.uniform(0.5, 1.5, y0.shape) + rng.uniform(0.05, 0.2, y0.shape)
    return f, y, k


@pytest.mark.parametrize("make", [kitchen_sink_model, robertson_model])
def test_jacobian_matches_central_differences(make):
    system = kinabs.lower(make())
    rng = np.random.default_rng(0)
    jf = generate_jacobian(system).bind(numpy_ops())
    for _ in range(5):
        f, y, k = _point(system, rng)
        t = np.float64(rng.uniform(0.0, 4.0))
        jac = jf.jac(t, y, k)
        eps = 1e-6 * np.maximum(np.abs(y), 1.0)
        fd = np.stack([(f.rhs(t, y + e, k) - f.rhs(t, y - e, k)) / (2 * e[i])
                       for i, e in enumerate(np.diag(eps))], axis=-1)
        np.testing.assert_allclose(jac, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())
        dfdt = jf.dfdt(t, y, k) if jf.dfdt is not None else np.zeros_like(y)
        fd_t = (f.rhs(t + 1e-6, y, k) - f.rhs(t - 1e-6, y, k)) / 2e-6
        np.testing.assert_allclose(dfdt, fd_t, rtol=1e-5, atol=1e-8)


def test_jacobian_matches_jax_jacfwd():
    jax = pytest.importorskip("jax")
    from kinabs.backends.jax import JaxOps

    system = kinabs.lower(kitchen_sink_model())
    _, y, k = _point(system, np.random.default_rng(1))
    ys = np.stack([y, y * 1.1])  # a batch: the Jacobian is per member
    ks = np.stack([k, k])
    with jax.enable_x64(True):
        f = system.generated.bind(JaxOps())
        t = jax.numpy.asarray(0.7)
        ref = np.stack([np.asarray(jax.jacfwd(lambda yy, kk=kk: f.rhs(t, yy, kk))(yy))
                        for yy, kk in zip(ys, ks)])
        jac = np.asarray(generate_jacobian(system).bind(JaxOps()).jac(t, ys, ks))
    np.testing.assert_allclose(jac, ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(generate_jacobian(system).bind(numpy_ops()).jac(0.7, ys, ks),
                               ref, rtol=1e-12, atol=1e-14)


def test_sparse_structure_and_cache():
    system = kinabs.lower(robertson_model())
    gen = generate_jacobian(system)
    assert generate_jacobian(system) is gen and system._cache["jacobian"] is gen
    entries, dfdt = jacobian_entries(system)
    assert set(entries) == {(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 1)}
    assert gen.nonzeros == 7 and not gen.has_time and all(d == 0 for d in dfdt)
    f, y, k = _point(system, np.random.default_rng(2))
    jac = gen.bind(numpy_ops()).jac(0.0, np.stack([y, y]), np.stack([k, k]))
    assert jac.shape == (2, 3, 3)
    assert jac[0, 2, 0] == 0.0 and jac[0, 2, 2] == 0.0


def test_unprintable_derivative_is_a_clear_error():
    model = kinabs.Model(
        compartments={"c": kinabs.Compartment("c", 1.0)},
        species={"A": kinabs.Species("A", "c", initial_concentration=2.0)},
        parameters={"k": kinabs.Parameter("k", 0.1)},
        reactions={"r": kinabs.Reaction("r", sym("k") * sympy.gamma(sym("A")), (R("A"),))},
    )
    system = kinabs.lower(model)
    with pytest.raises(UnsupportedFeatureError, match="Jacobian"):
        generate_jacobian(system)
    with pytest.raises(UnsupportedFeatureError):  # cached, raised again
        generate_jacobian(system)
    torch = pytest.importorskip("torch")
    from kinabs.backends.torch import lowered

    low = lowered(system)
    assert not low.symbolic_jacobian  # the torch backend falls back to autodiff
    y = torch.tensor([[2.5]], dtype=torch.float64)
    k = torch.tensor([[0.1, 1.0]], dtype=torch.float64)
    jac = low.jac(torch.zeros(1, dtype=torch.float64), y, k)
    from scipy.special import digamma, gamma

    np.testing.assert_allclose(jac.item(), -0.1 * gamma(2.5) * digamma(2.5), rtol=1e-12)
