"""Why a solve failed before it started: the generated functions evaluated once at ``t0``
on numpy, and the first quantity that is not finite named by its model id.

A NaN or infinite initial value, a derived constant that divides by zero, a reaction rate
that is NaN at the start or a state in a compartment of size zero make every solver fail,
and the solver's own report (``max_steps_reached``, ``nonfinite``) then points at the
wrong fix. This runs only after a solve failed, so successful solves pay nothing.

Example:
    >>> import kinabs
    >>> from kinabs._lowering.diagnose import nonfinite_at_start
    >>> b = kinabs.ModelBuilder("pole")
    >>> _ = b.compartment("c", size=1.0)
    >>> _ = b.species("A", initial_concentration=1.0)
    >>> _ = b.parameter("k", 1.0)
    >>> _ = b.reaction("R", "A ->", rate="k / (A - 1)")
    >>> print(nonfinite_at_start(kinabs.lower(b.build()), 0.0))
    at t0 = 0: the rate of reaction 'R' (inf) is not finite; a compartment of size 0 or a division by zero?
"""

from __future__ import annotations

import numpy as np

from kinabs._lowering.ops import numpy_ops
from kinabs._lowering.system import OdeSystem

__all__ = ["nonfinite_at_start"]

_HINT = "a compartment of size 0 or a division by zero?"


def _first(names, values) -> str | None:
    bad = [(n, v) for n, v in zip(names, np.asarray(values, dtype=float).reshape(-1))
           if not np.isfinite(v)]
    if not bad:
        return None
    shown = ", ".join(f"'{n}' ({v})" for n, v in bad[:5])
    return shown + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")


def nonfinite_at_start(system: OdeSystem, t0: float, parameters: np.ndarray | None = None,
                       y0: np.ndarray | None = None, y0_mask: np.ndarray | None = None
                       ) -> str | None:
    """The first non-finite quantity at ``t0`` (derived constants, initial values, reaction
    rates, derivatives), named by model id; ``None`` when everything is finite there.
    ``parameters`` (P,) default to the model's; ``y0`` (S,) in natural units where
    ``y0_mask``."""
    fns = system._cache.get("numpy")
    if fns is None:
        fns = system._cache["numpy"] = system.generated.bind(numpy_ops())
    p = system.parameter_defaults if parameters is None else np.asarray(parameters, float)
    t = np.float64(t0)
    with np.errstate(all="ignore"):
        y, k = fns.init(t, p)
        if y0 is not None and y0_mask is not None:
            y = np.where(y0_mask, np.asarray(y0, float) * fns.to_state(t, y, k), y)
        checks = [("the value of", system.constants, k),
                  ("the initial value of", system.states, y)]
        if np.all(np.isfinite(k)) and np.all(np.isfinite(y)):
            checks += [("the rate of reaction", system.reaction_ids, fns.rates(t, y, k)),
                       ("the derivative of", system.states, fns.rhs(t, y, k))]
        for what, names, values in checks:
            found = _first(names, values)
            if found:
                return f"at t0 = {t0:g}: {what} {found} is not finite; {_HINT}"
    return None
