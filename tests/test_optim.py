"""kinabs' own optimisers (kinabs/_optim), on numpy arrays: the iterations are written
against the array API, so these tests check the algorithms without any backend."""

import array_api_compat.numpy as xp
import numpy as np
import pytest

import kinabs
from kinabs._optim import Bounds


def _solve(a, b):
    return np.linalg.solve(a, b[..., None])[..., 0]


def _rosenbrock(x):
    r = np.stack([10 * (x[:, 1] - x[:, 0] ** 2), 1 - x[:, 0]], -1)
    J = np.zeros((x.shape[0], 2, 2))
    J[:, 0, 0], J[:, 0, 1], J[:, 1, 0] = -20 * x[:, 0], 10.0, -1.0
    return r, J


def _minimise(method, x0, lower=None, upper=None, n=300, fail=None):
    n_par = x0.shape[1]
    lower = np.full(n_par, -np.inf) if lower is None else lower
    upper = np.full(n_par, np.inf) if upper is None else upper

    def residuals(points):
        r, _ = _rosenbrock(points)
        return r, np.ones(points.shape[0], bool)

    s = method.init(x0, xp, 2)
    for _ in range(n):
        r, J = _rosenbrock(s["trial"])
        ok = np.ones(x0.shape[0], bool) if fail is None else ~fail(s["trial"])
        live = ~s["converged"]
        if method.needs == "residuals":
            new = method.update(s, r, J, ok, lower, upper, xp, _solve, residuals)
        else:
            new = method.update(s, (r * r).sum(-1), 2 * np.einsum("bmn,bm->bn", J, r), ok,
                                lower, upper, xp, _solve)
        s = {k: np.where(live.reshape((-1,) + (1,) * (v.ndim - 1)), v, s[k])
             for k, v in new.items()}
        if s["converged"].all():
            break
    return s


METHODS = [kinabs.LevenbergMarquardt(), kinabs.BFGS()]


@pytest.mark.parametrize("method", METHODS, ids=["lm", "bfgs"])
def test_minimises_rosenbrock_from_several_starts(method):
    x0 = np.array([[-1.2, 1.0], [3.0, -2.0], [0.0, 0.0]])
    s = _minimise(method, x0)
    assert s["converged"].all()
    np.testing.assert_allclose(s["x"], 1.0, atol=1e-6)
    assert (s["f"] < 1e-12).all()
    assert (s["iterations"] <= s["evaluations"]).all() and (s["iterations"] > 3).all()


@pytest.mark.parametrize("method", METHODS, ids=["lm", "bfgs"])
def test_bounds_hold_and_the_constrained_optimum_is_found(method):
    # x0 <= 0.5 cuts off (1, 1); the constrained optimum is (0.5, 0.25), loss 0.25
    upper = np.array([0.5, np.inf])
    s = _minimise(method, np.array([[-1.2, 1.0], [0.2, 0.3]]), upper=upper)
    assert (s["x"][:, 0] <= 0.5).all()
    np.testing.assert_allclose(s["x"], [[0.5, 0.25]] * 2, atol=1e-6)
    np.testing.assert_allclose(s["f"], 0.25, rtol=1e-8)


@pytest.mark.parametrize("method", METHODS, ids=["lm", "bfgs"])
def test_a_failed_evaluation_rejects_the_step_and_the_start_goes_on(method):
    # evaluations fail in a band the direct path crosses: the method steps around it
    s = _minimise(method, np.array([[-1.2, 1.0]]),
                  fail=lambda x: (x[:, 0] > -0.5) & (x[:, 0] < -0.45))
    assert s["f"][0] < 1e-10
    assert s["iterations"][0] < s["evaluations"][0]


@pytest.mark.parametrize("method", METHODS, ids=["lm", "bfgs"])
def test_the_same_iterates_whatever_the_batch(method):
    one = _minimise(method, np.array([[3.0, -2.0]]), n=15)
    two = _minimise(method, np.array([[-1.2, 1.0], [3.0, -2.0]]), n=15)
    np.testing.assert_array_equal(one["x"][0], two["x"][1])


