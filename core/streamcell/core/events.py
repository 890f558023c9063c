"""The event as the core sees it: a columnar micro-batch, and its validation.

Decoders (JSON and protobuf, in the service) and the gRPC servicer build an
:class:`EventBatch`; :func:`find_invalid` applies the event rules of docs/ARCHITECTURE.md
in bulk so that the Kafka path can dead-letter bad rows and the gRPC path can
refuse a request before any state changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NO_SEQ = -1
NO_POSITION = -1
MAX_STREAM_ID_BYTES = 256

# Dead-letter reasons (stable codes; the header value on the dead-letter topic).
REASON_BAD_JSON = "bad_json"
REASON_BAD_PROTOBUF = "bad_protobuf"
REASON_BAD_FIELD = "bad_field"
REASON_MISSING_KEY = "missing_key"
REASON_KEY_TOO_LONG = "key_too_long"
REASON_WRONG_LENGTH = "wrong_length"
REASON_NON_FINITE = "non_finite"
REASON_BAD_SEQ = "bad_seq"


@dataclass
class EventBatch:
    """Events in columns; row k of every column is one event."""

    streams: list[str]
    x: np.ndarray  # [N, input] float32
    seq: np.ndarray  # [N] int64, NO_SEQ when absent
    partition: np.ndarray  # [N] int32, NO_POSITION when not from Kafka
    offset: np.ndarray  # [N] int64, NO_POSITION when not from Kafka

    def __len__(self) -> int:
        return len(self.streams)

    @classmethod
    def of(
        cls,
        streams: Sequence[str],
        x: Sequence[Sequence[float]] | np.ndarray,
        seq: Sequence[int] | np.ndarray | None = None,
        partition: Sequence[int] | np.ndarray | None = None,
        offset: Sequence[int] | np.ndarray | None = None,
    ) -> EventBatch:
        n = len(streams)
        arr = np.asarray(x, dtype=np.float32)
        if arr.ndim == 1 and n == 0:
            arr = arr.reshape(0, 0)
        if arr.ndim != 2 or arr.shape[0] != n:
            raise ValueError(f"x must be [N, input] with N={n}, got shape {arr.shape}")

        def column(values, dtype, fill) -> np.ndarray:
            if values is None:
                return np.full(n, fill, dtype=dtype)
            out = np.asarray(values, dtype=dtype)
            if out.shape != (n,):
                raise ValueError(f"column has shape {out.shape}, expected ({n},)")
            return out

        return cls(
            list(streams),
            arr,
            column(seq, np.int64, NO_SEQ),
            column(partition, np.int32, NO_POSITION),
            column(offset, np.int64, NO_POSITION),
        )

    def take(self, rows: np.ndarray) -> EventBatch:
        return EventBatch(
            [self.streams[k] for k in rows],
            self.x[rows],
            self.seq[rows],
            self.partition[rows],
            self.offset[rows],
        )


def find_invalid(batch: EventBatch, input_size: int) -> list[tuple[int, str, str]]:
    """Rows that break the rules, as (row, reason, message); empty when all are good."""
    bad: list[tuple[int, str, str]] = []
    if batch.x.shape[1] != input_size:
        return [
            (
                k,
                REASON_WRONG_LENGTH,
                f"x has {batch.x.shape[1]} values, the model takes {input_size}",
            )
            for k in range(len(batch))
        ]
    for k in np.flatnonzero(~np.isfinite(batch.x).all(axis=1)):
        bad.append((int(k), REASON_NON_FINITE, "x holds NaN or infinite values"))
    for k in np.flatnonzero(batch.seq < NO_SEQ):
        bad.append((int(k), REASON_BAD_SEQ, f"seq must be >= 0, got {int(batch.seq[k])}"))
    streams = batch.streams
    if streams and all(streams) and max(map(len, streams)) <= MAX_STREAM_ID_BYTES // 4:
        return sorted(bad)  # every id is present and short enough (4 bytes a character at most)
    for k, stream in enumerate(streams):
        if not stream:
            bad.append((k, REASON_MISSING_KEY, "the stream id is empty"))
        elif len(stream) > MAX_STREAM_ID_BYTES // 4 and len(stream.encode()) > MAX_STREAM_ID_BYTES:
            bad.append(
                (
                    k,
                    REASON_KEY_TOO_LONG,
                    f"the stream id is longer than {MAX_STREAM_ID_BYTES} bytes",
                )
            )
    bad.sort()
    return bad
