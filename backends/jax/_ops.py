"""The operator table on jax.numpy (see ``kinabs._lowering.ops``)."""

from __future__ import annotations

import jax.numpy as jnp
import jax.scipy.special as jsp

from kinabs._lowering.ops import ArrayApiOps


class JaxOps(ArrayApiOps):
    """:class:`kinabs._lowering.ops.ArrayApiOps` on ``jax.numpy``; adds the gamma function."""

    def __init__(self) -> None:
        super().__init__(jnp)

    def const(self, value: float):
        return jnp.asarray(float(value), dtype=jnp.float64)

    def const_bool(self, value: bool):
        return jnp.asarray(bool(value))

    def gamma(self, x):
        return jsp.gamma(x)
