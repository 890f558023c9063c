"""Rebalances and changelog recovery: which partitions' streams to keep, drop or restore.

On revocation the loop checkpoints first (so what it did is durable), then
parks the partitions: their streams stay in memory, with the offset this
replica committed. On assignment a parked partition whose committed offset
did not move meanwhile is kept as it is; every other new partition is marked
*recovering*: its events are not processed until its streams are restored
from the changelog partition with its number. The consumer's callbacks only
decide and mark; the loop restores (:meth:`Recovery.restore_pending`) right
after the poll and before the poll's records are processed, reading the
changelog outside the Predictor's lock and applying it under it, so gRPC
calls are not held up by the network read.

Partitions *lost* (this member was evicted from the group, e.g. frozen past
its session timeout, and another may already hold them) are not revoked:
nothing is checkpointed or sent for them, their streams are dropped and
restored from the changelog if they come back. Each partition remembers the
generation it was assigned in; its changelog records carry it, and every send
checks that the partition is still held in it (``Checkpointer.holds``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from streamcell.core.coldstore import FOUND_LOST, ColdStore
from streamcell.core.predictor import Predictor
from streamcell.service import changelog
from streamcell.service.checkpointing import Checkpointer
from streamcell.service.kafka import Consumer, Reader, TopicPartition
from streamcell.service.metrics import Metrics
from streamcell.service.ownership import Ownership

if TYPE_CHECKING:
    from streamcell.service.settings import PipelineSettings

log = logging.getLogger(__name__)


class Recovery:
    """The consumer's rebalance callbacks, and the restore of recovering partitions."""

    def __init__(
        self,
        settings: PipelineSettings,
        consumer: Consumer,
        reader_of: Callable[[], Reader],
        predictor: Predictor,
        checkpointer: Checkpointer,
        ownership: Ownership,
        metrics: Metrics,
        reopen_cold: Callable[[], ColdStore] | None = None,
    ) -> None:
        """``reopen_cold``: close the cold tier and open an empty one in its directory."""
        self.settings = settings
        self.reopen_cold = reopen_cold
        self.consumer = consumer
        self.reader_of = reader_of
        self.predictor = predictor
        self.checkpointer = checkpointer
        self.ownership = ownership
        self.metrics = metrics
        self.recovering: list[int] = []  # assigned, not restored yet: not processed
        self.closing = False  # leaving the group revokes: nothing more to checkpoint
        self._parked: dict[int, int | None] = {}  # revoked, streams in memory -> committed
        # recovering partition -> (committed offset, changelog end committed with it)
        self._expected: dict[int, tuple[int | None, int | None]] = {}

    def on_revoke(self, tps: list[TopicPartition]) -> None:
        revoked = sorted(p for t, p in tps if t == self.settings.input_topic)
        if not revoked or self.closing:
            return
        if self.consumer.generation() == -1:  # fenced: the group moved on without us
            self.on_lost(tps)
            return
        log.info("partitions revoked: %s; checkpointing", revoked)
        cp = self.checkpointer
        # Under the Predictor's lock from the checkpoint until the partitions are
        # let go: a gRPC write between the two would be applied and journaled, and
        # then never reach the changelog. gRPC checks ownership under the lock.
        with cp.predictor.lock:
            cp.checkpoint()
            for p in revoked:
                if p in self.recovering:  # never restored: nothing of it to keep
                    self.recovering.remove(p)
                else:
                    self._parked[p] = cp.committed.get(p)
                self.ownership.assigned.discard(p)
                self.ownership.generations.pop(p, None)
                cp.positions.pop(p, None)
        self._count_assigned()

    def on_lost(self, tps: list[TopicPartition]) -> None:
        """Another member may hold these already: drop them, write nothing for them."""
        lost = sorted(p for t, p in tps if t == self.settings.input_topic)
        if not lost:
            return
        log.warning(
            "partitions lost (this replica fell out of the group): %s; dropping their "
            "streams without checkpointing",
            lost,
        )
        self.metrics.partitions_lost.inc(len(lost))
        cp = self.checkpointer
        with cp.predictor.lock:  # gRPC checks ownership under it
            for p in lost:
                if p in self.recovering:
                    self.recovering.remove(p)
                self.ownership.assigned.discard(p)
                self.ownership.generations.pop(p, None)
                self._parked.pop(p, None)
                cp.positions.pop(p, None)
            self._drop(set(lost))
        self._count_assigned()

    def on_assign(self, tps: list[TopicPartition]) -> None:
        self.metrics.rebalances.inc()
        topic = self.settings.input_topic
        new = sorted(p for t, p in tps if t == topic)
        marks = self.consumer.committed_with_metadata([(topic, p) for p in new]) if new else {}
        committed = {tp: offset for tp, (offset, _) in marks.items()}
        keep = [p for p in new if p in self._parked and self._parked[p] == committed[(topic, p)]]
        restore = [p for p in new if p not in keep]
        drop = {p for p in self._parked if p not in keep} | set(restore)
        self._parked.clear()
        self._drop(drop)
        cp = self.checkpointer
        for p in new:
            pos = committed.get((topic, p))
            if pos is not None:
                cp.positions[p] = pos
                cp.committed[p] = pos
        generation = self.consumer.generation()
        self.ownership.generations.update(dict.fromkeys(new, generation))
        self.ownership.assigned.update(keep)
        self.recovering.extend(p for p in restore if p not in self.recovering)
        for p in restore:
            offset, metadata = marks[(topic, p)]
            self._expected[p] = (offset, changelog.end_of(metadata))
        log.info(
            "partitions assigned: %s (kept in memory: %s) in generation %d", new, keep, generation
        )
        self._count_assigned()

    def restore_pending(self) -> None:
        """Restore the recovering partitions' streams; then they are this replica's."""
        partitions, self.recovering = self.recovering, []
        if not partitions:
            return
        s = self.settings
        ends: dict[int, int] = {}
        with self.metrics.restoring(len(partitions)):
            start = time.perf_counter()
            items, where, tombstones = changelog.read(
                self.reader_of,
                s.changelog_topic,
                partitions,
                s.restore_timeout_s,
                self._progress,
                # a record can outrank this member's own later ones only up to its generation
                max(self.ownership.generations.get(p, -1) for p in partitions),
                ends,
            )
            items, refused = changelog.refuse_ahead(
                self.reader_of, s.input_topic, items, where, self.predictor.store.positions,
                s.restore_timeout_s,
            )  # fmt: skip
            done = self.predictor.restore(items, where)  # under the Predictor's lock
            seconds = time.perf_counter() - start
        skipped = refused + done.skipped
        changelog.log_skipped(s.changelog_topic, partitions, len(items), skipped, done.left_out)
        self._check_ends(partitions, ends)
        self.ownership.assigned.update(partitions)
        self.metrics.restored_streams.inc(len(done.streams))
        log.info(
            "partitions %s restored from %s: %d streams (%d of them to the cold tier; "
            "%d tombstones, %d skipped) in %.2fs",
            partitions,
            s.changelog_topic,
            len(done.streams),
            done.cold,
            tombstones,
            len(skipped),
            seconds,
        )
        self._count_assigned()

    def rebuild_cold(self, why: Exception) -> None:
        """The cold tier failed under the loop (its directory deleted or replaced, a storage
        error): recover as a restart would, in this process. Nothing more is committed
        from the state in memory; every stream is dropped, an empty tier opened, and every
        partition held is restored from the changelog and read again from its committed
        offset (predictions since then are sent again, byte-identical)."""
        if self.reopen_cold is None:
            raise why
        s, cp = self.settings, self.checkpointer
        topic = s.input_topic
        partitions = sorted(self.ownership.assigned | set(self.recovering))
        log.error(
            "the cold tier failed while serving (%s): it is rebuilt from the changelog; "
            "partitions %s are restored again and read again from their committed offsets",
            why,
            partitions,
        )
        self.metrics.cold_rebuilds.labels(FOUND_LOST).inc()
        cp.producer.flush()  # what was sent lands before the changelog is read again
        marks = self.consumer.committed_with_metadata([(topic, p) for p in partitions])
        with self.predictor.lock:  # gRPC checks ownership under it
            cp.in_flight.clear()  # their offsets are never committed
            dropped = self.predictor.rebuild_cold(self.reopen_cold())
            for p in partitions:
                offset, metadata = marks[(topic, p)]
                self.ownership.assigned.discard(p)
                cp.positions.pop(p, None)
                cp.committed.pop(p, None)
                cp.changelog_end.pop(p, None)
                if offset is not None:
                    cp.positions[p] = cp.committed[p] = offset
                self._expected[p] = (offset, changelog.end_of(metadata))
                # Nothing committed yet: from the start (the reset policy finds it).
                self.consumer.seek((topic, p), 0 if offset is None else offset)
            self.recovering = partitions
        log.info("dropped %d streams in memory; restoring partitions %s", dropped, partitions)
        self._count_assigned()

    def _progress(self, done: dict[TopicPartition, tuple[int, int]]) -> None:
        """A long restore says how far it is, in the log and as a gauge."""
        remaining = sum(max(total - read, 0) for read, total in done.values())
        self.metrics.restore_remaining.set(remaining)
        log.info(
            "restoring from %s: %s",
            self.settings.changelog_topic,
            ", ".join(
                f"partition {p} {read}/{total}" for (_, p), (read, total) in sorted(done.items())
            ),
        )

    def _check_ends(self, partitions: list[int], ends: dict[int, int]) -> None:
        """Say so when a changelog partition is behind the offset committed for it; from
        here on its end is what this replica's commits record."""
        for p in partitions:
            committed, recorded = self._expected.pop(p, (None, None))
            end = ends.get(p, 0)
            why = changelog.behind(self.settings.changelog_topic, p, end, committed, recorded)
            if why is not None:
                log.error("%s", why)
                self.metrics.changelog_behind.inc()
            self.checkpointer.changelog_end[p] = end

    def _drop(self, partitions: set[int]) -> None:
        """Forget streams of partitions another replica may have moved on (no tombstones)."""
        if not partitions:
            return
        gone = self.predictor.drop_partitions(partitions)
        for p in partitions:
            self.checkpointer.committed.pop(p, None)
            self.checkpointer.changelog_end.pop(p, None)
            self._expected.pop(p, None)
        if gone:
            log.info("dropped %d streams of partitions %s", len(gone), sorted(partitions))

    def _count_assigned(self) -> None:
        self.metrics.assigned_partitions.set(len(self.ownership.assigned) + len(self.recovering))
