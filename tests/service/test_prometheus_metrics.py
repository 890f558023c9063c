"""The service's metric set: names, labels, and what the recorders write."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamcell.service.metrics import LATENCY_BUCKETS, Metrics


def families(metrics: Metrics) -> dict[str, object]:
    text = generate_latest(metrics.registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_names_follow_prometheus_conventions() -> None:
    fams = families(Metrics())
    ours = {n: f for n, f in fams.items() if n.startswith("streamcell_")}
    others = set(fams) - set(ours)
    assert all(n.startswith(("process_", "python_")) for n in others), others
    assert "process_resident_memory_bytes" in {s.name for f in fams.values() for s in f.samples}
    for name, fam in ours.items():
        assert fam.documentation, name
        for s in fam.samples:
            assert "stream" not in s.labels, f"{s.name} has a per-stream label"
    # The metric set (item 1), by exported family name.
    required = {
        "streamcell_events": "counter",
        "streamcell_predictions": "counter",
        "streamcell_dead_letters": "counter",
        "streamcell_batch_size_events": "histogram",
        "streamcell_model_step_seconds": "histogram",
        "streamcell_event_latency_seconds": "histogram",
        "streamcell_active_streams": "gauge",
        "streamcell_state_capacity_streams": "gauge",
        "streamcell_state_bytes": "gauge",
        "streamcell_streams_evicted": "counter",
        "streamcell_streams_expired": "counter",
        "streamcell_online_abs_error": "histogram",
        "streamcell_online_mae": "gauge",
        "streamcell_model_validation_mae": "gauge",
        "streamcell_consumer_lag_messages": "gauge",
        "streamcell_rebalances": "counter",
        "streamcell_changelog_restore_seconds": "histogram",
        "streamcell_changelog_restored_streams": "counter",
        "streamcell_changelog_restoring_partitions": "gauge",
        "streamcell_commits": "counter",
        "streamcell_model_reloads": "counter",
        "streamcell_model_info": "gauge",  # an Info metric, a gauge in text format
        "streamcell_model_loaded": "gauge",
        "streamcell_grpc_requests": "counter",
        "streamcell_grpc_request_seconds": "histogram",
    }
    kinds = {n: f.type for n, f in ours.items()}
    missing = {n: t for n, t in required.items() if kinds.get(n) != t}
    assert not missing, f"missing or mistyped: {missing}"


def test_batch_histogram_matches_prometheus_histogram() -> None:
    """Binning a whole array equals observing each value with prometheus_client's Histogram."""
    metrics = Metrics()
    values = np.concatenate(
        [np.random.default_rng(1).exponential(0.05, 500), list(LATENCY_BUCKETS), [0.0, 99.0]]
    )
    metrics.event_latency.observe_many(values[:300], "kafka")
    metrics.event_latency.observe_many(values[300:], "kafka")
    reference = Histogram("ref", "reference", buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    for v in values:
        reference.observe(float(v))
    ref = {
        s.labels.get("le"): s.value
        for s in reference.collect()[0].samples
        if s.name.endswith("_bucket")
    }
    got = {
        s.labels["le"]: s.value
        for s in families(metrics)["streamcell_event_latency_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["source"] == "kafka"
    }
    assert {float(k): v for k, v in got.items()} == {float(k): v for k, v in ref.items()}
    assert sample(metrics, "streamcell_event_latency_seconds_count", source="kafka") == len(values)
    assert sample(metrics, "streamcell_event_latency_seconds_sum", source="kafka") == pytest.approx(
        values.sum()
    )


def test_record_batch_counts_outcomes_and_running_mae() -> None:
    metrics = Metrics()
    counts = {"predicted": 5, "duplicate": 2, "invalid": 1, "skipped_replay": 0}
    metrics.record_batch("kafka", counts, 5, np.array([[1.0], [3.0]]), "m", "v1")
    metrics.record_batch("kafka", counts, 5, np.array([[5.0]]), "m", "v1")
    metrics.record_batch("grpc", {"predicted": 1}, 1, np.zeros((0, 1)), "m", "v1")
    assert sample(metrics, "streamcell_events_total", source="kafka", outcome="predicted") == 10
    assert sample(metrics, "streamcell_events_total", source="kafka", outcome="duplicate") == 4
    assert sample(metrics, "streamcell_events_total", source="grpc", outcome="predicted") == 1
    assert sample(metrics, "streamcell_predictions_total", source="kafka") == 10
    assert sample(metrics, "streamcell_batch_size_events_count", source="kafka") == 2
    assert sample(metrics, "streamcell_batch_size_events_sum", source="kafka") == 16
    assert sample(metrics, "streamcell_online_mae", model="m", version="v1") == pytest.approx(3.0)
    assert sample(metrics, "streamcell_online_abs_error_count", model="m", version="v1") == 3


def test_store_gauges_read_the_live_store_at_scrape_time() -> None:
    class Store:
        def __init__(self, n: int) -> None:
            self.n, self.capacity, self.max_streams, self.nbytes = n, 8 * n, 100, 1000 * n

        def __len__(self) -> int:
            return self.n

    metrics = Metrics()
    current: list[Store | None] = [None]
    metrics.watch_store(lambda: current[0])
    assert sample(metrics, "streamcell_active_streams") == 0
    current[0] = Store(3)
    assert sample(metrics, "streamcell_active_streams") == 3
    assert sample(metrics, "streamcell_state_bytes") == 3000
    current[0] = Store(5)  # a reload replaced the store
    assert sample(metrics, "streamcell_state_capacity_streams") == 40


def test_restoring_is_visible_while_it_runs_and_timed_after() -> None:
    metrics = Metrics()
    with metrics.restoring(3):
        assert sample(metrics, "streamcell_changelog_restoring_partitions") == 3
        assert sample(metrics, "streamcell_changelog_restore_started_timestamp_seconds") > 0
    with pytest.raises(RuntimeError), metrics.restoring(2):
        raise RuntimeError("broker went away")
    assert sample(metrics, "streamcell_changelog_restoring_partitions") == 0
    assert sample(metrics, "streamcell_changelog_restore_seconds_count") == 2


def test_model_info_and_validation_mae() -> None:
    metrics = Metrics()
    assert sample(metrics, "streamcell_model_loaded") == 0
    metrics.record_model("m", "v2", 0.25)
    assert sample(metrics, "streamcell_model_info", model="m", version="v2") == 1
    assert sample(metrics, "streamcell_model_loaded") == 1
    assert sample(metrics, "streamcell_model_validation_mae", model="m", version="v2") == 0.25


def test_each_metrics_object_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.predictions.labels(source="grpc").inc()
    assert sample(a, "streamcell_predictions_total", source="grpc") == 1
    assert sample(b, "streamcell_predictions_total", source="grpc") == 0
