"""TTL expiry on event time: the service's own downtime idles no stream."""

from __future__ import annotations

import numpy as np
import pytest
from test_predictor import save

from streamcell.core.events import EventBatch
from streamcell.core.predictor import Predictor

X = [1.0, 2.0, 3.0]
TTL = 60.0
DAY = 86_400.0


def events(streams: list[str]) -> EventBatch:
    return EventBatch.of(streams, [X] * len(streams))


@pytest.fixture
def loaded(tmp_path):
    return save(tmp_path)


def test_streams_old_in_wall_time_but_recent_in_event_time_are_kept(loaded):
    # The wall clock is a day past the events (a backlog read after an outage).
    predictor = Predictor(loaded, ttl_seconds=TTL, clock=lambda: 1000.0 + DAY)
    predictor.predict(events(["a", "b"]), np.array([1000.0, 1030.0]))
    assert predictor.watermark == 1030.0
    assert predictor.expire() == []
    assert sorted(predictor.store.stream_ids()) == ["a", "b"]
    predictor.predict(events(["b"]), 1060.0)  # "a" idle exactly the TTL: expired
    assert predictor.expire() == ["a"]
    predictor.predict(events(["c"]), 1119.0)  # "b" idle 59 s of event time: kept
    assert predictor.expire() == []
    predictor.predict(events(["c"]), 1121.0)
    assert predictor.expire() == ["b"]
    assert predictor.store.stream_ids() == ["c"]


def test_a_restore_then_expiry_after_a_long_downtime_expires_nothing(loaded):
    before = Predictor(loaded, ttl_seconds=TTL, clock=lambda: 1010.0)
    before.predict(events(["a", "b"]), np.array([1000.0, 1010.0]))
    snapshots = list(zip(["a", "b"], before.store.snapshot(["a", "b"]), strict=True))

    after = Predictor(loaded, ttl_seconds=TTL, clock=lambda: 1010.0 + DAY)
    after.restore(snapshots, {"a": 0, "b": 0})
    assert after.info("a").last_seen == 1000.0, "last_seen is the event time it was"
    assert after.expire() == [], "no event yet: the watermark is unknown"
    assert sorted(after.store.stream_ids()) == ["a", "b"]
    after.predict(events(["b"]), 1050.0)  # the backlog resumes: nobody idle yet
    assert after.expire() == []
    after.predict(events(["b"]), 1065.0)
    assert after.expire() == ["a"]


def test_an_event_time_ahead_of_the_clock_counts_as_now(loaded):
    predictor = Predictor(loaded, ttl_seconds=TTL, clock=lambda: 1000.0)
    predictor.predict(events(["a"]), 990.0)
    predictor.predict(events(["future"]), 1e12)  # a hostile or skewed ts
    assert predictor.watermark == 1000.0 and predictor.info("future").last_seen == 1000.0
    assert predictor.expire() == []


def test_events_without_an_event_time_are_seen_at_their_arrival(loaded):
    clock = [500.0]
    predictor = Predictor(loaded, ttl_seconds=TTL, clock=lambda: clock[0])
    predictor.predict(events(["a"]))
    clock[0] += 61
    predictor.predict(events(["b"]))
    assert predictor.watermark == 561.0 and predictor.info("b").last_seen == 561.0
    assert predictor.expire() == ["a"]


def test_a_batch_s_time_column_is_its_event_time_missing_ones_arrive_now(loaded):
    predictor = Predictor(loaded, ttl_seconds=TTL, clock=lambda: 1000.0)
    batch = EventBatch.of(["ts", "none"], [X, X], time=[900.0, np.nan])
    predictor.predict(batch)
    assert predictor.info("ts").last_seen == 900.0 and predictor.info("none").last_seen == 1000.0
    assert predictor.expire() == ["ts"]
    assert np.isnan(batch.take(np.array([1])).time).all(), "take keeps the column"
