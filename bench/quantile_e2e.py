"""End to end over Kafka: streamcell serve with a quantile head beside point-only, one run.

    PYTHONPATH=core:service:demo:protos .venv/bin/python bench/quantile_e2e.py
    # --rounds 3 --formats json,protobuf --compressions none,lz4

One embedded broker and one preloaded input topic of bench/kafka_e2e.py's
events (JSON, 8 features, a seq per stream, 10,000 streams, 3 partitions);
then ``streamcell serve`` (kafka_e2e.Serve: a subprocess, gRPC off, fresh
group and output topic each time) alternately with the point-only model and
the same LSTM with the levels 0.1/0.5/0.9 (quantile_bench.make_model, levels
spread as a trained head's), ``--rounds`` times each. Per run, as kafka_e2e's
(b): events/s from the first prediction to the commit that covers every
event, and events per CPU second of serve (all its threads, the Kafka
client's included), the figure that the machine's other load moves least.
Each model runs with each ``--formats`` (serve's ``--prediction-format``)
and each ``--compressions`` (``--producer-compression``), the variants
rotating from round to round; the ratios are to point-only in the same
format and compression, and to the first variant (point-only, JSON,
uncompressed: today's default).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import uuid
from pathlib import Path
from types import SimpleNamespace

import torch
from kafka_bench import make_messages
from kafka_e2e import bench_serve, produce_all
from quantile_bench import HEADS, make_model

from streamcell.service.broker import BrokerSettings, EmbeddedBroker, free_port
from streamcell.service.kafka import installed_clients
from streamcell.service.settings import FORMATS

MODELS = ("point-only", "3 levels")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--streams", type=int, default=10_000)
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--max-batch", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--formats",
        type=lambda v: tuple(v.split(",")),
        default=FORMATS,
        help="serve's --prediction-format values to run, comma separated (default: both)",
    )
    p.add_argument(
        "--compressions",
        type=lambda v: tuple(v.split(",")),
        default=("none",),
        help="serve's --producer-compression values to run, comma separated (default none)",
    )
    p.add_argument(
        "--client", default="confluent" if "confluent" in installed_clients() else "kafka-python"
    )
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    variants = [
        (model, fmt, comp) for comp in args.compressions for fmt in args.formats for model in MODELS
    ]
    runs: dict[tuple[str, str, str], list[dict]] = {v: [] for v in variants}
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(BrokerSettings(port=free_port())) as broker,
    ):
        registries = {}
        for name in MODELS:
            registries[name] = Path(tmp) / name.replace(" ", "-")
            make_model(registries[name], *HEADS[name])
        topic = f"qe2e-{uuid.uuid4().hex[:8]}"
        produce_all(
            broker.bootstrap, topic, make_messages(args.events, args.streams), args.partitions
        )
        print(
            f"preloaded {args.events:,} events over {args.streams:,} streams; client {args.client}"
        )
        for r in range(args.rounds):
            shift = r % len(variants)  # each round starts with another variant
            for model, fmt, comp in variants[shift:] + variants[:shift]:
                serve_args = SimpleNamespace(
                    streams=args.streams, max_batch=args.max_batch, partitions=args.partitions,
                    events=args.events, timeout=args.timeout,
                    serve_args=f"--prediction-format {fmt} --producer-compression {comp}",
                )  # fmt: skip
                run = bench_serve(
                    broker.bootstrap, registries[model], args.client, topic, serve_args
                )
                assert run["unique_predictions"] == args.events, run
                runs[model, fmt, comp].append(run)
                print(
                    f"  round {r + 1} {model:<11} {fmt:<9} {comp:<5} "
                    f"{run['serve_to_commit']:>9,.0f} events/s, "
                    f"{run['serve_cpu']:>9,.0f} per CPU second, "
                    f"{run['bytes_per_prediction']:5.0f} bytes per record"
                )

    for stat, pick in (("medians", statistics.median), ("best rounds", max)):
        report(variants, runs, stat, pick)


def report(variants, runs, stat: str, pick) -> None:
    """Each variant's ``pick`` over its rounds, and its ratios."""

    def median(variant, key):  # or best: pick (a run too short to sample its CPU says 0)
        return max(pick(run[key] for run in runs[variant]), 1e-9)

    today = variants[0]  # point-only, the first format and compression (json, none)
    print(f"{stat}; ratio to point-only in the same format and compression, [to the first row]")
    for model, fmt, comp in variants:
        base = (MODELS[0], fmt, comp)
        rate, cpu = (
            median((model, fmt, comp), "serve_to_commit"),
            median((model, fmt, comp), "serve_cpu"),
        )
        print(
            f"{model:<11} {fmt:<9} {comp:<5} {rate:>9,.0f} events/s "
            f"({rate / median(base, 'serve_to_commit'):.3f}x) "
            f"[{rate / median(today, 'serve_to_commit'):.3f}x], "
            f"{cpu:>9,.0f} per CPU second ({cpu / median(base, 'serve_cpu'):.3f}x) "
            f"[{cpu / median(today, 'serve_cpu'):.3f}x]"
        )


if __name__ == "__main__":
    main()
