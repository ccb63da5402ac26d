"""A Rosenbrock solver (Rodas5 by default) for diffrax: the JAX backend's stiff method.

diffrax's implicit solvers (Kvaerno3/4/5) solve a nonlinear system per stage by chord
iterations. A Rosenbrock method needs no iteration: one Jacobian and one linear system
per step, the same matrix for every stage. On the serine model with 100 perturbed
parameter sets (rtol 1e-8, atol 1e-10; ``benchmarks/bench_simulate.py``) Kvaerno5 took
77,547 steps and 2.6 s, this solver 11,093 steps and 0.06 s, every member agreeing with
a converged reference within 2e-6 of each state's largest value. It is the method
kinabs' torch backend uses (``kinabs.backends.torch.Rosenbrock``), with the same
coefficients (:mod:`kinabs._tableaus`), so the two backends solve stiff models alike.

The Jacobian is the system's symbolic one where the term carries it (a
:class:`JacobianTerm`: kinabs' solves pass the generated, sparse Jacobian of
``kinabs._lowering.jacobian``), else ``jax.jacfwd`` of the vector field. On
Lang_PLOSComputBiol2024 (124 species, 1175 nonzero entries of 15,376) the symbolic one
costs a fraction of the 124 tangents of ``jacfwd``. A vector field that depends on time
gets its time derivative by one ``jax.jvp`` (free when it does not: the tangent is a
symbolic zero).
Small systems invert the stage matrix by Gauss-Jordan elimination written in jax.numpy
(fused by XLA; LAPACK's call costs more than the arithmetic below about 10 states),
larger ones by LAPACK's LU. Dense output (``SaveAt(ts=...)``, events) is the cubic
Hermite interpolant, as for diffrax's Kvaerno methods.

Example:
    A stiff linear problem, ``y' = -1000 (y - cos t)``, ``y(0) = 0``, against its exact
    solution:

    >>> import diffrax, jax, jax.numpy as jnp, numpy as np
    >>> from kinabs.backends.jax._rosenbrock import Rosenbrock
    >>> with jax.enable_x64(True):
    ...     sol = diffrax.diffeqsolve(
    ...         diffrax.ODETerm(lambda t, y, a: -1000.0 * (y - jnp.cos(t))), Rosenbrock(),
    ...         t0=0.0, t1=1.0, dt0=None, y0=jnp.array([0.0]),
    ...         stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-10))
    >>> exact = (1e6 * np.cos(1.0) + 1e3 * np.sin(1.0) - 1e6 * np.exp(-1e3)) / (1e6 + 1)
    >>> bool(abs(float(sol.ys[-1, 0]) - exact) < 1e-8)
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import diffrax
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from kinabs._tableaus import RODAS5, RosenbrockTableau

__all__ = ["JacobianTerm", "Rosenbrock", "SMALL_SYSTEM"]

#: Systems with at most this many states invert the stage matrix in jax.numpy.
SMALL_SYSTEM = 10


def _gauss_jordan_inverse(w: jnp.ndarray) -> jnp.ndarray:
    """The inverse of a small square matrix by Gauss-Jordan elimination with partial
    pivoting, unrolled (``n`` rounds of whole-row operations)."""
    n = w.shape[0]
    m = jnp.concatenate([w, jnp.eye(n, dtype=w.dtype)], axis=1)
    for k in range(n):
        p = k + jnp.argmax(jnp.abs(m[k:, k]))
        row_k, row_p = m[k], m[p]
        m = m.at[k].set(row_p).at[p].set(row_k)
        m = m.at[k].set(m[k] / m[k, k])
        m = m - jnp.outer(m[:, k].at[k].set(0.0), m[k])
    return m[:, n:]


def _linear_solver(w: jnp.ndarray) -> Callable[[jnp.ndarray], jnp.ndarray]:
    if w.shape[0] <= SMALL_SYSTEM:
        inverse = _gauss_jordan_inverse(w)
        return lambda r: inverse @ r
    lu = jsl.lu_factor(w)
    return lambda r: jsl.lu_solve(lu, r)


class JacobianTerm(diffrax.ODETerm):
    """An ODE term that knows its Jacobian: ``jacobian(t, y, args) -> (S, S)``, the
    derivative of ``vector_field(t, y, args)`` with respect to ``y``."""

    jacobian: Callable = None


class Rosenbrock(diffrax.AbstractAdaptiveSolver):
    """An L-stable, stiffly accurate Rosenbrock method for ``diffrax.diffeqsolve`` on a
    1-D state: ``Rosenbrock()`` is Rodas5 (order 5, embedded order 4),
    ``Rosenbrock(RODAS4)`` Rodas4.

    ``SolverOptions(method="stiff")`` on the JAX backend is this solver; pass an instance
    as ``method=`` to choose the tableau."""

    tableau: RosenbrockTableau = RODAS5
    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar[Callable] = (
        diffrax.ThirdOrderHermitePolynomialInterpolation.from_k)

    def order(self, terms) -> int:
        return self.tableau.order

    def error_order(self, terms) -> int:
        return self.tableau.error_order + 1

    def init(self, terms, t0, t1, y0, args):
        return None

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump
        tab = self.tableau
        a, c_mat, c, d, _ = tab.coefficients
        h = t1 - t0

        def f(t, y):
            return terms.vf(t, y, args)

        f0, ft = jax.jvp(lambda t: f(t, y0), (t0,), (jnp.ones_like(t0),))
        jacobian = getattr(terms, "jacobian", None)
        if jacobian is not None:
            jac = jacobian(t0, y0, args)
        else:
            jac = jax.jacfwd(lambda y: f(t0, y))(y0)
        w = jnp.eye(y0.shape[0], dtype=y0.dtype) / (h * tab.gamma) - jac
        solve = _linear_solver(w)
        stages: list[jnp.ndarray] = []
        yi = y0
        for i in range(tab.stages):
            if i == 0:
                r = f0
            else:
                yi = y0 + sum(a[i][j] * stages[j] for j in range(i) if a[i][j] != 0.0)
                r = f(t0 + c[i] * h, yi)
                for j in range(i):
                    if c_mat[i][j] != 0.0:
                        r = r + (c_mat[i][j] / h) * stages[j]
            if d[i] != 0.0:
                r = r + (d[i] * h) * ft
            stages.append(solve(r))
        # stiffly accurate: the last stage's input plus the last stage is the solution,
        # and the last stage alone is the embedded error estimate
        y1 = yi + stages[-1]
        f1 = f(t1, y1)
        dense = dict(y0=y0, y1=y1, k=jnp.stack([h * f0, h * f1]))
        return y1, stages[-1], dense, None, diffrax.RESULTS.successful
