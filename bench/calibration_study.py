"""Interval calibration studied offline: train ``lstm_default`` once, compare calibrations.

    python -m bench.calibration_study train tourism_quarterly  # /tmp/calibration_study/NAME.*
    python -m bench.calibration_study report tourism_quarterly vic_elec ...

``train`` trains a data set's defaults as ``bench.accuracy`` does, keeps the
validated model beside the served one (with a final fit, the blend of it and
the refit) and saves both models' raw quantiles: one step ahead after every
row, and the Forecasts from the validation origins the trainer calibrates on
(``calibrate.spread_origins``) and from protocol B's test origins, made by
``streamcell.core.forecast.run`` as ``bench.lstm.score_recipe`` makes them.

``report`` then serves the blend's test part under each calibration with
numpy and the trainer's and core's own functions, no retraining:
main's (one factor per level, fitted on the validated model, static), the
per-interval factors fitted on the validated or the served model, with or
without the adaptive width (``streamcell.core.adaptive``) moved over every
row as the Predictor moves it. Besides: raw coverage of the validated model
on validation and test, and of the blend. The 80% interval's coverage and
the mean weighted quantile loss over the nine levels, pooled over series.

``variants`` probes two more (docs/BENCHMARKS.md, "Forecast intervals per
step, and gamma on validation"): the Forecast's per-step table times the
stream's one-step adaptive width at the origin to a power (0.5, 1), on
validation and test; and the width's step gamma chosen on validation (factors
fitted on its first half, the width scored on its second), beside each
gamma's test coverage.

``steps`` probes the fixed-origin options of issue 16 (docs/BENCHMARKS.md,
"Forecast widths from scored multi-step predictions"): a width per Forecast
step moved, as core.adaptive moves the one-step width, by the stream's own
scored direct-head predictions (``train`` keeps every row's whole head,
``heads`` ``[T, H, L]``), per step or pooled over steps, by gamma, centred
over streams or moved from validation on; per-step tables fitted on every
validation row's direct predictions; and conformalized quantile regression
per step, additive in the stream's scale.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

OUT = Path("/tmp/calibration_study")
LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MID = 4


# ------------------------------------------------- saved predictions (no pickle)
def _save(path: Path, data: Any) -> None:
    """``data`` (dicts with any keys, lists, numbers, arrays) as JSON plus an .npz of its arrays."""
    arrays: list[np.ndarray] = []

    def encode(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            arrays.append(obj)
            return {"array": len(arrays) - 1}
        if isinstance(obj, dict):
            return {"items": [[encode(k), encode(v)] for k, v in obj.items()]}
        if isinstance(obj, (list, tuple)):
            return {"list": [encode(v) for v in obj]}
        return {"value": obj.item() if isinstance(obj, np.generic) else obj}

    tree = encode(data)
    np.savez(path.with_suffix(".npz"), *arrays)
    path.with_suffix(".json").write_text(json.dumps(tree))


def _load(path: Path) -> Any:
    with np.load(path.with_suffix(".npz"), allow_pickle=False) as npz:
        arrays = [npz[f"arr_{k}"] for k in range(len(npz.files))]

    def decode(node: dict[str, Any]) -> Any:
        if "array" in node:
            return arrays[node["array"]]
        if "items" in node:
            return {decode(k): decode(v) for k, v in node["items"]}
        if "list" in node:
            return [decode(v) for v in node["list"]]
        return node["value"]

    return decode(json.loads(path.with_suffix(".json").read_text()))


# ------------------------------------------------------------------ train
def train(name: str) -> None:
    from bench import accuracy, lstm
    from streamcell.trainer import datasets, select
    from streamcell.trainer.calibrate import MAX_ORIGINS, ORIGINS, spread_origins
    from streamcell.trainer.data import split_point
    from streamcell.trainer.loop import restore_best

    torch.set_num_threads(1)
    ds = datasets.load(name)
    chosen: dict[str, Any] = {}
    choose = select.choose

    def keep(*args: Any, **kwargs: Any) -> Any:
        chosen["it"] = choose(*args, **kwargs)
        return chosen["it"]

    select.choose = keep  # to keep the validated model beside the served one
    settings = accuracy.recipe_settings("lstm_default")
    started = time.time()
    trained, info = lstm.train(ds, settings)
    ch = chosen["it"]
    validated = restore_best(ch.model, ch.state)
    horizon = max(ch.prepared.default_horizon, ch.prepared.horizon)
    starts, test_h = accuracy.b_origins(ds) or ({}, None)
    limit = max(1, ORIGINS // max(len(ch.prepared), 1))
    prepared = {s.stream: s for s in ch.prepared.streams}
    origins: dict[str, list[tuple[int, int]]] = {}
    meta: dict[str, dict[str, Any]] = {}
    for stream, y, n in ds.series():
        s = prepared.get(stream)
        val = []
        if s is not None:
            spread = spread_origins(s, horizon, max(limit, MAX_ORIGINS), ch.prepared.season)
            val = [(b, min(horizon, len(s.y) - b)) for b in spread]
        test = [(o, test_h) for o in starts.get(stream, [])]
        origins[stream] = val + test
        meta[stream] = {
            "y": np.asarray(y, np.float64),
            "n": n,
            "nv": split_point(n, settings.val_fraction),
            "val_origins": [o for o, _ in val],
            "test_origins": [o for o, _ in test],
            "trained": s is not None,
        }
    from streamcell.trainer.api import TrainResult

    raw = replace(trained.config, calibration=None)
    preds = {
        key: _raw(ds, TrainResult(model, raw, []), origins)
        for key, model in (("blend", trained.model), ("validated", validated))
    }
    OUT.mkdir(exist_ok=True)
    _save(
        OUT / name,
        {
            "meta": meta,
            "preds": preds,
            "calibration": trained.config.calibration,
            "final_fit": ch.final is not None,
            "record": info.get("calibration"),
            "horizon": int(trained.config.horizon),
        },
    )
    print(f"{name}: {time.time() - started:.0f} s", file=sys.stderr)


@torch.no_grad()
def _raw(ds: Any, result: Any, origins: dict[str, list[tuple[int, int]]]) -> dict[str, Any]:
    """Per stream: the head's step-1 levels after every row ``[T, L]`` (row t: for y[t + 1])
    and ``{origin: quantiles [steps, L]}``, uncalibrated (bench.lstm.score_recipe's code)."""
    from streamcell.core.forecast import Normaliser, Origin, run, seed_of
    from streamcell.trainer.api import loaded_model
    from streamcell.trainer.prepare import featurize_all

    config, model = result.config, result.model.eval()
    loaded, recipe = loaded_model(result), config.history
    in_mean = np.asarray(config.input_mean, np.float32)
    in_std = np.asarray(config.input_std, np.float32)
    norm = Normaliser(
        torch.from_numpy(in_mean),
        torch.from_numpy(in_std),
        torch.tensor(config.target_mean, dtype=torch.float32),
        torch.tensor(config.target_std, dtype=torch.float32),
    )
    t_mean, t_std = float(config.target_mean[0]), float(config.target_std[0])
    series = list(ds.series())
    frame = ds.frame.sort_values(["stream", "seq"], kind="stable")
    xs = {
        str(s): g[list(ds.features)].to_numpy(np.float32)
        for s, g in frame.groupby("stream", sort=False)
    }
    out = {}
    computed = featurize_all(recipe, [xs[s] for s, _, _ in series])
    for (stream, y, _n), (feats, scale) in zip(series, computed, strict=True):
        u = torch.from_numpy((feats - in_mean) / in_std).unsqueeze(0)
        cuts = sorted({o for o, _ in origins.get(stream, [])})
        h, c = model.zero_state(1, torch.device("cpu"))
        parts, states = [], {}
        for a, b in itertools.pairwise([0, *cuts, len(y)]):
            if b > a:
                z, (h, c) = model(u[:, a:b], (h, c))
                parts.append(z[0].numpy())
            states[b] = (h.clone(), c.clone())
        z_all = np.concatenate(parts).reshape(len(y), config.horizon, config.n_levels)
        heads = (z_all * t_std + t_mean) * scale[:, None, None]
        first = heads[:, 0]
        yhat = np.sort(first, axis=1)[:, MID]
        x, fc = xs[stream], {}
        for o, steps in origins.get(stream, []):
            ring = np.zeros((1, recipe.buffer_size), np.float32)
            for k in range(max(0, o - recipe.buffer_size), o):
                ring[0, k % recipe.buffer_size] = x[k, recipe.target]
            start = Origin(
                *states[o],
                torch.tensor([[yhat[o - 1]]], dtype=torch.float32),
                o,
                ring,
                torch.tensor([[scale[o - 1]]], dtype=torch.float32),
            )
            future = x[o : o + steps]
            if len(future) < steps:
                future = np.concatenate([future, np.repeat(x[-1:], steps - len(future), 0)])
            made = run(loaded, norm, start, steps, seed_of(stream, o, steps), future=future)
            assert made.quantiles is not None
            fc[o] = made.quantiles[:, :, 0].astype(np.float64)
        # heads [T, H, L]: row t's direct quantiles for y[t + 1 .. t + H] (H = 1: first)
        out[stream] = {
            "first": first.astype(np.float64),
            "fc": fc,
            "heads": heads.astype(np.float32),
        }
    return out


# ----------------------------------------------------------------- report
def _online(d: dict[str, Any], key: str, part: str) -> tuple[np.ndarray, np.ndarray]:
    qs, ys = [], []
    for s, m in d["meta"].items():
        lo, hi = (m["nv"], m["n"]) if part == "val" else (m["n"], len(m["y"]))
        if m["trained"] and hi > lo:
            qs.append(np.sort(d["preds"][key][s]["first"][lo - 1 : hi - 1], axis=1))
            ys.append(m["y"][lo:hi])
    return np.concatenate(qs), np.concatenate(ys)


def _served_online(d: dict[str, Any], a: np.ndarray, gamma: float) -> tuple[np.ndarray, ...]:
    """The blend's one-step test quantiles with static factors ``a`` and, for gamma > 0,
    each stream's adaptive width moved over every row (bench.lstm._served_levels)."""
    from bench.lstm import _served_levels
    from streamcell.core.adaptive import Adaptive
    from streamcell.core.calibration import Calibration

    adaptive = Adaptive(gamma) if gamma else None

    class Config:  # what _served_levels reads of a ModelConfig
        quantile_levels = LEVELS
        calibration_table = Calibration(tuple(a), (), adaptive)

    qs, ys = [], []
    for s, m in d["meta"].items():
        y, n = m["y"], m["n"]
        if m["trained"] and len(y) > n:
            q = _served_levels(np.sort(d["preds"]["blend"][s]["first"], axis=1), y, Config, MID)
            qs.append(q[n - 1 : len(y) - 1])
            ys.append(y[n:])
    return np.concatenate(qs), np.concatenate(ys)


def _forecasts(d: dict[str, Any], key: str, part: str, table: np.ndarray) -> tuple[np.ndarray, ...]:
    from streamcell.core.calibration import widen_steps

    qs, ys = [], []
    for s, m in d["meta"].items():
        if not m["trained"]:
            continue
        for o in m["val_origins" if part == "val" else "test_origins"]:
            q = d["preds"][key][s]["fc"][o]
            steps = min(len(q), len(m["y"]) - o)
            q = np.sort(q[:steps], axis=1)
            rows = table[np.minimum(np.arange(steps), len(table) - 1)].astype(np.float32)
            qs.append(widen_steps(q[:, :, None].astype(np.float32), rows, MID)[:, :, 0])
            ys.append(m["y"][o : o + steps])
    return np.concatenate(qs).astype(np.float64), np.concatenate(ys)


def _fit_online(d: dict[str, Any], key: str) -> np.ndarray:
    from streamcell.trainer.calibrate import Counts, factors

    q, y = _online(d, key, "val")
    counts = Counts.zero(1, len(LEVELS))
    counts.add(0, q, y, MID)
    return np.array(factors(counts.below[0], int(counts.points[0]), LEVELS))


def _fit_table(d: dict[str, Any], key: str, steps: int) -> np.ndarray:
    from streamcell.trainer.calibrate import MIN_POINTS, Counts, factors, pooled

    counts = Counts.zero(steps, len(LEVELS))
    one = np.ones((1, len(LEVELS)))
    q, y = _forecasts(d, key, "val", one)
    k = np.concatenate(
        [
            np.arange(min(len(d["preds"][key][s]["fc"][o]), len(m["y"]) - o))
            for s, m in d["meta"].items()
            if m["trained"]
            for o in m["val_origins"]
        ]
    )
    for step in range(steps):
        if (k == step).any():
            counts.add(step, q[k == step], y[k == step], MID)
    if int(counts.points.sum()) < MIN_POINTS:
        return one
    below, points = pooled(counts)
    return np.array([factors(below[j], int(points[j]), LEVELS) for j in range(steps)])


def _scores(q: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    inside = float(((q[:, 0] <= y) & (y <= q[:, -1])).mean())
    loss = sum(
        np.sum(np.maximum(tau * (y - q[:, j]), (tau - 1) * (y - q[:, j])))
        for j, tau in enumerate(LEVELS)
    )
    scale = float(np.sum(np.abs(y)))
    wql = 2 * loss / len(LEVELS) / scale if scale > 0 else float("nan")  # all-zero actuals
    return round(inside, 3), round(float(wql), 4)


def report(name: str) -> dict[str, Any]:
    from streamcell.trainer.calibrate import ADAPTIVE_GAMMA

    d = _load(OUT / name)
    steps = max(1, len(d["calibration"]["forecast"]))
    per_level = _per_level(d, "validated")
    rows: dict[str, Any] = {"final fit": d["final_fit"]}
    v_val, v_test = _online(d, "validated", "val"), _online(d, "validated", "test")
    rows["raw validated A: val, test"] = (_scores(*v_val)[0], _scores(*v_test)[0])
    rows["raw blend A: val (refit in-sample), test"] = (
        _scores(*_online(d, "blend", "val"))[0],
        _scores(*_online(d, "blend", "test"))[0],
    )
    rows["A main (per level, validated, static)"] = _scores(*_served_online(d, per_level[0], 0))
    a_v, a_b = _fit_online(d, "validated"), _fit_online(d, "blend")
    rows["A per interval, validated, static"] = _scores(*_served_online(d, a_v, 0))
    rows["A per interval, served, static"] = _scores(*_served_online(d, a_b, 0))
    rows["A per level, validated, adaptive"] = _scores(
        *_served_online(d, per_level[0], ADAPTIVE_GAMMA)
    )
    rows["A branch (per interval, served, adaptive)"] = _scores(
        *_served_online(d, a_b, ADAPTIVE_GAMMA)
    )
    rows["B main (per level, validated)"] = _scores(*_forecasts(d, "blend", "test", per_level[1]))
    rows["B per interval, validated"] = _scores(
        *_forecasts(d, "blend", "test", _fit_table(d, "validated", steps))
    )
    rows["B branch (per interval, served)"] = _scores(
        *_forecasts(d, "blend", "test", _fit_table(d, "blend", steps))
    )
    return rows


def _per_level(d: dict[str, Any], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Main's factors: one per level (the trainer's rule before this branch)."""
    from streamcell.trainer import calibrate

    def per_level(below: np.ndarray, points: int, levels: tuple[float, ...]) -> list[float]:
        if points < calibrate.MIN_POINTS:
            return [1.0] * len(levels)
        out = []
        for j, tau in enumerate(levels):
            sign = 1.0 if tau > 0.5 else -1.0
            out.append(
                1.0 if tau == 0.5 else calibrate._crossing(sign * below[j] / points, sign * tau)
            )
        return out

    saved = calibrate.factors
    calibrate.factors = per_level  # type: ignore[assignment]
    try:
        steps = max(1, len(d["calibration"]["forecast"]))
        return _fit_online(d, key), _fit_table(d, key, steps)
    finally:
        calibrate.factors = saved  # type: ignore[assignment]


# --------------------------------------------------------------- variants
GAMMAS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


def _log_widths(d: dict[str, Any], a: np.ndarray, gamma: float, s: str) -> np.ndarray:
    """The blend's one-step width (log) for stream ``s``, row t: once y[t - 1] is scored
    (row 0: 0), as ``bench.lstm._served_levels`` moves it."""
    from streamcell.core.adaptive import updated
    from streamcell.core.calibration import widen
    from streamcell.core.quantiles import central_intervals

    key = (s, gamma, tuple(a))
    if key in _WIDTHS:
        return _WIDTHS[key]
    y = d["meta"][s]["y"]
    q = np.sort(d["preds"]["blend"][s]["first"], axis=1)
    qt = torch.from_numpy(np.ascontiguousarray(q, np.float32))[:, :, None]
    static = widen(qt, torch.tensor(a, dtype=torch.float32)[:, None], MID)[:, :, 0].numpy()
    outer = central_intervals(LEVELS)[0]
    out = np.zeros(len(y) + 1, np.float32)
    log_w = np.zeros((1, 1), np.float32)
    for t in range(1, len(y)):
        row = static[t - 1]
        row = row[MID] + np.exp(log_w[0, 0]) * (row - row[MID])
        actual = np.array([[y[t]]], np.float32)
        log_w = updated(log_w, row[None, :, None].astype(np.float32), actual, outer, gamma)
        out[t + 1] = log_w[0, 0]
    _WIDTHS[key] = out
    return out


_WIDTHS: dict[tuple[Any, ...], np.ndarray] = {}


def _widened_forecasts(
    d: dict[str, Any], part: str, table: np.ndarray, power: float, a: np.ndarray
) -> tuple[np.ndarray, ...]:
    """The blend's Forecasts with the table, each times the stream's width to ``power``."""
    from streamcell.core.calibration import widen_steps
    from streamcell.trainer.calibrate import ADAPTIVE_GAMMA

    qs, ys = [], []
    for s, m in d["meta"].items():
        if not m["trained"]:
            continue
        for o in m["val_origins" if part == "val" else "test_origins"]:
            q = d["preds"]["blend"][s]["fc"][o]
            steps = min(len(q), len(m["y"]) - o)
            q = np.sort(q[:steps], axis=1)
            rows = table[np.minimum(np.arange(steps), len(table) - 1)].astype(np.float32)
            if power:
                w = np.exp(power * _log_widths(d, a, ADAPTIVE_GAMMA, s)[o])
                rows = rows * np.float32(w)
            qs.append(widen_steps(q[:, :, None].astype(np.float32), rows, MID)[:, :, 0])
            ys.append(m["y"][o : o + steps])
    return np.concatenate(qs).astype(np.float64), np.concatenate(ys)


def _online_between(
    d: dict[str, Any], a: np.ndarray | None, gamma: float, lo: Any, hi: Any
) -> tuple[np.ndarray, np.ndarray]:
    """The blend's one-step quantiles on rows [lo(m), hi(m)) of each stream; ``a`` None:
    raw (for fitting), else served with factors ``a`` and the width at ``gamma``."""
    from bench.lstm import _served_levels
    from streamcell.core.adaptive import Adaptive
    from streamcell.core.calibration import Calibration

    class Config:  # what _served_levels reads of a ModelConfig
        quantile_levels = LEVELS
        calibration_table = (
            None if a is None else Calibration(tuple(a), (), Adaptive(gamma) if gamma else None)
        )

    qs, ys = [], []
    for s, m in d["meta"].items():
        y, a_, b_ = m["y"], lo(m), hi(m)
        if m["trained"] and b_ > a_:
            q = _served_levels(np.sort(d["preds"]["blend"][s]["first"], axis=1), y, Config, MID)
            qs.append(q[a_ - 1 : b_ - 1])
            ys.append(y[a_:b_])
    return np.concatenate(qs), np.concatenate(ys)


def _fit_between(d: dict[str, Any], lo: Any, hi: Any) -> np.ndarray:
    from streamcell.trainer.calibrate import Counts, factors

    q, y = _online_between(d, None, 0.0, lo, hi)
    counts = Counts.zero(1, len(LEVELS))
    counts.add(0, q, y, MID)
    return np.array(factors(counts.below[0], int(counts.points[0]), LEVELS))


def variants(name: str) -> dict[str, Any]:
    d = _load(OUT / name)
    steps = max(1, len(d["calibration"]["forecast"]))
    table, a = _fit_table(d, "blend", steps), _fit_online(d, "blend")
    rows: dict[str, Any] = {}
    for power in (0.0, 0.5, 1.0):
        rows[f"B table x width^{power}: val, test"] = [
            _scores(*_widened_forecasts(d, part, table, power, a)) for part in ("val", "test")
        ]

    def half(m: dict[str, Any]) -> int:
        return int((m["nv"] + m["n"]) // 2)

    a_first = _fit_between(d, lambda m: m["nv"], half)
    second = {
        g: _scores(*_online_between(d, a_first, g, half, lambda m: m["n"]))[0] for g in GAMMAS
    }
    test = {
        g: _scores(*_online_between(d, a, g, lambda m: m["n"], lambda m: len(m["y"])))
        for g in GAMMAS
    }
    pick = min(GAMMAS, key=lambda g: (abs(second[g] - 0.8), g))
    rows["A by gamma: validation's second half"] = second
    rows["A by gamma: test"] = test
    rows["A gamma chosen on validation"] = (pick, test[pick])
    return rows


# ------------------------------------------------------------ step widths
STEP_GAMMAS = (0.02, 0.05, 0.1, 0.2)
OUTER = 0.8  # the 80 % interval: levels 0.1 and 0.9, the first and last


def _table_rows(table: np.ndarray, steps: int) -> np.ndarray:
    return table[np.minimum(np.arange(steps), len(table) - 1)].astype(np.float32)


def _calibrated(q: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Sorted quantiles ``[..., L]`` times factors ``[..., L]`` about the median, sorted
    again (core.calibration.widen in numpy, float32)."""
    q = q.astype(np.float32)
    m = q[..., MID : MID + 1]
    return np.sort(m + rows * (q - m), axis=-1)


def _step_widths(
    d: dict[str, Any], s: str, table: np.ndarray, gamma: float, pooled_steps: bool, start: int = 1
) -> np.ndarray:
    """``log w`` ``[T, H]`` of stream ``s``: row t's width for each head step, once y[t] is
    scored. Every row's direct head predicts y[t + 1 .. t + H]; when y[t] arrives, each of
    the H predictions made for it (row t - 1 - k, step k) is scored as it was served (table
    row k, times exp(log w) of its row and step) and moves its step's log width by
    gamma (miss - 0.2), as core.adaptive moves the one-step width; ``pooled_steps``: one
    width for all steps, moved by the mean of the H misses. Rows before ``start`` move
    nothing (the width as fitted until then)."""
    key = ("steps", s, gamma, pooled_steps, start, table.tobytes())
    if key in _WIDTHS:
        return _WIDTHS[key]
    y = d["meta"][s]["y"].astype(np.float32)
    heads = np.sort(d["preds"]["blend"][s]["heads"], axis=2)  # [T, H, L]
    t_len, h = heads.shape[:2]
    q = _calibrated(heads, _table_rows(table, h)[None])
    m = q[:, :, MID]
    lo, hi = q[:, :, 0] - m, q[:, :, -1] - m
    lw = np.zeros(h, np.float32)
    out = np.zeros((t_len, h), np.float32)
    ks = np.arange(h)
    g, target = np.float32(gamma), np.float32(1 - OUTER)
    lowest, highest = np.float32(np.log(0.1)), np.float32(np.log(10.0))
    for t in range(max(1, start), t_len):
        r = t - 1 - ks
        ok = r >= 0
        rk, kk = r[ok], ks[ok]
        w = np.exp(out[rk, kk])
        c = m[rk, kk]
        miss = ((y[t] < c + w * lo[rk, kk]) | (y[t] > c + w * hi[rk, kk])).astype(np.float32)
        if pooled_steps:
            lw = lw + g * (np.float32(miss.mean()) - target)
        else:
            lw[kk] = lw[kk] + g * (miss - target)
        lw = np.clip(lw, lowest, highest)
        out[t] = lw
    _WIDTHS[key] = out
    return out


def _step_forecasts(
    d: dict[str, Any],
    part: str,
    table: np.ndarray,
    gamma: float | None,
    pooled_steps: bool,
    from_validation: bool = False,
    centred: bool = False,
) -> tuple[np.ndarray, ...]:
    """The blend's Forecasts at the part's origins with the table, each step times its
    stream's step width at the origin (steps past the head's: its last step's); gamma
    None: the table alone (main). ``from_validation``: the widths start moving at the
    validation rows, where the table was fitted. ``centred``: each step's log widths less
    their mean over the part's origins (all streams): the stream's width relative to the
    others', the table keeping the level (label-free: widths use rows before each origin)."""
    qs, ys, made = [], [], []
    for s, m in d["meta"].items():
        if not m["trained"]:
            continue
        start = m["nv"] if from_validation else 1
        lw = None if gamma is None else _step_widths(d, s, table, gamma, pooled_steps, start)
        for o in m["val_origins" if part == "val" else "test_origins"]:
            q = d["preds"]["blend"][s]["fc"][o]
            steps = min(len(q), len(m["y"]) - o)
            lw_o = None if lw is None else lw[o - 1][np.minimum(np.arange(steps), lw.shape[1] - 1)]
            made.append((s, m, o, q, steps, lw_o))
    shift = np.zeros(1, np.float32)
    if centred and gamma is not None:
        longest = max(steps for *_, steps, _ in made)
        total, count = np.zeros(longest), np.zeros(longest)
        for *_, steps, lw_o in made:
            total[:steps] += lw_o
            count[:steps] += 1
        shift = (total / np.maximum(count, 1)).astype(np.float32)
    for _s, m, o, q, steps, lw_o in made:
        q = _calibrated(np.sort(q[:steps], axis=1), _table_rows(table, steps))
        if lw_o is not None:
            w = np.exp(lw_o - (shift[:steps] if centred else 0))
            med = q[:, MID : MID + 1]
            q = med + w[:, None] * (q - med)
        qs.append(q)
        ys.append(m["y"][o : o + steps])
    return np.concatenate(qs).astype(np.float64), np.concatenate(ys)


def _rolling_table(d: dict[str, Any], lo: Any, hi: Any) -> np.ndarray:
    """Per-step factors fitted as the trainer fits them (per interval, steps pooled to
    MIN_CELL points) on the blend's direct-head predictions from every row whose target
    lies in rows [lo(m), hi(m)) (validation), instead of the spread origins alone."""
    from streamcell.trainer.calibrate import MIN_POINTS, Counts, factors, pooled

    h = int(d["horizon"])
    counts = Counts.zero(h, len(LEVELS))
    for k in range(h):
        qk, yk = [], []
        for s, m in d["meta"].items():
            if not m["trained"]:
                continue
            a, b = lo(m), hi(m)
            targets = np.arange(max(a, k + 1), b)
            if len(targets):
                heads = d["preds"]["blend"][s]["heads"]
                qk.append(np.sort(heads[targets - 1 - k, k], axis=1))
                yk.append(m["y"][targets])
        if yk:
            counts.add(k, np.concatenate(qk), np.concatenate(yk), MID)
    if int(counts.points.sum()) < MIN_POINTS:
        return np.ones((1, len(LEVELS)))
    below, points = pooled(counts)
    return np.array([factors(below[j], int(points[j]), LEVELS) for j in range(h)])


def _width_groups(d: dict[str, Any], table: np.ndarray, gamma: float) -> dict[str, Any]:
    """Does a stream's own past say which way its test Forecast misses? Test points grouped
    by their stream's step width at the origin (per step, moved from row 1): each
    group's share of points and its coverage with the table alone (main)."""
    groups: dict[str, list[float]] = {"w < 0.9": [], "0.9 <= w <= 1.1": [], "w > 1.1": []}
    for s, m in d["meta"].items():
        if not m["trained"]:
            continue
        lw = _step_widths(d, s, table, gamma, False)
        for o in m["test_origins"]:
            q = d["preds"]["blend"][s]["fc"][o]
            n = min(len(q), len(m["y"]) - o)
            q = _calibrated(np.sort(q[:n], axis=1), _table_rows(table, n))
            y = m["y"][o : o + n]
            w = np.exp(lw[o - 1][np.minimum(np.arange(n), lw.shape[1] - 1)])
            inside = ((q[:, 0] <= y) & (y <= q[:, -1])).astype(float)
            for wk, ik in zip(w, inside, strict=True):
                key = "w < 0.9" if wk < 0.9 else "w > 1.1" if wk > 1.1 else "0.9 <= w <= 1.1"
                groups[key].append(float(ik))
    total = sum(len(v) for v in groups.values())
    return {
        k: (round(len(v) / max(total, 1), 3), round(float(np.mean(v)), 3) if v else None)
        for k, v in groups.items()
    }


def _unit(m: dict[str, Any]) -> float:
    """A stream's scale from its training rows alone: the mean absolute one-step change."""
    y = m["y"][: m["nv"]]
    u = float(np.mean(np.abs(np.diff(y)))) if len(y) > 1 else 0.0
    return u if u > 0 else 1.0


def _raw_points(d: dict[str, Any], part: str) -> tuple[np.ndarray, ...]:
    """The blend's uncalibrated Forecasts at the part's origins: sorted quantiles [N, L],
    actuals, step, the stream's unit."""
    qs, ys, ks, us = [], [], [], []
    for _s, m in d["meta"].items():
        if not m["trained"]:
            continue
        for o in m["val_origins" if part == "val" else "test_origins"]:
            q = d["preds"]["blend"][_s]["fc"][o]
            n = min(len(q), len(m["y"]) - o)
            qs.append(np.sort(q[:n], axis=1))
            ys.append(m["y"][o : o + n])
            ks.append(np.arange(n))
            us.append(np.full(n, _unit(m)))
    return tuple(np.concatenate(v) for v in (qs, ys, ks, us))


def _additive(d: dict[str, Any]) -> tuple[np.ndarray, ...]:
    """Conformalized quantile regression (Romano et al. 2019) per step, the offset in units
    of the stream's training-row scale: each central interval [q_lo - c u, q_hi + c u], c the
    finite-sample quantile of max(q_lo - y, y - q_hi) / u over validation's points of the
    step (neighbouring steps pooled to MIN_CELL points). Test Forecasts so calibrated."""
    from streamcell.core.quantiles import central_intervals
    from streamcell.trainer.calibrate import MIN_CELL

    q, y, k, u = _raw_points(d, "val")
    longest = int(k.max()) + 1
    ivs = central_intervals(LEVELS)
    c = np.zeros((longest, len(ivs)))
    for step in range(longest):
        lo, hi = step, step + 1
        while ((k >= lo) & (k < hi)).sum() < min(MIN_CELL, len(k)) and (lo > 0 or hi < longest):
            lo, hi = max(lo - 1, 0), min(hi + 1, longest)
        sel = (k >= lo) & (k < hi)
        for j, iv in enumerate(ivs):
            score = np.maximum(q[sel, iv.lower] - y[sel], y[sel] - q[sel, iv.upper]) / u[sel]
            n = len(score)
            rank = min(1.0, np.ceil((n + 1) * iv.coverage) / n)
            c[step, j] = np.quantile(score, rank, method="higher")
    out = []
    for part in ("val", "test"):
        q, y, k, u = _raw_points(d, part)
        q = q.copy()
        cs = c[np.minimum(k, longest - 1)]
        for j, iv in enumerate(ivs):
            q[:, iv.lower] -= cs[:, j] * u
            q[:, iv.upper] += cs[:, j] * u
        out.append((np.sort(q, axis=1), y))
    return tuple(out)


def steps(name: str) -> dict[str, Any]:
    """Fixed-origin variants: the step widths (per step and pooled, by gamma) on the
    trainer's table, and tables fitted on every validation row's direct predictions."""
    d = _load(OUT / name)
    table = np.asarray(d["calibration"]["forecast"], np.float64)
    if not len(table):
        table = np.ones((1, len(LEVELS)))
    rows: dict[str, Any] = {"head steps": int(d["horizon"]), "table steps": len(table)}
    rows["B main: val, test"] = [
        _scores(*_step_forecasts(d, part, table, None, False)) for part in ("val", "test")
    ]
    for pooled_steps in (False, True):
        label = "pooled" if pooled_steps else "per step"
        for g in STEP_GAMMAS:
            rows[f"B width {label}, gamma {g}: val, test"] = [
                _scores(*_step_forecasts(d, part, table, g, pooled_steps))
                for part in ("val", "test")
            ]
    # gamma (or none: main) by validation's wQL, a proper score, ties to the smaller gamma
    by_val = [(rows["B main: val, test"][0][1], 0.0, None)] + [
        (rows[f"B width per step, gamma {g}: val, test"][0][1], g, g) for g in STEP_GAMMAS
    ]
    _, _, pick = min(by_val, key=lambda r: (r[0], r[1]))
    label = "B main" if pick is None else f"B width per step, gamma {pick}"
    rows["B per-step gamma chosen by validation wQL (None: no width): gamma, test"] = (
        pick,
        rows[f"{label}: val, test"][1],
    )
    for g in (0.05, 0.1):
        rows[f"B width per step, gamma {g}, centred over streams: val, test"] = [
            _scores(*_step_forecasts(d, part, table, g, False, centred=True))
            for part in ("val", "test")
        ]
    for g in (0.05, 0.1):
        rows[f"B width per step, gamma {g}, moved from validation: val, test"] = [
            _scores(*_step_forecasts(d, part, table, g, False, True)) for part in ("val", "test")
        ]
    every = _rolling_table(d, lambda m: m["nv"], lambda m: m["n"])
    late = _rolling_table(d, lambda m: (m["nv"] + m["n"]) // 2, lambda m: m["n"])
    for label, t in (("every validation row", every), ("validation's second half", late)):
        rows[f"B table from {label}: val, test"] = [
            _scores(*_step_forecasts(d, part, t, None, False)) for part in ("val", "test")
        ]
    rows["B CQR per step, additive in the stream's scale: val, test"] = [
        _scores(*pair) for pair in _additive(d)
    ]
    zero = [
        s for s, m in d["meta"].items() if m["trained"] and not np.any(m["y"][m["nv"] : m["n"]])
    ]
    if zero:
        kept = {**d, "meta": {s: m for s, m in d["meta"].items() if s not in zero}}
        rows["streams all zero over their validation rows"] = len(zero)
        rows["B main, then width per step 0.1, without those streams: test"] = [
            _scores(*_step_forecasts(kept, "test", table, g, False))[0] for g in (None, 0.1)
        ]
        only = {**d, "meta": {s: d["meta"][s] for s in zero}}
        rows["B main on those streams alone: test"] = _scores(
            *_step_forecasts(only, "test", table, None, False)
        )[0]
    rows["test points by width at origin (gamma 0.1): share, main's coverage"] = _width_groups(
        d, table, 0.1
    )
    rows["B table from every validation row + width per step 0.1: val, test"] = [
        _scores(*_step_forecasts(d, part, every, 0.1, False)) for part in ("val", "test")
    ]
    return rows


# ------------------------------------------------------------------ sides
def _sided_online(d: dict[str, Any], a: np.ndarray, gamma: float) -> tuple[np.ndarray, ...]:
    """The blend's one-step test quantiles, factors ``a``, and each stream's two widths, one
    per side of the median: the levels below it scaled by ``exp(log w_lo)``, those above by
    ``exp(log w_hi)``, each log moved by gamma (miss on its side - 0.1) after each actual
    (adaptive conformal inference on each bound of the 80 % interval): the median stays,
    and the interval may move off it where the served model is biased."""
    qs, ys = [], []
    lowest, highest = np.float32(np.log(0.1)), np.float32(np.log(10.0))
    g, half = np.float32(gamma), np.float32((1 - OUTER) / 2)
    below_mid = np.arange(len(LEVELS)) < MID
    for _s, m in d["meta"].items():
        y, n = m["y"].astype(np.float32), m["n"]
        if not m["trained"] or len(y) <= n:
            continue
        q = np.sort(d["preds"]["blend"][_s]["first"], axis=1)
        static = _calibrated(q, a.astype(np.float32)[None])
        med = static[:, MID : MID + 1]
        dev = static - med
        out = np.empty_like(static)
        out[0] = static[0]
        lw = np.zeros(2, np.float32)
        for t in range(1, len(y)):
            prev = out[t - 1]
            miss = np.array([y[t] < prev[0], y[t] > prev[-1]], np.float32)
            lw = np.clip(lw + g * (miss - half), lowest, highest)
            w = np.where(below_mid, np.exp(lw[0]), np.exp(lw[1])).astype(np.float32)
            out[t] = med[t] + w * dev[t]
        qs.append(out[n - 1 : len(y) - 1])
        ys.append(m["y"][n:])
    return np.concatenate(qs).astype(np.float64), np.concatenate(ys)


def sides(name: str) -> dict[str, Any]:
    """Online: main's width (one per stream) against one per side of the median, by gamma."""
    from streamcell.trainer.calibrate import ADAPTIVE_GAMMA

    d = _load(OUT / name)
    a = _fit_online(d, "blend")
    rows: dict[str, Any] = {
        "A main (one width, gamma 0.1)": _scores(*_served_online(d, a, ADAPTIVE_GAMMA))
    }
    for g in (0.05, 0.1, 0.2):
        rows[f"A a width per side, gamma {g}"] = _scores(*_sided_online(d, a, g))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["train", "report", "variants", "steps", "sides"])
    parser.add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    for name in args.names:
        if args.what == "train":
            train(name)
        elif args.what == "sides":
            print(json.dumps({"data set": name, **sides(name)}), flush=True)
        elif args.what == "steps":
            print(json.dumps({"data set": name, **steps(name)}), flush=True)
        elif args.what == "variants":
            print(json.dumps({"data set": name, **variants(name)}), flush=True)
        else:
            print(json.dumps({"data set": name, **report(name)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
