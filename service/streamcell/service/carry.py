"""A full poll's repeated streams wait for the next poll instead of opening more LSTM waves.

The Predictor steps a stream's second event in a poll in a second wave, its
third in a third, and each wave pays the step's fixed cost (some sixty torch
calls, the padding to the blocked kernel) however few rows it holds: a full
poll over many streams is one large wave and one or two of a few rows. When
the loop is behind its input (the poll came back full), such a record is
carried over: it goes first into the next poll's batch, where it is its
stream's first event, and its partition's position stays at its offset until
it is processed, so no commit covers it before then.

Order is kept per stream: a poll processes a stream's first record in it
(carried records come before the new ones), the rest wait, one a poll. The
carry is bounded (a burst of a few streams is stepped in waves as before), so
that the polls after it keep room for new records. A partition revoked or
assigned again meanwhile drops its carried records; they are read again from
the committed offset, where the events after them that were processed are
skipped as replays (their streams' state reflects their offsets), the rule
restarts already rely on.
"""

from __future__ import annotations

from itertools import compress
from operator import attrgetter

import numpy as np

from streamcell.service.kafka import Record

_KEY, _PARTITION, _OFFSET = attrgetter("key"), attrgetter("partition"), attrgetter("offset")


def split(records: list[Record], limit: int) -> tuple[list[Record], list[Record]]:
    """(now, later) of ``records``: each key's first record now, the others later.

    Both keep the records' order. More than ``limit`` to carry (a burst of
    a few streams) and all go now: a carry that large would leave the next
    polls little room for new records.
    """
    n = len(records)
    first: dict[bytes | None, int] = {}
    group = np.fromiter(map(first.setdefault, map(_KEY, records), range(n)), np.int64, n)
    if len(first) == n or n - len(first) > limit:
        return records, []
    first_of_key = group == np.arange(n)
    return (
        list(compress(records, first_of_key.tolist())),
        list(compress(records, (~first_of_key).tolist())),
    )


def first_offsets(records: list[Record]) -> dict[int, int]:
    """Partition -> the lowest offset among ``records`` (in order per partition)."""
    backwards = records[::-1]  # the last write wins: each partition's first record
    return dict(zip(map(_PARTITION, backwards), map(_OFFSET, backwards), strict=True))


class Carry:
    """The records carried over to the next poll, with what their partitions had read.

    ``read_to``: partition -> the offset after the newest record read from it
    (processed or carried), which its position returns to once the carried
    records are processed; the generation each partition had tells a
    partition taken away, or assigned again, meanwhile.
    """

    def __init__(self) -> None:
        self.records: list[Record] = []
        self._read_to: dict[int, int] = {}
        self._generations: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.records)

    def hold(
        self, records: list[Record], positions: dict[int, int], generations: dict[int, int]
    ) -> None:
        """Carry ``records`` over; ``positions``: where the processed records reached."""
        self.records = records
        newest = dict(zip(map(_PARTITION, records), map(_OFFSET, records), strict=True))
        self._read_to = {p: max(o + 1, positions.get(p, 0)) for p, o in newest.items()}
        self._generations = {p: generations.get(p, -1) for p in newest}

    def take(
        self, assigned: set[int], generations: dict[int, int]
    ) -> tuple[list[Record], dict[int, int]]:
        """The held records of partitions still held in the same generation, and their
        partitions' ``read_to``; empties the carry."""
        records, read_to = self.records, self._read_to
        self.records, self._read_to = [], {}
        if not records:
            return records, read_to
        gone = {
            p
            for p, g in self._generations.items()
            if p not in assigned or generations.get(p, -1) != g
        }
        if gone:
            records = [r for r in records if r.partition not in gone]
            read_to = {p: o for p, o in read_to.items() if p not in gone}
        return records, read_to
