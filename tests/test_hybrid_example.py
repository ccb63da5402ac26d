"""The hybrid torch example (an MLP in place of one rate law, trained jointly with the
kinetic parameters) runs end to end with --quick and improves the fit."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hybrid_torch.py"


def test_hybrid_torch_example_runs_quick():
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--quick"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"initial loss (\S+)\s+final loss (\S+)", proc.stdout)
    assert m, proc.stdout
    initial, final = float(m.group(1)), float(m.group(2))
    assert final < 0.05 * initial
    assert "learned rate of B -> C" in proc.stdout