@pytest.mark.parametrize("kwargs, message", [
    (dict(ftol=0), "ftol must be a positive number; got 0"),
    (dict(xtol=-1e-8), "xtol must be a positive number"),
    (dict(gtol=float("nan")), "gtol must be a positive number"),
    (dict(initial_damping=True), "initial_damping must be a positive number"),
    (dict(jacobian="central"), "jacobian must be one of"),
])
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(kinabs.DataError, match=message):
        kinabs.LevenbergMarquardt(**kwargs)


def test_bad_bfgs_step_is_named():
    with pytest.raises(kinabs.DataError, match="BFGS.max_step must be a positive number"):
        kinabs.BFGS(max_step=0)


def test_bounds_in_log_space_are_log2_of_the_linear_values():
    b = Bounds.from_mapping({"a": (0.125, 8.0), "c": (0.0, 2.0)}, ["a", "b", "c"], space="log")
    assert b.lower.tolist() == [-3.0, -np.inf, -np.inf]
    assert b.upper.tolist() == [3.0, np.inf, 1.0]
    lin = Bounds.from_mapping({"b": (-1.0, 1.0)}, ["a", "b"], space="linear")
    assert lin.lower.tolist() == [-np.inf, -1.0] and lin.upper.tolist() == [np.inf, 1.0]


@pytest.mark.parametrize("bounds, message", [
    ({"a": (2.0, 1.0)}, "wrong way round"),
    ({"a": (1.0, 1.0)}, "wrong way round or empty"),
    ({"zz": (1.0, 2.0)}, r"not fitted; fitted parameters are \['a', 'b'\]"),
    ({"a": (float("nan"), 1.0)}, "holds NaN"),
    ({"a": "12"}, "must be a pair"),
    ({"a": (-2.0, -1.0)}, "upper bound must be positive"),
    ([("a", 1, 2)], "must map parameter names"),
])
def test_bad_bounds_are_named(bounds, message):
    with pytest.raises(kinabs.DataError, match=message):
        Bounds.from_mapping(bounds, ["a", "b"], space="log")


def test_a_start_outside_the_bounds_is_named():
    b = Bounds.from_mapping({"b": (0.5, 2.0)}, ["a", "b"], space="linear")
    b.check(np.array([[0.0, 1.0], [0.0, 1.5]]), ["a", "b"])
    with pytest.raises(kinabs.DataError, match="start 1 has b outside its bounds"):
        b.check(np.array([[0.0, 1.0], [0.0, 3.0]]), ["a", "b"])


def test_bfgs_minimises_an_objective_that_is_negative():
    """A negative log-likelihood may be below zero: BFGS' tests are relative to |f| (it
    stopped at the first negative value before, as if the loss were an exact fit)."""
    method = kinabs.BFGS()
    x0 = np.array([[0.0, 1.0], [10.0, -4.0]])
    lower, upper = np.full(2, -np.inf), np.full(2, np.inf)
    s = method.init(x0, xp)
    for _ in range(100):
        x = s["trial"]
        f = ((x - 3.0) ** 2).sum(-1) - 5.0
        new = method.update(s, f, 2 * (x - 3.0), np.ones(2, bool), lower, upper, xp, _solve)
        live = ~s["converged"]
        s = {k: np.where(live.reshape((-1,) + (1,) * (v.ndim - 1)), v, s[k])
             for k, v in new.items()}
        if s["converged"].all():
            break
    assert s["converged"].all()
    np.testing.assert_allclose(s["x"], 3.0, atol=1e-6)
    np.testing.assert_allclose(s["f"], -5.0, atol=1e-10)


