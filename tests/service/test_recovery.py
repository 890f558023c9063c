"""Recovery alone, over recording fakes: recovering partitions, restore outside the lock."""

from __future__ import annotations

import threading

from pipeline_fakes import TOPIC, FakeConsumer, FakeProducer, FakeReader
from pipeline_support import make_model

from streamcell.core.checkpoint import load_checkpoint
from streamcell.core.events import EventBatch
from streamcell.core.predictor import PREDICTED, Predictor
from streamcell.service.checkpointing import Checkpointer
from streamcell.service.kafka import EndTracker, Record
from streamcell.service.metrics import Metrics
from streamcell.service.ownership import Ownership
from streamcell.service.recovery import Recovery
from streamcell.service.settings import PipelineSettings


def lock_is_free(predictor: Predictor) -> bool:
    """Whether another thread could take the Predictor's lock now (as gRPC would)."""
    got: list[bool] = []

    def attempt() -> None:
        ok = predictor.lock.acquire(timeout=0)
        if ok:
            predictor.lock.release()
        got.append(ok)

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join()
    return got[0]


class WatchedReader(FakeReader):
    """A reader that notes, while it reads, whether the Predictor's lock was free."""

    def __init__(self, records: list[Record], predictor: Predictor, seen: list[bool]) -> None:
        super().__init__(records)
        self.predictor, self.seen = predictor, seen

    def read_to_end(self, tps, timeout_s, on_progress=None):
        self.seen.append(lock_is_free(self.predictor))
        yield from super().read_to_end(tps, timeout_s)


class Setup:
    def __init__(self, tmp_path, changelog: list[Record] | None = None) -> None:
        self.log: list = []
        self.consumer = FakeConsumer(self.log)
        self.predictor = Predictor(load_checkpoint(make_model(tmp_path)))
        self.ownership = Ownership(TOPIC, self.predictor.partition_of)
        self.predictor.track_changes(self.ownership.place)
        settings = PipelineSettings(input_topic=TOPIC, changelog_topic="cl")
        self.cp = Checkpointer(
            settings,
            self.consumer,
            FakeProducer(self.log),
            self.predictor,
            Metrics(),
            self.ownership.assigned,
        )
        self.lock_free_while_reading: list[bool] = []
        records = changelog or []
        self.recovery_records = records
        self.recovery = Recovery(
            settings,
            self.consumer,
            lambda: WatchedReader(records, self.predictor, self.lock_free_while_reading),
            self.predictor,
            self.cp,
            self.ownership,
            Metrics(),
        )


def snapshots(tmp_path, streams: dict[str, int]) -> list[Record]:
    """Changelog records of streams (stream -> partition) with some state."""
    source = Predictor(load_checkpoint(make_model(tmp_path / "source")))
    names = list(streams)
    source.predict(
        EventBatch.of(names, [[1.0, 2.0, 3.0]] * len(names), partition=list(streams.values()),
                      offset=[0] * len(names))
    )  # fmt: skip
    return [
        Record("cl", part, k, name.encode(), value, 0, ())
        for k, (name, part, value) in enumerate(
            zip(names, streams.values(), source.store.snapshot(names), strict=True)
        )
    ]


def test_assigned_partitions_recover_before_they_are_owned(tmp_path):
    s = Setup(tmp_path, snapshots(tmp_path, {"a": 0, "b": 1}))
    s.consumer.committed_offsets[(TOPIC, 0)] = 5
    s.recovery.on_assign([(TOPIC, 0), (TOPIC, 1)])
    assert s.recovery.recovering == [0, 1] and s.ownership.assigned == set()
    assert s.cp.positions == {0: 5} and len(s.predictor.store) == 0  # nothing read yet
    s.recovery.restore_pending()
    assert s.lock_free_while_reading == [True]  # the network read holds no lock
    assert s.ownership.assigned == {0, 1} and s.recovery.recovering == []
    assert sorted(s.predictor.store.stream_ids()) == ["a", "b"]
    assert s.predictor.partition_of("b") == 1 and not s.predictor.has_changes()


def test_a_partition_revoked_before_its_restore_is_not_kept(tmp_path):
    s = Setup(tmp_path, snapshots(tmp_path, {"a": 0}))
    s.recovery.on_assign([(TOPIC, 0)])
    s.recovery.on_revoke([(TOPIC, 0)])
    assert s.recovery.recovering == []
    s.recovery.on_assign([(TOPIC, 0)])  # not "kept": it was never restored
    assert s.recovery.recovering == [0]


