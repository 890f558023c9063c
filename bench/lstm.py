"""The LSTM in the accuracy benchmark: trained with the trainer's API, scored through serving.

Training sees the training part of every stream only (its own validation split
is the last ``val_fraction`` of that part: early stopping and tuning never see
the test part). Scoring replays the data set's events, in order, through
:meth:`Predictor.predict` one calendar step per micro-batch (protocol A), and
calls :meth:`Predictor.forecast` at the end of the training part (protocol B):
the code the service runs.

Leading zeros are not sent to the ``stream_mean_abs`` LSTMs (neither in
training nor in the replay): a stream that opens with 0 has a scale at the
floor (1e-3), and its next value divided by it becomes a target a million
times larger than any other, which swamps the global normalisation and the
loss. A stream's events start at its first non-zero value. Recipe models
(the trainer's defaults) get every row: their trainer gives a step whose
window is all zeros no weight.

Recipe models go through the Predictor as well (protocol A: ``predict``;
B: ``forecast`` at the end of the training part). vic_elec's protocol B (from
each midnight, with the temperature as a known covariate, which
``Predictor.forecast`` does not take) uses :func:`score_recipe`: the same
functions serving calls (``recipe.advance`` for the features,
``StreamingLSTM.step``), each forecast fed back as the next event's value.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.baselines import Forecasts
from streamcell.trainer.datasets import Dataset


@dataclass(frozen=True)
class LstmRun:
    """The LSTM's forecasts per series (in ``Dataset.series()`` order) and its training record."""

    forecasts: dict[str, Forecasts]
    train_info: dict[str, Any]


def train(ds: Dataset, settings: Any, lags: int = 1):
    """Train one global model on the training part; returns (TrainResult, info)."""
    from streamcell.trainer.api import train_local

    long = _long_frame(ds, settings, lags)
    started = time.perf_counter()
    result = train_local(long, settings)
    return result, _info(result, settings, long, lags, time.perf_counter() - started)


def train_per_protocol(ds: Dataset, settings: Any) -> dict[str, tuple[Any, dict[str, Any]]]:
    """One set of candidates chosen per protocol: {"online": (result, info), "origin": ...}."""
    from streamcell.trainer.api import train_local_per_protocol

    long = _long_frame(ds, settings, 1)
    started = time.perf_counter()
    results = train_local_per_protocol(long, settings)
    seconds = time.perf_counter() - started
    return {p: (r, _info(r, settings, long, 1, seconds)) for p, r in results.items()}


def _long_frame(ds: Dataset, settings: Any, lags: int) -> Any:
    from streamcell.trainer.api import load_long_frame

    if settings.recipe:
        frame, features, targets = ds.part("train"), list(ds.features), [ds.target]
    else:
        frame, features, targets = model_frame(ds, ds.part("train"), lags)
    return load_long_frame(frame, features=features, targets=targets)


def _info(result: Any, settings: Any, long: Any, lags: int, seconds: float) -> dict[str, Any]:
    m, t = result.metrics, result.config.training
    info: dict[str, Any] = {
        "settings": {**settings.to_dict(), "lags": lags},
        "recipe": result.config.recipe,
        "train_rows": long.rows,
        "streams_trained": len(long.streams) - t.get("streams_left_out", 0),
        "streams_too_short": t.get("streams_left_out", 0),
        "selection": t.get("selection"),
        "seconds": round(seconds, 1),
        "best_epoch": m.get("epoch"),
        "epochs_run": m.get("epochs_run"),
        "val_mase_last_value_scale": m.get("val_mase"),
        "val_last_value_mase": m.get("last_value_mase"),
        "val_seasonal_naive_mase": m.get("seasonal_naive_mase"),
        "val_mae": m.get("val_mae"),
        # Fixed-origin validation (the score that chose the head) and the baselines' on it.
        "val_origin_mase": m.get("val_origin_mase"),
        "val_last_value_origin_mase": m.get("last_value_origin_mase"),
        "val_seasonal_naive_origin_mase": m.get("seasonal_naive_origin_mase"),
        "calibration": m.get("calibration"),
    }
    return info


def uncalibrated(result: Any) -> Any:
    """The same TrainResult with its quantiles served as the head gives them."""
    from dataclasses import replace

    from streamcell.trainer.api import TrainResult

    return TrainResult(result.model, replace(result.config, calibration=None), result.history)


