"""The transport's own latency: consume and re-produce, nothing else (for kafka_e2e.py).

    python bench/echo_worker.py BOOTSTRAP CLIENT GROUP INPUT OUTPUT [MAX_BATCH] [DELAY_MS]

The same clients, settings and poll loop shape as ``streamcell serve`` (poll
up to MAX_BATCH records or DELAY_MS, one ``send_many`` per poll, commit
every second, the same garbage-collector settings), but no decoding, model
or changelog: each record becomes a small JSON value naming its input
(partition, offset), so kafka_e2e.py can match it as it matches predictions.
What is left is the floor that Kafka itself puts under event-to-prediction
latency on this machine.
"""

from __future__ import annotations

import signal
import sys
import time

from streamcell.service.kafka import KafkaClientConfig, open_consumer, open_producer

try:
    from streamcell.service.gc_pauses import settle
except ImportError:  # an older tree under test (before/after runs through PYTHONPATH)
    settle = None


def main() -> None:
    bootstrap, client, group, source, sink = sys.argv[1:6]
    max_batch = int(sys.argv[6]) if len(sys.argv) > 6 else 1024
    delay_s = (int(sys.argv[7]) if len(sys.argv) > 7 else 5) / 1000
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    cfg = KafkaClientConfig(bootstrap, client=client, client_id=group)
    consumer, producer = open_consumer(cfg, group), open_producer(cfg)
    consumer.subscribe([source], on_assign=lambda tps: None, on_revoke=lambda tps: None)
    if settle is not None:
        settle()  # as serve does: the collector's pauses are not the transport's
    positions: dict[tuple[str, int], int] = {}
    next_commit = time.monotonic() + 1.0
    try:
        while not stopping:
            records = consumer.poll(max_batch, delay_s)
            if records:
                producer.send_many(
                    sink,
                    [
                        (r.key, b'{"partition":%d,"offset":%d}' % (r.partition, r.offset))
                        for r in records
                    ],
                )
                for r in records:
                    positions[(source, r.partition)] = r.offset + 1
            if time.monotonic() >= next_commit and positions:
                consumer.commit(dict(positions))
                next_commit = time.monotonic() + 1.0
        producer.flush()
        if positions:
            consumer.commit(dict(positions))
    finally:
        consumer.close()
        producer.close()


if __name__ == "__main__":
    main()
