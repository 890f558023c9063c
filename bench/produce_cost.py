"""What one produced record costs the loop thread with confluent-kafka, by call shape.

    cd bench && PYTHONPATH=.:../core:../service:../protos ../.venv/bin/python produce_cost.py

One embedded broker, 3-partition topics. Thread CPU time per record of the
loop that produces 200,000 records in calls of 1,024 (as serve's polls), and
of the flush after it, which serves the delivery reports left:

- predictions (key, value, the partitioner picks): ``ConfluentProducer.send_many``
  as serve sends them (one Python delivery callback per record, which counts
  the record's epoch down), against the same ``produce()`` calls with no
  callback and ``delivery.report.only.error`` (what dropping the per-record
  reports would save);
- changelog records (a 1,172-byte snapshot, the generation header, an
  explicit partition): ``produce()`` with headers and partition as keywords
  (the call before issue 17's change) against the positional call
  ``send_many`` makes now.

Rounds alternate the variants; medians of the rounds.
"""

from __future__ import annotations

import statistics
import time
import uuid

from confluent_kafka import Producer
from kafka_e2e import make_messages

from streamcell.service import confluent_client
from streamcell.service.broker import BrokerSettings, EmbeddedBroker, free_port
from streamcell.service.changelog import generation_header
from streamcell.service.kafka import KafkaClientConfig, TopicSpec, open_admin

RECORDS, CALL, ROUNDS, PARTITIONS = 200_000, 1024, 3, 3
SNAPSHOT = bytes(1172)


def timed(send, flush) -> tuple[float, float]:
    """(loop, flush) thread CPU seconds per record."""
    start = time.thread_time()
    for k in range(0, RECORDS, CALL):
        send(k)
        time.sleep(0.001)  # the loop's other work: reports arrive between calls
    mid = time.thread_time()
    flush()
    end = time.thread_time()
    return (mid - start) / RECORDS, (end - mid) / RECORDS


def main() -> None:
    keys = [k for k, _ in make_messages(RECORDS, 10_000)]
    values = [
        b'{"partition":1,"offset":%d,"yhat":[0.1,0.2,0.3,0.4,0.5,0.6,0.7]}' % i
        for i in range(RECORDS)
    ]
    pairs = list(zip(keys, values, strict=True))
    header = generation_header(7)
    with EmbeddedBroker(BrokerSettings(port=free_port())) as broker:
        cfg = KafkaClientConfig(broker.bootstrap, client="confluent", client_id="produce-cost")
        admin = open_admin(cfg)
        topics = [f"cost-{uuid.uuid4().hex[:8]}" for _ in range(4)]
        admin.ensure_topics([TopicSpec(t, PARTITIONS) for t in topics])
        admin.close()
        wrapper = confluent_client.ConfluentProducer(cfg)
        bare = Producer(
            {**confluent_client._producer_conf(cfg), "delivery.report.only.error": True}
        )
        raw = wrapper._p
        topic_a, topic_b, topic_c, topic_d = topics

        def per_record_callback(k: int) -> None:
            wrapper.send_many(topic_a, pairs[k : k + CALL])

        def no_callback(k: int) -> None:
            produce = bare.produce
            for key, value in pairs[k : k + CALL]:
                produce(topic_b, value, key, -1)
            bare.poll(0)

        def keywords(k: int) -> None:
            produce = raw.produce
            for key in keys[k : k + CALL]:
                produce(topic_c, SNAPSHOT, key, on_delivery=None, headers=header, partition=1)
            raw.poll(0)

        def positional(k: int) -> None:
            produce = raw.produce
            for key in keys[k : k + CALL]:
                produce(topic_d, SNAPSHOT, key, 1, None, None, 0, header)
            raw.poll(0)

        variants = {
            "predictions, a Python callback per record (serve now)": (
                per_record_callback,
                wrapper.flush,
            ),
            "predictions, no callback, only error reports": (no_callback, bare.flush),
            "changelog record, headers and partition as keywords (before)": (keywords, raw.flush),
            "changelog record, positional (now)": (positional, raw.flush),
        }
        got: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        for _ in range(ROUNDS):
            for name, (send, flush) in variants.items():
                got[name].append(timed(send, flush))
        wrapper.close()
        bare.flush(30)
    print(f"{RECORDS:,} records in calls of {CALL}, thread CPU per record, median of {ROUNDS}:")
    for name, runs in got.items():
        loop = statistics.median(r[0] for r in runs) * 1e6
        total = statistics.median(r[0] + r[1] for r in runs) * 1e6
        print(f"  {name:64s} loop {loop:5.2f} us, with flush {total:5.2f} us")


if __name__ == "__main__":
    main()
