"""Per-stream LSTM state in preallocated slabs: the state store.

Pure (torch, numpy, stdlib). h and c live in two tensors of shape
``[num_layers, capacity, hidden]``, a row per stream slot, so a micro-batch is
one gather in and one scatter out (numpy row copies in host memory,
``index_select`` and ``index_copy_`` on a device). Per-stream bookkeeping
(events applied, last position, last-seen time, running scale and error sums)
lives in numpy arrays indexed by the same slot. A dict maps stream ids to
slots; each slot's last use (a running count) gives the least-recently-used
order for capacity eviction, found by numpy when it is needed, so that a
batch only writes its slots' counts (no per-stream reordering).

A store for a model with a recipe (streamcell.core.recipe) also keeps each
stream's history: a ring of its last ``buffer_size`` target values
(``[capacity, buffer_size]`` float32, value k at column ``k % buffer_size``,
``events`` counting the values written) and the scale of its last step. Its
snapshots carry both, under a header of their own, so a record of either
layout is refused by a store of the other.

A store for a quantile head (streamcell.core.quantiles) also keeps each
stream's last quantiles (``[capacity, levels, output]``, beside ``yhat``) and,
per central interval, how many of its actual values fell inside the interval
its previous prediction gave (beside the error sums: ``err_count`` events
were scored, ``output`` values each).

A store for a version with an adaptive width (streamcell.core.adaptive)
also keeps each stream's ``log w`` per target (``width``, float32, 0 at the
start: the version's calibration as fitted).

Snapshots are format 2 (header ``SCS2``: the shape, the ring's length, the
number of quantile levels and their digest), or, for a store with an adaptive
width, format 3 (``SCS3``: the same header and fields, then ``width``). Such a
store reads a format-2 record of its own shape as a stream whose width has
not moved yet, so state kept before the version had one carries over. A store reads format-1 records
(``SCS1``, ``SCH1``, written before quantile heads) of its own shape when it
has no quantile levels: their fields are the same, only the header differs.

Slots are an implementation detail of this module and of the predictor; the
pipeline and the gRPC servicer only ever name streams.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch
from torch import Tensor

from streamcell.core.errors import Overloaded, StateFormatError
from streamcell.core.events import NO_POSITION, NO_SEQ
from streamcell.core.quantiles import central_intervals, levels_digest

# Format 1 (read only): magic, num_layers, hidden, output, input; with a
# history, then the ring's length.
SNAPSHOT_MAGIC = b"SCS1"
_HEADER = struct.Struct("<4sHHHH")
HISTORY_MAGIC = b"SCH1"
_HISTORY_HEADER = struct.Struct("<4sHHHHI")
# Format 2: magic, num_layers, hidden, output, input, ring length (0: no
# recipe), quantile levels (0: a point head), the levels' digest.
SNAPSHOT_V2_MAGIC = b"SCS2"
_V2_HEADER = struct.Struct("<4sHHHHIII")  # 24 bytes: rows stay 4-byte aligned
# Format 3: format 2's header under its own magic; the record ends with the width.
SNAPSHOT_V3_MAGIC = b"SCS3"
FREE_LAST_SEEN = np.nan  # a free slot's last_seen
_FREE_USE = np.iinfo(np.int64).max  # a free slot's last use: never the least recent
LRU_PREFIX = 4096  # the least recently used slots one partition finds, for later calls too


@dataclass(frozen=True)
class StreamInfo:
    """A copy of one stream's state, for GetStream and tests."""

    stream: str
    events: int
    partition: int
    offset: int
    seq: int
    last_seen: float
    last_prediction: tuple[float, ...]
    online_mae: float | None
    h: Tensor  # [num_layers, hidden]
    c: Tensor  # [num_layers, hidden]
    gates: Tensor | None  # [num_layers, 4, hidden] (i, f, g, o) of the last step
    # The recipe's history: the stream's last target values, oldest first
    # (at most the ring's length), and the scale of its last step (None
    # without a recipe, or before the stream's first event).
    history: tuple[float, ...] = ()
    scale: float | None = None
    # A quantile head: the last quantiles [levels][output], and per central
    # interval (widest first) how many actual values fell inside it, out of
    # ``scored`` (empty, and 0, for a point head).
    last_quantiles: tuple[tuple[float, ...], ...] = ()
    inside: tuple[int, ...] = ()
    scored: int = 0
    # An adaptive width: the factor w per target (empty without one).
    width: tuple[float, ...] = ()


