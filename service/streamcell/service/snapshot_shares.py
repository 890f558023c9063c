"""A checkpoint's changed streams, snapshotted a share per loop step instead of all at once.

Taking every changed stream's snapshot under the Predictor's lock in one step
(10^4 streams a second, 12 MB gathered from random slots) stalled the loop
once per checkpoint, and the events queued behind the stall were the p99 of
event-to-prediction latency (docs/BENCHMARKS.md, "End to end"). Taken a share
per step, no step holds more than a few hundred streams' copy.

A share taken after its checkpoint began reflects the events processed since
then too, never fewer. So each share gets a producer mark of its own, taken
right after it, and is sent only once that mark is acknowledged: every
prediction of an event a snapshot reflects is durable before the snapshot is
sent. Its snapshots may reflect offsets past the checkpoint's, which a
restore's replay skips (the rule restarts already rely on). Shares are sent in
the order they were taken, and a checkpoint's before the next one's (the
Checkpointer takes the rest of an older checkpoint before it drains the
journal again), so a stream's last changelog record is always its newest
snapshot.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple

from streamcell.core.predictor import Predictor
from streamcell.service import changelog

if TYPE_CHECKING:
    from streamcell.service.kafka import Producer


class _Share(NamedTuple):
    records: changelog.Snapshots
    mark: int | None  # the producer's mark right after it was taken (None: nothing to wait for)


class Shares:
    """The changed streams of one checkpoint; taken (snapshotted) and sent in order."""

    CHUNK = changelog.Snapshots.CHUNK  # streams per share taken ahead of the pace

    def __init__(self, topic: str, changed: dict[str, int], generations: Mapping[int, int]) -> None:
        """``changed``: stream -> partition (the journal's); ``generations``: partition ->
        the group generation it is held in now, stamped on every share's records."""
        self.topic = topic
        self._streams = list(changed)
        self._partitions = list(changed.values())
        self._generations = dict(generations)
        self.taken = 0  # streams snapshotted so far, in journal order
        self._pending: deque[_Share] = deque()  # taken, not sent yet, oldest first
        self.sent_to: dict[int, int] = {}  # partition -> records sent to it
        self.snapshots = self.tombstones = 0

    def __len__(self) -> int:
        return len(self._streams)

    @property
    def all_taken(self) -> bool:
        return self.taken >= len(self._streams)

    @property
    def done(self) -> bool:
        return self.all_taken and not self._pending

    def take(self, predictor: Predictor, until: int, mark: Callable[[], int] | None) -> None:
        """Snapshot the streams up to ``until`` under the Predictor's lock, as one share.

        ``mark``: the producer's, called right after (None: the caller flushed the
        producer, so nothing sent before is unacknowledged).
        """
        until = min(until, len(self._streams))
        if until <= self.taken:
            return
        start = self.taken
        share = dict(zip(self._streams[start:until], self._partitions[start:until], strict=True))
        with predictor.lock:
            # Both tiers: a stream spilled since it changed is snapshotted from the cold one.
            records = changelog.Snapshots(self.topic, predictor.snapshots, share, self._generations)
        self._pending.append(_Share(records, None if mark is None else mark()))
        self.taken = until
        self.snapshots += records.snapshots
        self.tombstones += records.tombstones

    def send(self, producer: Producer, held: Callable[[int, int], bool], wait: bool = True) -> bool:
        """Send the shares taken, oldest first, each once its mark is acknowledged
        (``wait=False``: at once, the producer was flushed after they were taken).

        ``held`` as in :meth:`changelog.Snapshots.send`. True once every stream
        is taken and sent.
        """
        pending = self._pending
        while pending:
            records, mark = pending[0]
            if wait and mark is not None and not producer.acknowledged(mark):
                break
            records.send(producer, held=held)
            for partition, n in records.sent_to.items():
                self.sent_to[partition] = self.sent_to.get(partition, 0) + n
            pending.popleft()
        return self.done

    def finish(
        self, predictor: Predictor, producer: Producer, held: Callable[[int, int], bool]
    ) -> None:
        """Take the rest and send everything now; the caller flushed the producer."""
        self.take(predictor, len(self._streams), None)
        self.send(producer, held, wait=False)
