"""kinabs.ratelaws: each law against its textbook formula, and in models simulated on every
backend."""

from __future__ import annotations

import numpy as np
import pytest
import sympy
from scipy.integrate import solve_ivp
from scipy.special import lambertw

import kinabs
from kinabs import ratelaws as rl

TOL = {"formula": 1e-12, "analytic": 1e-7, "reference": 1e-6}
SOLVER = kinabs.SolverOptions(rtol=1e-10, atol=1e-12)
POINT = {"S": 2.0, "P": 0.7, "I": 0.3, "A": 1.5, "vmax": 3.0, "km": 0.4, "ki": 0.25,
         "ki_u": 0.8, "K": 1.2, "ka": 0.6, "k": 0.9, "kf": 1.3, "kr": 0.2}


def value(expr: sympy.Expr) -> float:
    return float(expr.subs({sympy.Symbol(k): v for k, v in POINT.items()}))


S, P, INH, A = (POINT[x] for x in "SPIA")
vmax, km, ki, ki_u = POINT["vmax"], POINT["km"], POINT["ki"], POINT["ki_u"]

CASES = {
    "mass_action": (rl.mass_action("k", "S", ("P", 2)), POINT["k"] * S * P**2),
    "reversible_mass_action": (rl.reversible_mass_action("kf", "kr", {"S": 2}, ["P", "I"]),
                               POINT["kf"] * S**2 - POINT["kr"] * P * INH),
    "michaelis_menten": (rl.michaelis_menten("S", vmax="vmax", km="km"), vmax * S / (km + S)),
    "hill": (rl.hill("S", vmax="vmax", k_half="K", n=2.5),
             vmax * S**2.5 / (POINT["K"] ** 2.5 + S**2.5)),
    "competitive": (rl.competitive_inhibition("S", "I", vmax="vmax", km="km", ki="ki"),
                    vmax * S / (km * (1 + INH / ki) + S)),
    "uncompetitive": (rl.uncompetitive_inhibition("S", "I", vmax="vmax", km="km", ki="ki"),
                      vmax * S / (km + S * (1 + INH / ki))),
    "noncompetitive": (rl.noncompetitive_inhibition("S", "I", vmax="vmax", km="km", ki="ki"),
                       vmax * S / ((km + S) * (1 + INH / ki))),
    "mixed": (rl.mixed_inhibition("S", "I", vmax="vmax", km="km", ki="ki", ki_u="ki_u"),
              vmax * S / (km * (1 + INH / ki) + S * (1 + INH / ki_u))),
    "activation": (rl.activation("A", ka="ka", n=2), A**2 / (POINT["ka"] ** 2 + A**2)),
    "rev_mm_keq": (rl.reversible_michaelis_menten("S", "P", vmax_f="vmax", km_s="km",
                                                  km_p="K", keq=5.0),
                   vmax / km * (S - P / 5.0) / (1 + S / km + P / POINT["K"])),
    "rev_mm_vmax_r": (rl.reversible_michaelis_menten("S", "P", vmax_f="vmax", km_s="km",
                                                     km_p="K", vmax_r="k"),
                      (vmax * S / km - POINT["k"] * P / POINT["K"])
                      / (1 + S / km + P / POINT["K"])),
}


@pytest.mark.parametrize("name", list(CASES))
def test_law_matches_textbook_formula(name):
    expr, expected = CASES[name]
    assert isinstance(expr, sympy.Expr)
    np.testing.assert_allclose(value(expr), expected, rtol=TOL["formula"])


def test_inhibition_forms_reduce_to_michaelis_menten_without_inhibitor():
    mm = value(rl.michaelis_menten("S", vmax="vmax", km="km"))
    for law in (rl.competitive_inhibition, rl.uncompetitive_inhibition,
                rl.noncompetitive_inhibition):
        np.testing.assert_allclose(value(law("S", 0, vmax="vmax", km="km", ki="ki")), mm,
                                   rtol=TOL["formula"])
    mixed = rl.mixed_inhibition("S", "I", vmax="vmax", km="km", ki="ki", ki_u="ki")
    noncomp = rl.noncompetitive_inhibition("S", "I", vmax="vmax", km="km", ki="ki")
    np.testing.assert_allclose(value(mixed), value(noncomp), rtol=TOL["formula"])


def test_haldane_form_is_zero_at_equilibrium():
    law = rl.reversible_michaelis_menten("S", "P", vmax_f=2, km_s=0.3, km_p=0.7, keq=4)
    assert float(law.subs({sympy.Symbol("S"): 0.5, sympy.Symbol("P"): 2.0})) == 0.0


def test_terms_numbers_formulas_and_sympy():
    assert rl.as_expr("km") == sympy.Symbol("km")
    assert rl.as_expr(2) == sympy.Integer(2)
    assert rl.as_expr(0.5) == sympy.Float(0.5)
    assert rl.as_expr(np.int64(3)) == sympy.Integer(3)
    assert rl.as_expr(np.float64(0.25)) == sympy.Float(0.25)
    x = sympy.Symbol("x")
    assert rl.as_expr(x**2) == x**2
    assert rl.as_expr("2*k^2 + exp(x)") == 2 * sympy.Symbol("k") ** 2 + sympy.exp(x)
    # E, I, S, N are ids in formulas, never sympy's constants or functions
    assert rl.as_expr("E + I + S + N") == sum(sympy.symbols("E I S N"))
    law = rl.michaelis_menten("S", vmax="kcat*E", km=0.1)
    np.testing.assert_allclose(float(law.subs({"S": 1, "kcat": 2, "E": 3})), 6 / 1.1)


