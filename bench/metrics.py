"""Accuracy metrics of the benchmark: MASE with a seasonal-naive scale, and RMSE.

MASE divides a series' mean absolute error over its test part by the mean
absolute error of the seasonal-naive forecast *in sample* (over the training
part): ``mean |y_t - y_{t-m}|`` for t = m .. n_train-1. That is the M4 /
Tourism definition; with m = 1 it is the last-value scale.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def mase_scale(train: np.ndarray, m: int) -> float:
    """In-sample seasonal-naive MAE of the training part (NaN if it has <= m points)."""
    train = np.asarray(train, dtype=np.float64)
    if len(train) <= m:
        return float("nan")
    return float(np.mean(np.abs(train[m:] - train[:-m])))


def mase(actual: np.ndarray, forecast: np.ndarray, scale: float) -> float:
    """Mean absolute error of ``forecast`` divided by ``scale`` (NaN if the scale is 0)."""
    actual, forecast = np.asarray(actual, np.float64), np.asarray(forecast, np.float64)
    if actual.shape != forecast.shape:
        raise ValueError(f"actual {actual.shape} and forecast {forecast.shape} differ")
    if not scale > 0:
        return float("nan")
    return float(np.mean(np.abs(actual - forecast)) / scale)


def mean_ignoring_nan(values: Iterable[float]) -> float:
    """Mean over series whose score is defined (constant training parts have none)."""
    arr = np.asarray(list(values), dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if len(arr) else float("nan")


def rmse(actual: np.ndarray, forecast: np.ndarray) -> float:
    """Root mean squared error over all points given (pooled, in data units)."""
    actual, forecast = np.asarray(actual, np.float64), np.asarray(forecast, np.float64)
    return math.sqrt(float(np.mean((actual - forecast) ** 2)))


# Levels of the weighted quantile loss, and the 80% interval's ends among them.
LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
LOW, HIGH = 0, len(LEVELS) - 1


def quantile_sums(actual: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Summable interval statistics of forecasts ``q`` ``[N, len(LEVELS)]`` of ``actual`` [N].

    ``[pinball sum per level..., sum |actual|, points inside the 80% interval, points]``.
    """
    y = np.asarray(actual, np.float64)[:, None]
    q = np.sort(np.asarray(q, np.float64), axis=1)
    tau = np.asarray(LEVELS)[None, :]
    diff = y - q
    pinball = np.maximum(tau * diff, (tau - 1) * diff).sum(axis=0)
    inside = float(((q[:, LOW] <= y[:, 0]) & (y[:, 0] <= q[:, HIGH])).sum())
    return np.concatenate([pinball, [np.abs(y).sum(), inside, float(len(y))]])


def interval_scores(sums: np.ndarray) -> dict[str, float]:
    """Coverage of the 80% interval and the mean weighted quantile loss over LEVELS.

    wQL_tau = 2 sum pinball_tau / sum |y|, pooled over every series and point
    (GluonTS's weighted quantile loss), averaged over the nine levels.
    """
    k = len(LEVELS)
    pinball, scale, inside, points = sums[:k], sums[k], sums[k + 1], sums[k + 2]
    return {
        "coverage80": float(inside / points) if points else float("nan"),
        "wql": float((2 * pinball / scale).mean()) if scale > 0 else float("nan"),
    }


def gaussian_quantiles(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``[N, len(LEVELS)]`` quantiles of normal forecasts."""
    from scipy.stats import norm

    z = norm.ppf(np.asarray(LEVELS))[None, :]
    return np.asarray(mean, np.float64)[:, None] + np.asarray(std, np.float64)[:, None] * z
