"""A full poll's repeated streams carried to the next poll: order, commits, rebalances.

Unit tests over the recording fakes (tests/pipeline_fakes.py): the carried
records are processed in the next step, in order per stream, with the same
bytes as without a carry, and no commit passes a record not yet processed.
"""

from __future__ import annotations

import json

import pytest
from pipeline_fakes import TOPIC, FakeConsumer, FakeProducer, FakeReader, record
from pipeline_support import make_model

from streamcell.core.checkpoint import load_checkpoint
from streamcell.core.predictor import Predictor
from streamcell.service.metrics import Metrics
from streamcell.service.pipeline import Pipeline
from streamcell.service.settings import PipelineSettings


@pytest.fixture
def loaded(tmp_path):
    return load_checkpoint(make_model(tmp_path))


def build(loaded, max_batch: int):
    log: list = []
    consumer, producer = FakeConsumer(log), FakeProducer(log)
    pipeline = Pipeline(
        PipelineSettings(
            input_topic=TOPIC,
            changelog_topic="cl",
            commit_interval_ms=10**6,
            max_batch=max_batch,
        ),
        consumer,
        producer,
        lambda: FakeReader([]),
        Predictor(loaded, max_streams=100),
        Metrics(),
    )
    pipeline.start()
    consumer.on_assign([(TOPIC, 0), (TOPIC, 1)])
    pipeline.recovery.restore_pending()
    return pipeline, consumer, producer, log


def predictions(producer: FakeProducer) -> list[tuple[str, int, int, bytes]]:
    out = []
    for topic, _, value, _ in producer.sent:
        if topic != "cl":
            doc = json.loads(value)
            out.append((doc["stream"], doc["partition"], doc["offset"], value))
    return out


def polls() -> list[list]:
    x = [(0.5, -1.0, 2.0), (1.5, 0.0, -2.0), (0.25, 3.0, 1.0)]
    return [
        [record("a", 0, x=x[0]), record("a", 1, x=x[1]), record("b", 2, x=x[2]),
         record("c", 0, partition=1), record("a", 3, x=x[2]), record("e", 4), record("f", 5),
         record("g", 6)],
        [record("a", 4, x=x[0]), record("d", 1, partition=1)],
        [],
    ]  # fmt: skip


def test_a_full_polls_repeated_streams_go_next_in_order_with_the_same_bytes(loaded):
    pipeline, consumer, producer, _ = build(loaded, max_batch=8)
    consumer.queue = polls()
    pipeline.step()
    first = [("a", 0), ("b", 2), ("c", 0), ("e", 4), ("f", 5), ("g", 6)]
    assert [(s, o) for s, _, o, _ in predictions(producer)] == first
    assert pipeline.checkpointer.positions == {0: 1, 1: 1}, "no commit may pass a carried record"
    for _ in range(3):
        pipeline.step()
    pipeline.checkpointer.checkpoint()
    got = predictions(producer)
    assert [o for s, _, o, _ in got if s == "a"] == [0, 1, 3, 4], "one stream's events in order"
    assert consumer.committed_offsets == {(TOPIC, 0): 7, (TOPIC, 1): 2}

    # The same events in one unbounded poll each: every prediction's bytes equal.
    plain, plain_consumer, plain_producer, _ = build(loaded, max_batch=1024)
    plain_consumer.queue = polls()
    for _ in range(3):
        plain.step()
    assert sorted(got) == sorted(predictions(plain_producer))


def test_a_poll_that_is_not_full_carries_nothing(loaded):
    pipeline, consumer, producer, _ = build(loaded, max_batch=9)
    consumer.queue = polls()[:1]
    pipeline.step()
    assert len(predictions(producer)) == 8
    assert len(pipeline.carry) == 0
    assert pipeline.checkpointer.positions == {0: 7, 1: 1}


def test_a_burst_of_one_stream_is_not_carried(loaded):
    pipeline, consumer, producer, _ = build(loaded, max_batch=8)
    consumer.queue = [[record("a", k) for k in range(8)]]
    pipeline.step()
    assert [o for _, _, o, _ in predictions(producer)] == list(range(8))
    assert len(pipeline.carry) == 0


def test_a_revoked_partition_drops_its_carried_records_uncommitted(loaded):
    pipeline, consumer, producer, _ = build(loaded, max_batch=8)
    consumer.queue = polls()[:1]
    pipeline.step()
    assert len(pipeline.carry) == 2
    consumer.on_revoke([(TOPIC, 0)])  # inside the next poll, as the clients call it
    assert consumer.committed_offsets[(TOPIC, 0)] == 1, "the commit stops at the carried record"
    pipeline.step()
    assert [(s, o) for s, _, o, _ in predictions(producer)][:3] == [("a", 0), ("b", 2), ("c", 0)]
    assert all(s != "a" or o == 0 for s, _, o, _ in predictions(producer))
    assert len(pipeline.carry) == 0


def test_a_graceful_stop_processes_the_carried_records_first(loaded):
    pipeline, consumer, producer, _ = build(loaded, max_batch=8)
    consumer.queue = polls()[:1]
    pipeline.step()
    pipeline.close()
    assert [o for s, _, o, _ in predictions(producer) if s == "a"] == [0, 1, 3]
    assert consumer.committed_offsets == {(TOPIC, 0): 7, (TOPIC, 1): 1}
