"""A run folder: the results of a chunked multi-start fit, kept on disk as they finish.

Layout::

    RUN_DIR/manifest.json           what fit this is (hashes of model, data, starts, options)
    RUN_DIR/chunks/chunk-00003.parquet  one table per finished chunk (CSV without pyarrow)
    RUN_DIR/log.jsonl               one line per chunk file written (run, worker, seconds)

The chunk files are the truth: a chunk is finished when its file is there. Each file is
written to a temporary name and renamed into place (``os.replace``), so it is whole or
absent, never half written. The log is a record derived from the files, written after
them: a kill (SIGKILL, power loss) between the rename and the log line leaves a file
without its line, never a line without its file. :meth:`RunFolder.open` repairs that
case: it appends the missing line, derived from the file itself (marked ``recovered``),
before the fit goes on. Each line carries the sha256 of the file it describes, so a
chunk written again (after its file was deleted or damaged) is told apart from the first
write; lines of files deleted since stay in the log as history. Each chunk file records
its chunk index, its starts and a digest of its content and fit; a file whose records do
not match (damaged, changed, copied over another chunk, or from another fit) is reported
by name, set aside as ``*.rejected-*`` and its chunk run again (rather than refused: the
file is wrong either way, and a long run should not stop for one chunk; it stays there to
be looked at). So after ``open`` every
chunk file has its line, and a rerun of the same fit reads the finished chunks and runs
only the missing ones. A folder that holds another fit is refused, naming what differs.

Example:
    >>> import tempfile, numpy as np, kinabs
    >>> folder = kinabs.RunFolder(tempfile.mkdtemp())
    >>> folder.finished_chunks()
    []
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from kinabs._errors import RunFolderError
from kinabs._fit.results import TrainingResults, counts_from_history

__all__ = ["RunFolder", "RunFolderError", "ChunkTable", "array_digest"]

MANIFEST = "manifest.json"
LOG = "log.jsonl"
_FORMAT = 1
#: The per-start counts a chunk file holds (files written before them lack both).
COUNTS = ("iterations", "evaluations")
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

    ``status`` holds strings (``"ok"``, ``"converged"``, ``"max_iterations"`` or
    ``"failed: <reason>"``); ``final_loss`` is NaN where a start failed. ``iterations``
    (accepted steps) and ``evaluations`` (of loss and derivative) are (n,) integers;
    left out, both are the finite entries of each row of ``loss_history`` (as for chunk
    files written before they were recorded)."""

    index: int
    first: int
    initial: np.ndarray  # (n, R) linear values
    final: np.ndarray  # (n, R) linear values
    loss_history: np.ndarray  # (n, n_iter)
    status: tuple[str, ...]
    final_loss: np.ndarray  # (n,)
    seconds: float = float("nan")
    worker: str = ""
    iterations: np.ndarray | None = None  # (n,)
    evaluations: np.ndarray | None = None  # (n,)
    #: whether ``digest`` covers iterations and evaluations: False only for a table read
    #: from a chunk file written before they were recorded (its digest does not)
    counted: bool = True

    def __post_init__(self) -> None:
        for name in ("iterations", "evaluations"):
            value = getattr(self, name)
            value = counts_from_history(self.loss_history) if value is None else \
                np.asarray(value, dtype=np.int64)
            object.__setattr__(self, name, value)

    @property
    def n(self) -> int:
        return int(self.initial.shape[0])

    def digest(self, fit: str = "") -> str:
        """A sha256 of the chunk's index, first start and every value, and of ``fit`` (the
        run folder's fit, see :func:`fit_key`): stored in the chunk's file and checked
        when it is read, so a file changed after writing, copied over another chunk's
        or brought from another fit's folder is told apart. NaNs are hashed as one NaN:
        a CSV round trip does not keep NaN payloads. Iterations and evaluations are
        covered too (unless the table is from an older file that lacks them, see
        ``counted``)."""
        def canonical(a: np.ndarray) -> np.ndarray:
            a = np.asarray(a, dtype=np.float64)
            return np.where(np.isnan(a), np.nan, a)

        parts = [fit, int(self.index), int(self.first), canonical(self.initial),
                 canonical(self.final), canonical(self.loss_history), tuple(self.status),
                 canonical(self.final_loss), repr(float(self.seconds)), str(self.worker)]
        if self.counted:
            parts += [np.asarray(self.iterations, dtype=np.int64),
                      np.asarray(self.evaluations, dtype=np.int64)]
        return array_digest(*parts)

    def to_frame(self, names: list[str], fit: str = ""):
        import pandas as pd

        if not self.counted:  # a file written now always carries its counts
            return replace(self, counted=True).to_frame(names, fit)
        cols: dict[str, Any] = {
            "start": np.arange(self.first, self.first + self.n, dtype=np.int64),
            "chunk": np.full(self.n, self.index, dtype=np.int64),
            "digest": [self.digest(fit)] * self.n,
            "status": list(self.status), "final_loss": self.final_loss,
            "iterations": np.asarray(self.iterations, dtype=np.int64),
            "evaluations": np.asarray(self.evaluations, dtype=np.int64),
            "seconds": np.full(self.n, self.seconds), "worker": [self.worker] * self.n}
        cols.update({f"initial:{k}": self.initial[:, j] for j, k in enumerate(names)})
        cols.update({f"final:{k}": self.final[:, j] for j, k in enumerate(names)})
        cols.update({f"loss:{i}": self.loss_history[:, i]
                     for i in range(self.loss_history.shape[1])})
        return pd.DataFrame(cols)

    @classmethod
    def from_frame(cls, df, index: int, names: list[str], n_iter: int) -> ChunkTable:
        """The table of a chunk file's frame (checked by :meth:`RunFolder.check_chunk`); a
        frame without ``iterations`` and ``evaluations`` (an older file) gets them from its
        losses."""
        def floats(prefix, keys):
            return df[[f"{prefix}:{k}" for k in keys]].to_numpy(dtype=np.float64)

        counted = all(key in df.columns for key in COUNTS)
        counts = {key: df[key].to_numpy(dtype=np.int64) if counted else None for key in COUNTS}
        return cls(index=index, first=int(df["start"].iloc[0]),
                   initial=floats("initial", names), final=floats("final", names),
                   loss_history=floats("loss", range(n_iter)),
                   status=tuple(str(s) for s in df["status"]),
                   final_loss=df["final_loss"].to_numpy(dtype=np.float64),
                   seconds=float(df["seconds"].iloc[0]), worker=str(df["worker"].iloc[0]),
                   counted=counted, **counts)


