"""The change journal: which streams changed since the last checkpoint, and their partitions.

Kept by the :class:`~streamcell.core.predictor.Predictor`, under its lock,
once a front end turns it on (:meth:`ChangeJournal.track`): every stream a
call changes is recorded with the partition whose changelog holds it, and
the checkpointer takes them all at once. A stream taken while it is not in
the store was removed (a changelog tombstone). Streams whose partition is
unknown (changes made outside Kafka) are placed by the front end's
:data:`Placement`, which may also leave them out (not this replica's).
"""

from __future__ import annotations

from collections.abc import Callable

from streamcell.core.events import NO_POSITION

# Given a stream and the partition its state is known to belong to (None if
# none), the partition to journal a change under, or None to leave it out.
Placement = Callable[[str, int | None], int | None]


class ChangeJournal:
    """Changed streams -> partition, and the partition of every stream in the store."""

    def __init__(self) -> None:
        self.place: Placement | None = None  # None: not tracking, nothing is recorded
        self.home: dict[str, int] = {}  # stream in the store -> its partition
        self.changed: dict[str, int] = {}  # changed since the last take -> partition

    def track(self, place: Placement) -> None:
        self.place = place

    def take(self) -> dict[str, int]:
        changed, self.changed = self.changed, {}
        return changed

    def stepped(self, touched: dict[str, int], known: Callable[[str], int | None]) -> None:
        """Streams a batch stepped -> the event's partition (NO_POSITION: not from Kafka)."""
        place = self.place
        if place is None:
            return
        if NO_POSITION in touched.values():  # events from outside Kafka: place them
            placed: dict[str, int] = {}
            for stream, part in touched.items():
                where = place(stream, known(stream)) if part == NO_POSITION else part
                if where is not None:
                    placed[stream] = where
            touched = placed
        self.home.update(touched)
        self.changed.update(touched)

    def edited(self, stream: str, known: int | None, present: bool) -> None:
        """One stream reset (``present``) or deleted outside Kafka."""
        if self.place is None:
            return
        part = self.place(stream, known)
        if part is None:
            return
        self.changed[stream] = part
        if present:
            self.home[stream] = part
        else:
            self.home.pop(stream, None)

    def removed(self, streams: list[str]) -> None:
        """Streams the store dropped (evicted, expired): tombstones where the partition is known."""
        if self.place is None:
            return
        home, changed = self.home, self.changed
        for stream in streams:
            part = home.pop(stream, None)
            if part is not None:
                changed[stream] = part

    def spilled(self, streams: list[str], partitions: list[int]) -> list[int]:
        """Streams leaving memory for the cold tier: their partitions (``partitions`` where
        none is journaled, as the store recorded them), kept by the tier from now on."""
        home = self.home
        return [home.pop(s, p) for s, p in zip(streams, partitions, strict=True)]

    def loaded(self, streams: list[str], partitions: list[int]) -> None:
        """Streams back from the cold tier, with the partitions it kept for them."""
        if self.place is not None:
            self.home.update((s, p) for s, p in zip(streams, partitions, strict=True) if p >= 0)

    def removed_cold(self, streams: list[str], partitions: list[int]) -> None:
        """Streams the cold tier forgot (TTL, size bound): tombstones where partitions are known."""
        if self.place is None:
            return
        self.changed.update((s, p) for s, p in zip(streams, partitions, strict=True) if p >= 0)

    def removed_all(self) -> None:
        """Every stream's state is gone (an incompatible model): tombstones for all."""
        self.changed.update(self.home)
        self.home.clear()

    def restored(self, streams: list[str], partitions: dict[str, int]) -> None:
        """Streams loaded from the changelog: their partition, and nothing to write back."""
        if self.place is not None:
            self.home.update((s, partitions[s]) for s in streams)

    def drop_all(self) -> None:
        """Every stream's state is dropped here and comes back from the changelog: no records."""
        self.home.clear()
        self.changed.clear()

    def forget(self, partitions: set[int]) -> list[str]:
        """The streams of these partitions, forgotten here (no tombstones); the caller deletes."""
        home, changed = self.home, self.changed
        gone = [s for s, p in home.items() if p in partitions]
        for stream in gone:
            del home[stream]
        # Also the changes of streams no longer in memory (in the cold tier, or
        # removed): no record of a partition let go is written from here.
        for stream in [s for s, p in changed.items() if p in partitions]:
            del changed[stream]
        return gone
