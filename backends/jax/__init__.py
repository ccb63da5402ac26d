"""The JAX backend: jax.numpy right-hand sides, diffrax solves, optax training.

Everything here runs with 64-bit floats switched on *locally* (``jax.enable_x64(True)``
as a context manager around kinabs' own calls), so a user's float32 JAX program keeps
its global setting; arrays come back as float64 numpy arrays.

Files, the same names as the torch backend's: ``_backend`` (the ``Backend`` class,
which delegates), ``_simulate`` (diffrax solves), ``_train`` (the training program),
``_ops`` (the operator table), ``_program_cache`` (traced programs kept on disk).
"""

import os

# Equinox reports runtime errors through host callbacks unless EQX_ON_ERROR="nan"; kinabs
# checks every solve's status and non-finite values itself, and host callbacks would stop
# traced training programs from being serialised to the disk cache. A user's own setting
# (or an equinox imported earlier) wins.
os.environ.setdefault("EQX_ON_ERROR", "nan")

from kinabs.backends.jax._backend import JaxBackend as Backend  # noqa: E402
from kinabs.backends.jax._ops import JaxOps  # noqa: E402

__all__ = ["Backend", "JaxOps"]
