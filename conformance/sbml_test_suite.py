"""Run the SBML Test Suite's semantic cases through kinabs and check them.

Each case is read with :func:`kinabs.load_sbml`, simulated with :func:`kinabs.simulate`
at the case's output times, and compared with the case's reference results under its own
``absolute``/``relative`` tolerances. One line is printed per case, then per-tag counts and
one summary line per tier, e.g. ``tier core on jax: 690 passed, 31 failed, 0 unsupported``.

Usage::

    python -m conformance.sbml_test_suite --backend jax --tier core --jobs 2
    python -m conformance.sbml_test_suite --backend jax torch --tier all --out results.json
    python -m conformance.sbml_test_suite --cases 1-20,1105 --out results.json
    python -m conformance.sbml_test_suite --report results-jax.json results-torch.json

Outcomes: ``pass``; ``unsupported: <feature>`` when kinabs raises
:class:`kinabs.UnsupportedFeatureError` (it refuses rather than answering wrongly);
``fail: <why>`` for a wrong answer, any other exception, a failed solve or a timeout.
The exit status is 1 when a case fails that the backend's
``expected_failures_<backend>.tsv`` does not list. With several backends, each runs in
turn (``--out results.json`` becomes ``results-<backend>.json``) and the cases whose outcome
differs between backends are printed. ``--report FILE...`` writes per-tier and per-tag
tables from saved results into ``conformance/README.md`` (between marker comments).

Example:
    >>> from conformance.sbml_test_suite import run_case, read_index, default_suite_dir
    >>> info = read_index(default_suite_dir())["00001"]
    >>> run_case(info).outcome  # doctest: +SKIP
    'pass'
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from conformance._suite_data import (
    TIERS,
    CaseInfo,
    Settings,
    compare,
    default_suite_dir,
    parse_case_list,
    read_index,
    read_results,
    read_settings,
    tier_members,
)

__all__ = ["CaseResult", "run_case", "run_cases", "summary_lines", "tag_counts",
           "expected_failures", "solver_options", "main", "read_index", "default_suite_dir"]

HERE = Path(__file__).parent


def expected_failures_file(backend: str) -> Path:
    """``conformance/expected_failures_<backend>.tsv``."""
    return HERE / f"expected_failures_{backend}.tsv"


@dataclass(frozen=True)
class CaseResult:
    """What happened to one case. ``ratio``: worst error over tolerance (NaN if none)."""

    case: str
    tier: str
    outcome: str  # "pass", "fail" or "unsupported"
    detail: str = ""
    ratio: float = float("nan")
    seconds: float = 0.0
    tags: tuple[str, ...] = ()

    def line(self) -> str:
        """The one line printed for this case."""
        if self.outcome == "pass":
            text = f"pass (worst error {self.ratio:.2g} x tolerance)"
        else:
            text = f"{self.outcome}: {self.detail}"
        return f"{self.case} {self.tier:<8} {text} [{self.seconds:.1f} s]"


def solver_options(settings: Settings):
    """Tight solver options for a case: far inside the case's own tolerances."""
    import kinabs

    atol = min(1e-12, settings.absolute * 1e-6)
    return kinabs.SolverOptions(method="auto", rtol=1e-10, atol=atol, max_steps=200_000)


def _output(model, variable: str, settings: Settings):
    import kinabs

    if variable in model.species:
        if variable in settings.amount:
            return kinabs.amount(variable)
        if variable in settings.concentration:
            return kinabs.concentration(variable)
    return variable


def scipy_reference(model, times: np.ndarray, outputs: list, *, t0: float = 0.0):
    """Simulate with kinabs' generated functions on numpy and scipy's LSODA: the same
    lowering as every backend, without a JIT compile (``--backend scipy``; a reference)."""
    from scipy.integrate import solve_ivp

    import kinabs
    from kinabs._lowering.events import refuse_events
    from kinabs._lowering.ops import numpy_ops

    system = kinabs.lower(model)
    refuse_events(system, "the scipy reference")
    fns = system.generated.bind(numpy_ops())
    y0, k = fns.init(np.float64(t0), system.parameter_defaults)
    y0 = np.asarray(y0, dtype=np.float64)
    status = "success"
    if len(times) and times[-1] > t0 and y0.size:
        sol = solve_ivp(lambda t, y: np.asarray(fns.rhs(np.float64(t), y, k)), (t0, times[-1]),
                        y0, method="LSODA", t_eval=times, rtol=1e-10, atol=1e-14)
        ys = sol.y.T if sol.success else np.full((len(times), y0.size), np.nan)
        status = "success" if sol.success else "solver_failed"
    else:
        ys = np.broadcast_to(y0, (len(times), y0.size))
    keys = [system.output_key(o, "concentration") for o in outputs]
    index = [system.output_index[key] for key in keys]
    outputs_fn = fns.outputs_at(index)
    with np.errstate(all="ignore"):
        values = np.stack([np.asarray(outputs_fn(np.float64(t), y, k))
                           for t, y in zip(times, ys)])
    return kinabs.SimulationResult(times=times, values=values[None], columns=tuple(outputs),
                                   status=(status,), steps=np.asarray([-1]))


