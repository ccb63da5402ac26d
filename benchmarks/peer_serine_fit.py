"""Reproduce the seed tutorial's serine fit with the PEER library, jaxkineticmodel 0.0.4.

Run with the peer's own virtual environment (see ``benchmarks/_peer_env.sh``), never with
kinabs' one: jaxkineticmodel 0.0.4 pins jax 0.4.35.

    bash benchmarks/_peer_env.sh                       # creates /work/peer-venv once
    /work/peer-venv/bin/python benchmarks/peer_serine_fit.py \
        --out /tmp/peer_serine.json                    # draws LHS starts, writes them
    /work/peer-venv/bin/python benchmarks/peer_serine_fit.py \
        --starts benchmarks/serine_starts.csv          # same starts as kinabs' side

What it does (the tutorial's workflow with 0.0.4's API): ``SBMLModel(xml)``,
``.get_kinetic_model()``, ``Trainer(model, data, n_iter=300)`` with every peer default,
5 Latin-hypercube starts around base values 1.0 with bounds x1/10 .. x10 (or the rows of
``--starts``), then ``trainer.train()``. The peer's own ``train()`` runs unchanged; we
only wrap its jitted ``make_step`` to time every call and keep every loss (the peer keeps
one loss in 20), and we listen to JAX's compile log to count and time compilations.

Output: one JSON object on stdout (after a line ``=== RESULT JSON ===``) and in ``--out``.
The persistent compilation cache is disabled (a cold run), as the peer ships it.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # before jax and jaxkineticmodel are imported
T_START_CPU = time.process_time()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("KINABS_SHARED_DATA", "/work/shared/data/jaxkineticmodel"))
MODEL = DATA / "models" / "Smallbone2013_SerineBiosynthesis.xml"
DATASET = DATA / "datasets" / "Smallbone2013_SerineBiosynthesis.csv"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--starts", type=Path, default=None,
                    help="CSV, one row per initialisation, columns = the peer's parameter "
                         "names (lp_<reaction>__<id>). Default: draw with the peer's LHS.")
    ap.add_argument("--write-starts", type=Path, default=None,
                    help="where to write the drawn starts when --starts is not given "
                         "(default: benchmarks/serine_starts.csv if it does not exist yet, "
                         "else benchmarks/serine_starts_<time>.csv: never overwritten)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON result here too")
    ap.add_argument("--n-iter", type=int, default=300)
    ap.add_argument("--n-starts", type=int, default=5)
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)

    # -- cold run: no persistent compilation cache ---------------------------------------
    for var in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        os.environ.pop(var, None)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    jax.config.update("jax_log_compiles", True)  # compile events become WARNING logs

    # Capture JAX's compile log (kept off the console) to count and time compilations.
    compile_log: list[tuple[float, str]] = []

    class _Capture(logging.Handler):
        def emit(self, record):
            compile_log.append((time.perf_counter(), record.getMessage()))

    jax_logger = logging.getLogger("jax")
    jax_logger.addHandler(_Capture(level=logging.WARNING))
    jax_logger.propagate = False

    import numpy as np
    import pandas as pd
    from jaxkineticmodel.load_sbml.sbml_model import SBMLModel
    from jaxkineticmodel.parameter_estimation.training import Trainer

    t_import = time.perf_counter()

    # -- the tutorial's workflow ---------------------------------------------------------
    model = SBMLModel(str(MODEL))
    kmodel = model.get_kinetic_model()
    dataset = pd.read_csv(DATASET, index_col=0)
    trainer = Trainer(model=kmodel, data=dataset, n_iter=args.n_iter)
    t_setup = time.perf_counter()

    names = list(trainer.parameters)
    if args.starts is not None:
        starts = pd.read_csv(args.starts)
        missing = [n for n in names if n not in starts.columns]
        extra = [c for c in starts.columns if c not in names]
        if missing or extra:
            raise SystemExit(f"--starts {args.starts}: columns must be exactly the peer's "
                             f"parameter names {names}; missing {missing}, unknown {extra}")
        trainer.parameter_sets = starts[names].astype(float).reset_index(drop=True)
        starts_source = str(args.starts)
    else:
        base_parameters = dict(zip(names, np.ones(len(names))))
        trainer.latinhypercube_sampling(base_parameters, lower_bound=1 / 10, upper_bound=10,
                                        N=args.n_starts)
        if args.write_starts is None:
            args.write_starts = HERE / "serine_starts.csv"
            if args.write_starts.exists():
                args.write_starts = HERE / f"serine_starts_{time.strftime('%Y%m%d-%H%M%S')}.csv"
        args.write_starts.parent.mkdir(parents=True, exist_ok=True)
        # repr-exact floats, so the other side reads back the same numbers
        trainer.parameter_sets[names].to_csv(args.write_starts, index=False,
                                             float_format="%.17g")
        starts_source = f"peer LHS (unseeded), written to {args.write_starts}"
    n_starts = len(trainer.parameter_sets)

    # -- instrument the peer's jitted step (timing + every loss) ------------------------
    # A new start is recognised exactly: its opt_state is a fresh optimizer.init(...)
    # object, not the one the previous call returned.
    peer_step = trainer.make_step
    calls: list[dict] = []
    last_state = [None]
    start_index = [-1]

    def timed_step(**kw):
        if kw.get("opt_state") is not last_state[0]:
            start_index[0] += 1
        t0 = time.perf_counter()
        out = peer_step(**kw)
        loss = out[2]
        loss.block_until_ready()  # the peer syncs right after anyway (loss < threshold)
        t1 = time.perf_counter()
        last_state[0] = out[0]
        calls.append({"t": t1 - t0, "loss": float(loss), "start": start_index[0]})
        return out

    trainer.make_step = timed_step

    buf = io.StringIO()
    t_train0 = time.perf_counter()
    cpu_train0 = time.process_time()
    with contextlib.redirect_stdout(buf):
        optimized_parameters, loss_per_iteration = trainer.train()
    t_train1 = time.perf_counter()
    cpu_end_to_end = time.process_time() - T_START_CPU
    wall_end_to_end = t_train1 - T_START
    maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peer_stdout = buf.getvalue()

    # -- split the calls per initialisation ----------------------------------------------
    per_start_calls = [[c for c in calls if c["start"] == s] for s in range(n_starts)]

    # -- compile accounting --------------------------------------------------------------
    compiles = []
    for ts_, msg in compile_log:
        m = re.match(r"Finished XLA compilation of (\S+) in ([0-9.eE+-]+) sec", msg)
        if m:
            compiles.append({"fun": m.group(1), "secs": float(m.group(2)), "at": ts_ - T_START})
    traces = []
    for _ts, msg in compile_log:
        m = re.match(r"Finished tracing \+ transforming (\S+) for pjit in ([0-9.eE+-]+) sec", msg)
        if m:
            traces.append({"fun": m.group(1), "secs": float(m.group(2))})
    lowerings = []
    for _ts, msg in compile_log:
        m = re.match(r"Finished jaxpr to MLIR module conversion (\S+) in ([0-9.eE+-]+) sec", msg)
        if m:
            lowerings.append({"fun": m.group(1), "secs": float(m.group(2))})
    step_fun = "update_log_wrap" if trainer.optim_space == "log" else "update_lin_wrap"
    step_compiles = [c for c in compiles if step_fun in c["fun"]]
    step_traces = [c for c in traces if step_fun in c["fun"]]
    try:
        step_cache_size = int(peer_step._cache_size())
    except Exception:  # noqa: BLE001
        step_cache_size = None

    step_times = np.array([c["t"] for c in calls])
    # steady state: every call after the first two of each start (the first two calls of
    # start 0 compile: python-float params, then jax-array params)
    steady = np.concatenate([np.array([c["t"] for c in pc[2:]]) for pc in per_start_calls
                             if len(pc) > 2]) if calls else np.array([])
    steady_median = float(np.median(steady)) if steady.size else float("nan")
    steady_mean = float(np.mean(steady)) if steady.size else float("nan")
    first_calls = [c["t"] for c in per_start_calls[0][:3]] if per_start_calls else []
    compile_from_timing = (float(sum(first_calls[:2]) - 2 * steady_median)
                           if len(first_calls) >= 2 else float("nan"))

    # -- final losses at the final parameters (outside the timed region) -----------------
    # The last loss the peer reports is that of the parameters *before* its last update;
    # evaluate the peer's own loss at the returned parameters to compare like with like.
    import jax.numpy as jnp

    loss_jit = jax.jit(trainer.loss_func)
    ys = jnp.array(trainer.dataset)
    final_params, final_loss_at_params, final_loss_last_step, histories = [], [], [], []
    for s in range(n_starts):
        p = optimized_parameters.get(s)
        hist = [c["loss"] for c in per_start_calls[s]] if s < len(per_start_calls) else []
        histories.append(hist)
        final_loss_last_step.append(hist[-1] if hist else None)
        if p is None:
            final_params.append(None)
            final_loss_at_params.append(None)
            continue
        pd_ = {k: float(v) for k, v in p.items()}
        final_params.append(pd_)
        if trainer.optim_space == "log":
            lp = {k: jnp.log2(jnp.asarray(v)) for k, v in pd_.items()}
        else:
            lp = {k: jnp.asarray(v) for k, v in pd_.items()}
        try:
            final_loss_at_params.append(float(loss_jit(lp, trainer.ts, ys)))
        except Exception as exc:  # noqa: BLE001
            final_loss_at_params.append(f"error: {exc}")

    # -- the peer's exact settings (introspected, not assumed) ---------------------------
    import diffrax
    import optax

    ctrl = kmodel.stepsize_controller
    settings = {
        "optimizer": "optax.chain(optax.adabelief(learning_rate), "
                     "optax.clip_by_global_norm(np.log(clip)))  "
                     "(Trainer._add_optimizer; clipping acts on adabelief's UPDATES)",
        "learning_rate": trainer.lr,
        "clip": 4,
        "clip_max_global_norm": float(np.log(4)),
        "adabelief_defaults": {k: v.default for k, v in
                               __import__("inspect").signature(optax.adabelief).parameters.items()
                               if v.default is not __import__("inspect").Parameter.empty},
        "loss_threshold": trainer.loss_threshold,
        "optim_space": trainer.optim_space,
        "log_base": 2,
        "loss": "log_mean_centered_loss_func" if trainer.optim_space == "log"
                else "mse_loss_func",
        "solver": type(kmodel.solver).__name__,
        "stepsize_controller": type(ctrl).__name__,
        "rtol": float(ctrl.rtol), "atol": float(ctrl.atol),
        "pcoeff": float(ctrl.pcoeff), "icoeff": float(ctrl.icoeff),
        "dcoeff": float(ctrl.dcoeff),
        "dt0": kmodel.dt0, "max_steps": kmodel.max_steps,
        "adjoint": type(kmodel.adjoint).__name__,
        "diffeqsolve_throw": "default (True): a failed solve raises; train() catches it and "
                             "appends -1 to that start's loss list",
        "y0": "first row of the dataset (the loss passes ys[0, :] as y0)",
        "jit": "make_step = jax.jit(Trainer.update_log_wrap) in log space; NOT jitted in "
               "linear space (update_lin_wrap is used as is)",
        "loss_recorded_by_peer": "one loss every 20 steps (step % 20 == 0)",
        "starts_trained": "one after another (python loop), not batched",
    }

    steady_it = steady_median
    result = {
        "library": "jaxkineticmodel",
        "versions": {
            "jaxkineticmodel": __import__("importlib.metadata").metadata.version(
                "jaxkineticmodel"),
            "jax": jax.__version__, "jaxlib": __import__("jaxlib").__version__,
            "diffrax": diffrax.__version__, "optax": optax.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
        },
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "jax_devices": [str(d) for d in jax.devices()]},
        "model": str(MODEL), "dataset": str(DATASET),
        "n_starts": n_starts, "n_iter": args.n_iter, "starts_source": starts_source,
        "persistent_compilation_cache": "disabled (jax_enable_compilation_cache=False; the "
                                        "peer never sets a cache dir, so it is cold every run)",
        "timing_s": {
            "wall_end_to_end": wall_end_to_end,
            "cpu_end_to_end": cpu_end_to_end,
            "cpu_train": cpu_end_to_end - (cpu_train0 - T_START_CPU),
            "import_jax_and_peer": t_import - T_START,
            "load_model_data_trainer": t_setup - t_import,
            "train_total": t_train1 - t_train0,
            "compile_estimate_from_step_times": compile_from_timing,
            "first_three_step_calls_start0": first_calls,
            "first_step_call_per_start": [pc[0]["t"] if pc else None for pc in per_start_calls],
            "steady_per_iteration_per_start_median": steady_median,
            "steady_per_iteration_per_start_mean": steady_mean,
            "steady_per_iteration_per_start_p10_p90": (
                [float(np.percentile(steady, 10)), float(np.percentile(steady, 90))]
                if steady.size else None),
            "sum_of_all_step_calls": float(step_times.sum()) if step_times.size else 0.0,
            "train_overhead_outside_step": (t_train1 - t_train0) - float(step_times.sum()),
        },
        "compiles": {
            "step_function": step_fun,
            "step_xla_compiles": len(step_compiles),
            "step_traces": len(step_traces),
            "step_jit_cache_size": step_cache_size,
            "step_xla_compile_secs": [c["secs"] for c in step_compiles],
            "step_trace_secs": [c["secs"] for c in step_traces],
            "all_xla_compiles": len(compiles),
            "all_xla_compile_secs_total": float(sum(c["secs"] for c in compiles)),
            "all_trace_secs_total": float(sum(c["secs"] for c in traces)),
            "all_mlir_lowering_secs_total": float(sum(c["secs"] for c in lowerings)),
            "by_function": {f: sum(1 for c in compiles if c["fun"] == f)
                            for f in sorted({c["fun"] for c in compiles})},
        },
        "peak_rss_mib": maxrss_kib / 1024.0,
        "settings": settings,
        "parameter_names": names,
        "starts": trainer.parameter_sets[names].to_dict(orient="records"),
        "n_calls_per_start": [len(pc) for pc in per_start_calls],
        "final_loss_last_step": final_loss_last_step,
        "final_loss_at_final_params": final_loss_at_params,
        "best_final_loss": min((x for x in final_loss_at_params if isinstance(x, float)),
                               default=None),
        "reached_loss_threshold_1e-4": [isinstance(x, float) and x < 1e-4
                                        for x in final_loss_at_params],
        "final_parameters": final_params,
        "loss_history": histories,
        "peer_loss_per_iteration_every_20": {
            str(k): [float(x) for x in v] for k, v in loss_per_iteration.items()},
        "peer_stdout_errors": [ln for ln in peer_stdout.splitlines()
                               if "error" in ln.lower()][:20],
    }
    text = json.dumps(result, indent=1, default=str)
    print("=== RESULT JSON ===")
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    # a short human summary on stderr
    t = result["timing_s"]
    print(
        f"\npeer: wall {t['wall_end_to_end']:.2f} s, cpu {t['cpu_end_to_end']:.2f} s (import {t['import_jax_and_peer']:.2f}, "
        f"setup {t['load_model_data_trainer']:.2f}, train {t['train_total']:.2f}); "
        f"compile~{t['compile_estimate_from_step_times']:.2f} s; steady "
        f"{1e3 * steady_it:.2f} ms/iter/start; step compiled "
        f"{result['compiles']['step_xla_compiles']}x; peak RSS {result['peak_rss_mib']:.0f} MiB"
        f"\nfinal losses (at final params): {final_loss_at_params}",
        file=sys.stderr,
    )
    return result


if __name__ == "__main__":
    main()
