"""A disk cache of traced training programs (``jax.export``), so that a second run of
the same fit skips Python tracing; XLA compilation is skipped too, by JAX's persistent
compilation cache. A program is cached only when everything it closes over has a key:
the generated model code, the data, the options, the default optimizer and loss. Every
key also covers kinabs' own source code, read from its package folders, and the platform
and library versions the program was made with.

The cache is code: JAX runs what it loads from it (native code, from its compilation
cache; traced programs, from ``programs/``), and its entries embed the training data. So
its folder is made 0700 (entries 0600) and used only while it belongs to the current
user and nobody else can write to it; otherwise kinabs warns once and runs without it.
Each ``programs/`` entry carries a header with its key, its environment and a sha256
digest of its content: an entry that does not match (damaged, copied over from another
fit, made on another platform) is deleted, rebuilt and reported. The digest detects
accidents, not forgery: what keeps others from writing entries is the folder check.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import stat
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from kinabs import _version

__all__ = ["program_key", "cached_jit", "package_folders", "source_files", "source_digest",
           "CacheWarning", "cache_root", "environment", "persistent_compilation_cache"]


class CacheWarning(UserWarning):
    """kinabs runs without (part of) its JAX cache, or rebuilt an entry of it."""


#: The messages already shown: a folder problem is reported once per process, not at
#: every compilation.
_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, CacheWarning, stacklevel=3)


def _uid() -> int | None:
    """The current user's id; None where the platform has none (Windows)."""
    getuid = getattr(os, "getuid", None)
    return getuid() if getuid is not None else None


def _folder_problem(path: Path) -> str | None:
    """Create ``path`` (mode 0700) if missing; None if it is a folder that only the
    current user can write, else what is wrong with it and the fix."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()  # follows a link: what counts is the folder written to
    except (OSError, RuntimeError) as exc:  # a file there, read-only HOME, no HOME
        return f"cannot be created ({exc}); set KINABS_JAX_CACHE to a folder you can write"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a folder; set KINABS_JAX_CACHE to a folder of your own"
    uid = _uid()
    if uid is None:
        # No user ids: permissions are ACLs there, and the mode bits Python reports say
        # nothing about who else can write.
        return None
    if st.st_uid != uid:
        return (f"belongs to user id {st.st_uid}, not to you ({uid}); set "
                "KINABS_JAX_CACHE to a folder of your own")
    if st.st_mode & 0o022:
        # Others may already have planted entries: tightening it now would trust them.
        return ("can be written by other users; delete it (or `chmod go-w` it if you "
                "trust everything in it)")
    if st.st_mode & 0o077:
        # Ours and written by us alone, but readable by others (made by an older
        # kinabs, mode 0755): its entries embed the training data.
        with contextlib.suppress(OSError):
            path.chmod(0o700)
    return None


def cache_root() -> Path | None:
    """The cache folder (``KINABS_JAX_CACHE``, else ~/.cache/kinabs/jax) if it may be
    used: None when ``KINABS_JAX_CACHE=0``, or (with a warning, once) when the folder
    cannot be made or someone else could write to it."""
    setting = os.environ.get("KINABS_JAX_CACHE", "")
    if setting == "0":
        return None
    try:
        root = Path(setting) if setting else Path.home() / ".cache" / "kinabs" / "jax"
    except RuntimeError as exc:  # no home folder to be found
        _warn_once(f"kinabs runs without its JAX cache: {exc}; set KINABS_JAX_CACHE")
        return None
    problem = _folder_problem(root)
    if problem is not None:
        _warn_once(f"kinabs runs without its JAX cache: the folder {root} {problem} "
                   "(KINABS_JAX_CACHE=0 turns the cache off without this warning). The "
                   "cache holds code that JAX runs.")
        return None
    return root


def _cache_dir(root: Path | None) -> Path | None:
    """The folder of traced programs, ``programs/`` in ``root`` (from :func:`cache_root`),
    checked as that one is."""
    if root is None:
        return None
    folder = root / "programs"
    problem = _folder_problem(folder)
    if problem is not None:
        _warn_once(f"kinabs runs without its cache of traced programs: the folder {folder} "
                   f"{problem}. The cache holds code that JAX runs.")
        return None
    return folder


#: The packages whose versions shape a traced program (optimistix: diffrax's root finder
#: for implicit solvers, when installed).
_PACKAGES = ("jax", "jaxlib", "equinox", "diffrax", "optimistix", "optax")


@functools.cache
def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"kinabs": _version.__version__}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment() -> dict[str, Any]:
    """What a traced program depends on besides its inputs and kinabs' code: the device
    it runs on (``jax.devices()[0]``, as the training programs), the library versions and
    equinox's error mode (``EQX_ON_ERROR``, read by equinox when imported)."""
    device = jax.devices()[0]
    eqx_config = sys.modules.get("equinox._config")
    on_error = getattr(eqx_config, "EQX_ON_ERROR", None) or os.environ.get(
        "EQX_ON_ERROR", "raise")
    return {"platform": device.platform, "device_kind": device.device_kind,
            **_versions(), "EQX_ON_ERROR": on_error}


