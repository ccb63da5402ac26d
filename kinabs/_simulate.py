"""``kinabs.simulate``: solve a model at given times on any backend.

Example:
    >>> import kinabs, numpy as np
    >>> model = kinabs.load_sbml(kinabs.example_model_path())
    >>> result = kinabs.simulate(model, np.linspace(0, 10, 5))
    >>> df = result.to_frame()
    >>> list(df.columns)[:2], round(float(df["php"].iloc[0]), 3)
    (['p3g', 'php'], 0.6)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kinabs._backend import STATUS, get_backend
from kinabs._errors import DataError, SimulationError
from kinabs._events import simulate_with_events
from kinabs._lowering.diagnose import nonfinite_at_start
from kinabs._lowering.system import OdeSystem, as_system
from kinabs._model import Model
from kinabs._options import SolverOptions, solver_options

__all__ = ["simulate", "SimulationResult", "amount", "concentration"]

_SPECIES_UNITS = ("concentration", "amount")


def amount(species_id: str) -> tuple[str, str]:
    """Ask for a species' amount in ``simulate(outputs=...)``.

    Example:
        A species at concentration 1 in a compartment of size 2 has amount 2:

        >>> import kinabs
        >>> b = kinabs.ModelBuilder("cell")
        >>> b.compartment("cell", size=2.0)
        cell
        >>> b.species("A", initial_concentration=1.0)
        A
        >>> kinabs.amount("A")
        ('amount', 'A')
        >>> result = kinabs.simulate(b.build(), [0.0, 1.0], outputs=[kinabs.amount("A")])
        >>> result.columns, result.values[0, :, 0].tolist()
        (('A',), [2.0, 2.0])
    """
    return ("amount", species_id)


def concentration(species_id: str) -> tuple[str, str]:
    """Ask for a species' concentration in ``simulate(outputs=...)``.

    Both units of one species in one call give the columns ``"S [concentration]"`` and
    ``"S [amount]"``.

    Example:
        With ``species_units="amount"`` a plain id means the amount; ``concentration``
        still asks for the concentration (here 2 in a compartment of size 0.5):

        >>> import kinabs
        >>> b = kinabs.ModelBuilder("cell")
        >>> b.compartment("cell", size=0.5)
        cell
        >>> b.species("A", initial_amount=1.0)
        A
        >>> kinabs.concentration("A")
        ('concentration', 'A')
        >>> result = kinabs.simulate(b.build(), [0.0], species_units="amount",
        ...                          outputs=["A", kinabs.concentration("A")])
        >>> result.columns, result.values[0, 0].tolist()
        (('A [amount]', 'A [concentration]'), [1.0, 2.0])
    """
    return ("concentration", species_id)


@dataclass(frozen=True)
class SimulationResult:
    """Trajectories of one or a batch of simulations.

    Attributes:
        times: (T,) save times.
        values: (B, T, O) values; NaN where a solve failed.
        columns: the O output names (ids; ``amount(S)``-style pairs are named ``S``, or
            ``"S [amount]"`` when both units of one species were asked for).
        status: (B,) status names (``"success"``, ``"max_steps_reached"``, ...).
        steps: (B,) accepted solver steps.

    Example:
        >>> import kinabs, numpy as np
        >>> b = kinabs.ModelBuilder("decay")
        >>> b.species("A", initial_concentration=1.0)
        A
        >>> b.parameter("k", 1.0)
        k
        >>> b.reaction("r", "A ->", rate="k*A")
        r
        >>> result = kinabs.simulate(b.build(), [0.0, 1.0, 2.0], outputs=["A", "r"],
        ...                          parameters=[{"k": 1.0}, {"k": 2.0}])
        >>> len(result), result.values.shape, result.ok, result.status
        (2, (2, 3, 2), True, ('success', 'success'))
        >>> result.to_frame(1).round(4)  # A = exp(-2 t), the rate r = 2 A
                   A       r
        time
        0.0   1.0000  2.0000
        1.0   0.1353  0.2707
        2.0   0.0183  0.0366
    """

    times: np.ndarray
    values: np.ndarray
    columns: tuple[str, ...]
    status: tuple[str, ...]
    steps: np.ndarray

    @property
    def ok(self) -> bool:
        """True when every solve of the batch succeeded."""
        return all(s == "success" for s in self.status)

    def __len__(self) -> int:
        return self.values.shape[0]

    def to_frame(self, index: int = 0):
        """Member ``index`` of the batch as a pandas DataFrame indexed by time."""
        import pandas as pd

        df = pd.DataFrame(self.values[index], index=pd.Index(self.times, name="time"),
                          columns=list(self.columns))
        df.attrs["status"] = self.status[index]
        return df

    def to_frames(self) -> list:
        """Every member of the batch as a DataFrame."""
        return [self.to_frame(i) for i in range(len(self))]


def _batch_of_mappings(value: Any, what: str) -> list[dict[str, float]]:
    import pandas as pd

    if value is None:
        return [{}]
    if isinstance(value, pd.DataFrame):
        return [{str(k): float(v) for k, v in row.items()} for _, row in value.iterrows()]
    if isinstance(value, pd.Series):
        return [{str(k): float(v) for k, v in value.items()}]
    if isinstance(value, Mapping):
        return [{str(k): float(v) for k, v in value.items()}]
    if isinstance(value, Sequence) and all(isinstance(v, Mapping) for v in value):
        if not value:
            raise DataError(f"{what} is an empty list; give at least one mapping of values.")
        return [{str(k): float(v) for k, v in m.items()} for m in value]
    raise DataError(
        f"{what} must be a mapping id -> value, a list of mappings, a pandas Series or a "
        f"DataFrame (one row per simulation); got {type(value).__name__}."
    )


def _parameter_matrix(system: OdeSystem, parameters: Any, initial_params: list[dict]
                      ) -> np.ndarray:
    if isinstance(parameters, np.ndarray):
        arr = np.atleast_2d(np.asarray(parameters, dtype=np.float64))
        if arr.ndim != 2 or arr.shape[1] != len(system.parameters):
            raise DataError(
                f"a parameter array must have shape (P,) or (B, P) with P = "
                f"{len(system.parameters)} (system.parameters order); got {parameters.shape}."
            )
        rows = [arr[i] for i in range(arr.shape[0])]
        rows = [r.copy() for r in rows]
    else:
        rows = [system.parameter_vector(m) for m in _batch_of_mappings(parameters, "parameters")]
    b = _broadcast_len(len(rows), len(initial_params), "parameters", "initial")
    rows = rows * b if len(rows) == 1 else rows
    for i, extra in enumerate(initial_params * b if len(initial_params) == 1 else initial_params):
        for name, v in extra.items():
            rows[i][system.parameter_index[name]] = v
    out = np.stack(rows)
    if not np.all(np.isfinite(out)):
        bad = sorted({system.parameters[j] for j in np.argwhere(~np.isfinite(out))[:, 1]})
        raise DataError(f"parameter values must be finite; got NaN or inf for {bad}.")
    return out


def _broadcast_len(a: int, b: int, name_a: str, name_b: str) -> int:
    if a != b and 1 not in (a, b):
        raise DataError(f"{name_a} has {a} rows and {name_b} has {b}; give the same number "
                        "of rows, or one row to use for all.")
    return max(a, b)


def simulate(
    model: Model | OdeSystem,
    times: Sequence[float] | np.ndarray,
    *,
    parameters: Any = None,
    initial: Any = None,
    outputs: Sequence[str | tuple[str, str]] | None = None,
    species_units: str = "concentration",
    t0: float = 0.0,
    solver: SolverOptions | None = None,
    backend: str | None = None,
    on_failure: str = "raise",
) -> SimulationResult:
    """Simulate ``model`` and save its outputs at ``times``.

    Args:
        model: a :class:`kinabs.Model` (or its lowered :class:`kinabs.OdeSystem`).
        times: increasing save times, all ``>= t0``.
        parameters: new values of free parameters: a mapping, a list of mappings or a
            DataFrame (one row per simulation, batched in one compiled solve), or an array
            of shape (P,) or (B, P) in ``system.parameters`` order.
        initial: initial values of species (in their own units: concentration unless the
            species has only substance units), as a mapping, list of mappings or DataFrame.
        outputs: ids to save (species, compartments, parameters, reactions); a species may
            be wrapped as ``kinabs.amount(id)`` / ``kinabs.concentration(id)``. Default:
            every species.
        species_units: ``"concentration"`` (default) or ``"amount"`` for plain species ids.
        t0: the start time (initial values hold there).
        solver: a :class:`kinabs.SolverOptions`.
        backend: ``"jax"`` or ``"torch"`` (default: ``KINABS_BACKEND``, else ``"jax"``).
        on_failure: ``"raise"`` (default) raises :class:`kinabs.SimulationError` when a solve
            fails; ``"nan"`` returns NaN values with the failure in ``result.status``.

    Returns:
        a :class:`kinabs.SimulationResult` (``.values`` (B, T, O), ``.to_frame()``).

    Example:
        A first-order decay ``A ->`` at rate ``k*A`` has ``A(t) = exp(-k t)``; two values
        of ``k`` are one batched solve:

        >>> import kinabs, numpy as np
        >>> b = kinabs.ModelBuilder("decay")
        >>> b.species("A", initial_concentration=1.0)
        A
        >>> b.parameter("k", 0.5)
        k
        >>> b.reaction("r", "A ->", rate="k*A")
        r
        >>> times = np.array([0.0, 1.0, 2.0])
        >>> result = kinabs.simulate(b.build(), times, parameters=[{"k": 0.5}, {"k": 1.0}])
        >>> result.status
        ('success', 'success')
        >>> result.values[:, :, 0].round(6)
        array([[1.      , 0.606531, 0.367879],
               [1.      , 0.367879, 0.135335]])
        >>> bool(np.allclose(result.values[1, :, 0], np.exp(-times), rtol=1e-6))
        True
    """
    if species_units not in _SPECIES_UNITS:
        raise DataError(f"species_units must be one of {_SPECIES_UNITS}; got "
                        f"{species_units!r}.")
    if on_failure not in ("raise", "nan"):
        raise DataError(f"on_failure must be 'raise' or 'nan'; got {on_failure!r}.")
    solver = solver_options(solver, SolverOptions())
    system = as_system(model)
    ts = _check_times(times, t0)

    # initial values: states are overridden, constant species become parameters
    init_rows = _batch_of_mappings(initial, "initial")
    y0_rows, as_params = [], []
    mask = np.zeros(len(system.states), dtype=bool)
    for row in init_rows:
        y, row_mask, p_index, p_values = system.initial_arrays(row)
        y0_rows.append(np.where(row_mask, y, np.nan))
        mask |= row_mask
        as_params.append({system.parameters[i]: v for i, v in zip(p_index, p_values)})
    for i, row in enumerate(init_rows):
        missing = [s for s, m in zip(system.states, mask) if m and s not in row]
        if missing:
            raise DataError(
                f"initial row {i} gives no value for {missing}, which other rows set; give "
                "every row the same species (the model's value where it should not change)."
            )
    p = _parameter_matrix(system, parameters, as_params)
    b = p.shape[0]
    y0 = None
    if mask.any():
        y0 = np.stack(y0_rows * b if len(y0_rows) == 1 else y0_rows)
        if y0.shape[0] != b:
            raise DataError(f"initial has {y0.shape[0]} rows but parameters give {b}.")
        if not np.all(np.isfinite(y0[:, mask])):
            raise DataError("initial values must be finite numbers (got NaN or inf).")
        y0 = np.where(mask, y0, 0.0)

    keys = [system.output_key(o, species_units) for o in
            (outputs if outputs is not None else list(system.model.species))]
    names = _column_names(keys)
    index = np.asarray([system.output_index[k] for k in keys], dtype=np.int64)

    engine = get_backend(backend)
    if system.events is not None:
        raw = simulate_with_events(
            system, engine, ts, p, t0=float(t0), y0=y0,
            y0_mask=mask if y0 is not None else None, output_index=index, solver=solver)
    else:
        raw = engine.simulate(
            system, ts, p, t0=float(t0), y0=y0, y0_mask=mask if y0 is not None else None,
            output_index=index, solver=solver,
        )
    status = tuple(STATUS.get(int(s), "solver_failed") for s in raw.status)
    values = np.array(raw.ys, dtype=np.float64)
    failed = [i for i, s in enumerate(status) if s != "success"]
    for i in failed:
        values[i] = np.nan
    if failed and on_failure == "raise":
        first = failed[0]
        cause = nonfinite_at_start(system, float(t0), p[first],
                                   None if y0 is None else y0[first], mask)
        if cause:
            raise SimulationError(
                f"{len(failed)} of {b} solves failed (first: batch member {first}, "
                f"{status[first]}) before they could start: {cause} Fix that value in "
                "the model or in parameters=/initial=; more steps or another solver "
                "cannot help."
            )
        raise SimulationError(
            f"{len(failed)} of {b} solves failed (first: batch member {first}, "
            f"{status[first]}). Try SolverOptions(method='stiff'), a larger max_steps "
            f"(now {solver.max_steps}), or check the parameter values; pass "
            f"on_failure='nan' to get NaN rows with a status instead of this error."
        )
    return SimulationResult(times=ts, values=values, columns=names, status=status,
                            steps=np.asarray(raw.steps))


def _check_times(times: Any, t0: float) -> np.ndarray:
    ts = np.asarray(times, dtype=np.float64)
    if ts.ndim != 1 or ts.size == 0:
        raise DataError(f"times must be a non-empty 1-D sequence; got shape {ts.shape}.")
    if not np.all(np.isfinite(ts)):
        raise DataError("times must be finite numbers (got NaN or inf).")
    if np.any(np.diff(ts) < 0):
        i = int(np.argmax(np.diff(ts) < 0))
        raise DataError(f"times must be sorted increasing; times[{i}]={ts[i]} > "
                        f"times[{i + 1}]={ts[i + 1]}. Sort them first.")
    if ts[0] < t0:
        raise DataError(f"times must not start before t0={t0}; the first is {ts[0]}. "
                        "Pass t0= to start earlier.")
    return ts


def _column_names(keys: list[tuple[str, str]]) -> tuple[str, ...]:
    ids = [k[1] for k in keys]
    out = []
    for kind, i in keys:
        out.append(i if ids.count(i) == 1 else f"{i} [{kind}]")
    return tuple(out)
