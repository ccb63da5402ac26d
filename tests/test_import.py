"""The core imports no array library: a fresh interpreter checks sys.modules."""

import subprocess
import sys


def test_import_kinabs_leaves_jax_and_torch_out():
    code = (
        "import sys, kinabs\n"
        "m = kinabs.load_sbml(kinabs.example_model_path())\n"
        "s = kinabs.lower(m); s.generated\n"
        "heavy = [n for n in ('jax', 'torch', 'diffrax', 'optax', 'torchdiffeq', 'equinox')"
        " if n in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "", f"imported at import time: {out.stdout}"
