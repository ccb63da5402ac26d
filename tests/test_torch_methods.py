"""kinabs' own methods (Levenberg-Marquardt, BFGS) on torch: the Jacobians of the
residuals (forward and reverse mode) against finite differences, bounds, failure
semantics, convergence and resuming; and bounds for torch.optim optimisers.

The fast tests fit two parameters of the serine model (the others at their true values),
which Levenberg-Marquardt solves in about ten evaluations, or use custom residual losses
that solve no ODE; the convergence of all ten parameters from the benchmark's starts is
``slow``.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")

import kinabs  # noqa: E402
from kinabs._fit.loop import run_loop  # noqa: E402
from kinabs._fit.spec import FitSpec  # noqa: E402
from kinabs._optim import BFGS, LevenbergMarquardt  # noqa: E402
from kinabs._problem import CONVERGED, FAILED, CustomLoss  # noqa: E402
from kinabs.backends.torch import TorchTrainingProgram  # noqa: E402
from kinabs.backends.torch._train import check_optimizer  # noqa: E402

STARTS = Path(__file__).resolve().parents[1] / "benchmarks" / "serine_starts.csv"
#: two parameters of the serine model: Levenberg-Marquardt fits them in ~10 evaluations
TWO = ("PSP.kcatB", "PSP.KBser")


@pytest.fixture(scope="module")
def model():
    return kinabs.load_sbml(kinabs.example_model_path())


@pytest.fixture(scope="module")
def data():
    return kinabs.TrainingData.from_csv(kinabs.example_data_path())


def benchmark_starts() -> pd.DataFrame:
    """The benchmark's starts (linear values), columns renamed from the peer's local
    parameter names (``lp_PSP__kcatB``) to kinabs' (``PSP.kcatB``)."""
    starts = pd.read_csv(STARTS)
    return starts.rename(columns=lambda c: c[3:].replace("__", ".", 1))


def program(model, data, parameters, optimizer, **spec):
    return FitSpec(model=model, data=data, parameters=tuple(parameters), backend="torch",
                   optimizer=optimizer, **spec).program()


def true_values(model, names) -> np.ndarray:
    return np.array([model.parameter_values()[n] for n in names])


def bounded(prog: TorchTrainingProgram, lower, upper) -> TorchTrainingProgram:
    """The program's problem with box bounds (optimisation space), as a new program."""
    problem = dataclasses.replace(prog.problem, lower=np.asarray(lower, dtype=float),
                                  upper=np.asarray(upper, dtype=float))
    return TorchTrainingProgram(problem, prog.optimizer, 1)


def finite_difference(fn, theta: torch.Tensor, h: float = 1e-5) -> torch.Tensor:
    cols = []
    with torch.no_grad():
        for k in range(theta.shape[1]):
            e = torch.zeros_like(theta)
            e[:, k] = h
            cols.append((fn(theta + e)[0] - fn(theta - e)[0]) / (2 * h))
    return torch.stack(cols, dim=2)


def test_methods_are_torch_optimizers():
    check_optimizer(LevenbergMarquardt())
    check_optimizer(BFGS())


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_jacobian_matches_finite_differences(model, data, mode):
    """Residuals and Jacobian of the default loss at two benchmark starts (10 parameters,
    20 measured values): the residuals' sum of squares is the loss, the Jacobian agrees
    with central differences and gives the loss's gradient (2 J'r)."""
    starts = benchmark_starts()
    prog = program(model, data, starts.columns, LevenbergMarquardt(jacobian=mode))
    assert prog._forward_jacobian is (mode == "forward")
    theta = torch.tensor(np.log2(starts.to_numpy()[:2]))
    r, status, jac = prog._residuals_and_jacobian(theta)
    assert r.shape == (2, prog.problem.n_residuals) and jac.shape == (2, 20, 10)
    assert status.tolist() == [0, 0]
    loss, _, grad = prog.value_and_grad(theta.numpy())
    np.testing.assert_allclose((r * r).sum(dim=1).numpy(), loss, rtol=1e-12)
    np.testing.assert_allclose((2 * (jac * r[:, :, None]).sum(dim=1)).numpy(), grad,
                               rtol=1e-8, atol=1e-12 * np.abs(grad).max())
    fd = finite_difference(prog._default_residuals, theta)
    scale = fd.abs().amax(dim=(1, 2), keepdim=True)
    assert float(((jac - fd).abs() / scale).max()) < 1e-5


