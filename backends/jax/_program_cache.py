"""A disk cache of traced training programs (``jax.export``), so that a second run of
the same fit skips Python tracing; XLA compilation is skipped too, by JAX's persistent
compilation cache. A program is cached only when everything it closes over has a key:
the generated model code, the data, the options, the default optimizer and loss.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["program_key", "cached_jit"]


def _cache_dir() -> Path | None:
    setting = os.environ.get("KINABS_JAX_CACHE", "")
    if setting == "0":
        return None
    root = Path(setting) if setting else Path.home() / ".cache" / "kinabs" / "jax"
    return root / "programs"


def program_key(*parts: Any) -> str:
    """A hash of ``parts`` (strings, numbers, numpy arrays) and the library versions."""
    import diffrax
    import optax

    import kinabs

    h = hashlib.sha256()
    h.update(_source_digest())
    for part in (kinabs.__version__, jax.__version__, diffrax.__version__, optax.__version__,
                 *parts):
        if isinstance(part, np.ndarray):
            h.update(str(part.dtype).encode() + str(part.shape).encode())
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(repr(part).encode())
        h.update(b"|")
    return h.hexdigest()[:32]


_SOURCES = ("kinabs/_losses.py", "kinabs/_lowering/ops.py", "kinabs/_lowering/codegen.py", "kinabs/_lowering/vectorize.py",
            "kinabs/backends/jax/_train.py",
            "kinabs/backends/jax/_backend.py", "kinabs/backends/jax/_ops.py",
            "kinabs/backends/jax/_program_cache.py")
_DIGEST: bytes | None = None


def _source_digest() -> bytes:
    """Hash of the code that shapes a traced program, so an edited kinabs never loads a
    program traced by an older one."""
    global _DIGEST
    if _DIGEST is None:
        import importlib.util

        h = hashlib.sha256()
        for rel in _SOURCES:
            module = rel[:-3].replace("/", ".")
            spec = importlib.util.find_spec(module)
            if spec is not None and spec.origin:
                h.update(Path(spec.origin).read_bytes())
        _DIGEST = h.digest()
    return _DIGEST


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
