"""SBML events (``kinabs._events``, ``kinabs._lowering.events``, each backend's
``event_segment``): analytic solutions on each backend, the two backends against each
other, SBML Test Suite cases, and the errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import sympy

import kinabs
from kinabs import TIME, Event

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from conformance._suite_data import default_suite_dir, read_index  # noqa: E402
from conformance.sbml_test_suite import run_case  # noqa: E402

LN2 = float(np.log(2.0))


def _decay(k: float = 1.0) -> kinabs.Model:
    b = kinabs.ModelBuilder("decay")
    b.species("A", initial_concentration=1.0)
    b.parameter("k", k)
    b.reaction("r", "A ->", rate="k*A")
    return b.build()


def _with(model, *events) -> kinabs.Model:
    for e in events:
        model.events[e.id] = e
    return model


A, K = sympy.Symbol("A"), sympy.Symbol("k")


def test_dose_at_a_time(backend):
    model = _with(_decay(), Event("dose", trigger=TIME >= 2, assignments=(("A", sympy.Integer(1)),)))
    times = np.array([0.0, 1.0, 2.0, 2.5, 4.0])
    r = kinabs.simulate(model, times, backend=backend)
    expected = np.where(times < 2, np.exp(-times), np.exp(-(times - 2)))
    np.testing.assert_allclose(r.values[0, :, 0], expected, rtol=1e-6)


def test_state_trigger_is_root_found(backend):
    # A = exp(-t) falls to 1/2 at t = ln 2, and is reset to 1 each time: a sawtooth of
    # period ln 2; a crossing found only at step ends would drift by a step per period
    model = _with(_decay(), Event("reset", trigger=A < 0.5,
                                  assignments=(("A", sympy.Integer(1)),)))
    times = np.linspace(0.0, 5.0, 23)
    r = kinabs.simulate(model, times, backend=backend)
    expected = np.exp(-np.mod(times, LN2))
    assert np.abs(np.mod(times[1:] / LN2 + 0.5, 1.0) - 0.5).min() > 0.005  # none at a reset
    np.testing.assert_allclose(r.values[0, :, 0], expected, rtol=1e-6)


def test_delay_and_values_from_trigger_time(backend):
    # fires at t = 1, executes at t = 2 with A's value at t = 1 (exp(-1)), or at t = 2
    # (exp(-2)) when the values are taken at execution: then A is unchanged
    for from_trigger, at2 in ((True, np.exp(-1.0)), (False, np.exp(-2.0))):
        model = _with(_decay(), Event("late", trigger=TIME >= 1, delay=sympy.Integer(1),
                                      assignments=(("A", A),),
                                      use_values_from_trigger_time=from_trigger))
        r = kinabs.simulate(model, [1.5, 2.0, 3.0], backend=backend)
        np.testing.assert_allclose(r.values[0, :, 0],
                                   [np.exp(-1.5), at2, at2 * np.exp(-1.0)], rtol=1e-6)


def test_non_persistent_event_is_cancelled(backend):
    # the trigger A < 0.5 holds from t = ln 2; "undo" resets A to 1 at t = 1, which makes
    # it false before the delay of 1 has passed: the non-persistent event never executes
    events = (Event("late", trigger=A < 0.5, delay=sympy.Integer(1), persistent=False,
                    assignments=(("A", sympy.Integer(5)),)),
              Event("undo", trigger=TIME >= 1, assignments=(("A", sympy.Integer(1)),)))
    r = kinabs.simulate(_with(_decay(), *events), [1.5, 1.8], backend=backend)
    np.testing.assert_allclose(r.values[0, :, 0], np.exp(-np.array([0.5, 0.8])), rtol=1e-6)
    persistent = (Event("late", trigger=A < 0.5, delay=sympy.Integer(1),
                        assignments=(("A", sympy.Integer(5)),)), events[1])
    r = kinabs.simulate(_with(_decay(), *persistent), [1.5, 1.8], backend=backend)
    np.testing.assert_allclose(r.values[0, :, 0], [np.exp(-0.5), 5 * np.exp(-(1.8 - 1 - LN2))],
                               rtol=1e-6)


def test_priority_orders_simultaneous_events(backend):
    # both fire at t = 1; "set" (priority 2) first, then "double" sees its value
    for p_set, expected in ((2, 20.0), (0, 10.0)):
        events = (Event("set", trigger=TIME >= 1, priority=sympy.Integer(p_set),
                        assignments=(("A", sympy.Integer(10)),)),
                  Event("double", trigger=TIME >= 1, priority=sympy.Integer(1),
                        use_values_from_trigger_time=False, assignments=(("A", 2 * A),)))
        r = kinabs.simulate(_with(_decay(), *events), [1.0], backend=backend)
        assert r.values[0, 0, 0] == pytest.approx(expected, rel=1e-9)


def test_trigger_true_at_start_fires_unless_initial_value_true(backend):
    for initial, expected in ((False, 3.0), (True, 1.0)):
        model = _with(_decay(), Event("start", trigger=TIME >= 0, initial_value=initial,
                                      assignments=(("A", sympy.Integer(3)),)))
        r = kinabs.simulate(model, [0.0, 1.0], backend=backend)
        np.testing.assert_allclose(r.values[0, :, 0], expected * np.exp(-np.array([0, 1.0])),
                                   rtol=1e-6)


def test_event_on_a_parameter_and_a_batch(backend):
    # k doubles at t = 1; members with k = 1 and k = 0.5 each follow their own solution
    model = _with(_decay(), Event("faster", trigger=TIME >= 1, assignments=(("k", 2 * K),)))
    system = kinabs.lower(model)
    assert "k" in system.states  # what an event assigns is a state
    r = kinabs.simulate(model, [1.0, 2.0], backend=backend,
                        initial=[{"A": 1.0}, {"A": 2.0}])
    np.testing.assert_allclose(r.values[:, :, 0],
                               [[np.exp(-1), np.exp(-3)], [2 * np.exp(-1), 2 * np.exp(-3)]],
                               rtol=1e-6)


def test_backends_agree_on_a_sawtooth(backend, other_backend):
    model = _with(_decay(0.7), Event("reset", trigger=A < 0.3, delay=sympy.Float(0.1),
                                     assignments=(("A", A + 1),),
                                     use_values_from_trigger_time=False))
    times = np.linspace(0, 10, 41)
    a = kinabs.simulate(model, times, backend=backend).values
    b = kinabs.simulate(model, times, backend=other_backend).values
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_endless_cascade_is_an_error_naming_the_events(backend):
    b = kinabs.ModelBuilder("flip")
    b.parameter("x", 0.0, constant=False)
    model = b.build()
    x = sympy.Symbol("x")
    _with(model, Event("up", trigger=x < 0.5, initial_value=False,
                       assignments=(("x", sympy.Integer(1)),)),
          Event("down", trigger=x > 0.5, assignments=(("x", sympy.Integer(0)),)))
    with pytest.raises(kinabs.SimulationError, match="events \\['down', 'up'\\].*cascade"):
        kinabs.simulate(model, [0.0, 1.0], backend=backend)


def test_negative_delay_is_an_error_naming_the_event():
    model = _with(_decay(), Event("bad", trigger=TIME >= 1, delay=sympy.Integer(-1),
                                  assignments=(("A", sympy.Integer(1)),)))
    with pytest.raises(kinabs.SimulationError, match="event 'bad'.*delay -1"):
        kinabs.simulate(model, [0.0, 2.0], backend="torch")


def test_training_a_model_with_events_refuses_what_it_does_not_support_naming_the_event():
    # kinabs' own methods with the default loss train models with events (see
    # tests/test_event_gradients.py); other optimisers and custom losses are refused
    model = _with(_decay(), Event("dose", trigger=TIME >= 2,
                                  assignments=(("A", sympy.Integer(1)),)))
    import pandas as pd

    data = pd.DataFrame({"A": [1.0, 0.4]}, index=pd.Index([0.0, 1.0], name="time"))
    kinabs.Trainer(model, data, backend="torch", progress=False)  # accepted
    optimizer = kinabs.get_backend("torch").adam(1e-3)
    with pytest.raises(kinabs.UnsupportedFeatureError, match="'dose'.*partial.*BFGS"):
        kinabs.Trainer(model, data, backend="torch", optimizer=optimizer)

    def loss(params, ts, ys):
        return ys.sum()

    with pytest.raises(kinabs.UnsupportedFeatureError, match="'dose'.*custom loss"):
        kinabs.Trainer(model, data, backend="torch", loss=loss)


_EVENT_SBML = """<?xml version="1.0" encoding="UTF-8"?>
<sbml xmlns="http://www.sbml.org/sbml/level3/version2/core" level="3" version="2">
  <model id="m">
    <listOfCompartments><compartment id="c" size="1" constant="true"/></listOfCompartments>
    <listOfParameters><parameter id="p" value="1" constant="false"/></listOfParameters>
    <listOfEvents>
      <event id="e1" useValuesFromTriggerTime="true">
        <trigger initialValue="true" persistent="true">
          <math xmlns="http://www.w3.org/1998/Math/MathML">
            <apply><geq/><csymbol definitionURL="http://www.sbml.org/sbml/symbols/time"/>
            <cn>1</cn></apply></math></trigger>
        <listOfEventAssignments>
          <eventAssignment variable="TARGET"><math xmlns="http://www.w3.org/1998/Math/MathML">
            <cn>2</cn></math></eventAssignment>
        </listOfEventAssignments>
      </event>
    </listOfEvents>
  </model>
