"""Checkpoints: predictions acknowledged -> changelog written -> input offsets committed.

That order keeps state exact across crashes: a committed offset never runs
ahead of the changelog, and a changelog record never reflects an event whose
prediction could still be lost. :class:`Checkpointer` keeps it two ways:

- :meth:`Checkpointer.checkpoint` blocks (partition revocation, model reload,
  stop): flush the predictions, send the changed streams' snapshots, flush,
  commit.
- :meth:`Checkpointer.begin` does not (every ``commit_interval_ms``, and once
  the input goes quiet, ``idle_commit_ms`` after the last checkpoint): the
  changed streams are taken from the Predictor's journal and held with the
  offsets and the producer's mark of every prediction sent so far. Once that
  mark is acknowledged, later loop steps (:meth:`Checkpointer.advance`)
  snapshot the streams a share per step and send each share once the mark
  taken after it is acknowledged (:mod:`~streamcell.service.snapshot_shares`),
  take a last mark, and commit the offsets once that one is acknowledged.

The changed streams come from the Predictor's journal
(:meth:`~streamcell.core.predictor.Predictor.take_changes`), drained under the
Predictor's lock.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from streamcell.core.errors import BrokerUnavailable
from streamcell.core.predictor import Predictor
from streamcell.service import changelog
from streamcell.service.kafka import CommitFailed, Consumer, Producer, TopicPartition
from streamcell.service.metrics import Metrics
from streamcell.service.snapshot_shares import Shares

if TYPE_CHECKING:
    from streamcell.service.settings import PipelineSettings

log = logging.getLogger(__name__)


@dataclass
class InFlight:
    """A periodic checkpoint on its way, oldest first in :attr:`Checkpointer.in_flight`."""

    offsets: dict[TopicPartition, int]  # committed once it is through
    records: Shares | None  # its changed streams (None: nothing changed)
    predictions_mark: int  # every prediction sent before it was taken
    taken_at: float
    sending_since: float | None = None  # when its snapshots began to be taken
    changelog_mark: int | None = None  # once all its records are sent: their mark
    written: dict[int, int] | None = None  # once sent: changelog partition -> records


class Checkpointer:
    """Owns the input positions, what was committed, and the checkpoints in flight."""

    def __init__(
        self,
        settings: PipelineSettings,
        consumer: Consumer,
        producer: Producer,
        predictor: Predictor,
        metrics: Metrics,
        assigned: set[int],
        clock: Callable[[], float] = time.monotonic,
        generations: dict[int, int] | None = None,
        fenced: Callable[[], bool] = lambda: False,
    ) -> None:
        """``generations`` (shared, read only here): partition -> the group generation it
        is held in, stamped on its changelog records; ``fenced()``: whether the consumer
        knows it fell out of the group (then nothing more is sent for any partition)."""
        self.settings = settings
        self.consumer = consumer
        self.producer = producer
        self.predictor = predictor
        self.metrics = metrics
        self.clock = clock
        self._assigned = assigned  # the partitions held now (shared, read only here)
        self.generations = {} if generations is None else generations
        self._fenced = fenced
        self.positions: dict[int, int] = {}  # partition -> next offset to read
        self.committed: dict[int, int | None] = {}  # partition -> what this replica committed
        # partition -> how far its changelog partition reached at least (the end read
        # at restore plus every record acknowledged since); committed with its offset
        self.changelog_end: dict[int, int] = {}
        self.in_flight: list[InFlight] = []
        self.last_at = 0.0  # when the last periodic checkpoint was taken
        self.next_at = 0.0  # when the next one is due
        self._processed = False  # events processed since the last checkpoint

    # ------------------------------------------------------------- timing
    def start(self) -> None:
        self.last_at = self.clock()
        self.next_at = self.last_at + self.settings.commit_interval_ms / 1000

    def processed(self, last_offsets: dict[int, int]) -> None:
        """Events up to these offsets (partition -> last offset) were processed."""
        self.positions.update((part, offset + 1) for part, offset in last_offsets.items())
        self._processed = True

    def read_up_to(self, read_to: dict[int, int]) -> None:
        """Every record below these offsets (partition -> offset) is processed now."""
        for p, pos in read_to.items():
            self.positions[p] = max(self.positions.get(p, pos), pos)

    def held_back(self, first_offsets: dict[int, int]) -> None:
        """Records from these offsets on (partition -> offset) were read but not processed
        yet (carried over): no commit may pass them, whatever was processed after them."""
        self.positions.update(first_offsets)

    def due(self, now: float, idle: bool) -> bool:
        """The interval passed; or the input is quiet (``idle``), with work since the last.

        Once quiet, a checkpoint comes ``idle_commit_ms`` after the last one
        rather than at the next interval: the committed offsets and the lag
        catch up with the input within about that much.
        """
        if now >= self.next_at:
            return True
        idle_after = self.settings.idle_commit_ms / 1000
        return (
            idle
            and idle_after > 0
            and now - self.last_at >= idle_after
            and (self._processed or self.predictor.has_changes())
        )

    # ----------------------------------------------------------- blocking
    def checkpoint(self) -> None:
        """Flush predictions, write changed state to the changelog, flush, commit.

        When it returns, everything processed is committed (or the commit was
        refused). Checkpoints in flight are covered by it: the rest of their
        snapshots is sent first (they are older than the state now).
        """
        self.producer.flush()
        written: list[dict[int, int]] = []
        for cp in self.in_flight:
            if cp.records is not None and cp.changelog_mark is None:
                cp.records.finish(self.predictor, self.producer, self.holds)
                written.append(cp.records.sent_to)
            elif cp.written is not None:
                written.append(cp.written)
        self.in_flight.clear()
        self._processed = False
        records = self._take_changelog()
        if records is not None:
            records.finish(self.predictor, self.producer, self.holds)
            written.append(records.sent_to)
        self.producer.flush()
        for counts in written:
            self._wrote(counts)
        self._commit(self._offsets())

    # ------------------------------------------------------- non-blocking
    def begin(self, now: float, idle: bool = False) -> None:
        """Take the changed streams and the offsets now; later steps snapshot and send
        the streams, then commit.

        The offsets reflect exactly the events processed so far, whose
        predictions were all sent before the mark taken here; the snapshots,
        taken later, reflect those events at least. ``idle``: no event waits,
        so the snapshots are taken and sent at once (no pacing).
        """
        self.last_at = now
        self.next_at = now + self.settings.commit_interval_ms / 1000
        self._processed = False
        for cp in self.in_flight:  # older snapshots first: a stream's newest record last
            if cp.records is not None and not cp.records.all_taken:
                cp.records.take(self.predictor, len(cp.records), self.producer.mark)
        records = self._take_changelog()
        offsets = self._offsets()
        if offsets or records is not None:
            self.in_flight.append(InFlight(offsets, records, self.producer.mark(), self.clock()))
            self.advance(idle=idle)

    def advance(self, idle: bool = False) -> None:
        """Move checkpoints in flight on, oldest first, as far as acknowledgements allow.

        Predictions acknowledged -> snapshot the changed streams and send them
        (paced over several steps, see :meth:`_send_paced`), take their mark; that one
        acknowledged -> commit (the newest such checkpoint's offsets win). A
        send that failed raises BrokerUnavailable here (from the producer), as
        does a checkpoint not through after ``ack_timeout_s``: the loop stops,
        nothing more is committed. ``idle``: the last poll found nothing, so no
        event waits behind the changelog and it is sent without pacing.
        """
        pending = self.in_flight
        ready: dict[TopicPartition, int] = {}
        while pending:
            cp = pending[0]
            if cp.changelog_mark is not None:
                if not self.producer.acknowledged(cp.changelog_mark):
                    break
                ready.update(cp.offsets)  # in order: newer offsets overwrite older
                self._wrote(cp.written or {})
                pending.pop(0)
            elif not self.producer.acknowledged(cp.predictions_mark):
                break
            elif self._send_paced(cp, behind=idle or len(pending) > 1):
                cp.written = {} if cp.records is None else cp.records.sent_to
                cp.records, cp.changelog_mark = None, self.producer.mark()
            else:
                break  # more of its records in the next steps
        if pending and self.clock() - pending[0].taken_at > self.settings.ack_timeout_s:
            raise BrokerUnavailable(
                f"a checkpoint's records were not acknowledged within "
                f"{self.settings.ack_timeout_s} s; nothing after it is committed"
            )
        if ready:  # not waited for: the loop goes on while the broker answers
            self._commit({tp: pos for tp, pos in ready.items() if tp[1] in self._assigned}, False)

    def _send_paced(self, cp: InFlight, behind: bool) -> bool:
        """Snapshot a share of the checkpoint's streams and send the shares whose marks
        are acknowledged; True once all of them are sent.

        The streams taken grow linearly so that all are taken after
        ``changelog_pace`` of the commit interval, plus shares ahead of that
        pace within ``changelog_send_budget_ms`` of the step: many snapshots
        cost the loop a little each step instead of a stall at once, which the
        p99 of event-to-prediction latency saw. ``behind`` (a newer checkpoint
        already waiting: the pace fell behind; or an idle loop, where nothing
        waits) takes the rest at once.
        """
        shares = cp.records
        if shares is None:
            return True
        mark = self.producer.mark
        if behind:
            shares.take(self.predictor, len(shares), mark)
        elif not shares.all_taken:
            s = self.settings
            now = self.clock()
            if cp.sending_since is None:
                cp.sending_since = now
            span = s.changelog_pace * s.commit_interval_ms / 1000
            share = 1.0 if span <= 0 else (now - cp.sending_since) / span
            deadline = time.perf_counter() + s.changelog_send_budget_ms / 1000
            shares.take(self.predictor, math.ceil(len(shares) * min(share, 1.0)), mark)
            while not shares.all_taken and time.perf_counter() < deadline:
                shares.take(self.predictor, shares.taken + shares.CHUNK, mark)
        return shares.send(self.producer, self.holds)

    # ------------------------------------------------------------ helpers
    def holds(self, partition: int, generation: int) -> bool:
        """Asked before every changelog send: the partition is still this member's, in
        the generation its records were taken in (a zombie's records are never sent)."""
        return (
            partition in self._assigned
            and self.generations.get(partition, -1) == generation
            and not self._fenced()
        )

    def _take_changelog(self) -> Shares | None:
        """The streams changed since the last checkpoint, to snapshot (None if none did)."""
        with self.predictor.lock:
            changed = self.predictor.take_changes()
        if not changed:
            return None
        log.debug("changelog: %d streams changed", len(changed))
        return Shares(self.settings.changelog_topic, changed, self.generations)

    def _offsets(self) -> dict[TopicPartition, int]:
        """The next offsets to read of the assigned partitions, where not committed yet."""
        topic = self.settings.input_topic
        return {
            (topic, p): pos
            for p, pos in self.positions.items()
            if p in self._assigned and self.committed.get(p) != pos
        }

    def _wrote(self, counts: dict[int, int]) -> None:
        """These changelog records are acknowledged: their partitions reach that much further."""
        for p, n in counts.items():
            if p in self.changelog_end:
                self.changelog_end[p] += n

    def _commit(self, offsets: dict[TopicPartition, int], wait: bool = True) -> None:
        """Commit; ``wait=False`` (a periodic checkpoint) sends it and goes on.

        Either way it is sent only once its changelog is acknowledged, so the
        order above holds. A commit not waited for counts as committed here at
        once; a refusal, answered in a later poll, takes that back
        (:meth:`_refused`) and the next checkpoint commits again. A blocking
        checkpoint (revocation, reload, stop) waits for its answer: librdkafka
        sends a member's commits in order, so it lands after those before it.
        """
        offsets = {tp: pos for tp, pos in offsets.items() if self.committed.get(tp[1]) != pos}
        if not offsets:
            return
        ends = self.changelog_end
        metadata = {tp: changelog.end_metadata(ends[tp[1]]) for tp in offsets if tp[1] in ends}
        if wait:
            try:
                self.consumer.commit(offsets, metadata)
            except CommitFailed as exc:
                log.warning("offset commit refused (%s); it is retried at the next checkpoint", exc)
                return
        for (_, p), pos in offsets.items():
            self.committed[p] = pos
        self.metrics.commits.inc()
        if not wait:  # marked first: a refusal, even one answered at once, takes it back
            self.consumer.commit_async(offsets, metadata, self._refused)

    def _refused(self, offsets: dict[TopicPartition, int], why: str) -> None:
        """A commit not waited for was refused: those partitions count as uncommitted."""
        undone = [p for (_, p), pos in offsets.items() if self.committed.get(p) == pos]
        for p in undone:
            self.committed.pop(p, None)
        if undone:
            log.warning(
                "offset commit of partitions %s refused (%s); it is retried at the next "
                "checkpoint", sorted(undone), why,
            )  # fmt: skip

    def committed_text(self) -> str:
        return ", ".join(f"{p}:{o}" for p, o in sorted(self.committed.items())) or "none"
