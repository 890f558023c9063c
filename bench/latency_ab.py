"""Serve's event-to-prediction latency under serve flags side by side, one broker, in turn.

    python bench/latency_ab.py --rate 50000 --rounds 3 "default=" \\
        "min-batch 256=--min-batch 256"

kafka_e2e.py's latency run (the same echo worker, serve subprocess, warm-up
and pacing), at one fixed input rate for every run: per round the echo
first (the transport's floor at that moment), then a fresh serve for each
``NAME=FLAGS`` in the order given, each on its own topic. The machine's load
moves between runs, so compare configurations within a round and over
rounds, not with figures of another session.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import kafka_e2e

from streamcell.service.broker import BrokerSettings, EmbeddedBroker, free_port


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=50_000, help="input events/s")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=15.0, help="paced input per run")
    p.add_argument("--client", default="confluent")
    p.add_argument("configs", nargs="+", help='NAME=FLAGS, e.g. "min256=--min-batch 256"')
    a = p.parse_args()
    base = argparse.Namespace(
        streams=10_000,
        partitions=3,
        max_batch=1024,
        serve_args="",
        latency_seconds=a.seconds,
        timeout=300.0,
    )
    runs: list[tuple[str, str]] = [("echo", "")]
    for config in a.configs:
        name, _, flags = config.partition("=")
        runs.append((name, flags))
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(BrokerSettings(port=free_port())) as broker,
    ):
        registry = kafka_e2e.make_registry(Path(tmp) / "registry")
        for round_ in range(1, a.rounds + 1):
            for name, flags in runs:
                args = copy.copy(base)
                args.serve_args = flags
                worker = kafka_e2e.Echo if name == "echo" else kafka_e2e.Serve
                lat = kafka_e2e.bench_latency(
                    broker.bootstrap, registry, a.client, a.rate, args, worker
                )
                print(
                    f"round {round_} {time.strftime('%H:%M:%S', time.gmtime())} UTC "
                    f"{name:>16}: p50 {lat['p50_ms']:5.0f}  p99 {lat['p99_ms']:6.0f}  "
                    f"max {lat['max_ms']:6.0f} ms at {lat['achieved_rate']:,.0f} events/s; "
                    f"p99 per second: {' '.join(f'{v:.0f}' for v in lat['p99_by_second_ms'])}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
