"""TrainingResults: the seed's unpacking, summaries, statuses of methods with convergence
tests, iterations and evaluations, joined rounds, save/load (also of older folders), the
loss plot and the waterfall (pure numpy/pandas/matplotlib: no backend is imported)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import kinabs
from kinabs._fit.results import TrainingResults

PNG = b"\x89PNG\r\n\x1a\n"


def _results(n_iter=4, restarts=(0, 2, 0)):
    params = pd.DataFrame({"k1": [1.0, 2.0, 3.5], "k2": [0.1, 0.2, 1e-9]})
    initial = pd.DataFrame({"k1": [0.5, 1.5, 2.5], "k2": [0.3, 0.4, 0.5]})
    hist = np.array([
        [4.0, 3.0, 2.0, 1.0],
        [5.0, np.nan, np.nan, np.nan],  # failed after one iteration
        [3.0, 1.0, 0.1, np.nan],  # stopped at a threshold
    ])[:, :n_iter]
    return TrainingResults(
        parameters=params, initial_parameters=initial, loss_history=hist,
        status=["ok", "failed: max_steps_reached", "ok"],
        final_loss=np.array([0.9, np.nan, 0.05]),
        restarts=None if restarts is None else np.asarray(restarts),
        meta={"model": "m", "optim_space": "log", "n_iter": n_iter, "seconds": 1.5},
    )


def test_unpacks_as_the_seed():
    r = _results()
    optimized_parameters, loss_per_iteration = r
    assert optimized_parameters == {0: {"k1": 1.0, "k2": 0.1}, 1: {"k1": 2.0, "k2": 0.2},
                                    2: {"k1": 3.5, "k2": 1e-9}}
    assert all(isinstance(v, float) for d in optimized_parameters.values() for v in d.values())
    assert loss_per_iteration is r.loss_history
    # the seed's next round: the optimised sets as a table
    back = pd.DataFrame(optimized_parameters).T
    pd.testing.assert_frame_equal(back, r.parameters)


def test_best_ignores_failed_starts():
    r = _results()
    assert r.best_index == 2
    assert r.best_loss == 0.05
    assert r.best_parameters == {"k1": 3.5, "k2": 1e-9}
    assert "inits=3" in repr(r) and "ok=2" in repr(r) and "best_loss=0.05" in repr(r)


def test_summary_sorted_best_first_with_failures_last():
    s = _results().summary()
    assert list(s.index) == [2, 0, 1]
    assert s.index.name == "init"
    assert list(s["status"]) == ["ok", "ok", "failed: max_steps_reached"]
    assert list(s["iterations"]) == [3, 4, 1]
    assert list(s["restarts"]) == [0, 0, 2]
    assert s.loc[0, "k1"] == 1.0 and s.loc[2, "k2"] == 1e-9
    assert np.isnan(s.loc[1, "final_loss"])
    assert len(_results().summary(top=1)) == 1
    assert "restarts" not in _results(restarts=None).summary().columns


def test_join_concatenates_rounds():
    first, later = _results(n_iter=4), _results(n_iter=2)
    later.meta["seconds"] = 0.5
    later.initial_parameters = first.parameters.copy()
    joined = first.join(later)
    assert joined.loss_history.shape == (3, 6)
    np.testing.assert_array_equal(joined.loss_history[:, :4], first.loss_history)
    np.testing.assert_array_equal(joined.loss_history[:, 4:], later.loss_history)
    # the starts are those of the first round, the results those of the later one
    pd.testing.assert_frame_equal(joined.initial_parameters, first.initial_parameters)
    pd.testing.assert_frame_equal(joined.parameters, later.parameters)
    assert joined.meta["n_iter"] == 6 and joined.meta["seconds"] == pytest.approx(2.0)
    assert first.loss_history.shape == (3, 4)  # not modified


def test_join_rejects_different_numbers_of_starts():
    r = _results()
    other = TrainingResults(parameters=r.parameters.iloc[:2], initial_parameters=r.parameters
                            .iloc[:2], loss_history=np.ones((2, 3)), status=["ok", "ok"],
                            final_loss=np.ones(2))
    with pytest.raises(ValueError, match="3 and 2"):
        r.join(other)


def test_join_adds_restarts_of_both_rounds():
    first, later = _results(restarts=(0, 2, 0)), _results(restarts=(1, 0, 0))
    np.testing.assert_array_equal(first.join(later).restarts, [1, 2, 0])


@pytest.mark.parametrize("restarts", [(0, 2, 0), None])
def test_save_load_round_trip(tmp_path, restarts):
    r = _results(restarts=restarts)
    folder = r.save(tmp_path / "out" / "fit")
    assert folder == tmp_path / "out" / "fit"
    for name in ("parameters.csv", "initial_parameters.csv", "loss_history.csv",
                 "summary.csv", "results.json"):
        assert (folder / name).is_file(), name
    back = TrainingResults.load(folder)
    np.testing.assert_array_equal(back.parameters.to_numpy(), r.parameters.to_numpy())
    assert list(back.parameters.columns) == ["k1", "k2"]
    np.testing.assert_array_equal(back.initial_parameters.to_numpy(),
                                  r.initial_parameters.to_numpy())
    np.testing.assert_array_equal(back.loss_history, r.loss_history)  # NaNs in place
    np.testing.assert_array_equal(back.final_loss, r.final_loss)
    assert back.status == r.status
    if restarts is None:
        assert back.restarts is None
    else:
        np.testing.assert_array_equal(back.restarts, restarts)
    assert back.meta == r.meta
    assert back.best_index == r.best_index and back.best_parameters == r.best_parameters
    # the loaded results still unpack and summarise like the original
    opt, hist = back
    assert opt == r.optimized_parameters
    pd.testing.assert_frame_equal(back.summary().reset_index(drop=True),
                                  r.summary().reset_index(drop=True), check_dtype=False)


def test_save_keeps_full_precision(tmp_path):
    r = _results()
    r.parameters.loc[0, "k1"] = 1.0 / 3.0
    r.final_loss[0] = np.pi * 1e-17
    back = TrainingResults.load(r.save(tmp_path))
    assert back.parameters.loc[0, "k1"] == 1.0 / 3.0
    assert back.final_loss[0] == np.pi * 1e-17


def test_plot_loss_writes_png(tmp_path):
    r = _results()
    path = tmp_path / "plots" / "loss.png"
    fig = r.plot_loss(path)
    assert path.read_bytes()[:8] == PNG
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert len(ax.lines) == 3
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), r.loss_history[0])
    assert ax.lines[1].get_linestyle() == ":"  # failed start drawn dotted
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_plot_loss_on_given_axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    out = _results().plot_loss(ax=ax)
    assert out is fig and len(ax.lines) == 3
    plt.close(fig)


def test_plot_fit_of_loaded_results_needs_model_and_data(tmp_path):
    back = TrainingResults.load(_results().save(tmp_path))
    with pytest.raises(ValueError, match="model= and data="):
        back.plot_fit(tmp_path / "fit.png")


# -- statuses of methods with convergence tests, iterations and evaluations -------------
def _mixed():
    """Six starts of a method with convergence tests: two converged at the best loss (to
    1e-9 relative), one converged elsewhere, one out of iterations, one failed, and an
    "ok" start of a first-order round."""
    n = 6
    hist = np.full((n, 3), np.nan)
    hist[:, 0] = [9.0, 8.0, 7.0, 6.0, 5.0, 4.0]
    hist[[0, 1, 2, 3, 5], 1] = [1.0, 0.5, 0.3, 0.2, 0.1]
    return TrainingResults(
        parameters=pd.DataFrame({"k": np.arange(n, dtype=float)}),
        initial_parameters=pd.DataFrame({"k": np.arange(n, dtype=float) + 0.5}),
        loss_history=hist,
        status=["converged", "max_iterations", "converged", "ok", "failed: solver error",
                "converged"],
        final_loss=np.array([2.0, 0.5, 0.1 * (1 + 1e-9), 0.3, np.nan, 0.1]),
        iterations=np.array([7, 20, 5, 2, 1, 6]), evaluations=np.array([9, 31, 6, 2, 1, 8]),
        meta={"n_iter": 3, "seconds": 1.0})


def test_from_run_keeps_the_loss_of_every_start_that_did_not_fail():
    from types import SimpleNamespace

    from kinabs._fit.loop import LoopOutcome

    model = SimpleNamespace(id="m", fingerprint=lambda: "f")
    spec = SimpleNamespace(parameters=("k",), model=model, backend="jax", optim_space="log",
                           solver=None, adjoint=None)
    # codes: ok, converged, max_iterations, failed (nonfinite solution), failed (solver)
    outcome = LoopOutcome(
        initial=np.ones((5, 1)), final=np.full((5, 1), 2.0), losses=np.ones((5, 4)),
        status=np.array([0, 5, 6, 2, 3]), final_loss=np.array([0.1, 0.2, 0.3, 0.4, 0.5]),
        restarts=np.zeros(5, dtype=int), iterations=np.array([4, 3, 4, 1, 0]),
        evaluations=np.array([4, 5, 9, 2, 1]))
    r = TrainingResults.from_run(spec, outcome, seconds=1.0)
    assert r.status == ["ok", "converged", "max_iterations", "failed: nonfinite solution",
                        "failed: solver error"]
    np.testing.assert_array_equal(r.final_loss, [0.1, 0.2, 0.3, np.nan, np.nan])
    np.testing.assert_array_equal(r.iterations, [4, 3, 4, 1, 0])
    np.testing.assert_array_equal(r.evaluations, [4, 5, 9, 2, 1])
    assert r.iterations.dtype == np.int64 and r.best_index == 0


def test_iterations_default_to_the_finite_losses_of_each_start():
    r = _results()  # made without iterations and evaluations (first-order: one step each)
    np.testing.assert_array_equal(r.iterations, [4, 1, 3])
    np.testing.assert_array_equal(r.evaluations, [4, 1, 3])
    assert r.iterations.dtype == np.int64


@pytest.mark.parametrize("bad, text", [
    (np.array([1, 2]), r"shape \(2,\)"), (np.array([1, -1, 0]), "non-negative"),
    (np.array([1.5, 1, 0]), "whole numbers"), (np.array([np.nan, 1, 0]), "whole numbers")])
def test_bad_iterations_are_refused(bad, text):
    r = _results()
    with pytest.raises(kinabs.DataError, match=text):
        TrainingResults(parameters=r.parameters, initial_parameters=r.initial_parameters,
                        loss_history=r.loss_history, status=r.status, final_loss=r.final_loss,
                        evaluations=bad)


def test_summary_shows_status_iterations_and_evaluations_best_first():
    s = _mixed().summary(top=None)
    assert list(s.columns[:4]) == ["final_loss", "status", "iterations", "evaluations"]
    assert list(s.index) == [5, 2, 3, 1, 0, 4]  # converged starts keep their loss
    assert list(s["status"]) == ["converged", "converged", "ok", "max_iterations",
                                 "converged", "failed: solver error"]
    assert list(s["iterations"]) == [6, 5, 2, 20, 7, 1]
    assert list(s["evaluations"]) == [8, 6, 2, 31, 9, 1]


def test_status_counts_and_repr():
    r = _mixed()
    assert r.status_counts() == {"ok": 1, "converged": 3, "max_iterations": 1, "failed": 1}
    assert repr(r) == ("TrainingResults(inits=6, ok=1, converged=3, max_iterations=1, "
                       "failed=1, iterations=3, best_loss=0.1)")
    # kinds that do not occur are left out, "failed" is always shown
    assert repr(_results()) == ("TrainingResults(inits=3, ok=2, failed=1, iterations=4, "
                                "best_loss=0.05)")


def test_join_sums_iterations_and_evaluations_and_keeps_the_later_status():
    first = _mixed()
    later = _mixed()
    later.status = ["converged"] * 4 + ["failed: solver error", "max_iterations"]
    later.iterations = np.array([0, 3, 0, 4, 0, 9])
    later.evaluations = np.array([1, 4, 1, 4, 0, 12])
    joined = first.join(later)
    np.testing.assert_array_equal(joined.iterations, [7, 23, 5, 6, 1, 15])
    np.testing.assert_array_equal(joined.evaluations, [10, 35, 7, 6, 1, 20])
    assert joined.status == later.status
    np.testing.assert_array_equal(first.iterations, [7, 20, 5, 2, 1, 6])  # not modified


def test_save_load_round_trip_of_statuses_and_counts(tmp_path):
    r = _mixed()
    folder = r.save(tmp_path / "fit")
    info = json.loads((folder / "results.json").read_text())
    assert info["iterations"] == [7, 20, 5, 2, 1, 6]
    assert info["evaluations"] == [9, 31, 6, 2, 1, 8]
    back = TrainingResults.load(folder)
    assert back.status == r.status
    np.testing.assert_array_equal(back.iterations, r.iterations)
    np.testing.assert_array_equal(back.evaluations, r.evaluations)
    np.testing.assert_array_equal(back.final_loss, r.final_loss)
    assert back.iterations.dtype == np.int64
    summary = pd.read_csv(folder / "summary.csv", index_col=0)
    assert list(summary["evaluations"]) == [8, 6, 2, 31, 9, 1]


def test_load_of_a_folder_from_before_iterations_were_recorded(tmp_path):
    folder = _mixed().save(tmp_path)
    info = json.loads((folder / "results.json").read_text())
    del info["iterations"], info["evaluations"]
    (folder / "results.json").write_text(json.dumps(info))
    back = TrainingResults.load(folder)
    # derived from the loss history: its finite entries per start
    np.testing.assert_array_equal(back.iterations, [2, 2, 2, 2, 1, 2])
    np.testing.assert_array_equal(back.evaluations, [2, 2, 2, 2, 1, 2])
    assert "iterations" not in back.meta and "evaluations" not in back.meta


@pytest.mark.parametrize("change, text", [
    (dict(iterations=[1, 2]), r"'iterations' must be a list of 6 non-negative integers .*"
                              r"got 2 entries"),
    (dict(evaluations=[1, 2, 3, 4, 5, -6]), "'evaluations' must be a list of 6 non-negative"),
    (dict(iterations=[1, 2, 3, 4, 5, 6.5]), "'iterations' must be a list of 6"),
    (dict(iterations=[1, 2, 3, 4, 5, True]), "'iterations' must be a list of 6"),
    (dict(iterations="7"), "'iterations' must be a list of 6 non-negative integers"),
    (dict(evaluations=None), "has 'iterations' but not 'evaluations'"),
])
def test_load_checks_iterations_and_evaluations(tmp_path, change, text):
    folder = _mixed().save(tmp_path)
    info = json.loads((folder / "results.json").read_text())
    info.update(change)
    info = {k: v for k, v in info.items() if v is not None}
    (folder / "results.json").write_text(json.dumps(info))
    with pytest.raises(kinabs.DataError, match=text) as caught:
        TrainingResults.load(folder)
    assert str(folder / "results.json") in str(caught.value)


def test_plot_loss_draws_converged_starts_solid():
    import matplotlib.pyplot as plt

    fig = _mixed().plot_loss()
    styles = [line.get_linestyle() for line in fig.axes[0].lines]
    assert styles == ["-", "-", "-", "-", ":", "-"]
    plt.close(fig)


def _points(ax):
    """{label: (ranks, losses)} of the waterfall's marker series."""
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
            for line in ax.lines if line.get_marker() == "o"}


