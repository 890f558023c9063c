"""The serve loop's cost with a quantile head against the same model point-only, one run.

    PYTHONPATH=core:service:demo:protos .venv/bin/python bench/quantile_bench.py [--batch 1024]
    # --prediction-format protobuf --heads point-only,"3 levels"

The model and events of the end-to-end benchmark (bench/kafka_e2e.py: 8
features, hidden 64, 2 layers, JSON events with a seq, keys ``stream-N``), in
polls of ``--batch`` records, through ``Pipeline.process`` as serve runs it
(decode, predict, score, encode, metrics) with a producer that drops what it
is sent (bench/process_bench.py): no Kafka client cost, so the ratio is of
serve's own work, the part a quantile head changes. Heads with the same
LSTM weights: point-only, levels 0.1/0.5/0.9, 0.1..0.9 (nine levels), the
three levels left crossing (the worst case: see make_model), and nine
levels with a calibration, and with each stream's adaptive width too (what
``streamcell train`` now exports). Each
round gives every head fresh events (later seqs, so every event is stepped
and, after the warm-up, scored), poll by poll in a rotating order, so that
the heads share the machine's load alike; wall and CPU time (the thread's
own, which time spent waiting for a core on a loaded machine leaves out),
best per poll and median round.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from kafka_e2e import HIDDEN, INPUT, LAYERS
from process_bench import TOPIC, DropProducer, Workload

from streamcell.core.checkpoint import ModelConfig, load_checkpoint, save_checkpoint
from streamcell.core.model import StreamingLSTM
from streamcell.core.predictor import Predictor
from streamcell.service.metrics import Metrics
from streamcell.service.pipeline import Pipeline
from streamcell.service.settings import FORMATS, PipelineSettings

NINE = tuple(round(0.1 * k, 1) for k in range(1, 10))
# name -> (levels, whether the levels' biases are spread apart, calibrated)
HEADS = {
    "point-only": ((), False, False),
    "3 levels": ((0.1, 0.5, 0.9), True, False),
    "9 levels": (NINE, True, False),
    "3, crossing": ((0.1, 0.5, 0.9), False, False),
    "9, calibrated": (NINE, True, True),
    "9, adaptive": (NINE, True, "adaptive"),
}


def make_model(root: Path, levels: tuple[float, ...], spread: bool, calibrated: bool | str = False):
    """kafka_e2e's model (seed 0), with a head as wide as the levels ask.

    ``spread``: the levels' biases moved apart, as a trained head's are, so
    that its quantiles seldom cross; without, a random head's levels cross in
    most rows and every wave pays the sort that uncrosses them. ``calibrated``:
    config.json's ``calibration`` widening every level by 1.2 (streamcell.core.calibration);
    ``"adaptive"``: that and each stream's adaptive width (streamcell.core.adaptive).
    """
    calibration = {"online": [1.2] * len(levels)} if calibrated else None
    if calibrated == "adaptive":
        calibration = {**calibration, "adaptive": {"gamma": 0.1}}
    names = tuple(f"f{k}" for k in range(INPUT))
    zeros, ones = (0.0,) * INPUT, (1.0,) * INPUT
    cfg = ModelConfig(
        INPUT, HIDDEN, LAYERS, INPUT, names, names, zeros, ones, zeros, ones,
        quantile_levels=levels,
        calibration=calibration,
    )  # fmt: skip
    torch.manual_seed(0)
    model = StreamingLSTM(INPUT, HIDDEN, LAYERS, cfg.head_width)
    if spread:
        with torch.no_grad():
            bias = model.head.bias.view(len(levels), INPUT)
            for k, level in enumerate(levels):
                bias[k] += 4.0 * (level - 0.5)
    tag = {False: "", True: "c", "adaptive": "a"}[calibrated]
    version = f"v{len(levels)}{'s' if spread else ''}{tag}"
    return load_checkpoint(save_checkpoint(root, "bench", model, cfg, version=version))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--streams", type=int, default=10_000)
    p.add_argument("--events", type=int, default=51_200)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="torch threads (serve's default: 1)")
    p.add_argument(
        "--prediction-format", default="json", choices=FORMATS, help="serve's (default json)"
    )
    p.add_argument(
        "--heads",
        type=lambda v: tuple(v.split(",")),
        default=tuple(HEADS),
        help="comma-separated names of HEADS to run (default: all)",
    )
    args = p.parse_args()
    heads = {name: HEADS[name] for name in args.heads}
    torch.set_num_threads(args.threads)
    pipelines, works = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (levels, spread, calibrated) in heads.items():
            model = make_model(Path(tmp), levels, spread, calibrated)
            predictor = Predictor(model, max_streams=args.streams * 2)
            pipelines[name] = Pipeline(
                PipelineSettings(input_topic=TOPIC, prediction_format=args.prediction_format),
                None,
                DropProducer(),
                None,
                predictor,
                Metrics(),
            )
            works[name] = Workload(args.events, args.streams, args.batch)

    def round_(r: int) -> dict[str, list[tuple[float, float]]]:
        """One round: poll k of every head back to back, in a rotating order, so that
        each head meets the same load from the machine's other work. Per poll: wall
        seconds, and this thread's CPU seconds (which waiting for a core leaves out)."""
        polls = {name: works[name].polls() for name in heads}
        spent: dict[str, list[tuple[float, float]]] = {name: [] for name in heads}
        names = list(heads)
        for k in range(len(polls[names[0]])):
            shift = (k + r) % len(names)
            for name in names[shift:] + names[:shift]:
                wall, cpu = time.perf_counter(), time.thread_time()
                pipelines[name].process(polls[name][k])
                spent[name].append((time.perf_counter() - wall, time.thread_time() - cpu))
        return spent

    round_(0)  # warm up: every stream exists and has a prediction to score
    rounds = [round_(r + 1) for r in range(args.rounds)]
    us = 1e6 / args.events
    print(
        f"{args.events:,} events in polls of {args.batch}, {args.streams:,} streams, "
        f"{args.threads} torch thread(s), {args.prediction_format} predictions; "
        f"{args.rounds} rounds, us per event; best poll: "
        "each poll's best round, summed; CPU: the thread's CPU time"
    )
    print(
        f"  {'head':<13} {'CPU best poll':>13} {'CPU median':>10} {'wall best poll':>14} "
        f"{'wall median':>11}  vs point-only (same four)"
    )
    base = None
    for name in heads:
        figures = []
        for clock in (1, 0):  # CPU, then wall
            per_round = [[poll[clock] for poll in r[name]] for r in rounds]
            per_poll = sum(map(min, zip(*per_round, strict=True))) * us
            figures += [per_poll, statistics.median(sum(t) for t in per_round) * us]
        base = base or figures
        ratios = " ".join(f"{f / b:5.3f}x" for f, b in zip(figures, base, strict=True))
        print(
            f"  {name:<13} {figures[0]:13.2f} {figures[1]:10.2f} {figures[2]:14.2f} "
            f"{figures[3]:11.2f}  {ratios}"
        )


if __name__ == "__main__":
    main()
