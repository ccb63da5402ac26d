"""Cross-backend conformance: proof that JAX and torch give the same answers on a model.

:func:`check_conformance` runs one model (with its data, or synthetic data made from the
model's own parameters) through both backends and through an independent reference (the
same generated right-hand side on numpy, solved by scipy's LSODA at rtol 1e-12), at the
model's own parameters and at seeded Latin hypercube parameter sets, in log and linear
space, and compares:

=================  =======================================================================
check              agreement (``a`` one opinion, ``b`` the other)
=================  =======================================================================
trajectory         ``|a - b| <= trajectory_factor * (rtol * |b| + atol)`` at every data
                   point, with the backends' solver tolerances, rtol at least 1e-10
                   (float64 rounding adds up over a solve's steps); reported as the
                   relative difference ``|a - b| / (|b| + atol / rtol)``, allowed
                   ``trajectory_factor * rtol``. Beyond that, re-solved at rtol / 10:
                   pairs whose difference shrinks >= 3x (to <= 1e-6) converge to one
                   solution and agree (a model that amplifies errors), and the loss and
                   gradient floors then allow for the difference seen
loss               ``|a - b| <= loss_rtol * (|b| + floor)`` (1e-6) for every parameter
                   set, where ``floor * loss_rtol`` bounds the change of the loss that
                   trajectory differences within the trajectory tolerance can make
                   (``sum(2 |r| t + t**2) / n`` over the scaled residuals ``r`` and scaled
                   tolerances ``t``): a loss near zero is judged by what the solvers can
                   resolve. Reported: ``|a - b| / (|b| + floor)``
gradient           norm-wise ``max_i |a_i - b_i| <= gradient_rtol * (max_i |b_i| +
                   floor)`` (1e-4) for every parameter set; the reference gradient is a
                   central finite difference in log2 space, and at the sets it covers
                   ``floor * gradient_rtol`` bounds the gradient change trajectory
                   differences within the trajectory tolerance can make (see
                   :mod:`kinabs._conformance.reference`; at serine's true parameters the
                   gradient is 5e-9, mostly the data's rounding)
defaults           each backend at ``SolverOptions()`` against the reference: the largest
                   ``|a - ref| / max_t |ref|`` (per measured species) at most 1e-4, what
                   the default tolerances promise
training           Adam, same learning rate in optax and torch.optim, same starts:
                   ``|a - b| / |b| <= training_rtol`` (1e-4) at every iteration, and the
                   same starts fail (if any)
=================  =======================================================================

A model a backend cannot lower gives rows with verdict ``"unsupported"`` and the detail
``"unsupported on torch: <feature>"``, not a disagreement. Data that does not match the
model raises the Trainer's :class:`kinabs.DataError`.

Example:
    >>> import kinabs
    >>> report = kinabs.check_conformance(kinabs.example_model_path(),
    ...                                   kinabs.example_data_path(), parameter_sets=2,
    ...                                   train_iterations=3)  # doctest: +SKIP
    >>> report.ok  # doctest: +SKIP
    True
    >>> report.table()[["check", "largest_difference", "verdict"]]  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kinabs._backend import BACKENDS as REGISTERED_BACKENDS
from kinabs._conformance import backends as opinions
from kinabs._conformance.reference import ScipyReference
from kinabs._conformance.report import CheckRow, ConformanceReport
from kinabs._errors import DataError, UnsupportedFeatureError
from kinabs._fit.data import TrainingData
from kinabs._fit.sampling import latin_hypercube
from kinabs._fit.trainer import Trainer
from kinabs._losses import mean_centered_scale
from kinabs._lowering.events import refuse_events
from kinabs._lowering.system import as_system
from kinabs._model import Model
from kinabs._optim import LevenbergMarquardt
from kinabs._options import SolverOptions
from kinabs._problem import ExperimentArrays, FitProblem
from kinabs.sbml import load_sbml

__all__ = ["ConformanceTolerances", "check_conformance", "DEFAULT_CONFORMANCE_SOLVER",
           "DEFAULT_TRAINING_SOLVER"]

BACKENDS = tuple(REGISTERED_BACKENDS)
SPACES = ("log", "linear")

#: The backends' solver for the trajectory, loss and gradient checks: tight, because the
#: loss and gradient at a near-perfect fit are ill-conditioned (on serine the loss at the
#: true parameters is ~6e-15, the data's rounding: at rtol 1e-8 the backends differ by 7e-4
#: relative, at rtol 1e-10 the gradient there differs from the reference by 4e-3).
DEFAULT_CONFORMANCE_SOLVER = SolverOptions(rtol=1e-12, atol=1e-14, max_steps=100_000)

#: The smallest relative difference a trajectory check asks for, whatever the solver's
#: rtol: rounding errors of float64 add up over the steps of a solve.
TRAJECTORY_RESOLUTION = 1e-10

#: The solver of the training check: the Trainer's default tolerances, as a user trains.
DEFAULT_TRAINING_SOLVER = SolverOptions(max_steps=100_000)


@dataclass(frozen=True, kw_only=True)
class ConformanceTolerances:
    """What counts as agreement (see the module docstring for each definition).

    Example:
        >>> import kinabs
        >>> kinabs.ConformanceTolerances(loss_rtol=1e-8)
        ConformanceTolerances(loss_rtol=1e-08, gradient_rtol=0.0001, trajectory_factor=10.0, training_rtol=0.0001, iterates_atol=1e-06)
        >>> kinabs.ConformanceTolerances(gradient_rtol=0)
        Traceback (most recent call last):
            ...
        ValueError: ConformanceTolerances.gradient_rtol must be a positive number; got 0.
    """

    loss_rtol: float = 1e-6
    gradient_rtol: float = 1e-4
    trajectory_factor: float = 10.0
    training_rtol: float = 1e-4
    iterates_atol: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("loss_rtol", "gradient_rtol", "trajectory_factor", "training_rtol",
                     "iterates_atol"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"ConformanceTolerances.{name} must be a positive number; "
                                 f"got {v!r}.")


@dataclass
class _Setup:
    model: Any
    system: Any
    data: Any
    data_source: str
    parameters: list[str]
    excluded: list[str]
    rows: np.ndarray  # (B, R) linear trained values; row 0 = the model's own
    train_starts: np.ndarray
    solver: SolverOptions
    unsupported: dict[str, str] = field(default_factory=dict)


# -- set-up -----------------------------------------------------------------------------
def _load(model: Any):
    if isinstance(model, Model):
        return model, getattr(model, "id", "") or "model"
    path = Path(model)
    if not path.is_file():
        raise DataError(f"model file not found: {path}; give an SBML file or a kinabs.Model.")
    return load_sbml(path), path.name


def _synthetic_data(system, *, times: np.ndarray, seed: int, noise: float):
    """Data for a model without any: its state species simulated by the scipy reference at
    the model's own parameters, times a seeded ``1 + noise * N(0, 1)`` factor (so that the
    loss and gradient at the model's parameters are not zero)."""
    species = [s for s in system.states if s in system.model.species]
    if not species:
        raise DataError("the model has no species changed by reactions or rules, so there "
                        "is nothing to compare; give data with --data.")
    keys = [system.output_key(s, "concentration") for s in species]
    n_s = len(system.states)
    exp = ExperimentArrays(
        t0=float(times[0]), times=times, values=np.zeros((len(times), len(species))),
        mask=np.ones((len(times), len(species)), dtype=bool),
        output_index=np.asarray([system.output_index[k] for k in keys]),
        y0=np.zeros(n_s), y0_mask=np.zeros(n_s, dtype=bool),
        p_index=np.zeros(0, dtype=np.int64), p_values=np.zeros(0), species=tuple(species))
    pb = FitProblem(system=system, experiments=(exp,), base_parameters=system.parameter_vector(),
                    train_index=np.zeros(0, dtype=np.int64), train_names=(), space="linear",
                    solver=None, adjoint=None, loss=None, loss_threshold=None)
    values = ScipyReference(pb).trajectories(system.parameter_vector()[None, :])[0][0]
    if not np.all(np.isfinite(values)):
        raise DataError("the reference simulation of the model at its own parameters failed, "
                        "so no synthetic data could be made; give data with --data.")
    rng = np.random.default_rng(seed)
    values = values * (1.0 + noise * rng.standard_normal(values.shape))
    return TrainingData.from_arrays(times, values, species)


