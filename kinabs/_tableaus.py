"""Rosenbrock tableaus (Hairer-Wanner form, as in RODAS and OrdinaryDiffEq.jl).

A step of size ``h`` from ``(t, y)`` solves, for each stage ``i``,

    (I / (h * gamma) - J) U_i = f(t + c_i h, y + sum_j A_ij U_j) + sum_j (C_ij / h) U_j
                                + h d_i df/dt

then ``y_new = y + sum_i b_i U_i`` and ``error = sum_i btilde_i U_i``. Both methods here
are L-stable and stiffly accurate (``b`` is the last row of ``A`` plus the last stage).

Sources: Rodas4, Hairer & Wanner, Solving ODEs II (1996); Rodas5, Di Marzo (1993). The
coefficients are the ones published with those methods (as tabulated in
OrdinaryDiffEq.jl's ``rosenbrock_tableaus.jl``); ``tests/test_torch_backend.py`` checks
their order of convergence.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

__all__ = ["RosenbrockTableau", "RODAS4", "RODAS5"]


@dataclass(frozen=True, eq=False)
class RosenbrockTableau:
    """Coefficients of a Rosenbrock method; ``order`` is the order of the solution and
    ``error_order`` the order of the embedded estimate (step-size exponent
    ``1 / (error_order + 1)``)."""

    name: str
    gamma: float
    A: np.ndarray  # (s, s) strictly lower triangular
    C: np.ndarray  # (s, s) strictly lower triangular
    c: np.ndarray  # (s,)
    d: np.ndarray  # (s,)
    order: int
    error_order: int

    @property
    def stages(self) -> int:
        return len(self.c)

    @cached_property
    def coefficients(self) -> tuple[list, list, list, list, list]:
        """(A, C, c, d, b) as Python floats (cheap to use in a per-step loop)."""
        return (self.A.tolist(), self.C.tolist(), self.c.tolist(), self.d.tolist(),
                self.b.tolist())

    @property
    def b(self) -> np.ndarray:
        return np.append(self.A[-1, :-1], 1.0)

    @property
    def btilde(self) -> np.ndarray:
        return np.eye(self.stages)[-1]


def _lower(rows: list[list[float]]) -> np.ndarray:
    s = len(rows) + 1
    out = np.zeros((s, s))
    for i, row in enumerate(rows, start=1):
        out[i, : len(row)] = row
    return out


RODAS4 = RosenbrockTableau(
    name="rodas4",
    gamma=0.25,
    A=_lower([
        [1.544],
        [0.9466785280815826, 0.2557011698983284],
        [3.314825187068521, 2.896124015972201, 0.9986419139977817],
        [1.221224509226641, 6.019134481288629, 12.53708332932087, -0.687886036105895],
        [1.221224509226641, 6.019134481288629, 12.53708332932087, -0.687886036105895, 1.0],
    ]),
    C=_lower([
        [-5.6688],
        [-2.430093356833875, -0.2063599157091915],
        [-0.1073529058151375, -9.594562251023355, -20.47028614809616],
        [7.496443313967647, -10.24680431464352, -33.99990352819905, 11.7089089320616],
        [8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136,
         -6.058818238834054],
    ]),
    c=np.array([0.0, 0.386, 0.21, 0.63, 1.0, 1.0]),
    d=np.array([0.25, -0.1043, 0.1035, -0.0362, 0.0, 0.0]),
    order=4,
    error_order=3,
)

_R5 = [-14.09640773051259, 6.925207756232704, -41.47510893210728, 2.343771018586405,
       24.13215229196062]
RODAS5 = RosenbrockTableau(
    name="rodas5",
    gamma=0.19,
    A=_lower([
        [2.0],
        [3.040894194418781, 1.041747909077569],
        [2.576417536461461, 1.62208306077664, -0.9089668560264532],
        [2.760842080225597, 1.446624659844071, -0.3036980084553738, 0.2877498600325443],
        _R5,
        [*_R5, 1.0],
        [*_R5, 1.0, 1.0],
    ]),
    C=_lower([
        [-10.31323885133993],
        [-21.04823117650003, -7.234992135176716],
        [32.22751541853323, -4.943732386540191, 19.44922031041879],
        [-20.69865579590063, -8.816374604402768, 1.260436877740897, -0.7495647613787146],
        [-46.22004352711257, -17.49534862857472, -289.6389582892057, 93.60855400400906,
         318.3822534212147],
        [34.20013733472935, -14.1553540271769, 57.823356409884, 25.83362985412365,
         1.408950972071624, -6.551835421242162],
        [42.57076742291101, -13.80770672017997, 93.98938432427124, 18.77919633714503,
         -31.5835918722337, -6.685968952921985, -5.810979938412932],
    ]),
    c=np.array([0.0, 0.38, 0.3878509998321533, 0.483971893787384, 0.457047700881958,
                1.0, 1.0, 1.0]),
    d=np.array([0.19, -0.1823079225333714636, -0.319231832186874912, 0.3449828624725343,
                -0.377417564392089818, 0.0, 0.0, 0.0]),
    order=5,
    error_order=4,
)
