"""The pipeline's bookkeeping without a broker: checkpoint order, rebalances, tombstones.

The consumer, producer and reader here are recording fakes of the kafka.py
protocols (unit tests); the same paths run against the real broker in
test_pipeline*.py. The fakes live in tests/pipeline_fakes.py (test_checkpointing.py
and test_recovery.py use them too).
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from pipeline_fakes import TOPIC, FakeConsumer, FakeProducer, FakeReader, record
from pipeline_support import make_model

from streamcell.core.checkpoint import load_checkpoint
from streamcell.core.errors import BrokerUnavailable
from streamcell.core.events import EventBatch
from streamcell.core.predictor import Predictor
from streamcell.service import settings
from streamcell.service.kafka import Member, Record
from streamcell.service.metrics import Metrics
from streamcell.service.ownership import GroupMembers, murmur2_partition
from streamcell.service.pipeline import Pipeline
from streamcell.service.settings import PipelineSettings


@pytest.fixture
def loaded(tmp_path):
    return load_checkpoint(make_model(tmp_path))


def build(
    loaded,
    changelog: list[Record] | None = None,
    max_streams: int = 100,
    loop_clock=None,
    settings: dict | None = None,
    **predictor_args,
):
    log: list = []
    consumer, producer = FakeConsumer(log), FakeProducer(log)
    restored_from = changelog if changelog is not None else []
    fields = {"input_topic": TOPIC, "changelog_topic": "cl", "commit_interval_ms": 10**6}
    pipeline = Pipeline(
        PipelineSettings(**(fields | (settings or {}))),
        consumer,
        producer,
        lambda: FakeReader(restored_from),
        Predictor(loaded, max_streams=max_streams, **predictor_args),
        Metrics(),
        **({} if loop_clock is None else {"clock": loop_clock}),
    )
    pipeline.start()
    assign = consumer.on_assign

    def assign_then_restore(tps) -> None:  # a poll that assigns, then the loop's restore
        assign(tps)
        pipeline.recovery.restore_pending()

    consumer.on_assign = assign_then_restore
    return pipeline, consumer, producer, log


def changelog_records(producer: FakeProducer) -> list[Record]:
    return [
        Record("cl", part, k, key, value, 0, ())
        for k, (topic, key, value, part) in enumerate(producer.sent)
        if topic == "cl"
    ]


def test_checkpoint_flushes_predictions_then_writes_state_then_commits(loaded):
    pipeline, consumer, producer, log = build(loaded)
    consumer.on_assign([(TOPIC, 0), (TOPIC, 1)])
    pipeline.process([record("a", 0), record("b", 1), record("c", 0, partition=1)])
    pipeline.checkpointer.checkpoint()
    outputs = [s for s in producer.sent if s[0] == settings.OUTPUT_TOPIC]
    states = [s for s in producer.sent if s[0] == "cl"]
    assert len(outputs) == 3
    assert sorted((k, p) for _, k, _, p in states) == [(b"a", 0), (b"b", 0), (b"c", 1)]
    # flush(predictions) -> changelog sends -> flush -> commit, in that order
    assert log == [("flush", 3), ("flush", 6), ("commit", {(TOPIC, 0): 2, (TOPIC, 1): 1})]
    pipeline.checkpointer.checkpoint()  # nothing new: no changelog records, no commit
    assert log[-1] == ("flush", 6)


def test_revocation_checkpoints_and_reassignment_keeps_unchanged_partitions(loaded):
    pipeline, consumer, _, log = build(loaded)
    consumer.on_assign([(TOPIC, 0), (TOPIC, 1)])
    pipeline.process([record("a", 0), record("b", 0, partition=1)])
    consumer.on_revoke([(TOPIC, 0), (TOPIC, 1)])
    assert log[-1] == ("commit", {(TOPIC, 0): 1, (TOPIC, 1): 1})
    # Partition 1 moved on elsewhere meanwhile (its committed offset changed).
    consumer.committed_offsets[(TOPIC, 1)] = 5
    consumer.on_assign([(TOPIC, 0), (TOPIC, 1)])
    assert pipeline.predictor.store.stream_ids() == ["a"]  # "b" was dropped...
    # ...and restored from the changelog, which the fake reader replays (empty here).
    pipeline.process([record("a", 0), record("a", 1)])  # offset 0 is a replay
    assert pipeline.predictor.info("a").events == 2


def test_restore_then_replay_skips_what_the_state_reflects(loaded):
    first, consumer, producer, _ = build(loaded)
    consumer.on_assign([(TOPIC, 0)])
    first.process([record("a", k, x=(k, 1.0, 2.0)) for k in range(3)])
    first.checkpointer.checkpoint()
    reference = first.predictor.info("a")

    # A new replica restores from the changelog and sees offsets 1..4 again.
    second, consumer2, producer2, _ = build(loaded, changelog_records(producer))
    consumer2.on_assign([(TOPIC, 0)])
    assert second.predictor.info("a").h.equal(reference.h)
    second.process([record("a", k, x=(k, 1.0, 2.0)) for k in range(1, 5)])
    preds = [json.loads(v)["offset"] for t, _, v, _ in producer2.sent if t.endswith("ions")]
    assert preds == [3, 4]  # 1 and 2 were already applied
    first.process([record("a", k, x=(k, 1.0, 2.0)) for k in range(3, 5)])
    assert second.predictor.info("a").h.equal(first.predictor.info("a").h)


def test_evicted_streams_get_tombstones(loaded):
    pipeline, consumer, producer, _ = build(loaded, max_streams=2)
    consumer.on_assign([(TOPIC, 0)])
    pipeline.process([record(s, k) for k, s in enumerate("abcd")])
    pipeline.checkpointer.checkpoint()
    latest = {r.key: r.value for r in changelog_records(producer)}
    assert sorted(k for k, v in latest.items() if v is not None) == [b"c", b"d"]
    assert sorted(k for k, v in latest.items() if v is None) == [b"a", b"b"]
    assert pipeline.metrics.evicted._value.get() == 2


def test_grpc_writes_reach_the_changelog_and_ownership_is_reported(loaded):
    pipeline, consumer, producer, _ = build(loaded)
    pipeline.ownership.set_partition_count(2)
    consumer.on_assign([(TOPIC, 0)])
    mine = next(s for s in (f"s{k}" for k in range(100)) if murmur2_partition(s.encode(), 2) == 0)
    other = next(s for s in (f"s{k}" for k in range(100)) if murmur2_partition(s.encode(), 2) == 1)
    assert pipeline.ownership.owner_of(mine) is None
    assert "partition 1" in pipeline.ownership.owner_of(other)
    calls = []

    def describe():
        calls.append(1)
        return [Member("m-2", "replica-2", "10.0.0.2", ((TOPIC, 1),))]

    pipeline.ownership.members = GroupMembers(describe)
    assert pipeline.ownership.owner_of(other).endswith("its owner is replica-2 at 10.0.0.2")
    pipeline.ownership.owner_of(other)
    assert len(calls) == 1  # cached
    pipeline.process([record(mine, 0)])
    pipeline.checkpointer.checkpoint()
    pipeline.predictor.delete(mine)  # as DeleteStream does: the Predictor journals it
    pipeline.checkpointer.checkpoint()
    assert changelog_records(producer)[-1].value is None


def test_streams_of_a_revoked_partition_are_not_claimed_while_parked(loaded):
    pipeline, consumer, _, _ = build(loaded)
    pipeline.ownership.set_partition_count(2)
    consumer.on_assign([(TOPIC, 0), (TOPIC, 1)])
    stream = next(s for s in (f"s{k}" for k in range(100)) if murmur2_partition(s.encode(), 2) == 1)
    pipeline.process([record(stream, 0, partition=1)])
    assert pipeline.ownership.owner_of(stream) is None
    consumer.on_revoke([(TOPIC, 1)])  # parked: still in memory, owned elsewhere now
    assert stream in pipeline.predictor.store
    assert "partition 1" in pipeline.ownership.owner_of(stream)
    consumer.on_assign([(TOPIC, 1)])
    assert pipeline.ownership.owner_of(stream) is None


def test_a_stream_created_over_grpc_belongs_to_its_partition_after_a_restore(loaded):
    first, consumer, producer, _ = build(loaded)
    first.ownership.set_partition_count(2)
    consumer.on_assign([(TOPIC, 0), (TOPIC, 1)])
    stream = next(s for s in (f"g{k}" for k in range(100)) if murmur2_partition(s.encode(), 2) == 1)
    first.predictor.predict(EventBatch.of([stream], [[1.0, 2.0, 3.0]]))  # as gRPC Predict does
    first.checkpointer.checkpoint()

    second, consumer2, _, _ = build(loaded, changelog_records(producer))
    second.ownership.set_partition_count(2)
    consumer2.on_assign([(TOPIC, 0), (TOPIC, 1)])
    assert stream in second.predictor.store  # its state has no input partition...
    assert second.ownership.owner_of(stream) is None  # ...yet it is known to live on partition 1
    consumer2.on_revoke([(TOPIC, 0), (TOPIC, 1)])
    consumer2.on_assign([(TOPIC, 0)])  # partition 1 went to another replica
    assert stream not in second.predictor.store


# Utils.murmur2 of Kafka's Java client on these keys (its UtilsTest.testMurmur2).
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize("partitions", [1, 2, 3, 7, 12, 64])
def test_murmur2_partition_matches_the_java_default_partitioner(partitions):
    for key, java in JAVA_MURMUR2.items():  # Java: toPositive(murmur2(key)) % n
        assert murmur2_partition(key, partitions) == (java & 0x7FFFFFFF) % partitions


def test_a_batch_with_more_streams_than_capacity_is_applied_in_order(loaded):
    pipeline, consumer, producer, _ = build(loaded, max_streams=3)
    consumer.on_assign([(TOPIC, 0)])
    rows = [record(f"s{k % 5}", k) for k in range(20)]
    pipeline.process(rows)
    preds = [json.loads(v)["offset"] for t, _, v, _ in producer.sent if t.endswith("ions")]
    assert preds == list(range(20))
    assert len(pipeline.predictor.store) == 3
    assert np.isfinite([json.loads(v)["yhat"] for t, _, v, _ in producer.sent]).all()


def stamped(stream: str, offset: int, seconds: float) -> Record:
    """An input record whose Kafka timestamp, its event time, is ``seconds``."""
    value = json.dumps({"x": [1.0, 2.0, 3.0]}).encode()
    return Record(TOPIC, 0, offset, stream.encode(), value, int(seconds * 1000), ())


def expire_due(pipeline: Pipeline) -> None:
    pipeline.checkpointer.next_at = 0  # the commit timer is due: expiry, then a checkpoint
    pipeline.step()


def test_expired_streams_get_tombstones_at_the_next_checkpoint(loaded):
    clock = [2000.0]  # the wall clock, far past every event: it must not matter
    pipeline, consumer, producer, _ = build(loaded, ttl_seconds=60, clock=lambda: clock[0])
    consumer.on_assign([(TOPIC, 0)])
    pipeline.process([stamped("old", 0, 1000.0), stamped("new", 1, 1030.0)])
    expire_due(pipeline)
    assert pipeline.predictor.store.stream_ids() == ["old", "new"], "idle only in wall time"
    pipeline.process([stamped("new", 2, 1075.0)])  # event time: "old" idle 75 s, "new" 0 s
    expire_due(pipeline)
    latest = {r.key: r.value for r in changelog_records(producer)}
    assert latest[b"old"] is None and latest[b"new"] is not None
    assert pipeline.predictor.store.stream_ids() == ["new"]
    assert pipeline.metrics.expired._value.get() == 1


def test_a_restart_after_downtime_longer_than_the_ttl_expires_no_restored_stream(loaded):
    first, consumer, producer, _ = build(loaded, ttl_seconds=60, clock=lambda: 1010.0)
    consumer.on_assign([(TOPIC, 0)])
    first.process([stamped("a", 0, 1000.0), stamped("b", 1, 1010.0)])
    first.checkpointer.checkpoint()
    # Back a day later, the backlog still unread: nothing is idle in event time.
    day_later = 1010.0 + 86_400
    second, consumer2, producer2, _ = build(
        loaded, changelog_records(producer), ttl_seconds=60, clock=lambda: day_later
    )
    consumer2.on_assign([(TOPIC, 0)])
    assert sorted(second.predictor.store.stream_ids()) == ["a", "b"]
    expire_due(second)
    assert sorted(second.predictor.store.stream_ids()) == ["a", "b"]
    second.process([stamped("b", 2, 1065.0)])  # the backlog: "a" idle 65 s, "b" 0 s
    expire_due(second)
    assert second.predictor.store.stream_ids() == ["b"]
    assert {r.key: r.value for r in changelog_records(producer2)}[b"a"] is None


def test_an_unexpected_error_commits_nothing_more(loaded, monkeypatch):
    pipeline, consumer, _, log = build(loaded)
    consumer.on_assign([(TOPIC, 0)])
    pipeline.process([record("a", 0)])
    pipeline.checkpointer.checkpoint()
    consumer.queue.append([record("a", 1)])

    def broken(batch, now=None, validated=False):
        raise RuntimeError("boom")

    monkeypatch.setattr(pipeline.predictor, "predict", broken)
    pipeline.start = lambda: None  # already subscribed
    with pytest.raises(RuntimeError, match="boom"):
        pipeline.run(threading.Event())
    assert [e for e in log if e[0] == "commit"] == [("commit", {(TOPIC, 0): 1})]
    assert log[-2:] == [("consumer.close",), ("producer.close",)]


def test_graceful_stop_checkpoints_once_and_leaves(loaded):
    pipeline, consumer, _, log = build(loaded)
    consumer.on_assign([(TOPIC, 0)])
    consumer.queue.append([record("a", 0), record("b", 1)])
    stop = threading.Event()
    pipeline.start = lambda: None
    original = pipeline.step

    def step_then_stop():
        n = original()
        stop.set()
        return n

    pipeline.step = step_then_stop
    pipeline.run(stop)
    commits = [e for e in log if e[0] == "commit"]
    assert commits == [("commit", {(TOPIC, 0): 2})]
    assert log[-2:] == [("consumer.close",), ("producer.close",)]


def test_writes_acknowledged_before_close_are_in_the_final_checkpoint(loaded):
    pipeline, consumer, producer, log = build(loaded)
    consumer.on_assign([(TOPIC, 0)])
    pipeline.process([record("a", 0)])
    pipeline.checkpointer.checkpoint()
    stop = threading.Event()
    stop.set()
    pipeline.start = lambda: None

    def grpc_drain():  # as App's gRPC stop: a DeleteStream finishing during the drain
        pipeline.predictor.delete("a")
        log.append(("drained",))

    pipeline.run(stop, before_close=grpc_drain)
    assert changelog_records(producer)[-1][3:5] == (b"a", None)  # the tombstone
    assert log.index(("drained",)) < log.index(("consumer.close",))


def test_periodic_checkpoint_commits_only_what_the_broker_acknowledged(loaded):
    pipeline, consumer, producer, log = build(loaded)
    consumer.on_assign([(TOPIC, 0), (TOPIC, 1)])
    producer.acked = 0  # nothing acknowledged yet
    consumer.queue.append([record("a", 0), record("b", 1), record("c", 0, partition=1)])
    pipeline.checkpointer.next_at = 0  # the commit timer is due
    pipeline.step()
    assert log == [("mark", 3)]  # the predictions' mark; no flush, nothing committed
    consumer.queue.append([record("a", 2)])
    pipeline.step()
    # The snapshots wait for the predictions before them: a changelog record must not
    # reflect an event whose prediction a crash could still lose.
    assert not [s for s in producer.sent if s[0] == "cl"]
    producer.acked = 2
    pipeline.step()
    assert not [s for s in producer.sent if s[0] == "cl"]
    producer.acked = 3
    pipeline.step()
    # Snapshotted only now, after "a"@2's prediction (the 4th record): they wait for it too.
    assert not [s for s in producer.sent if s[0] == "cl"]
    producer.acked = 4
    pipeline.step()
    states = [s for s in producer.sent if s[0] == "cl"]
    assert sorted((k, p) for _, k, _, p in states) == [(b"a", 0), (b"b", 0), (b"c", 1)]
    assert [json.loads(v)["offset"] for t, _, v, _ in producer.sent if t.endswith("ions")] == [
        0,
        1,
        0,
        2,
    ]
    # Taken after the checkpoint began, "a" reflects offset 2, past the offset committed
    # below (a restore's replay skips it); never an event whose prediction is unacknowledged.
    _, offsets = pipeline.predictor.store.positions([v for _, k, v, _ in states if k == b"a"])
    assert offsets.tolist() == [2]
    changelog_mark = len(producer.sent)
    assert log[-1] == ("mark", changelog_mark)
    producer.acked = changelog_mark - 1  # all but the last changelog record
    pipeline.step()
    assert not [e for e in log if e[0] in ("commit", "flush")]
    producer.acked = changelog_mark
    pipeline.step()
    assert log[-1] == ("commit", {(TOPIC, 0): 2, (TOPIC, 1): 1})  # not offset 2's 3

    # Two checkpoints pending, acknowledged at once: the newest offsets are committed.
    producer.acked = None
    consumer.queue.append([record("b", 3)])
    pipeline.checkpointer.next_at = 0
    producer.acked = len(producer.sent)
    pipeline.step()
    consumer.queue.append([record("c", 1, partition=1)])
    pipeline.checkpointer.next_at = 0
    pipeline.step()
    assert len([e for e in log if e[0] == "commit"]) == 1
    producer.acked = None
    pipeline.step()
    pipeline.step()
    commits = [e for e in log if e[0] == "commit"]
    assert commits[-1] == ("commit", {(TOPIC, 0): 4, (TOPIC, 1): 2})
    assert len(commits) == 2
    latest = {r.key.decode(): r.value for r in changelog_records(producer)}
    restored = Predictor(pipeline.predictor.loaded, max_streams=10)
    restored.store.restore(latest.items())  # the last snapshot of each: the state now
    for stream in ("a", "b", "c"):
        assert restored.info(stream).h.equal(pipeline.predictor.info(stream).h)


def checkpoint_pending(loaded, clock=None):
    """Event "a" at offset 0 processed, a periodic checkpoint taken, nothing acknowledged."""
    pipeline, consumer, producer, log = build(loaded, loop_clock=clock)
    consumer.on_assign([(TOPIC, 0)])
    producer.acked = 0
    consumer.queue.append([record("a", 0)])
    pipeline.checkpointer.next_at = 0
    pipeline.step()
    return pipeline, consumer, producer, log


def test_a_failed_or_late_acknowledgement_stops_the_loop_before_any_commit(loaded):
    clock = [1000.0]
    pipeline, _, _, _ = checkpoint_pending(loaded, clock=lambda: clock[0])
    clock[0] += pipeline.settings.ack_timeout_s + 1
    with pytest.raises(BrokerUnavailable, match="not acknowledged"):
        pipeline.step()

    pipeline, _, producer, log = checkpoint_pending(loaded)
    producer.failure = BrokerUnavailable("a record was not delivered")
    producer.acked = None
    with pytest.raises(BrokerUnavailable, match="not delivered"):
        pipeline.step()
    assert not [e for e in log if e[0] == "commit"]


def test_revocation_with_a_checkpoint_pending_flushes_and_commits_the_latest(loaded):
    pipeline, consumer, _, log = checkpoint_pending(loaded)
    pipeline.process([record("a", 1), record("b", 2)])
    consumer.on_revoke([(TOPIC, 0)])
    assert [e for e in log if e[0] == "commit"] == [("commit", {(TOPIC, 0): 3})]
    assert log[-2][0] == "flush"  # committed after a flush, not on the pending mark
    pipeline.step()  # the old mark is gone: nothing committed for a revoked partition
    assert log[-1] == ("commit", {(TOPIC, 0): 3})


def build_paced(loaded, **settings):
    """A pipeline on a hand-moved clock, 1 s checkpoints, changelog paced by the clock alone.

    No checkpoint when the input goes quiet (``idle_commit_ms=0``), unless a test asks.
    """
    clock = [1000.0]
    fields = {"commit_interval_ms": 1000, "changelog_send_budget_ms": 0.0, "idle_commit_ms": 0}
    pipeline, consumer, producer, log = build(
        loaded, max_streams=1000, loop_clock=lambda: clock[0], settings=fields | settings
    )
    return pipeline, consumer, producer, log, clock


def test_a_large_changelog_is_sent_over_several_steps_then_committed(loaded):
    """10^4 snapshots at once stalled the loop ~30 ms; they are taken and sent over half the
    interval, a share per step."""
    pipeline, consumer, producer, log, clock = build_paced(loaded)
    consumer.on_assign([(TOPIC, 0), (TOPIC, 1)])
    store, taken = pipeline.predictor.store, []
    snapshot_block = store.snapshot_block
    store.snapshot_block = lambda streams: taken.append(len(streams)) or snapshot_block(streams)
    streams = [f"s{k}" for k in range(600)]
    consumer.queue.append([record(s, k, partition=k % 2) for k, s in enumerate(streams)])
    pipeline.checkpointer.next_at = 0
    pipeline.step()  # predictions acknowledged at once; the pace has not begun yet

    def changelog_sent():
        return [s for s in producer.sent if s[0] == "cl"]

    assert changelog_sent() == []
    clock[0] += 0.25  # half of the pace (0.5 x 1 s): at least half of the records
    consumer.queue.append([record("busy", 1000)])  # events keep coming: the pace holds
    pipeline.step()
    first = len(changelog_sent())
    assert 300 <= first < 600
    assert not [e for e in log if e[0] == "commit"]
    clock[0] += 0.25
    consumer.queue.append([record("busy", 1001)])
    pipeline.step()  # all sent, the changelog's mark taken
    pipeline.step()  # ...and acknowledged: committed
    sent = changelog_sent()
    assert sorted(k.decode() for _, k, _, _ in sent) == sorted(streams)  # not "busy" yet
    assert all(part == int(key[1:]) % 2 for _, key, _, part in sent)  # its input partition
    assert [e for e in log if e[0] == "commit"] == [("commit", {(TOPIC, 0): 599, (TOPIC, 1): 600})]
    assert taken == [300, 300], "each step snapshots its share of the streams, no more"
    restored = Predictor(pipeline.predictor.loaded, max_streams=1000)
    restored.store.restore((k.decode(), v) for _, k, v, _ in sent)
    for stream in ("s0", "s301", "s599"):
        assert restored.info(stream).h.equal(pipeline.predictor.info(stream).h)


def test_a_checkpoint_behind_its_pace_is_sent_at_once_when_the_next_one_is_due(loaded):
    pipeline, consumer, producer, log, clock = build_paced(loaded)
    consumer.on_assign([(TOPIC, 0)])
    consumer.queue.append([record(f"s{k}", k) for k in range(400)])
    pipeline.checkpointer.next_at = 0
    pipeline.step()
    assert not [s for s in producer.sent if s[0] == "cl"]
    consumer.queue.append([record("s0", 400)])
    pipeline.checkpointer.next_at = 0  # the next checkpoint, before the pace let any out
    pipeline.step()
    keys = [k for t, k, _, _ in producer.sent if t == "cl"]
    assert len(keys) == 400  # the first checkpoint's records, all of them, in one step
    clock[0] += 0.5  # the second checkpoint at its own pace
    pipeline.step()
    pipeline.step()
    keys = [k for t, k, _, _ in producer.sent if t == "cl"]
    assert keys[400:] == [b"s0"]  # then the second's, after it
    assert log[-1] == ("commit", {(TOPIC, 0): 401})


def test_an_idle_loop_sends_a_pending_changelog_at_once(loaded):
    """Nothing waits behind it, and the last commit of a burst comes sooner."""
    pipeline, consumer, producer, log, _ = build_paced(loaded)
    consumer.on_assign([(TOPIC, 0)])
    consumer.queue.append([record(f"s{k}", k) for k in range(500)])
    pipeline.checkpointer.next_at = 0
    pipeline.step()  # the checkpoint, right after its batch: nothing sent yet
    assert not [s for s in producer.sent if s[0] == "cl"]
    pipeline.step()  # an empty poll
    assert len([s for s in producer.sent if s[0] == "cl"]) == 500
    pipeline.step()
    assert log[-1] == ("commit", {(TOPIC, 0): 500})


@pytest.mark.parametrize("idle_commit_ms", [100, 0])
def test_a_quiet_input_is_committed_without_waiting_for_the_interval(loaded, idle_commit_ms):
    pipeline, consumer, producer, log, clock = build_paced(
        loaded, commit_interval_ms=10_000, idle_commit_ms=idle_commit_ms
    )
    consumer.on_assign([(TOPIC, 0)])
    pipeline.checkpointer.last_at, pipeline.checkpointer.next_at = clock[0], clock[0] + 10

    def commits():
        return [e[1] for e in log if e[0] == "commit"]

    consumer.queue.append([record("a", 0), record("b", 1)])
    pipeline.step()  # events: no checkpoint
    clock[0] += 0.05
    pipeline.step()  # quiet, but 50 ms after the last checkpoint
    assert commits() == []
    clock[0] += 0.06
    pipeline.step()  # quiet for long enough: checkpoint and commit now, not in 10 s
    assert commits() == ([{(TOPIC, 0): 2}] if idle_commit_ms else [])
    assert len([s for s in producer.sent if s[0] == "cl"]) == (2 if idle_commit_ms else 0)
    clock[0] += 1.0
    pipeline.step()  # still quiet, nothing new: no checkpoint
    assert len(commits()) == (1 if idle_commit_ms else 0)


def test_an_event_that_overflows_the_model_is_dead_lettered_and_the_rest_predicted(tmp_path):
    import torch

    from streamcell.core.checkpoint import ModelConfig, save_checkpoint
    from streamcell.core.model import StreamingLSTM

    torch.manual_seed(0)
    feats = ("a", "b", "c")
    # Input stds below 1: x = (3e38, -3e38, 3e38), finite, normalises to infinities.
    cfg = ModelConfig(3, 8, 1, 3, feats, feats, (0.0,) * 3, (0.5,) * 3, (0.0,) * 3, (1.0,) * 3)
    small = load_checkpoint(save_checkpoint(tmp_path, "m", StreamingLSTM(3, 8, 1, 3), cfg))
    pipeline, consumer, producer, _ = build(small)
    consumer.on_assign([(TOPIC, 0)])
    pipeline.process([record("z", 0)])
    before = pipeline.predictor.store.snapshot(["z"])
    kept: list = []
    send = producer.send

    def send_keeping_headers(topic, key, value, headers=None, partition=None):
        kept.append((topic, dict(headers or ())))
        send(topic, key, value, partition=partition)

    producer.send = send_keeping_headers  # type: ignore[method-assign]
    pipeline.process([record("a", 1), record("z", 2, x=(3e38, -3e38, 3e38)), record("b", 3)])
    dead = [(t, h) for t, h in kept if t == settings.DEAD_LETTER_TOPIC]
    assert len(dead) == 1
    assert dead[0][1]["reason"] == b"non_finite_state"
    assert b"'z'" in dead[0][1]["error"] and dead[0][1]["source_offset"] == b"2"
    outputs = [
        json.loads(v)["stream"] for t, _, v, _ in producer.sent if t == settings.OUTPUT_TOPIC
    ]
    assert outputs == ["z", "a", "b"]  # z's first event, then the two good ones
    assert pipeline.predictor.store.snapshot(["z"]) == before  # same event time: exact
    assert pipeline.metrics.dead_letters.labels("non_finite_state")._value.get() == 1
    info = pipeline.predictor.info("z")
    assert info.events == 1 and info.offset == 0
    assert np.isfinite(info.h.numpy()).all() and np.isfinite(info.c.numpy()).all()


def test_with_min_batch_a_busy_step_polls_until_it_holds_that_many(loaded):
    pipeline, consumer, producer, _ = build(loaded, settings={"min_batch": 3})
    consumer.on_assign([(TOPIC, 0)])
    pipeline.recovery.restore_pending()
    consumer.queue += [[record("a", 0)], [record("b", 1), record("c", 2)], [record("d", 3)]]
    assert pipeline.step() == 3  # three records from two polls, in one micro-batch
    assert len(consumer.queue) == 1
    assert [k for t, k, _, _ in producer.sent if t.endswith("ions")] == [b"a", b"b", b"c"]
