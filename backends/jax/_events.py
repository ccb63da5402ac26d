"""Segments of a simulation with events on JAX: one compiled, vmapped ``diffeqsolve``
per solver stage that stops each member at its first trigger-atom crossing (a
``diffrax.Event`` per atom, root-found by Newton's method) or at its own stop time.

Each atom's condition is ``-side * g``: negative on the side the atom is on, so the
upward crossing that ``direction=True`` watches for is the atom leaving its side, and a
restart exactly at a root (the condition ~0) does not stop again at once. One
``diffrax.Event`` watches the largest of them (a model with 200 events would otherwise
compile 200 conditions that each evaluate every atom).
"""

from __future__ import annotations

import functools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx

from kinabs._events import SegmentResult
from kinabs._options import SolverOptions
from kinabs._stages import SolveStage, run_stages, solve_stages
from kinabs.backends.jax._simulate import (
    AUTO_EXPLICIT_STEP_CAP,
    bound_once,
    gated_term,
    lowered,
    make_solver,
    over_members,
    step_controller,
)

__all__ = ["event_segment", "max_step"]

#: Tolerance of the event-time root finder, relative and absolute (in time units).
ROOT_TOL = 1e-12


def _atoms(system):
    return bound_once(system, "jax-events", system.events.bind)[0]


@functools.lru_cache(maxsize=32)
def _compiled(system, method, opts: SolverOptions, max_steps: int):
    fns = lowered(system)
    atoms = _atoms(system)
    n_atoms = len(system.events.atoms)
    solver = make_solver(method)
    breaks = fns.generated.time_breaks

    stateless = not system.states

    def one(t_start, t_stop, y0, k, sides, ts, dtmax):
        if stateless:
            # no state (events on time alone): one dummy state that stays 0
            ys, t_end, y_end, *rest = solve(t_start, t_stop, jnp.zeros(1), k, sides, ts,
                                            dtmax)
            return (ys[..., :0], t_end, y_end[:0], *rest)
        return solve(t_start, t_stop, y0, k, sides, ts, dtmax)

    def rhs(t, y, k):
        return jnp.zeros_like(y) if stateless else fns.rhs(t, y, k)

    def atom_values(t, y, k):
        return atoms(t, y[:0] if stateless else y, k)

    def solve(t_start, t_stop, y0, k, sides, ts, dtmax):
        active = t_stop > t_start
        start_ok = jnp.all(jnp.isfinite(y0)) & jnp.all(jnp.isfinite(rhs(t_start, y0, k)))
        run = active & start_ok
        term = gated_term(rhs, solver, None if stateless else system)
        t1 = jnp.where(active, t_stop, t_start + 1.0)
        event = None
        if n_atoms:
            # each atom's condition, shifted so that none is positive at the start (the
            # atom that stopped the last segment may be a rounding error past its root)
            shift = jnp.maximum(-sides * atom_values(t_start, y0, k), 0.0)

            def conditions(t, y, args):
                return -sides * atom_values(t, y, args[0]) - shift

            def cond(t, y, args, **kw):
                # one condition for all atoms: the first to cross makes the largest
                # positive, and the atoms are evaluated once per call
                return jnp.max(conditions(t, y, args))

            event = diffrax.Event(cond_fn=cond,
                                  root_finder=optx.Newton(rtol=ROOT_TOL, atol=ROOT_TOL),
                                  direction=True)
        controller = step_controller(opts, solver, breaks, jnp.clip(ts, t_start, t1),
                                     dtmax=dtmax)
        sol = diffrax.diffeqsolve(
            term, solver, t0=t_start, t1=t1, dt0=opts.dt0, y0=y0, args=(k, run),
            saveat=diffrax.SaveAt(ts=jnp.clip(ts, t_start, t1), t1=True),
            stepsize_controller=controller, max_steps=max_steps, throw=False, event=event)
        # with an event, diffrax packs the saves: the save times it reached, then the
        # end (t1 or the event), then inf
        last = jnp.sum(jnp.isfinite(sol.ts)) - 1
        ys, t_end, y_end = sol.ys[:-1], sol.ts[last], sol.ys[last]
        hit = sol.result == diffrax.RESULTS.event_occurred
        if n_atoms:
            # the atom that crossed: the largest condition a moment later (at the event
            # several may be zero, and only the one that crossed rises)
            dt = 1e-7 * jnp.maximum(jnp.abs(t_end), 1.0)
            ahead = conditions(t_end + dt, y_end + dt * rhs(t_end, y_end, k), (k, run))
            fired = jnp.where(hit, jnp.argmax(ahead), -1)
        else:
            fired = jnp.asarray(-1)
        ok = (sol.result == diffrax.RESULTS.successful) | hit
        finite = jnp.all(jnp.isfinite(y_end))
        status = jnp.where(ok, jnp.where(finite, 0, 2),
                           jnp.where(sol.result == diffrax.RESULTS.max_steps_reached, 1, 3))
        status = jnp.where(active, jnp.where(start_ok, status, 2), 0)
        fired = jnp.where(active, fired, -1)
        t_end = jnp.where(active, t_end, t_start)
        y_end = jnp.where(active, y_end, y0)
        return ys, t_end, y_end, fired, status, sol.stats["num_accepted_steps"], start_ok

    return jax.jit(over_members(one, opts.batching, 5))


def max_step(times) -> float:
    """The longest step of a solve with events: the largest gap between save times. A
    trigger on a quantity the states do not follow (``sin(10 t) < 0`` with a vector
    field of zeros) is invisible to the step-size control, whose steps would otherwise
    grow past several crossings at once; the torch solver ends its steps at the save
    times already."""
    gaps = np.diff(np.asarray(times, dtype=np.float64))
    return float(gaps.max()) if gaps.size and gaps.max() > 0 else float("inf")


def event_segment(system, times, t_start, t_stop, y, k, sides, solver) -> SegmentResult:
    """``Backend.event_segment`` on JAX (see :class:`kinabs.Backend`)."""
    stages = solve_stages(solver, explicit_cap=AUTO_EXPLICIT_STEP_CAP)
    with jax.enable_x64(True):
        args = [jnp.asarray(np.asarray(a, dtype=np.float64))
                for a in (t_start, t_stop, y, k, sides)]
        ts = jnp.asarray(np.asarray(times, dtype=np.float64))
        dtmax = jnp.asarray(max_step(times))

        def solve(stage: SolveStage, members: np.ndarray):
            fn = _compiled(system, stage.method, solver, stage.max_steps)
            idx = jnp.asarray(members)
            ys, t_end, y_end, fired, status, steps, ok = fn(*[a[idx] for a in args], ts,
                                                            dtmax)
            return (np.asarray(ys), np.asarray(status), np.asarray(steps), np.asarray(ok),
                    np.asarray(t_end), np.asarray(y_end), np.asarray(fired))

        ys, status, steps, _, t_end, y_end, fired = run_stages(stages, len(t_start), solve)
    return SegmentResult(ys=ys, t_end=t_end, y_end=y_end, fired=fired, status=status,
                         steps=steps)
