"""A worker's streams on its local disk, read back one at a time as the loop asks for them.

A Ray Train worker of a Ray Dataset run streams its shard in once, prepares
each stream and appends its arrays here; the training loop and validation
then index it like the tuple of the in-memory path. Only an index (offsets
and lengths) stays in memory, so a worker's resident memory follows the
batch size, not its shard. Reads go through ``os.pread``, not a memory map:
the pages the kernel caches are not the process's own. The streams are kept
sorted by id, so a run's order does not depend on how the dataset was
split into blocks.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np

from streamcell.trainer.prepare import StreamArrays


@dataclass(frozen=True)
class _Entry:
    stream: str
    offset: int
    rows: int  # len(y)
    n_train: int
    weighted: bool


class StreamStore(Sequence[StreamArrays]):
    """Append-only until :meth:`seal`; then a read-only Sequence of StreamArrays."""

    def __init__(self, directory: str | None = None) -> None:
        fd, self.path = tempfile.mkstemp(prefix="streamcell-streams-", dir=directory)
        self._fd = fd
        self._end = 0
        self._entries: list[_Entry] = []
        self._shape: tuple[int, int] | None = None  # (inputs F, targets O)

    def append(self, s: StreamArrays) -> None:
        f, o = s.u.shape[1], s.z.shape[1]
        if self._shape is None:
            self._shape = (f, o)
        parts = [s.u, s.z, s.y, s.target_scale] + ([s.weight] if s.weight is not None else [])
        blob = b"".join(np.ascontiguousarray(a, dtype="<f4").tobytes() for a in parts)
        os.pwrite(self._fd, blob, self._end)
        self._entries.append(_Entry(s.stream, self._end, len(s.y), s.n_train, s.weight is not None))
        self._end += len(blob)

    def seal(self) -> StreamStore:
        self._entries.sort(key=lambda e: e.stream)
        return self

    def __len__(self) -> int:
        return len(self._entries)

    @overload
    def __getitem__(self, index: int) -> StreamArrays: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[StreamArrays]: ...

    def __getitem__(self, index: int | slice) -> StreamArrays | Sequence[StreamArrays]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        e = self._entries[index]
        assert self._shape is not None
        f, o = self._shape
        t = e.rows
        sizes = [(t - 1) * f, (t - 1) * o, t * o, (t - 1) * o] + ([t - 1] if e.weighted else [])
        raw = np.frombuffer(os.pread(self._fd, 4 * sum(sizes), e.offset), "<f4")
        arrays = []
        at = 0
        for n in sizes:
            arrays.append(raw[at : at + n])
            at += n
        u = arrays[0].reshape(t - 1, f)
        z = arrays[1].reshape(t - 1, o)
        y = arrays[2].reshape(t, o)
        ts = arrays[3].reshape(t - 1, o)
        weight = arrays[4] if e.weighted else None
        return StreamArrays(e.stream, u, z, y, ts, e.n_train, weight)

    def __iter__(self) -> Iterator[StreamArrays]:
        for i in range(len(self)):
            yield self[i]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            os.unlink(self.path)

    def __enter__(self) -> StreamStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