</sbml>"""


def test_sbml_events_read_and_bad_targets_are_named():
    model = kinabs.read_sbml_string(_EVENT_SBML.replace("TARGET", "p"))
    (event,) = model.events.values()
    assert event.id == "e1" and event.assignments[0][0] == "p" and event.initial_value
    r = kinabs.simulate(model, [0.5, 1.5], outputs=["p"], backend="torch")
    assert r.values[0, :, 0].tolist() == [1.0, 2.0]
    with pytest.raises(kinabs.SBMLError, match="'e1'.*'nope'"):
        kinabs.read_sbml_string(_EVENT_SBML.replace("TARGET", "nope"))
    with pytest.raises(kinabs.SBMLError, match="Error 21212.*'c'"):
        kinabs.read_sbml_string(_EVENT_SBML.replace("TARGET", "c"))


#: SBML Test Suite cases with events: priorities, delays, persistence, firing at the
#: start, values from trigger or execution time. On torch all of them; on JAX (a compile
#: of 10-30 s each) the first three.
SUITE_CASES = ("00026", "00354", "00770", "00071", "00348", "00349", "00402", "00406",
               "00930", "01094")


@pytest.mark.skipif(not (default_suite_dir() / "cases-index.tsv").exists(),
                    reason="no SBML Test Suite")
@pytest.mark.parametrize("case", SUITE_CASES)
def test_sbml_test_suite_event_cases(case, backend):
    if backend == "jax" and case not in SUITE_CASES[:3]:
        pytest.skip("on torch only in the default run (JAX compiles each case)")
    info = read_index(default_suite_dir())[case]
    result = run_case(info, backend=backend)
    assert result.outcome == "pass", (case, result.detail)


def test_events_round_trip_through_sbml(backend):
    # write, read again: the same events, the same simulation
    events = (Event("late", trigger=sympy.And(A < 0.5, TIME > 0.1), delay=sympy.Float(0.25),
                    priority=sympy.Integer(2), persistent=False, initial_value=False,
                    use_values_from_trigger_time=False, assignments=(("A", A + 1),)),
              Event("faster", trigger=TIME >= 1, assignments=(("k", 2 * K),)))
    model = _with(_decay(), *events)
    again = kinabs.read_sbml_string(kinabs.sbml_string(model))
    assert list(again.events) == ["late", "faster"]
    late = again.events["late"]
    assert (late.persistent, late.initial_value, late.use_values_from_trigger_time) == (
        False, False, False)
    times = np.linspace(0, 4, 9)
    a = kinabs.simulate(model, times, backend=backend).values
    b = kinabs.simulate(again, times, backend=backend).values
    np.testing.assert_allclose(a, b, rtol=1e-12)
    assert a[0, -1, 0] > np.exp(-4.0) * 2  # the events did fire
