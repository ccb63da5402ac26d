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


def test_backends_import_from_a_bare_checkout():
    """Without the install's package-dir mapping (no site processing, the checkout on
    PYTHONPATH), ``kinabs.backends`` still resolves to the top-level backends/ folder."""
    import os
    import site
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), *site.getsitepackages()]))
    code = ("import sys, kinabs, kinabs.backends\n"
            "assert 'kinabs.backends' in sys.modules\n"
            "print(kinabs.backends.__path__[0])\n")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         check=True, env=env, cwd=str(root.parent))
    assert Path(out.stdout.strip()) == root / "backends"
