"""Multi-start fitting of a PEtab problem: Latin hypercube starts within the parameter
table's bounds on each parameter's scale, and by default :class:`kinabs.petab.FisherLM`
(Levenberg-Marquardt on the gradient and Fisher information of the negative
log-likelihood, projected onto the bounds; :mod:`kinabs.petab._fisher`), one start after
another, each evaluation a one-member call of the compiled objective
(:meth:`PetabProblem.objective`). With ``method=kinabs.BFGS(...)`` every start advances
together instead: one iteration is one batched call for all starts, and the quasi-Newton
updates of all starts are one numpy computation (the same code the Trainer runs inside
its programs).

Starts whose first evaluation fails (a solve that cannot finish) are drawn again, up to
``resample`` times, as pyPESTO does; a start that still fails, or whose every later
evaluation fails, is reported ``failed: <reason>``, never with a number.

Example:
    >>> import kinabs.petab  # doctest: +SKIP
    >>> problem = kinabs.petab.load("Boehm_JProteomeRes2014.yaml")  # doctest: +SKIP
    >>> result = kinabs.petab.fit(problem, n_starts=20, seed=0)  # doctest: +SKIP
    >>> result.table().head()  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kinabs._errors import DataError
from kinabs._fit.results import check_output_folder
from kinabs._optim.methods import BFGS
from kinabs._options import SolverOptions
from kinabs.petab._fisher import FisherLM, fit_starts
from kinabs.petab._priors import scale_values, unscale_values
from kinabs.petab._problem import load

__all__ = ["PetabFitResult", "fit", "latin_hypercube", "scaled_bounds"]


def scaled_bounds(problem: Any) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of the estimated parameters on their scales (``x_free_ids``
    order); a bound that is missing, not finite on its scale, or the wrong way round is a
    :class:`kinabs.DataError` naming the parameter-table row."""
    pt = problem.parameters
    lo, hi = [], []
    for k, pid in enumerate(pt.ids):
        if not pt.estimate[k]:
            continue
        a, b = (float(scale_values(np.asarray(v), pt.scales[k])) for v in (pt.lower[k], pt.upper[k]))
        if not (np.isfinite(a) and np.isfinite(b)):
            raise DataError(
                f"parameter table row '{pid}': lowerBound {pt.lower[k]:g} and upperBound "
                f"{pt.upper[k]:g} are not both finite on its {pt.scales[k]} scale; starts "
                "are drawn between them, so give finite bounds (positive for log scales).")
        if not a < b:
            raise DataError(f"parameter table row '{pid}': lowerBound {pt.lower[k]:g} is not "
                            f"below upperBound {pt.upper[k]:g}; swap them.")
        lo.append(a)
        hi.append(b)
    return np.asarray(lo), np.asarray(hi)


