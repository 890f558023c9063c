"""prepare()'s global statistics over a Ray Dataset, from distributed passes.

:func:`plan_dataset` gives the :class:`streamcell.trainer.prepare.Plan` that
``prepare`` computes in memory, from sums that Ray tasks compute over
batches of whole streams and the driver adds up (:func:`ray_data.fold`):

- the recipe's periods: the mean autocorrelation is a sum over streams
  (:func:`periods.acf_sums`), so every stream counts, as in memory; the
  median training length comes from the lengths' histogram;
- the normalisation: count, mean and sum of squared deviations per
  column, merged exactly (Chan et al.), so the float64 mean and std are
  those of the whole training part to rounding, and their float32 values
  the in-memory ones;
- the loss weights' median: exact, selected from two 65,536-bin histograms
  of the float32 bits (positive floats sort as their bit patterns); then the
  mean of the clipped weights, a sum.

Each pass runs the per-stream work of ``prepare`` (recipe features, scales,
raw weights) again rather than keeping it: it is cheap next to training and
keeps the object store at the size of the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from streamcell.trainer.periods import (
    ACF_MAX_LAG,
    CHANGE_SPANS,
    acf_sums,
    acf_top,
    default_horizon,
    median_of_counts,
    periods_from_sums,
    recipe_from,
)
from streamcell.trainer.prepare import (
    MIN_STD,
    Normalisation,
    Plan,
    RawStream,
    StreamArrays,
    WeightScale,
    check_scaling,
    clip_weights,
    median_candidates,
    raw_streams,
    target_column_of,
)
from streamcell.trainer.ray_data import StreamDataset, fold
from streamcell.trainer.settings import TrainSettings

BINS = 1 << 16


def plan_dataset(data: StreamDataset, settings: TrainSettings) -> Plan:
    """The Plan of ``prepare_frame(frame, settings)`` for the same data as a Ray Dataset."""
    info = data.info
    recipe = None
    if settings.recipe:
        target = target_column_of(info.features, info.targets)
        median = int(median_of_counts(data.train_lengths))
        recipe = recipe_from(
            median,
            partial(_acf_periods, data, target),
            width=len(info.features),
            target=target,
            spacing=info.spacing,
            periods=settings.periods,
            lags=settings.lags,
            scale_window=settings.scale_window,
            age=settings.age,
            scale_floor=settings.scale_floor,
        )
    tidx = check_scaling(settings.scaling, recipe, info.features, info.targets)
    raw = partial(
        raw_streams,
        val_fraction=data.val_fraction,
        scaling=settings.scaling,
        scale_floor=settings.scale_floor,
        recipe=recipe,
        weights=settings.stream_weights,
        target_index=tidx,
    )
    first = fold(data.dataset, partial(_first_pass, data, raw), _First())
    norm = Normalisation(*first.inputs.mean_std(), *first.targets.mean_std())
    weight_scale = None
    if first.weighted:
        middle = _median(data, raw, first)
        clipped = fold(data.dataset, partial(_clipped, data, raw, middle), _Sum())
        mean = clipped.total / clipped.count if clipped.count and clipped.total > 0 else 1.0
        weight_scale = WeightScale(middle, mean)
    return Plan(
        norm,
        settings.scaling,
        float(settings.scale_floor),
        tidx,
        data.val_fraction,
        recipe,
        settings.stream_weights,
        weight_scale,
        default_horizon(recipe.periods, median) if recipe is not None else 1,
    )


def example(data: StreamDataset, plan: Plan) -> StreamArrays:
    """One stream prepared with ``plan``: what the driver builds the model's shape from."""
    batch = next(iter(data.dataset.iter_batches(batch_size=1, batch_format="numpy")))
    return plan.build(*data.decode(batch))[0]


@dataclass
class Moments:
    """Count, mean and sum of squared deviations per column; ``+`` merges two exactly."""

    count: int = 0
    mean: np.ndarray | None = None  # float64 [C]
    m2: np.ndarray | None = None

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        if len(values) == 0:
            return cls()
        mean = values.mean(axis=0, dtype=np.float64)
        dev = values - mean
        return cls(len(values), mean, (dev * dev).sum(axis=0))

    def __add__(self, other: Moments) -> Moments:
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        assert self.mean is not None and self.m2 is not None
        assert other.mean is not None and other.m2 is not None
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta * delta * (self.count * other.count / n)
        return Moments(n, mean, m2)

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """float32 mean and std as prepare() makes them (std 1 where it is under MIN_STD)."""
        if self.count == 0 or self.mean is None or self.m2 is None:
            return np.zeros(1, dtype=np.float32), np.ones(1, dtype=np.float32)
        std = np.sqrt(self.m2 / self.count)
        return self.mean.astype(np.float32), np.where(std < MIN_STD, 1.0, std).astype(np.float32)


def high_bits(values: np.ndarray) -> np.ndarray:
    """The upper 16 bits of positive float32 values: their order is the values' order."""
    return (np.ascontiguousarray(values, dtype=np.float32).view(np.uint32) >> 16).astype(np.int64)


def select(hist: np.ndarray, rank: int) -> tuple[int, int]:
    """(bin, rank within it) of the ``rank``-th (from 0) value counted in ``hist``."""
    cum = np.cumsum(hist)
    b = int(np.searchsorted(cum, rank, side="right"))
    return b, rank - (int(cum[b - 1]) if b else 0)


