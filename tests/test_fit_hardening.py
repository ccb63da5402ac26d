"""Fitting trusts nothing on disk or in input until it is checked: output folders are
checked before training, new data or a new model rebuild the training program, run
folders fingerprint the optimiser's and loss's settings and verify each chunk file,
saved results are checked table by table, data that constrain nothing are refused, and
CSV dialect problems are named.

Fits here are tiny (one parameter, torch, a few iterations) so that the file runs in
seconds."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import kinabs
from kinabs import DataError, RunFolder, RunFolderError, TrainingData, TrainingResults
from kinabs import SpeciesReference as R
from kinabs._model import sym

pytest.importorskip("torch")


def _model(model_id="ab", factor=1.0) -> kinabs.Model:
    """A -> B at rate k A (times ``factor``); C takes part in no reaction: it never
    changes."""
    return kinabs.Model(
        id=model_id, compartments={"c": kinabs.Compartment("c", 1.0)},
        species={"A": kinabs.Species("A", "c", initial_concentration=1.0),
                 "B": kinabs.Species("B", "c", initial_concentration=0.0),
                 "C": kinabs.Species("C", "c", initial_concentration=0.5)},
        parameters={"k": kinabs.Parameter("k", 0.5)},
        reactions={"r": kinabs.Reaction("r", sym("k") * sym("A") * factor, (R("A"),),
                                        (R("B"),))})


def _data(scale=1.0) -> pd.DataFrame:
    return pd.DataFrame({"A": [1.0, 0.6 * scale, 0.37 * scale],
                         "B": [0.0, 0.4 * scale, 0.63 * scale]}, index=[0.0, 1.0, 2.0])


def _trainer(model=None, data=None, n_starts=2, **kwargs) -> kinabs.Trainer:
    t = kinabs.Trainer(model=model or _model(), data=_data() if data is None else data,
                       n_iter=3, backend="torch", progress=False, **kwargs)
    t.latinhypercube_sampling({}, lower_bound=0.5, upper_bound=2, N=n_starts, seed=0)
    return t


# -- 1. output paths are checked before training ------------------------------------------
@pytest.fixture
def no_training(monkeypatch):
    def train(*args, **kwargs):
        raise AssertionError("training started before the output folder was checked")

    monkeypatch.setattr(kinabs.Trainer, "train", train)


def _cli(*args):
    from kinabs._cli import main

    return main(["fit", "--backend", "torch", "--n-iter", "1", "--inits", "1", *args])


def test_cli_out_that_is_a_file_fails_before_training(tmp_path, capsys, no_training):
    out = tmp_path / "results.txt"
    out.write_text("mine")
    assert _cli("--out", str(out)) == 2
    err = capsys.readouterr().err
    assert f"output folder (--out) {out} is a file, not a folder" in err
    assert "give a folder path" in err and out.read_text() == "mine"


def test_cli_out_below_a_file_or_unwritable_fails_before_training(tmp_path, capsys,
                                                                   monkeypatch, no_training):
    (tmp_path / "f").write_text("")
    assert _cli("--out", str(tmp_path / "f" / "sub")) == 2
    assert f"cannot be created: {tmp_path / 'f'} is a file" in capsys.readouterr().err
    (tmp_path / "out" / "loss.png").mkdir(parents=True)
    assert _cli("--out", str(tmp_path / "out")) == 2
    assert f"{tmp_path / 'out' / 'loss.png'} is a folder" in capsys.readouterr().err
    # an unwritable place (os.access is what the check asks; root may write anywhere)
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked
                        else real(p, mode))
    assert _cli("--out", str(locked / "fit")) == 2
    assert f"{locked} is not writable" in capsys.readouterr().err


def test_save_into_a_file_and_run_folder_in_an_unwritable_place_are_named(tmp_path):
    r = TrainingResults(parameters=pd.DataFrame({"k": [1.0]}),
                        initial_parameters=pd.DataFrame({"k": [0.5]}),
                        loss_history=np.ones((1, 2)), status=["ok"], final_loss=np.ones(1))
    (tmp_path / "f").write_text("")
    with pytest.raises(DataError, match="results folder .*f is a file, not a folder"):
        r.save(tmp_path / "f")
    with pytest.raises(RunFolderError, match="cannot write the run folder .*f/run"):
        RunFolder(tmp_path / "f" / "run").open(dict(format=2))


# -- 2. new data or a new model rebuild the program ---------------------------------------
def test_assigned_data_is_checked_and_fitted():
    t = _trainer()
    first = t.train()
    t.data = _data(scale=0.5)
    again = t.train()
    fresh = _trainer(data=_data(scale=0.5)).train()
    np.testing.assert_array_equal(again.loss_history, fresh.loss_history)
    assert not np.array_equal(again.loss_history, first.loss_history)
    assert isinstance(t.data, TrainingData)
    with pytest.raises(DataError, match="'X' is not a species"):
        t.data = pd.DataFrame({"X": [1.0, 2.0]}, index=[0.0, 1.0])
    np.testing.assert_array_equal(t.data.experiments[0].values, _data(0.5).to_numpy())


def test_assigned_model_is_checked_and_fitted():
    t = _trainer()
    first = t.train()
    t.model = _model(factor=3.0)
    again = t.train()
    fresh = _trainer(model=_model(factor=3.0)).train()
    np.testing.assert_array_equal(again.loss_history, fresh.loss_history)
    assert not np.array_equal(again.loss_history, first.loss_history)
    assert again.meta["model_fingerprint"] == _model(factor=3.0).fingerprint()
    other = kinabs.Model(id="other", compartments={"c": kinabs.Compartment("c", 1.0)},
                         species={s: kinabs.Species(s, "c", initial_concentration=1.0)
                                  for s in "AB"},
                         parameters={"q": kinabs.Parameter("q", 1.0)},
                         reactions={"r": kinabs.Reaction("r", sym("q") * sym("A"), (R("A"),),
                                                         (R("B"),))})
    with pytest.raises(DataError, match=r"new model has no parameter\(s\) \['k'\]"):
        t.model = other
    assert t.model.fingerprint() == _model(factor=3.0).fingerprint()  # unchanged


# -- 3. the manifest fingerprints optimiser and loss settings ------------------------------
def _manifest(optimizer=None, loss=None, **loss_kwargs):
    from kinabs._fit.executor import fit_manifest
    from kinabs._fit.spec import FitSpec
    from kinabs._problem import CustomLoss

    spec = FitSpec(model=_model(), data=TrainingData.coerce(_data()), parameters=("k",),
                   backend="torch", optimizer=optimizer,
                   loss=None if loss is None else CustomLoss(loss, loss_kwargs))
    return fit_manifest(spec, np.ones((2, 1)), n_iter=3, chunk_size=1, seed=0)


def _weighted(params, ts, ys, weight=1.0):
    return weight


def test_optax_hyperparameters_are_part_of_the_fit(tmp_path):
    optax = pytest.importorskip("optax")
    folder = RunFolder(tmp_path)
    folder.open(_manifest(optax.adam(1e-3)))
    folder.open(_manifest(optax.adam(1e-3)))  # the same settings, built again: resumed
    with pytest.raises(RunFolderError) as info:
        folder.open(_manifest(optax.adam(0.5)))
    msg = str(info.value)
    assert "holds another fit" in msg
    assert "options.optimizer_settings.update.update_fns[1].tx.update.step_size: folder " \
           "has '-0.001', this fit has '-0.5'" in msg


def test_torch_factory_and_loss_keyword_values_are_part_of_the_fit(tmp_path):
    import torch

    folder = RunFolder(tmp_path)
    folder.open(_manifest(functools.partial(torch.optim.Adam, lr=1e-3), _weighted, weight=1.0))
    with pytest.raises(RunFolderError, match=r"options.optimizer_settings.lr: folder has "
                       r"'0.001', this fit has '0.5'"):
        folder.open(_manifest(functools.partial(torch.optim.Adam, lr=0.5), _weighted,
                              weight=1.0))
    with pytest.raises(RunFolderError, match=r"options.loss_settings.kwargs\['weight'\]: "
                       r"folder has '1.0', this fit has '2.0'"):
        folder.open(_manifest(functools.partial(torch.optim.Adam, lr=1e-3), _weighted,
                              weight=2.0))


def test_settings_fingerprint_is_the_same_in_another_process():
    optax = pytest.importorskip("optax")
    from kinabs._fit.executor import configuration

    here = configuration(optax.chain(optax.clip_by_global_norm(1.0),
                                     optax.adabelief(optax.exponential_decay(1e-3, 10, 0.5))))
    code = ("import json, optax; from kinabs._fit.executor import configuration; "
            "print(json.dumps(configuration(optax.chain(optax.clip_by_global_norm(1.0), "
            "optax.adabelief(optax.exponential_decay(1e-3, 10, 0.5))))))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    there = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                      text=True, check=True, env=env).stdout)
    assert there == here


# -- 4. chunk files record their index, starts and digest ----------------------------------
def test_a_chunk_copied_over_another_is_named_set_aside_and_rerun(tmp_path, capsys):
    t = _trainer(n_starts=3)
    first = t.train(chunk_size=1, run_dir=tmp_path)
    chunks = tmp_path / "chunks"
    (p0,) = chunks.glob("chunk-00000.*")
    p2 = chunks / p0.name.replace("00000", "00002")
    shutil.copyfile(p0, p2)
    folder = RunFolder(tmp_path)
    with pytest.raises(RunFolderError) as info:
        folder.results()
    assert f"{p2} records chunk 0, but its name says chunk 2" in str(info.value)
    again = t.train(chunk_size=1, run_dir=tmp_path)
    assert again.meta["chunks_run"] == 1 and again.meta["chunks_resumed"] == 2
    assert len(again.meta["chunks_rejected"]) == 1
    assert "records chunk 0, but its name says chunk 2" in again.meta["chunks_rejected"][0]
    assert f"set aside as {p2.name}.rejected-" in capsys.readouterr().err
    assert len(list(chunks.glob(f"{p2.name}.rejected-*"))) == 1
    np.testing.assert_array_equal(again.loss_history, first.loss_history)
    np.testing.assert_array_equal(folder.results().loss_history, first.loss_history)


def _folder_with_chunks(path, fmt="csv"):
    t = _trainer(n_starts=2)
    t.train(chunk_size=1, run_dir=path)
    return RunFolder(path, file_format=fmt)


def test_a_damaged_chunk_is_called_damaged_naming_the_file(tmp_path):
    folder = _folder_with_chunks(tmp_path)
    path = folder.chunk_file(1)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(RunFolderError) as info:
        folder.results()
    msg = str(info.value)
    assert f"{path} is damaged" in msg and "not finished" not in msg
    assert folder.read_chunk(1, ["k"], 3) is None


def test_a_changed_chunk_or_one_from_another_fit_fails_its_digest(tmp_path):
    folder = _folder_with_chunks(tmp_path / "a")
    path = folder.chunk_file(0)
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    df.loc[0, "final:k"] *= 2  # a plausible value, edited
    df.to_parquet(path, index=False) if path.suffix == ".parquet" else \
        df.to_csv(path, index=False)
    table, reason = folder.check_chunk(0, ["k"], 3)
    assert table is None and f"{path}: its content does not match the digest" in reason
    # another fit (other data) with the same chunk layout: its chunk 1 is not ours
    other = _trainer(data=_data(scale=0.9), n_starts=2)
    other.train(chunk_size=1, run_dir=tmp_path / "b")
    theirs = RunFolder(tmp_path / "b").chunk_file(1)
    shutil.copyfile(theirs, folder.chunk_file(1))
    table, reason = folder.check_chunk(1, ["k"], 3)
    assert table is None and "comes from another fit's run folder" in reason


# -- 5. saved results are checked table by table -------------------------------------------
def _saved(tmp_path):
    r = TrainingResults(parameters=pd.DataFrame({"k": [1.0, 2.0, 3.0]}),
                        initial_parameters=pd.DataFrame({"k": [0.5, 1.0, 1.5]}),
                        loss_history=np.arange(12.0).reshape(3, 4), status=["ok"] * 3,
                        final_loss=np.array([0.1, 0.2, 0.3]), meta={"n_iter": 4})
    return r.save(tmp_path / "fit")


def test_load_names_a_truncated_table(tmp_path):
    folder = _saved(tmp_path)
    path = folder / "loss_history.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))  # the last row lost
    with pytest.raises(DataError, match=rf"{path} has 2 rows; expected 3, one per start"):
        TrainingResults.load(folder)
    path.write_text("".join(lines)[:-5])  # cut in the middle of the last row
    with pytest.raises(DataError, match=rf"{path} is cut short"):
        TrainingResults.load(folder)
    path.write_text("".join(lines[:-1]) + "2,8.0,9.0\n")  # a row with fields missing
    with pytest.raises(DataError, match=rf"{path}: row 3 has 3 fields, the header has 5"):
        TrainingResults.load(folder)
    path.write_text("".join(lines))
    (folder / "parameters.csv").write_text("init,k\n0,1.0\n1,x\n2,3.0\n")
    with pytest.raises(DataError, match=r"parameters.csv: row 2, column 2 \('k'\) holds 'x'"):
        TrainingResults.load(folder)


def test_load_names_a_truncated_results_json(tmp_path):
    folder = _saved(tmp_path)
    path = folder / "results.json"
    path.write_text(path.read_text()[:50])
    with pytest.raises(DataError, match=rf"{path} is damaged \(cut short or edited\?\)"):
        TrainingResults.load(folder)
    path.write_text(json.dumps({"status": ["ok"] * 3, "final_loss": [0.1]}))
    with pytest.raises(DataError, match=r"'final_loss' must be a list of 3 numbers"):
        TrainingResults.load(folder)


# -- 6. data that constrain no fitted parameter ----------------------------------------------
def test_one_time_point_is_refused_at_construction(tmp_path):
    p = tmp_path / "one_row.csv"
    p.write_text("time,A,B\n0,1.0,0.0\n")
    with pytest.raises(DataError) as info:
        _trainer(data=str(p))
    msg = str(info.value)
    assert "one time point only" in msg and str(p) in msg and "nothing is fitted" in msg
    t = _trainer()
    with pytest.raises(DataError, match="one time point only"):
        t.data = str(p)


def test_data_only_on_a_species_that_never_changes_is_refused():
    constant = pd.DataFrame({"C": [0.5, 0.5, 0.5]}, index=[0.0, 1.0, 2.0])
    with pytest.raises(DataError) as info:
        _trainer(data=constant)
    msg = str(info.value)
    assert "constrain none of the fitted parameters ['k']" in msg
    assert "species ['C']" in msg and "['A', 'B']" in msg
    # with a species that changes it is a fit
    _trainer(data=pd.DataFrame({"C": [0.5, 0.5], "A": [1.0, 0.7]}, index=[0.0, 1.0]))


# -- 7. CSV dialects --------------------------------------------------------------------------
@pytest.mark.parametrize("sep, word", [(";", "semicolons"), ("\t", "tabs")])
def test_a_csv_separated_otherwise_is_named(tmp_path, sep, word):
    p = tmp_path / "data.csv"
    p.write_text(sep.join(["time", "A", "B"]) + "\n" + sep.join(["0", "1,0", "0,0"]) + "\n")
    with pytest.raises(DataError) as info:
        TrainingData.from_csv(p)
    msg = str(info.value)
    assert f"{p} is separated by {word}" in msg and "not commas" in msg
    assert f"sep={sep!r}" in msg


def test_a_duplicated_header_is_named_before_pandas_renames_it(tmp_path):
    p = tmp_path / "data.csv"
    p.write_text("time,php,php\n0,1.0,2.0\n1,0.5,0.7\n")
    with pytest.raises(DataError, match=rf"{p}: the header names column 'php' twice "
                       r"\(columns 2 and 3"):
        TrainingData.from_csv(p)


def test_a_non_number_names_file_row_and_column(tmp_path):
    p = tmp_path / "data.csv"
    p.write_text("time,A\n0,1.0\n1,low\n")
    with pytest.raises(DataError, match=rf"column 'A' of file {p} has values that are not "
                       r"numbers \(row 1, time 1: 'low'\)"):
        TrainingData.from_csv(p)


# -- 8. pyarrow without CVE-2023-47248 --------------------------------------------------------
def test_pyarrow_requirement_excludes_14_0_0():
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert text.count('"pyarrow>=14.0.1"') == 2 and '"pyarrow>=14"' not in text
