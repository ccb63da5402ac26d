"""Multi-start fits in chunks, through an executor: in-process, any
``concurrent.futures.Executor``, or a Dask cluster (``dask.distributed.Client``).

The driver samples the starts (so the same seed gives the same starts everywhere), cuts
them into chunks of ``chunk_size`` rows and ships each chunk as a small picklable
:class:`ChunkTask`: the fit's :class:`~kinabs._fit.spec.FitSpec` (model, data, options;
pickled once on the driver and keyed by its hash), the chunk's start rows and the number
of iterations. A worker builds the training program from the FitSpec once per fit and
process (:func:`run_chunk` keeps the last two in a per-process cache), so it traces and
compiles once and then reuses the persistent compilation cache, and trains the chunk
with :func:`~kinabs._fit.loop.run_loop`, as the Trainer does in-process. Every chunk
trains at the same batch size (the last one is padded with copies of its first row), so
one compiled program serves all chunks. Starts train independently of the other members
of their chunk; results agree across chunk sizes to rounding (XLA may vectorise a batch
of one differently; we measured relative differences below 1e-12), and are identical for
the same chunk size on any executor.

A finished chunk is written at once to the run folder (:class:`kinabs.RunFolder`). A chunk
whose starts all fail is a result (statuses), reported and kept, not retried; a chunk that
raises is retried ``retries`` times; a worker that dies is replaced by Dask and its chunk
runs again elsewhere.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import math
import os
import pickle
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Executor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np

from kinabs._errors import DataError, KinabsError
from kinabs._fit.dask import check_client, is_dask_client
from kinabs._fit.loop import progress_bar, run_loop
from kinabs._fit.results import TrainingResults, status_kind
from kinabs._fit.run_folder import ChunkTable, RunFolder, array_digest, assemble
from kinabs._fit.spec import FitSpec
from kinabs._problem import FAILED, FIT_STATUS, TrainingProgram
from kinabs._version import __version__

__all__ = ["ChunkTask", "run_chunk", "run_chunked", "DEFAULT_CHUNK_SIZE"]

#: Starts per chunk when a chunked run does not say.
DEFAULT_CHUNK_SIZE = 64


@dataclass(frozen=True)
class ChunkTask:
    """One chunk of starts, as shipped to a worker."""

    spec: bytes  # a pickled FitSpec
    spec_key: str  # its hash: the worker's cache key
    index: int
    first: int  # index of the chunk's first start in the fit
    rows: np.ndarray  # (n, R) starts, linear values
    pad_to: int  # train this many rows (copies of the first) so every chunk has one shape
    n_iter: int


def _dumps(obj: Any) -> bytes:
    try:  # cloudpickle (shipped with dask) also pickles closures: custom losses, optax chains
        import cloudpickle

        return cloudpickle.dumps(obj)
    except ImportError:
        return pickle.dumps(obj)


# -- the worker side -------------------------------------------------------------------
_BUILD_LOCK = threading.Lock()


@functools.lru_cache(maxsize=2)
def _program_for(spec_key: str, spec: bytes) -> tuple[FitSpec, TrainingProgram]:
    fit = pickle.loads(spec)  # noqa: S301 - bytes made by this fit's driver
    return fit, fit.program()


def _cached_program(task: ChunkTask) -> tuple[FitSpec, TrainingProgram]:
    """This process's FitSpec and program for the task's fit (built, traced and compiled
    once per process; the last two fits are kept)."""
    with _BUILD_LOCK:  # threads of one worker wait for one build instead of each compiling
        return _program_for(task.spec_key, task.spec)


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _execute(spec: FitSpec, program: TrainingProgram, task: ChunkTask) -> ChunkTable:
    t0 = time.perf_counter()
    rows = np.asarray(task.rows, dtype=np.float64)
    n = rows.shape[0]
    if task.pad_to > n:
        rows = np.concatenate([rows, np.repeat(rows[:1], task.pad_to - n, axis=0)])
    _, out = run_loop(program, rows, task.n_iter, space=spec.optim_space)
    status = np.asarray(out.status)[:n]
    final_loss = np.where(np.isin(status, FAILED), np.nan, np.asarray(out.final_loss)[:n])
    return ChunkTable(index=task.index, first=task.first, initial=task.rows.copy(),
                      final=out.final[:n], loss_history=out.losses[:n],
                      status=tuple(FIT_STATUS.get(int(s), "failed") for s in status),
                      final_loss=final_loss, seconds=time.perf_counter() - t0,
                      worker=_worker_name(), iterations=np.asarray(out.iterations)[:n],
                      evaluations=np.asarray(out.evaluations)[:n])


def run_chunk(task: ChunkTask) -> ChunkTable:
    """Train one chunk (the function every executor runs; importable on any worker)."""
    spec, program = _cached_program(task)
    return _execute(spec, program, task)


# -- the driver side -------------------------------------------------------------------
def check_chunk_size(chunk_size: Any) -> int | None:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
            or chunk_size < 1:
        raise DataError(f"chunk_size must be an integer >= 1 (starts per chunk); got "
                        f"{chunk_size!r}. Use e.g. chunk_size=64, or None for the default.")
    return int(chunk_size)


def data_hash(data) -> str:
    """A hash of training data: every experiment's times, values, species and initials."""
    parts: list[Any] = []
    for e in data.experiments:
        parts += [e.name, e.species, e.times, e.values, sorted((e.initial or {}).items())]
    return array_digest(*parts)


