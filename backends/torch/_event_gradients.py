"""The event engine on torch (see ``kinabs._event_gradients``): the replay of a
recorded simulation with events runs on float64 tensors with autograd; each solve
between events is the differentiable Rosenbrock solve of ``_simulate.solve``."""

from __future__ import annotations

import dataclasses
from typing import Any

import array_api_compat.torch as xp
import numpy as np
import torch

from kinabs._options import SolverOptions
from kinabs.backends.torch._events import _atoms
from kinabs.backends.torch._lowered import lowered
from kinabs.backends.torch._ops import TorchOps
from kinabs.backends.torch._simulate import solve

__all__ = ["TorchEventEngine"]


class TorchEventEngine:
    """Arrays, functions, solves and derivative passes of an event replay on torch."""

    xp = xp

    def __init__(self, system: Any, solver: SolverOptions):
        self.system = system
        self.low = lowered(system)
        self.fns = self.low.fns
        self.atoms = _atoms(system)
        _, self.values, self.delays, _ = system.events.bind(TorchOps())
        # every method is the Rosenbrock solver here, as in the torch event segments
        self.solver = dataclasses.replace(solver, method="stiff")

    def outputs(self, output_index):
        return self.fns.outputs_at(np.asarray(output_index))

    @staticmethod
    def asarray(x):
        return torch.as_tensor(np.asarray(x, dtype=np.float64))

    @staticmethod
    def stop(x):
        return x.detach()

    def solve(self, t0: float, times: np.ndarray, y0, k):
        """States (T, S) at ``times`` (all > ``t0``) from ``y0`` at ``t0``, and the
        solve's status."""
        ys, status, _ = solve(self.low, self.asarray(times), float(t0), y0[None], k[None],
                              solver=self.solver)
        return ys[0], int(status[0])

    def value_and_grad(self, fn, theta: np.ndarray):
        x = self.asarray(theta).requires_grad_(True)
        with torch.enable_grad():
            r, statuses = fn(x)
            loss = (r * r).sum()
            (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
        grad = torch.zeros_like(x) if grad is None else grad
        return float(loss.detach()), grad.numpy(), max(statuses, default=0)

    def jacobian(self, fn, theta: np.ndarray):
        """Residuals, their Jacobian and the worst solve status, by reverse mode: one
        replay, one backward pass per residual (forward mode, one replay per parameter
        on dual numbers, measured 2-6x slower on the three models of
        tests/test_event_gradients.py: 3-4 parameters, 18 residuals)."""
        x = self.asarray(theta).requires_grad_(True)
        with torch.enable_grad():
            r, statuses = fn(x)
            rows = []
            for i in range(r.shape[0]):
                if not r[i].requires_grad:
                    rows.append(torch.zeros_like(x))
                    continue
                (g,) = torch.autograd.grad(r[i], x, retain_graph=True, allow_unused=True)
                rows.append(torch.zeros_like(x) if g is None else g)
        jac = torch.stack(rows) if rows else x.new_zeros((0, x.shape[0]))
        return r.detach().numpy(), jac.numpy(), max(statuses, default=0)
