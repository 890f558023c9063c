"""Predictor.predict per batch of B distinct streams out of 10,000 (one CPU thread).

    python bench/predict_batch_bench.py

Each B: 20 batches of random events, applied once to warm up, then 5 rounds
over all 20; prints the best round's milliseconds per batch. To compare with
another commit, run its core/ on PYTHONPATH (see docs/BENCHMARKS.md).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

import streamcell.core.predictor as predictor_module
from streamcell.core.checkpoint import LoadedModel, ModelConfig
from streamcell.core.events import EventBatch
from streamcell.core.model import StreamingLSTM

INPUT, HIDDEN, LAYERS, STREAMS = 8, 64, 2, 10_000


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    names = [f"f{k}" for k in range(INPUT)]
    cfg = ModelConfig(
        INPUT, HIDDEN, LAYERS, INPUT, names, names,
        [0.0] * INPUT, [1.0] * INPUT, [0.0] * INPUT, [1.0] * INPUT,
    )  # fmt: skip
    model = StreamingLSTM(INPUT, HIDDEN, LAYERS, INPUT)
    loaded = LoadedModel("bench", "v1", Path("."), cfg, model)
    p = predictor_module.Predictor(loaded, max_streams=2 * STREAMS)
    rng = np.random.default_rng(0)
    ids = [f"s{k}" for k in range(STREAMS)]
    print(f"core from {Path(predictor_module.__file__).parent}")
    with torch.no_grad():
        for size in (1, 64, 1024):
            batches = [
                EventBatch.of(
                    [ids[j] for j in rng.choice(STREAMS, size, replace=False)],
                    rng.normal(size=(size, INPUT)).astype(np.float32),
                )
                for _ in range(20)
            ]
            for b in batches:
                p.predict(b)
            best = float("inf")
            for _ in range(5):
                start = time.perf_counter()
                for b in batches:
                    p.predict(b)
                best = min(best, (time.perf_counter() - start) / len(batches))
            print(f"B={size}: {best * 1e3:.3f} ms/batch")


if __name__ == "__main__":
    main()
