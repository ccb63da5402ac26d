"""Steady states by integration over growing horizons, with a stated criterion.

PEtab's pre-equilibration and its ``time = inf`` measurements both need the steady state
of a simulation condition. kinabs integrates each member from ``t = 0`` to the first
horizon of ``SteadyStateOptions.horizons`` (by default 1, 10, ..., 1e8), then on from
there to the next one, and so on, and stops for each member at the first horizon where

    ``|dx_i/dt| <= atol + rtol * |x_i|`` for every state ``i``

(the derivative evaluated with the model's own right-hand side, on numpy). Each stage is
one batched solve of the members not yet converged. Stopping early matters: an implicit
solver can fail far beyond the time at which a system settled (Brannmark_JBC2010's
pre-equilibrium is reached by t = 1e3 and its solve fails on the way to 1e8). A member
that has not converged at the last horizon, or whose solve fails, gets a status other than
``"success"`` (``"steady_state_not_reached"`` or ``"steady_state_solve_failed: <solver
status>"``) and NaN values: never a silent value. Each stage restarts the solver at the
previous horizon (the time is carried on; derived constants of initial assignments are
evaluated at that time, which matters only for initial assignments that use time).

Example:
    Decay to a fixed point ``A* = k1 / k2``:

    >>> import numpy as np, kinabs
    >>> from kinabs.petab._steady_state import steady_state
    >>> b = kinabs.ModelBuilder("ss")
    >>> _ = b.species("A", initial_concentration=0.0)
    >>> _ = b.parameter("k1", 2.0); _ = b.parameter("k2", 0.5)
    >>> _ = b.reaction("in", "-> A", rate="k1"); _ = b.reaction("out", "A ->", rate="k2*A")
    >>> system = kinabs.lower(b.build())
    >>> y, status, t = steady_state(system, system.parameter_vector()[None, :],
    ...                             np.zeros((1, 1)), backend="jax")
    >>> status, y.round(8).tolist(), t.tolist()
    (['success'], [[4.0]], [100.0])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kinabs._backend import STATUS, get_backend
from kinabs._errors import DataError
from kinabs._lowering.ops import numpy_ops
from kinabs._lowering.system import OdeSystem
from kinabs._options import SolverOptions

__all__ = ["SteadyStateOptions", "steady_state", "numpy_functions", "state_output_keys"]


@dataclass(frozen=True)
class SteadyStateOptions:
    """How steady states are found (see the module docstring for the criterion).

    Args:
        rtol, atol: the criterion's tolerances.
        horizons: increasing times at which the criterion is checked; a member not
            converged at the last one has not reached its steady state.
        solver: the solver of the steady-state runs (``None``: the evaluation's own
            solver with ``method="stiff"``: long horizons need an implicit method).
    """

    rtol: float = 1e-8
    atol: float = 1e-12
    horizons: tuple[float, ...] = tuple(float(10.0 ** k) for k in range(0, 9))
    solver: SolverOptions | None = None

    def __post_init__(self) -> None:
        h = np.asarray(self.horizons, dtype=float)
        if h.ndim != 1 or h.size < 1 or np.any(np.diff(h) <= 0) or h[0] <= 0:
            raise DataError("SteadyStateOptions.horizons must be increasing "
                            f"positive times; got {self.horizons!r}.")
        if not (self.rtol > 0 and self.atol > 0):
            raise DataError("SteadyStateOptions.rtol and atol must be positive.")


def numpy_functions(system: OdeSystem):
    """The system's generated functions bound to numpy (cached on the system, shared with
    ``kinabs._lowering.diagnose``)."""
    fns = system._cache.get("numpy")
    if fns is None:
        fns = system._cache["numpy"] = system.generated.bind(numpy_ops())
    return fns


def state_output_keys(system: OdeSystem) -> list[tuple[str, str]]:
    """The output key that reads each state back in state units."""
    return [(kind, x) if x in system.model.species else ("value", x)
            for x, kind in zip(system.states, system.state_kinds)]


def steady_state(system: OdeSystem, parameters: np.ndarray, y0: np.ndarray, *,
                 backend: str | None = None, solver: SolverOptions | None = None,
                 options: SteadyStateOptions | None = None
                 ) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Steady states of ``system`` for a batch: ``parameters`` (N, P), initial values
    ``y0`` (N, S) in the species' natural units (every state given). Returns the states
    (N, S) in state units (NaN where not reached), a status per member and the horizon
    (N,) at which each converged (NaN where not)."""
    options = options or SteadyStateOptions()
    base = solver or SolverOptions()
    ss_solver = options.solver or SolverOptions(
        method="stiff" if isinstance(base.method, str) else base.method,
        rtol=base.rtol, atol=base.atol, max_steps=base.max_steps, dt0=base.dt0)
    n, s = parameters.shape[0], len(system.states)
    t_reached = np.full(n, np.nan)
    if s == 0:
        return np.zeros((n, 0)), ["success"] * n, np.zeros(n)
    index = np.asarray([system.output_index[k] for k in state_output_keys(system)])
    fns = numpy_functions(system)
    parameters = np.asarray(parameters, dtype=float)
    y_nat = np.array(y0, dtype=float)
    out = np.full((n, s), np.nan)
    status: list[str | None] = [None] * n
    active = np.arange(n)
    t_prev = 0.0
    with np.errstate(all="ignore"):
        ks = [np.asarray(fns.init(np.float64(0.0), parameters[i])[1], float)
              for i in range(n)]
    for h in options.horizons:
        raw = get_backend(backend).simulate(
            system, np.asarray([h], dtype=float), parameters[active], t0=float(t_prev),
            y0=y_nat[active], y0_mask=np.ones(s, dtype=bool), output_index=index,
            solver=ss_solver)
        ys = np.array(raw.ys, dtype=np.float64)[:, -1, :]
        still = []
        t = np.float64(h)
        for j, i in enumerate(active):
            code = STATUS.get(int(raw.status[j]), "solver_failed")
            if code != "success":
                status[i] = f"steady_state_solve_failed: {code}"
                continue
            y = ys[j]
            with np.errstate(all="ignore"):
                dy = np.asarray(fns.rhs(t, y, ks[i]), dtype=float)
                converged = np.all(np.abs(dy) <= options.atol + options.rtol * np.abs(y))
                if converged and np.all(np.isfinite(y)):
                    out[i] = y
                    status[i] = "success"
                    t_reached[i] = h
                    continue
                # the backend multiplies by the factors at the model's initial state at t
                y_init, k_t = fns.init(t, parameters[i])
                y_nat[i] = y / np.asarray(fns.to_state(t, y_init, k_t), dtype=float)
            still.append(i)
        active = np.asarray(still, dtype=np.int64)
        t_prev = float(h)
        if active.size == 0:
            break
    return out, [s_ or "steady_state_not_reached" for s_ in status], t_reached