def test_a_parked_partition_whose_offset_did_not_move_is_kept_without_a_restore(tmp_path):
    s = Setup(tmp_path, snapshots(tmp_path, {"old": 0}))
    s.recovery.on_assign([(TOPIC, 0)])
    s.recovery.restore_pending()
    s.predictor.predict(EventBatch.of(["new"], [[1.0, 2.0, 3.0]], partition=[0], offset=[0]))
    s.cp.processed({0: 0})
    s.recovery.on_revoke([(TOPIC, 0)])  # checkpoints: commits offset 1
    assert s.consumer.committed_offsets == {(TOPIC, 0): 1}
    s.recovery.on_assign([(TOPIC, 0)])
    assert s.recovery.recovering == [] and s.ownership.assigned == {0}
    assert sorted(s.predictor.store.stream_ids()) == ["new", "old"]


def test_a_parked_partition_that_moved_on_is_dropped_and_restored(tmp_path):
    s = Setup(tmp_path, snapshots(tmp_path, {"old": 0}))
    s.recovery.on_assign([(TOPIC, 0)])
    s.recovery.restore_pending()
    s.predictor.predict(EventBatch.of(["new"], [[1.0, 2.0, 3.0]], partition=[0], offset=[0]))
    s.cp.processed({0: 0})
    s.recovery.on_revoke([(TOPIC, 0)])
    s.log.clear()
    s.consumer.committed_offsets[(TOPIC, 0)] = 9  # another replica moved it on
    s.recovery.on_assign([(TOPIC, 0)])
    assert len(s.predictor.store) == 0 and not s.predictor.has_changes()  # no tombstones
    s.recovery.restore_pending()
    assert s.predictor.store.stream_ids() == ["old"]  # the fake changelog's only record


class ReportingReader(FakeReader):
    """Reports progress midway through its read, as a long read would."""

    def __init__(self, records: list[Record], gauge_values: list[float], metrics: Metrics):
        super().__init__(records)
        self.gauge_values, self.metrics = gauge_values, metrics

    def read_to_end(self, tps, timeout_s, on_progress=None):
        tracker = EndTracker(dict.fromkeys(tps, 10), dict.fromkeys(tps, 0), timeout_s)
        tracker.update(tps[0], 4, None)
        on_progress(tracker.progress())
        self.gauge_values.append(self.metrics.restore_remaining._value.get())
        yield from super().read_to_end(tps, timeout_s)


def test_a_restore_in_progress_shows_what_is_left_in_the_log_and_the_gauge(tmp_path, caplog):
    s = Setup(tmp_path, snapshots(tmp_path, {"a": 0, "b": 1}))
    metrics, values = s.recovery.metrics, []
    s.recovery.reader_of = lambda: ReportingReader(s.recovery_records, values, metrics)
    s.recovery.on_assign([(TOPIC, 0), (TOPIC, 1)])
    with caplog.at_level("INFO", logger="streamcell.service.recovery"):
        s.recovery.restore_pending()
    assert values == [16.0]  # 6 of partition 0 and 10 of partition 1 still to read
    assert metrics.restore_remaining._value.get() == 0  # none runs now
    assert "restoring from cl: partition 0 4/10, partition 1 0/10" in caplog.text
    assert sorted(s.predictor.store.stream_ids()) == ["a", "b"]


def test_lost_partitions_are_dropped_and_nothing_of_them_is_ever_sent(tmp_path):
    s = Setup(tmp_path)
    producer = s.cp.producer
    s.recovery.on_assign([(TOPIC, 0), (TOPIC, 1)])
    s.recovery.restore_pending()
    assert s.ownership.generations == {0: 1, 1: 1}
    s.predictor.predict(
        EventBatch.of(["a", "b"], [[1.0, 2.0, 3.0]] * 2, partition=[0, 1], offset=[0, 0])
    )
    s.cp.processed({0: 0, 1: 0})
    producer.send("predictions", b"a", b"p")
    producer.acked = 0  # the prediction is not acknowledged yet: the checkpoint waits
    s.cp.begin(s.cp.clock())
    assert s.cp.in_flight and not [x for x in producer.sent if x[0] == "cl"]
    s.recovery.on_lost([(TOPIC, 0)])  # evicted while it waited; partition 1 kept
    assert s.ownership.assigned == {1} and s.predictor.store.stream_ids() == ["b"]
    producer.acked = None
    s.cp.advance()
    s.cp.advance()
    sent = [(key, part) for topic, key, _, part in producer.sent if topic == "cl"]
    assert sent == [(b"b", 1)]  # the lost partition's snapshot was dropped, not sent
    assert [c for c in s.log if c[0] == "commit"] == [("commit", {(TOPIC, 1): 1})]
    assert s.recovery.metrics.partitions_lost._value.get() == 1


