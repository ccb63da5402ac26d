"""The operator table on torch (see ``kinabs._lowering.ops``).

:class:`TorchOps` is :class:`kinabs._lowering.ops.ArrayApiOps` over the ``array_api_compat.torch``
namespace, with constants made on one device and in one floating dtype (float64 unless
asked otherwise), the gamma function, and direct torch calls for the operations a
right-hand side calls most (the compat wrappers cost a Python call each, and eager
torch is dominated by per-operation overhead on small models).

Example:
    >>> import torch
    >>> from kinabs.backends.torch import TorchOps
    >>> ops = TorchOps()
    >>> ops.gamma(torch.tensor([-0.5, 5.0], dtype=torch.float64))
    tensor([-3.5449, 24.0000], dtype=torch.float64)
    >>> ops.where(torch.tensor(True), 1.0, 2.0).dtype
    torch.float64
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat.torch as xp
import torch

from kinabs._lowering.ops import ArrayApiOps

__all__ = ["TorchOps", "Columns"]


class Columns:
    """A tensor split once along its last axis, for functions that only read it through
    ``ops.get`` (the constants ``k`` of a solve): ``get`` is then a list lookup instead of
    one torch indexing operation per component and call."""

    __slots__ = ("tensor", "parts")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.parts = tensor.unbind(-1)

    @property
    def shape(self) -> torch.Size:
        return self.tensor.shape


class TorchOps(ArrayApiOps):
    """:class:`kinabs._lowering.ops.ArrayApiOps` on torch, on ``device`` and in ``dtype``."""

    def __init__(self, device: Any = None, dtype: torch.dtype = torch.float64) -> None:
        if dtype not in (torch.float64, torch.float32):
            raise TypeError(f"TorchOps needs a floating dtype (float64 or float32); got {dtype}.")
        self.xp = xp
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.nan = self.const(math.nan)
        self.inf = self.const(math.inf)

    def __repr__(self) -> str:
        return f"TorchOps(device={str(self.device)!r}, dtype={self.dtype})"

    # -- construction: always on this device, in this dtype --------------------
    def const(self, value: float) -> torch.Tensor:
        return torch.tensor(float(value), dtype=self.dtype, device=self.device)

    def const_bool(self, value: bool) -> torch.Tensor:
        return torch.tensor(bool(value), device=self.device)

    def stack(self, items: list[Any], like: Any) -> torch.Tensor:
        shape = tuple(like.shape[:-1])
        if not items:
            return torch.zeros((*shape, 0), dtype=self.dtype, device=self.device)
        arrays = [
            x if isinstance(x, torch.Tensor) and tuple(x.shape) == shape
            else (x if isinstance(x, torch.Tensor) else self.const(x)).expand(shape)
            for x in items
        ]
        return torch.stack(arrays, dim=-1)

    def get(self, a, i):
        if type(a) is Columns:
            return a.parts[i]
        return a[..., i]

    def column(self, a, i):
        if type(a) is Columns:
            return a.parts[i].unsqueeze(-1)
        return a[..., i:i + 1]

    def columns(self, a: torch.Tensor) -> Columns:
        """``a`` split for repeated ``get`` calls (see :class:`Columns`)."""
        return Columns(a)

    def concat(self, a, b):
        return torch.cat([a, b], dim=-1)

    def take(self, a, idx):
        if type(a) is Columns:
            a = a.tensor
        return a[..., idx]

    # -- hot arithmetic: direct torch calls (all operands share one float dtype) --
    def pow(self, x, y):
        return torch.pow(x, y)

    def minimum(self, x, y):
        return torch.minimum(x, y)

    def maximum(self, x, y):
        return torch.maximum(x, y)

    def gamma(self, x):
        """Gamma with scipy's conventions: poles at 0 are +-inf (by the sign of zero),
        negative integers and -inf give NaN, negative non-integers get their sign."""
        x = torch.as_tensor(x, dtype=self.dtype, device=self.device)
        magnitude = torch.exp(torch.lgamma(x))
        fl = torch.floor(x)
        odd = torch.remainder(fl, 2.0) == 1.0
        negative = (x < 0) & odd
        sign = torch.where(negative, -1.0, 1.0).to(self.dtype)
        out = sign * magnitude
        pole = (x < 0) & (fl == x)
        out = torch.where(pole | torch.isneginf(x), self.nan, out)
        return torch.where(x == 0, torch.copysign(self.inf, x), out)

    # -- logic ---------------------------------------------------------------------
    def where(self, cond, a, b):
        # torch.where with Python floats makes the default dtype (float32): wrap them first.
        if not isinstance(a, torch.Tensor):
            a = self.const(a)
        if not isinstance(b, torch.Tensor):
            b = self.const(b)
        if not isinstance(cond, torch.Tensor):
            cond = self.const_bool(cond)
        return torch.where(cond, a, b)

    def lt(self, x, y):
        return torch.lt(x, y)

    def le(self, x, y):
        return torch.le(x, y)

    def gt(self, x, y):
        return torch.gt(x, y)

    def ge(self, x, y):
        return torch.ge(x, y)

    def eq(self, x, y):
        return torch.eq(x, y)

    def ne(self, x, y):
        return torch.ne(x, y)

    def _bool(self, a):
        return a if isinstance(a, torch.Tensor) else self.const_bool(a)

    def logical_and(self, a, b):
        return torch.logical_and(self._bool(a), self._bool(b))

    def logical_or(self, a, b):
        return torch.logical_or(self._bool(a), self._bool(b))

    def logical_not(self, a):
        return torch.logical_not(self._bool(a))

    def logical_xor(self, a, b):
        return torch.logical_xor(self._bool(a), self._bool(b))

    def to_float(self, a):
        return a.to(self.dtype)
