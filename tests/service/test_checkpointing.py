"""The Checkpointer alone, over recording fakes: the order, the marks, the timers."""

from __future__ import annotations

import pytest
from pipeline_fakes import TOPIC, FakeConsumer, FakeProducer
from pipeline_support import make_model

from streamcell.core.checkpoint import load_checkpoint
from streamcell.core.errors import BrokerUnavailable
from streamcell.core.events import EventBatch
from streamcell.core.predictor import Predictor
from streamcell.service.checkpointing import Checkpointer
from streamcell.service.kafka import CommitFailed
from streamcell.service.metrics import Metrics
from streamcell.service.settings import PipelineSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Setup:
    def __init__(self, tmp_path, **settings) -> None:
        self.log: list = []
        self.consumer, self.producer = FakeConsumer(self.log), FakeProducer(self.log)
        self.predictor = Predictor(load_checkpoint(make_model(tmp_path)))
        self.predictor.track_changes(lambda stream, known: known)
        self.clock = Clock()
        fields = {"input_topic": TOPIC, "changelog_topic": "cl", "commit_interval_ms": 1000}
        self.assigned = {0, 1}
        self.cp = Checkpointer(
            PipelineSettings(**(fields | settings)),
            self.consumer,
            self.producer,
            self.predictor,
            Metrics(),
            self.assigned,
            self.clock,
        )
        self.cp.start()

    def process(self, streams: list[str], partition: int, first_offset: int) -> None:
        """As the loop: step the events, send their predictions, note the offsets."""
        offsets = list(range(first_offset, first_offset + len(streams)))
        batch = EventBatch.of(
            streams, [[1.0, 2.0, 3.0]] * len(streams), partition=[partition] * len(streams),
            offset=offsets,
        )  # fmt: skip
        self.predictor.predict(batch)
        for stream in streams:
            self.producer.send("predictions", stream.encode(), b"p")
        self.cp.processed({partition: offsets[-1]})

    def changelog(self) -> list[tuple[bytes, bool, int]]:
        return [(k, v is not None, p) for t, k, v, p in self.producer.sent if t == "cl"]


def test_a_blocking_checkpoint_flushes_writes_flushes_commits(tmp_path):
    s = Setup(tmp_path)
    s.process(["a", "b"], 0, 0)
    s.process(["c"], 1, 4)
    s.cp.checkpoint()
    assert sorted(s.changelog()) == [(b"a", True, 0), (b"b", True, 0), (b"c", True, 1)]
    assert s.log == [("flush", 3), ("flush", 6), ("commit", {(TOPIC, 0): 2, (TOPIC, 1): 5})]
    s.predictor.delete("b")
    s.cp.checkpoint()
    assert s.changelog()[-1] == (b"b", False, 0)  # a tombstone, nothing more to commit
    assert s.log[-1] == ("flush", 7)


def test_a_periodic_checkpoint_moves_through_its_marks(tmp_path):
    s = Setup(tmp_path)
    s.producer.acked = 0
    s.process(["a"], 0, 0)
    s.cp.begin(s.clock(), idle=True)
    (cp,) = s.cp.in_flight
    assert (cp.predictions_mark, cp.changelog_mark, cp.offsets) == (1, None, {(TOPIC, 0): 1})
    assert s.changelog() == []  # its prediction is not acknowledged yet
    s.producer.acked = 1
    s.cp.advance(idle=True)
    assert s.changelog() == [(b"a", True, 0)] and cp.changelog_mark == 2
    assert not [e for e in s.log if e[0] == "commit"]
    s.producer.acked = 2
    s.cp.advance()
    assert s.log[-1] == ("commit", {(TOPIC, 0): 1}) and s.cp.in_flight == []


def test_offsets_of_a_partition_revoked_meanwhile_are_not_committed(tmp_path):
    s = Setup(tmp_path)
    s.producer.acked = 0
    s.process(["a"], 0, 0)
    s.process(["b"], 1, 0)
    s.cp.begin(s.clock())
    s.assigned.discard(1)
    s.producer.acked = None
    s.cp.advance()
    assert s.log[-1] == ("commit", {(TOPIC, 0): 1})


def test_a_checkpoint_not_acknowledged_in_time_stops_the_loop(tmp_path):
    s = Setup(tmp_path)
    s.producer.acked = 0
    s.process(["a"], 0, 0)
    s.cp.begin(s.clock())
    s.clock.now += s.cp.settings.ack_timeout_s + 1
    with pytest.raises(BrokerUnavailable, match="not acknowledged"):
        s.cp.advance()


def test_due_on_the_interval_or_once_quiet_with_work_done(tmp_path):
    s = Setup(tmp_path, idle_commit_ms=100)
    now = s.clock.now
    assert not s.cp.due(now + 0.5, idle=True)  # quiet, but nothing was done
    s.process(["a"], 0, 0)
    assert not s.cp.due(now + 0.05, idle=True)  # too soon after the last
    assert not s.cp.due(now + 0.5, idle=False)  # busy: the interval decides
    assert s.cp.due(now + 0.5, idle=True)
    assert s.cp.due(now + 1.0, idle=False)
    s.cp.begin(now + 1.0)
    assert not s.cp.due(now + 1.5, idle=True)  # nothing since
    s.predictor.reset("a")  # a gRPC change alone is work too
    assert s.cp.due(now + 1.5, idle=True)


def test_a_refused_commit_is_retried_at_the_next_checkpoint(tmp_path):
    s = Setup(tmp_path)
    s.process(["a"], 0, 0)
    commit = s.consumer.commit

    def refuse(offsets, metadata=None):
        raise CommitFailed("rebalancing")

    s.consumer.commit = refuse
    s.cp.checkpoint()
    assert s.cp.committed == {}
    s.consumer.commit = commit
    s.cp.checkpoint()
    assert s.cp.committed == {0: 1} and s.log[-1] == ("commit", {(TOPIC, 0): 1})


def test_a_periodic_commit_is_not_waited_for_and_a_late_refusal_is_retried(tmp_path):
    s = Setup(tmp_path)
    sent = []
    s.consumer.commit_async = lambda offsets, metadata, on_refused: sent.append(
        (dict(offsets), on_refused)
    )
    s.process(["a"], 0, 0)
    s.cp.begin(s.clock(), idle=True)
    s.cp.advance()
    ((offsets, on_refused),) = sent
    assert offsets == {(TOPIC, 0): 1} and s.cp.committed == {0: 1}
    assert not [e for e in s.log if e[0] == "commit"], "the loop did not wait on the broker"
    on_refused(offsets, "rebalancing")  # the broker's answer, in a later poll
    assert s.cp.committed == {}
    s.cp.checkpoint()  # blocking: waits for the broker's answer
    assert s.cp.committed == {0: 1} and s.log[-1] == ("commit", {(TOPIC, 0): 1})
    on_refused({(TOPIC, 0): 0}, "late answer about an older commit")
    assert s.cp.committed == {0: 1}, "only the refused offset itself is taken back"


def test_a_periodic_commit_refused_at_once_is_retried(tmp_path):
    s = Setup(tmp_path)
    s.consumer.commit_async = lambda offsets, metadata, on_refused: on_refused(offsets, "no")
    s.process(["a"], 0, 0)
    s.cp.begin(s.clock(), idle=True)
    s.cp.advance()
    assert s.cp.committed == {}
