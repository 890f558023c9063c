"""The state changelog: per-stream snapshots on a compacted topic, and their restore.

Record layout: key = the stream id (UTF-8), value = ``StateStore.snapshot``
bytes (which carry h, c, the last prediction and the input partition, offset
and seq the state reflects), or None (a tombstone) for a stream that was
deleted, evicted or expired. A stream's records go to the changelog partition
with the number of its input partition, so a replica that is assigned input
partition p restores exactly changelog partition p.

Each record carries, in the ``streamcell-generation`` header, the consumer
group generation in which its writer held the partition. A member evicted
from the group (a zombie: frozen past its session timeout) can still send
records before it learns so; they carry its old generation, so a restore
keeps per stream the record with the highest (generation, offset), a
tombstone counting at its generation, rather than the last one. Records
without the header (older writers) count as generation -1. A generation
above the reader's own is taken as the reader's (the group was recreated and
counts from 0 again, or the record is hostile): such a record can then not
outrank every later one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from streamcell.core.errors import ConfigError
from streamcell.core.state import StateStore
from streamcell.core.tiers import TieredStore

if TYPE_CHECKING:
    from streamcell.service.kafka import Producer, Progress, Reader

log = logging.getLogger(__name__)

GENERATION_HEADER = "streamcell-generation"
NO_GENERATION = -1  # a record written before records said their generation


# Committed with each input offset: how far the changelog partition of the same
# number reached (at least) when the offset was committed, so that a restore can
# tell a changelog truncated or recreated since.
END_METADATA = "streamcell-changelog-end="


def end_metadata(end: int) -> str:
    return f"{END_METADATA}{end}"


def end_of(metadata: str) -> int | None:
    """The changelog end a commit's metadata recorded; None if it recorded none."""
    if not metadata.startswith(END_METADATA):
        return None
    try:
        return int(metadata[len(END_METADATA) :])
    except ValueError:
        return None


def behind(
    topic: str, partition: int, end: int, committed: int | None, recorded: int | None
) -> str | None:
    """Why changelog partition ``partition`` (read to ``end``) is behind the group's commit.

    ``recorded``: the changelog end committed with the input offset
    ``committed``. Below it, records that checkpoint counted on are gone (the
    topic was truncated or recreated); without it, an empty changelog under a
    committed offset says the same, as far as can be told.
    """
    if recorded is not None and end < recorded:
        found = f"ends at offset {end}, below the {recorded} it had reached"
    elif recorded is None and committed and end == 0:
        found = "is empty"
    else:
        return None
    return (
        f"changelog {topic} partition {partition} {found} when input offset {committed} "
        f"was committed: it was truncated or recreated since, and the state of streams "
        f"whose records are gone is lost (they start again from empty state at offset "
        f"{committed}); to rebuild it, reset the group's offsets of partition {partition} "
        f"to the earliest the input still holds"
    )


def generation_header(generation: int) -> list[tuple[str, bytes]]:
    return [(GENERATION_HEADER, str(generation).encode())]


