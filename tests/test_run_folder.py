"""The run folder: manifest written first and checked on resume, chunk tables written
atomically and read back exactly (Parquet and CSV), refusal of another fit's folder."""

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


def test_docstring_example_runs():
    import doctest

    from kinabs._fit import run_folder as _run_folder

    failures, tried = doctest.testmod(_run_folder)
    assert tried >= 2 and failures == 0
