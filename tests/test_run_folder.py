"""The run folder: manifest written first and checked on resume, chunk tables written
atomically and read back exactly (Parquet and CSV), refusal of another fit's folder, and a
log that agrees with the chunk files after a kill between a file and its log line."""

from __future__ import annotations

import json

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
