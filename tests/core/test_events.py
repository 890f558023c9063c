"""The event rules: each decoder refuses a breach with the reason and message of events.py."""

from __future__ import annotations

import numpy as np
import pytest

from streamcell.core import events
from streamcell.core.errors import InvalidEvent
from streamcell.core.events import EventBatch, find_invalid


def test_find_invalid_names_each_rule_once_per_row():
    batch = EventBatch.of(
        ["a", "", "b", "c" * 300],
        [[1.0, 2.0], [1.0, 2.0], [np.nan, 1.0], [1.0, 2.0]],
        seq=[-5, 1, -1, 2],
    )
    assert find_invalid(batch, 2) == [
        (0, events.REASON_BAD_SEQ, events.bad_seq(-5)),
        (1, events.REASON_MISSING_KEY, events.EMPTY_STREAM),
        (2, events.REASON_NON_FINITE, events.NON_FINITE),
        (3, events.REASON_KEY_TOO_LONG, events.STREAM_TOO_LONG),
    ]
    assert find_invalid(batch, 3) == [
        (k, events.REASON_WRONG_LENGTH, events.wrong_length(2, 3)) for k in range(4)
    ]


@pytest.mark.parametrize(
    ("key", "reason", "message"),
    [
        (None, events.REASON_MISSING_KEY, events.NO_KEY),
        (b"", events.REASON_MISSING_KEY, events.NO_KEY),
        (b"k" * 257, events.REASON_KEY_TOO_LONG, events.KEY_TOO_LONG),
        (b"\xff", events.REASON_BAD_FIELD, events.KEY_NOT_UTF8),
    ],
)
def test_a_key_that_names_no_stream_is_refused(key, reason, message):
    with pytest.raises(InvalidEvent) as err:
        events.stream_of_key(key)
    assert (err.value.reason, str(err.value)) == (reason, message)


def test_ts_and_seq_ranges():
    big = events.FLOAT_MAX
    assert events.in_float_range(1.5) and events.in_float_range(10**300)
    for bad in (big, -big, float("nan"), float("inf"), 10**400):
        assert not events.in_float_range(bad)
        assert not events.all_in_float_range(np.array([0.0, float(min(bad, big))]))
    assert events.seq_ok(0) and events.seq_ok(2**63 - 1)
    assert not events.seq_ok(-1) and not events.seq_ok(2**63)


def test_refusal_names_the_row_and_stream():
    err = events.refusal(["a", "b"], 1, events.REASON_BAD_SEQ, events.bad_seq(-1))
    assert (err.reason, str(err)) == ("bad_seq", "event 1 (stream 'b'): seq must be >= 0, got -1")