def test_plot_waterfall_sorts_final_losses_and_colours_them_by_status(tmp_path):
    import matplotlib.pyplot as plt

    r = _mixed()
    path = tmp_path / "plots" / "waterfall.png"
    fig = r.plot_waterfall(path)
    assert path.read_bytes()[:8] == PNG
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    points = _points(ax)
    # the failed start is left out: five points, ranks 1 to 5 in ascending loss
    assert points == {
        "converged (3)": ([1, 2, 5], [0.1, 0.1 * (1 + 1e-9), 2.0]),
        "max_iterations (1)": ([4], [0.5]),
        "ok (1)": ([3], [0.3]),
    }
    colours = {line.get_label(): line.get_color() for line in ax.lines}
    assert colours["converged (3)"] == "tab:green"
    assert colours["max_iterations (1)"] == "tab:orange"
    ranks = sorted(x for xs, _ in points.values() for x in xs)
    losses = [y for x, y in sorted((x, y) for xs, ys in points.values()
                                   for x, y in zip(xs, ys))]
    assert ranks == [1, 2, 3, 4, 5] and losses == sorted(losses)
    (best,) = [line for line in ax.lines if line.get_linestyle() == ":"]
    assert list(best.get_ydata()) == [0.1, 0.1] and best.get_label() == "best 0.1"
    assert ax.get_title() == "2 of 6 starts within 1e-6 (relative) of the best loss; 1 failed"
    plt.close(fig)


