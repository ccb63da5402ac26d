"""What a fit returns: tables, save/load, plots.

:class:`TrainingResults` unpacks like the seed's return value
(``optimized_parameters, loss_per_iteration = trainer.train()``) and carries the same
data as tables: initial and final parameters per initialisation, the loss history
(inits x iterations), the status of each initialisation, its iterations and evaluations
and the best fit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from kinabs._errors import DataError
from kinabs._fit import plots
from kinabs._fit.loop import LoopOutcome
from kinabs._fit.spec import FitSpec
from kinabs._problem import FAILED, FIT_STATUS, STATUS_KINDS, status_kind

__all__ = ["TrainingResults", "check_output_folder", "status_kind", "STATUS_KINDS"]


def counts_from_history(loss_history: np.ndarray) -> np.ndarray:
    """(N,) finite entries per row of a loss history: the iterations (and evaluations) of
    results from before they were recorded, where every iteration was one step."""
    return np.sum(np.isfinite(np.asarray(loss_history, dtype=float)), axis=1).astype(np.int64)


@dataclass
class TrainingResults:
    """Results of :meth:`kinabs.Trainer.train`, one row per start: initial and final
    parameters (linear values), the loss history (NaN after a start stopped or failed),
    the status (``"ok"`` for first-order optimisers such as Adam, ``"converged"`` or
    ``"max_iterations"`` for methods with convergence tests, or ``"failed: <reason>"``),
    the final loss (NaN where a start failed), and the ``iterations`` (accepted steps) and
    ``evaluations`` (of loss and derivative) each start took, over every round; ``meta``
    says what was fitted and how. Results made without ``iterations``/``evaluations`` get
    the finite entries of each row of the loss history for both.

    Example:
        >>> import tempfile, numpy as np, pandas as pd, kinabs
        >>> r = kinabs.TrainingResults(parameters=pd.DataFrame({"k": [1.0, 2.0]}),
        ...     initial_parameters=pd.DataFrame({"k": [0.5, 3.0]}),
        ...     loss_history=np.array([[1.0, 0.1], [2.0, np.nan]]),
        ...     status=["ok", "failed: max_steps_reached"], final_loss=np.array([0.05, np.nan]))
        >>> optimized_parameters, loss_per_iteration = r  # the seed's unpacking
        >>> optimized_parameters[0], r.best_index, r.best_parameters
        ({'k': 1.0}, 0, {'k': 1.0})
        >>> kinabs.TrainingResults.load(r.save(tempfile.mkdtemp())).status
        ['ok', 'failed: max_steps_reached']
    """

    parameters: Any  # DataFrame (inits x parameters), final, linear values
    initial_parameters: Any  # DataFrame, the starts
    loss_history: np.ndarray  # (inits, iterations), NaN after a start stopped or failed
    status: list[str]
    final_loss: np.ndarray  # (inits,) loss at the final parameters
    restarts: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    iterations: np.ndarray | None = None  # (inits,) accepted steps, summed over rounds
    evaluations: np.ndarray | None = None  # (inits,) loss+derivative evaluations
    _state: Any = field(default=None, repr=False)
    _program: Any = field(default=None, repr=False)
    _trainer: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        n = np.shape(self.loss_history)[0]
        for name in ("iterations", "evaluations"):
            value = getattr(self, name)
            if value is None:
                value = counts_from_history(self.loss_history)
            setattr(self, name, _counts(value, n, name))

    @classmethod
    def from_run(cls, spec: FitSpec, outcome: LoopOutcome, *, seconds: float,
                 trainer: Any = None) -> TrainingResults:
        """The results of one round of ``spec`` trained in this process."""
        import pandas as pd

        names = list(spec.parameters)
        status = np.asarray(outcome.status)
        final_loss = np.where(np.isin(status, FAILED), np.nan, outcome.final_loss)
        meta = dict(model=spec.model.id, model_fingerprint=spec.model.fingerprint(),
                    backend=spec.backend, optim_space=spec.optim_space,
                    n_iter=int(outcome.losses.shape[1]), seconds=float(seconds),
                    solver=repr(spec.solver), adjoint=repr(spec.adjoint))
        return cls(parameters=pd.DataFrame(outcome.final, columns=names),
                   initial_parameters=pd.DataFrame(outcome.initial, columns=names),
                   loss_history=np.asarray(outcome.losses, dtype=float),
                   status=[FIT_STATUS.get(int(s), "failed") for s in status],
                   final_loss=np.asarray(final_loss, dtype=float),
                   restarts=np.asarray(outcome.restarts), meta=meta, _trainer=trainer,
                   iterations=np.asarray(outcome.iterations),
                   evaluations=np.asarray(outcome.evaluations))

    # -- the seed's view ------------------------------------------------------------
    def __iter__(self):
        """``optimized_parameters, loss_per_iteration = results`` as in the seed:
        ``{init: {name: value}}`` and an (inits, iterations) array."""
        yield self.optimized_parameters
        yield self.loss_history

    @property
    def optimized_parameters(self) -> dict[int, dict[str, float]]:
        return {i: {k: float(v) for k, v in row.items()}
                for i, row in self.parameters.iterrows()}

    # -- summaries --------------------------------------------------------------------
    @property
    def best_index(self) -> int:
        """Index of the initialisation with the lowest final loss."""
        fl = np.where(np.isfinite(self.final_loss), self.final_loss, np.inf)
        return int(np.argmin(fl))

    @property
    def best_loss(self) -> float:
        return float(self.final_loss[self.best_index])

    @property
    def best_parameters(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.parameters.iloc[self.best_index].items()}

    def summary(self, top: int | None = 10):
        """A table of the starts, best first (failed ones last): final loss, status,
        iterations, evaluations, restarts (when known) and the final parameters."""
        import pandas as pd

        df = pd.DataFrame({"final_loss": self.final_loss, "status": self.status,
                           "iterations": self.iterations, "evaluations": self.evaluations})
        if self.restarts is not None:
            df["restarts"] = self.restarts
        df = pd.concat([df, self.parameters], axis=1)
        df.index.name = "init"
        df = df.sort_values("final_loss", na_position="last")
        return df.head(top) if top else df

    def status_counts(self) -> dict[str, int]:
        """How many starts ended with each kind of status: ``{"ok": ..., "converged": ...,
        "max_iterations": ..., "failed": ...}``."""
        kinds = [status_kind(s) for s in self.status]
        return {k: kinds.count(k) for k in STATUS_KINDS}

    def __repr__(self) -> str:
        counts = self.status_counts()
        # the kinds of status that occur; "failed" always
        shown = ", ".join(f"{k}={v}" for k, v in counts.items() if v or k == "failed")
        return (f"TrainingResults(inits={len(self.status)}, {shown}, "
                f"iterations={self.loss_history.shape[1]}, best_loss={self.best_loss:.4g})")

    # -- rounds ---------------------------------------------------------------------------
    def join(self, later: TrainingResults) -> TrainingResults:
        """This round followed by ``later`` (same starts): loss histories concatenated,
        iterations, evaluations and restarts summed; the status, final parameters and final
        loss are the later round's."""
        if later.loss_history.shape[0] != self.loss_history.shape[0]:
            raise ValueError(f"cannot join results of {self.loss_history.shape[0]} and "
                             f"{later.loss_history.shape[0]} initialisations.")
        meta = dict(later.meta)
        meta["n_iter"] = int(self.loss_history.shape[1] + later.loss_history.shape[1])
        meta["seconds"] = float(self.meta.get("seconds", 0) + later.meta.get("seconds", 0))
        restarts = later.restarts
        if self.restarts is not None and later.restarts is not None:
            restarts = self.restarts + later.restarts
        return replace(later, initial_parameters=self.initial_parameters, restarts=restarts,
                       loss_history=np.concatenate([self.loss_history, later.loss_history], 1),
                       iterations=self.iterations + later.iterations,
                       evaluations=self.evaluations + later.evaluations, meta=meta)

    # -- save / load ----------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write the results to ``folder`` (CSV tables and JSON) and return its path."""
        import pandas as pd

        folder = Path(folder)
        check_output_folder(folder, SAVED_FILES)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create the results folder {folder}: {exc}. Give a "
                            "folder in a place you can write to.") from exc
        self.parameters.to_csv(folder / "parameters.csv", index_label="init")
        self.initial_parameters.to_csv(folder / "initial_parameters.csv", index_label="init")
        pd.DataFrame(self.loss_history).to_csv(folder / "loss_history.csv", index_label="init")
        self.summary(top=None).to_csv(folder / "summary.csv")
        info = dict(self.meta, status=self.status, final_loss=[_num(x) for x in self.final_loss],
                    restarts=None if self.restarts is None else self.restarts.tolist(),
                    iterations=self.iterations.tolist(), evaluations=self.evaluations.tolist(),
                    best_index=self.best_index, best_parameters=self.best_parameters)
        (folder / "results.json").write_text(json.dumps(info, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> TrainingResults:
        """Read results written by :meth:`save`. Every file is checked before it is
        trusted: ``results.json`` must be whole JSON with the keys :meth:`save` writes,
        and every table must hold one row per start (as many as ``results.json`` has
        statuses), be whole (no row cut short) and hold numbers; ``iterations`` and
        ``evaluations`` must be lists of non-negative integers, one per start; a
        :class:`~kinabs.DataError` names the file that is wrong. Folders written before
        iterations and evaluations were recorded load with both derived from the loss
        history (its finite entries per start)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"results folder {folder} not found (or not a folder); give the "
                            "folder that TrainingResults.save wrote.")
        path = folder / "results.json"
        try:
            info = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{path} not found: {folder} is not a results folder written by "
                            "TrainingResults.save.") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise DataError(f"{path} is damaged (cut short or edited?): it cannot be read as "
                            f"JSON ({exc}). Save the results again.") from None
        if not isinstance(info, dict):
            raise DataError(f"{path} holds a JSON {type(info).__name__}, expected an object "
                            "as written by TrainingResults.save.")
        missing = [k for k in ("status", "final_loss") if k not in info]
        if missing:
            raise DataError(f"{path} lacks the key(s) {missing} that TrainingResults.save "
                            "writes; the file is damaged or not kinabs results.")
        status, final_loss, restarts = info.pop("status"), info.pop("final_loss"), \
            info.pop("restarts", None)
        if not isinstance(status, list) or not all(isinstance(x, str) for x in status):
            raise DataError(f"{path}: 'status' must be a list of strings; got "
                            f"{type(status).__name__}.")
        n = len(status)
        for key, value in (("final_loss", final_loss), ("restarts", restarts)):
            if value is None and key == "restarts":
                continue
            if not isinstance(value, list) or len(value) != n or not all(
                    x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))
                    for x in value):
                got = f"{len(value)} entries" if isinstance(value, list) else \
                    type(value).__name__
                raise DataError(f"{path}: {key!r} must be a list of {n} numbers (one per "
                                f"start, as 'status' has); got {got}.")
        counts = {key: info.pop(key, None) for key in ("iterations", "evaluations")}
        if (counts["iterations"] is None) != (counts["evaluations"] is None):
            have, lack = ("iterations", "evaluations") if counts["evaluations"] is None \
                else ("evaluations", "iterations")
            raise DataError(f"{path} has {have!r} but not {lack!r}; TrainingResults.save "
                            "writes both (folders from before either was recorded have "
                            "neither). The file is damaged or edited; save the results again.")
        for key, value in counts.items():
            if value is None:
                continue
            if not isinstance(value, list) or len(value) != n or not all(
                    isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in value):
                got = f"{len(value)} entries" if isinstance(value, list) and len(value) != n \
                    else f"{_short(value)}"
                raise DataError(f"{path}: {key!r} must be a list of {n} non-negative integers "
                                f"(one per start, as 'status' has); got {got}.")
        for key in ("best_index", "best_parameters"):
            info.pop(key, None)
        parameters = _read_table(folder / "parameters.csv", n)
        initial = _read_table(folder / "initial_parameters.csv", n)
        if list(initial.columns) != list(parameters.columns):
            raise DataError(
                f"{folder / 'initial_parameters.csv'} has the columns "
                f"{list(initial.columns)[:10]}, {folder / 'parameters.csv'} has "
                f"{list(parameters.columns)[:10]}: both must name the fitted parameters. "
                "Save the results again.")
        history = _read_table(folder / "loss_history.csv", n)
        n_iter = info.get("n_iter")
        if isinstance(n_iter, int) and history.shape[1] != n_iter:
            raise DataError(f"{folder / 'loss_history.csv'} has {history.shape[1]} iteration "
                            f"columns; {path} says n_iter = {n_iter}. The file is cut short or "
                            "edited; save the results again.")
        return cls(parameters=parameters, initial_parameters=initial,
                   loss_history=history.to_numpy(dtype=float), status=status,
                   final_loss=np.asarray([np.nan if x is None else x for x in final_loss],
                                         dtype=float),
                   restarts=None if restarts is None else np.asarray(restarts), meta=info,
                   iterations=counts["iterations"], evaluations=counts["evaluations"])

    # -- plots ------------------------------------------------------------------------------
    def plot_loss(self, path: str | Path | None = None, *, ax: Any = None):
        """Loss per iteration of every initialisation on a log scale (PNG if ``path``)."""
        return plots.plot_loss(self, path=path, ax=ax)

    def plot_fit(self, path: str | Path | None = None, *, model: Any = None, data: Any = None,
                 index: int | None = None):
        """Data points against the simulated curves of the best fit (or start ``index``)."""
        return plots.plot_fit(self, path=path, model=model, data=data, index=index)

    def plot_waterfall(self, path: str | Path | None = None, *, ax: Any = None):
        """The multi-start waterfall: the final losses sorted ascending against their rank
        on a log scale, coloured by status (converged, max_iterations, ok); a dotted line
        marks the best loss. Failed starts have no final loss: the title counts them, and
        how many starts end within 1e-6 (relative) of the best loss, the sign of a fit
        that many starts find. Writes a PNG if ``path``; returns the figure.

        Example:
            >>> import numpy as np, pandas as pd, kinabs
            >>> r = kinabs.TrainingResults(parameters=pd.DataFrame({"k": [1.0, 2.0, 3.0]}),
            ...     initial_parameters=pd.DataFrame({"k": [0.5, 3.0, 9.0]}),
            ...     loss_history=np.array([[1.0, 0.1], [2.0, 0.1], [3.0, np.nan]]),
            ...     status=["converged", "max_iterations", "failed: solver error"],
            ...     final_loss=np.array([0.1, 0.1 + 1e-9, np.nan]))
            >>> fig = r.plot_waterfall()
            >>> fig.axes[0].get_title()
            '2 of 3 starts within 1e-6 (relative) of the best loss; 1 failed'
            >>> import matplotlib.pyplot as plt; plt.close(fig)
        """
        return plots.plot_waterfall(self, path=path, ax=ax)


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _counts(value: Any, n: int, name: str) -> np.ndarray:
    """``value`` as an (n,) int64 array of non-negative whole numbers (DataError if not)."""
    arr = np.asarray(value)
    ok = arr.shape == (n,) and (arr.dtype.kind in "iu" or (
        arr.dtype.kind == "f" and bool(np.all(np.isfinite(arr) & (arr == np.round(arr))))))
    if not ok or (arr.size and arr.min() < 0):
        raise DataError(f"{name} must be {n} non-negative whole numbers, one per start; got "
                        f"{_short(value)} (shape {arr.shape}).")
    return arr.astype(np.int64)


#: The files :meth:`TrainingResults.save` writes.
SAVED_FILES = ("parameters.csv", "initial_parameters.csv", "loss_history.csv",
               "summary.csv", "results.json")


def check_output_folder(folder: str | Path, files: tuple[str, ...] = (), *,
                        what: str = "results folder") -> Path:
    """Check, without writing anything, that ``folder`` can take ``files``: it is a
    folder (or can be made one: its nearest existing parent is a writable folder) and
    none of ``files`` in it is a folder or a file that cannot be replaced. Raises
    :class:`~kinabs.DataError` naming the path; call it before hours of training."""
    import os

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"the {what} {folder} is a file, not a folder; give a folder path "
                        f"(it will hold {', '.join(files) or 'the results'}), or move the "
                        "file away.")
    parent = folder
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise DataError(f"the {what} {folder} cannot be created: {parent} is a file, not a "
                        "folder. Give another path.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(f"the {what} {folder} cannot be written: {parent} is not writable "
                        "by you. Give a folder in a place you can write to.")
    for name in files:
        target = folder / name
        if target.is_dir():
            raise DataError(f"{target} is a folder, so the {what} cannot hold the file "
                            f"{name}; move it away or give another {what}.")
        if target.exists() and not os.access(target, os.W_OK):
            raise DataError(f"{target} exists and is not writable, so it cannot be "
                            f"replaced; make it writable or give another {what}.")
    return folder


def _read_table(path: Path, n: int):
    """A table written by :meth:`TrainingResults.save`, checked: whole (it ends with a line
    break and every row has the header's fields), ``n`` rows indexed 0..n-1, numbers."""
    import csv
    import io

    import pandas as pd

    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"{path} not found; the results folder is incomplete. Save the "
                        "results again.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} cannot be read: {exc}.") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise DataError(f"{path} is empty; expected a header and {n} rows. Save the results "
                        "again.")
    if not text.endswith("\n"):
        raise DataError(f"{path} is cut short: its last line (row {len(rows) - 1}) has no line "
                        "break. Save the results again.")
    for i, row in enumerate(rows[1:], start=1):
        if len(row) != len(rows[0]):
            raise DataError(f"{path}: row {i} has {len(row)} fields, the header has "
                            f"{len(rows[0])}; the file is cut short or edited. Save the "
                            "results again.")
    if len(rows) - 1 != n:
        raise DataError(f"{path} has {len(rows) - 1} rows; expected {n}, one per start (as "
                        f"{path.parent / 'results.json'} has statuses). The file is cut short "
                        "or edited; save the results again.")
    exact = {} if pd.__version__ >= "3" else {"float_precision": "round_trip"}
    df = pd.read_csv(io.StringIO(text), index_col=0, **exact)
    if list(df.index) != list(range(n)):
        raise DataError(f"{path}: its first column must number the starts 0 to {n - 1}; got "
                        f"{list(df.index)[:5]}.... Save the results again.")
    for j, column in enumerate(df.columns):
        values = pd.to_numeric(df[column], errors="coerce")
        bad = values.isna() & df[column].notna()
        if bad.any():
            row = int(np.argmax(bad.to_numpy()))
            raise DataError(f"{path}: row {row + 1}, column {j + 2} ({column!r}) holds "
                            f"{df[column].iloc[row]!r}, not a number.")
        df[column] = values.astype(float)
    return df
