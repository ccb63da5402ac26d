"""How kinabs' front end scales: SBML loading, lowering, code generation, JIT compile.

Run with kinabs' virtual environment:

    /work/venv/bin/python benchmarks/bench_lowering.py                  # all parts
    /work/venv/bin/python benchmarks/bench_lowering.py --sizes 10 100 1000 --profile
    /work/venv/bin/python benchmarks/bench_lowering.py --out /tmp/bench_lowering.json

Parts:

(a) load + lower + generate code for the largest shared SBML model (by reactions), when
    ``kinabs.load_sbml`` works (it is reported as unavailable while the reader is a stub);
(b) the serine model (``load_sbml``, else the same model built from ``kinabs.Model``
    dataclasses): first ``kinabs.simulate`` call (JIT compile + run) and the median of
    repeated calls;
(c) linear chains S0 -> S1 -> ... -> S(N-1) -> (sink) of N species and N irreversible
    Michaelis-Menten reactions ``vmax_i*S_i/(km_i+S_i)`` in one compartment of size 1,
    S0 = 1 at t = 0, for each N in ``--sizes``: lowering (``kinabs.lower``), code generation
    (``system.generated``), first-call compile, per-call time, and growth ratios.

``--profile`` runs cProfile over lower + codegen of the largest chain and prints the
functions with the most cumulative and own time. JAX's persistent compilation cache is
disabled: every first call is a cold compile. Results: a table on stderr, JSON on stdout
(after a line ``=== RESULT JSON ===``) and in ``--out``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KINABS_JAX_CACHE", "0")  # kinabs' own persistent cache: off
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)

import numpy as np  # noqa: E402
import sympy  # noqa: E402

import kinabs  # noqa: E402
from kinabs import Compartment, Model, Parameter, Reaction, Species, SpeciesReference  # noqa: E402

DATA = Path(os.environ.get("KINABS_SHARED_DATA", "/work/shared/data/jaxkineticmodel"))
MODELS = DATA / "models"
SERINE = MODELS / "Smallbone2013_SerineBiosynthesis.xml"
S = sympy.Symbol


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


# -- models built from dataclasses -----------------------------------------------------
def chain_model(n: int) -> Model:
    """S0 -> S1 -> ... -> S(n-1) -> (sink): n species, n irreversible Michaelis-Menten
    reactions with global parameters vmax_i, km_i, one compartment of size 1."""
    m = Model(id=f"chain{n}")
    m.compartments["cell"] = Compartment("cell", size=1.0)
    for i in range(n):
        m.species[f"S{i}"] = Species(f"S{i}", "cell", initial_concentration=1.0 if i == 0
                                     else 0.0)
    for i in range(n):
        m.parameters[f"vmax_{i}"] = Parameter(f"vmax_{i}", 1.0 + 0.1 * (i % 7))
        m.parameters[f"km_{i}"] = Parameter(f"km_{i}", 0.5 + 0.05 * (i % 5))
    for i in range(n):
        s = S(f"S{i}")
        rate = S(f"vmax_{i}") * s / (S(f"km_{i}") + s)
        products = (SpeciesReference(f"S{i + 1}"),) if i + 1 < n else ()
        m.reactions[f"R{i}"] = Reaction(f"R{i}", rate, reactants=(SpeciesReference(f"S{i}"),),
                                        products=products, reversible=False)
    return m


def serine_model() -> Model:
    """BIOMD0000000458 (Smallbone 2013) as kinabs dataclasses; local parameters are
    ``<reaction>.<id>`` (the reader's convention, see kinabs._model)."""
    m = Model(id="Smallbone2013_SerineBiosynthesis")
    m.compartments["cell"] = Compartment("cell", size=1.0)
    for sid, c0, boundary in (("p3g", 2.36, True), ("php", 0.6, False),
                              ("pser", 0.09, False), ("ser", 4.9, True),
                              ("serA", 1.15, True), ("serC", 0.1, True),
                              ("serB", 0.25, True)):
        m.species[sid] = Species(sid, "cell", initial_concentration=c0,
                                 boundary_condition=boundary, constant=boundary)
    local = {"PDH": {"kcatA": 0.55, "KAp3g": 1.2, "KAphp": 0.0032, "KiAser": 0.0038},
             "PSA": {"kcatC": 1.75, "KCphp": 0.0015, "KCpser": 0.0017},
             "PSP": {"kcatB": 1.43, "KBpser": 0.0015, "KBser": 0.15}}
    for rid, ps in local.items():
        for k, v in ps.items():
            m.parameters[f"{rid}.{k}"] = Parameter(f"{rid}.{k}", v, reaction=rid)

    def lp(r, k):
        return S(f"{r}.{k}")

    cell, p3g, php, pser, ser = S("cell"), S("p3g"), S("php"), S("pser"), S("ser")
    pdh = (cell * S("serA") * lp("PDH", "kcatA") * (p3g / lp("PDH", "KAp3g"))
           / (1 + p3g / lp("PDH", "KAp3g") + php / lp("PDH", "KAphp"))
           / (1 + ser / lp("PDH", "KiAser")))
    psa = (cell * S("serC") * lp("PSA", "kcatC") * (php / lp("PSA", "KCphp"))
           / (1 + php / lp("PSA", "KCphp") + pser / lp("PSA", "KCpser")))
    psp = (cell * S("serB") * lp("PSP", "kcatB") * (pser / lp("PSP", "KBpser"))
           / (1 + pser / lp("PSP", "KBpser") + ser / lp("PSP", "KBser")))
    ref = SpeciesReference
    m.reactions["PDH"] = Reaction("PDH", pdh, (ref("p3g"),), (ref("php"),),
                                  ("serA", "ser"), reversible=True)
    m.reactions["PSA"] = Reaction("PSA", psa, (ref("php"),), (ref("pser"),), ("serC",),
                                  reversible=True)
    m.reactions["PSP"] = Reaction("PSP", psp, (ref("pser"),), (ref("ser"),), ("serB",),
                                  reversible=True)
    return m


# -- timing helpers --------------------------------------------------------------------
class CompileMeter:
    """Sums JAX's own compile-phase durations (jax.monitoring) between snapshots."""

    EVENTS = {"/jax/core/compile/backend_compile_duration": "xla_compile",
              "/jax/core/compile/jaxpr_to_mlir_module_duration": "mlir_lowering",
              "/jax/core/compile/jaxpr_trace_duration": "trace_nested"}

    def __init__(self) -> None:
        import jax.monitoring

        self.totals = dict.fromkeys(self.EVENTS.values(), 0.0)
        self.counts = dict.fromkeys(self.EVENTS.values(), 0)

        def listener(event, duration, **_):
            name = self.EVENTS.get(event)
            if name:
                self.totals[name] += duration
                self.counts[name] += 1

        jax.monitoring.register_event_duration_secs_listener(listener)

    def snapshot(self):
        return dict(self.totals), dict(self.counts)

    def since(self, snap):
        t0, c0 = snap
        out = {k: self.totals[k] - t0[k] for k in self.totals}
        out.update({f"n_{k}": self.counts[k] - c0[k] for k in self.counts})
        return out


_CPU: list[float] = [0.0]  # process CPU seconds of the last timed() call


def timed(fn, *a, **kw):
    """(result, wall seconds); the process CPU seconds land in ``_CPU[0]`` (a shared
    machine inflates wall time; CPU time is the steadier figure for single-threaded work,
    XLA compiles use a few threads)."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    dt = time.perf_counter() - t0
    _CPU[0] = time.process_time() - c0
    return out, dt


def per_call(fn, min_calls=5, max_calls=30, budget_s=5.0):
    times = []
    t_end = time.perf_counter() + budget_s
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() < t_end):
        _, dt = timed(fn)
        times.append(dt)
    return {"median": statistics.median(times), "min": min(times), "n": len(times)}


def measure_simulation(target, times, meter, label):
    """First call (compile + run) and repeated calls of kinabs.simulate(target, times)."""
    snap = meter.snapshot()
    res, first = timed(kinabs.simulate, target, times)
    first_cpu = _CPU[0]
    phases = meter.since(snap)
    calls = per_call(lambda: kinabs.simulate(target, times))
    out = {"first_call_s": first, "first_call_cpu_s": first_cpu, "per_call_s": calls["median"], "per_call_min_s": calls["min"],
           "n_calls": calls["n"], "compile_s": first - calls["median"], "jax_phases_s": phases,
           "status": list(res.status), "final_values_head": res.values[0, -1, :3].tolist()}
    log(f"  {label}: first call {first:.3f} s, per call {1e3 * calls['median']:.3f} ms "
        f"(n={calls['n']}), xla compile {phases['xla_compile']:.3f} s "
        f"({phases['n_xla_compile']} compiles)")
    return out


# -- parts -----------------------------------------------------------------------------
def models_by_size() -> list[tuple[Path, int]]:
    """Shared SBML models, most reactions first (counted with libsbml)."""
    import libsbml

    rows = []
    for f in sorted(MODELS.glob("*.xml")):
        m = libsbml.readSBML(str(f)).getModel()
        if m is not None:
            rows.append((f, m.getNumReactions()))
    return sorted(rows, key=lambda r: -r[1])


def load_lower_generate(path: Path) -> dict:
    """Time kinabs.load_sbml, kinabs.lower and system.generated for one file."""
    row = {"model": path.name}
    stage = "load"
    try:
        model, t_load = timed(kinabs.load_sbml, path)
        row["load_s"] = t_load
        stage = "lower"
        system, t_lower = timed(kinabs.lower, model)
        row["lower_s"] = t_lower
        stage = "codegen"
        gen, t_gen = timed(lambda: system.generated)
        row.update(codegen_s=t_gen, total_s=t_load + t_lower + t_gen, status="ok",
                   source_lines=gen.source.count("\n"), states=len(system.states),
                   parameters=len(system.parameters), reactions=len(model.reactions))
    except NotImplementedError:
        row["status"] = f"{stage}: not implemented yet (stub)"
    except Exception as exc:  # noqa: BLE001
        row["status"] = f"{stage} failed: {type(exc).__name__}: {' '.join(str(exc).split())}"[
            :300]
    return row


def part_a(all_models: bool) -> dict:
    ranked = models_by_size()
    out = {"largest_by_reactions": [f"{p.name} ({n})" for p, n in ranked[:5]], "tried": []}
    for path, n_reactions in ranked:
        row = load_lower_generate(path)
        row["sbml_reactions"] = n_reactions
        out["tried"].append(row)
        if row["status"] == "ok":
            log(f"(a) {path.name} ({n_reactions} reactions): load {row['load_s']:.3f} s, "
                f"lower {row['lower_s']:.3f} s, codegen {row['codegen_s']:.3f} s")
            out["measured"] = row
            break
        log(f"(a) {path.name} ({n_reactions} reactions): {row['status']}")
        if "not implemented" in row["status"]:
            break
    if all_models:
        out["all_models"] = [load_lower_generate(p) for p, _ in ranked]
        for r in out["all_models"]:
            log(f"    {r['model']:45s} " + (
                f"load {r['load_s']:.3f} lower {r['lower_s']:.3f} codegen {r['codegen_s']:.3f}"
                if r["status"] == "ok" else r["status"]))
    return out


def part_b(meter) -> dict:
    out = {}
    try:
        model, t_load = timed(kinabs.load_sbml, SERINE)
        kinabs.lower(model)  # the reader may still be in progress: check it lowers
        out["source"] = "kinabs.load_sbml"
        out["load_s"] = t_load
    except Exception as exc:  # noqa: BLE001 - fall back to the hand-built model
        model = serine_model()
        why = "stub" if isinstance(exc, NotImplementedError) else (
            f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:200])
        out["source"] = f"kinabs.Model dataclasses (load_sbml/lower unavailable: {why})"
    times = np.linspace(0.0, 10.0, 10)
    log(f"(b) serine ({out['source']})")
    # user path: simulate(Model) lowers once and caches the system on the model
    out["simulate_model"] = measure_simulation(model, times, meter, "simulate(Model)")
    system = kinabs.lower(model)
    _ = system.generated
    out["simulate_system"] = measure_simulation(system, times, meter,
                                                "simulate(OdeSystem) fresh system")
    return out


def _count_hlo_ops(text: str) -> int:
    import re

    return len(re.findall(r"= (?:stablehlo|chlo|mhlo)\.\w+", text))


def chain_worker(n: int, out_path: Path, until: str = "simulate") -> None:
    """One chain size in this (fresh) process; writes its row to ``out_path`` after every
    stage, so a parent that kills it on timeout still gets the finished stages."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_compilation_cache", False)
    row: dict = {"N": n}

    def save():
        out_path.write_text(json.dumps(row, default=str))

    # one-off costs kept out of the measurements: backend import (diffrax, equinox), JAX init
    _, row["backend_import_s"] = timed(kinabs.get_backend, "jax")
    jax.block_until_ready(jax.jit(lambda x: x + 1)(jnp.ones(1)))
    meter = CompileMeter()
    model, row["build_s"] = timed(chain_model, n)
    system, row["lower_s"] = timed(kinabs.lower, model)
    row["lower_cpu_s"] = _CPU[0]
    gen, row["codegen_s"] = timed(lambda: system.generated)
    row["codegen_cpu_s"] = _CPU[0]
    row["source_lines"] = gen.source.count("\n")
    row["source_chars"] = len(gen.source)
    _, row["model_fingerprint_s"] = timed(model.fingerprint)  # paid by every simulate(Model)
    # a second lowering + codegen of a fresh copy (sympy's caches are warm now)
    model2 = chain_model(n)
    system2, row["lower_again_s"] = timed(kinabs.lower, model2)
    row["lower_again_cpu_s"] = _CPU[0]
    _, row["codegen_again_s"] = timed(lambda: system2.generated)
    row["codegen_again_cpu_s"] = _CPU[0]
    row["stage"] = "codegen done"
    save()
    log(f"  chain N={n}: lower {row['lower_s']:.3f} s (cpu {row['lower_cpu_s']:.3f}; again "
        f"{row['lower_again_cpu_s']:.3f}), codegen {row['codegen_s']:.3f} s (cpu "
        f"{row['codegen_cpu_s']:.3f}; again {row['codegen_again_cpu_s']:.3f}), "
        f"{row['source_lines']} source lines; model.fingerprint() "
        f"{1e3 * row['model_fingerprint_s']:.1f} ms")
    if until == "codegen":
        return

    # the generated rhs alone: how much HLO the printer emits and what XLA takes for it
    from kinabs.backends.jax._simulate import lowered

    with jax.enable_x64(True):
        fns = lowered(system)
        p = jnp.asarray(system.parameter_defaults)
        y = jnp.ones(len(system.states))
        lo, t_tr = timed(lambda: jax.jit(lambda y, k: fns.rhs(0.0, y, k)).lower(y, p))
        row["rhs_hlo_ops"] = _count_hlo_ops(lo.as_text())
        _, row["rhs_xla_compile_s"] = timed(lo.compile)
        row["rhs_xla_compile_cpu_s"] = _CPU[0]
        row["rhs_trace_lower_s"] = t_tr
    row["stage"] = "rhs compiled"
    save()
    log(f"  chain N={n}: rhs alone {row['rhs_hlo_ops']} StableHLO ops, XLA compile "
        f"{row['rhs_xla_compile_s']:.2f} s (cpu {row['rhs_xla_compile_cpu_s']:.2f} s); "
        "compiling simulate ...")
    if until == "rhs":
        return

    times = np.linspace(0.0, 10.0, 11)
    sim = measure_simulation(system, times, meter, f"chain N={n} simulate")
    row.update(first_call_s=sim["first_call_s"], first_call_cpu_s=sim["first_call_cpu_s"],
               compile_s=sim["compile_s"], xla_compile_s=sim["jax_phases_s"]["xla_compile"],
               mlir_lowering_s=sim["jax_phases_s"]["mlir_lowering"],
               per_call_s=sim["per_call_s"], n_calls=sim["n_calls"], status=sim["status"],
               peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               stage="done")
    save()


