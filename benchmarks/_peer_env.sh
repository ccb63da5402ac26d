#!/usr/bin/env bash
# Create (idempotently) the virtual environment holding the peer library,
# jaxkineticmodel 0.0.4, used by benchmarks/peer_serine_fit.py.
#
#   PEER_VENV   where to put it (default /work/peer-venv)
#   PYTHON      interpreter to build it with (default python3)
#
# Usage:  bash benchmarks/_peer_env.sh          (prints the venv's python path)
#         "$PEER_VENV/bin/python" benchmarks/peer_serine_fit.py
# jaxkineticmodel 0.0.4 pins jax 0.4.35 and its own diffrax/optax, so it must not
# share an environment with kinabs.
set -euo pipefail
PEER_VENV="${PEER_VENV:-/work/peer-venv}"
PYTHON="${PYTHON:-python3}"
PEER_PKG="jaxkineticmodel==0.0.4"

if [ ! -x "$PEER_VENV/bin/python" ]; then
    "$PYTHON" -m venv "$PEER_VENV"
fi
if ! "$PEER_VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as m, sys
sys.exit(0 if m.version("jaxkineticmodel") == "0.0.4" else 1)
PY
then
    "$PEER_VENV/bin/python" -m pip install --upgrade pip >/dev/null
    "$PEER_VENV/bin/python" -m pip install "$PEER_PKG"
fi
"$PEER_VENV/bin/python" - <<'PY' >&2
import importlib.metadata as m
for p in ("jaxkineticmodel", "jax", "jaxlib", "diffrax", "optax", "equinox", "python-libsbml", "sympy"):
    try:
        print(f"{p}=={m.version(p)}")
    except m.PackageNotFoundError:
        print(f"{p}: not installed")
PY
echo "$PEER_VENV/bin/python"
