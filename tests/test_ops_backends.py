"""Every backend's operator table covers kinabs._lowering.ops.OPERATIONS and agrees with numpy,
operation by operation and on random expression trees printed by kinabs' own printer."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import sympy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kinabs._lowering.ops import OPERATIONS, numpy_ops
from kinabs._lowering.printer import Printer
from kinabs._model import Quotient, Rem


def _backends():
    out = [pytest.param("numpy", id="numpy")]
    for name in ("jax", "torch"):
        try:
            __import__(name)
        except ImportError:
            out.append(pytest.param(name, marks=pytest.mark.skip(f"{name} not installed")))
        else:
            out.append(pytest.param(name, id=name))
    return out


BACKENDS = _backends()


def _ops(name):
    """(ops, to_array, to_numpy, context) for one backend."""
    if name == "numpy":
        return numpy_ops(), np.asarray, np.asarray, contextlib.nullcontext
    if name == "jax":
        import jax

        from kinabs.backends.jax import JaxOps

        with jax.enable_x64(True):
            ops = JaxOps()
        return ops, jax.numpy.asarray, np.asarray, lambda: jax.enable_x64(True)
    import torch

    from kinabs.backends.torch import TorchOps

    return (TorchOps(), lambda a: torch.as_tensor(a), lambda a: a.cpu().numpy(),
            contextlib.nullcontext)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_operation_is_implemented(backend):
    ops = _ops(backend)[0]
    missing = [n for n in OPERATIONS if not callable(getattr(ops, n, None))]
    assert not missing, f"{backend} ops lack {missing}"


_X = np.array([-3.7, -2.0, -1.5, -0.5, -0.0, 0.0, 0.3, 0.5, 1.0, 2.5, 7.0, 40.0, np.inf,
               -np.inf, np.nan])
_Y = np.array([2.0, -2.0, 0.5, 3.0, 1.0, -1.0, 2.0, -0.5, 0.0, 1.5, -3.0, 0.1, 2.0, 3.0, 1.0])
_UNARY = ["sqrt", "exp", "log", "abs", "floor", "ceil", "sin", "cos", "tan", "asin", "acos",
          "atan", "sinh", "cosh", "tanh", "asinh", "acosh", "atanh", "gamma"]
_BINARY = ["pow", "minimum", "maximum", "rem", "quotient", "lt", "le", "gt", "ge", "eq", "ne"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", _UNARY + _BINARY)
def test_operation_matches_numpy(backend, op):
    ref_ops = numpy_ops()
    ops, arr, to_np, ctx = _ops(backend)
    args = (_X,) if op in _UNARY else (_X, _Y)
    with np.errstate(all="ignore"):
        expected = np.asarray(getattr(ref_ops, op)(*args))
    with ctx(), np.errstate(all="ignore"):
        got = to_np(getattr(ops, op)(*(arr(a) for a in args)))
    assert got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=1e-13, atol=0, equal_nan=True,
                               err_msg=f"{backend}.{op}")
    if op in ("rem", "quotient"):  # truncated, sign of x: rem(-7, 2) = -1
        with ctx():
            v = to_np(getattr(ops, op)(arr(np.array([-7.0, 7.0])), arr(np.array([2.0, -2.0]))))
        assert v.tolist() == ([-1.0, 1.0] if op == "rem" else [-3.0, -3.0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_logic_where_and_construction(backend):
    ops, arr, to_np, ctx = _ops(backend)
    a = np.array([True, False, True])
    b = np.array([True, True, False])
    with ctx():
        A, B = arr(a), arr(b)
        assert to_np(ops.logical_and(A, B)).tolist() == [True, False, False]
        assert to_np(ops.logical_or(A, B)).tolist() == [True, True, True]
        assert to_np(ops.logical_xor(A, B)).tolist() == [False, True, True]
        assert to_np(ops.logical_not(A)).tolist() == [False, True, False]
        assert to_np(ops.to_float(A)).tolist() == [1.0, 0.0, 1.0]
        w = to_np(ops.where(A, 1.0, 2.0))
        assert w.dtype == np.float64 and w.tolist() == [1.0, 2.0, 1.0]
        y = arr(np.arange(6.0).reshape(2, 3))
        s = to_np(ops.stack([ops.get(y, 2), 5.0, ops.const(1.0)], like=y))
        assert s.shape == (2, 3) and s[:, 1].tolist() == [5.0, 5.0]
        assert to_np(ops.concat(y, y)).shape == (2, 6)
        assert to_np(ops.matvec(y, ops.matrix(np.eye(3)))).tolist() == [[0, 1, 2], [3, 4, 5]]
        assert to_np(ops.zeros_like(y)).sum() == 0.0
        assert to_np(ops.const(2)).dtype == np.float64 and bool(to_np(ops.const_bool(True)))


# -- random expression trees through the printer ---------------------------------------
Y0, Y1 = sympy.Symbol("@y0", real=True), sympy.Symbol("@y1", real=True)
_UNARY_SYMPY = [sympy.exp, sympy.log, sympy.sqrt, sympy.Abs, sympy.sin, sympy.atan,
                sympy.tanh, sympy.floor, sympy.asinh, sympy.cosh]
_BINARY_SYMPY = [
    lambda a, b: a + b, lambda a, b: a * b, lambda a, b: a / b, lambda a, b: a - b,
    lambda a, b: sympy.Pow(a, b, evaluate=False), sympy.Min, sympy.Max, Rem, Quotient,
    lambda a, b: sympy.Piecewise((a, b > a)),  # no otherwise branch: NaN
    lambda a, b: sympy.Piecewise((a, sympy.And(a > 0, b < 1)), (b, True)),
]


def _trees():
    leaves = st.sampled_from([Y0, Y1, sympy.Float(0.5), sympy.Integer(2), sympy.Integer(-3)])

    def apply(f, *args):
        try:
            return f(*args)
        except (ValueError, TypeError, NotImplementedError):  # e.g. Min(nan, x)
            return sympy.nan

    def extend(children):
        unary = st.builds(apply, st.sampled_from(_UNARY_SYMPY), children)
        binary = st.builds(apply, st.sampled_from(_BINARY_SYMPY), children, children)
        return (unary | binary).filter(_printable)

    return st.recursive(leaves, extend, max_leaves=6).filter(
        lambda e: bool(e.free_symbols))


def _printable(e) -> bool:
    # sympy folds constants (log(-3) = log(3) + I*pi): keep real trees of symbols only
    return bool(e.free_symbols) and not e.has(sympy.I, sympy.nan, sympy.zoo)


def _compile(expr, ops):
    pr = Printer()
    body = pr.p(expr)
    lines = ["def make(ops):", *[f"    {n} = {t}" for t, n in pr.consts.items()],
             "    def f(_y0, _y1):", f"        return {body}", "    return f"]
    namespace: dict = {}
    exec(compile("\n".join(lines), "<test>", "exec"), namespace)  # noqa: S102 - our printer
    return namespace["make"](ops)


_POINTS = (np.array([0.3, -1.7, 2.0, 4.5, -0.25]), np.array([1.1, 0.4, -2.0, 0.5, 3.0]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expr=_trees())
def test_random_expressions_agree_with_numpy(expr):
    with np.errstate(all="ignore"):
        ref = np.broadcast_to(np.asarray(_compile(expr, numpy_ops())(*_POINTS), float), (5,))
    for param in BACKENDS[1:]:
        if param.marks:
            continue
        ops, arr, to_np, ctx = _ops(param.values[0])
        with ctx():  # constants are made when the function is compiled: inside ctx
            got = to_np(_compile(expr, ops)(*(arr(p) for p in _POINTS)))
        got = np.broadcast_to(np.asarray(got, float), (5,))
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12, equal_nan=True,
                                   err_msg=f"{param.values[0]}: {expr}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_piecewise_without_otherwise_is_nan(backend):
    ops, arr, to_np, ctx = _ops(backend)
    with ctx():
        f = _compile(sympy.Piecewise((Y0, Y1 > 0)), ops)
        out = to_np(f(arr(np.array([1.0, 2.0])), arr(np.array([1.0, -1.0]))))
    assert out[0] == 1.0 and np.isnan(out[1])
