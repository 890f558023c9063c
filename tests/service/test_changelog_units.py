"""changelog.Snapshots and restore reads without a broker: grouping, order, chunked
sending; a restore limited by progress, not by time."""

from __future__ import annotations

import numpy as np
import pytest

from streamcell.core.errors import BrokerUnavailable
from streamcell.core.state import StateStore
from streamcell.service import changelog
from streamcell.service.changelog import Snapshots
from streamcell.service.kafka import EndTracker, Record, unavailable


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


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class PacedReader:
    """Reads as both clients do (an EndTracker per read), one record per poll of
    ``poll_s`` fake seconds; after ``stall_after`` records, polls return nothing."""

    def __init__(self, ends: dict[int, int], poll_s: float, stall_after: int | None = None):
        self.ends, self.poll_s, self.stall_after = ends, poll_s, stall_after
        self.clock = Clock()
        self.polls = 0

    def read_to_end(self, tps, timeout_s, on_progress=None):
        tracker = EndTracker(
            {tp: self.ends[tp[1]] for tp in tps},
            dict.fromkeys(tps, 0),
            timeout_s,
            on_progress,
            clock=self.clock,
        )
        read = 0
        while tracker.pending():
            stalled = tracker.check()
            if stalled is not None:
                raise unavailable(FakeCfg, stalled)
            self.clock.now += self.poll_s
            self.polls += 1
            if self.stall_after is not None and read >= self.stall_after:
                continue  # the broker answers, with nothing
            tp = tracker.pending()[0]
            offset = tracker.positions[tp]
            tracker.update(tp, offset + 1, None)
            read += 1
            yield [Record(tp[0], tp[1], offset, f"s{tp[1]}-{offset}".encode(), b"v", 0, ())]

    def close(self) -> None:
        pass


class FakeCfg:
    bootstrap_servers = "127.0.0.1:1"


def test_a_restore_that_keeps_reading_outlasts_the_timeout_and_reports_progress():
    reader = PacedReader({0: 100, 1: 100}, poll_s=1.0)  # 200 fake seconds, timeout 60
    seen: list[dict] = []
    items, where, tombstones = changelog.read(lambda: reader, "cl", [0, 1], 60.0, seen.append)
    assert len(items) == 200 and tombstones == 0 and reader.clock.now == 200.0
    assert sorted(set(where.values())) == [0, 1]
    assert len(seen) >= 30  # every 5 s of the read
    assert seen[0] == {("cl", 0): (5, 100), ("cl", 1): (0, 100)}
    assert seen[-1][("cl", 1)][1] == 100 and seen[-1][("cl", 0)] == (100, 100)


def test_a_restore_that_stops_progressing_raises_naming_partition_offsets_and_end():
    reader = PacedReader({0: 10, 3: 50}, poll_s=1.0, stall_after=25)
    with pytest.raises(BrokerUnavailable) as caught:
        changelog.read(lambda: reader, "cl", [0, 3], 60.0)
    message = str(caught.value)
    assert "no progress for over 60.0 s" in message
    assert "cl/3 at offset 15 of end 50 (15 read)" in message and "cl/0" not in message
    assert 60.0 < reader.clock.now - 25 <= 62.0  # raised once the stall passed the limit


def gen_record(offset: int, stream: str, value: bytes | None, generation: int | None) -> Record:
    headers = () if generation is None else tuple(changelog.generation_header(generation))
    return Record("cl", 0, offset, stream.encode(), value, 0, headers)


class ListReader:
    def __init__(self, records: list[Record]) -> None:
        self.records = records

    def read_to_end(self, tps, timeout_s, on_progress=None):
        yield self.records

    def close(self) -> None:
        pass


def latest_of(records: list[Record], max_generation: int | None = None) -> dict[str, bytes]:
    items, _, _ = changelog.read(lambda: ListReader(records), "cl", [0], 5.0, None, max_generation)
    return dict(items)


def test_a_zombies_late_record_of_an_older_generation_never_wins():
    records = [
        gen_record(0, "s", b"gen2-first", 2),
        gen_record(1, "s", b"gen3-new-owner", 3),
        gen_record(2, "s", b"gen2-zombie", 2),  # written late by the evicted member
        gen_record(3, "t", b"old", None),  # an older writer: generation -1
        gen_record(4, "t", b"gen1", 1),
        gen_record(5, "u", b"u3", 3),
        gen_record(6, "u", None, 4),  # deleted at 4 ...
        gen_record(7, "u", b"u-zombie", 3),  # ... a zombie's snapshot does not revive it
        gen_record(8, "v", b"v2", 2),
        gen_record(9, "v", b"v2-later", 2),  # same generation: the later one
    ]
    assert latest_of(records) == {"s": b"gen3-new-owner", "t": b"gen1", "v": b"v2-later"}


def test_a_generation_above_the_readers_counts_as_its_own_so_it_cannot_blackhole():
    records = [
        gen_record(0, "s", b"hostile", 1 << 40),
        gen_record(1, "s", b"real", 7),
        gen_record(2, "t", b"before-the-group-was-recreated", 50),
        gen_record(3, "t", b"after", 2),
    ]
    assert latest_of(records, max_generation=7) == {
        "s": b"real",
        "t": b"before-the-group-was-recreated",
    }
    assert latest_of(records, max_generation=2) == {"s": b"real", "t": b"after"}
    assert changelog.generation_of((("streamcell-generation", b"x"),)) == -1


class HeaderRecorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int | None, list, list]] = []

    def send_many(self, topic, records, headers=None, partition=None) -> None:
        self.calls.append((partition, list(records), headers))


def test_snapshots_carry_their_generation_and_a_partition_no_longer_held_is_not_sent():
    store = StateStore(1, 4, 1, 1)
    streams = [f"s{k}" for k in range(10)]
    store.slots(streams, now=1.0)
    changed = {s: k % 2 for k, s in enumerate(streams)}
    records = Snapshots("cl", store, changed, {0: 5, 1: 6})
    producer = HeaderRecorder()
    asked: list[tuple[int, int]] = []

    def held(partition: int, generation: int) -> bool:
        asked.append((partition, generation))
        return partition == 0

    assert records.send(producer, held=held)
    assert [(p, len(r), h) for p, r, h in producer.calls] == [
        (0, 5, [("streamcell-generation", b"5")])
    ]
    assert sorted(set(asked)) == [(0, 5), (1, 6)] and records.dropped == 5
