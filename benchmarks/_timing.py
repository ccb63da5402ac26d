"""The one timing rule of the benchmark scripts (kinabs' and the peers' venvs alike:
plain numpy, importable from any script in this folder)."""

from __future__ import annotations

import time

import numpy as np


def median_ms(fn, repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``fn`` after one warm-up call, in ms."""
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return 1e3 * float(np.median(out))