def _setup(model, data, *, parameter_sets, seed, lower_bound, upper_bound, solver,
           times, noise, training_starts) -> _Setup:
    system = as_system(model)
    if data is None:
        grid = np.linspace(0.0, 10.0, 50) if times is None else np.asarray(times, float)
        data_obj = _synthetic_data(system, times=grid, seed=seed, noise=noise)
        source = (f"synthetic: reference simulation at the model's parameters, "
                  f"{len(grid)} times {grid[0]:g}..{grid[-1]:g}, {noise:.0%} noise")
    else:
        data_obj = TrainingData.coerce(data)
        source = str(data) if isinstance(data, (str, Path)) else "given"
    data_obj.check_against(system)  # the Trainer's checks: a clear DataError
    defaults = system.parameter_vector()
    names, excluded = [], []
    for n in system.kinetic_parameters:
        v = defaults[system.parameter_index[n]]
        (names if np.isfinite(v) and v > 0 else excluded).append(n)
    if not names:
        raise DataError("the model has no kinetic parameter with a positive value to check "
                        "gradients for (log space needs positive values).")
    base = {n: float(defaults[system.parameter_index[n]]) for n in names}
    rows = [np.asarray([base[n] for n in names])]
    if parameter_sets:
        lhs = latin_hypercube(base, lower_bound=lower_bound, upper_bound=upper_bound,
                              n=parameter_sets, seed=seed, log=True)[names].to_numpy()
        rows += list(lhs)
    rows_arr = np.asarray(rows)
    starts = rows_arr[1:] if len(rows_arr) > 1 else rows_arr
    if training_starts is not None:
        starts = starts[:training_starts]
    return _Setup(model=model, system=system, data=data_obj, data_source=source,
                  parameters=names, excluded=excluded, rows=rows_arr, train_starts=starts,
                  solver=solver)


