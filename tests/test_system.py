"""Lowering and code generation: semantics checked with numpy against hand-derived answers."""

import numpy as np
import pytest
import sympy

import kinabs
from kinabs import Compartment, Model, Parameter, Reaction, Species
from kinabs import SpeciesReference as Ref
from kinabs._lowering.ops import numpy_ops
from kinabs._model import TIME, sym


def bound(model):
    system = kinabs.lower(model)
    return system, system.generated.bind(numpy_ops())


def decay_model(volume=2.0, hosu=False, amount=None, conc=None):
    m = Model(id="decay")
    m.compartments["c"] = Compartment("c", volume)
    m.species["A"] = Species("A", "c", initial_amount=amount, initial_concentration=conc,
                             has_only_substance_units=hosu)
    m.parameters["k"] = Parameter("k", 0.5)
    # rate in substance/time: k * amount
    amount_expr = sym("A") if hosu else sym("A") * sym("c")
    m.reactions["R"] = Reaction("R", sym("k") * amount_expr, reactants=(Ref("A"),))
    return m


@pytest.mark.parametrize("hosu", [False, True])
def test_states_parameters_and_rhs_of_a_decay(hosu):
    system, f = bound(decay_model(hosu=hosu, amount=3.0))
    assert system.states == ("A",)
    assert system.state_kinds == ("amount" if hosu else "concentration",)
    assert system.parameters == ("k", "c")
    assert system.parameter_kinds == ("parameter", "compartment")
    assert system.kinetic_parameters == ("k",)
    y0, k = f.init(np.float64(0.0), system.parameter_defaults)
    # initial amount 3 in a compartment of size 2: concentration 1.5
    np.testing.assert_allclose(y0, [3.0 if hosu else 1.5])
    np.testing.assert_allclose(f.rhs(np.float64(0.0), y0, k), -0.5 * y0)


def test_initial_value_follows_a_changed_compartment_size():
    system, f = bound(decay_model(amount=3.0))
    p = system.parameter_vector({"c": 4.0})
    y0, _ = f.init(np.float64(0.0), p)
    np.testing.assert_allclose(y0, [0.75])


def test_rules_resolve_in_dependency_order_whatever_the_listing_order():
    m = Model()
    m.compartments["c"] = Compartment("c", 1.0)
    m.parameters["a"] = Parameter("a", None, constant=False)
    m.parameters["b"] = Parameter("b", None, constant=False)
    m.parameters["base"] = Parameter("base", 2.0)
    m.parameters["x"] = Parameter("x", None)
    m.parameters["y"] = Parameter("y", None)
    # listed backwards: a depends on b, which depends on time
    m.assignment_rules["a"] = sym("b") * 3
    m.assignment_rules["b"] = TIME + sym("base")
    m.initial_assignments["x"] = sym("y") + 1
    m.initial_assignments["y"] = sym("base") ** 2
    system, f = bound(m)
    assert system.derived == ("x", "y")
    y0, k = f.init(np.float64(0.0), system.parameter_defaults)
    np.testing.assert_allclose(k[-2:], [5.0, 4.0])
    out = f.outputs(np.float64(1.5), y0, k)
    idx = system.output_index
    assert out[idx[("value", "a")]] == pytest.approx(3 * 3.5)
    assert out[idx[("value", "x")]] == pytest.approx(5.0)


def test_circular_rules_name_the_cycle():
    m = Model()
    m.parameters["a"] = Parameter("a", None, constant=False)
    m.parameters["b"] = Parameter("b", None, constant=False)
    m.assignment_rules["a"] = sym("b") + 1
    m.assignment_rules["b"] = sym("a") * 2
    with pytest.raises(kinabs.ModelError, match="circular definition"):
        kinabs.lower(m)


def test_unknown_ids_in_math_are_reported():
    m = decay_model(amount=1.0)
    m.reactions["R"] = Reaction("R", sym("k") * sym("ghost"), reactants=(Ref("A"),))
    with pytest.raises(kinabs.ModelError, match="'ghost'"):
        kinabs.lower(m)


