"""Derivatives through SBML events, and the training program of models with events.

A simulation with events (:mod:`kinabs._events`) is a host-side loop of solves between
events. Its derivative with respect to the parameters is taken in two passes:

1. the loop runs without derivatives and records, per batch member, what happened in
   order (``simulate_with_events(..., record=True)``: which events fired and executed,
   in which order, where each solve started and stopped and why); these discrete
   choices are then fixed;
2. the recording is *replayed* on the backend's arrays with derivatives on
   (:func:`replay`): each solve is the backend's differentiable solve, each event's
   delay and assignments are differentiable functions of the state and parameters, and
   every event time carries its sensitivity:

   * a time where a trigger atom ``g`` crossed zero is one Newton correction away from
     the solve's crossing ``t0``: ``t* = t0 - g(t0, y(t0), k) / (dg/dt)`` (``dg/dt`` the
     total derivative along the flow, held constant), whose value is ``t0`` (``g`` is
     zero there to the root finder's tolerance) and whose derivative is the implicit
     function theorem's ``-(dg/dp) / (dg/dt)``; the state there is
     ``y(t*) = y(t0) + (t* - t0) f(t0, y(t0))``;
   * a delayed execution happens at the firing time plus the delay, both
     differentiable; the state there is moved the same way;
   * a solve that starts at a time ``t`` that moves starts from
     ``y + (t0 - t) f(t0, y)`` at the fixed ``t0`` (``dy(T)/dt_start = -Phi f``).

The backends give the arrays, solves and derivative passes (an *event engine*:
``backends/<name>/_event_gradients.py``); everything else is written once, here.
:class:`EventTrainingProgram` trains with kinabs' own methods
(:class:`kinabs.LevenbergMarquardt`, :class:`kinabs.BFGS`) on numpy, one replay per
start, and serves :class:`kinabs.Trainer` for models with events on both backends.

Example:
    The loss and its gradient (what one iteration of a fit computes) for a decay
    ``A ->`` refilled whenever ``A`` falls below ``thr``: ``thr`` enters the loss only
    through the refill times.

    >>> import kinabs, sympy, numpy as np, pandas as pd
    >>> from kinabs._fit.spec import FitSpec
    >>> b = kinabs.ModelBuilder("refill")
    >>> b.species("A", initial_concentration=1.0)
    A
    >>> b.parameter("k", 0.7), b.parameter("thr", 0.4)
    (k, thr)
    >>> b.reaction("r", "A ->", rate="k*A")
    r
    >>> model = b.build()
    >>> A, thr = sympy.symbols("A thr")
    >>> model.events["refill"] = kinabs.Event("refill", trigger=A < thr,
    ...                                       assignments=(("A", A + 0.8),))
    >>> times = np.linspace(0, 4, 9)
    >>> data = kinabs.TrainingData.coerce(pd.DataFrame(
    ...     {"A": np.exp(-0.6 * times)}, index=pd.Index(times, name="time")))
    >>> spec = FitSpec(model=model, data=data, parameters=("k", "thr"), backend="torch",
    ...                optim_space="linear")
    >>> loss, status, grad = spec.program().value_and_grad(np.array([[0.7, 0.4]]))
    >>> status.tolist(), bool(abs(grad[0, 1]) > 0.1)
    ([0], True)
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat.numpy as npx
import numpy as np

from kinabs._backend import RawSolution
from kinabs._errors import SimulationError, UnsupportedFeatureError
from kinabs._events import simulate_with_events
from kinabs._losses import DEFAULT_RESIDUALS
from kinabs._optim import is_method
from kinabs._problem import CONVERGED, FitProblem, TrainingProgram

__all__ = ["replay", "EventTrainingProgram", "check_event_training"]

#: Relative step of the central difference that gives ``dg/dt`` along the flow.
_DT = 1e-6


def check_event_training(system: Any, optimizer: Any, loss: Any) -> None:
    """Raise :class:`kinabs.UnsupportedFeatureError` naming the first event where a fit
    of a model with events asks for what :class:`EventTrainingProgram` does not do."""
    if system.events is None:
        return
    first = system.events.events[0].id
    if optimizer is not None and not is_method(optimizer):
        raise UnsupportedFeatureError(
            first, "event", f"training a model with events with {type(optimizer).__name__} "
            "is not supported yet; use kinabs' own methods (optimizer=None for "
            "kinabs.LevenbergMarquardt(), or kinabs.BFGS()).")
    if loss is not None:
        raise UnsupportedFeatureError(
            first, "event", "training a model with events with a custom loss is not "
            "supported yet; train it with the default loss (loss=None).")


def replay(tape: list[tuple], eng: Any, ts: np.ndarray, p: Any, t0: float,
           y0_nat: np.ndarray | None, y0_mask: np.ndarray | None, outputs: Any,
           statuses: list) -> Any:
    """The outputs (T, O) of one member whose simulation recorded ``tape``, on the
    engine's arrays and differentiable in ``p`` (P,) (see the module docstring).
    ``outputs``: the bound outputs function; the status of each solve is appended to
    ``statuses``."""
    xp, fns = eng.xp, eng.fns
    ev = eng.system.events
    slices = ev.value_slices
    system = eng.system
    species = system.model.species
    is_species = [s in species for s in system.states]
    resized, by_compartment = _resizing(system)
    c = eng.asarray
    t = c(t0)
    y, k = fns.init(t, p)
    if y0_mask is not None and np.any(y0_mask):
        factors = fns.to_state(t, y, k)
        y = xp.where(c(y0_mask.astype(np.float64)) > 0, c(y0_nat) * factors, y)
    pending: dict[int, tuple[Any, Any]] = {}
    pieces = []
    n_s = len(system.states)
    for rec in tape:
        kind = rec[0]
        if kind == "fire":
            _, seq, e = rec
            event = ev.events[e]
            when = t + eng.delays(t, y, k)[e] if event.has_delay else t
            vals = (eng.values(t, y, k)[slices[e]] if event.use_values_from_trigger_time
                    else None)
            pending[seq] = (when, vals)
        elif kind == "exec":
            _, seq, e, changed = rec
            _, vals = pending.pop(seq)
            event = ev.events[e]
            if not event.targets:
                continue
            if vals is None:
                vals = eng.values(t, y, k)[slices[e]]
            factors = fns.to_state(t, y, k)
            new = [y[i] for i in range(n_s)]
            for j, i in enumerate(event.targets):
                new[i] = vals[j] * factors[i] if is_species[i] else vals[j]
            for comp in changed:  # resized compartments keep their species' amounts
                i = resized[comp]
                for j in by_compartment[comp]:
                    new[j] = new[j] * y[i] / new[i]
            y = xp.stack(new)
        elif kind == "seg":
            _, ta, tb, atom, seq, lo, hi = rec
            ta_c, tb_c = c(ta), c(tb)
            if n_s:
                y = y + (ta_c - t) * fns.rhs(ta_c, y, k)  # the start time's sensitivity
            save = np.asarray(ts[lo:hi], dtype=np.float64)
            later = save > ta
            inner = save[later]
            if tb > ta and n_s:
                ys, status = eng.solve(ta, np.append(inner, tb), y, k)
                statuses.append(status)
                y1 = ys[-1]
                ys = ys[:-1]
            else:
                ys, y1 = xp.stack([y] * inner.size) if inner.size else None, y
            if hi > lo:
                n_start = int(np.sum(~later))
                rows = ([y] * n_start) + ([ys[i] for i in range(inner.size)])
                pieces.append(outputs(c(save), xp.stack(rows), k[None, :]))
            if atom >= 0:
                g1 = eng.atoms(tb_c, y1, k)[atom]
                f1 = fns.rhs(tb_c, y1, k) if n_s else y1
                dt = _DT * max(abs(tb), 1.0)
                up = eng.atoms(c(tb + dt), y1 + dt * f1, k)[atom]
                down = eng.atoms(c(tb - dt), y1 - dt * f1, k)[atom]
                slope = eng.stop((up - down) / (2 * dt))
                t_new = tb_c - g1 / slope
            elif seq >= 0:
                t_new = pending[seq][0]
            else:
                t_new = tb_c
            y = y1 + (t_new - tb_c) * fns.rhs(tb_c, y1, k) if n_s else y1
            t = t_new
        elif kind == "final":
            _, lo, hi = rec
            if hi > lo:
                pieces.append(outputs(c(np.asarray(ts[lo:hi], dtype=np.float64)),
                                      xp.stack([y] * (hi - lo)), k[None, :]))
    return xp.concat(pieces, axis=0)


def _resizing(system: Any) -> tuple[dict, dict]:
    """The compartments that are states -> their index, and their concentration
    species' state indices (as ``kinabs._events._Driver``)."""
    index = {x: i for i, x in enumerate(system.states)}
    model = system.model
    resized = {cpt: index[cpt] for cpt in model.compartments if cpt in index}
    by = {cpt: [index[s] for s, kind in zip(system.states, system.state_kinds)
                if kind == "concentration" and s in model.species
                and model.species[s].compartment == cpt] for cpt in resized}
    return resized, by


