"""The confluent consumer's cost per record on the loop thread: consume() against _records.

    cd bench && PYTHONPATH=.:../core:../service:../protos ../.venv/bin/python consume_cost.py

Starts the embedded broker, preloads kafka_e2e's events (200,000 over 10,000
streams, 3 partitions), then reads them twice, each time in a fresh group, in
polls of 1,024 as serve does (15 ms timeout), timing the thread's CPU time of
librdkafka's ``consume()`` (which builds a Message object per record) and of
``confluent_client._records`` (a Record per message), per record. The first
poll (the group join) is left out.
"""

from __future__ import annotations

import time
import uuid

from kafka_e2e import make_messages, produce_all

from streamcell.service import confluent_client
from streamcell.service.broker import BrokerSettings, EmbeddedBroker, free_port
from streamcell.service.kafka import KafkaClientConfig, open_consumer

EVENTS = 200_000


def main() -> None:
    with EmbeddedBroker(BrokerSettings(port=free_port())) as broker:
        topic = f"consume-cost-{uuid.uuid4().hex[:8]}"
        produce_all(broker.bootstrap, topic, make_messages(EVENTS, 10_000), 3)
        for run in range(2):
            cfg = KafkaClientConfig(broker.bootstrap, client="confluent", client_id="cost")
            consumer = open_consumer(cfg, f"consume-cost-{uuid.uuid4().hex[:8]}")
            consumer.subscribe([topic], on_assign=lambda tps: None, on_revoke=lambda tps: None)
            raw = consumer._c  # the librdkafka consumer under the wrapper
            got, in_consume, in_records = 0, 0.0, 0.0
            deadline = time.monotonic() + 60
            while got < EVENTS and time.monotonic() < deadline:
                start = time.thread_time()
                messages = raw.consume(num_messages=1024, timeout=0.015)
                mid = time.thread_time()
                records = confluent_client._records(messages) if messages else []
                end = time.thread_time()
                if got:
                    in_consume += mid - start
                    in_records += end - mid
                got += len(records)
            per = 1e6 / got
            print(
                f"run {run + 1}: {got:,} records; thread CPU per record: "
                f"consume() {in_consume * per:.3f} us, _records {in_records * per:.3f} us"
            )
            consumer.close()


if __name__ == "__main__":
    main()
