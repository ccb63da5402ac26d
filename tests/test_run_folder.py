"""The run folder: manifest written first and checked on resume, chunk tables written
atomically and read back exactly (Parquet and CSV) with their iterations and evaluations
(derived from the losses for older files without them), refusal of another fit's folder,
and a log that agrees with the chunk files after a kill between a file and its log line."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

import kinabs
from kinabs import RunFolder, RunFolderError
from kinabs._fit.run_folder import ChunkTable

NAMES = ["k1", "k2"]


def _manifest(**changes):
    m = dict(format=1, kinabs_version=kinabs.__version__, model_id="m", model_hash="abc",
             data_hash="def", starts_hash="123", n_starts=3, seed=0, parameters=NAMES,
             options=dict(backend="jax", optim_space="log", n_iter=2, solver="S()"),
             chunk_size=2, n_chunks=2)
    m.update(changes)
    return m


def _chunk(index=0, first=0, n=2):
    rng = np.random.default_rng(index)
    losses = rng.random((n, 2))
    losses[0, 1] = np.nan  # a start that stopped
    return ChunkTable(index=index, first=first, initial=rng.random((n, 2)) * 1e-7,
                      final=rng.random((n, 2)) * 1e5, loss_history=losses,
                      status=("ok",) + ("failed: max_steps_reached",) * (n - 1),
                      final_loss=np.array([0.1 / 3] + [np.nan] * (n - 1)), seconds=1.5,
                      worker="host:1")


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_chunk_tables_round_trip_exactly(tmp_path, fmt):
    folder = RunFolder(tmp_path / "run", file_format=fmt)
    folder.open(_manifest())
    chunk = _chunk()
    path = folder.write_chunk(chunk, NAMES, run="r1")
    assert path.name == f"chunk-00000.{fmt}"
    back = folder.read_chunk(0, NAMES, 2)
    np.testing.assert_array_equal(back.initial, chunk.initial)  # bit for bit, also CSV
    np.testing.assert_array_equal(back.final, chunk.final)
    np.testing.assert_array_equal(back.loss_history, chunk.loss_history)
    np.testing.assert_array_equal(back.final_loss, chunk.final_loss)
    assert back.status == chunk.status and back.first == 0 and back.worker == "host:1"
    assert folder.finished_chunks() == [0]
    assert [e["chunk"] for e in folder.log()] == [0] and folder.log()[0]["ok"] == 1
    # no temporary files are left behind
    assert sorted(p.name for p in (tmp_path / "run" / "chunks").iterdir()) == [path.name]


def test_results_assemble_chunks_in_start_order(tmp_path):
    folder = RunFolder(tmp_path)
    folder.open(_manifest())
    folder.write_chunk(_chunk(index=1, first=2, n=1), NAMES)
    with pytest.raises(RunFolderError, match=r"1 of 2 chunks are not finished \(first "
                       r"missing: \[0\]\)"):
        folder.results()
    folder.write_chunk(_chunk(index=0, first=0, n=2), NAMES)
    res = folder.results()
    assert res.status == ["ok", "failed: max_steps_reached", "ok"]
    np.testing.assert_array_equal(res.parameters.to_numpy()[2], _chunk(1, 2, 1).final[0])
    assert res.best_index == 0 and res.meta["n_iter"] == 2


def test_manifest_is_written_first_and_kept_on_resume(tmp_path):
    folder = RunFolder(tmp_path / "run")
    first = folder.open(_manifest())
    on_disk = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert on_disk["model_hash"] == "abc" and "created" in on_disk
    assert folder.open(_manifest()) == first  # the same fit: resumed


@pytest.mark.parametrize("change, text", [
    (dict(model_hash="xyz"), "model_hash: folder has 'abc', this fit has 'xyz'"),
    (dict(data_hash="xyz"), "data_hash: folder has 'def'"),
    (dict(options=dict(backend="jax", optim_space="log", n_iter=5, solver="S()")),
     "options.n_iter: folder has 2, this fit has 5"),
    (dict(chunk_size=1, n_chunks=3), "chunk_size: folder has 2, this fit has 1"),
])
def test_another_fit_is_refused_naming_what_differs(tmp_path, change, text):
    folder = RunFolder(tmp_path)
    folder.open(_manifest())
    folder.write_chunk(_chunk(), NAMES)
    with pytest.raises(RunFolderError) as info:
        folder.open(_manifest(**change))
    msg = str(info.value)
    assert "holds another fit" in msg and text in msg
    assert "Give another run folder, or delete this one" in msg
    assert folder.finished_chunks() == [0]  # nothing touched


def test_a_folder_that_is_not_a_run_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not empty and has no manifest.json"):
        RunFolder(tmp_path).open(_manifest())
    with pytest.raises(RunFolderError, match="is a file"):
        RunFolder(tmp_path / "notes.txt")
    with pytest.raises(RunFolderError, match="file_format"):
        RunFolder(tmp_path / "x", file_format="xlsx")


def test_a_damaged_chunk_counts_as_missing(tmp_path):
    folder = RunFolder(tmp_path, file_format="csv")
    folder.open(_manifest())
    folder.write_chunk(_chunk(), NAMES)
    (tmp_path / "chunks" / "chunk-00000.csv").write_text("start\n")
    assert folder.read_chunk(0, NAMES, 2) is None


class _Killed(BaseException):
    """Stands in for SIGKILL: no ``except Exception`` handles it, nothing after it runs."""


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_kill_between_chunk_file_and_log_line_is_repaired_on_open(tmp_path, fmt,
                                                                     monkeypatch):
    """The chunk files are the truth: a file whose log line a kill prevented gets the line
    on the next open, derived from the file; a line is never written without its file."""
    folder = RunFolder(tmp_path, file_format=fmt)
    folder.open(_manifest())
    folder.write_chunk(_chunk(index=1, first=2, n=1), NAMES, run="r1")

    def die(self, entry):
        raise _Killed

    monkeypatch.setattr(RunFolder, "_append_log", die)
    with pytest.raises(_Killed):
        folder.write_chunk(_chunk(index=0), NAMES, run="r1")
    monkeypatch.undo()
    assert folder.finished_chunks() == [0, 1]
    assert [e["chunk"] for e in folder.log()] == [1]
    again = RunFolder(tmp_path)
    again.open(_manifest())
    log = again.log()
    assert [e["chunk"] for e in log] == [1, 0]
    assert log[1]["recovered"] and not log[0].get("recovered")
    assert (log[1]["first"], log[1]["n"], log[1]["ok"], log[1]["worker"], log[1]["seconds"]) \
        == (0, 2, 1, "host:1", 1.5)
    np.testing.assert_array_equal(again.read_chunk(0, NAMES, 2).final, _chunk(0).final)
    again.open(_manifest())  # nothing more to repair
    assert len(again.log()) == 2


def test_a_chunk_written_again_gets_its_own_log_line(tmp_path, monkeypatch):
    """Each line names its file's sha256: a chunk whose file was deleted and written again
    (killed before the second line) is not taken as logged by its first line."""
    folder = RunFolder(tmp_path)
    folder.open(_manifest())
    folder.write_chunk(_chunk(index=0), NAMES)
    folder._chunk_path(0, folder.file_format).unlink()
    monkeypatch.setattr(RunFolder, "_append_log", lambda self, entry: None)
    folder.write_chunk(_chunk(index=0, n=1), NAMES)  # another table: another file
    monkeypatch.undo()
    folder.open(_manifest())
    log = folder.log()
    assert [(e["chunk"], e["n"], e.get("recovered", False)) for e in log] == \
        [(0, 2, False), (0, 1, True)]
    assert log[0]["sha256"] != log[1]["sha256"]


def test_a_log_line_cut_short_is_skipped_and_ended(tmp_path):
    folder = RunFolder(tmp_path)
    folder.open(_manifest())
    folder.write_chunk(_chunk(index=0), NAMES)
    with open(tmp_path / "log.jsonl", "a") as fh:
        fh.write('{"chunk": 1, "fi')  # a crash mid-line (power loss)
    folder.write_chunk(_chunk(index=1, first=2, n=1), NAMES)  # its line joins the torn one
    assert [e["chunk"] for e in folder.log()] == [0]
    folder.open(_manifest())
    assert [e["chunk"] for e in folder.log()] == [0, 1]
    assert folder.log()[1]["recovered"]


# -- iterations and evaluations -----------------------------------------------------------
def _counted_chunk(index=0, first=0):
    """Two starts of a method with convergence tests: one converged, one out of iterations."""
    return replace(_chunk(index, first), status=("converged", "max_iterations"),
                   final_loss=np.array([0.1 / 3, 0.5]), iterations=np.array([3, 7]),
                   evaluations=np.array([5, 12]))


def _old_chunk_file(folder, chunk):
    """Write ``chunk`` as a chunk file of a kinabs from before iterations and evaluations
    were recorded: no such columns, and a digest that does not cover them."""
    from kinabs._fit import run_folder as rf

    fit = folder._fit_key()
    df = chunk.to_frame(NAMES, fit=fit).drop(columns=["iterations", "evaluations"])
    df["digest"] = replace(chunk, counted=False).digest(fit)
    path = folder._chunk_path(chunk.index, folder.file_format)
    rf._atomic_write(path, rf._table_bytes(df, folder.file_format))
    return path


def test_a_chunk_table_without_counts_takes_them_from_its_losses():
    chunk = _chunk(n=3)  # row 0 stopped after one of two iterations
    np.testing.assert_array_equal(chunk.iterations, [1, 2, 2])
    np.testing.assert_array_equal(chunk.evaluations, [1, 2, 2])


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_iterations_and_evaluations_round_trip_and_reach_the_results(tmp_path, fmt):
    folder = RunFolder(tmp_path, file_format=fmt)
    folder.open(_manifest())
    folder.write_chunk(_counted_chunk(), NAMES)
    back = folder.read_chunk(0, NAMES, 2)
    np.testing.assert_array_equal(back.iterations, [3, 7])
    np.testing.assert_array_equal(back.evaluations, [5, 12])
    assert back.iterations.dtype == np.int64 and back.counted
    assert back.status == ("converged", "max_iterations")
    assert folder.log()[0]["ok"] == 2  # neither start failed
    folder.write_chunk(_chunk(index=1, first=2, n=1), NAMES)
    res = folder.results()
    np.testing.assert_array_equal(res.iterations, [3, 7, 1])
    np.testing.assert_array_equal(res.evaluations, [5, 12, 1])
    np.testing.assert_array_equal(res.final_loss[:2], [0.1 / 3, 0.5])
    assert res.status == ["converged", "max_iterations", "ok"]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_an_older_chunk_file_without_counts_is_read_with_counts_from_its_losses(tmp_path,
                                                                              fmt):
    folder = RunFolder(tmp_path, file_format=fmt)
    folder.open(_manifest())
    chunk = _chunk(n=2)
    _old_chunk_file(folder, chunk)
    table, problem = folder.check_chunk(0, NAMES, 2)
    assert problem is None and not table.counted
    np.testing.assert_array_equal(table.iterations, [1, 2])
    np.testing.assert_array_equal(table.evaluations, [1, 2])
    np.testing.assert_array_equal(table.loss_history, chunk.loss_history)
    folder.write_chunk(_chunk(index=1, first=2, n=1), NAMES)
    np.testing.assert_array_equal(folder.results().iterations, [1, 2, 1])
    # an older file still has its values checked against its digest
    path = _old_chunk_file(folder, replace(chunk, worker="elsewhere"))
    if fmt == "csv":
        path.write_text(path.read_text().replace("elsewhere", "host:1"))
        assert folder.check_chunk(0, NAMES, 2)[1].endswith("does not match the digest "
                                                           "recorded in it: it was changed "
                                                           "after it was written, or comes "
                                                           "from another fit's run folder")


def _edit_csv(path, column, values):
    import pandas as pd

    df = pd.read_csv(path, keep_default_na=False, na_values=["NaN"], dtype=str)
    if values is None:
        df = df.drop(columns=[column])
    else:
        df[column] = values
    path.write_text(df.to_csv(index=False, na_rep="NaN"))


@pytest.mark.parametrize("column, values, text", [
    ("iterations", ["3", "8"], "does not match the digest recorded in it"),
    ("evaluations", ["5", "-12"], "its column 'evaluations' must hold non-negative whole "
                                  "numbers (one per start); row 2 holds '-12'"),
    ("iterations", ["3.5", "7"], "its column 'iterations' must hold non-negative whole "
                                 "numbers (one per start); row 1 holds '3.5'"),
    ("iterations", ["x", "7"], "row 1 holds 'x'"),
    ("evaluations", None, "it has the column 'iterations' but not 'evaluations'"),
])
def test_edited_iterations_or_evaluations_are_named(tmp_path, column, values, text):
    folder = RunFolder(tmp_path, file_format="csv")
    folder.open(_manifest())
    path = folder.write_chunk(_counted_chunk(), NAMES)
    _edit_csv(path, column, values)
    table, problem = folder.check_chunk(0, NAMES, 2)
    assert table is None and str(path) in problem and text in problem
