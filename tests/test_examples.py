"""The seed tutorial example runs end to end with small iteration counts."""

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_training_models_example_runs(tmp_path):
    # the subprocess inherits the run's shared JAX cache (KINABS_JAX_CACHE, conftest.py)
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "training_models.py"), "--quick", "--out",
         str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("loss_per_iter.png", "loss_per_iter_extended.png", "fit.png"):
        assert (tmp_path / name).is_file()
    assert "custom loss:" in proc.stdout and "adam:" in proc.stdout