def _first_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_case(info: CaseInfo, suite_dir: Path | None = None, backend: str = "jax"
             ) -> CaseResult:
    """Run one case in this process; never raises for a kinabs or simulation problem."""
    import kinabs

    start = time.perf_counter()
    folder = Path(suite_dir or default_suite_dir()) / "semantic" / info.case

    def result(outcome: str, detail: str = "", ratio: float = float("nan")) -> CaseResult:
        return CaseResult(info.case, info.tier, outcome, detail, ratio,
                          time.perf_counter() - start, info.tags)

    if info.test_type != "TimeCourse":
        return result("unsupported", f"testType {info.test_type}")
    try:
        settings = read_settings(folder / f"{info.case}-settings.txt")
        ref_times, columns = read_results(folder / f"{info.case}-results.csv")
        model = kinabs.load_sbml(folder / info.sbml_file)
        outputs = [_output(model, v, settings) for v in settings.variables]
        if backend == "scipy":
            sim = scipy_reference(model, settings.times, outputs, t0=min(0.0, settings.start))
        else:
            sim = kinabs.simulate(model, settings.times, outputs=outputs,
                                  t0=min(0.0, settings.start), solver=solver_options(settings),
                                  backend=backend, on_failure="nan")
    except kinabs.UnsupportedFeatureError as exc:
        return result("unsupported", exc.feature)
    except Exception as exc:  # any other error is a failure of this case, not of the run
        return result("fail", _first_line(f"{type(exc).__name__}: {exc}"))
    if len(ref_times) != len(settings.times) or not np.allclose(ref_times, settings.times):
        return result("fail", "the results file's times differ from the settings' times")
    missing = [v for v in settings.variables if v not in columns]
    if missing:
        return result("fail", f"the results file lacks columns {missing}")
    expected = np.stack([columns[v] for v in settings.variables], axis=1)
    got = sim.values[0]
    cmp = compare(expected, got, settings.absolute, settings.relative)
    if cmp.passed:
        return result("pass", ratio=cmp.ratio)
    status = "" if sim.ok else f"; solver status {sim.status[0]}"
    detail = (f"max error {cmp.error:.3g} ({cmp.ratio:.3g} x tolerance) in "
              f"{settings.variables[cmp.column]} at t={settings.times[cmp.row]:g}: expected "
              f"{cmp.expected:.6g}, got {cmp.actual:.6g}{status}")
    return result("fail", detail, cmp.ratio)


# -- running many cases ---------------------------------------------------------------------
def _worker_main(wid: int, inbox, outbox, suite_dir: str, backend: str) -> None:
    # Small systems: one thread per worker is fastest and keeps workers from competing.
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                                       "intra_op_parallelism_threads=1")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # Compile time dominates a case (~1-3 s); XLA's heavier optimizations do not pay off.
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import kinabs

    if backend != "scipy":
        kinabs.get_backend(backend)
    parent = os.getppid()
    outbox.put(("ready", wid, None))
    while os.getppid() == parent:  # an orphaned worker (parent killed) stops by itself
        try:
            info = inbox.get(timeout=2.0)
        except queue.Empty:
            continue
        if info is None:
            return
        outbox.put(("done", wid, run_case(info, Path(suite_dir), backend)))


class _Pool:
    """Spawned worker processes, one case at a time each, killed when a case overruns."""

    def __init__(self, jobs: int, suite_dir: Path, backend: str, max_tasks: int):
        import multiprocessing

        self.ctx = multiprocessing.get_context("spawn")
        self.outbox = self.ctx.Queue()
        self.args = (str(suite_dir), backend)
        self.max_tasks = max_tasks
        self.next_id = 0
        self.workers: dict[int, dict] = {}
        for _ in range(jobs):
            self.spawn()

    def spawn(self) -> None:
        wid, self.next_id = self.next_id, self.next_id + 1
        inbox = self.ctx.Queue()
        proc = self.ctx.Process(target=_worker_main, args=(wid, inbox, self.outbox, *self.args),
                                daemon=True)
        proc.start()
        self.workers[wid] = {"proc": proc, "inbox": inbox, "case": None, "deadline": 0.0,
                             "done": 0}

    def retire(self, wid: int, kill: bool = False) -> None:
        w = self.workers.pop(wid)
        if kill:
            w["proc"].kill()
        else:
            w["inbox"].put(None)
        w["proc"].join(timeout=10)
        self.spawn()

    def close(self) -> None:
        for w in self.workers.values():
            w["proc"].kill()
            w["proc"].join(timeout=10)
        self.workers.clear()


