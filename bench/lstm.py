"""The LSTM in the accuracy benchmark: trained with the trainer's API, scored through serving.

Training sees the training part of every stream only (its own validation split
is the last ``val_fraction`` of that part: early stopping and tuning never see
the test part). Scoring replays the data set's events, in order, through
:meth:`Predictor.predict` one calendar step per micro-batch (protocol A), and
calls :meth:`Predictor.forecast` at the end of the training part (protocol B):
the code the service runs.

Leading zeros are not sent to the LSTM (neither in training nor in the
replay): under ``stream_mean_abs`` scaling a stream that opens with 0 has a
scale at the floor (1e-3), and its next value divided by it becomes a target a
million times larger than any other, which swamps the global normalisation
and the loss. A stream's events start at its first non-zero value.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.baselines import Forecasts
from streamcell.trainer.datasets import Dataset


@dataclass(frozen=True)
class LstmRun:
    """The LSTM's forecasts per series (in ``Dataset.series()`` order) and its training record."""

    forecasts: dict[str, Forecasts]
    train_info: dict[str, Any]


def train(ds: Dataset, settings: Any, lags: int = 1, max_train_rows: int | None = None):
    """Train one global model on the training part; returns (TrainResult, info)."""
    from streamcell.trainer.api import load_long_frame, train_local
    from streamcell.trainer.data import min_length

    frame, features, targets = model_frame(ds, ds.part("train"), lags)
    need = min_length(settings.window, settings.val_fraction)
    counts = frame["stream"].map(frame["stream"].value_counts())
    short = sorted(set(frame.loc[counts < need, "stream"]))
    frame = frame[counts >= need]
    if max_train_rows is not None:  # keep each stream's most recent rows
        frame = frame[frame["seq"] >= frame["stream"].map(ds.n_train) - max_train_rows]
    long = load_long_frame(frame, features=features, targets=targets)
    started = time.perf_counter()
    result = train_local(long, settings)
    info = {
        "settings": {**settings.to_dict(), "lags": lags},
        "train_rows": long.rows,
        "streams_trained": len(long.streams),
        "streams_too_short": len(short),
        "seconds": round(time.perf_counter() - started, 1),
        "best_epoch": result.metrics.get("epoch"),
        "epochs_run": result.metrics.get("epochs_run"),
        "val_mase_last_value_scale": result.metrics.get("val_mase"),
        "val_mae": result.metrics.get("val_mae"),
    }
    return result, info


def score(ds: Dataset, result: Any, name: str, lags: int = 1) -> dict[str, Forecasts]:
    """Protocols A and B through the Predictor, for every stream of the data set."""
    from streamcell.core.events import EventBatch
    from streamcell.core.predictor import Predictor
    from streamcell.trainer.api import loaded_model

    streams = ds.streams
    predictor = Predictor(loaded_model(result, name), max_streams=len(streams) + 1)
    frame, features, _ = model_frame(ds, ds.frame, lags)
    x = frame[features].to_numpy(np.float32)
    ids = frame["stream"].astype(str).to_numpy()
    seq = frame["seq"].to_numpy(np.int64)
    n_train = frame["stream"].map(ds.n_train).to_numpy(np.int64)
    is_test = seq >= n_train
    # yhat[r]: the prediction emitted for row r's event, i.e. the forecast of seq + 1.
    yhat = np.full(len(frame), np.nan, dtype=np.float64)
    bounds = np.flatnonzero(np.diff(ds.step[frame.index.to_numpy()])) + 1
    batches = np.split(np.arange(len(frame)), bounds)
    origin: dict[str, np.ndarray] = {}
    train_done = False
    for rows in batches:
        if not train_done and is_test[rows].any():
            origin = _forecast_all(predictor, ds)
            train_done = True
        batch = EventBatch.of([ids[r] for r in rows], x[rows], seq[rows])
        out = predictor.predict(batch, now=0.0)
        yhat[rows] = out.yhat[:, 0]
    if not train_done:
        origin = _forecast_all(predictor, ds)

    position = {(s, q): r for r, (s, q) in enumerate(zip(ids, seq, strict=True))}
    forecasts: dict[str, Forecasts] = {}
    for stream, y, n in ds.series():
        # A stream whose training part is all zeros has no prediction before its test part.
        before = [position.get((stream, q - 1)) for q in range(n, len(y))]
        one = np.array([0.0 if r is None else yhat[r] for r in before])
        forecasts[stream] = Forecasts(one, origin.get(stream))
    return forecasts


def model_frame(ds: Dataset, frame: Any, lags: int) -> tuple[Any, list[str], list[str]]:
    """The rows and columns the LSTM sees: (frame, features, targets).

    Rows: from each stream's first non-zero target value on. With ``lags`` > 1
    an event also carries the stream's previous ``lags - 1`` values (``lag1``
    ..; before the stream's start, its first value), as forecasters commonly
    feed seasonal lags; such a model predicts the target only (protocol A).
    Without lags, where protocol B needs :meth:`Predictor.forecast`, the
    targets are the features (univariate sets: the target itself).
    """
    started = (frame[ds.target] != 0).groupby(frame["stream"]).cummax()
    frame = frame[started]
    features = [ds.target, *(f for f in ds.features if f != ds.target)]
    if lags > 1:
        frame = frame.copy()
        by_stream = frame.groupby("stream", sort=False)[ds.target]
        first = by_stream.transform("first")
        names = [f"lag{k}" for k in range(1, lags)]
        for k, col in enumerate(names, start=1):
            frame[col] = by_stream.shift(k).fillna(first)
        features = [ds.target, *names, *features[1:]]
    autoregressive = ds.horizon is not None and lags == 1
    return frame, features, features if autoregressive else [ds.target]


def _forecast_all(predictor: Any, ds: Dataset) -> dict[str, np.ndarray]:
    """Protocol B: ``horizon`` steps from each stream's state at the end of its training part.

    Every stream's test part starts at the same calendar step, so this runs
    once, just before the first test event is applied.
    """
    if ds.horizon is None or not predictor.config.autoregressive:
        return {}
    return {
        stream: predictor.forecast(stream, ds.horizon)[:, 0].astype(np.float64)
        for stream in ds.streams
    }
