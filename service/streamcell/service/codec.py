"""Kafka values <-> the core's columns: bulk decode of events, bulk encode of predictions.

A polled batch of records becomes one :class:`EventBatch` of the good events
plus a list of the bad ones, each with a dead-letter reason and message.
This module only parses: the rules an event must meet, their reasons and
messages are ``streamcell.core.events``'; what is here is how a JSON or
protobuf value can fail to be an event at all. Nothing here raises for bad
input: one broken record never stops the others.

Predictions are encoded with a fixed key order and each float32 as the
shortest decimal that reads back as the same float32, so a replayed event
yields a byte-identical prediction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import numpy as np
import orjson

from streamcell.core import events as rules
from streamcell.core.errors import InvalidEvent
from streamcell.core.events import (
    NO_SEQ,
    REASON_BAD_FIELD,
    REASON_BAD_JSON,
    REASON_BAD_PROTOBUF,
    REASON_BAD_SEQ,
    REASON_NON_FINITE,
    EventBatch,
    find_invalid,
)
from streamcell.service.settings import DEAD_LETTER_MIN_BYTES, FORMAT_JSON, FORMATS
from streamcell.service.settings import FORMAT_PROTOBUF as FORMAT_PROTOBUF  # for callers

if TYPE_CHECKING:
    from streamcell.service.kafka import Record

_NUMBER = (int, float)
_json_decode = json.JSONDecoder().decode  # json.loads without its per-call checks


class _Event(msgspec.Struct):
    """An event value's fields as msgspec reads them: types and ranges checked while parsing.

    Strict types: a bool is not a number, a string is not a number. Numbers
    beyond the float range, NaN and Infinity are refused, and so are values
    that are not exactly one JSON object. Unknown fields are skipped.
    """

    x: list[float]
    stream: str | None = None
    seq: Annotated[int, msgspec.Meta(ge=0, le=rules.SEQ_MAX)] | None = None
    ts: float | None = None


_decode_event = msgspec.json.Decoder(_Event).decode
_X, _STREAM, _SEQ, _TS = (attrgetter(name) for name in ("x", "stream", "seq", "ts"))
_PARTITION, _OFFSET, _TIMESTAMP = (
    attrgetter(name) for name in ("partition", "offset", "timestamp_ms")
)


@dataclass(frozen=True, slots=True)
class Invalid:
    """A record that cannot be applied, with a stable reason code."""

    record: Record
    reason: str
    message: str


@dataclass
class Decoded:
    """The good events of a poll as columns, and the bad records."""

    batch: EventBatch
    records: list[Record]  # row k of ``batch`` came from ``records[k]``
    event_time: np.ndarray  # [N] float64 seconds: the event's ts, else its Kafka timestamp
    invalid: list[Invalid] = field(default_factory=list)


def decode(records: Sequence[Record], input_size: int, event_format: str = FORMAT_JSON) -> Decoded:
    """Decode and validate a polled batch in one pass, keeping Kafka order."""
    if event_format not in FORMATS:
        raise ValueError(f"event format must be one of {FORMATS}, got {event_format!r}")
    typed: list[_Event | None] = []
    if event_format == FORMAT_JSON:
        typed = _parse_typed(records)
        rows = _bulk_typed(records, typed, input_size) if None not in typed else None
        if rows is not None:
            return _finish(rows, input_size)
    parse = parse_json if event_format == FORMAT_JSON else _protobuf_parser()
    good: list[Record] = []
    streams: list[str] = []
    xs: list[Sequence[float]] = []
    seqs: list[int] = []
    times: list[float] = []
    invalid: list[Invalid] = []
    for k, rec in enumerate(records):
        try:
            stream = rules.stream_of_key(rec.key)
            event = typed[k] if typed else None
            body_stream, seq, ts, x = parse(rec.value) if event is None else _fields(event)
            if body_stream is not None and body_stream != stream:
                raise InvalidEvent(REASON_BAD_FIELD, rules.stream_differs(body_stream, stream))
            rules.check_length(len(x), input_size)
        except InvalidEvent as bad:
            invalid.append(Invalid(rec, bad.reason, str(bad)))
            continue
        except Exception as exc:  # a case the rules above missed must not stop the batch
            invalid.append(Invalid(rec, REASON_BAD_FIELD, f"undecodable event: {exc!r}"[:200]))
            continue
        good.append(rec)
        streams.append(stream)
        xs.append(x)
        seqs.append(seq)
        times.append(ts if ts is not None else rec.timestamp_ms / 1000.0)
    return _finish(
        _Rows(good, streams, xs, seqs, np.asarray(times, np.float64), invalid), input_size
    )


@dataclass
class _Rows:
    """The records that passed the per-record rules, as Python lists, before the bulk rules."""

    good: list[Record]
    streams: list[str]
    xs: list[Sequence[float]]
    seqs: list[int]
    times: np.ndarray
    invalid: list[Invalid]


def _finish(rows: _Rows, input_size: int) -> Decoded:
    """Columns of the rows, then the bulk rules (float32 range, ...) of ``find_invalid``."""
    good, n = rows.good, len(rows.good)
    # One flat pass over the numbers (every x has input_size of them by now): a list of
    # lists through np.asarray is read twice, once for its shape and once for its values.
    with np.errstate(over="ignore"):  # 1e39 becomes inf in float32, then non_finite
        x_arr = np.fromiter(chain.from_iterable(rows.xs), np.float32, n * input_size)
    x_arr = x_arr.reshape(n, input_size)
    batch = EventBatch.of(
        rows.streams,
        x_arr,
        seq=np.asarray(rows.seqs, dtype=np.int64),
        partition=np.fromiter(map(_PARTITION, good), np.int32, n),
        offset=np.fromiter(map(_OFFSET, good), np.int64, n),
    )
    decoded = Decoded(batch, good, rows.times, rows.invalid)
    bad_rows = find_invalid(batch, input_size)
    if bad_rows:
        decoded = _drop_rows(decoded, bad_rows)
    return decoded


def _parse_typed(records: Sequence[Record]) -> list[_Event | None]:
    """Each value parsed and type-checked by msgspec, or None where msgspec refused it.

    A refused value is not necessarily bad: the standard library's reading
    decides (and words the error). Each value is parsed on its own, never
    joined with its neighbours, so two broken values cannot merge into good
    events. msgspec does not check the UTF-8 of strings it skips (fields the
    event does not have), so a value that is not plain ASCII is checked here.
    """
    values: list[Any] = [r.value for r in records]  # bytes, or None: msgspec raises on it
    try:
        events: list[_Event | None] = list(map(_decode_event, values))
        if b"".join(values).isascii():  # (None among the values: the join raises)
            return events
    except Exception:  # one refused value: go one by one
        events = [_parse_one(v) for v in values]
    return [
        e if e is None or v.isascii() or _is_utf8(v) else None
        for e, v in zip(events, values, strict=True)
    ]


def _parse_one(value: bytes | None) -> _Event | None:
    try:
        return _decode_event(value)  # type: ignore[arg-type]
    except Exception:  # not JSON, a wrong type, None, a nesting bomb: the stdlib path says
        return None


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _bulk_typed(
    records: Sequence[Record], events: list[_Event | None], input_size: int
) -> _Rows | None:
    """The whole poll in columns when every record passes the per-record rules, else None.

    msgspec has checked each value's types and ranges while parsing it; what
    is left (the key, x's length, ``stream`` against the key, ``ts`` below
    the float maximum) is checked column by column over the poll. Any record
    these rules could refuse returns None: the caller then goes record by
    record, so each bad record gets its reason and message from one place.
    """
    if not events:
        return None
    try:
        keys: list[Any] = [r.key for r in records]  # bytes, unless all() refuses them
        if not all(keys) or max(map(len, keys)) > rules.MAX_STREAM_ID_BYTES:
            return None
        streams = list(map(bytes.decode, keys))
        xs = list(map(_X, events))
        if set(map(len, xs)) != {input_size}:
            return None
        body = list(map(_STREAM, events))  # None where the value names no stream
        if (
            body != streams
            and body.count(None) != len(body)
            and not all(b is None or b == s for b, s in zip(body, streams, strict=True))
        ):
            return None  # a stream that differs from its key
        seqs = list(map(_SEQ, events))
        if None in seqs:
            seqs = [NO_SEQ if s is None else s for s in seqs]
        times = _times(records, list(map(_TS, events)))
        if times is None:
            return None
    except Exception:  # any surprise (a key that is not UTF-8): the per-record path says
        return None
    return _Rows(list(records), streams, xs, seqs, times, [])


def _times(records: Sequence[Record], stamps: list[float | None]) -> np.ndarray | None:
    """Each event's ``ts`` in seconds, else its Kafka timestamp; None if a ts is out of range."""
    if None in stamps:
        if stamps.count(None) == len(stamps):  # no event has a ts: the Kafka timestamps
            return np.fromiter(map(_TIMESTAMP, records), np.float64, len(records)) / 1000.0
        stamps = [
            r.timestamp_ms / 1000.0 if t is None else t
            for t, r in zip(stamps, records, strict=True)
        ]
    times = np.array(stamps, np.float64)
    # msgspec refuses numbers beyond the float range; the float maximum itself is refused here.
    return times if rules.all_in_float_range(times) else None