# -- comparisons -------------------------------------------------------------------------
def _rel(a: np.ndarray, b: np.ndarray, floor: float = 0.0) -> np.ndarray:
    with np.errstate(all="ignore"):
        d = np.abs(a - b) / np.maximum(np.abs(b), floor)
    return np.where((a == b) | (np.isnan(a) & np.isnan(b)), 0.0, np.where(np.isnan(d), np.inf, d))


def _loss_floor(preds: list[np.ndarray], data: Any, space: str, rtol: float, atol: float,
                factor: float, loss_rtol: float) -> np.ndarray:
    """Per parameter set, the loss floor of the module docstring, from predictions
    ``preds`` (per experiment, (B, T, M)) and the default loss of ``space``, for
    trajectories that agree to ``factor * (rtol |y| + atol)`` (the trajectory check's
    tolerance, so the two checks ask the same of the solvers)."""
    import array_api_compat.numpy as xp


    total = np.zeros(preds[0].shape[0])
    count = 0.0
    for pred, e in zip(preds, data.experiments):
        obs, mask = np.asarray(e.values, dtype=float), np.asarray(e.mask, dtype=bool)
        obs0 = np.where(mask, obs, 0.0)
        scale = (mean_centered_scale(obs, mask, xp) if space == "log"
                 else np.ones(obs.shape[1]))
        with np.errstate(all="ignore"):
            r = np.where(mask, (pred - obs0) / scale, 0.0)
            t = np.where(mask, factor * (rtol * np.abs(pred) + atol) / scale, 0.0)
            total += np.nansum(2 * np.abs(r) * t + t * t, axis=(1, 2))
        count += mask.sum()
    return total / max(count, 1.0) / loss_rtol


def _pairs(values: dict[str, Any]) -> list[tuple[str, str]]:
    have = [k for k in ("jax", "torch", "reference") if values.get(k) is not None]
    return [(a, b) for i, a in enumerate(have) for b in have[i + 1:]]


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return f"{float(x):.6g}"


