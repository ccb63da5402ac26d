"""Chunked multi-start fits: the same starts give the same results whatever the executor
(this process, a thread pool, a Dask LocalCluster of two worker processes) and chunk size;
run folders resume without redoing finished chunks, also after the driver was killed
between a chunk's file and its log line; a worker killed mid-run loses nothing; bad input
fails before any work.

Compiling costs seconds, so every fit here trains chunks of 8 (one program, traced once
and then loaded from the session's disk cache by every worker process) except the test of
another chunk size and the test of a chunk that fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("jax")
pytest.importorskip("diffrax")

import kinabs  # noqa: E402
from kinabs import DataError, RunFolder, RunFolderError  # noqa: E402

N_ITER = 6
N_STARTS = 64
CHUNK = 8


def _trainer(model, n_starts=N_STARTS, **kwargs):
    trainer = kinabs.Trainer(model=model, data=kinabs.example_data_path(), n_iter=N_ITER,
                             progress=False, **kwargs)
    trainer.latinhypercube_sampling(dict.fromkeys(trainer.parameters, 1.0), lower_bound=0.1,
                                    upper_bound=10, N=n_starts, seed=0)
    return trainer


@pytest.fixture(scope="module")
def trainer(model):
    return _trainer(model)


@pytest.fixture(scope="module")
def reference(trainer):
    """The 64 starts in this process, chunks of 8, no run folder."""
    return trainer.train(chunk_size=CHUNK)


def _failed(status: str) -> bool:
    """Whether a start failed (its status is neither ok, converged nor max_iterations: which
    of those a start that did not fail has depends on the optimiser)."""
    return status.startswith("failed")


def _assert_same(a, b):
    """Bit for bit: the same starts in chunks of the same size."""
    np.testing.assert_array_equal(a.loss_history, b.loss_history)
    np.testing.assert_array_equal(a.parameters.to_numpy(), b.parameters.to_numpy())
    np.testing.assert_array_equal(a.initial_parameters.to_numpy(),
                                  b.initial_parameters.to_numpy())
    np.testing.assert_array_equal(a.final_loss, b.final_loss)
    assert a.status == b.status
    np.testing.assert_array_equal(a.iterations, b.iterations)
    np.testing.assert_array_equal(a.evaluations, b.evaluations)


def test_chunked_fit_in_process(trainer, reference):
    assert reference.loss_history.shape == (N_STARTS, N_ITER)
    assert len(reference.status) == N_STARTS and not any(map(_failed, reference.status))
    assert np.all(reference.loss_history[:, -1] < reference.loss_history[:, 0])
    pd.testing.assert_frame_equal(reference.initial_parameters, trainer.parameter_sets)
    assert reference.meta["n_chunks"] == 8 and reference.meta["chunks_run"] == 8
    assert reference.meta["executor"] == "in-process"


def test_same_results_whatever_the_chunk_size(model, reference):
    """A start trains independently of the others in its chunk: one program for all
    8 starts equals chunks of 8 bit for bit; chunks of 3 (another batch shape, whose XLA
    kernels may round differently) agree to 1e-12."""
    t = _trainer(model)
    t.parameter_sets = t.parameter_sets.iloc[:8]
    whole = t.train()
    np.testing.assert_array_equal(whole.loss_history, reference.loss_history[:8])
    np.testing.assert_array_equal(whole.parameters.to_numpy(),
                                  reference.parameters.to_numpy()[:8])
    by3 = t.train(chunk_size=3)
    assert by3.meta["n_chunks"] == 3
    np.testing.assert_allclose(by3.loss_history, whole.loss_history, rtol=1e-12, atol=0)
    np.testing.assert_allclose(by3.parameters.to_numpy(), whole.parameters.to_numpy(),
                               rtol=1e-12, atol=0)


def test_thread_pool_executor_gives_the_same_results(trainer, reference):
    with ThreadPoolExecutor(2) as pool:
        res = trainer.train(executor=pool, chunk_size=CHUNK)
    _assert_same(res, reference)
    assert res.meta["executor"] == "ThreadPoolExecutor"


def test_a_chunk_that_raises_is_retried(trainer, reference, monkeypatch):
    from kinabs._fit import executor as _executor

    real, calls = _executor._execute, []

    def flaky(spec, program, task):
        calls.append(task.index)
        if task.index == 3 and calls.count(3) == 1:
            raise RuntimeError("worker lost its GPU")
        return real(spec, program, task)

    monkeypatch.setattr(_executor, "_execute", flaky)
    with ThreadPoolExecutor(1) as pool:
        res = trainer.train(executor=pool, chunk_size=CHUNK, retries=1)
    _assert_same(res, reference)
    assert sorted(calls) == [0, 1, 2, 3, 3, 4, 5, 6, 7]
    calls.clear()
    with ThreadPoolExecutor(1) as pool, pytest.raises(kinabs.KinabsError,
                                                      match=r"chunk \d+ \(starts \d+-\d+\) could not be run: RuntimeError: always"):
        monkeypatch.setattr(_executor, "_execute", lambda *a: (_ for _ in ()).throw(
            RuntimeError("always")))
        trainer.train(executor=pool, chunk_size=CHUNK, retries=2)


def test_run_folder_resumes_only_missing_chunks(trainer, reference, tmp_path):
    run = tmp_path / "run"
    first = trainer.train(chunk_size=CHUNK, run_dir=run)
    _assert_same(first, reference)
    folder = RunFolder(run)
    assert folder.finished_chunks() == list(range(8))
    assert folder.manifest["n_starts"] == 64 and folder.manifest["seed"] == 0
    kept = {p.name: p.stat().st_mtime_ns for p in (run / "chunks").iterdir()}
    for i in (2, 5):
        (run / "chunks" / f"chunk-0000{i}.parquet").unlink()
    again = trainer.train(chunk_size=CHUNK, run_dir=run)
    _assert_same(again, reference)
    assert again.meta["chunks_run"] == 2 and again.meta["chunks_resumed"] == 6
    assert [e["chunk"] for e in folder.log()] == list(range(8)) + [2, 5]
    for p in (run / "chunks").iterdir():
        if p.name not in ("chunk-00002.parquet", "chunk-00005.parquet"):
            assert p.stat().st_mtime_ns == kept[p.name], p.name
    _assert_same(folder.results(), reference)


class _Killed(BaseException):
    """Stands in for SIGKILL: no ``except Exception`` handles it, nothing after it runs."""


def test_killed_between_chunk_file_and_log_line_redoes_no_finished_chunk(
        trainer, reference, tmp_path, monkeypatch):
    """The run dies after chunk 2's file is in place and before its log line: the rerun
    logs chunk 2 from its file and runs only chunks 3 to 7."""
    run = tmp_path / "run"
    append, lines = RunFolder._append_log, []

    def append_or_die(self, entry):
        if len(lines) == 2:
            raise _Killed
        lines.append(entry)
        append(self, entry)

    monkeypatch.setattr(RunFolder, "_append_log", append_or_die)
    with pytest.raises(_Killed):
        trainer.train(chunk_size=CHUNK, run_dir=run)
    monkeypatch.undo()
    folder = RunFolder(run)
    assert folder.finished_chunks() == [0, 1, 2]
    assert [e["chunk"] for e in folder.log()] == [0, 1]
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (run / "chunks").iterdir()}
    again = trainer.train(chunk_size=CHUNK, run_dir=run)
    assert again.meta["chunks_run"] == 5 and again.meta["chunks_resumed"] == 3
    _assert_same(again, reference)
    log = folder.log()
    assert [e["chunk"] for e in log] == list(range(8))
    assert log[2]["recovered"] and (log[2]["n"], log[2]["ok"], log[2]["first"]) == (8, 8, 16)
    assert not any(e.get("recovered") for e in log[:2] + log[3:])
    for name, stat in kept.items():
        p = run / "chunks" / name
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stat, name


def test_changed_fit_with_an_existing_run_folder_is_refused(model, trainer, tmp_path):
    run = tmp_path / "run"
    small = _trainer(model, n_starts=8)
    small.train(chunk_size=CHUNK, run_dir=run)
    other = _trainer(model, n_starts=8, optim_space="linear")
    with pytest.raises(RunFolderError, match="options.optim_space: folder has 'log', this "
                       "fit has 'linear'"):
        other.train(chunk_size=CHUNK, run_dir=run)
    other_starts = _trainer(model, n_starts=8)
    other_starts.latinhypercube_sampling({}, lower_bound=0.5, upper_bound=2, N=8, seed=1)
    with pytest.raises(RunFolderError, match="(?s)starts_hash: .*seed: folder has 0, this fit "
                       "has 1"):
        other_starts.train(chunk_size=CHUNK, run_dir=run)
    assert len(RunFolder(run).log()) == 1


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_chunk_size_below_one_is_refused_before_work(trainer, tmp_path, bad):
    with pytest.raises(DataError, match=f"chunk_size must be an integer >= 1.*got {bad!r}"):
        trainer.train(chunk_size=bad, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_bad_executor_and_resample_failed_are_refused(model, trainer):
    with pytest.raises(DataError, match="executor must be None .* got builtins.str"):
        trainer.train(executor="dask", chunk_size=CHUNK)
    t = _trainer(model, n_starts=2, resample_failed=True)
    with pytest.raises(DataError, match="resample_failed=True is not supported in chunked"):
        t.train(chunk_size=1)


def test_a_chunk_whose_starts_all_fail_is_reported_not_retried(model, tmp_path, capfd):
    """Few explicit steps: starts at the model's own parameters (~270 Tsit5 steps) fail,
    starts around all ones (~10-30 steps) train. Chunk 0 holds only failing starts."""
    t = kinabs.Trainer(model=model, data=kinabs.example_data_path(), n_iter=3,
                       progress=False,
                       solver=kinabs.SolverOptions(method="nonstiff", max_steps=100))
    sets = t.latinhypercube_sampling(dict.fromkeys(t.parameters, 1.0), lower_bound=0.5,
                                     upper_bound=2, N=4, seed=5).copy()
    sets.iloc[:2] = pd.Series(model.parameter_values())[t.parameters].to_numpy()
    t.parameter_sets = sets
    with ThreadPoolExecutor(1) as pool:
        res = t.train(executor=pool, chunk_size=2, run_dir=tmp_path, retries=3)
    assert res.status[:2] == ["failed: max_steps_reached"] * 2
    assert not any(map(_failed, res.status[2:]))
    assert res.meta["chunks_all_failed"] == [0]
    assert [e["chunk"] for e in RunFolder(tmp_path).log()] in ([0, 1], [1, 0])  # once each
    assert "chunk 0 (starts 0-1): every start failed (failed: max_steps_reached)" in \
        capfd.readouterr().err


def test_a_worker_process_builds_each_fit_once(trainer):
    """Tasks of one fit share the worker's program (traced and compiled once per process),
    built from the shipped FitSpec without a Trainer; another fit gets its own."""
    from kinabs._fit import executor as _executor

    spec = _executor._dumps(trainer._fit_spec())
    rows = trainer.parameter_sets.to_numpy()[:2]

    def task(key, index):
        return _executor.ChunkTask(spec=spec, spec_key=key, index=index, first=2 * index,
                                   rows=rows, pad_to=2, n_iter=1)

    s0, p0 = _executor._cached_program(task("fit-a", 0))
    s1, p1 = _executor._cached_program(task("fit-a", 1))
    assert s0 is s1 and p0 is p1 and p0 is not trainer._get_program()
    s2, p2 = _executor._cached_program(task("fit-b", 0))
    assert p2 is not p0 and s2.parameters == tuple(trainer.parameters)


def test_torch_chunks_agree_with_one_batch(model):
    """On torch a chunk is one batch; per-start step sizes keep starts independent."""
    pytest.importorskip("torch")
    t = _trainer(model, n_starts=4, backend="torch")
    t.n_iter = 3
    whole = t.train()
    chunked = t.train(chunk_size=2)
    assert chunked.status == whole.status and not any(map(_failed, whole.status))
    np.testing.assert_allclose(chunked.loss_history, whole.loss_history, rtol=1e-12, atol=0)
    np.testing.assert_allclose(chunked.parameters.to_numpy(), whole.parameters.to_numpy(),
                               rtol=1e-12, atol=0)


def test_chunks_carry_statuses_iterations_and_evaluations(trainer, tmp_path, monkeypatch,
                                                         capfd):
    """What run_loop reports per start reaches the results, the chunk files and the results
    read back from them: converged and max_iterations starts keep their loss, a chunk of
    such starts is not reported as failed, the padding rows are dropped. (run_loop is
    replaced by one that reports set values per start: no training.)"""
    from kinabs._fit import executor as _executor
    from kinabs._fit.loop import LoopOutcome

    start = trainer.parameter_sets.to_numpy()[:5]
    codes = [5, 6, 2, 3, 5]  # converged, max_iterations, failed, failed, converged

    def fake_loop(program, rows, n_iter, *, space):
        index = np.array([np.flatnonzero((start == row).all(1))[0] for row in rows])
        return None, LoopOutcome(
            initial=rows, final=rows * 2, losses=np.ones((len(rows), n_iter)),
            status=np.array(codes)[index], final_loss=0.1 * (index + 1),
            restarts=np.zeros(len(rows), dtype=int), iterations=10 + index,
            evaluations=20 + index)

    monkeypatch.setattr(_executor, "run_loop", fake_loop)
    run = tmp_path / "run"
    res = _executor.run_chunked(trainer._fit_spec(), start, n_iter=N_ITER, chunk_size=2,
                                run_dir=run, local_program=lambda: None)
    assert res.status == ["converged", "max_iterations", "failed: nonfinite solution",
                          "failed: solver error", "converged"]
    np.testing.assert_array_equal(res.final_loss, [0.1, 0.2, np.nan, np.nan, 0.5])
    np.testing.assert_array_equal(res.iterations, [10, 11, 12, 13, 14])
    np.testing.assert_array_equal(res.evaluations, [20, 21, 22, 23, 24])
    assert res.meta["chunks_all_failed"] == [1]
    err = capfd.readouterr().err
    assert "chunk 1 (starts 2-3): every start failed" in err and "chunk 0" not in err
    assert [e["ok"] for e in sorted(RunFolder(run).log(), key=lambda e: e["chunk"])] == \
        [2, 0, 1]
    _assert_same(RunFolder(run).results(), res)
    again = _executor.run_chunked(trainer._fit_spec(), start, n_iter=N_ITER, chunk_size=2,
                                  run_dir=run, local_program=lambda: None)
    assert again.meta["chunks_resumed"] == 3
    _assert_same(again, res)


def test_chunked_fit_counts_as_one_batch(model, tmp_path):
    """A real fit of two starts: chunks of one start give the statuses, iterations and
    evaluations of both starts trained together, also when read back from the run folder."""
    t = _trainer(model, n_starts=2)
    t.n_iter = 2
    whole = t.train()
    chunked = t.train(chunk_size=1, run_dir=tmp_path / "run")
    assert chunked.status == whole.status
    assert not any(map(_failed, whole.status))
    np.testing.assert_array_equal(chunked.iterations, whole.iterations)
    np.testing.assert_array_equal(chunked.evaluations, whole.evaluations)
    assert np.all(whole.evaluations >= 1) and np.all(whole.iterations <= whole.evaluations)
    np.testing.assert_allclose(chunked.final_loss, whole.final_loss, rtol=1e-10)
    back = RunFolder(tmp_path / "run").results()
    np.testing.assert_array_equal(back.iterations, whole.iterations)
    np.testing.assert_array_equal(back.evaluations, whole.evaluations)


# -- the command line --------------------------------------------------------------------
def _cli(*args, **kwargs):
    return [sys.executable, "-m", "kinabs", "fit", "--n-iter", str(N_ITER), "--seed", "0",
            "--base", "ones", *args]


# The driver of a CLI fit, killed by SIGKILL at the worst moment: once the third chunk's
# file is in place and before its log line is written.
_DRIVER_KILLED_AFTER_THIRD_CHUNK_FILE = """
import os, signal, sys
from kinabs._cli import main
from kinabs._fit.run_folder import RunFolder

