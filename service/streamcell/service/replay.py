"""Replay recorded events into the events topic: read, encode in bulk, pace, produce.

Input is a long-format table (CSV or Parquet: a stream column, an order
column, numeric feature columns; the trainer reads the same files) or JSON
lines (one event object per line, as docs/ARCHITECTURE.md defines it). Table rows are
sent in time order across streams (stable sort on the order column), so the
streams interleave as they would live. Keys are the stream ids.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamcell.core.errors import ConfigError, DataError
from streamcell.service.settings import FORMAT_JSON, FORMATS

log = logging.getLogger(__name__)

CHUNK = 2_000  # events encoded and handed to the producer at once


@dataclass(frozen=True)
class Events:
    """Events in columns, in send order."""

    streams: list[str]
    x: np.ndarray  # [N, F] float32
    seq: np.ndarray | None  # [N] int64
    ts: np.ndarray | None  # [N] float64 seconds

    def __len__(self) -> int:
        return len(self.streams)

    def rows(self, start: int, stop: int) -> Events:
        return Events(
            self.streams[start:stop],
            self.x[start:stop],
            None if self.seq is None else self.seq[start:stop],
            None if self.ts is None else self.ts[start:stop],
        )


def read_table(
    path: Path,
    stream_column: str = "stream",
    order_column: str | None = "seq",
    features: Sequence[str] | None = None,
    ts_column: str | None = None,
) -> Events:
    """A CSV/Parquet long-format file -> events in time order.

    ``seq`` is the order column when it holds integers; ``ts`` comes from
    ``ts_column`` (seconds, or datetimes), by default from a ``ts`` column if
    there is one. Neither is ever a feature.
    """
    try:
        import pandas as pd
    except ImportError as exc:
        raise ConfigError("reading CSV/Parquet needs pandas: pip install pandas pyarrow") from exc
    suffix = path.suffix.lower()
    try:
        frame = pd.read_parquet(path) if suffix in (".parquet", ".pq") else pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if order_column is not None and order_column not in frame.columns:
        order_column = None
    if ts_column is None and "ts" in frame.columns:
        ts_column = "ts"  # the event contract's name for event time
    for col in (stream_column, ts_column):
        if col is not None and col not in frame.columns:
            raise DataError(f"column {col!r} is missing in {path} (columns: {list(frame.columns)})")
    reserved = {stream_column, order_column, ts_column}
    if features is None:
        features = [
            c
            for c in frame.columns
            if c not in reserved
            and pd.api.types.is_numeric_dtype(frame[c])
            and not pd.api.types.is_bool_dtype(frame[c])
        ]
    missing = [f for f in features if f not in frame.columns]
    if missing or not features:
        raise DataError(f"feature columns {missing or '(none)'} not usable in {path}")
    if order_column is not None:
        frame = frame.sort_values(order_column, kind="stable")
    seq = None
    if order_column is not None and pd.api.types.is_integer_dtype(frame[order_column]):
        seq = frame[order_column].to_numpy(np.int64)
    ts = None
    if ts_column is not None:
        col = frame[ts_column]
        if pd.api.types.is_numeric_dtype(col):
            ts = col.to_numpy(np.float64)
        else:  # datetimes (or their text): seconds since the epoch, UTC unless zoned
            try:
                when = pd.to_datetime(col, utc=True)
            except (ValueError, TypeError) as exc:
                raise DataError(f"ts column {ts_column!r} is neither seconds nor times") from exc
            epoch = pd.Timestamp("1970-01-01", tz="UTC")
            ts = ((when - epoch) / pd.Timedelta(seconds=1)).to_numpy(np.float64)
    return Events(
        frame[stream_column].astype(str).tolist(),
        frame[list(features)].to_numpy(np.float32),
        seq,
        ts,
    )


def read_json_lines(path: Path, stream_field: str = "stream") -> Events:
    """JSON lines of events; the stream id is the ``stream`` field."""
    streams, xs, seqs, tss = [], [], [], []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                streams.append(str(event[stream_field]))
                xs.append([float(v) for v in event["x"]])
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{number}: not an event ({exc})") from exc
            seqs.append(event.get("seq"))
            tss.append(event.get("ts"))
    if len({len(x) for x in xs}) > 1:
        raise DataError(f"{path}: events have x of different lengths")
    seq = np.array(seqs, np.int64) if seqs and all(s is not None for s in seqs) else None
    ts = np.array(tss, np.float64) if tss and all(t is not None for t in tss) else None
    return Events(streams, np.array(xs, np.float32).reshape(len(xs), -1), seq, ts)


def read_events(path: Path, **table_options) -> Events:
    if not path.is_file():
        raise ConfigError(f"no such file: {path}")
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        return read_json_lines(path)
    return read_table(path, **table_options)


def encode(events: Events, event_format: str = FORMAT_JSON) -> list[tuple[bytes, bytes]]:
    """(key, value) per event; JSON as docs/ARCHITECTURE.md defines it, or the protobuf Event."""
    if event_format not in FORMATS:
        raise ConfigError(f"event format must be one of {FORMATS}, got {event_format!r}")
    keys = [s.encode() for s in events.streams]
    if event_format == "protobuf":
        from streamcell.v1.event_pb2 import Event

        values = []
        for k, stream in enumerate(events.streams):
            e = Event(stream=stream, x=events.x[k].tolist())
            if events.seq is not None:
                e.seq = int(events.seq[k])
            if events.ts is not None:
                e.ts = float(events.ts[k])
            values.append(e.SerializeToString())
        return list(zip(keys, values, strict=True))
    # float32 -> Python float repr round-trips exactly; one join per event, no json.dumps.
    xs = [",".join(map(repr, row)) for row in events.x.tolist()]
    seqs = events.seq.tolist() if events.seq is not None else None
    tss = events.ts.tolist() if events.ts is not None else None
    out = []
    for k, stream in enumerate(events.streams):
        parts = ['{"stream":', json.dumps(stream)]
        if seqs is not None:
            parts.append(f',"seq":{seqs[k]}')
        if tss is not None:
            parts.append(f',"ts":{tss[k]!r}')
        parts.append(f',"x":[{xs[k]}]}}')
        out.append((keys[k], "".join(parts).encode()))
    return out


def paced_chunks(n: int, rate: float | None, chunk: int = CHUNK) -> Iterator[tuple[int, int]]:
    """(start, stop) slices of 0..n; with a rate, each is yielded no earlier than its time."""
    if rate is None or rate <= 0:
        for start in range(0, n, chunk):
            yield start, min(n, start + chunk)
        return
    step = max(1, min(chunk, int(rate / 100)))  # about 100 sends per second
    began = time.monotonic()
    for start in range(0, n, step):
        wait = began + start / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        yield start, min(n, start + step)
