"""Fixed-origin validation: forecasts from points of the validation split, as Forecast makes them.

From up to :data:`MAX_ORIGINS` origins per stream, spread over its
validation rows (the first at the end of its training part, then every
``horizon`` steps or more), the model forecasts ``horizon`` steps (fewer
where the stream ends) with the code a Forecast runs
(:func:`streamcell.core.forecast.run`): the median fed back, in chunks for
a direct head. The state at each origin comes from the model run over the
stream's actual events up to it. Covariates (a recipe's other columns) are
taken as known over the horizon. A stream's score is its mean absolute error
over every forecast step divided by its in-sample last-value MAE (as the
one-step validation MASE is), averaged over streams: the figure that picks a
direct head or feedback (streamcell.trainer.select).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch

from streamcell.core.checkpoint import LoadedModel
from streamcell.core.forecast import ForecastResult, Normaliser, Origin, run_many, seed_of
from streamcell.core.normalization import SCALING_GLOBAL
from streamcell.core.quantiles import median_index
from streamcell.trainer.prepare import Prepared, StreamArrays

MAX_ORIGINS = 16


def origins_of(s: StreamArrays, horizon: int, limit: int = MAX_ORIGINS) -> list[int]:
    """Rows a forecast starts at (its first value is that row's), within validation:
    at most ``limit``, ``horizon`` steps apart or more."""
    first, length = s.n_train, len(s.y)
    if length <= first:
        return []
    every = max(horizon, -(-(length - first) // limit))
    return list(range(first, length, every))[:limit]


def can_forecast(loaded: LoadedModel, prepared: Prepared) -> bool:
    """Whether validation can feed predictions back: a recipe model, or targets = features."""
    cfg = loaded.config
    return prepared.recipe is not None or cfg.autoregressive


def origin_mase(loaded: LoadedModel, prepared: Prepared, horizon: int) -> float:
    """Mean over streams of the fixed-origin MASE (NaN where nothing can be scored).

    One torch thread: the steps are one stream's, far too small to share out,
    and two threads waiting on each other at every tiny product were slower by
    a large factor on a busy machine.
    """
    if not can_forecast(loaded, prepared):
        return float("nan")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _origin_mase(loaded, prepared, horizon)
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def _origin_mase(loaded: LoadedModel, prepared: Prepared, horizon: int) -> float:
    plan, scales = [], []
    for s in prepared.streams:
        starts = origins_of(s, horizon)
        y = s.y.astype(np.float64)
        in_sample = np.abs(np.diff(y[: s.n_train], axis=0)).mean(axis=0)
        if not starts or not (in_sample > 0).any() or s.x is None:
            continue
        plan.append((s, starts))
        scales.append(in_sample)
    total = 0.0
    forecasts = many_forecasts(loaded, prepared, plan, horizon)
    for (s, _), in_sample, made in zip(plan, scales, forecasts, strict=True):
        y = s.y.astype(np.float64)
        err = np.zeros_like(in_sample)
        count = 0
        for b, result in made:
            steps = len(result.yhat)
            err += np.abs(result.yhat.astype(np.float64) - y[b : b + steps]).sum(axis=0)
            count += steps
        ok = in_sample > 0
        total += float((err[ok] / count / in_sample[ok]).mean())
    return total / len(plan) if plan else math.nan


def normaliser(loaded: LoadedModel) -> Normaliser:
    """The version's normalisation as the Predictor holds it, on the model's device."""
    cfg = loaded.config
    device = loaded.model.head.weight.device
    return Normaliser(
        *(
            torch.tensor(v, dtype=torch.float32, device=device)
            for v in (cfg.input_mean, cfg.input_std, cfg.target_mean, cfg.target_std)
        )
    )


@torch.no_grad()
def many_forecasts(
    loaded: LoadedModel,
    prepared: Prepared,
    plan: Sequence[tuple[StreamArrays, list[int]]],
    horizon: int,
    *,
    quantiles: bool = False,
) -> list[list[tuple[int, ForecastResult]]]:
    """Per stream of the plan, each of its origins and the Forecast made there
    (``horizon`` steps or fewer where the stream ends).

    The origins of every stream are stepped together
    (:func:`streamcell.core.forecast.run_many`): the same Forecasts as one at
    a time, in fewer and wider model steps. With ``quantiles`` the
    Forecast's quantiles too, seeded as the Predictor seeds them (the stream,
    the events seen, the steps).
    """
    norm = normaliser(loaded)
    jobs: list[_Job] = []
    for i, (s, starts) in enumerate(plan):
        assert s.x is not None
        for b, origin in _origins(loaded, prepared, s, starts, norm):
            steps = min(horizon, len(s.y) - b)
            seed = seed_of(s.stream, b, steps) if quantiles else 0
            jobs.append(_Job(i, b, steps, origin, s.x[b : b + steps], seed))
    by_steps: dict[int, list[_Job]] = {}
    for job in jobs:
        by_steps.setdefault(job.steps, []).append(job)
    made: dict[tuple[int, int], ForecastResult] = {}
    for steps, group in by_steps.items():
        results = run_many(
            loaded,
            norm,
            [job.origin for job in group],
            steps,
            [job.seed for job in group],
            # Covariates taken as known: a recipe model's future events.
            futures=None if prepared.recipe is None else [job.future for job in group],
            quantiles=quantiles,
        )
        made.update(((job.stream, job.at), r) for job, r in zip(group, results, strict=True))
    out: list[list[tuple[int, ForecastResult]]] = [[] for _ in plan]
    for job in jobs:
        out[job.stream].append((job.at, made[job.stream, job.at]))
    return out


class _Job(NamedTuple):
    """One origin's Forecast to make: ``stream`` indexes the plan, ``at`` is its row."""

    stream: int
    at: int
    steps: int
    origin: Origin
    future: np.ndarray
    seed: int