@pytest.mark.parametrize("bad, error", [
    ("a +", kinabs.ModelError), ("exp(", kinabs.ModelError), ("nofunc(x)", kinabs.ModelError),
    (float("nan"), kinabs.ModelError), (float("inf"), kinabs.ModelError),
    (True, TypeError), (np.True_, TypeError), ([1], TypeError), (None, TypeError),
])
def test_bad_terms_raise(bad, error):
    with pytest.raises(error):
        rl.michaelis_menten(bad, vmax=1, km=1)


def test_reversible_michaelis_menten_needs_exactly_one_form():
    with pytest.raises(kinabs.ModelError, match="exactly one of keq"):
        rl.reversible_michaelis_menten("S", "P", vmax_f=1, km_s=1, km_p=1)
    with pytest.raises(kinabs.ModelError, match="exactly one of keq"):
        rl.reversible_michaelis_menten("S", "P", vmax_f=1, km_s=1, km_p=1, keq=1, vmax_r=1)


# -- simulated ------------------------------------------------------------------------------
def _one_reaction(rate, *, s0=10.0, p0=0.0, equation="S -> P", size=1.0, **params):
    b = kinabs.ModelBuilder("one")
    b.compartment("c", size=size)
    b.species("S", initial_concentration=s0)
    b.species("P", initial_concentration=p0)
    for k, v in params.items():
        b.parameter(k, v)
    b.reaction("v", equation, rate=rate)
    return b.build()


def test_michaelis_menten_matches_lambert_w_solution(backend):
    vm, k, s0 = 2.0, 1.5, 10.0
    model = _one_reaction(rl.michaelis_menten("S", vmax="vmax", km="km"), s0=s0, vmax=vm,
                          km=k, size=0.5)
    t = np.linspace(0, 8, 17)
    got = kinabs.simulate(model, t, outputs=["S", "P"], solver=SOLVER,
                          backend=backend).values[0]
    exact = k * lambertw(s0 / k * np.exp((s0 - vm * t) / k)).real
    np.testing.assert_allclose(got[:, 0], exact, rtol=TOL["analytic"], atol=1e-10)
    np.testing.assert_allclose(got[:, 0] + got[:, 1], s0, rtol=TOL["analytic"])


def test_hill_matches_solve_ivp(backend):
    vm, kh, n = 1.5, 3.0, 3.2
    model = _one_reaction(rl.hill("S", vmax="vmax", k_half="K", n="n"), vmax=vm, K=kh, n=n)
    t = np.linspace(0, 10, 21)
    got = kinabs.simulate(model, t, outputs=["S"], solver=SOLVER,
                          backend=backend).values[0, :, 0]
    ref = solve_ivp(lambda _, y: [-vm * y[0] ** n / (kh**n + y[0] ** n)], (0, 10), [10.0],
                    t_eval=t, method="LSODA", rtol=1e-12, atol=1e-12).y[0]
    np.testing.assert_allclose(got, ref, rtol=TOL["reference"])


def test_reversible_mass_action_relaxes_to_equilibrium(backend):
    kf, kr, s0 = 2.0, 0.5, 4.0
    model = _one_reaction(rl.reversible_mass_action("kf", "kr", ["S"], ["P"]), s0=s0,
                          equation="S <-> P", kf=kf, kr=kr)
    assert model.reactions["v"].reversible
    t = np.linspace(0, 3, 13)
    got = kinabs.simulate(model, t, outputs=["S"], solver=SOLVER,
                          backend=backend).values[0, :, 0]
    s_eq = s0 * kr / (kf + kr)
    np.testing.assert_allclose(got, s_eq + (s0 - s_eq) * np.exp(-(kf + kr) * t),
                               rtol=TOL["analytic"])


def test_reversible_michaelis_menten_reaches_keq(backend):
    law = rl.reversible_michaelis_menten("S", "P", vmax_f=3, km_s=0.5, km_p=2, keq=4)
    model = _one_reaction(law, s0=5.0, equation="S <-> P")
    end = kinabs.simulate(model, [60.0], outputs=["S", "P"], solver=SOLVER,
                          backend=backend).values[0, -1]
    np.testing.assert_allclose(end, [1.0, 4.0], rtol=1e-6)


def test_inhibited_rate_in_a_model_matches_formula(backend):
    law = rl.competitive_inhibition("S", "I", vmax="vmax", km="km", ki="ki")
    b = kinabs.ModelBuilder()
    b.compartment("c", size=2.0)
    b.species("S", initial_concentration=S)
    b.species("I", initial_concentration=INH, boundary=True, constant=True)
    b.species("P", initial_concentration=0.0)
    b.reaction("v", "S -> P", rate=law, parameters={"vmax": vmax, "km": km, "ki": ki})
    model = b.build()
    assert model.reactions["v"].modifiers == ("I",)
    rate = kinabs.simulate(model, [0.0], outputs=["v"], backend=backend).values[0, 0, 0]
    # SBML rate = compartment size * concentration rate
    np.testing.assert_allclose(rate, 2.0 * vmax * S / (km * (1 + INH / ki) + S), rtol=1e-12)