def generation_of(headers: tuple[tuple[str, bytes], ...]) -> int:
    """The generation a record says wrote it; NO_GENERATION without (or with a bad) header."""
    for key, value in headers:
        if key == GENERATION_HEADER:
            try:
                return int(value)
            except (TypeError, ValueError):
                return NO_GENERATION
    return NO_GENERATION


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
        self,
        topic: str,
        store: StateStore | TieredStore,
        changed: dict[str, int],
        generations: Mapping[int, int] | None = None,
    ) -> None:
        """``generations``: partition -> the group generation it is held in (stamped on
        its records; NO_GENERATION where missing)."""
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
        held = generations or {}
        self.generations = {p: held.get(p, NO_GENERATION) for _, p in self._runs}
        self.sent = 0
        self.sent_to: dict[int, int] = {}  # partition -> records sent to it
        self.dropped = 0  # records of partitions no longer held, never sent
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
        held: Callable[[int, int], bool] | None = None,
    ) -> bool:
        """Send in order up to record ``until`` (all if None), then on until ``deadline``.

        ``held(partition, generation)``, asked before every send: whether this
        member still holds the partition in that generation; the records of a
        partition it lost are dropped, never sent. Returns True once every
        record is sent or dropped.
        """
        total = len(self.streams)
        floor = total if until is None else min(until, total)
        streams, block, size = self.streams, self._block, self._size
        while self.sent < total:
            if self.sent >= floor and (deadline is None or clock() >= deadline):
                break
            end, partition = self._runs[self._run]
            generation = self.generations[partition]
            if held is not None and not held(partition, generation):
                log.warning(
                    "changelog %s: not sending %d records of partition %d (generation %d): "
                    "this member no longer holds it",
                    self.topic, end - self.sent, partition, generation,
                )  # fmt: skip
                self.dropped += end - self.sent
                self.sent = end
                self._run += 1
                continue
            stop = min(end, self.sent + self.CHUNK)
            pairs: list[tuple[bytes | None, bytes | None]]
            if stop <= self.snapshots:
                pairs = [
                    (streams[k].encode(), bytes(block[k * size : (k + 1) * size]))
                    for k in range(self.sent, stop)
                ]
            else:
                pairs = [(streams[k].encode(), None) for k in range(self.sent, stop)]
            producer.send_many(
                self.topic, pairs, headers=generation_header(generation), partition=partition
            )
            self.sent_to[partition] = self.sent_to.get(partition, 0) + len(pairs)
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
    max_generation: int | None = None,
    ends: dict[int, int] | None = None,
) -> tuple[dict[str, bytes], dict[str, int], int]:
    """The winning value of every live key in the partitions, its partition, the tombstones.

    A key's winner is its record with the highest (generation, offset), a
    tombstone counting at its generation (see the module note); generations
    above ``max_generation`` (the reader's own) count as ``max_generation``.
    ``ends`` (filled if given): partition -> its last record's offset + 1.
    ``timeout_s`` bounds a read that makes no progress, not a long one.
    """
    latest: dict[str, bytes] = {}
    where: dict[str, int] = {}
    best: dict[str, int] = {}  # stream -> generation of its winning record so far
    tombstones = stale = clamped = 0
    tps = [(topic, p) for p in partitions]
    for records in reader.read_to_end(tps, timeout_s, on_progress=on_progress):
        if ends is not None and records:
            for rec in records:  # in offset order per partition: the last one stays
                ends[rec.partition] = rec.offset + 1
        for rec in records:
            if rec.key is None:
                continue
            stream = rec.key.decode("utf-8", errors="replace")
            generation = generation_of(rec.headers) if rec.headers else NO_GENERATION
            if max_generation is not None and generation > max_generation:
                generation = max_generation
                clamped += 1
            # Read in offset order per partition: a later record of the same
            # or a newer generation wins; one of an older generation (a zombie's) loses.
            if generation < best.get(stream, NO_GENERATION):
                stale += 1
                continue
            best[stream] = generation
            latest.pop(stream, None)  # keep last-written order (recency)
            if rec.value is None:
                tombstones += 1
            else:
                latest[stream] = rec.value
                where[stream] = rec.partition
    if stale:
        log.warning(
            "changelog %s partitions %s: %d records written by an older generation after a "
            "newer one (a member evicted from the group) were passed over",
            topic, sorted(p for _, p in tps), stale,
        )  # fmt: skip
    if clamped:
        log.warning(
            "changelog %s partitions %s: %d records claim a generation above this member's "
            "(%d): the group was recreated, or the records are hostile; counted as %d",
            topic, sorted(p for _, p in tps), clamped, max_generation, max_generation,
        )  # fmt: skip
    return latest, where, tombstones


def read(
    reader_of: Callable[[], Reader],
    topic: str,
    partitions: list[int],
    timeout_s: float,
    on_progress: Progress | None = None,
    max_generation: int | None = None,
    ends: dict[int, int] | None = None,
) -> tuple[list[tuple[str, bytes]], dict[str, int], int]:
    """Read the partitions to their end with a reader of its own (no lock needed).

    Returns (stream, snapshot) pairs oldest written first, each stream's
    partition, and the tombstones seen (``ends`` as in :func:`read_latest`).
    """
    reader = reader_of()
    try:
        latest, where, tombstones = read_latest(
            reader, topic, partitions, timeout_s, on_progress, max_generation, ends
        )
    finally:
        reader.close()
    return list(latest.items()), where, tombstones


Positions = Callable[[Sequence[bytes]], tuple[np.ndarray, np.ndarray]]
"""``StateStore.positions``: the (input partition, offset) each snapshot reflects."""


def refuse_ahead(
    reader_of: Callable[[], Reader],
    input_topic: str,
    items: list[tuple[str, bytes]],
    where: dict[str, int],
    positions: Positions,
    timeout_s: float,
) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
    """Refuse snapshots that claim an input offset at or past their input partition's end.

    No replica writes one (a snapshot reflects events it read); loaded, it
    would make its stream skip every event up to that offset as already
    applied: a hostile or corrupt record would blackhole the stream. Refused,
    the stream starts again from empty state. Returns (items kept, (stream,
    why) refused).
    """
    if not items:
        return items, []
    partition, offset = positions([value for _, value in items])
    home = np.fromiter(map(where.__getitem__, (s for s, _ in items)), np.int64, len(items))
    reader = reader_of()
    try:
        ends = reader.ends([(input_topic, int(p)) for p in np.unique(home)], timeout_s)
    finally:
        reader.close()
    end = np.fromiter((ends[(input_topic, int(p))] for p in home), np.int64, len(items))
    bad = (partition == home) & (offset >= end)
    if not bad.any():
        return items, []
    refused = [
        (
            items[k][0],
            f"it claims input offset {offset[k]} of {input_topic} partition {home[k]}, which "
            f"ends at {end[k]} (a hostile or corrupt record): the stream starts again empty",
        )
        for k in np.flatnonzero(bad).tolist()
    ]
    return [item for item, b in zip(items, bad.tolist(), strict=True) if not b], refused


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
