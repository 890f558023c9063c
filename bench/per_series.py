"""lstm_default and last value per series of one data set, both protocols.

    PYTHONPATH=core:service:trainer:demo:protos:. .venv/bin/python \
        -m bench.per_series heldout_gafa_stock

Trains the defaults once (as bench.accuracy's lstm_default row, one torch
thread) and prints, per series, A and B MASE of the model and of last value,
and the model's B path at its first and last step beside the last training
value and the last value forecast: where a mean over few series hides which
ones decide it.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from bench import lstm
from bench.accuracy import recipe_forecasts, recipe_settings
from bench.metrics import mase, mase_scale
from streamcell.trainer import datasets


def main(name: str) -> None:
    torch.set_num_threads(1)
    ds = datasets.load(name)
    trained, _ = lstm.train(ds, recipe_settings("lstm_default"))
    forecasts, _ = recipe_forecasts(ds, trained)
    h = ds.horizon
    print(
        "| series | A model | A last value | B model | B last value "
        "| B path first / last | last value | actual at h |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for stream, y, n in ds.series():
        scale = mase_scale(y[:n], ds.period)
        f = forecasts[stream]
        a_model, a_last = mase(y[n:], f.one_step, scale), mase(y[n:], y[n - 1 : -1], scale)
        b = ("-", "-", "-")
        if h is not None and f.origin is not None:
            path = np.asarray(f.origin)
            b_model = mase(y[n : n + h], path, scale)
            b_last = mase(y[n : n + h], np.full(h, y[n - 1]), scale)
            b = (f"{b_model:.2f}", f"{b_last:.2f}", f"{path[0]:.1f} / {path[-1]:.1f}")
        end = f"{y[n + h - 1]:.1f}" if h is not None else "-"
        cells = [f"{a_model:.3f}", f"{a_last:.3f}", *b, f"{y[n - 1]:.1f}", end]
        print(f"| {stream} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
