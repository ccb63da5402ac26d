"""Training on JAX: every initialisation trained together in one compiled program.

One ``jit`` of a ``lax.scan`` over a chunk of iterations, ``vmap``-ed over
initialisations, compiled once per fit (the last, shorter chunk runs the same program
with the surplus iterations masked). A member whose solve fails is frozen with its
reason and does not disturb the others.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kinabs._errors import BackendError
from kinabs._losses import DEFAULT_RESIDUALS, DEFAULT_TERMS
from kinabs._optim import Method, is_method
from kinabs._options import AdjointOptions
from kinabs._problem import CONVERGED, FitProblem, TrainingProgram
from kinabs._stages import solve_stages
from kinabs.backends.jax._program_cache import (
    cache_root,
    cached_jit,
    persistent_compilation_cache,
    program_key,
)
from kinabs.backends.jax._simulate import lowered, make_adjoint, make_solver, solve_one

__all__ = ["JaxTrainingProgram", "check_optimizer", "default_optimizer",
           "enable_compilation_cache"]

def enable_compilation_cache() -> Path | None:
    """The folder of JAX's persistent compilation cache for kinabs' programs
    (``KINABS_JAX_CACHE`` or ~/.cache/kinabs/jax), checked now, so that an unsafe or
    unusable one is reported (once) when the program is made; None where there is none
    (``KINABS_JAX_CACHE=0``, or the check failed).

    JAX's cache settings are not switched on here, for the whole process: the cache holds
    native code that JAX runs, and the host program's own ``jit``s have no business
    reading it. ``cached_jit`` sets them around each compilation of kinabs' programs
    only (``persistent_compilation_cache``), unless the user set a cache folder."""
    return cache_root()


_SEED_OPTIMIZER = optax.chain(optax.adabelief(1e-3),
                              optax.clip_by_global_norm(float(np.log(4.0))))


def default_optimizer() -> optax.GradientTransformation:
    """The seed's default: AdaBelief (learning rate 1e-3), then updates clipped to a global
    norm of log(4). Always the same object, which the training program recognises and
    caches on disk (an optax transformation has no other name it could be keyed by)."""
    return _SEED_OPTIMIZER


def check_optimizer(optimizer: Any) -> None:
    """Raise BackendError unless ``optimizer`` is an optax transformation or one of
    kinabs' methods (the ``Backend.check_optimizer`` of JAX, and the guard of every
    training program)."""
    if is_method(optimizer):
        return
    if not isinstance(optimizer, optax.GradientTransformation):
        hint = ""
        made_by = getattr(optimizer, "func", optimizer)  # a functools.partial's function
        if isinstance(made_by, type) or "torch" in (getattr(made_by, "__module__", "") or ""):
            hint = " It looks like a torch optimizer: use backend='torch' for those."
        raise BackendError(
            "the jax backend needs an optax.GradientTransformation as optimizer, e.g. "
            f"optax.adam(1e-3); got {optimizer!r}.{hint}"
        )


#: Iterations per call of the compiled program. Fixed, so that every round of a fit (any
#: n_iter) runs the same program; iterations past the end of a round are skipped by a
#: real branch and cost nothing.
CHUNK = 25

#: In "auto" mode, a start whose explicit solve needs more steps than this redoes the
#: iteration with the implicit solver (Rodas5, ``kinabs.backends.jax._rosenbrock``).
#: The vmapped starts step in lockstep, so the cap bounds what the slowest explicit start
#: costs the others. The defaults fit (100 log-uniform serine starts, Levenberg-
#: Marquardt, ``bench_optimisers.py --defaults``) took 168 / 127 / 103 s with caps of
#: 4096 / 1000 / 500 (with Kvaerno5 as the stiff solver and 4096: 297 s), the same best
#: loss (3.4e-16) and 62 starts at or below 1e-10 each time.
AUTO_TRAIN_EXPLICIT_STEPS = 500

#: "auto" Jacobians are forward-mode (jacfwd through diffrax.ForwardMode) while the
#: parameters are at most this many times the residuals. Measured on serine (10
#: parameters, 5 starts vmapped): forward 0.49 ms against reverse (checkpointed) 0.91 ms
#: with 4 residuals, 1.13 against 3.43 ms with 10, 2.0 against 8.5 ms with 20.
FORWARD_CROSSOVER = 4.0

#: Keys of ``_loss_fns`` for the stages of ``kinabs._stages.solve_stages``, in order; "auto"
#: has all three (capped explicit, implicit, explicit with every step allowed), the
#: last only where the cap is below max_steps.
STAGE_NAMES = ("main", "stiff", "long")

#: The last stage of every program: the problem's solver ("auto": the explicit one) with
#: forward-mode sensitivities, for starts whose loss is finite but whose reverse-mode
#: gradient is not.
SENSITIVITIES = "sensitivities"


def _value_and_grad(loss_one, forward: bool, residuals: bool = False):
    """value_and_grad with aux; forward-mode (jacfwd) for the 'forward' adjoint, whose
    solver loops cannot be reverse-differentiated. With ``residuals`` ``loss_one``
    returns a residual vector, and the derivative is its Jacobian (jacfwd or jacrev)."""
    if residuals:
        def fr(theta, active):
            r, status = loss_one(theta, active)
            return r, (r, status)

        jr = (jax.jacfwd if forward else jax.jacrev)(fr, has_aux=True)

        def vj(theta, active):
            jac, (r, status) = jr(theta, active)
            return (r, status), jac

        return vj
    if not forward:
        return jax.value_and_grad(loss_one, has_aux=True)

    def f(theta, active):
        loss, status = loss_one(theta, active)
        return loss, (loss, status)

    jac = jax.jacfwd(f, has_aux=True)

    def vg(theta, active):
        grad, (loss, status) = jac(theta, active)
        return (loss, status), grad

    return vg


class JaxTrainingProgram(TrainingProgram):
    """See the module docstring."""

    def __init__(self, problem: FitProblem, optimizer: Any, n_iter: int, *,
                 optimizer_key: str | None = None):
        check_optimizer(optimizer)
        self._cache_root = enable_compilation_cache()
        self.problem = problem
        self.optimizer = optimizer
        self.chunk = CHUNK
        del n_iter  # the program serves every round length
        #: kinabs' own method (LevenbergMarquardt, BFGS), or None for an optax optimiser
        self.method: Method | None = optimizer if is_method(optimizer) else None
        self.tests_convergence = self.method is not None
        if self.method is not None:
            optimizer_key = repr(self.method)
        elif optimizer is _SEED_OPTIMIZER:
            optimizer_key = "seed"
        self._optimizer_key = optimizer_key
        n = len(problem.train_index)
        self._lower = np.full(n, -np.inf) if problem.lower is None else problem.lower
        self._upper = np.full(n, np.inf) if problem.upper is None else problem.upper
        self._bounded = bool(np.isfinite(self._lower).any() or np.isfinite(self._upper).any())
        #: whether evaluations are residual vectors with their Jacobian
        self._residuals = self.method is not None and self.method.needs == "residuals"
        forward_jac = self._residuals and self.method.forward_jacobian(
            n, problem.n_residuals, crossover=FORWARD_CROSSOVER)
        with jax.enable_x64(True):
            # One program per stage of the solver policy; a start that a stage fails goes
            # on with the next, whose program is compiled only when some start needs it.
            stages = solve_stages(problem.solver, explicit_cap=AUTO_TRAIN_EXPLICIT_STEPS)
            adjoint = AdjointOptions("forward") if forward_jac else None
            self._loss_fns = {name: self._make_loss(stage.method, stage.max_steps, adjoint)
                              for name, stage in zip(STAGE_NAMES, stages)}
            #: the solver stages, in order
            self._stages = list(self._loss_fns)
            #: the stages whose gradient is forward-mode (jacfwd through diffrax.ForwardMode)
            self._forward: set[str] = set()
            if problem.adjoint.method == "forward" or forward_jac:
                self._forward.update(self._loss_fns)
            else:
                # A finite loss with a NaN reverse-mode gradient: backpropagation goes
                # through rejected trial steps too, and one whose vector field is NaN (a
                # state a hair below 0 under a fractional power: Merkle 2016) leaks 0 * NaN
                # through the step's where. Forward-mode sensitivities select, not multiply:
                # the same derivative of the computed solution, without the NaN. For
                # "auto" that is the explicit solver with every step allowed, also where
                # max_steps is within the explicit cap and the last stage is implicit.
                method = problem.solver.method
                if self.method is None:
                    # kinabs' methods reject a trial point with a NaN derivative instead
                    self._loss_fns[SENSITIVITIES] = self._make_loss(
                        "nonstiff" if method == "auto" else method, problem.solver.max_steps,
                        adjoint=AdjointOptions("forward"))
                    self._forward.add(SENSITIVITIES)
            #: compiled training chunks by (stage, batch size)
            self._runs: dict[tuple[str, int], Any] = {}
            #: compiled batched value_and_grad by stage (``value_and_grad``)
            self._vg_batched: dict[str, Any] = {}

    def _key(self, which: str, n: int) -> str | None:
        pb = self.problem
        if self._optimizer_key is None or pb.loss is not None:
            return None
        parts: list[Any] = [pb.system.generated.source, pb.system.generated.stoichiometry,
                            pb.base_parameters, pb.train_index, pb.space, repr(pb.solver),
                            repr(pb.adjoint), pb.loss_threshold, self.chunk, n,
                            self._optimizer_key, which, AUTO_TRAIN_EXPLICIT_STEPS,
                            self._lower, self._upper]
        for e in pb.experiments:
            parts += [e.t0, e.times, e.values, e.output_index, e.y0, e.y0_mask, e.p_index,
                      e.p_values]
        return program_key(*parts)

    def _run(self, which: str, carry, budget, probe):
        """Run the compiled chunk of program ``which`` (traced once per batch size, or
        loaded from disk): member m runs ``budget[m]`` iterations; ``probe[m]`` asks for
        its loss at its current parameters (in ``carry[4]``)."""
        leaves, treedef = jax.tree.flatten(carry)
        n = leaves[0].shape[0]
        # Committed inputs only: a jitted call caches on committed-ness, and the carry it
        # returns is committed, so uncommitted first inputs would cost a second compile.
        device = jax.devices()[0]
        leaves, budget, probe = jax.device_put(
            (leaves, jnp.asarray(budget, dtype=jnp.int32), jnp.asarray(probe, dtype=bool)),
            device)
        if (which, n) not in self._runs:
            if self.method is not None:
                stage = self._stages.index(which)
                run = self._make_method_run(self._loss_fns[which], which in self._forward,
                                            can_switch=stage < len(self._stages) - 1)
            else:
                run = self._make_run(self._loss_fns[which], which in self._forward)

            def flat(leaves, budget, probe, _treedef=treedef):
                carry, losses = run(jax.tree.unflatten(_treedef, leaves), budget, probe)
                return jax.tree.leaves(carry), losses

            self._runs[which, n] = cached_jit(flat, (leaves, budget, probe),
                                              self._key(which, n))
        new_leaves, losses = self._runs[which, n](leaves, budget, probe)
        return jax.tree.unflatten(treedef, new_leaves), np.asarray(losses)

    # -- the loss of one initialisation ----------------------------------------
    def _make_loss(self, method: Any, max_steps: int, adjoint: AdjointOptions | None = None):
        """loss(theta, active) -> (loss, status) of one start with the given solver (and
        the problem's adjoint unless ``adjoint`` is given)."""
        pb = self.problem
        fns = lowered(pb.system)
        solver = make_solver(method)
        adjoint = make_adjoint(adjoint or pb.adjoint)
        opts = pb.solver
        base = jnp.asarray(pb.base_parameters)
        tidx = jnp.asarray(pb.train_index)
        exps = [
            dict(t0=jnp.asarray(e.t0), ts=jnp.asarray(e.times), obs=jnp.asarray(e.values),
                 mask=jnp.asarray(e.mask),
                 y0=jnp.asarray(e.y0), y0_mask=jnp.asarray(e.y0_mask),
                 pidx=np.asarray(e.p_index), pval=jnp.asarray(e.p_values),
                 # bound here, outside any trace: the outputs this experiment measures
                 outputs=fns.outputs_at(e.output_index))
            for e in pb.experiments
        ]
        log_space = pb.space == "log"

        def to_linear(theta):
            return jnp.exp2(theta) if log_space else theta

        def predict(p, e, ts, y0_nat, y0_mask, active):
            if e["pidx"].size:
                p = p.at[e["pidx"]].set(e["pval"])
            y0, k = fns.init(e["t0"], p)
            factors = fns.to_state(e["t0"], y0, k)
            y0 = jnp.where(y0_mask, y0_nat * factors, y0)
            ys, status, _ = solve_one(fns, solver, opts, ts, e["t0"], y0, k,
                                      max_steps=max_steps, adjoint=adjoint, active=active,
                                      system=pb.system)
            return e["outputs"](ts, ys, k), status

        if pb.loss is None and self._residuals:
            residuals = DEFAULT_RESIDUALS[pb.space]
            # the default loss divides by the number of measured values: a constant
            scale = 1.0 / np.sqrt(max(1, sum(int(np.sum(e.mask)) for e in pb.experiments)))

            def resid(theta, active):
                p = base.at[tidx].set(to_linear(theta))
                parts, status = [], jnp.asarray(0)
                for e in exps:
                    pred, st = predict(p, e, e["ts"], e["y0"], e["y0_mask"], active)
                    parts.append(jnp.ravel(residuals(pred, e["obs"], e["mask"], jnp)))
                    status = jnp.maximum(status, st)
                return jnp.concatenate(parts) * scale, status

            return resid

        if pb.loss is None:
            terms = DEFAULT_TERMS[pb.space]

            def loss(theta, active):
                p = base.at[tidx].set(to_linear(theta))
                sse, count, status = 0.0, 0.0, jnp.asarray(0)
                for e in exps:
                    pred, st = predict(p, e, e["ts"], e["y0"], e["y0_mask"], active)
                    a, b = terms(pred, e["obs"], e["mask"], jnp)
                    sse, count, status = sse + a, count + b, jnp.maximum(status, st)
                return sse / count, status

            return loss

        return self._make_custom_loss(pb, exps, predict, base)

    def _make_custom_loss(self, pb, exps, predict, base):
        names = pb.train_names
        custom = pb.loss
        species_state = pb.system.state_index

        residual_vector = self._residuals

        def loss(theta, active):
            params = {n: theta[i] for i, n in enumerate(names)}
            total, status, parts = 0.0, jnp.asarray(0), []
            for e, ea in zip(exps, pb.experiments):
                statuses = []
                # data rows as the seed hands them: first-row NaNs filled with start values
                first = jnp.where(jnp.isnan(e["obs"][0]), jnp.nan, e["obs"][0])

                def model(ts, y0=None, params=None, _e=e, _ea=ea, _st=statuses):
                    lin = dict(params or {})
                    p = base
                    if lin:
                        idx = [pb.system.parameter_index[k] for k in lin]
                        p = p.at[jnp.asarray(idx)].set(jnp.stack([jnp.asarray(v) for v in
                                                                  lin.values()]))
                    y0_nat, y0_mask = _e["y0"], _e["y0_mask"]
                    if y0 is not None:
                        y0 = jnp.asarray(y0)
                        for j, s in enumerate(_ea.species):
                            if s in species_state:
                                i = species_state[s]
                                ok = jnp.isfinite(y0[j])
                                y0_nat = y0_nat.at[i].set(jnp.where(ok, y0[j], y0_nat[i]))
                                y0_mask = y0_mask.at[i].set(ok | y0_mask[i])
                    pred, st = predict(p, _e, jnp.asarray(ts), y0_nat, y0_mask, active)
                    _st.append(st)
                    return pred

                ys = e["obs"].at[0].set(first)
                kwargs = dict(custom.kwargs)
                if custom.wants_model:
                    kwargs["model"] = model
                    value = custom.fn(params, e["ts"], ys, **kwargs)
                else:
                    value = custom.fn(params, e["ts"], ys, **kwargs)
                value = jnp.asarray(value)
                if custom.residuals:
                    value = jnp.ravel(value)
                    parts.append(value)
                    value = jnp.sum(value * value)
                elif value.shape != ():
                    raise BackendError(
                        f"the custom loss must return a scalar; it returned shape "
                        f"{value.shape}. Wrap a loss that returns residuals in "
                        "kinabs.ResidualLoss.")
                total = total + value
                for st in statuses:
                    status = jnp.maximum(status, st)
            if residual_vector:
                return jnp.concatenate(parts), status
            return total, status

        return loss

    # -- the compiled chunk -----------------------------------------------------
    def _make_run(self, loss_fn, forward: bool):
        opt = self.optimizer
        vg = jax.vmap(_value_and_grad(loss_fn, forward))
        bounded = self._bounded
        lower, upper = jnp.asarray(self._lower), jnp.asarray(self._upper)
        threshold = self.problem.loss_threshold
        chunk = self.chunk

        def step(carry, i, budget, probe_mask):
            theta, opt_state, status, stopped, probe = carry
            live = (status == 0) & ~stopped & (i < budget)
            probing = (i == 0) & probe_mask & (status == 0)
            (loss, st), grad = vg(theta, live | probing)
            ok = (st == 0) & jnp.isfinite(loss) & jnp.all(jnp.isfinite(grad), axis=1)
            probe = jnp.where(probing, jnp.where(ok, loss, jnp.nan), probe)
            updates, new_state = jax.vmap(opt.update)(grad, opt_state, theta)
            new_theta = optax.apply_updates(theta, updates)
            if bounded:
                new_theta = jnp.clip(new_theta, lower, upper)
            do = live & ok
            if threshold is not None:
                # a start whose loss is below the threshold stops at these parameters
                reached = do & (loss < threshold)
                stopped = stopped | reached
                do = do & ~reached
            theta = jnp.where(do[:, None], new_theta, theta)
            opt_state = jax.tree.map(
                lambda n, o: jnp.where(do.reshape((-1,) + (1,) * (n.ndim - 1)), n, o),
                new_state, opt_state)
            status = jnp.where(live & ~ok, jnp.where(st != 0, st, 4), status)
            recorded = jnp.where(live, jnp.where(ok, loss, jnp.nan), jnp.nan)
            return (theta, opt_state, status, stopped, probe), recorded

        def run(carry, budget, probe_mask):
            n = carry[0].shape[0]
            last = jnp.max(budget)
            any_probe = jnp.any(probe_mask)

            def body(carry, i):
                # a real branch (the predicate is not batched): iterations past every
                # member's budget cost nothing, so one program serves every round length
                return jax.lax.cond(
                    (i < last) | ((i == 0) & any_probe),
                    lambda c: step(c, i, budget, probe_mask),
                    lambda c: (c, jnp.full((n,), jnp.nan)), carry)

            carry, losses = jax.lax.scan(body, carry, jnp.arange(chunk))
            return carry, losses.T

        return run

    def _make_method_run(self, eval_fn, forward: bool, *, can_switch: bool):
        """The compiled chunk of kinabs' own method: each iteration evaluates every live
        start at its trial point (residuals and Jacobian, or loss and gradient) and hands
        the values to the method. A failed evaluation rejects the trial point; it fails
        the start only at its first point, or (``can_switch``) when the solver ran out of
        steps and a later solver stage can take the start over."""
        method = self.method
        ev = jax.vmap(_value_and_grad(eval_fn, forward, self._residuals))
        plain = jax.vmap(eval_fn)
        lower, upper = jnp.asarray(self._lower), jnp.asarray(self._upper)
        threshold = self.problem.loss_threshold
        chunk = self.chunk
        value_axes = (1,) if self._residuals else ()

        def step(carry, i, budget):
            theta, ms, status, stopped, probe = carry
            live = (status == 0) & ~stopped & ~ms["converged"] & (i < budget)
            (value, st), deriv = ev(ms["trial"], live)
            finite = jnp.all(jnp.isfinite(value), axis=value_axes) & jnp.all(
                jnp.isfinite(deriv), axis=tuple(range(1, deriv.ndim)))
            ok = (st == 0) & finite

            def residuals(points):
                r, st2 = plain(points, live)
                return r, (st2 == 0) & jnp.all(jnp.isfinite(r), axis=1)

            new = method.update(ms, value, deriv, ok, lower, upper, jnp, _solve,
                                residuals if self._residuals else None)
            first = ~jnp.isfinite(ms["f"])
            fail = live & ~ok & (first | ((st == 1) & can_switch))
            go = live & ~fail
            ms = jax.tree.map(
                lambda n, o: jnp.where(go.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, ms)
            if threshold is not None:
                stopped = stopped | (go & (ms["f"] < threshold))
            status = jnp.where(fail, jnp.where(st != 0, st, 4), status)
            recorded = jnp.where(go & jnp.isfinite(ms["f"]), ms["f"], jnp.nan)
            return (ms["x"], ms, status, stopped, probe), recorded

        def run(carry, budget, probe_mask):
            n = carry[0].shape[0]
            last = jnp.max(budget)

            def body(carry, i):
                return jax.lax.cond(i < last, lambda c: step(c, i, budget),
                                    lambda c: (c, jnp.full((n,), jnp.nan)), carry)

            carry, losses = jax.lax.scan(body, carry, jnp.arange(chunk))
            return carry, losses.T

        return run

    def _scope(self) -> contextlib.ExitStack:
        """Around every call of the program: 64-bit floats, and kinabs' compilation cache
        (not only the chunk programs compile: the eager operations of init and reset do
        too, and a warm run should load them all)."""
        stack = contextlib.ExitStack()
        stack.enter_context(jax.enable_x64(True))
        stack.enter_context(persistent_compilation_cache(self._cache_root))
        return stack

    def _n_residuals(self) -> int:
        """Length of the residual vector (traced once for a custom residual loss)."""
        if self.problem.loss is None:
            return self.problem.n_residuals
        fn = self._loss_fns[self._stages[0]]
        shape = jax.ShapeDtypeStruct((len(self.problem.train_index),), jnp.float64)
        return int(jax.eval_shape(lambda th: fn(th, True), shape)[0].shape[0])

    def _init_opt(self, theta):
        if self.method is not None:
            m = self._n_residuals() if self._residuals else 0
            return self.method.init(theta, jnp, m)
        return jax.vmap(self.optimizer.init)(theta)

    # -- TrainingProgram API ------------------------------------------------------
    def init(self, theta):
        with self._scope():
            th = jnp.asarray(theta, dtype=jnp.float64)
            opt_state = self._init_opt(th)
            n = th.shape[0]
            carry = (th, opt_state, jnp.zeros(n, dtype=jnp.int32), jnp.zeros(n, dtype=bool),
                     jnp.full((n,), jnp.nan, dtype=jnp.float64))
            return _State(carry, np.zeros(n, dtype=np.int8))

    def run(self, state, n_iter):
        """``n_iter`` (<= chunk) iterations of every live start; in "auto" mode a start a
        program fails goes on with the next one (explicit, implicit, explicit without the
        step cap) for the rest of the chunk, and stays with it."""
        with self._scope():
            carry, mode = state.carry, state.mode.copy()
            n = mode.shape[0]
            zeros = np.zeros(n, dtype=bool)
            status_in = np.asarray(carry[2])
            carry, main = self._run("main", carry, np.where(mode == 0, n_iter, 0), zeros)
            losses = main[:, :n_iter].copy()
            for level, which in enumerate(list(self._loss_fns)[1:], start=1):
                status = np.asarray(carry[2])
                # 4 too: an explicit solve can give a finite loss but a NaN gradient (a
                # rejected trial step whose vector field is NaN, e.g. a negative state under
                # a fractional power, leaks NaN through the step's where into the backward
                # pass); the implicit solver does not visit such states
                codes = (4,) if which == SENSITIVITIES else (1, 2, 3, 4)
                switch = (mode == level - 1) & (status_in == 0) & np.isin(status, codes)
                done = np.where(switch, np.sum(np.isfinite(losses), axis=1), 0)
                if switch.any():
                    mode[switch] = level
                    carry = (*carry[:2], jnp.where(jnp.asarray(switch), 0, carry[2]),
                             *carry[3:])
                status_in = np.asarray(carry[2])
                live = (mode == level) & (status_in == 0) & ~np.asarray(carry[3])
                budget = np.where(live, n_iter - done, 0)
                if budget.any():
                    members = np.flatnonzero(budget)
                    carry, out = self._run_members(which, carry, members, budget[members],
                                                   None)
                    for j, m in enumerate(members):
                        losses[m, done[m]:] = out[j, :budget[m]]
            return _State(carry, mode), losses

    def _run_members(self, which, carry, members, budget, probe):
        """Run program ``which`` on ``members`` only: under vmap every member waits for the
        slowest, so the few starts that need the implicit solver run as a batch of their
        own, padded to a power of two (few batch sizes, few compilations)."""
        k = len(members)
        size = 1 << max(0, int(k - 1).bit_length())
        pad = np.concatenate([members, np.full(size - k, members[0])])
        sub_budget = np.concatenate([budget, np.zeros(size - k, dtype=np.int64)])
        sub_probe = np.zeros(size, dtype=bool)
        if probe is not None:
            sub_probe[:k] = probe
        take = jnp.asarray(pad)
        sub = jax.tree.map(lambda a: a[take], carry)
        sub, losses = self._run(which, sub, sub_budget, sub_probe)
        rows = jnp.asarray(members)
        carry = jax.tree.map(lambda full, part: full.at[rows].set(part[:k]), carry, sub)
        return carry, losses[:k]

    def reset(self, state, mask, theta):
        with self._scope():
            th, opt_state, status, stopped, probe = state.carry
            m = jnp.asarray(mask)
            new_th = jnp.where(m[:, None], jnp.asarray(theta), th)
            fresh = self._init_opt(new_th)
            opt_state = jax.tree.map(
                lambda n, o: jnp.where(m.reshape((-1,) + (1,) * (n.ndim - 1)), n, o),
                fresh, opt_state)
            carry = (new_th, opt_state, jnp.where(m, 0, status), jnp.where(m, False, stopped),
                     probe)
            return _State(carry, np.where(np.asarray(mask), 0, state.mode).astype(np.int8))

    def theta(self, state):
        return np.asarray(state.carry[0])

    def status(self, state):
        status = np.array(state.carry[2])
        if self.method is not None:
            status[(status == 0) & np.asarray(state.carry[1]["converged"])] = CONVERGED
        return status

    def counts(self, state):
        if self.method is None:
            return None
        ms = state.carry[1]
        return np.asarray(ms["iterations"]), np.asarray(ms["evaluations"])

    def stopped(self, state):
        return np.asarray(state.carry[3])

    def final_loss(self, state):
        """Loss at the current parameters of every member (a probing pass of the same
        compiled programs: no further compilation)."""
        if self.method is not None:
            f = np.array(state.carry[1]["f"])
            return np.where(np.isfinite(f) & (np.asarray(state.carry[2]) == 0), f, np.nan)
        with self._scope():
            carry, mode = state.carry, state.mode
            n = mode.shape[0]
            if np.any(mode == 0):
                carry, _ = self._run("main", carry, np.zeros(n, np.int32), mode == 0)
            for level, which in enumerate(list(self._loss_fns)[1:], start=1):
                members = np.flatnonzero(mode == level)
                if members.size:
                    carry, _ = self._run_members(which, carry, members,
                                                 np.zeros(members.size, np.int64),
                                                 np.ones(members.size, dtype=bool))
            return np.asarray(carry[4])

    def value_and_grad(self, theta):
        """The per-start loss function vmapped with its gradient, as in an iteration;
        with ``method="auto"`` the rows the explicit solver cannot finish are redone with
        the implicit one, and a finite loss with a non-finite gradient with forward-mode
        sensitivities, as training does."""
        theta = np.asarray(theta, dtype=np.float64)
        with self._scope():
            def batched(which):
                if which not in self._vg_batched:
                    fn = self._loss_fns[which]
                    if self._residuals:
                        fn = _sum_of_squares(fn)
                    vg = _value_and_grad(fn, which in self._forward)
                    self._vg_batched[which] = jax.jit(jax.vmap(lambda th: vg(th, True)))
                return self._vg_batched[which]

            th = jnp.asarray(theta)
            (loss, status), grad = batched("main")(th)
            loss, status, grad = np.array(loss), np.array(status), np.array(grad)
            for which in list(self._loss_fns)[1:]:
                bad_grad = ~np.all(np.isfinite(grad), axis=1)
                redo = np.flatnonzero((status == 0) & bad_grad if which == SENSITIVITIES
                                      else (status != 0) | bad_grad)
                if not redo.size:
                    continue
                (l2, s2), g2 = batched(which)(th[redo])
                loss[redo], status[redo], grad[redo] = (np.asarray(l2), np.asarray(s2),
                                                        np.asarray(g2))
        return loss, status, grad


def _sum_of_squares(resid):
    def loss(theta, active):
        r, status = resid(theta, active)
        return jnp.sum(r * r), status

    return loss


def _solve(a, b):
    """Batched linear solve (B, n, n) x (B, n) -> (B, n) (NaN where singular)."""
    return jnp.linalg.solve(a, b[..., None])[..., 0]


class _State:
    """Training state: the compiled programs' carry and each start's stage, the index of
    its program in ``_loss_fns`` ("auto": 0 explicit, 1 implicit after the explicit solver
    failed it, 2 explicit without the step cap after the implicit one failed it too; last:
    forward-mode sensitivities after a NaN reverse-mode gradient)."""

    __slots__ = ("carry", "mode")

    def __init__(self, carry, mode):
        self.carry, self.mode = carry, mode
