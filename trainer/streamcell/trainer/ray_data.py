"""Training data as a Ray Dataset: Parquet files grouped into whole streams and checked.

:func:`read_streams` reads one Parquet file or a directory of them in Ray
tasks (a bounded number of rows at a time), groups the rows by stream (a
shuffle: each stream's rows meet in one task) and turns every stream into one row: its id,
its length, its feature and target values in order as float32 bytes, a
stable hash of the id (which worker trains it: :func:`shards`) and what
:func:`streamcell.trainer.data.load_long_frame`'s checks found in it. The
grouped dataset is materialised once in Ray's object store, which spills to
disk; every later pass reads it. The driver folds one small summary per task
(counts, histograms of lengths and of time gaps, a sum of per-stream
digests), so its memory does not grow with the data.

The fingerprint is not the in-memory one (that hashes the streams in order):
it is the SHA-256 of the columns and of the sum, modulo 2**256, of each
stream's SHA-256, which no order of the rows or files changes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from streamcell.core.errors import DataError
from streamcell.trainer.data import MIN_ROWS, DataInfo, parquet_files, split_point
from streamcell.trainer.periods import calendar_spacing

if TYPE_CHECKING:
    import pandas as pd

PASS_BATCH = 256  # streams per task of a pass over the grouped data
READ_ROWS = 1 << 18  # rows of a file read at a time
T = TypeVar("T")


@dataclass(frozen=True)
class StreamDataset:
    """The streams long enough to train on, one row each, in Ray's object store."""

    dataset: Any  # ray.data.Dataset: stream, n, key_hash, x, y
    info: DataInfo
    train_lengths: dict[int, int]  # training-part length -> streams kept with it
    val_fraction: float

    @property
    def streams(self) -> int:
        return self.info.stream_count - self.info.left_out

    @property
    def train_pairs(self) -> int:
        return sum((n - 1) * k for n, k in self.train_lengths.items())

    def decode(self, batch: dict[str, np.ndarray]) -> tuple[list[str], list[Any], list[Any]]:
        """(ids, x [T, F] arrays, y [T, O] arrays) of a numpy batch of this dataset."""
        return decode(batch, len(self.info.features), len(self.info.targets))


def decode(
    batch: dict[str, np.ndarray], features: int, targets: int
) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    names = [str(s) for s in batch["stream"]]
    ns = [int(n) for n in batch["n"]]
    xs = [np.frombuffer(b, "<f4").reshape(n, features) for b, n in zip(batch["x"], ns, strict=True)]
    ys = [np.frombuffer(b, "<f4").reshape(n, targets) for b, n in zip(batch["y"], ns, strict=True)]
    return names, xs, ys


def key_hash(stream: str) -> int:
    """A stream's place in the order streams are dealt to workers (the same every run)."""
    # Not Python's hash() (salted per process); not CRC-32, whose low bits follow the
    # last character of ids like s0, s1, ... too closely to spread them.
    return int.from_bytes(hashlib.blake2b(stream.encode(), digest_size=8).digest(), "big") >> 1


def read_streams(
    path: str | os.PathLike[str],
    stream_column: str = "stream",
    order_column: str = "seq",
    features: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    *,
    val_fraction: float,
) -> StreamDataset:
    """Read, group and check a Parquet file or directory; needs a running Ray.

    Raises DataError naming the column or stream at fault, as load_long_frame does.
    """
    import ray.data

    files = parquet_files(path)
    quiet()
    source = str(path)
    schema = _schema(files, source)
    feats, targs, timestamp = _columns(
        schema, source, stream_column, order_column, features, targets
    )
    columns = list(dict.fromkeys([*feats, *targs]))
    group = partial(
        _stream_row,
        stream_column=stream_column,
        order_column=order_column,
        columns=columns,
        feat_idx=[columns.index(f) for f in feats],
        targ_idx=[columns.index(t) for t in targs],
        timestamp=timestamp,
        where=f"in {source}",
    )
    wanted = list(dict.fromkeys([stream_column, order_column, *columns]))
    grouped = (
        ray.data.from_items([{"path": str(f)} for f in files], override_num_blocks=len(files))
        .map_batches(partial(_read_files, columns=wanted), batch_size=1)
        # A sort (quiet() picks the sort shuffle): its partitions are the read's blocks,
        # READ_ROWS rows at most, so no task's memory grows with the data.
        .groupby(stream_column)
        .map_groups(group, batch_format="pandas")
        .materialize()
    )
    summary = fold(grouped, partial(_summarise, val_fraction=val_fraction), _Summary())
    if summary.error:
        raise DataError(summary.error)
    if summary.rows == 0:
        raise DataError(f"{source} holds no rows")
    if not summary.train_lengths:
        raise DataError(
            f"every stream is too short to train on with --val-fraction {val_fraction} "
            f"(the longest has {summary.longest} rows; each needs at least {MIN_ROWS})"
        )
    kept = grouped.map_batches(
        _keep_long, fn_kwargs={"val_fraction": val_fraction}, batch_format="numpy"
    ).materialize()
    del grouped  # its blocks leave the object store
    digest = hashlib.sha256(repr((tuple(feats), tuple(targs))).encode())
    digest.update(summary.digest.to_bytes(32, "big"))
    info = DataInfo(
        source,
        stream_column,
        order_column,
        tuple(feats),
        tuple(targs),
        digest.hexdigest(),
        summary.rows,
        summary.streams,
        summary.streams - summary.kept,
        calendar_spacing(summary.gaps) if summary.gaps else None,
    )
    return StreamDataset(kept, info, dict(summary.train_lengths), val_fraction)


