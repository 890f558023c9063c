"""Per-stream model inputs and targets, normalised exactly as serving does it.

With a recipe (``window_mean_abs``), the inputs after event t are the
recipe's history features f_t and the scale s_t, computed by
:func:`streamcell.core.recipe.advance` (serving's function, so the same
bits), and the model sees

    u_t = (f_t - input_mean) / input_std
    z_t = (y_{t+1} / s_t - target_mean) / target_std

Without one, for raw features x_t and per-stream scale s_t
(``stream_scales``: running mean |x| up to and including t, or 1 under
global scaling), u_t = (x_t / s_t - input_mean) / input_std and z_t as above
at the target columns. Either way the Predictor's output
``(y * target_std + target_mean) * s_t`` is the forecast of y_{t+1}. The
global means and stds come from the training part of each stream only (its
first ``split_point`` rows).

Each step also gets a loss weight: s_t over the stream's in-sample
last-value MAE, which is what an error of 1 in scaled units counts for in the
stream's MASE (so every stream counts alike, as MASE weighs them), clipped
to a factor of 10 around the median and normalised to mean 1. A step whose
recipe scale is at the floor (a window of zeros) has weight 0: its scaled
target is meaningless.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from streamcell.core.errors import DataError
from streamcell.core.normalization import SCALING_GLOBAL, SCALING_WINDOW, stream_scales
from streamcell.core.recipe import Recipe, advance, new_buffers
from streamcell.trainer.data import LongFrame, split_point
from streamcell.trainer.periods import default_horizon

MIN_STD = 1e-6
WEIGHT_RANGE = 10.0  # loss weights are clipped to median / 10 .. median * 10


@dataclass(frozen=True)
class Normalisation:
    input_mean: np.ndarray  # [F] float32
    input_std: np.ndarray
    target_mean: np.ndarray  # [O] float32
    target_std: np.ndarray


@dataclass(frozen=True)
class StreamArrays:
    """One stream ready for the model (row t of u and z is the step t -> t+1)."""

    stream: str
    u: np.ndarray  # [T-1, F] normalised inputs x_0..x_{T-2}
    z: np.ndarray  # [T-1, O] normalised targets y_1..y_{T-1}
    y: np.ndarray  # [T, O] raw targets
    target_scale: np.ndarray  # [T-1, O] s_t at the target columns (ones under global)
    n_train: int  # rows 0..n_train-1 are training; predictions of rows n_train.. are scored
    weight: np.ndarray | None = None  # [T-1] loss weight of each step (None: all 1)
    x: np.ndarray | None = None  # [T, width] the raw events (fixed-origin validation)


@dataclass(frozen=True)
class Prepared:
    # A tuple in memory; a worker of a Ray Dataset run holds a Sequence backed by its disk
    # (streamcell.trainer.stream_store), which the loop reads the same way.
    streams: Sequence[StreamArrays]
    norm: Normalisation
    scaling: str
    scale_floor: float
    target_index: tuple[int, ...] | None
    recipe: Recipe | None = None
    season: int = 1  # the seasonal-naive baseline's lag in validation (1: none found)
    # The head trained on these arrays (streamcell.trainer.select.resolve_head sets it):
    # steps predicted at once and quantile levels; and the horizon a direct head gets
    # when the settings leave it open, which fixed-origin validation also scores.
    horizon: int = 1
    quantile_levels: tuple[float, ...] = ()
    default_horizon: int = 1

    def __len__(self) -> int:
        return len(self.streams)

    def train_pairs(self) -> int:
        return sum(s.n_train - 1 for s in self.streams)

    def whole(self) -> Prepared:
        """The same streams with every row training (the final fit; nothing validated)."""
        return replace(self, streams=tuple(replace(s, n_train=len(s.y)) for s in self.streams))


@dataclass(frozen=True)
class RawStream:
    """One stream before the global statistics: all that prepare() derives from it alone."""

    stream: str
    inputs: np.ndarray  # [T, F] recipe features after each event, or x / s
    target_scale: np.ndarray  # [T-1, O] s_t at the target columns (ones under global)
    y: np.ndarray  # [T, O]
    n_train: int
    valid: np.ndarray | None  # [T-1] recipe scale above its floor (None: no recipe)
    weight: np.ndarray | None  # [T-1] loss weight before balancing (None: all 1)
    x: np.ndarray | None = None  # [T, width] the raw events (fixed-origin validation)

    def train_inputs(self) -> np.ndarray:
        """Inputs of the training rows, the rows the input statistics come from."""
        return self.inputs[: self.n_train]

    def train_targets(self) -> np.ndarray:
        """Scaled targets of the training steps, those the target statistics come from."""
        n = self.n_train
        ratio = self.y[1:n] / self.target_scale[: n - 1]
        return ratio if self.valid is None else ratio[self.valid[: n - 1]]

    def train_weights(self) -> np.ndarray | None:
        return None if self.weight is None else self.weight[: self.n_train - 1]


@dataclass(frozen=True)
class WeightScale:
    """How raw loss weights are balanced: clipped around ``median``, divided by ``mean``."""

    median: float  # of the finite, positive raw weights of every training step
    mean: float  # of the clipped weights over every training step

    @property
    def bounds(self) -> tuple[float, float]:
        return self.median / WEIGHT_RANGE, self.median * WEIGHT_RANGE


@dataclass(frozen=True)
class Plan:
    """The global part of prepare(): with it any stream is prepared on its own.

    The in-memory path computes it from every stream at once; the Ray Data
    path (streamcell.trainer.dataset_plan) from sums over a distributed
    pass; either way :meth:`build` turns a stream's values into the arrays
    the loop trains on.
    """

    norm: Normalisation
    scaling: str
    scale_floor: float
    target_index: tuple[int, ...] | None
    val_fraction: float
    recipe: Recipe | None
    weights: bool  # settings.stream_weights
    weight_scale: WeightScale | None  # None: no weights (global scalings without weights)
    default_horizon: int = 1  # a direct head's horizon when the settings leave it open

    @property
    def season(self) -> int:
        return self.recipe.periods[0] if self.recipe and self.recipe.periods else 1

    def raw(
        self, streams: Sequence[str], xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]
    ) -> list[RawStream]:
        return raw_streams(
            streams,
            xs,
            ys,
            val_fraction=self.val_fraction,
            scaling=self.scaling,
            scale_floor=self.scale_floor,
            recipe=self.recipe,
            weights=self.weights,
            target_index=self.target_index,
        )

    def build(
        self, streams: Sequence[str], xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]
    ) -> list[StreamArrays]:
        """The arrays the loop trains on, for these streams (any subset of the data)."""
        return [self.stream_arrays(r) for r in self.raw(streams, xs, ys)]

    def stream_arrays(self, raw: RawStream) -> StreamArrays:
        norm = self.norm
        u = ((raw.inputs[:-1] - norm.input_mean) / norm.input_std).astype(np.float32)
        z = ((raw.y[1:] / raw.target_scale - norm.target_mean) / norm.target_std).astype(np.float32)
        weight = None
        if self.weight_scale is not None:
            raw_w = raw.weight if raw.weight is not None else np.full(len(z), np.nan, np.float32)
            weight = (clip_weights(raw_w, self.weight_scale) / self.weight_scale.mean).astype(
                np.float32
            )
        ts = raw.target_scale.astype(np.float32)
        return StreamArrays(raw.stream, u, z, raw.y, ts, raw.n_train, weight, raw.x)

    def prepared(self, streams: Sequence[StreamArrays]) -> Prepared:
        return Prepared(
            streams,
            self.norm,
            self.scaling,
            float(self.scale_floor),
            self.target_index,
            self.recipe,
            self.season,
            default_horizon=self.default_horizon,
        )


def check_scaling(
    scaling: str, recipe: Recipe | None, features: Sequence[str], targets: Sequence[str]
) -> tuple[int, ...] | None:
    """The target columns among the features; a DataError where the scaling cannot be used."""
    if scaling == SCALING_WINDOW:
        if recipe is None:
            raise DataError(f"--scaling {SCALING_WINDOW} needs a recipe")
        target = target_column_of(features, targets)
        if recipe.width != len(features) or recipe.target != target:
            raise DataError(f"the recipe follows column {recipe.target} of {recipe.width}")
        return (target,)
    tidx = _target_index(features, targets)
    if scaling != SCALING_GLOBAL and tidx is None:
        raise DataError(
            f"--scaling {scaling} needs every target to be a feature; "
            f"targets {list(targets)} vs features {list(features)}"
        )
    return tidx


def prepare(
    frame: LongFrame,
    val_fraction: float,
    scaling: str,
    scale_floor: float,
    *,
    recipe: Recipe | None = None,
    weights: bool = True,
) -> Prepared:
    """Normalise every stream with statistics of the training parts only."""
    if scaling != SCALING_WINDOW:
        recipe = None
    tidx = check_scaling(scaling, recipe, frame.features, frame.targets)
    raws = raw_streams(
        frame.streams,
        frame.x,
        frame.y,
        val_fraction=val_fraction,
        scaling=scaling,
        scale_floor=scale_floor,
        recipe=recipe,
        weights=weights,
        target_index=tidx,
    )
    f_all = np.concatenate([r.train_inputs() for r in raws])
    t_all = np.concatenate([r.train_targets() for r in raws])
    if len(t_all) == 0:
        t_all = np.zeros((1, len(frame.targets)), dtype=np.float32)
    norm = Normalisation(
        f_all.mean(axis=0, dtype=np.float64).astype(np.float32),
        _std(f_all),
        t_all.mean(axis=0, dtype=np.float64).astype(np.float32),
        _std(t_all),
    )
    plan = Plan(
        norm,
        scaling,
        float(scale_floor),
        tidx,
        val_fraction,
        recipe,
        weights,
        _weight_scale(raws),
        _default_horizon(recipe, [r.n_train for r in raws]),
    )
    return plan.prepared(tuple(plan.stream_arrays(r) for r in raws))


def _default_horizon(recipe: Recipe | None, train_lengths: Sequence[int]) -> int:
    if recipe is None or not train_lengths:
        return 1
    return default_horizon(recipe.periods, int(np.median(train_lengths)))


def raw_streams(
    streams: Sequence[str],
    xs: Sequence[np.ndarray],
    ys: Sequence[np.ndarray],
    *,
    val_fraction: float,
    scaling: str,
    scale_floor: float,
    recipe: Recipe | None,
    weights: bool,
    target_index: tuple[int, ...] | None,
) -> list[RawStream]:
    """Each stream's inputs, scales and raw weights (row-wise: no stream affects another)."""
    splits = [split_point(len(x), val_fraction) for x in xs]
    out: list[RawStream] = []
    if scaling == SCALING_WINDOW:
        assert recipe is not None
        floor = np.float32(recipe.scale_floor)
        for name, x, (f, s), y, n in zip(
            streams, xs, featurize_all(recipe, xs), ys, splits, strict=True
        ):
            ts = s[:-1, None].astype(np.float32)
            valid = s[:-1] > floor
            w = _weights(y, ts, n) if weights else None
            w = np.where(valid, np.ones(len(ts), dtype=np.float32) if w is None else w, 0.0)
            out.append(RawStream(name, f, ts, y, n, valid, w.astype(np.float32), x))
        return out
    for name, x, y, n in zip(streams, xs, ys, splits, strict=True):
        s = np.ones_like(x) if scaling == SCALING_GLOBAL else stream_scales(x, scale_floor)
        ts = (
            s[:-1][:, list(target_index)]
            if target_index is not None
            else np.ones((len(x) - 1, y.shape[1]), dtype=np.float32)
        )
        w = _weights(y, ts, n) if weights else None
        out.append(RawStream(name, x / s, ts, y, n, None, w, x))
    return out


