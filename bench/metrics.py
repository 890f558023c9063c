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
