"""Calibrating a chosen model's quantiles on the validation split (split-conformal style).

For each central interval the factor ``a`` of :mod:`streamcell.core.calibration`
(``q' = m + a (q - m)``, both of its levels) is the one at which the interval
holds its nominal share of the validation actuals (a level in no interval:
the share at or below ``q'`` is its level). The share is counted at every factor of a fixed
grid (:data:`GRID`), so counts of disjoint data add up and the factor is read
off them by linear interpolation, never from one stream's values.

- ``online``: the one-step quantiles after each validation event, as the
  Predictor serves them (every stream's validation rows pooled).
- ``forecast``: per Forecast step k, the quantiles of the fixed-origin
  validation Forecasts (:func:`streamcell.trainer.origin.many_forecasts`,
  a Forecast's own code: direct head or sample paths) from origins at least
  the horizon apart, at varied phases of the season (:func:`spread_origins`).
  A step with fewer than :data:`MIN_CELL` points pools the steps around it
  until it has them (one long stream has a few dozen origins). Where the
  validation split allows twice the horizon or more, the table goes on that
  far (:func:`longer_steps`), those rows from longer Forecasts at origins of
  their own, so that a Forecast far past the head's horizon gets widths
  fitted at its steps, not the last short step's.

A table with fewer than :data:`MIN_POINTS` points keeps the factors at 1.
A Ray Dataset run fits the online table alone, from counts its workers sum
(:func:`online_counts`, :func:`from_counts`): the fixed-origin Forecasts
would need each stream's origins in one process, so its Forecasts are
served as the head gives them.
The record says, for each central interval, the validation coverage before
and after (online, and the forecast's averaged over its steps).

The field also turns on each stream's adaptive width
(:mod:`streamcell.core.adaptive`, step :data:`ADAPTIVE_GAMMA`) for the
one-step quantiles: validation fits one set of factors for every stream,
on rows before those served, and each stream's spread drifts from what they
saw in its own way (docs/BENCHMARKS.md, "Calibrated intervals, adaptive").

The model calibrated is the one served (``loaded``): with a final fit, the
blend of the validated model and the refit, although the refit saw the
validation rows (see streamcell.trainer.api.finish).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from streamcell.core.adaptive import Adaptive
from streamcell.core.calibration import Calibration, widen
from streamcell.core.checkpoint import LoadedModel
from streamcell.core.model import StreamingLSTM
from streamcell.core.quantiles import MEDIAN, central_intervals, median_index
from streamcell.trainer.evaluate import predict_levels
from streamcell.trainer.origin import MAX_ORIGINS, can_forecast, many_forecasts
from streamcell.trainer.prepare import Prepared, StreamArrays

# Factors counted: 0, then 1% apart from 0.02 to 50 (1 itself among them).
GRID = np.concatenate([[0.0], np.exp(np.arange(np.log(0.02), np.log(50.0) + 1e-9, np.log(1.01)))])
GRID[np.argmin(np.abs(GRID - 1.0))] = 1.0
MIN_CELL = 200  # points a forecast step's factors are fitted on, neighbouring steps pooled
MIN_POINTS = 30  # fewer in a whole table: its factors stay 1
ORIGINS = 1024  # fixed origins over all streams (at least origin.MAX_ORIGINS per stream)
LONGER_STEPS = 96  # the forecast table's steps at most (see longer_steps)
# The longer Forecasts feed back sample paths at every step past a direct head's
# horizon, so they run from this many origins at most over all streams (a few
# hundred fill its cells of MIN_CELL points), and their rows are kept only from
# enough origins that two paths' chance do not set every later step's width.
LONGER_ORIGINS = 256
MIN_LONGER_ORIGINS = 30
# The adaptive width's step on its log: ten misses in a row (at 0.8 each) double the
# width, and thirty-five hits in a row halve it.
ADAPTIVE_GAMMA = 0.1


@dataclass
class Counts:
    """Per cell (a forecast step, or the one online cell) and level: actuals at or below
    ``m + a (q - m)`` for each factor ``a`` of :data:`GRID`, and the points counted."""

    below: np.ndarray  # [cells, levels, grid] int64
    points: np.ndarray  # [cells] int64

    @classmethod
    def zero(cls, cells: int, levels: int) -> Counts:
        return cls(np.zeros((cells, levels, len(GRID)), np.int64), np.zeros(cells, np.int64))

    def add(self, cell: int, q: np.ndarray, y: np.ndarray, median: int) -> None:
        """Points with sorted quantiles ``q`` ``[N, levels]`` and actuals ``y`` ``[N]``.

        Points whose levels are all one value (a recipe's flat window,
        streamcell.core.recipe.level) are left out: no factor moves them, and
        counted in, the fit would narrow every other stream's interval to make
        up for their certain hits (or, on the bound, misses).
        """
        q, y = q.astype(np.float64), y.astype(np.float64)
        spread = q[:, -1] > q[:, 0]
        if not spread.all():
            q, y = q[spread], y[spread]
        m = q[:, median]
        e = y - m
        for level in range(q.shape[1]):
            d = q[:, level] - m
            up, down = d > 0, d < 0
            # e <= a d: with d > 0 it is e / d <= a, with d < 0 it is e / d >= a.
            r_up = np.sort(e[up] / d[up])
            r_down = np.sort(e[down] / d[down])
            self.below[cell, level] += (
                np.searchsorted(r_up, GRID, side="right")
                + (len(r_down) - np.searchsorted(r_down, GRID, side="left"))
                + int((e[~(up | down)] <= 0).sum())
            )
        self.points[cell] += len(y)


def factors(below: np.ndarray, points: int, levels: tuple[float, ...]) -> list[float]:
    """One factor per level from one cell's counts ``[levels, grid]``.

    The two levels of a central interval share one factor, the one at which
    the interval holds its nominal share of the actuals: the calibration
    scales the head's spread and keeps its own skew. A factor per level
    would also move the interval off centre to undo the validated model's
    bias over the validation rows, which the served model (a blend with a
    refit that saw those rows) and the rows to come do not share
    (docs/BENCHMARKS.md, "Calibrated intervals, adaptive"). A level in no
    interval gets a factor of its own.
    """
    if points < MIN_POINTS:
        return [1.0] * len(levels)
    out = [1.0] * len(levels)
    paired: set[int] = set()
    for iv in central_intervals(levels):
        # The share inside rises with the factor: at or below the upper bound, less below the lower.
        inside = (below[iv.upper] - below[iv.lower]) / points
        out[iv.lower] = out[iv.upper] = _crossing(inside, iv.coverage)
        paired.update((iv.lower, iv.upper))
    for level, tau in enumerate(levels):
        if tau == MEDIAN or level in paired:
            continue
        # A lower level's share falls as its factor grows, an upper one's rises: one rising curve.
        sign = 1.0 if tau > MEDIAN else -1.0
        out[level] = _crossing(sign * below[level] / points, sign * tau)
    return out


def _crossing(rising: np.ndarray, want: float) -> float:
    """The factor of :data:`GRID` at which the rising curve reaches ``want`` (interpolated)."""
    j = int(np.searchsorted(rising, want, side="left"))
    if j == 0:
        return float(GRID[0])
    if j == len(GRID):
        return float(GRID[-1])
    lo, hi = rising[j - 1], rising[j]
    w = 0.0 if hi == lo else (want - lo) / (hi - lo)
    return round(float(GRID[j - 1] + w * (GRID[j] - GRID[j - 1])), 6)


def pooled(counts: Counts) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's counts summed with its neighbours' until it has :data:`MIN_CELL` points."""
    cells = len(counts.points)
    below = np.zeros_like(counts.below)
    points = np.zeros_like(counts.points)
    total = int(counts.points.sum())
    for k in range(cells):
        lo, hi = k, k + 1
        while counts.points[lo:hi].sum() < min(MIN_CELL, total) and (lo > 0 or hi < cells):
            lo, hi = max(lo - 1, 0), min(hi + 1, cells)
        below[k] = counts.below[lo:hi].sum(axis=0)
        points[k] = counts.points[lo:hi].sum()
    return below, points


