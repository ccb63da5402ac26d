"""Vectorised code generation (kinabs._lowering.vectorize): groups of rate laws of one shape print
as one array expression, and must give the same numbers as one expression per rate,
including where a group uses time or a parameter that every member shares."""

import numpy as np
import pytest
import sympy

import kinabs
from kinabs import SpeciesReference as R
from kinabs._model import TIME, sym

N_SPECIES = 10  # above the grouping threshold (8), so the decays print as one group


def _switching_decays() -> kinabs.Model:
    """dS_i/dt = -k S_i f(t) with f = 1 before t = 1 and 2 after: ten rate laws of one
    template, sharing k and reading time (the case a shared column and time broke)."""
    f = sympy.Piecewise((sympy.Float(1.0), TIME < 1), (sympy.Float(2.0), True))
    species = {f"S{i}": kinabs.Species(f"S{i}", "c", initial_concentration=float(i + 1))
               for i in range(N_SPECIES)}
    reactions = {f"r{i}": kinabs.Reaction(f"r{i}", sym("k") * sym(f"S{i}") * f,
                                          (R(f"S{i}"),), ())
                 for i in range(N_SPECIES)}
    return kinabs.Model(id="switching_decays",
                        compartments={"c": kinabs.Compartment("c", 1.0)},
                        species=species, parameters={"k": kinabs.Parameter("k", 0.3)},
                        reactions=reactions)


def _exact(k: float, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concentrations (T, N) and rates (T, N) of the switching decays."""
    integral = np.where(t < 1, t, 1 + 2 * (t - 1))
    s0 = np.arange(1, N_SPECIES + 1, dtype=float)
    s = s0[None, :] * np.exp(-k * integral)[:, None]
    return s, k * s * np.where(t < 1, 1.0, 2.0)[:, None]


def test_the_decays_are_generated_as_one_group():
    system = kinabs.lower(_switching_decays())
    assert "ops.trailing(t)" in system.generated.source
    assert "ops.column(k" in system.generated.source


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_grouped_rates_with_time_and_a_shared_parameter_match_the_exact_solution(backend):
    if backend == "torch":
        pytest.importorskip("torch")
    model = _switching_decays()
    times = np.array([0.0, 0.5, 1.5, 2.0, 3.0])
    ks = [0.3, 0.7]
    outputs = [f"S{i}" for i in range(N_SPECIES)] + [f"r{i}" for i in range(N_SPECIES)]
    res = kinabs.simulate(model, times, parameters=[{"k": k} for k in ks], outputs=outputs,
                          solver=kinabs.SolverOptions(rtol=1e-10, atol=1e-12),
                          backend=backend)
    assert res.values.shape == (2, len(times), 2 * N_SPECIES)
    for b, k in enumerate(ks):
        s, v = _exact(k, times)
        np.testing.assert_allclose(res.values[b, :, :N_SPECIES], s, rtol=1e-7)
        np.testing.assert_allclose(res.values[b, :, N_SPECIES:], v, rtol=1e-7)
