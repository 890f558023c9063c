"""A busy loop's poll: early once it holds --min-batch records, never past its delay."""

from __future__ import annotations

from pipeline_fakes import TOPIC

from streamcell.service import batching
from streamcell.service.kafka import Record


def rec(partition: int, offset: int) -> Record:
    return Record(TOPIC, partition, offset, b"k", b"v", 0, ())


class SlicedConsumer:
    """Each poll returns the next queued list (or nothing) and moves the clock by its wait."""

    def __init__(self, queue: list[list[Record]], on_poll=None) -> None:
        self.queue, self.now, self.calls = queue, 0.0, []
        self.on_poll = on_poll

    def clock(self) -> float:
        return self.now

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        self.calls.append((max_records, timeout_s))
        self.now += timeout_s
        if self.on_poll is not None:
            self.on_poll(len(self.calls))
        return self.queue.pop(0)[:max_records] if self.queue else []


def test_it_stops_once_it_holds_min_records():
    c = SlicedConsumer([[rec(0, 0)], [rec(0, 1), rec(0, 2)], [rec(0, 3)]])
    got = batching.poll(c, 100, 3, 0.015, {0: 1}, c.clock)
    assert [r.offset for r in got] == [0, 1, 2] and len(c.queue) == 1
    assert [room for room, _ in c.calls] == [100, 99]  # asks only for the room left


def test_it_never_waits_past_the_delay():
    c = SlicedConsumer([])
    assert batching.poll(c, 100, 3, 0.015, {0: 1}, c.clock) == []
    assert sum(wait for _, wait in c.calls) <= 0.015 + 1e-9
    assert all(wait <= batching.SLICE_S for _, wait in c.calls)


def test_min_records_at_or_over_the_room_is_one_wait_as_before():
    c = SlicedConsumer([[rec(0, 0)], [rec(0, 1)]])
    assert [r.offset for r in batching.poll(c, 100, 100, 0.015, {0: 1}, c.clock)] == [0]
    assert c.calls == [(100, 0.015)]


def test_records_of_a_partition_moved_between_slices_are_dropped():
    generations = {0: 1, 1: 1}

    def rebalance(call: int) -> None:  # the second poll's callbacks revoke partition 1
        if call == 2:
            generations.pop(1)
            generations[0] = 1

    c = SlicedConsumer([[rec(0, 0), rec(1, 0)], [rec(0, 1)], [rec(0, 2)]], rebalance)
    got = batching.poll(c, 100, 10, 0.015, generations, c.clock)
    assert [(r.partition, r.offset) for r in got] == [(0, 0), (0, 1)]  # and it stopped
    assert len(c.queue) == 1
