"""Baseline forecasters of the accuracy benchmark, and the online loop they run in.

Every baseline answers two questions for one series ``y`` with a training part
``y[:n_train]``:

- protocol A (online, h = 1): the forecast of each test value made *before*
  it is seen, with everything before it known: ``[len(y) - n_train]``;
- protocol B (fixed origin): ``horizon`` forecasts from the end of the
  training part.

Online learners (last value, seasonal naive, River) go through
:func:`online_one_step`: predict, score, then learn (the order serving sees).
River's own ``evaluate.progressive_val_score`` for time series scores the
forecast made *before* the previous value was learned, so its "+1" is really
two steps ahead; we do not use it.

SARIMA and ETS (statsmodels) are fitted once on the training part and then run
forward over the whole series with those parameters frozen: the Kalman filter /
exponential smoothing recursion's one-step predictions are exactly "predict
from the past, then see the value", without refitting.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Online(Protocol):
    """A one-series online forecaster (River's time-series API)."""

    def learn_one(self, y: float) -> None: ...

    def forecast(self, horizon: int) -> list[float]: ...


def online_one_step(model: Online, y: np.ndarray, n_train: int) -> np.ndarray:
    """Warm up on ``y[:n_train]``, then per test step: predict, (score,) learn."""
    for value in y[:n_train]:
        model.learn_one(float(value))
    preds = np.empty(len(y) - n_train, dtype=np.float64)
    for k, value in enumerate(y[n_train:]):
        preds[k] = model.forecast(1)[0]  # only the past is known here
        model.learn_one(float(value))  # the value is revealed after the forecast
    return preds


def from_origin(model: Online, y: np.ndarray, n_train: int, horizon: int) -> np.ndarray:
    """Warm up on the training part, then forecast ``horizon`` steps at once."""
    for value in y[:n_train]:
        model.learn_one(float(value))
    return np.asarray(model.forecast(horizon), dtype=np.float64)


class LastValue:
    """Forecast: the last value seen, for every step ahead."""

    def __init__(self) -> None:
        self.last = 0.0

    def learn_one(self, y: float) -> None:
        self.last = y

    def forecast(self, horizon: int) -> list[float]:
        return [self.last] * horizon


class SeasonalNaive:
    """Forecast: the value one season (``m`` steps) before the target."""

    def __init__(self, m: int) -> None:
        self.m = m
        self.history: list[float] = []

    def learn_one(self, y: float) -> None:
        self.history.append(y)
        if len(self.history) > self.m:
            del self.history[0]

    def forecast(self, horizon: int) -> list[float]:
        if not self.history:
            return [0.0] * horizon
        season = self.history[-self.m :]
        if len(season) < self.m:  # shorter than a season: repeat what there is
            return [season[-1]] * horizon
        return [season[k % self.m] for k in range(horizon)]


class ZScored:
    """Feeds a model z-scored values (training-part mean/std) and unscales its forecasts."""

    def __init__(self, model: Online, mean: float, std: float) -> None:
        self.model, self.mean, self.std = model, mean, std if std > 0 else 1.0

    def learn_one(self, y: float) -> None:
        self.model.learn_one((y - self.mean) / self.std)

    def forecast(self, horizon: int) -> list[float]:
        return [v * self.std + self.mean for v in self.model.forecast(horizon)]


RIVER_LR = 0.001


def river_holt_winters(m: int) -> Online:
    from river import time_series

    return time_series.HoltWinters(alpha=0.3, beta=0.01, gamma=0.3, seasonality=m)


def river_snarimax(m: int) -> Online:
    from river import linear_model, optim, time_series

    regressor = linear_model.LinearRegression(optimizer=optim.SGD(RIVER_LR), intercept_lr=RIVER_LR)
    return time_series.SNARIMAX(p=2, d=1, q=1, m=m, sp=1, sd=1, sq=1, regressor=regressor)


@dataclass(frozen=True)
class Forecasts:
    """One method's answers for one series (quantiles at bench.metrics.LEVELS where it has them)."""

    one_step: np.ndarray  # protocol A: [len(y) - n_train]
    origin: np.ndarray | None  # protocol B: [horizon], or None
    one_step_q: np.ndarray | None = None  # [len(y) - n_train, levels]
    origin_q: np.ndarray | None = None  # [horizon, levels]


Method = Callable[[np.ndarray, int, int, "int | None"], Forecasts]


def online_method(factory: Callable[[np.ndarray, int], Online]) -> Method:
    """A method from an online forecaster factory ``(train, m) -> model``."""

    def run(y: np.ndarray, n_train: int, m: int, horizon: int | None) -> Forecasts:
        train = y[:n_train]
        one = online_one_step(factory(train, m), y, n_train)
        origin = None if horizon is None else from_origin(factory(train, m), y, n_train, horizon)
        return Forecasts(one, origin)

    return run


def _zscored(make: Callable[[int], Online]) -> Callable[[np.ndarray, int], Online]:
    return lambda train, m: ZScored(make(m), float(np.mean(train)), float(np.std(train)))


# ------------------------------------------------------------------ statsmodels
# Keep the Kalman filter's per-step forecasts only: long seasonal series
# (vic_elec, m = 48) would otherwise store gigabytes of covariance matrices.
def _conserve_flags() -> int:
    from statsmodels.tsa.statespace import kalman_filter as kf

    return (
        kf.MEMORY_NO_FILTERED
        | kf.MEMORY_NO_PREDICTED
        | kf.MEMORY_NO_PREDICTED_COV
        | kf.MEMORY_NO_SMOOTHING
        | kf.MEMORY_NO_GAIN
    )


def sarima(y: np.ndarray, n_train: int, m: int, horizon: int | None) -> Forecasts:
    """SARIMA (0,1,1)(0,1,1)m fitted on the training part, then filtered with frozen params.

    The model is written on the differenced series w_t = (1-B)(1-B^m) y_t
    (``simple_differencing``: a state of m + 1, not 2m + 2), so the one-step
    forecast of y_t is w_hat_t + y_{t-1} + y_{t-m} - y_{t-m-1}.
    """
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    from bench.metrics import gaussian_quantiles

    spec = dict(order=(0, 1, 1), seasonal_order=(0, 1, 1, m), simple_differencing=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = SARIMAX(y[:n_train], **spec).fit(disp=False, low_memory=True)
        full = SARIMAX(y, **spec)
        full.ssm.set_conserve_memory(_conserve_flags())
        filtered = full.filter(fitted.params)
        w_hat = filtered.forecasts[0]
        k = m + 1  # the first y with a defined difference
        one = np.full(len(y), np.nan)
        one[k:] = w_hat + y[k - 1 : -1] + y[1 : len(y) - m] - y[: len(y) - m - 1]
        # The one-step error of y is that of w (the rest of y_t is known then).
        var = np.full(len(y), np.nan)
        var[k:] = filtered.forecasts_error_cov[0, 0]
        one_q = gaussian_quantiles(one[n_train:], np.sqrt(var[n_train:]))
        origin = origin_q = None
        if horizon is not None:
            origin = np.asarray(
                SARIMAX(y[:n_train], **spec).filter(fitted.params).forecast(horizon),
                dtype=np.float64,
            )
            # forecast() of a simple-differenced model is in differences: integrate.
            origin = _undifference(y[:n_train], origin, m)
            # Intervals of y itself: the same parameters, the differencing in the state.
            inner = {**spec, "simple_differencing": False}
            ahead = SARIMAX(y[:n_train], **inner).filter(fitted.params).get_forecast(horizon)
            origin_q = gaussian_quantiles(origin, np.sqrt(np.asarray(ahead.var_pred_mean)))
    return Forecasts(one[n_train:], origin, one_q, origin_q)


def _undifference(train: np.ndarray, w: np.ndarray, m: int) -> np.ndarray:
    """y forecasts from forecasts of w_t = y_t - y_{t-1} - y_{t-m} + y_{t-m-1}."""
    hist = list(train.astype(np.float64))
    for value in w:
        hist.append(value + hist[-1] + hist[-m] - hist[-m - 1])
    return np.asarray(hist[len(train) :])


ETS_PATHS = 1000


def ets(y: np.ndarray, n_train: int, m: int, horizon: int | None) -> Forecasts:
    """Damped additive-trend ETS fitted on the training part, then smoothed with frozen params.

    Additive errors; seasonality multiplicative where the series is positive,
    additive otherwise (the test part counts too: a multiplicative model cannot
    be run over a zero); initial states estimated (heuristic for
    m > 24, where estimating 48 seasonal states is slow and unstable).
    """
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    train = y[:n_train]
    spec = dict(
        error="add",
        trend="add",
        damped_trend=True,
        seasonal="mul" if y.min() > 0 else "add",
        seasonal_periods=m,
        initialization_method="heuristic" if m > 24 else "estimated",
    )
    from bench.metrics import LEVELS, gaussian_quantiles

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = ETSModel(train, **spec).fit(disp=False)
        one = np.asarray(ETSModel(y, **spec).smooth(fitted.params).fittedvalues)[n_train:]
        # Additive errors: every one-step forecast has the residuals' variance.
        one = np.asarray(one, dtype=np.float64)
        one_q = gaussian_quantiles(one, np.full(len(one), np.sqrt(fitted.mse)))
        origin = origin_q = None
        if horizon is not None:
            origin = np.asarray(fitted.forecast(horizon))
            # statsmodels' own simulation of the fitted model from the training part's end.
            sims = np.asarray(
                fitted.simulate(
                    horizon, anchor="end", repetitions=ETS_PATHS, rng=np.random.default_rng(0)
                )
            ).reshape(horizon, -1)
            origin_q = np.quantile(sims, LEVELS, axis=1).T
            origin_q[:, LEVELS.index(0.5)] = origin
    return Forecasts(one, origin, one_q, origin_q)


def seasonal_naive(y: np.ndarray, n_train: int, m: int, horizon: int | None) -> Forecasts:
    """Seasonal naive, with empirical intervals: the training part's own errors.

    A forecast j seasons back (step k of a horizon: j = 1 + (k - 1) // m) gets
    the quantiles of y_t - y_{t - j m} over the training part added to it.
    """
    base = online_method(lambda train, m: SeasonalNaive(m))(y, n_train, m, horizon)
    one_q = base.one_step[:, None] + _lag_error_quantiles(y[:n_train], m)[None, :]
    origin_q = None
    if horizon is not None and base.origin is not None:
        seasons = 1 + np.arange(horizon) // m
        errs = np.stack([_lag_error_quantiles(y[:n_train], j * m) for j in seasons])
        origin_q = base.origin[:, None] + errs
    return Forecasts(base.one_step, base.origin, one_q, origin_q)


def _lag_error_quantiles(train: np.ndarray, lag: int) -> np.ndarray:
    from bench.metrics import LEVELS

    if len(train) <= lag:
        lag = max(1, len(train) - 1)
    err = np.asarray(train[lag:], np.float64) - np.asarray(train[:-lag], np.float64)
    if len(err) == 0:
        return np.zeros(len(LEVELS))
    return np.quantile(err, LEVELS)


METHODS: dict[str, Method] = {
    "last_value": online_method(lambda train, m: LastValue()),
    "seasonal_naive": seasonal_naive,
    "sarima": sarima,
    "ets": ets,
    "river_holt_winters": online_method(_zscored(river_holt_winters)),
    "river_snarimax": online_method(_zscored(river_snarimax)),
}
# Deterministic and slow: results are cached on disk (bench/accuracy_cache/).
CACHED = ("sarima", "ets", "river_holt_winters", "river_snarimax")