def shards(data: StreamDataset, world: int) -> list[Any]:
    """One materialised dataset per rank, of whole streams: in the order of :func:`key_hash`,
    cut into ``world`` runs whose sizes differ by one at most (as round-robin's do)."""
    if world == 1:
        return [data.dataset]
    n = data.streams
    cuts = hash_ranks(data, [n * r // world for r in range(1, world)])
    return [
        data.dataset.map_batches(
            _rank_rows, fn_kwargs={"rank": rank, "cuts": cuts}, batch_format="numpy"
        ).materialize()
        for rank in range(world)
    ]


def hash_ranks(data: StreamDataset, ranks: list[int]) -> list[int]:
    """The key hashes at these ranks (from 0) of all the streams' hashes in order.

    Exact, without collecting them: four passes, each a histogram of the next
    16 bits of the hashes that share the bits found so far (what a sort of
    the whole rows would give, but a sort here made the driver's memory grow
    with the streams).
    """
    from streamcell.trainer.dataset_plan import select  # it imports this module

    prefixes, within = [0] * len(ranks), list(ranks)
    for level in range(4):  # bits 48..62, 32..47, 16..31, 0..15 (hashes are 63 bits)
        shift = 48 - 16 * level
        hists = fold(
            data.dataset,
            partial(_hash_histograms, shift=shift, prefixes=tuple(sorted(set(prefixes)))),
            _Hists(),
        )
        for k, prefix in enumerate(prefixes):
            b, within[k] = select(hists.counts[prefix], within[k])
            prefixes[k] = (prefix << 16) | b
    return prefixes


@dataclass
class _Hists:
    counts: dict[int, Any] = field(default_factory=dict)

    def __add__(self, other: _Hists) -> _Hists:
        keys = set(self.counts) | set(other.counts)
        return _Hists({k: self.counts.get(k, 0) + other.counts.get(k, 0) for k in keys})


def _hash_histograms(batch: dict[str, np.ndarray], shift: int, prefixes: tuple[int, ...]) -> _Hists:
    keys = batch["key_hash"].astype(np.uint64)
    top = keys >> np.uint64(shift + 16) if shift < 48 else np.zeros_like(keys)
    digit = ((keys >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.int64)
    return _Hists({p: np.bincount(digit[top == np.uint64(p)], minlength=1 << 16) for p in prefixes})


def fold(ds: Any, summarise: Callable[[dict[str, np.ndarray]], T], start: T) -> T:
    """``start`` merged (``+``) with ``summarise`` of each batch of ``ds``, batches run as
    Ray tasks; only the summaries reach this process, one batch of them at a time."""

    def task(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"part": np.array([pickle.dumps(summarise(batch))], dtype=object)}

    total = start
    parts = ds.map_batches(task, batch_size=PASS_BATCH, batch_format="numpy")
    for batch in parts.iter_batches(batch_size=16, batch_format="numpy"):
        for blob in batch["part"]:
            total = total + pickle.loads(blob)  # type: ignore[operator]
    return total


def quiet() -> None:
    """Ray Data's progress lines off (the trainer prints its own), and a sort-based
    shuffle, which starts in seconds where the hash shuffle's actors take many."""
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    ctx = DataContext.get_current()
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _schema(files: Sequence[Path], source: str) -> Any:
    """The first file's schema; every file must hold its columns with the same types."""
    import pyarrow.parquet as pq

    first = None
    for f in files:
        try:
            schema = pq.read_schema(f)
        except Exception as exc:  # pyarrow's own types for corrupt files
            raise DataError(f"cannot read {f}: {type(exc).__name__}: {exc}") from None
        if first is None:
            first = schema
            continue
        for name, kind in zip(first.names, first.types, strict=True):
            at = schema.get_field_index(name)
            if at < 0 or schema.types[at] != kind:
                got = "no such column" if at < 0 else str(schema.types[at])
                raise DataError(
                    f"{f} does not match {files[0]} in {source}: column {name!r} is "
                    f"{kind} there, {got} here"
                )
    return first


def _read_files(batch: dict[str, np.ndarray], columns: list[str]) -> Iterator[Any]:
    """The rows of each file, a bounded number at a time (a task never holds a whole file).

    Our own reader, not ray.data.read_parquet: Ray 2.60's lists paths in threads that
    race on importing fsspec's HTTP filesystem where aiohttp is missing, failing reads
    now and then.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in batch["path"]:
        for part in pq.ParquetFile(str(path)).iter_batches(batch_size=READ_ROWS, columns=columns):
            yield pa.Table.from_batches([part])


@dataclass
class _Summary:
    rows: int = 0
    streams: int = 0
    kept: int = 0
    longest: int = 0
    train_lengths: Counter[int] = field(default_factory=Counter)
    gaps: Counter[float] = field(default_factory=Counter)
    digest: int = 0
    error: str | None = None

    def __add__(self, other: _Summary) -> _Summary:
        return _Summary(
            self.rows + other.rows,
            self.streams + other.streams,
            self.kept + other.kept,
            max(self.longest, other.longest),
            self.train_lengths + other.train_lengths,
            self.gaps + other.gaps,
            (self.digest + other.digest) % (1 << 256),
            self.error or other.error,
        )


def _summarise(batch: dict[str, np.ndarray], val_fraction: float) -> _Summary:
    out = _Summary()
    for n, gv, gc, digest, error in zip(
        batch["n"],
        batch["gap_values"],
        batch["gap_counts"],
        batch["digest"],
        batch["error"],
        strict=True,
    ):
        if error:
            out.error = out.error or str(error)
            continue
        n = int(n)
        out.rows += n
        out.streams += 1
        out.longest = max(out.longest, n)
        if _long_enough(n, val_fraction):
            out.kept += 1
            out.train_lengths[split_point(n, val_fraction)] += 1
        values, counts = np.frombuffer(gv, "<f8"), np.frombuffer(gc, "<i8")
        out.gaps.update(dict(zip(values.tolist(), counts.tolist(), strict=True)))
        out.digest = (out.digest + int.from_bytes(digest, "big")) % (1 << 256)
    return out


def _long_enough(n: int, val_fraction: float) -> bool:
    return n >= MIN_ROWS and split_point(n, val_fraction) >= 2


def _keep_long(batch: dict[str, np.ndarray], val_fraction: float) -> dict[str, np.ndarray]:
    keep = np.array([_long_enough(int(n), val_fraction) for n in batch["n"]], dtype=bool)
    cols = ("stream", "n", "key_hash", "x", "y")
    return {k: batch[k][keep] for k in cols}


def _rank_rows(batch: dict[str, np.ndarray], rank: int, cuts: list[int]) -> dict[str, np.ndarray]:
    keys = batch["key_hash"].astype(np.int64)
    low = cuts[rank - 1] if rank > 0 else None
    high = cuts[rank] if rank < len(cuts) else None
    mine = np.ones(len(keys), dtype=bool)
    if low is not None:
        mine &= keys >= low
    if high is not None:
        mine &= keys < high
    return {k: v[mine] for k, v in batch.items()}


def _columns(
    schema: Any,
    source: str,
    stream_column: str,
    order_column: str,
    features: Sequence[str] | None,
    targets: Sequence[str] | None,
) -> tuple[list[str], list[str], bool]:
    """Feature and target columns, and whether the order is a time; load_long_frame's checks."""
    import pyarrow as pa

    types = dict(zip(schema.names, schema.types, strict=True))
    where = f"in {source}"
    shown = ", ".join(list(types)[:20]) + (" ..." if len(types) > 20 else "")

    def numeric(t: Any) -> bool:
        return bool(pa.types.is_integer(t) or pa.types.is_floating(t))

    for role, col in (("stream", stream_column), ("order", order_column)):
        if col not in types:
            raise DataError(f"{role} column {col!r} is missing {where} (columns: {shown})")
    if stream_column == order_column:
        raise DataError("the stream column and the order column must differ")
    if features is None:
        features = [
            c for c, t in types.items() if c not in (stream_column, order_column) and numeric(t)
        ]
        if not features:
            raise DataError(f"no numeric feature column {where} (columns: {shown})")
    feats = [str(f) for f in features]
    targs = list(feats) if targets is None else [str(t) for t in targets]
    for role, names in (("feature", feats), ("target", targs)):
        if not names:
            raise DataError(f"no {role} columns given")
        if len(set(names)) != len(names):
            raise DataError(f"{role} columns repeat a name: {names}")
        for col in names:
            if col not in types:
                raise DataError(f"{role} column {col!r} is missing {where} (columns: {shown})")
            if col in (stream_column, order_column):
                raise DataError(f"{role} column {col!r} is the stream or order column")
            if not numeric(types[col]):
                raise DataError(f"{role} column {col!r} is not numeric ({types[col]}) {where}")
    order = types[order_column]
    timestamp = bool(pa.types.is_timestamp(order))
    if not numeric(order) and not timestamp:
        raise DataError(f"order column {order_column!r} is not numeric or a timestamp {where}")
    return feats, targs, timestamp


def _stream_row(
    df: pd.DataFrame,
    *,
    stream_column: str,
    order_column: str,
    columns: list[str],
    feat_idx: list[int],
    targ_idx: list[int],
    timestamp: bool,
    where: str,
) -> pd.DataFrame:
    """One stream's rows -> one row: its values in order, or what is wrong with them."""
    import pandas as pd

    key = df[stream_column].iloc[0]
    name = "" if pd.isna(key) else str(key)

    def row(error: str = "", **fields: Any) -> pd.DataFrame:
        empty = b""
        base = {
            "stream": name,
            "n": 0,
            "key_hash": key_hash(name),
            "x": empty,
            "y": empty,
            "gap_values": empty,
            "gap_counts": empty,
            "digest": bytes(32),
            "error": error,
        }
        base.update(fields)
        return pd.DataFrame({k: [v] for k, v in base.items()})

    if pd.isna(key):
        return row(f"stream column {stream_column!r} has empty values {where}")
    order = df[order_column]
    if order.isna().any():
        return row(f"order column {order_column!r} has empty values {where}")
    values = df[columns].to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        count = int(bad.any(axis=1).sum())
        return row(
            f"column {columns[c]!r} holds NaN or infinite values {where} "
            f"(stream {name!r}, {order_column}={order.iloc[r]}; {count} bad rows in it)"
        )
    if np.abs(values).max() > np.finfo(np.float32).max:
        return row(f"values {where} do not fit float32")
    idx = np.argsort(order.to_numpy(), kind="stable")
    ordered = order.to_numpy()[idx]
    dup = np.flatnonzero(ordered[1:] == ordered[:-1])
    if len(dup):
        first = order.iloc[idx[dup[0]]]
        return row(f"stream {name!r} has two rows with {order_column}={first} {where}")
    v32 = values.astype(np.float32)[idx]
    x = np.ascontiguousarray(v32[:, feat_idx]).astype("<f4")
    y = np.ascontiguousarray(v32[:, targ_idx]).astype("<f4")
    gap_values, gap_counts = np.zeros(0), np.zeros(0, dtype=np.int64)
    if timestamp:
        gaps = pd.Series(pd.to_datetime(ordered)).diff().dropna().dt.total_seconds()
        gap_values, gap_counts = np.unique(gaps.to_numpy(np.float64), return_counts=True)
    digest = hashlib.sha256(name.encode() + b"\0" + str(len(x)).encode() + b"\0")
    digest.update(x.tobytes())
    digest.update(y.tobytes())
    return row(
        n=len(x),
        x=x.tobytes(),
        y=y.tobytes(),
        gap_values=gap_values.astype("<f8").tobytes(),
        gap_counts=gap_counts.astype("<i8").tobytes(),
        digest=digest.digest(),
    )
