"""The training loop over any :class:`~kinabs._problem.TrainingProgram`.

A program runs at most ``program.chunk`` iterations per call; between calls the loop
records the losses, replaces failed starts by fresh samples (when given a sampler),
updates the progress bar, and ends the round early once no start trains on: failed and
stopped starts record NaN losses, so the iterations left would only add NaN. The Trainer
runs a whole fit through it, an executor one chunk of starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kinabs._problem import CONVERGED, FAILED, MAX_ITERATIONS, TrainingProgram

__all__ = ["LoopOutcome", "run_loop", "progress_bar", "to_space", "from_space"]


def to_space(linear: np.ndarray, space: str) -> np.ndarray:
    """Linear parameter values to the optimisation space (log2 values in ``"log"``)."""
    return np.log2(linear) if space == "log" else linear


def from_space(theta: np.ndarray, space: str) -> np.ndarray:
    """Values of the optimisation space back to linear ones."""
    return np.exp2(theta) if space == "log" else theta


@dataclass(frozen=True)
class LoopOutcome:
    """The arrays :class:`kinabs.TrainingResults` is made of (one row per start)."""

    initial: np.ndarray  # (N, R) linear starts, resampled ones replaced
    final: np.ndarray  # (N, R) linear
    losses: np.ndarray  # (N, n_iter), NaN where a start did not train
    status: np.ndarray  # (N,) codes of kinabs._problem.FIT_STATUS
    final_loss: np.ndarray  # (N,)
    restarts: np.ndarray  # (N,) how often each start was resampled
    iterations: np.ndarray  # (N,) steps taken this round (accepted steps)
    evaluations: np.ndarray  # (N,) evaluations of loss and derivative this round


def run_loop(program: TrainingProgram, start: Any, n_iter: int, *, space: str,
             state: Any = None, resample: Callable[[int], np.ndarray] | None = None,
             bar: Any = None) -> tuple[Any, LoopOutcome]:
    """Train the rows of ``start`` (linear values) for ``n_iter`` iterations.

    ``state`` goes on from an earlier round of the same program (``start`` then only
    names the starts in the outcome). ``resample(k)`` returns ``k`` fresh starts (linear)
    to replace the starts that failed in a chunk. ``bar`` is a tqdm-like bar (see
    :func:`progress_bar`), closed at the end. Returns the program's final state and the
    :class:`LoopOutcome`.
    """
    initial = np.array(start, dtype=np.float64)
    if state is None:
        state = program.init(to_space(initial, space))
    counted = program.counts(state)
    losses = np.full((initial.shape[0], n_iter), np.nan)
    restarts = np.zeros(initial.shape[0], dtype=int)
    done = 0
    while done < n_iter:
        n = min(program.chunk, n_iter - done)
        state, chunk_losses = program.run(state, n)
        losses[:, done:done + n] = chunk_losses
        done += n
        if resample is not None:
            state = _replace_failed(program, state, resample, initial, restarts, space)
        ended = done < n_iter and not _trains_on(program, state)
        if bar is not None:
            seen = losses[:, :done]
            best = np.nanmin(seen) if np.isfinite(seen).any() else float("nan")
            note = {"ended": "every start stopped or failed"} if ended else {}
            status = np.asarray(program.status(state))
            if program.tests_convergence:
                note = {"converged": f"{int(np.sum(status == CONVERGED))}/{status.size}",
                        **note}
            bar.update(n)
            bar.set_postfix(best_loss=f"{best:.3e}", **note)
        if ended:
            break
    if bar is not None:
        bar.close()
    status = np.array(program.status(state))
    if program.tests_convergence:
        status[status == 0] = MAX_ITERATIONS
    after = program.counts(state)
    if after is None:
        iterations = evaluations = np.sum(np.isfinite(losses), axis=1)
    else:
        # a resampled start counts from its reset
        iterations, evaluations = (np.where(restarts > 0, a, np.asarray(a) - np.asarray(b))
                                   for a, b in zip(after, counted))
    return state, LoopOutcome(
        initial=initial, final=from_space(program.theta(state), space), losses=losses,
        status=status, final_loss=program.final_loss(state), restarts=restarts,
        iterations=iterations.astype(np.int64), evaluations=evaluations.astype(np.int64))


def _trains_on(program: TrainingProgram, state: Any) -> bool:
    live = (np.asarray(program.status(state)) == 0) & ~np.asarray(program.stopped(state))
    return bool(live.any())


def _replace_failed(program: TrainingProgram, state: Any, resample: Callable[[int], Any],
                    initial: np.ndarray, restarts: np.ndarray, space: str) -> Any:
    failed = np.isin(np.asarray(program.status(state)), FAILED)
    if not failed.any():
        return state
    fresh = np.asarray(resample(int(failed.sum())), dtype=np.float64)
    theta = np.array(program.theta(state), dtype=np.float64)
    theta[failed] = to_space(fresh, space)
    initial[failed] = fresh
    restarts[failed] += 1
    return program.reset(state, failed, theta)


def progress_bar(total: int, enabled: bool, *, desc: str = "training", unit: str = "it",
                 initial: int = 0):
    """A tqdm bar (``None`` when not ``enabled``)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=True)
