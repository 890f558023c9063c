"""Metric bookkeeping that a producer's bad clock must not be able to skew."""

from __future__ import annotations

import numpy as np

from streamcell.service.metrics import LATENCY_RANGE_S, Metrics


def test_event_latency_outside_its_range_counts_at_the_bound() -> None:
    metrics = Metrics()
    # ts a minute in the future, two ordinary events, ts = 0 (1970)
    metrics.event_latency.observe_many(np.array([-60.0, 0.01, 0.2, 1.7e9]), "kafka")
    registry = metrics.registry
    assert metrics.event_latency.count("kafka") == 4
    assert metrics.event_latency.total("kafka") == 0.01 + 0.2 + LATENCY_RANGE_S[1]
    first_bucket = registry.get_sample_value(
        "streamcell_event_latency_seconds_bucket", {"source": "kafka", "le": "0.001"}
    )
    assert first_bucket == 1  # the future event, at 0
    for side in ("below", "above"):
        labels = {"source": "kafka", "side": side}
        assert registry.get_sample_value("streamcell_event_latency_clipped_total", labels) == 1


def test_latencies_in_range_are_untouched() -> None:
    metrics = Metrics()
    metrics.event_latency.observe_many(np.array([0.0, 3.0, 86_400.0]), "grpc")
    assert metrics.event_latency.total("grpc") == 86_403.0
    assert (
        metrics.registry.get_sample_value(
            "streamcell_event_latency_clipped_total", {"source": "grpc", "side": "above"}
        )
        is None
    )
