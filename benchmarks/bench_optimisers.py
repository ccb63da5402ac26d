"""kinabs' own optimisers (Levenberg-Marquardt, BFGS) against the seed's AdaBelief.

Four sections, each selected by its flag (none given: all four):

``--serine``
    The Trainer's default optimiser (Levenberg-Marquardt with geodesic acceleration),
    at most 100 evaluations per start, from (a) the 5 starts of
    ``benchmarks/serine_starts.csv`` and (b) 5 seeded Latin hypercube starts 1/10..10
    around all-ones base values, on every backend of ``--backends``; side by side with
    the seed's optimiser (AdaBelief 1e-3 + clipping, 300 iterations) from the same starts.
    Per start: final loss, status, iterations, evaluations; starts with loss <= 1e-9;
    wall time of the fit: "first" (the trainer's first call: building, tracing and
    compiling the program on JAX, with an empty compilation cache) and "again" (the same
    fit once more on the compiled program; JAX only, torch has no compile step).
``--defaults``
    100 log-uniform starts on 1/1000..1000 around all-ones, default optimiser, at most
    ``--defaults-n-iter`` (100) evaluations per start (``bench_many_starts.run``): best
    loss, fraction of starts within 1e-6 (relative) of the best, wall time from loading
    the model (compilation included), statuses. JAX. Target: best <= 1e-10 in < 2 min.
``--second-model``
    ``Garde2020`` (metabolic oscillations in B. subtilis biofilms: 6 parameters, all
    within 10^-0.5..10^1.5, 6 states x 10 times; the shared jaxkineticmodel data set,
    simulated from the model file's values), fitted the same way: 10 seeded Latin
    hypercube starts 1/10..10 around all-ones, default optimiser (<= 100 evaluations)
    against AdaBelief (300 iterations) from the same starts. The data's floor is the loss
    at the model file's values (1.9e-12: not 0, because kinabs' solver and the one that
    made the data differ at their tolerances; a fit can go slightly below it); a start
    "reaches the floor" when its loss is <= 1e-9, the serine threshold: fits either reach
    ~1e-12 or stop in local minima at 1e-1 or above, nothing in between. (Becker_Science2010,
    14 parameters, was tried first: its values (init_Epo 1350, rates 1e-3..1e-1) lie far
    outside the all-ones box, no start of either optimiser came within 1e-6 of its floor
    (5.8e-15; best LM 6.1e-3, AdaBelief 871) and each fit took 100-160 s, most starts on
    the implicit solver.)
``--per-iteration``
    The cost of one iteration (= one evaluation of residuals+Jacobian or loss+gradient)
    of LM, BFGS and AdaBelief on serine (10 parameters) and on ``Weber_BMC2015`` (40
    parameters, the shared model with data that has at least 40 parameters, positive
    values and solves in milliseconds; Smallbone2011 has a parameter at 0, which log
    space cannot fit, and Chassagnole2002's 135 parameters take ~40 s per evaluation).
    5 seeded Latin hypercube starts (serine: 1/10..10 around all-ones; Weber: 1/10..10
    around the model file's values, whose own values span 1e-4..1e10), a
    first round (compiles; serine 5 iterations, Weber 2), then a timed second round
    ``trainer.train(resume=results)`` (serine 20 iterations, Weber 6: LM fits Weber from
    these starts in 9-11 evaluations, and a converged start no longer iterates), run 3
    times from the same first-round results, the least time counted: ms per
    iteration of the batch (time / most evaluations of a start in the round) and per
    start-evaluation (time / all evaluations made in the round). The solver stage each
    start ends on is printed: a start that moves to the implicit solver in the timed round
    compiles that program there. One LM iteration is one evaluation of the residuals and
    their (forward-mode) Jacobian plus one of the residuals alone (the geodesic
    acceleration); one BFGS iteration is one loss+gradient (a line-search trial). The
    methods are at different points in the timed round (AdaBelief has barely moved; LM
    and BFGS have, often into parameters whose solves take more steps: on serine one
    loss+gradient costs ~4 ms at the starts and ~64 ms at BFGS's points after 25
    iterations), so the ratios include where each method goes, not only its own work.

Run (times measured on a shared 2-core CPU at load average 2-3.5, JAX with an empty
compilation cache; torch where named):
    python benchmarks/bench_optimisers.py --serine            # ~40 s (torch: ~2 min more)
    python benchmarks/bench_optimisers.py --defaults          # ~5 min (52 of 100 starts
                                                              #   run on the implicit solver)
    python benchmarks/bench_optimisers.py --second-model      # ~2.5 min
    python benchmarks/bench_optimisers.py --per-iteration     # ~1 min (torch: ~2 min more)
    python benchmarks/bench_optimisers.py --serine --per-iteration --backends jax,torch \\
        --out benchmarks/results_optimisers.json
``--out FILE`` writes the figures as JSON; sections already in FILE that were not run
this time are kept (so sections can be run one at a time into one file). The JAX
compilation cache is a fresh temporary folder unless ``--keep-cache`` (then
``KINABS_JAX_CACHE`` or ~/.cache/kinabs/jax) is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
STARTS = HERE / "serine_starts.csv"
SHARED = Path(os.environ.get("KINABS_SHARED_DATA", "/work/shared/data/jaxkineticmodel"))
SEED = 0
FLOOR = 1e-9  # "reached the data's floor" on serine and the second model
SECOND_MODEL = "Garde2020"
BIG_MODEL = "Weber_BMC2015"
LABELS = {"default": "default (LM)", "seed": "seed (AdaBelief)"}

sys.path.insert(0, str(HERE))


# -- helpers -------------------------------------------------------------------------
def load(name: str):
    """(model, data) of serine (``"serine"``) or of a shared model with its data set."""
    import kinabs

    if name == "serine":
        return kinabs.load_sbml(kinabs.example_model_path()), kinabs.example_data_path()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = kinabs.load_sbml(SHARED / "models" / f"{name}.xml")
    return model, SHARED / "datasets" / f"{name}.csv"


def optimizer(kind: str, backend: str):
    """None (the Trainer's default), the seed's AdaBelief, or kinabs' LM/BFGS."""
    import kinabs

    return {"default": None, "LM": kinabs.LevenbergMarquardt(), "BFGS": kinabs.BFGS(),
            "seed": kinabs.get_backend(backend).default_optimizer(),
            "AdaBelief": kinabs.get_backend(backend).default_optimizer()}[kind]


def trainer_for(name: str, backend: str, kind: str, n_iter: int):
    import kinabs

    model, data = load(name)
    return kinabs.Trainer(model=model, data=data, n_iter=n_iter, backend=backend,
                          optimizer=optimizer(kind, backend), progress=False)


def serine_csv_starts():
    import pandas as pd
    from bench_serine_fit import peer_name_to_kinabs

    return pd.read_csv(STARTS).rename(columns=peer_name_to_kinabs)


def lhs_starts(trainer, lower=0.1, upper=10.0, n=5, around_ones=True, log=False):
    base = ({p: 1.0 for p in trainer.parameters} if around_ones
            else {p: trainer.model.parameter_values()[p] for p in trainer.parameters})
    return trainer.latinhypercube_sampling(base, lower_bound=lower, upper_bound=upper, N=n,
                                           seed=SEED, log=log).copy()


def timed_fit(trainer, starts, *, repeat: bool) -> dict:
    """Train ``starts``; time the first call and (``repeat``) the same fit again."""
    trainer.parameter_sets = starts[trainer.parameters]
    t = time.perf_counter()
    r = trainer.train()
    first = time.perf_counter() - t
    out = dict(method=repr(trainer.optimizer), n_iter=trainer.n_iter, first_s=first,
               final_loss=[float(x) for x in r.final_loss], status=list(r.status),
               # the first recorded loss: at the start (NaN where it failed there)
               start_loss=[float(x) for x in r.loss_history[:, 0]],
               iterations=[int(x) for x in r.iterations],
               evaluations=[int(x) for x in r.evaluations],
               best_loss=float(r.best_loss))
    if repeat:
        t = time.perf_counter()
        r2 = trainer.train()
        out["again_s"] = time.perf_counter() - t
        out["again_identical"] = bool(np.array_equal(r.final_loss, r2.final_loss,
                                                     equal_nan=True))
    return out


def fmt(x) -> str:
    return "nan" if x is None or not np.isfinite(x) else f"{x:.3g}"


def below(losses, threshold) -> int:
    return int(np.sum(np.nan_to_num(np.asarray(losses, float), nan=np.inf) <= threshold))


def side_by_side(title: str, a: dict, b: dict, thresholds=(FLOOR,)) -> None:
    """Per-start table of two fits from the same starts, then counts and times."""
    print(f"\n{title}")
    print(f"  {LABELS['default']}: {a['method']}, n_iter {a['n_iter']}")
    print(f"  {LABELS['seed']}: n_iter {b['n_iter']}")
    print(f"  {'start':>5s} {'start loss':>10s} | {'LM loss':>9s} {'status':>14s} {'iter':>5s} "
          f"{'eval':>5s} | {'AdaBelief loss':>14s} {'status':>8s} {'iter':>5s}")
    for i, (l0, la, sa, ia, ea, lb, sb, ib) in enumerate(zip(
            a["start_loss"], a["final_loss"], a["status"], a["iterations"], a["evaluations"],
            b["final_loss"], b["status"], b["iterations"])):
        print(f"  {i:5d} {fmt(l0):>10s} | {fmt(la):>9s} {sa[:14]:>14s} {ia:5d} {ea:5d} | "
              f"{fmt(lb):>14s} {sb[:8]:>8s} {ib:5d}")
    n = len(a["final_loss"])
    for th in thresholds:
        print(f"  starts <= {th:.3g}: LM {below(a['final_loss'], th)}/{n}, AdaBelief "
              f"{below(b['final_loss'], th)}/{n}")
    line = (f"  wall s, first call: LM {a['first_s']:.2f}, AdaBelief {b['first_s']:.2f} "
            f"(AdaBelief/LM {b['first_s'] / a['first_s']:.2f}x)")
    if "again_s" in a and "again_s" in b:
        line += (f"; again (compiled): LM {a['again_s']:.2f}, AdaBelief {b['again_s']:.2f} "
                 f"({b['again_s'] / a['again_s']:.2f}x)")
    print(line)
    print(f"  best loss: LM {fmt(a['best_loss'])}, AdaBelief {fmt(b['best_loss'])}")


def backend_ready(backend: str) -> str | None:
    """None if ``backend`` trains with kinabs' LM on serine, else why not."""
    try:
        t = trainer_for("serine", backend, "LM", 2)
        t.parameter_sets = serine_csv_starts().head(1)[t.parameters]
        r = t.train()
        if r.status[0].startswith("failed"):
            return f"a 2-iteration LM fit failed: {r.status[0]}"
    except Exception as exc:  # noqa: BLE001 - reported, the section goes on without it
        return f"{type(exc).__name__}: {exc}"
    return None


# -- sections -------------------------------------------------------------------------
def section_serine(backends: list[str]) -> dict:
    out: dict = {}
    for backend in backends:
        if backend != "jax":
            why = backend_ready(backend)
            if why:
                print(f"\n[serine, {backend}] not run: {why}")
                out[backend] = dict(not_run=why)
                continue
        repeat = backend == "jax"
        lm = trainer_for("serine", backend, "default", 100)
        ada = trainer_for("serine", backend, "seed", 300)
        sets = {"serine_starts.csv": serine_csv_starts(),
                "LHS 1/10..10 around ones, seed 0": lhs_starts(lm)}
        res: dict = {}
        for name, starts in sets.items():
            a = timed_fit(lm, starts, repeat=repeat)
            b = timed_fit(ada, starts, repeat=repeat)
            res[name] = dict(default=a, seed=b)
            side_by_side(f"[serine, {backend}] starts: {name}", a, b)
        # after the fits: it builds the program, which the first fit's time includes
        res["floor_loss"] = floor_loss(ada)
        print(f"\n[serine, {backend}] loss at the model file's values: "
              f"{fmt(res['floor_loss'])}")
        out[backend] = res
    return out


def section_defaults(n_iter: int) -> dict:
    import bench_many_starts

    fig, results = bench_many_starts.run(inits=100, n_iter=n_iter, seed=SEED, defaults=True,
                                         optimizer="default", progress=False, trace=True)
    fig["evaluations_quartiles"] = [float(q) for q in np.percentile(results.evaluations,
                                                                    [25, 50, 75])]
    fig.pop("best_over_true", None)
    print(f"\n[defaults, jax] 100 log-uniform starts 1/1000..1000 around ones, seed {SEED}, "
          f"{fig['method']}, at most {n_iter} evaluations per start")
    print(f"  best loss {fmt(fig['best_loss'])} (target <= 1e-10: "
          f"{'met' if fig['best_loss'] <= 1e-10 else 'NOT met'}); starts within 1e-6 "
          f"(relative) of the best: {fig['starts_within_1e-6_of_best']}/100 "
          f"({fig['fraction_within_1e-6_of_best']:.0%}); starts <= 1e-10: "
          f"{fig['starts_below_1e-10']}")
    print(f"  wall {fig['wall_s']:.1f} s from loading the model (compile included; train "
          f"{fig['train_s']:.1f} s; target < 120 s: "
          f"{'met' if fig['wall_s'] < 120 else 'NOT met'}); peak {fig['peak_rss_mib']:.0f} MiB")
    hit = fig.get("best_first_below_1e-10")
    if hit:
        print(f"  the best start first <= 1e-10 after {hit['iterations']} iterations, "
              f"{hit['seconds']:.1f} s from loading the model (a fit stopped there)")
    if fig.get("solver_stages"):
        print(f"  starts by the solver stage they ended on: {fig['solver_stages']}")
    print(f"  statuses {fig['statuses']}; evaluations per start: mean "
          f"{fig['evaluations_mean']:.0f}, quartiles {fig['evaluations_quartiles']}, max "
          f"{fig['evaluations_max']}")
    print("  best start's parameters / the model file's: max |log10| "
          f"{fig['max_abs_log10_ratio']:.2f}")
    return fig


def floor_loss(trainer) -> float:
    """The loss at the model file's parameter values (the data's floor)."""
    truth = trainer.model.parameter_values()
    theta = np.log2(np.array([[truth[p] for p in trainer.parameters]]))
    loss, status, _ = trainer._get_program().value_and_grad(theta)
    return float(loss[0]) if int(status[0]) == 0 else float("nan")


def section_second_model(name: str = SECOND_MODEL, n: int = 10) -> dict:
    lm = trainer_for(name, "jax", "default", 100)
    ada = trainer_for(name, "jax", "seed", 300)
    starts = lhs_starts(lm, n=n)
    a = timed_fit(lm, starts, repeat=True)
    b = timed_fit(ada, starts, repeat=True)
    floor = floor_loss(ada)  # after the fits: it builds the program
    print(f"\n[second model, jax] {name}: {len(lm.parameters)} parameters, data on "
          f"{', '.join(lm.data.species)}")
    print(f"  data floor = loss at the model file's values: {fmt(floor)}")
    side_by_side(f"[{name}, jax] {n} LHS starts 1/10..10 around ones, seed {SEED}", a, b,
                 thresholds=(1e-6, FLOOR, 100 * floor))
    return dict(model=name, n_parameters=len(lm.parameters), floor_loss=floor,
                threshold=FLOOR, default=a, seed=b)


#: (first round, timed second round) iterations: every start still iterates in the timed
#: round (LM fits Weber from 1/10..10 around its values in 9-11 evaluations)
ROUNDS = {"serine": (5, 20), BIG_MODEL: (2, 6)}
REPEATS = 3


def per_iteration_one(name: str, backend: str, kind: str, starts, rounds) -> dict:
    t = trainer_for(name, backend, kind, rounds[0])
    t.parameter_sets = starts[t.parameters]
    t0 = time.perf_counter()
    r1 = t.train()
    first = time.perf_counter() - t0
    t.n_iter = rounds[1]  # the same program (n_iter is not part of it)
    # the same second round (from the first round's state) REPEATS times: the least time
    # (the machine is shared); the evaluations must be the same every time
    times, evals = [], []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        r2 = t.train(resume=r1)
        times.append(time.perf_counter() - t0)
        evals.append(tuple(int(x) for x in r2.evaluations))
    second = min(times)
    ev = np.asarray(r2.evaluations) - np.asarray(r1.evaluations)
    total, most = int(ev.sum()), int(ev.max())
    from bench_many_starts import _solver_stages

    # a start that moves to a later solver stage in the timed round compiles its program
    # there: say so (JAX "auto" mode; None elsewhere)
    stages = (_solver_stages(r1), _solver_stages(r2))
    return dict(method=repr(t.optimizer), first_round_s=first, second_round_s=second,
                second_round_all_s=times, repeats_identical=len(set(evals)) == 1,
                evaluations=[int(x) for x in ev], status=list(r2.status),
                solver_stages_after_rounds=stages, stage_changed=stages[0] != stages[1],
                ms_per_iteration=1e3 * second / most if most else float("nan"),
                ms_per_start_evaluation=1e3 * second / total if total else float("nan"))


def section_per_iteration(backends: list[str]) -> dict:
    out: dict = {}
    for backend in backends:
        if backend != "jax":
            why = backend_ready(backend)
            if why:
                print(f"\n[per iteration, {backend}] not run: {why}")
                out[backend] = dict(not_run=why)
                continue
        out[backend] = {}
        for name in ("serine", BIG_MODEL):
            rounds = ROUNDS[name]
            probe = trainer_for(name, backend, "seed", 1)
            starts = (lhs_starts(probe) if name == "serine"
                      else lhs_starts(probe, lower=0.1, upper=10.0, around_ones=False))
            rows = {kind: per_iteration_one(name, backend, kind, starts, rounds)
                    for kind in ("LM", "BFGS", "AdaBelief")}
            out[backend][name] = dict(n_parameters=len(probe.parameters), rounds=rounds,
                                      rows=rows)
            print(f"\n[per iteration, {backend}] {name} ({len(probe.parameters)} parameters), "
                  f"5 starts, timed second round of {rounds[1]} iterations (first round "
                  f"{rounds[0]}; least of {REPEATS} runs of the second round)")
            print(f"  {'method':10s} {'ms/iter (5 starts)':>19s} {'ms/start-eval':>14s} "
                  f"{'evals in round':>15s} {'first round s':>14s}  statuses; solver stages")
            for kind, r in rows.items():
                stages = r["solver_stages_after_rounds"][1]
                note = " (changed in the timed round)" if r["stage_changed"] else ""
                if not r["repeats_identical"]:
                    note += " (the repeats made different evaluations)"
                print(f"  {kind:10s} {r['ms_per_iteration']:19.2f} "
                      f"{r['ms_per_start_evaluation']:14.3f} {sum(r['evaluations']):15d} "
                      f"{r['first_round_s']:14.2f}  {sorted(set(r['status']))}; "
                      f"{stages}{note}")
            ada = rows["AdaBelief"]["ms_per_iteration"]
            print(f"  per iteration vs AdaBelief: LM {rows['LM']['ms_per_iteration'] / ada:.2f}x, "
                  f"BFGS {rows['BFGS']['ms_per_iteration'] / ada:.2f}x")
    return out


def _commit() -> str | None:
    """The checkout's HEAD commit (figures move with the code), or None."""
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--serine", action="store_true")
    ap.add_argument("--defaults", action="store_true")
    ap.add_argument("--second-model", action="store_true")
    ap.add_argument("--per-iteration", action="store_true")
    ap.add_argument("--backends", default="jax",
                    help="for --serine and --per-iteration, comma-separated (default: jax)")
    ap.add_argument("--defaults-n-iter", type=int, default=100,
                    help="evaluations per start of --defaults (default 100)")
    ap.add_argument("--keep-cache", action="store_true",
                    help="use KINABS_JAX_CACHE / ~/.cache/kinabs/jax instead of a fresh folder")
    ap.add_argument("--out", type=Path, default=None, help="write (merge) the figures as JSON")
    args = ap.parse_args()
    if not (args.serine or args.defaults or args.second_model or args.per_iteration):
        args.serine = args.defaults = args.second_model = args.per_iteration = True
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    tmp = None
    if not args.keep_cache:
        tmp = tempfile.TemporaryDirectory()
        os.environ["KINABS_JAX_CACHE"] = tmp.name
    out = {}
    if args.out and args.out.exists():
        out = json.loads(args.out.read_text())
    t0 = time.perf_counter()
    sections = [("serine", args.serine, lambda: section_serine(backends)),
                ("defaults", args.defaults, lambda: section_defaults(args.defaults_n_iter)),
                ("second_model", args.second_model, section_second_model),
                ("per_iteration", args.per_iteration,
                 lambda: section_per_iteration(backends))]
    for key, wanted, fn in sections:
        if not wanted:
            continue
        load_before, t = os.getloadavg(), time.perf_counter()
        figures = fn()
        meta = dict(section_wall_s=time.perf_counter() - t, cpu_count=os.cpu_count(),
                    load_average_before=load_before, load_average_after=os.getloadavg(),
                    fresh_jax_cache=not args.keep_cache, commit=_commit(),
                    when=time.strftime("%Y-%m-%d %H:%M:%S"))
        if key in ("serine", "per_iteration"):
            # one entry per backend, each with its run's meta; other backends' entries
            # already in --out are kept
            section = out.setdefault(key, {})
            for backend, fig in figures.items():
                section[backend] = dict(fig, meta=dict(meta, backends=backends))
        else:
            out[key] = dict(figures, meta=meta)
    print(f"\nwall {time.perf_counter() - t0:.1f} s; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")
    if args.out:
        args.out.write_text(json.dumps(out, indent=1, default=str))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
