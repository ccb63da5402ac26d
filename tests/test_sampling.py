"""Seeded Latin hypercube sampling (pure numpy: no backend is imported)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import kinabs
from kinabs._fit.sampling import latin_hypercube

BASE = {"k1": 1.0, "k2": 2.5, "k3": 0.004, "k4": -3.0}


def _strata(factors: np.ndarray, lo: float, hi: float, n: int, log: bool) -> np.ndarray:
    if log:
        u = (np.log(factors) - np.log(lo)) / (np.log(hi) - np.log(lo))
    else:
        u = (factors - lo) / (hi - lo)
    return np.floor(u * n).astype(int)


def test_shape_columns_and_type():
    df = latin_hypercube(BASE, lower_bound=0.1, upper_bound=10, n=7, seed=3)
    assert isinstance(df, pd.DataFrame)
    assert df.shape == (7, 4)
    assert list(df.columns) == list(BASE)


def test_same_seed_same_samples_different_seed_differs():
    a = latin_hypercube(BASE, lower_bound=0.1, upper_bound=10, n=6, seed=42)
    b = latin_hypercube(BASE, lower_bound=0.1, upper_bound=10, n=6, seed=42)
    c = latin_hypercube(BASE, lower_bound=0.1, upper_bound=10, n=6, seed=43)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a.to_numpy(), c.to_numpy())
    # every value differs: the seeds give independent draws, not a shifted copy
    assert np.all(a.to_numpy() != c.to_numpy())


def test_no_seed_gives_fresh_samples():
    a = latin_hypercube(BASE, lower_bound=0.1, upper_bound=10, n=5)
    b = latin_hypercube(BASE, lower_bound=0.1, upper_bound=10, n=5)
    assert not np.allclose(a.to_numpy(), b.to_numpy())


@pytest.mark.parametrize("n", [1, 2, 5, 50])
@pytest.mark.parametrize("log", [False, True])
def test_latin_property_every_stratum_once(n, log):
    lo, hi = 0.1, 10.0
    df = latin_hypercube(BASE, lower_bound=lo, upper_bound=hi, n=n, seed=n, log=log)
    factors = df.to_numpy() / np.asarray(list(BASE.values()))
    strata = _strata(factors, lo, hi, n, log)
    for j, name in enumerate(BASE):
        assert sorted(strata[:, j]) == list(range(n)), name


def test_uniform_latin_is_not_log_latin():
    """Uniform sampling fills equal-width strata of the factor, so with bounds 1/10..10 most
    samples lie above 1; log sampling puts half of them below 1."""
    n = 40
    uni = latin_hypercube({"k": 1.0}, lower_bound=0.1, upper_bound=10, n=n, seed=0)["k"]
    log = latin_hypercube({"k": 1.0}, lower_bound=0.1, upper_bound=10, n=n, seed=0,
                          log=True)["k"]
    assert int((uni < 1).sum()) in (3, 4)  # strata 0-2 whole, stratum 3 in part (3.6)
    assert int((log < 1).sum()) == n // 2


@pytest.mark.parametrize("log", [False, True])
def test_bounds_respected(log):
    lo, hi = 0.25, 4.0
    df = latin_hypercube(BASE, lower_bound=lo, upper_bound=hi, n=200, seed=1, log=log)
    for name, v in BASE.items():
        a, b = sorted((lo * v, hi * v))
        assert df[name].between(a, b).all(), name
    # the samples spread over the whole range (not squeezed to the centre)
    f = df["k1"].to_numpy()
    assert f.min() < lo * 1.1 and f.max() > hi * 0.9


def test_equal_bounds_give_the_base_values():
    df = latin_hypercube(BASE, lower_bound=1.0, upper_bound=1.0, n=3, seed=0)
    assert np.allclose(df.to_numpy(), np.tile(list(BASE.values()), (3, 1)))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(lower_bound=10, upper_bound=0.1, n=3), ["lower_bound", "upper_bound"]),
        (dict(lower_bound=0.1, upper_bound=10, n=0), ["N", "0"]),
        (dict(lower_bound=0.1, upper_bound=10, n=-2), ["N"]),
        (dict(lower_bound=0.1, upper_bound=10, n=2.5), ["N"]),
        (dict(lower_bound=0.0, upper_bound=10, n=3, log=True), ["log", "lower_bound"]),
        (dict(lower_bound=-1.0, upper_bound=10, n=3, log=True), ["positive"]),
        (dict(lower_bound=0.1, upper_bound=np.inf, n=3), ["finite"]),
        (dict(lower_bound=np.nan, upper_bound=1, n=3), ["finite"]),
    ],
)
def test_invalid_arguments_raise_data_error(kwargs, words):
    with pytest.raises(kinabs.DataError) as err:
        latin_hypercube(BASE, seed=0, **kwargs)
    for w in words:
        assert w in str(err.value)


def test_empty_or_nonfinite_base_raises():
    with pytest.raises(kinabs.DataError, match="empty"):
        latin_hypercube({}, lower_bound=0.1, upper_bound=10, n=3)
    with pytest.raises(kinabs.DataError, match="finite"):
        latin_hypercube({"k": np.nan}, lower_bound=0.1, upper_bound=10, n=3)


def test_numpy_integer_n_accepted():
    df = latin_hypercube({"k": 1.0}, lower_bound=0.5, upper_bound=2, n=np.int64(4), seed=0)
    assert len(df) == 4