def _row(check: str, values: dict[str, Any], shown: dict[str, Any], metric, tolerance: float,
         unsupported: dict[str, str], what: str) -> CheckRow:
    """Compare every pair of available opinions with ``metric(a, b) -> per-set array``."""
    cols = {}
    for k in ("jax", "torch", "reference"):
        if k in unsupported:
            cols[k] = "unsupported"
        else:
            cols[k] = _fmt(shown.get(k))
    pairs = _pairs(values)
    worst, worst_pair, worst_set = 0.0, "", -1
    per_pair = []
    for a, b in pairs:
        d = np.asarray(metric(values[a], values[b]), dtype=float)
        if d.size:
            per_pair.append(f"{a}-{b} {np.nanmax(d):.2g}")
        if d.size and np.nanmax(d) >= worst:
            worst, worst_pair, worst_set = float(np.nanmax(d)), f"{a}-{b}", int(np.argmax(d))
    if unsupported and worst <= tolerance:  # the opinions there are still compared
        verdict = "unsupported"
        detail = "; ".join(f"unsupported on {k}: {v}" for k, v in unsupported.items())
    elif len(pairs) == 0:
        verdict, detail = "skipped", "fewer than two opinions"
    else:
        verdict = "agree" if worst <= tolerance else "disagree"
        detail = (f"worst {worst_pair} at {what} {worst_set} ({', '.join(per_pair)})"
                  if worst_pair else "")
    return CheckRow(check=check, jax=cols["jax"], torch=cols["torch"],
                    reference=cols["reference"], largest_difference=worst,
                    tolerance=tolerance, verdict=verdict, detail=detail)


def _run_backend(name: str, unsupported: dict[str, str], fn, *args, **kwargs):
    """Run one backend's part; a feature it cannot lower is recorded, not raised."""
    if name in unsupported:
        return None
    try:
        return fn(name, *args, **kwargs)
    except UnsupportedFeatureError as exc:
        unsupported[name] = _feature(exc)
        return None


def _feature(exc: UnsupportedFeatureError) -> str:
    where = f" (element '{exc.element_id}')" if exc.element_id else ""
    return f"{exc.feature or exc}{where}"


def _trajectories(st, full, backends, unsupported, solver, ref):
    """Each opinion's trajectories at the data points, one row per parameter set; and
    the predictions (per experiment) the loss floor is computed from."""
    traj: dict[str, Any] = {}
    preds = None
    for b in backends:
        out = _run_backend(b, unsupported, opinions.trajectories, st.system, st.data, full,
                           solver=solver)
        if out is not None:
            preds = preds or out[0]
            traj[b] = np.concatenate([y.reshape(len(full), -1) for y in out[0]], axis=1)
    if ref is not None:
        preds = ref.trajectories(full)
        traj["reference"] = np.concatenate([y.reshape(len(full), -1) for y in preds], axis=1)
    return traj, preds


#: What ``SolverOptions()`` promises: every trajectory within this fraction of each
#: species' largest value of the converged (reference) solution.
DEFAULTS_ACCURACY = 1e-4


def _defaults_accuracy(st, full, backends, unsupported, ref_preds) -> CheckRow:
    """How far each backend's solves at the default tolerances (``SolverOptions()``) end
    from the reference, relative to each measured species' largest reference value."""
    defaults = SolverOptions()
    errors: dict[str, np.ndarray] = {}
    for b in backends:
        out = _run_backend(b, unsupported, opinions.trajectories, st.system, st.data, full,
                           solver=defaults)
        if out is None:
            continue
        per_set = np.zeros(len(full))
        for got, ref in zip(out[0], ref_preds):
            scale = np.max(np.abs(ref), axis=1, keepdims=True)
            with np.errstate(all="ignore"):
                d = np.abs(got - ref) / np.where(scale > 0, scale, 1.0)
            d = np.where(np.isnan(got) & np.isnan(ref), 0.0, np.where(np.isnan(d), np.inf, d))
            per_set = np.maximum(per_set, d.reshape(len(full), -1).max(axis=1, initial=0.0))
        errors[b] = per_set
    cols = {k: ("unsupported" if k in unsupported else
                _fmt(errors[k].max()) if k in errors else "-") for k in ("jax", "torch")}
    worst = max((float(v.max()) for v in errors.values()), default=0.0)
    detail = ", ".join(f"{k} {v.max():.2g} (set {int(v.argmax())})" for k, v in errors.items())
    verdict = ("skipped" if not errors else "agree" if worst <= DEFAULTS_ACCURACY
               else "disagree")
    if unsupported and verdict != "disagree":  # as _row: what ran is still judged
        verdict = "unsupported"
        detail = "; ".join(f"unsupported on {k}: {v}" for k, v in unsupported.items()) + (
            f"; {detail}" if detail else "")
    return CheckRow(
        check=f"defaults (rtol {defaults.rtol:g}, atol {defaults.atol:g}) vs reference",
        jax=cols["jax"], torch=cols["torch"], reference="converged",
        largest_difference=worst, tolerance=DEFAULTS_ACCURACY, verdict=verdict,
        detail=(f"largest error relative to each species' largest value: {detail}"
                if errors else "no backend solved"))


