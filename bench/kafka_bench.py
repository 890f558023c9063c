"""Kafka transport rates, each client side by side, against one broker.

    python bench/kafka_bench.py [--events 200000] [--streams 10000] [--bootstrap HOST:PORT]

For every installed client: produce E event messages (the JSON events of
docs/ARCHITECTURE.md, 8 features, keyed by stream id) with ``Producer.send_many`` and one
flush; then read them back four ways:

- raw: the client library itself, partitions assigned, no processing (the
  transport's limit on this machine);
- Reader: our ``Reader.read_to_end`` (builds a ``Record`` per message);
- Consumer: our group ``Consumer.poll`` (timed from the first record, so the
  group join is left out);
- join: how long the group's first assignment took (Tansu: about half the
  session timeout).

Starts the embedded broker on a free port unless ``--bootstrap`` is given.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

import numpy as np

from streamcell.service.broker import BrokerSettings, EmbeddedBroker, free_port
from streamcell.service.kafka import (
    KafkaClientConfig,
    TopicSpec,
    installed_clients,
    open_admin,
    open_consumer,
    open_producer,
    open_reader,
)
from streamcell.service.replay import Events, encode

FEATURES = 8


def make_messages(events: int, streams: int, seed: int = 0) -> list[tuple[bytes, bytes]]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, streams, size=events)
    names = [f"stream-{k}" for k in ids.tolist()]
    counters: dict[int, int] = {}
    seq = np.empty(events, np.int64)
    for row, k in enumerate(ids.tolist()):
        seq[row] = counters[k] = counters.get(k, -1) + 1
    x = rng.standard_normal((events, FEATURES)).astype(np.float32)
    return encode(Events(names, x, seq, None))


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def bench_produce(cfg: KafkaClientConfig, topic: str, messages, chunk: int = 10_000) -> float:
    producer = open_producer(cfg)
    try:
        start = time.perf_counter()
        for k in range(0, len(messages), chunk):
            producer.send_many(topic, messages[k : k + chunk])
        producer.flush(120)
        return rate(len(messages), time.perf_counter() - start)
    finally:
        producer.close()


def bench_raw(
    cfg: KafkaClientConfig, topic: str, partitions: int, total: int, batch: int, touch: bool = False
) -> tuple[float, float]:
    """(events per second, events per CPU second of this process) reading ``total`` events.

    ``touch``: also take each record's value into Python (and its length), the
    least any consumer does with a record; else each poll's records are only
    counted, which for confluent never builds the values' Python objects.
    """
    if cfg.client == "confluent":
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        c = Consumer(
            {
                "bootstrap.servers": cfg.bootstrap_servers,
                "group.id": f"raw-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": cfg.fetch_max_wait_ms,
            }
        )
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        got, start, cpu = 0, None, 0.0
        size = 0
        while got < total:
            messages = c.consume(batch, 1.0)
            if messages and start is None:
                start, cpu = time.perf_counter(), time.process_time()
            got += len(messages)
            if touch:
                size += sum([len(m.value()) for m in messages])
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        c.close()
        return rate(got, seconds), rate(got, cpu)
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP

    c = KafkaConsumer(
        bootstrap_servers=cfg.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=cfg.fetch_max_wait_ms,
    )
    tps = [KTP(topic, p) for p in range(partitions)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    got, start, cpu = 0, None, 0.0
    size = 0
    while got < total:
        polled = c.poll(timeout_ms=1000, max_records=batch)
        if polled and start is None:
            start, cpu = time.perf_counter(), time.process_time()
        got += sum(len(v) for v in polled.values())
        if touch:
            size += sum([len(r.value) for v in polled.values() for r in v])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    c.close()
    return rate(got, seconds), rate(got, cpu)


def bench_reader(cfg: KafkaClientConfig, topic: str, partitions: int) -> tuple[float, int]:
    reader = open_reader(cfg)
    try:
        start, got = time.perf_counter(), 0
        for records in reader.read_to_end([(topic, p) for p in range(partitions)], 300):
            got += len(records)
        return rate(got, time.perf_counter() - start), got
    finally:
        reader.close()


def bench_group(cfg: KafkaClientConfig, topic: str, total: int, batch: int) -> tuple[float, float]:
    consumer = open_consumer(cfg, f"bench-{uuid.uuid4().hex[:8]}")
    try:
        subscribed = time.perf_counter()
        consumer.subscribe([topic], lambda tps: None, lambda tps: None)
        got, start = 0, None
        while got < total:
            records = consumer.poll(batch, 1.0)
            if records and start is None:
                start = time.perf_counter()
            got += len(records)
        return rate(got, time.perf_counter() - start), start - subscribed
    finally:
        consumer.close()


def run(bootstrap: str, args: argparse.Namespace) -> list[dict]:
    messages = make_messages(args.events, args.streams)
    size = sum(len(v) for _, v in messages) / len(messages)
    print(f"{args.events:,} events over {args.streams:,} streams, {size:.0f} bytes per value")
    results = []
    for client in args.clients:
        cfg = KafkaClientConfig(bootstrap, client=client, client_id="kafka-bench")
        topic = f"bench-{client}-{uuid.uuid4().hex[:8]}"
        admin = open_admin(cfg)
        admin.ensure_topics([TopicSpec(topic, args.partitions)])
        admin.close()
        row = {"client": client, "events": args.events}
        row["produce"] = bench_produce(cfg, topic, messages)
        row["raw_consume"], row["raw_consume_cpu"] = bench_raw(
            cfg, topic, args.partitions, args.events, args.max_records
        )
        row["reader"], read = bench_reader(cfg, topic, args.partitions)
        assert read == args.events, f"reader saw {read} of {args.events}"
        row["consumer"], row["join_s"] = bench_group(cfg, topic, args.events, args.max_records)
        results.append(row)
        print(
            f"{client:>13}: produce {row['produce']:>10,.0f}/s  raw consume "
            f"{row['raw_consume']:>10,.0f}/s  Reader {row['reader']:>10,.0f}/s  Consumer "
            f"{row['consumer']:>10,.0f}/s  first assignment {row['join_s']:.1f} s"
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--max-records", type=int, default=10_000, help="records per poll")
    parser.add_argument("--clients", type=lambda s: s.split(","), default=installed_clients())
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.bootstrap:
        results = run(args.bootstrap, args)
    else:
        with EmbeddedBroker(BrokerSettings(port=free_port())) as broker:
            results = run(broker.bootstrap, args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
