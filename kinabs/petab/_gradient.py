r"""A compiled, differentiable objective of a PEtab problem: the log-likelihood and its
gradient with respect to the estimated parameters, on the parameter table's scale.

``problem.objective(backend="jax")`` builds one jit-compiled JAX program for all the
problem's conditions (``kinabs.backends.jax._petab``: every condition one member of a
vmapped diffrax solve, pre-equilibration and ``time = inf`` steady states inside it) and
wraps it with numpy in and out. ``value`` and ``value_and_grad`` take one parameter
vector (F,) in ``problem.x_free_ids`` order or a batch (B, F) of them (starts); the batch
is one vmapped call. A parameter set whose simulation fails gets NaN llh and NaN
gradient, and its status per condition in :attr:`Objective.last_status`. The numpy path
(:meth:`PetabProblem.evaluate`) stays the reference: both give the same llh to the
solvers' tolerances. Priors are left out (as ``evaluate``'s default).

The program is compiled at the first call for each batch size (tens of seconds for
benchmark problems on a CPU); later calls reuse it. JAX is imported only when the
objective is made.

Example:
    The decay ``A ->`` at rate ``k*A`` with one measurement ``A(1) = 0.6`` (noise 0.1);
    ``k`` is estimated on log10 scale, so that ``d llh / d log10(k) = ln(10) k
    d llh / dk``:

    >>> import math, tempfile, pathlib, numpy as np, kinabs, kinabs.petab
    >>> b = kinabs.ModelBuilder("decay")
    >>> _ = b.species("A", initial_concentration=1.0); _ = b.parameter("k", 0.5)
    >>> _ = b.reaction("r", "A ->", rate="k*A")
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> kinabs.write_sbml(b.build(), folder / "model.xml")
    >>> tables = {
    ...     "conditions": "conditionId\nc0\n",
    ...     "observables": "observableId\tobservableFormula\tnoiseFormula\nobs\tA\t0.1\n",
    ...     "measurements": "observableId\tsimulationConditionId\ttime\tmeasurement\n"
    ...                     "obs\tc0\t1\t0.6\n",
    ...     "parameters": "parameterId\tparameterScale\tlowerBound\tupperBound\t"
    ...                   "nominalValue\testimate\nk\tlog10\t0.01\t10\t0.5\t1\n"}
    >>> for name, text in tables.items():
    ...     _ = (folder / f"{name}.tsv").write_text(text)
    >>> _ = (folder / "problem.yaml").write_text(
    ...     "format_version: 1\nparameter_file: parameters.tsv\nproblems:\n"
    ...     "- sbml_files: [model.xml]\n  condition_files: [conditions.tsv]\n"
    ...     "  measurement_files: [measurements.tsv]\n  observable_files: [observables.tsv]\n")
    >>> problem = kinabs.petab.load(folder / "problem.yaml")
    >>> objective = problem.objective(backend="jax", solver=kinabs.SolverOptions("nonstiff"))
    >>> llh, grad = objective.value_and_grad(problem.x_nominal())
    >>> s = math.exp(-0.5)
    >>> expected = -0.5 * math.log(2 * math.pi * 0.01) - 0.5 * ((0.6 - s) / 0.1) ** 2
    >>> abs(llh - expected) < 1e-7, abs(llh - problem.evaluate().llh) < 1e-7
    (True, True)
    >>> # d llh/ds = (0.6 - s) / 0.01, ds/dk = -s (t = 1)
    >>> dk = (0.6 - s) / 0.01 * -s
    >>> bool(abs(grad[0] - math.log(10) * 0.5 * dk) < 1e-6)
    True
    >>> objective.value(np.stack([problem.x_nominal()] * 3)).shape  # a batch of starts
    (3,)
    >>> problem.objective(backend="torch")
    Traceback (most recent call last):
        ...
    kinabs._errors.BackendError: ...
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kinabs._backend import get_backend
from kinabs._errors import DataError
from kinabs._options import AdjointOptions, SolverOptions

__all__ = ["Objective", "make_objective"]


class Objective:
    """The log-likelihood of a PEtab problem and its gradient, compiled (see the module
    docstring). Make one with :meth:`kinabs.petab.PetabProblem.objective`.

    Attributes:
        problem: the :class:`~kinabs.petab.PetabProblem`.
        x_ids: the parameters of ``theta`` (``problem.x_free_ids``), on the scales
            ``problem.x_scales`` gives them.
        conditions: (pre-equilibration id or "", simulation id) of each status column.
        last_status: (B, C) status strings of the last call.
    """

    def __init__(self, problem: Any, compiled: Any):
        self.problem = problem
        self._compiled = compiled  # Backend.petab_objective's: numpy in and out
        self._codes = compiled.codes
        self.x_ids = problem.x_free_ids
        self.conditions = problem.plan.conditions
        self.last_status: np.ndarray | None = None

    def _batch(self, theta: Any) -> tuple[np.ndarray, bool]:
        arr = np.asarray(theta, dtype=np.float64)
        single = arr.ndim == 1
        arr = np.atleast_2d(arr)
        f = len(self.x_ids)
        if arr.ndim != 2 or arr.shape[1] != f:
            raise DataError(f"theta must have shape (F,) or (B, F) with F = {f} "
                            f"(x_free_ids, on the parameter table's scale); got "
                            f"{np.shape(theta)}.")
        return arr, single

    def _status(self, codes: np.ndarray) -> np.ndarray:
        out = np.empty(codes.shape, dtype=object)
        for i, c in np.ndenumerate(codes):
            out[i] = self._codes.get(int(c), "solver_failed")
        self.last_status = out
        return out

    def value(self, theta: Any) -> np.ndarray | float:
        """The llh at ``theta`` (F,) (a float) or at each row of (B, F) ((B,))."""
        arr, single = self._batch(theta)
        llh, status = self._compiled.value(arr)
        self._status(np.asarray(status))
        return float(llh[0]) if single else llh

    def value_and_grad(self, theta: Any) -> tuple[Any, np.ndarray]:
        """(llh, d llh / d theta) at ``theta`` (F,) or each row of (B, F); NaN where a
        simulation failed (see :attr:`last_status`)."""
        arr, single = self._batch(theta)
        llh, grad, status = self._compiled.value_and_grad(arr)
        grad = grad.copy()
        grad[np.any(status != 0, axis=1)] = np.nan
        self._status(status)
        return (float(llh[0]), grad[0]) if single else (llh, grad)

    def value_grad_fim(self, theta: Any) -> tuple[Any, np.ndarray, np.ndarray]:
        """(llh, d llh / d theta, fim) at ``theta`` (F,) or each row of (B, F): ``fim``
        (F, F) or (B, F, F) the Fisher information matrix, the expected Hessian of the
        nllh (Gauss-Newton's for fixed noise, with the noise parameters' own terms where
        they are estimated), as Fides uses it; NaN where a simulation failed."""
        arr, single = self._batch(theta)
        llh, grad, fim, status = self._compiled.value_grad_fim(arr)
        bad = np.any(status != 0, axis=1)
        grad, fim = grad.copy(), fim.copy()
        grad[bad] = np.nan
        fim[bad] = np.nan
        self._status(status)
        return (float(llh[0]), grad[0], fim[0]) if single else (llh, grad, fim)

    def __call__(self, theta: Any):
        return self.value(theta)

    def __repr__(self) -> str:
        return (f"Objective({self.problem.yaml_path.name!r}, parameters={len(self.x_ids)}, "
                f"conditions={len(self.conditions)}, backend='jax')")


def make_objective(problem: Any, *, backend: str | None = "jax",
                   solver: SolverOptions | None = None, steady_state: Any = None,
                   adjoint: AdjointOptions | None = None) -> Objective:
    """See :meth:`kinabs.petab.PetabProblem.objective`."""
    compiled = get_backend(backend or "jax").petab_objective(
        problem, solver=solver, steady_state=steady_state, adjoint=adjoint)
    return Objective(problem, compiled)