#: A trajectory difference beyond the tolerance is the solvers' global error, not a
#: lowering difference, when one decade tighter tolerances shrink it at least this much...
CONVERGENCE_FACTOR = 3.0
#: ...and to at most this (relative): different equations never get this close.
CONVERGED_LIMIT = 1e-6


def _converging(row: CheckRow, traj, metric, st, full, backends, unsupported, solver,
                ref) -> CheckRow:
    """Re-solve at rtol and atol / 10. The local error control does not bound the global
    error: a model that amplifies errors (an exploding and collapsing population) differs
    by more than ``factor * rtol`` between correct solvers. If every pair that disagreed
    now differs ``CONVERGENCE_FACTOR`` times less, and by at most ``CONVERGED_LIMIT``,
    the opinions converge to one solution: agreement, with both differences shown."""
    import dataclasses

    fine = dataclasses.replace(solver, rtol=solver.rtol / 10, atol=solver.atol / 10)
    fine_ref = None
    if ref is not None:
        fine_ref = ScipyReference(ref.problem, rtol=ref.rtol / 10, atol=ref.atol / 10)
    traj2, _ = _trajectories(st, full, backends, dict(unsupported), fine, fine_ref)
    steps, ok = [], True
    for a, b in _pairs(traj):
        before = float(np.nanmax(metric(traj[a], traj[b])))
        if before <= row.tolerance:
            continue
        after = (float(np.nanmax(metric(traj2[a], traj2[b]))) if a in traj2 and b in traj2
                 else math.inf)
        converges = after * CONVERGENCE_FACTOR <= before and after <= CONVERGED_LIMIT
        ok &= converges
        steps.append(f"{a}-{b} {before:.2g} -> {after:.2g} {'ok' if converges else 'no'}")
    text = (f"; at rtol {fine.rtol:g}: {', '.join(steps)} ("
            + ("converging: the solvers' global error, not the lowering)" if ok else
               f"not converging by {CONVERGENCE_FACTOR:g}x to {CONVERGED_LIMIT:g})"))
    return row.replace(verdict="agree" if ok else "disagree", detail=row.detail + text)