def part_c(sizes, timeout_s: float, until: str = "simulate") -> dict:
    """Each size in a fresh subprocess (cold compile, own memory), killed after
    ``timeout_s``; a killed size keeps the stages it finished."""
    import subprocess
    import tempfile

    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "row.json"
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--chain-worker", str(n),
                     "--worker-out", str(out), "--until", until], timeout=timeout_s,
                    check=False)
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            elapsed = time.perf_counter() - t0
            row = json.loads(out.read_text()) if out.exists() else {"N": n}
        row["worker_wall_s"] = elapsed
        if rc == "timeout":
            row["status"] = (f"killed after {timeout_s:.0f} s in stage after "
                             f"'{row.get('stage', 'start')}'")
            log(f"  chain N={n}: {row['status']}")
        elif rc != 0:
            row["status"] = f"worker exit code {rc} after stage '{row.get('stage')}'"
            log(f"  chain N={n}: {row['status']}")
        rows.append(row)
    keys = ("lower_s", "codegen_s", "lower_cpu_s", "codegen_cpu_s", "lower_again_cpu_s",
            "codegen_again_cpu_s", "rhs_hlo_ops",
            "rhs_xla_compile_s", "rhs_xla_compile_cpu_s", "compile_s", "xla_compile_s",
            "first_call_cpu_s", "per_call_s", "model_fingerprint_s")
    ratios = {}
    for a, b in zip(rows, rows[1:]):
        ratios[f"{b['N']}/{a['N']}"] = {
            k: (b[k] / a[k] if a.get(k) and b.get(k) is not None else None) for k in keys}
    return {"rows": rows, "growth_ratios": ratios, "timeout_per_size_s": timeout_s}


