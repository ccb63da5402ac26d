"""The kinabs command: a short fit of the bundled example writes its files."""

import json
import subprocess
import sys

import pandas as pd


def test_fit_writes_tables_and_plots(tmp_path, monkeypatch):
    monkeypatch.setenv("KINABS_JAX_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "fit"
    proc = subprocess.run(
        [sys.executable, "-m", "kinabs", "fit", "--n-iter", "4", "--inits", "2", "--seed", "1",
         "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "best fit" in proc.stdout
    for name in ("parameters.csv", "loss_history.csv", "summary.csv", "results.json",
                 "loss.png", "fit.png"):
        assert (out / name).is_file(), name
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    losses = pd.read_csv(out / "loss_history.csv", index_col=0)
    assert losses.shape == (2, 4)
    info = json.loads((out / "results.json").read_text())
    assert info["status"] == ["ok", "ok"]


def test_errors_are_one_line_not_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kinabs", "fit", str(tmp_path / "none.xml")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "kinabs: error:" in proc.stderr and "Traceback" not in proc.stderr
