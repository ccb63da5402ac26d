"""A disk cache of traced training programs (``jax.export``), so that a second run of
the same fit skips Python tracing; XLA compilation is skipped too, by JAX's persistent
compilation cache. A program is cached only when everything it closes over has a key:
the generated model code, the data, the options, the default optimizer and loss. Every
key also covers kinabs' own source code, read from its package folders.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import diffrax
import jax
import numpy as np
import optax

from kinabs import _version

__all__ = ["program_key", "cached_jit", "package_folders", "source_files", "source_digest"]


def _cache_dir() -> Path | None:
    setting = os.environ.get("KINABS_JAX_CACHE", "")
    if setting == "0":
        return None
    root = Path(setting) if setting else Path.home() / ".cache" / "kinabs" / "jax"
    return root / "programs"


def program_key(*parts: Any) -> str:
    """A hash of ``parts`` (strings, numbers, numpy arrays), kinabs' source code and the
    library versions.

    Example:
        >>> from kinabs.backends.jax._program_cache import program_key
        >>> len(program_key("a", 1)), program_key("a", 1) == program_key("a", 2)
        (32, False)
    """
    h = hashlib.sha256()
    h.update(_installed_digest())
    for part in (_version.__version__, jax.__version__, diffrax.__version__, optax.__version__,
                 *parts):
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


def cached_jit(fn: Any, example_args: tuple, key: str | None):
    """``jax.jit(fn)``, or a program loaded from (or written to) the disk cache when a
    key is given. ``example_args`` fixes shapes and dtypes (pytrees of arrays)."""
    folder = _cache_dir()
    if key is None or folder is None:
        return jax.jit(fn)
    path = folder / f"{key}.jaxexport"
    if path.is_file():
        try:
            exported = jax.export.deserialize(bytearray(path.read_bytes()))
            return jax.jit(exported.call)
        except Exception:  # noqa: BLE001 - a stale or corrupt entry is rebuilt below
            path.unlink(missing_ok=True)
    specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), example_args)
    try:
        exported = jax.export.export(jax.jit(fn))(*specs)
    except NotImplementedError:
        # e.g. host callbacks (equinox runtime errors when EQX_ON_ERROR is not "nan")
        return jax.jit(fn)
    try:
        blob = exported.serialize()
    except ImportError:  # flatbuffers missing: no disk cache, same program
        return jax.jit(exported.call)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, delete=False, suffix=".tmp") as tmp:
        tmp.write(blob)
    os.replace(tmp.name, path)  # atomic: concurrent runs never see half a file
    return jax.jit(exported.call)
