"""The backend protocol and backend selection.

A backend lowers an :class:`~kinabs._lowering.system.OdeSystem` to its native arrays and solves it.
Backends live in ``kinabs.backends.<name>`` (the top-level ``backends/`` folder) and are
imported lazily, so ``import kinabs`` imports neither jax nor torch.

Selection: the explicit ``backend=`` argument, else the ``KINABS_BACKEND`` environment
variable, else ``"jax"``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from kinabs._errors import BackendError

__all__ = ["Backend", "RawSolution", "get_backend", "BACKENDS", "STATUS"]

#: Status codes of a solve, shared by every backend.
STATUS = {0: "success", 1: "max_steps_reached", 2: "nonfinite", 3: "solver_failed"}

#: name -> (module, install command)
BACKENDS = {
    "jax": ("kinabs.backends.jax", "pip install 'kinabs[jax]'  (jax, diffrax, optax, equinox)"),
    "torch": ("kinabs.backends.torch", "pip install 'kinabs[torch]'  (torch, torchdiffeq)"),
}

_INSTANCES: dict[str, Backend] = {}


@dataclass(frozen=True)
class RawSolution:
    """What a backend's solve returns, as numpy arrays.

    ``ys``: (batch, times, outputs); ``status``: (batch,) codes of :data:`STATUS`;
    ``steps``: (batch,) accepted steps (``-1`` where unknown)."""

    ys: np.ndarray
    status: np.ndarray
    steps: np.ndarray


class Backend(ABC):
    """One array library's way of simulating (and, later, training) a system.

    Users pick a backend by name (``backend="torch"``); :func:`kinabs.simulate` and
    :class:`kinabs.Trainer` call its methods, which take and return numpy arrays.

    Example:
        The raw solve behind ``kinabs.simulate``, for ``A ->`` at rate ``k*A`` with
        ``k = 0.5`` and ``k = 1`` (the free parameters are ``k`` and the compartment size):

        >>> import kinabs, numpy as np
        >>> b = kinabs.ModelBuilder("decay")
        >>> b.species("A", initial_concentration=1.0)
        A
        >>> b.parameter("k", 0.5)
        k
        >>> b.reaction("r", "A ->", rate="k*A")
        r
        >>> system = kinabs.lower(b.build())
        >>> backend = kinabs.get_backend("torch")
        >>> isinstance(backend, kinabs.Backend), backend.name
        (True, 'torch')
        >>> times, parameters = np.array([0.0, 2.0]), np.array([[0.5, 1.0], [1.0, 1.0]])
        >>> raw = backend.simulate(system, times, parameters, t0=0.0, y0=None, y0_mask=None,
        ...                        output_index=np.array([0]), solver=kinabs.SolverOptions())
        >>> raw.ys.shape, raw.status.tolist()  # (batch, times, outputs); 0 is success
        ((2, 2, 1), [0, 0])
        >>> raw.ys[:, -1, 0].round(6)  # exp(-1), exp(-2)
        array([0.367879, 0.135335])
    """

    name: str = ""

    @abstractmethod
    def simulate(
        self,
        system: Any,
        times: np.ndarray,
        parameters: np.ndarray,
        *,
        t0: float,
        y0: np.ndarray | None,
        y0_mask: np.ndarray | None,
        output_index: np.ndarray,
        solver: Any,
    ) -> RawSolution:
        """Solve ``system`` for a batch of parameter vectors.

        Args:
            times: (T,) increasing save times, all ``>= t0``.
            parameters: (B, P) free-parameter vectors.
            y0: (B, S) initial values in the species' natural units, or ``None``.
            y0_mask: (S,) which states ``y0`` overrides.
            output_index: (O,) indices into ``system.outputs`` to save.
            solver: a :class:`kinabs.SolverOptions`.
        """

    @abstractmethod
    def default_optimizer(self) -> Any:
        """The seed's first-order optimiser in this backend's form (AdaBelief, learning rate
        1e-3, updates clipped to a global norm of log 4). Not the Trainer's default any
        more (that is :class:`kinabs.LevenbergMarquardt`, on every backend): pass it as
        ``optimizer=`` to train as the seed does."""

    @abstractmethod
    def check_optimizer(self, optimizer: Any) -> None:
        """Raise BackendError unless ``optimizer`` is this backend's kind of optimiser."""

    @abstractmethod
    def adam(self, learning_rate: float) -> Any:
        """This backend's Adam (``b1=0.9, b2=0.999, eps=1e-8`` added outside the square
        root), in the form :meth:`check_optimizer` accepts: the same optimiser on every
        backend, for conformance checks of training."""

    @abstractmethod
    def training_program(self, problem: Any, optimizer: Any, n_iter: int, *,
                         optimizer_key: str | None = None) -> Any:
        """A :class:`kinabs._problem.TrainingProgram` for ``problem`` (a
        :class:`kinabs._problem.FitProblem`). ``optimizer_key`` names the optimizer when it
        is a known default (lets the backend cache programs)."""

    def event_segment(self, system: Any, times: np.ndarray, t_start: np.ndarray,
                      t_stop: np.ndarray, y: np.ndarray, k: np.ndarray, sides: np.ndarray,
                      solver: Any) -> Any:
        """Solve a batch of a system with events from ``(t_start, y)`` (B,), (B, S) with
        constants ``k`` (B, K) until the first crossing of a trigger atom away from its
        side ``sides`` (B, A) of zero, or ``t_stop`` (B,): a
        :class:`kinabs._events.SegmentResult` (``kinabs._events`` applies the events
        between segments). Backends without one raise :class:`kinabs.BackendError`."""
        raise BackendError(f"the {self.name} backend cannot simulate models with events.")

    def event_engine(self, system: Any, solver: Any) -> Any:
        """The arrays, solves and derivative passes that differentiate a simulation with
        events (see :mod:`kinabs._event_gradients`). Backends without one raise
        :class:`kinabs.BackendError`."""
        raise BackendError(f"the {self.name} backend cannot differentiate models with "
                           "events.")

    def petab_objective(self, problem: Any, *, solver: Any, steady_state: Any,
                        adjoint: Any) -> Any:
        """The compiled, differentiable log-likelihood of a PEtab problem (see
        :mod:`kinabs.petab._gradient`): an object with ``value(theta)`` -> (llh (B,),
        status (B, C)) and ``value_and_grad(theta)`` -> (llh, grad (B, F), status) on
        numpy arrays ``theta`` (B, F), and ``codes`` (status code -> name). Backends
        without one raise :class:`kinabs.BackendError`."""
        raise BackendError(
            f"the compiled, differentiable PEtab objective is not implemented on the "
            f"{self.name} backend yet (observable and noise formulas, condition overrides "
            "and steady states as one batched, differentiable program). Use "
            "problem.objective(backend='jax'), or problem.evaluate(backend=...) for values "
            "without gradients.")


