"""kafka-python's settings, one at a time: how each moves its produce and consume rates.

    python bench/kafka_python_tuning.py [--events 200000] [--rounds 3] [--bootstrap HOST:PORT]

Starts the embedded broker (unless ``--bootstrap``), writes E JSON events
(those of kafka_bench.py) once with confluent, then for each variant below,
in interleaved rounds so that the machine's load falls on all alike:

- consume: a ``KafkaConsumer`` built from our client's settings
  (``kafka_python_client._consumer_kwargs``) plus the variant's, partitions
  assigned, ``poll(max_records=...)`` until all E records are read, each
  value touched; events/s from the first record;
- produce: a ``KafkaProducer`` from ``_producer_kwargs`` plus the variant's (kafka-python
  3 has no ``buffer_memory``: its accumulator is unbounded),
  E ``send`` calls and one flush; events/s and per CPU second.

Prints the median of the rounds per variant, beside the baseline's ("ours").
On a shared machine the per-CPU-second figures are the ones to compare.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KTP
from kafka_bench import make_messages

from streamcell.service.broker import BrokerSettings, EmbeddedBroker, free_port
from streamcell.service.kafka import KafkaClientConfig, TopicSpec, open_admin, open_producer
from streamcell.service.kafka_python_client import _consumer_kwargs, _producer_kwargs

MB = 1024 * 1024
CONSUME: dict[str, dict] = {
    "ours": {},
    "max_partition_fetch_bytes=8MiB": {"max_partition_fetch_bytes": 8 * MB},
    "max_partition_fetch_bytes=256KiB": {"max_partition_fetch_bytes": MB // 4},
    "fetch_min_bytes=64KiB": {"fetch_min_bytes": 64 * 1024},
    "receive_buffer_bytes=4MiB": {"receive_buffer_bytes": 4 * MB},
    "fetch_max_wait_ms=50": {"fetch_max_wait_ms": 50},
    "check_crcs=False": {"check_crcs": False},
    "enable_incremental_fetch_sessions=False": {"enable_incremental_fetch_sessions": False},
}
POLL = (500, 1024, 10_000)  # max_records per poll, each with "ours"
PRODUCE: dict[str, dict] = {
    "ours": {},
    "linger_ms=0": {"linger_ms": 0},
    "linger_ms=20": {"linger_ms": 20},
    "batch_size=16KiB": {"batch_size": 16 * 1024},
    "batch_size=1MiB": {"batch_size": MB},
    "max_in_flight_requests_per_connection=1": {"max_in_flight_requests_per_connection": 1},
    "send_buffer_bytes=4MiB": {"send_buffer_bytes": 4 * MB},
    "not idempotent, acks=1": {"enable_idempotence": False, "acks": 1},
}


def consume(cfg: KafkaClientConfig, topic: str, parts: int, total: int, extra: dict, batch: int):
    c = KafkaConsumer(**{**_consumer_kwargs(cfg), "group_id": None, **extra})
    tps = [KTP(topic, p) for p in range(parts)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    got, size, start, cpu = 0, 0, None, 0.0
    try:
        while got < total:
            polled = c.poll(timeout_ms=1000, max_records=batch)
            if polled and start is None:
                start, cpu = time.perf_counter(), time.process_time()
            for records in polled.values():
                got += len(records)
                size += sum([len(r.value) for r in records])
        return got / (time.perf_counter() - start), got / (time.process_time() - cpu)
    finally:
        c.close()


def produce(cfg: KafkaClientConfig, messages, extra: dict) -> tuple[float, float]:
    topic = f"tune-{uuid.uuid4().hex[:8]}"
    admin = open_admin(cfg)
    admin.ensure_topics([TopicSpec(topic, 3)])
    admin.close()
    p = KafkaProducer(**{**_producer_kwargs(cfg), **extra})
    try:
        p.partitions_for(topic)  # metadata first: not timed
        start, cpu = time.perf_counter(), time.process_time()
        send = p.send
        for key, value in messages:
            send(topic, value=value, key=key)
        p.flush(300)
        n = len(messages)
        return n / (time.perf_counter() - start), n / (time.process_time() - cpu)
    finally:
        p.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bootstrap", help="use this broker instead of starting one")
    args = ap.parse_args()
    if args.bootstrap:
        run(args.bootstrap, args)
    else:
        with EmbeddedBroker(BrokerSettings(port=free_port())) as broker:
            run(broker.bootstrap, args)


def run(bootstrap: str, args: argparse.Namespace) -> None:
    cfg = KafkaClientConfig(bootstrap, client="kafka-python", client_id="tuning")
    messages = make_messages(args.events, 10_000)
    topic = f"tune-src-{uuid.uuid4().hex[:8]}"
    fast = KafkaClientConfig(bootstrap, client="confluent")
    admin = open_admin(fast)
    admin.ensure_topics([TopicSpec(topic, args.partitions)])
    admin.close()
    writer = open_producer(fast)
    writer.send_many(topic, messages)
    writer.flush(120)
    writer.close()
    runs: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for batch in POLL:
            name = f"consume ours, max_records={batch}"
            runs.setdefault(name, []).append(
                consume(cfg, topic, args.partitions, args.events, {}, batch)
            )
        for name, extra in CONSUME.items():
            runs.setdefault(f"consume {name}", []).append(
                consume(cfg, topic, args.partitions, args.events, extra, 10_000)
            )
        for name, extra in PRODUCE.items():
            runs.setdefault(f"produce {name}", []).append(produce(cfg, messages, extra))
    for name, rates in runs.items():
        wall = [r for r, _ in rates]
        cpu = [c for _, c in rates]
        print(
            f"{name:<48} median {statistics.median(wall):>9,.0f}/s  "
            f"{statistics.median(cpu):>9,.0f} per CPU s   "
            f"(per CPU s: {', '.join(f'{c:,.0f}' for c in cpu)})"
        )


if __name__ == "__main__":
    main()
