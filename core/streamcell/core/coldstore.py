"""The cold tier: streams' snapshot bytes on local disk, batched, with a size bound.

One job: get, put and delete the snapshots of many streams at once in an
embedded RocksDB (``rocksdict``; docs/ARCHITECTURE.md says why not LMDB),
and forget the oldest when the live records pass a size bound. A value is a
stream's changelog snapshot byte for byte (``StateStore.snapshot``) behind a
small header of the store's own: whatever a snapshot carries, the cold tier
carries, unread. It is a cache of the
changelog, never its substitute: its write-ahead log is off, a store left by
an earlier process is not trusted (it may be ahead of the changelog, or
behind it) but wiped at open, and the service rebuilds it from the
changelog on start. A lock file keeps a second process out of the directory.

Keys, two prefixes in one database (layout 3), and a marker:

- ``v`` + stream: a 12-byte header (the age key, 8 bytes, and the tag, an
  int32), then the snapshot, byte for byte;
- ``i`` + tag + age key + stream: the snapshot's length. The tag is the
  caller's (the stream's partition). A tag's streams are a prefix, oldest
  first: the TTL and the size bound read the front of each tag's prefix
  (merged over the tags, which the store counts in memory), and letting a
  partition go reads that partition's own streams, not the whole tier. One
  index record per stream, not one per order: a spill writes two records
  and a load deletes two;
- ``m``: the layout's name. A directory an earlier version left (layout 1
  had no marker, layout 2 a third record per stream) is told apart and said
  so before it is wiped.

A load reads one key per stream (its header says which index key to delete).

Spills are written behind: a micro-batch's spills wait in memory, as the
records they will be written as, up to ``pending_bytes`` of them, the
oldest written first once there are more (in the write that deletes the
batch's loads). A stream that comes back before its spill is written is
taken from memory: no read, no write, no deletion. A stream is in memory
or on disk, never both, and the counts (streams, bytes, tags) take it in
when it is spilled, so the size bound sees what it always saw. The point
methods (get, contains, take, delete, put) look in memory first; every
scan of the disk (the TTL, the size bound, a partition let go, clearing,
paging, compacting) writes what is pending first; closing drops it.
Nothing is lost that was kept: the store is a cache, wiped at open and
rebuilt from the changelog, so the spills still in memory when a process
dies are what the store without its log loses anyway.

Pure of the service: rocksdict, numpy and the standard library.
"""

from __future__ import annotations

import fcntl
import heapq
import logging
import os
import shutil
import struct
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import numpy as np

from streamcell.core.errors import ColdTierError, ConfigError

log = logging.getLogger(__name__)

LOCK_NAME = "streamcell.lock"
DB_NAME = "cold"
BLOCK_CACHE_BYTES = 32 << 20
PENDING_BYTES = 16 << 20  # spills held in memory before they are written (write-behind)
_HEAD = struct.Struct(">8si")  # a value's header: age key, tag
_TAG = struct.Struct(">i")  # the tag in an index key
_LENGTH = struct.Struct(">I")  # an index entry's value: the snapshot's length
_INDEX_HEAD = 1 + _TAG.size + 8  # an index key before its stream: "i", tag, age key
LAYOUT_KEY = b"m"
LAYOUT = b"streamcell cold tier layout 3"
_AGE_FLIP = np.uint64(1 << 63)
# What open() found in the directory (the label of streamcell_cold_tier_rebuilds_total);
# "layout": an earlier version's store, of another key layout.
FOUND_EMPTY, FOUND_PREVIOUS, FOUND_CORRUPT = "empty", "previous", "corrupt"
FOUND_OLD_LAYOUT = "layout"
FOUND_LOST = "lost"  # failed while in use (deleted, replaced, a storage error): rebuilt