append, lines = RunFolder._append_log, []

def append_or_die(self, entry):
    if len(lines) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    lines.append(entry)
    append(self, entry)

RunFolder._append_log = append_or_die
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("executor", [[], ["--workers", "2"]], ids=["in-process", "dask"])
def test_cli_driver_killed_then_rerun_redoes_no_finished_chunk(reference, tmp_path, executor):
    """SIGKILL the driver between the third chunk's file and its log line (the driver
    kills itself there, so no timing decides what is on disk); the same command finishes
    the fit, logs the third chunk from its file and runs only the five missing chunks.
    With ``--workers 2`` the driver runs a Dask LocalCluster of two worker processes."""
    if executor:
        pytest.importorskip("distributed")
    run, out = tmp_path / "run", tmp_path / "out"
    cmd = _cli("--inits", str(N_STARTS), "--chunk-size", str(CHUNK), "--run-dir", str(run),
               "--out", str(out), *executor)
    # a session of its own, so that whatever the killed driver leaves is ended below; its
    # output goes to a file, not a pipe that its orphaned workers would hold open
    with open(tmp_path / "driver.err", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", _DRIVER_KILLED_AFTER_THIRD_CHUNK_FILE,
                                 *cmd[3:]], stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
        try:
            proc.wait(timeout=600)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # worker processes of the killed driver
            except ProcessLookupError:
                pass
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "driver.err").read_text()
    chunks = run / "chunks"
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
                for p in chunks.glob("chunk-*.parquet")}
    assert len(finished) == 3 and len(RunFolder(run).log()) == 2
    assert not out.exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"8 chunks of 8: 5 run, 3 read from {run}" in again.stdout
    log = RunFolder(run).log()
    assert sorted(e["chunk"] for e in log) == list(range(8))  # every chunk logged once
    assert [e.get("recovered", False) for e in log[:3]] == [False, False, True]
    for name, stat in finished.items():
        p = chunks / name
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stat, name
    _assert_same(RunFolder(run).results(), reference)
    table = pd.read_csv(out / "loss_history.csv", index_col=0).to_numpy()
    np.testing.assert_array_equal(table, reference.loss_history)


