"""The training loop on a stand-in program (pure numpy: no backend is imported): chunks,
early end once no start trains on, resampling of failed starts."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from kinabs._fit.loop import run_loop
from kinabs._problem import TrainingProgram


@dataclass(frozen=True)
class _State:
    theta: np.ndarray
    status: np.ndarray
    stopped: np.ndarray


class _Program(TrainingProgram):
    """Loss = sum(theta) per start, theta halves each iteration; a start whose first
    parameter is negative fails in its first chunk, one below ``stop_below`` stops."""

    chunk = 4

    def __init__(self, stop_below=-np.inf):
        self.stop_below, self.calls = stop_below, []

    def init(self, theta):
        n = len(theta)
        return _State(np.array(theta, float), np.zeros(n, int), np.zeros(n, bool))

    def run(self, state, n_iter):
        self.calls.append(n_iter)
        theta, status, stopped = state.theta.copy(), state.status.copy(), state.stopped.copy()
        status[theta[:, 0] < 0] = 1
        losses = np.full((len(theta), n_iter), np.nan)
        for j in range(n_iter):
            live = (status == 0) & ~stopped
            losses[live, j] = theta[live].sum(axis=1)
            stopped |= live & (losses[:, j] < self.stop_below)
            theta[live & ~stopped] /= 2
        return _State(theta, status, stopped), losses

    def reset(self, state, mask, theta):
        return replace(state, theta=np.where(mask[:, None], theta, state.theta),
                       status=np.where(mask, 0, state.status))

    def theta(self, state):
        return state.theta

    def status(self, state):
        return state.status

    def stopped(self, state):
        return state.stopped

    def final_loss(self, state):
        return np.where(state.status == 0, state.theta.sum(axis=1), np.nan)

    def value_and_grad(self, theta):
        raise NotImplementedError


def test_runs_in_chunks_and_records_every_loss():
    program = _Program()
    _, out = run_loop(program, [[1.0, 1.0], [2.0, 2.0]], 10, space="linear")
    assert program.calls == [4, 4, 2]
    np.testing.assert_array_equal(out.losses[0], 2.0 / 2 ** np.arange(10))
    np.testing.assert_array_equal(out.final, [[2 ** -10] * 2, [2 ** -9] * 2])
    assert out.status.tolist() == [0, 0] and out.restarts.tolist() == [0, 0]


def test_ends_early_once_every_start_failed_or_stopped():
    program = _Program(stop_below=0.1)
    _, out = run_loop(program, [[-1.0, 1.0], [1.0, 1.0]], 100, space="linear")
    assert program.calls == [4, 4]  # the first start fails at once, the second stops at 6
    assert out.losses.shape == (2, 100) and out.status.tolist() == [1, 0]
    assert np.isnan(out.losses[0]).all() and np.isnan(out.losses[1, 6:]).all()
    np.testing.assert_array_equal(out.losses[1, :6], 2.0 / 2 ** np.arange(6))


def test_failed_starts_are_replaced_by_fresh_samples():
    program, asked = _Program(), []

    def sampler(k):
        asked.append(k)
        return np.full((k, 2), 3.0)

    _, out = run_loop(program, [[-1.0, 1.0], [1.0, 1.0]], 8, space="linear",
                      resample=sampler)
    assert asked == [1] and out.restarts.tolist() == [1, 0]
    np.testing.assert_array_equal(out.initial, [[3.0, 3.0], [1.0, 1.0]])
    assert np.isnan(out.losses[0, :4]).all()
    np.testing.assert_array_equal(out.losses[0, 4:], 6.0 / 2 ** np.arange(4))
    assert out.status.tolist() == [0, 0]


def test_log_space_trains_log2_values_and_reports_linear_ones():
    _, out = run_loop(_Program(), [[4.0, 8.0]], 2, space="log")
    np.testing.assert_array_equal(out.losses, [[5.0, 2.5]])
    np.testing.assert_array_equal(out.initial, [[4.0, 8.0]])
    np.testing.assert_allclose(out.final, [[2 ** 0.5, 2 ** 0.75]])
