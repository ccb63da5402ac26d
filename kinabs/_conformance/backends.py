"""What a conformance check asks of one backend: trajectories at the data's time points,
loss and gradient of a batch of parameter sets, and a short Adam training run.

Each function imports its backend lazily (through :func:`kinabs.get_backend`), so the core
stays free of jax and torch until a check runs.

Example:
    >>> import kinabs, numpy as np
    >>> from kinabs._conformance.backends import loss_and_gradient
    >>> model = kinabs.load_sbml(kinabs.example_model_path())
    >>> tr = kinabs.Trainer(model=model, data=kinabs.example_data_path(), progress=False)
    >>> theta = np.log2([[model.parameter_values()[p] for p in tr.parameters]])
    >>> loss, status, grad = loss_and_gradient("torch", model, tr.data, theta, space="log",
    ...     parameters=tr.parameters, solver=kinabs.SolverOptions(rtol=1e-10, atol=1e-12))
    >>> grad.shape == theta.shape and int(status[0]) == 0
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kinabs._backend import get_backend
from kinabs._fit.trainer import Trainer
from kinabs._simulate import simulate

__all__ = ["trajectories", "loss_and_gradient", "adam_training", "adam_optimizer",
           "method_training"]


def trajectories(backend: str, system: Any, data: Any, parameters: np.ndarray, *,
                 solver: Any) -> tuple[list[np.ndarray], np.ndarray]:
    """Per experiment of ``data``, the measured species (B, T, M) for full parameter
    vectors (B, P); and each row's worst status (0 = every solve succeeded)."""
    out, ok = [], np.ones(len(parameters), dtype=bool)
    for e in data.experiments:
        res = simulate(system, e.times, parameters=np.asarray(parameters),
                       initial=dict(e.initial) if e.initial else None,
                       outputs=list(e.species), t0=float(e.times[0]), solver=solver,
                       backend=backend, on_failure="nan")
        out.append(res.values)
        ok &= np.asarray([s == "success" for s in res.status])
    return out, np.where(ok, 0, 1)


def _trainer(backend: str, model: Any, data: Any, *, space: str, parameters: Sequence[str],
             solver: Any, optimizer: Any = None, n_iter: int = 1):
    if optimizer is None:
        # the loss and gradient as a first-order iteration takes them (reverse mode)
        optimizer = get_backend(backend).default_optimizer()
    return Trainer(model=model, data=data, n_iter=n_iter, backend=backend, optim_space=space,
                   parameters=list(parameters), solver=solver, optimizer=optimizer,
                   progress=False)


def loss_and_gradient(backend: str, model: Any, data: Any, theta: np.ndarray, *, space: str,
                      parameters: Sequence[str], solver: Any
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loss (N,), status (N,) and gradient (N, R) of the default loss of ``space`` at each
    row of ``theta`` (in that space: log2 values in ``"log"``), as one training iteration
    computes them: one batched call, no update."""
    tr = _trainer(backend, model, data, space=space, parameters=parameters, solver=solver)
    program = tr._get_program()
    loss, status, grad = program.value_and_grad(np.asarray(theta, dtype=np.float64))
    return np.asarray(loss), np.asarray(status), np.asarray(grad)


def adam_optimizer(backend: str, learning_rate: float) -> Any:
    """The same Adam on every backend (see :meth:`kinabs.Backend.adam`)."""
    return get_backend(backend).adam(learning_rate)


def adam_training(backend: str, model: Any, data: Any, starts: np.ndarray, *, space: str,
                  parameters: Sequence[str], solver: Any, learning_rate: float,
                  n_iter: int) -> tuple[np.ndarray, list[str]]:
    """Loss curves (N, n_iter) and statuses of ``n_iter`` Adam iterations from ``starts``
    (N, R), linear values."""
    import pandas as pd

    tr = _trainer(backend, model, data, space=space, parameters=parameters, solver=solver,
                  optimizer=adam_optimizer(backend, learning_rate), n_iter=n_iter)
    tr.parameter_sets = pd.DataFrame(np.asarray(starts), columns=list(parameters))
    res = tr.train()
    return np.asarray(res.loss_history, dtype=np.float64), list(res.status)


def method_training(backend: str, model: Any, data: Any, starts: np.ndarray, *, space: str,
                    parameters: Sequence[str], solver: Any, method: Any,
                    n_iter: int) -> tuple[np.ndarray, list[str]]:
    """The iterate (N, R) in the optimisation space after ``n_iter`` evaluations of
    kinabs' ``method`` (written once for every backend: the backends must agree on it
    up to their solvers' accuracy) from ``starts`` (N, R) linear values, and the
    statuses."""
    import pandas as pd

    tr = _trainer(backend, model, data, space=space, parameters=parameters, solver=solver,
                  optimizer=method, n_iter=n_iter)
    tr.parameter_sets = pd.DataFrame(np.asarray(starts), columns=list(parameters))
    res = tr.train()
    final = res.parameters[list(parameters)].to_numpy(dtype=np.float64)
    return (np.log2(final) if space == "log" else final), list(res.status)
