"""Fixtures shared by the test modules."""

import os

import pytest

# As kinabs.backends.jax does on import, but before any test module imports diffrax (and
# so equinox): in equinox's default "raise" mode its runtime checks are host callbacks,
# which neither jax.export nor JAX's persistent compilation cache can keep, so every
# trainer would compile again instead of loading the session's cached programs.
os.environ.setdefault("EQX_ON_ERROR", "nan")

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
