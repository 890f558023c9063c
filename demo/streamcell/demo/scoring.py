"""The demo's scorecard: online one-step error on the held-out part, against baselines.

The service's prediction emitted after event ``seq = s - 1`` is its forecast
of step ``s``. For every held-out step of every stream it is scored with the
same MASE scale as the accuracy benchmark (the in-sample seasonal-naive MAE),
next to the last-value and seasonal-naive forecasts of the same step.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scores:
    """Mean over streams of MASE, and the pooled RMSE, per method."""

    mase: dict[str, float]
    rmse: dict[str, float]
    scored_steps: int
    streams: int


def score(
    series: Iterable[tuple[str, np.ndarray, int]],
    predictions: Mapping[tuple[str, int], float],
    period: int,
    partial: bool = False,
    others: Mapping[str, Mapping[tuple[str, int], float]] | None = None,
) -> Scores:
    """``series``: (stream, values by seq, n_train); ``predictions``: (stream, seq) -> yhat.

    A stream with a missing prediction is left out, unless ``partial``: then
    the held-out steps predicted so far are scored (for live progress).
    ``others``: more methods' one-step forecasts, keyed like ``predictions``.
    """
    others = others or {}
    names = ["streamcell", "last value", "seasonal naive", *others]
    mase: dict[str, list[float]] = {k: [] for k in names}
    sq: dict[str, list[float]] = {k: [] for k in mase}
    steps = 0
    for stream, values, n_train in series:
        if n_train <= period or n_train >= len(values):
            continue
        scale = float(np.mean(np.abs(values[period:n_train] - values[: n_train - period])))
        if not np.isfinite(scale) or scale <= 0:
            continue
        held = np.arange(n_train, len(values))
        ours = [predictions.get((stream, int(s) - 1)) for s in held]
        have = np.array([p is not None for p in ours], dtype=bool)
        if not have.all() and not partial:
            continue  # a prediction is missing: do not score this stream on a partial record
        if not have.any():
            continue
        held = held[have]
        actual = values[held]
        forecasts = {
            "streamcell": np.asarray([p for p in ours if p is not None], dtype=np.float64),
            "last value": values[held - 1],
            "seasonal naive": values[held - period],
        }
        for name, table in others.items():
            forecasts[name] = np.asarray(
                [table.get((stream, int(t) - 1), np.nan) for t in held], dtype=np.float64
            )
        if not all(np.isfinite(f).all() for f in forecasts.values()):
            continue  # every method on the same streams and steps, or the stream is left out
        for method, f in forecasts.items():
            err = actual - f
            mase[method].append(float(np.mean(np.abs(err))) / scale)
            sq[method].extend((err**2).tolist())
        steps += len(actual)
    return Scores(
        mase={k: float(np.mean(v)) if v else float("nan") for k, v in mase.items()},
        rmse={k: float(np.sqrt(np.mean(v))) if v else float("nan") for k, v in sq.items()},
        scored_steps=steps,
        streams=len(mase["streamcell"]),
    )


class EtsThread(threading.Thread):
    """Online one-step ETS forecasts of every held-out step, where statsmodels is installed.

    Damped additive trend, multiplicative seasonality where the training part
    is positive (as the accuracy benchmark's ETS): fitted once on each
    stream's training part, then run over its held-out part with the
    parameters frozen. ``forecasts`` is keyed like the service's predictions:
    (stream, seq of the last event seen) -> forecast of the next.
    """

    def __init__(self, series: list[tuple[str, np.ndarray, int]], period: int) -> None:
        super().__init__(name="ets-baseline", daemon=True)
        self.series, self.period = series, period
        self.forecasts: dict[tuple[str, int], float] = {}
        self.why = ""

    def run(self) -> None:
        try:
            from statsmodels.tsa.exponential_smoothing.ets import ETSModel
        except ImportError:
            self.why = "statsmodels is not installed (pip install streamcell[bench])"
            return
        out: dict[tuple[str, int], float] = {}
        try:
            for stream, y, n in self.series:
                if n <= 2 * self.period or n >= len(y):
                    continue
                spec = dict(
                    error="add",
                    trend="add",
                    damped_trend=True,
                    seasonal="mul" if y[:n].min() > 0 else "add",
                    seasonal_periods=self.period,
                    initialization_method="heuristic" if self.period > 24 else "estimated",
                )
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fitted = ETSModel(y[:n], **spec).fit(disp=False)
                    one = np.asarray(ETSModel(y, **spec).smooth(fitted.params).fittedvalues)
                for t in range(n, len(y)):
                    out[(stream, t - 1)] = float(one[t])
        except Exception as exc:  # a baseline must never stop the demo
            self.why = f"ETS failed: {type(exc).__name__}: {exc}"
            return
        self.forecasts = out