def _bad_counts(df) -> str | None:
    """What is wrong with a chunk frame's ``iterations`` and ``evaluations`` columns
    (``None`` when both are there and hold non-negative whole numbers, or neither is: an
    older file)."""
    import pandas as pd

    present = [key for key in COUNTS if key in df.columns]
    if len(present) == 1:
        (lack,) = set(COUNTS) - set(present)
        return f"it has the column {present[0]!r} but not {lack!r}"
    for key in present:
        values = pd.to_numeric(df[key], errors="coerce").to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(values) & (values == np.round(values)) & (values >= 0)):
            row = int(np.argmin(np.isfinite(values) & (values == np.round(values))
                                & (values >= 0)))
            return (f"its column {key!r} must hold non-negative whole numbers (one per start); "
                    f"row {row + 1} holds {_short(str(df[key].iloc[row]))}")
    return None


def fit_key(manifest: dict[str, Any] | None) -> str:
    """A hash of a manifest's identity keys: which fit a chunk file was written for."""
    if manifest is None:
        return ""
    return array_digest(json.dumps({k: manifest.get(k) for k in IDENTITY_KEYS},
                                   sort_keys=True))


def _diff_lines(path: str, old: Any, new: Any) -> list[str]:
    """One line per setting that differs, nested dicts followed down to the setting."""
    if isinstance(old, dict) and isinstance(new, dict):
        lines = []
        for sub in sorted(set(old) | set(new)):
            if old.get(sub) != new.get(sub):
                lines += _diff_lines(f"{path}.{sub}", old.get(sub), new.get(sub))
        return lines
    return [f"{path}: folder has {_short(old)}, this fit has {_short(new)}"]


def _has_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file, then rename it to ``path``: readers (and a
    later run after a kill) see all of it or nothing."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _table_bytes(df, fmt: str) -> bytes:
    if fmt == "parquet":
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        return buf.getvalue()
    return df.to_csv(index=False, na_rep="NaN").encode()