def program_key(*parts: Any) -> str:
    """A hash of ``parts`` (strings, numbers, numpy arrays), kinabs' source code and the
    :func:`environment` (platform, device kind, library versions, ``EQX_ON_ERROR``).

    Example:
        >>> from kinabs.backends.jax._program_cache import program_key
        >>> len(program_key("a", 1)), program_key("a", 1) == program_key("a", 2)
        (32, False)
    """
    h = hashlib.sha256()
    h.update(_installed_digest())
    for part in (json.dumps(environment(), sort_keys=True), *parts):
        if isinstance(part, np.ndarray):
            h.update(str(part.dtype).encode() + str(part.shape).encode())
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(repr(part).encode())
        h.update(b"|")
    return h.hexdigest()[:32]


def package_folders() -> tuple[Path, ...]:
    """The folders whose code shapes a traced program: the ``kinabs`` package (the model
    code generation, the losses, the solver policy) and this backend's package."""
    return Path(_version.__file__).resolve().parent, Path(__file__).resolve().parent


def source_files(folders: Iterable[Path]) -> list[tuple[str, Path]]:
    """Every ``.py`` file below ``folders``, as (folder name/relative path, path), sorted.

    Whole folders, not a list of modules: a file renamed, moved or added is hashed
    without anyone remembering to list it."""
    files = []
    for folder in folders:
        folder = Path(folder)
        for path in folder.rglob("*.py"):
            files.append((f"{folder.name}/{path.relative_to(folder).as_posix()}", path))
    return sorted(files)


def source_digest(folders: Iterable[Path]) -> bytes:
    """Hash of the names and contents of the ``.py`` files below ``folders``; the same
    for a copy of them anywhere."""
    h = hashlib.sha256()
    for name, path in source_files(folders):
        data = path.read_bytes()
        # lengths delimit the fields: no two different trees hash the same bytes
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.digest()


@functools.cache
def _installed_digest() -> bytes:
    """:func:`source_digest` of the running kinabs, once per process: an edited kinabs
    never loads a program traced by an older one."""
    return source_digest(package_folders())


# -- entries of programs/ ---------------------------------------------------------------
#: First line of every entry; the second is a JSON header, then the serialized program.
_MAGIC = b"kinabs-jaxexport 1\n"
#: A header is a few hundred bytes: a longer "first line" is not one.
_MAX_HEADER = 1 << 16


def _entry_bytes(key: str, env: dict[str, Any], blob: bytes) -> bytes:
    header = {"key": key, "environment": env, "size": len(blob),
              "sha256": hashlib.sha256(blob).hexdigest()}
    return _MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + blob


def _entry_problem(data: bytes, key: str, env: dict[str, Any]) -> tuple[str | None, bytes]:
    """(None, serialized program) if ``data`` is an intact entry for ``key`` made in
    ``env``; else (what is wrong, b"")."""
    if not data.startswith(_MAGIC):
        return "has no kinabs header", b""
    end = data.find(b"\n", len(_MAGIC), len(_MAGIC) + _MAX_HEADER)
    try:
        header = json.loads(data[len(_MAGIC):end]) if end >= 0 else None
    except ValueError:  # also UnicodeDecodeError
        header = None
    if not isinstance(header, dict):
        return "has a damaged header", b""
    if header.get("environment") != env:
        made = header.get("environment")
        if isinstance(made, dict) and made.get("platform") != env["platform"]:
            return (f"was made for {made.get('platform')} ({made.get('device_kind')}), "
                    f"not {env['platform']} ({env['device_kind']})"), b""
        return "was made with other library versions or settings", b""
    if header.get("key") != key:
        return "belongs to another program (its header names another key)", b""
    blob = data[end + 1:]
    if header.get("size") != len(blob) or (
            header.get("sha256") != hashlib.sha256(blob).hexdigest()):
        return "is damaged (its content does not match its sha256 digest)", b""
    return None, blob


