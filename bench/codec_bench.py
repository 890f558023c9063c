"""Per-event cost of ``codec.decode``: the bulk path against the per-record path.

    python bench/codec_bench.py [--batch 1024] [--rounds 7]

The events are those of the end-to-end benchmark (bench/kafka_e2e.py: JSON
with stream, seq and 8 float features, keys ``stream-N``), in polls of
``--batch`` records. Measured round-robin, best round each, so a burst of load
from elsewhere on a shared machine hits every variant alike:

- decode: ``codec.decode`` as the service calls it (the bulk path for a good
  poll: msgspec parses and type-checks each value, the rest of the rules
  are checked column by column);
- per-record: the standard library's path alone, record by record (msgspec
  switched off): the reference the tests compare the bulk path with;
- 1 bad JSON / 1 bad ts: a poll whose last record is not JSON (msgspec
  refuses it, so the poll is parsed again one value at a time) or has a bad
  ``ts`` (the bulk rules fail at their last check); both then go record by
  record, the standard library reading only the values msgspec refused;
- parsing alone: ``JSONDecoder.decode`` per record, one decode of the
  poll's values joined into one JSON array (refused: a value could merge
  with its neighbours), and msgspec's typed parse per record.
"""

from __future__ import annotations

import argparse
import json

from kafka_bench import make_messages
from step_bench import timed

from streamcell.service import codec
from streamcell.service.kafka import Record


def per_event_us(fn, events: int, min_seconds: float = 0.3) -> float:
    return timed(fn, min_seconds) / events * 1e6


def per_record_decode(records: list[Record]) -> codec.Decoded:
    """The standard library's path alone, record by record (msgspec switched off)."""
    parse = codec._parse_typed
    codec._parse_typed = lambda records: [None] * len(records)
    try:
        return codec.decode(records, 8)
    finally:
        codec._parse_typed = parse


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    n = args.batch
    messages = make_messages(n, max(1, n // 10))
    records = [
        Record("events", 0, k, key, value, 1_000, ()) for k, (key, value) in enumerate(messages)
    ]
    one_bad = [*records[:-1], records[-1]._replace(value=b"{oops")]
    late_bad = [
        *records[:-1],
        records[-1]._replace(value=b'{"x": [1, 2, 3, 4, 5, 6, 7, 8], "ts": "now"}'),
    ]
    values = [r.value for r in records]
    decoder = json.JSONDecoder()
    rows = codec._bulk_typed(records, codec._parse_typed(records), 8)
    assert rows is not None, "the good poll must take the bulk path"
    fast, slow = codec.decode(records, 8), per_record_decode(records)
    assert fast.batch.x.tobytes() == slow.batch.x.tobytes() and fast.invalid == slow.invalid == []
    variants = {
        "decode (bulk)": lambda: codec.decode(records, 8),
        "decode, per-record path": lambda: per_record_decode(records),
        "decode, poll with 1 bad JSON": lambda: codec.decode(one_bad, 8),
        "decode, poll with 1 bad ts": lambda: codec.decode(late_bad, 8),
        "json: JSONDecoder.decode per record": lambda: [decoder.decode(v.decode()) for v in values],
        "json: one array of the poll": lambda: decoder.decode(
            (b"[" + b",".join(values) + b"]").decode()
        ),
        "msgspec: typed parse per record": lambda: codec._parse_typed(records),
    }
    best = {name: float("inf") for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            best[name] = min(best[name], per_event_us(fn, n))
    for name, us in best.items():
        print(f"{name:38s} {us:6.2f} us/event")
    gain = 1 - best["decode (bulk)"] / best["decode, per-record path"]
    print(f"bulk vs per-record: {gain:.0%} less time per event ({n}-event polls)")


if __name__ == "__main__":
    main()