# -- the check ---------------------------------------------------------------------------
def check_conformance(
    model: Any,
    data: Any = None,
    *,
    parameter_sets: int = 20,
    seed: int = 0,
    spaces: tuple[str, ...] = SPACES,
    backends: tuple[str, ...] = BACKENDS,
    lower_bound: float = 0.5,
    upper_bound: float = 2.0,
    solver: SolverOptions | None = None,
    training_solver: SolverOptions | None = None,
    tolerances: ConformanceTolerances | None = None,
    reference: bool = True,
    reference_gradient_sets: int | None = 3,
    train_iterations: int = 50,
    method_iterations: int = 10,
    learning_rate: float = 1e-2,
    training_starts: int | None = None,
    times: Any = None,
    noise: float = 0.01,
) -> ConformanceReport:
    """Check that the backends (and a scipy reference) agree on ``model``.

    Args:
        model: an SBML file path or a :class:`kinabs.Model`.
        data: the Trainer's data (CSV path, DataFrame, TrainingData, or a list); ``None``
            makes synthetic data from the model's own parameters (``times``, default 50
            points on 0..10, with ``noise`` relative seeded noise).
        parameter_sets: Latin hypercube sets (log-uniform between ``lower_bound`` and
            ``upper_bound`` times the model's values, ``seed``) besides the model's own
            parameters. Kinetic parameters whose model value is not positive are not
            varied (log space needs positive values; the report lists them).
        spaces: optimisation spaces for the loss, gradient and training checks.
        solver: the backends' :class:`kinabs.SolverOptions` for the trajectory, loss and
            gradient checks (default rtol 1e-12, atol 1e-14).
        training_solver: the solver of the training check (default: the Trainer's
            tolerances, rtol 1e-8, atol 1e-12).
        tolerances: :class:`ConformanceTolerances`.
        reference: also compare with scipy (loss at every set; finite-difference gradient
            at the first ``reference_gradient_sets`` sets, ``None`` for all).
        train_iterations, learning_rate, training_starts: the Adam run (``0`` iterations
            skips it); starts are the first ``training_starts`` Latin hypercube sets
            (``None``: all). In linear space the learning rate is multiplied by the
            smallest start value (the same rate on both backends).
        method_iterations: evaluations of :class:`kinabs.LevenbergMarquardt` from the
            same starts in log space (``0`` skips it); the backends' iterates must agree
            within ``tolerances.iterates_atol`` (log2 units).

    Returns:
        a :class:`ConformanceReport` (``.ok``, ``.table()``, ``.to_json(path)``).

    Example:
        A quick check of one backend against the scipy reference, on synthetic data of a
        decay ``A ->`` (a full check compares both backends and trains, as in the module
        docstring; that takes minutes, not seconds):

        >>> import kinabs, numpy as np
        >>> b = kinabs.ModelBuilder("decay")
        >>> b.species("A", initial_concentration=1.0)
        A
        >>> b.parameter("k", 0.5)
        k
        >>> b.reaction("r", "A ->", rate="k*A")
        r
        >>> report = kinabs.check_conformance(
        ...     b.build(), backends=("torch",), parameter_sets=1, spaces=("log",),
        ...     train_iterations=0, times=np.linspace(0, 2, 5),
        ...     tolerances=kinabs.ConformanceTolerances(loss_rtol=1e-8))
        >>> report.ok
        True
        >>> report.table()[["check", "verdict"]]
                                              check verdict
        0                                trajectory   agree
        1  defaults (rtol 1e-08, atol 1e-12) vs reference   agree
        2                                loss (log)   agree
        3                            gradient (log)   agree
        >>> report.table()["tolerance"].tolist()
        [1e-09, 0.0001, 1e-08, 0.0001]
    """
    t_start = time.perf_counter()
    tol = tolerances or ConformanceTolerances()
    solver = solver or DEFAULT_CONFORMANCE_SOLVER
    training_solver = training_solver or DEFAULT_TRAINING_SOLVER
    bad = [s for s in spaces if s not in SPACES] + [b for b in backends if b not in BACKENDS]
    if bad or not spaces:
        raise DataError(f"spaces must be among {SPACES} and backends among {BACKENDS}; got "
                        f"spaces={spaces!r}, backends={backends!r}.")
    try:
        model_obj, name = _load(model)
        # events: kinabs.simulate applies them, this check's solves do not yet
        refuse_events(as_system(model_obj), "the cross-backend conformance check")
    except UnsupportedFeatureError as exc:
        feature = _feature(exc)
        return ConformanceReport(
            model=Path(str(model)).name, rows=[CheckRow(
                check="load", jax="unsupported", torch="unsupported", reference="unsupported",
                largest_difference=0.0, tolerance=0.0, verdict="unsupported",
                detail=f"unsupported on {' and '.join(backends)}: {feature}")],
            meta={"unsupported": {b: feature for b in backends}})
    st = _setup(model_obj, data, parameter_sets=parameter_sets, seed=seed,
                lower_bound=lower_bound, upper_bound=upper_bound, solver=solver, times=times,
                noise=noise, training_starts=training_starts)
    unsupported: dict[str, str] = {}
    rows: list[CheckRow] = []
    full = np.tile(st.system.parameter_vector(), (len(st.rows), 1))
    full[:, [st.system.parameter_index[n] for n in st.parameters]] = st.rows
    ref = None
    if reference:
        tr = Trainer(model=st.system, data=st.data, parameters=st.parameters, progress=False,
                     backend=backends[0], optim_space="linear")
        ref = ScipyReference(tr._problem())

    # trajectories at the data's time points

    traj, preds = _trajectories(st, full, backends, unsupported, solver, ref)
    # float64 solves do not resolve a trajectory below ~1e-10 relative (rounding adds up
    # over the steps: at rtol 1e-12 the three opinions on serine differ by up to 2.4e-10)
    traj_rtol = max(solver.rtol, TRAJECTORY_RESOLUTION)
    floor = solver.atol / traj_rtol

    def traj_metric(a, b):
        return np.max(_rel(a, b, floor), axis=-1) if a.size else np.zeros(len(a))

    shown = {k: f"{np.isfinite(v).all(axis=1).sum()}/{len(v)} solved" for k, v in traj.items()}
    row = _row("trajectory", traj, shown, traj_metric, tol.trajectory_factor * traj_rtol,
               dict(unsupported), "parameter set")
    # the trajectory differences the loss and gradient floors allow for, relative: the
    # tolerance, or what the solvers were shown to resolve when they converge beyond it
    resolution = tol.trajectory_factor * traj_rtol
    if row.verdict == "disagree":
        row = _converging(row, traj, traj_metric, st, full, backends, unsupported, solver,
                          ref)
        if row.verdict == "agree":
            resolution = max(resolution, row.largest_difference)
    rows.append(row)
    if ref is not None and preds is not None:
        rows.append(_defaults_accuracy(st, full, backends, unsupported, preds))

    # loss and gradient in each space
    ref_lg = None
    if ref is not None:
        n_fd = len(st.rows) if reference_gradient_sets is None else min(
            reference_gradient_sets, len(st.rows))
        ref_lg = ref.loss_and_gradient(st.rows[:n_fd], rel_tol=resolution,
                                       abs_tol=solver.atol * tol.trajectory_factor
                                       ) if n_fd else None
        ref_loss = {s: ref.loss(st.rows, s) for s in spaces}
    for space in spaces:
        theta = np.log2(st.rows) if space == "log" else st.rows
        loss, grad = {}, {}
        for b in backends:
            out = _run_backend(b, unsupported, opinions.loss_and_gradient, st.system, st.data, theta,
                               space=space, parameters=st.parameters, solver=solver)
            if out is not None:
                lv, status, g = out
                lv = np.where(status == 0, lv, np.nan)
                loss[b], grad[b] = lv, np.where((status == 0)[:, None], g, np.nan)
        gref: dict[str, Any] = dict(grad)
        if ref is not None:
            loss["reference"] = ref_loss[space]
        gfloor = np.zeros(len(st.rows))
        if ref_lg is not None:
            n_fd = ref_lg[space][1].shape[0]
            gref = {k: v[:n_fd] for k, v in grad.items()}
            gref["reference"] = ref_lg[space][1]
            gfloor = ref_lg[space][2]
        shown = {k: v[0] for k, v in loss.items()}
        floor = (np.zeros(len(st.rows)) if preds is None else
                 _loss_floor(preds, st.data, space, resolution / tol.trajectory_factor,
                             solver.atol, tol.trajectory_factor, tol.loss_rtol))

        def loss_metric(a, b, _floor=floor):
            with np.errstate(all="ignore"):
                d = np.abs(a - b) / (np.abs(b) + _floor)
            return np.where(a == b, 0.0, np.where(np.isnan(d), np.inf, d))

        rows.append(_row(f"loss ({space})", loss, shown, loss_metric, tol.loss_rtol,
                         dict(unsupported), "parameter set"))
        gshown = {k: float(np.max(np.abs(v[0]))) for k, v in gref.items()}

        def grad_metric(a, b, _floor=gfloor):
            with np.errstate(all="ignore"):
                num = np.max(np.abs(a - b), axis=-1)
                d = num / (np.max(np.abs(b), axis=-1) + _floor[: len(a)] / tol.gradient_rtol)
            both_nan = np.all(np.isnan(a) & np.isnan(b), axis=-1)
            return np.where(both_nan | (num == 0), 0.0, np.where(np.isnan(d), np.inf, d))

        rows.append(_row(f"gradient ({space})", gref, gshown, grad_metric, tol.gradient_rtol,
                         dict(unsupported), "parameter set"))
    # training
    # In linear space Adam moves every parameter by about the learning rate per step: the
    # rate is scaled by the smallest start value so that no parameter is pushed through 0
    # (serine's Michaelis constants are ~1e-3; a step of 1e-2 fails every start).
    lr = {"log": learning_rate,
          "linear": learning_rate * float(np.min(np.abs(st.train_starts)))}
    if train_iterations > 0:
        for space in spaces:
            curves: dict[str, Any] = {}
            statuses: dict[str, list[str]] = {}
            for b in backends:
                out = _run_backend(b, unsupported, opinions.adam_training, st.system, st.data,
                                   st.train_starts, space=space, parameters=st.parameters,
                                   solver=training_solver, learning_rate=lr[space],
                                   n_iter=train_iterations)
                if out is not None:
                    curves[b], statuses[b] = out
            shown = {k: v[0, -1] for k, v in curves.items()}
            row = _row(f"training ({space}, Adam lr {lr[space]:.2g}, {train_iterations} it)",
                       curves, shown, lambda a, b: np.max(_rel(a, b), axis=-1),
                       tol.training_rtol, dict(unsupported), "start")
            failed = {tuple(x != "ok" for x in v) for v in statuses.values()}
            if len(failed) > 1 and row.verdict == "agree":
                row = row.replace(verdict="disagree", detail="the starts' statuses differ: "
                                  + "; ".join(f"{k} {v}" for k, v in statuses.items()))
            rows.append(row)
    if method_iterations > 0 and len(backends) > 1:
        method = LevenbergMarquardt()
        # Log space only: in linear space the undamped directions of J'J + lambda I span
        # the parameters' five decades (serine), and the backends' last solver digits
        # move the iterates by 3e-4 relative within 10 steps (measured), though both fit.
        for space in [s for s in spaces if s == "log"]:
            iterates: dict[str, Any] = {}
            statuses = {}
            for b in backends:
                out = _run_backend(b, unsupported, opinions.method_training, st.system,
                                   st.data, st.train_starts, space=space,
                                   parameters=st.parameters, solver=training_solver,
                                   method=method, n_iter=method_iterations)
                if out is not None:
                    iterates[b], statuses[b] = out
            shown = {k: float(np.max(np.abs(v))) for k, v in iterates.items()}
            row = _row(f"iterates ({space}, Levenberg-Marquardt, {method_iterations} it)",
                       iterates, shown,
                       lambda a, b: np.max(np.where(np.isnan(a) & np.isnan(b), 0.0,
                                                    np.abs(a - b)), axis=-1),
                       tol.iterates_atol, dict(unsupported), "start")
            if len({tuple(v) for v in statuses.values()}) > 1 and row.verdict == "agree":
                row = row.replace(verdict="disagree", detail="the starts' statuses differ: "
                                  + "; ".join(f"{k} {v}" for k, v in statuses.items()))
            rows.append(row)
    meta = {
        "model": name, "data": st.data_source, "states": len(st.system.states),
        "parameters": st.parameters,
        "not_varied": st.excluded, "parameter_sets": int(len(st.rows) - 1), "seed": seed,
        "bounds": [lower_bound, upper_bound], "spaces": list(spaces),
        "backends": list(backends), "solver": repr(solver),
        "training_solver": repr(training_solver), "tolerances": repr(tol),
        "reference": ("scipy LSODA on the numpy-generated right-hand side, rtol 1e-12; "
                      f"finite-difference gradients at {0 if ref_lg is None else n_fd} sets")
        if reference else None,
        "training_starts": int(len(st.train_starts)), "learning_rates": lr,
        "unsupported": unsupported,
        "seconds": round(time.perf_counter() - t_start, 2),
    }
    return ConformanceReport(model=name, rows=rows, meta=meta)
