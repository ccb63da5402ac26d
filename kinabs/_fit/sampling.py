"""Initial guesses for multi-start fits: seeded Latin hypercube sampling (scipy.stats.qmc).

Bounds are *factors* of each base value (as in the seed: ``lower_bound=1/10,
upper_bound=10`` samples between a tenth and ten times the base value). Sampling is
uniform between the bounds by default (as the seed does) or log-uniform with
``log=True``, which spreads starts evenly over orders of magnitude.

Example:
    >>> from kinabs._fit.sampling import latin_hypercube
    >>> df = latin_hypercube({"k1": 1.0, "k2": 2.0}, lower_bound=0.1, upper_bound=10, n=4,
    ...                      seed=0)
    >>> df.shape, bool((df["k2"] >= 0.2).all() and (df["k2"] <= 20).all())
    ((4, 2), True)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kinabs._errors import DataError

__all__ = ["latin_hypercube"]


def latin_hypercube(base: Mapping[str, float], *, lower_bound: float, upper_bound: float,
                    n: int, seed: int | None = None, log: bool = False):
    """``n`` Latin hypercube samples around ``base`` as a DataFrame (one row per sample)."""
    import pandas as pd
    from scipy.stats import qmc

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DataError(f"the number of samples N must be a positive integer; got {n!r}.")
    lo, hi = float(lower_bound), float(upper_bound)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise DataError(f"bounds must be finite; got lower={lower_bound}, upper={upper_bound}.")
    if lo > hi:
        raise DataError(f"lower_bound ({lo}) is above upper_bound ({hi}); swap them.")
    if log and lo <= 0:
        raise DataError(f"log-uniform sampling needs positive bound factors; got "
                        f"lower_bound={lo}. Use a positive factor such as 1e-3.")
    names = list(base)
    if not names:
        raise DataError("base_parameters is empty; give a value for each parameter to sample.")
    values = np.asarray([float(base[k]) for k in names])
    if not np.all(np.isfinite(values)):
        raise DataError("base parameter values must be finite.")
    # scipy's Latin hypercube: one sample per stratum on every axis, uniform within it;
    # a Generator seeded here gives the same samples for the same seed (and scipy version)
    u = qmc.LatinHypercube(len(names), seed=np.random.default_rng(seed)).random(n)
    if log:
        factors = np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo)))
    else:
        factors = lo + u * (hi - lo)
    return pd.DataFrame(factors * values, columns=names)