def horizon_targets(s: StreamArrays, norm: Normalisation, horizon: int) -> np.ndarray:
    """``[T-1, horizon, O]``: row t, step k is (y_{t+1+k} / s_t - mean) / std (NaN past the end)."""
    rows = len(s.z)
    out = np.full((rows, horizon, s.z.shape[1]), np.nan, dtype=np.float32)
    for k in range(min(horizon, rows)):
        ratio = s.y[1 + k :] / s.target_scale[: rows - k]
        out[: rows - k, k] = (ratio - norm.target_mean) / norm.target_std
    return out


def target_column(frame: LongFrame) -> int:
    """The feature column a recipe follows: the one target, which must be a feature."""
    return target_column_of(frame.features, frame.targets)


def target_column_of(features: Sequence[str], targets: Sequence[str]) -> int:
    if len(targets) != 1 or targets[0] not in features:
        raise DataError(
            f"--scaling {SCALING_WINDOW} (a model that takes its stream's history) predicts "
            f"one target that is also a feature; got targets {list(targets)} and "
            f"features {list(features)} (use --scaling global or stream_mean_abs)"
        )
    return list(features).index(targets[0])


def featurize_all(recipe: Recipe, xs: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(features, scale) after each event of each stream, as serving computes them.

    Steps every stream side by side through :func:`streamcell.core.recipe.advance`
    (row-wise: a stream's bits do not depend on the others), longest first so
    that the streams still going at step t are a prefix.
    """
    order = sorted(range(len(xs)), key=lambda k: -len(xs[k]))
    lengths = np.array([len(xs[k]) for k in order], dtype=np.int64)
    longest = int(lengths[0]) if len(lengths) else 0
    padded = np.zeros((len(order), longest, recipe.width), dtype=np.float32)
    for row, k in enumerate(order):
        padded[row, : len(xs[k])] = xs[k]
    ring = new_buffers(recipe, len(order))
    seen = np.zeros(len(order), dtype=np.int64)
    feats = np.empty((len(order), longest, recipe.num_features), dtype=np.float32)
    scale = np.empty((len(order), longest), dtype=np.float32)
    active = len(order)
    for t in range(longest):
        while active and lengths[active - 1] <= t:
            active -= 1
        f, s = advance(recipe, ring[:active], seen[:active], padded[:active, t])
        feats[:active, t], scale[:active, t] = f, s
        seen[:active] += 1
    out: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0), np.empty(0))] * len(xs)
    for row, k in enumerate(order):
        n = len(xs[k])
        out[k] = (feats[row, :n].copy(), scale[row, :n].copy())
    return out


def _weights(y: np.ndarray, target_scale: np.ndarray, n_train: int) -> np.ndarray:
    """s_t over the stream's in-sample last-value MAE (NaN where that MAE is 0)."""
    naive = np.abs(np.diff(y[:n_train].astype(np.float64), axis=0)).mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(naive > 0, target_scale / naive, np.nan).mean(axis=1)
    return w.astype(np.float32)


def median_candidates(train_weights: np.ndarray) -> np.ndarray:
    """The raw weights the clipping median is taken over: finite and positive."""
    return train_weights[np.isfinite(train_weights) & (train_weights > 0)]


def clip_weights(raw: np.ndarray, scale: WeightScale) -> np.ndarray:
    """Raw weights clipped around the median (NaN: the median); masked steps stay 0."""
    low, high = scale.bounds
    zero = np.isfinite(raw) & (raw == 0)
    w = np.where(np.isfinite(raw), np.clip(raw, low, high), scale.median)
    return np.where(zero, 0.0, w).astype(np.float32)


def _weight_scale(raws: Sequence[RawStream]) -> WeightScale | None:
    """Weights clipped around their median and scaled to mean 1 over the training steps."""
    if all(r.weight is None for r in raws):
        return None
    train = np.concatenate([w for r in raws if (w := r.train_weights()) is not None])
    finite = median_candidates(train)
    median = float(np.median(finite)) if len(finite) else 1.0
    unit = WeightScale(median, 1.0)
    total, count = 0.0, 0
    for r in raws:
        raw = r.weight if r.weight is not None else np.full(len(r.y) - 1, np.nan, np.float32)
        total += float(clip_weights(raw, unit)[: r.n_train - 1].sum())
        count += r.n_train - 1
    return WeightScale(median, total / count if count and total > 0 else 1.0)


def _target_index(features: Sequence[str], targets: Sequence[str]) -> tuple[int, ...] | None:
    try:
        return tuple(list(features).index(t) for t in targets)
    except ValueError:
        return None


def _std(a: np.ndarray) -> np.ndarray:
    std = a.std(axis=0, dtype=np.float64)
    return np.where(std < MIN_STD, 1.0, std).astype(np.float32)
