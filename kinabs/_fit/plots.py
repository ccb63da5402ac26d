"""Plots of fits (matplotlib, Agg): loss curves, data against the best fit and the
multi-start waterfall of final losses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kinabs._fit.data import TrainingData
from kinabs._problem import status_kind
from kinabs._simulate import simulate

__all__ = ["plot_loss", "plot_fit", "plot_waterfall"]

#: Colours of the statuses of starts that did not fail, in the waterfall.
STATUS_COLOURS = {"converged": "tab:green", "max_iterations": "tab:orange", "ok": "tab:blue"}
#: Relative distance to the best loss within which a start counts as finding it.
BEST_RTOL = 1e-6


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        try:
            matplotlib.use("Agg", force=False)
        except Exception:  # noqa: BLE001 - an interactive backend already in use is fine
            pass
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path | None) -> None:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")


def plot_loss(results: Any, *, path: str | Path | None = None, ax: Any = None):
    plt = _pyplot()
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.5))

    hist = results.loss_history
    for i in range(hist.shape[0]):
        style = ":" if status_kind(results.status[i]) == "failed" else "-"
        ax.plot(np.arange(1, hist.shape[1] + 1), hist[i], style, lw=1, label=f"init {i}")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(f"loss per iteration ({hist.shape[0]} initialisations)")
    if hist.shape[0] <= 10:
        ax.legend(fontsize=7, frameon=False)
    fig = fig or ax.figure
    _save(fig, path)
    return fig


def plot_fit(results: Any, *, path: str | Path | None = None, model: Any = None,
             data: Any = None, index: int | None = None):
    trainer = results._trainer
    model = model if model is not None else (trainer.model if trainer else None)
    data = data if data is not None else (trainer.data if trainer else None)
    if model is None or data is None:
        raise ValueError("plot_fit needs the model and data: pass model= and data= for "
                         "results loaded from disk.")
    data = TrainingData.coerce(data)
    i = results.best_index if index is None else index
    params = {k: float(v) for k, v in results.parameters.iloc[i].items()}
    backend = trainer.backend_name if trainer else None
    plt = _pyplot()
    n = len(data.experiments)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.5), squeeze=False)
    for ax, e in zip(axes[0], data.experiments):
        ts = np.linspace(e.times[0], e.times[-1], 200)
        sim = simulate(model, ts, parameters=params, initial=e.initial, t0=e.times[0],
                       outputs=list(e.species), backend=backend, on_failure="nan")
        for j, s in enumerate(e.species):
            line, = ax.plot(ts, sim.values[0][:, j], lw=1.2, label=s)
            ax.plot(e.times, e.values[:, j], "o", ms=3, color=line.get_color())
        ax.set_xlabel("time")
        ax.set_ylabel("concentration")
        ax.set_title(f"{e.name or 'data'}: fit of init {i} (loss "
                     f"{results.final_loss[i]:.3g})")
        if len(e.species) <= 12:
            ax.legend(fontsize=7, frameon=False)
    _save(fig, path)
    return fig


def plot_waterfall(results: Any, *, path: str | Path | None = None, ax: Any = None):
    """Final losses sorted ascending against their rank (1 = best), log y (linear when a
    loss is not positive), one marker series per status and a dotted line at the best
    loss; failed starts (and any other start without a finite final loss) are left out
    and counted in the title."""
    from matplotlib.ticker import MaxNLocator


    plt = _pyplot()
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.5))
    loss = np.asarray(results.final_loss, dtype=float)
    kinds = np.array([status_kind(s) for s in results.status], dtype=object)
    shown = np.isfinite(loss) & (kinds != "failed")
    order = np.flatnonzero(shown)[np.argsort(loss[shown], kind="stable")]
    rank = np.empty(loss.size, dtype=int)
    rank[order] = np.arange(1, order.size + 1)
    for kind, colour in STATUS_COLOURS.items():
        rows = order[kinds[order] == kind]
        if rows.size:
            ax.plot(rank[rows], loss[rows], "o", ms=4, color=colour, linestyle="none",
                    label=f"{kind} ({rows.size})")
    n_failed = int(np.sum(kinds == "failed"))
    n_missing = int(np.sum(~shown)) - n_failed  # did not fail, yet have no finite loss
    notes = [f"{n_failed} failed"] if n_failed else []
    if n_missing:
        notes.append(f"{n_missing} without a final loss")
    if order.size:
        best = float(loss[order[0]])
        within = int(np.sum(loss[order] - best <= BEST_RTOL * abs(best)))
        ax.axhline(best, color="0.4", lw=0.8, linestyle=":", label=f"best {best:.4g}")
        rtol = f"{BEST_RTOL:.0e}".replace("e-0", "e-")  # 1e-6, not 1e-06
        title = f"{within} of {loss.size} starts within {rtol} (relative) of the best loss"
        ax.set_xlim(0.5, order.size + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        title = f"no start of {loss.size} has a final loss"
    ax.set_title("; ".join([title, *notes]), fontsize=9)
    # a log axis unless a loss is 0 or negative (a perfect fit, a custom loss such as a
    # negative log-likelihood): those would vanish from it
    ax.set_yscale("log" if not order.size or loss[order[0]] > 0 else "linear")
    ax.set_xlabel("rank of start (by final loss)")
    ax.set_ylabel("final loss")
    if order.size:
        ax.legend(fontsize=7, frameon=False)
    fig = fig or ax.figure
    _save(fig, path)
    return fig
