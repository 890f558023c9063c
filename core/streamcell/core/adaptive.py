"""Adaptive width per stream: adaptive conformal inference on the served quantiles.

The version's calibration (:mod:`streamcell.core.calibration`) is fitted once,
on the validation split, for every stream alike. A stream whose spread drifts
from what validation saw (a series whose noise shrinks as it grows, a version
that is a blend of the validated model and a refit with no held-out rows)
keeps intervals that are too wide or too narrow for as long as it is served.
Adaptive conformal inference (Gibbs and Candès, 2021) corrects that from the
stream's own scored actuals: each stream holds a width factor ``w`` per
target, its log updated after each scored actual by

    log w <- clip(log w + gamma (miss - (1 - c)), log LOWEST, log HIGHEST)

where ``miss`` is 1 when the actual fell outside the widest central interval
(coverage ``c``, 0.8 for the levels 0.1 and 0.9) of the quantiles served for
it, else 0. Served quantiles are then ``m + w (q - m)`` about the median
``m`` of the calibrated quantiles ``q``: the median (``yhat``) never moves.
Over any run of a stream's events the share of misses stays within
``(log HIGHEST - log LOWEST + gamma) / (gamma T)`` of ``1 - c`` whatever the
data do (the paper's bound), so a stream cannot stay miscovered.

A Forecast is not scaled by it: the one-step factor corrects the version's
online table, and where the online and fixed-origin tables were off in
opposite directions on held-out data, carrying it over made the Forecast's
intervals worse (docs/BENCHMARKS.md, "Calibrated intervals, adaptive").

``log w`` is float32 state beside the stream's (h, c) and history ring
(:mod:`streamcell.core.state`): snapshotted and restored with them, starting
at 0 (the version's calibration as fitted), and updated by float32 arithmetic
only, so a replay gives the same bytes. Pure numpy and torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from streamcell.core.quantiles import Interval

FIELD = "adaptive"
LOWEST, HIGHEST = 0.1, 10.0  # the factor's range: a bounded log keeps the guarantee's bound
MAX_GAMMA = 1.0


@dataclass(frozen=True)
class Adaptive:
    """The update's step ``gamma`` (on the log of the factor; 0: never moves)."""

    gamma: float

    @classmethod
    def from_json(cls, data: Any, name: str) -> Adaptive:
        """The config.json form ``{"gamma": g}``, checked; ValueError naming ``name`` otherwise."""
        if not isinstance(data, dict):
            raise ValueError(f"{name} must be an object, got {data!r}")
        unknown = sorted(set(data) - {"gamma"})
        if unknown:
            raise ValueError(f"{name} has unknown fields {unknown}")
        gamma = data.get("gamma")
        if (
            not isinstance(gamma, int | float)
            or isinstance(gamma, bool)
            or not math.isfinite(gamma)
            or not 0 <= gamma <= MAX_GAMMA
        ):
            raise ValueError(f"{name}.gamma must be a number in [0, {MAX_GAMMA:g}], got {gamma!r}")
        return cls(float(gamma))

    def to_json(self) -> dict[str, Any]:
        return {"gamma": self.gamma}


_LOG_LOWEST = np.float32(math.log(LOWEST))
_LOG_HIGHEST = np.float32(math.log(HIGHEST))


def updated(
    log_width: np.ndarray,
    served: np.ndarray,
    actual: np.ndarray,
    interval: Interval,
    gamma: float,
    held: bool = False,
) -> np.ndarray:
    """The streams' ``log w`` ``[K, targets]`` after the actuals ``[K, targets]`` scored the
    quantiles served for them, ``[K, levels, targets]``. Float32 throughout; a new array.
    ``held``: a recipe that holds flat windows (see :func:`moved`)."""
    inside = (served[:, interval.lower] <= actual) & (actual <= served[:, interval.upper])
    still = zero_width(served, interval) if held else None
    return moved(log_width, inside, interval, gamma, still)


def zero_width(served: np.ndarray, interval: Interval) -> np.ndarray:
    """``[K, targets]``: where the interval served had no width (a flat window's value)."""
    return served[:, interval.lower] == served[:, interval.upper]


def moved(
    log_width: np.ndarray,
    inside: np.ndarray,
    interval: Interval,
    gamma: float,
    still: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`updated` given whether each actual fell inside ``interval``, ``[K, targets]``
    bool (the Predictor has it from its scoring, :func:`streamcell.core.quantiles.score`).

    ``still`` ``[K, targets]``: where the interval served had zero width (a recipe's
    flat window, served as its value: streamcell.core.recipe.level), the width stays
    as it was: no factor moved that interval, and a long flat run would otherwise
    shrink the width to its floor for the values after it.
    """
    miss = np.where(inside, np.float32(0.0), np.float32(1.0))
    step = np.float32(gamma) * (miss - np.float32(1.0 - interval.coverage))
    out = log_width.astype(np.float32) + step
    out = np.clip(out, _LOG_LOWEST, _LOG_HIGHEST).astype(np.float32)
    if still is not None and still.any():
        out = np.where(still, log_width.astype(np.float32), out)
    return out


def scaled(q: torch.Tensor, log_width: torch.Tensor, median: int) -> torch.Tensor:
    """Sorted quantiles ``[B, levels, targets]`` scaled about their median by ``exp(log w)``
    ``[B, targets]``: ``m + w (q - m)``. A positive factor keeps their order."""
    m = q[:, median : median + 1]
    return m + torch.exp(log_width)[:, None, :] * (q - m)
