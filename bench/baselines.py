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
from the past, then see the value", without refitting. Protocol B from many
origins (vic_elec's 365 midnights, :func:`many_origins`) reads each origin's
state off that same single pass instead of filtering once per origin.
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


def _sarima_spec(m: int) -> dict:
    """The airline model; without a season (m = 1) its analogue on (1 - B)^2 y, ARIMA(0,2,2)
    (Holt's linear trend), so every formula here on w = (1-B)(1-B^m) y holds for m = 1 too."""
    if m == 1:
        return dict(order=(0, 2, 2), simple_differencing=True)
    return dict(order=(0, 1, 1), seasonal_order=(0, 1, 1, m), simple_differencing=True)


def _fit_sarima(train: np.ndarray, m: int):
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SARIMAX(train, **_sarima_spec(m)).fit(disp=False, low_memory=True)


def sarima(y: np.ndarray, n_train: int, m: int, horizon: int | None) -> Forecasts:
    """SARIMA (0,1,1)(0,1,1)m fitted on the training part, then filtered with frozen params.

    The model is written on the differenced series w_t = (1-B)(1-B^m) y_t
    (``simple_differencing``: a state of m + 1, not 2m + 2), so the one-step
    forecast of y_t is w_hat_t + y_{t-1} + y_{t-m} - y_{t-m-1}.
    """
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    from bench.metrics import gaussian_quantiles

    spec = _sarima_spec(m)
    fitted = _fit_sarima(y[:n_train], m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
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
            mean, var_h = sarima_statsmodels_origin(y[:n_train], m, fitted.params, horizon)
            origin = mean
            origin_q = gaussian_quantiles(origin, np.sqrt(var_h))
    return Forecasts(one[n_train:], origin, one_q, origin_q)


def sarima_statsmodels_origin(
    past: np.ndarray, m: int, params: np.ndarray, horizon: int, low_memory: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """statsmodels' own h-step forecast of y and its variance from the end of ``past``.

    The mean from the simple-differenced model, integrated; the variance from
    the same parameters in the state space with the differencing inside.
    One filter over the whole of ``past`` each: see :func:`sarima_origins`
    for many origins at once. ``low_memory``: keep only what the forecasts
    need (the differenced-inside model of 35,000 half-hours would otherwise
    hold over 10 GB; its filtered covariances alone, kept, are 3-4 GB).
    """
    from statsmodels.tsa.statespace import kalman_filter as kf
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    spec = _sarima_spec(m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = SARIMAX(past, **spec).filter(params, low_memory=low_memory)
        w = np.asarray(plain.forecast(horizon), np.float64)
        # forecast() of a simple-differenced model is in differences: integrate.
        mean = _undifference(past, w, m)
        inner = SARIMAX(past, **{**spec, "simple_differencing": False})
        if low_memory:
            # get_forecast's variance needs the last filtered covariance and the
            # forecasts; statsmodels' own low_memory keeps too little (NaN).
            inner.ssm.set_conserve_memory(
                kf.MEMORY_NO_PREDICTED
                | kf.MEMORY_NO_SMOOTHING
                | kf.MEMORY_NO_GAIN
                | kf.MEMORY_NO_LIKELIHOOD
                | kf.MEMORY_NO_STD_FORECAST
            )
        ahead = inner.filter(params).get_forecast(horizon)
    return mean, np.asarray(ahead.var_pred_mean, np.float64)


def sarima_origins(
    y: np.ndarray, n_train: int, m: int, starts: list[int], horizon: int, params=None
) -> tuple[np.ndarray, np.ndarray]:
    """Protocol B from many origins with one filter: ``[len(starts), horizon]`` means, variances.

    Fitted on the training part (or ``params``), filtered once over all of
    ``y`` with the parameters frozen; from each origin o (forecasting
    y[o], ..., y[o + h - 1] with y[:o] known) the predicted state a and its
    covariance P of the differenced model give w's forecasts Z T^k a, the
    covariance of their errors F P F' + N (F_k = Z T^k, N the state noise
    RQR' carried forward), and y's by undoing the differencing: the mean by
    the recursion y_t = w_t + y_{t-1} + y_{t-m} - y_{t-m-1} from the known
    values, the error by the same recursion on errors (zero where y is known),
    a linear map L, so Var = diag(L (F P F' + N) L').
    """
    from statsmodels.tsa.statespace import kalman_filter as kf
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    if params is None:
        params = _fit_sarima(y[:n_train], m).params
    d = m + 1  # w[0] is y[d]'s difference
    starts_arr = np.asarray(starts, dtype=np.int64)
    if len(starts_arr) == 0 or starts_arr.min() < d or starts_arr.max() > len(y):
        raise ValueError(f"origins must lie in [{d}, {len(y)}]")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SARIMAX(y, **_sarima_spec(m))
        # Keep the predicted states and covariances only (~1 GB on vic_elec, freed below).
        model.ssm.set_conserve_memory(
            kf.MEMORY_NO_FILTERED
            | kf.MEMORY_NO_FORECAST_COV
            | kf.MEMORY_NO_SMOOTHING
            | kf.MEMORY_NO_GAIN
            | kf.MEMORY_NO_STD_FORECAST
        )
        res = model.filter(params)
        fr = res.filter_results
        idx = starts_arr - d  # predicted_state[:, i] is w[i]'s, given w[:i]
        a = np.array(fr.predicted_state[:, idx].T)  # [O, k]
        P = np.array(fr.predicted_state_cov[:, :, idx].transpose(2, 0, 1))  # [O, k, k]
        Z = np.asarray(fr.design[:, :, 0], np.float64)  # [1, k]
        T = np.asarray(fr.transition[:, :, 0], np.float64)
        R = np.asarray(fr.selection[:, :, 0], np.float64)
        Q = np.asarray(fr.state_cov[:, :, 0], np.float64)
        H = float(np.asarray(fr.obs_cov)[0, 0, 0])
        c = np.asarray(fr.state_intercept[:, 0], np.float64)
        dz = float(np.asarray(fr.obs_intercept)[0, 0])
        del res, fr, model
    return _integrate_sarima(y, starts_arr, m, horizon, a, P, Z, T, R @ Q @ R.T, H, c, dz)


def _integrate_sarima(
    y: np.ndarray,
    starts: np.ndarray,
    m: int,
    horizon: int,
    a: np.ndarray,
    P: np.ndarray,
    Z: np.ndarray,
    T: np.ndarray,
    RQR: np.ndarray,
    H: float,
    c: np.ndarray,
    dz: float,
) -> tuple[np.ndarray, np.ndarray]:
    """y's means and variances ``[O, h]`` from the differenced model's a, P at each origin."""
    n_origins, k = a.shape
    F = np.empty((horizon, k))  # F[j] = Z T^j
    F[0] = Z[0]
    for j in range(1, horizon):
        F[j] = F[j - 1] @ T
    w_hat = np.empty((n_origins, horizon))
    state = a
    for j in range(horizon):
        w_hat[:, j] = state @ Z[0] + dz
        state = state @ T.T + c
    # Noise after the origin: N[a, b] = sum_{l < min(a, b)} F_{a-1-l} RQR' F_{b-1-l}'.
    M = F @ RQR @ F.T
    N = np.zeros((horizon, horizon))
    for i in range(1, horizon):
        N[i:, i:] += M[: horizon - i, : horizon - i]
    N += H * np.eye(horizon)
    cov_w = np.einsum("hk,okl,gl->ohg", F, P, F) + N[None]
    # e^y_j = e^w_j + e^y_{j-1} + e^y_{j-m} - e^y_{j-m-1}, zero before the origin.
    L = np.zeros((horizon, horizon))
    for j in range(horizon):
        L[j, j] = 1.0
        if j >= 1:
            L[j] += L[j - 1]
        if j >= m:
            L[j] += L[j - m]
        if j >= m + 1:
            L[j] -= L[j - m - 1]
    var = np.einsum("hi,oij,hj->oh", L, cov_w, L)
    # The mean: y from the m + 1 known values before each origin.
    ext = np.empty((n_origins, m + 1 + horizon))
    ext[:, : m + 1] = np.stack([y[o - m - 1 : o] for o in starts])
    for j in range(horizon):
        p = m + 1 + j
        ext[:, p] = w_hat[:, j] + ext[:, p - 1] + ext[:, p - m] - ext[:, p - m - 1]
    return ext[:, m + 1 :], var


def _undifference(train: np.ndarray, w: np.ndarray, m: int) -> np.ndarray:
    """y forecasts from forecasts of w_t = y_t - y_{t-1} - y_{t-m} + y_{t-m-1}."""
    hist = list(train.astype(np.float64))
    for value in w:
        hist.append(value + hist[-1] + hist[-m] - hist[-m - 1])
    return np.asarray(hist[len(train) :])


ETS_PATHS = 1000


def _ets_spec(y: np.ndarray, m: int) -> dict:
    if m == 1:  # no season: damped additive trend alone
        return dict(error="add", trend="add", damped_trend=True, initialization_method="estimated")
    return dict(
        error="add",
        trend="add",
        damped_trend=True,
        seasonal="mul" if y.min() > 0 else "add",
        seasonal_periods=m,
        initialization_method="heuristic" if m > 24 else "estimated",
    )


def _fit_ets(train: np.ndarray, spec: dict):
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ETSModel(train, **spec).fit(disp=False)


def ets(y: np.ndarray, n_train: int, m: int, horizon: int | None) -> Forecasts:
    """Damped additive-trend ETS fitted on the training part, then smoothed with frozen params.

    Additive errors; seasonality multiplicative where the series is positive,
    additive otherwise (the test part counts too: a multiplicative model cannot
    be run over a zero); initial states estimated (heuristic for
    m > 24, where estimating 48 seasonal states is slow and unstable).
    """
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    from bench.metrics import LEVELS, gaussian_quantiles

    spec = _ets_spec(y, m)
    fitted = _fit_ets(y[:n_train], spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
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


@dataclass(frozen=True)
class EtsPaths:
    """ETS from many origins: point forecasts ``[O, h]`` and simulated paths ``[O, h, paths]``."""

    mean: np.ndarray
    paths: np.ndarray


def ets_origins(
    y: np.ndarray,
    n_train: int,
    m: int,
    starts: list[int],
    horizon: int,
    paths: int = ETS_PATHS,
    seed: int = 0,
    fitted=None,
) -> EtsPaths:
    """Protocol B from many origins with one pass of the recursions.

    Fitted on the training part (or ``fitted``, a training-part fit), smoothed
    once over all of ``y`` with the parameters frozen; from each origin o the
    states after y[o - 1] (level, trend, the last m seasonal factors) give the
    point forecast in closed form, (l + (phi + ... + phi^k) b) * s (or + s),
    and ``paths`` sample paths by the model's own recursions with N(0, sigma^2)
    errors (sigma^2: the training fit's scale, as statsmodels' simulate takes
    it). The draws are ``default_rng(seed).standard_normal((O, h, paths))``:
    origin 0's are those statsmodels' ``simulate(rng=default_rng(seed))``
    would take.
    """
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    if m < 2:
        raise ValueError(f"ets_origins runs a seasonal ETS; period {m} has no season")
    spec = _ets_spec(y, m)
    if fitted is None:
        fitted = _fit_ets(y[:n_train], spec)
    starts_arr = np.asarray(starts, dtype=np.int64)
    if len(starts_arr) == 0 or starts_arr.min() < m or starts_arr.max() > len(y):
        raise ValueError(f"origins must lie in [{m}, {len(y)}]")
    named = dict(zip(fitted.model.param_names, np.asarray(fitted.params), strict=True))
    alpha, beta = named["smoothing_level"], named["smoothing_trend"]
    gamma, phi = named["smoothing_seasonal"], named["damping_trend"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = ETSModel(y, **spec).smooth(fitted.params)
    level = np.asarray(full.level, np.float64)[starts_arr - 1]
    trend = np.asarray(full.slope, np.float64)[starts_arr - 1]
    season = np.asarray(full.season, np.float64)
    seasons = np.stack([season[o - m : o] for o in starts_arr])  # [O, m], oldest first
    mul = spec["seasonal"] == "mul"
    steps = np.arange(1, horizon + 1)
    damp = np.cumsum(phi**steps)  # phi + ... + phi^k
    base = level[:, None] + damp[None, :] * trend[:, None]
    s_k = seasons[:, (steps - 1) % m]
    mean = base * s_k if mul else base + s_k
    sigma = float(np.sqrt(fitted.scale))
    eps = np.random.default_rng(seed).standard_normal((len(starts_arr), horizon, paths)) * sigma
    lev = np.repeat(level[:, None], paths, axis=1)
    tr = np.repeat(trend[:, None], paths, axis=1)
    # The seasonal factors of the next m steps, rolled as each new one is made.
    ring = np.repeat(seasons[:, :, None], paths, axis=2)  # [O, m, paths]
    out = np.empty((len(starts_arr), horizon, paths))
    for k in range(horizon):
        e = eps[:, k]
        b = phi * tr
        ell = lev + b
        s = ring[:, k % m]
        if mul:
            out[:, k] = ell * s + e
            lev, tr = ell + alpha * e / s, b + beta * e / s
            ring[:, k % m] = s + gamma * e / ell
        else:
            out[:, k] = ell + s + e
            lev, tr = ell + alpha * e, b + beta * e
            ring[:, k % m] = s + gamma * e
    return EtsPaths(mean, out)


def ets_origin_quantiles(sim: EtsPaths) -> np.ndarray:
    """``[O, h, levels]`` quantiles of the paths, the median the point forecast (as ``ets``)."""
    from bench.metrics import LEVELS

    q = np.moveaxis(np.quantile(sim.paths, LEVELS, axis=2), 0, -1)
    q[..., LEVELS.index(0.5)] = sim.mean
    return q


# The models whose protocol B from many origins (vic_elec's 365 midnights) runs
# one filter / one pass of the recursions instead of one per origin.
MANY_ORIGINS = ("sarima", "ets")


def many_origins(
    method: str, y: np.ndarray, n_train: int, m: int, starts: list[int], horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """``method``'s forecasts from each origin, ``[O * h]``, and quantiles ``[O * h, levels]``."""
    from bench.metrics import LEVELS, gaussian_quantiles

    if method == "sarima":
        mean, var = sarima_origins(y, n_train, m, starts, horizon)
        return mean.ravel(), gaussian_quantiles(mean.ravel(), np.sqrt(var.ravel()))
    if method == "ets":
        sim = ets_origins(y, n_train, m, starts, horizon)
        return sim.mean.ravel(), ets_origin_quantiles(sim).reshape(-1, len(LEVELS))
    raise ValueError(f"{method} has no many-origin protocol B; known: {MANY_ORIGINS}")


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
