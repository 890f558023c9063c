"""The Predictor's change journal, capacity split and restore: what a checkpoint writes."""

from __future__ import annotations

import numpy as np
import pytest
from test_predictor import save

from streamcell.core.errors import InvalidEvent
from streamcell.core.events import EventBatch
from streamcell.core.predictor import PREDICTED, Predictor

X = [1.0, 2.0, 3.0]


def kafka(streams: list[str], partitions: list[int], offsets: list[int]) -> EventBatch:
    return EventBatch.of(streams, [X] * len(streams), partition=partitions, offset=offsets)


def grpc(streams: list[str]) -> EventBatch:
    return EventBatch.of(streams, [X] * len(streams))


@pytest.fixture
def loaded(tmp_path):
    return save(tmp_path)


def tracked(loaded, place=lambda stream, known: 7 if known is None else known, **kwargs):
    predictor = Predictor(loaded, **kwargs)
    predictor.track_changes(place)
    return predictor


def test_nothing_is_journaled_until_changes_are_tracked(loaded):
    predictor = Predictor(loaded)
    predictor.predict(kafka(["a"], [0], [0]))
    assert not predictor.has_changes() and predictor.take_changes() == {}


def test_kafka_events_are_journaled_with_their_partition_the_last_one_winning(loaded):
    predictor = tracked(loaded)
    predictor.predict(kafka(["a", "b", "a"], [0, 1, 2], [0, 0, 0]))
    assert predictor.take_changes() == {"a": 2, "b": 1}
    assert predictor.take_changes() == {}  # drained
    assert predictor.partition_of("a") == 2


def test_skipped_events_change_nothing_and_are_not_journaled(loaded):
    predictor = tracked(loaded)
    predictor.predict(kafka(["a"], [0], [5]))
    predictor.take_changes()
    result = predictor.predict(kafka(["a"], [0], [5]))  # a replay
    assert result.touched == [] and predictor.take_changes() == {}


def test_grpc_changes_are_placed_known_partition_first(loaded):
    calls = []

    def place(stream, known):
        calls.append((stream, known))
        return None if stream == "elsewhere" else (3 if known is None else known)

    predictor = tracked(loaded, place)
    predictor.predict(kafka(["k"], [1], [0]))
    predictor.take_changes()
    predictor.predict(grpc(["k", "new", "elsewhere"]))
    assert predictor.take_changes() == {"k": 1, "new": 3}  # "elsewhere" is not ours
    assert calls == [("k", 1), ("new", None), ("elsewhere", None)]


def test_reset_delete_evict_and_expire_are_journaled(loaded):
    clock = [100.0]
    predictor = tracked(loaded, max_streams=2, ttl_seconds=10, clock=lambda: clock[0])
    predictor.predict(kafka(["a", "b"], [0, 1], [0, 0]))
    predictor.take_changes()
    predictor.reset("a")
    predictor.delete("b")
    assert predictor.take_changes() == {"a": 0, "b": 1}
    assert "a" in predictor.store and "b" not in predictor.store  # snapshot; tombstone

    result = predictor.predict(kafka(["c", "d"], [1, 1], [1, 2]))  # evicts "a"
    assert result.evicted == ["a"]
    assert predictor.take_changes() == {"a": 0, "c": 1, "d": 1}
    clock[0] += 11
    assert predictor.expire() == []  # no event moved the watermark: nobody is idle
    assert sorted(predictor.expire(now=clock[0])) == ["c", "d"]
    assert predictor.take_changes() == {"c": 1, "d": 1}
    assert predictor.partition_of("c") is None


def test_an_incompatible_swap_journals_every_stream_as_removed(tmp_path, loaded):
    predictor = tracked(loaded)
    predictor.predict(kafka(["a", "b"], [0, 1], [0, 0]))
    predictor.take_changes()
    assert predictor.swap(save(tmp_path / "same", seed=1, version="v2")) is True
    assert predictor.take_changes() == {}
    assert predictor.swap(save(tmp_path / "other", hidden=8, version="v3")) is False
    assert predictor.take_changes() == {"a": 0, "b": 1}
    assert len(predictor.store) == 0


def test_a_batch_over_capacity_is_applied_in_parts_in_order(loaded):
    split = tracked(loaded, max_streams=3)
    streams = [f"s{k % 5}" for k in range(20)]
    result = split.predict(kafka(streams, [0] * 20, list(range(20))))
    assert (result.outcome == PREDICTED).all()
    assert len(split.store) == 3
    # Each stream's events in order: the same as feeding the batch a part at a time.
    reference = Predictor(loaded, max_streams=3)
    parts = [reference.predict(kafka(streams[k : k + 3], [0] * 3, list(range(k, k + 3))))
             for k in range(0, 18, 3)]  # fmt: skip
    parts.append(reference.predict(kafka(streams[18:], [0, 0], [18, 19])))
    assert result.yhat.tobytes() == np.concatenate([p.yhat for p in parts]).tobytes()
    # Streams evicted by a later part get tombstones; the rest are journaled as changed.
    changes = split.take_changes()
    assert set(changes) == set(streams) and len(result.evicted) > 0


def test_validation_happens_once_and_can_be_skipped_by_a_caller_that_did_it(loaded):
    predictor = Predictor(loaded)
    bad = EventBatch.of(["a"], [[1.0, float("nan"), 3.0]])
    with pytest.raises(InvalidEvent):
        predictor.predict(bad)
    assert predictor.validate(grpc(["a"])) == []
    predictor.predict(grpc(["a"]), validated=True)
    assert "a" in predictor.store


def test_restore_records_partitions_and_drop_partitions_forgets_without_tombstones(loaded):
    source = tracked(loaded)
    source.predict(kafka(["a", "b", "c"], [0, 1, 1], [0, 0, 1]))
    items = list(zip(["a", "b", "c"], source.store.snapshot(["a", "b", "c"]), strict=True))
    target = tracked(loaded)
    done = target.restore(items, {"a": 0, "b": 1, "c": 1})
    assert done.streams == ["a", "b", "c"] and done.skipped == [] and done.left_out == 0
    assert not target.has_changes()  # restored state is already in the changelog
    assert target.info("b").h.equal(source.info("b").h)
    target.predict(grpc(["b"]))  # stays journaled until dropped
    assert sorted(target.drop_partitions({1})) == ["b", "c"]
    assert target.store.stream_ids() == ["a"] and target.take_changes() == {}


def test_restore_keeps_the_most_recent_that_fit_and_skips_foreign_records(tmp_path, loaded):
    source = Predictor(loaded)
    source.predict(grpc(["a", "b", "c"]))
    other = Predictor(save(tmp_path / "other", hidden=8))
    other.predict(grpc(["x"]))
    items = list(zip(["a", "b", "c"], source.store.snapshot(["a", "b", "c"]), strict=True))
    items.insert(2, ("x", other.store.snapshot(["x"])[0]))
    target = tracked(loaded, max_streams=3)
    done = target.restore(items, dict.fromkeys(["a", "b", "c", "x"], 0))
    assert done.left_out == 1  # "a", the oldest written
    assert done.streams == ["b", "c"] and [s for s, _ in done.skipped] == ["x"]
    assert "hidden=8" in done.skipped[0][1]
