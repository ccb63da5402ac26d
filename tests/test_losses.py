"""The default losses against hand computations (pure numpy through array_api_compat)."""

from __future__ import annotations

import array_api_compat.numpy as xp
import numpy as np
import pytest

import kinabs
from kinabs._losses import DEFAULT_TERMS, mean_centered_terms, squared_error_terms

NAN = np.nan
OBS = np.array([
    [0.60, 0.09, 2.0],
    [0.42, NAN, 1.5],
    [NAN, 0.04, NAN],
    [0.09, 0.03, 0.5],
])
PRED = np.array([
    [0.61, 0.10, 2.2],
    [0.40, 0.07, 1.1],
    [0.20, 0.05, 9.0],
    [0.10, 0.01, 0.4],
])


def _mask(obs):
    return np.isfinite(obs)


def _hand_mean_centered(pred, obs):
    """Per species: scale = mean over *observed* rows of (obs + 1); residuals only where
    observed; returns (sum of squares, count)."""
    sse, count = 0.0, 0
    for j in range(obs.shape[1]):
        rows = [i for i in range(obs.shape[0]) if np.isfinite(obs[i, j])]
        if not rows:
            continue
        scale = sum(obs[i, j] + 1.0 for i in rows) / len(rows)
        for i in rows:
            sse += ((pred[i, j] - obs[i, j]) / scale) ** 2
            count += 1
    return sse, count


def _seed_log_loss(pred, obs):
    """The seed's default log-space loss (jaxkineticmodel), transcribed to numpy: NaNs are
    set to 0 in the data but the prediction is zeroed there only *after* both were shifted
    by +1 and scaled, so every NaN adds (1 / scale)**2."""
    mask = np.isfinite(obs)
    ys = np.where(mask, obs, 0.0) + 1.0
    yp = pred + 1.0
    scale = ys.mean(axis=0)
    ys, yp = ys / scale, yp / scale
    yp = np.where(mask, yp, 0.0)
    return np.sum((yp - ys) ** 2) / mask.sum()


def test_mean_centered_matches_hand_computation_with_nans():
    sse, n = mean_centered_terms(PRED, OBS, _mask(OBS), xp)
    want_sse, want_n = _hand_mean_centered(PRED, OBS)
    assert int(n) == want_n == 9
    assert float(sse) == pytest.approx(want_sse, rel=1e-14)
    # a worked number for one species, to pin the scale: species 2, observed rows 0, 1, 3
    scale = ((2.0 + 1) + (1.5 + 1) + (0.5 + 1)) / 3
    part = ((2.2 - 2.0) ** 2 + (1.1 - 1.5) ** 2 + (0.4 - 0.5) ** 2) / scale**2
    sse_2, n_2 = mean_centered_terms(PRED[:, 2:], OBS[:, 2:], _mask(OBS[:, 2:]), xp)
    assert float(sse_2) == pytest.approx(part, rel=1e-14)
    assert int(n_2) == 3


def test_squared_error_matches_hand_computation_with_nans():
    sse, n = squared_error_terms(PRED, OBS, _mask(OBS), xp)
    m = _mask(OBS)
    assert int(n) == int(m.sum()) == 9
    assert float(sse) == pytest.approx(float(np.sum((PRED[m] - OBS[m]) ** 2)), rel=1e-14)


def test_missing_values_do_not_change_the_loss_of_observed_ones():
    """Changing the prediction where data is missing changes nothing."""
    other = PRED.copy()
    other[~_mask(OBS)] = 1e6
    for terms in (mean_centered_terms, squared_error_terms):
        a = terms(PRED, OBS, _mask(OBS), xp)
        b = terms(other, OBS, _mask(OBS), xp)
        assert float(a[0]) == float(b[0]) and float(a[1]) == float(b[1])


@pytest.mark.parametrize("terms", [mean_centered_terms, squared_error_terms])
@pytest.mark.parametrize("nan_rows", [(), (1,), (1, 2), (0, 3)])
def test_perfect_fit_is_exactly_zero_whatever_the_nans(terms, nan_rows):
    obs = OBS.copy()
    for i in nan_rows:
        obs[i, 1] = NAN
    pred = np.where(np.isfinite(obs), obs, 123.0)  # anything where data is missing
    sse, n = terms(pred, obs, _mask(obs), xp)
    assert float(sse) == 0.0
    assert int(n) == int(np.isfinite(obs).sum())


