"""Training data in long format: read, validate, and split into per-stream arrays.

A long frame has one row per event: a stream column, an order column and
numeric feature columns. :func:`load_long_frame` checks everything a training
run needs before any worker starts, and raises :class:`DataError` naming the
file, column or stream at fault. The result, :class:`LongFrame`, holds one
float32 array per stream in order (float32 because that is what events carry
to the service), plus a SHA-256 fingerprint of exactly those numbers.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from streamcell.core.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class LongFrame:
    """Validated training data: per stream, features x ``[T, F]`` and targets y ``[T, O]``."""

    streams: tuple[str, ...]
    x: tuple[np.ndarray, ...]  # float32 [T_s, F], in order
    y: tuple[np.ndarray, ...]  # float32 [T_s, O], the target columns of the same rows
    features: tuple[str, ...]
    targets: tuple[str, ...]
    stream_column: str
    order_column: str
    fingerprint: str  # sha256 of stream ids, column names and values
    source: str
    spacing: float | None = None  # median seconds between rows where the order is a time filled
    left_out: int = 0  # streams too short to train on (drop_short), not in this frame

    @property
    def rows(self) -> int:
        return sum(len(a) for a in self.x)

    @property
    def stream_count(self) -> int:
        return len(self.streams)

    def lengths(self) -> np.ndarray:
        return np.array([len(a) for a in self.x], dtype=np.int64)


@dataclass(frozen=True)
class DataInfo:
    """What a run's provenance records of data it never holds whole (a Ray Dataset)."""

    source: str
    stream_column: str
    order_column: str
    features: tuple[str, ...]
    targets: tuple[str, ...]
    fingerprint: str
    rows: int
    stream_count: int  # streams read, those too short to train on included
    left_out: int  # streams too short to train on
    spacing: float | None = None


