"""What one PredictBatch call costs at the default caps, and past them.

    .venv/bin/python bench/grpc_caps_bench.py

A PredictBatch runs under the Predictor's lock, which the Kafka loop also
needs; each event of one stream in a call is one LSTM step in turn. Measured:
calls at the default --grpc-max-batch-events and --grpc-max-batch-depth over
loopback gRPC (best of 3), and, in-process on a fresh Predictor (the server
now refuses it), one stream repeated 10,000 times. Model: 8 inputs, hidden 64,
2 layers, 8 outputs (random weights).
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

from streamcell.core.checkpoint import ModelConfig, load_latest, save_checkpoint
from streamcell.core.events import EventBatch
from streamcell.core.model import StreamingLSTM
from streamcell.core.predictor import Predictor
from streamcell.service.client import Client, event
from streamcell.service.grpc_api import GrpcSettings, start_grpc_server

INPUT, HIDDEN, LAYERS = 8, 64, 2


def _predictor() -> Predictor:
    registry = tempfile.mkdtemp(prefix="caps-bench-")
    names = tuple(f"f{i}" for i in range(INPUT))
    zeros, ones = (0.0,) * INPUT, (1.0,) * INPUT
    config = ModelConfig(INPUT, HIDDEN, LAYERS, INPUT, names, names, zeros, ones, zeros, ones)
    save_checkpoint(registry, "caps", StreamingLSTM(INPUT, HIDDEN, LAYERS, INPUT), config)
    return Predictor(load_latest(registry, "caps"))


def _over_grpc(predictor: Predictor, settings: GrpcSettings) -> None:
    x = [0.5] * INPUT
    events, depth = settings.max_batch_events, settings.max_batch_depth
    cases = {
        f"{depth:,} events of one stream": [event("deep", x) for _ in range(depth)],
        f"{events:,} events of distinct streams": [event(f"s{k}", x) for k in range(events)],
        f"{events:,} events, {events // depth} streams x {depth:,}": [
            event(f"m{k % (events // depth)}", x) for k in range(events)
        ],
    }
    handle = start_grpc_server(settings, lambda: predictor, None)
    try:
        with Client(f"127.0.0.1:{handle.port}", timeout=300) as client:
            for name, request in cases.items():
                seconds = []
                for _ in range(3):
                    start = time.perf_counter()
                    client.predict_batch(request)
                    seconds.append(time.perf_counter() - start)
                print(f"| PredictBatch, {name} | {min(seconds):.2f} s |")
    finally:
        handle.stop(grace=1)


def _in_process(predictor: Predictor, depth: int) -> None:
    unset = np.full(depth, -1, np.int64)
    x = np.full((depth, INPUT), 0.5, np.float32)
    batch = EventBatch([f"deep-{depth}"] * depth, x, unset, unset, unset)
    start = time.perf_counter()
    with predictor.lock:
        predictor.predict(batch)
    print(
        f"| in-process, {depth:,} events of one stream (now refused) | "
        f"{time.perf_counter() - start:.2f} s |"
    )


def main() -> None:
    print("| one call | seconds holding the server |\n|---|---|")
    _over_grpc(_predictor(), GrpcSettings(port=0, host="127.0.0.1"))
    _in_process(_predictor(), 10_000)


if __name__ == "__main__":
    main()