def _drop_rows(decoded: Decoded, bad_rows: list[tuple[int, str, str]]) -> Decoded:
    drop = {row for row, _, _ in bad_rows}
    keep = np.fromiter((k for k in range(len(decoded.records)) if k not in drop), np.int64)
    seen: set[int] = set()
    invalid = list(decoded.invalid)
    for row, reason, message in bad_rows:
        if row not in seen:  # one reason per record: the first rule it breaks
            seen.add(row)
            invalid.append(Invalid(decoded.records[row], reason, message))
    invalid.sort(key=lambda bad: (bad.record.partition, bad.record.offset))
    return Decoded(
        decoded.batch.take(keep),
        [decoded.records[k] for k in keep],
        decoded.event_time[keep],
        invalid,
    )


def parse_json(value: bytes | None) -> tuple[str | None, int, float | None, list]:
    """One JSON event value as (stream or None, seq or NO_SEQ, ts or None, x).

    InvalidEvent says what is wrong. Used record by record here and by
    ``streamcell predict`` for its input lines, so both read events alike.
    """
    if value is None:
        raise InvalidEvent(REASON_BAD_JSON, "the record has no value")
    try:
        doc = _json_decode(value.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidEvent(REASON_BAD_JSON, f"value is not JSON: {str(exc)[:120]}") from None
    return _check_json(doc)


def _check_json(doc: object) -> tuple[str | None, int, float | None, list]:
    if not isinstance(doc, dict):
        raise InvalidEvent(
            REASON_BAD_JSON, f"value must be a JSON object, got {type(doc).__name__}"
        )
    x = doc.get("x")
    if not isinstance(x, list):
        raise InvalidEvent(REASON_BAD_FIELD, "x must be a list of numbers")
    for v in x:
        kind = type(v)
        if kind is float:
            continue
        if kind is not int:  # bool is not a number here
            raise InvalidEvent(
                REASON_BAD_FIELD, f"x must hold numbers only, found {json.dumps(v)[:40]}"
            )
        if not rules.in_float_range(v):  # exact int/float comparison, no overflow
            raise InvalidEvent(REASON_NON_FINITE, rules.X_BEYOND_FLOAT)
    stream = doc.get("stream")
    if stream is not None and not isinstance(stream, str):
        raise InvalidEvent(REASON_BAD_FIELD, "stream must be a string")
    seq = doc.get("seq")
    if seq is None:
        seq = NO_SEQ
    elif type(seq) is not int or not rules.seq_ok(seq):
        raise InvalidEvent(REASON_BAD_SEQ, rules.bad_seq_json(json.dumps(seq)[:40]))
    ts = doc.get("ts")
    if ts is not None and type(ts) not in _NUMBER:
        raise InvalidEvent(REASON_BAD_FIELD, rules.BAD_TS)
    rules.check_ts(ts)
    return stream, seq, None if ts is None else float(ts), x


def _fields(event: _Event) -> tuple[str | None, int, float | None, list]:
    """``_check_json`` for a value msgspec read: it checked every type and range but one."""
    ts = rules.check_ts(event.ts)
    return event.stream, NO_SEQ if event.seq is None else event.seq, ts, event.x


def _protobuf_parser():
    from google.protobuf.message import DecodeError

    from streamcell.v1.event_pb2 import Event

    def parse(value: bytes | None) -> tuple[str | None, int, float | None, Sequence[float]]:
        if value is None:
            raise InvalidEvent(REASON_BAD_PROTOBUF, "the record has no value")
        try:
            event = Event.FromString(value)
        except DecodeError as exc:
            raise InvalidEvent(REASON_BAD_PROTOBUF, f"value is not an Event: {exc}") from None
        seq = rules.check_seq(event.seq) if event.HasField("seq") else NO_SEQ
        ts = rules.check_ts(event.ts) if event.HasField("ts") else None
        return event.stream or None, seq, ts, event.x

    return parse


# ------------------------------------------------------------------ encode
def encode_predictions(
    batch: EventBatch,
    yhat: np.ndarray,
    rows: np.ndarray,
    model: str,
    version: str,
    quantiles: np.ndarray | None = None,
    levels: Sequence[float] = (),
    prediction_format: str = FORMAT_JSON,
) -> list[tuple[bytes, bytes]]:
    """(key, value) of the prediction of each of ``rows``; same input, same bytes.

    ``prediction_format`` protobuf: each value is a ``streamcell.v1.Prediction``
    (:func:`_encode_protobuf`); json, the default, as follows.

    Each ``yhat`` value is written as the shortest decimal that reads back as
    the same float32 (orjson's float32 output), a non-finite one as null. The
    whole poll is encoded by two C calls: orjson for the numbers, one
    ``bytes % args`` for the records, split on a newline no record can hold
    (stream ids are JSON-escaped; the template's own ``%`` are doubled).
    ``quantiles`` ``[N, levels, targets]`` (a quantile head, whose ``yhat``
    is its 0.5 level, as the Predictor makes it): each record also carries
    ``"quantiles": [{"level": 0.1, "yhat": [...]}, ...]``.
    """
    if prediction_format not in FORMATS:
        raise ValueError(f"prediction format must be one of {FORMATS}, got {prediction_format!r}")
    n = len(rows)
    if n == 0:
        return []
    if prediction_format == FORMAT_PROTOBUF:
        return _encode_protobuf(batch, yhat, rows, model, version, quantiles, levels)
    # Each record's numbers: its yhat, then (a quantile head) each level's values.
    columns = [_numbers(yhat[rows])]
    value_field = b'"yhat":[%b]'
    if quantiles is not None and levels:
        # The median's numbers are yhat's (the same float32 values): written
        # once. One orjson call for the other levels, row-major: level j of
        # row k is piece k * (L - 1) + j.
        median = list(levels).index(0.5)
        others = [j for j in range(len(levels)) if j != median]
        by_level = []
        if others:
            pieces = _numbers(quantiles[rows][:, others].reshape(n * len(others), -1))
            by_level = [pieces[k :: len(others)] for k in range(len(others))]
        by_level.insert(median, columns[0])
        columns += by_level
        value_field += b',"quantiles":[%b]' % b",".join(
            b'{"level":%b,"yhat":[%%b]}' % json.dumps(level).encode() for level in levels
        )
    names = batch.streams
    streams = [names[k] for k in rows.tolist()]
    keys = list(map(str.encode, streams))
    parts, offsets, seqs = (
        col[rows].tolist() for col in (batch.partition, batch.offset, batch.seq)
    )
    ids = "".join(streams)
    if ids.isascii() and ids.isprintable() and '"' not in ids and "\\" not in ids:
        stream_field, quoted = b'{"stream":"%b"', keys  # the usual plain ids, as they are
    else:
        stream_field, quoted = b'{"stream":%b', [json.dumps(s).encode() for s in streams]
    tail = f',"model":{json.dumps(model)},"version":{json.dumps(version)}}}'
    end = value_field + tail.encode().replace(b"%", b"%%") + b"\n"
    with_seq = stream_field + b',"partition":%d,"offset":%d,"seq":%d,' + end
    without = stream_field + b',"partition":%d,"offset":%d,' + end
    if NO_SEQ not in seqs:
        template = with_seq * n
        args = chain.from_iterable(zip(quoted, parts, offsets, seqs, *columns, strict=True))
    elif seqs.count(NO_SEQ) == n:
        template = without * n
        args = chain.from_iterable(zip(quoted, parts, offsets, *columns, strict=True))
    else:  # some events carry a seq, some do not: a template per record
        template = b"".join(without if q == NO_SEQ else with_seq for q in seqs)
        args = chain.from_iterable(
            (s, p, o, *ys) if q == NO_SEQ else (s, p, o, q, *ys)
            for s, p, o, q, *ys in zip(quoted, parts, offsets, seqs, *columns, strict=True)
        )
    values = (template % tuple(args)).split(b"\n")
    values.pop()  # after the last newline
    return list(zip(keys, values, strict=True))


# Wire types of the protobuf encoding: a varint, a length-delimited field, a 32-bit value.
_VARINT, _LEN, _I32 = 0, 2, 5
# The Prediction fields a Kafka record has (protos/streamcell/v1/predictor.proto).
_F_STREAM, _F_SEQ, _F_YHAT, _F_MODEL, _F_VERSION, _F_QUANTILES = 1, 2, 3, 4, 5, 8
_F_PARTITION, _F_OFFSET = 9, 10
_Q_LEVEL, _Q_YHAT = 1, 2  # Quantile's fields


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _varint(value: int) -> bytes:
    """One unsigned varint (a negative int64 as its 64-bit two's complement, as protobuf)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited field; none at all for an empty one (proto3's default)."""
    return _tag(number, _LEN) + _varint(len(payload)) + payload if payload else b""


def _without_payload(field: bytes, size: int) -> bytes:
    """A field's bytes before its last ``size`` (where each record's own values go)."""
    return field[: len(field) - size]


_SHIFTS = np.arange(0, 70, 7, dtype=np.uint64)  # the 7-bit groups of a 64-bit varint
_VARINT_ABOVE = np.uint64(1) << _SHIFTS[1:]  # a value at or above the k-th: k + 2 bytes


def _varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each value as a varint: a [N, width] uint8 matrix (row k's first lengths[k] bytes).

    Negative values are written as their 64-bit two's complement (ten bytes),
    as protobuf writes a negative int32 or int64.
    """
    v = values.astype(np.int64).view(np.uint64)
    lengths = np.searchsorted(_VARINT_ABOVE, v, side="right") + 1
    width = int(lengths.max()) if len(v) else 1
    body = ((v[:, None] >> _SHIFTS[:width]) & np.uint64(0x7F)).astype(np.uint8)
    if width > 1:  # every byte but a value's last has its bit 7 set
        body |= (np.arange(width) < (lengths - 1)[:, None]).astype(np.uint8) << 7
    return body, lengths


def _encode_protobuf(
    batch: EventBatch,
    yhat: np.ndarray,
    rows: np.ndarray,
    model: str,
    version: str,
    quantiles: np.ndarray | None,
    levels: Sequence[float],
) -> list[tuple[bytes, bytes]]:
    """The predictions of ``rows`` as ``streamcell.v1.Prediction`` values, a poll at once.

    Written by hand, with numpy, as the protobuf library writes them
    (fields in number order, packed floats, proto3 defaults left out; the
    tests compare the bytes with the generated class's): each record is
    one row of a uint8 matrix, its pieces side by side (stream, seq, then
    what every record has the same layout of: yhat, model, version,
    quantiles; then partition and offset), each variable piece padded to
    the poll's widest; the real bytes of the pieces before the middle are
    packed against it from the left and those after it from the right
    (:func:`_packed`, a boolean gather of the narrow pieces alone), so each
    record is one slice of the matrix's bytes and the middle, most of them,
    is never gathered. Building a message per record with the library costs
    several times more (docs/BENCHMARKS.md, bench/prediction_format_bench.py).
    """
    n = len(rows)
    names = batch.streams
    keys = list(map(str.encode, [names[k] for k in rows.tolist()]))
    width = 4 * yhat.shape[1]  # bytes of one target vector
    y = np.ascontiguousarray(yhat[rows], dtype="<f4").view(np.uint8).reshape(n, width)
    # [N, w] uint8 pieces (the middle's may be [1, w]: the same bytes in every row): those
    # of varying length, with each row's length, before (stream, seq) and after
    # (partition, offset) the middle that every record has alike.
    head: list[tuple[np.ndarray, np.ndarray]] = []
    middle: list[np.ndarray] = []
    tail: list[tuple[np.ndarray, np.ndarray]] = []

    def const(data: bytes) -> None:
        if data:
            middle.append(np.frombuffer(data, np.uint8)[None, :])

    # 1 stream: tag, length, the UTF-8 bytes (an empty string is left out, as proto3 does)
    sizes = np.fromiter(map(len, keys), np.int64, n)
    widest = int(sizes.max())
    size_bytes, size_lengths = _varints(sizes)
    tagged = np.concatenate([np.full((n, 1), _tag(_F_STREAM, _LEN)[0], np.uint8), size_bytes], 1)
    head.append((tagged, np.where(sizes > 0, size_lengths + 1, 0)))
    if widest:
        head.append((np.array(keys, dtype=f"S{widest}").view(np.uint8).reshape(n, widest), sizes))
    # 2 seq, where the event had one (an optional field: a 0 is written)
    seqs = batch.seq[rows]
    has_seq = seqs != NO_SEQ
    if has_seq.any():
        seq_bytes, seq_lengths = _varints(np.where(has_seq, seqs, 0))
        tagged = np.concatenate([np.full((n, 1), _tag(_F_SEQ, _VARINT)[0], np.uint8), seq_bytes], 1)
        head.append((tagged, np.where(has_seq, seq_lengths + 1, 0)))
    # 3 yhat, 4 model, 5 version, 8 quantiles: the same layout in every record
    const(_without_payload(_field_bytes(_F_YHAT, bytes(width)), width))
    middle.append(y)
    const(_field_bytes(_F_MODEL, model.encode()) + _field_bytes(_F_VERSION, version.encode()))
    if quantiles is not None and levels:
        levels = list(levels)
        q = np.ascontiguousarray(quantiles[rows], dtype="<f4")
        median = levels.index(0.5)
        for j, level in enumerate(levels):
            level_field = b""  # proto3 leaves a 0.0 level out
            if np.float32(level):
                level_field = _tag(_Q_LEVEL, _I32) + np.float32(level).astype("<f4").tobytes()
            field = _field_bytes(_F_QUANTILES, level_field + _field_bytes(_Q_YHAT, bytes(width)))
            const(_without_payload(field, width))
            # The median is yhat, as in the JSON records.
            middle.append(y if j == median else q[:, j].view(np.uint8).reshape(n, width))
    # 9 partition, 10 offset: optional, always written for a Kafka record
    for number, column in ((_F_PARTITION, batch.partition), (_F_OFFSET, batch.offset)):
        varints, lengths = _varints(column[rows])
        tagged = np.concatenate([np.full((n, 1), _tag(number, _VARINT)[0], np.uint8), varints], 1)
        tail.append((tagged, lengths + 1))
    # Each row: its head's bytes packed to the right, the middle, its tail's packed to the
    # left; so a record is one slice of the matrix's bytes, and only the narrow head and
    # tail need a boolean gather (the middle, most of a record's bytes, is copied once).
    before, before_sizes = _packed(head, n, right=True)
    after, after_sizes = _packed(tail, n, right=False)
    full = [before, *(np.broadcast_to(p, (n, p.shape[1])) for p in middle), after]
    matrix = np.concatenate(full, axis=1)
    row = matrix.shape[1]
    starts = np.arange(n, dtype=np.int64) * row + (before.shape[1] - before_sizes)
    ends = starts + before_sizes + (row - before.shape[1] - after.shape[1]) + after_sizes
    blob = matrix.tobytes()
    values = [blob[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
    return list(zip(keys, values, strict=True))


def _packed(
    pieces: list[tuple[np.ndarray, np.ndarray]], n: int, right: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Pieces ``[N, w]`` side by side, each row's first ``length`` bytes of each kept:
    ``[N, widest]`` with each row's bytes packed to the right (or left), and their counts."""
    if not pieces:
        return np.zeros((n, 0), np.uint8), np.zeros(n, np.int64)
    matrix = np.concatenate([p for p, _ in pieces], axis=1)
    sizes = np.sum([lengths for _, lengths in pieces], axis=0)
    # Padding only after the bytes (none, or in the last piece alone): nothing to move.
    gaps = [k for k, (p, lengths) in enumerate(pieces) if (lengths != p.shape[1]).any()]
    if not gaps or (not right and gaps == [len(pieces) - 1]):
        return matrix, sizes
    mask = np.ones(matrix.shape, bool)
    at = np.cumsum([0] + [p.shape[1] for p, _ in pieces])
    for k in gaps:
        mask[:, at[k] : at[k + 1]] = np.arange(at[k + 1] - at[k]) < pieces[k][1][:, None]
    widest = int(sizes.max())
    out = np.zeros((n, widest), np.uint8)
    columns = np.arange(widest)
    keep = columns >= (widest - sizes)[:, None] if right else columns < sizes[:, None]
    out[keep] = matrix[mask]  # row-major on both sides: each row's bytes stay in its row
    return out, sizes


def decode_prediction(value: bytes, prediction_format: str = FORMAT_JSON) -> dict[str, Any]:
    """A prediction record's value as the JSON record's object, whichever the format.

    For the project's own readers (demo, benchmarks, tests): the keys and
    their order are the JSON record's; from protobuf the numbers are the
    float32 values themselves (a NaN stays NaN, JSON has null), each level
    its shortest decimal (0.1, not 0.10000000149).
    """
    if prediction_format == FORMAT_JSON:
        return orjson.loads(value)
    if prediction_format != FORMAT_PROTOBUF:
        raise ValueError(f"prediction format must be one of {FORMATS}, got {prediction_format!r}")
    from streamcell.v1.predictor_pb2 import Prediction

    m = Prediction.FromString(value)
    doc: dict[str, Any] = {"stream": m.stream, "partition": m.partition, "offset": m.offset}
    if m.HasField("seq"):
        doc["seq"] = m.seq
    doc["yhat"] = list(m.yhat)
    if m.quantiles:
        doc["quantiles"] = [
            {"level": float(str(np.float32(q.level))), "yhat": list(q.yhat)} for q in m.quantiles
        ]
    doc["model"], doc["version"] = m.model, m.version
    return doc


def _numbers(values: np.ndarray) -> list[bytes]:
    """Each row of a 2-d array as its float32 numbers, comma separated (one orjson call)."""
    dumped = orjson.dumps(np.asarray(values, dtype=np.float32), option=orjson.OPT_SERIALIZE_NUMPY)
    return dumped[2:-2].split(b"],[")


DEAD_LETTER_KEY_MAX = DEAD_LETTER_MIN_BYTES // 4
"""Bytes of a key a truncated dead letter keeps (a stream id is at most 256 bytes)."""
TRUNCATED = ("truncated", b"true")  # the last header of a truncated dead letter


def dead_letter(
    bad: Invalid, max_bytes: int, event_format: str | None = None
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """The key, value and headers to dead-letter ``bad`` with.

    ``event_format``: the format the value was read as (a ``format`` header,
    so a reader of the topic knows how to parse the value whichever formats
    the replicas read and write; None: no such header).

    Whole when key and value together fit in ``max_bytes``; else cut to fit
    (the key to DEAD_LETTER_KEY_MAX bytes first, then the value to what is
    left), with ``truncated: true`` and the original sizes in headers, so a
    record too large to send whole still leaves its reason and a prefix.
    """
    if max_bytes < DEAD_LETTER_MIN_BYTES:
        raise ValueError(f"max_bytes must be at least {DEAD_LETTER_MIN_BYTES}, got {max_bytes}")
    rec = bad.record
    headers = dead_letter_headers(bad)
    if event_format is not None:
        headers.append(("format", event_format.encode()))
    key, value = rec.key, rec.value
    if len(key or b"") + len(value or b"") <= max_bytes:
        return key, value, headers
    if key is not None and len(key) > DEAD_LETTER_KEY_MAX:
        headers.append(("original-key-size", str(len(key)).encode()))
        key = key[:DEAD_LETTER_KEY_MAX]
    if value is not None:
        headers.append(("original-size", str(len(value)).encode()))
        value = value[: max_bytes - len(key or b"")]
    headers.append(TRUNCATED)
    return key, value, headers


def dead_letter_headers(bad: Invalid) -> list[tuple[str, bytes]]:
    """Why a record was refused and where it came from, as Kafka headers."""
    rec = bad.record
    return [
        ("reason", bad.reason.encode()),
        ("error", bad.message.encode()[:1000]),
        ("source_topic", rec.topic.encode()),
        ("source_partition", str(rec.partition).encode()),
        ("source_offset", str(rec.offset).encode()),
    ]
