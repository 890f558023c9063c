"""Two tiers of stream state: the slab in memory (hot) and the cold tier on local disk.

Kept by the :class:`~streamcell.core.predictor.Predictor`, under its lock. A
stream is in one tier at a time. Before a micro-batch is applied its streams
are made hot (:meth:`TieredStore.admit`): the cold ones are taken from the
cold tier in one batched read, and if the slab has no room streams outside
the batch are spilled to the cold tier as their snapshot bytes, the loads'
deletions and the spills in one batched write. The first to spill are the
streams on probation, seen in one batch only since they came in (loaded or
new), oldest first; then the least recently used. A spilled stream is
remembered (its id only, a bounded number of them): if it comes back while
remembered, it was seen twice and is not put on probation again (2Q's two
queues and its ghost list, which 2Q keeps for probation's spills only). Spilling forgets nothing and
writes no tombstone, and loading is byte-exact (the snapshot is the
changelog's record), so a stream's state never depends on where it was.
Only the TTL and the cold tier's size bound forget a stream (tombstones,
through the change journal).

Everything that reads or changes state reaches cold streams here too: the
checkpoint's snapshots (:meth:`snapshot_block`), GetStream and Forecast
(:meth:`reading`, without making the stream hot), reset (made hot first),
delete, paging, TTL expiry, a restore (the most recent records hot up to
capacity, the rest cold) and a partition let go.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice, repeat

import numpy as np

from streamcell.core.coldstore import ColdStore, Forgotten
from streamcell.core.journal import ChangeJournal
from streamcell.core.state import StateStore

log = logging.getLogger(__name__)

RESTORE_CHUNK = 4096  # records per cold write during a restore
BOUND_LOG_EVERY_S = 60.0
PROBATION_REBUILD_AT = 4096  # entries held once, below which its table is never rebuilt
GHOSTS_SHARE = 0.5  # ids spilled from probation remembered, per stream of hot capacity (2Q's)


@dataclass
class TierCounts:
    """Running totals since start (kept across model swaps), for the metrics."""

    hits: int = 0  # a batch's streams found hot
    loads: int = 0  # ... found in the cold tier, and loaded
    new: int = 0  # ... in neither tier (a new stream)
    spills: int = 0  # streams written to the cold tier to make room
    forgotten: int = 0  # streams the cold tier's size bound forgot
    expired: int = 0  # cold streams the TTL removed
    cold_seconds: float = 0.0  # time in cold reads and writes


class TieredStore:
    """The hot :class:`StateStore` and a :class:`ColdStore` behind it, as one store."""

    def __init__(
        self,
        hot: StateStore,
        cold: ColdStore,
        journal: ChangeJournal,
        observe: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hot = hot
        self.cold = cold
        self.journal = journal
        # Seconds of one micro-batch's cold-tier work (a histogram, per batch not per event).
        self.observe = observe
        self.counts = TierCounts()
        self._clock = clock
        self._bound_logged_at = -float("inf")
        self._bound_unlogged = 0
        self._scratch: StateStore | None = None
        # Hot streams seen in one batch only since they came in (loaded or new), oldest first.
        self._probation: OrderedDict[str, None] = OrderedDict()
        self._probation_peak = 0  # the most it held since its table was last built
        # Ids spilled from probation, the newest GHOSTS_SHARE x capacity of them.
        self._ghosts: OrderedDict[str, bool] = OrderedDict()  # id -> True

    # ----------------------------------------------------------------- batches
    def admit(self, streams: Sequence[str]) -> list[int | None]:
        """Make distinct ``streams`` (at most the hot capacity) hot, or room for them.

        Returns each stream's slot in the slab, None for a stream in neither tier
        (new: room is made, the step creates it), for ``StateStore.slots``.
        """
        hot, counts, probation = self.hot, self.counts, self._probation
        found = hot.lookup(streams)
        if None not in found:
            if probation:  # seen again: out of probation, spilled after it from now on
                self._seen_again(streams)
            counts.hits += len(streams)
            return found
        start = time.perf_counter()
        where: list[int] = []
        k = -1
        for _ in range(found.count(None)):  # list.index scans in C, a comprehension does not
            k = found.index(None, k + 1)
            where.append(k)
        missing = [streams[k] for k in where]
        batch = set(streams)  # for probation and the victims' choice; _victims adds to it
        if probation:
            self._seen_again(streams, batch)  # the missing too: stale entries, if any
            probation = self._probation
        # Before this batch's spills join them; a dict's pop in C, for each.
        back = list(map(self._ghosts.pop, missing, repeat(False)))
        room = hot.max_streams - len(hot)
        victims = self._victims(len(missing) - room, batch)
        slots = np.array(hot.lookup(victims), dtype=np.int64)
        block = hot.snapshot_block(victims)
        spilled_tags = self.journal.spilled(victims, hot.partition[slots].tolist())
        # One read and one write for the loads and the spills; the bound is enforced
        # after both, so it never forgets one of the streams being loaded.
        values, tags, forgotten = self.cold.exchange(
            missing, victims, block, hot.last_seen[slots], spilled_tags, hot.snapshot_size
        )
        counts.spills += len(victims)
        loaded = [j for j, v in enumerate(values) if v is not None]
        # A loaded stream takes a spilled one's slot as it is: its record rewrites every field.
        swapped = min(len(loaded), len(victims))
        hot.remove(victims[swapped:])
        if loaded:
            try:
                hot.restore(
                    [(missing[j], values[j]) for j in loaded],  # type: ignore[misc]
                    replacing=victims[:swapped],
                )
            except BaseException:  # the spilled streams are cold now, whatever happens here
                hot.remove([s for s in victims[:swapped] if s in hot])
                raise
            self.journal.loaded([missing[j] for j in loaded], [tags[j] for j in loaded])
            for j, slot in zip(loaded, hot.lookup([missing[j] for j in loaded]), strict=True):
                found[where[j]] = slot
        self._forgot(forgotten)
        # Seen once (loaded or new): on probation, the first to spill unless seen again;
        # one spilled from probation not long ago is seen again now: not on probation.
        probation.update((s, None) for s, b in zip(missing, back, strict=True) if not b)
        while len(probation) > hot.max_streams:  # stale entries of streams gone otherwise
            probation.popitem(last=False)
        self._probation_peak = max(self._probation_peak, len(probation))
        counts.hits += len(streams) - len(missing)
        counts.loads += len(loaded)
        counts.new += len(missing) - len(loaded)
        self._timed(start)
        return found

    def _seen_again(self, streams: Sequence[str], batch: set[str] | None = None) -> None:
        """Hot streams seen again leave probation (``batch``: a set of ``streams``).

        When probation holds fewer streams than the batch, its own are looked up in
        the batch rather than the batch's in it. Its table is built anew once it holds
        far fewer streams than it held (a fill's or a restore's newcomers): a dict's
        table never shrinks, and every one of a batch's lookups would miss the CPU's
        caches across the big one.
        """
        probation = self._probation
        if len(probation) < len(streams):
            batch = set(streams) if batch is None else batch
            deque(map(probation.pop, [s for s in probation if s in batch]), maxlen=0)
        else:
            deque(map(probation.pop, streams, repeat(None)), maxlen=0)
        if (
            self._probation_peak > PROBATION_REBUILD_AT
            and len(probation) * 8 < self._probation_peak
        ):
            self._probation = OrderedDict(probation)
            self._probation_peak = len(probation)

    def _victims(self, n: int, batch: set[str]) -> list[str]:
        """``n`` hot streams outside ``batch`` to spill: those on probation first (oldest
        first), then the least recently used. The victims are added to ``batch``.

        A stream seen once (a cold stream's one event, a new stream) leaves before one
        seen again since it came in: a tail of streams each seen once does not push
        the hot set out of the slab (LRU alone would; 2Q does the same).
        """
        if n <= 0:
            return []
        hot, probation = self.hot, self._probation
        victims: list[str] = []
        while probation and len(victims) < n:
            stream, _ = probation.popitem(last=False)
            if stream in hot:  # not one of the batch's: those left probation above
                victims.append(stream)
        if len(victims) < n:  # the batch's streams and those picked stay (the missing: no matter)
            batch.update(victims)
            victims += hot.least_recent(n - len(victims), sparing=batch)
        # All remembered: one from probation that comes back was seen twice; one the
        # LRU spilled had left probation, and put on probation again when it came
        # back it would be the next to spill, and to come back once more.
        ghosts = self._ghosts
        ghosts.update(zip(victims, repeat(True)))
        over = len(ghosts) - max(int(hot.max_streams * GHOSTS_SHARE), 1)
        if over > 0:
            deque(map(ghosts.pop, list(islice(ghosts, over))), maxlen=0)
        return victims

    def _forgot(self, gone: Forgotten) -> None:
        """The size bound forgot streams: tombstones, counted, and said (once a minute)."""
        if not gone.streams:
            return
        self.journal.removed_cold(gone.streams, gone.tags)
        self.counts.forgotten += len(gone.streams)
        self._bound_unlogged += len(gone.streams)
        now = self._clock()
        if now - self._bound_logged_at >= BOUND_LOG_EVERY_S:
            log.warning(
                "the cold tier in %s reached its bound of %d bytes (--state-dir-max-bytes): "
                "forgot the %d streams idle the longest since the last such message (their "
                "changelog records become tombstones); %d forgotten since start",
                self.cold.path,
                self.cold.max_bytes,
                self._bound_unlogged,
                self.counts.forgotten,
            )
            self._bound_logged_at, self._bound_unlogged = now, 0

    def _timed(self, start: float) -> None:
        seconds = time.perf_counter() - start
        self.counts.cold_seconds += seconds
        if self.observe is not None:
            self.observe(seconds)

    # ------------------------------------------------------- the changelog's view
    def __len__(self) -> int:
        return len(self.hot) + len(self.cold)

    @property
    def snapshot_size(self) -> int:
        return self.hot.snapshot_size

    def contains(self, streams: Sequence[str]) -> np.ndarray:
        """Which of ``streams`` either tier holds."""
        out = self.hot.contains(streams)
        rest = np.flatnonzero(~out)
        if len(rest) and len(self.cold):
            out[rest] = self.cold.contains([streams[k] for k in rest.tolist()])
        return out

    def snapshot_block(self, streams: Sequence[str]) -> memoryview:
        """The snapshots of ``streams``, back to back, wherever each one lives.

        The cold tier is checked first: a checkpoint never takes records from a
        directory that was deleted or replaced under this process.
        """
        self.cold.check()
        hot = self.hot
        present = hot.contains(streams)
        if present.all():
            return hot.snapshot_block(streams)
        start = time.perf_counter()
        size = hot.snapshot_size
        out = np.empty((len(streams), size), dtype=np.uint8)
        warm, cold = np.flatnonzero(present), np.flatnonzero(~present)
        if len(warm):
            block = hot.snapshot_block([streams[k] for k in warm.tolist()])
            out[warm] = np.frombuffer(block, dtype=np.uint8).reshape(-1, size)
        names = [streams[k] for k in cold.tolist()]
        values = self.cold.get(names)
        missing = [s for s, v in zip(names, values, strict=True) if v is None]
        if missing:
            raise KeyError(f"cannot snapshot unknown streams: {missing[:5]}")
        out[cold] = np.frombuffer(b"".join(values), dtype=np.uint8).reshape(-1, size)  # type: ignore[arg-type]
        self._timed(start)
        out.flags.writeable = False
        return out.data.cast("B")

    # ---------------------------------------------------------- one stream
    def reading(self, stream: str) -> tuple[StateStore, int] | None:
        """A store and slot holding the stream's state, to read only; None if unknown.

        A cold stream is decoded into a one-stream scratch store: reading it
        makes it hot, spilling nothing.
        """
        slot = self.hot.slot_of(stream)
        if slot is not None:
            return self.hot, slot
        (value,) = self.cold.get([stream])
        if value is None:
            return None
        scratch = self._scratch
        if scratch is None:
            hot = self.hot
            scratch = self._scratch = StateStore(
                hot.num_layers,
                hot.hidden_size,
                hot.output_size,
                hot.input_size,
                initial_capacity=1,
                max_streams=1,
                buffer_size=hot.buffer_size,
                device=hot.device,
                quantile_levels=hot.quantile_levels,
                adaptive=hot.adaptive,
            )
        scratch.clear()
        scratch.restore([(stream, value)])
        slot = scratch.slot_of(stream)
        assert slot is not None
        return scratch, slot

    def make_hot(self, stream: str) -> bool:
        """Bring a cold stream into the slab (to change it); False if neither tier has it."""
        if stream in self.hot:
            return True
        if not self.cold.contains([stream])[0]:
            return False
        self.admit([stream])
        return True

    def delete_cold(self, stream: str) -> int | None:
        """Remove a cold stream: its partition (-1 if unknown), None if it was not there."""
        return self.cold.delete([stream])[0]

    def streams_after(self, after: str, limit: int) -> list[str]:
        """Cold stream ids after ``after``, sorted (the hot ones are the Predictor's)."""
        return self.cold.streams_after(after, limit)

    # ------------------------------------------------------------- lifecycle
    def expire(self, cutoff: float) -> list[str]:
        """Remove cold streams last seen at or before ``cutoff`` (tombstones); returns them."""
        gone = self.cold.older_than(cutoff)
        self.journal.removed_cold(gone.streams, gone.tags)
        self.counts.expired += len(gone.streams)
        return gone.streams

    def drop_tags(self, partitions: set[int]) -> list[str]:
        """Forget the cold streams of these partitions (no tombstones)."""
        return self.cold.drop_tags(partitions)

    def replace_hot(self, hot: StateStore) -> int:
        """A model of another architecture: a new slab, every cold stream gone (tombstones)."""
        gone = self.cold.clear()
        self.journal.removed_cold(gone.streams, gone.tags)
        self.hot, self._scratch = hot, None
        self._probation.clear()
        self._probation_peak = 0
        self._ghosts.clear()
        return len(gone.streams)

    def restore(
        self, items: list[tuple[str, bytes]], partitions: dict[str, int]
    ) -> tuple[list[str], list[str], list[tuple[str, str]]]:
        """Load changelog records (oldest first): the most recent hot up to capacity, the
        rest cold. Returns the streams made hot, those put cold, and (stream, why) skipped."""
        hot = self.hot
        latest: dict[str, bytes] = {}  # the last record of a stream wins, in written order
        skipped: list[tuple[str, str]] = []
        for stream, value in items:
            if isinstance(value, bytes):
                value = hot.as_current(value)  # a format-1 record of the same fields
            why = hot.refusal(stream, value)
            if why is None:
                latest.pop(stream, None)
                latest[stream] = value
            else:
                skipped.append((stream, why))
        good = list(latest.items())
        room = max(hot.max_streams - len(hot), 0)
        split = max(len(good) - room, 0)
        to_cold, to_hot = good[:split], good[split:]
        # A stream is in one tier at a time: an older copy in the other one goes.
        if to_hot and len(self.cold):
            self.cold.delete([s for s, _ in to_hot])
        if to_hot:
            hot.restore(to_hot)
        if to_cold:
            for stream, _ in to_cold:
                if stream in hot:
                    hot.delete(stream)
                    self.journal.home.pop(stream, None)
            if len(self.cold):
                self.cold.delete([s for s, _ in to_cold])
            for k in range(0, len(to_cold), RESTORE_CHUNK):
                chunk = to_cold[k : k + RESTORE_CHUNK]
                names = [s for s, _ in chunk]
                block = b"".join(v for _, v in chunk)
                self._forgot(
                    self.cold.put(
                        names,
                        block,
                        hot.last_seen_of(block),
                        [partitions.get(s, -1) for s in names],
                        size=hot.snapshot_size,
                        known_absent=True,
                    )
                )
        return [s for s, _ in to_hot], [s for s, _ in to_cold], skipped
