"""The PyTorch backend: torch right-hand sides in an ``nn.Module``, a batched Rosenbrock
solver for stiff systems, and torchdiffeq for explicit solves.

Everything runs in float64 unless a ``VectorField`` is converted to float32; arrays come
back to ``kinabs.simulate`` as float64 numpy arrays.

The floor plan: ``_backend`` (the ``Backend`` kinabs calls) hands simulation to
``_simulate`` (which solver, which gradient) and training to ``_train``; ``_lowered``
binds a system's generated functions to torch (``_ops``); ``_module`` is the
``VectorField`` users hold; ``_solvers/`` holds torch's own solvers.

Example:
    >>> import kinabs
    >>> kinabs.get_backend("torch").name
    'torch'
"""

from kinabs.backends.torch._backend import TorchBackend
from kinabs.backends.torch._lowered import lowered
from kinabs.backends.torch._module import TorchSolution, VectorField
from kinabs.backends.torch._ops import TorchOps
from kinabs.backends.torch._simulate import solve
from kinabs.backends.torch._solvers import RODAS4, RODAS5, Rosenbrock, TorchDiffEq
from kinabs.backends.torch._train import AdaBelief, ClipUpdates, TorchTrainingProgram

Backend = TorchBackend

__all__ = [
    "AdaBelief", "Backend", "ClipUpdates", "RODAS4", "RODAS5", "Rosenbrock", "TorchBackend",
    "TorchDiffEq", "TorchOps", "TorchSolution", "TorchTrainingProgram", "VectorField",
    "lowered", "solve",
]
