"""Bulk decode of polled records and bulk encode of predictions (no broker)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamcell.core.events import NO_SEQ, EventBatch
from streamcell.service.codec import (
    DEAD_LETTER_KEY_MAX,
    FORMAT_JSON,
    FORMAT_PROTOBUF,
    TRUNCATED,
    Invalid,
    dead_letter,
    dead_letter_headers,
    decode,
    decode_prediction,
    encode_predictions,
)
from streamcell.service.kafka import Record
from streamcell.v1.predictor_pb2 import Prediction, Quantile


def rec(key, value, offset=0, partition=0, ts_ms=1_000_000) -> Record:
    if isinstance(value, dict):
        value = json.dumps(value).encode()
    if isinstance(key, str):
        key = key.encode()
    return Record("events", partition, offset, key, value, ts_ms, ())


def test_json_good_events_become_columns_in_order():
    records = [
        rec("a", {"x": [1, 2.5, 3]}, offset=5),
        rec("b", {"stream": "b", "seq": 7, "ts": 12.5, "x": [0, 0, 0]}, offset=6, partition=1),
        rec("a", {"x": [4, 5, 6], "seq": 0}, offset=7),
    ]
    d = decode(records, 3, FORMAT_JSON)
    assert d.invalid == []
    assert d.batch.streams == ["a", "b", "a"]
    np.testing.assert_array_equal(d.batch.x, np.array([[1, 2.5, 3], [0, 0, 0], [4, 5, 6]]))
    assert d.batch.x.dtype == np.float32
    assert d.batch.seq.tolist() == [NO_SEQ, 7, 0]
    assert d.batch.partition.tolist() == [0, 1, 0]
    assert d.batch.offset.tolist() == [5, 6, 7]
    assert d.event_time.tolist() == [1000.0, 12.5, 1000.0]  # ts, else the Kafka timestamp
    assert d.records == records


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("a", b"{not json", "bad_json"),
        ("a", b"[1, 2, 3]", "bad_json"),
        ("a", None, "bad_json"),
        ("a", b"\xff\xfe", "bad_json"),
        (None, {"x": [1, 2, 3]}, "missing_key"),
        (b"", {"x": [1, 2, 3]}, "missing_key"),
        ("k" * 300, {"x": [1, 2, 3]}, "key_too_long"),
        (b"\xff\xfe", {"x": [1, 2, 3]}, "bad_field"),
        ("a", {"x": [1, 2]}, "wrong_length"),
        ("a", {"x": [1, 2, 3, 4]}, "wrong_length"),
        ("a", {"x": "1,2,3"}, "bad_field"),
        ("a", {"y": [1, 2, 3]}, "bad_field"),
        ("a", {"x": [1, "2", 3]}, "bad_field"),
        ("a", {"x": [1, True, 3]}, "bad_field"),
        ("a", {"x": [1, None, 3]}, "bad_field"),
        ("a", b'{"x": [1, NaN, 3]}', "non_finite"),
        ("a", b'{"x": [1, Infinity, 3]}', "non_finite"),
        ("a", {"x": [1, 1e39, 3]}, "non_finite"),  # overflows float32
        ("a", {"x": [1, 2, 3], "seq": -1}, "bad_seq"),  # the reason gRPC gives too
        ("a", {"x": [1, 2, 3], "seq": 1.5}, "bad_seq"),
        ("a", {"x": [1, 2, 3], "ts": "now"}, "bad_field"),
        ("a", {"x": [1, 2, 3], "stream": "b"}, "bad_field"),
        ("a", {"x": [1, 2, 3], "stream": 5}, "bad_field"),
    ],
)
def test_json_bad_events_are_refused_with_a_reason(key, value, reason):
    good = rec("ok", {"x": [1, 2, 3]}, offset=0)
    bad = rec(key, value, offset=1)
    after = rec("ok", {"x": [4, 5, 6]}, offset=2)
    d = decode([good, bad, after], 3, FORMAT_JSON)
    assert [i.reason for i in d.invalid] == [reason]
    assert d.invalid[0].record == bad
    assert d.invalid[0].message  # says what is wrong
    assert d.batch.offset.tolist() == [0, 2]  # the good ones flow on
    assert len(d.records) == 2


def test_dead_letter_headers_carry_reason_and_source():
    bad = decode([rec("a", b"oops", offset=42, partition=2)], 3).invalid[0]
    headers = dict(dead_letter_headers(bad))
    assert headers["reason"] == b"bad_json"
    assert headers["source_partition"] == b"2"
    assert headers["source_offset"] == b"42"
    assert b"not JSON" in headers["error"]


def test_a_dead_letter_names_the_format_its_value_was_read_as():
    bad = decode([rec("a", b"\xff not protobuf")], 3, FORMAT_PROTOBUF).invalid[0]
    _, _, headers = dead_letter(bad, 4096, FORMAT_PROTOBUF)
    assert headers == [*dead_letter_headers(bad), ("format", b"protobuf")]
    big = Invalid(rec("a", b"x" * 9000), "bad_json", "m")
    _, _, cut = dead_letter(big, 4096, FORMAT_JSON)
    assert ("format", b"json") in cut and cut[-1] == TRUNCATED  # truncated still last


def test_a_dead_letter_that_fits_is_sent_whole():
    bad = decode([rec("a", b"oops" * 1000)], 3).invalid[0]
    assert dead_letter(bad, 4096) == (b"a", b"oops" * 1000, dead_letter_headers(bad))


def test_a_dead_letter_too_large_is_truncated_with_its_sizes_and_reason():
    value = b"\x00not an event" * 700_000  # ~9.8 MB, over the producer's request limit
    bad = decode([rec("a", value, offset=7)], 3).invalid[0]
    key, cut, headers = dead_letter(bad, 100_000)
    assert key == b"a" and cut == value[:99_999]  # key + value: the bound
    got = dict(headers)
    assert got["original-size"] == str(len(value)).encode()
    assert got["truncated"] == b"true"
    assert got["reason"] == b"bad_json" and got["source_offset"] == b"7"
    assert "original-key-size" not in got


def test_a_huge_key_is_cut_first_and_its_size_kept():
    bad = decode([rec(b"k" * 50_000, b"{}")], 3).invalid[0]
    key, value, headers = dead_letter(bad, 8192)
    assert key == b"k" * DEAD_LETTER_KEY_MAX and value == b"{}"
    got = dict(headers)
    assert got["reason"] == b"key_too_long"
    assert (got["original-key-size"], got["original-size"]) == (b"50000", b"2")
    assert got["truncated"] == b"true"


@given(
    key=st.one_of(st.none(), st.binary(max_size=6000)),
    value=st.one_of(st.none(), st.binary(max_size=20_000)),
    bound=st.integers(4096, 10_000),
)
@settings(max_examples=200, deadline=None)
def test_a_dead_letter_never_exceeds_its_bound(key, value, bound):
    record = Record("events", 0, 0, key, value, 0, ())
    bad = decode([record], 3).invalid
    if not bad:  # the rare valid event
        return
    k, v, headers = dead_letter(bad[0], bound)
    assert len(k or b"") + len(v or b"") <= bound
    whole = len(key or b"") + len(value or b"") <= bound
    assert (dict(headers).get("truncated") == b"true") == (not whole)
    assert (k, v) == (key, value) if whole else (key or b"").startswith(k or b"")


def test_empty_poll_decodes_to_an_empty_batch():
    d = decode([], 4)
    assert len(d.batch) == 0 and d.batch.x.shape == (0, 4) and d.invalid == []


def test_protobuf_events_decode_like_json():
    from streamcell.v1.event_pb2 import Event

    ev = Event(stream="a", seq=3, x=[1.0, 2.0, 3.0])
    ev_plain = Event(x=[0.5, 0.25, 0.125])
    records = [
        rec("a", ev.SerializeToString(), offset=0),
        rec("b", ev_plain.SerializeToString(), offset=1),
        rec("c", b"\xff\xff\xff", offset=2),
        rec("d", Event(x=[1.0]).SerializeToString(), offset=3),
        rec("e", Event(x=[1.0, math.nan, 2.0]).SerializeToString(), offset=4),
    ]
    d = decode(records, 3, FORMAT_PROTOBUF)
    assert d.batch.streams == ["a", "b"]
    assert d.batch.seq.tolist() == [3, NO_SEQ]
    np.testing.assert_array_equal(d.batch.x[1], [0.5, 0.25, 0.125])
    assert [(i.record.offset, i.reason) for i in d.invalid] == [
        (2, "bad_protobuf"),
        (3, "wrong_length"),
        (4, "non_finite"),
    ]


def test_predictions_are_json_with_the_agreed_fields():
    batch = EventBatch.of(
        ["a", 'b"\u00e9'], [[1.0], [2.0]], seq=[NO_SEQ, 9], partition=[0, 1], offset=[10, 11]
    )
    yhat = np.array([[0.1, -2.5], [1e-8, 3.0e30]], dtype=np.float32)
    out = encode_predictions(batch, yhat, np.array([0, 1]), "m", "v1")
    assert [k for k, _ in out] == [b"a", 'b"\u00e9'.encode()]
    first, second = (json.loads(v) for _, v in out)
    assert first.pop("yhat") == [0.1, -2.5]  # the shortest decimal that reads back as the float32
    assert first == {"stream": "a", "partition": 0, "offset": 10, "model": "m", "version": "v1"}
    assert second["seq"] == 9 and second["stream"] == 'b"\u00e9'
    # Every number parses back to the exact float32 the model computed.
    for (_, value), row in zip(out, yhat, strict=True):
        back = np.array(json.loads(value)["yhat"], dtype=np.float32)
        assert back.tobytes() == row.tobytes()


def test_ids_and_names_that_look_like_the_template_are_written_as_they_are():
    """The poll is formatted by one ``bytes % args`` and split on newlines: neither may leak."""
    streams = ["a%d", "b\nc", 'q"', "plain", "\u00e9\\"]
    batch = EventBatch.of(
        streams, np.zeros((5, 1)), seq=[NO_SEQ, 1, NO_SEQ, 2, 3], partition=[0] * 5, offset=range(5)
    )
    yhat = np.arange(10, dtype=np.float32).reshape(5, 2)
    out = encode_predictions(batch, yhat, np.arange(5), "m%b\n", "v%%")
    assert [k for k, _ in out] == [s.encode() for s in streams]
    for k, (_, value) in enumerate(out):
        doc = json.loads(value)
        assert doc.pop("seq", None) == (None, 1, None, 2, 3)[k]
        assert doc == {
            "stream": streams[k],
            "partition": 0,
            "offset": k,
            "yhat": [2.0 * k, 2.0 * k + 1],
            "model": "m%b\n",
            "version": "v%%",
        }


def test_float32_values_round_trip_through_the_text_exactly():
    rng = np.random.default_rng(5)
    yhat = (rng.normal(size=(2000, 4)) * 10.0 ** rng.integers(-30, 30, (2000, 4))).astype(
        np.float32
    )
    batch = EventBatch.of(["s"] * 2000, np.zeros((2000, 1)), offset=np.arange(2000))
    out = encode_predictions(batch, yhat, np.arange(2000), "m", "v")
    back = np.array([json.loads(v)["yhat"] for _, v in out], dtype=np.float32)
    assert back.tobytes() == yhat.tobytes()


def test_non_finite_predictions_are_written_as_null():
    batch = EventBatch.of(["a"], [[1.0]], offset=[0])
    yhat = np.array([[np.inf, 1.5]], dtype=np.float32)
    ((_, value),) = encode_predictions(batch, yhat, np.array([0]), "m", "v")
    assert json.loads(value)["yhat"] == [None, 1.5]


def test_prediction_bytes_are_deterministic():
    rng = np.random.default_rng(0)
    batch = EventBatch.of(
        [f"s{k}" for k in range(50)],
        rng.normal(size=(50, 3)),
        partition=np.zeros(50),
        offset=np.arange(50),
    )
    yhat = rng.normal(size=(50, 3)).astype(np.float32)
    rows = np.arange(50)
    first = encode_predictions(batch, yhat, rows, "m", "v")
    again = encode_predictions(batch, yhat.copy(), rows, "m", "v")
    assert first == again
    # A single row encodes as in the batch (a replay may come in another batch).
    assert encode_predictions(batch, yhat, np.array([7]), "m", "v") == [first[7]]


# ------------------------------------------------ protobuf predictions
def library_prediction(batch, yhat, row, model, version, quantiles=None, levels=()) -> Prediction:
    """What the generated class makes of one prediction: the reference the codec must match."""
    m = Prediction(
        stream=batch.streams[row],
        yhat=yhat[row].tolist(),
        model=model,
        version=version,
        partition=int(batch.partition[row]),
        offset=int(batch.offset[row]),
    )
    if batch.seq[row] != NO_SEQ:
        m.seq = int(batch.seq[row])
    for j, level in enumerate(levels):
        values = yhat[row] if level == 0.5 else quantiles[row, j]
        m.quantiles.append(Quantile(level=level, yhat=values.tolist()))
    return m


def bits(values) -> bytes:
    return np.array(values, np.float32).tobytes()


def assert_protobuf_like_the_library(batch, yhat, rows, model, version, quantiles=None, levels=()):
    out = encode_predictions(
        batch, yhat, rows, model, version, quantiles, levels, prediction_format=FORMAT_PROTOBUF
    )
    assert [k for k, _ in out] == [batch.streams[r].encode() for r in rows]
    for (_, value), row in zip(out, rows.tolist(), strict=True):
        ref = library_prediction(batch, yhat, row, model, version, quantiles, levels)
        parsed = Prediction.FromString(value)
        # Every field as the library reads it (floats as bits: NaN compares unequal) ...
        assert parsed.stream == ref.stream and (parsed.model, parsed.version) == (model, version)
        assert parsed.HasField("seq") == ref.HasField("seq") and parsed.seq == ref.seq
        assert (parsed.partition, parsed.offset) == (ref.partition, ref.offset)
        assert parsed.HasField("partition") and parsed.HasField("offset")
        assert bits(parsed.yhat) == yhat[row].tobytes()
        assert [q.level for q in parsed.quantiles] == [q.level for q in ref.quantiles]
        for got, want in zip(parsed.quantiles, ref.quantiles, strict=True):
            assert bits(got.yhat) == bits(want.yhat)
        assert (parsed.events, parsed.outcome) == (0, 0)  # not set on Kafka
        # ... and the very bytes the library writes.
        assert value == ref.SerializeToString()
    return out


def test_protobuf_predictions_are_what_the_generated_class_writes():
    streams = ["a", 'b"\u00e9', "x" * 200, "\u00fc" * 128, "plain"]
    batch = EventBatch.of(
        streams,
        np.zeros((5, 1)),
        seq=[NO_SEQ, 0, 127, 128, 2**62],
        partition=[0, 1, 127, 128, 2**31 - 1],
        offset=[0, 1, 2**35, 10, 2**63 - 1],
    )
    yhat = np.array(
        [[0.1, -2.5], [np.nan, np.inf], [-0.0, 0.0], [1e-45, -np.inf], [3e38, 7.0]], np.float32
    )
    assert_protobuf_like_the_library(batch, yhat, np.arange(5), "m", "v1")
    assert_protobuf_like_the_library(batch, yhat, np.array([4, 0, 2]), "m%b\n", "")
    assert_protobuf_like_the_library(batch, yhat, np.array([1]), "", "v")
    levels = (0.1, 0.5, 0.9)
    quantiles = np.stack([yhat - 1, yhat, yhat + 1], axis=1)
    assert_protobuf_like_the_library(batch, yhat, np.arange(5), "m", "v", quantiles, levels)


@pytest.mark.parametrize(
    ("streams", "seq", "partition", "offset"),
    [
        (["s1", "s2"], [NO_SEQ, NO_SEQ], [0, 1], [5, 6]),  # every piece the same length
        (["", "ab"], [3, NO_SEQ], [0, 200], [1, 2**40]),  # an empty id; padding everywhere
        (["", ""], [1, 2], [1, 1], [300, 7]),  # no stream bytes at all
    ],
)
def test_protobuf_predictions_whatever_pieces_vary(streams, seq, partition, offset):
    """Records whose pieces of varying length vary in some places only, or nowhere."""
    batch = EventBatch.of(streams, np.zeros((2, 1)), seq=seq, partition=partition, offset=offset)
    yhat = np.array([[1.5, -2.0], [0.25, 4.0]], np.float32)
    quantiles = np.stack([yhat - 1, yhat, yhat + 1], axis=1)
    assert_protobuf_like_the_library(batch, yhat, np.arange(2), "m", "v")
    assert_protobuf_like_the_library(
        batch, yhat, np.arange(2), "m", "v", quantiles, (0.1, 0.5, 0.9)
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=80),
            st.one_of(st.just(NO_SEQ), st.integers(0, 2**63 - 1)),
            st.integers(0, 2**31 - 1),
            st.integers(0, 2**63 - 1),
        ),
        min_size=1,
        max_size=20,
    ),
    st.integers(1, 5),
    st.sampled_from([(), (0.5,), (0.1, 0.5, 0.9), (0.05, 0.25, 0.5, 0.75, 0.95)]),
    st.randoms(use_true_random=False),
)
def test_protobuf_predictions_match_the_library_for_any_poll(events, targets, levels, rnd):
    n = len(events)
    batch = EventBatch.of(
        [e[0] for e in events],
        np.zeros((n, 1)),
        seq=[e[1] for e in events],
        partition=[e[2] for e in events],
        offset=[e[3] for e in events],
    )
    rng = np.random.default_rng(rnd.getrandbits(32))
    yhat = rng.normal(size=(n, targets)).astype(np.float32)
    quantiles = np.sort(rng.normal(size=(n, len(levels), targets)), axis=1).astype(np.float32)
    rows = rng.permutation(n)[: rng.integers(1, n + 1)]
    quantiles_or_none = quantiles if levels else None
    assert_protobuf_like_the_library(batch, yhat, rows, "m", "v", quantiles_or_none, levels)


def test_protobuf_predictions_are_deterministic_and_read_back_as_json_records():
    rng = np.random.default_rng(1)
    batch = EventBatch.of(
        [f"s{k}" for k in range(40)],
        rng.normal(size=(40, 3)),
        seq=[NO_SEQ if k % 3 else k for k in range(40)],
        partition=np.arange(40) % 3,
        offset=np.arange(40),
    )
    yhat = rng.normal(size=(40, 2)).astype(np.float32)
    quantiles = np.stack([yhat - 1, yhat, yhat + 0.5], axis=1)
    args = (np.array([0.1, 0.5, 0.9]).tolist(),)
    rows = np.arange(40)
    first = encode_predictions(batch, yhat, rows, "m", "v", quantiles, *args, FORMAT_PROTOBUF)
    again = encode_predictions(
        batch, yhat.copy(), rows, "m", "v", quantiles.copy(), *args, FORMAT_PROTOBUF
    )
    assert first == again
    assert encode_predictions(
        batch, yhat, np.array([7]), "m", "v", quantiles, *args, FORMAT_PROTOBUF
    ) == [first[7]]
    as_json = encode_predictions(batch, yhat, rows, "m", "v", quantiles, *args)
    for (_, pb), (_, js) in zip(first, as_json, strict=True):
        from_pb, from_json = decode_prediction(pb, FORMAT_PROTOBUF), decode_prediction(js)
        assert list(from_pb) == list(from_json)  # the same keys in the same order
        for doc in (from_pb, from_json):  # numbers compared as the float32 they stand for
            doc["yhat"] = np.float32(doc["yhat"]).tobytes()
            for q in doc["quantiles"]:
                q["yhat"] = np.float32(q["yhat"]).tobytes()
        assert from_pb == from_json


def test_a_point_model_writes_no_quantiles_field_in_protobuf():
    batch = EventBatch.of(["a"], [[1.0]], offset=[3])
    yhat = np.array([[1.5]], np.float32)
    ((_, value),) = encode_predictions(
        batch, yhat, np.array([0]), "m", "v", None, (), FORMAT_PROTOBUF
    )
    names = [f.name for f, _ in Prediction.FromString(value).ListFields()]
    assert names == ["stream", "yhat", "model", "version", "partition", "offset"]
    assert "quantiles" not in decode_prediction(value, FORMAT_PROTOBUF)


def test_an_unknown_prediction_format_is_refused():
    batch = EventBatch.of(["a"], [[1.0]], offset=[3])
    with pytest.raises(ValueError, match="prediction format"):
        encode_predictions(batch, np.ones((1, 1), np.float32), np.array([0]), "m", "v",
                           prediction_format="avro")  # fmt: skip
    with pytest.raises(ValueError, match="prediction format"):
        decode_prediction(b"{}", "avro")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b'{"x": [1' + b"0" * 400 + b", 2, 3]}", "non_finite"),  # an int beyond float range
        (b'{"x": [1, 2, 3], "ts": 1' + b"0" * 400 + b"}", "bad_field"),
        (b'{"x": [1, 2, 3], "ts": NaN}', "bad_field"),
        (b'{"x": [1, 2, 3], "ts": 1.7976931348623157e308}', "bad_field"),  # the float max
        (b'{"x": [1, 2, 3], "seq": 1' + b"0" * 30 + b"}", "bad_seq"),
        (b"[" * 100_000, "bad_json"),  # nesting bomb
    ],
)
def test_extreme_numbers_and_nesting_are_dead_lettered(value, reason):
    d = decode([rec("a", value), rec("a", {"x": [1, 2, 3]}, offset=1)], 3)
    assert [i.reason for i in d.invalid] == [reason]
    assert len(d.batch) == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    key=st.none() | st.binary(max_size=300),
    doc=st.fixed_dictionaries(
        {},
        optional={"x": json_values, "seq": json_values, "ts": json_values, "stream": json_values},
    ),
    raw=st.none() | st.binary(max_size=60),
)
def test_no_record_can_break_decoding(key, doc, raw):
    """Whatever a record holds, decode sorts it into good or invalid and never raises."""
    value = raw if raw is not None else json.dumps(doc).encode()
    records = [rec(key, value, offset=0), rec("ok", {"x": [1, 2, 3]}, offset=1)]
    for fmt in (FORMAT_JSON, FORMAT_PROTOBUF):
        d = decode(records, 3, fmt)
        assert len(d.batch) + len(d.invalid) == 2
        assert np.isfinite(d.batch.x).all()
        if fmt == FORMAT_JSON:
            assert d.batch.streams[-1] == "ok"


# ------------------------------------------------- bulk path == per-record path
def per_record(records, input_size):
    """The poll decoded record by record: the reference the bulk path must equal."""
    from streamcell.service import codec

    parse = codec._parse_typed
    codec._parse_typed = lambda records: [None] * len(records)  # the standard library only
    try:
        return decode(records, input_size, FORMAT_JSON)
    finally:
        codec._parse_typed = parse


def same(a, b) -> None:
    assert a.batch.streams == b.batch.streams
    for col in ("x", "seq", "partition", "offset"):
        got, want = getattr(a.batch, col), getattr(b.batch, col)
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), col
    assert a.event_time.tobytes() == b.event_time.tobytes()
    assert a.records == b.records
    assert a.invalid == b.invalid


def test_a_value_cannot_merge_with_its_neighbour():
    """Joined into one JSON array these two would read as two good events."""
    records = [
        rec("a", b'{"x": [1, 2, 3]}, {"x": [1, 2', offset=0),
        rec("a", b"3]}", offset=1),
        rec("b", b'{"a": "}', offset=2),
        rec("b", b'{\\"b\\": 1}"}, {"x": [1, 2, 3]}', offset=3),
        rec("c", {"x": [1, 2, 3]}, offset=4),
    ]
    d = decode(records, 3)
    assert [(i.record.offset, i.reason) for i in d.invalid] == [(k, "bad_json") for k in range(4)]
    assert d.batch.offset.tolist() == [4]
    same(d, per_record(records, 3))


def test_a_good_poll_takes_the_bulk_path():
    from streamcell.service import codec

    records = [
        rec("a", {"stream": "a", "seq": 3, "ts": 1.5, "x": [1.0, 2, -3.5]}, offset=0),
        rec("b", {"x": [0.1, 0.2, 0.3]}, offset=1),
        rec("a", {"x": [1, 2, 1e39], "seq": 4, "ts": 2}, offset=2),  # non_finite in bulk
    ]
    assert codec._bulk_typed(records, codec._parse_typed(records), 3) is not None
    d = decode(records, 3)
    assert [(i.record.offset, i.reason) for i in d.invalid] == [(2, "non_finite")]
    same(d, per_record(records, 3))


def mostly(usual, *rare):
    """``usual`` nine times in ten: most polls stay all good and take the bulk path."""
    return st.sampled_from([usual] * 9 + [None]).flatmap(
        lambda v: st.just(v) if v is not None else st.sampled_from(rare)
    )


good_docs = st.fixed_dictionaries(
    {
        "x": st.lists(
            mostly(st.floats(width=32), st.integers(-(2**70), 2**70), st.just(True)).flatmap(
                lambda strategy: strategy
            ),
            min_size=3,
            max_size=3,
        )
    },
    optional={
        "seq": st.none() | st.integers(0, 2**62) | st.integers(-2, 2**64),
        "ts": st.none()
        | st.floats(-1e9, 1e9)
        | st.floats()
        | st.sampled_from([1.7976931348623157e308, -1.7976931348623157e308])
        | st.integers(-(2**1030), 2**1030),
        "stream": mostly("a", "b", "", 5),
    },
)


# Fields the event does not have, which msgspec skips and the standard library reads.
extra_fields = mostly(
    b"",
    b'"e": "\xff", ',  # not UTF-8
    b'"e": "\\ud800", ',  # a lone surrogate, which the standard library accepts
    b'"e": NaN, ',  # Python's JSON extension, refused by msgspec
    b'"e": [' * 3000 + b"]" * 3000 + b", ",  # deeper than either parser goes
    b'"x": "first", ',  # a duplicate key: the last one counts
)


@settings(max_examples=300, deadline=None)
@given(
    polls=st.lists(
        st.tuples(
            mostly(b"a", b"b", b"", b"\xff"),
            good_docs,
            mostly("", " ", "\n", ", 1", "}"),
            extra_fields,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_bulk_and_per_record_decoding_agree(polls):
    """Same columns, bytes and dead-letter reasons and messages, whichever path decodes."""
    records = [
        rec(key, b"{" + extra + (json.dumps(doc) + pad).encode()[1:], offset=k, ts_ms=1_000 + k)
        for k, (key, doc, pad, extra) in enumerate(polls)
    ]
    same(decode(records, 3), per_record(records, 3))
