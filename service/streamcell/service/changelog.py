"""The state changelog: per-stream snapshots on a compacted topic, and their restore.

Record layout: key = the stream id (UTF-8), value = ``StateStore.snapshot``
bytes (which carry h, c, the last prediction and the input partition, offset
and seq the state reflects), or None (a tombstone) for a stream that was
deleted, evicted or expired. A stream's records go to the changelog partition
with the number of its input partition, so a replica that is assigned input
partition p restores exactly changelog partition p.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from streamcell.core.errors import ConfigError
from streamcell.core.state import StateStore
from streamcell.core.tiers import TieredStore

if TYPE_CHECKING:
    from streamcell.service.kafka import Producer, Progress, Reader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Restored:
    """What a restore found: streams loaded, records it could not use, seconds taken."""

    streams: list[str]
    skipped: int
    tombstones: int
    seconds: float
    # stream -> the changelog partition it came from, which is its input partition (a
    # stream created over gRPC has no input partition in its state; this is its owner's)
    partitions: dict[str, int] = field(default_factory=dict)


class Snapshots:
    """Changelog records taken at a checkpoint, sent later a chunk at a time.

    Taking them is one bulk copy of the store under the predictor's lock
    (``StateStore.snapshot_block``); cutting the block into records, encoding
    the keys and handing them to the producer happens outside the lock and can
    be spread over several loop steps (``send``), so a checkpoint of 10^4
    streams never stalls the loop for the whole of it. Records are grouped by
    partition (one ``send_many`` per run); a stream's snapshots and tombstones
    keep the order in which checkpoints were taken as long as each
    ``Snapshots`` is sent completely before the next one starts.
    """

    CHUNK = 256  # records per send_many between clock checks

    def __init__(
        self, topic: str, store: StateStore | TieredStore, changed: dict[str, int]
    ) -> None:
        # Snapshots first, then tombstones; each grouped by partition, in the
        # order the streams changed. Sorted by numpy, not per stream in Python:
        # this runs under the lock, for every stream changed in the interval.
        streams = list(changed)
        partitions = np.fromiter(changed.values(), np.int64, len(streams))
        present = store.contains(streams)
        order = np.lexsort((partitions, ~present))
        self.topic = topic
        self.streams: list[str] = [streams[k] for k in order.tolist()]
        self.snapshots = int(present.sum())
        self.tombstones = len(streams) - self.snapshots
        ordered = partitions[order]
        starts = np.flatnonzero(np.diff(ordered)) + 1
        ends = np.append(starts, len(streams))
        if 0 < self.snapshots < len(streams):
            ends = np.union1d(ends, [self.snapshots])  # a run never spans both kinds
        # (end, partition) of each run, in order
        self._runs: list[tuple[int, int]] = [
            (end, int(ordered[end - 1])) for end in ends.tolist() if end > 0
        ]
        self._block = store.snapshot_block(self.streams[: self.snapshots])
        self._size = store.snapshot_size
        self.sent = 0
        self._run = 0

    def __len__(self) -> int:
        return len(self.streams)

    @property
    def done(self) -> bool:
        return self.sent >= len(self.streams)

    def send(
        self,
        producer: Producer,
        until: int | None = None,
        deadline: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> bool:
        """Send in order up to record ``until`` (all if None), then on until ``deadline``.

        Returns True once every record is sent.
        """
        total = len(self.streams)
        floor = total if until is None else min(until, total)
        streams, block, size = self.streams, self._block, self._size
        while self.sent < total:
            if self.sent >= floor and (deadline is None or clock() >= deadline):
                break
            end, partition = self._runs[self._run]
            stop = min(end, self.sent + self.CHUNK)
            pairs: list[tuple[bytes | None, bytes | None]]
            if stop <= self.snapshots:
                pairs = [
                    (streams[k].encode(), bytes(block[k * size : (k + 1) * size]))
                    for k in range(self.sent, stop)
                ]
            else:
                pairs = [(streams[k].encode(), None) for k in range(self.sent, stop)]
            producer.send_many(self.topic, pairs, partition=partition)
            self.sent = stop
            if stop == end:
                self._run += 1
        return self.done


def read_latest(
    reader: Reader,
    topic: str,
    partitions: Iterable[int],
    timeout_s: float,
    on_progress: Progress | None = None,
) -> tuple[dict[str, bytes], dict[str, int], int]:
    """The last value of every live key in the partitions, its partition, the tombstones seen.

    ``timeout_s`` bounds a read that makes no progress, not a long one.
    """
    latest: dict[str, bytes] = {}
    where: dict[str, int] = {}
    tombstones = 0
    tps = [(topic, p) for p in partitions]
    for records in reader.read_to_end(tps, timeout_s, on_progress=on_progress):
        for rec in records:
            if rec.key is None:
                continue
            stream = rec.key.decode("utf-8", errors="replace")
            latest.pop(stream, None)  # keep last-written order (recency)
            if rec.value is None:
                tombstones += 1
            else:
                latest[stream] = rec.value
                where[stream] = rec.partition
    return latest, where, tombstones


def read(
    reader_of: Callable[[], Reader],
    topic: str,
    partitions: list[int],
    timeout_s: float,
    on_progress: Progress | None = None,
) -> tuple[list[tuple[str, bytes]], dict[str, int], int]:
    """Read the partitions to their end with a reader of its own (no lock needed).

    Returns (stream, snapshot) pairs oldest written first, each stream's
    partition, and the tombstones seen.
    """
    reader = reader_of()
    try:
        latest, where, tombstones = read_latest(reader, topic, partitions, timeout_s, on_progress)
    finally:
        reader.close()
    return list(latest.items()), where, tombstones


def check_policy(topic: str, configs: dict[str, str] | None) -> None:
    """Refuse a changelog that is not compacted: a ``delete`` policy loses state silently.

    A broker that does not report the policy (or cannot be asked) is only warned about.
    """
    policy = None if configs is None else configs.get("cleanup.policy")
    if policy is None:
        log.warning(
            "cannot tell the cleanup.policy of changelog topic %s (the broker did not report "
            "it): it must include compact, or restores lose state once its records expire",
            topic,
        )
        return
    if "compact" not in {part.strip() for part in policy.split(",")}:
        raise ConfigError(
            f"changelog topic {topic} has cleanup.policy={policy}: it must include compact "
            f"(with delete only, state older than the retention is lost); set "
            f"cleanup.policy=compact on it"
        )


def log_skipped(
    topic: str, partitions: list[int], total: int, skipped: list[tuple[str, str]], left_out: int
) -> None:
    """Say which of ``total`` streams read a restore could not use, and why."""
    if left_out:
        room = total - left_out
        log.warning(
            "changelog %s partitions %s hold %d streams, room for %d: restoring the %d most "
            "recently written",
            topic,
            partitions,
            total,
            room,
            room,
        )
    for stream, why in skipped:
        log.warning("changelog %s: skipping stream %r: %s", topic, stream, why)


def restore(
    reader_of: Callable[[], Reader],
    topic: str,
    partitions: list[int],
    store: StateStore,
    timeout_s: float,
) -> Restored:
    """Read the partitions and load their streams into a bare store (benchmarks, tests).

    The pipeline reads and loads in two steps instead (service.recovery), so
    that the read happens outside the Predictor's lock.
    """
    start = time.perf_counter()
    items, where, tombstones = read(reader_of, topic, partitions, timeout_s)
    loaded, skipped, left_out = store.restore_what_fits(items)
    log_skipped(topic, partitions, len(items), skipped, left_out)
    seconds = time.perf_counter() - start
    return Restored(loaded, len(skipped), tombstones, seconds, {s: where[s] for s in loaded})