def test_plot_waterfall_on_given_axes_and_without_failures():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = _mixed()
    keep = [0, 1, 2, 3, 5]
    r = TrainingResults(parameters=r.parameters.iloc[keep], initial_parameters=r
                        .initial_parameters.iloc[keep], loss_history=r.loss_history[keep],
                        status=[r.status[i] for i in keep], final_loss=r.final_loss[keep])
    fig, ax = plt.subplots()
    assert r.plot_waterfall(ax=ax) is fig
    assert ax.get_title() == "2 of 5 starts within 1e-6 (relative) of the best loss"
    assert sum(len(xs) for xs, _ in _points(ax).values()) == 5
    plt.close(fig)


def test_plot_waterfall_of_every_start_failed_and_of_a_zero_loss():
    import matplotlib.pyplot as plt

    r = _results()
    r.status = ["failed: solver error"] * 3
    r.final_loss = np.full(3, np.nan)
    fig = r.plot_waterfall()
    assert fig.axes[0].get_title() == "no start of 3 has a final loss; 3 failed"
    assert _points(fig.axes[0]) == {}
    plt.close(fig)
    r = _results()
    r.final_loss = np.array([0.0, np.nan, 0.5])  # a perfect fit: no log axis
    fig = r.plot_waterfall()
    assert fig.axes[0].get_yscale() == "linear"
    assert fig.axes[0].get_title() == ("1 of 3 starts within 1e-6 (relative) of the best "
                                       "loss; 1 failed")
    plt.close(fig)
