"""The PEtab objective: simulate every condition, evaluate observables and noise, and sum
the log-likelihood exactly as PEtab v1 defines it (every constant, the Jacobian of the
observable transformation included; the formulas of ``petab.v1.calculate_single_llh``).

Per measurement ``m`` with simulation ``s`` and noise parameter ``sigma``, on the
observable's transformation ``t`` (lin, log, log10):

* normal: ``-1/2 log(2 pi sigma^2) - 1/2 ((t(m) - t(s)) / sigma)^2``;
* laplace: ``-log(2 sigma) - |t(m) - t(s)| / sigma``;

minus ``log(m)`` for log and ``log(m ln 10)`` for log10 (the density of the untransformed
measurement). ``chi2`` is the sum of ``((t(m) - t(s)) / sigma)^2`` over all measurements,
whatever the distribution (as petab computes it). ``llh`` is the log-likelihood (larger is
better; PEtab's negative log-likelihood is ``-llh``); priors are left out unless asked for.

A simulation that fails (solver failure, steady state not reached) gives NaN simulations
for its measurements, NaN llh and chi2, and its status in ``status``: never a silent
number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kinabs._backend import STATUS, get_backend
from kinabs._errors import DataError
from kinabs._options import SolverOptions, solver_options
from kinabs.petab._formulas import evaluate as eval_formula
from kinabs.petab._steady_state import (
    SteadyStateOptions,
    numpy_functions,
    state_output_keys,
    steady_state,
)

__all__ = ["EvaluationResult", "BatchResult", "evaluate", "evaluate_batch", "likelihood"]

# ``problem`` arguments are kinabs.petab._problem.PetabProblem objects; that module is not
# imported here because the problem's own evaluate methods use this one.

_LN10 = np.log(10.0)


@dataclass(frozen=True)
class BatchResult:
    """llh, chi2 and simulations for B parameter sets.

    Attributes:
        llh, chi2: (B,) sums over all measurements (NaN where a simulation failed).
        simulations, sigmas: (B, M) per measurement-table row.
        status: (B, C) status per parameter set and simulation condition (``conditions``:
            (pre-equilibration id or "", simulation id)).
        log_prior: (B,) sum of the objective priors' log densities, when asked for.
    """

    llh: np.ndarray
    chi2: np.ndarray
    simulations: np.ndarray
    sigmas: np.ndarray
    status: np.ndarray
    conditions: tuple[tuple[str, str], ...]
    log_prior: np.ndarray | None = None


@dataclass(frozen=True)
class EvaluationResult:
    """The objective at one parameter set.

    Attributes:
        llh: the log-likelihood (PEtab's nllh is ``-llh``), priors left out.
        chi2: the sum of squared normalised residuals.
        simulation_df: PEtab's simulation table (the measurement table with a
            ``simulation`` column in place of ``measurement``).
        status: ``"preeq>sim"`` (or ``"sim"``) -> status (``"success"`` or the reason).
        log_prior: the priors' log density (``None`` unless asked for).
    """

    llh: float
    chi2: float
    simulation_df: pd.DataFrame
    status: dict[str, str]
    log_prior: float | None = None

    @property
    def ok(self) -> bool:
        return all(s == "success" for s in self.status.values())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"llh": self.llh, "chi2": self.chi2, "ok": self.ok,
                               "status": self.status,
                               "n_measurements": int(len(self.simulation_df))}
        if self.log_prior is not None:
            out["log_prior"] = self.log_prior
            out["log_posterior"] = self.llh + self.log_prior
        return out


def evaluate(problem: Any, parameters: Any = None, *,
             parameter_scale: str = "scaled", backend: str | None = None,
             solver: SolverOptions | None = None,
             steady_state: SteadyStateOptions | None = None,
             priors: bool = False) -> EvaluationResult:
    """The objective of ``problem`` at one parameter set (default: nominal values).

    ``parameters``: a mapping id -> value or an array in ``problem.x_free_ids`` order, on
    the parameter table's scale unless ``parameter_scale="linear"``.
    """
    batch = evaluate_batch(problem, parameters, parameter_scale=parameter_scale,
                           backend=backend, solver=solver, steady_state=steady_state,
                           priors=priors)
    if batch.llh.shape[0] != 1:
        raise DataError("evaluate takes one parameter set; use evaluate_batch for several.")
    sim = problem.measurements.copy()
    sim = sim.rename(columns={"measurement": "simulation"})
    sim["simulation"] = batch.simulations[0]
    status = {(f"{p}>{s}" if p else s): str(batch.status[0, i])
              for i, (p, s) in enumerate(batch.conditions)}
    return EvaluationResult(
        llh=float(batch.llh[0]), chi2=float(batch.chi2[0]), simulation_df=sim,
        status=status,
        log_prior=None if batch.log_prior is None else float(batch.log_prior[0]))


def evaluate_batch(problem: Any, parameters: Any, *, parameter_scale: str = "scaled",
                   backend: str | None = None, solver: SolverOptions | None = None,
                   steady_state: SteadyStateOptions | None = None,
                   priors: bool = False) -> BatchResult:
    """The objective for a batch of parameter sets (B, F) (or one, or a mapping); every
    condition of every set is one member of one batched solve."""
    solver = solver_options(solver, SolverOptions())
    ss = steady_state or SteadyStateOptions()
    theta = problem.theta(parameters, parameter_scale=parameter_scale)
    sims = _simulate(problem, theta, backend=backend, solver=solver, ss=ss)
    b, m = theta.shape[0], len(problem.measurements)
    simulations = np.full((b, m), np.nan)
    sigmas = np.full((b, m), np.nan)
    llh_rows = np.full((b, m), np.nan)
    chi2_rows = np.full((b, m), np.nan)
    plan = problem.plan
    for oid, rows in plan.rows_of.items():
        obs = problem.observables[oid]
        env = _environment(problem, oid, rows, theta, sims)
        shape = (b, rows.size)
        y = np.broadcast_to(np.asarray(eval_formula(obs.formula, env), float), shape)
        env[oid] = y
        sigma = np.broadcast_to(np.asarray(eval_formula(obs.noise, env), float), shape)
        meas = plan.measurement[rows][None, :]
        simulations[:, rows], sigmas[:, rows] = y, sigma
        llh_rows[:, rows], chi2_rows[:, rows] = likelihood(
            meas, y, sigma, obs.transformation, obs.distribution)
    log_prior = None
    if priors:
        log_prior = np.zeros(b)
        for k, prior in enumerate(problem.parameters.priors):
            if prior is not None and problem.parameters.estimate[k]:
                log_prior = log_prior + prior.log_density(theta[:, k])
    return BatchResult(llh=llh_rows.sum(axis=1), chi2=chi2_rows.sum(axis=1),
                       simulations=simulations, sigmas=sigmas, status=sims["status"],
                       conditions=plan.conditions, log_prior=log_prior)


def likelihood(m, s, sigma, trafo: str, dist: str, xp: Any = np):
    """Per measurement the log-likelihood and the squared normalised residual (chi2 term)
    of measurements ``m`` (numpy) given simulations ``s`` and noise ``sigma`` on the array
    namespace ``xp`` (numpy here; jax.numpy in the compiled objective)."""
    with np.errstate(all="ignore"):
        if trafo == "lin":
            tm, ts, jac = m, s, 0.0
        elif trafo == "log":
            tm, ts, jac = np.log(m), xp.log(s), np.log(m)
        else:
            tm, ts, jac = np.log10(m), xp.log10(s), np.log(m * _LN10)
        r = (tm - ts) / sigma
        if dist == "normal":
            llh = -0.5 * xp.log(2 * np.pi * sigma ** 2) - 0.5 * r ** 2 - jac
        else:
            llh = -xp.log(2 * sigma) - xp.abs(r) - jac
    return llh, r ** 2


def _environment(problem: Any, oid: str, rows: np.ndarray, theta: np.ndarray,
                 sims: dict) -> dict[str, Any]:
    plan = problem.plan
    cond = plan.row_condition[rows]
    t = plan.row_time[rows]
    finite = np.isfinite(t)
    tpos = np.searchsorted(sims["times"], np.where(finite, t, 0.0))
    tpos = np.clip(tpos, 0, max(len(sims["times"]) - 1, 0))
    env: dict[str, Any] = {}
    for name, (kind, info) in problem.symbol_sources[oid].items():
        if kind == "output":
            col = sims["columns"][info]
            at_t = sims["values"][:, cond, tpos, col] if sims["values"].size else np.nan
            at_inf = sims["steady"][:, cond, col]
            env[name] = np.where(finite[None, :], at_t, at_inf)
        elif kind == "theta":
            env[name] = theta[:, [info]]
        elif kind == "time":
            env[name] = t[None, :]
    env.update({n: r.values(theta) for n, r in plan.observable_parameters[oid].items()})
    env.update({n: r.values(theta) for n, r in plan.noise_parameters[oid].items()})
    return env


# -- simulation of every condition --------------------------------------------------------
def _p_matrix(problem: Any, theta: np.ndarray, condition: str) -> np.ndarray:
    system = problem.system
    b = theta.shape[0]
    p = np.repeat(system.parameter_defaults[None, :], b, axis=0)
    p[:, problem.table_p_index] = theta[:, problem.table_theta_index]
    plan = problem.condition_plans[condition]
    if plan.p_index.size:
        p[:, plan.p_index] = plan.p_refs.values(theta)
    if plan.conc_species:
        fns = numpy_functions(system)
        t0 = np.float64(0.0)
        for i in range(b):
            y, k = fns.init(t0, p[i])
            out = np.asarray(fns.outputs(t0, y, k), float)
            for j, col, sign in plan.conc_species:
                p[i, j] = p[i, j] * out[col] ** sign
    return p


def _natural(system, p: np.ndarray, y_state: np.ndarray | None) -> np.ndarray:
    """Initial values in the species' natural units: from the model's own initial values
    (``y_state`` None) or from states ``y_state`` (a steady state), for parameters ``p``."""
    fns = numpy_functions(system)
    t0 = np.float64(0.0)
    out = np.empty((p.shape[0], len(system.states)))
    with np.errstate(all="ignore"):
        for i in range(p.shape[0]):
            y, k = fns.init(t0, p[i])
            # the backend multiplies by the factors at the model's own initial state
            factors = np.asarray(fns.to_state(t0, y, k), float)
            out[i] = (np.asarray(y, float) if y_state is None else y_state[i]) / factors
    return out


def _apply_states(problem: Any, theta: np.ndarray, condition: str,
                  natural: np.ndarray) -> np.ndarray:
    plan = problem.condition_plans[condition]
    if plan.state_index.size:
        natural = natural.copy()
        natural[:, plan.state_index] = plan.state_refs.values(theta)
    return natural


def _simulate(problem: Any, theta: np.ndarray, *, backend, solver, ss) -> dict:
    system = problem.system
    conditions = problem.plan.conditions
    b, c, s = theta.shape[0], len(conditions), len(system.states)
    keys = list(dict.fromkeys(
        info for src in problem.symbol_sources.values()
        for kind, info in src.values() if kind == "output"))
    columns = {k: i for i, k in enumerate(keys)}
    output_index = np.asarray([system.output_index[k] for k in keys], dtype=np.int64)
    status = np.full((b, c), "success", dtype=object)

    # parameters and initial states of every (set, condition); conditions major
    p_sim = np.stack([_p_matrix(problem, theta, sim) for _, sim in conditions])  # (C, B, P)
    y0 = np.empty((c, b, s))
    preeqs = list(dict.fromkeys(pre for pre, _ in conditions if pre))
    steady_pre: dict[str, tuple[np.ndarray, list[str]]] = {}
    for pre in preeqs:
        p_pre = _p_matrix(problem, theta, pre)
        start = _apply_states(problem, theta, pre, _natural(system, p_pre, None))
        steady_pre[pre] = steady_state(system, p_pre, start, backend=backend, solver=solver,
                                       options=ss)[:2]
    for ci, (pre, sim) in enumerate(conditions):
        if pre:
            y_ss, st = steady_pre[pre]
            for i in range(b):
                if st[i] != "success":
                    status[i, ci] = f"preequilibration {pre}: {st[i]}"
            nat = _natural(system, p_sim[ci], y_ss)
        else:
            nat = _natural(system, p_sim[ci], None)
        y0[ci] = _apply_states(problem, theta, sim, nat)

    times = problem.plan.row_time
    finite_times = np.unique(times[np.isfinite(times)])
    n_out = len(keys)
    values = np.full((b, c, max(finite_times.size, 1), n_out), np.nan)
    p_flat = p_sim.transpose(1, 0, 2).reshape(b * c, -1)  # set major
    y_flat = y0.transpose(1, 0, 2).reshape(b * c, s)
    if finite_times.size and n_out:
        raw = get_backend(backend).simulate(
            system, finite_times, p_flat, t0=0.0, y0=y_flat if s else None,
            y0_mask=np.ones(s, dtype=bool) if s else None, output_index=output_index,
            solver=solver)
        ys = np.array(raw.ys, dtype=np.float64).reshape(b, c, finite_times.size, n_out)
        codes = np.asarray(raw.status).reshape(b, c)
        for i in range(b):
            for ci in range(c):
                code = STATUS.get(int(codes[i, ci]), "solver_failed")
                if code != "success":
                    ys[i, ci] = np.nan
                    if status[i, ci] == "success":
                        status[i, ci] = code
        values = ys
    # preequilibration that failed: NaN everywhere in that condition
    values = np.where((status == "success")[:, :, None, None], values, np.nan)

    steady = np.full((b, c, n_out), np.nan)
    inf_conditions = sorted({int(ci) for ci, t in zip(problem.plan.row_condition, times)
                             if not np.isfinite(t)})
    if inf_conditions and n_out:
        sel = np.asarray(inf_conditions)
        p_inf = p_sim[sel].transpose(1, 0, 2).reshape(b * sel.size, -1)
        y_inf = y0[sel].transpose(1, 0, 2).reshape(b * sel.size, s)
        y_ss, st, t_ss = steady_state(system, p_inf, y_inf, backend=backend, solver=solver,
                                      options=ss)
        fns = numpy_functions(system)
        for n in range(b * sel.size):
            i, ci = divmod(n, sel.size)
            ci = int(sel[ci])
            if st[n] != "success":
                if status[i, ci] == "success":
                    status[i, ci] = f"steady state: {st[n]}"
                continue
            if status[i, ci] != "success":
                continue
            with np.errstate(all="ignore"):
                _, k = fns.init(np.float64(0.0), p_inf[n])
                out = np.asarray(fns.outputs(np.float64(t_ss[n]), y_ss[n], k), float)
            steady[i, ci] = out[output_index]
    return {"times": finite_times, "values": values, "steady": steady, "columns": columns,
            "status": status, "state_keys": state_output_keys(system)}