def test_a_revocation_once_fenced_is_a_loss_no_checkpoint(tmp_path):
    s = Setup(tmp_path)
    s.recovery.on_assign([(TOPIC, 0)])
    s.recovery.restore_pending()
    s.predictor.predict(EventBatch.of(["a"], [[1.0, 2.0, 3.0]], partition=[0], offset=[0]))
    s.cp.processed({0: 0})
    s.consumer.group_generation = -1  # the client learnt it was fenced
    s.log.clear()
    s.recovery.on_revoke([(TOPIC, 0)])
    assert s.log == [] and s.cp.producer.sent == []  # no flush, no changelog, no commit
    assert len(s.predictor.store) == 0 and s.ownership.assigned == set()


def test_commits_record_the_changelog_end_and_a_restore_below_it_is_reported(tmp_path, caplog):
    written = snapshots(tmp_path, {"a": 0, "b": 0})  # changelog offsets 0 and 1
    s = Setup(tmp_path, written)
    s.recovery.on_assign([(TOPIC, 0)])
    s.recovery.restore_pending()
    s.predictor.predict(EventBatch.of(["a"], [[1.0, 2.0, 3.0]], partition=[0], offset=[1]))
    s.cp.processed({0: 1})
    s.cp.checkpoint()  # one more changelog record: the partition reaches offset 3
    assert s.consumer.committed_metadata[(TOPIC, 0)] == "streamcell-changelog-end=3"

    truncated = Setup(tmp_path / "again", written[:1])  # the changelog lost records since
    truncated.consumer.committed_offsets = s.consumer.committed_offsets
    truncated.consumer.committed_metadata = s.consumer.committed_metadata
    truncated.recovery.on_assign([(TOPIC, 0)])
    with caplog.at_level("ERROR", logger="streamcell.service.recovery"):
        truncated.recovery.restore_pending()
    assert "changelog cl partition 0 ends at offset 1, below the 3 it had reached" in caplog.text
    assert "when input offset 2 was committed" in caplog.text
    assert truncated.recovery.metrics.changelog_behind._value.get() == 1


def test_an_empty_changelog_under_a_committed_offset_is_reported(tmp_path, caplog):
    s = Setup(tmp_path)
    s.consumer.committed_offsets[(TOPIC, 0)] = 40  # committed by a writer of no metadata
    s.consumer.committed_offsets[(TOPIC, 1)] = 0
    s.recovery.on_assign([(TOPIC, 0), (TOPIC, 1)])
    with caplog.at_level("ERROR", logger="streamcell.service.recovery"):
        s.recovery.restore_pending()
    assert "changelog cl partition 0 is empty when input offset 40 was committed" in caplog.text
    assert "partition 1" not in caplog.text
    assert s.recovery.metrics.changelog_behind._value.get() == 1


def test_a_snapshot_claiming_an_offset_past_the_inputs_end_is_refused(tmp_path, caplog):
    source = Predictor(load_checkpoint(make_model(tmp_path / "source")))
    source.predict(
        EventBatch.of(["hostile", "fine"], [[1.0, 2.0, 3.0]] * 2, partition=[0, 0],
                      offset=[10**12, 49])
    )  # fmt: skip
    values = source.store.snapshot(["hostile", "fine"])
    records = [Record("cl", 0, k, name.encode(), v, 0, ()) for k, (name, v) in
               enumerate(zip(["hostile", "fine"], values, strict=True))]  # fmt: skip
    s = Setup(tmp_path, records)
    s.recovery.reader_of = lambda: FakeReader(records, input_ends={0: 50})
    s.recovery.on_assign([(TOPIC, 0)])
    with caplog.at_level("WARNING", logger="streamcell.service.changelog"):
        s.recovery.restore_pending()
    assert s.predictor.store.stream_ids() == ["fine"]
    assert "claims input offset 1000000000000 of in partition 0, which ends at 50" in caplog.text
    # Its events are applied, not skipped as already reflected.
    result = s.predictor.predict(
        EventBatch.of(["hostile"], [[1.0, 2.0, 3.0]], partition=[0], offset=[50])
    )
    assert result.outcome.tolist() == [PREDICTED]
