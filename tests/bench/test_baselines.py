"""Protocol B from many origins at once (SARIMA, ETS) against statsmodels from each origin."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("statsmodels")

# bench/ is a directory of scripts at the repository root, not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import baselines
from bench.metrics import LEVELS


def seasonal_series(n: int, m: int, seed: int = 0) -> np.ndarray:
    """A positive series with a level that wanders and a season that drifts."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    level = 50.0 + np.cumsum(rng.normal(0.0, 0.5, n))
    season = 1.0 + 0.2 * np.sin(2 * np.pi * t / m) + 0.01 * np.cumsum(rng.normal(0, 0.1, n))
    return level * season + rng.normal(0.0, 1.0, n)


M, N_TRAIN, H = 4, 160, 10  # h > m + 1: the seasonal terms of the integration count
STARTS = [170, 185, 200]


def test_sarima_origins_match_statsmodels_from_each_origin() -> None:
    y = seasonal_series(240, M)
    params = baselines._fit_sarima(y[:N_TRAIN], M).params
    mean, var = baselines.sarima_origins(y, N_TRAIN, M, STARTS, H, params=params)
    assert mean.shape == var.shape == (len(STARTS), H)
    for k, o in enumerate(STARTS):
        # One filter per origin, statsmodels' get_forecast with the differencing inside.
        want_mean, want_var = baselines.sarima_statsmodels_origin(y[:o], M, params, H)
        np.testing.assert_allclose(mean[k], want_mean, rtol=1e-6)
        np.testing.assert_allclose(var[k], want_var, rtol=1e-6)
        # Without per-step storage (how bench.origins_check runs it on vic_elec): the same.
        lean = baselines.sarima_statsmodels_origin(y[:o], M, params, H, low_memory=True)
        np.testing.assert_allclose(lean[0], want_mean, rtol=1e-12)
        np.testing.assert_allclose(lean[1], want_var, rtol=1e-12)
    assert np.all(np.diff(var, axis=1) > 0)  # integrated errors widen with the horizon


def test_sarima_origins_default_fit_is_the_training_fit() -> None:
    y = seasonal_series(240, M, seed=1)
    params = baselines._fit_sarima(y[:N_TRAIN], M).params
    a = baselines.sarima_origins(y, N_TRAIN, M, STARTS[:1], H, params=params)
    b = baselines.sarima_origins(y, N_TRAIN, M, STARTS[:1], H)
    np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(ValueError, match="origins"):
        baselines.sarima_origins(y, N_TRAIN, M, [M], H, params=params)


def test_ets_origins_match_statsmodels_forecast_and_simulate() -> None:
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    y = seasonal_series(240, M, seed=2)
    spec = baselines._ets_spec(y, M)
    assert spec["seasonal"] == "mul"
    fitted = baselines._fit_ets(y[:N_TRAIN], spec)
    paths = 50
    sim = baselines.ets_origins(y, N_TRAIN, M, STARTS, H, paths=paths, seed=3, fitted=fitted)
    assert sim.mean.shape == (len(STARTS), H) and sim.paths.shape == (len(STARTS), H, paths)
    full = ETSModel(y, **spec).smooth(fitted.params)
    draws = np.random.default_rng(3).standard_normal((len(STARTS), H, paths))
    sigma = np.sqrt(fitted.scale)
    for k, o in enumerate(STARTS):
        # The point forecast: statsmodels' own, from a fit's smoothing of y[:o] alone.
        own = ETSModel(y[:o], **spec).smooth(fitted.params).forecast(H)
        np.testing.assert_allclose(sim.mean[k], own, rtol=1e-9)
        # The paths: statsmodels' simulate given the same errors (its anchor: the last
        # value known, o - 1).
        errors = draws[k] * sigma
        want = full.simulate(H, anchor=o - 1, repetitions=paths, random_errors=errors)
        np.testing.assert_allclose(sim.paths[k], np.asarray(want), rtol=1e-9)
    # Origin 0's draws are those statsmodels' simulate takes from the same seed.
    np.testing.assert_array_equal(draws[0], np.random.default_rng(3).standard_normal((H, paths)))


def test_ets_origin_quantiles_are_ordered_with_the_point_as_median() -> None:
    y = seasonal_series(240, M, seed=4)
    sim = baselines.ets_origins(y, N_TRAIN, M, STARTS, H, paths=200)
    q = baselines.ets_origin_quantiles(sim)
    assert q.shape == (len(STARTS), H, len(LEVELS))
    np.testing.assert_array_equal(q[..., LEVELS.index(0.5)], sim.mean)
    assert np.all(np.diff(q[..., [0, -1]], axis=-1) > 0)


def test_without_a_season_the_baselines_are_holt_and_damped_trend() -> None:
    """Period 1 (yearly data): SARIMA's one-step forecasts are ARIMA(0,2,2)'s, undone from
    (1 - B)^2 y, and ETS has no seasonal part; both forecast from the training part's end."""
    from statsmodels.tsa.arima.model import ARIMA

    rng = np.random.default_rng(3)
    y = 100.0 + np.cumsum(2.0 + rng.normal(0.0, 1.0, 40))
    n, h = 34, 6
    sarima = baselines.sarima(y, n, 1, h)
    params = baselines._fit_sarima(y[:n], 1).params
    # statsmodels' own model with the differencing inside, the same parameters.
    inner = ARIMA(y, order=(0, 2, 2)).filter(params)
    np.testing.assert_allclose(sarima.one_step, inner.fittedvalues[n:], rtol=1e-6)
    assert sarima.origin is not None and sarima.origin.shape == (h,)
    ets = baselines.ets(y, n, 1, h)
    assert "seasonal" not in baselines._ets_spec(y, 1)
    assert ets.origin is not None and np.all(np.diff(ets.origin) > 0)  # the trend goes on
    assert ets.origin_q is not None and np.all(np.diff(ets.origin_q, axis=1) >= 0)
