"""Powers with a symbolic exponent, differentiated without ``0/0`` at a zero base.

sympy differentiates ``b**e`` (``e`` not a number) as ``e * b**e / b``, which is ``0/0``
(NaN) at ``b = 0`` even where the derivative exists: ``npSTAT5**SOCS3prom`` with the
state at its initial value 0 and the fitted exponent 1.0000000000001 (Merkle 2016) gave
a NaN Jacobian, so every Rosenbrock step failed. The derivative by the exponent,
``b**e * log(b)``, is ``0 * -inf`` there, although its limit is 0 for ``e > 0``.

Before differentiating, :func:`guard_powers` writes such powers as :class:`PowerOf`,
whose derivatives are ``e * PowerOf(b, e - 1)`` and :class:`PowerLog` (``b**e *
log(b)**m``, with ``log`` of a zero base taken as ``log 1``: 0 for ``e > 0``, as JAX and
torch do in their own derivative rules). The code printer prints both
(:func:`plain_powers` turns them back into ordinary sympy expressions).

Example:
    >>> import sympy
    >>> from kinabs._lowering.powers import guard_powers, plain_powers
    >>> x, n = sympy.symbols("x n")
    >>> sympy.diff(x**n, x)
    n*x**n/x
    >>> plain_powers(sympy.diff(guard_powers(x**n), x))
    n*x**(n - 1)
"""

from __future__ import annotations

import sympy

__all__ = ["PowerOf", "PowerLog", "guard_powers", "plain_powers"]


class PowerOf(sympy.Function):
    """``b**e`` whose derivative by ``b`` is ``e * b**(e - 1)``."""

    nargs = 2

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        b, e = self.args
        if argindex == 1:
            return e * PowerOf(b, e - 1)
        return PowerLog(b, e, sympy.Integer(1))


class PowerLog(sympy.Function):
    """``b**e * log(b)**m`` (``m`` a non-negative integer), 0 at ``b = 0`` when ``e > 0``."""

    nargs = 3

    @classmethod
    def eval(cls, b, e, m):
        if m == 0:
            return PowerOf(b, e)
        return None

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        b, e, m = self.args
        if argindex == 1:
            return e * PowerLog(b, e - 1, m) + m * PowerLog(b, e - 1, m - 1)
        if argindex == 2:
            return PowerLog(b, e, m + 1)
        return sympy.Integer(0)


def guard_powers(e: sympy.Basic) -> sympy.Basic:
    """``e`` with every power whose exponent has symbols written as :class:`PowerOf`."""
    return e.replace(lambda x: isinstance(x, sympy.Pow) and bool(x.exp.free_symbols),
                     lambda x: PowerOf(x.base, x.exp))


def _safe_log(b: sympy.Expr) -> sympy.Expr:
    return sympy.log(sympy.Piecewise((sympy.Integer(1), sympy.Eq(b, 0)), (b, True)))


def plain_powers(e: sympy.Basic) -> sympy.Basic:
    """``e`` with :class:`PowerOf` and :class:`PowerLog` as ordinary sympy expressions."""
    if not e.has(PowerOf, PowerLog):
        return e
    e = e.replace(lambda x: isinstance(x, PowerLog),
                  lambda x: PowerOf(x.args[0], x.args[1]) * _safe_log(x.args[0]) ** x.args[2])
    return e.replace(lambda x: isinstance(x, PowerOf), lambda x: sympy.Pow(*x.args))
