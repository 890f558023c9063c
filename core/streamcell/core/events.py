"""The event as the core sees it: a columnar micro-batch, its rules, and the check of them.

Every rule an event must meet, with the dead-letter reason and the message
that name a breach of it, is written here once (docs/ARCHITECTURE.md lists
them). Decoders (JSON and protobuf in ``streamcell.service.codec``, Event
messages in ``streamcell.service.grpc_convert``) parse values and build an
:class:`EventBatch`; what cannot enter its columns (a Kafka key that is not
a stream id, an x of another length, a seq or ts out of range) they refuse
with the rule and message from here, and :func:`find_invalid` checks the
rest in bulk, so that the Kafka path can dead-letter bad rows and the gRPC
path can refuse a request before any state changes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streamcell.core.errors import InvalidEvent

NO_SEQ = -1
NO_POSITION = -1

# ------------------------------------------------------------------ the rules
MAX_STREAM_ID_BYTES = 256  # a stream id (the Kafka key) in UTF-8
SEQ_MAX = 2**63 - 1  # seq: absent, or an integer in 0..SEQ_MAX
# ts, and each integer of x, lie strictly between -FLOAT_MAX and FLOAT_MAX: a
# float is then finite, and an integer too large for a float is refused exactly.
FLOAT_MAX = sys.float_info.max

# Dead-letter reasons (stable codes; the header value on the dead-letter topic).
REASON_BAD_JSON = "bad_json"
REASON_BAD_PROTOBUF = "bad_protobuf"
REASON_BAD_FIELD = "bad_field"
REASON_MISSING_KEY = "missing_key"
REASON_KEY_TOO_LONG = "key_too_long"
REASON_WRONG_LENGTH = "wrong_length"
REASON_NON_FINITE = "non_finite"
REASON_BAD_SEQ = "bad_seq"
# Found by the Predictor, not the decoders: the event's step overflowed the model.
REASON_NON_FINITE_STATE = "non_finite_state"

# The messages that go with them.
EMPTY_STREAM = "the stream id is empty"
STREAM_TOO_LONG = f"the stream id is longer than {MAX_STREAM_ID_BYTES} bytes"
NO_KEY = "the record has no key (the key is the stream id)"
KEY_TOO_LONG = f"the key is longer than {MAX_STREAM_ID_BYTES} bytes"
KEY_NOT_UTF8 = "the key is not valid UTF-8"
NON_FINITE = "x holds NaN or infinite values"
X_BEYOND_FLOAT = "x holds an integer beyond the float range"
BAD_TS = "ts must be a finite number of seconds"


def wrong_length(got: int, input_size: int) -> str:
    return f"x has {got} values, the model takes {input_size}"


def non_finite_state(stream: str) -> str:
    return (
        f"applying this event to stream {stream!r} overflowed the model: its state or "
        "prediction would not be finite; the stream is left as it was"
    )


def bad_seq(got: int) -> str:
    return f"seq must be >= 0, got {got}"


def bad_seq_json(got: str) -> str:
    """The seq rule worded for a JSON value, which may not be an integer at all."""
    return f"seq must be an integer >= 0, got {got}"


def stream_differs(body: str, key: str) -> str:
    return f"stream {body!r} in the value differs from the key {key!r}"


def in_float_range(value: float) -> bool:
    """The rule of ts and of x's integers (NaN and the infinities fail it too)."""
    return -FLOAT_MAX < value < FLOAT_MAX


def all_in_float_range(values: np.ndarray) -> bool:
    """:func:`in_float_range` over a float64 column."""
    return bool(((values > -FLOAT_MAX) & (values < FLOAT_MAX)).all())


def seq_ok(seq: int) -> bool:
    return 0 <= seq <= SEQ_MAX


def stream_of_key(key: bytes | None) -> str:
    """The stream id a Kafka key names; InvalidEvent if it names none."""
    if not key:
        raise InvalidEvent(REASON_MISSING_KEY, NO_KEY)
    if len(key) > MAX_STREAM_ID_BYTES:
        raise InvalidEvent(REASON_KEY_TOO_LONG, KEY_TOO_LONG)
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEvent(REASON_BAD_FIELD, KEY_NOT_UTF8) from None