def parquet_files(path: str | os.PathLike[str]) -> list[Path]:
    """The Parquet files of a directory (sorted by name: the rows' order), or the one file."""
    where = Path(path)
    if not where.exists():
        raise DataError(f"data {where} does not exist")
    if where.is_file():
        if not where.name.lower().endswith(PARQUET_SUFFIXES):
            raise DataError(f"data file {where} is not Parquet ({', '.join(PARQUET_SUFFIXES)})")
        files = [where]
    elif where.is_dir():
        files = sorted(
            f for f in where.rglob("*") if f.is_file() and f.name.lower().endswith(PARQUET_SUFFIXES)
        )
        if not files:
            raise DataError(
                f"data directory {where} holds no Parquet files ({', '.join(PARQUET_SUFFIXES)})"
            )
    else:
        raise DataError(f"data {where} is neither a file nor a directory")
    for f in files:
        if not os.access(f, os.R_OK):
            raise DataError(f"data file {f} is not readable")
    return files


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a CSV or Parquet file (or a directory of Parquet files), with a DataError for
    anything unreadable."""
    import pandas as pd

    file = Path(path)
    name = file.name.lower()
    if file.is_dir():
        files = parquet_files(file)
        try:
            return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        except Exception as exc:  # pyarrow raises its own types for corrupt files
            raise DataError(f"cannot read {file}: {type(exc).__name__}: {exc}") from None
    if not file.exists():
        raise DataError(f"data file {file} does not exist")
    if not file.is_file():
        raise DataError(f"data file {file} is not a regular file")
    if not os.access(file, os.R_OK):
        raise DataError(f"data file {file} is not readable")
    try:
        if name.endswith(PARQUET_SUFFIXES):
            return pd.read_parquet(file)
        if name.endswith(CSV_SUFFIXES):
            return pd.read_csv(file, sep="\t" if name.endswith(".tsv") else ",")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read {file}: {exc}") from None
    except Exception as exc:  # pyarrow raises its own types for corrupt files
        raise DataError(f"cannot read {file}: {type(exc).__name__}: {exc}") from None
    raise DataError(
        f"data file {file} must be CSV ({', '.join(CSV_SUFFIXES)}) "
        f"or Parquet ({', '.join(PARQUET_SUFFIXES)})"
    )


def load_long_frame(
    data: str | os.PathLike[str] | pd.DataFrame,
    stream_column: str = "stream",
    order_column: str = "seq",
    features: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
) -> LongFrame:
    """Validate a long-format table (a path or a DataFrame) and split it by stream.

    ``features`` defaults to every numeric column but the stream and order
    columns; ``targets`` defaults to the features. Rows are ordered by the
    order column within each stream; streams keep their first-appearance order.
    """
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        frame, source = data, "<DataFrame>"
    else:
        frame, source = read_table(data), str(data)
    where = f"in {source}"
    if len(frame) == 0:
        raise DataError(f"{source} holds no rows")
    for role, col in (("stream", stream_column), ("order", order_column)):
        if col not in frame.columns:
            raise DataError(f"{role} column {col!r} is missing {where} (columns: {_cols(frame)})")
    if stream_column == order_column:
        raise DataError("the stream column and the order column must differ")
    if features is None:
        features = [
            c
            for c in frame.columns
            if c not in (stream_column, order_column)
            and pd.api.types.is_numeric_dtype(frame[c])
            and not pd.api.types.is_bool_dtype(frame[c])
        ]
        if not features:
            raise DataError(f"no numeric feature column {where} (columns: {_cols(frame)})")
    features = [str(f) for f in features]
    targets = list(features) if targets is None else [str(t) for t in targets]
    for role, names in (("feature", features), ("target", targets)):
        if not names:
            raise DataError(f"no {role} columns given")
        if len(set(names)) != len(names):
            raise DataError(f"{role} columns repeat a name: {names}")
        for col in names:
            if col not in frame.columns:
                raise DataError(
                    f"{role} column {col!r} is missing {where} (columns: {_cols(frame)})"
                )
            if col in (stream_column, order_column):
                raise DataError(f"{role} column {col!r} is the stream or order column")
            if not pd.api.types.is_numeric_dtype(frame[col]) or pd.api.types.is_bool_dtype(
                frame[col]
            ):
                raise DataError(
                    f"{role} column {col!r} is not numeric (dtype {frame[col].dtype}) {where}"
                )
    if frame[stream_column].isna().any():
        raise DataError(f"stream column {stream_column!r} has empty values {where}")
    order = frame[order_column]
    if not pd.api.types.is_numeric_dtype(order) and not pd.api.types.is_datetime64_any_dtype(order):
        raise DataError(f"order column {order_column!r} is not numeric or a timestamp {where}")
    if order.isna().any():
        raise DataError(f"order column {order_column!r} has empty values {where}")

    columns = list(dict.fromkeys([*features, *targets]))
    values = frame[columns].to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        stream = frame[stream_column].iloc[row]
        count = int(bad.any(axis=1).sum())
        raise DataError(
            f"column {columns[col]!r} holds NaN or infinite values {where} "
            f"(stream {stream!r}, {order_column}={frame[order_column].iloc[row]}; "
            f"{count} bad rows in all)"
        )
    if np.abs(values).max() > np.finfo(np.float32).max:
        raise DataError(f"values {where} do not fit float32")

    ids = frame[stream_column].astype(str).to_numpy()
    work = pd.DataFrame({"s": ids, "o": order.to_numpy(), "r": np.arange(len(frame))})
    work = work.sort_values(["s", "o"], kind="stable")
    dup = work.duplicated(["s", "o"])
    if dup.any():
        first = work[dup].iloc[0]
        raise DataError(
            f"stream {first['s']!r} has two rows with {order_column}={first['o']} {where}"
        )
    streams = list(dict.fromkeys(ids))
    spacing = _spacing(work) if pd.api.types.is_datetime64_any_dtype(order) else None
    feat_idx = [columns.index(f) for f in features]
    targ_idx = [columns.index(t) for t in targets]
    values32 = values.astype(np.float32)
    xs, ys = [], []
    groups = dict(tuple(work.groupby("s", sort=False)["r"]))
    for s in streams:
        rows = groups[s].to_numpy()
        xs.append(np.ascontiguousarray(values32[rows][:, feat_idx]))
        ys.append(np.ascontiguousarray(values32[rows][:, targ_idx]))
    return LongFrame(
        tuple(streams),
        tuple(xs),
        tuple(ys),
        tuple(features),
        tuple(targets),
        stream_column,
        order_column,
        _fingerprint(streams, features, targets, xs, ys),
        source,
        spacing,
    )


def _spacing(work: pd.DataFrame) -> float | None:
    """Median time between consecutive rows of a stream, in seconds, where the rows
    fill their time (:func:`streamcell.trainer.periods.calendar_spacing`)."""
    import pandas as pd

    from streamcell.trainer.periods import calendar_spacing

    times = pd.to_datetime(work["o"])
    gaps = times.groupby(work["s"].to_numpy()).diff().dropna()
    if gaps.empty:
        return None
    return calendar_spacing(gaps.dt.total_seconds().value_counts().to_dict())


MIN_ROWS = 3  # two training rows (one step to learn) and one to validate


def drop_short(frame: LongFrame, val_fraction: float) -> LongFrame:
    """The frame without streams too short to train on (counted in ``left_out``).

    Such streams are still served like any other; they only teach the model
    nothing. A stream needs two training rows and one validation row; windows
    longer than a stream are simply cut short by the loop. Raises DataError
    only if no stream is left.
    """
    keep = [
        k
        for k, x in enumerate(frame.x)
        if len(x) >= MIN_ROWS and split_point(len(x), val_fraction) >= 2
    ]
    if not keep:
        longest = max(len(x) for x in frame.x)
        raise DataError(
            f"every stream is too short to train on with --val-fraction {val_fraction} "
            f"(the longest has {longest} rows; each needs at least {MIN_ROWS})"
        )
    if len(keep) == len(frame.x):
        return frame
    return replace(
        frame,
        streams=tuple(frame.streams[k] for k in keep),
        x=tuple(frame.x[k] for k in keep),
        y=tuple(frame.y[k] for k in keep),
        left_out=frame.left_out + len(frame.x) - len(keep),
    )


def split_point(length: int, val_fraction: float) -> int:
    """Rows of a stream before validation starts (its training part)."""
    return length - max(1, math.ceil(length * val_fraction - 1e-9))


def _fingerprint(
    streams: list[str],
    features: Sequence[str],
    targets: Sequence[str],
    xs: list[np.ndarray],
    ys: list[np.ndarray],
) -> str:
    digest = hashlib.sha256()
    digest.update(repr((tuple(features), tuple(targets))).encode())
    for s, x, y in zip(streams, xs, ys, strict=True):
        digest.update(s.encode() + b"\0" + str(len(x)).encode() + b"\0")
        digest.update(x.astype("<f4").tobytes())
        digest.update(y.astype("<f4").tobytes())
    return digest.hexdigest()


def _cols(frame: pd.DataFrame) -> str:
    names = [str(c) for c in frame.columns]
    return ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
