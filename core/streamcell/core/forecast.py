"""Forecast: the next steps of one stream from a copy of its state, nothing written back.

The point path is the median fed back: a one-step head (``horizon`` 1)
predicts the next value, which is fed back through the recipe as the next
event's value, step after step; a direct head predicts ``horizon`` steps
from one LSTM step, and beyond them its predictions are fed back in chunks
of ``horizon`` steps, after which the head predicts the next chunk. Either
way every horizon up to :data:`MAX_HORIZON` is served. A version with
``forecast_blend`` (chosen on validation by the trainer) serves the mean of
two such paths from a direct head: its chunks, and its first step alone fed
back one step at a time (the direct and the recursive forecast combined:
their errors differ, and neither is better on every data set); its
quantiles move with the median by that mean's difference from the chunks'.

Quantiles (a model with ``quantile_levels``): the steps the head predicts at
once from the stream's state (the first step, or the first ``horizon``) are
the head's own quantiles; later steps come from :data:`PATHS` sample paths.
Each path draws the values of a chunk from the head's quantile function
(linear between the levels, extended linearly beyond the outer ones) at
uniform random levels and feeds them back, so the intervals widen with the
uncertainty of what was fed back. The generator is seeded from the stream id,
its event count and the horizon asked for: a replayed request gives the same
bytes. Every row of a step is computed alone (``StreamingLSTM.step`` is
row-wise), so paths do not depend on how many run together. A version with a
``calibration`` then scales each step's levels about their median by that
step's row of its forecast table (:mod:`streamcell.core.calibration`).

A recipe of version 2 serves a stream whose recent window is one value c as
c (:func:`streamcell.core.recipe.level`): at the origin and after each value
fed back, every output of that row is c, so a stream of zeros forecasts
zeros with intervals of zero width.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from streamcell.core.calibration import widen_steps
from streamcell.core.checkpoint import MAX_HORIZON, LoadedModel
from streamcell.core.model import rowwise_linear
from streamcell.core.recipe import advance, level

PATHS = 128  # sample paths per forecast beyond the head's own steps
# Origins stepped together at most: the rows BLAS pads a smaller product to
# (streamcell.core.model.MIN_GEMM_ROWS), so the median paths waste none.
BATCH_ORIGINS = 64

__all__ = [
    "BATCH_ORIGINS",
    "MAX_HORIZON",
    "PATHS",
    "ForecastResult",
    "Normaliser",
    "Origin",
    "held",
    "run",
    "run_many",
    "seed_of",
    "shifted_quantiles",
]


@dataclass(frozen=True)
class ForecastResult:
    """``yhat`` ``[horizon, targets]``; ``quantiles`` ``[horizon, levels, targets]`` or None."""

    yhat: np.ndarray
    quantiles: np.ndarray | None
    method: str  # "feedback" (one-step head), "direct" (multi-horizon head) or "blend"


@dataclass(frozen=True)
class Origin:
    """Copies of one stream's state: what a forecast starts from."""

    h: Tensor  # [layers, 1, hidden]
    c: Tensor
    last: Tensor  # [1, targets]: the stream's last point prediction, in data units
    count: int  # events the stream has seen
    ring: np.ndarray | None  # [1, buffer] history of a recipe model
    scale: Tensor | None  # [1, 1 or targets]: what the last prediction was multiplied by


@dataclass(frozen=True)
class _Batch:
    """Origins stacked along the batch dimension: row k is origin k's."""

    h: Tensor  # [layers, B, hidden]
    c: Tensor
    last: Tensor  # [B, targets]
    count: np.ndarray  # [B] int64
    ring: np.ndarray | None  # [B, buffer]
    scale: Tensor | None  # [B, 1 or targets]
    future: np.ndarray | None  # [B, steps, width]: each origin's, its last row repeated

    @classmethod
    def of(cls, origins: Sequence[Origin], futures: Sequence[np.ndarray] | None) -> _Batch:
        future = None
        if futures is not None:
            steps = max(len(f) for f in futures)
            future = np.stack(
                [
                    np.concatenate([f, np.repeat(f[-1:], steps - len(f), 0)])
                    for f in (np.asarray(f, dtype=np.float32) for f in futures)
                ]
            )
        first = origins[0]
        return cls(
            torch.cat([o.h for o in origins], dim=1),
            torch.cat([o.c for o in origins], dim=1),
            torch.cat([o.last for o in origins]),
            np.array([o.count for o in origins], dtype=np.int64),
            None if first.ring is None else np.concatenate([_ring(o) for o in origins]),
            None if first.scale is None else torch.cat([_scale(o) for o in origins]),
            future,
        )


def _ring(o: Origin) -> np.ndarray:
    assert o.ring is not None, "origins of one batch hold a ring each or none"
    return o.ring