def _load(path: Path, key: str, env: dict[str, Any]):
    """The program stored at ``path``, or None (missing; or rejected, deleted and
    reported)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        problem = f"cannot be read ({exc})"
    else:
        problem, blob = _entry_problem(data, key, env)
        if problem is None:
            try:
                exported = jax.export.deserialize(bytearray(blob))
            except Exception as exc:  # noqa: BLE001 - e.g. written by another jax
                problem = f"cannot be deserialized ({type(exc).__name__})"
            else:
                with contextlib.suppress(OSError):
                    os.utime(path)  # recently used: the last to be evicted
                return exported
    with contextlib.suppress(OSError):
        path.unlink()
    warnings.warn(f"kinabs: the cached program {path} {problem}; deleted, and rebuilt.",
                  CacheWarning, stacklevel=3)
    return None


def _write(path: Path, data: bytes) -> None:
    # mkstemp makes the file 0600: the entry embeds the training data. Atomic replace:
    # concurrent runs never see half a file.
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    except OSError as exc:  # disk full, read-only file system: the fit goes on
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        _warn_once(f"kinabs could not write to its cache of traced programs in "
                   f"{path.parent} ({exc}); the fit goes on without it.")


#: Default bound of ``programs/`` (``KINABS_JAX_CACHE_MAX_MB``).
DEFAULT_MAX_MB = 2048


def _max_bytes() -> int:
    setting = os.environ.get("KINABS_JAX_CACHE_MAX_MB", "")
    try:
        return int(float(setting) * 2**20) if setting else DEFAULT_MAX_MB * 2**20
    except ValueError:
        _warn_once(f"KINABS_JAX_CACHE_MAX_MB={setting!r} is not a number of megabytes; "
                   f"kinabs uses {DEFAULT_MAX_MB}.")
        return DEFAULT_MAX_MB * 2**20


def _evict(folder: Path, limit: int) -> None:
    """Delete the least recently used entries of ``folder`` until they total at most
    ``limit`` bytes (entries are touched when loaded)."""
    entries = []
    for path in folder.glob("*.jaxexport"):
        with contextlib.suppress(OSError):  # another process may delete it meanwhile
            st = path.stat()
            entries.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries, key=lambda e: e[:2]):
        if total <= limit:
            break
        with contextlib.suppress(OSError):
            path.unlink()
        total -= size


# -- JAX's persistent compilation cache -------------------------------------------------
#: Held while JAX's cache settings are kinabs': one compilation at a time sets them.
_CONFIG_LOCK = threading.RLock()


@contextlib.contextmanager
def persistent_compilation_cache(root: Path | None) -> Iterator[None]:
    """Within: JAX's persistent compilation cache in ``root`` (every program cached,
    however fast to compile); afterwards, JAX's settings as they were, so that the host
    program's own ``jit``s never read native code from kinabs' folder nor write there.

    Nothing changes where ``root`` is None or the host program set a cache folder (or
    switched JAX's cache off) itself. JAX keeps one cache object per process, made at the
    first compilation with a folder set: ``reset_cache`` (public, in
    ``jax.experimental.compilation_cache``) drops it on the way in and out. A compilation
    on another thread while inside also uses kinabs' folder."""
    from jax.experimental.compilation_cache.compilation_cache import reset_cache

    if (root is None or jax.config.jax_compilation_cache_dir
            or not jax.config.jax_enable_compilation_cache):
        yield
        return
    settings = {"jax_compilation_cache_dir": str(root),
                "jax_persistent_cache_min_compile_time_secs": 0.0,
                "jax_persistent_cache_min_entry_size_bytes": 0}
    with _CONFIG_LOCK:
        saved = {name: getattr(jax.config, name) for name in settings}
        try:
            for name, value in settings.items():
                jax.config.update(name, value)
            reset_cache()
            yield
        finally:
            for name, value in saved.items():
                jax.config.update(name, value)
            reset_cache()


class _Program:
    """A jitted program whose first call, the one that compiles it, runs inside
    :func:`persistent_compilation_cache`; later calls (same shapes: the training
    programs' inputs never change) go straight to it."""

    __slots__ = ("_jitted", "_root", "_compiled")

    def __init__(self, jitted: Any, root: Path | None):
        self._jitted, self._root, self._compiled = jitted, root, False

    def __call__(self, *args):
        if self._compiled:
            return self._jitted(*args)
        with persistent_compilation_cache(self._root):
            out = self._jitted(*args)
        self._compiled = True
        return out


def cached_jit(fn: Any, example_args: tuple, key: str | None):
    """``jax.jit(fn)``, or a program loaded from (or written to) the disk cache when a
    key is given; compiled (at its first call) with JAX's persistent compilation cache in
    :func:`cache_root`. ``example_args`` fixes shapes and dtypes (pytrees of arrays)."""
    root = cache_root()
    folder = _cache_dir(root) if key is not None else None
    if folder is None:
        return _Program(jax.jit(fn), root)
    path = folder / f"{key}.jaxexport"
    env = environment()
    exported = _load(path, key, env)
    if exported is not None:
        return _Program(jax.jit(exported.call), root)
    specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), example_args)
    try:
        exported = jax.export.export(jax.jit(fn))(*specs)
    except NotImplementedError:
        # e.g. host callbacks (equinox runtime errors when EQX_ON_ERROR is not "nan")
        return _Program(jax.jit(fn), root)
    try:
        blob = exported.serialize()
    except ImportError:  # flatbuffers missing: no disk cache, same program
        return _Program(jax.jit(exported.call), root)
    _write(path, _entry_bytes(key, env, bytes(blob)))
    _evict(folder, _max_bytes())
    return _Program(jax.jit(exported.call), root)