def _custom_residuals(params, ts, ys, model):
    """Residuals of the first species, scaled, from the model at ``params`` (log2)."""
    pred = model(ts, ys[0], {k: 2.0 ** v for k, v in params.items()})
    return (pred[1:, 0] - ys[1:, 0]) / 10.0


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_custom_residual_jacobian(model, data, mode):
    """A custom residual loss (one start at a time): Jacobian against finite
    differences; its loss is the sum of squares of the residuals, on every path."""
    loss = CustomLoss(_custom_residuals, residuals=True)
    prog = program(model, data, TWO, LevenbergMarquardt(jacobian=mode), loss=loss)
    theta = torch.tensor(np.log2(true_values(model, TWO) * np.array([[1.5, 0.7]])))
    r, status, jac = prog._residuals_and_jacobian(theta)
    assert status.tolist() == [0] and r.shape == (1, 9) and jac.shape == (1, 9, 2)
    fd = finite_difference(
        lambda th: (torch.stack([prog._custom_residuals_one(row)[0] for row in th]), None),
        theta)
    assert float((jac - fd).abs().max() / fd.abs().max()) < 1e-5
    value, _, _ = prog.value_and_grad(theta.numpy())
    np.testing.assert_allclose(value, (r * r).sum(dim=1).numpy(), rtol=1e-12)


def test_custom_scalar_loss_needs_residuals(model, data):
    def scalar(params, ts, ys):
        return (params["PSP.kcatB"] - 1.0) ** 2

    with pytest.raises(kinabs.DataError, match="ResidualLoss"):
        program(model, data, TWO, LevenbergMarquardt(), loss=CustomLoss(scalar))


@pytest.fixture(scope="module")
def converged(model, data):
    """Two starts of two parameters trained by Levenberg-Marquardt to convergence."""
    prog = program(model, data, TWO, LevenbergMarquardt())
    starts = true_values(model, TWO) * np.array([[2.0, 0.5], [0.6, 1.7]])
    state, out = run_loop(prog, starts, 25, space="log")
    return prog, state, out


def test_lm_converges(model, converged):
    prog, state, out = converged
    assert prog.tests_convergence
    assert out.status.tolist() == [CONVERGED, CONVERGED]
    assert np.all(out.final_loss < 1e-13)
    np.testing.assert_allclose(out.final, np.tile(true_values(model, TWO), (2, 1)), rtol=1e-3)
    # the recorded loss is the accepted point's: never rising, ending at the final loss
    for row, final in zip(out.losses, out.final_loss):
        seen = row[np.isfinite(row)]
        assert np.all(np.diff(seen) <= 0) and seen[-1] == final
    iterations, evaluations = prog.counts(state)
    assert np.all(out.evaluations == evaluations) and np.all(iterations <= evaluations)
    assert np.all(out.evaluations == np.sum(np.isfinite(out.losses), axis=1))


def test_converged_starts_stay_converged(converged):
    """Run again (twice, from the same state): nothing trains, nothing changes."""
    prog, state, out = converged
    counts = prog.counts(state)
    for _ in range(2):
        again, losses = prog.run(state, 3)
        assert np.all(np.isnan(losses))
        assert prog.status(again).tolist() == [CONVERGED, CONVERGED]
        np.testing.assert_array_equal(prog.theta(again), prog.theta(state))
        np.testing.assert_array_equal(prog.final_loss(again), out.final_loss)
        for a, b in zip(prog.counts(again), counts):
            np.testing.assert_array_equal(a, b)


def test_resume_copies_the_state(model, data):
    """A state can be run on more than once, with the same result: run copies it."""
    prog = program(model, data, TWO, LevenbergMarquardt())
    state = prog.init(np.log2(true_values(model, TWO) * np.array([[2.0, 0.5]])))
    before = {k: v.clone() for k, v in state.method.items()}
    a, la = prog.run(state, 2)
    b, lb = prog.run(state, 2)
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_array_equal(prog.theta(a), prog.theta(b))
    for k, v in before.items():
        assert torch.equal(state.method[k], v), k


def test_reset_restarts_rows(converged):
    prog, state, _ = converged
    theta = prog.theta(state)
    fresh = theta + 1.0
    reset = prog.reset(state, np.array([False, True]), fresh)
    assert prog.status(reset).tolist() == [CONVERGED, 0]
    np.testing.assert_array_equal(prog.theta(reset), np.stack([theta[0], fresh[1]]))
    assert np.isnan(prog.final_loss(reset)[1]) and prog.counts(reset)[1][1] == 0
    assert prog.status(state).tolist() == [CONVERGED, CONVERGED]  # a copy


