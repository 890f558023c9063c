"""Which replica holds a stream: the key's partition (murmur2) and the group's members.

The gRPC servicer refuses writes to streams another replica owns; these two
helpers let the pipeline say which partition and, where the broker describes
its groups, which member.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

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


def murmur2_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partition for a key (the Java client's murmur2, positive)."""
    length = len(key)
    seed, m, r = 0x9747B28C, 0x5BD1E995, 24
    h = (seed ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(key[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest = length % 4
    tail = key[length - rest :]
    if rest == 3:
        h ^= tail[2] << 16
    if rest >= 2:
        h ^= tail[1] << 8
    if rest >= 1:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions
