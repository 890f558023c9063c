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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

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
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.reader_of = reader_of
        self.predictor = predictor
        self.checkpointer = checkpointer
        self.ownership = ownership
        self.metrics = metrics
        self.recovering: list[int] = []  # assigned, not restored yet: not processed
        self.closing = False  # leaving the group revokes: nothing more to checkpoint
        self._parked: dict[int, int | None] = {}  # revoked, streams in memory -> committed

    def on_revoke(self, tps: list[TopicPartition]) -> None:
        revoked = sorted(p for t, p in tps if t == self.settings.input_topic)
        if not revoked or self.closing:
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
                cp.positions.pop(p, None)
        self._count_assigned()

    def on_assign(self, tps: list[TopicPartition]) -> None:
        self.metrics.rebalances.inc()
        topic = self.settings.input_topic
        new = sorted(p for t, p in tps if t == topic)
        committed = self.consumer.committed([(topic, p) for p in new]) if new else {}
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
        self.ownership.assigned.update(keep)
        self.recovering.extend(p for p in restore if p not in self.recovering)
        log.info("partitions assigned: %s (kept in memory: %s)", new, keep)
        self._count_assigned()

    def restore_pending(self) -> None:
        """Restore the recovering partitions' streams; then they are this replica's."""
        partitions, self.recovering = self.recovering, []
        if not partitions:
            return
        s = self.settings
        with self.metrics.restoring(len(partitions)):
            start = time.perf_counter()
            items, where, tombstones = changelog.read(
                self.reader_of,
                s.changelog_topic,
                partitions,
                s.restore_timeout_s,
                self._progress,
            )
            done = self.predictor.restore(items, where)  # under the Predictor's lock
            seconds = time.perf_counter() - start
        changelog.log_skipped(
            s.changelog_topic, partitions, len(items), done.skipped, done.left_out
        )
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
            len(done.skipped),
            seconds,
        )
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

    def _drop(self, partitions: set[int]) -> None:
        """Forget streams of partitions another replica may have moved on (no tombstones)."""
        if not partitions:
            return
        gone = self.predictor.drop_partitions(partitions)
        for p in partitions:
            self.checkpointer.committed.pop(p, None)
        if gone:
            log.info("dropped %d streams of partitions %s", len(gone), sorted(partitions))

    def _count_assigned(self) -> None:
        self.metrics.assigned_partitions.set(len(self.ownership.assigned) + len(self.recovering))
