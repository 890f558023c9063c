"""The periods the trainer's defaults find on each data set (no training).

    PYTHONPATH=core:service:trainer:demo:protos:. .venv/bin/python -m bench.periods_found

Each stream's training part less its validation fifth (what the trainer sees),
the benchmark's integer order (no timestamps: the autocorrelation decides),
and the periods kept where two seasons fit the median length, as
``streamcell.trainer.periods.recipe_from`` keeps them.
"""

from __future__ import annotations

import sys

import numpy as np

from streamcell.trainer import datasets, heldout_datasets
from streamcell.trainer.data import split_point
from streamcell.trainer.periods import periods_from_acf


def found(name: str, val_fraction: float = 0.2) -> tuple[int, tuple[int, ...]]:
    ds = datasets.load(name)
    train = [y[:n][: split_point(n, val_fraction)] for _, y, n in ds.series() if n > 0]
    median = int(np.median([len(t) for t in train]))
    periods = periods_from_acf(train)
    return median, tuple(p for p in periods if 2 * p <= median)


def main(argv: list[str] | None = None) -> int:
    names = argv or [*datasets.LOADERS, *heldout_datasets.LOADERS]
    for name in names:
        median, periods = found(name)
        print(f"{name:26s} median training length {median:6d}  periods {periods}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