def _batched_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.full(b.shape, np.nan)
    for i in range(a.shape[0]):
        try:
            out[i] = np.linalg.solve(a[i], b[i])
        except np.linalg.LinAlgError:
            pass
    return out


class _State:
    def __init__(self, method: dict, status: np.ndarray, stopped: np.ndarray):
        self.method, self.status, self.stopped = method, status, stopped

    def copy(self) -> _State:
        return _State({k: np.array(v, copy=True) for k, v in self.method.items()},
                      self.status.copy(), self.stopped.copy())


class EventTrainingProgram(TrainingProgram):
    """The training program of a model with events on any backend with an event engine
    (see the module docstring): kinabs' own methods on numpy, each evaluation a
    simulation of every start (recorded) and one differentiable replay per start."""

    def __init__(self, problem: FitProblem, optimizer: Any, backend: Any):
        system = problem.system
        check_event_training(system, optimizer, problem.loss)
        self.problem, self.method, self.backend = problem, optimizer, backend
        self.engine = backend.event_engine(system, problem.solver)
        self.tests_convergence = True
        self.chunk = 25
        pb = problem
        self._tidx = np.asarray(pb.train_index, dtype=np.int64)
        n_p = pb.base_parameters.size
        self._onehot = np.zeros((self._tidx.size, n_p))
        self._onehot[np.arange(self._tidx.size), self._tidx] = 1.0
        self._keep = 1.0 - self._onehot.sum(axis=0)
        self._residuals = DEFAULT_RESIDUALS[pb.space]
        self._scale = 1.0 / math.sqrt(max(1, sum(int(np.sum(e.mask))
                                                 for e in pb.experiments)))
        self._outputs = [self.engine.outputs(e.output_index) for e in pb.experiments]
        n = self._tidx.size
        self._lower = np.full(n, -np.inf) if pb.lower is None else np.asarray(pb.lower, float)
        self._upper = np.full(n, np.inf) if pb.upper is None else np.asarray(pb.upper, float)

    # -- parameters ----------------------------------------------------------------
    def _linear(self, theta: Any, xp: Any) -> Any:
        return 2.0 ** theta if self.problem.space == "log" else theta

    def _p_numpy(self, theta: np.ndarray, e: Any) -> np.ndarray:
        """(N, P) parameter vectors of experiment ``e`` for ``theta`` (N, R)."""
        p = self.problem.base_parameters[None, :] * self._keep + self._linear(
            theta, np) @ self._onehot
        if e.p_index.size:
            p[:, e.p_index] = e.p_values
        return p

    def _p_engine(self, theta: Any, e: Any) -> Any:
        eng = self.engine
        p = (eng.asarray(self.problem.base_parameters * self._keep)
             + self._linear(theta, eng.xp) @ eng.asarray(self._onehot))
        if e.p_index.size:
            mask = np.zeros(p.shape[0])
            mask[e.p_index] = 1.0
            full = np.zeros(p.shape[0])
            full[e.p_index] = e.p_values
            p = eng.xp.where(eng.asarray(mask) > 0, eng.asarray(full), p)
        return p

    # -- evaluations -----------------------------------------------------------------
    def _simulate(self, theta: np.ndarray) -> list:
        """Per experiment, the recorded simulation of every row of ``theta``."""
        return [self._simulate_experiment(self._p_numpy(theta, e), e)
                for e in self.problem.experiments]

    def _simulate_experiment(self, p: np.ndarray, e: Any) -> Any:
        """The recorded simulation of experiment ``e`` at ``p`` (B, P). A start whose
        events fail (a negative delay, a cascade without end) fails with status 3
        ("solver error"), not the whole batch."""
        y0 = np.broadcast_to(e.y0, (p.shape[0], e.y0.size)) if e.y0_mask.any() else None
        try:
            return simulate_with_events(
                self.problem.system, self.backend, np.asarray(e.times, dtype=np.float64), p,
                t0=float(e.t0), y0=y0, y0_mask=e.y0_mask if y0 is not None else None,
                output_index=np.asarray(e.output_index), solver=self.problem.solver,
                record=True)
        except SimulationError:
            if p.shape[0] == 1:
                raw = RawSolution(ys=np.full((1, e.times.size, e.output_index.size), np.nan),
                                  status=np.asarray([3]), steps=np.asarray([-1]))
                object.__setattr__(raw, "tapes", [[]])
                return raw
        rows = [self._simulate_experiment(p[i:i + 1], e) for i in range(p.shape[0])]
        raw = RawSolution(ys=np.concatenate([r.ys for r in rows]),
                          status=np.concatenate([r.status for r in rows]),
                          steps=np.concatenate([r.steps for r in rows]))
        object.__setattr__(raw, "tapes", [r.tapes[0] for r in rows])
        return raw

    def _residuals_numpy(self, raws: list) -> np.ndarray:
        parts = []
        for e, raw in zip(self.problem.experiments, raws):
            r = self._residuals(raw.ys, e.values[None], e.mask[None], npx)
            parts.append(r.reshape(r.shape[0], -1))
        return np.concatenate(parts, axis=1) * self._scale

    def _residual_fn(self, raws: list, row: int):
        """``fn(theta (R,)) -> (residuals (m,), statuses)`` of start ``row`` on the
        engine's arrays, replaying its recorded simulations."""
        eng = self.engine

        def fn(theta):
            statuses: list = []
            parts = []
            for e, raw, outputs in zip(self.problem.experiments, raws, self._outputs):
                p = self._p_engine(theta, e)
                pred = replay(raw.tapes[row], eng, e.times, p, float(e.t0), e.y0,
                              e.y0_mask, outputs, statuses)
                r = self._residuals(pred, eng.asarray(np.nan_to_num(e.values)),
                                    eng.asarray(e.mask.astype(np.float64)) > 0, eng.xp)
                parts.append(eng.xp.reshape(r, (-1,)))
            return eng.xp.concat(parts, axis=0) * self._scale, statuses

        return fn

    def _evaluate(self, trial: np.ndarray, jacobian: bool):
        """At each row of ``trial`` (B, R): residuals and Jacobian (or loss and
        gradient), solve status (B,), ok (B,)."""
        raws = self._simulate(trial)
        status = np.zeros(trial.shape[0], dtype=np.int64)
        for raw in raws:
            status = np.maximum(status, raw.status)
        m = self.problem.n_residuals
        b, n = trial.shape
        value = np.full((b, m) if jacobian else (b,), np.nan)
        deriv = np.full((b, m, n) if jacobian else (b, n), np.nan)
        for i in np.flatnonzero(status == 0):
            fn = self._residual_fn(raws, i)
            if jacobian:
                value[i], deriv[i], st = self.engine.jacobian(fn, trial[i])
            else:
                value[i], deriv[i], st = self.engine.value_and_grad(fn, trial[i])
            status[i] = max(status[i], st)
        finite = np.isfinite(value.reshape(b, -1)).all(1) & np.isfinite(
            deriv.reshape(b, -1)).all(1)
        return value, deriv, status, (status == 0) & finite

    def _residuals_only(self, points: np.ndarray):
        raws = self._simulate(points)
        status = np.zeros(points.shape[0], dtype=np.int64)
        for raw in raws:
            status = np.maximum(status, raw.status)
        r = self._residuals_numpy(raws)
        return r, (status == 0) & np.isfinite(r).all(1)

    def _step(self, state: _State) -> np.ndarray:
        method = self.method
        ms = state.method
        n_all = ms["x"].shape[0]
        recorded = np.full(n_all, np.nan)
        live = (state.status == 0) & ~state.stopped & ~ms["converged"]
        members = np.flatnonzero(live)
        if members.size == 0:
            return recorded
        sub = {k: v[members] for k, v in ms.items()}
        least_squares = method.needs == "residuals"
        value, deriv, status, ok = self._evaluate(sub["trial"], least_squares)
        if least_squares:
            value = np.where(ok[:, None], value, 0.0)
            deriv = np.where(ok[:, None, None], deriv, 0.0)
        else:
            value = np.where(ok, value, np.inf)
            deriv = np.where(ok[:, None], deriv, 0.0)
        new = method.update(sub, value, deriv, ok, self._lower, self._upper, npx,
                            _batched_solve, self._residuals_only if least_squares else None)
        first = ~np.isfinite(sub["f"])
        fail = ~ok & first
        go = ~fail
        if go.any():
            rows = members[go]
            for k, v in ms.items():
                v[rows] = np.asarray(new[k])[go]
            f = np.asarray(new["f"])[go]
            f = np.where(np.isfinite(f), f, np.nan)
            recorded[rows] = f
            if self.problem.loss_threshold is not None:
                state.stopped[rows[f < self.problem.loss_threshold]] = True
        state.status[members[fail]] = np.where(status[fail] != 0, status[fail], 4)
        return recorded

    # -- TrainingProgram API ---------------------------------------------------------
    def _n_res(self) -> int:
        return self.problem.n_residuals if self.method.needs == "residuals" else 0

    def init(self, theta):
        th = np.array(theta, dtype=np.float64)
        st = self.method.init(th, npx, self._n_res())
        st = {k: np.array(v, copy=True) for k, v in st.items()}
        return _State(st, np.zeros(th.shape[0], dtype=np.int64),
                      np.zeros(th.shape[0], dtype=bool))

    def run(self, state, n_iter):
        state = state.copy()
        losses = np.full((state.status.shape[0], n_iter), np.nan)
        for j in range(n_iter):
            losses[:, j] = self._step(state)
        return state, losses

    def reset(self, state, mask, theta):
        state = state.copy()
        rows = np.flatnonzero(np.asarray(mask, dtype=bool))
        if rows.size:
            fresh = self.method.init(np.array(theta, dtype=np.float64)[rows], npx,
                                     self._n_res())
            for k, v in state.method.items():
                v[rows] = np.asarray(fresh[k])
            state.status[rows] = 0
            state.stopped[rows] = False
        return state

    def theta(self, state):
        return state.method["x"].copy()

    def status(self, state):
        status = state.status.copy()
        status[(status == 0) & state.method["converged"]] = CONVERGED
        return status

    def counts(self, state):
        return state.method["iterations"].copy(), state.method["evaluations"].copy()

    def stopped(self, state):
        return state.stopped.copy()

    def final_loss(self, state):
        f = state.method["f"]
        return np.where(np.isfinite(f) & (state.status == 0), f, np.nan)

    def value_and_grad(self, theta):
        """Loss (N,), status (N,) and gradient (N, R) in the optimisation space."""
        value, grad, status, _ = self._evaluate(np.asarray(theta, dtype=np.float64), False)
        return value, status, grad
