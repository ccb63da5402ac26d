"""Explicit start points for ``kinabs.petab.fit`` (``starts=``) and the Latin hypercube
points it draws (``latin_hypercube``): how benchmarks/bench_petab_fit.py gives kinabs and
pyPESTO the same starts. PEtab test-suite case 0001 (four free parameters)."""

import numpy as np
import pytest

from tests._shared import SHARED

pytest.importorskip("petab.v1")
pytest.importorskip("diffrax")
import kinabs  # noqa: E402
import kinabs.petab as kp  # noqa: E402
from kinabs.petab._multistart import latin_hypercube, scaled_bounds  # noqa: E402

CASE = SHARED / "petab" / "test-suite" / "v1.0.0" / "sbml" / "0001"
pytestmark = pytest.mark.skipif(not CASE.is_dir(), reason=f"no PEtab test suite at {CASE}")


@pytest.fixture(scope="module")
def problem():
    return kp.load(CASE / "_0001.yaml")


def test_latin_hypercube_is_the_seeded_draw_within_the_bounds(problem):
    a, b = latin_hypercube(problem, 5, seed=3), latin_hypercube(problem, 5, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (5, len(problem.x_free_ids))
    lower, upper = scaled_bounds(problem)
    assert (a >= lower).all() and (a <= upper).all()
    # one point in each of the 5 strata of every parameter
    strata = np.floor((a - lower) / (upper - lower) * 5).astype(int)
    for col in strata.T:
        assert sorted(col) == list(range(5))
    assert not np.array_equal(a, latin_hypercube(problem, 5, seed=4))


def test_fit_runs_from_the_given_starts(problem):
    starts = latin_hypercube(problem, 2, seed=7)
    result = kp.fit(problem, starts=starts, max_iterations=2, progress=False)
    np.testing.assert_array_equal(result.starts, starts)
    assert len(result.nllh) == 2
    # the seeded fit draws the same points first
    seeded = kp.fit(problem, n_starts=2, seed=7, max_iterations=2, progress=False)
    np.testing.assert_array_equal(seeded.starts, starts)


def test_starts_of_the_wrong_width_are_refused(problem):
    with pytest.raises(kinabs.DataError, match="starts must have shape"):
        kp.fit(problem, starts=np.zeros((3, 2)), max_iterations=2, progress=False)


@pytest.mark.parametrize("bad", [np.nan, 1e9])
def test_starts_outside_the_bounds_are_refused_naming_the_parameter(problem, bad):
    starts = latin_hypercube(problem, 2, seed=0)
    starts[1, 0] = bad
    with pytest.raises(kinabs.DataError, match=f"start 1 has {problem.x_free_ids[0]} = .* "
                       "outside the parameter table's bounds"):
        kp.fit(problem, starts=starts, max_iterations=2, progress=False)
