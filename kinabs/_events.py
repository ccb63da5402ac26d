"""Simulation of models with SBML events, the same on every backend.

A backend solves *segments*: from each member's time and state up to the first zero
crossing of a trigger atom (root-found inside the solver, see
``kinabs._lowering.events``) or a stop time, whichever comes first
(:meth:`kinabs.Backend.event_segment`). Between segments this module applies SBML's event
semantics per batch member, on numpy:

* a trigger fires when it turns from false to true (``initialValue`` is its value just
  before the start, so a trigger true at the start fires there unless it is true);
* its delay is evaluated when it fires, and the execution is scheduled; with
  ``useValuesFromTriggerTime`` the assigned values are computed then too;
* executions due at one time run one at a time by decreasing priority (equal
  priorities in an order drawn from ``random.Random(seed)``, so runs repeat); after each,
  every trigger is evaluated again: new firings join, and a non-persistent event whose
  trigger turned false is cancelled;
* more than :data:`MAX_EVENTS_AT_ONE_TIME` executions at one time is an error naming the
  events (a cascade that does not end).

Outputs at a save time equal to an event time show the state after the event.

Example:
    A dose at ``t = 2`` on a decay ``A -> `` (``A = exp(-t)`` before it):

    >>> import kinabs, sympy, numpy as np
    >>> b = kinabs.ModelBuilder("dose")
    >>> b.species("A", initial_concentration=1.0)
    A
    >>> b.parameter("k", 1.0)
    k
    >>> b.reaction("r", "A ->", rate="k*A")
    r
    >>> model = b.build()
    >>> model.events["dose"] = kinabs.Event(
    ...     "dose", trigger=kinabs.TIME >= 2, assignments=(("A", sympy.Integer(1)),))
    >>> result = kinabs.simulate(model, [1.0, 2.0, 3.0], backend="torch")
    >>> np.round(result.values[0, :, 0], 6)  # exp(-1), 1 after the dose, exp(-1)
    array([0.367879, 1.      , 0.367879])
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kinabs._backend import RawSolution
from kinabs._errors import SimulationError
from kinabs._lowering.ops import numpy_ops

__all__ = ["simulate_with_events", "SegmentResult", "MAX_EVENTS_AT_ONE_TIME",
           "MAX_SEGMENTS"]

#: Event executions at one time before the cascade counts as endless.
MAX_EVENTS_AT_ONE_TIME = 1000
#: Segments (solves between events) per simulation before it counts as endless.
MAX_SEGMENTS = 100_000


@dataclass(frozen=True)
class SegmentResult:
    """What :meth:`kinabs.Backend.event_segment` returns for a batch, as numpy arrays:
    ``ys`` (B, T, S) at the save times within ``[t_start, t_end)`` (anything elsewhere);
    ``t_end`` (B,) where it stopped; ``y_end`` (B, S) the state there; ``fired`` (B,) the
    atom whose crossing stopped it, or -1; ``status`` (B,) (0 = success); ``steps`` (B,)."""

    ys: np.ndarray
    t_end: np.ndarray
    y_end: np.ndarray
    fired: np.ndarray
    status: np.ndarray
    steps: np.ndarray


@dataclass
class _Member:
    t: float
    y: np.ndarray
    k: np.ndarray
    sides: np.ndarray
    trig: list[bool]
    pending: list = field(default_factory=list)  # (time, seq, event, values or None)
    status: int = 0
    steps: int = 0
    saved: int = 0  # save times done
    index: int = 0  # in the batch


class _Driver:
    def __init__(self, system, ts, outputs_index, seed: int, batch: int,
                 record: bool = False):
        self.system, self.ev, self.ts = system, system.events, ts
        #: per member, what happened in order (see :func:`simulate_with_events`), or None
        self.tapes: list[list[tuple]] | None = [[] for _ in range(batch)] if record else None
        #: (B, T, O) outputs; NaN until saved
        self.out = np.full((batch, ts.size, len(outputs_index)), np.nan)
        ops = numpy_ops()
        self.fns = system.generated.bind(ops)
        self.atoms, self.values, self.delays, self.priorities = self.ev.bind(ops)
        self.outputs = self.fns.outputs_at(outputs_index)
        self.slices = self.ev.value_slices
        self.rng = random.Random(seed)
        # compartments that events resize -> their state index; the concentration states
        # in each
        states, index = system.states, {x: i for i, x in enumerate(system.states)}
        model = system.model
        self.resized = {c: index[c] for c in model.compartments if c in index}
        self.by_compartment = {c: [index[s] for s, kind in zip(states, system.state_kinds)
                                   if kind == "concentration" and s in model.species
                                   and model.species[s].compartment == c]
                               for c in self.resized}
        self.seq = 0

    # -- one member at one time ---------------------------------------------------
    def _g(self, m: _Member) -> np.ndarray:
        with np.errstate(all="ignore"):
            return np.asarray(self.atoms(np.float64(m.t), m.y, m.k), dtype=np.float64)

    def _fire(self, m: _Member, e: int) -> None:
        event = self.ev.events[e]
        t = np.float64(m.t)
        delay = 0.0
        if event.has_delay:
            delay = float(self.delays(t, m.y, m.k)[e])
            if not delay >= 0:
                raise SimulationError(
                    f"event '{event.id}' fired at t={m.t:g} with delay {delay:g}; a delay "
                    "must be a number >= 0. Fix the event's delay.")
        values = None
        if event.use_values_from_trigger_time:
            values = np.asarray(self.values(t, m.y, m.k), dtype=np.float64)[self.slices[e]]
        self.seq += 1
        m.pending.append((m.t + delay, self.seq, e, values))
        self._note(m, ("fire", self.seq, e))

    def _triggers(self, m: _Member) -> None:
        now = self.ev.truths(m.sides)
        for e, (before, after) in enumerate(zip(m.trig, now)):
            if after and not before:
                self._fire(m, e)
            elif before and not after and not self.ev.events[e].persistent:
                m.pending = [q for q in m.pending if q[2] != e]
        m.trig = now

    def _note(self, m: _Member, entry: tuple) -> None:
        if self.tapes is not None:
            self.tapes[m.index].append(entry)

    def _execute(self, m: _Member, entry) -> None:
        _, seq, e, values = entry
        event = self.ev.events[e]
        t = np.float64(m.t)
        if values is None:
            values = np.asarray(self.values(t, m.y, m.k), dtype=np.float64)[self.slices[e]]
        if not event.targets:
            self._note(m, ("exec", seq, e, ()))
            return
        # SBML: the assignments act together; a species' value is converted to its state
        # (an amount in a resizing compartment) at the sizes before the event, and a
        # compartment the event resizes keeps its species' amounts
        y = m.y.copy()
        species = self.system.model.species
        factors = np.asarray(self.fns.to_state(t, m.y, m.k), dtype=np.float64)
        for i, v in zip(event.targets, values):
            y[i] = v * factors[i] if self.system.states[i] in species else v
        changed = self._keep_amounts(m.y, y, event.targets)
        self._note(m, ("exec", seq, e, changed))
        m.y = y

    def crossed(self, m: _Member, fired: int, g: np.ndarray, sides: np.ndarray) -> None:
        """Sides after atom ``fired`` crossed zero at ``m.t``: every atom of the same
        function ``g`` (``S > 1`` and ``S <= 1`` are two atoms of one) goes to the side
        the flow moves ``g`` to, found by a short step along the vector field (a backend
        cannot tell which of several atoms at zero together crossed); where ``g`` does
        not move, the fired atom leaves its side."""
        group = self.ev.groups[fired]
        t = np.float64(m.t)
        dt = 1e-7 * max(abs(m.t), 1.0)
        with np.errstate(all="ignore"):
            f = np.asarray(self.fns.rhs(t, m.y, m.k), dtype=np.float64)
            ahead = np.asarray(self.atoms(t + dt, m.y + dt * f, m.k), dtype=np.float64)
        move = np.sign(ahead[group] - g[group])
        new = np.where(move != 0, move, -m.sides[fired])
        sides[group] = new if np.all(np.isfinite(new)) else -m.sides[fired]

    def _keep_amounts(self, before: np.ndarray, y: np.ndarray, targets) -> tuple:
        """A compartment resized by an event keeps its species' amounts (SBML): a species
        integrated as a concentration (one with a rate rule) is rescaled by old size /
        new size. Returns the resized compartments."""
        changed = []
        for c, i in self.resized.items():
            if i in targets and y[i] != before[i]:
                changed.append(c)
                for j in self.by_compartment[c]:
                    y[j] = y[j] * before[i] / y[i]
        return tuple(changed)

    def instant(self, m: _Member) -> None:
        """Fire, cancel and execute what is due at ``m.t`` until nothing is."""
        self._triggers(m)
        done, executed = 0, set()
        while True:
            ready = [q for q in m.pending if q[0] <= m.t]
            if not ready:
                return
            if len(ready) > 1:
                pr = np.asarray(self.priorities(np.float64(m.t), m.y, m.k), dtype=np.float64)
                key = [pr[q[2]] if self.ev.events[q[2]].has_priority else -np.inf
                       for q in ready]
                best = max(key)
                tied = [q for q, kv in zip(ready, key) if kv == best]
                entry = tied[0] if len(tied) == 1 else self.rng.choice(
                    sorted(tied, key=lambda q: q[1]))
            else:
                entry = ready[0]
            m.pending.remove(entry)
            executed.add(self.ev.events[entry[2]].id)
            g_before = self._g(m)
            self._execute(m, entry)
            g_after = self._g(m)
            moved = g_after != g_before
            m.sides = np.where(moved, self.ev.update_sides(m.sides, g_after), m.sides)
            self._triggers(m)
            done += 1
            if done > MAX_EVENTS_AT_ONE_TIME:
                raise SimulationError(
                    f"more than {MAX_EVENTS_AT_ONE_TIME} event executions at t={m.t:g}: "
                    f"events {sorted(executed)} keep triggering each other, a cascade that "
                    "does not end. Check the triggers and assignments of these events.")

    def save(self, m: _Member, upto: float, ys: np.ndarray | None, inclusive: bool
             ) -> np.ndarray:
        """Outputs at the save times from ``m.saved`` up to ``upto``: from the segment's
        ``ys`` (T, S), or from the current state where ``ys`` is None."""
        ts = self.ts
        stop = np.searchsorted(ts, upto, side="right" if inclusive else "left")
        idx = np.arange(m.saved, max(stop, m.saved))
        if idx.size:
            states = np.broadcast_to(m.y, (idx.size, m.y.size)) if ys is None else ys[idx]
            with np.errstate(all="ignore"):  # one batched call over the save times
                vals = self.outputs(ts[idx], states, m.k[None, :])
            self.out[m.index, idx] = np.asarray(vals, dtype=np.float64)
            m.saved = int(idx[-1]) + 1
        return idx


def simulate_with_events(system, backend, ts: np.ndarray, p: np.ndarray, *, t0: float,
                         y0: np.ndarray | None, y0_mask: np.ndarray | None,
                         output_index: np.ndarray, solver: Any, seed: int = 0,
                         record: bool = False) -> RawSolution:
    """Simulate a batch (``p``: (B, P)) of a system with events on ``backend``; the same
    arguments and result as :meth:`kinabs.Backend.simulate`.

    With ``record=True`` the result has a ``tapes`` attribute: per member, the list of
    what happened, in order, that ``kinabs._event_gradients`` replays differentiably:
    ``("fire", seq, event)`` (an event fired: its delay and values from trigger time are
    taken now), ``("exec", seq, event, resized)`` (the execution of firing ``seq``;
    ``resized``: the compartments whose species kept their amounts), ``("seg", t_start,
    t_end, atom, seq, lo, hi)`` (a solve from ``t_start`` to ``t_end``, ended by the
    crossing of ``atom`` (-1: by a stop time, the execution time of firing ``seq``, or
    the last save time where ``seq`` is -1), saving the save times ``lo:hi``) and
    ``("final", lo, hi)`` (save times ``lo:hi`` from the final state)."""
    drv = _Driver(system, ts, output_index, seed, p.shape[0], record)
    ev, fns = system.events, drv.fns
    b, t_final = p.shape[0], float(ts[-1])
    members: list[_Member] = []
    with np.errstate(all="ignore"):
        for i in range(b):
            y, k = (np.asarray(a, dtype=np.float64) for a in fns.init(np.float64(t0), p[i]))
            if y0 is not None:
                factors = np.asarray(fns.to_state(np.float64(t0), y, k), dtype=np.float64)
                y = np.where(y0_mask, y0[i] * factors, y)
            m = _Member(t=float(t0), y=y, k=k, sides=np.zeros(len(ev.atoms)),
                        trig=[e.initial_value for e in ev.events], index=i)
            m.sides = ev.initial_sides(drv._g(m))
            members.append(m)
    for m in members:
        drv.instant(m)
    for _ in range(MAX_SEGMENTS):
        live = [m for m in members if m.status == 0 and m.t < t_final]
        if not live:
            break
        t_stop = np.asarray([min([q[0] for q in m.pending] + [t_final]) for m in live])
        # which firing's execution each stop time is (-1: the last save time)
        stop_seq = [min(m.pending)[1] if m.pending and min(m.pending)[0] < t_final else -1
                    for m in live]
        seg = backend.event_segment(
            system, ts, np.asarray([m.t for m in live]), t_stop,
            np.stack([m.y for m in live]), np.stack([m.k for m in live]),
            np.stack([m.sides for m in live]), solver)
        for j, m in enumerate(live):
            m.steps += int(seg.steps[j])
            if seg.status[j] != 0:
                m.status = int(seg.status[j])
                continue
            fired = int(seg.fired[j])
            t_end = float(seg.t_end[j]) if fired >= 0 else float(t_stop[j])
            lo = m.saved
            drv.save(m, t_end, seg.ys[j], inclusive=False)
            drv._note(m, ("seg", m.t, t_end, fired, -1 if fired >= 0 else stop_seq[j], lo,
                          m.saved))
            m.t, m.y = t_end, np.asarray(seg.y_end[j], dtype=np.float64)
            g = drv._g(m)
            sides = ev.update_sides(m.sides, g)
            if fired >= 0:
                drv.crossed(m, fired, g, sides)
            m.sides = sides
            drv.instant(m)
    else:
        raise SimulationError(f"more than {MAX_SEGMENTS} solves between events; the "
                              "events keep firing. Check their triggers.")
    for m in members:
        if m.status == 0:
            lo = m.saved
            drv.save(m, t_final, None, inclusive=True)
            drv._note(m, ("final", lo, m.saved))
    raw = RawSolution(ys=drv.out, status=np.asarray([m.status for m in members]),
                      steps=np.asarray([m.steps for m in members]))
    if record:
        object.__setattr__(raw, "tapes", drv.tapes)
    return raw
