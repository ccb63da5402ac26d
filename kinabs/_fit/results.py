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

from kinabs._fit import plots
from kinabs._fit.loop import LoopOutcome
from kinabs._fit.spec import FitSpec
from kinabs._problem import FIT_STATUS

__all__ = ["TrainingResults"]


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
        folder.mkdir(parents=True, exist_ok=True)
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
        """Read results written by :meth:`save`."""
        import pandas as pd

        folder = Path(folder)
        info = json.loads((folder / "results.json").read_text())
        losses = pd.read_csv(folder / "loss_history.csv", index_col=0).to_numpy(dtype=float)
        restarts = info.pop("restarts", None)
        status = info.pop("status")
        final_loss = np.asarray([np.nan if x is None else x for x in info.pop("final_loss")])
        for key in ("best_index", "best_parameters"):
            info.pop(key, None)
        return cls(parameters=pd.read_csv(folder / "parameters.csv", index_col=0),
                   initial_parameters=pd.read_csv(folder / "initial_parameters.csv",
                                                  index_col=0),
                   loss_history=losses, status=status, final_loss=final_loss,
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
