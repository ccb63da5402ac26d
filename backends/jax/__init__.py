"""The JAX backend: jax.numpy right-hand sides, diffrax solves, optax training.

Everything here runs with 64-bit floats switched on *locally* (``jax.enable_x64(True)``
as a context manager around kinabs' own calls), so a user's float32 JAX program keeps
its global setting; arrays come back as float64 numpy arrays.
"""

from kinabs.backends.jax._backend import JaxBackend as Backend
from kinabs.backends.jax._ops import JaxOps

__all__ = ["Backend", "JaxOps"]
