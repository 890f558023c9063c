"""Calibrated quantiles: each level's distance from the median scaled by a fitted factor.

A quantile head trained with the pinball loss is often too narrow or too wide
on data it has not seen. The trainer fits, on the validation split and after
the model is chosen, one factor ``a`` per level (``calibration`` in
config.json, :mod:`streamcell.trainer.calibrate`), and serving moves each
quantile to

    q' = m + a (q - m)

where ``m`` is the median of the same sorted levels, then sorts the levels
again. The median is unchanged (so is the point prediction ``yhat``), a
stream's own spread still sets the width, and ``a`` is chosen so that the
share of validation actuals at or below ``q'`` is the level.

Two tables: ``online``, one factor per level, for the one-step quantiles the
Predictor serves after each event; ``forecast``, one row of factors per
Forecast step (step 1 first), for a Forecast's quantiles; steps beyond the
table use its last row, and an empty table leaves a Forecast as the head
gives it. A config without ``calibration`` serves its quantiles unchanged.

``adaptive`` (optional, :mod:`streamcell.core.adaptive`): each stream's own
width factor on top of these, updated from its scored actuals; without it a
version serves the fitted factors alone, and its streams keep no such state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from streamcell.core.adaptive import FIELD as ADAPTIVE
from streamcell.core.adaptive import Adaptive
from streamcell.core.quantiles import central_intervals

FIELD = "calibration"
MAX_FACTOR = 1e3  # beyond this a factor is a symptom of a broken fit, not a width


@dataclass(frozen=True)
class Calibration:
    """One version's factors: ``online`` ``[levels]``, ``forecast`` ``[steps, levels]``,
    and each stream's adaptive width (None: none)."""

    online: tuple[float, ...]
    forecast: tuple[tuple[float, ...], ...]
    adaptive: Adaptive | None = None

    @classmethod
    def from_json(cls, data: Any, levels: Sequence[float]) -> Calibration:
        """The config.json form, checked; ValueError naming the field otherwise."""
        if not isinstance(data, dict):
            raise ValueError(f"{FIELD} must be an object, got {data!r}")
        if not levels:
            raise ValueError(f"{FIELD} needs quantile_levels (a point head has nothing to widen)")
        unknown = sorted(set(data) - {"online", "forecast", ADAPTIVE})
        if unknown:
            raise ValueError(f"{FIELD} has unknown fields {unknown}")
        online = _factors(data.get("online"), len(levels), f"{FIELD}.online")
        table = data.get("forecast", [])
        if not isinstance(table, list):
            raise ValueError(f"{FIELD}.forecast must be a list of rows, got {table!r}")
        rows = tuple(
            _factors(row, len(levels), f"{FIELD}.forecast[{k}]") for k, row in enumerate(table)
        )
        adaptive = data.get(ADAPTIVE)
        if adaptive is not None:
            adaptive = Adaptive.from_json(adaptive, f"{FIELD}.{ADAPTIVE}")
            if not central_intervals(levels):
                raise ValueError(f"{FIELD}.{ADAPTIVE} needs a central interval to cover")
        return cls(online, rows, adaptive)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "online": list(self.online),
            "forecast": [list(r) for r in self.forecast],
        }
        if self.adaptive is not None:
            out[ADAPTIVE] = self.adaptive.to_json()
        return out

    def step_factors(self, steps: int) -> np.ndarray | None:
        """``[steps, levels]`` float32 factors for a Forecast of ``steps`` steps; None: none."""
        if not self.forecast:
            return None
        table = np.asarray(self.forecast, dtype=np.float32)
        return table[np.minimum(np.arange(steps), len(table) - 1)]


def _factors(value: Any, levels: int, name: str) -> tuple[float, ...]:
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list of {levels} numbers, got {value!r}")
    if len(value) != levels:
        raise ValueError(f"{name} has {len(value)} factors, expected {levels} (one per level)")
    for v in value:
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            raise ValueError(f"{name} must hold finite numbers, got {v!r}")
        if not 0 <= v <= MAX_FACTOR:
            raise ValueError(f"{name} must hold factors in [0, {MAX_FACTOR:g}], got {v!r}")
    return tuple(float(v) for v in value)


def widen(q: torch.Tensor, factors: torch.Tensor, median: int) -> torch.Tensor:
    """Sorted quantiles ``[B, levels, targets]`` calibrated: ``m + a (q - m)``, sorted again.

    ``factors`` broadcasts against ``q`` (``[levels, 1]`` for one table row,
    ``[B, levels, 1]`` per row). Float32 throughout, as served.
    """
    m = q[:, median : median + 1]
    return uncrossed(m + factors * (q - m))


def widen_steps(q: np.ndarray, factors: np.ndarray | None, median: int) -> np.ndarray:
    """A Forecast's quantiles ``[steps, levels, targets]``, factors ``[steps, levels]``."""
    if factors is None:
        return q
    out = widen(torch.from_numpy(q), torch.from_numpy(factors[:, :, None]), median)
    return out.numpy()


def uncrossed(q: torch.Tensor) -> torch.Tensor:
    """Quantiles ``[B, levels, targets]`` sorted along levels: crossing ones are never served.

    Sorting keeps each row's set of values and makes each level's value at
    least the one below. A trained head seldom crosses, so the rows are
    checked first (a fraction of a sort's cost) and only rows that cross are
    sorted, each on its own (a row's result never depends on its batch). The
    sort is an odd-even transposition network of min/max over the level
    columns: the same values as ``torch.sort``, several times faster for a
    handful of levels.
    """
    if q.shape[1] < 2 or not _crosses(q):
        return q
    crossed = (q[:, 1:] < q[:, :-1]).flatten(1).any(dim=1)
    rows = crossed.nonzero().squeeze(1)
    cols = list(q[rows].unbind(1))
    levels = len(cols)
    for r in range(levels):
        for k in range(r % 2, levels - 1, 2):
            cols[k], cols[k + 1] = (
                torch.minimum(cols[k], cols[k + 1]),
                torch.maximum(cols[k], cols[k + 1]),
            )
    out = q.clone()
    out[rows] = torch.stack(cols, dim=1)
    return out


_NUMPY_FLOATS = (torch.float32, torch.float64)


def _crosses(q: torch.Tensor) -> bool:
    """Whether any level of ``q`` lies below the one before it (NaN crosses nothing).

    On the CPU through a numpy view: the check runs on every wave, where a few
    torch calls' overhead costs more than the comparisons themselves.
    """
    if q.device.type == "cpu" and q.dtype in _NUMPY_FLOATS and not q.requires_grad:
        a = q.numpy()
        return bool(np.less(a[:, 1:], a[:, :-1]).any())
    return bool((q[:, 1:] < q[:, :-1]).any())
