"""The state changelog against the real broker: write, tombstone, restore, foreign records."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pipeline_support import write_changelog

from streamcell.core.events import EventBatch
from streamcell.core.state import StateStore
from streamcell.service import changelog
from streamcell.service.kafka import TopicSpec, open_admin, open_producer, open_reader

pytestmark = pytest.mark.kafka


def store_with(streams: dict[str, int], hidden: int = 4) -> StateStore:
    """A store whose streams carry distinct state and the given input partitions."""
    store = StateStore(2, hidden, 3, 3)
    slots = store.slots(list(streams), now=1.0)
    for k, (slot, part) in enumerate(zip(slots, streams.values(), strict=True)):
        store.h[:, slot] = k + 1.0
        store.c[:, slot] = -(k + 1.0)
        store.events[slot] = 10 + k
        store.partition[slot] = part
        store.offset[slot] = 100 + k
    return store


@pytest.fixture
def topic(kafka_config, unique_name) -> str:
    name = unique_name("changelog")
    admin = open_admin(kafka_config)
    try:
        admin.ensure_topics([TopicSpec(name, 2, compacted=True)])
    finally:
        admin.close()
    return name


def test_write_then_restore_partition_by_partition(kafka_config, topic):
    src = store_with({"a": 0, "b": 1, "c": 0, "gone": 1})
    src.delete("gone")
    producer = open_producer(kafka_config)
    try:
        written = write_changelog(producer, topic, src, {"a": 0, "b": 1, "c": 0, "gone": 1})
        producer.flush()
        # A later snapshot of "a" supersedes the first.
        src.h[:, src.slot_of("a")] = 42.0
        write_changelog(producer, topic, src, {"a": 0})
        producer.flush()
    finally:
        producer.close()
    assert written == (3, 1)

    def reader():
        return open_reader(kafka_config)

    part0 = StateStore(2, 4, 3, 3)
    done = changelog.restore(reader, topic, [0], part0, timeout_s=30)
    assert sorted(done.streams) == ["a", "c"] and done.skipped == 0
    assert sorted(part0.stream_ids()) == ["a", "c"]
    assert torch.all(part0.info("a").h == 42.0)  # the last record of a key wins
    assert torch.equal(part0.info("c").h, src.info("c").h)
    assert part0.info("c").offset == src.info("c").offset

    part1 = StateStore(2, 4, 3, 3)
    done = changelog.restore(reader, topic, [1], part1, timeout_s=30)
    assert done.streams == ["b"] and done.tombstones == 1  # "gone" stays gone
    assert part1.info("b").events == src.info("b").events


def test_records_of_another_architecture_are_skipped(kafka_config, topic):
    old = store_with({"old": 0}, hidden=4)
    new = store_with({"new": 0}, hidden=8)
    producer = open_producer(kafka_config)
    try:
        write_changelog(producer, topic, old, {"old": 0})
        write_changelog(producer, topic, new, {"new": 0})
        producer.flush()
    finally:
        producer.close()
    target = StateStore(2, 8, 3, 3)
    done = changelog.restore(lambda: open_reader(kafka_config), topic, [0], target, 30)
    assert done.streams == ["new"] and done.skipped == 1
    assert target.stream_ids() == ["new"]


def test_restore_respects_the_store_capacity(kafka_config, topic):
    src = store_with({f"s{k}": 0 for k in range(6)})
    producer = open_producer(kafka_config)
    try:
        write_changelog(producer, topic, src, {f"s{k}": 0 for k in range(6)})
        producer.flush()
    finally:
        producer.close()
    small = StateStore(2, 4, 3, 3, initial_capacity=2, max_streams=4)
    done = changelog.restore(lambda: open_reader(kafka_config), topic, [0], small, 30)
    assert len(small) == 4 and small.evicted == 0
    assert sorted(done.streams) == ["s2", "s3", "s4", "s5"]  # the most recently written


def test_restored_state_continues_exactly(registry_with_model, kafka_config, topic):
    """Steps after a restore equal steps on the original store (byte for byte)."""
    from streamcell.core.checkpoint import load_latest
    from streamcell.core.predictor import Predictor

    loaded = load_latest(registry_with_model.path, registry_with_model.name)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(10, 3)).astype(np.float32)
    first = Predictor(loaded)
    first.predict(EventBatch.of(["a"] * 5, x[:5], partition=[0] * 5, offset=range(5)))
    producer = open_producer(kafka_config)
    try:
        write_changelog(producer, topic, first.store, {"a": 0})
        producer.flush()
    finally:
        producer.close()
    second = Predictor(loaded)
    changelog.restore(lambda: open_reader(kafka_config), topic, [0], second.store, 30)
    rest = EventBatch.of(["a"] * 5, x[5:], partition=[0] * 5, offset=range(5, 10))
    replay = EventBatch.of(["a"] * 2, x[3:5], partition=[0] * 2, offset=[3, 4])
    assert (second.predict(replay).outcome == 2).all()  # already reflected: skipped
    assert second.predict(rest).yhat.tobytes() == first.predict(rest).yhat.tobytes()
