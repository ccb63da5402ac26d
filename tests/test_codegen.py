"""kinabs._codegen: outputs generated for a subset of a system's outputs.

An output nobody measures must not reach the gradient: ``log(offset + scale * x)`` with
offset and scale 0 (an unused observable of Hass_PONE2017) is ``-inf``, and its zero
cotangent times the infinite derivative of ``log`` made every state's gradient NaN on
both backends while the loss was fine.
"""

from __future__ import annotations

import numpy as np
import pytest

import kinabs
from kinabs import _conformance_backends as cb
from kinabs._ops import numpy_ops


def _model():
    b = kinabs.ModelBuilder("unused_observable")
    b.species("A", initial_concentration=2.0)
    b.species("B", initial_concentration=0.0)
    b.parameter("k", 0.7)
    b.parameter("offset", 0.0)
    b.parameter("scale", 0.0)
    b.parameter("obs", None)
    b.reaction("r", "A -> B", rate="k * A")
    b.assignment_rule("obs", "log(offset + scale * B)")
    return b.build()


def test_outputs_at_equals_the_full_outputs_selected():
    system = kinabs.lower(kinabs.load_sbml(kinabs.example_model_path()))
    fns = system.generated.bind(numpy_ops())
    y0, k = fns.init(np.float64(0.0), system.parameter_defaults)
    y = np.stack([y0, y0 * 1.5])
    full = fns.outputs(np.float64(0.3), y, k)
    for idx in ([1, 0], [0], [1, 1, 0]):
        sub = fns.outputs_at(idx)
        np.testing.assert_array_equal(sub(np.float64(0.3), y, k), full[..., idx])
        assert fns.outputs_at(tuple(idx)) is sub  # generated once per subset


def test_outputs_at_generates_only_the_outputs_asked_for():
    system = kinabs.lower(_model())
    obs = system.output_index["value", "obs"]
    a = system.output_index[system.output_key("A", "concentration")]
    assert "log" in system.generated.outputs_source([obs])
    assert "log" not in system.generated.outputs_source([a])


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize("space", ["log", "linear"])
def test_unused_infinite_observable_leaves_the_gradient_finite(backend, space):
    """Fit A(t) = 2 exp(-k t) only; the exact gradient of the mean squared error in k."""
    pytest.importorskip(backend)
    model = _model()
    times = np.linspace(0.0, 2.0, 5)
    data = kinabs.TrainingData.from_arrays(times, (2.0 * np.exp(-0.5 * times))[:, None],
                                           ["A"])
    k = 0.7
    theta = np.array([[np.log2(k) if space == "log" else k]])
    loss, status, grad = cb.loss_and_gradient(
        backend, model, data, theta, space=space, parameters=["k"],
        solver=kinabs.SolverOptions(rtol=1e-10, atol=1e-12))
    assert status[0] == 0 and np.isfinite(grad).all()
    pred, obs = 2.0 * np.exp(-k * times), 2.0 * np.exp(-0.5 * times)
    scale = 1.0 if space == "linear" else np.mean(obs + 1.0)
    dloss_dk = np.mean(2 * (pred - obs) * (-times * pred)) / scale**2
    expected = dloss_dk * (k * np.log(2.0) if space == "log" else 1.0)
    np.testing.assert_allclose(grad[0, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(loss[0], np.mean((pred - obs) ** 2) / scale**2, rtol=1e-8)
