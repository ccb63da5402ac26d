"""The "auto" solver policy, decided once for every backend.

``SolverOptions(method="auto")`` means: try a cheap explicit solve first, capped at a
number of steps the backend chooses; redo what it cannot finish with the implicit
solver; redo what that cannot finish either with the explicit solver and every step
allowed (an implicit solver can fail where the explicit one only needs many steps:
diffrax's Kvaerno5, the JAX stiff solver before Rodas5, never converged its chord
iterations on Bachmann_MSB2011 at rtol 1e-12, where Tsit5 needs 28,000 steps). Each
stage runs only the batch members the stages before it failed.

Backends differ only in the explicit step cap they ask for (an eager torch step costs
far more than a compiled JAX one) and in whether an explicit first stage makes sense at
all (torch's explicit solver shares one step size across a batch, so its fits start
with the implicit one: ``explicit_cap=None``).

Example:
    >>> import kinabs
    >>> from kinabs._stages import solve_stages
    >>> [(s.method, s.max_steps) for s in solve_stages(kinabs.SolverOptions(),
    ...                                                explicit_cap=4096)]
    [('nonstiff', 4096), ('stiff', 100000), ('nonstiff', 100000)]
    >>> [(s.method, s.max_steps) for s in solve_stages(kinabs.SolverOptions(method="stiff"),
    ...                                                explicit_cap=4096)]
    [('stiff', 100000)]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kinabs._options import SolverOptions

__all__ = ["SolveStage", "solve_stages", "run_stages"]


@dataclass(frozen=True)
class SolveStage:
    """One solve of the policy: ``method`` is ``"nonstiff"``, ``"stiff"`` or the user's
    solver object, with at most ``max_steps`` steps."""

    method: Any
    max_steps: int


def solve_stages(options: SolverOptions, *, explicit_cap: int | None
                 ) -> tuple[SolveStage, ...]:
    """The solves to try in order, each for the members the ones before it failed.

    ``explicit_cap``: the most steps of the first, explicit stage of ``"auto"`` (``None``:
    no explicit stage; ``"auto"`` then starts with the implicit solver)."""
    steps = options.max_steps
    if options.method != "auto":
        return (SolveStage(options.method, steps),)
    if explicit_cap is None:
        return (SolveStage("stiff", steps),)
    cap = min(steps, explicit_cap)
    stages = [SolveStage("nonstiff", cap), SolveStage("stiff", steps)]
    if cap < steps:
        stages.append(SolveStage("nonstiff", steps))
    return tuple(stages)


def run_stages(stages: tuple[SolveStage, ...], n: int,
               solve: Callable[[SolveStage, np.ndarray], tuple[np.ndarray, ...]]
               ) -> tuple[np.ndarray, ...]:
    """Run ``stages`` over a batch of ``n`` members: ``solve(stage, members)`` returns
    arrays whose first axis runs over ``members`` and whose second array is the status
    (0 = success); each later stage redoes only the members still failing. An optional
    fourth array, False for a member that no other solver can help (its start is not
    finite), keeps that member out of later stages."""
    members = np.arange(n)
    out: list[np.ndarray] | None = None
    for stage in stages:
        part = [np.asarray(a) for a in solve(stage, members)]
        if out is None:
            out = [a.copy() for a in part]
        else:
            for full, sub in zip(out, part):
                full[members] = sub
        retry = out[1] != 0
        if len(out) > 3:
            retry &= out[3].astype(bool)
        members = np.flatnonzero(retry)
        if not members.size:
            break
    return tuple(out)
