"""A system's functions bound to torch: what every torch solve of it calls.

The generated functions (``kinabs._lowering.codegen``) are bound to :class:`TorchOps`
once per device and dtype, with the Jacobian a Rosenbrock step needs: printed by sympy
where kinabs can (``kinabs._lowering.jacobian``), else by forward-mode autodiff. Small
systems with a printed Jacobian also get the solver's step functions
(``_solvers.stepfns``).

Example:
    >>> import kinabs
    >>> from kinabs.backends.torch._lowered import lowered
    >>> low = lowered(kinabs.lower(kinabs.load_sbml(kinabs.example_model_path())))
    >>> low.symbolic_jacobian, low.step is not None
    (True, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kinabs._errors import UnsupportedFeatureError
from kinabs._lowering.jacobian import generate_jacobian
from kinabs.backends.torch._ops import TorchOps
from kinabs.backends.torch._solvers import step_functions

__all__ = ["Lowered", "lowered"]


@dataclass(frozen=True)
class Lowered:
    """A system's functions on one torch device and dtype: the generated ``fns``
    (init, rates, rhs, outputs, to_state), the Jacobian pair ``jac``/``dfdt``
    (symbolic when kinabs can print it, else torch.func forward mode) and, for small
    systems with a symbolic Jacobian, the solver's step functions (``_solvers.stepfns``)."""

    fns: Any
    jac: Any
    dfdt: Any
    symbolic_jacobian: bool
    #: the solver's per-stage functions with fewer operations (``_solvers.stepfns``), or None
    step: Any = None


def lowered(system, device: Any = None, dtype: torch.dtype = torch.float64) -> Lowered:
    """The system's functions bound to torch on ``device``/``dtype`` (made once each)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    key = ("torch", str(device), str(dtype))
    out = system._cache.get(key)
    if out is None:
        ops = TorchOps(device, dtype)
        fns = system.generated.bind(ops)
        try:
            bound = generate_jacobian(system).bind(ops)
            out = Lowered(fns, bound.jac, bound.dfdt, True,
                          step_functions(system, device, dtype))
        except UnsupportedFeatureError:
            out = Lowered(fns, *_autodiff_jacobian(fns.rhs), False)
        system._cache[key] = out
    return out


def _autodiff_jacobian(rhs):
    """Jacobian and time derivative of a batched rhs by forward-mode autodiff."""

    def jac(t, y, k):
        # Members are independent: d(sum_b f_b)/dy_b is member b's Jacobian.
        j = torch.func.jacfwd(lambda yy: rhs(t, yy, k).sum(0))(y)  # (S, B, S)
        return j.permute(1, 0, 2)

    def dfdt(t, y, k):
        t = torch.as_tensor(t, dtype=y.dtype, device=y.device).expand(y.shape[:1])
        return torch.func.jvp(lambda tt: rhs(tt, y, k), (t,), (torch.ones_like(t),))[1]

    return jac, dfdt
