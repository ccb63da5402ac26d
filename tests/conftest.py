"""Fixtures shared by the test modules."""

import pytest

import kinabs


@pytest.fixture(scope="session", autouse=True)
def _jax_cache(tmp_path_factory):
    """Compiled and traced programs go to a per-session folder, never to ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("KINABS_JAX_CACHE", str(tmp_path_factory.mktemp("kinabs_jax_cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def model():
    """The bundled serine biosynthesis model."""
    return kinabs.load_sbml(kinabs.example_model_path())