def _origins(
    loaded: LoadedModel, prepared: Prepared, s: StreamArrays, starts: list[int], norm: Normaliser
) -> Iterator[tuple[int, Origin]]:
    """The stream's state at each of ``starts``: the model run over its events up to it."""
    cfg, model = loaded.config, loaded.model.eval()
    device = model.head.weight.device
    levels, outputs = cfg.quantile_levels, cfg.output_size
    median = median_index(levels) if levels else 0
    assert s.x is not None
    u = torch.from_numpy(s.u).to(device).unsqueeze(0)
    h, c = model.zero_state(1, device)
    for a, b in itertools.pairwise([0, *starts]):
        if b > a:
            z, (h, c) = model(u[:, a:b], (h, c))
            # Step 1 at the median, its levels sorted as the Predictor serves them.
            step1 = z[0, -1, : max(1, len(levels)) * outputs].reshape(-1, outputs)
            z_last = step1.sort(dim=0).values[median]
        yield b, _origin(loaded, prepared, s, b, h, c, z_last, norm)


def baseline_origin_mase(prepared: Prepared, horizon: int) -> dict[str, float]:
    """Last value and seasonal naive (lag ``prepared.season``) from the same origins."""
    m = prepared.season
    totals = {"last_value": 0.0, "seasonal_naive": 0.0}
    streams = 0
    for s in prepared.streams:
        starts = origins_of(s, horizon)
        y = s.y.astype(np.float64)
        in_sample = np.abs(np.diff(y[: s.n_train], axis=0)).mean(axis=0)
        ok = in_sample > 0
        if not starts or not ok.any():
            continue
        errs = {name: np.zeros_like(in_sample) for name in totals}
        count = 0
        for b in starts:
            steps = min(horizon, len(y) - b)
            actual = y[b : b + steps]
            errs["last_value"] += np.abs(actual - y[b - 1]).sum(axis=0)
            back = b - m + (np.arange(steps) % m) if b >= m else np.full(steps, b - 1)
            errs["seasonal_naive"] += np.abs(actual - y[back]).sum(axis=0)
            count += steps
        for name, err in errs.items():
            totals[name] += float((err[ok] / count / in_sample[ok]).mean())
        streams += 1
    return {
        f"{name}_origin_mase": (v / streams if streams else math.nan) for name, v in totals.items()
    }


def _origin(
    loaded: LoadedModel,
    prepared: Prepared,
    s: StreamArrays,
    at: int,
    h: torch.Tensor,
    c: torch.Tensor,
    z_last: torch.Tensor,
    norm: Normaliser,
) -> Origin:
    """The state a Forecast would start from after the stream's events ``0..at-1``."""
    assert s.x is not None
    device = h.device
    scale = torch.from_numpy(s.target_scale[at - 1 : at].copy()).to(device)  # [1, O]
    last = (z_last * norm.out_std + norm.out_mean) * scale[0]
    ring = None
    recipe = prepared.recipe
    if recipe is not None:
        size = recipe.buffer_size
        ring = np.zeros((1, size), dtype=np.float32)
        for k in range(max(0, at - size), at):
            ring[0, k % size] = s.x[k, recipe.target]
    # Global scaling multiplies by nothing (its target scale is all ones).
    kept = None if recipe is None and prepared.scaling == SCALING_GLOBAL else scale
    return Origin(h.clone(), c.clone(), last[None], at, ring, kept)