@pytest.mark.parametrize("args, text", [
    (["--chunk-size", "0"], "--chunk-size must be an integer >= 1 (starts per chunk); got 0"),
    (["--scheduler", "tcp://127.0.0.1:9", "--workers", "2"], "not both"),
    (["--executor", "local", "--workers", "2"], "use them with --executor dask"),
])
def test_cli_bad_options_fail_before_any_work(tmp_path, args, text):
    proc = subprocess.run(_cli("--inits", "2", "--run-dir", str(tmp_path / "run"), *args),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and text in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_cli_run_folder_of_another_fit_is_refused(tmp_path):
    run = tmp_path / "run"
    RunFolder(run).open(dict(format=1, model_hash="other"))
    proc = subprocess.run(_cli("--inits", "2", "--run-dir", str(run)), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "holds another fit" in proc.stderr and "model_hash: folder has 'other'" in \
        proc.stderr
    assert RunFolder(run).finished_chunks() == []


# -- Dask -----------------------------------------------------------------------------------
def test_unreachable_scheduler_is_a_clear_error():
    pytest.importorskip("distributed")
    t0 = time.monotonic()
    with pytest.raises(kinabs.DaskError, match=r"could not reach the Dask scheduler at "
                       r"'tcp://127.0.0.1:9' within 2 s"):
        kinabs.dask_client("tcp://127.0.0.1:9", timeout=2)
    assert time.monotonic() - t0 < 120  # generous: only checks that it gives up


def test_cli_unreachable_scheduler_fails_before_any_work(tmp_path):
    pytest.importorskip("distributed")
    proc = subprocess.run(_cli("--inits", "2", "--scheduler", "tcp://127.0.0.1:9",
                               "--run-dir", str(tmp_path / "run")),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "could not reach the Dask scheduler at 'tcp://127.0.0.1:9'" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def client(reference):  # the reference first: it leaves the compiled program on disk
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


def test_dask_local_cluster_fit_of_64_starts(trainer, reference, client, tmp_path):
    res = trainer.train(executor=client, chunk_size=CHUNK, run_dir=tmp_path)
    _assert_same(res, reference)
    assert res.meta["executor"] == "dask"
    workers = {e["worker"] for e in RunFolder(tmp_path).log()}
    assert os.getpid() not in {int(w.rsplit(":", 1)[1]) for w in workers}


def test_dask_worker_killed_mid_run_loses_nothing(trainer, reference, client, tmp_path):
    """Once the first chunk is on disk, the worker process that holds the most unfinished
    chunks is SIGKILLed; Dask reruns them on the other worker (and on the worker that its
    nanny starts again)."""
    killed: list[tuple[int, int]] = []

    def kill_one():
        deadline = time.monotonic() + 300
        while not any((tmp_path / "chunks").glob("chunk-*")) and time.monotonic() < deadline:
            time.sleep(0.005)
        pids = client.run(os.getpid)
        busy = {w: len(keys) for w, keys in client.processing().items()}
        victim = max(pids, key=lambda w: busy.get(w, 0))
        os.kill(pids[victim], signal.SIGKILL)
        killed.append((pids[victim], busy.get(victim, 0)))

    thread = threading.Thread(target=kill_one, daemon=True)
    thread.start()
    res = trainer.train(executor=client, chunk_size=CHUNK, run_dir=tmp_path)
    thread.join(timeout=60)
    assert killed, "no worker was killed"
    pid, in_flight = killed[0]
    assert in_flight >= 1, "the killed worker held no chunk"
    _assert_same(res, reference)  # all 64, equal to the in-process results
    log = RunFolder(tmp_path).log()
    assert sorted(e["chunk"] for e in log) == list(range(8))  # none lost, none twice
    assert len(res.status) == 64 and not any(map(_failed, res.status))
