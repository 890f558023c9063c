"""Batched streaming step vs one torch.nn.LSTM call per event, side by side.

    python bench/step_bench.py [--streams 100000] [--threads 1] [--device cuda] [--wide 128]

For each batch size B: pick B random streams of a slab store holding
``--streams`` streams, gather their (h, c), run one batched step, scatter back;
events/s = B / time. The naive design keeps a dict of per-stream (h, c) and
calls torch.nn.LSTM once per event. Also times the full Predictor (waves,
normalisation, bookkeeping) at B = 1024. The designs are measured round-robin
for ``--rounds`` rounds and each keeps its best round, so that a burst of load
from elsewhere on a shared machine hits every design alike. ``--device cuda``
adds the batched step and the full Predictor with the model and the (h, c)
slabs on the GPU (events from host memory, predictions back to it), at larger
batches too; each timed call ends with a synchronize.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from streamcell.core.checkpoint import LoadedModel, ModelConfig
from streamcell.core.events import EventBatch
from streamcell.core.model import StreamingLSTM
from streamcell.core.predictor import Predictor
from streamcell.core.state import StateStore

INPUT, HIDDEN, LAYERS = 8, 64, 2


def timed(fn, min_seconds: float) -> float:
    """Seconds per call, repeating until ``min_seconds`` have passed."""
    fn()  # warm up
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def batched(model: StreamingLSTM, store: StateStore, batch: int):
    rng = np.random.default_rng(batch)
    ids = store.stream_ids()
    device = store.device
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None

    def one() -> None:
        pick = [ids[k] for k in rng.choice(len(ids), size=batch, replace=False)]
        slots = store.slots(pick, 0.0)
        h, c = store.gather(slots)
        out = model.step(torch.randn(batch, INPUT).to(device), h, c)
        store.scatter(slots, out.h, out.c)
        sync()

    return one, batch


def batched_cudnn_style(model: StreamingLSTM, store: StateStore, batch: int):
    """The same gather/scatter around torch.nn.LSTM itself: fast, but not batch-invariant."""
    rng = np.random.default_rng(batch + 1)
    ids = store.stream_ids()

    def one() -> None:
        pick = [ids[k] for k in rng.choice(len(ids), size=batch, replace=False)]
        slots = store.slots(pick, 0.0)
        h, c = store.gather(slots)
        with torch.no_grad():
            out, (h, c) = model.lstm(torch.randn(batch, 1, INPUT), (h, c))
            model.head(out[:, -1])
        store.scatter(slots, h, c)

    return one, batch


def naive(model: StreamingLSTM, streams: int):
    states: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    zero = torch.zeros(LAYERS, 1, HIDDEN)
    rng = np.random.default_rng(0)
    names = [f"s{k}" for k in range(streams)]

    def one() -> None:
        stream = names[rng.integers(streams)]
        h, c = states.get(stream, (zero, zero))
        with torch.no_grad():
            out, (h, c) = model.lstm(torch.randn(1, 1, INPUT), (h, c))
            model.head(out[:, -1])
        states[stream] = (h, c)

    return one, 1


def full_predictor(model: StreamingLSTM, streams: int, batch: int, device: str = "cpu"):
    names = [f"f{k}" for k in range(INPUT)]
    cfg = ModelConfig(
        INPUT,
        model.hidden_size,
        LAYERS,
        INPUT,
        names,
        names,
        [0.0] * INPUT,
        [1.0] * INPUT,
        [0.0] * INPUT,
        [1.0] * INPUT,
    )
    loaded = LoadedModel("bench", "v1", None, cfg, copy.deepcopy(model))  # type: ignore[arg-type]
    predictor = Predictor(loaded, max_streams=streams, device=device)
    ids = [f"s{k}" for k in range(streams)]
    for k in range(0, streams, 4096):
        chunk = ids[k : k + 4096]
        predictor.predict(EventBatch.of(chunk, np.zeros((len(chunk), INPUT), np.float32)))
    rng = np.random.default_rng(1)

    def one() -> None:
        pick = [ids[k] for k in rng.integers(0, streams, size=batch)]
        predictor.predict(EventBatch.of(pick, rng.normal(size=(batch, INPUT)).astype(np.float32)))

    return one, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seconds", type=float, default=0.5, help="time per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="round-robin rounds (best kept)")
    parser.add_argument("--device", default=None, help="also measure on this device (cuda)")
    parser.add_argument(
        "--wide",
        type=int,
        default=0,
        help="also the full Predictor with a model of this many units (e.g. 128: the "
        "default blend of two 64-unit models, streamcell.trainer.ensemble)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = StreamingLSTM(INPUT, HIDDEN, LAYERS, INPUT).eval()
    store = StateStore(
        LAYERS, HIDDEN, INPUT, INPUT, initial_capacity=args.streams, max_streams=args.streams
    )
    store.slots([f"s{k}" for k in range(args.streams)], 0.0)
    designs = {"naive: nn.LSTM per event, dict states": naive(model, args.streams)}
    for batch in (1, 64, 1024, 4096):
        designs[f"batched step, B={batch}"] = batched(model, store, batch)
    designs["nn.LSTM on the batch, B=1024 (no invariance)"] = batched_cudnn_style(
        model, store, 1024
    )
    designs["Predictor.predict, B=1024 (full path)"] = full_predictor(model, args.streams, 1024)
    if args.wide:
        wide = StreamingLSTM(INPUT, args.wide, LAYERS, INPUT).eval()
        designs[f"Predictor.predict, B=1024, hidden {args.wide}"] = full_predictor(
            wide, args.streams, 1024
        )
    if args.device:
        on = copy.deepcopy(model).to(args.device)
        slab = StateStore(
            LAYERS, HIDDEN, INPUT, INPUT, initial_capacity=args.streams,
            max_streams=args.streams, device=args.device,
        )  # fmt: skip
        slab.slots([f"s{k}" for k in range(args.streams)], 0.0)
        for batch in (1024, 4096, 16384, 65536):
            if batch <= args.streams:
                designs[f"batched step on {args.device}, B={batch}"] = batched(on, slab, batch)
        for batch in (1024, 16384):
            designs[f"Predictor.predict on {args.device}, B={batch}"] = full_predictor(
                model, args.streams, batch, args.device
            )
    best = dict.fromkeys(designs, 0.0)
    for _ in range(args.rounds):
        for name, (fn, events) in designs.items():
            best[name] = max(best[name], events / timed(fn, args.seconds))
    naive_rate = best["naive: nn.LSTM per event, dict states"]
    print(
        f"torch {torch.__version__}, threads={args.threads}, {args.streams} streams, "
        f"input={INPUT} hidden={HIDDEN} layers={LAYERS}, best of {args.rounds} rounds"
        + (
            f", {torch.cuda.get_device_name()}"
            if torch.device(args.device or "cpu").type == "cuda"
            else ""
        )
    )
    print(f"{'design':<46}{'events/s':>14}{'vs naive':>10}")
    for name, rate in best.items():
        print(f"{name:<46}{rate:>14,.0f}{rate / naive_rate:>10.1f}")


if __name__ == "__main__":
    main()