def _scale(o: Origin) -> Tensor:
    assert o.scale is not None, "origins of one batch hold a scale each or none"
    return o.scale


@dataclass(frozen=True)
class Normaliser:
    """The version's normalisation constants, as the Predictor holds them."""

    in_mean: Tensor
    in_std: Tensor
    out_mean: Tensor
    out_std: Tensor


def held(y: Tensor, levels: np.ndarray | None) -> Tensor:
    """``y`` ``[B, ...]`` with every value of each row that has a level (not NaN) set to it.

    ``levels`` ``[B]`` float32 from :func:`streamcell.core.recipe.level`; None: ``y`` itself.
    """
    if levels is None:
        return y
    c = torch.from_numpy(levels).to(y.device).reshape(-1, *([1] * (y.dim() - 1)))
    return torch.where(torch.isnan(c), y, c)


def _origin_level(loaded: LoadedModel, o: Origin | _Batch) -> np.ndarray | None:
    recipe = loaded.config.history
    if recipe is None or o.ring is None:
        return None
    return level(recipe, o.ring, np.broadcast_to(np.asarray(o.count, np.int64), len(o.ring)))


def seed_of(stream: str, count: int, horizon: int) -> int:
    """The sample paths' seed: the same stream, state and request give the same paths."""
    digest = hashlib.blake2b(f"{stream}\0{count}\0{horizon}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@torch.no_grad()
def run(
    loaded: LoadedModel,
    norm: Normaliser,
    origin: Origin,
    horizon: int,
    seed: int,
    *,
    future: np.ndarray | None = None,
    quantiles: bool = True,
) -> ForecastResult:
    """The forecast of ``horizon`` steps from ``origin`` (see the module doc).

    ``future`` ``[steps, width]``: the events to come, whose target column is
    replaced by what is fed back (its last row stands for any later step);
    for a recipe model with covariates taken as known (the trainer's
    validation, the benchmark). ``quantiles=False``: the point path alone.
    """
    futures = None if future is None else [future]
    return run_many(loaded, norm, [origin], horizon, [seed], futures=futures, quantiles=quantiles)[
        0
    ]


@torch.no_grad()
def run_many(
    loaded: LoadedModel,
    norm: Normaliser,
    origins: Sequence[Origin],
    horizon: int,
    seeds: Sequence[int],
    *,
    futures: Sequence[np.ndarray] | None = None,
    quantiles: bool = True,
) -> list[ForecastResult]:
    """:func:`run` from each of ``origins`` (with its seed and its future), stepped
    together: the same results to the bit, since every row is computed alone and each
    origin's paths draw from a generator of its own, for one model step per step
    instead of one per origin and step (validation runs hundreds of origins)."""
    cfg = loaded.config
    if cfg.horizon == 1 and not cfg.quantile_levels and futures is None:
        return [_point_forecast(loaded, norm, o, horizon) for o in origins]
    if len(origins) > BATCH_ORIGINS:
        out: list[ForecastResult] = []
        for a in range(0, len(origins), BATCH_ORIGINS):
            part = slice(a, a + BATCH_ORIGINS)
            fut = None if futures is None else futures[part]
            out += run_many(
                loaded, norm, origins[part], horizon, seeds[part], futures=fut, quantiles=quantiles
            )
        return out
    method = "direct" if cfg.horizon > 1 else "feedback"
    batch = _Batch.of(origins, futures)
    at = _origin_level(loaded, batch)
    if at is not None:  # the last prediction is the level (what the Predictor served)
        batch = replace(batch, last=held(batch.last, at))
    walk = _Walk(loaded, norm, batch.future)
    first = walk.head(batch.h, batch.scale, at)  # [B, H, L, O]
    yhat = walk.median_path(batch, first, horizon)  # [B, horizon, O]
    direct = None
    if cfg.forecast_blend and horizon > 1:
        blended = 0.5 * (yhat + walk.first_step_path(batch, first, horizon))
        direct, yhat, method = yhat, blended, "blend"
    if not (cfg.quantile_levels and quantiles):
        return [ForecastResult(y, None, method) for y in yhat]
    rngs = [np.random.default_rng(seed) for seed in seeds]
    qs = walk.quantile_paths(batch, first, horizon, rngs)  # [B, horizon, L, O]
    table = cfg.calibration_table
    factors = None if table is None else table.step_factors(horizon)
    results = []
    for k, y in enumerate(yhat):
        q = qs[k]
        if factors is not None:  # the version's per-step factors (streamcell.core.calibration)
            q = widen_steps(q, factors, walk.mid)
        if direct is not None:  # every level moves with the median
            q = shifted_quantiles(q, direct[k], y, walk.mid)
        results.append(ForecastResult(y, q, method))
    return results


def shifted_quantiles(qs: np.ndarray, direct: np.ndarray, yhat: np.ndarray, mid: int) -> np.ndarray:
    """A blend's quantiles ``[steps, L, O]``: those of the direct path ``direct``
    ``[steps, O]`` moved by ``yhat - direct``.

    Where the median level was the direct path's value (the head's own steps) it
    becomes ``yhat`` itself, so the served median is the point prediction to the
    bit (the sum ``direct + (yhat - direct)`` may miss it by a rounding); the other
    levels are kept on their side of it.
    """
    out = qs + (yhat - direct)[:, None, :]
    out[:, mid] = np.where(qs[:, mid] == direct, yhat, out[:, mid])
    median = out[:, mid : mid + 1]
    out[:, :mid] = np.minimum(out[:, :mid], median)
    out[:, mid + 1 :] = np.maximum(out[:, mid + 1 :], median)
    return out


def _point_forecast(
    loaded: LoadedModel, norm: Normaliser, o: Origin, horizon: int
) -> ForecastResult:
    at = _origin_level(loaded, o)
    if at is not None:  # the last prediction is the level (what the Predictor served)
        o = replace(o, last=held(o.last, at))
    return ForecastResult(_point_feedback(loaded, norm, o, horizon), None, "feedback")


@torch.no_grad()
def _point_feedback(loaded: LoadedModel, norm: Normaliser, o: Origin, horizon: int) -> np.ndarray:
    """A one-step point head: each prediction fed back (the forecast of every version so far)."""
    cfg, recipe, model = loaded.config, loaded.config.history, loaded.model
    device = o.h.device
    h, c, prev, scale, ring = o.h, o.c, o.last, o.scale, o.ring
    out = np.empty((horizon, cfg.output_size), dtype=np.float32)
    for k in range(horizon):
        out[k] = prev[0].cpu().numpy()
        if k + 1 == horizon:
            break
        at = None
        if ring is None or recipe is None:
            xt = prev if scale is None else prev / scale
            u = (xt - norm.in_mean) / norm.in_std
        else:
            seen = np.array([o.count + k])
            features, fed = advance(recipe, ring, seen, out[k : k + 1])
            u = (torch.from_numpy(features).to(device) - norm.in_mean) / norm.in_std
            scale = torch.from_numpy(fed).to(device)[:, None]
            at = level(recipe, ring, seen + 1)
        step = model.step(u, h, c)
        h, c = step.h, step.c
        prev = step.y * norm.out_std + norm.out_mean
        if scale is not None:
            prev = held(prev * scale, at)
    return out


class _Walk:
    """Steps the rows of a batch of origins (one row each, or their sample paths) through
    the model."""

    def __init__(self, loaded: LoadedModel, norm: Normaliser, future: np.ndarray | None) -> None:
        cfg = loaded.config
        self.future = future  # [B, steps, width]
        self.model, self.recipe, self.norm = loaded.model, cfg.history, norm
        self.steps, self.levels, self.outputs = cfg.horizon, cfg.n_levels, cfg.output_size
        self.level_values = np.asarray(cfg.quantile_levels, dtype=np.float64)
        self.mid = cfg.quantile_levels.index(0.5) if cfg.quantile_levels else 0

    def head(self, h: Tensor, scale: Tensor | None, at: np.ndarray | None) -> Tensor:
        """The head's outputs at state ``h`` in data units, ``[B, H, L, O]``; ``at``: the
        rows' levels (:func:`held`)."""
        model = self.model
        return self._denorm(rowwise_linear(h[-1], model.head.weight, model.head.bias), scale, at)

    def _denorm(self, y: Tensor, scale: Tensor | None, at: np.ndarray | None) -> Tensor:
        y = y.reshape(len(y), self.steps, self.levels, self.outputs)
        y = y * self.norm.out_std + self.norm.out_mean
        return y if scale is None else held(y * scale[:, None, None, :], at)

    @torch.no_grad()
    def feed(
        self,
        values: np.ndarray,
        state: tuple[Tensor, Tensor],
        ring: np.ndarray | None,
        seen: np.ndarray,
        scale: Tensor | None,
        ahead: int,
        rows_per_origin: int = 1,
    ) -> tuple[tuple[Tensor, Tensor], Tensor | None, Tensor]:
        """Feed ``values`` ``[B * rows_per_origin, O]`` as the events ``ahead`` steps past
        their origins: new state, scale and head outputs."""
        norm, device = self.norm, state[0].device
        at = None
        if self.recipe is not None and self.future is not None:
            row = self.future[:, min(ahead, self.future.shape[1] - 1)]  # [B, width]
            event = np.repeat(row, rows_per_origin, 0)
            event[:, self.recipe.target] = values[:, 0]
            values = event
        if ring is None or self.recipe is None:
            xt = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(device)
            if scale is not None:
                xt = xt / scale
            u = (xt - norm.in_mean) / norm.in_std
        else:
            features, fed = advance(self.recipe, ring, seen, values.astype(np.float32))
            u = (torch.from_numpy(features).to(device) - norm.in_mean) / norm.in_std
            scale = torch.from_numpy(fed).to(device)[:, None]
            at = level(self.recipe, ring, seen + 1)
        step = self.model.step(u, *state)
        return (step.h, step.c), scale, self._denorm(step.y, scale, at)

    def median_path(self, o: _Batch, first: Tensor, horizon: int) -> np.ndarray:
        """The median fed back, in chunks of the head's steps: ``[B, horizon, O]``."""
        out = np.empty((len(o.count), horizon, self.outputs), dtype=np.float32)
        ring = None if o.ring is None else o.ring.copy()
        state, scale, y = (o.h, o.c), o.scale, first
        done = 0
        while True:
            # The levels sorted first, as the Predictor serves them: its median.
            chunk = y.sort(dim=2).values[:, :, self.mid].cpu().numpy()  # [B, H, O]
            take = min(self.steps, horizon - done)
            out[:, done : done + take] = chunk[:, :take]
            done += take
            if done == horizon:
                return out
            for k in range(self.steps):
                ahead = done - take + k
                seen = o.count + ahead
                state, scale, y = self.feed(chunk[:, k], state, ring, seen, scale, ahead)

    def first_step_path(self, o: _Batch, first: Tensor, horizon: int) -> np.ndarray:
        """The head's first step alone fed back, one step at a time: ``[B, horizon, O]``."""
        out = np.empty((len(o.count), horizon, self.outputs), dtype=np.float32)
        ring = None if o.ring is None else o.ring.copy()
        state, scale, y = (o.h, o.c), o.scale, first
        for k in range(horizon):
            out[:, k] = y[:, 0].sort(dim=1).values[:, self.mid].cpu().numpy()  # step 1's median
            if k + 1 < horizon:
                seen = o.count + k
                state, scale, y = self.feed(out[:, k], state, ring, seen, scale, k)
        return out

    def quantile_paths(
        self, o: _Batch, first: Tensor, horizon: int, rngs: Sequence[np.random.Generator]
    ) -> np.ndarray:
        """``[B, horizon, L, O]``: the head's quantiles first, then those of the sample
        paths (:data:`PATHS` per origin, drawn from the origin's own generator)."""
        origins = len(o.count)
        out = np.empty((origins, horizon, self.levels, self.outputs), dtype=np.float32)
        direct = min(self.steps, horizon)
        out[:, :direct] = np.sort(first[:, :direct].cpu().numpy(), axis=2)
        if horizon == direct:
            return out
        n = PATHS
        state = (o.h.repeat_interleave(n, dim=1), o.c.repeat_interleave(n, dim=1))
        ring = None if o.ring is None else np.repeat(o.ring, n, axis=0)
        scale = None if o.scale is None else o.scale.repeat_interleave(n, dim=0)
        y = first.repeat_interleave(n, dim=0)
        counts = np.repeat(o.count, n)
        done = 0
        while True:
            draws = self._draw(y.cpu().numpy(), rngs)  # [B * N, H, O]
            take = min(self.steps, horizon - done)
            if done >= direct:
                paths = draws[:, :take].reshape(origins, n, take, self.outputs)
                qs = np.quantile(paths, self.level_values, axis=1)  # [L, B, take, O]
                out[:, done : done + take] = np.sort(qs.transpose(1, 2, 0, 3), axis=2)
            done += take
            if done == horizon:
                return out
            for k in range(self.steps):
                ahead = done - take + k
                state, scale, y = self.feed(
                    draws[:, k], state, ring, counts + ahead, scale, ahead, rows_per_origin=n
                )

    def _draw(self, y: np.ndarray, rngs: Sequence[np.random.Generator]) -> np.ndarray:
        """One value per row, step and target from the quantile function, ``[N, H, O]``;
        the rows are the origins' paths in turn, each origin's levels from its generator."""
        q = np.sort(y.astype(np.float64), axis=2)  # [N, H, L, O]
        n, steps, levels, outputs = q.shape
        if levels == 1:
            return q[:, :, 0].astype(np.float32)
        per = n // len(rngs)
        u = np.concatenate([rng.random((per, steps, outputs)) for rng in rngs])
        hi = np.clip(np.searchsorted(self.level_values, u), 1, levels - 1)
        lo = hi - 1
        q_lo = np.take_along_axis(q, lo[:, :, None, :], axis=2)[:, :, 0]
        q_hi = np.take_along_axis(q, hi[:, :, None, :], axis=2)[:, :, 0]
        t_lo, t_hi = self.level_values[lo], self.level_values[hi]
        # Outside the outer levels the weight leaves [0, 1]: the end segments extended.
        w = (u - t_lo) / (t_hi - t_lo)
        return (q_lo + w * (q_hi - q_lo)).astype(np.float32)
