"""The JAX cache is code that JAX runs: its folder is private and checked before use, and
every traced program in it is checked against its header (key, environment, sha256) before
it is loaded. Each case must end in a correct result and one warning, never an exception.

The programs are a tiny pure function (``x * k`` on three numbers): what is checked is the
cache, not a model, and they compile in milliseconds."""

import contextlib
import json
import os
import stat
import warnings

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("diffrax")
pytest.importorskip("optax")

import jax.numpy as jnp  # noqa: E402

from kinabs.backends.jax import _program_cache as pc  # noqa: E402

needs_uid = pytest.mark.skipif(not hasattr(os, "getuid"), reason="no user ids, no modes")
X = np.arange(3.0)


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A fresh cache folder (not made yet), and warnings not yet shown."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("KINABS_JAX_CACHE", str(folder))
    monkeypatch.setattr(pc, "_WARNED", set())
    return folder


def times(k):
    """A program (its function and key) per factor ``k``; the key names the factor, as a
    training program's key names its model and data."""
    return (lambda x: x * k), pc.program_key("times", k)


def run(k):
    fn, key = times(k)
    x = jnp.asarray(X)
    return np.asarray(pc.cached_jit(fn, (x,), key)(x))


def entry(root, k):
    return root / "programs" / f"{times(k)[1]}.jaxexport"


def header(path):
    data = path.read_bytes()
    assert data.startswith(pc._MAGIC)
    return json.loads(data[len(pc._MAGIC):data.index(b"\n", len(pc._MAGIC))])


