"""A run folder: the results of a chunked multi-start fit, kept on disk as they finish.

Layout::

    RUN_DIR/manifest.json           what fit this is (hashes of model, data, starts, options)
    RUN_DIR/chunks/chunk-00003.parquet  one table per finished chunk (CSV without pyarrow)
    RUN_DIR/log.jsonl               one line per chunk written (which run, worker, seconds)

Every file is written to a temporary name and renamed into place (``os.replace``), so a
reader never sees half a file: a killed driver leaves finished chunks intact and nothing
else. Running the same fit with the same folder reads the finished chunks and runs only
the missing ones; a folder that holds another fit is refused, naming what differs.

Example:
    >>> import tempfile, numpy as np, kinabs
    >>> folder = kinabs.RunFolder(tempfile.mkdtemp())
    >>> folder.finished_chunks()
    []
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kinabs._errors import RunFolderError

__all__ = ["RunFolder", "RunFolderError", "ChunkTable", "array_digest"]

MANIFEST = "manifest.json"
_FORMAT = 1
#: Manifest keys that describe the fit. A folder whose manifest differs in any of them
#: holds another fit (``created`` and ``run`` only say when and by whom).
IDENTITY_KEYS = ("format", "kinabs_version", "model_id", "model_hash", "data_hash",
                 "starts_hash", "n_starts", "seed", "parameters", "options", "chunk_size",
                 "n_chunks")


def array_digest(*parts: Any) -> str:
    """A short sha256 of strings, numbers and numpy arrays (dtype and shape included)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(f"{part.dtype}{part.shape}".encode())
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(repr(part).encode())
        h.update(b"|")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ChunkTable:
    """The results of one chunk of starts (rows ``first`` to ``first + n - 1``).

    ``status`` holds strings (``"ok"`` or ``"failed: <reason>"``); ``final_loss`` is NaN
    where a start failed."""

    index: int
    first: int
    initial: np.ndarray  # (n, R) linear values
    final: np.ndarray  # (n, R) linear values
    loss_history: np.ndarray  # (n, n_iter)
    status: tuple[str, ...]
    final_loss: np.ndarray  # (n,)
    seconds: float = float("nan")
    worker: str = ""

    @property
    def n(self) -> int:
        return int(self.initial.shape[0])

    def to_frame(self, names: list[str]):
        import pandas as pd

        cols: dict[str, Any] = {
            "start": np.arange(self.first, self.first + self.n, dtype=np.int64),
            "status": list(self.status), "final_loss": self.final_loss,
            "seconds": np.full(self.n, self.seconds), "worker": [self.worker] * self.n}
        cols.update({f"initial:{k}": self.initial[:, j] for j, k in enumerate(names)})
        cols.update({f"final:{k}": self.final[:, j] for j, k in enumerate(names)})
        cols.update({f"loss:{i}": self.loss_history[:, i]
                     for i in range(self.loss_history.shape[1])})
        return pd.DataFrame(cols)

    @classmethod
    def from_frame(cls, df, index: int, names: list[str], n_iter: int) -> ChunkTable:
        def floats(prefix, keys):
            return df[[f"{prefix}:{k}" for k in keys]].to_numpy(dtype=np.float64)

        return cls(index=index, first=int(df["start"].iloc[0]),
                   initial=floats("initial", names), final=floats("final", names),
                   loss_history=floats("loss", range(n_iter)),
                   status=tuple(str(s) for s in df["status"]),
                   final_loss=df["final_loss"].to_numpy(dtype=np.float64),
                   seconds=float(df["seconds"].iloc[0]), worker=str(df["worker"].iloc[0]))


