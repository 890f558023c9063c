"""Input and target scaling, applied identically by the trainer and the service.

Two layers: an optional per-stream scale (``stream_mean_abs``: the running mean
of |x| over every event the stream has seen, the current one included, floored
at ``scale_floor``), then the global z-score with the training set's mean and
std. A model whose config has no per-stream scaling uses a scale of 1.

Serving updates the running sums one event at a time; training computes them
with a cumulative sum over the whole stream. Both add the same float64 numbers
in the same order, so both see the same scale bit for bit.
"""

from __future__ import annotations

import numpy as np

SCALING_GLOBAL = "global"
SCALING_STREAM_MEAN_ABS = "stream_mean_abs"
# The mean |y| over the last recipe.scale_window values (streamcell.core.recipe).
SCALING_WINDOW = "window_mean_abs"
SCALINGS = (SCALING_GLOBAL, SCALING_STREAM_MEAN_ABS, SCALING_WINDOW)


def stream_scales(x: np.ndarray, floor: float) -> np.ndarray:
    """Scale after each event of one stream: x ``[T, F]`` -> ``[T, F]`` float32."""
    sums = np.cumsum(np.abs(x.astype(np.float64)), axis=0)
    counts = np.arange(1, len(x) + 1, dtype=np.float64)[:, None]
    return np.maximum(sums / counts, floor).astype(np.float32)


def scale_from_sums(sums: np.ndarray, counts: np.ndarray, floor: float) -> np.ndarray:
    """The same scale from running sums ``[B, F]`` and event counts ``[B]``."""
    return np.maximum(sums / counts[:, None].astype(np.float64), floor).astype(np.float32)
