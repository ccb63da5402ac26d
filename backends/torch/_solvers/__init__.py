"""torch's own ODE solvers, and what they need to be fast and differentiable.

* ``tableaus``: the Rosenbrock methods' coefficients (RODAS4, RODAS5);
* ``rosenbrock``: the batched Rosenbrock solver (stiff), each member its own step size;
* ``explicit``: torchdiffeq's Runge-Kutta methods, one step size for the batch, or
  without gradients ``dopri5``: the same Dormand-Prince method, lean, per-member steps;
* ``stepfns``: the right-hand side and Jacobian generated with fewer torch operations,
  and the derivatives a discrete adjoint needs;
* ``adjoint``: a Rosenbrock solve's gradient by a discrete adjoint (with ``stepfns``);
* ``host``: small CPU solves of autonomous systems (plain, or with the discrete adjoint)
  in numpy, whose operations cost a fraction of eager torch's;
* ``checkpoint``: a Rosenbrock solve's gradient by redoing each accepted step.

Which of them a solve uses is decided in ``kinabs.backends.torch._simulate``.
"""

from kinabs.backends.torch._solvers.adjoint import adjoint_rosenbrock_solve
from kinabs.backends.torch._solvers.checkpoint import checkpointed_rosenbrock_solve
from kinabs.backends.torch._solvers.explicit import TorchDiffEq, explicit_solve, per_member
from kinabs.backends.torch._solvers.host import (
    host_adjoint_solve,
    host_ready,
    host_rosenbrock_solve,
)
from kinabs.backends.torch._solvers.rosenbrock import Rosenbrock, rosenbrock_solve
from kinabs.backends.torch._solvers.stepfns import adjoint_functions, step_functions
from kinabs.backends.torch._solvers.tableaus import RODAS4, RODAS5, RosenbrockTableau

__all__ = [
    "RODAS4", "RODAS5", "Rosenbrock", "RosenbrockTableau", "TorchDiffEq",
    "adjoint_functions", "adjoint_rosenbrock_solve", "checkpointed_rosenbrock_solve",
    "explicit_solve", "host_adjoint_solve", "host_ready", "host_rosenbrock_solve",
    "per_member", "rosenbrock_solve", "step_functions",
]