@torch.no_grad()
def score_recipe(
    ds: Dataset, result: Any, origins: dict[str, list[int]], horizon: int | None
) -> dict[str, Forecasts]:
    """Protocols A and B of a recipe model, with serving's functions (see the module doc).

    ``origins``: per stream, the rows after which a ``horizon``-step forecast
    starts (protocol B; forecasts of all of a stream's origins concatenated),
    made by ``streamcell.core.forecast.run_many`` (the code of
    ``Predictor.forecast``, the origins of every stream stepped together).
    Covariates (vic_elec's temperature) are taken as known in the horizon.
    Quantiles (a model with levels): protocol A's from the head's first step,
    B's as a Forecast makes them (seeded as the Predictor seeds them).
    """
    from streamcell.core.forecast import Normaliser, Origin, run_many, seed_of
    from streamcell.core.recipe import Recipe
    from streamcell.core.recipe import levels as flat_levels
    from streamcell.trainer.api import loaded_model
    from streamcell.trainer.prepare import featurize_all

    config, model = result.config, result.model.eval()
    loaded = loaded_model(result)
    recipe: Recipe = config.history
    in_mean = np.asarray(config.input_mean, np.float32)
    in_std = np.asarray(config.input_std, np.float32)
    norm = Normaliser(
        torch.from_numpy(in_mean),
        torch.from_numpy(in_std),
        torch.tensor(config.target_mean, dtype=torch.float32),
        torch.tensor(config.target_std, dtype=torch.float32),
    )
    t_mean, t_std = float(config.target_mean[0]), float(config.target_std[0])
    levels = config.quantile_levels
    mid = levels.index(0.5) if levels else 0
    n_levels = config.n_levels
    series = list(ds.series())
    frame = ds.frame.sort_values(["stream", "seq"], kind="stable")
    xs = {
        str(s): g[list(ds.features)].to_numpy(np.float32)
        for s, g in frame.groupby("stream", sort=False)
    }
    computed = featurize_all(recipe, [xs[s] for s, _, _ in series])
    online: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    jobs: list[tuple[str, Origin, np.ndarray, int]] = []  # the fixed origins, in order
    for (stream, y, n), (feats, scale) in zip(series, computed, strict=True):
        u = torch.from_numpy((feats - in_mean) / in_std).unsqueeze(0)
        cuts = sorted(set(origins.get(stream, [])))
        bounds = [0, *cuts, len(y)]
        h, c = model.zero_state(1, torch.device("cpu"))
        parts, states = [], {}
        for a, b in itertools.pairwise(bounds):
            if b > a:
                z, (h, c) = model(u[:, a:b], (h, c))
                parts.append(z[0].numpy())
            states[b] = (h.clone(), c.clone())
        z_all = np.concatenate(parts)  # [T, head]: row t forecasts from event t on
        first = (z_all[:, :n_levels] * t_std + t_mean) * scale[:, None]  # step 1, every level
        flat = flat_levels(recipe, xs[stream][:, recipe.target])  # a flat window: its value
        if flat is not None:
            first = np.where(np.isnan(flat)[:, None], first, flat[:, None]).astype(first.dtype)
        yhat = np.sort(first, axis=1)[:, mid]  # the median of sorted levels, as served
        one = yhat[n - 1 : len(y) - 1].astype(np.float64)
        one_q = None
        if levels:  # sorted, then calibrated as the Predictor serves them
            one_q = _served_levels(np.sort(first, axis=1), y, config, mid)[n - 1 : len(y) - 1]
        if horizon is not None:
            x = xs[stream]
            for o in cuts:
                hh, cc = states[o]
                ring = np.zeros((1, recipe.buffer_size), np.float32)
                for k in range(max(0, o - recipe.buffer_size), o):
                    ring[0, k % recipe.buffer_size] = x[k, recipe.target]
                start = Origin(
                    hh,
                    cc,
                    torch.tensor([[yhat[o - 1]]], dtype=torch.float32),
                    o,
                    ring,
                    torch.tensor([[scale[o - 1]]], dtype=torch.float32),
                )
                future = x[o : o + horizon]
                if len(future) < horizon:  # past the data's end: the last event repeated
                    future = np.concatenate([future, np.repeat(x[-1:], horizon - len(future), 0)])
                jobs.append((stream, start, future, seed_of(stream, o, horizon)))
        online[stream] = (one, one_q)
    made = []
    if horizon is not None:  # origins of every stream stepped together
        starts, futures, seeds = [j[1] for j in jobs], [j[2] for j in jobs], [j[3] for j in jobs]
        made = run_many(loaded, norm, starts, horizon, seeds, futures=futures)
    paths: dict[str, list[np.ndarray]] = {}
    bands: dict[str, list[np.ndarray]] = {}
    for (stream, *_), result in zip(jobs, made, strict=True):
        paths.setdefault(stream, []).append(result.yhat[:, 0].astype(np.float64))
        if result.quantiles is not None:
            bands.setdefault(stream, []).append(result.quantiles[:, :, 0].astype(np.float64))
    out: dict[str, Forecasts] = {}
    for stream, (one, one_q) in online.items():
        origin = np.concatenate(paths[stream]) if stream in paths else None
        origin_q = np.concatenate(bands[stream]) if stream in bands else None
        out[stream] = Forecasts(one, origin, one_q, origin_q)
    return out


