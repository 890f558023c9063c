"""End to end over Kafka: streamcell serve with a quantile head beside point-only, one run.

    PYTHONPATH=core:service:demo:protos .venv/bin/python bench/quantile_e2e.py  # --rounds 3

One embedded broker and one preloaded input topic of bench/kafka_e2e.py's
events (JSON, 8 features, a seq per stream, 10,000 streams, 3 partitions);
then ``streamcell serve`` (kafka_e2e.Serve: a subprocess, gRPC off, fresh
group and output topic each time) alternately with the point-only model and
the same LSTM with the levels 0.1/0.5/0.9 (quantile_bench.make_model, levels
spread as a trained head's), ``--rounds`` times each. Per run, as kafka_e2e's
(b): events/s from the first prediction to the commit that covers every
event, and events per CPU second of serve (all its threads, the Kafka
client's included), the figure that the machine's other load moves least.
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

COMPARED = ("point-only", "3 levels")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--streams", type=int, default=10_000)
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--max-batch", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--client", default="confluent" if "confluent" in installed_clients() else "kafka-python"
    )
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    serve_args = SimpleNamespace(
        streams=args.streams, max_batch=args.max_batch, serve_args="",
        partitions=args.partitions, events=args.events, timeout=args.timeout,
    )  # fmt: skip
    runs: dict[str, list[dict]] = {name: [] for name in COMPARED}
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(BrokerSettings(port=free_port())) as broker,
    ):
        registries = {}
        for name in COMPARED:
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
            for name in COMPARED if r % 2 == 0 else COMPARED[::-1]:
                run = bench_serve(
                    broker.bootstrap, registries[name], args.client, topic, serve_args
                )
                assert run["unique_predictions"] == args.events, run
                runs[name].append(run)
                print(
                    f"  round {r + 1} {name:<11} {run['serve_to_commit']:>9,.0f} events/s, "
                    f"{run['serve_cpu']:>9,.0f} per CPU second"
                )
    base = {
        k: statistics.median(run[k] for run in runs[COMPARED[0]])
        for k in ("serve_to_commit", "serve_cpu")
    }
    for name in COMPARED:
        rate = statistics.median(run["serve_to_commit"] for run in runs[name])
        cpu = statistics.median(run["serve_cpu"] for run in runs[name])
        print(
            f"{name:<11} median {rate:>9,.0f} events/s ({rate / base['serve_to_commit']:.3f}x), "
            f"{cpu:>9,.0f} per CPU second ({cpu / base['serve_cpu']:.3f}x)"
        )


if __name__ == "__main__":
    main()