def check_length(got: int, input_size: int) -> None:
    if got != input_size:
        raise InvalidEvent(REASON_WRONG_LENGTH, wrong_length(got, input_size))


def check_seq(seq: int) -> int:
    """An explicit seq (one a message carries) as it is; InvalidEvent if out of range."""
    if not seq_ok(seq):
        raise InvalidEvent(REASON_BAD_SEQ, bad_seq(seq))
    return seq


def check_ts(ts: float | None) -> float | None:
    if ts is not None and not in_float_range(ts):
        raise InvalidEvent(REASON_BAD_FIELD, BAD_TS)
    return ts


def refusal(streams: Sequence[str], row: int, reason: str, message: str) -> InvalidEvent:
    """A batch's first bad row as the error that refuses the whole batch (gRPC)."""
    return InvalidEvent(reason, f"event {row} (stream {streams[row]!r}): {message}")


@dataclass
class EventBatch:
    """Events in columns; row k of every column is one event."""

    streams: list[str]
    x: np.ndarray  # [N, input] float32
    seq: np.ndarray  # [N] int64, NO_SEQ when absent
    partition: np.ndarray  # [N] int32, NO_POSITION when not from Kafka
    offset: np.ndarray  # [N] int64, NO_POSITION when not from Kafka
    # [N] float64 event times in seconds (an Event's ts), NaN where absent;
    # None: no row has one. The Predictor takes a missing one as the arrival.
    time: np.ndarray | None = None

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
        time: Sequence[float] | np.ndarray | None = None,
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
            None if time is None else column(time, np.float64, np.nan),
        )

    def take(self, rows: np.ndarray) -> EventBatch:
        return EventBatch(
            [self.streams[k] for k in rows],
            self.x[rows],
            self.seq[rows],
            self.partition[rows],
            self.offset[rows],
            None if self.time is None else self.time[rows],
        )


def invalid_lengths(sizes: np.ndarray, input_size: int) -> list[tuple[int, str, str]]:
    """Rows whose x has another length than the model's input, as (row, reason, message)."""
    return [
        (int(k), REASON_WRONG_LENGTH, wrong_length(int(sizes[k]), input_size))
        for k in np.flatnonzero(sizes != input_size)
    ]


def invalid_seqs(seq: np.ndarray, present: np.ndarray | None = None) -> list[tuple[int, str, str]]:
    """Rows whose explicit seq is negative (an int64 column holds no seq above SEQ_MAX).

    ``present`` marks the rows that carry a seq; None: those that are not NO_SEQ.
    """
    rows = np.flatnonzero(seq < NO_SEQ if present is None else present & (seq < 0))
    return [(int(k), REASON_BAD_SEQ, bad_seq(int(seq[k]))) for k in rows]


def find_invalid(batch: EventBatch, input_size: int) -> list[tuple[int, str, str]]:
    """Rows that break the rules, as (row, reason, message); empty when all are good."""
    width = batch.x.shape[1]
    if width != input_size:
        return invalid_lengths(np.full(len(batch), width), input_size)
    bad = [
        (int(k), REASON_NON_FINITE, NON_FINITE)
        for k in np.flatnonzero(~np.isfinite(batch.x).all(axis=1))
    ]
    bad += invalid_seqs(batch.seq)
    streams = batch.streams
    if streams and all(streams) and max(map(len, streams)) <= MAX_STREAM_ID_BYTES // 4:
        return sorted(bad)  # every id is present and short enough (4 bytes a character at most)
    for k, stream in enumerate(streams):
        if not stream:
            bad.append((k, REASON_MISSING_KEY, EMPTY_STREAM))
        elif len(stream) > MAX_STREAM_ID_BYTES // 4 and len(stream.encode()) > MAX_STREAM_ID_BYTES:
            bad.append((k, REASON_KEY_TOO_LONG, STREAM_TOO_LONG))
    bad.sort()
    return bad
