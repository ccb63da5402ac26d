#!/usr/bin/env bash
# Create (idempotently) the virtual environment holding libRoadRunner, the peer of
# benchmarks/bench_simulate.py (CVODE, compiled C++ models): its own venv, so that its
# pinned libraries never meet kinabs'.
#
#   RR_VENV   where to put it (default /work/rr-venv)
#   PYTHON    interpreter to build it with (default python3)
#
# Usage:  bash benchmarks/_roadrunner_env.sh      (prints the venv's python path)
set -euo pipefail
RR_VENV="${RR_VENV:-/work/rr-venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$RR_VENV/bin/python" ]; then
    "$PYTHON" -m venv "$RR_VENV"
fi
if ! "$RR_VENV/bin/python" -c "import roadrunner" 2>/dev/null; then
    "$RR_VENV/bin/python" -m pip install -q "libroadrunner==2.10.0" numpy >&2
fi
echo "$RR_VENV/bin/python"
