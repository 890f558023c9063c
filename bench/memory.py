"""Resident memory against the state's own bytes, and restore time from the changelog.

    python bench/memory.py [--streams 10000,100000,1000000] [--restore 100000]

Memory: for each N, a fresh process loads torch and the model (hidden 64, 2
layers, 8 inputs and outputs), notes its resident set (the fixed base), then
drives N distinct streams through ``Predictor.predict`` in batches of 4,096
(so the store, its index and the stream ids are real) and notes the resident
set again. Reported: the store's ``nbytes`` (slabs and per-slot arrays), the
growth of the resident set over the base, and their ratio.

Restore: N streams are written to a 3-partition changelog topic on the
embedded broker (``changelog.Snapshots``, as the checkpointer sends them), then each
Kafka client restores all of them into an empty store with
``changelog.restore`` (read to the end, keep the last value per key, load),
then each of the 3 partitions alone into an empty store (what a replica
does for a partition newly assigned to it: the time per partition).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid

INPUT, HIDDEN, LAYERS = 8, 64, 2
BATCH = 4096


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def make_predictor(max_streams: int):
    import torch

    from streamcell.core.checkpoint import LoadedModel, ModelConfig
    from streamcell.core.model import StreamingLSTM
    from streamcell.core.predictor import Predictor

    torch.set_num_threads(1)
    torch.manual_seed(0)
    names = tuple(f"f{k}" for k in range(INPUT))
    zeros, ones = (0.0,) * INPUT, (1.0,) * INPUT
    cfg = ModelConfig(INPUT, HIDDEN, LAYERS, INPUT, names, names, zeros, ones, zeros, ones)
    loaded = LoadedModel("bench", "v1", None, cfg, StreamingLSTM(INPUT, HIDDEN, LAYERS, INPUT))  # type: ignore[arg-type]
    return Predictor(loaded, max_streams=max_streams)


def fill(predictor, streams: int, prefix: str = "stream-") -> None:
    import numpy as np

    from streamcell.core.events import EventBatch

    rng = np.random.default_rng(0)
    for start in range(0, streams, BATCH):
        ids = [f"{prefix}{k}" for k in range(start, min(streams, start + BATCH))]
        x = rng.standard_normal((len(ids), INPUT)).astype(np.float32)
        predictor.predict(EventBatch.of(ids, x))


def measure_one(streams: int) -> dict:
    """Run in a child process: base RSS, then RSS with ``streams`` live streams."""
    predictor = make_predictor(streams)
    fill(predictor, 1000, prefix="warm-")  # allocator and torch kernels warmed
    predictor.store.clear()
    base = rss_bytes()
    start = time.perf_counter()
    fill(predictor, streams)
    seconds = time.perf_counter() - start
    grown = rss_bytes()
    store = predictor.store
    assert len(store) == streams
    return {
        "streams": streams,
        "state_bytes": store.nbytes,
        "state_bytes_per_stream": store.nbytes / streams,
        "base_rss": base,
        "rss": grown,
        "rss_growth": grown - base,
        "growth_over_state": (grown - base) / store.nbytes,
        "fill_seconds": seconds,
    }


def bench_restore(streams: int, clients: list[str]) -> list[dict]:
    from streamcell.service import changelog
    from streamcell.service.broker import BrokerSettings, EmbeddedBroker, free_port
    from streamcell.service.kafka import (
        KafkaClientConfig,
        TopicSpec,
        open_admin,
        open_producer,
        open_reader,
    )

    source = make_predictor(streams)
    fill(source, streams)
    results = []
    with EmbeddedBroker(BrokerSettings(port=free_port())) as broker:
        writer = "confluent" if "confluent" in clients else clients[0]
        cfg = KafkaClientConfig(broker.bootstrap, client=writer)
        topic = f"changelog-{uuid.uuid4().hex[:8]}"
        admin = open_admin(cfg)
        admin.ensure_topics([TopicSpec(topic, 3, compacted=True)])
        admin.close()
        producer = open_producer(cfg)
        ids = source.store.stream_ids()
        changed = {s: k % 3 for k, s in enumerate(ids)}
        start = time.perf_counter()
        changelog.Snapshots(topic, source.store, changed).send(producer)
        producer.flush(300)
        producer.close()
        write_s = time.perf_counter() - start
        for client in clients:
            target = make_predictor(streams)
            ccfg = KafkaClientConfig(broker.bootstrap, client=client)
            restored = changelog.restore(
                lambda ccfg=ccfg: open_reader(ccfg), topic, [0, 1, 2], target.store, 300
            )
            assert len(restored.streams) == streams and len(target.store) == streams
            sample = ids[:: max(1, streams // 100)]
            assert source.store.snapshot(sample) == target.store.snapshot(sample)
            # One partition alone, as a replica restores a partition newly assigned to it.
            per_partition = []
            for part in range(3):
                alone = make_predictor(streams)
                one = changelog.restore(
                    lambda ccfg=ccfg: open_reader(ccfg), topic, [part], alone.store, 300
                )
                per_partition.append((len(one.streams), one.seconds))
            results.append(
                {
                    "client": client,
                    "streams": streams,
                    "restore_seconds": restored.seconds,
                    "partition_restores": per_partition,
                    "write_seconds": write_s,
                    "writer": writer,
                }
            )
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--streams", default="10000,100000,1000000")
    p.add_argument("--restore", type=int, default=100_000, help="streams to restore (0: skip)")
    p.add_argument("--clients", default=None, help="comma-separated (default: installed)")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure_one(args.child)))
        return
    results: dict = {"memory": [], "restore": []}
    for n in [int(s) for s in args.streams.split(",") if s]:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(n)],
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        results["memory"].append(row)
        mib = 1024 * 1024
        print(
            f"{n:>9,} streams: state {row['state_bytes'] / mib:8.1f} MiB "
            f"({row['state_bytes_per_stream']:.0f} B/stream), RSS growth "
            f"{row['rss_growth'] / mib:8.1f} MiB = {row['growth_over_state']:.2f} x state, "
            f"base {row['base_rss'] / mib:.0f} MiB, total RSS {row['rss'] / mib:.0f} MiB"
        )
    if args.restore:
        from streamcell.service.kafka import installed_clients

        clients = args.clients.split(",") if args.clients else installed_clients()
        for row in bench_restore(args.restore, clients):
            results["restore"].append(row)
            print(
                f"restore {row['streams']:,} streams from the changelog with {row['client']}: "
                f"{row['restore_seconds']:.2f} s (written with {row['writer']} in "
                f"{row['write_seconds']:.2f} s)"
            )
            print(
                "  one partition alone: "
                + ", ".join(f"{n:,} streams {sec:.2f} s" for n, sec in row["partition_restores"])
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
