"""TrainingResults: the seed's unpacking, summaries, joined rounds, save/load and the loss
plot (pure numpy/pandas/matplotlib: no backend is imported)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

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
