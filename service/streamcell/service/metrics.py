"""Prometheus metrics of a serving process, on a registry of its own.

Naming follows Prometheus conventions: the ``streamcell_`` prefix, base units
in names (``_seconds``, ``_bytes``), ``_total`` for counters. No label ever
holds a stream id (unbounded cardinality); per-stream numbers are for
GetStream.

The hot path records whole micro-batches: labelled children are bound once,
and per-event values (latency, online error) go through
:class:`BatchHistogram`, which bins a numpy array in one call instead of one
``observe`` per event.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from contextlib import contextmanager
from typing import Any

import numpy as np
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from streamcell.core.quantiles import Scores, central_intervals, interval_label

# Event time is the producer's word: a latency below zero (a clock ahead of
# ours) or beyond a day (a ts that is more likely wrong than that late) is
# counted at the bound and in event_latency_clipped_total, so that one bad
# producer cannot move the histogram's sum without bound.
LATENCY_RANGE_S = (0.0, 86_400.0)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
STEP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
ERROR_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    25,
    50,
    100,
    250,
    1000,
)
COLD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
SOURCES = ("kafka", "grpc")
OUTCOMES = ("predicted", "duplicate", "invalid", "skipped_replay")


class BatchHistogram(Collector):
    """A histogram fed whole numpy arrays at a time (one ``searchsorted`` per batch)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
        clip: tuple[float, float] | None = None,
        clipped: Counter | None = None,
    ) -> None:
        """``clip``: values outside (low, high) count at the bound, and in ``clipped``
        (labelled as this histogram, plus ``side`` = below/above)."""
        self.clip = clip
        self._clipped = clipped
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self._series: dict[tuple[str, ...], list] = {}  # labels -> [counts, sum]
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray, *labels: str) -> None:
        values = np.asarray(values, dtype=np.float64).ravel()
        if values.size == 0:
            return
        if self.clip is not None:
            values = self._clipped_values(values, labels)
        counts = np.bincount(
            np.searchsorted(self.bounds, values, side="left"), minlength=len(self.bounds) + 1
        )
        total = float(values.sum())
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = [np.zeros(len(self.bounds) + 1, np.int64), 0.0]
            series[0] += counts
            series[1] += total

    def _clipped_values(self, values: np.ndarray, labels: tuple[str, ...]) -> np.ndarray:
        assert self.clip is not None
        low, high = self.clip
        below, above = int((values < low).sum()), int((values > high).sum())
        if not below and not above:
            return values
        if self._clipped is not None:
            for side, n in (("below", below), ("above", above)):
                if n:
                    self._clipped.labels(*labels, side).inc(n)
        return np.clip(values, low, high)

    def count(self, *labels: str) -> int:
        with self._lock:
            series = self._series.get(labels)
            return 0 if series is None else int(series[0].sum())

    def total(self, *labels: str) -> float:
        with self._lock:
            series = self._series.get(labels)
            return 0.0 if series is None else float(series[1])

    def collect(self) -> Iterable[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            snapshot = [(k, v[0].copy(), v[1]) for k, v in self._series.items()]
        edges = [*(f"{b:g}" for b in self.bounds), "+Inf"]
        for labels, counts, total in snapshot:
            cumulative = np.cumsum(counts)
            family.add_metric(
                list(labels), list(zip(edges, (float(c) for c in cumulative), strict=True)), total
            )
        yield family

    def describe(self) -> Iterable[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)


class TierCollector(Collector):
    """The two tiers' gauges and counters, read from the live TieredStore at scrape time.

    Its counts are running totals kept by the store (under the Predictor's
    lock, read here without it: each is one int), so nothing is done per event.
    """

    def __init__(self, tiers_of: Callable[[], Any], registry: CollectorRegistry) -> None:
        self._tiers_of = tiers_of
        registry.register(self)

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        tiers = self._tiers_of()
        if tiers is None:
            return
        p, c, cold = "streamcell_", tiers.counts, tiers.cold
        yield GaugeMetricFamily(
            p + "state_hot_streams", "Streams held in memory (the hot tier).", len(tiers.hot)
        )
        yield GaugeMetricFamily(
            p + "state_cold_streams", "Streams held in the cold tier on disk.", len(cold)
        )
        yield GaugeMetricFamily(
            p + "state_cold_bytes",
            "Bytes of the cold tier's live records (what --state-dir-max-bytes bounds).",
            cold.bytes,
        )
        yield GaugeMetricFamily(
            p + "state_cold_max_bytes", "The cold tier's bound (--state-dir-max-bytes).",
            cold.max_bytes or 0,
        )  # fmt: skip
        known = c.hits + c.loads
        yield GaugeMetricFamily(
            p + "state_hot_hit_ratio",
            "Of a batch's streams held anywhere, the share found hot, since start.",
            c.hits / known if known else 1.0,
        )
        lookups = CounterMetricFamily(
            p + "state_lookups",
            "A micro-batch's streams by where they were found: hot, cold (loaded) or new.",
            labels=["tier"],
        )
        for tier, n in (("hot", c.hits), ("cold", c.loads), ("new", c.new)):
            lookups.add_metric([tier], n)
        yield lookups
        for name, doc, value in (
            ("state_spills", "Streams spilled from memory to the cold tier.", c.spills),
            ("state_loads", "Streams loaded from the cold tier into memory.", c.loads),
            (
                "state_cold_forgotten",
                "Streams the cold tier's size bound forgot, oldest first (changelog tombstones).",
                c.forgotten,
            ),
            ("state_cold_expired", "Cold streams expired after their TTL.", c.expired),
        ):
            yield CounterMetricFamily(p + name, doc, value)

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


class SumCount(Collector):
    """A running sum and count per label set, exported as a summary without quantiles
    (``NAME_sum``, ``NAME_count``), so that PromQL can window the mean and add replicas."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], list] = {}  # labels -> [count, sum]
        self._lock = threading.Lock()
        registry.register(self)

    def add(self, labels: tuple[str, ...], count: int, total: float) -> None:
        with self._lock:
            series = self._series.setdefault(labels, [0, 0.0])
            series[0] += count
            series[1] += total

    def collect(self) -> Iterable[SummaryMetricFamily]:
        family = SummaryMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            snapshot = [(k, v[0], v[1]) for k, v in self._series.items()]
        for labels, count, total in snapshot:
            family.add_metric(list(labels), count, total)
        yield family

    def describe(self) -> Iterable[SummaryMetricFamily]:
        yield SummaryMetricFamily(self.name, self.documentation, labels=self.labelnames)


class Metrics:
    """Every metric the service exports, bound to one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        if registry is None:
            # process_* (memory, CPU, fds) and python_* series, as on the default registry:
            # bounded memory is one of the guarantees, so its evidence is scraped too.
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                r.register(collector)
        p = "streamcell_"
        self.events = Counter(
            p + "events_total",
            "Events consumed, by source and outcome.",
            ["source", "outcome"],
            registry=r,
        )
        self.predictions = Counter(
            p + "predictions_total", "Predictions emitted, by source.", ["source"], registry=r
        )
        self.dead_letters = Counter(
            p + "dead_letters_total",
            "Events sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            p + "batch_size_events",
            "Events per micro-batch.",
            ["source"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.step_seconds = Histogram(
            p + "model_step_seconds",
            "Seconds of one batched LSTM step over a micro-batch.",
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.event_latency_clipped = Counter(
            p + "event_latency_clipped",
            "Events whose time gave a latency below 0 or beyond a day, counted at that bound.",
            ["source", "side"],
            registry=r,
        )
        self.event_latency = BatchHistogram(
            p + "event_latency_seconds",
            "From an event's time (its ts, else its Kafka timestamp) to its prediction.",
            ["source"],
            LATENCY_BUCKETS,
            r,
            clip=LATENCY_RANGE_S,
            clipped=self.event_latency_clipped,
        )
        self.online_abs_error = BatchHistogram(
            p + "online_abs_error",
            "Absolute error of each prediction against the next value, in target units.",
            ["model", "version"],
            ERROR_BUCKETS,
            r,
        )
        self.online_mae = Gauge(
            p + "online_mae",
            "Running mean absolute error of the served version.",
            ["model", "version"],
            registry=r,
        )
        # A quantile head, per model version: coverage as two counters (PromQL
        # windows their ratio and sums it over replicas) and the pinball loss.
        self.interval_scored = Counter(
            p + "interval_scored",
            "Actual values scored against the quantiles of the prediction before them.",
            ["model", "version"],
            registry=r,
        )
        self.interval_inside = Counter(
            p + "interval_inside",
            'Scored actual values inside each central interval (interval="0.8": the levels '
            "0.1 to 0.9) of the prediction before them.",
            ["model", "version", "interval"],
            registry=r,
        )
        self.pinball_loss = SumCount(
            p + "pinball_loss",
            "Pinball (quantile) loss of each scored actual value, per quantile level, in target "
            "units.",
            ["model", "version", "level"],
            r,
        )
        self.validation_mae = Gauge(
            p + "model_validation_mae",
            "The version's validation MAE from training.",
            ["model", "version"],
            registry=r,
        )
        self.active_streams = Gauge(
            p + "active_streams", "Streams held in the state store.", registry=r
        )
        self.state_capacity = Gauge(
            p + "state_capacity_streams", "Stream slots allocated in the state store.", registry=r
        )
        self.state_max_streams = Gauge(
            p + "state_max_streams", "Configured maximum streams before LRU eviction.", registry=r
        )
        self.state_bytes = Gauge(
            p + "state_bytes", "Bytes held by the state store's slabs.", registry=r
        )
        self.evicted = Counter(
            p + "streams_evicted_total", "Streams evicted at capacity (LRU).", registry=r
        )
        self.expired = Counter(
            p + "streams_expired_total", "Streams expired after their TTL.", registry=r
        )
        self.cold_batch_seconds = Histogram(
            p + "state_cold_batch_seconds",
            "Seconds of a micro-batch's cold-tier work (its batched reads and writes).",
            buckets=COLD_BUCKETS,
            registry=r,
        )
        self.cold_rebuilds = Counter(
            p + "state_cold_rebuilds",
            "Cold tiers built from the changelog: at start, by what the state dir held: "
            "empty (a first start, or it was deleted), previous (an earlier process's, "
            "not trusted), corrupt, or layout (an earlier version's, of another key "
            "layout); lost: one that failed while serving, rebuilt in the running process.",
            ["found"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            p + "consumer_lag_messages",
            "Messages behind the end of each assigned input partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.assigned_partitions = Gauge(
            p + "assigned_partitions", "Input partitions assigned to this replica.", registry=r
        )
        self.rebalances = Counter(
            p + "rebalances_total", "Consumer-group rebalances seen.", registry=r
        )
        self.partitions_lost = Counter(
            p + "partitions_lost_total",
            "Partitions taken away while this replica was out of the group (evicted, fenced): "
            "dropped without writing anything.",
            registry=r,
        )
        self.changelog_behind = Counter(
            p + "changelog_behind_total",
            "Restores that found a changelog partition behind the committed offsets (truncated "
            "or recreated: the state of the streams whose records are gone is lost).",
            registry=r,
        )
        self.restore_seconds = Histogram(
            p + "changelog_restore_seconds",
            "Seconds to restore assigned partitions' streams from the changelog.",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.restoring_partitions = Gauge(
            p + "changelog_restoring_partitions",
            "Partitions whose streams are being restored now (alerts on restores that hang).",
            registry=r,
        )
        self.restore_remaining = Gauge(
            p + "changelog_restore_records_remaining",
            "Changelog offsets the current restore has still to read (0 when none runs).",
            registry=r,
        )
        self.restore_started = Gauge(
            p + "changelog_restore_started_timestamp_seconds",
            "Unix time the current (or last) changelog restore started.",
            registry=r,
        )
        self.restored_streams = Counter(
            p + "changelog_restored_streams_total",
            "Streams restored from the changelog.",
            registry=r,
        )
        self.commits = Counter(
            p + "commits_total",
            "Input-offset commits (after predictions and changelog flushed).",
            registry=r,
        )
        self.model_reloads = Counter(
            p + "model_reloads_total",
            "Model versions switched to (state_kept or state_reset) or refused (failed).",
            ["result"],
            registry=r,
        )
        self.model_info = Info(p + "model", "The model version being served.", registry=r)
        self.model_loaded = Gauge(
            p + "model_loaded", "1 when a model version is loaded.", registry=r
        )
        self.kafka_connected = Gauge(
            p + "kafka_connected",
            "1 once this replica reached the Kafka brokers at start-up; 0 while it waits for "
            "them (and without Kafka).",
            registry=r,
        )
        self.grpc_requests = Counter(
            p + "grpc_requests_total",
            "gRPC requests, by method and status code.",
            ["method", "code"],
            registry=r,
        )
        self.grpc_seconds = Histogram(
            p + "grpc_request_seconds",
            "gRPC handling seconds, by method.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._tiers: TierCollector | None = None
        # (model, version, levels) -> record_scores' counter children and pinball labels.
        self._score_series: dict[tuple, tuple[Any, list[Any], list[tuple[str, str, str]]]] = {}
        self._tiers_source: Callable[[], Any] = lambda: None
        self._bind()

    def _bind(self) -> None:
        """Labelled children used per batch, looked up once."""
        self.outcome = {
            (s, o): self.events.labels(source=s, outcome=o) for s in SOURCES for o in OUTCOMES
        }
        self.emitted = {s: self.predictions.labels(source=s) for s in SOURCES}
        self.batch_sizes = {s: self.batch_size.labels(source=s) for s in SOURCES}

    # ------------------------------------------------------------ recorders
    def record_batch(
        self,
        source: str,
        outcome_counts: dict[str, int],
        predictions: int,
        abs_errors: np.ndarray,
        model: str,
        version: str,
        scores: Scores | None = None,
        levels: Sequence[float] = (),
    ) -> None:
        """One call per micro-batch: outcomes, predictions, online error, and for a quantile
        head what its ``levels`` scored (``scores``)."""
        for outcome, n in outcome_counts.items():
            if n:
                self.outcome[source, outcome].inc(n)
        if predictions:
            self.emitted[source].inc(predictions)
        self.batch_sizes[source].observe(sum(outcome_counts.values()))
        if abs_errors.size:
            self.online_abs_error.observe_many(abs_errors, model, version)
            count = self.online_abs_error.count(model, version)
            self.online_mae.labels(model, version).set(
                self.online_abs_error.total(model, version) / count
            )
        if scores is not None and scores.scored:
            self.record_scores(scores, levels, model, version)

    def record_scores(
        self, scores: Scores, levels: Sequence[float], model: str, version: str
    ) -> None:
        key = (model, version, tuple(levels))
        series = self._score_series.get(key)
        if series is None:  # once per version: the children and labels, not per batch
            series = self._score_series[key] = (
                self.interval_scored.labels(model, version),
                [
                    self.interval_inside.labels(model, version, iv.label)
                    for iv in central_intervals(levels)
                ],
                [(model, version, interval_label(level)) for level in levels],
            )
        scored, inside_children, pinball_labels = series
        scored.inc(scores.scored)
        for child, inside in zip(inside_children, scores.inside.tolist(), strict=True):
            child.inc(inside)
        for labels, total in zip(pinball_labels, scores.pinball.tolist(), strict=True):
            self.pinball_loss.add(labels, scores.scored, total)

    @contextmanager
    def restoring(self, partitions: int) -> Iterator[None]:
        """Time a changelog restore, visible while it runs (a restore that hangs still shows)."""
        start = time.perf_counter()
        self.restore_started.set(time.time())
        self.restoring_partitions.inc(partitions)
        try:
            yield
        finally:
            self.restoring_partitions.dec(partitions)
            self.restore_remaining.set(0)
            self.restore_seconds.observe(time.perf_counter() - start)

    def record_model(self, name: str, version: str, validation_mae: float | None) -> None:
        self.model_info.info({"model": name, "version": version})
        self.model_loaded.set(1)
        if validation_mae is not None:
            self.validation_mae.labels(name, version).set(validation_mae)

    def watch_store(self, store_of: Callable[[], Sized | None]) -> None:
        """Gauges read the live state store at scrape time (it may be replaced on reload)."""

        def read(attr: str) -> Callable[[], float]:
            def value() -> float:
                store = store_of()
                if store is None:
                    return 0.0
                return float(len(store) if attr == "len" else getattr(store, attr))

            return value

        self.active_streams.set_function(read("len"))
        self.state_capacity.set_function(read("capacity"))
        self.state_max_streams.set_function(read("max_streams"))
        self.state_bytes.set_function(read("nbytes"))

    def watch_tiers(self, tiers_of: Callable[[], Any]) -> None:
        """The cold tier's series, read from the Predictor's TieredStore at scrape time."""
        if self._tiers is None:
            self._tiers = TierCollector(lambda: self._tiers_source(), self.registry)
        self._tiers_source = tiers_of
        tiers = tiers_of()
        if tiers is not None:
            tiers.observe = self.cold_batch_seconds.observe

    def sync_store_counters(self, evicted_delta: int, expired_delta: int) -> None:
        if evicted_delta:
            self.evicted.inc(evicted_delta)
        if expired_delta:
            self.expired.inc(expired_delta)
