"""An ODE system as a torch module: ``VectorField``, and what its solve returns.

Example:
    >>> import numpy as np, torch, kinabs
    >>> from kinabs.backends.torch import VectorField
    >>> c = kinabs.Compartment("c")
    >>> a = kinabs.Species("A", "c", initial_concentration=2.0)
    >>> k = kinabs.Parameter("k", 0.5)
    >>> r = kinabs.Reaction("decay", kinabs._model.sym("k") * kinabs._model.sym("A"),
    ...                     reactants=(kinabs.SpeciesReference("A"),))
    >>> model = kinabs.Model(compartments={"c": c}, species={"A": a},
    ...                      parameters={"k": k}, reactions={"decay": r})
    >>> field = VectorField(model)
    >>> sol = field.solve(torch.tensor([0.0, 2.0], dtype=torch.float64))
    >>> round(sol.ys[0, 1, 0].item(), 6)  # 2 * exp(-1)
    0.735759
    >>> sol.ys.sum().backward(); field.theta.grad.shape
    torch.Size([1])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kinabs._lowering.events import refuse_events
from kinabs._lowering.system import as_system
from kinabs.backends.torch._lowered import Lowered, lowered
from kinabs.backends.torch._simulate import solve

__all__ = ["VectorField", "TorchSolution"]


@dataclass(frozen=True)
class TorchSolution:
    """``ys``: (B, T, S) states (differentiable; NaN where a solve failed); ``status``
    and ``steps``: (B,) numpy arrays (codes of ``kinabs._backend.STATUS``)."""

    ys: torch.Tensor
    status: np.ndarray
    steps: np.ndarray


class VectorField(torch.nn.Module):
    """An ODE system as a torch module: ``forward(t, y) -> dy/dt``.

    Args:
        system: a :class:`kinabs.Model` or :class:`kinabs.OdeSystem`.
        parameters: free-parameter values, shape (P,) or (B, P) in ``system.parameters``
            order (default: the model's values). A leading batch gives B vector fields.
        trainable: ids of the parameters that become ``nn.Parameter`` (default: the
            kinetic parameters); the others are buffers.
        log_space: store the trainable parameters as natural logarithms (they must then
            be positive).
        t0: the start time at which ``init`` evaluates initial values.

    ``theta`` holds the trainable values (log-values with ``log_space``), ``fixed`` the
    others. ``.to(device)`` and ``.double()`` work; only float64 and float32 are allowed.
    """

    def __init__(self, system, parameters: Any = None, *, trainable: Any = None,
                 log_space: bool = False, t0: float = 0.0, dtype: torch.dtype = torch.float64,
                 device: Any = None) -> None:
        super().__init__()
        self.system = as_system(system)
        refuse_events(self.system, "the torch VectorField module")
        sysm = self.system
        values = np.asarray(sysm.parameter_defaults if parameters is None else parameters,
                            dtype=np.float64)
        if values.shape[-1:] != (len(sysm.parameters),):
            raise ValueError(f"parameters must have shape (P,) or (B, P) with P = "
                             f"{len(sysm.parameters)}; got {values.shape}.")
        names = sysm.kinetic_parameters if trainable is None else tuple(trainable)
        unknown = [n for n in names if n not in sysm.parameter_index]
        if unknown:
            raise ValueError(f"unknown trainable parameter(s) {unknown}; free parameters "
                             f"are {list(sysm.parameters)[:20]}")
        train_idx = [sysm.parameter_index[n] for n in names]
        fixed_idx = [i for i in range(len(sysm.parameters)) if i not in set(train_idx)]
        theta = values[..., train_idx]
        if log_space:
            if np.any(theta <= 0):
                raise ValueError("log_space=True needs positive values of the trainable "
                                 "parameters; pass trainable= to leave the others out.")
            theta = np.log(theta)
        self.trainable = names
        self.log_space = bool(log_space)
        self.t0 = float(t0)
        self.theta = torch.nn.Parameter(torch.as_tensor(theta, dtype=dtype, device=device))
        self.register_buffer("fixed", torch.as_tensor(values[..., fixed_idx], dtype=dtype,
                                                      device=device))
        self.register_buffer("order", torch.as_tensor(np.argsort(train_idx + fixed_idx),
                                                      device=device))

    # -- properties ---------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.theta.device

    @property
    def dtype(self) -> torch.dtype:
        return self.theta.dtype

    @property
    def lowered(self) -> Lowered:
        """The functions bound to this module's current device and dtype."""
        if self.dtype not in (torch.float64, torch.float32):
            raise TypeError(f"VectorField supports float64 and float32; it is {self.dtype}.")
        return lowered(self.system, self.device, self.dtype)

    def parameters_vector(self) -> torch.Tensor:
        """Every free parameter, (..., P) in ``system.parameters`` order."""
        theta = torch.exp(self.theta) if self.log_space else self.theta
        return torch.cat([theta, self.fixed], dim=-1)[..., self.order]

    def initial(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y0, k)`` at ``t0``: initial states and the constants vector."""
        t0 = torch.tensor(self.t0, dtype=self.dtype, device=self.device)
        return self.lowered.fns.init(t0, self.parameters_vector())

    # -- evaluation ---------------------------------------------------------------
    def _check(self, name: str, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch tensor; got {type(x).__name__}.")
        if x.dtype != self.dtype or x.device != self.device:
            raise TypeError(
                f"{name} is {x.dtype} on {x.device} but the VectorField is {self.dtype} on "
                f"{self.device}; convert it with {name}.to(field.device, field.dtype)."
            )

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """dy/dt at ``(t, y)``; ``y`` is (..., S) and broadcasts against the batch of
        parameter sets. The constants are recomputed from the parameters on every call;
        :meth:`solve` computes them once per solve."""
        self._check("y", y)
        _, k = self.initial()
        return self.lowered.fns.rhs(t, y, k)

    def solve(self, times: Any, *, y0: torch.Tensor | None = None, solver: Any = None,
              adjoint: Any = None) -> TorchSolution:
        """Solve from ``t0`` and save the states at ``times`` (see
        :func:`kinabs.backends.torch.solve`)."""
        times = torch.as_tensor(times, dtype=self.dtype, device=self.device)
        y_init, k = self.initial()
        if y0 is not None:
            self._check("y0", y0)
            y_init = y0
        batch = torch.broadcast_shapes(y_init.shape[:-1], k.shape[:-1])
        flat_y = y_init.expand(*batch, y_init.shape[-1]).reshape(-1, y_init.shape[-1])
        flat_k = k.expand(*batch, k.shape[-1]).reshape(-1, k.shape[-1])
        ys, status, steps = solve(self.lowered, times, self.t0, flat_y, flat_k,
                                  solver=solver, adjoint=adjoint)
        return TorchSolution(ys=ys, status=status, steps=steps)

    def extra_repr(self) -> str:
        return (f"states={len(self.system.states)}, trainable={len(self.trainable)}, "
                f"batch={tuple(self.theta.shape[:-1])}, log_space={self.log_space}")