def calibrate(
    loaded: LoadedModel, prepared: Prepared, horizon: int
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The ``calibration`` field of the model's config.json (None: no quantiles), and the
    record of validation coverage before and after."""
    levels = loaded.config.quantile_levels
    if not levels:
        return None, {}
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one stream at a time: far too small to share out
    try:
        online, online_record = _online(loaded, prepared)
        table, forecast_record = _forecast(loaded, prepared, horizon)
    finally:
        torch.set_num_threads(threads)
    field = Calibration(
        tuple(online), tuple(tuple(r) for r in table), adaptive_width(levels)
    ).to_json()
    record: dict[str, Any] = {"method": METHOD}
    record.update(online=online_record, forecast=forecast_record)
    record["seconds"] = round(time.perf_counter() - started, 1)
    return field, record


METHOD = "scale about the median, one factor per interval, fitted on validation"


def adaptive_width(levels: tuple[float, ...]) -> Adaptive | None:
    """Each stream's adaptive width where the levels bound an interval to cover."""
    return Adaptive(ADAPTIVE_GAMMA) if central_intervals(levels) else None


def online_counts(model: StreamingLSTM, prepared: Prepared, indices: list[int]) -> Counts:
    """The online cell's counts over some streams (a Ray worker's shard: they add up)."""
    levels = prepared.quantile_levels
    counts = Counts.zero(1, len(levels))
    for i, q in zip(indices, predict_levels(model, prepared, indices), strict=True):
        s = prepared.streams[i]
        n = s.n_train
        if len(s.y) > n:
            points = q[n - 1 :].transpose(0, 2, 1).reshape(-1, len(levels))
            counts.add(0, points, s.y[n:].reshape(-1), median_index(levels))
    return counts


def from_counts(
    below: np.ndarray, points: int, levels: tuple[float, ...]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``calibration`` field and record from the online cell's summed counts alone
    (a Ray Dataset run: no Forecast table, whose origins need the streams in one place).

    Coverage read off the counts: the share at or below the upper level less the
    share at or below the lower one, at factor 1 and at the fitted factors.
    """
    fitted = factors(below, points, levels)
    one = int(np.argmin(np.abs(GRID - 1.0)))

    def share(level: int, a: float) -> float:
        return float(np.interp(a, GRID, below[level])) / max(points, 1)

    before, after = {}, {}
    for iv in central_intervals(levels):
        before[iv.label] = round(share(iv.upper, GRID[one]) - share(iv.lower, GRID[one]), 4)
        after[iv.label] = round(
            share(iv.upper, fitted[iv.upper]) - share(iv.lower, fitted[iv.lower]), 4
        )
    field = Calibration(tuple(fitted), (), adaptive_width(levels)).to_json()
    record = {
        "method": METHOD,
        "online": {
            "points": points,
            "factors": fitted,
            "coverage_before": before,
            "coverage_after": after,
            "from": "counts summed over the Ray workers",
        },
        "forecast": {"why": "a Ray Dataset run: Forecasts are served as the head gives them"},
    }
    return field, record


def _online(loaded: LoadedModel, prepared: Prepared) -> tuple[list[float], dict[str, Any]]:
    levels = loaded.config.quantile_levels
    median = median_index(levels)
    qs, ys = [], []
    indices = list(range(len(prepared)))
    for i, q in zip(indices, predict_levels(loaded.model, prepared, indices), strict=True):
        s = prepared.streams[i]
        n = s.n_train
        if len(s.y) > n:
            qs.append(q[n - 1 :].transpose(0, 2, 1).reshape(-1, len(levels)))  # [points, L]
            ys.append(s.y[n:].reshape(-1))
    if not ys:
        return [1.0] * len(levels), {"points": 0}
    q, y = np.concatenate(qs), np.concatenate(ys)
    counts = Counts.zero(1, len(levels))
    counts.add(0, q, y, median)
    fitted = factors(counts.below[0], int(counts.points[0]), levels)
    after = _widened(q, np.asarray(fitted, np.float32)[None], median)
    record = {
        "points": len(y),
        "factors": fitted,
        "coverage_before": coverage(q, y, levels),
        "coverage_after": coverage(after, y, levels),
    }
    return fitted, record


def _forecast(
    loaded: LoadedModel, prepared: Prepared, horizon: int
) -> tuple[list[list[float]], dict[str, Any]]:
    levels = loaded.config.quantile_levels
    median = median_index(levels)
    if not can_forecast(loaded, prepared) or horizon < 1:
        return [], {"points": 0, "why": "the model cannot forecast"}
    steps, origins = _step_points(loaded, prepared, horizon)
    counts = Counts.zero(horizon, len(levels))
    for k, (q, y) in enumerate(steps):
        counts.add(k, q, y, median)
    if int(counts.points.sum()) < MIN_POINTS:
        return [[1.0] * len(levels)], {"points": int(counts.points.sum()), "origins": origins}
    below, points = pooled(counts)
    table = [factors(below[k], int(points[k]), levels) for k in range(horizon)]
    record = {
        "points": sum(len(y) for _, y in steps),
        "origins": origins,
        "steps": horizon,
        "points_per_step_min": int(counts.points.min()),
        **_coverages(steps, table, levels, median),
    }
    longer = longer_steps(prepared, horizon)
    if longer > horizon:
        more, extended = _longer(loaded, prepared, horizon, longer)
        table += more
        record["longer"] = extended
    return table, record


def longer_steps(prepared: Prepared, horizon: int) -> int:
    """Steps the forecast table is fitted to: as many as the validation split has two
    origins for in a typical stream (at most :data:`LONGER_STEPS`) where that is at
    least twice ``horizon``, else ``horizon``.

    A Forecast longer than its table scales its later steps by the last row,
    fitted on shorter ones: close enough a few steps on, not at many times the
    horizon (widths there grow with what the sample paths feed back). The
    longer Forecasts feed back sample paths past a direct head's horizon, so
    they run from :data:`LONGER_ORIGINS` origins at most over all streams.
    """
    rows = [len(s.y) - s.n_train for s in prepared.streams if len(s.y) > s.n_train]
    longer = min(LONGER_STEPS, int(np.median(rows)) // 2) if rows else 0
    return longer if longer >= 2 * horizon else horizon


def _longer(
    loaded: LoadedModel, prepared: Prepared, horizon: int, longer: int
) -> tuple[list[list[float]], dict[str, Any]]:
    """The table's rows for steps ``horizon + 1 .. longer``, from Forecasts of ``longer``
    steps at origins of their own (the first rows stay as fitted, on more origins)."""
    levels = loaded.config.quantile_levels
    median = median_index(levels)
    steps, origins = _step_points(loaded, prepared, longer, total=LONGER_ORIGINS)
    if origins < MIN_LONGER_ORIGINS:
        return [], {"origins": origins, "why": f"fewer than {MIN_LONGER_ORIGINS} origins"}
    steps = steps[horizon:]
    counts = Counts.zero(len(steps), len(levels))
    for k, (q, y) in enumerate(steps):
        counts.add(k, q, y, median)
    if int(counts.points.sum()) < MIN_POINTS:
        return [], {"points": int(counts.points.sum()), "origins": origins}
    below, points = pooled(counts)
    table = [factors(below[k], int(points[k]), levels) for k in range(len(steps))]
    record = {
        "points": sum(len(y) for _, y in steps),
        "origins": origins,
        "steps": longer,
        "points_per_step_min": int(counts.points.min()),
        **_coverages(steps, table, levels, median),
    }
    return table, record


def _step_points(
    loaded: LoadedModel, prepared: Prepared, horizon: int, total: int | None = None
) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """Per Forecast step, the validation Forecasts' quantiles ``[N, levels]`` and actuals
    ``[N]`` from origins over every stream (:func:`spread_origins`), and the origins;
    with ``total``, from about that many origins at most, over every k-th stream."""
    levels = loaded.config.quantile_levels
    streams = list(prepared.streams)
    if total is None:
        limit = max(ORIGINS // max(len(streams), 1), MAX_ORIGINS)
    else:
        streams = streams[:: -(-len(streams) // total)] if len(streams) > total else streams
        limit = max(1, total // max(len(streams), 1))
    per_step: list[tuple[list[np.ndarray], list[np.ndarray]]] = [([], []) for _ in range(horizon)]
    origins = 0
    plan = []
    for s in streams:
        starts = spread_origins(s, horizon, limit, prepared.season)
        if starts and s.x is not None:
            plan.append((s, starts))
    forecasts = many_forecasts(loaded, prepared, plan, horizon, quantiles=True)
    for (s, _), made in zip(plan, forecasts, strict=True):
        for b, result in made:
            assert result.quantiles is not None
            origins += 1
            for k in range(len(result.quantiles)):
                per_step[k][0].append(result.quantiles[k].T)  # [O, L]
                per_step[k][1].append(s.y[b + k])
    steps = [
        (np.concatenate(q), np.concatenate(y)) if y else (np.zeros((0, len(levels))), np.zeros(0))
        for q, y in per_step
    ]
    return steps, origins


def _coverages(
    steps: list[tuple[np.ndarray, np.ndarray]],
    table: list[list[float]],
    levels: tuple[float, ...],
    median: int,
) -> dict[str, Any]:
    q_all = np.concatenate([q for q, _ in steps])
    y_all = np.concatenate([y for _, y in steps])
    a_all = np.concatenate(
        [np.repeat(np.array([table[k]], np.float32), len(y), 0) for k, (_, y) in enumerate(steps)]
    )
    return {
        "coverage_before": coverage(q_all, y_all, levels),
        "coverage_after": coverage(_widened(q_all, a_all, median), y_all, levels),
    }


def spread_origins(s: StreamArrays, horizon: int, limit: int, season: int) -> list[int]:
    """Origins over the stream's validation rows, at least ``horizon`` apart and at most
    ``limit``, their spacing prime to the season: origins a whole number of seasons apart
    would all start at one phase (one time of day), and a step's factors would learn that
    phase's spread instead of the step's."""
    first, length = s.n_train, len(s.y)
    if length <= first:
        return []
    every = max(horizon, -(-(length - first) // limit))
    while season > 1 and math.gcd(every, season) != 1:
        every += 1
    return list(range(first, length, every))[:limit]


def _widened(q: np.ndarray, a: np.ndarray, median: int) -> np.ndarray:
    """Points ``[N, L]`` calibrated with factors ``[N or 1, L]``, as serving does (float32)."""
    qt = torch.from_numpy(np.ascontiguousarray(q, np.float32))[:, :, None]
    at = torch.from_numpy(np.ascontiguousarray(a, np.float32))[:, :, None]
    return widen(qt, at, median)[:, :, 0].numpy()


def coverage(q: np.ndarray, y: np.ndarray, levels: tuple[float, ...]) -> dict[str, float]:
    """Each central interval's share of actuals inside it (a value on a bound is inside)."""
    out = {}
    for iv in central_intervals(levels):
        inside = (q[:, iv.lower] <= y) & (y <= q[:, iv.upper])
        out[iv.label] = round(float(inside.mean()), 4) if len(y) else float("nan")
    return out