def profile_chain(n: int, top: int = 25) -> dict:
    model = chain_model(n)
    out = {}
    pr = cProfile.Profile()
    pr.enable()
    system = kinabs.lower(model)
    pr.disable()
    pr2 = cProfile.Profile()
    pr2.enable()
    _ = system.generated
    pr2.disable()
    for name, prof in (("lower", pr), ("codegen", pr2)):
        for sort in ("cumulative", "tottime"):
            s = io.StringIO()
            pstats.Stats(prof, stream=s).strip_dirs().sort_stats(sort).print_stats(top)
            out[f"{name}_{sort}"] = s.getvalue()
    return out


def print_table(rows) -> None:
    def f(r, k, scale=1.0, fmt="9.3f"):
        v = r.get(k)
        if not isinstance(v, (int, float)):
            return format("-", ">9")
        return format(int(v), fmt) if fmt.endswith("d") else format(v * scale, fmt)

    log("\n    N |  lower s | codegen s | rhs ops | rhs xla s | sim compile s | sim xla s |"
        " 1st call cpu s | per call ms")
    for r in rows:
        log(f"{r['N']:>5} | {f(r, 'lower_s', fmt='8.3f')} | {f(r, 'codegen_s')} | "
            f"{f(r, 'rhs_hlo_ops', fmt='7d') if 'rhs_hlo_ops' in r else '      -'} | "
            f"{f(r, 'rhs_xla_compile_s')} | {f(r, 'compile_s', fmt='13.2f')} | "
            f"{f(r, 'xla_compile_s')} | {f(r, 'first_call_cpu_s', fmt='14.1f')} | "
            f"{f(r, 'per_call_s', 1e3, '11.3f')}")
        if "killed" in str(r.get("status", "")):
            log(f"      ^ {r['status']}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--profile", action="store_true",
                    help="cProfile lower + codegen of the largest chain")
    ap.add_argument("--all-models", action="store_true",
                    help="(a) for every shared SBML model, not only the largest")
    ap.add_argument("--skip", nargs="*", default=[], choices=["a", "b", "c"])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--timeout-per-size", type=float, default=360.0,
                    help="(c) kill a chain size's worker after this many seconds")
    ap.add_argument("--until", choices=["codegen", "rhs", "simulate"], default="simulate",
                    help="(c) stop each chain after this stage (codegen: no JAX compile)")
    ap.add_argument("--chain-worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.chain_worker is not None:
        chain_worker(args.chain_worker, args.worker_out, args.until)
        return {}
    t_all = time.perf_counter()

    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    _, t_backend = timed(kinabs.get_backend, "jax")  # imports diffrax/equinox: not compile
    meter = CompileMeter()
    result = {
        "jax_backend_import_s": t_backend,
        "versions": {"kinabs": kinabs.__version__, "jax": jax.__version__,
                     "sympy": sympy.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "jax_devices": [str(d) for d in jax.devices()]},
        "persistent_compilation_cache": "disabled (cold compiles)",
    }
    if "a" not in args.skip:
        result["a_largest_sbml"] = part_a(args.all_models)
    if "b" not in args.skip:
        result["b_serine"] = part_b(meter)
    if "c" not in args.skip:
        log("(c) chains")
        result["c_chains"] = part_c(args.sizes, args.timeout_per_size, args.until)
        print_table(result["c_chains"]["rows"])
        for k, v in result["c_chains"]["growth_ratios"].items():
            log(f"  growth {k}: " + ", ".join(
                f"{kk}={vv:.1f}" for kk, vv in v.items() if vv is not None))
    if args.profile:
        prof = profile_chain(max(args.sizes))
        result["profile"] = prof
        for k, v in prof.items():
            log(f"\n--- cProfile {k} (N={max(args.sizes)}) ---\n" + "\n".join(
                v.splitlines()[:45]))
    result["total_wall_s"] = time.perf_counter() - t_all
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = json.dumps(result, indent=1, default=str)
    print("=== RESULT JSON ===")
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return result


if __name__ == "__main__":
    main()
