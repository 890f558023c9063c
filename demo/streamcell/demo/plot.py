"""The demo's picture: predicted vs actual for a few streams, held-out part shaded."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def plot_streams(
    path: Path,
    series: Sequence[tuple[str, np.ndarray, int]],
    predictions: Mapping[tuple[str, int], float],
    title: str,
    last: int = 72,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(series), 1, figsize=(10, 2.6 * len(series)), squeeze=False)
    for ax, (stream, values, n_train) in zip(axes[:, 0], series, strict=True):
        start = max(1, len(values) - last)
        steps = np.arange(start, len(values))
        pred = [predictions.get((stream, s - 1), np.nan) for s in steps]
        ax.plot(steps, values[start:], color="black", lw=1.2, label="actual")
        ax.plot(steps, pred, color="tab:orange", lw=1.2, label="streamcell (one step ahead)")
        ax.axvspan(n_train - 0.5, len(values) - 0.5, color="tab:blue", alpha=0.08, label="held out")
        ax.set_title(stream, fontsize=9, loc="left")
        ax.tick_params(labelsize=8)
    axes[0, 0].legend(fontsize=8, loc="upper left")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