def _bfgs_run(fg, x0, n=200, state=None):
    """BFGS on ``fg(x) -> (f, g)`` (B,), (B, n) without bounds, from ``x0`` (or a prepared
    ``state``); converged starts keep their state."""
    method = kinabs.BFGS()
    lower, upper = np.full(x0.shape[1], -np.inf), np.full(x0.shape[1], np.inf)
    s = method.init(x0, xp) if state is None else state
    for _ in range(n):
        f, g = fg(s["trial"])
        new = method.update(s, f, g, np.ones(x0.shape[0], bool), lower, upper, xp, _solve)
        live = ~s["converged"]
        s = {k: np.where(live.reshape((-1,) + (1,) * (v.ndim - 1)), v, s[k])
             for k, v in new.items()}
        if s["converged"].all():
            break
    return s


def _sloppy(x):
    """A negative log-likelihood-like quadratic: minimum 100 at 0, curvatures 1e-3 and 1e3
    along axes turned by 0.3 rad (a sloppy model's)."""
    c, s = np.cos(0.3), np.sin(0.3)
    q = np.array([[c, -s], [s, c]])
    a = q @ np.diag([1e-3, 1e3]) @ q.T
    return 100.0 + 0.5 * np.einsum("bi,ij,bj->b", x, a, x), x @ a


def test_bfgs_small_falls_on_a_poor_quasi_newton_direction_do_not_end_a_start():
    """On a sloppy quadratic the first scaling (s'y/y'y of a stiff step) leaves the inverse
    Hessian 1e6 too small along the sloppy direction: its steps there fall by less than
    ftol |f|. That ended these starts (as "converged") 1e-3 to 5e-3 above the minimum with
    a projected gradient of 1e-3; a restart from steepest descent reaches the minimum."""
    x0 = np.array([[-4.0, 4.0], [-2.0, -4.0], [-2.0, 0.0], [0.0, -2.0]])
    s = _bfgs_run(_sloppy, x0)
    assert s["converged"].all()
    np.testing.assert_allclose(s["f"], 100.0, rtol=0, atol=1e-10)
    _, g = _sloppy(s["x"])
    assert (np.abs(g).max(-1) < 1e-6).all()
    assert (s["evaluations"] <= 20).all()


def test_bfgs_a_stalled_line_search_on_a_poor_direction_restarts_from_steepest_descent():
    """An inverse Hessian far too small along the gradient (as a poor update leaves it)
    gives a trial step below xtol at once: the line search has stalled, but the projected
    gradient is 5. The start restarts from steepest descent (the first start) and
    reaches the minimum; a start at the minimum still converges at once (the second)."""
    def fg(x):
        return 100.0 + 0.5 * (x * x).sum(-1), x.copy()

    x0 = np.array([[5.0, 0.0], [0.0, 0.0]])
    s = kinabs.BFGS().init(x0, xp)
    s["Hinv"] = s["Hinv"] * 0 + np.diag([1e-14, 1.0])
    s["scaled"] = np.ones(2, bool)
    s["reset"] = np.zeros(2, bool)  # the direction is quasi-Newton, not the first one
    s = _bfgs_run(fg, x0, state=s)
    assert s["converged"].all()
    np.testing.assert_allclose(s["x"], 0.0, atol=1e-8)
    np.testing.assert_allclose(s["f"], 100.0, rtol=0, atol=1e-12)
    assert s["evaluations"][0] <= 10 and s["evaluations"][1] <= 3


def test_bfgs_a_kink_at_the_minimum_still_ends_converged_within_few_evaluations():
    """At a kink the gradient never vanishes (the projected gradient stays 1): the start
    must still end, on steepest descent, as "converged", after few evaluations."""
    def fg(x):
        return 100 + np.abs(x - 1).sum(-1) + 0.5 * ((x - 1) ** 2).sum(-1), np.sign(x - 1) + x - 1

    s = _bfgs_run(fg, np.array([[-1.2, 1.0], [3.0, -2.0], [0.0, 0.0], [1.0, 5.0]]))
    assert s["converged"].all()
    np.testing.assert_allclose(s["x"], 1.0, atol=1e-7)
    assert (s["evaluations"] <= 40).all()