@pytest.mark.parametrize("optimizer", [LevenbergMarquardt(), BFGS()], ids=["lm", "bfgs"])
def test_bound_excluding_the_optimum(model, data, optimizer):
    """An upper bound below the true kcatB: the fit ends on the bound, and no iterate
    leaves the box."""
    true = np.log2(true_values(model, TWO))
    upper = np.array([true[0] - 0.5, np.inf])
    prog = bounded(program(model, data, TWO, optimizer), [-np.inf, -np.inf], upper)
    state = prog.init(np.array([[true[0] - 1.5, true[1] + 0.5]]))
    for _ in range(3):
        state, _ = prog.run(state, 4)
        assert np.all(prog.theta(state) <= upper)
        assert np.all(state.method["trial"].numpy() <= upper)
    assert prog.theta(state)[0, 0] == upper[0]
    assert prog.status(state)[0] not in FAILED


def test_torch_optim_updates_are_clipped_into_the_bounds(model, data):
    true = np.log2(true_values(model, TWO))
    lower, upper = true - 0.05, true + 0.05
    adam = functools.partial(torch.optim.Adam, lr=1.0)
    prog = bounded(program(model, data, TWO, adam), lower, upper)
    assert not prog.tests_convergence and prog.counts(prog.init(true[None])) is None
    state, losses = prog.run(prog.init(np.stack([true - 0.04, true + 0.04])), 3)
    assert np.all(np.isfinite(losses))
    theta = prog.theta(state)
    assert np.all((theta >= lower) & (theta <= upper))
    assert np.any((theta == lower) | (theta == upper))  # lr 1: every step hits the box


def _quadratic_with_hole(params, ts, ys):
    """Residuals x - (3, 1) (log2 values), NaN where x0 > 2 or x1 > 5 (no solve)."""
    x0, x1 = params["PSP.kcatB"], params["PSP.KBser"]
    r = torch.stack([x0 - 3.0, x1 - 1.0])
    return torch.where((x0 > 2.0) | (x1 > 5.0), torch.full_like(r, float("nan")), r)


@pytest.mark.parametrize("optimizer", [LevenbergMarquardt(), BFGS()], ids=["lm", "bfgs"])
def test_failed_evaluations(model, data, optimizer):
    """Start 0's first evaluation fails: status 4, nothing recorded, start unchanged.
    Start 1 is fine at first; its steps towards the optimum (x0 = 3) fail beyond x0 = 2:
    each rejected, the start shortens its step and ends at the wall, never failing."""
    loss = CustomLoss(_quadratic_with_hole, residuals=True)
    prog = program(model, data, TWO, optimizer, loss=loss)
    starts = np.array([[0.0, 6.0], [0.0, 0.0]])
    state = prog.init(starts)
    state, losses = prog.run(state, 25)
    status = prog.status(state)
    assert status[0] == 4 and np.all(np.isnan(losses[0]))
    np.testing.assert_array_equal(prog.theta(state)[0], starts[0])
    assert np.isnan(prog.final_loss(state)[0])
    assert status[1] not in FAILED
    x = prog.theta(state)[1]
    assert 1.9 < x[0] <= 2.0 and 0.0 < x[1] <= 1.0 + 1e-6
    np.testing.assert_allclose(prog.final_loss(state)[1], np.sum((x - [3.0, 1.0]) ** 2))
    assert np.all(np.isfinite(losses[1][: prog.counts(state)[1][1]]))


def test_failed_solve_at_the_start(model, data):
    """A solve that fails at the first point (too few steps allowed) fails the start with
    the solver's code (1: max_steps_reached)."""
    prog = program(model, data, TWO, LevenbergMarquardt(),
                   solver=kinabs.SolverOptions(method="stiff", max_steps=2))
    state, losses = prog.run(prog.init(np.log2(true_values(model, TWO))[None]), 2)
    assert prog.status(state).tolist() == [1] and np.all(np.isnan(losses))


def test_loss_threshold_stops(model, data):
    prog = program(model, data, TWO, LevenbergMarquardt(), loss_threshold=1e-6)
    state, losses = prog.run(prog.init(np.log2(true_values(model, TWO) * [[2.0, 0.5]])), 10)
    assert prog.stopped(state).tolist() == [True]
    seen = losses[0][np.isfinite(losses[0])]
    assert seen[-1] < 1e-6 and np.all(seen[:-1] >= 1e-6)


@pytest.mark.slow
def test_lm_fits_the_benchmark_starts(model, data):
    """All ten parameters from the five benchmark starts: Levenberg-Marquardt within 100
    iterations reaches a loss of 1e-9 on at least four."""
    starts = benchmark_starts()
    prog = program(model, data, starts.columns, LevenbergMarquardt())
    _, out = run_loop(prog, starts.to_numpy()[:5], 100, space="log")
    assert np.sum(out.final_loss <= 1e-9) >= 4, out.final_loss