@dataclass(frozen=True)
class PetabFitResult:
    """Per start: where it began and ended (on the parameters' scales), its negative
    log-likelihood, status, iterations and objective evaluations.

    Attributes:
        x_ids, scales: the estimated parameters and their scales.
        starts, x: (N, F) first and final points on the parameters' scales.
        nllh: (N,) final negative log-likelihoods (NaN where the start failed).
        status: per start ``"converged"``, ``"max_iterations"`` or ``"failed: ..."``.
        iterations, evaluations: (N,) accepted steps and objective evaluations.
        history: (N, K) the best nllh after each evaluation.
        seconds: wall time of the fit; ``compile_seconds`` of it the first call.
    """

    x_ids: tuple[str, ...]
    scales: tuple[str, ...]
    starts: np.ndarray
    x: np.ndarray
    nllh: np.ndarray
    status: tuple[str, ...]
    iterations: np.ndarray
    evaluations: np.ndarray
    history: np.ndarray
    seconds: float
    compile_seconds: float
    meta: dict = field(default_factory=dict)

    @property
    def x_linear(self) -> np.ndarray:
        """Final points on the linear scale, (N, F)."""
        return np.stack([unscale_values(self.x[:, i], s) for i, s in enumerate(self.scales)],
                        axis=1)

    @property
    def best_index(self) -> int:
        finite = np.where(np.isfinite(self.nllh), self.nllh, np.inf)
        return int(np.argmin(finite))

    @property
    def best_nllh(self) -> float:
        return float(self.nllh[self.best_index])

    @property
    def best_parameters(self) -> dict[str, float]:
        """The best start's values on the parameters' scales."""
        return dict(zip(self.x_ids, self.x[self.best_index].tolist()))

    def n_within(self, delta: float = 0.1) -> int:
        """Starts whose nllh is within ``delta`` of the best (the field's count of
        converged starts)."""
        return int(np.sum(np.isfinite(self.nllh) & (self.nllh <= self.best_nllh + delta)))

    def table(self) -> pd.DataFrame:
        """One row per start, best first: nllh, status, iterations, evaluations and the
        final values on the parameters' scales."""
        df = pd.DataFrame(self.x, columns=list(self.x_ids))
        df.insert(0, "evaluations", self.evaluations)
        df.insert(0, "iterations", self.iterations)
        df.insert(0, "status", list(self.status))
        df.insert(0, "nllh", self.nllh)
        df.index.name = "start"
        return df.sort_values("nllh", na_position="last")

    def plot_waterfall(self, path: str | Path | None = None):
        """Final nllh of every start, sorted (the field's picture of a multi-start fit),
        relative to the best; starts within 0.1 of it are marked."""
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        values = np.sort(self.nllh[np.isfinite(self.nllh)])
        fig, ax = plt.subplots(figsize=(6, 4))
        if values.size:
            gap = values - values[0] + 1e-3
            near = gap <= 0.1 + 1e-3
            ax.semilogy(np.flatnonzero(~near), gap[~near], "o", color="tab:blue",
                        label="other starts")
            ax.semilogy(np.flatnonzero(near), gap[near], "o", color="tab:green",
                        label=f"within 0.1 of the best ({int(near.sum())})")
            ax.legend()
        ax.set_xlabel("start (sorted)")
        ax.set_ylabel("nllh - best nllh + 1e-3")
        failed = int(np.sum(~np.isfinite(self.nllh)))
        ax.set_title(f"{len(self.nllh)} starts, best nllh {self.best_nllh:.6g}"
                     + (f", {failed} failed" if failed else ""))
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
            plt.close(fig)
        return fig

    def save(self, folder: str | Path) -> Path:
        """``results.tsv`` (the table) and ``waterfall.png`` in ``folder``."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.table().to_csv(out / "results.tsv", sep="\t")
        self.plot_waterfall(out / "waterfall.png")
        return out


def plot_fit(problem: Any, parameters: Any, path: str | Path | None = None, *,
             backend: str | None = None, solver: Any = None):
    """Measurements and simulations per observable (one panel each), a line per
    condition, at ``parameters`` (on the parameters' scales)."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    sim = problem.evaluate(parameters, backend=backend, solver=solver).simulation_df
    meas = problem.measurements
    obs_ids = list(dict.fromkeys(meas["observableId"]))
    cols = min(3, len(obs_ids))
    rows = -(-len(obs_ids) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    key = ["simulationConditionId"] + (["preequilibrationConditionId"]
                                       if "preequilibrationConditionId" in meas else [])
    for ax, oid in zip(axes.ravel(), obs_ids):
        sel = meas["observableId"] == oid
        for n, (cond, part) in enumerate(meas[sel].groupby(key, dropna=False, sort=False)):
            color = f"C{n % 10}"
            label = cond if isinstance(cond, str) else " / ".join(
                str(c) for c in cond if isinstance(c, str))
            t = part["time"].to_numpy(float)
            order = np.argsort(t)
            ax.plot(t, part["measurement"].to_numpy(float), "o", ms=3, color=color)
            ax.plot(t[order], sim.loc[part.index, "simulation"].to_numpy(float)[order], "-",
                    color=color, label=label)
        ax.set_title(oid, fontsize=9)
        ax.set_xlabel("time")
        if len(ax.get_legend_handles_labels()[0]) <= 6:
            ax.legend(fontsize=6)
    for ax in axes.ravel()[len(obs_ids):]:
        ax.set_visible(False)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def latin_hypercube(problem: Any, n_starts: int, seed: int = 0) -> np.ndarray:
    """The (n_starts, F) Latin hypercube starts that :func:`fit` draws first for ``seed``
    (within the parameter table's bounds, on the parameters' scales, ``x_free_ids``
    order); redraws of failing starts come after these from the same sampler."""
    return _sampler(*scaled_bounds(problem), seed)(n_starts)


def _sampler(lower: np.ndarray, upper: np.ndarray, seed: int):
    """``draw(n)``: the next ``n`` points of the seeded Latin hypercube within the bounds
    (:func:`latin_hypercube` and :func:`fit` draw from this one sampler)."""
    from scipy.stats import qmc

    sampler = qmc.LatinHypercube(d=lower.size, seed=np.random.default_rng(seed))
    return lambda n: qmc.scale(sampler.random(n), lower, upper)


#: BFGS for a negative log-likelihood. Its gradient test is relative to |f|, made for sums
#: of squares that fall to 0; a start far from the data has a huge nllh (1e11 on Boehm) on
#: a plateau, where 1e-10 |f| passed gradients of 20 as converged after one evaluation.
#: With 1e-16 the test means about scipy's pgtol (1e-5) there, and the relative fall of
#: the nllh (ftol) ends the other starts.
BFGS_METHOD = BFGS(gtol=1e-16)
#: The default: Levenberg-Marquardt on the Fisher information, each start on its own
#: (see :mod:`kinabs.petab._fisher`): on Boehm, 20 starts took 3 s each against 34 s
#: with BFGS on the vmapped batch.
DEFAULT_METHOD = FisherLM()
#: The objective's solver unless one is given: Rodas5 with AMICI's default step budget
#: (10 000, not 100 000): far from the data a solve that cannot finish is a rejected
#: step, and on Crauste each of those took 20-30 s with 100 000 steps, 2.5-2.9 s with
#: 10 000, where the successful solves take 5-150 ms.
FIT_SOLVER = SolverOptions(method="stiff", max_steps=10_000)


def fit(problem: Any, n_starts: int = 100, *, seed: int = 0, max_iterations: int = 200,
        method: FisherLM | BFGS | None = None, backend: str | None = "jax", solver: Any = None,
        resample: int = 10, progress: bool = True, starts: Any = None) -> PetabFitResult:
    """Fit ``problem`` from ``n_starts`` Latin hypercube starts (``seed``) within the
    parameter table's bounds on each parameter's scale, with ``method``
    (default :data:`DEFAULT_METHOD`, a :class:`kinabs.petab.FisherLM`: Levenberg-Marquardt
    on the Fisher information, one start after another; or :class:`kinabs.BFGS`, all
    starts in one batched call per iteration) for at most ``max_iterations`` objective evaluations per start.

    ``solver``: :class:`kinabs.SolverOptions` of the objective (see
    :meth:`PetabProblem.objective`; default :data:`FIT_SOLVER`); ``resample``: times a start whose first evaluation
    fails is drawn again. ``starts``: explicit first points instead, (N, F) on the
    parameters' scales in ``x_free_ids`` order (``n_starts`` and ``seed`` are then unused,
    and a failing start is reported, not redrawn), e.g. to run another tool from the same
    points; :func:`latin_hypercube` draws the ones ``fit`` would.
    """
    if starts is not None:
        n_starts, resample = len(np.atleast_2d(starts)), 0
    if not (isinstance(n_starts, int) and n_starts >= 1):
        raise DataError(f"n_starts must be a positive integer; got {n_starts!r}.")
    if not (isinstance(max_iterations, int) and max_iterations >= 1):
        raise DataError(f"max_iterations must be a positive integer; got {max_iterations!r}.")
    method = method or DEFAULT_METHOD
    if not isinstance(method, (BFGS, FisherLM)):
        raise DataError(f"method must be a kinabs.petab.FisherLM or a kinabs.BFGS (the "
                        f"objective is a negative log-likelihood, not residuals); got "
                        f"{type(method).__name__}.")
    lower, upper = scaled_bounds(problem)
    n_free = lower.size
    if n_free == 0:
        raise DataError("the parameter table estimates no parameter (estimate = 1 nowhere); "
                        "there is nothing to fit.")
    objective = problem.objective(backend=backend, solver=solver or FIT_SOLVER)
    draw = _sampler(lower, upper, seed)
    if starts is None:
        x0 = draw(n_starts)
    else:
        x0 = np.array(np.atleast_2d(starts), dtype=np.float64)
        if x0.shape != (n_starts, n_free):
            raise DataError(f"starts must have shape (N, {n_free}) (x_free_ids on their "
                            f"scales); got {np.shape(starts)}.")
        outside = ~np.isfinite(x0) | (x0 < lower) | (x0 > upper)
        if outside.any():
            i, j = map(int, np.argwhere(outside)[0])
            raise DataError(
                f"start {i} has {problem.x_free_ids[j]} = {x0[i, j]!r} on its scale, "
                f"outside the parameter table's bounds [{lower[j]:g}, {upper[j]:g}]; give "
                "finite starts within the bounds (kinabs.petab.latin_hypercube draws them).")

    t_start = time.perf_counter()
    if isinstance(method, FisherLM):
        bar = _progress(progress, n_starts + 1, n_starts, "FisherLM", "start")
        try:
            out = fit_starts(objective, x0, lambda: draw(1)[0],
                             lower, upper, method, max_evaluations=max_iterations,
                             resample=resample, bar=bar)
        finally:
            if bar is not None:
                bar.close()
        return PetabFitResult(
            x_ids=tuple(problem.x_free_ids),
            scales=tuple(s for s, e in zip(problem.x_scales, problem.parameters.estimate)
                         if e),
            starts=out["starts"], x=out["x"], nllh=out["nllh"], status=tuple(out["status"]),
            iterations=out["iterations"], evaluations=out["evaluations"],
            history=out["history"], seconds=time.perf_counter() - t_start,
            compile_seconds=out["compile_seconds"],
            meta={"method": repr(method), "seed": seed, "max_iterations": max_iterations,
                  "backend": backend})

    def nllh_and_grad(x: np.ndarray):
        llh, grad = objective.value_and_grad(x)
        f, g = -np.asarray(llh, float), -np.asarray(grad, float)
        ok = np.isfinite(f) & np.all(np.isfinite(g), axis=1)
        return f, g, ok

    f, g, ok = nllh_and_grad(x0)
    compile_seconds = time.perf_counter() - t_start
    for _ in range(resample):
        if ok.all():
            break
        bad = np.flatnonzero(~ok)
        x0[bad] = draw(bad.size)
        f_new, g_new, ok_new = nllh_and_grad(x0)
        f[bad], g[bad], ok[bad] = f_new[bad], g_new[bad], ok_new[bad]
    first_reason = _reasons(objective, ok)

    import array_api_compat.numpy as xp

    state = method.init(x0.copy(), xp)
    state = method.update(state, f, g, ok, lower, upper, xp, None)
    history = [np.where(np.isfinite(state["f"]), state["f"], np.nan)]
    bar = _progress(progress, max_iterations, n_starts)
    try:
        for _ in range(max_iterations - 1):
            done = np.asarray(state["converged"]) | ~np.isfinite(state["f"])
            if done.all():
                break
            f, g, ok = nllh_and_grad(np.asarray(state["trial"]))
            # converged starts keep their state (their trial point is evaluated with the
            # batch, so the program's batch size never changes)
            new = method.update(state, f, g, ok & ~done, lower, upper, xp, None)
            state = {k: np.where(done.reshape((-1,) + (1,) * (np.ndim(v) - 1)), state[k], v)
                     for k, v in new.items()}
            history.append(np.where(np.isfinite(state["f"]), state["f"], np.nan))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(best=f"{np.nanmin(history[-1]):.6g}",
                                converged=int(np.sum(state["converged"])))
    finally:
        if bar is not None:
            bar.close()
    nllh = np.where(np.isfinite(state["f"]), state["f"], np.nan)
    status = tuple(
        f"failed: {first_reason.get(i, 'no evaluation succeeded')}" if not np.isfinite(nllh[i])
        else "converged" if state["converged"][i] else "max_iterations"
        for i in range(n_starts))
    return PetabFitResult(
        x_ids=tuple(problem.x_free_ids),
        scales=tuple(s for s, e in zip(problem.x_scales, problem.parameters.estimate) if e),
        starts=x0, x=np.asarray(state["x"]), nllh=nllh, status=status,
        iterations=np.asarray(state["iterations"]), evaluations=np.asarray(
            state["evaluations"]),
        history=np.stack(history, axis=1), seconds=time.perf_counter() - t_start,
        compile_seconds=compile_seconds,
        meta={"method": repr(method), "seed": seed, "max_iterations": max_iterations,
              "backend": backend})


def _reasons(objective: Any, ok: np.ndarray) -> dict[int, str]:
    """Why each failed start failed: its first condition whose status is not success."""
    status = objective.last_status  # (B, C) names of the last call
    out: dict[int, str] = {}
    for i in np.flatnonzero(~ok):
        bad = [str(x) for x in status[i] if str(x) != "success"]
        out[int(i)] = bad[0] if bad else "the objective or its gradient is not finite"
    return out


def _progress(show: bool, total: int, n: int, name: str = "BFGS", unit: str = "it"):
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total - 1, desc=f"{name}, {n} starts", unit=unit)


#: What ``kinabs fit PROBLEM.yaml`` writes into ``--out``.
FIT_FILES = ("results.tsv", "best_parameters.tsv", "waterfall.png", "fit.png")


def fit_command(args: Any) -> int:
    """``kinabs fit PROBLEM.yaml --inits N``: the same command and flags as for SBML
    models, where they apply (``--inits``, ``--seed``, ``--n-iter`` as the most objective
    evaluations per start, ``--backend``, ``--rtol``, ``--atol``, ``--max-steps``,
    ``--out``); the PEtab problem brings its own data, bounds and scales."""
    given = [flag for flag, value, default in (
        ("--data", args.data, None), ("--base", args.base, "ones"),
        ("--lower", args.lower, 0.1), ("--upper", args.upper, 10.0),
        ("--log-sampling", args.log_sampling, False), ("--space", args.space, "log"),
        ("--loss-threshold", args.loss_threshold, None),
        ("--executor", args.executor, None), ("--chunk-size", args.chunk_size, None),
        ("--run-dir", args.run_dir, None), ("--workers", args.workers, None),
        ("--scheduler", args.scheduler, None)) if value != default]
    if given:
        raise DataError(f"{', '.join(given)} do(es) not apply to a PEtab problem: its "
                        "measurement table is the data, its parameter table the bounds and "
                        "scales (starts are drawn within them). Leave them out.")
    out = check_output_folder(args.out, FIT_FILES, what="output folder (--out)")
    problem = load(args.model)
    solver = SolverOptions(method="stiff", rtol=args.rtol, atol=args.atol,
                           max_steps=args.max_steps or 100_000)
    backend = args.backend or "jax"
    print(f"fitting {len(problem.x_free_ids)} parameters of {Path(args.model).name} "
          f"({len(problem.measurements)} measurements, {len(problem.plan.conditions)} "
          f"conditions): {args.inits} Latin hypercube starts within the parameter table's "
          f"bounds, Levenberg-Marquardt on the Fisher information, at most {args.n_iter} evaluations each, on {backend}", flush=True)
    result = fit(problem, n_starts=args.inits, seed=args.seed, max_iterations=args.n_iter,
                 backend=backend, solver=solver)
    result.save(out)
    best = result.best_index
    ok = np.isfinite(result.nllh[best])
    if ok:
        # the parameter table with the best start's values as nominal values (linear)
        table = problem.tables.problem.parameter_df.copy()
        table.loc[list(result.x_ids), "nominalValue"] = result.x_linear[best]
        table.to_csv(out / "best_parameters.tsv", sep="\t")
        plot_fit(problem, result.x[best], out / "fit.png", backend=backend, solver=solver)
    with pd.option_context("display.width", 120, "display.max_columns", 10):
        print("\nbest starts:")
        print(result.table().head(5).iloc[:, :4].to_string())
    counts = pd.Series([s.split(":")[0] for s in result.status]).value_counts()
    print(f"\nbest nllh {result.best_nllh:.6g}; {result.n_within(0.1)} of {args.inits} starts "
          f"within 0.1 of it; " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    print(f"wrote {out}/: {', '.join(FIT_FILES if ok else FIT_FILES[:1] + FIT_FILES[2:3])} "
          f"({result.seconds:.1f} s, {result.compile_seconds:.1f} s of it the first "
          "evaluation with compilation)")
    return 0 if ok else 1
