"""What a prediction record's size costs the producer: CPU per record at two sizes, one run.

    PYTHONPATH=core:service:demo:protos .venv/bin/python bench/produce_size_bench.py

The embedded broker; serve's producer (``open_producer`` with the default
client settings, confluent-kafka when installed); ``--records`` records of
each size, keys ``stream-N`` over 10,000 streams, sent in chunks of 1,024 with
``send_many`` as serve sends predictions, then flushed. CPU is the process's
(librdkafka's threads included). The sizes alternate, ``--rounds`` each. The
defaults are the JSON prediction of bench/kafka_e2e.py's model point-only and
with three quantile levels (bench/quantile_bench.py).
"""

from __future__ import annotations

import argparse
import time
import uuid

from streamcell.service.broker import BrokerSettings, EmbeddedBroker, free_port
from streamcell.service.kafka import (
    KafkaClientConfig,
    TopicSpec,
    installed_clients,
    open_admin,
    open_producer,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[195, 538])
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--client", default="confluent" if "confluent" in installed_clients() else "kafka-python"
    )
    args = p.parse_args()
    n = args.records
    with EmbeddedBroker(BrokerSettings(port=free_port())) as broker:
        cfg = KafkaClientConfig(broker.bootstrap, client=args.client)
        for r in range(args.rounds):
            for size in args.sizes:
                topic = f"size-{uuid.uuid4().hex[:8]}"
                admin = open_admin(cfg)
                admin.ensure_topics([TopicSpec(topic, 3)])
                admin.close()
                records = [
                    (f"stream-{k % 10_000}".encode(), b'{"k":%d}' % k + b" " * (size - 12))
                    for k in range(n)
                ]
                producer = open_producer(cfg)
                cpu, wall = time.process_time(), time.perf_counter()
                for k in range(0, n, 1024):
                    producer.send_many(topic, records[k : k + 1024])
                producer.flush(120)
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                producer.close()
                print(
                    f"round {r + 1}, {size:>5} bytes: {cpu / n * 1e6:5.2f} us CPU per record, "
                    f"{wall / n * 1e6:5.2f} us wall ({args.client})"
                )


if __name__ == "__main__":
    main()
