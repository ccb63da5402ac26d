"""Training data: one or several experiments of measured species over time.

NaN means *missing*: it is masked and contributes nothing to a loss. Each experiment has
its own time points and starts at its first time point from its own initial values (by
default the finite values of its first row, as the seed does; other species keep the
model's initial values).

Example:
    >>> import kinabs
    >>> data = kinabs.TrainingData.from_csv(kinabs.example_data_path())
    >>> data.species, len(data.experiments[0].times)
    (('php', 'pser'), 10)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kinabs._errors import DataError
from kinabs._lowering.system import k_symbol, p_symbol, y_symbol

__all__ = ["Experiment", "TrainingData"]


@dataclass(frozen=True)
class Experiment:
    """One time course. ``values`` has shape (times, species) with NaN for missing.

    ``initial`` maps species ids to initial values at ``times[0]`` (the species' own units);
    ``None`` takes the finite values of the first row.

    Example:
        >>> import numpy as np, kinabs
        >>> e = kinabs.Experiment(times=[0.0, 1.0, 2.0], species=("php", "pser"),
        ...                       values=[[1.0, np.nan], [0.8, 0.1], [np.nan, 0.3]])
        >>> e.initial, e.mask.sum()
        ({'php': 1.0}, np.int64(4))
    """

    times: np.ndarray
    values: np.ndarray
    species: tuple[str, ...]
    initial: Mapping[str, float] | None = None
    name: str = ""
    #: the file the experiment was read from ("" if none): error messages name it
    source: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        times = np.asarray(self.times, dtype=np.float64)
        values = np.asarray(self.values, dtype=np.float64)
        where = _where(self)
        if times.ndim != 1 or times.size == 0:
            raise DataError(f"{where}: times must be a non-empty 1-D array; got shape "
                            f"{times.shape}.")
        if values.ndim != 2 or values.shape != (times.size, len(self.species)):
            raise DataError(
                f"{where}: values must have shape (times, species) = ({times.size}, "
                f"{len(self.species)}); got {values.shape}."
            )
        if len(set(self.species)) != len(self.species):
            dup = sorted({s for s in self.species if list(self.species).count(s) > 1})
            raise DataError(f"{where}: species columns appear twice: {dup}.")
        if not np.all(np.isfinite(times)):
            raise DataError(f"{where}: times must be finite; row {int(np.argmin(np.isfinite(times)))} "
                            "is NaN or inf.")
        if np.any(times < 0):
            raise DataError(f"{where}: times must not be negative; row "
                            f"{int(np.argmax(times < 0))} has time {times[times < 0][0]}.")
        d = np.diff(times)
        if np.any(d < 0):
            i = int(np.argmax(d < 0))
            raise DataError(f"{where}: times must be sorted increasing; row {i + 1} (time "
                            f"{times[i + 1]}) comes after time {times[i]}. Sort the table.")
        if np.any(d == 0):
            i = int(np.argmax(d == 0))
            raise DataError(f"{where}: time {times[i]} appears twice (rows {i} and {i + 1}); "
                            "merge or remove the duplicate row.")
        if np.any(np.isinf(values)):
            raise DataError(f"{where}: values must be finite or NaN (missing); found inf.")
        if not np.any(np.isfinite(values)):
            raise DataError(f"{where}: every value is missing (NaN); nothing to fit.")
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "values", values)
        if self.initial is None:
            first = {s: float(v) for s, v in zip(self.species, values[0]) if np.isfinite(v)}
            object.__setattr__(self, "initial", first)
        else:
            init = {str(k): float(v) for k, v in self.initial.items()}
            bad = [k for k, v in init.items() if not np.isfinite(v)]
            if bad:
                raise DataError(f"{where}: initial values must be finite; got NaN/inf for {bad}.")
            object.__setattr__(self, "initial", init)

    @property
    def mask(self) -> np.ndarray:
        """True where a value was measured."""
        return np.isfinite(self.values)


def _where(e: Experiment) -> str:
    """How messages name an experiment: its file when it was read from one."""
    if e.source:
        return f"experiment {e.name!r} (file {e.source})" if e.name else f"file {e.source}"
    return f"experiment {e.name!r}" if e.name else "experiment"


@dataclass(frozen=True)
class TrainingData:
    """Experiments fitted together. Build with :meth:`from_csv`, :meth:`from_frame`,
    :meth:`from_arrays`, or from a list of :class:`Experiment`.

    Example (two experiments with their own time points; the second starts from given
    initial values):
        >>> import pandas as pd, kinabs
        >>> first = pd.DataFrame({"php": [1.0, 0.5], "pser": [0.0, 0.2]}, index=[0.0, 5.0])
        >>> second = kinabs.TrainingData.from_arrays([0.0, 2.0, 4.0], [[2.0], [1.5], [1.1]],
        ...                                          ["php"], initial={"php": 2.0, "pser": 0.1})
        >>> data = kinabs.TrainingData.coerce([first, second])
        >>> data.species, [len(e.times) for e in data.experiments]
        (('php', 'pser'), [2, 3])
    """

    experiments: tuple[Experiment, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        exps = tuple(self.experiments)
        if not exps:
            raise DataError("training data has no experiments; give at least one table.")
        object.__setattr__(self, "experiments", exps)

    @property
    def species(self) -> tuple[str, ...]:
        """Every species measured in any experiment (first-seen order)."""
        seen: dict[str, None] = {}
        for e in self.experiments:
            for s in e.species:
                seen.setdefault(s, None)
        return tuple(seen)

    # -- constructors ----------------------------------------------------------
    @classmethod
    def from_frame(cls, frame: Any, *, initial: Mapping[str, float] | None = None,
                   name: str = "", source: str = "") -> TrainingData:
        """One experiment from a DataFrame: index = time, one column per species.
        ``source`` (optional) names the file the table came from, for error messages."""
        import pandas as pd

        if not isinstance(frame, pd.DataFrame):
            raise DataError(f"expected a pandas DataFrame; got {type(frame).__name__}.")
        table = f"file {source}" if source else (repr(name) if name else "the table")
        if frame.shape[0] == 0 or frame.shape[1] == 0:
            raise DataError(f"the data table {table} is empty (shape {frame.shape}); it needs "
                            "rows (time points) and species columns.")
        try:
            times = np.asarray(frame.index, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise DataError(f"the time column (index) of {table} must be numbers: "
                            f"{exc}") from None
        cols = [str(c) for c in frame.columns]
        try:
            values = frame.to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            for c in frame.columns:
                column = pd.to_numeric(frame[c], errors="coerce")
                bad = column.isna() & frame[c].notna()
                if bad.any():
                    row = int(np.argmax(bad.to_numpy()))
                    raise DataError(
                        f"column '{c}' of {table} has values that are not numbers (row {row}, "
                        f"time {frame.index[row]!r}: {frame[c].iloc[row]!r}); use numbers, "
                        "and NaN (an empty cell) for missing.") from None
            raise
        return cls((Experiment(times, values, tuple(cols), initial=initial, name=name,
                               source=source),))

    @classmethod
    def from_csv(cls, path: str | Path | Sequence[str | Path], **kwargs: Any) -> TrainingData:
        """Experiments from CSV files: first column time, one column per species id."""
        import pandas as pd

        paths = [path] if isinstance(path, (str, Path)) else list(path)
        exps: list[Experiment] = []
        for p in paths:
            p = Path(p)
            if not p.is_file():
                raise DataError(f"data file not found: {p}")
            _check_csv_header(p)
            try:
                frame = pd.read_csv(p, index_col=0)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
                raise DataError(f"cannot read {p} as CSV: {exc}") from None
            exps += cls.from_frame(frame, name=p.stem, source=str(p), **kwargs).experiments
        return cls(tuple(exps))

    @classmethod
    def from_arrays(cls, times: Any, values: Any, species: Sequence[str], *,
                    initial: Mapping[str, float] | None = None) -> TrainingData:
        """One experiment from arrays: ``values`` (times, species) or a list of several
        experiments as ``times=[t1, t2]``, ``values=[v1, v2]``."""
        if isinstance(times, (list, tuple)) and times and np.ndim(times[0]) == 1:
            return cls(tuple(Experiment(t, v, tuple(species), initial=initial, name=f"exp{i}")
                             for i, (t, v) in enumerate(zip(times, values))))
        return cls((Experiment(times, values, tuple(species), initial=initial),))

    @classmethod
    def coerce(cls, data: Any) -> TrainingData:
        """Accept TrainingData, a DataFrame, a CSV path, or a list of those."""
        import pandas as pd

        if isinstance(data, TrainingData):
            return data
        if isinstance(data, Experiment):
            return cls((data,))
        if isinstance(data, pd.DataFrame):
            return cls.from_frame(data)
        if isinstance(data, (str, Path)):
            return cls.from_csv(data)
        if isinstance(data, (list, tuple)) and data:
            exps: list[Experiment] = []
            for i, d in enumerate(data):
                sub = cls.coerce(d).experiments
                exps += [e if e.name else Experiment(e.times, e.values, e.species, e.initial,
                                                     name=f"exp{i}", source=e.source)
                         for e in sub]
            return cls(tuple(exps))
        raise DataError(
            "data must be kinabs.TrainingData, a pandas DataFrame (index = time, columns = "
            f"species), a CSV path, or a list of these; got {type(data).__name__}."
        )

    def check_against(self, system: Any) -> None:
        """Raise DataError if a column names no species of the model, or an initial value
        names a species whose start value cannot be set."""
        model = system.model
        for e in self.experiments:
            where = f"{_where(e)}: " if e.name or e.source else ""
            for s in e.species:
                if s not in model.species:
                    raise DataError(
                        f"{where}data column '{s}' is not a species of model "
                        f"'{model.id}'. Its species are: {list(model.species)[:25]}. Rename "
                        "or drop the column."
                    )
            for s in (e.initial or {}):
                if s not in model.species:
                    raise DataError(f"{where}initial value for '{s}', which is not a species.")
                if s not in system.state_index and s not in system.parameter_index:
                    raise DataError(
                        f"{where}species '{s}' gets its value from a rule, so its initial "
                        "value cannot be set from data; drop it from the first row or pass "
                        "initial= explicitly."
                    )


def _check_csv_header(path: Path) -> None:
    """Name CSV dialect problems before pandas hides them: a file separated by semicolons
    or tabs reads as one column (then "empty"), and pandas renames a repeated column name
    ``php`` to ``php.1`` (then "'php.1' is not a species")."""
    import csv

    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            header = fh.readline()
            body = fh.readline()
    except (OSError, UnicodeDecodeError):
        return  # pandas reports these with the file's name
    header = header.rstrip("\r\n")
    if not header.strip():
        return
    names = next(csv.reader([header]))
    if len(names) == 1:
        for sep, word in ((";", "semicolons (';')"), ("\t", "tabs"), ("|", "bars ('|')")):
            if sep in header or sep in body:
                raise DataError(
                    f"{path} is separated by {word}, not commas: its header {header[:60]!r} "
                    "reads as a single column. kinabs reads comma-separated CSV (first column "
                    "time, one column per species); save the file comma-separated, or read "
                    f"it with pandas.read_csv(path, sep={sep!r}, index_col=0) (add "
                    "decimal=',' for decimal commas) and pass the DataFrame.")
    seen: dict[str, int] = {}
    for column, name in enumerate(names, start=1):
        key = name.strip()
        if key in seen:
            raise DataError(
                f"{path}: the header names column {key!r} twice (columns {seen[key]} and "
                f"{column}, counting from 1); each species may have one column only. Rename "
                "or merge the columns.")
        seen[key] = column


def _free_names(expr: Any) -> set[str]:
    return {s.name for s in getattr(expr, "free_symbols", ())}


def outputs_moved_by(system: Any, parameters: Sequence[str]) -> set[str]:
    """Species whose simulated concentration depends on at least one of ``parameters``:
    directly (outputs, initial values) or through states whose rates depend on them, to a
    fixed point. Structural (from the symbolic system), so it is exact up to terms that
    cancel."""
    n_free = len(system.parameters)
    fitted = {system.parameter_index[n] for n in parameters}
    p_moved = {p_symbol(j).name for j in fitted}
    k_moved = {k_symbol(j).name for j in fitted}
    for d, expr in enumerate(system.init_derived):  # constants set by initial assignments
        if _free_names(expr) & p_moved:
            k_moved.add(k_symbol(n_free + d).name)
    n = len(system.states)
    rhs_names = []
    for i in range(n):
        names: set[str] = set(_free_names(system.extra[i]))
        if system.scale is not None:
            names |= _free_names(system.scale[i])
        for j, rate in enumerate(system.rates):
            if system.stoichiometry[j, i]:
                names |= _free_names(rate)
        rhs_names.append(names)
    moved = {y_symbol(i).name for i in range(n) if _free_names(system.init_y0[i]) & p_moved}
    while True:
        grown = {y_symbol(i).name for i in range(n)
                 if rhs_names[i] & (k_moved | moved)} | moved
        if grown == moved:
            break
        moved = grown
    out = set()
    for (kind, sid), expr in zip(system.outputs, system.output_exprs):
        if kind == "concentration" and _free_names(expr) & (k_moved | moved):
            out.add(sid)
    return out


def check_constrains(data: TrainingData, system: Any, parameters: Sequence[str]) -> None:
    """Raise DataError when the data constrain none of the fitted parameters: every
    experiment has one time point only (its first row gives the initial values, so the
    model matches it whatever the parameters), or measures only species that the fitted
    parameters never change. Such a fit would end at loss 0 with status "ok"."""
    later = [e for e in data.experiments if e.times.size > 1 and e.mask[1:].any()]
    if not later:
        files = [_where(e) for e in data.experiments]
        times = sorted({float(e.times[0]) for e in data.experiments})
        raise DataError(
            f"the data have measured values at one time point only ({', '.join(files[:5])}: time "
            f"{times[0] if len(times) == 1 else times[:5]}), so nothing is fitted: the first "
            "row gives the initial values, which the model matches whatever its parameters. "
            "Give measurements at two or more time points.")
    try:
        moved = outputs_moved_by(system, parameters)
    except Exception:  # noqa: BLE001 - a system this analysis does not know: do not block
        return
    measured = {s for e in later for j, s in enumerate(e.species) if e.mask[1:, j].any()}
    if not measured & moved:
        files = sorted({_where(e) for e in later})
        raise DataError(
            f"the data constrain none of the fitted parameters {list(parameters)[:10]}: "
            f"they measure only species {sorted(measured)[:10]} ({', '.join(files[:5])}), "
            "which the fitted parameters never change (no reaction or rule that involves "
            "them changes these species), so any parameters fit them equally well. Give "
            "data on species that change"
            + (f" (e.g. {sorted(moved)[:5]})" if moved else "")
            + ", or fit other parameters (parameters=[...]).")
