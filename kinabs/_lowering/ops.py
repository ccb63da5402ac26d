"""The operator table: the one meaning of every operation kinabs prints.

Generated right-hand sides call ``ops.<name>(...)`` for every non-arithmetic operation.
:class:`ArrayApiOps` implements each operation once, against the array API standard
(``array_api_compat`` namespaces for numpy and torch; ``jax.numpy`` is compliant), so all
backends share the same definitions; a backend subclasses it only where it has a better
native tool (e.g. the gamma function). ``OPERATIONS`` lists the table; a test checks that
every backend implements every entry and agrees with the numpy reference.

SBML-specific meanings fixed here:

* ``piecewise`` without an otherwise branch is NaN when no condition holds (never 0).
* ``rem(x, y)`` is the truncated remainder (sign of ``x``), ``quotient`` truncates toward 0.
* ``factorial(x)`` is ``gamma(x + 1)``.
* Booleans used as numbers are 1.0 / 0.0.

Example:
    >>> import numpy as np
    >>> from kinabs._lowering.ops import numpy_ops
    >>> float(numpy_ops().rem(np.float64(-7.0), np.float64(2.0)))
    -1.0
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["OPERATIONS", "ArrayApiOps", "numpy_ops"]


#: name -> one-line meaning. Every backend's ops object implements all of them.
OPERATIONS: dict[str, str] = {
    "const": "a float64 scalar array from a Python number",
    "const_bool": "a boolean scalar array from a Python bool",
    "stack": "broadcast scalars/arrays to like.shape[:-1] and stack them on a new last axis",
    "concat": "join two arrays along the last axis",
    "zeros_like": "zeros of the same shape",
    "get": "component i of the last axis",
    "matvec": "v @ M for a constant matrix M made by ops.matrix (stoichiometry products)",
    "matrix": "a constant stoichiometry matrix (dense, or padded-sparse when large)",
    "vector": "a constant float64 vector from a list of numbers",
    "index": "a constant integer index vector from a list",
    "take": "a[..., idx]: gather along the last axis",
    "broadcast_to_last": "x broadcast to like.shape[:-1] + (m,)",
    "concat_all": "join a list of arrays of one batch shape along the last axis",
    "pow": "x ** y, IEEE pow (NaN for a negative base and non-integer exponent)",
    "sqrt": "square root", "exp": "e ** x", "log": "natural logarithm",
    "abs": "absolute value", "floor": "round down", "ceil": "round up",
    "sin": "sine", "cos": "cosine", "tan": "tangent",
    "asin": "arc sine", "acos": "arc cosine", "atan": "arc tangent",
    "sinh": "hyperbolic sine", "cosh": "hyperbolic cosine", "tanh": "hyperbolic tangent",
    "asinh": "inverse hyperbolic sine", "acosh": "inverse hyperbolic cosine",
    "atanh": "inverse hyperbolic tangent",
    "gamma": "the gamma function (factorial(x) = gamma(x + 1))",
    "minimum": "elementwise min, NaN if either is NaN",
    "maximum": "elementwise max, NaN if either is NaN",
    "rem": "truncated remainder x - y*trunc(x/y)",
    "quotient": "trunc(x / y)",
    "where": "cond ? a : b, elementwise",
    "lt": "x < y", "le": "x <= y", "gt": "x > y", "ge": "x >= y", "eq": "x == y",
    "ne": "x != y",
    "logical_and": "a and b", "logical_or": "a or b", "logical_not": "not a",
    "logical_xor": "a xor b",
    "to_float": "a boolean as 1.0 / 0.0",
}


class ArrayApiOps:
    """Every operation of :data:`OPERATIONS`, written once against an array API namespace.

    ``xp`` is an array-API-compliant namespace; ``dtype`` its float64 dtype.
    """

    def __init__(self, xp: Any, *, device: Any = None):
        self.xp = xp
        self.dtype = xp.float64
        self.device = device
        self.nan = self.const(math.nan)
        self.inf = self.const(math.inf)

    # -- construction ----------------------------------------------------------
    def const(self, value: float) -> Any:
        return self.xp.asarray(float(value), dtype=self.dtype, device=self.device)

    def const_bool(self, value: bool) -> Any:
        return self.xp.asarray(bool(value), device=self.device)

    def matrix(self, array: Any) -> Any:
        return StoichiometryMatrix.build(self, array)

    def vector(self, values: list[float]) -> Any:
        return self.xp.asarray(values, dtype=self.dtype, device=self.device)

    def index(self, values: list[int]) -> Any:
        return self.xp.asarray(values, dtype=self.xp.int64, device=self.device)

    def take(self, a: Any, idx: Any) -> Any:
        return a[..., idx]

    def broadcast_to_last(self, x: Any, like: Any, m: int) -> Any:
        shape = (*tuple(like.shape[:-1]), m)
        if not hasattr(x, "shape"):
            x = self.const(x)
        return x if tuple(x.shape) == shape else self.xp.broadcast_to(x, shape)

    def concat_all(self, arrays: list[Any]) -> Any:
        return self.xp.concat(arrays, axis=-1)

    def stack(self, items: list[Any], like: Any) -> Any:
        xp = self.xp
        shape = tuple(like.shape[:-1])
        if not items:
            return xp.zeros((*shape, 0), dtype=self.dtype, device=self.device)
        arrays = [
            xp.broadcast_to(x if hasattr(x, "shape") else self.const(x), shape)
            if not hasattr(x, "shape") or tuple(x.shape) != shape else x
            for x in items
        ]
        return xp.stack(arrays, axis=-1)

    def concat(self, a: Any, b: Any) -> Any:
        return self.xp.concat([a, b], axis=-1)

    def zeros_like(self, a: Any) -> Any:
        return self.xp.zeros_like(a)

    def get(self, a: Any, i: int) -> Any:
        return a[..., i]

    def trailing(self, x: Any) -> Any:
        """``x`` with a trailing axis of length 1 (a Python number becomes shape (1,))."""
        if not hasattr(x, "shape"):
            x = self.const(x)
        return x[..., None]

    def column(self, a: Any, i: int) -> Any:
        """Component ``i`` of the last axis, kept as an axis of length 1 (it broadcasts
        against a group's (..., m) arrays where ``get``'s (...,) would not)."""
        return a[..., i:i + 1]

    def matvec(self, v: Any, m: Any) -> Any:
        if m.dense is not None:
            return self.xp.matmul(v, m.dense)
        gathered = v[..., m.rows]  # (..., states * width)
        gathered = self.xp.reshape(gathered, (*tuple(v.shape[:-1]), m.n_states, m.width))
        return self.xp.sum(gathered * m.coef, axis=-1)

    # -- arithmetic functions --------------------------------------------------
    def pow(self, x, y):
        return self.xp.pow(x, y)

    def sqrt(self, x):
        return self.xp.sqrt(x)

    def exp(self, x):
        return self.xp.exp(x)

    def log(self, x):
        return self.xp.log(x)

    def abs(self, x):
        return self.xp.abs(x)

    def floor(self, x):
        return self.xp.floor(x)

    def ceil(self, x):
        return self.xp.ceil(x)

    def sin(self, x):
        return self.xp.sin(x)

    def cos(self, x):
        return self.xp.cos(x)

    def tan(self, x):
        return self.xp.tan(x)

    def asin(self, x):
        return self.xp.asin(x)

    def acos(self, x):
        return self.xp.acos(x)

    def atan(self, x):
        return self.xp.atan(x)

    def sinh(self, x):
        return self.xp.sinh(x)

    def cosh(self, x):
        return self.xp.cosh(x)

    def tanh(self, x):
        return self.xp.tanh(x)

    def asinh(self, x):
        return self.xp.asinh(x)

    def acosh(self, x):
        return self.xp.acosh(x)

    def atanh(self, x):
        return self.xp.atanh(x)

    def gamma(self, x):
        raise NotImplementedError("the backend's ops must provide gamma")

    def minimum(self, x, y):
        return self.xp.minimum(x, y)

    def maximum(self, x, y):
        return self.xp.maximum(x, y)

    def rem(self, x, y):
        return x - y * self.xp.trunc(x / y)

    def quotient(self, x, y):
        return self.xp.trunc(x / y)

    # -- logic -----------------------------------------------------------------
    def where(self, cond, a, b):
        xp = self.xp
        if not hasattr(a, "shape"):
            a = self.const(a)
        if not hasattr(b, "shape"):
            b = self.const(b)
        if not hasattr(cond, "shape"):
            cond = self.const_bool(cond)
        return xp.where(cond, a, b)

    def lt(self, x, y):
        return self.xp.less(x, y)

    def le(self, x, y):
        return self.xp.less_equal(x, y)

    def gt(self, x, y):
        return self.xp.greater(x, y)

    def ge(self, x, y):
        return self.xp.greater_equal(x, y)

    def eq(self, x, y):
        return self.xp.equal(x, y)

    def ne(self, x, y):
        return self.xp.not_equal(x, y)

    def logical_and(self, a, b):
        return self.xp.logical_and(a, b)

    def logical_or(self, a, b):
        return self.xp.logical_or(a, b)

    def logical_not(self, a):
        return self.xp.logical_not(a)

    def logical_xor(self, a, b):
        return self.xp.logical_xor(a, b)

    def to_float(self, a):
        return self.xp.astype(a, self.dtype)


class StoichiometryMatrix:
    """A constant (reactions x states) matrix for ``v @ N``: dense when small, else each
    state's nonzero column entries padded to the widest column (a gather, a multiply and
    a sum: linear in the number of nonzeros, and array-API only)."""

    #: matrices with more entries than this are stored padded-sparse
    DENSE_LIMIT = 40_000

    def __init__(self, dense=None, rows=None, coef=None, n_states=0, width=0):
        self.dense, self.rows, self.coef = dense, rows, coef
        self.n_states, self.width = n_states, width

    @classmethod
    def build(cls, ops: ArrayApiOps, array: Any) -> StoichiometryMatrix:
        import numpy as np

        a = np.asarray(array, dtype=np.float64)
        if a.size <= cls.DENSE_LIMIT:
            return cls(dense=ops.xp.asarray(a, dtype=ops.dtype, device=ops.device))
        n_r, n_s = a.shape
        columns = [np.flatnonzero(a[:, s]) for s in range(n_s)]
        width = max(1, max(len(c) for c in columns))
        rows = np.zeros((n_s, width), dtype=np.int64)
        coef = np.zeros((n_s, width))
        for s, c in enumerate(columns):
            rows[s, :len(c)] = c
            coef[s, :len(c)] = a[c, s]
        return cls(rows=ops.xp.asarray(rows.ravel(), dtype=ops.xp.int64, device=ops.device),
                   coef=ops.xp.asarray(coef, dtype=ops.dtype, device=ops.device),
                   n_states=n_s, width=width)


class _NumpyOps(ArrayApiOps):
    def gamma(self, x):
        from scipy.special import gamma

        return self.xp.asarray(gamma(x), dtype=self.dtype)


def numpy_ops() -> ArrayApiOps:
    """The numpy reference implementation of the operator table."""
    import array_api_compat.numpy as xp

    return _NumpyOps(xp)
