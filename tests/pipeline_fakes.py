"""Recording fakes of the kafka.py protocols, for the loop's unit tests (no broker)."""

from __future__ import annotations

import json

from streamcell.service.kafka import Record

TOPIC = "in"


class FakeProducer:
    """Records sends; a mark is the count sent, acknowledged up to ``acked`` (None: all)."""

    def __init__(self, log: list) -> None:
        self.log = log
        self.sent: list[tuple[str, bytes | None, bytes | None, int | None]] = []
        self.acked: int | None = None
        self.failure: Exception | None = None

    def send(self, topic, key, value, headers=None, partition=None) -> None:
        self.sent.append((topic, key, value, partition))

    def send_many(self, topic, records, headers=None, partition=None) -> None:
        for key, value in records:
            self.send(topic, key, value, headers, partition)

    def flush(self, timeout_s: float = 30.0) -> None:
        self.log.append(("flush", len(self.sent)))
        self.acked = None

    def mark(self) -> int:
        self.log.append(("mark", len(self.sent)))
        return len(self.sent)

    def acknowledged(self, mark: int) -> bool:
        if self.failure is not None:
            raise self.failure
        return mark <= (len(self.sent) if self.acked is None else self.acked)

    def close(self) -> None:
        self.log.append(("producer.close",))


class FakeConsumer:
    def __init__(self, log: list) -> None:
        self.log = log
        self.queue: list[list[Record]] = []
        self.committed_offsets: dict[tuple[str, int], int] = {}
        self.committed_metadata: dict[tuple[str, int], str] = {}
        self.on_assign = self.on_revoke = self.on_lost = None
        self.group_generation = 1

    def subscribe(self, topics, on_assign, on_revoke, on_lost=None) -> None:
        self.on_assign, self.on_revoke, self.on_lost = on_assign, on_revoke, on_lost

    def generation(self) -> int:
        return self.group_generation

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        return self.queue.pop(0) if self.queue else []

    def commit(self, offsets, metadata=None) -> None:
        self.log.append(("commit", dict(offsets)))
        self.committed_offsets.update(offsets)
        self.committed_metadata.update({tp: (metadata or {}).get(tp, "") for tp in offsets})

    def commit_async(self, offsets, metadata, on_refused) -> None:
        self.commit(offsets, metadata)

    def committed(self, tps):
        return {tp: self.committed_offsets.get(tp) for tp in tps}

    def committed_with_metadata(self, tps):
        return {
            tp: (self.committed_offsets.get(tp), self.committed_metadata.get(tp, "")) for tp in tps
        }

    def end_offsets(self, tps):
        return dict.fromkeys(tps, 0)

    def close(self) -> None:
        self.log.append(("consumer.close",))


class FakeReader:
    """Reads ``records``; input partitions end at ``input_ends`` (else far ahead)."""

    def __init__(self, records: list[Record], input_ends: dict[int, int] | None = None) -> None:
        self.records = records
        self.input_ends = input_ends or {}

    def read_to_end(self, tps, timeout_s, on_progress=None):
        wanted = {p for _, p in tps}
        yield [r for r in self.records if r.partition in wanted]

    def ends(self, tps, timeout_s):
        return {tp: self.input_ends.get(tp[1], 1 << 40) for tp in tps}

    def close(self) -> None:
        pass


def record(stream: str, offset: int, partition: int = 0, x=(1.0, 2.0, 3.0)) -> Record:
    value = json.dumps({"x": list(x)}).encode()
    return Record(TOPIC, partition, offset, stream.encode(), value, 0, ())
