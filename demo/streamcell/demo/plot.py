"""The demo's picture: predicted vs actual for a few streams, held-out part shaded.

With a quantile model, each stream's Forecast fan (its median and its widest
central interval, from the stream's last state onwards) is drawn beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np


class Fan(NamedTuple):
    """A Forecast's first target: median and interval bounds per step, and the interval's name."""

    median: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    label: str


def fan_of(forecast: Any, levels: Sequence[float]) -> Fan | None:
    """The fan of a gRPC Forecast whose every step carries its quantiles; None otherwise.

    The interval is the widest the levels bound (0.1 to 0.9 for the defaults).
    """
    steps = list(forecast.steps)
    if not steps or not levels or any(len(s.quantiles) != len(levels) for s in steps):
        return None
    values = np.array([[q.yhat[0] for q in s.quantiles] for s in steps], dtype=np.float64)
    lo, hi = 0, len(levels) - 1
    return Fan(
        np.array([s.yhat[0] for s in steps], dtype=np.float64),
        values[:, lo],
        values[:, hi],
        f"{levels[hi] - levels[lo]:.0%} interval",
    )


def plot_streams(
    path: Path,
    series: Sequence[tuple[str, np.ndarray, int]],
    predictions: Mapping[tuple[str, int], float],
    title: str,
    last: int = 72,
    fans: Mapping[str, Fan] | None = None,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fans = fans or {}
    columns = 2 if fans else 1
    fig, axes = plt.subplots(
        len(series),
        columns,
        figsize=(10 + 5 * (columns - 1), 2.6 * len(series)),
        squeeze=False,
        gridspec_kw={"width_ratios": [2, 1][:columns]},
    )
    for row, (stream, values, n_train) in enumerate(series):
        ax = axes[row, 0]
        start = max(1, len(values) - last)
        steps = np.arange(start, len(values))
        pred = [predictions.get((stream, s - 1), np.nan) for s in steps]
        ax.plot(steps, values[start:], color="black", lw=1.2, label="actual")
        ax.plot(steps, pred, color="tab:orange", lw=1.2, label="streamcell (one step ahead)")
        ax.axvspan(n_train - 0.5, len(values) - 0.5, color="tab:blue", alpha=0.08, label="held out")
        ax.set_title(stream, fontsize=9, loc="left")
        ax.tick_params(labelsize=8)
        if fans:
            _draw_fan(axes[row, 1], stream, values, fans.get(stream), last // 3)
    axes[0, 0].legend(fontsize=8, loc="upper left")
    if fans:
        axes[0, 1].legend(fontsize=8, loc="upper left")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _draw_fan(ax: Any, stream: str, values: np.ndarray, fan: Fan | None, last: int) -> None:
    """The stream's last values, then its Forecast from there on: median and interval."""
    start = max(0, len(values) - last)
    ax.plot(np.arange(start, len(values)), values[start:], color="black", lw=1.2, label="actual")
    ax.set_title(f"{stream}: Forecast", fontsize=9, loc="left")
    ax.tick_params(labelsize=8)
    if fan is None:
        ax.text(0.5, 0.5, "no quantiles", transform=ax.transAxes, ha="center", fontsize=8)
        return
    ahead = np.arange(len(values), len(values) + len(fan.median))
    ax.fill_between(ahead, fan.lower, fan.upper, color="tab:green", alpha=0.25, label=fan.label)
    ax.plot(ahead, fan.median, color="tab:green", lw=1.2, label="median")
