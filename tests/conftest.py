"""Fixtures shared by the test modules (the root conftest.py sets EQX_ON_ERROR and the
per-session JAX cache folder for tests and doctests alike)."""

import importlib.util

import pytest

import kinabs
from kinabs._backend import BACKENDS

#: The packages each backend needs (as in pyproject.toml's extras).
BACKEND_PACKAGES = {"jax": ("jax", "diffrax", "optax", "equinox"),
                    "torch": ("torch", "torchdiffeq")}
assert set(BACKEND_PACKAGES) == set(BACKENDS), "a backend without its packages listed here"


def _missing(name: str) -> list[str]:
    return [p for p in BACKEND_PACKAGES[name] if importlib.util.find_spec(p) is None]


@pytest.fixture(scope="module", params=[
    pytest.param(name, id=name, marks=pytest.mark.skipif(
        bool(_missing(name)), reason=f"the {name} backend needs {_missing(name)}"))
    for name in BACKEND_PACKAGES])
def backend(request) -> str:
    """The name of each installed backend in turn: a test that takes it runs once per
    backend (ids ``[jax]`` and ``[torch]``) and is skipped for a backend whose packages are
    missing. Module-scoped, so that module fixtures (shared trainers) can take it too."""
    return request.param


@pytest.fixture(scope="module")
def other_backend(backend) -> str:
    """The backend that is not ``backend`` (skips where it is not installed)."""
    (other,) = [b for b in BACKEND_PACKAGES if b != backend]
    if _missing(other):
        pytest.skip(f"the {other} backend needs {_missing(other)}")
    return other


@pytest.fixture(scope="module")
def adam(backend):
    """``adam(learning_rate)``: the same Adam on every backend (``Backend.adam``: optax.adam
    on JAX, torch.optim.Adam on torch), in the form ``kinabs.Trainer(optimizer=...)``
    takes."""
    return kinabs.get_backend(backend).adam


@pytest.fixture(scope="session")
def model():
    """The bundled serine biosynthesis model."""
    return kinabs.load_sbml(kinabs.example_model_path())