def _describe(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{getattr(obj, '__module__', '?')}.{name}"


_LEAVES = (type(None), bool, int, float, complex, str, bytes)
_MAX_DEPTH = 16
_MAX_ENTRIES = 500


def configuration(obj: Any) -> dict[str, str]:
    """Every setting of an optimiser or loss, flattened to ``{path: text}``: what makes
    two optimisers differ. An optax transformation is a pair of closures, so its
    hyperparameters (``adam(1e-3)`` against ``adam(0.5)``) live in closure cells: they are
    read from there, from defaults, ``functools.partial`` arguments, dataclass and object
    fields, and the bytecode and constants of every function (an edited loss differs).
    Plain values of module globals a function reads are included. Texts are exact
    (``repr`` of floats; a digest of arrays), so equal settings give equal dicts in every
    process, and a changed one is named by its path. Objects it cannot look into count
    by their type name."""
    walked: dict[str, str] = {}
    _walk(obj, "", walked, set(), 0)
    # paths as "update.update_fns[1].tx.update.step_size"; the object itself as "type"
    out = {"type" if k == "." else k.lstrip("."): v for k, v in walked.items()}
    if len(out) > _MAX_ENTRIES:  # an object graph that large is summarised by one digest
        kept = dict(list(out.items())[:_MAX_ENTRIES])
        kept["..."] = f"{len(out) - _MAX_ENTRIES} more settings, digest " + array_digest(
            *sorted(out.items()))
        return kept
    return out


def _code_digest(code: Any) -> str:
    import types

    def consts(c: Any) -> str:
        if isinstance(c, types.CodeType):
            return f"code({_code_digest(c)})"
        if isinstance(c, frozenset):  # its order follows string hashing: sort it
            return f"frozenset({sorted(consts(x) for x in c)})"
        if isinstance(c, tuple):
            return f"({', '.join(consts(x) for x in c)})"
        return repr(c)

    return array_digest(code.co_code, code.co_names, code.co_varnames,
                        [consts(c) for c in code.co_consts])


def _walk(obj: Any, path: str, out: dict[str, str], active: set[int], depth: int) -> None:
    import types

    key = path or "."
    if isinstance(obj, _LEAVES):
        out[key] = repr(obj)
        return
    if isinstance(obj, (np.ndarray, np.generic)) or _is_tensor(obj):
        arr = np.asarray(obj.detach().cpu() if _is_tensor(obj) else obj)
        out[key] = (repr(arr.item()) if arr.ndim == 0
                    else f"array {arr.dtype}{arr.shape} {array_digest(arr)}")
        return
    if type(obj).__module__.startswith(("jax", "jaxlib")) and hasattr(obj, "__array__"):
        _walk(np.asarray(obj), path, out, active, depth)
        return
    if depth > _MAX_DEPTH or id(obj) in active:
        out[key] = f"<{_describe(type(obj))} (nested too deep or in a cycle)>"
        return
    active.add(id(obj))
    try:
        if isinstance(obj, (types.ModuleType, type, types.BuiltinFunctionType)):
            out[key] = _describe(obj)
        elif isinstance(obj, functools.partial):
            _walk(obj.func, f"{path}.func", out, active, depth + 1)
            for i, a in enumerate(obj.args):
                _walk(a, f"{path}.args[{i}]", out, active, depth + 1)
            for k in sorted(obj.keywords):
                _walk(obj.keywords[k], f"{path}.{k}", out, active, depth + 1)
        elif isinstance(obj, types.MethodType):
            _walk(obj.__func__, f"{path}.__func__", out, active, depth + 1)
            _walk(obj.__self__, f"{path}.__self__", out, active, depth + 1)
        elif isinstance(obj, types.FunctionType):
            _walk_function(obj, path, out, active, depth)
        elif isinstance(obj, types.CodeType):
            # one digest of bytecode, names and constants (nested functions included);
            # the numbers among the constants are listed too, to be named when they differ
            out[key] = f"code {_code_digest(obj)}"
            for i, c in enumerate(obj.co_consts):
                if isinstance(c, (int, float, complex)) and not isinstance(c, bool):
                    out[f"{path}.const[{i}]"] = repr(c)
        elif isinstance(obj, (tuple, list)):
            out[key] = f"{_describe(type(obj))} of {len(obj)}"
            fields = getattr(obj, "_fields", None)  # NamedTuples (optax transformations)
            for i, item in enumerate(obj):
                _walk(item, f"{path}.{fields[i]}" if fields else f"{path}[{i}]", out, active,
                      depth + 1)
        elif isinstance(obj, (set, frozenset)):
            out[key] = f"{_describe(type(obj))} {sorted(repr(x) for x in obj)}"
        elif isinstance(obj, dict):
            out[key] = f"dict of {len(obj)}"
            for k in sorted(obj, key=repr):
                _walk(obj[k], f"{path}[{k!r}]", out, active, depth + 1)
        else:
            out[key] = _describe(type(obj))
            fields = getattr(obj, "__dict__", None)
            if isinstance(fields, dict):
                for k in sorted(fields):
                    _walk(fields[k], f"{path}.{k}", out, active, depth + 1)
    finally:
        active.discard(id(obj))


def _walk_function(fn: Any, path: str, out: dict[str, str], active: set[int],
                   depth: int) -> None:
    code = fn.__code__
    out[path or "."] = _describe(fn)
    _walk(code, f"{path}.__code__", out, active, depth + 1)
    for i, d in enumerate(fn.__defaults__ or ()):
        _walk(d, f"{path}.default[{i}]", out, active, depth + 1)
    for k in sorted(fn.__kwdefaults__ or {}):
        _walk(fn.__kwdefaults__[k], f"{path}.{k}", out, active, depth + 1)
    for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        _walk(value, f"{path}.{name}", out, active, depth + 1)
    g = fn.__globals__
    for name in sorted(set(code.co_names)):  # plain module constants the function reads
        value = g.get(name)
        if name in g and isinstance(value, (*_LEAVES, np.ndarray)) \
                and not name.startswith("__"):
            _walk(value, f"{path}.<global {name}>", out, active, depth + 1)


def _is_tensor(obj: Any) -> bool:
    return type(obj).__module__.startswith("torch") and hasattr(obj, "detach")


def fit_manifest(spec: FitSpec, start: np.ndarray, *, n_iter: int, chunk_size: int,
                 seed: int | None) -> dict[str, Any]:
    """What identifies a chunked fit: a run folder with another manifest is refused.

    The optimiser and the custom loss enter with their full configuration (see
    :func:`configuration`): a folder of ``adam(1e-3)`` chunks refuses ``adam(0.5)``, and
    a loss with other keyword values, naming the setting that differs."""
    loss = spec.loss
    options = dict(
        backend=spec.backend, optim_space=spec.optim_space, n_iter=n_iter,
        solver=repr(spec.solver), adjoint=repr(spec.adjoint),
        loss_threshold=spec.loss_threshold,
        optimizer="default" if spec.optimizer is None else _describe(spec.optimizer),
        optimizer_settings={} if spec.optimizer is None else configuration(spec.optimizer),
        loss="default" if loss is None else f"{_describe(loss.fn)} {sorted(loss.kwargs)}",
        loss_settings={} if loss is None else {
            **configuration(loss.fn),
            **{"kwargs" + ("" if k == "type" else k if k.startswith("[") else f".{k}"): v
               for k, v in configuration(dict(loss.kwargs)).items()}})
    return dict(format=2, kinabs_version=__version__, model_id=spec.model.id,
                model_hash=spec.model.fingerprint(), data_hash=data_hash(spec.data),
                starts_hash=array_digest(np.ascontiguousarray(start, dtype=np.float64)),
                n_starts=int(start.shape[0]), seed=None if seed is None else int(seed),
                parameters=list(spec.parameters), options=options,
                chunk_size=chunk_size, n_chunks=math.ceil(start.shape[0] / chunk_size))


class _Runner:
    """Runs chunk tasks and calls ``on_done(ChunkTable)`` as each finishes."""

    kind = "in-process"

    def run(self, tasks: list[ChunkTask], on_done: Callable[[ChunkTable], None]) -> None:
        raise NotImplementedError


class _InProcess(_Runner):
    def __init__(self, spec: FitSpec, program: Callable[[], TrainingProgram]):
        self.spec, self.program = spec, program

    def run(self, tasks, on_done):
        program = self.program()
        for task in tasks:
            on_done(_execute(self.spec, program, task))


class _Futures(_Runner):
    """Any ``concurrent.futures.Executor``: a chunk that raised is submitted again."""

    kind = "concurrent.futures"

    def __init__(self, executor, retries: int):
        self.executor, self.retries = executor, retries
        self.kind = type(executor).__name__

    def run(self, tasks, on_done):
        tries = dict.fromkeys(range(len(tasks)), 0)
        pending = {self.executor.submit(run_chunk, t): i for i, t in enumerate(tasks)}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = pending.pop(fut)
                    try:
                        table = fut.result()
                    except BrokenExecutor as exc:
                        raise _interrupted(exc, tasks[i]) from exc
                    except Exception as exc:  # noqa: BLE001 - retried, then reported
                        tries[i] += 1
                        if tries[i] > self.retries:
                            raise _interrupted(exc, tasks[i]) from exc
                        pending[self.executor.submit(run_chunk, tasks[i])] = i
                        continue
                    on_done(table)
        finally:
            for fut in pending:
                fut.cancel()


class _Dask(_Runner):
    """A ``dask.distributed.Client``: Dask retries a chunk that raised (``retries``) and
    reschedules the chunks of a worker that died on the workers that remain."""

    kind = "dask"

    def __init__(self, client, retries: int):
        self.client, self.retries = client, retries

    def run(self, tasks, on_done):
        from distributed import as_completed

        futures = {self.client.submit(run_chunk, t, retries=self.retries, pure=False): t
                   for t in tasks}
        try:
            for fut in as_completed(list(futures)):
                try:
                    table = fut.result()
                except Exception as exc:  # noqa: BLE001 - the run stops; finished chunks stay
                    raise _interrupted(exc, futures[fut]) from exc
                fut.release()
                on_done(table)
        finally:
            self.client.cancel([f for f in futures if not f.done()])


def _interrupted(exc: BaseException, task: ChunkTask) -> KinabsError:
    return KinabsError(
        f"chunk {task.index} (starts {task.first}-{task.first + len(task.rows) - 1}) could "
        f"not be run: {type(exc).__name__}: {exc}. Finished chunks are kept in the run "
        "folder; run the same fit with the same run folder to go on from there.")


def _runner(spec: FitSpec, executor: Any, retries: int,
            program: Callable[[], TrainingProgram]) -> _Runner:
    if executor is None:
        return _InProcess(spec, program)
    if isinstance(executor, Executor):
        return _Futures(executor, retries)
    if is_dask_client(executor):
        check_client(executor)
        return _Dask(executor, retries)
    raise DataError(
        "executor must be None (this process), a concurrent.futures.Executor or a "
        f"dask.distributed.Client; got {type(executor).__module__}."
        f"{type(executor).__qualname__}. For a Dask cluster pass "
        "kinabs.dask_client('tcp://host:8786').")


def run_chunked(spec: FitSpec, start: np.ndarray, *, n_iter: int, seed: int | None = None,
                progress: bool = False, executor: Any = None, chunk_size: int | None = None,
                run_dir: Any = None, retries: int = 2,
                local_program: Callable[[], TrainingProgram] | None = None
                ) -> TrainingResults:
    """Train ``start`` (rows of linear values) of the fit ``spec`` for ``n_iter``
    iterations in chunks; see :meth:`kinabs.Trainer.train`. ``seed`` (of the sampling that
    made ``start``) goes into the run folder's manifest; ``local_program`` gives chunks run
    in this process the caller's program (default: built from ``spec``).

    Everything that can be wrong is checked before the first chunk runs: the chunk size,
    the executor (a Dask client must be connected and have a worker), the run folder."""

    chunk_size = check_chunk_size(chunk_size) or DEFAULT_CHUNK_SIZE
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise DataError(f"retries must be an integer >= 0; got {retries!r}.")
    t0 = time.perf_counter()
    start = np.asarray(start, dtype=np.float64)
    n = start.shape[0]
    chunk_size = min(chunk_size, n)
    names = list(spec.parameters)
    manifest = fit_manifest(spec, start, n_iter=n_iter, chunk_size=chunk_size, seed=seed)
    n_chunks = manifest["n_chunks"]
    folder = None if run_dir is None else RunFolder(run_dir)
    if folder is not None:
        folder.open(manifest)
    runner = _runner(spec, executor, retries, local_program or spec.program)

    tables: dict[int, ChunkTable] = {}
    rejected: list[str] = []
    if folder is not None:
        for i in folder.finished_chunks():
            if i >= n_chunks:
                continue
            table, problem = folder.check_chunk(i, names, n_iter)
            rows = start[i * chunk_size:(i + 1) * chunk_size]
            if table is not None and not np.array_equal(table.initial, rows):
                problem = (f"{folder.chunk_file(i)}: its starts differ "
                           "from this fit's starts for that chunk")
                table = None
            if problem is not None:  # rerun it; the file is kept aside, not overwritten
                moved = folder.reject_chunk(i)
                rejected.append(problem)
                _note(f"run folder: {problem}; set aside as "
                      f"{', '.join(p.name for p in moved)} and chunk {i} is run again", None)
                continue
            tables[i] = table
    todo = [i for i in range(n_chunks) if i not in tables]
    packed = b"" if isinstance(runner, _InProcess) else _dumps(spec)
    key = hashlib.sha256(packed).hexdigest()[:24]
    tasks = [ChunkTask(spec=packed, spec_key=key, index=i, first=i * chunk_size,
                       rows=start[i * chunk_size:(i + 1) * chunk_size], pad_to=chunk_size,
                       n_iter=n_iter) for i in todo]
    if tables and progress:
        print(f"run folder {folder.path}: {len(tables)} of {n_chunks} chunks already "
              f"finished; running the other {len(todo)}", file=sys.stderr, flush=True)
    bar = progress_bar(n_chunks, progress, desc="chunks", unit="chunk", initial=len(tables))
    run_id = f"{_worker_name()}:{int(time.time())}"
    all_failed: list[int] = []
    best = [min((np.nanmin(t.final_loss) for t in tables.values()
                 if np.isfinite(t.final_loss).any()), default=np.inf)]

    def on_done(table: ChunkTable) -> None:
        if folder is not None:
            folder.write_chunk(table, names, run=run_id)
        tables[table.index] = table
        if all(status_kind(s) == "failed" for s in table.status):
            all_failed.append(table.index)
            reasons = collections.Counter(table.status).most_common(1)[0][0]
            _note(f"chunk {table.index} (starts {table.first}-{table.first + table.n - 1}): "
                  f"every start failed ({reasons}); kept as a result, not retried", bar)
        if np.isfinite(table.final_loss).any():
            best[0] = min(best[0], float(np.nanmin(table.final_loss)))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(best_loss=f"{best[0]:.3e}")

    try:
        runner.run(tasks, on_done)
    finally:
        if bar is not None:
            bar.close()
    result = assemble(list(tables.values()), names, meta={})
    result.meta.update(
        model=spec.model.id, model_fingerprint=spec.model.fingerprint(),
        backend=spec.backend, optim_space=spec.optim_space, n_iter=n_iter,
        seconds=float(time.perf_counter() - t0), solver=repr(spec.solver),
        adjoint=repr(spec.adjoint), executor=runner.kind, chunk_size=chunk_size,
        n_chunks=n_chunks, chunks_run=len(todo), chunks_resumed=n_chunks - len(todo),
        chunks_all_failed=sorted(all_failed), chunks_rejected=rejected,
        run_dir=None if folder is None else str(folder.path))
    return result


def _note(text: str, bar) -> None:
    if bar is not None:
        bar.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)
