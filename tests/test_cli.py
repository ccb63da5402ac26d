"""The kinabs command: a short fit of the bundled example writes its files and plots
(the waterfall too) and prints status and iterations (on every backend), a simulation is written as CSV, and errors are one line."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import kinabs
from kinabs._cli import main


def test_fit_writes_tables_and_plots(tmp_path, backend):
    # the subprocess inherits the run's shared JAX cache (KINABS_JAX_CACHE, conftest.py)
    out = tmp_path / "fit"
    proc = subprocess.run(
        [sys.executable, "-m", "kinabs", "fit", "--n-iter", "4", "--inits", "2", "--seed", "1",
         "--backend", backend, "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "best fit" in proc.stdout and f"iterations on {backend}" in proc.stdout
    for name in ("parameters.csv", "loss_history.csv", "summary.csv", "results.json",
                 "loss.png", "fit.png", "waterfall.png"):
        assert (out / name).is_file(), name
    for name in ("loss.png", "fit.png", "waterfall.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    losses = pd.read_csv(out / "loss_history.csv", index_col=0)
    assert losses.shape == (2, 4) and np.isfinite(losses.iloc[:, 0]).all()
    info = json.loads((out / "results.json").read_text())
    # ok (first-order optimisers), converged or max_iterations (methods with convergence
    # tests): which depends on the default optimiser; no start failed
    assert len(info["status"]) == 2
    assert not any(s.startswith("failed") for s in info["status"])
    assert np.all(np.asarray(info["final_loss"]) < losses.iloc[:, 0].to_numpy())
    assert info["backend"] == backend
    # the printed table of the best starts: status, iterations and evaluations per start
    lines = proc.stdout.splitlines()
    head = lines.index("best starts:") + 1
    assert lines[head].split() == ["final_loss", "status", "iterations", "evaluations"]
    for line in lines[head + 2:head + 4]:
        init, loss, status, iterations, evaluations = line.split()
        assert status == info["status"][int(init)]
        assert int(iterations) == info["iterations"][int(init)]
        assert int(evaluations) == info["evaluations"][int(init)]
        assert float(loss) == pytest.approx(info["final_loss"][int(init)], rel=1e-5,
                                                 abs=5e-7)  # printed to 6 decimals
    counts = {k: info["status"].count(k) for k in ("ok", "converged", "max_iterations")}
    assert "starts: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v) in lines
    assert "waterfall.png" in lines[-1]


def test_simulate_writes_the_simulation(tmp_path, backend, capsys):
    out = tmp_path / "sim.csv"
    path = str(kinabs.example_model_path())
    assert main(["simulate", path, "--t-end", "5", "--points", "6", "--backend", backend,
                 "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    got = pd.read_csv(out, index_col=0)
    want = kinabs.simulate(kinabs.load_sbml(path), np.linspace(0, 5, 6),
                           backend=backend).to_frame()
    assert list(got.columns) == list(want.columns)
    np.testing.assert_allclose(got.index, want.index)
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-12)


def test_errors_are_one_line_not_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kinabs", "fit", str(tmp_path / "none.xml")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "kinabs: error:" in proc.stderr and "Traceback" not in proc.stderr