def run_cases(infos: list[CaseInfo], *, suite_dir: Path | None = None, backend: str = "jax",
              jobs: int = 2, timeout: float = 120.0, max_tasks: int = 150,
              on_result=None) -> list[CaseResult]:
    """Run cases, ``jobs`` at a time in spawned processes (``jobs=0``: in this process,
    without a timeout). ``on_result(result)`` is called as each case finishes."""
    suite_dir = Path(suite_dir or default_suite_dir())
    results: list[CaseResult] = []

    def record(r: CaseResult) -> None:
        results.append(r)
        if on_result:
            on_result(r)

    if jobs <= 0:
        for info in infos:
            record(run_case(info, suite_dir, backend))
        return results
    pending = deque(infos)
    pool = _Pool(min(jobs, max(1, len(infos))), suite_dir, backend, max_tasks)
    try:
        while len(results) < len(infos):
            try:
                kind, wid, payload = pool.outbox.get(timeout=0.5)
            except queue.Empty:
                kind = None
            if kind and wid in pool.workers:
                w = pool.workers[wid]
                if kind == "done":
                    record(payload)
                    w["case"], w["done"] = None, w["done"] + 1
                if w["done"] >= max_tasks:
                    pool.retire(wid)
                elif pending:
                    w["case"], w["deadline"] = pending.popleft(), time.monotonic() + timeout
                    w["inbox"].put(w["case"])
            for wid, w in list(pool.workers.items()):
                info = w["case"]
                if info is None:
                    if not w["proc"].is_alive():
                        raise RuntimeError(f"a worker process failed to start (exit code "
                                           f"{w['proc'].exitcode}); run with --jobs 0 to see why")
                    continue
                overdue = time.monotonic() > w["deadline"]
                if overdue or not w["proc"].is_alive():
                    why = (f"timeout after {timeout:g} s" if overdue else
                           f"worker process died (exit code {w['proc'].exitcode})")
                    record(CaseResult(info.case, info.tier, "fail", why, seconds=timeout,
                                      tags=info.tags))
                    pool.retire(wid, kill=True)
    finally:
        pool.close()
    return results


# -- reports --------------------------------------------------------------------------------
def summary_lines(results: list[CaseResult], index: dict[str, CaseInfo], backend: str,
                  tiers: tuple[str, ...]) -> list[str]:
    """One ``tier <t> on <backend>: P passed, F failed, U unsupported`` line per tier."""
    lines = []
    for tier in tiers:
        counts = Counter(r.outcome for r in results if tier_members(tier, index[r.case]))
        lines.append(f"tier {tier} on {backend}: {counts['pass']} passed, {counts['fail']} "
                     f"failed, {counts['unsupported']} unsupported")
    return lines


def tag_counts(results: list[CaseResult]) -> dict[str, dict[str, int]]:
    """Tag -> {"pass": n, "fail": n, "unsupported": n} over the cases carrying the tag."""
    out: dict[str, Counter] = {}
    for r in results:
        for tag in r.tags:
            out.setdefault(tag, Counter())[r.outcome] += 1
    return {t: {k: c[k] for k in ("pass", "fail", "unsupported")} for t, c in sorted(out.items())}


def expected_failures(backend: str, path: Path | None = None) -> dict[str, str]:
    """Case -> reason, for the cases known to fail on ``backend``: the lines
    ``case<TAB>reason`` of ``expected_failures_<backend>.tsv`` (one reason per line; ``#``
    starts a comment)."""
    path = path or expected_failures_file(backend)
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                case, _, reason = line.partition("\t")
                out[case.strip()] = reason.strip()
    return out


def _write_out(path: Path, results: list[CaseResult], summary: list[str], backend: str
               ) -> None:
    rows = sorted(results, key=lambda r: r.case)
    if path.suffix == ".json":
        doc = {"backend": backend, "summary": summary, "tags": tag_counts(rows),
               "cases": [{**asdict(r), "ratio": None if np.isnan(r.ratio) else r.ratio}
                         for r in rows]}
        path.write_text(json.dumps(doc, indent=1) + "\n")
        return
    lines = ["case\ttier\toutcome\tratio\tseconds\tdetail"]
    lines += [f"{r.case}\t{r.tier}\t{r.outcome}\t{r.ratio:.3g}\t{r.seconds:.2f}\t{r.detail}"
              for r in rows]
    path.write_text("\n".join(lines) + "\n")


def _check_backend(name: str) -> str | None:
    import kinabs

    if name == "scipy":
        return None
    try:
        kinabs.get_backend(name)
    except Exception as exc:  # a missing or half-written backend: say so, run nothing
        return (f"the {name} backend is not available here ({type(exc).__name__}: {exc}). "
                "Install it (see the README) or choose another with --backend.")
    return None