def median_from_bits(high: np.ndarray, low: dict[int, np.ndarray], count: int) -> float:
    """np.median of ``count`` positive float32 values from their bit histograms.

    ``high``: counts per upper 16 bits; ``low[b]``: counts per lower 16 bits of
    the values whose upper bits are ``b`` (at least for the middle one or two).
    """
    middle = []
    for rank in ((count - 1) // 2, count // 2):
        b, within = select(high, rank)
        lo, _ = select(low[b], within)
        middle.append(np.array([(b << 16) | lo], dtype=np.uint32).view(np.float32)[0])
    return float(np.array(middle, dtype=np.float32).mean())


def _acf_periods(data: StreamDataset, target: int) -> tuple[int, ...]:
    top = acf_top(_expand(data.train_lengths), ACF_MAX_LAG)
    if top is None:
        return ()
    sums = fold(data.dataset, partial(_acf_pass, data, target, top), _Acf())
    return periods_from_sums(sums.total, sums.count)


def _expand(counts: dict[int, int]) -> np.ndarray:
    """The lengths themselves (one int per stream: what acf_top takes; small)."""
    return np.repeat(np.array(list(counts), dtype=np.int64), list(counts.values()))


@dataclass
class _Acf:
    total: Any = 0.0
    count: Any = 0.0

    def __add__(self, other: _Acf) -> _Acf:
        return _Acf(self.total + other.total, self.count + other.count)


def _acf_pass(data: StreamDataset, target: int, top: int, batch: dict[str, np.ndarray]) -> _Acf:
    from streamcell.trainer.data import split_point

    _, xs, _ = data.decode(batch)
    out = _Acf(np.zeros((len(CHANGE_SPANS), top + 3)), np.zeros((len(CHANGE_SPANS), top + 3)))
    for x in xs:
        t, c = acf_sums(x[: split_point(len(x), data.val_fraction), target], top)
        out.total += t
        out.count += c
    return out


@dataclass
class _First:
    inputs: Moments = field(default_factory=Moments)
    targets: Moments = field(default_factory=Moments)
    weighted: bool = False
    high: Any = 0  # int64 [BINS] histogram of the median's candidates
    candidates: int = 0

    def __add__(self, other: _First) -> _First:
        return _First(
            self.inputs + other.inputs,
            self.targets + other.targets,
            self.weighted or other.weighted,
            self.high + other.high,
            self.candidates + other.candidates,
        )


def _raws(data: StreamDataset, raw: Any, batch: dict[str, np.ndarray]) -> list[RawStream]:
    names, xs, ys = data.decode(batch)
    return raw(names, xs, ys)


def _first_pass(data: StreamDataset, raw: Any, batch: dict[str, np.ndarray]) -> _First:
    raws = _raws(data, raw, batch)
    out = _First(
        Moments.of(np.concatenate([r.train_inputs() for r in raws])),
        Moments.of(np.concatenate([r.train_targets() for r in raws])),
    )
    weights = [w for r in raws if (w := r.train_weights()) is not None]
    if weights:
        values = median_candidates(np.concatenate(weights))
        out.weighted = True
        out.high = np.bincount(high_bits(values), minlength=BINS)
        out.candidates = len(values)
    return out


@dataclass
class _Low:
    hists: dict[int, Any] = field(default_factory=dict)

    def __add__(self, other: _Low) -> _Low:
        keys = set(self.hists) | set(other.hists)
        return _Low({k: self.hists.get(k, 0) + other.hists.get(k, 0) for k in keys})


def _median(data: StreamDataset, raw: Any, first: _First) -> float:
    if first.candidates == 0:
        return 1.0
    bins = sorted(
        {select(first.high, r)[0] for r in ((first.candidates - 1) // 2, first.candidates // 2)}
    )
    low = fold(data.dataset, partial(_low_pass, data, raw, tuple(bins)), _Low())
    return median_from_bits(first.high, low.hists, first.candidates)


def _low_pass(
    data: StreamDataset, raw: Any, bins: tuple[int, ...], batch: dict[str, np.ndarray]
) -> _Low:
    weights = [w for r in _raws(data, raw, batch) if (w := r.train_weights()) is not None]
    values = median_candidates(np.concatenate(weights)) if weights else np.zeros(0, np.float32)
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    out = _Low()
    for b in bins:
        mine = bits[(bits >> 16) == b] & 0xFFFF
        out.hists[b] = np.bincount(mine.astype(np.int64), minlength=BINS)
    return out


@dataclass
class _Sum:
    total: float = 0.0
    count: int = 0

    def __add__(self, other: _Sum) -> _Sum:
        return _Sum(self.total + other.total, self.count + other.count)


def _clipped(data: StreamDataset, raw: Any, median: float, batch: dict[str, np.ndarray]) -> _Sum:
    unit = WeightScale(median, 1.0)
    out = _Sum()
    for r in _raws(data, raw, batch):
        w = r.weight if r.weight is not None else np.full(len(r.y) - 1, np.nan, np.float32)
        out.total += float(clip_weights(w, unit)[: r.n_train - 1].sum())
        out.count += r.n_train - 1
    return out
