"""kinabs.simulate on every backend (the ``backend`` fixture): analytic answers, batches,
initial values, outputs, failures and statuses, and bad input (one error, whatever the
backend)."""

import numpy as np
import pandas as pd
import pytest
import sympy

import kinabs
from kinabs import Compartment, Model, Parameter, Reaction, Species
from kinabs import SpeciesReference as Ref
from kinabs._model import TIME, sym
from tests._models import robertson_model
from tests._shared import SHARED

TIGHT = kinabs.SolverOptions(rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def decay():
    """A -> B with rate k*[A]*V in a compartment of size 2 (so d[A]/dt = -k[A])."""
    m = Model(id="decay")
    m.compartments["c"] = Compartment("c", 2.0)
    m.species["A"] = Species("A", "c", initial_concentration=1.0)
    m.species["B"] = Species("B", "c", initial_concentration=0.0)
    m.parameters["k"] = Parameter("k", 0.5)
    m.reactions["R"] = Reaction("R", sym("k") * sym("A") * sym("c"), reactants=(Ref("A"),),
                                products=(Ref("B"),))
    return m


def test_decay_matches_the_exponential(decay, backend):
    ts = np.linspace(0, 4, 9)
    res = kinabs.simulate(decay, ts, solver=TIGHT, backend=backend,
                          outputs=["A", "B", kinabs.amount("A"), "R", "c", "k"])
    df = res.to_frame()
    np.testing.assert_allclose(df["A [concentration]"], np.exp(-0.5 * ts), rtol=1e-8)
    np.testing.assert_allclose(df["B"], 1 - np.exp(-0.5 * ts), rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(df["A [amount]"], 2 * np.exp(-0.5 * ts), rtol=1e-8)
    np.testing.assert_allclose(df["R"], 0.5 * 2 * np.exp(-0.5 * ts), rtol=1e-8)
    np.testing.assert_allclose(df["c"], 2.0)
    assert res.ok and res.status == ("success",)
    assert df.index.name == "time"


def test_batches_of_parameters_and_initial_values(decay, backend):
    ts = np.array([0.0, 1.0, 2.0])
    res = kinabs.simulate(decay, ts, parameters=[{"k": 0.1}, {"k": 1.0}],
                          initial={"A": 3.0}, solver=TIGHT, outputs=["A"], backend=backend)
    assert res.values.shape == (2, 3, 1)
    expected = 3.0 * np.exp(-np.outer([0.1, 1.0], ts))
    np.testing.assert_allclose(res.values[..., 0], expected, rtol=1e-8)
    frame = pd.DataFrame({"k": [0.2, 0.4]})
    res2 = kinabs.simulate(decay, ts, parameters=frame, solver=TIGHT, outputs=["A"],
                           backend=backend)
    np.testing.assert_allclose(res2.values[..., 0], np.exp(-np.outer([0.2, 0.4], ts)),
                               rtol=1e-8)


def test_species_units_amount(decay, backend):
    res = kinabs.simulate(decay, [0.0, 1.0], species_units="amount", outputs=["A", "B"],
                          solver=TIGHT, backend=backend)
    np.testing.assert_allclose(res.values[0, :, 0], 2.0 * np.exp(-0.5 * res.times), rtol=1e-8)
    np.testing.assert_allclose(res.values[0].sum(axis=1), 2.0, rtol=1e-10)
    assert res.columns == ("A", "B")


def test_start_time_and_time_dependent_input(backend):
    """dX/dt = t starting at t0 = 1 with X(1) = 0: X = (t^2 - 1) / 2."""
    m = Model()
    m.parameters["X"] = Parameter("X", 0.0, constant=False)
    m.rate_rules["X"] = TIME
    ts = np.array([1.0, 2.0, 3.0])
    res = kinabs.simulate(m, ts, t0=1.0, outputs=["X"], solver=TIGHT, backend=backend)
    np.testing.assert_allclose(res.values[0, :, 0], (ts**2 - 1) / 2, rtol=1e-9, atol=1e-12)


def test_stiff_method_agrees_with_nonstiff(decay, backend):
    ts = np.linspace(0, 3, 4)
    a, b = (kinabs.simulate(decay, ts, backend=backend, solver=kinabs.SolverOptions(
        method=method, rtol=1e-9, atol=1e-12)) for method in ("stiff", "nonstiff"))
    np.testing.assert_allclose(a.values, b.values, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(a.values[0, :, 0], np.exp(-0.5 * ts), rtol=1e-7)


def test_serine_model_reproduces_its_dataset(model, backend):
    data = pd.read_csv(kinabs.example_data_path(), index_col=0)
    res = kinabs.simulate(model, data.index.to_numpy(), outputs=list(data.columns),
                          solver=TIGHT, backend=backend)
    # the CSV carries ~2e-7 generation error (see the shared data README)
    np.testing.assert_allclose(res.values[0], data.to_numpy(), atol=5e-7)


def test_max_steps_failure_is_a_status_or_an_error(decay, backend):
    tiny = kinabs.SolverOptions(method="nonstiff", max_steps=2, rtol=1e-12, atol=1e-14)
    with pytest.raises(kinabs.SimulationError, match="max_steps_reached"):
        kinabs.simulate(decay, [0.0, 10.0], solver=tiny, backend=backend)
    res = kinabs.simulate(decay, [0.0, 10.0], solver=tiny, on_failure="nan", backend=backend)
    assert res.status == ("max_steps_reached",)
    assert np.isnan(res.values).all()


def test_each_member_of_a_batch_has_its_own_status(decay, backend):
    """A fast decay (k = 1e4) is beyond 200 explicit steps; the members beside it are not
    disturbed by its failure."""
    solver = kinabs.SolverOptions(method="nonstiff", max_steps=200, rtol=1e-10, atol=1e-12)
    ks = [0.5, 1e4, 1.0]
    res = kinabs.simulate(decay, [0.0, 1.0, 10.0], parameters=[{"k": k} for k in ks],
                          solver=solver, outputs=["A"], on_failure="nan", backend=backend)
    assert res.status == ("success", "max_steps_reached", "success") and not res.ok
    assert np.isnan(res.values[1]).all()
    for i in (0, 2):
        np.testing.assert_allclose(res.values[i, :, 0], np.exp(-ks[i] * res.times), rtol=1e-7)
    with pytest.raises(kinabs.SimulationError, match=r"1 of 3 solves failed \(first: batch "
                                                      r"member 1, max_steps_reached\)"):
        kinabs.simulate(decay, [0.0, 1.0, 10.0], parameters=[{"k": k} for k in ks],
                        solver=solver, backend=backend)


def test_rows_of_initial_values(decay, backend):
    """One parameter set, two rows of initial values (a list or a DataFrame): two
    simulations."""
    ts = np.array([0.0, 1.0, 2.0])
    for initial in ([{"A": 1.0, "B": 0.0}, {"A": 4.0, "B": 1.0}],
                    pd.DataFrame({"A": [1.0, 4.0], "B": [0.0, 1.0]})):
        res = kinabs.simulate(decay, ts, initial=initial, solver=TIGHT, backend=backend)
        assert len(res) == 2 and res.columns == ("A", "B")
        a = np.array([[1.0], [4.0]]) * np.exp(-0.5 * ts)
        np.testing.assert_allclose(res.values[..., 0], a, rtol=1e-8)
        np.testing.assert_allclose(res.values[..., 1], [[1.0], [5.0]] - a, rtol=1e-8,
                                   atol=1e-12)
        frames = res.to_frames()
        assert len(frames) == 2
        np.testing.assert_array_equal(frames[1].to_numpy(), res.values[1])


def test_a_system_and_an_array_of_parameters(decay, backend):
    """The lowered system simulates like its model; parameters as an array of rows in
    ``system.parameters`` order (here k and the compartment size)."""
    system = kinabs.lower(decay)
    assert system.parameters == ("k", "c")
    ts = np.array([0.0, 0.5, 2.0])
    res = kinabs.simulate(system, ts, parameters=np.array([[0.5, 2.0], [2.0, 4.0]]),
                          outputs=["A", kinabs.amount("A")], solver=TIGHT, backend=backend)
    assert res.columns == ("A [concentration]", "A [amount]")
    # d[A]/dt = -k c [A] / c: the size scales the amount, not the concentration
    np.testing.assert_allclose(res.values[:, :, 0], np.exp(-np.outer([0.5, 2.0], ts)),
                               rtol=1e-8)
    np.testing.assert_allclose(res.values[:, :, 1], [[2.0], [4.0]] * res.values[:, :, 0],
                               rtol=1e-12)
    model_res = kinabs.simulate(decay, ts, parameters=pd.DataFrame({"k": [0.5, 2.0],
                                                                    "c": [2.0, 4.0]}),
                                outputs=["A", kinabs.amount("A")], solver=TIGHT,
                                backend=backend)
    np.testing.assert_allclose(model_res.values, res.values, rtol=1e-12)


def test_auto_redoes_hard_solves_with_the_implicit_method(backend):
    """Robertson's stiff kinetics: the explicit method runs out of steps; auto recovers."""
    m = robertson_model()
    opts = kinabs.SolverOptions(rtol=1e-8, atol=1e-12, max_steps=20_000)
    res = kinabs.simulate(m, [0.0, 40.0], solver=opts, backend=backend)
    np.testing.assert_allclose(res.values[0, -1], [0.7158271, 9.185535e-6, 0.2841637],
                               rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(times=[0.0, 2.0, 1.0]), "sorted"),
        (dict(times=[]), "non-empty"),
        (dict(times=[0.0, np.nan]), "finite"),
        (dict(times=[-1.0, 1.0]), "t0"),
        (dict(times=[0.0, 1.0], outputs=["nope"]), "unknown output"),
        (dict(times=[0.0, 1.0], parameters={"nope": 1.0}), "unknown parameter"),
        (dict(times=[0.0, 1.0], parameters={"k": np.nan}), "finite"),
        (dict(times=[0.0, 1.0], parameters=np.ones(7)), "shape"),
        (dict(times=[0.0, 1.0], initial={"Z": 1.0}), "not a species"),
        (dict(times=[0.0, 1.0], parameters=[{"k": 1.0}] * 2, initial=[{"A": 1.0}] * 3),
         "same number of rows"),
        (dict(times=[0.0, 1.0], initial={"A": np.inf}), "finite"),
        (dict(times=[0.0, 1.0], parameters=[]), "empty list"),
        (dict(times=[0.0, 1.0], species_units="moles"), "species_units"),
        (dict(times=[0.0, 1.0], on_failure="ignore"), "on_failure"),
        (dict(times=[0.0, 1.0], solver="stiff"), "solver must be a kinabs.SolverOptions"),
        (dict(times=[0.0, 1.0], initial=[{"A": 1.0}, {"A": 4.0, "B": 1.0}]),
         r"initial row 0 gives no value for \['B'\]"),
    ],
)
def test_bad_input_gets_one_clear_error(decay, backend, kwargs, match):
    kwargs = dict(kwargs)
    times = kwargs.pop("times")
    with pytest.raises((kinabs.DataError, kinabs.ModelError), match=match):
        kinabs.simulate(decay, times, backend=backend, **kwargs)


def test_bad_options_are_rejected():
    with pytest.raises(kinabs.DataError, match="method"):
        kinabs.SolverOptions(method="rk4")
    with pytest.raises(kinabs.DataError, match="rtol"):
        kinabs.SolverOptions(rtol=-1.0)
    with pytest.raises(kinabs.DataError, match="max_steps"):
        kinabs.SolverOptions(max_steps=0)
    with pytest.raises(kinabs.DataError, match="dt0"):
        kinabs.SolverOptions(dt0=0.0)
    with pytest.raises(kinabs.DataError, match="AdjointOptions.method"):
        kinabs.AdjointOptions(method="magic")


def test_float32_jax_programs_are_left_alone(decay):
    """Simulating switches JAX to float64 for its own programs only."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    if jax.config.jax_enable_x64:
        pytest.skip("x64 switched on globally by another test")
    kinabs.simulate(decay, [0.0, 1.0], backend="jax")
    assert jnp.ones(2).dtype == jnp.float32


def test_piecewise_in_a_rate_switches_on_time(backend):
    """Production at rate 1 until t = 2, then 0: S(t) = min(t, 2)."""
    m = Model()
    m.compartments["c"] = Compartment("c", 1.0)
    m.species["S"] = Species("S", "c", initial_concentration=0.0)
    m.reactions["R"] = Reaction("R", sympy.Piecewise((1.0, TIME < 2), (0.0, True)),
                                products=(Ref("S"),))
    res = kinabs.simulate(m, [1.0, 2.0, 3.0], solver=TIGHT, backend=backend)
    np.testing.assert_allclose(res.values[0, :, 0], [1.0, 2.0, 2.0], rtol=1e-6)


@pytest.mark.slow
def test_auto_finishes_what_the_implicit_solver_cannot_on_jax():
    """Bachmann_MSB2011 at rtol 1e-12: Tsit5 needs ~28,000 steps (over the cap of "auto"),
    Kvaerno5's chord iterations never converge (max steps), so "auto" goes on with Tsit5
    uncapped; it must succeed and agree with torch's Rodas5."""
    pytest.importorskip("torch")
    from tests._shared import SHARED

    path = SHARED / "data/jaxkineticmodel/models/Bachmann_MSB2011.xml"
    if not path.is_file():
        pytest.skip("shared models not found")
    model = kinabs.load_sbml(path)
    ts = np.linspace(0.0, 10.0, 11)
    solver = kinabs.SolverOptions(rtol=1e-12, atol=1e-14)
    jax_res = kinabs.simulate(model, ts, solver=solver, backend="jax")
    torch_res = kinabs.simulate(model, ts, solver=kinabs.SolverOptions(
        method="stiff", rtol=1e-12, atol=1e-14), backend="torch")
    assert jax_res.status == torch_res.status == ("success",)
    np.testing.assert_allclose(jax_res.values, torch_res.values, rtol=1e-8, atol=1e-12)


def test_a_solve_that_cannot_start_names_the_element(backend):
    """A rate that is infinite at t0 fails every solver; the error names the reaction
    instead of advising more steps."""
    b = kinabs.ModelBuilder("pole")
    b.compartment("c", size=1.0)
    b.species("A", initial_concentration=1.0)
    b.parameter("k", 1.0)
    b.reaction("R", "A ->", rate="k / (A - 1)")
    model = b.build()
    with pytest.raises(kinabs.SimulationError,
                       match=r"rate of reaction 'R' \(inf\) is not finite") as err:
        kinabs.simulate(model, [0.0, 1.0], backend=backend,
                        solver=kinabs.SolverOptions(max_steps=200))
    assert "a larger max_steps" not in str(err.value)
    # the same model from another start solves (the diagnosis looks at the failing member)
    ok = kinabs.simulate(model, [0.0, 0.1], initial={"A": 3.0}, backend=backend)
    np.testing.assert_allclose(ok.values[0, -1, 0], 1 + np.sqrt(4 - 0.2), rtol=1e-6)


def test_a_nan_initial_value_in_a_python_model_is_named(backend):
    m = Model(id="nan_start")
    m.compartments["c"] = Compartment("c", 1.0)
    m.species["A"] = Species("A", "c", initial_concentration=float("nan"))
    m.parameters["k"] = Parameter("k", 0.5)
    m.reactions["R"] = Reaction("R", sym("k") * sym("A"), reactants=(Ref("A"),))
    with pytest.raises(kinabs.SimulationError, match=r"initial value of 'A' \(nan\)"):
        kinabs.simulate(m, [0.0, 1.0], backend=backend,
                        solver=kinabs.SolverOptions(max_steps=200))


def test_a_start_that_is_not_finite_is_not_integrated_on_jax():
    """Checked inside the compiled solve: a member whose derivative at t0 is infinite is
    reported ``nonfinite`` after a handful of steps, not after max_steps rejected ones,
    and its batch neighbour solves as usual."""
    b = kinabs.ModelBuilder("pole")
    b.compartment("c", size=1.0)
    b.species("A", initial_concentration=1.0)
    b.parameter("k", 1.0)
    b.reaction("R", "A ->", rate="k / (A - 1)")
    res = kinabs.simulate(b.build(), [0.0, 0.1], initial=[{"A": 1.0}, {"A": 3.0}],
                          backend="jax", on_failure="nan")
    assert res.status == ("nonfinite", "success")
    assert 0 <= res.steps[0] < 10
    np.testing.assert_allclose(res.values[1, -1, 0], 1 + np.sqrt(4 - 0.2), rtol=1e-6)


GIORDANO = (SHARED / "petab" / "benchmark-models" / "Giordano_Nature2020"
            / "model_Giordano_Nature2020.xml")


@pytest.fixture(scope="module")
def giordano():
    if not GIORDANO.is_file():
        pytest.skip(f"no {GIORDANO}")
    model = kinabs.load_sbml(GIORDANO)
    times = np.linspace(0.0, 45.0, 10)
    # converged: Tsit5 at rtol 1e-12, atol 1e-16 (Kvaerno5 there agrees to 3e-9)
    ref = kinabs.simulate(model, times, backend="jax", solver=kinabs.SolverOptions(
        method="nonstiff", rtol=1e-12, atol=1e-16))
    return model, times, ref.values[0]


def test_the_default_tolerances_are_right_for_small_states(giordano, backend):
    """An epidemic model whose infected fractions start near 1e-7 and grow: the default
    absolute tolerance must be far below them. With atol 1e-10 (the default before)
    'Ailing' was 1.2e-3 (JAX) and 3.5e-4 (torch) of its largest value off the converged
    solution; with 1e-12 (libRoadRunner's default) 4e-6 and 3e-5."""
    model, times, ref = giordano
    res = kinabs.simulate(model, times, backend=backend)
    scale = np.abs(ref).max(axis=0)
    error = np.max(np.abs(res.values[0] - ref) / np.where(scale > 0, scale, 1.0))
    assert error < 1e-4