def _report(paths: list[Path], suite: Path, readme: Path) -> int:
    from conformance._suite_report import load_results, render, write_into

    results = load_results(paths)
    tiers = {c: info.tier for c, info in read_index(suite).items()}
    expected = {b: expected_failures(b) for b in results}
    command = "python -m conformance.sbml_test_suite --report " + " ".join(p.name for p in paths)
    section = render(results, tiers, expected, command)
    write_into(readme, section)
    print(section)
    print(f"\nwrote the tables into {readme}")
    return 0


def _out_path(out: Path | None, backend: str, several: bool) -> Path | None:
    if out is None or not several:
        return out
    return out.with_name(f"{out.stem}-{backend}{out.suffix}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m conformance.sbml_test_suite",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", nargs="+", default=["jax"], choices=("jax", "torch", "scipy"),
                    help="one or more backends, run in turn; scipy: the numpy-generated "
                         "functions under scipy's LSODA, a fast reference for the lowering "
                         "(no JIT compile)")
    ap.add_argument("--tier", choices=TIERS, default=None,
                    help="core (721 cases), basic (1033, includes core) or all (1823); "
                         "default core, or all when --cases is given")
    ap.add_argument("--cases", help="case numbers and ranges, e.g. 1-20,1105")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="worker processes (0: run in this process, without timeouts)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    ap.add_argument("--out", type=Path, help="write per-case results (.json, else TSV); with "
                    "several backends one file each, named <stem>-<backend><suffix>")
    ap.add_argument("--report", type=Path, nargs="+", metavar="RESULTS_JSON",
                    help="run nothing: write per-tier and per-tag tables from saved .json "
                         "results into --readme")
    ap.add_argument("--readme", type=Path, default=HERE / "README.md",
                    help="the file --report writes into (default conformance/README.md)")
    ap.add_argument("--suite", type=Path, default=None,
                    help="the sbml-test-suite folder (default: $KINABS_SBML_TEST_SUITE or "
                         "../shared/sbml-test-suite)")
    args = ap.parse_args(argv)
    # a terminated run still stops its workers (the pool closes in a finally block)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    suite = args.suite or default_suite_dir()
    if not (suite / "cases-index.tsv").exists():
        print(f"error: no cases-index.tsv in {suite}; pass --suite", file=sys.stderr)
        return 2
    if args.report:
        missing = [str(p) for p in args.report if not p.is_file()]
        if missing:
            print(f"error: no results file {missing}; write them with --out X.json",
                  file=sys.stderr)
            return 2
        return _report(args.report, suite, args.readme)
    backends = list(dict.fromkeys(args.backend))
    for backend in backends:
        problem = _check_backend(backend)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    index = read_index(suite)
    tier = args.tier or ("all" if args.cases else "core")
    wanted = parse_case_list(args.cases) if args.cases else list(index)
    unknown = [c for c in wanted if c not in index]
    if unknown:
        print(f"error: unknown case(s) {unknown[:10]}", file=sys.stderr)
        return 2
    infos = [index[c] for c in wanted if tier_members(tier, index[c])]

    def show(r: CaseResult) -> None:
        print(r.line(), flush=True)

    status, summaries, outcomes = 0, [], {}
    for backend in backends:
        print(f"-- {len(infos)} case(s) on {backend}", flush=True)
        results = run_cases(infos, suite_dir=suite, backend=backend, jobs=args.jobs,
                            timeout=args.timeout, on_result=show)
        outcomes[backend] = {r.case: r.outcome for r in results}
        print(f"\nper tag on {backend} (passed / failed / unsupported):")
        for tag, c in tag_counts(results).items():
            print(f"  {tag:<32} {c['pass']:>5} {c['fail']:>5} {c['unsupported']:>5}")
        known = expected_failures(backend)
        new = sorted(r.case for r in results if r.outcome == "fail" and r.case not in known)
        if new:
            print(f"\nfailures not in {expected_failures_file(backend).name}: {', '.join(new)}")
            status = 1
        summary = summary_lines(results, index, backend, TIERS[: TIERS.index(tier) + 1])
        out = _out_path(args.out, backend, len(backends) > 1)
        if out:
            _write_out(out, results, summary, backend)
        summaries += summary
    if len(backends) > 1:
        differ = sorted(c for c in outcomes[backends[0]]
                        if len({outcomes[b].get(c) for b in backends}) > 1)
        print(f"\ncases whose outcome differs between backends: {len(differ)}"
              + (f" ({', '.join(differ)})" if differ else ""))
    print()
    print("\n".join(summaries))
    return status


if __name__ == "__main__":
    sys.exit(main())