def _served_levels(q: np.ndarray, y: np.ndarray, config: Any, mid: int) -> np.ndarray:
    """A stream's one-step quantiles ``[T, levels]`` (row t: after event t) with the
    version's online calibration, if any, and its adaptive width as the Predictor
    moves it: each actual ``y[t]`` scores row t - 1, then row t is scaled."""
    from streamcell.core.adaptive import scaled, updated
    from streamcell.core.calibration import widen
    from streamcell.core.quantiles import central_intervals
    from streamcell.core.recipe import holds_level

    table = config.calibration_table
    if table is None:
        return q.astype(np.float64)
    qt = torch.from_numpy(np.ascontiguousarray(q, np.float32))[:, :, None]
    factors = torch.tensor(table.online, dtype=torch.float32)[:, None]
    static = widen(qt, factors, mid)
    if table.adaptive is None:
        return static[:, :, 0].numpy().astype(np.float64)
    outer = central_intervals(config.quantile_levels)[0]
    held = config.history is not None and holds_level(config.history)
    actual = y.astype(np.float32)[:, None, None]  # [T, 1 row, 1 target]
    log_w = np.zeros((1, 1), np.float32)
    out = np.empty(static.shape, np.float32)
    out[0] = static[0].numpy()
    for t in range(1, len(static)):
        log_w = updated(log_w, out[t - 1 : t], actual[t], outer, table.adaptive.gamma, held)
        out[t] = scaled(static[t : t + 1], torch.from_numpy(log_w), mid)[0].numpy()
    return out[:, :, 0].astype(np.float64)


def score(
    ds: Dataset, result: Any, name: str, lags: int = 1, every_row: bool = False
) -> dict[str, Forecasts]:
    """Protocols A and B through the Predictor, for every stream of the data set.

    ``every_row``: replay leading zeros too (recipe models are trained on them).
    """
    from streamcell.core.events import EventBatch
    from streamcell.core.predictor import Predictor
    from streamcell.trainer.api import loaded_model

    streams = ds.streams
    predictor = Predictor(loaded_model(result, name), max_streams=len(streams) + 1)
    if every_row:
        frame, features = ds.frame, list(ds.features)
    else:
        frame, features, _ = model_frame(ds, ds.frame, lags)
    x = frame[features].to_numpy(np.float32)
    ids = frame["stream"].astype(str).to_numpy()
    seq = frame["seq"].to_numpy(np.int64)
    n_train = frame["stream"].map(ds.n_train).to_numpy(np.int64)
    # yhat[r]: the prediction emitted for row r's event, i.e. the forecast of seq + 1.
    yhat = np.full(len(frame), np.nan, dtype=np.float64)
    bounds = np.flatnonzero(np.diff(ds.step[frame.index.to_numpy()])) + 1
    batches = np.split(np.arange(len(frame)), bounds)
    origin: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for rows in batches:
        # A stream's Forecast starts from its state at the end of its own
        # training part: just before its first test event, whenever that is
        # (panels whose series end at different months start testing apart).
        first_test = [ids[r] for r in rows[seq[rows] == n_train[rows]]]
        if first_test:
            origin.update(_forecast_all(predictor, ds, first_test))
        batch = EventBatch.of([ids[r] for r in rows], x[rows], seq[rows])
        out = predictor.predict(batch, now=0.0)
        yhat[rows] = out.yhat[:, 0]
    untested = [s for s in streams if s not in origin]
    if untested:
        origin.update(_forecast_all(predictor, ds, untested))

    position = {(s, q): r for r, (s, q) in enumerate(zip(ids, seq, strict=True))}
    forecasts: dict[str, Forecasts] = {}
    for stream, y, n in ds.series():
        # A stream whose training part is all zeros has no prediction before its test part.
        before = [position.get((stream, q - 1)) for q in range(n, len(y))]
        one = np.array([0.0 if r is None else yhat[r] for r in before])
        path, band = origin.get(stream, (None, None))
        forecasts[stream] = Forecasts(one, path, None, band)
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


def _forecast_all(
    predictor: Any, ds: Dataset, streams: list[str]
) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Protocol B: ``horizon`` steps from each of ``streams``' current state (the
    caller calls it at the end of their training parts)."""
    if ds.horizon is None or not predictor.config.autoregressive:
        return {}
    out = {}
    for stream in streams:
        made = predictor.forecast_result(stream, ds.horizon)
        q = None if made.quantiles is None else made.quantiles[:, :, 0].astype(np.float64)
        out[stream] = (made.yhat[:, 0].astype(np.float64), q)
    return out
