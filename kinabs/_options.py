"""Typed, backend-neutral options for solving and differentiating.

They state intent; each backend maps intent to its best tool and raises
:class:`~kinabs._errors.BackendError` where it cannot honour an option.

Example:
    >>> import kinabs
    >>> kinabs.SolverOptions(method="stiff", rtol=1e-6, atol=1e-9)
    SolverOptions(method='stiff', rtol=1e-06, atol=1e-09, max_steps=100000, dt0=None, batching='auto')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from kinabs._errors import DataError

__all__ = ["SolverOptions", "AdjointOptions", "solver_options", "adjoint_options"]

_METHODS = ("auto", "stiff", "nonstiff")
_BATCHING = ("auto", "sequential", "vmap")
_ADJOINTS = ("checkpoint", "backsolve", "forward")


@dataclass(frozen=True)
class SolverOptions:
    """How to integrate.

    Args:
        method: ``"auto"`` (default: an explicit Runge-Kutta solver, switching to an implicit
            one for solves that the explicit one cannot finish, e.g. stiff ones),
            ``"stiff"`` (always implicit: Rodas5, a Rosenbrock method, on both backends),
            ``"nonstiff"`` (always explicit: Tsit5 on JAX), or a backend-native solver
            object (e.g. ``diffrax.Dopri8()``).
        rtol, atol: relative and absolute tolerances of the adaptive step-size controller.
            The default atol (1e-12, libRoadRunner's) sits far below the small states of
            real models (fractions near 1e-7 that grow, as in an epidemic): with 1e-10 such
            a state ended 1e-3 of its size off the converged solution; README, "Accuracy
            of the default tolerances", has the measurements.
        max_steps: the most steps one solve may take; more is reported as a failure.
        dt0: the first step size (``None``: chosen automatically).
        batching: how the JAX backend solves a batch (several parameter sets or
            starts) in one compiled program: ``"vmap"`` advances all members together,
            so each step of the batch lasts as long as its slowest member needs;
            ``"sequential"`` (``lax.map``) solves them one after another, so a batch
            costs the sum of its members' steps. ``"auto"`` (default) is vmap: on this
            2-core CPU, 50 perturbed sets of four shared models (7 to 25 states) took
            1.3 to 5.6 times longer sequential, since a compiled step's fixed cost
            dominates small models and vmap shares it; the explicit stage's step cap
            and the Rosenbrock stiff stage keep the slowest member near the others.
            Sequential pays where a few members need far more steps than the rest.
            The torch backend steps each member on its own and ignores this.

    Example:
        Options are checked when made, and go to ``simulate``, ``Trainer`` and
        ``check_conformance`` as ``solver=``:

        >>> import kinabs
        >>> opts = kinabs.SolverOptions(method="stiff", rtol=1e-6, atol=1e-9)
        >>> opts.method, opts.rtol, opts.max_steps
        ('stiff', 1e-06, 100000)
        >>> kinabs.SolverOptions(rtol=0)
        Traceback (most recent call last):
            ...
        kinabs._errors.DataError: SolverOptions.rtol must be a positive number; got 0.
        >>> b = kinabs.ModelBuilder("decay")
        >>> b.species("A", initial_concentration=1.0)
        A
        >>> b.reaction("r", "A ->", rate="A")
        r
        >>> few = kinabs.SolverOptions(method="nonstiff", max_steps=2)
        >>> kinabs.simulate(b.build(), [0.0, 10.0], solver=few, on_failure="nan").status
        ('max_steps_reached',)
    """

    method: Literal["auto", "stiff", "nonstiff"] | Any = "auto"
    rtol: float = 1e-8
    atol: float = 1e-12
    max_steps: int = 100_000
    dt0: float | None = None
    batching: Literal["auto", "sequential", "vmap"] = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.method, str) and self.method not in _METHODS:
            raise DataError(
                f"SolverOptions.method must be one of {_METHODS} or a solver object; got "
                f"{self.method!r}."
            )
        for name in ("rtol", "atol"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0):
                raise DataError(f"SolverOptions.{name} must be a positive number; got {v!r}.")
        if not (isinstance(self.max_steps, int) and self.max_steps >= 1):
            raise DataError(
                f"SolverOptions.max_steps must be a positive integer; got {self.max_steps!r}."
            )
        if self.dt0 is not None and not self.dt0 > 0:
            raise DataError(f"SolverOptions.dt0 must be positive or None; got {self.dt0!r}.")
        if self.batching not in _BATCHING:
            raise DataError(f"SolverOptions.batching must be one of {_BATCHING}; got "
                            f"{self.batching!r}.")


@dataclass(frozen=True)
class AdjointOptions:
    """How gradients through a solve are computed.

    Args:
        method: ``"checkpoint"`` (default: backpropagation through the solver with recursive
            checkpointing; exact gradients of the computed solution), ``"backsolve"``
            (continuous adjoint: solve backwards in time; low memory, approximate), or
            ``"forward"`` (forward-mode sensitivities; fast for few parameters).
        checkpoints: number of checkpoints for ``"checkpoint"`` (``None``: automatic).

    Example:
        >>> import kinabs
        >>> kinabs.AdjointOptions("forward")
        AdjointOptions(method='forward', checkpoints=None)
        >>> trainer = kinabs.Trainer(model=kinabs.load_sbml(kinabs.example_model_path()),
        ...                          data=kinabs.example_data_path(), progress=False,
        ...                          adjoint=kinabs.AdjointOptions(checkpoints=16))
        >>> trainer.adjoint
        AdjointOptions(method='checkpoint', checkpoints=16)
        >>> kinabs.AdjointOptions("adjoint")
        Traceback (most recent call last):
            ...
        kinabs._errors.DataError: AdjointOptions.method must be one of ('checkpoint', 'backsolve', 'forward'); got 'adjoint'.
    """

    method: Literal["checkpoint", "backsolve", "forward"] = "checkpoint"
    checkpoints: int | None = None

    def __post_init__(self) -> None:
        if self.method not in _ADJOINTS:
            raise DataError(
                f"AdjointOptions.method must be one of {_ADJOINTS}; got {self.method!r}."
            )
        if self.checkpoints is not None and not (
            isinstance(self.checkpoints, int) and self.checkpoints >= 1
        ):
            raise DataError(
                f"AdjointOptions.checkpoints must be a positive integer or None; got "
                f"{self.checkpoints!r}."
            )


def solver_options(value: Any, default: SolverOptions) -> SolverOptions:
    """``value`` checked as the ``solver=`` argument of any kinabs call (``None``: the
    call's ``default``); one wording for the same mistake everywhere."""
    if value is None:
        return default
    if not isinstance(value, SolverOptions):
        raise DataError(
            f"solver must be a kinabs.SolverOptions, e.g. kinabs.SolverOptions(method="
            f"'stiff'); got {type(value).__name__}. A backend's own solver object goes in "
            "its method: kinabs.SolverOptions(method=diffrax.Kvaerno5())."
        )
    return value


def adjoint_options(value: Any, default: AdjointOptions) -> AdjointOptions:
    """``value`` checked as the ``adjoint=`` argument of any kinabs call (``None``: the
    call's ``default``)."""
    if value is None:
        return default
    if not isinstance(value, AdjointOptions):
        raise DataError(
            f"adjoint must be a kinabs.AdjointOptions, e.g. kinabs.AdjointOptions("
            f"'forward'); got {type(value).__name__}."
        )
    return value
