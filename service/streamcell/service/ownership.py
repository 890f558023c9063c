"""Which replica holds a stream: the key's partition (murmur2) and the group's members.

The gRPC servicer refuses writes to streams another replica owns;
:class:`Ownership` says which partition and, where the broker describes its
groups (:class:`GroupMembers`), which member.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kafka.partitioner.default import murmur2

from streamcell.service.kafka import Member, TopicPartition

log = logging.getLogger(__name__)


class GroupMembers:
    """Who holds which partition, from the broker's group description (cached, best effort).

    Only for error messages (gRPC: "which replica owns this stream"); a broker
    that does not describe groups (Tansu) just leaves the owner unnamed.
    """

    def __init__(
        self,
        describe: Callable[[], list[Member]],
        max_age_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._describe = describe
        self._max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._owners: dict[TopicPartition, str] = {}
        self._at = -float("inf")

    def owner(self, topic: str, partition: int) -> str | None:
        with self._lock:
            if self._clock() - self._at > self._max_age_s:
                self._at = self._clock()
                try:
                    members = self._describe()
                except Exception as exc:  # best effort: never fail a request for it
                    log.debug("cannot describe the consumer group: %s", exc)
                    members = []
                self._owners = {
                    tp: f"{m.client_id or m.member_id} at {m.host or 'unknown host'}"
                    for m in members
                    for tp in m.partitions
                }
            return self._owners.get((topic, partition))


class Ownership:
    """Which input partitions this replica holds, and so which streams it may write.

    Shared by the Kafka loop (which updates ``assigned`` on rebalances) and the
    gRPC servicer (which asks :meth:`owner_of` before a write); it is also the
    Predictor's :data:`~streamcell.core.predictor.Placement` for changes made
    over gRPC (:meth:`place`).
    """

    def __init__(self, topic: str, partition_of_stream: Callable[[str], int | None]) -> None:
        self.topic = topic
        self.assigned: set[int] = set()  # input partitions held (and restored) now
        # partition -> the group generation it was assigned in (stamped on its changelog)
        self.generations: dict[int, int] = {}
        self.members: GroupMembers | None = None
        self._known = partition_of_stream  # a stream in the store -> its partition
        self._partition_count: int | None = None

    def set_partition_count(self, n: int) -> None:
        self._partition_count = n

    def partition_of(self, stream: str) -> int | None:
        """The input partition of a stream id (murmur2, as both producers place keys)."""
        n = self._partition_count
        if n is None:
            return None
        return murmur2_partition(stream.encode(), n)

    def place(self, stream: str, known: int | None) -> int | None:
        """The partition to journal a gRPC change under; None when it is not held here."""
        part = known if known is not None else self.partition_of(stream)
        return part if part is not None and part in self.assigned else None

    def owner_of(self, stream: str) -> str | None:
        """None when this replica owns the stream's partition, else who does (for gRPC)."""
        part = self._known(stream)  # parked streams (revoked partitions) are not ours
        if part is None:
            part = self.partition_of(stream)
        if part is None or part in self.assigned:
            return None
        owner = self.members.owner(self.topic, part) if self.members else None
        return (
            f"stream {stream!r} belongs to partition {part} of {self.topic}, "
            f"which is not assigned to this replica (it holds {sorted(self.assigned)})"
            + (f"; its owner is {owner}" if owner else "")
        )


def murmur2_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partition for a key: kafka-python's murmur2 (the Java client's)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
