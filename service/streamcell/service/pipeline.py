"""The Kafka loop: poll, decode, predict, produce, then whatever timers are due.

One thread runs :meth:`Pipeline.run`. Per poll: restore partitions that were
just assigned (``recovery``), decode the records (``codec``), send the bad
ones to the dead-letter topic, step the valid ones through the shared
:class:`Predictor` in one micro-batch, send one prediction per applied event.
A busy loop's poll can return once it holds ``--min-batch`` records (``batching``);
a full poll's repeated streams wait for the next poll (``carry``).
Then the timers: checkpoints (``checkpointing``: predictions acknowledged ->
changelog -> offsets), TTL expiry, lag (``lag``) and model reload (``reload``,
right after a checkpoint, so the committed offsets mark exactly where the new
version starts). The Predictor journals every stream it changes, from here or
from gRPC; the checkpointer drains that journal. After a restore, the
Predictor skips events whose offset a stream's state already reflects, and
events whose seq it has applied.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from operator import attrgetter

import numpy as np

from streamcell.core.coldstore import ColdStore
from streamcell.core.errors import ColdTierError
from streamcell.core.predictor import DUPLICATE, PREDICTED, REPLAYED, Predictor
from streamcell.service import batching, carry, codec, reload
from streamcell.service.checkpointing import Checkpointer
from streamcell.service.kafka import Consumer, Producer, Reader, Record
from streamcell.service.lag import record_lag
from streamcell.service.metrics import Metrics
from streamcell.service.ownership import Ownership
from streamcell.service.recovery import Recovery
from streamcell.service.settings import PipelineSettings

log = logging.getLogger(__name__)
_PARTITION, _OFFSET = attrgetter("partition"), attrgetter("offset")


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
        reopen_cold: Callable[[], ColdStore] | None = None,
    ) -> None:
        """``reopen_cold``: an empty cold tier in place of the one in use, which failed
        (the loop then restores every partition it holds again, see Recovery.rebuild_cold);
        None: a failed cold tier stops the loop."""
        self.settings = settings
        self.consumer = consumer
        self.producer = producer
        self.predictor = predictor
        self.metrics = metrics
        self.watcher = watcher
        self.ownership = Ownership(settings.input_topic, predictor.partition_of)
        self.checkpointer = Checkpointer(
            settings,
            consumer,
            producer,
            predictor,
            metrics,
            self.ownership.assigned,
            clock,
            generations=self.ownership.generations,
            fenced=lambda: consumer.generation() == -1,
        )
        self.recovery = Recovery(
            settings, consumer, reader_of, predictor, self.checkpointer, self.ownership, metrics,
            reopen_cold,
        )  # fmt: skip
        predictor.track_changes(self.ownership.place)
        self.carry = carry.Carry()

    # ------------------------------------------------------------- running
    def start(self) -> None:
        """Join the group; partitions arrive inside the polls (and are restored after them)."""
        self.consumer.subscribe(
            [self.settings.input_topic],
            on_assign=self.recovery.on_assign,
            on_revoke=self.recovery.on_revoke,
            on_lost=self.recovery.on_lost,
        )
        self.checkpointer.start()

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
        """One poll and its micro-batch, then whatever timers are due; returns records seen.

        A cold tier that fails (its directory deleted or replaced under the process, a
        storage error) is rebuilt from the changelog, and the loop goes on.
        """
        try:
            return self._step()
        except ColdTierError as exc:
            self.recovery.rebuild_cold(exc)
            return 0

    def _step(self) -> int:
        s = self.settings
        room = s.max_batch - len(self.carry)
        if s.min_batch and self.ownership.assigned and not self.recovery.recovering:
            records = batching.poll(
                self.consumer, room, s.min_batch - len(self.carry), s.max_batch_delay_ms / 1000,
                self.ownership.generations,
            )  # fmt: skip
        else:
            busy = self.ownership.assigned or self.recovery.recovering
            delay = s.max_batch_delay_ms if busy else s.idle_poll_ms
            records = self.consumer.poll(room, max(delay, 1) / 1000)
        if self.recovery.recovering:  # assigned in this poll: restored before their events
            self.recovery.restore_pending()
        held, read_to = self._take_carry()
        batch = held + records if held else records
        later: list[Record] = []
        if len(batch) >= s.max_batch:  # behind the input: fewer waves, more events a second
            batch, later = carry.split(batch, s.max_batch // 4)
        if batch:
            self.process(batch)
        cp = self.checkpointer
        if read_to:  # the carried records are processed: back to where their partitions read
            cp.read_up_to(read_to)
        if later:
            self.carry.hold(later, cp.positions, self.ownership.generations)
            cp.held_back(carry.first_offsets(later))
        idle = not batch
        if cp.in_flight:
            cp.advance(idle=idle)
        now = cp.clock()
        if cp.due(now, idle):
            self._expire()
            cp.begin(now, idle=idle)
            record_lag(
                self.consumer, self.metrics, s.input_topic, self.ownership.assigned, cp.positions
            )
        if self.watcher is not None:
            reload.reload_if_newer(self.watcher, self.predictor, self.metrics, self._checkpoint)
        return len(records)

    def close(self) -> None:
        """Graceful stop: make everything durable, then leave the group."""
        try:
            self._checkpoint()
        finally:
            self._close_clients()
        log.info("pipeline stopped; offsets committed: %s", self.checkpointer.committed_text())

    def _checkpoint(self) -> None:
        """A blocking checkpoint of everything read: the carried records are processed first
        (a model swap then starts exactly at the committed offsets)."""
        held, read_to = self._take_carry()
        if held:
            self.process(held)
        self.checkpointer.read_up_to(read_to)
        self.checkpointer.checkpoint()

    def _take_carry(self) -> tuple[list[Record], dict[int, int]]:
        return self.carry.take(self.ownership.assigned, self.ownership.generations)

    def _close_clients(self) -> None:
        self.recovery.closing = True  # leaving the group revokes: nothing more to checkpoint
        try:
            self.consumer.close()
        finally:
            self.producer.close()

    # ---------------------------------------------------------- processing
    def process(self, records: list[Record]) -> None:
        """Decode, predict, produce one poll's records (the Predictor journals the changes)."""
        s = self.settings
        decoded = codec.decode(records, self.predictor.config.input_size, s.event_format)
        for bad in decoded.invalid:
            self._dead_letter(bad)
        batch = decoded.batch
        counts = {"invalid": len(decoded.invalid)}
        if len(batch):
            start = time.perf_counter()
            # Event times, not arrival: TTL idleness never counts our own downtime.
            result = self.predictor.predict(batch, decoded.event_time, validated=True)
            self.metrics.step_seconds.observe(time.perf_counter() - start)
            # Refused by the Predictor (the step overflowed the model): like a decode failure.
            for row, reason, message in result.refused:
                self._dead_letter(codec.Invalid(decoded.records[row], reason, message))
            counts["invalid"] += len(result.refused)
            rows = np.flatnonzero(result.outcome == PREDICTED)
            messages = codec.encode_predictions(
                batch, result.yhat, rows, result.model, result.version,
                result.quantiles, result.levels,
            )  # fmt: skip
            if messages:
                self.producer.send_many(s.output_topic, messages)
            self.metrics.event_latency.observe_many(time.time() - decoded.event_time[rows], "kafka")
            counts["predicted"] = len(rows)
            counts["duplicate"] = int((result.outcome == DUPLICATE).sum())
            counts["skipped_replay"] = int((result.outcome == REPLAYED).sum())
            self.metrics.record_batch(
                "kafka", counts, len(rows), result.abs_errors, result.model, result.version,
                result.scores, result.levels,
            )  # fmt: skip
            if result.evicted:
                self.metrics.sync_store_counters(len(result.evicted), 0)
        else:
            self.metrics.record_batch("kafka", counts, 0, np.zeros((0, 1)), "", "")
        self.checkpointer.processed(_last_offsets(records, decoded))

    def _dead_letter(self, bad: codec.Invalid) -> None:
        """Send a record that cannot be applied to the dead-letter topic, and count it."""
        s = self.settings
        # Bounded: a record over the producer's limit, sent whole, would fail
        # the send and stop the pipeline at the same record on every restart.
        key, value, headers = codec.dead_letter(bad, s.dead_letter_max_bytes)
        if headers[-1] == codec.TRUNCATED:
            rec = bad.record
            log.warning(
                "dead-lettered %s[%d]@%d truncated (%d bytes): %s",
                rec.topic, rec.partition, rec.offset, len(rec.value or b""), bad.reason,
            )  # fmt: skip
        self.producer.send(s.dead_letter_topic, key, value, headers=headers)
        self.metrics.dead_letters.labels(bad.reason).inc()

    def _expire(self) -> None:
        gone = self.predictor.expire()  # at the watermark: the input's event time
        if gone:
            self.metrics.sync_store_counters(0, len(gone))
            log.info("expired %d idle streams", len(gone))


def _last_offsets(records: list[Record], decoded: codec.Decoded) -> dict[int, int]:
    """Partition -> the offset of its last record in ``records`` (in order per partition)."""
    batch = decoded.batch
    if decoded.invalid or len(batch) != len(records):
        return dict(zip(map(_PARTITION, records), map(_OFFSET, records), strict=True))
    # Every record is a row: the columns hold the positions; each partition's last row
    # is its first in reverse.
    partitions, at = np.unique(batch.partition[::-1], return_index=True)
    return dict(zip(partitions.tolist(), batch.offset[::-1][at].tolist(), strict=True))