def age_keys(ages: np.ndarray) -> list[bytes]:
    """Float64 ages as 8-byte keys whose byte order is their numeric order."""
    bits = np.asarray(ages, dtype=">f8").view(">u8").copy()
    negative = (bits & _AGE_FLIP) != 0
    bits[negative] = ~bits[negative]
    bits[~negative] |= _AGE_FLIP
    raw = bits.astype(">u8").tobytes()
    return [raw[k : k + 8] for k in range(0, len(raw), 8)]


@dataclass(frozen=True)
class Forgotten:
    """Streams the cold tier dropped (size bound, TTL), with their tags, oldest first."""

    streams: list[str]
    tags: list[int]


class ColdStore:
    """Snapshot bytes by stream id in RocksDB under ``path``, at most ``max_bytes`` of them.

    ``max_bytes`` bounds the live records' bytes (keys, values and the index),
    which the database's files approach after compaction. ``None``: no bound.
    ``pending_bytes``: the spills' bytes (counted as ``max_bytes`` counts them)
    kept in memory before they are written; 0 writes each batch's at once.
    Every method takes and returns whole batches; a storage failure raises
    :class:`ColdTierError` (the service rebuilds the tier from the changelog,
    as a restart would, in the running process).
    """

    def __init__(
        self,
        path: Path | str,
        max_bytes: int | None = None,
        pending_bytes: int = PENDING_BYTES,
    ) -> None:
        if max_bytes is not None and max_bytes < 1:
            raise ConfigError(f"the cold tier's size bound must be positive, got {max_bytes}")
        if pending_bytes < 0:
            raise ConfigError(
                f"the cold tier's pending bytes must be 0 or more, got {pending_bytes}"
            )
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.pending_bytes = pending_bytes
        # Spills not written yet, oldest first: stream key -> (its value record, as it
        # will be written: header, then snapshot; its tag). Counted in count and bytes.
        self._pending: OrderedDict[bytes, tuple[bytes, int]] = OrderedDict()
        self._pending_size = 0  # their bytes, as _record_bytes counts them
        self.count = 0  # live streams
        self.bytes = 0  # live records' bytes, what max_bytes bounds
        # Live streams by tag: which index prefixes the TTL and the bound merge.
        # Exact because the store starts empty (an earlier process's is wiped).
        self._tags: Counter[int] = Counter()
        self._lock_fd = self._take_lock()
        try:
            self.found = self._clear_previous()
            self._db = self._open()
        except BaseException:
            os.close(self._lock_fd)
            raise

    # ----------------------------------------------------------------- opening
    def _take_lock(self) -> int:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot use state dir {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"state dir {self.path} is in use by another process (pid {holder}); "
                "give each replica its own --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_ino = os.fstat(fd).st_ino
        return fd

    def _clear_previous(self) -> str:
        """Wipe what an earlier process left: its cold tier may disagree with the changelog."""
        db = self.path / DB_NAME
        if not db.exists():
            return FOUND_EMPTY
        layout = _layout(db)
        if layout is None:
            found = FOUND_CORRUPT
        elif layout == LAYOUT:
            found = FOUND_PREVIOUS
        else:
            found = FOUND_OLD_LAYOUT
            log.warning(
                "the cold tier left in %s has another layout (%r, this version writes %r): "
                "removed; it is rebuilt from the changelog",
                db,
                layout.decode(errors="replace") or "layout 1, unmarked",
                LAYOUT.decode(),
            )
        shutil.rmtree(db)
        return found

    def _open(self):
        from rocksdict import (
            BlockBasedOptions,
            Cache,
            DBCompressionType,
            Options,
            Rdict,
            ReadOptions,
            WriteBatch,
            WriteOptions,
        )

        self._write_batch = WriteBatch  # imported once, not per batch

        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        # Snapshots are mostly float32 state, which barely compresses: save the CPU.
        opts.set_compression_type(DBCompressionType.none())
        # Bloom filters spare a load's gets the files that lack its keys; the block
        # cache is bounded, so resident memory does not grow with the cold streams.
        table = BlockBasedOptions()
        table.set_bloom_filter(10, False)
        table.set_block_cache(Cache(BLOCK_CACHE_BYTES))
        opts.set_block_based_table_factory(table)
        # A load's keys are mostly in the files, not among the recent writes: a bloom
        # filter on the memtable spares each get its search of the memtable.
        opts.set_memtable_prefix_bloom_ratio(0.1)
        opts.set_memtable_whole_key_filtering(True)
        opts.set_keep_log_file_num(2)
        try:
            db = Rdict(str(self.path / DB_NAME), opts)
        except Exception as exc:
            raise ColdTierError(f"cannot open the cold tier in {self.path}: {exc}") from exc
        # The changelog is the durable copy; this store's own log would add a
        # write per spill and still not be trusted after a crash.
        self._write_opts = WriteOptions()
        self._write_opts.disable_wal = True
        # A load reads a stream's block once and deletes the stream: caching the block
        # would only push out others, and each read would pay for the insert and an
        # eviction. Set as the database's own: rocksdict's multi-get ignores its
        # read_opt argument. (Checksums stay on: a bad block is an error.)
        self._read_opts = ReadOptions()
        self._read_opts.fill_cache(False)
        db.set_read_options(self._read_opts)
        try:
            # On disk at once: the records go without a log, so a killed process would
            # leave the marker only in memory, and the next start would see layout 1.
            db.put(LAYOUT_KEY, LAYOUT)
            db.flush()
        except Exception as exc:
            raise ColdTierError(f"cannot write the cold tier in {self.path}: {exc}") from exc
        return db

    def close(self) -> None:
        """Close; a store that cannot flush (its directory gone) is left as it is: a cache.

        Pending spills are not written: the next open wipes the directory anyway.
        """
        try:
            self._db.close()
        except Exception as exc:
            log.warning(
                "closing the cold tier in %s failed (%s); nothing of it is kept", self.path, exc
            )
        finally:
            os.close(self._lock_fd)

    def compact(self) -> None:
        """Flush and compact everything now, rather than in the background (after a bulk fill)."""
        self.flush()
        try:
            self._db.flush()
            self._db.compact_range(None, None)
        except Exception as exc:
            raise ColdTierError(f"compacting the cold tier in {self.path} failed: {exc}") from exc

    def check(self) -> None:
        """Raise ColdTierError if the directory was deleted or replaced under this process."""
        try:
            same = os.stat(self.path / LOCK_NAME).st_ino == self._lock_ino
        except OSError:
            same = False
        if not same or not (self.path / DB_NAME).is_dir():
            raise ColdTierError(
                f"the cold tier in {self.path} was deleted or replaced while in use; "
                "it must be rebuilt from the changelog"
            )

    # -------------------------------------------------------------- batches
    def __len__(self) -> int:
        return self.count

    @property
    def pending(self) -> int:
        """Spilled streams held in memory, not written yet."""
        return len(self._pending)

    def flush(self) -> None:
        """Write every pending spill now, in one batch."""
        if self._pending:
            batch = self._batch()
            self._flush(batch, 0)
            self._write(batch)

    def get(self, streams: Sequence[str]) -> list[bytes | None]:
        """The snapshots of ``streams`` (None where absent), one batched read."""
        head = _HEAD.size
        keys = [s.encode() for s in streams]
        records, rest = self._pending_records(keys, pop=False)
        for j, stored in zip(rest, self._get([b"v" + keys[j] for j in rest]), strict=True):
            records[j] = stored
        return [None if v is None else v[head:] for v in records]

    def take(self, streams: Sequence[str]) -> tuple[list[bytes | None], list[int]]:
        """Get and remove: the snapshots (None where absent) and tags (-1 there).

        One batched read and one batched write.
        """
        batch = self._batch()
        values, tags = self._take(batch, streams)
        if not batch.is_empty():
            self._write(batch)
        return values, tags

    def exchange(
        self,
        taken: Sequence[str],
        spilled: Sequence[str],
        block: bytes | memoryview,
        ages: np.ndarray,
        tags: Sequence[int] | np.ndarray,
        size: int,
    ) -> tuple[list[bytes | None], list[int], Forgotten]:
        """:meth:`take` ``taken`` and :meth:`put` ``spilled`` (none of them here) at once:
        one batched read and one batched write for a micro-batch's loads and spills.

        The bound is enforced after both, so it never forgets one of ``taken``.
        """
        batch = self._batch()
        values, found_tags = self._take(batch, taken)
        self._stage(spilled, self._pieces(block, size, len(spilled)), ages, tags)
        if self._pending_size > self.pending_bytes:  # the oldest spills, with the deletions
            self._flush(batch, self.pending_bytes)
        if not batch.is_empty():
            self._write(batch)
        return values, found_tags, self._enforce_bound()

    def put(
        self,
        streams: Sequence[str],
        values: Sequence[bytes] | bytes | memoryview,
        ages: np.ndarray,
        tags: Sequence[int] | np.ndarray,
        size: int | None = None,
        known_absent: bool = False,
    ) -> Forgotten:
        """Store snapshots (replacing any) with their ages and tags; returns what the bound forgot.

        ``values``: one bytes per stream, or one block of ``size`` bytes each.
        ``known_absent``: the caller knows none of ``streams`` is here (spared a read).
        """
        if not streams:
            return Forgotten([], [])
        pieces: Sequence[bytes | memoryview]
        if isinstance(values, bytes | memoryview):
            if size is None:
                raise ValueError("a block of values needs their size")
            pieces = self._pieces(values, size, len(streams))
        else:
            pieces = values
        batch = self._batch()
        if not (known_absent or not self.count):
            keys = [s.encode() for s in streams]
            _, rest = self._pending_records(keys, pop=True)  # replaced: forgotten here
            rest_keys = [keys[j] for j in rest]
            for key, stored in zip(
                rest_keys, self._get([b"v" + k for k in rest_keys]), strict=True
            ):
                if stored is not None:
                    self._delete(batch, key, stored)
        self._add(batch, streams, pieces, ages, tags)
        self._write(batch)
        return self._enforce_bound()

    def delete(self, streams: Sequence[str]) -> list[int | None]:
        """Remove streams; each one's tag, or None where it was not here."""
        keys = [s.encode() for s in streams]
        records, rest = self._pending_records(keys, pop=True)
        out: list[int | None] = [None if r is None else _HEAD.unpack_from(r)[1] for r in records]
        batch = self._batch()
        for j, stored in zip(rest, self._get([b"v" + keys[j] for j in rest]), strict=True):
            if stored is not None:
                out[j] = self._delete(batch, keys[j], stored)
        if not batch.is_empty():
            self._write(batch)
        return out

    def contains(self, streams: Sequence[str]) -> np.ndarray:
        keys = [s.encode() for s in streams]
        records, rest = self._pending_records(keys, pop=False)
        for j, stored in zip(rest, self._get([b"v" + keys[j] for j in rest]), strict=True):
            records[j] = stored
        return np.fromiter((v is not None for v in records), np.bool_, len(records))

    # ------------------------------------------------------------ ordered scans
    def older_than(self, cutoff: float) -> Forgotten:
        """Remove the streams whose age is at or before ``cutoff`` (the TTL), oldest first."""
        (limit,) = age_keys(np.array([cutoff]))
        self.flush()
        return self._forget(lambda age, _: age <= limit)

    def drop_tags(self, tags: set[int]) -> list[str]:
        """Remove every stream with one of ``tags``: a scan of those tags' own streams."""
        self.flush()
        gone: list[str] = []
        batch = self._batch()
        for tag in sorted(tags):
            for _, _, key, stream, length in self._of_tag(tag):
                batch.delete(key)
                batch.delete(b"v" + stream)
                self.bytes -= _record_bytes(len(stream), length)
                gone.append(stream.decode())
            self._tags.pop(tag, None)
        if gone:
            self.count -= len(gone)
            self._write(batch)
        return gone

    def clear(self) -> Forgotten:
        """Remove everything; what was there, oldest first."""
        self.flush()
        return self._forget(lambda _, __: True, ordered=False)

    def streams_after(self, after: str, limit: int) -> list[str]:
        """Up to ``limit`` stream ids greater than ``after``, in order (for paging)."""
        self.flush()
        out: list[str] = []
        start = b"v" + after.encode()
        for key in self._keys(start):
            if key[:1] != b"v" or len(out) >= limit:
                break
            if key != start:
                out.append(key[1:].decode())
        return out

    # ---------------------------------------------------------------- helpers
    def _enforce_bound(self) -> Forgotten:
        """Past the bound: forget the oldest streams until the live bytes are within it."""
        if self.max_bytes is None or self.bytes <= self.max_bytes:
            return Forgotten([], [])
        self.flush()  # the oldest by age may be among the pending spills
        return self._forget(lambda _, __: True, free=self.bytes - self.max_bytes)

    def _forget(
        self, pick: Callable[[bytes, int], bool], ordered: bool = True, free: int | None = None
    ) -> Forgotten:
        """Remove the streams of the index, oldest first, that ``pick(age_key, tag)`` takes.

        ``ordered``: stop at the first one not taken (an age prefix).
        ``free``: stop once this many bytes are freed (the size bound).
        """
        gone = Forgotten([], [])
        batch = self._batch()
        freed = 0
        # Each tag's streams are oldest first; merged, all of them are.
        merged = heapq.merge(*(self._of_tag(tag) for tag in sorted(self._tags)))
        for age, tag, key, stream, length in merged:
            if free is not None and freed >= free:
                break
            if not pick(age, tag):
                if ordered:
                    break
                continue
            batch.delete(b"v" + stream)
            batch.delete(key)
            self._untag(tag)
            size = _record_bytes(len(stream), length)
            self.bytes -= size
            freed += size
            gone.streams.append(stream.decode())
            gone.tags.append(tag)
        if gone.streams:
            self.count -= len(gone.streams)
            self._write(batch)
        return gone

    def _of_tag(self, tag: int) -> Iterator[tuple[bytes, int, bytes, bytes, int]]:
        """A tag's index entries, oldest first, as (age key, tag, key, stream, length):
        tuples that sort oldest first across tags too."""
        prefix = b"i" + _TAG.pack(tag)
        unpack = _LENGTH.unpack
        for key, value in self._items(prefix):
            if not key.startswith(prefix):
                return
            yield key[1 + _TAG.size : _INDEX_HEAD], tag, key, key[_INDEX_HEAD:], unpack(value)[0]

    def _untag(self, tag: int) -> None:
        """One stream of ``tag`` fewer: a tag with none left is not merged any more."""
        tags = self._tags
        if tags[tag] > 1:
            tags[tag] -= 1
        else:
            del tags[tag]

    def _untag_all(self, gone: list[int]) -> None:
        """:meth:`_untag` for each of ``gone`` (the tags of streams taken), counted at once."""
        tags = self._tags
        for tag, n in Counter(gone).items():
            left = tags[tag] - n
            if left > 0:
                tags[tag] = left
            else:
                del tags[tag]

    def _take(self, batch, streams: Sequence[str]) -> tuple[list[bytes | None], list[int]]:
        """Take streams' records, from memory if pending, else read from disk with their
        deletion added to ``batch``: values and tags."""
        keys = [s.encode() for s in streams]
        head, unpack = _HEAD.size, _HEAD.unpack_from
        records, rest = self._pending_records(keys, pop=True)
        values: list[bytes | None] = [None] * len(keys)
        tags = [-1] * len(keys)
        if len(rest) < len(keys):
            for j, record in enumerate(records):
                if record is not None:
                    tags[j], values[j] = unpack(record)[1], record[head:]
        if not rest:
            return values, tags
        vkeys = [b"v" + keys[j] for j in rest]
        delete, pack_tag = batch.delete, _TAG.pack
        gone: list[int] = []  # the tags of those found
        key_total = stored_total = 0
        for j, vkey, stored in zip(rest, vkeys, self._get(vkeys), strict=True):
            if stored is not None:  # _delete's work, for a batch of them
                key = keys[j]
                age, tag = unpack(stored)
                delete(vkey)
                delete(b"i" + pack_tag(tag) + age + key)
                gone.append(tag)
                key_total += len(key)
                stored_total += len(stored)
                tags[j], values[j] = tag, stored[head:]
        if gone:
            self._untag_all(gone)
            self.count -= len(gone)
            self.bytes -= _records_bytes(len(gone), key_total, stored_total - len(gone) * head)
        return values, tags

    def _pending_records(
        self, keys: list[bytes], pop: bool
    ) -> tuple[list[bytes | None], list[int]]:
        """The pending records of ``keys`` (None where not pending) and the positions of
        those that are not, to look for on disk. ``pop``: they leave the store (counted)."""
        pending = self._pending
        if not pending:
            return [None] * len(keys), list(range(len(keys)))
        entries: list[tuple[bytes, int] | None] = list(
            map(pending.pop if pop else pending.get, keys, repeat(None))
        )
        rest = [j for j, entry in enumerate(entries) if entry is None]
        records: list[bytes | None] = [None if e is None else e[0] for e in entries]
        if pop and len(rest) < len(keys):
            found = [(key, e) for key, e in zip(keys, entries, strict=True) if e is not None]
            self._untag_all([tag for _, (_, tag) in found])
            freed = _records_bytes(
                len(found),
                sum(len(key) for key, _ in found),
                sum(len(record) for _, (record, _) in found) - len(found) * _HEAD.size,
            )
            self.count -= len(found)
            self.bytes -= freed
            self._pending_size -= freed
        return records, rest

    def _stage(
        self,
        streams: Sequence[str],
        pieces: Sequence[bytes | memoryview],
        ages: np.ndarray,
        tags: Sequence[int] | np.ndarray,
    ) -> None:
        """Hold spilled streams' records in memory (none of them is in the store), counted
        from now on as if written."""
        if not streams:
            return
        keys = [s.encode() for s in streams]
        tag_list = np.asarray(tags, dtype=np.int64).tolist()
        pending, pack_head = self._pending, _HEAD.pack
        for key, value, age, tag in zip(keys, pieces, age_keys(ages), tag_list, strict=True):
            pending[key] = (pack_head(age, tag) + value, tag)
        added = _records_bytes(len(keys), sum(map(len, keys)), sum(map(len, pieces)))
        self._pending_size += added
        self.bytes += added
        self.count += len(streams)
        self._tags.update(tag_list)

    def _flush(self, batch, keep: int) -> None:
        """Add the oldest pending spills' two records each to ``batch`` until at most
        ``keep`` bytes of them are left pending (already counted: nothing to count)."""
        pending, size = self._pending, self._pending_size
        put, pack_tag, pack_length, head = batch.put, _TAG.pack, _LENGTH.pack, _HEAD.size
        popitem = pending.popitem
        fixed = _records_bytes(1, 0, 0) - head  # a record holds the header, counted apart
        while pending and size > keep:
            key, (record, tag) = popitem(last=False)
            put(b"v" + key, record)
            put(b"i" + pack_tag(tag) + record[:8] + key, pack_length(len(record) - head))
            size -= 2 * len(key) + len(record) + fixed  # _record_bytes
        self._pending_size = size

    @staticmethod
    def _pieces(block: bytes | memoryview, size: int, n: int) -> list[memoryview]:
        """A block of ``n`` values of ``size`` bytes, cut without copying."""
        view = memoryview(block).cast("B")
        if len(view) != size * n:
            raise ValueError(f"a block of {len(view)} bytes for {n} values of {size}")
        return [view[j * size : (j + 1) * size] for j in range(n)]

    def _add(
        self,
        batch,
        streams: Sequence[str],
        pieces: Sequence[bytes | memoryview],
        ages: np.ndarray,
        tags: Sequence[int] | np.ndarray,
    ) -> None:
        """Add streams' two records to ``batch`` (none of them is in the store)."""
        if not streams:
            return
        ages_k = age_keys(ages)
        tag_list = np.asarray(tags, dtype=np.int64).tolist()
        pack_head, pack_tag, pack_length = _HEAD.pack, _TAG.pack, _LENGTH.pack
        put = batch.put
        added = 0
        for stream, value, age, tag in zip(streams, pieces, ages_k, tag_list, strict=True):
            key = stream.encode()
            length = len(value)
            put(b"v" + key, pack_head(age, tag) + value)
            put(b"i" + pack_tag(tag) + age + key, pack_length(length))
            added += _record_bytes(len(key), length)
        self.bytes += added
        self.count += len(streams)
        self._tags.update(tag_list)

    def _delete(self, batch, key: bytes, stored: bytes) -> int:
        """Delete a stream's two records (``stored``: its value); returns its tag."""
        age, tag = _HEAD.unpack_from(stored)
        batch.delete(b"v" + key)
        batch.delete(b"i" + _TAG.pack(tag) + age + key)
        self.count -= 1
        self.bytes -= _record_bytes(len(key), len(stored) - _HEAD.size)
        self._untag(tag)
        return tag

    def _batch(self):
        return self._write_batch(raw_mode=True)

    def _get(self, keys: list[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            return self._db.get(keys)  # with the read options set at open
        except Exception as exc:
            raise ColdTierError(f"reading the cold tier in {self.path} failed: {exc}") from exc

    def _write(self, batch) -> None:
        try:
            self._db.write(batch, self._write_opts)
        except Exception as exc:
            raise ColdTierError(f"writing the cold tier in {self.path} failed: {exc}") from exc

    def _items(self, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        try:
            it = self._db.iter()
            it.seek(start)
            while it.valid():
                yield it.key(), it.value()
                it.next()
        except Exception as exc:
            raise ColdTierError(f"scanning the cold tier in {self.path} failed: {exc}") from exc

    def _keys(self, start: bytes) -> Iterator[bytes]:
        for key, _ in self._items(start):
            yield key


def _record_bytes(key: int, value: int) -> int:
    """The bytes one stream's two records hold (keys and values)."""
    return (1 + key + _HEAD.size + value) + (_INDEX_HEAD + key + _LENGTH.size)


def _records_bytes(n: int, keys: int, values: int) -> int:
    """:func:`_record_bytes` summed over ``n`` streams, their keys' and values' lengths
    summed (``keys``, ``values``)."""
    return 2 * keys + values + n * (1 + _HEAD.size + _INDEX_HEAD + _LENGTH.size)


def _layout(db: Path) -> bytes | None:
    """The layout marker of a RocksDB there (b"" if unmarked: layout 1); None if it does not
    open (its manifest and files do not check out: corrupt)."""
    from rocksdict import AccessType, Options, Rdict

    try:
        opts = Options(raw_mode=True)
        opts.set_paranoid_checks(True)
        old = Rdict(str(db), opts, access_type=AccessType.read_only())
        try:
            marker = old.get(LAYOUT_KEY)
        finally:
            old.close()
    except Exception as exc:
        log.warning("the cold tier left in %s does not open: %s", db, exc)
        return None
    return b"" if marker is None else bytes(marker)