def test_seed_loss_adds_a_constant_per_nan_ours_does_not():
    pred = np.where(np.isfinite(OBS), OBS, 0.5)
    seed = _seed_log_loss(pred, OBS)
    # the seed's perfect fit scores sum over NaNs of (1/scale_j)^2 / count
    ys = np.where(np.isfinite(OBS), OBS, 0.0) + 1.0
    scale = ys.mean(axis=0)
    expected = sum((1.0 / scale[j]) ** 2 for i, j in np.argwhere(~np.isfinite(OBS)))
    assert seed == pytest.approx(expected / np.isfinite(OBS).sum(), rel=1e-12)
    assert seed > 0.1
    sse, n = mean_centered_terms(pred, OBS, _mask(OBS), xp)
    assert float(sse) / float(n) == 0.0


def test_seed_loss_and_ours_agree_without_nans():
    """Without missing values the default is the seed's mean-centred loss, value for value."""
    obs = np.nan_to_num(OBS, nan=0.3)
    sse, n = mean_centered_terms(PRED, obs, _mask(obs), xp)
    assert float(sse) / float(n) == pytest.approx(_seed_log_loss(PRED, obs), rel=1e-13)


def test_all_missing_column_contributes_nothing():
    obs = OBS.copy()
    obs[:, 1] = NAN
    for terms in (mean_centered_terms, squared_error_terms):
        sse, n = terms(PRED, obs, _mask(obs), xp)
        ref_sse, ref_n = terms(PRED[:, [0, 2]], obs[:, [0, 2]], _mask(obs[:, [0, 2]]), xp)
        assert np.isfinite(float(sse))
        assert float(sse) == pytest.approx(float(ref_sse), rel=1e-14)
        assert int(n) == int(ref_n) == 6


def test_default_terms_by_space():
    assert DEFAULT_TERMS == {"log": mean_centered_terms, "linear": squared_error_terms}


def test_exponentiate_and_log_transform_are_base_2_inverses():
    lin = {"a": 1.0, "b": 8.0, "c": 0.125, "d": 3.7}
    logp = kinabs.log_transform_parameters(lin)
    assert logp["a"] == 0.0 and logp["b"] == 3.0 and logp["c"] == -3.0
    back = kinabs.exponentiate_parameters(logp)
    assert back.keys() == lin.keys()
    for k in lin:
        assert back[k] == pytest.approx(lin[k], rel=1e-15)
    arr = kinabs.log_transform_parameters({"v": np.array([2.0, 4.0])})["v"]
    np.testing.assert_allclose(arr, [1.0, 2.0])


# -- the same terms on the backends' arrays, with their gradients ---------------------------
def _value_and_grad(backend, fn, pred):
    """``fn(pred, xp)`` (a scalar) and its gradient in ``pred``, on ``backend``'s arrays in
    float64."""
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        with jax.enable_x64(True):
            value, grad = jax.value_and_grad(lambda p: fn(p, jnp))(jnp.asarray(pred))
            return float(value), np.asarray(grad)
    import array_api_compat.torch as xp
    import torch

    p = torch.tensor(pred, dtype=torch.float64, requires_grad=True)
    value = fn(p, xp)
    value.backward()
    return float(value.detach()), p.grad.numpy()


@pytest.mark.parametrize("terms", [mean_centered_terms, squared_error_terms])
def test_terms_on_backend_arrays_match_numpy_and_their_gradient(backend, terms):
    """The loss (sse / count) on the backend's arrays equals numpy's, and its gradient
    equals central differences computed in numpy."""
    mask = _mask(OBS)

    def loss(pred, xp):
        obs = xp.asarray(OBS)
        sse, n = terms(pred, obs, xp.asarray(mask), xp)
        return sse / n

    value, grad = _value_and_grad(backend, loss, PRED)
    sse, n = terms(PRED, OBS, mask, xp)
    assert value == pytest.approx(float(sse) / float(n), rel=1e-14)
    h, fd = 1e-6, np.zeros_like(PRED)
    for idx in np.ndindex(PRED.shape):
        up, down = PRED.copy(), PRED.copy()
        up[idx] += h
        down[idx] -= h
        fd[idx] = (float(np.divide(*terms(up, OBS, mask, xp)))
                   - float(np.divide(*terms(down, OBS, mask, xp)))) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-7, atol=1e-10)
    assert np.all(grad[~mask] == 0.0)  # missing data: no gradient


def test_the_default_loss_has_a_finite_gradient_with_an_unmeasured_species(backend):
    obs = np.array([[1.0, NAN], [2.0, NAN], [3.0, NAN]])

    def sse(pred, xp):
        o = xp.asarray(obs)
        return mean_centered_terms(pred, o, xp.isfinite(o), xp)[0]

    _, grad = _value_and_grad(backend, sse, np.ones((3, 2)))
    # d/dpred of sum(((pred - obs) / scale)^2), scale = mean(obs + 1) = 3 on the measured
    # column; nothing on the other
    np.testing.assert_allclose(grad, [[0.0, 0.0], [-2 / 9, 0.0], [-4 / 9, 0.0]], atol=1e-15)
