"""Helpers of the Trainer tests (tests/test_trainer.py, written once for every backend, and
the backend-specific tests/test_jax_trainer.py and tests/test_torch_trainer.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from array_api_compat import array_namespace

import kinabs

SEED = 11
#: The cheapest training solver of each backend, for tests that are not about the
#: solver: on JAX the explicit one ("auto" compiles three programs), on torch "auto" (the
#: Rosenbrock method; backpropagating through torchdiffeq's explicit solvers costs ~10
#: times more per iteration).
QUICK = {"jax": kinabs.SolverOptions(method="nonstiff", max_steps=20_000),
         "torch": kinabs.SolverOptions(max_steps=20_000)}
#: kinabs.simulate's solver where a test recomputes a loss from simulations.
SOLVER = kinabs.SolverOptions(max_steps=20_000)


def seed_trainer(model, backend: str, n_iter: int = 30, **kwargs) -> kinabs.Trainer:
    """The tutorial on ``backend``: base parameters all ones, bounds 1/10 and 10, three
    starts (seeded), and the seed's first-order optimiser (AdaBelief) unless another is
    given: these tests check the seed's workflow, iteration by iteration."""
    kwargs.setdefault("optimizer", kinabs.get_backend(backend).default_optimizer())
    trainer = kinabs.Trainer(model=model, data=kinabs.example_data_path(), n_iter=n_iter,
                             backend=backend, progress=False, **kwargs)
    trainer.latinhypercube_sampling({p: 1.0 for p in trainer.parameters}, lower_bound=1 / 10,
                                    upper_bound=10, N=3, seed=SEED)
    return trainer


def refuse_training_programs(monkeypatch, backend: str) -> None:
    """Make building a training program on ``backend`` fail the test (for errors that must
    come before any compilation or solve)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a training program was built; the error should come first")

    monkeypatch.setattr(kinabs.get_backend(backend), "training_program", refuse)


def simulate_experiment(model, params: pd.DataFrame, experiment, backend: str) -> np.ndarray:
    """Each row of ``params`` simulated at an experiment's times from its initial values:
    (rows, times, species)."""
    sim = kinabs.simulate(model, experiment.times, parameters=params, initial=experiment.initial,
                          t0=float(experiment.times[0]), outputs=list(experiment.species),
                          solver=SOLVER, backend=backend)
    assert sim.ok
    return sim.values


def mean_centred(pred: np.ndarray, obs: np.ndarray) -> tuple[float, int]:
    """Sum of squares and count of the default log-space loss for one experiment (numpy)."""
    mask = np.isfinite(obs)
    obs0 = np.where(mask, obs, 0.0)
    scale = (mask * (obs0 + 1.0)).sum(0) / mask.sum(0)
    resid = np.where(mask, (pred - obs0) / scale, 0.0)
    return float((resid**2).sum()), int(mask.sum())


def mean_centred_residuals(params, ts, ys, model):
    """The default log-space loss's residuals written as a custom residual loss (any
    backend: the array API); their sum of squares is the default loss."""
    xp = array_namespace(ys)
    pred = model(ts, ys[0, :], kinabs.exponentiate_parameters(params))
    mask = ~xp.isnan(ys)
    obs = xp.where(mask, ys, 0.0)
    # counts in the data's dtype: torch.where of two Python numbers is float32, and its
    # square root would put a 3e-8 error into every residual
    count = xp.sum(xp.astype(mask, ys.dtype), axis=0)
    scale = xp.sum(xp.where(mask, obs + 1.0, 0.0), axis=0) / count
    return xp.where(mask, (pred - obs) / scale, 0.0) / xp.sqrt(xp.sum(count))
