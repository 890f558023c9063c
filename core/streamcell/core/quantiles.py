"""Quantile levels of a probabilistic head: their rule, central intervals and scores.

A model with ``quantile_levels`` in its config.json predicts, per target, one
value per level; the 0.5 level (the median) is its point prediction. Each
pair of levels symmetric about the median, ``lo`` and ``1 - lo``, bounds a
central interval of nominal coverage ``1 - 2 lo`` (0.1 and 0.9: the 80%
interval), whose coverage is counted online against the actual values that
arrive next. Pure numpy and stdlib, shared by the checkpoint, the state store,
the Predictor and the service's metrics, so the rule is written once.
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

MEDIAN = 0.5
DEFAULT_LEVELS = (0.1, 0.5, 0.9)
MAX_LEVELS = 99
_PAIR_TOLERANCE = 1e-9


def check_levels(levels: Any) -> tuple[float, ...]:
    """The levels as a tuple of floats; ValueError naming ``quantile_levels`` otherwise.

    None or an empty list is a point head (the empty tuple).
    """
    if levels is None:
        return ()
    if isinstance(levels, str | bytes) or not isinstance(levels, Sequence):
        raise ValueError(f"quantile_levels must be a list of numbers, got {levels!r}")
    if not levels:
        return ()
    for v in levels:
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            raise ValueError(f"quantile_levels must hold finite numbers, got {v!r}")
        if not 0 < v < 1:
            raise ValueError(f"quantile_levels must lie strictly between 0 and 1, got {v!r}")
    out = tuple(float(v) for v in levels)
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ValueError(f"quantile_levels must be strictly increasing, got {list(out)}")
    if MEDIAN not in out:
        raise ValueError(
            f"quantile_levels must contain 0.5 (the median is the point prediction), "
            f"got {list(out)}"
        )
    if len(out) > MAX_LEVELS:
        raise ValueError(f"quantile_levels has {len(out)} levels, at most {MAX_LEVELS}")
    return out


class Interval(NamedTuple):
    """A central interval: the indices of its bounding levels and its nominal coverage."""

    lower: int
    upper: int
    coverage: float

    @property
    def label(self) -> str:
        """The coverage as a metric label: "0.8" for the levels 0.1 and 0.9."""
        return interval_label(self.coverage)


def interval_label(coverage: float) -> str:
    return f"{coverage:g}"


def central_intervals(levels: Sequence[float]) -> tuple[Interval, ...]:
    """The central intervals the levels bound, widest first."""
    out = []
    for k, lo in enumerate(levels):
        if lo >= MEDIAN:
            break
        for j in range(len(levels) - 1, k, -1):
            if abs(lo + levels[j] - 1.0) <= _PAIR_TOLERANCE:
                out.append(Interval(k, j, round(levels[j] - lo, 6)))
                break
    return tuple(out)


def median_index(levels: Sequence[float]) -> int:
    return list(levels).index(MEDIAN)


def levels_digest(levels: Sequence[float]) -> int:
    """A 32-bit fingerprint of the levels (CRC-32 of their float64 bytes); 0 for none.

    A state snapshot carries it, so that a stream's last quantiles are never
    read as quantiles of other levels.
    """
    if not levels:
        return 0
    return zlib.crc32(struct.pack(f"<{len(levels)}d", *levels))


def inside_counts(
    actual: np.ndarray, quantiles: np.ndarray, intervals: Sequence[Interval]
) -> np.ndarray:
    """Per row, the targets whose actual value lies inside each interval: ``[K, n_intervals]``.

    ``actual`` ``[K, targets]``; ``quantiles`` ``[K, levels, targets]`` (sorted
    along levels); a value on a bound counts as inside.
    """
    lower = quantiles[:, [iv.lower for iv in intervals]]  # [K, n_intervals, targets]
    upper = quantiles[:, [iv.upper for iv in intervals]]
    a = actual[:, None, :]
    return ((lower <= a) & (a <= upper)).sum(axis=2, dtype=np.int64)


def pinball_sums(actual: np.ndarray, quantiles: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """The pinball (quantile) loss summed over rows and targets, per level: ``[levels]``.

    For level tau and error ``e = actual - q``: ``max(tau e, (tau - 1) e)``, in
    the targets' units, which is ``tau e - min(e, 0)``: summed, ``tau sum(e) -
    sum(min(e, 0))``, two passes over the errors instead of five. Errors in
    float32 (the values' own precision), sums in float64.
    """
    # Level-major and contiguous: numpy's float64 sum of a strided [K, L, O]
    # over two axes is several times slower.
    err = (actual[:, None, :] - quantiles).transpose(1, 0, 2).reshape(len(levels), -1)
    total = err.sum(axis=1, dtype=np.float64)
    below = np.minimum(err, 0.0, out=err).sum(axis=1, dtype=np.float64)
    return np.asarray(levels, dtype=np.float64) * total - below


class Scored(NamedTuple):
    """What :func:`score` found for rows of actuals against their previous quantiles."""

    inside: np.ndarray  # [K, n_intervals] int64: the targets inside each interval, per row
    widest: np.ndarray | None  # [K, targets] bool: inside the widest interval (None: none)
    pinball: np.ndarray  # [levels] float64: the pinball loss summed over rows and targets


def score(
    actual: np.ndarray,
    quantiles: np.ndarray,
    intervals: Sequence[Interval],
    levels: Sequence[float],
) -> Scored:
    """:func:`inside_counts` and :func:`pinball_sums` at once, bit for bit, from one
    pass of errors ``e = actual - q``.

    A value lies inside ``[lo, hi]`` exactly when ``a - lo >= 0`` and ``a - hi <= 0``
    (a float difference is zero only for equal values and keeps the sign
    otherwise), so the errors the pinball loss needs give the coverage too; they
    are written level-major, the layout :func:`pinball_sums` sums, with no copy.
    """
    rows, n_levels, targets = quantiles.shape
    err = np.empty((n_levels, rows, targets), np.result_type(actual, quantiles))
    np.subtract(actual, quantiles.transpose(1, 0, 2), out=err)
    widest = None
    if len(intervals) == 1:  # the usual levels (0.1, 0.5, 0.9): no copies of the errors
        iv = intervals[0]
        widest = np.greater_equal(err[iv.lower], 0.0)
        widest &= err[iv.upper] <= 0.0
        inside = widest.sum(axis=1, dtype=np.int64)[:, None]
    elif intervals:
        lower = err[[iv.lower for iv in intervals]]  # [n_intervals, K, targets]
        upper = err[[iv.upper for iv in intervals]]
        within = np.greater_equal(lower, 0.0)
        within &= upper <= 0.0
        inside = within.sum(axis=2, dtype=np.int64).T
        widest = within[0]
    else:
        inside = np.zeros((rows, 0), np.int64)
    flat = err.reshape(n_levels, -1)
    total = flat.sum(axis=1, dtype=np.float64)
    below = np.minimum(flat, 0.0, out=flat).sum(axis=1, dtype=np.float64)
    return Scored(inside, widest, np.asarray(levels, dtype=np.float64) * total - below)


@dataclass
class Scores:
    """What one micro-batch scored: actual values, those inside each interval, pinball sums."""

    scored: int  # actual values (rows x targets) scored against a previous prediction
    inside: np.ndarray  # [n_intervals] int64
    pinball: np.ndarray  # [levels] float64

    @classmethod
    def empty(cls, levels: int, intervals: int) -> Scores:
        return cls(0, np.zeros(intervals, np.int64), np.zeros(levels, np.float64))

    def add(self, scored: int, inside: np.ndarray, pinball: np.ndarray) -> None:
        self.scored += scored
        self.inside += inside
        self.pinball += pinball
