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
    streams: tuple[StreamArrays, ...]
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
    if scaling == SCALING_WINDOW:
        if recipe is None:
            raise DataError(f"--scaling {SCALING_WINDOW} needs a recipe")
        return _prepare_recipe(frame, val_fraction, recipe, weights)
    tidx = _target_index(frame)
    if scaling != SCALING_GLOBAL and tidx is None:
        raise DataError(
            f"--scaling {scaling} needs every target to be a feature; "
            f"targets {list(frame.targets)} vs features {list(frame.features)}"
        )
    scaled_x, target_scales, splits = [], [], []
    for x in frame.x:
        s = np.ones_like(x) if scaling == SCALING_GLOBAL else stream_scales(x, scale_floor)
        scaled_x.append(x / s)
        target_scales.append(
            s[:-1][:, list(tidx)]
            if tidx is not None
            else np.ones((len(x) - 1, len(frame.targets)), dtype=np.float32)
        )
        splits.append(split_point(len(x), val_fraction))
    xs_train = np.concatenate([xs[:n] for xs, n in zip(scaled_x, splits, strict=True)])
    ys_train = np.concatenate(
        [y[1:n] / ts[: n - 1] for y, ts, n in zip(frame.y, target_scales, splits, strict=True)]
    )
    norm = Normalisation(
        xs_train.mean(axis=0, dtype=np.float64).astype(np.float32),
        _std(xs_train),
        ys_train.mean(axis=0, dtype=np.float64).astype(np.float32),
        _std(ys_train),
    )
    streams = []
    for name, x, xs, y, ts, n in zip(
        frame.streams, frame.x, scaled_x, frame.y, target_scales, splits, strict=True
    ):
        u = ((xs[:-1] - norm.input_mean) / norm.input_std).astype(np.float32)
        z = ((y[1:] / ts - norm.target_mean) / norm.target_std).astype(np.float32)
        w = _weights(y, ts, n) if weights else None
        streams.append(StreamArrays(name, u, z, y, ts.astype(np.float32), n, w, x))
    return Prepared(_balanced(streams), norm, scaling, float(scale_floor), tidx)


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
    if len(frame.targets) != 1 or frame.targets[0] not in frame.features:
        raise DataError(
            f"--scaling {SCALING_WINDOW} (a model that takes its stream's history) predicts "
            f"one target that is also a feature; got targets {list(frame.targets)} and "
            f"features {list(frame.features)} (use --scaling global or stream_mean_abs)"
        )
    return frame.features.index(frame.targets[0])


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


def _prepare_recipe(
    frame: LongFrame, val_fraction: float, recipe: Recipe, weights: bool
) -> Prepared:
    target = target_column(frame)
    if recipe.width != len(frame.features) or recipe.target != target:
        raise DataError(f"the recipe follows column {recipe.target} of {recipe.width}")
    computed = featurize_all(recipe, frame.x)
    splits = [split_point(len(x), val_fraction) for x in frame.x]
    floor = np.float32(recipe.scale_floor)
    f_train, t_train = [], []
    for (f, s), y, n in zip(computed, frame.y, splits, strict=True):
        f_train.append(f[:n])
        ratio = y[1:n, 0] / s[: n - 1]
        t_train.append(ratio[s[: n - 1] > floor])
    f_all = np.concatenate(f_train)
    t_all = np.concatenate(t_train)[:, None]
    if len(t_all) == 0:
        t_all = np.zeros((1, 1), dtype=np.float32)
    norm = Normalisation(
        f_all.mean(axis=0, dtype=np.float64).astype(np.float32),
        _std(f_all),
        t_all.mean(axis=0, dtype=np.float64).astype(np.float32),
        _std(t_all),
    )
    streams = []
    for name, x, (f, s), y, n in zip(
        frame.streams, frame.x, computed, frame.y, splits, strict=True
    ):
        u = ((f[:-1] - norm.input_mean) / norm.input_std).astype(np.float32)
        ts = s[:-1, None].astype(np.float32)
        z = ((y[1:] / ts - norm.target_mean) / norm.target_std).astype(np.float32)
        w = None
        if weights:
            w = _weights(y, ts, n)
        valid = s[:-1] > floor
        w = np.where(valid, np.ones(len(u), dtype=np.float32) if w is None else w, 0.0)
        streams.append(StreamArrays(name, u, z, y, ts, n, w.astype(np.float32), x))
    median = int(np.median(splits)) if splits else 0
    return Prepared(
        _balanced(streams),
        norm,
        SCALING_WINDOW,
        float(recipe.scale_floor),
        (target,),
        recipe,
        recipe.periods[0] if recipe.periods else 1,
        default_horizon=default_horizon(recipe.periods, median),
    )


def _weights(y: np.ndarray, target_scale: np.ndarray, n_train: int) -> np.ndarray:
    """s_t over the stream's in-sample last-value MAE (NaN where that MAE is 0)."""
    naive = np.abs(np.diff(y[:n_train].astype(np.float64), axis=0)).mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(naive > 0, target_scale / naive, np.nan).mean(axis=1)
    return w.astype(np.float32)


def _balanced(streams: list[StreamArrays]) -> tuple[StreamArrays, ...]:
    """Weights clipped around their median and scaled to mean 1 over the training steps."""
    if all(s.weight is None for s in streams):
        return tuple(streams)
    train = np.concatenate([s.weight[: s.n_train - 1] for s in streams if s.weight is not None])
    finite = train[np.isfinite(train) & (train > 0)]
    median = float(np.median(finite)) if len(finite) else 1.0
    low, high = median / WEIGHT_RANGE, median * WEIGHT_RANGE
    out: list[StreamArrays] = []
    weights: list[np.ndarray] = []
    total, count = 0.0, 0
    for s in streams:
        raw = s.weight if s.weight is not None else np.full(len(s.z), np.nan, np.float32)
        zero = np.isfinite(raw) & (raw == 0)  # masked steps stay masked
        w = np.where(np.isfinite(raw), np.clip(raw, low, high), median)
        w = np.where(zero, 0.0, w).astype(np.float32)
        total += float(w[: s.n_train - 1].sum())
        count += s.n_train - 1
        out.append(s)
        weights.append(w)
    mean = total / count if count and total > 0 else 1.0
    return tuple(
        replace(s, weight=(w / mean).astype(np.float32)) for s, w in zip(out, weights, strict=True)
    )


def _target_index(frame: LongFrame) -> tuple[int, ...] | None:
    try:
        return tuple(frame.features.index(t) for t in frame.targets)
    except ValueError:
        return None


def _std(a: np.ndarray) -> np.ndarray:
    std = a.std(axis=0, dtype=np.float64)
    return np.where(std < MIN_STD, 1.0, std).astype(np.float32)
