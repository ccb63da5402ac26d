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


def test_each_backend_implements_the_protocol(backend):
    """Every installed backend: its name, its default optimiser and its Adam pass its own
    check, other things do not, and each gives a training program of the contract."""
    impl = get_backend(backend)
    assert isinstance(impl, kinabs.Backend) and impl.name == backend
    assert get_backend(backend) is impl  # one instance per backend
    impl.check_optimizer(impl.default_optimizer())
    impl.check_optimizer(impl.adam(1e-3))
    for wrong in ("adam", 1e-3, None):
        with pytest.raises(kinabs.BackendError, match=f"the {backend} backend needs"):
            impl.check_optimizer(wrong)


def test_an_explicit_backend_beats_the_environment_variable(monkeypatch, backend):
    monkeypatch.setenv("KINABS_BACKEND", "jax" if backend == "torch" else "torch")
    assert resolve_backend_name(backend) == backend
    monkeypatch.setenv("KINABS_BACKEND", backend)
    assert resolve_backend_name(None) == backend
