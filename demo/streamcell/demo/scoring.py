"""The demo's scorecard: online one-step error on the held-out part, against baselines.

The service's prediction emitted after event ``seq = s - 1`` is its forecast
of step ``s``. For every held-out step of every stream it is scored with the
same MASE scale as the accuracy benchmark (the in-sample seasonal-naive MAE),
next to the last-value and seasonal-naive forecasts of the same step.
"""

from __future__ import annotations

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
) -> Scores:
    """``series``: (stream, values by seq, n_train); ``predictions``: (stream, seq) -> yhat.

    A stream with a missing prediction is left out, unless ``partial``: then
    the held-out steps predicted so far are scored (for live progress).
    """
    mase: dict[str, list[float]] = {"streamcell": [], "last value": [], "seasonal naive": []}
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