@contextlib.contextmanager
def quiet():
    """Inside: a CacheWarning fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", pc.CacheWarning)
        yield


@needs_uid
def test_folders_are_private_and_entries_carry_their_header(root):
    np.testing.assert_array_equal(run(2), X * 2)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "programs").stat().st_mode) == 0o700
    path = entry(root, 2)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it embeds the training data
    head = header(path)
    assert head["key"] == times(2)[1] and head["environment"] == pc.environment()
    assert {"platform", "device_kind", "jax", "jaxlib", "equinox", "diffrax", "optimistix",
            "EQX_ON_ERROR"} <= set(head["environment"])
    with quiet():  # the warm path: loaded, no warning
        np.testing.assert_array_equal(run(2), X * 2)
    # JAX's settings are kinabs' only during its compilations
    assert jax.config.jax_compilation_cache_dir is None


@needs_uid
def test_a_readable_folder_of_ours_is_made_private(root):
    root.mkdir(mode=0o755)
    root.chmod(0o755)  # as an older kinabs made it
    with quiet():
        np.testing.assert_array_equal(run(2), X * 2)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_an_entry_copied_over_from_another_program_is_rebuilt(root):
    run(2), run(3)
    entry(root, 2).write_bytes(entry(root, 3).read_bytes())
    with pytest.warns(pc.CacheWarning, match="another program"):
        np.testing.assert_array_equal(run(2), X * 2)
    assert header(entry(root, 2))["key"] == times(2)[1]  # rebuilt
    with quiet():
        np.testing.assert_array_equal(run(2), X * 2)


@pytest.mark.parametrize("where", [-1, -200])
def test_a_byte_flipped_entry_is_rebuilt(root, where):
    run(2)
    data = bytearray(entry(root, 2).read_bytes())
    data[where] ^= 0x01
    entry(root, 2).write_bytes(bytes(data))
    with pytest.warns(pc.CacheWarning, match="sha256"):
        np.testing.assert_array_equal(run(2), X * 2)
    with quiet():
        np.testing.assert_array_equal(run(2), X * 2)


def test_an_entry_of_another_platform_is_rebuilt(root):
    run(2)
    path = entry(root, 2)
    data = path.read_bytes()
    blob = data[data.index(b"\n", len(pc._MAGIC)) + 1:]
    gpu = dict(pc.environment(), platform="gpu", device_kind="NVIDIA H100 80GB HBM3")
    path.write_bytes(pc._entry_bytes(times(2)[1], gpu, blob))
    with pytest.warns(pc.CacheWarning, match="made for gpu"):
        np.testing.assert_array_equal(run(2), X * 2)
    assert header(path)["environment"] == pc.environment()


@pytest.mark.parametrize("content", [b"", b"not a kinabs entry", pc._MAGIC + b"{\n..."])
def test_an_entry_without_a_valid_header_is_rebuilt(root, content):
    (root / "programs").mkdir(parents=True, mode=0o700)
    entry(root, 2).write_bytes(content)
    with pytest.warns(pc.CacheWarning, match="header"):
        np.testing.assert_array_equal(run(2), X * 2)
    assert header(entry(root, 2))["key"] == times(2)[1]


def _refused(root, match):
    """Two runs: correct results, one warning naming the folder, nothing written, JAX's
    cache settings untouched."""
    with pytest.warns(pc.CacheWarning, match=match) as caught:
        np.testing.assert_array_equal(run(2), X * 2)
        np.testing.assert_array_equal(run(2), X * 2)
    messages = [str(w.message) for w in caught if w.category is pc.CacheWarning]
    assert len(messages) == 1, messages  # once per process, not once per compilation
    assert str(root) in messages[0]
    assert jax.config.jax_compilation_cache_dir is None


@needs_uid
@pytest.mark.parametrize("sub", ["", "programs"])
def test_a_group_writable_folder_is_not_used(root, sub):
    (root / "programs").mkdir(parents=True, mode=0o700)
    (root / sub).chmod(0o775)
    _refused(root, "can be written by other users")
    assert not list((root / "programs").iterdir())
    assert stat.S_IMODE((root / sub).stat().st_mode) == 0o775  # not "fixed" silently


@needs_uid
def test_a_folder_of_another_user_is_not_used(root, monkeypatch):
    root.mkdir(mode=0o700)
    monkeypatch.setattr(pc, "_uid", lambda: os.getuid() + 1)
    _refused(root, "belongs to user id")
    assert not (root / "programs").exists()


def test_without_user_ids_the_owner_is_not_checked(root, monkeypatch):
    monkeypatch.setattr(pc, "_uid", lambda: None)
    root.mkdir(mode=0o700)
    root.chmod(0o777)  # Windows reports folders so: only ACLs say who may write
    with quiet():
        np.testing.assert_array_equal(run(2), X * 2)
    assert entry(root, 2).is_file()


def test_a_file_as_cache_folder_disables_the_cache(root):
    root.write_text("not a folder")
    _refused(root, "cannot be created")
    assert root.read_text() == "not a folder"


def test_a_home_without_room_for_the_cache_disables_it(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.write_text("")  # as unwritable as a read-only HOME, for root too
    monkeypatch.delenv("KINABS_JAX_CACHE")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))
    monkeypatch.setattr(pc, "_WARNED", set())
    _refused(home, "cannot be created")


def test_an_unwritable_programs_folder_disables_the_program_cache(root):
    root.mkdir(mode=0o700)
    (root / "programs").write_text("")
    with pytest.warns(pc.CacheWarning, match="traced programs"):
        np.testing.assert_array_equal(run(2), X * 2)


def test_the_compilation_cache_check_comes_first(root):
    _train = pytest.importorskip("kinabs.backends.jax._train")
    root.write_text("")
    with pytest.warns(pc.CacheWarning, match="cannot be created"):
        assert _train.enable_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir is None


def test_jax_settings_are_restored_and_a_user_cache_left_alone(root, tmp_path):
    names = ["jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes"]
    before = [getattr(jax.config, n) for n in names]
    with pc.persistent_compilation_cache(root):
        assert jax.config.jax_compilation_cache_dir == str(root)
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    assert [getattr(jax.config, n) for n in names] == before
    mine = str(tmp_path / "users")
    jax.config.update("jax_compilation_cache_dir", mine)
    try:
        with pc.persistent_compilation_cache(root):
            assert jax.config.jax_compilation_cache_dir == mine
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])


def test_the_oldest_entries_are_evicted(tmp_path, monkeypatch):
    for i in range(4):
        path = tmp_path / f"{i}.jaxexport"
        path.write_bytes(b"x" * 100)
        os.utime(path, (1000 + i, 1000 + i))
    (tmp_path / "other.tmp").write_bytes(b"x" * 1000)  # not an entry
    pc._evict(tmp_path, 250)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2.jaxexport", "3.jaxexport",
                                                         "other.tmp"]
    monkeypatch.setattr(pc, "_WARNED", set())
    monkeypatch.setenv("KINABS_JAX_CACHE_MAX_MB", "0.5")
    assert pc._max_bytes() == 2**19
    monkeypatch.setenv("KINABS_JAX_CACHE_MAX_MB", "lots")
    with pytest.warns(pc.CacheWarning, match="KINABS_JAX_CACHE_MAX_MB"):
        assert pc._max_bytes() == pc.DEFAULT_MAX_MB * 2**20


def test_the_size_bound_applies_when_writing(root, monkeypatch):
    monkeypatch.setenv("KINABS_JAX_CACHE_MAX_MB", "0")
    np.testing.assert_array_equal(run(2), X * 2)
    assert not list((root / "programs").glob("*.jaxexport"))