class StateStore:
    """Slab store of per-stream (h, c) with LRU capacity eviction and TTL expiry.

    ``buffer_size`` > 0 adds each stream's history ring and scale (a model
    with a recipe); 0 keeps the store, and its snapshots, as without one.
    ``quantile_levels`` adds each stream's last quantiles and interval counts;
    ``adaptive`` (with them) each stream's ``log w`` per target.
    """

    # Per-slot slabs and arrays, (re)made by _allocate as capacity grows.
    h: Tensor  # [num_layers, capacity, hidden]
    c: Tensor
    yhat: Tensor  # [capacity, output]
    gates: Tensor | None  # [capacity, num_layers, 4, hidden] with keep_gates
    events: np.ndarray
    partition: np.ndarray
    offset: np.ndarray
    seq: np.ndarray
    last_seen: np.ndarray
    scale_sum: np.ndarray
    err_sum: np.ndarray
    err_count: np.ndarray
    _used: np.ndarray  # each slot's last use (a running count); free slots: _FREE_USE
    quantiles: Tensor | None  # [capacity, levels, output] with quantile_levels
    inside: np.ndarray | None  # [capacity, intervals] int64 with quantile_levels
    width: np.ndarray | None  # [capacity, output] float32 log w with adaptive

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        output_size: int,
        input_size: int,
        *,
        initial_capacity: int = 1024,
        max_streams: int = 100_000,
        ttl_seconds: float | None = None,
        keep_gates: bool = False,
        device: torch.device | str = "cpu",
        buffer_size: int = 0,
        quantile_levels: Sequence[float] = (),
        adaptive: bool = False,
    ) -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams must be at least 1, got {max_streams}")
        if ttl_seconds is not None and ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
        if not 0 <= buffer_size < 1 << 32:
            raise ValueError(f"buffer_size must be in 0..2**32-1, got {buffer_size}")
        if adaptive and not quantile_levels:
            raise ValueError("an adaptive width needs quantile_levels (a point has no width)")
        self.buffer_size = buffer_size
        self.quantile_levels = tuple(quantile_levels)
        self.adaptive = adaptive
        self.intervals = central_intervals(self.quantile_levels)
        levels, n_intervals = len(self.quantile_levels), len(self.intervals)
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.output_size = output_size
        self.input_size = input_size
        self.max_streams = max_streams
        self.ttl_seconds = ttl_seconds
        self.keep_gates = keep_gates
        # Where the tensors (h, c, the last predictions, gates) live; the
        # bookkeeping arrays stay in host memory, numpy.
        self.device = torch.device(device)
        self.evicted = 0
        self.expired = 0
        self._evicted_ids: list[str] = []  # evicted since the last take_evicted()
        self._index: dict[str, int] = {}
        self._uses = 0  # uses counted so far: the next use's number
        # The oldest slots found by the last partition, with their uses then (_oldest).
        self._lru: tuple[np.ndarray, np.ndarray] | None = None
        self._capacity = 0
        self._allocate(min(max(initial_capacity, 1), max_streams))
        # The header is the record's first field, so a block of records is a
        # block of whole snapshots: no per-stream concatenation.
        self._record = np.dtype(
            [
                ("header", "u1", (_V2_HEADER.size,)),
                ("h", "<f4", (num_layers, hidden_size)),
                ("c", "<f4", (num_layers, hidden_size)),
                ("yhat", "<f4", (output_size,)),
                ("events", "<i8"),
                ("partition", "<i4"),
                ("offset", "<i8"),
                ("seq", "<i8"),
                ("last_seen", "<f8"),
                ("scale_sum", "<f8", (input_size,)),
                ("err_sum", "<f8"),
                ("err_count", "<i8"),
            ]
            + ([("ring", "<f4", (buffer_size,)), ("scale", "<f4")] if buffer_size else [])
            + (
                [("quantiles", "<f4", (levels, output_size)), ("inside", "<i8", (n_intervals,))]
                if levels
                else []
            )
            + ([("width", "<f4", (output_size,))] if adaptive else [])
        )
        shape = (num_layers, hidden_size, output_size, input_size)
        digest = levels_digest(self.quantile_levels)
        self._v2_header = _V2_HEADER.pack(SNAPSHOT_V2_MAGIC, *shape, buffer_size, levels, digest)
        self._header = (
            _V2_HEADER.pack(SNAPSHOT_V3_MAGIC, *shape, buffer_size, levels, digest)
            if adaptive
            else self._v2_header
        )
        self._header_row = np.frombuffer(self._header, dtype=np.uint8)
        # The format-1 header of a record with the same fields (none with quantiles).
        self._v1_header = (
            None
            if levels
            else _HISTORY_HEADER.pack(HISTORY_MAGIC, *shape, buffer_size)
            if buffer_size
            else _HEADER.pack(SNAPSHOT_MAGIC, *shape)
        )

    # ----------------------------------------------------------------- layout
    def _allocate(self, capacity: int) -> None:
        """Create or grow every per-slot array to ``capacity`` rows, keeping contents."""
        old = self._capacity
        grow = capacity - old
        L, H = self.num_layers, self.hidden_size

        def grow_tensor(t: Tensor | None, shape: tuple[int, ...], dim: int) -> Tensor:
            fresh = torch.zeros(shape, device=self.device)
            return fresh if t is None else torch.cat([t, fresh], dim=dim)

        def grow_array(a: np.ndarray | None, shape: tuple[int, ...], dtype, fill=0) -> np.ndarray:
            fresh = np.full(shape, fill, dtype=dtype)
            return fresh if a is None else np.concatenate([a, fresh])

        first = old == 0
        self.h = grow_tensor(None if first else self.h, (L, grow, H), 1)
        self.c = grow_tensor(None if first else self.c, (L, grow, H), 1)
        # In host memory, the slabs' rows as numpy views ``[L * capacity, H]``: numpy's
        # row gather and scatter move whole rows, where index_select and index_copy_
        # on dimension 1 step element by element.
        self._rows = (
            (self.h.numpy().reshape(-1, H), self.c.numpy().reshape(-1, H))
            if self.device.type == "cpu"
            else None
        )
        self.yhat = grow_tensor(None if first else self.yhat, (grow, self.output_size), 0)
        if self.keep_gates:
            self.gates = grow_tensor(None if first else self.gates, (grow, L, 4, H), 0)
        else:
            self.gates = None
        self.events = grow_array(None if first else self.events, (grow,), np.int64)
        self.partition = grow_array(
            None if first else self.partition, (grow,), np.int32, NO_POSITION
        )
        self.offset = grow_array(None if first else self.offset, (grow,), np.int64, NO_POSITION)
        self.seq = grow_array(None if first else self.seq, (grow,), np.int64, NO_SEQ)
        # NaN marks a free slot: never idle for expire, replaced by the first event time.
        self.last_seen = grow_array(
            None if first else self.last_seen, (grow,), np.float64, FREE_LAST_SEEN
        )
        self.scale_sum = grow_array(
            None if first else self.scale_sum, (grow, self.input_size), np.float64
        )
        self.err_sum = grow_array(None if first else self.err_sum, (grow,), np.float64)
        self.err_count = grow_array(None if first else self.err_count, (grow,), np.int64)
        self._used = grow_array(None if first else self._used, (grow,), np.int64, _FREE_USE)
        # Host memory, numpy: the recipe's features are computed there.
        self.ring: np.ndarray | None = None if first else self.ring
        self.scale: np.ndarray | None = None if first else self.scale
        if self.buffer_size:
            self.ring = grow_array(self.ring, (grow, self.buffer_size), np.float32)
            self.scale = grow_array(self.scale, (grow,), np.float32)
        self.quantiles = None if first else self.quantiles
        self.inside = None if first else self.inside
        if self.quantile_levels:
            shape = (grow, len(self.quantile_levels), self.output_size)
            self.quantiles = grow_tensor(self.quantiles, shape, 0)
            self.inside = grow_array(self.inside, (grow, len(self.intervals)), np.int64)
        self.width = None if first else self.width
        if self.adaptive:
            self.width = grow_array(self.width, (grow, self.output_size), np.float32)
        self._ids: list[str | None] = (self._ids if not first else []) + [None] * grow
        # Free slots are handed out lowest first so that slabs stay dense.
        self._free: list[int] = (self._free if not first else []) + list(
            range(capacity - 1, old - 1, -1)
        )
        if not first:
            self._free = sorted(self._free, reverse=True)
        self._capacity = capacity

    def _clear_slot(self, slot: int) -> None:
        self.h[:, slot].zero_()
        self.c[:, slot].zero_()
        self.yhat[slot].zero_()
        if self.gates is not None:
            self.gates[slot].zero_()
        self.events[slot] = 0
        self.partition[slot] = NO_POSITION
        self.offset[slot] = NO_POSITION
        self.seq[slot] = NO_SEQ
        self.last_seen[slot] = FREE_LAST_SEEN
        self.scale_sum[slot] = 0.0
        self.err_sum[slot] = 0.0
        self.err_count[slot] = 0
        if self.ring is not None and self.scale is not None:
            self.ring[slot] = 0.0
            self.scale[slot] = 0.0
        if self.quantiles is not None and self.inside is not None:
            self.quantiles[slot].zero_()
            self.inside[slot] = 0
        if self.width is not None:
            self.width[slot] = 0.0

    # ------------------------------------------------------------ properties
    @property
    def capacity(self) -> int:
        """Rows allocated now (grows by doubling up to ``max_streams``)."""
        return self._capacity

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, stream: object) -> bool:
        return stream in self._index

    @property
    def nbytes(self) -> int:
        """Bytes held by the slabs and per-slot arrays (what the state itself costs)."""
        tensors = [self.h, self.c, self.yhat] + [
            t for t in (self.gates, self.quantiles) if t is not None
        ]
        arrays = [
            self.events,
            self.partition,
            self.offset,
            self.seq,
            self.last_seen,
            self.scale_sum,
            self.err_sum,
            self.err_count,
        ] + [a for a in (self.ring, self.scale, self.inside) if a is not None]
        return sum(t.numel() * t.element_size() for t in tensors) + sum(a.nbytes for a in arrays)

    def stream_ids(self) -> list[str]:
        """Stream ids in least- to most-recently-used order."""
        return self._by_use(len(self._index))

    def slot_of(self, stream: str) -> int | None:
        """The slot of a stream, without touching its recency."""
        return self._index.get(stream)

    # --------------------------------------------------------------- lookups
    def lookup(self, streams: Sequence[str]) -> list[int | None]:
        """The slot of each stream, None where the store lacks it (recency untouched)."""
        return list(map(self._index.get, streams))

    def slots(
        self,
        streams: Sequence[str],
        now: float | np.ndarray,
        found: list[int | None] | None = None,
    ) -> np.ndarray:
        """Slots for distinct stream ids, creating missing streams with zero state.

        Marks them most recently used. ``now`` is the event time of their
        events (one for all, or one per stream): a stream's ``last_seen`` is
        the newest event time it has had, so that a late event never makes it
        look idle. When the store is full, the least recently used streams
        outside ``streams`` are evicted (counted). ``found``: :meth:`lookup`'s
        answer for ``streams`` since which no stream was added or removed, so
        the ids are not looked up twice.
        """
        if len(streams) > self.max_streams:
            raise Overloaded(
                f"a batch touches {len(streams)} streams, more than the store's "
                f"capacity of {self.max_streams}"
            )
        index = self._index
        if found is None:
            found = list(map(index.get, streams))
        if None not in found:  # the usual case, every stream known: no Python loop per stream
            out = np.array(found, dtype=np.int64)
            self.touch(out, now)
            return out
        out = np.empty(len(streams), dtype=np.int64)
        missing: list[int] = []
        held: list[int] = []
        for k, slot in enumerate(found):
            if slot is None:
                missing.append(k)
            else:
                held.append(k)
                out[k] = slot
        self._use(out[held])  # the held first, in order, then the new as they are made
        new = len(dict.fromkeys(streams[k] for k in missing))
        # Evicted: the least recently used outside this call (its streams were just used).
        room = len(self._free) + self.max_streams - self._capacity
        victims = iter(self._by_use(max(new - room, 0)))
        for k in missing:
            slot = index.get(streams[k])  # a repeated id was created a moment ago
            out[k] = self._create(streams[k], victims) if slot is None else slot
        self.last_seen[out] = np.fmax(self.last_seen[out], now)  # a new one's NaN gives way
        return out

    def touch(self, slots: np.ndarray, now: float | np.ndarray) -> None:
        """:meth:`slots` for distinct streams the store holds, at their ``slots``."""
        self._use(slots)
        self.last_seen[slots] = np.fmax(self.last_seen[slots], now)

    def _use(self, slots: np.ndarray) -> None:
        """The slots are used now, in their order (the last is the most recent)."""
        n = len(slots)
        self._used[slots] = np.arange(self._uses, self._uses + n, dtype=np.int64)
        self._uses += n

    def _by_use(self, n: int) -> list[str]:
        """The ``n`` least recently used streams (at most all), oldest first."""
        return list(map(self._ids.__getitem__, self._oldest(n).tolist()))  # type: ignore[arg-type]

    def _oldest(self, n: int) -> np.ndarray:
        """The slots of the ``n`` least recently used streams (at most all), oldest first.

        The oldest ``max(n, LRU_PREFIX)`` are found by a partition of every slot,
        and the first ``LRU_PREFIX`` of them kept with their uses: later, those
        whose use is unchanged are still the oldest streams, in order, since a
        slot used (or filled) since has a later use than all of them and every
        other slot had a later one already. Only when fewer than ``n`` are left
        is the partition made again (a batch's spills no longer pay one each).
        The kept ones are checked from the front, the rest only when the front has
        too few: the first ``n`` unchanged are the oldest whatever follows them.
        """
        n = min(n, len(self._index))
        if n == 0:
            return np.empty(0, dtype=np.int64)
        if self._lru is not None:
            slots, uses = self._lru
            w = min(len(slots), 2 * n + 64)
            same = self._used[slots[:w]] == uses[:w]
            if not same.all():
                slots = np.concatenate((slots[:w][same], slots[w:]))
                uses = np.concatenate((uses[:w][same], uses[w:]))
                self._lru = (slots, uses)
            if np.count_nonzero(same) >= n:
                return slots[:n]
            same = self._used[slots] == uses
            if not same.all():
                slots, uses = slots[same], uses[same]
                self._lru = (slots, uses)
            if len(slots) >= n:
                return slots[:n]
        used = self._used  # free slots sort last
        k = min(max(n, LRU_PREFIX), len(self._index))
        first = np.argpartition(used, k - 1)[:k] if k < len(used) else np.arange(len(used))
        first = first[np.argsort(used[first])]
        kept = first[:LRU_PREFIX]  # a prefix of the order is one too
        self._lru = (kept, used[kept])
        return first[:n]

    def _create(self, stream: str, victims: Iterable[str] = ()) -> int:
        """A slot for a new stream; at capacity, the next of ``victims`` is evicted."""
        if not self._free:
            if self._capacity < self.max_streams:
                self._allocate(min(self._capacity * 2, self.max_streams))
            else:
                victim = next(iter(victims))
                self._remove(victim)
                self.evicted += 1
                self._evicted_ids.append(victim)
        slot = self._free.pop()
        self._index[stream] = slot
        self._ids[slot] = stream
        self._used[slot] = self._uses
        self._uses += 1
        return slot

    def least_recent(self, n: int, sparing: Iterable[str] = ()) -> list[str]:
        """The ``n`` least recently used streams outside ``sparing``, oldest first.

        ``sparing`` may hold streams the store lacks: the first ``n`` plus its
        count in LRU order always hold ``n`` others (if the store holds them). A set
        is used as it is, not copied. A few more than ``n`` are looked at first: a
        batch's streams, spared, are seldom among the oldest.
        """
        spared = sparing if isinstance(sparing, set | frozenset) else set(sparing)
        ids, bound = self._ids, n + len(spared)
        m = min(2 * n + 16, bound)
        while True:
            front = map(ids.__getitem__, self._oldest(m).tolist())
            picked = list(islice((s for s in front if s not in spared), n))
            if len(picked) >= n or m >= bound:
                return picked  # type: ignore[return-value]
            m = bound

    def remove(self, streams: Sequence[str]) -> None:
        """Drop streams the store holds, at once (their slots cleared in a few copies)."""
        if not streams:
            return
        index, ids = self._index, self._ids
        slots = np.fromiter(map(index.pop, streams), np.int64, len(streams))
        idx = self.index(slots)
        for t in (self.h, self.c):
            t.index_fill_(1, idx, 0.0)
        self.yhat.index_fill_(0, idx, 0.0)
        if self.gates is not None:
            self.gates.index_fill_(0, idx, 0.0)
        if self.quantiles is not None and self.inside is not None:
            self.quantiles.index_fill_(0, idx, 0.0)
            self.inside[slots] = 0
        for name, fill in (
            ("events", 0),
            ("partition", NO_POSITION),
            ("offset", NO_POSITION),
            ("seq", NO_SEQ),
            ("last_seen", FREE_LAST_SEEN),
            ("scale_sum", 0.0),
            ("err_sum", 0.0),
            ("err_count", 0),
            *((name, 0.0) for name in self._history_fields),
        ):
            getattr(self, name)[slots] = fill
        for slot in slots.tolist():
            ids[slot] = None
        self._used[slots] = _FREE_USE
        self._free.extend(slots.tolist())

    def take_evicted(self) -> list[str]:
        """The streams evicted at capacity since the last call, oldest first."""
        evicted, self._evicted_ids = self._evicted_ids, []
        return evicted

    def _remove(self, stream: str) -> None:
        slot = self._index.pop(stream)
        self._clear_slot(slot)
        self._ids[slot] = None
        self._used[slot] = _FREE_USE
        self._free.append(slot)

    # -------------------------------------------------------- gather/scatter
    def index(self, slots: np.ndarray) -> Tensor:
        """Slots as an index tensor on the store's device."""
        return torch.from_numpy(slots).to(self.device)

    def _row_index(self, slots: np.ndarray) -> np.ndarray:
        """The slots' rows in the ``[L * capacity, H]`` views, layer by layer."""
        layers = np.arange(self.num_layers, dtype=np.int64)[:, None] * self._capacity
        return (layers + slots).ravel()

    def gather(self, slots: np.ndarray) -> tuple[Tensor, Tensor]:
        """Copies of (h, c) for the slots, each ``[num_layers, B, hidden]``."""
        if self._rows is not None:
            at, shape = self._row_index(slots), (self.num_layers, len(slots), self.hidden_size)
            h_rows, c_rows = self._rows
            return (
                torch.from_numpy(h_rows.take(at, axis=0).reshape(shape)),
                torch.from_numpy(c_rows.take(at, axis=0).reshape(shape)),
            )
        idx = self.index(slots)
        return self.h.index_select(1, idx), self.c.index_select(1, idx)

    def scatter(self, slots: np.ndarray, h: Tensor, c: Tensor) -> None:
        """Write (h, c) ``[num_layers, B, hidden]`` back to distinct slots."""
        if self._rows is not None:
            at, width = self._row_index(slots), self.hidden_size
            h_rows, c_rows = self._rows
            h_rows[at] = h.numpy().reshape(-1, width)
            c_rows[at] = c.numpy().reshape(-1, width)
            return
        idx = self.index(slots)
        self.h.index_copy_(1, idx, h)
        self.c.index_copy_(1, idx, c)

    # ----------------------------------------------------------- lifecycle
    def delete(self, stream: str) -> bool:
        """Forget a stream entirely; False if it was not there."""
        if stream not in self._index:
            return False
        self._remove(stream)
        return True

    def reset(self, stream: str) -> bool:
        """Zero a stream's state but keep it; False if it was not there.

        Its last position and seq stay: events the stream had already applied
        must still be skipped if they are replayed after the reset.
        """
        slot = self._index.get(stream)
        if slot is None:
            return False
        kept = (self.last_seen[slot], self.partition[slot], self.offset[slot], self.seq[slot])
        self._clear_slot(slot)
        self.last_seen[slot], self.partition[slot], self.offset[slot], self.seq[slot] = kept
        return True

    def clear(self) -> int:
        """Drop every stream (an incompatible model arrived); returns how many."""
        dropped = len(self._index)
        for stream in list(self._index):
            self._remove(stream)
        return dropped

    def expire(self, now: float) -> list[str]:
        """Remove streams idle for longer than the TTL at event time ``now``; returns them.

        Idle means ``last_seen`` (event time) at or before ``now`` minus the
        TTL. Event times need not follow the order streams were touched in,
        so every slot is compared (one numpy pass; free slots hold NaN, never
        idle), not an LRU prefix. Returned in slot order, and counted.
        """
        if self.ttl_seconds is None:
            return []
        idle = np.flatnonzero(self.last_seen <= now - self.ttl_seconds)
        gone = [stream for stream in map(self._ids.__getitem__, idle.tolist()) if stream]
        for stream in gone:
            self._remove(stream)
        self.expired += len(gone)
        return gone

    def info(self, stream: str) -> StreamInfo | None:
        slot = self._index.get(stream)
        if slot is None:
            return None
        count = int(self.err_count[slot])
        history, scale = self._history_of(slot)
        return StreamInfo(
            stream=stream,
            events=int(self.events[slot]),
            partition=int(self.partition[slot]),
            offset=int(self.offset[slot]),
            seq=int(self.seq[slot]),
            last_seen=float(self.last_seen[slot]),
            last_prediction=tuple(self.yhat[slot].tolist()),
            online_mae=float(self.err_sum[slot] / count) if count else None,
            h=self.h[:, slot].to("cpu", copy=True),
            c=self.c[:, slot].to("cpu", copy=True),
            gates=None if self.gates is None else self.gates[slot].to("cpu", copy=True),
            history=history,
            scale=scale,
            last_quantiles=()
            if self.quantiles is None
            else tuple(map(tuple, self.quantiles[slot].tolist())),
            inside=() if self.inside is None else tuple(self.inside[slot].tolist()),
            scored=count * self.output_size if self.quantile_levels else 0,
            width=() if self.width is None else tuple(np.exp(self.width[slot]).tolist()),
        )

    def _history_of(self, slot: int) -> tuple[tuple[float, ...], float | None]:
        """The slot's history values, oldest first, and the scale of its last step."""
        if self.ring is None or self.scale is None:
            return (), None
        n, size = int(self.events[slot]), self.buffer_size
        order = np.arange(max(0, n - size), n) % size
        return tuple(self.ring[slot, order].tolist()), float(self.scale[slot]) if n else None

    # ------------------------------------------------------ snapshot/restore
    @property
    def _history_fields(self) -> tuple[str, ...]:
        """The optional numpy fields of a record: a recipe's history, a quantile head's counts."""
        return (
            (("ring", "scale") if self.buffer_size else ())
            + (("inside",) if self.quantile_levels else ())
            + (("width",) if self.adaptive else ())
        )

    @property
    def snapshot_size(self) -> int:
        """Bytes of one stream's snapshot."""
        return self._record.itemsize

    def snapshot(self, streams: Sequence[str]) -> list[bytes]:
        """One self-describing, byte-exact record per stream (for the changelog)."""
        block, size = self.snapshot_block(streams), self._record.itemsize
        return [bytes(block[k * size : (k + 1) * size]) for k in range(len(streams))]

    def contains(self, streams: Sequence[str]) -> np.ndarray:
        """Which of ``streams`` the store holds, as a bool array (one C-level pass)."""
        return np.fromiter(map(self._index.__contains__, streams), np.bool_, len(streams))

    def snapshot_block(self, streams: Sequence[str]) -> memoryview:
        """The snapshots of ``streams``, back to back, ``snapshot_size`` bytes each.

        A few vectorised copies and no per-stream objects: a checkpoint takes
        it under the predictor's lock. The records are cut from it later,
        outside the lock and a few at a time (see changelog.Snapshots). A
        read-only view of the records' own array, not a copy: copying 10^4
        snapshots (12 MB) into a bytes object cost more than filling them.
        """
        index = self._index
        try:
            slots = np.fromiter(map(index.__getitem__, streams), np.int64, len(streams))
        except KeyError:
            missing = [s for s in streams if s not in index]
            raise KeyError(f"cannot snapshot unknown streams: {missing[:5]}") from None
        rec = np.empty(len(streams), dtype=self._record)
        rec["header"] = self._header_row
        if self._rows is not None:  # host memory: numpy row gathers, no torch call per copy
            for name, rows in zip(("h", "c"), self._rows, strict=True):
                field = rec[name]
                for layer in range(self.num_layers):
                    field[:, layer] = rows[slots + layer * self._capacity]
            rec["yhat"] = self.yhat.numpy()[slots]
            if self.quantiles is not None:
                rec["quantiles"] = self.quantiles.numpy()[slots]
        else:
            idx = self.index(slots)
            # [L, B, H] slabs into the records' [B, L, H] fields a layer at a time:
            # each copy moves whole H-float rows (a permuted copy is 7x slower).
            for name, slab in (("h", self.h), ("c", self.c)):
                field_t = torch.from_numpy(rec[name])
                for layer in range(self.num_layers):
                    field_t[:, layer].copy_(slab[layer].index_select(0, idx))
            torch.from_numpy(rec["yhat"]).copy_(self.yhat.index_select(0, idx))
            if self.quantiles is not None:
                torch.from_numpy(rec["quantiles"]).copy_(self.quantiles.index_select(0, idx))
        for name in (
            "events",
            "partition",
            "offset",
            "seq",
            "last_seen",
            "scale_sum",
            "err_sum",
            "err_count",
            *self._history_fields,
        ):
            rec[name] = getattr(self, name)[slots]
        rec.flags.writeable = False
        return rec.data.cast("B")

    def restore(
        self,
        items: Iterable[tuple[str, bytes]],
        now: float | None = None,
        replacing: Sequence[str] = (),
    ) -> int:
        """Load snapshot records, replacing any state those streams had.

        Validates every record before touching the store, so a bad one changes
        nothing. ``now`` refreshes last-seen (so restored streams do not expire
        at once); None keeps the recorded time. ``replacing``: streams of the
        store, none of them among ``items``, that leave it, their slots taken
        by the first records' streams (which must be new to the store): the
        swap of a load for a spill, without clearing slots that every field of
        a record overwrites.
        """
        items = list(items)
        if not items:
            return 0
        rec, streams = self._decode_whole(items)
        if rec is None:
            rec, streams = self._decode(items)
        if len(streams) > self.max_streams:
            raise Overloaded(
                f"restoring {len(streams)} streams exceeds the store's capacity of "
                f"{self.max_streams}"
            )
        if len(replacing) > len(streams):
            raise ValueError(f"{len(replacing)} streams to replace by {len(streams)} records")
        slots = self._place(streams, now if now is not None else 0.0, replacing)
        if self._rows is not None:  # host memory: numpy row scatters, no torch call per copy
            for name, rows in zip(("h", "c"), self._rows, strict=True):
                field = rec[name]
                for layer in range(self.num_layers):
                    rows[slots + layer * self._capacity] = field[:, layer]
            self.yhat.numpy()[slots] = rec["yhat"]
            if self.quantiles is not None:
                self.quantiles.numpy()[slots] = rec["quantiles"]
            if self.gates is not None:
                self.gates.numpy()[slots] = 0.0
        else:
            idx = self.index(slots)
            dev = self.device
            h = torch.from_numpy(rec["h"].transpose(1, 0, 2).copy()).to(dev)
            self.h.index_copy_(1, idx, h)
            c = torch.from_numpy(rec["c"].transpose(1, 0, 2).copy()).to(dev)
            self.c.index_copy_(1, idx, c)
            self.yhat.index_copy_(0, idx, torch.from_numpy(rec["yhat"].copy()).to(dev))
            if self.quantiles is not None:
                q = torch.from_numpy(rec["quantiles"].copy()).to(dev)
                self.quantiles.index_copy_(0, idx, q)
            if self.gates is not None:
                self.gates.index_fill_(0, idx, 0.0)
        for name in (
            "events",
            "partition",
            "offset",
            "seq",
            "scale_sum",
            "err_sum",
            "err_count",
            *self._history_fields,
        ):
            getattr(self, name)[slots] = rec[name]
        if now is None:
            self.last_seen[slots] = rec["last_seen"]
        return len(streams)

    def _decode_whole(self, items: list[tuple[str, bytes]]) -> tuple[np.ndarray | None, list[str]]:
        """Records of distinct streams, each current and whole (a load from the cold
        tier), checked and decoded in a few passes over all of them at once; None if
        any is not (then :meth:`_decode` tells which, and why)."""
        streams = [s for s, _ in items]
        values = [v for _, v in items]
        if len(set(streams)) != len(streams) or set(map(type, values)) != {bytes}:
            return None, streams
        if set(map(len, values)) != {self._record.itemsize}:
            return None, streams
        rec = np.frombuffer(b"".join(values), dtype=self._record)
        if not (rec["header"] == self._header_row).all():
            return None, streams
        return rec, streams

    def _decode(self, items: list[tuple[str, bytes]]) -> tuple[np.ndarray, list[str]]:
        """Records checked one by one (a bad one raises StateFormatError, naming it),
        format 1 read as the current format, the last record of a stream winning."""
        payloads = []
        for stream, value in items:
            if isinstance(value, bytearray | memoryview):
                value = bytes(value)
            if isinstance(value, bytes):
                value = self.as_current(value)  # format 1: the same fields
            why = self.refusal(stream, value)
            if why is not None:
                raise StateFormatError(why)
            payloads.append(value)
        # Last record of a stream wins, as in a compacted topic.
        latest: dict[str, int] = {}
        for k, (stream, _) in enumerate(items):
            latest.pop(stream, None)
            latest[stream] = k
        order = list(latest.values())
        rec = np.frombuffer(b"".join(payloads[k] for k in order), dtype=self._record)
        return rec, [items[k][0] for k in order]

    def _place(self, streams: list[str], now: float, replacing: Sequence[str]) -> np.ndarray:
        """Slots for restored streams (marked most recently used, in order): the first
        ``len(replacing)`` take those streams' slots, the rest are :meth:`slots`'."""
        if not replacing:
            return self.slots(streams, now)
        index, ids, k = self._index, self._ids, len(replacing)
        if any(map(index.__contains__, streams[:k])):
            raise ValueError("a stream that replaces another is in the store already")
        taken = np.fromiter(map(index.pop, replacing), np.int64, k)
        for stream, slot in zip(streams[:k], taken.tolist(), strict=True):
            index[stream] = slot
            ids[slot] = stream
        self._use(taken)  # most recently used, as a new stream is
        self.last_seen[taken] = now  # as slots() sets a new stream's
        if len(streams) == k:
            return taken
        return np.concatenate([taken, self.slots(streams[k:], now)])

    def restore_what_fits(
        self, items: list[tuple[str, bytes]]
    ) -> tuple[list[str], list[tuple[str, str]], int]:
        """Restore the most recent records that fit, record by record if some are bad.

        ``items`` are in the order they were written (the last one most
        recent). Returns the streams loaded, (stream, why) for each record
        skipped (written for another architecture, or undecodable), and how
        many were left out for want of room.
        """
        room = max(self.max_streams - len(self), 0)
        left_out = max(len(items) - room, 0)
        if left_out:
            items = items[left_out:]
        skipped: list[tuple[str, str]] = []
        try:
            self.restore(items)
            return [s for s, _ in items], skipped, left_out
        except StateFormatError:
            pass
        loaded: list[str] = []
        for stream, value in items:
            try:
                self.restore([(stream, value)])
                loaded.append(stream)
            except StateFormatError as exc:
                skipped.append((stream, str(exc)))
        return loaded, skipped, left_out

    def as_current(self, value: bytes) -> bytes:
        """A format-1 record of this store's shape under the current header (same fields);
        for a store with an adaptive width, a format-2 one of its shape with ``log w`` 0."""
        v1 = self._v1_header
        if v1 is not None and value[: len(v1)] == v1:
            value = self._v2_header + value[len(v1) :]
        if self.adaptive and value[: len(self._v2_header)] == self._v2_header:
            unmoved = bytes(4 * self.output_size)  # float32 zeros: log w = 0
            if len(value) + len(unmoved) == self._record.itemsize:
                return self._header + value[len(self._v2_header) :] + unmoved
        return value

    def refusal(self, stream: str, value: object) -> str | None:
        """Why this store cannot load ``value`` as the snapshot of ``stream`` (None: it can).

        ``value`` in the current format (see :meth:`as_current`)."""
        if not isinstance(value, bytes):
            return f"state of stream {stream!r} is not bytes"
        header, size = self._header, self._record.itemsize
        if value[: len(header)] != header:
            return self._explain_header(stream, value)
        if len(value) != size:
            return f"state of stream {stream!r} has {len(value)} bytes, expected {size}"
        return None

    def last_seen_of(self, block: bytes | memoryview) -> np.ndarray:
        """The ``last_seen`` of each snapshot in a block of whole snapshots of this store."""
        return np.frombuffer(block, dtype=self._record)["last_seen"].copy()

    def positions(self, values: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """The (input partition, offset) each snapshot says it reflects, without loading
        it (a restore checks them first); NO_POSITION where a value is not a snapshot
        of this store's layout."""
        n = len(values)
        partition = np.full(n, NO_POSITION, np.int64)
        offset = np.full(n, NO_POSITION, np.int64)
        header, size = self._header, self._record.itemsize
        good = [k for k, v in enumerate(values) if len(v) == size and v[: len(header)] == header]
        if good:
            rec = np.frombuffer(b"".join(values[k] for k in good), dtype=self._record)
            partition[good] = rec["partition"]
            offset[good] = rec["offset"]
        return partition, offset

    def _explain_header(self, stream: str, value: bytes) -> str:
        magic = value[:4]
        headers = {
            SNAPSHOT_MAGIC: _HEADER,
            HISTORY_MAGIC: _HISTORY_HEADER,
            SNAPSHOT_V2_MAGIC: _V2_HEADER,
            SNAPSHOT_V3_MAGIC: _V2_HEADER,
        }
        if magic not in headers:
            if len(value) < 4:
                return f"state of stream {stream!r} is truncated ({len(value)} bytes)"
            return f"state of stream {stream!r} is not a streamcell snapshot (magic {magic!r})"
        header = headers[magic]
        if len(value) < header.size:
            return f"state of stream {stream!r} is truncated ({len(value)} bytes)"
        _, layers, hidden, output, inputs, *rest = header.unpack_from(value)
        buffer = rest[0] if rest else 0
        levels = rest[1] if len(rest) > 1 else 0
        mine = len(self.quantile_levels)
        if levels or mine:  # a point head's records say nothing of levels
            if levels == mine and rest[2] != levels_digest(self.quantile_levels):
                levels = f"{levels} (other levels)"
            theirs, ours = f" quantile_levels={levels}", f" quantile_levels={mine}"
        else:
            theirs = ours = ""
        if magic == SNAPSHOT_V3_MAGIC or self.adaptive:
            theirs += " adaptive width" if magic == SNAPSHOT_V3_MAGIC else " no adaptive width"
            ours += " adaptive width" if self.adaptive else " no adaptive width"
        return (
            f"state of stream {stream!r} was written for layers={layers} hidden={hidden} "
            f"output={output} input={inputs} {_history_text(buffer)}{theirs}; this store has "
            f"layers={self.num_layers} hidden={self.hidden_size} output={self.output_size} "
            f"input={self.input_size} {_history_text(self.buffer_size)}{ours}"
        )


def _history_text(buffer_size: int) -> str:
    if buffer_size:
        return f"history={buffer_size} (a recipe's ring of {buffer_size} values)"
    return "history=0 (no recipe)"