def _read_table(data: bytes, fmt: str):
    import pandas as pd

    if fmt == "parquet":
        return pd.read_parquet(io.BytesIO(data))
    # exact float64 round trip: pandas 3 parses so by default, 2 when asked
    exact = {} if pd.__version__ >= "3" else {"float_precision": "round_trip"}
    # text columns stay text: a digest of digits only must not become a number
    return pd.read_csv(io.BytesIO(data), keep_default_na=False, na_values=["NaN"],
                       dtype={"digest": str, "status": str, "worker": str}, **exact)


def _log_entry(index: int, df, data: bytes, **extra: Any) -> dict[str, Any]:
    """A chunk's log line, from its table and file contents: the same whether written with
    the file or recovered from it later."""
    # "ok": the starts that did not fail (status ok, converged or max_iterations)
    return dict(chunk=index, first=int(df["start"].iloc[0]), n=len(df),
                ok=int((~df["status"].astype(str).str.startswith("failed")).sum()),
                seconds=_num(float(df["seconds"].iloc[0])), worker=str(df["worker"].iloc[0]),
                sha256=hashlib.sha256(data).hexdigest()[:16], **extra)


def _stamp(seconds: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(seconds))


class RunFolder:
    """A folder that keeps a chunked fit's results (see the module docstring).

    Args:
        path: the folder (created when missing).
        file_format: ``"parquet"`` (default when pyarrow is installed) or ``"csv"``; only
            for new chunk files: existing ones are read in whichever format they have.

    Example (a chunked fit fills the folder; the same fit with the same folder resumes):
        >>> import tempfile, kinabs
        >>> trainer = kinabs.Trainer(model=kinabs.load_sbml(kinabs.example_model_path()),
        ...                          data=kinabs.example_data_path(), n_iter=2, progress=False)
        >>> _ = trainer.latinhypercube_sampling({}, lower_bound=0.5, upper_bound=2, N=4, seed=0)
        >>> run_dir = tempfile.mkdtemp()
        >>> _ = trainer.train(chunk_size=2, run_dir=run_dir)
        >>> folder = kinabs.RunFolder(run_dir)
        >>> folder.finished_chunks(), [entry["chunk"] for entry in folder.log()]
        ([0, 1], [0, 1])
        >>> folder.results().loss_history.shape
        (4, 2)
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
        self._fit: str | None = None  # fit_key of the manifest, once opened or read

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
            manifest = dict(manifest, created=_stamp())
            try:  # before any work: an unwritable place fails here, not after the first chunk
                (self.path / "chunks").mkdir(parents=True, exist_ok=True)
                _atomic_write(self.path / MANIFEST, json.dumps(manifest, indent=2).encode())
            except OSError as exc:
                raise RunFolderError(
                    f"cannot write the run folder {self.path}: {type(exc).__name__}: "
                    f"{exc}. Give a run folder in a place you can write to.") from exc
            self._fit = fit_key(manifest)
            return manifest
        diffs = [k for k in IDENTITY_KEYS if existing.get(k) != manifest.get(k)]
        if diffs:
            lines = [line for k in diffs for line in _diff_lines(k, existing.get(k),
                                                                  manifest.get(k))]
            if len(lines) > 20:
                lines = lines[:20] + [f"... and {len(lines) - 20} more"]
            raise RunFolderError(
                f"run folder {self.path} holds another fit, so its results cannot be "
                "resumed or mixed with this one:\n  " + "\n  ".join(lines) +
                "\nGive another run folder, or delete this one to start over.")
        try:
            (self.path / "chunks").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunFolderError(f"cannot write the run folder {self.path}: {exc}. Give a "
                                 "run folder in a place you can write to.") from exc
        self._fit = fit_key(existing)
        self._log_unlogged_chunks()
        return existing

    # -- chunks ------------------------------------------------------------------------
    def _chunk_path(self, index: int, fmt: str) -> Path:
        return self.path / "chunks" / f"chunk-{index:05d}.{fmt}"

    def _chunk_files(self) -> list[tuple[int, str, Path]]:
        folder = self.path / "chunks"
        if not folder.is_dir():
            return []
        found = []
        for p in folder.iterdir():
            stem, _, ext = p.name.partition(".")
            if ext in ("parquet", "csv") and stem.startswith("chunk-") and stem[6:].isdigit():
                found.append((int(stem[6:]), ext, p))
        return sorted(found)

    def finished_chunks(self) -> list[int]:
        """Indices of the chunks written so far (those with a file), sorted."""
        return sorted({index for index, _, _ in self._chunk_files()})

    def write_chunk(self, chunk: ChunkTable, names: list[str], *, run: str = "") -> Path:
        """Write one chunk's table atomically, then its log line (in this order: see the
        module docstring)."""
        df = chunk.to_frame(names, fit=self._fit_key())
        data = _table_bytes(df, self.file_format)
        path = self._chunk_path(chunk.index, self.file_format)
        _atomic_write(path, data)
        self._append_log(_log_entry(chunk.index, df, data, run=run, written=_stamp()))
        return path

    def _append_log(self, entry: dict[str, Any]) -> None:
        # one write of one short line in append mode: lines of concurrent writers never mix
        fd = os.open(self.path / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
        finally:
            os.close(fd)

    def _log_unlogged_chunks(self) -> None:
        """Append the log line of every chunk file that has none (a kill came between the
        file and its line), derived from the file."""
        entries = self.log()
        logged = {(e.get("chunk"), e.get("sha256")) for e in entries}
        # lines from before lines named their file's hash count for any file of their chunk
        logged |= {(e.get("chunk"), None) for e in entries if "sha256" not in e}
        for index, fmt, path in self._chunk_files():
            data = path.read_bytes()
            if {(index, hashlib.sha256(data).hexdigest()[:16]), (index, None)} & logged:
                continue
            try:
                df = _read_table(data, fmt)
                entry = _log_entry(index, df, data, run="", recovered=True,
                                   written=_stamp(path.stat().st_mtime))
            except Exception:  # noqa: BLE001 - damaged: read_chunk will not trust it either
                continue
            self._end_torn_line()
            self._append_log(entry)

    def _end_torn_line(self) -> None:
        """End a last line that a crash cut short, so the next line starts on its own."""
        path = self.path / LOG
        if path.is_file() and path.stat().st_size:
            with open(path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                torn = fh.read(1) != b"\n"
            if torn:
                with open(path, "ab") as fh:
                    fh.write(b"\n")

    def chunk_file(self, index: int) -> Path | None:
        """The file of chunk ``index`` (``None`` when it has none)."""
        for fmt in ("parquet", "csv"):
            if self._chunk_path(index, fmt).is_file():
                return self._chunk_path(index, fmt)
        return None

    def _fit_key(self) -> str:
        if self._fit is None:
            self._fit = fit_key(self.manifest)
        return self._fit

    def read_chunk(self, index: int, names: list[str], n_iter: int) -> ChunkTable | None:
        """The chunk's table, or ``None`` when it is missing, damaged or not this chunk of
        this fit (then it is run again; :meth:`check_chunk` says why)."""
        return self.check_chunk(index, names, n_iter)[0]

    def check_chunk(self, index: int, names: list[str], n_iter: int
                    ) -> tuple[ChunkTable | None, str | None]:
        """``(table, None)`` for a good chunk file, ``(None, None)`` when there is none, and
        ``(None, reason)`` when its file is damaged or is not this chunk of this fit: the
        reason names the file and what is wrong. Checked: the file reads as a table with
        this fit's columns, the chunk index recorded in it is the one its name says, its
        starts are the chunk's range in this fit, and its content digest (which covers
        the fit, index, starts and every value) matches."""
        for fmt in ("parquet", "csv"):
            path = self._chunk_path(index, fmt)
            if not path.is_file():
                continue
            try:
                df = _read_table(path.read_bytes(), fmt)
            except Exception as exc:  # noqa: BLE001 - any parse failure means damaged
                return None, (f"{path} is damaged: it cannot be read as a {fmt} table "
                              f"({type(exc).__name__}: {_short(str(exc))})")
            return self._checked_table(df, index, names, n_iter, path)
        return None, None

    def _checked_table(self, df, index: int, names: list[str], n_iter: int, path: Path
                       ) -> tuple[ChunkTable | None, str | None]:
        need = (["start", "chunk", "digest", "status", "final_loss", "seconds", "worker"]
                + [f"initial:{k}" for k in names] + [f"final:{k}" for k in names]
                + [f"loss:{i}" for i in range(n_iter)])
        missing = [c for c in need if c not in df.columns]
        if missing:
            return None, (f"{path} is damaged or was written by an older kinabs or another "
                          f"fit: it lacks the column(s) {missing[:6]}")
        extra = [c for c in df.columns if c.startswith("loss:") and c not in need]
        if extra:
            return None, (f"{path} has {len(extra) + n_iter} iterations per start; this fit "
                          f"has {n_iter}")
        if len(df) == 0:
            return None, f"{path} is damaged: it has no rows"
        bad = _bad_counts(df)
        if bad is not None:
            return None, f"{path} is damaged or edited: {bad}"
        try:
            recorded = sorted({int(c) for c in df["chunk"]})
            starts = df["start"].to_numpy(dtype=np.int64)
            table = ChunkTable.from_frame(df, index, names, n_iter)
        except (TypeError, ValueError) as exc:
            return None, f"{path} is damaged: {type(exc).__name__}: {_short(str(exc))}"
        if recorded != [index]:
            return None, (f"{path} records chunk {recorded[0] if len(recorded) == 1 else recorded}"
                          f", but its name says chunk {index}: a chunk file copied or renamed "
                          "over another")
        m = self.manifest or {}
        size, total = m.get("chunk_size"), m.get("n_starts")
        have = f"starts {starts[0]}-{starts[-1]}"
        if not np.array_equal(starts, np.arange(starts[0], starts[0] + len(starts))):
            return None, f"{path} is damaged: its starts {starts[:5].tolist()}... do not follow"
        if isinstance(size, int) and isinstance(total, int):
            first, n = index * size, min(size, total - index * size)
            if starts[0] != first or len(starts) != n:
                return None, (f"{path} holds {have}, but chunk {index} of this fit holds "
                              f"starts {first}-{first + n - 1}")
        digests = set(df["digest"].astype(str))
        if digests != {table.digest(self._fit_key())}:
            return None, (f"{path}: its content does not match the digest recorded in it: "
                          "it was changed after it was written, or comes from another fit's "
                          "run folder")
        return table, None

    def reject_chunk(self, index: int) -> list[Path]:
        """Move the chunk's file(s) aside (``chunk-00003.parquet`` becomes
        ``chunk-00003.parquet.rejected-<time>``), so that the chunk is run again while the
        file stays there to be looked at. Returns the new paths."""
        moved = []
        for fmt in ("parquet", "csv"):
            path = self._chunk_path(index, fmt)
            if path.is_file():
                target = path.with_name(f"{path.name}.rejected-{time.strftime('%Y%m%dT%H%M%S')}"
                                        f"-{os.getpid()}")
                os.replace(path, target)
                moved.append(target)
        return moved

    def log(self) -> list[dict[str, Any]]:
        """The chunk log: one entry per chunk file written, in order (a line that a crash
        cut short is left out)."""
        path = self.path / LOG
        if not path.is_file():
            return []
        entries = []
        for line in path.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
        return entries

    def results(self):
        """The fit's :class:`kinabs.TrainingResults`, from the manifest and every chunk
        (raises :class:`RunFolderError` while chunks are missing)."""

        m = self.manifest
        if m is None:
            raise RunFolderError(f"{self.path} has no {MANIFEST}: not a kinabs run folder.")
        names, n_iter = list(m["parameters"]), int(m["options"]["n_iter"])
        checked = [self.check_chunk(i, names, n_iter) for i in range(m["n_chunks"])]
        bad = [reason for _, reason in checked if reason is not None]
        if bad:
            raise RunFolderError(
                f"{self.path}: {len(bad)} of {m['n_chunks']} chunk files cannot be used:\n  "
                + "\n  ".join(bad[:10]) + ("\n  ..." if len(bad) > 10 else "")
                + "\nRun the same fit with this run folder: it sets such files aside (as "
                "*.rejected-*) and runs their chunks again.")
        chunks = [table for table, _ in checked]
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

    chunks = sorted(chunks, key=lambda c: c.first)
    initial = np.concatenate([c.initial for c in chunks])
    return TrainingResults(
        parameters=pd.DataFrame(np.concatenate([c.final for c in chunks]), columns=names),
        initial_parameters=pd.DataFrame(initial, columns=names),
        loss_history=np.concatenate([c.loss_history for c in chunks]),
        status=[s for c in chunks for s in c.status],
        final_loss=np.concatenate([c.final_loss for c in chunks]),
        restarts=np.zeros(initial.shape[0], dtype=int), meta=dict(meta),
        iterations=np.concatenate([c.iterations for c in chunks]),
        evaluations=np.concatenate([c.evaluations for c in chunks]))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
