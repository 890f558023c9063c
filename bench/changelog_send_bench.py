"""What the generation header and the ownership check cost a checkpoint's changelog send.

    .venv/bin/python bench/changelog_send_bench.py     # --streams 10000 --rounds 5

One embedded broker; for each installed client, a store of S streams
(hidden 64, 2 layers, as bench/kafka_e2e.py) and, alternating per round,
the changelog send of all S as a checkpoint does it now
(``Snapshots.send`` with the generation header and ``held`` asked per run
of records) and as it did before (the same records, no header, no check),
each followed by one flush. Prints the best and median seconds of each.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from streamcell.core.state import StateStore
from streamcell.service.broker import BrokerSettings, EmbeddedBroker, free_port
from streamcell.service.changelog import Snapshots
from streamcell.service.kafka import (
    KafkaClientConfig,
    TopicSpec,
    installed_clients,
    open_admin,
    open_producer,
)

PARTITIONS = 3


class Bare(Snapshots):
    """The send as it was before generations: no header, no check."""

    def send(self, producer, until=None, deadline=None, clock=time.perf_counter, held=None):
        total, streams, block, size = len(self.streams), self.streams, self._block, self._size
        while self.sent < total:
            end, partition = self._runs[self._run]
            stop = min(end, self.sent + self.CHUNK)
            pairs = [
                (streams[k].encode(), bytes(block[k * size : (k + 1) * size]))
                for k in range(self.sent, stop)
            ]
            producer.send_many(self.topic, pairs, partition=partition)
            self.sent = stop
            if stop == end:
                self._run += 1
        return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    store = StateStore(2, 64, 8, 8, max_streams=a.streams)
    streams = [f"s{k}" for k in range(a.streams)]
    store.slots(streams, now=1.0)
    changed = {s: k % PARTITIONS for k, s in enumerate(streams)}
    generations = dict.fromkeys(range(PARTITIONS), 7)
    with EmbeddedBroker(BrokerSettings(port=free_port())) as broker:
        for client in installed_clients():
            cfg = KafkaClientConfig(broker.bootstrap, client=client)
            topic = f"cl-{uuid.uuid4().hex[:8]}"
            admin = open_admin(cfg)
            admin.ensure_topics([TopicSpec(topic, PARTITIONS, compacted=True)])
            admin.close()
            producer = open_producer(cfg)
            times: dict[str, list[float]] = {"now": [], "before": []}
            try:
                for _ in range(a.rounds):
                    for name in times:
                        kind = Snapshots if name == "now" else Bare
                        records = kind(topic, store, changed, generations)
                        start = time.perf_counter()
                        records.send(producer, held=lambda p, g: p in generations)
                        producer.flush()
                        times[name].append(time.perf_counter() - start)
            finally:
                producer.close()
            for name, got in times.items():
                print(
                    f"{client:12s} {name:6s} {a.streams} records: best {min(got):.3f} s, "
                    f"median {statistics.median(got):.3f} s"
                )


if __name__ == "__main__":
    main()
