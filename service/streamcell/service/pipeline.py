"""The Kafka loop: poll, decode, predict, produce; checkpoint; restore on assignment.

One thread runs :meth:`Pipeline.run`. Per poll: decode the records
(``codec``), send the bad ones to the dead-letter topic, step the valid ones
through the shared :class:`Predictor` in one micro-batch, send one prediction
per applied event. On partition revocation, model reload and stop,
:meth:`checkpoint` makes the work durable in the one order that keeps state
exact across crashes: flush predictions -> write the changed streams' state to
the changelog -> flush -> commit the input offsets. Every
``commit_interval_ms``, and once the input goes quiet (``idle_commit_ms``
after the last checkpoint), the same order is kept without blocking the loop
(:meth:`checkpoint_async`): the changed streams are snapshotted at once and
held with the offsets and the producer's mark (every prediction sent so far);
once that mark is acknowledged, later steps send the held snapshots, a share
per step (a changelog record must never reflect an event whose prediction
could still be lost), take a second mark, and commit the offsets once that
one is acknowledged. On assignment a partition's streams are restored from
the changelog before any of its events are processed; the Predictor then
skips events whose offset a stream's state already reflects, and events
whose seq it has applied.

A model reload happens between two polls, right after a checkpoint, so the
committed offsets mark exactly where the new version starts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter

import numpy as np

from streamcell.core.errors import BrokerUnavailable
from streamcell.core.events import EventBatch
from streamcell.core.predictor import DUPLICATE, PREDICTED, REPLAYED, BatchResult, Predictor
from streamcell.service import changelog, codec, reload
from streamcell.service.kafka import (
    CommitFailed,
    Consumer,
    Producer,
    Reader,
    Record,
    TopicPartition,
)
from streamcell.service.metrics import Metrics
from streamcell.service.ownership import GroupMembers, murmur2_partition

log = logging.getLogger(__name__)
_PARTITION, _OFFSET = attrgetter("partition"), attrgetter("offset")


@dataclass
class _Checkpoint:
    """A periodic checkpoint on its way: snapshots held, then sent, then committed."""

    offsets: dict[TopicPartition, int]
    changelog: changelog.Snapshots | None  # taken at the checkpoint, sent once `mark` is acked
    mark: int  # before sending: the predictions' mark; after: the changelog's
    since: float
    sending_since: float | None = None
    sent: bool = False


@dataclass(frozen=True)
class PipelineSettings:
    """What the loop needs to know besides its clients."""

    input_topic: str = "streamcell.events"
    output_topic: str = "streamcell.predictions"
    dead_letter_topic: str = "streamcell.dead-letters"
    changelog_topic: str = "streamcell.state-changelog"
    event_format: str = codec.FORMAT_JSON
    max_batch: int = 1024
    max_batch_delay_ms: int = 5
    commit_interval_ms: int = 1000
    # Once a poll finds nothing (the input went quiet), checkpoint what was done
    # as soon as this long has passed since the last checkpoint, not at the next
    # interval: the committed offsets and the lag catch up with the input within
    # about this much. 0: on the interval only.
    idle_commit_ms: int = 100
    restore_timeout_s: float = 60.0
    ack_timeout_s: float = 30.0  # a checkpoint not acknowledged by then: the broker is gone
    # A checkpoint's changelog records are sent over this share of the commit
    # interval, a little each step, plus up to send_budget_ms of a step's time.
    changelog_pace: float = 0.5
    changelog_send_budget_ms: float = 1.0
    idle_poll_ms: int = 100


class Pipeline:
    """The consumer loop of one replica; owns its consumer and producer."""

    def __init__(
        self,
        settings: PipelineSettings,
        consumer: Consumer,
        producer: Producer,
        reader_of: Callable[[], Reader],
        predictor: Predictor,
        metrics: Metrics,
        watcher: reload.ModelWatcher | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.producer = producer
        self.reader_of = reader_of
        self.predictor = predictor
        self.metrics = metrics
        self.watcher = watcher
        self._clock = clock
        self._assigned: set[int] = set()  # input partitions held now
        self._positions: dict[int, int] = {}  # partition -> next offset to read
        self._committed: dict[int, int | None] = {}  # partition -> what this replica committed
        self._parked: dict[int, int | None] = {}  # revoked partitions, streams still in memory
        self._owned: dict[str, int] = {}  # stream -> input partition, for streams in the store
        self._changed: dict[str, int] = {}  # streams to write to the changelog at checkpoint
        self._changed_lock = threading.Lock()
        self._evicted = predictor.store.evicted
        self._expired = predictor.store.expired
        self._evictions_pending = False
        self._next_checkpoint = 0.0
        self._last_checkpoint = 0.0
        self._pending: list[_Checkpoint] = []  # periodic checkpoints not committed, oldest first
        self._processed_since_checkpoint = False
        self._partition_count: int | None = None
        self.members: GroupMembers | None = None
        self._closing = False

    # ------------------------------------------------------------- running
    def start(self) -> None:
        """Join the group; partitions arrive (and are restored) inside the first polls."""
        self.consumer.subscribe(
            [self.settings.input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        self._last_checkpoint = self._clock()
        self._next_checkpoint = self._last_checkpoint + self.settings.commit_interval_ms / 1000

    def run(self, stop: threading.Event, before_close: Callable[[], None] | None = None) -> None:
        """Loop until ``stop`` is set; then ``before_close()``, checkpoint, leave the group.

        ``before_close`` stops the other writers of the state (gRPC), so that
        what they acknowledged is in the final checkpoint. On an error nothing
        more is committed (the batch in hand may be half done): the clients
        close as after a crash, and a restart resumes from the last checkpoint.
        """
        try:
            self.start()
            while not stop.is_set():
                self.step()
        except BaseException:
            self._close_clients()
            raise
        try:
            if before_close is not None:
                before_close()
        finally:
            self.close()

    def step(self) -> int:
        """One poll and its micro-batch, then whatever timers are due; returns records seen."""
        s = self.settings
        delay = s.max_batch_delay_ms if self._assigned else s.idle_poll_ms
        records = self.consumer.poll(s.max_batch, max(delay, 1) / 1000)
        if records:
            self.process(records)
        if self._pending:
            self._advance_checkpoints(idle=not records)
        now = self._clock()
        if now >= self._next_checkpoint or (not records and self._idle_commit_due(now)):
            self._expire()
            self.checkpoint_async(idle=not records)
            self._record_lag()
            self._last_checkpoint = now
            self._next_checkpoint = now + s.commit_interval_ms / 1000
        if self.watcher is not None and self.watcher.due():
            self._maybe_reload()
        return len(records)

    def _idle_commit_due(self, now: float) -> bool:
        """Work since the last checkpoint, and ``idle_commit_ms`` passed since that one."""
        idle_after = self.settings.idle_commit_ms / 1000
        return (
            idle_after > 0
            and now - self._last_checkpoint >= idle_after
            and (self._processed_since_checkpoint or bool(self._changed))
        )

    def close(self) -> None:
        """Graceful stop: make everything durable, then leave the group."""
        try:
            self.checkpoint()
        finally:
            self._close_clients()
        log.info("pipeline stopped; offsets committed: %s", self._committed_text())

    def _close_clients(self) -> None:
        self._closing = True  # leaving the group revokes: nothing more to checkpoint
        try:
            self.consumer.close()
        finally:
            self.producer.close()

    # ---------------------------------------------------------- processing
    def process(self, records: list[Record]) -> None:
        s = self.settings
        predictor = self.predictor
        decoded = codec.decode(records, predictor.config.input_size, s.event_format)
        for bad in decoded.invalid:
            rec = bad.record
            self.producer.send(
                s.dead_letter_topic, rec.key, rec.value, headers=codec.dead_letter_headers(bad)
            )
            self.metrics.dead_letters.labels(bad.reason).inc()
        batch = decoded.batch
        counts = {"invalid": len(decoded.invalid)}
        if len(batch):
            start = time.perf_counter()
            result = self._predict(batch)
            self.metrics.step_seconds.observe(time.perf_counter() - start)
            rows = np.flatnonzero(result.outcome == PREDICTED)
            messages = codec.encode_predictions(
                batch, result.yhat, rows, result.model, result.version
            )
            if messages:
                self.producer.send_many(s.output_topic, messages)
            if len(rows) == len(batch):
                changed = dict(zip(batch.streams, batch.partition.tolist(), strict=True))
            else:
                streams = batch.streams
                changed = dict(
                    zip(
                        [streams[k] for k in rows.tolist()],
                        batch.partition[rows].tolist(),
                        strict=True,
                    )
                )
            with self._changed_lock:  # a stream's last event of the batch wins, as in order
                self._owned.update(changed)
                self._changed.update(changed)
            self.metrics.event_latency.observe_many(time.time() - decoded.event_time[rows], "kafka")
            counts["predicted"] = len(rows)
            counts["duplicate"] = int((result.outcome == DUPLICATE).sum())
            counts["skipped_replay"] = int((result.outcome == REPLAYED).sum())
            self.metrics.record_batch(
                "kafka", counts, len(rows), result.abs_errors, result.model, result.version
            )
        else:
            self.metrics.record_batch("kafka", counts, 0, np.zeros((0, 1)), "", "")
        self._note_removed()
        self._processed_since_checkpoint = True
        # In order per partition: each partition's last record wins.
        last = dict(zip(map(_PARTITION, records), map(_OFFSET, records), strict=True))
        self._positions.update((part, offset + 1) for part, offset in last.items())

    def _predict(self, batch: EventBatch) -> BatchResult:
        """One Predictor call, or several in order when the batch holds more streams than fit."""
        limit = self.predictor.store.max_streams
        if len(batch) <= limit:
            return self.predictor.predict(batch)
        parts = [
            self.predictor.predict(batch.take(np.arange(k, min(k + limit, len(batch)))))
            for k in range(0, len(batch), limit)
        ]
        last = parts[-1]
        return BatchResult(
            outcome=np.concatenate([p.outcome for p in parts]),
            yhat=np.concatenate([p.yhat for p in parts]),
            events=np.concatenate([p.events for p in parts]),
            abs_errors=np.concatenate([p.abs_errors for p in parts]),
            touched=list(dict.fromkeys(s for p in parts for s in p.touched)),
            model=last.model,
            version=last.version,
        )

    def _note_removed(self) -> None:
        """Count evictions; the evicted streams are found once, at the next checkpoint."""
        store = self.predictor.store
        evicted, expired = store.evicted, store.expired
        if evicted < self._evicted or expired < self._expired:  # a new store (model reset)
            self._evicted = self._expired = 0
        if evicted != self._evicted:
            self._evictions_pending = True
        self.metrics.sync_store_counters(evicted - self._evicted, expired - self._expired)
        self._evicted, self._expired = evicted, expired

    def _collect_evicted(self) -> None:
        """Owned streams no longer in the store get tombstones (caller holds both locks).

        A scan of every owned stream: done once per checkpoint, not per batch
        (about 6 ms at 100,000 streams).
        """
        if not self._evictions_pending:
            return
        self._evictions_pending = False
        store = self.predictor.store
        for stream in [s for s in self._owned if s not in store]:
            self._changed[stream] = self._owned.pop(stream)

    def _expire(self) -> None:
        gone = self.predictor.expire()
        if gone:
            with self._changed_lock:
                for stream in gone:
                    part = self._owned.pop(stream, None)
                    if part is not None:
                        self._changed[stream] = part
            log.info("expired %d idle streams", len(gone))
        self._note_removed()

    # ---------------------------------------------------------- checkpoint
    def checkpoint(self) -> None:
        """Flush predictions, write changed state to the changelog, flush, commit.

        Blocking: when it returns, everything processed is committed (or the
        commit was refused). Pending periodic checkpoints are covered by it:
        the rest of their snapshots is sent first (older than the state now).
        """
        self.producer.flush()
        for cp in self._pending:
            if cp.changelog is not None and not cp.sent:
                cp.changelog.send(self.producer)
        self._pending.clear()
        self._processed_since_checkpoint = False
        records = self._take_changelog()
        if records is not None:
            records.send(self.producer)
        self.producer.flush()
        self._commit(self._offsets())

    def checkpoint_async(self, idle: bool = False) -> None:
        """Snapshot the changed streams now; later steps send them, then commit.

        The snapshots and offsets reflect exactly the events processed so far,
        whose predictions were all sent before the mark taken here. ``idle``:
        no event waits, so the changelog goes out at once (no pacing).
        """
        self._processed_since_checkpoint = False
        records = self._take_changelog()
        offsets = self._offsets()
        if offsets or records is not None:
            cp = _Checkpoint(offsets, records, self.producer.mark(), self._clock())
            self._pending.append(cp)
            self._advance_checkpoints(idle=idle)

    def _advance_checkpoints(self, idle: bool = False) -> None:
        """Move pending checkpoints on, oldest first, as far as acknowledgements allow.

        Predictions acknowledged -> send the held changelog records (paced over
        several steps, see :meth:`_send_paced`), take a mark; those
        acknowledged -> commit (the newest such checkpoint's offsets win). A
        send that failed raises BrokerUnavailable here (from the producer), as
        does a checkpoint not through after ``ack_timeout_s``: the loop stops,
        nothing more is committed. ``idle``: the last poll found nothing, so
        no event waits behind the changelog and it is sent without pacing.
        """
        pending = self._pending
        ready: dict[TopicPartition, int] = {}
        while pending and self.producer.acknowledged(pending[0].mark):
            cp = pending[0]
            if cp.sent:
                ready.update(cp.offsets)  # in order: newer offsets overwrite older
                pending.pop(0)
            elif self._send_paced(cp, behind=idle or len(pending) > 1):
                cp.changelog, cp.sent, cp.mark = None, True, self.producer.mark()
            else:
                break  # more of its records in the next steps
        if pending and self._clock() - pending[0].since > self.settings.ack_timeout_s:
            raise BrokerUnavailable(
                f"a checkpoint's records were not acknowledged within "
                f"{self.settings.ack_timeout_s} s; nothing after it is committed"
            )
        if ready:
            self._commit({tp: pos for tp, pos in ready.items() if tp[1] in self._assigned})

    def _send_paced(self, cp: _Checkpoint, behind: bool) -> bool:
        """Send a share of the checkpoint's changelog; True once all of it is sent.

        The share grows linearly so that everything is out after
        ``changelog_pace`` of the commit interval: 10^4 snapshots cost the loop
        about a millisecond a step instead of tens of milliseconds at once,
        which the p99 of event-to-prediction latency saw. ``behind`` (a newer
        checkpoint already waiting: the pace fell behind; or an idle loop,
        where nothing waits) sends the rest at once.
        """
        records = cp.changelog
        if records is None:
            return True
        if behind:
            return records.send(self.producer)
        s = self.settings
        now = self._clock()
        if cp.sending_since is None:
            cp.sending_since = now
        span = s.changelog_pace * s.commit_interval_ms / 1000
        share = 1.0 if span <= 0 else (now - cp.sending_since) / span
        until = int(len(records) * min(share, 1.0))
        deadline = time.perf_counter() + s.changelog_send_budget_ms / 1000
        return records.send(self.producer, until=until, deadline=deadline)

    def _take_changelog(self) -> changelog.Snapshots | None:
        """Snapshot the streams changed since the last checkpoint (None if none did)."""
        with self.predictor.lock, self._changed_lock:
            self._collect_evicted()
            changed, self._changed = self._changed, {}
            if not changed:
                return None
            records = changelog.Snapshots(
                self.settings.changelog_topic, self.predictor.store, changed
            )
        log.debug("changelog: %d snapshots, %d tombstones", records.snapshots, records.tombstones)
        return records

    def _offsets(self) -> dict[TopicPartition, int]:
        """The next offsets to read of the assigned partitions, where not committed yet."""
        topic = self.settings.input_topic
        return {
            (topic, p): pos
            for p, pos in self._positions.items()
            if p in self._assigned and self._committed.get(p) != pos
        }

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        offsets = {tp: pos for tp, pos in offsets.items() if self._committed.get(tp[1]) != pos}
        if not offsets:
            return
        try:
            self.consumer.commit(offsets)
        except CommitFailed as exc:
            log.warning("offset commit refused (%s); it is retried at the next checkpoint", exc)
            return
        for (_, p), pos in offsets.items():
            self._committed[p] = pos
        self.metrics.commits.inc()

    def mark_changed(self, streams: list[str]) -> None:
        """Streams changed outside the loop (gRPC writes): written at the next checkpoint."""
        store = self.predictor.store
        with self._changed_lock:
            for stream in streams:
                part = self._owned.get(stream)
                if part is None:
                    slot = store.slot_of(stream)
                    part = int(store.partition[slot]) if slot is not None else -1
                if part < 0:
                    part = self.partition_of(stream)
                if part is None or part not in self._assigned:
                    continue
                self._changed[stream] = part
                if stream in store:
                    self._owned[stream] = part
                else:
                    self._owned.pop(stream, None)

    # ----------------------------------------------------------- rebalance
    def _on_revoke(self, tps: list[TopicPartition]) -> None:
        revoked = sorted(p for t, p in tps if t == self.settings.input_topic)
        if not revoked or self._closing:
            return
        log.info("partitions revoked: %s; checkpointing", revoked)
        self.checkpoint()
        for p in revoked:
            self._parked[p] = self._committed.get(p)
            self._assigned.discard(p)
            self._positions.pop(p, None)
        self.metrics.assigned_partitions.set(len(self._assigned))

    def _on_assign(self, tps: list[TopicPartition]) -> None:
        self.metrics.rebalances.inc()
        topic = self.settings.input_topic
        new = sorted(p for t, p in tps if t == topic)
        committed = self.consumer.committed([(topic, p) for p in new]) if new else {}
        keep = [p for p in new if p in self._parked and self._parked[p] == committed[(topic, p)]]
        restore = [p for p in new if p not in keep]
        drop = {p for p in self._parked if p not in keep} | set(restore)
        self._parked.clear()
        self._drop_partitions(drop)
        if restore:
            with self.metrics.restoring(len(restore)), self.predictor.lock:
                done = changelog.restore(
                    self.reader_of,
                    self.settings.changelog_topic,
                    restore,
                    self.predictor.store,
                    self.settings.restore_timeout_s,
                )
                with self._changed_lock:
                    self._owned.update(done.partitions)
            self.metrics.restored_streams.inc(len(done.streams))
            log.info(
                "partitions %s restored from %s: %d streams (%d tombstones, %d skipped) in %.2fs",
                restore,
                self.settings.changelog_topic,
                len(done.streams),
                done.tombstones,
                done.skipped,
                done.seconds,
            )
        for p in new:
            self._assigned.add(p)
            pos = committed.get((topic, p))
            if pos is not None:
                self._positions[p] = pos
                self._committed[p] = pos
        log.info("partitions assigned: %s (kept in memory: %s)", new, keep)
        self.metrics.assigned_partitions.set(len(self._assigned))

    def _drop_partitions(self, partitions: set[int]) -> None:
        """Forget streams of partitions another replica may have moved on (no tombstones)."""
        if not partitions:
            return
        with self.predictor.lock, self._changed_lock:
            gone = [s for s, p in self._owned.items() if p in partitions]
            for stream in gone:
                self.predictor.store.delete(stream)
                del self._owned[stream]
                self._changed.pop(stream, None)
        for p in partitions:
            self._committed.pop(p, None)
        if gone:
            log.info("dropped %d streams of partitions %s", len(gone), sorted(partitions))

    # -------------------------------------------------------------- reload
    def _maybe_reload(self) -> None:
        loaded = self.watcher.newer(self.predictor.loaded.version) if self.watcher else None
        if loaded is None:
            return
        self.checkpoint()  # the new version starts exactly at the committed offsets
        with self._changed_lock:
            owned = dict(self._owned)
        kept = reload.apply(self.predictor, loaded, self.metrics)
        if not kept:
            with self._changed_lock:
                self._changed.update(owned)  # tombstones: the old state is gone
                self._owned.clear()
            self._evicted = self._expired = 0
            self.checkpoint()

    # ------------------------------------------------------------ ownership
    def owner_of(self, stream: str) -> str | None:
        """None when this replica owns the stream's partition, else who does (for gRPC)."""
        part = self._owned.get(stream)  # parked streams (revoked partitions) are not ours
        if part is None:
            part = self.partition_of(stream)
        if part is None or part in self._assigned:
            return None
        owner = self.members.owner(self.settings.input_topic, part) if self.members else None
        return (
            f"stream {stream!r} belongs to partition {part} of {self.settings.input_topic}, "
            f"which is not assigned to this replica (it holds {sorted(self._assigned)})"
            + (f"; its owner is {owner}" if owner else "")
        )

    def partition_of(self, stream: str) -> int | None:
        """The input partition of a stream id (murmur2, as both producers place keys)."""
        n = self._partition_count
        if n is None:
            return None
        return murmur2_partition(stream.encode(), n)

    def set_partition_count(self, n: int) -> None:
        self._partition_count = n

    # ---------------------------------------------------------------- misc
    def _record_lag(self) -> None:
        if not self._assigned:
            return
        topic = self.settings.input_topic
        tps = [(topic, p) for p in sorted(self._assigned)]
        try:
            ends = self.consumer.end_offsets(tps)
        except Exception as exc:  # lag is best effort; never stop the loop for it
            log.debug("end offsets unavailable: %s", exc)
            return
        for tp in tps:
            pos = self._positions.get(tp[1])
            if pos is not None and tp in ends:
                self.metrics.consumer_lag.labels(topic, str(tp[1])).set(max(ends[tp] - pos, 0))

    def _committed_text(self) -> str:
        return ", ".join(f"{p}:{o}" for p, o in sorted(self._committed.items())) or "none"
