"""What a fit returns: tables, save/load, plots.

:class:`TrainingResults` unpacks like the seed's return value
(``optimized_parameters, loss_per_iteration = trainer.train()``) and carries the same
data as tables: initial and final parameters per initialisation, the loss history
(inits x iterations), the status of each initialisation and the best fit.
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
from kinabs._problem import FIT_STATUS

__all__ = ["TrainingResults", "check_output_folder"]


@dataclass
class TrainingResults:
    """Results of :meth:`kinabs.Trainer.train`, one row per start: initial and final
    parameters (linear values), the loss history (NaN after a start stopped or failed),
    the status and the final loss; ``meta`` says what was fitted and how.

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
    _state: Any = field(default=None, repr=False)
    _program: Any = field(default=None, repr=False)
    _trainer: Any = field(default=None, repr=False)

    @classmethod
    def from_run(cls, spec: FitSpec, outcome: LoopOutcome, *, seconds: float,
                 trainer: Any = None) -> TrainingResults:
        """The results of one round of ``spec`` trained in this process."""
        import pandas as pd

        names = list(spec.parameters)
        status = np.asarray(outcome.status)
        final_loss = np.where(status == 0, outcome.final_loss, np.nan)
        meta = dict(model=spec.model.id, model_fingerprint=spec.model.fingerprint(),
                    backend=spec.backend, optim_space=spec.optim_space,
                    n_iter=int(outcome.losses.shape[1]), seconds=float(seconds),
                    solver=repr(spec.solver), adjoint=repr(spec.adjoint))
        return cls(parameters=pd.DataFrame(outcome.final, columns=names),
                   initial_parameters=pd.DataFrame(outcome.initial, columns=names),
                   loss_history=np.asarray(outcome.losses, dtype=float),
                   status=[FIT_STATUS.get(int(s), "failed") for s in status],
                   final_loss=np.asarray(final_loss, dtype=float),
                   restarts=np.asarray(outcome.restarts), meta=meta, _trainer=trainer)

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
        """A table of the starts, best first: final loss, status, iterations run."""
        import pandas as pd

        ran = np.sum(np.isfinite(self.loss_history), axis=1)
        df = pd.DataFrame({"final_loss": self.final_loss, "status": self.status,
                           "iterations": ran})
        if self.restarts is not None:
            df["restarts"] = self.restarts
        df = pd.concat([df, self.parameters], axis=1)
        df.index.name = "init"
        df = df.sort_values("final_loss", na_position="last")
        return df.head(top) if top else df

    def __repr__(self) -> str:
        n_ok = sum(s == "ok" for s in self.status)
        return (f"TrainingResults(inits={len(self.status)}, ok={n_ok}, "
                f"iterations={self.loss_history.shape[1]}, best_loss={self.best_loss:.4g})")

    # -- rounds ---------------------------------------------------------------------------
    def join(self, later: TrainingResults) -> TrainingResults:
        """This round followed by ``later`` (same starts): loss histories concatenated."""
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
                       meta=meta)

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
                    best_index=self.best_index, best_parameters=self.best_parameters)
        (folder / "results.json").write_text(json.dumps(info, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> TrainingResults:
        """Read results written by :meth:`save`. Every file is checked before it is
        trusted: ``results.json`` must be whole JSON with the keys :meth:`save` writes,
        and every table must hold one row per start (as many as ``results.json`` has
        statuses), be whole (no row cut short) and hold numbers; a
        :class:`~kinabs.DataError` names the file that is wrong."""
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
                   restarts=None if restarts is None else np.asarray(restarts), meta=info)

    # -- plots ------------------------------------------------------------------------------
    def plot_loss(self, path: str | Path | None = None, *, ax: Any = None):
        """Loss per iteration of every initialisation on a log scale (PNG if ``path``)."""
        return plots.plot_loss(self, path=path, ax=ax)

    def plot_fit(self, path: str | Path | None = None, *, model: Any = None, data: Any = None,
                 index: int | None = None):
        """Data points against the simulated curves of the best fit (or start ``index``)."""
        return plots.plot_fit(self, path=path, model=model, data=data, index=index)


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


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
