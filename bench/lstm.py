"""The LSTM in the accuracy benchmark: trained with the trainer's API, scored through serving.

Training sees the training part of every stream only (its own validation split
is the last ``val_fraction`` of that part: early stopping and tuning never see
the test part). Scoring replays the data set's events, in order, through
:meth:`Predictor.predict` one calendar step per micro-batch (protocol A), and
calls :meth:`Predictor.forecast` at the end of the training part (protocol B):
the code the service runs.
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


def train(ds: Dataset, settings: Any, max_train_rows: int | None = None):
    """Train one global model on the training part; returns (TrainResult, info)."""
    from streamcell.trainer.api import load_long_frame, train_local
    from streamcell.trainer.data import min_length

    frame = ds.part("train")
    need = min_length(settings.window, settings.val_fraction)
    counts = frame["stream"].map(frame["stream"].value_counts())
    short = sorted(set(frame.loc[counts < need, "stream"]))
    frame = frame[counts >= need]
    if max_train_rows is not None:  # keep each stream's most recent rows
        frame = frame[frame["seq"] >= frame["stream"].map(ds.n_train) - max_train_rows]
    long = load_long_frame(frame, features=list(ds.features), targets=[ds.target])
    started = time.perf_counter()
    result = train_local(long, settings)
    info = {
        "settings": settings.to_dict(),
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


def score(ds: Dataset, result: Any, name: str) -> dict[str, Forecasts]:
    """Protocols A and B through the Predictor, for every stream of the data set."""
    from streamcell.events import EventBatch
    from streamcell.predictor import Predictor
    from streamcell.trainer.api import loaded_model

    streams = ds.streams
    predictor = Predictor(loaded_model(result, name), max_streams=len(streams) + 1)
    frame = ds.frame
    x = frame[list(ds.features)].to_numpy(np.float32)
    ids = frame["stream"].astype(str).to_numpy()
    seq = frame["seq"].to_numpy(np.int64)
    n_train = frame["stream"].map(ds.n_train).to_numpy(np.int64)
    is_test = seq >= n_train
    # yhat[r]: the prediction emitted for row r's event, i.e. the forecast of seq + 1.
    yhat = np.full(len(frame), np.nan, dtype=np.float64)
    bounds = np.flatnonzero(np.diff(ds.step)) + 1
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
        one = np.array([yhat[position[(stream, q - 1)]] for q in range(n, len(y))])
        forecasts[stream] = Forecasts(one, origin.get(stream))
    return forecasts


def _forecast_all(predictor: Any, ds: Dataset) -> dict[str, np.ndarray]:
    """Protocol B: ``horizon`` steps from each stream's state at the end of its training part.

    Every stream's test part starts at the same calendar step, so this runs
    once, just before the first test event is applied.
    """
    if ds.horizon is None:
        return {}
    return {
        stream: predictor.forecast(stream, ds.horizon)[:, 0].astype(np.float64)
        for stream in ds.streams
    }