def map_checkout_backends() -> None:
    """Make ``kinabs.backends`` importable from a bare checkout.

    ``backends/`` sits at the top of the repository and installs as ``kinabs.backends``
    (``package-dir`` in pyproject.toml). An install, editable or not, maps it; a checkout
    that is only on ``sys.path`` (``python -m conformance...`` from the root before
    ``pip install -e .``) has no such mapping, so this maps the folder the same way. It
    runs once, from ``kinabs/__init__.py``, and does nothing where packaging did it."""
    if "kinabs.backends" in sys.modules or importlib.util.find_spec("kinabs.backends"):
        return
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "backends")
    init = os.path.join(folder, "__init__.py")
    if not os.path.isfile(init):
        return
    spec = importlib.util.spec_from_file_location(
        "kinabs.backends", init, submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules["kinabs.backends"] = module
    spec.loader.exec_module(module)
    sys.modules["kinabs"].backends = module  # what an import of a submodule does


def resolve_backend_name(name: str | None) -> str:
    if name is None:
        name = os.environ.get("KINABS_BACKEND") or "jax"
        origin = "the KINABS_BACKEND environment variable"
    else:
        origin = "backend="
    if not isinstance(name, str) or name not in BACKENDS:
        raise BackendError(
            f"unknown backend {name!r} (from {origin}); choose one of {sorted(BACKENDS)}."
        )
    return name


def get_backend(name: str | None = None) -> Backend:
    """The backend called ``name`` (see the module docstring for the default).

    The backend's module is imported on the first call, and its one instance is kept.

    Example:
        >>> import kinabs
        >>> backend = kinabs.get_backend("jax")
        >>> backend.name, backend is kinabs.get_backend("jax")
        ('jax', True)
        >>> kinabs.get_backend("numpy")
        Traceback (most recent call last):
            ...
        kinabs._errors.BackendError: unknown backend 'numpy' (from backend=); choose one of ['jax', 'torch'].
    """
    name = resolve_backend_name(name)
    if name not in _INSTANCES:
        module, install = BACKENDS[name]
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise BackendError(
                f"the {name} backend needs packages that are not installed ({exc}). "
                f"Install them with: {install}"
            ) from exc
        _INSTANCES[name] = mod.Backend()
    return _INSTANCES[name]
