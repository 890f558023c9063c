"""Per-stream model inputs and targets, normalised exactly as serving does it.

For a stream with raw features x_t and target columns y_t, and per-stream
scale s_t (``stream_scales``: running mean |x| up to and including t, or 1
under global scaling), the model sees

    u_t = (x_t / s_t - input_mean) / input_std
    z_t = (y_{t+1} / s_t[targets] - target_mean) / target_std

so that the Predictor's output ``(y * target_std + target_mean) * s_t`` is the
forecast of y_{t+1}. The global means and stds come from the training part of
each stream only (its first ``split_point`` rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamcell.core.errors import DataError
from streamcell.core.normalization import SCALING_GLOBAL, stream_scales
from streamcell.trainer.data import LongFrame, split_point

MIN_STD = 1e-6


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


@dataclass(frozen=True)
class Prepared:
    streams: tuple[StreamArrays, ...]
    norm: Normalisation
    scaling: str
    scale_floor: float
    target_index: tuple[int, ...] | None

    def __len__(self) -> int:
        return len(self.streams)

    def train_pairs(self) -> int:
        return sum(s.n_train - 1 for s in self.streams)


def prepare(frame: LongFrame, val_fraction: float, scaling: str, scale_floor: float) -> Prepared:
    """Normalise every stream with statistics of the training parts only."""
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
    for name, xs, y, ts, n in zip(
        frame.streams, scaled_x, frame.y, target_scales, splits, strict=True
    ):
        u = ((xs[:-1] - norm.input_mean) / norm.input_std).astype(np.float32)
        z = ((y[1:] / ts - norm.target_mean) / norm.target_std).astype(np.float32)
        streams.append(StreamArrays(name, u, z, y, ts.astype(np.float32), n))
    return Prepared(tuple(streams), norm, scaling, float(scale_floor), tidx)


def _target_index(frame: LongFrame) -> tuple[int, ...] | None:
    try:
        return tuple(frame.features.index(t) for t in frame.targets)
    except ValueError:
        return None


def _std(a: np.ndarray) -> np.ndarray:
    std = a.std(axis=0, dtype=np.float64)
    return np.where(std < MIN_STD, 1.0, std).astype(np.float32)
