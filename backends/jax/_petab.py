"""A PEtab v1 objective as one compiled, differentiable JAX program.

:func:`make_objective` turns a loaded :class:`kinabs.petab.PetabProblem` into a function
``theta (F,) -> (llh, status (C,))`` of the estimated parameters on the parameter
table's scale (``problem.x_free_ids``): everything that :mod:`kinabs.petab._objective`
does with numpy around the backend's solves happens inside the program, so that
``jax.grad``, ``jax.value_and_grad`` and ``jax.vmap`` (over starts) apply:

* theta on lin/log/log10 scale -> linear values of every parameter-table entry;
* per condition, the system's free parameters (table entries, condition overrides, the
  concentration/amount conversion of constant species) and initial states (condition
  overrides in the species' natural units, or the pre-equilibrated steady state);
* pre-equilibration and ``time = inf`` measurements: a solve to the last horizon of
  :class:`~kinabs.petab.SteadyStateOptions` that stops (a ``diffrax.Event``) at the
  first step where ``|dx_i/dt| <= atol + rtol |x_i|`` for every state, and then goes on
  to the next horizon of the options (1, 10, 100, ...), where the numpy reference checks
  the criterion; a steady state not reached is status :data:`STEADY_STATE_NOT_REACHED`;
* every simulation condition is one diffrax solve (one after another, ``lax.map``; or
  members of one vmapped solve with ``SolverOptions(batching="vmap")``) over the union
  of the measured times; observable and noise formulas are walked (petab's sympy trees,
  :func:`kinabs.petab._formulas.evaluate` with ``xp=jax.numpy``) at trace time;
* the log-likelihood as PEtab defines it (normal/laplace, lin/log/log10 with the
  Jacobian term), NaN where any condition failed (``status != 0``).

The solver is one program: ``method="auto"`` means the implicit solver (Rodas5) here,
since there is no second stage to fall back on inside a compiled, differentiated program.

Example:
    >>> from kinabs.backends.jax._petab import PETAB_STATUS
    >>> PETAB_STATUS[4]
    'steady_state_not_reached'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from kinabs._backend import STATUS
from kinabs._errors import DataError
from kinabs._options import AdjointOptions, SolverOptions
from kinabs.backends.jax._simulate import (
    gated_term,
    lowered,
    make_adjoint,
    make_solver,
    over_members,
    solve_one,
    step_controller,
)
from kinabs.petab._conditions import Refs
from kinabs.petab._formulas import evaluate as eval_formula
from kinabs.petab._objective import likelihood
from kinabs.petab._steady_state import SteadyStateOptions

__all__ = ["make_objective", "petab_objective", "CompiledObjective", "NumpyObjective",
           "PETAB_STATUS", "STEADY_STATE_NOT_REACHED"]

#: Status code of a condition whose steady state (pre-equilibration or ``time = inf``)
#: was not reached by the last horizon.
STEADY_STATE_NOT_REACHED = 4
#: codes of the per-condition status the objective returns
PETAB_STATUS = {**STATUS, STEADY_STATE_NOT_REACHED: "steady_state_not_reached"}

_LN10 = math.log(10.0)
#: Up to this many estimated parameters the gradient is by forward sensitivities (when no
#: adjoint is given), above it by checkpointed reverse mode.
FORWARD_MAX_PARAMETERS = 40


def _refs(r: Refs, x):
    """``Refs.values`` for one linear parameter vector ``x`` (X,): (n,)."""
    out = jnp.asarray(r.const, dtype=jnp.float64)
    mask = r.theta_index >= 0
    if mask.any():
        out = out.at[np.flatnonzero(mask)].set(x[r.theta_index[mask]])
    return out


def _concat_refs(refs: list[Refs]) -> Refs:
    if not refs:
        return Refs(np.zeros(0, np.int64), np.zeros(0))
    return Refs(np.concatenate([r.theta_index for r in refs]),
                np.concatenate([r.const for r in refs]))


@dataclass(frozen=True)
class _Overrides:
    """Condition-table overrides of a list of conditions, flattened for scatters."""

    p_rows: np.ndarray
    p_cols: np.ndarray
    p_refs: Refs
    conc: tuple[tuple[int, int, int, int], ...]  # (row, p index, output index, sign)
    s_rows: np.ndarray
    s_cols: np.ndarray
    s_refs: Refs
    s_mask: np.ndarray  # (n, S) bool

    @staticmethod
    def of(problem, ids: list[str]) -> _Overrides:
        s = len(problem.system.states)
        p_rows, p_cols, p_refs, conc = [], [], [], []
        s_rows, s_cols, s_refs = [], [], []
        mask = np.zeros((len(ids), s), dtype=bool)
        for i, cid in enumerate(ids):
            plan = problem.condition_plans[cid]
            p_rows.append(np.full(plan.p_index.size, i, np.int64))
            p_cols.append(plan.p_index)
            p_refs.append(plan.p_refs)
            conc += [(i, j, col, sign) for j, col, sign in plan.conc_species]
            s_rows.append(np.full(plan.state_index.size, i, np.int64))
            s_cols.append(plan.state_index)
            s_refs.append(plan.state_refs)
            mask[i, plan.state_index] = True

        def cat(a):
            return np.concatenate(a).astype(np.int64) if a else np.zeros(0, np.int64)

        return _Overrides(cat(p_rows), cat(p_cols), _concat_refs(p_refs), tuple(conc),
                          cat(s_rows), cat(s_cols), _concat_refs(s_refs), mask)


class CompiledObjective:
    """The JAX functions of one problem's objective (see the module docstring).

    Attributes:
        llh_and_status: ``theta (F,) -> (llh, status (C,))``, traceable (jit, grad,
            vmap); ``status`` per ``problem.plan.conditions``, codes of
            :data:`PETAB_STATUS`.
        value: jitted, vmapped ``theta (B, F) -> (llh (B,), status (B, C))``.
        value_and_grad: jitted, vmapped ``theta (B, F) -> (llh, grad (B, F), status)``.
        value_grad_fim: jitted, vmapped ``theta (B, F) -> (llh, grad, fim (B, F, F),
            status)``: ``fim`` the Fisher information matrix of the parameters, the
            expected Hessian of the nllh (Gauss-Newton's, with the noise parameters' own
            terms: ``sum_i (dh_i' dh_i) / sigma_i^2 + w_i (d log sigma_i)' (d log
            sigma_i)``, w = 2 for normal and 1 for Laplace noise), as Fides uses it.
    Call them inside ``jax.enable_x64(True)`` (the front end does).
    """

    def __init__(self, problem: Any, *, solver: SolverOptions | None = None,
                 steady_state: SteadyStateOptions | None = None,
                 adjoint: AdjointOptions | None = None):
        self.problem = problem
        self.solver = solver or SolverOptions(method="stiff")
        self.ss = steady_state or SteadyStateOptions()
        n_free = int(np.sum(problem.parameters.estimate))
        if adjoint is None:
            # Forward sensitivities for few parameters: no checkpoints of the solve, and
            # one pass carries every direction (Boehm, 9 parameters: measured faster than
            # checkpointed reverse mode, whose cost grows with max_steps).
            adjoint = AdjointOptions("forward" if n_free <= FORWARD_MAX_PARAMETERS
                                     else "checkpoint")
        self.adjoint = adjoint
        self.conditions = problem.plan.conditions
        with jax.enable_x64(True):
            self._build()
            f = self.llh_and_status

            if adjoint.method == "forward":
                def with_value(theta):
                    llh, status = f(theta)
                    return llh, (llh, status)

                def vg(theta):
                    grad, (llh, status) = jax.jacfwd(with_value, has_aux=True)(theta)
                    return llh, grad, status
            else:
                def vg(theta):
                    (llh, status), grad = jax.value_and_grad(f, has_aux=True)(theta)
                    return llh, grad, status

            def vgf(theta):
                def parts(th):
                    llh, status, (h, log_sigma, sigma, weight) = self._terms(th)
                    vec = jnp.concatenate([llh[None], h, log_sigma])
                    return vec, (vec, status, sigma, weight)

                # forward mode whatever the adjoint: one pass carries every parameter's
                # direction, and the outputs (1 + 2M) outnumber them
                jac, (vec, status, sigma, weight) = jax.jacfwd(parts, has_aux=True)(theta)
                m = sigma.size
                jy = jac[1:1 + m] / sigma[:, None]
                js = jac[1 + m:] * jnp.sqrt(weight)[:, None]
                return vec[0], jac[0], jy.T @ jy + js.T @ js, status

            self.value = jax.jit(jax.vmap(f))
            self.value_and_grad = jax.jit(jax.vmap(vg))
            self.value_grad_fim = jax.jit(jax.vmap(vgf))
            #: one start, unbatched: ``theta (F,)``; NumpyObjective calls it per start
            self.value_grad_fim_one = jax.jit(vgf)

    # -- set-up: everything static --------------------------------------------------
    def _build(self) -> None:
        pb = self.problem
        system = pb.system
        fns = lowered(system)
        self._fns = fns
        method = self.solver.method
        self._solver = make_solver("stiff" if method == "auto" else method)
        ss_method = (self.ss.solver.method if self.ss.solver is not None else "stiff")
        self._ss_solver = make_solver("stiff" if ss_method == "auto" else ss_method)
        self._ss_opts = self.ss.solver or self.solver
        self._adjoint = make_adjoint(self.adjoint)
        # conditions one after another unless vmap is asked for: on Bruno (6 conditions)
        # the one-start program with Fisher information compiled in 44 s against 68 s
        # vmapped and took 0.86 s against 1.28 s over 11 points (each condition's solve
        # takes its own steps, not the slowest condition's)
        self._batching = "vmap" if self.solver.batching == "vmap" else "sequential"
        par = pb.parameters
        free = np.flatnonzero(par.estimate)
        self._nominal = np.where(np.isnan(par.nominal), 0.0, par.nominal)
        self._scale_groups = []
        for scale in ("lin", "log", "log10"):
            pos = np.asarray([i for i, k in enumerate(free) if par.scales[k] == scale],
                             dtype=np.int64)
            if pos.size:
                self._scale_groups.append((scale, pos, free[pos]))
        self.n_free = free.size

        conds = self.conditions
        self._sim = _Overrides.of(pb, [sim for _, sim in conds])
        self._pre_ids = list(dict.fromkeys(pre for pre, _ in conds if pre))
        self._pre = _Overrides.of(pb, self._pre_ids) if self._pre_ids else None
        self._has_pre = np.asarray([bool(pre) for pre, _ in conds])
        self._pre_index = np.asarray(
            [self._pre_ids.index(pre) if pre else 0 for pre, _ in conds], dtype=np.int64)

        plan = pb.plan
        times = plan.row_time
        finite = np.isfinite(times)
        self._ts = np.unique(times[finite])
        self._has_finite = np.zeros(len(conds), dtype=bool)
        self._has_finite[np.unique(plan.row_condition[finite])] = True
        self._inf_conditions = np.unique(plan.row_condition[~finite]).astype(np.int64)
        keys = list(dict.fromkeys(
            info for src in pb.symbol_sources.values()
            for kind, info in src.values() if kind == "output"))
        self._columns = {k: i for i, k in enumerate(keys)}
        self._output_index = tuple(int(system.output_index[k]) for k in keys)
        self._outputs = fns.outputs_at(self._output_index) if keys else None
        conc_cols = sorted({col for ov in (self._sim, self._pre) if ov is not None
                            for _, _, col, _ in ov.conc})
        self._conc_cols = {c: i for i, c in enumerate(conc_cols)}
        self._conc_outputs = fns.outputs_at(conc_cols) if conc_cols else None

        # per observable: static gathers of its rows
        self._obs = []
        inf_pos = {int(c): i for i, c in enumerate(self._inf_conditions)}
        for oid, rows in plan.rows_of.items():
            cond = plan.row_condition[rows]
            t = times[rows]
            fin = np.isfinite(t)
            order = np.concatenate([np.flatnonzero(fin), np.flatnonzero(~fin)])
            inverse = np.argsort(order)
            self._obs.append(dict(
                oid=oid, obs=pb.observables[oid], rows=rows, t=t,
                cond_f=cond[fin], tpos_f=np.searchsorted(self._ts, t[fin]),
                inf_f=np.asarray([inf_pos[int(c)] for c in cond[~fin]], dtype=np.int64),
                inverse=inverse, n_fin=int(fin.sum()),
                meas=plan.measurement[rows]))

    # -- pieces of the program --------------------------------------------------------
    def _linear(self, theta):
        x = jnp.asarray(self._nominal)
        for scale, pos, cols in self._scale_groups:
            v = theta[pos]
            if scale == "log":
                v = jnp.exp(v)
            elif scale == "log10":
                v = jnp.exp(v * _LN10)
            x = x.at[cols].set(v)
        return x

    def _p_matrix(self, ov: _Overrides, n: int, x):
        pb = self.problem
        base = jnp.asarray(pb.system.parameter_defaults, dtype=jnp.float64)
        if pb.table_p_index.size:
            base = base.at[pb.table_p_index].set(x[pb.table_theta_index])
        p = jnp.broadcast_to(base, (n, base.size))
        if ov.p_rows.size:
            p = p.at[ov.p_rows, ov.p_cols].set(_refs(ov.p_refs, x))
        if ov.conc:
            t0 = jnp.float64(0.0)

            def comp(pi):
                y, k = self._fns.init(t0, pi)
                return self._conc_outputs(t0, y, k)

            out = jax.vmap(comp)(p)
            rows = np.asarray([c[0] for c in ov.conc])
            cols = np.asarray([c[1] for c in ov.conc])
            oc = np.asarray([self._conc_cols[c[2]] for c in ov.conc])
            sign = np.asarray([float(c[3]) for c in ov.conc])
            p = p.at[rows, cols].multiply(out[rows, oc] ** sign)
        return p

    def _init(self, p):
        t0 = jnp.float64(0.0)

        def one(pi):
            y, k = self._fns.init(t0, pi)
            return y, k, self._fns.to_state(t0, y, k)

        return jax.vmap(one)(p)

    def _apply_states(self, ov: _Overrides, y_base, factors, x):
        if not ov.s_rows.size:
            return y_base
        nat = jnp.zeros_like(y_base).at[ov.s_rows, ov.s_cols].set(_refs(ov.s_refs, x))
        return jnp.where(jnp.asarray(ov.s_mask), nat * factors, y_base)

    def _steady(self, y0, k):
        """Steady state of one member from (0, y0): (y, t, status)."""
        fns, ss, opts = self._fns, self.ss, self._ss_opts
        horizons = np.asarray(ss.horizons, dtype=np.float64)
        start_ok = jax.lax.stop_gradient(
            jnp.all(jnp.isfinite(y0)) & jnp.all(jnp.isfinite(fns.rhs(0.0, y0, k))))
        term = gated_term(fns.rhs, self._ss_solver, self.problem.system)
        breaks = fns.generated.time_breaks

        def converged(t, y, args):
            dy = fns.rhs(t, y, args[0])
            return (jnp.all(jnp.abs(dy) <= ss.atol + ss.rtol * jnp.abs(y))
                    & jnp.all(jnp.isfinite(y)))

        controller = step_controller(opts, self._ss_solver, breaks)
        sol = diffrax.diffeqsolve(
            term, self._ss_solver, t0=0.0, t1=float(horizons[-1]), dt0=opts.dt0, y0=y0,
            args=(k, start_ok), saveat=diffrax.SaveAt(t1=True),
            stepsize_controller=controller, max_steps=opts.max_steps, throw=False,
            adjoint=self._adjoint,
            event=diffrax.Event(lambda t, y, args, **kw: converged(t, y, args)))
        y1, t1 = sol.ys[-1], sol.ts[-1]
        hit = sol.event_mask if sol.event_mask is not None else jnp.asarray(False)
        ok = (sol.result == diffrax.RESULTS.successful) | hit
        # on to the first horizon at or after the event, where the numpy reference looks
        ih = jnp.searchsorted(jnp.asarray(horizons), jax.lax.stop_gradient(t1))
        h = jnp.asarray(horizons)[jnp.clip(ih, 0, horizons.size - 1)]
        more = h > t1
        sol2 = diffrax.diffeqsolve(
            term, self._ss_solver, t0=t1, t1=jnp.where(more, h, t1 + 1.0), dt0=opts.dt0,
            y0=y1, args=(k, start_ok & more), saveat=diffrax.SaveAt(t1=True),
            stepsize_controller=controller, max_steps=opts.max_steps, throw=False,
            adjoint=self._adjoint)
        y2 = jnp.where(more, sol2.ys[-1], y1)
        ok2 = (sol2.result == diffrax.RESULTS.successful) | ~more
        done = converged(h, y2, (k, start_ok)) | ~more
        finite = jnp.all(jnp.isfinite(y2))
        status = jnp.where(
            ~start_ok, 2,
            jnp.where(~(ok & ok2),
                      jnp.where((sol.result == diffrax.RESULTS.max_steps_reached)
                                | (sol2.result == diffrax.RESULTS.max_steps_reached), 1, 3),
                      jnp.where(~finite, 2,
                                jnp.where(hit & done, 0, STEADY_STATE_NOT_REACHED))))
        return y2, jnp.where(more, h, t1), status

    # -- the program ------------------------------------------------------------------
    def _members(self, fn, *args):
        """``fn`` over the leading axis of ``args``: one condition after another
        (``lax.map``) or vmapped, as the solver's batching says; a single condition
        unbatched (a vmapped diffrax solve costs seconds more to trace and compile)."""
        return over_members(fn, self._batching, len(args))(*args)

    def llh_and_status(self, theta):
        """(llh, status (C,)) at ``theta`` (F,) on the parameter table's scale."""
        llh, status, _ = self._terms(theta)
        return llh, status

    def _terms(self, theta):
        """(llh, status (C,), parts): ``parts`` = (h (M,), log sigma (M,), sigma (M,),
        weight (M,)) per measurement (in observable order): the transformed simulation
        ``h(y)``, the noise, and the Fisher information of log sigma per measurement (2
        for normal, 1 for Laplace noise), from which ``value_grad_fim`` makes the FIM."""
        fns = self._fns
        theta = jnp.asarray(theta, dtype=jnp.float64)
        x = self._linear(theta)
        n_c = len(self.conditions)
        status = jnp.zeros(n_c, dtype=jnp.int32)

        p_sim = self._p_matrix(self._sim, n_c, x)
        y_model, k_sim, f_sim = self._init(p_sim)
        if self._pre is not None:
            p_pre = self._p_matrix(self._pre, len(self._pre_ids), x)
            y_pre, k_pre, f_pre = self._init(p_pre)
            y0_pre = self._apply_states(self._pre, y_pre, f_pre, x)
            y_ss, _, st_pre = self._members(self._steady, y0_pre, k_pre)
            y_base = y_ss[self._pre_index]
            if not self._has_pre.all():
                y_base = jnp.where(self._has_pre[:, None], y_base, y_model)
            status = jnp.where(self._has_pre, st_pre[self._pre_index], status)
        else:
            y_base = y_model
        y0 = self._apply_states(self._sim, y_base, f_sim, x)

        values = None
        if self._ts.size and self._outputs is not None:
            ts = jnp.asarray(self._ts)
            active = jnp.asarray(self._has_finite)

            def run(y0i, ki, act):
                ys, st, _ = solve_one(fns, self._solver, self.solver, ts, jnp.float64(0.0),
                                      y0i, ki, max_steps=self.solver.max_steps,
                                      adjoint=self._adjoint, active=act,
                                      system=self.problem.system)
                return self._outputs(ts, ys, ki), st

            values, st = self._members(run, y0, k_sim, active)
            st = jnp.where(active, st, 0).astype(jnp.int32)
            status = jnp.where(status == 0, st, status)
        steady = None
        if self._inf_conditions.size and self._outputs is not None:
            sel = self._inf_conditions
            y_inf, t_inf, st_inf = self._members(self._steady, y0[sel], k_sim[sel])
            steady = jax.vmap(self._outputs)(t_inf, y_inf, k_sim[sel])
            status = status.at[sel].set(
                jnp.where(status[sel] == 0, st_inf.astype(jnp.int32), status[sel]))

        llh = jnp.float64(0.0)
        hs, log_sigmas, sigmas, weights = [], [], [], []
        for o in self._obs:
            obs = o["obs"]
            env: dict[str, Any] = {}
            for name, (kind, info) in self.problem.symbol_sources[o["oid"]].items():
                if kind == "output":
                    col = self._columns[info]
                    parts = []
                    if o["n_fin"]:
                        parts.append(values[o["cond_f"], o["tpos_f"], col])
                    if o["inf_f"].size:
                        parts.append(steady[o["inf_f"], col])
                    env[name] = jnp.concatenate(parts)[o["inverse"]]
                elif kind == "theta":
                    env[name] = x[info]
                elif kind == "time":
                    env[name] = jnp.asarray(o["t"])
            plan = self.problem.plan
            for group in (plan.observable_parameters, plan.noise_parameters):
                env.update({n: _refs(r, x) for n, r in group[o["oid"]].items()})
            shape = (o["rows"].size,)
            y = jnp.broadcast_to(
                jnp.asarray(eval_formula(obs.formula, env, xp=jnp), dtype=jnp.float64), shape)
            env[o["oid"]] = y
            sigma = jnp.broadcast_to(
                jnp.asarray(eval_formula(obs.noise, env, xp=jnp), dtype=jnp.float64), shape)
            llh = llh + jnp.sum(likelihood(o["meas"], y, sigma, obs.transformation,
                                           obs.distribution, xp=jnp)[0])
            hs.append(y if obs.transformation == "lin" else
                      jnp.log(y) if obs.transformation == "log" else jnp.log10(y))
            log_sigmas.append(jnp.log(sigma))
            sigmas.append(sigma)
            weights.append(np.full(shape, 2.0 if obs.distribution == "normal" else 1.0))
        ok = jnp.all(status == 0)
        parts = ((jnp.concatenate(hs), jnp.concatenate(log_sigmas), jnp.concatenate(sigmas),
                  np.concatenate(weights)) if hs else
                 (jnp.zeros(0), jnp.zeros(0), jnp.zeros(0), np.zeros(0)))
        return llh + jnp.where(ok, 0.0, jnp.nan), status, parts


def make_objective(problem: Any, *, solver: SolverOptions | None = None,
                   steady_state: SteadyStateOptions | None = None,
                   adjoint: AdjointOptions | None = None) -> CompiledObjective:
    """The compiled objective of ``problem`` (see :class:`CompiledObjective`)."""
    if solver is not None and not isinstance(solver, SolverOptions):
        raise DataError(f"solver must be a kinabs.SolverOptions; got {solver!r}.")
    return CompiledObjective(problem, solver=solver, steady_state=steady_state,
                             adjoint=adjoint)


class NumpyObjective:
    """:class:`CompiledObjective` with numpy in and out (float64), as
    ``Backend.petab_objective`` hands it to the core."""

    codes = PETAB_STATUS

    def __init__(self, compiled: CompiledObjective):
        self.compiled = compiled

    def value(self, theta: np.ndarray):
        with jax.enable_x64(True):
            llh, status = self.compiled.value(jnp.asarray(theta, dtype=jnp.float64))
        return np.array(llh, dtype=np.float64), np.asarray(status)

    def value_and_grad(self, theta: np.ndarray):
        with jax.enable_x64(True):
            llh, grad, status = self.compiled.value_and_grad(
                jnp.asarray(theta, dtype=jnp.float64))
        return (np.array(llh, dtype=np.float64), np.array(grad, dtype=np.float64),
                np.asarray(status))

    def value_grad_fim(self, theta: np.ndarray):
        """One start after another (the unbatched program): no start waits on another's
        solve, and the program compiles faster than the vmapped one."""
        rows = []
        with jax.enable_x64(True):
            for th in np.asarray(theta, dtype=np.float64):
                rows.append(self.compiled.value_grad_fim_one(th))
        llh, grad, fim, status = (np.stack([np.asarray(r[i]) for r in rows])
                                  for i in range(4))
        return (llh.astype(np.float64), grad.astype(np.float64), fim.astype(np.float64),
                status)


def petab_objective(problem: Any, *, solver: SolverOptions | None = None,
                    steady_state: SteadyStateOptions | None = None,
                    adjoint: AdjointOptions | None = None) -> NumpyObjective:
    """``Backend.petab_objective`` on JAX."""
    return NumpyObjective(make_objective(problem, solver=solver, steady_state=steady_state,
                                         adjoint=adjoint))
