"""Synthetic long-format series with known structure, for tests and demos (seeded)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


def noisy_sines(
    streams: int = 8, length: int = 200, period: float = 20.0, noise: float = 0.1, seed: int = 0
) -> pd.DataFrame:
    """Sines of random phase and level per stream: learnable, but not by last value."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    parts = []
    for s in range(streams):
        t = np.arange(length)
        phase, level = rng.uniform(0, 2 * np.pi), rng.uniform(-1, 1)
        value = level + np.sin(2 * np.pi * t / period + phase) + noise * rng.normal(size=length)
        parts.append(pd.DataFrame({"stream": f"s{s}", "seq": t, "value": value}))
    return pd.concat(parts, ignore_index=True)


def square_waves(
    streams: int = 16, length: int = 300, period: int = 10, noise: float = 0.05, seed: int = 0
) -> pd.DataFrame:
    """+1 for period/2 steps, then -1: knowing when it flips needs period/2 steps of memory."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    parts = []
    for s in range(streams):
        t = np.arange(length)
        phase = rng.integers(period)
        value = np.where((t + phase) % period < period // 2, 1.0, -1.0)
        value = value + noise * rng.normal(size=length)
        parts.append(pd.DataFrame({"stream": f"w{s}", "seq": t, "value": value}))
    return pd.concat(parts, ignore_index=True)


def interleaved(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in replay order: by seq, then stream (as events arrive)."""
    return frame.sort_values(["seq", "stream"], kind="stable").reset_index(drop=True)