def _has_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename ``tmp`` to ``path``: readers see all of it or nothing."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunFolder:
    """A folder that keeps a chunked fit's results (see the module docstring).

    Args:
        path: the folder (created when missing).
        file_format: ``"parquet"`` (default when pyarrow is installed) or ``"csv"``; only
            for new chunk files: existing ones are read in whichever format they have.
    """

    def __init__(self, path: str | os.PathLike[str], *, file_format: str | None = None):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"run folder {self.path} exists and is a file, not a "
                                 "folder; give a folder path.")
        if file_format is None:
            file_format = "parquet" if _has_pyarrow() else "csv"
        if file_format not in ("parquet", "csv"):
            raise RunFolderError(f"file_format must be 'parquet' or 'csv'; got "
                                 f"{file_format!r}.")
        self.file_format = file_format

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- manifest ------------------------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any] | None:
        """The manifest (``None`` when the folder has none yet)."""
        path = self.path / MANIFEST
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RunFolderError(f"{path} cannot be read as JSON ({exc}); the folder is "
                                 "damaged: delete it or give another run folder.") from exc

    def open(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Start a new fit here or resume this one: writes ``manifest`` into a new or empty
        folder, or checks that the folder's manifest describes the same fit. Raises
        :class:`RunFolderError` (before any work) when it does not."""
        manifest = json.loads(json.dumps(manifest))  # what JSON keeps, to compare like with like
        existing = self.manifest
        if existing is None:
            if self.path.is_dir() and any(self.path.iterdir()):
                raise RunFolderError(
                    f"{self.path} is not empty and has no {MANIFEST}, so it is not a kinabs "
                    "run folder; give a new or empty folder as the run folder.")
            (self.path / "chunks").mkdir(parents=True, exist_ok=True)
            manifest = dict(manifest, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            _atomic_write(self.path / MANIFEST,
                          lambda p: p.write_text(json.dumps(manifest, indent=2)))
            return manifest
        diffs = [k for k in IDENTITY_KEYS if existing.get(k) != manifest.get(k)]
        if diffs:
            lines = []
            for k in diffs:
                old, new = existing.get(k), manifest.get(k)
                if isinstance(old, dict) and isinstance(new, dict):
                    for sub in sorted(set(old) | set(new)):
                        if old.get(sub) != new.get(sub):
                            lines.append(f"{k}.{sub}: folder has {old.get(sub)!r}, this fit "
                                         f"has {new.get(sub)!r}")
                else:
                    lines.append(f"{k}: folder has {_short(old)}, this fit has {_short(new)}")
            raise RunFolderError(
                f"run folder {self.path} holds another fit, so its results cannot be "
                "resumed or mixed with this one:\n  " + "\n  ".join(lines) +
                "\nGive another run folder, or delete this one to start over.")
        (self.path / "chunks").mkdir(parents=True, exist_ok=True)
        return existing

    # -- chunks ------------------------------------------------------------------------
    def _chunk_path(self, index: int, fmt: str) -> Path:
        return self.path / "chunks" / f"chunk-{index:05d}.{fmt}"

    def finished_chunks(self) -> list[int]:
        """Indices of the chunks written so far, sorted."""
        folder = self.path / "chunks"
        if not folder.is_dir():
            return []
        found = set()
        for p in folder.iterdir():
            stem, _, ext = p.name.partition(".")
            if ext in ("parquet", "csv") and stem.startswith("chunk-") and stem[6:].isdigit():
                found.add(int(stem[6:]))
        return sorted(found)

    def write_chunk(self, chunk: ChunkTable, names: list[str], *, run: str = "") -> Path:
        """Write one chunk's table atomically and log it."""
        df = chunk.to_frame(names)
        path = self._chunk_path(chunk.index, self.file_format)
        if self.file_format == "parquet":
            _atomic_write(path, lambda p: df.to_parquet(p, index=False))
        else:
            _atomic_write(path, lambda p: df.to_csv(p, index=False, na_rep="NaN"))
        line = json.dumps(dict(chunk=chunk.index, first=chunk.first, n=chunk.n,
                               ok=sum(s == "ok" for s in chunk.status),
                               seconds=_num(chunk.seconds), worker=chunk.worker, run=run,
                               written=time.strftime("%Y-%m-%dT%H:%M:%S%z")))
        # one write of one short line in append mode: lines of concurrent writers never mix
        fd = os.open(self.path / "log.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
        return path

    def read_chunk(self, index: int, names: list[str], n_iter: int) -> ChunkTable | None:
        """The chunk's table, or ``None`` when it is missing or unreadable (then it is
        run again)."""
        import pandas as pd

        for fmt in ("parquet", "csv"):
            path = self._chunk_path(index, fmt)
            if not path.is_file():
                continue
            try:
                if fmt == "parquet":
                    df = pd.read_parquet(path)
                else:
                    # exact float64 round trip: pandas 3 parses so by default, 2 when asked
                    exact = {} if pd.__version__ >= "3" else {"float_precision": "round_trip"}
                    df = pd.read_csv(path, keep_default_na=False, na_values=["NaN"], **exact)
                return ChunkTable.from_frame(df, index, names, n_iter)
            except Exception:  # noqa: BLE001 - a damaged chunk is recomputed, not trusted
                return None
        return None

    def log(self) -> list[dict[str, Any]]:
        """The chunk log: one entry per chunk written, in order."""
        path = self.path / "log.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def results(self):
        """The fit's :class:`kinabs.TrainingResults`, from the manifest and every chunk
        (raises :class:`RunFolderError` while chunks are missing)."""

        m = self.manifest
        if m is None:
            raise RunFolderError(f"{self.path} has no {MANIFEST}: not a kinabs run folder.")
        names, n_iter = list(m["parameters"]), int(m["options"]["n_iter"])
        chunks = [self.read_chunk(i, names, n_iter) for i in range(m["n_chunks"])]
        missing = [i for i, c in enumerate(chunks) if c is None]
        if missing:
            raise RunFolderError(
                f"{self.path}: {len(missing)} of {m['n_chunks']} chunks are not finished "
                f"(first missing: {missing[:10]}); run the same fit with this run folder "
                "to finish it.")
        return assemble(chunks, names, meta=dict(model=m["model_id"],
                                                 model_fingerprint=m["model_hash"],
                                                 **m["options"]))


def assemble(chunks: list[ChunkTable], names: list[str], meta: dict[str, Any]):
    """One :class:`TrainingResults` from chunk tables in start order."""
    import pandas as pd

    from kinabs._fit.results import TrainingResults

    chunks = sorted(chunks, key=lambda c: c.first)
    initial = np.concatenate([c.initial for c in chunks])
    return TrainingResults(
        parameters=pd.DataFrame(np.concatenate([c.final for c in chunks]), columns=names),
        initial_parameters=pd.DataFrame(initial, columns=names),
        loss_history=np.concatenate([c.loss_history for c in chunks]),
        status=[s for c in chunks for s in c.status],
        final_loss=np.concatenate([c.final_loss for c in chunks]),
        restarts=np.zeros(initial.shape[0], dtype=int), meta=dict(meta))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
