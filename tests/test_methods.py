"""kinabs' own optimisers through the Trainer, on every backend (the ``backend`` fixture):
Levenberg-Marquardt fits the serine data to its floor, bounds hold, converged starts
stay converged, and wrong options fail before anything is compiled."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import kinabs
from kinabs import DataError
from tests._training import mean_centred_residuals, refuse_training_programs

STARTS = "benchmarks/serine_starts.csv"


def _bench_starts(rows) -> pd.DataFrame:
    starts = pd.read_csv(STARTS).iloc[list(rows)].reset_index(drop=True)
    starts.columns = [c[3:].replace("__", ".") for c in starts.columns]
    return starts


def _trainer(model, backend, **kwargs):
    return kinabs.Trainer(model=model, data=kinabs.example_data_path(), backend=backend,
                          progress=False, **kwargs)


@pytest.fixture(scope="module")
def lm_fit(model, backend):
    """Two of the benchmark's starts fitted with the default optimiser."""
    trainer = _trainer(model, backend, n_iter=100)
    trainer.parameter_sets = _bench_starts([0, 3])
    return trainer, trainer.train()


def test_the_default_fits_the_serine_data_to_its_floor(lm_fit):
    trainer, r = lm_fit
    assert isinstance(trainer.optimizer, kinabs.LevenbergMarquardt)
    # 7.4e-12: the loss left by the data's rounding to 8 digits
    assert (r.final_loss <= 1e-9).all(), r.final_loss
    assert set(r.status) <= {"converged", "max_iterations"}
    assert (r.evaluations <= 100).all() and (r.iterations < r.evaluations).all()
    # the recorded loss is the accepted loss: it never rises
    h = r.loss_history
    steps = np.diff(h, axis=1)
    assert (steps[np.isfinite(steps)] <= 0).all()


def test_a_converged_start_stays_converged_on_resume(model, backend, lm_fit):
    trainer, r = lm_fit
    done = np.array(r.status) == "converged"
    if not done.any():
        pytest.skip("no start converged within 100 evaluations")
    again = trainer.train(resume=r)
    assert [s for s, d in zip(again.status, done) if d] == ["converged"] * int(done.sum())
    np.testing.assert_array_equal(again.parameters.to_numpy()[done],
                                  r.parameters.to_numpy()[done])
    assert (again.evaluations[done] == r.evaluations[done]).all()


def test_bounds_hold_on_every_optimiser(model, backend):
    """From 7.9 the unbounded fit moves PSP.kcatB out to 7.02 in 8 evaluations; with the
    box [7.5, 8] it ends on a bound (the upper one: the path differs once a bound holds
    the parameter), and no optimiser leaves the box."""
    lo, hi = 7.5, 8.0
    trainer = _trainer(model, backend, n_iter=8, bounds={"PSP.kcatB": (lo, hi)})
    start = _bench_starts([3])
    start["PSP.kcatB"] = 7.9
    trainer.parameter_sets = start
    r = trainer.train()
    kcat = r.parameters["PSP.kcatB"].to_numpy()
    assert min(abs(kcat[0] - lo), abs(kcat[0] - hi)) < 1e-9 * hi, kcat
    trainer.optimizer = kinabs.get_backend(backend).default_optimizer()
    trainer.n_iter = 3
    r = trainer.train()
    kcat = r.parameters["PSP.kcatB"].to_numpy()
    assert (kcat >= lo * (1 - 1e-12)).all() and (kcat <= hi * (1 + 1e-12)).all()


def test_a_residual_loss_fits_as_the_default_does(model, backend):
    trainer = _trainer(model, backend, n_iter=4, loss=kinabs.ResidualLoss(mean_centred_residuals))
    trainer.parameter_sets = _bench_starts([0])
    custom = trainer.train()
    trainer.loss = None
    default = trainer.train()
    np.testing.assert_allclose(custom.loss_history, default.loss_history, rtol=1e-6)


def test_bfgs_takes_a_scalar_custom_loss(model, backend):
    def loss(params, ts, ys, model):
        return (mean_centred_residuals(params, ts, ys, model) ** 2).sum()

    trainer = _trainer(model, backend, n_iter=6, loss=loss)
    assert isinstance(trainer.optimizer, kinabs.BFGS)  # the default for a scalar loss
    trainer.parameter_sets = _bench_starts([0])
    r = trainer.train()
    assert r.final_loss[0] < 0.5 * r.loss_history[0, 0]


# -- errors before any compilation ------------------------------------------------------
@pytest.fixture
def no_compile(monkeypatch, backend):
    refuse_training_programs(monkeypatch, backend)


def test_least_squares_with_a_scalar_loss_is_refused(model, backend, no_compile):
    def loss(params, ts, ys):
        return (ys[1:, 0] ** 2).sum()

    with pytest.raises(DataError, match=r"returns a scalar\. Use optimizer=kinabs\.BFGS\(\)"):
        _trainer(model, backend, loss=loss, optimizer=kinabs.LevenbergMarquardt())
    trainer = _trainer(model, backend, loss=loss)
    with pytest.raises(DataError, match="kinabs.ResidualLoss"):
        trainer.optimizer = kinabs.LevenbergMarquardt()


def test_bounds_the_wrong_way_round_are_refused(model, backend, no_compile):
    with pytest.raises(DataError, match=r"bounds\['PSP.kcatB'\] = \(2.0, 1.0\) is the wrong"):
        _trainer(model, backend, bounds={"PSP.kcatB": (2.0, 1.0)})


def test_a_start_outside_the_bounds_is_refused(model, backend, no_compile):
    trainer = _trainer(model, backend, bounds={"PSP.kcatB": (0.5, 2.0)})
    start = _bench_starts([0])
    start["PSP.kcatB"] = 3.0
    trainer.parameter_sets = start
    with pytest.raises(DataError, match="start 0 has PSP.kcatB outside its bounds"):
        trainer.train()
