#!/usr/bin/env bash
# Create (idempotently) the virtual environment of the field's reference peer for PEtab
# fitting: pyPESTO with AMICI (CVODES, forward and adjoint sensitivities) and Fides,
# used by benchmarks/peer_pypesto.py (run by benchmarks/bench_petab_fit.py --peer).
#
#   PYPESTO_VENV   where to put it (default /work/pypesto-venv)
#   PYTHON         interpreter to build it with (default python3)
#
# Usage:  bash benchmarks/_pypesto_env.sh       (prints the venv's python path last)
#         "$PYPESTO_VENV/bin/python" benchmarks/peer_pypesto.py --problem Boehm_JProteomeRes2014
#
# AMICI is an sdist: pip compiles its C++ core (SUNDIALS, SuiteSparse) once, about 10 min
# on 2 cores. The per-problem C++ models that peer_pypesto.py builds are cached in
# $PYPESTO_VENV/amici_models/<problem> and reused by later runs.
# On Python 3.11 (this machine's) the newest releases that install are amici 1.0.1,
# pypesto 0.7.0 and fides 0.8.0 (amici 1.1.0 and fides 0.8.1+ need Python >= 3.12).
set -euo pipefail
PYPESTO_VENV="${PYPESTO_VENV:-/work/pypesto-venv}"
PYTHON="${PYTHON:-python3}"
PKGS=("amici[petab]==1.0.1" "pypesto==0.7.0" "fides==0.8.0" "petab")

# System packages AMICI's build needs: a C++ compiler, BLAS and HDF5 headers. SWIG comes
# from PyPI (the 'swig' package, an AMICI dependency) into the venv; peer_pypesto.py puts
# the venv's swig first, since models must be wrapped by the SWIG that built AMICI.
missing=()
command -v g++ >/dev/null || missing+=(g++)
[ -e /usr/include/x86_64-linux-gnu/cblas.h ] || [ -e /usr/include/cblas.h ] \
    || missing+=(libopenblas-dev)
[ -e /usr/include/hdf5/serial/hdf5.h ] || [ -e /usr/include/hdf5.h ] || missing+=(libhdf5-dev)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    else
        echo "missing system packages: ${missing[*]} (install them, e.g. with apt-get)" >&2
        exit 1
    fi
fi

if [ ! -x "$PYPESTO_VENV/bin/python" ]; then
    "$PYTHON" -m venv "$PYPESTO_VENV"
fi
if ! "$PYPESTO_VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as m, sys
import amici, pypesto, fides, petab  # noqa: F401  (the C++ extension must load too)
sys.exit(0 if (m.version("amici"), m.version("pypesto")) == ("1.0.1", "0.7.0") else 1)
PY
then
    "$PYPESTO_VENV/bin/python" -m pip install --upgrade pip >&2
    # AMICI_PARALLEL_COMPILE: jobs for AMICI's own and its models' C++ builds
    AMICI_PARALLEL_COMPILE="${AMICI_PARALLEL_COMPILE:-$(nproc)}" \
        "$PYPESTO_VENV/bin/python" -m pip install "${PKGS[@]}" >&2
fi
mkdir -p "$PYPESTO_VENV/amici_models"
"$PYPESTO_VENV/bin/python" - <<'PY' >&2
import importlib.metadata as m
for p in ("amici", "pypesto", "fides", "petab", "numpy", "scipy", "sympy", "python-libsbml"):
    try:
        print(f"{p}=={m.version(p)}")
    except m.PackageNotFoundError:
        print(f"{p}: not installed")
PY
echo "$PYPESTO_VENV/bin/python"
