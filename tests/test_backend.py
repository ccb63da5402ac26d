"""Backend selection: argument, then KINABS_BACKEND, then jax; clear errors."""

import pytest

import kinabs
from kinabs._backend import BACKENDS, get_backend, resolve_backend_name


def test_default_is_jax(monkeypatch):
    monkeypatch.delenv("KINABS_BACKEND", raising=False)
    assert resolve_backend_name(None) == "jax"


def test_environment_variable_is_used_and_validated(monkeypatch):
    monkeypatch.setenv("KINABS_BACKEND", "torch")
    assert resolve_backend_name(None) == "torch"
    assert resolve_backend_name("jax") == "jax"  # the argument wins
    monkeypatch.setenv("KINABS_BACKEND", "tensorflow")
    with pytest.raises(kinabs.BackendError, match="KINABS_BACKEND"):
        resolve_backend_name(None)


def test_unknown_backend_names_the_choices():
    with pytest.raises(kinabs.BackendError, match="choose one of"):
        get_backend("numpy")


def test_missing_packages_name_the_install_command(monkeypatch):
    monkeypatch.setitem(BACKENDS, "ghost", ("kinabs.backends.ghost", "pip install ghost"))
    with pytest.raises(kinabs.BackendError, match="pip install ghost"):
        get_backend("ghost")


def test_backend_protocol_is_implemented():
    backend = get_backend("jax")
    assert isinstance(backend, kinabs.Backend)
    assert backend.name == "jax"