def test_changing_compartment_integrates_amounts():
    """V(t) = 1 + t by a rate rule; S produced at 2 substance/time: n = 1 + 2t and
    [S] = n / V."""
    m = Model()
    m.compartments["V"] = Compartment("V", 1.0, constant=False)
    m.rate_rules["V"] = sympy.Integer(1)
    m.species["S"] = Species("S", "V", initial_concentration=1.0)
    m.parameters["v"] = Parameter("v", 2.0)
    m.reactions["R"] = Reaction("R", sym("v"), products=(Ref("S"),))
    system, f = bound(m)
    assert dict(zip(system.states, system.state_kinds)) == {"S": "amount", "V": "value"}
    t = np.float64(3.0)
    y = np.array([1 + 2 * t, 1 + t])  # state values at t: amount, V
    out = f.outputs(t, y, system.parameter_defaults)
    assert out[system.output_index[("concentration", "S")]] == pytest.approx(7 / 4)
    np.testing.assert_allclose(f.rhs(t, y, system.parameter_defaults), [2.0, 1.0])


def test_conversion_factor_and_non_integer_stoichiometry_scale_the_rhs():
    m = Model(conversion_factor="cf")
    m.compartments["c"] = Compartment("c", 1.0)
    m.species["A"] = Species("A", "c", initial_concentration=1.0)
    m.species["B"] = Species("B", "c", initial_concentration=0.0, conversion_factor="cfB")
    m.parameters["cf"] = Parameter("cf", 3.0)
    m.parameters["cfB"] = Parameter("cfB", 0.5)
    m.reactions["R"] = Reaction("R", sympy.Float(2.0), reactants=(Ref("A", 1.5),),
                                products=(Ref("B", 2.5),))
    system, f = bound(m)
    y0, k = f.init(np.float64(0.0), system.parameter_defaults)
    np.testing.assert_allclose(f.rhs(np.float64(0.0), y0, k), [-2 * 1.5 * 3, 2 * 2.5 * 0.5])


def test_generated_source_contains_no_model_text():
    m = Model()
    m.compartments["__import__"] = Compartment("__import__", 1.0)
    m.species["exec"] = Species("exec", "__import__", initial_concentration=1.0)
    m.parameters["os"] = Parameter("os", 1.0)
    m.reactions["system"] = Reaction("system", sym("os") * sym("exec"),
                                     reactants=(Ref("exec"),))
    system, f = bound(m)
    src = system.generated.source
    for name in ("__import__", "exec(", "os", "system"):
        assert name not in src.replace("ops.", "")
    y0, k = f.init(np.float64(0.0), system.parameter_defaults)
    np.testing.assert_allclose(f.rhs(np.float64(0.0), y0, k), [-1.0])


def test_batched_evaluation_matches_single_rows():
    system, f = bound(decay_model(amount=3.0))
    p = np.stack([system.parameter_vector({"k": v}) for v in (0.1, 0.2, 0.3)])
    y0, k = f.init(np.float64(0.0), p)
    assert y0.shape == (3, 1)
    np.testing.assert_allclose(f.rhs(np.float64(0.0), y0, k)[:, 0], -np.array([0.1, 0.2, 0.3])
                               * 1.5)


def test_piecewise_without_otherwise_is_nan():
    m = Model()
    m.parameters["x"] = Parameter("x", None, constant=False)
    m.assignment_rules["x"] = sympy.Piecewise((1.0, TIME < 1))
    system, f = bound(m)
    y0, k = f.init(np.float64(0.0), system.parameter_defaults)
    i = system.output_index[("value", "x")]
    assert f.outputs(np.float64(0.5), y0, k)[i] == 1.0
    assert np.isnan(f.outputs(np.float64(2.0), y0, k)[i])


def test_stoichiometry_matrix_is_numeric_for_a_long_chain():
    """A chain of n reactions is lowered to one (n, n+1) matrix, not per-reaction sums."""
    n = 50
    m = Model()
    m.compartments["c"] = Compartment("c", 1.0)
    for i in range(n + 1):
        m.species[f"S{i}"] = Species(f"S{i}", "c", initial_concentration=float(i == 0))
    for i in range(n):
        m.parameters[f"k{i}"] = Parameter(f"k{i}", 1.0)
        m.reactions[f"R{i}"] = Reaction(f"R{i}", sym(f"k{i}") * sym(f"S{i}") * sym("c"),
                                        reactants=(Ref(f"S{i}"),), products=(Ref(f"S{i + 1}"),))
    system, f = bound(m)
    assert system.stoichiometry.shape == (n, n + 1)
    assert system.generated.source.count("ops.matvec") == 1
    y0, k = f.init(np.float64(0.0), system.parameter_defaults)
    dy = f.rhs(np.float64(0.0), y0, k)
    assert dy[0] == -1.0 and dy[1] == 1.0 and not dy[2:].any()
