"""changelog.Snapshots without a broker: grouping, order, chunked sending."""

from __future__ import annotations

import numpy as np

from streamcell.core.state import StateStore
from streamcell.service.changelog import Snapshots


class CallRecorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None, list[tuple[bytes, bytes | None]]]] = []

    def send_many(self, topic, records, headers=None, partition=None) -> None:
        self.calls.append((topic, partition, list(records)))


def test_snapshots_then_tombstones_each_run_one_partition_and_each_value_exact():
    store = StateStore(2, 4, 3, 3)
    alive = [f"s{k}" for k in range(40)]
    store.slots(alive, now=1.0)
    store.offset[np.arange(40)] = np.arange(40) * 10
    rng = np.random.default_rng(0)
    changed = {s: int(rng.integers(0, 3)) for s in alive}
    changed.update({f"gone{k}": k % 3 for k in range(7)})  # deleted: tombstones
    records = Snapshots("cl", store, changed)
    assert (records.snapshots, records.tombstones) == (40, 7)
    producer = CallRecorder()
    assert records.send(producer)
    sent = [(p, k, v) for _, p, pairs in producer.calls for k, v in pairs]
    assert sorted(k.decode() for _, k, _ in sent) == sorted(changed)
    assert all(v is not None for _, _, v in sent[:40]) and all(v is None for _, _, v in sent[40:])
    for partition, key, value in sent:
        stream = key.decode()
        assert partition == changed[stream]
        if value is not None:
            assert value == store.snapshot([stream])[0]
    # Within a partition, the order the streams changed in is kept.
    for p in range(3):
        in_p = [k.decode() for q, k, v in sent if q == p and v is not None]
        assert in_p == [s for s in alive if changed[s] == p]


def test_sending_stops_at_the_count_asked_then_goes_on_from_there():
    store = StateStore(1, 4, 1, 1)
    streams = [f"s{k}" for k in range(1000)]
    store.slots(streams, now=1.0)
    records = Snapshots("cl", store, dict.fromkeys(streams, 0))
    producer = CallRecorder()
    assert not records.send(producer, until=300, deadline=0.0)  # the deadline has passed
    first = sum(len(pairs) for _, _, pairs in producer.calls)
    assert 300 <= first < 300 + Snapshots.CHUNK
    assert records.send(producer)
    keys = [k.decode() for _, _, pairs in producer.calls for k, _ in pairs]
    assert keys == streams and records.done
