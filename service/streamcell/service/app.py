"""The composition root of `streamcell serve`: builds every part from ServeSettings.

Order of start-up, and why:

0. the cold tier's directory (``--state-dir``), locked, so that a second
   process given the same one fails at once; what an earlier process left
   there is wiped (logged, counted): the tier is rebuilt from the changelog;
1. metrics (and their HTTP endpoint), so that even a replica waiting for a
   model or a broker can be scraped;
2. the gRPC server, answering UNAVAILABLE (health NOT_SERVING) until a model
   is loaded, so that probes see a replica that waits;
3. Kafka topics (created when missing, logged; the changelog's partition count
   and cleanup.policy checked). Brokers that cannot be
   reached yet are waited for, with capped backoff, for up to
   ``--broker-wait-s`` (``streamcell_kafka_connected`` is 0 meanwhile), then
   the replica fails with a message naming the bootstrap address;
4. the model: the newest complete version in the registry. With none yet the
   replica logs that and waits (``--require-model`` makes that an error
   instead); the registry directory itself must exist;
5. the Kafka pipeline (when bootstrap servers are given) on this thread until
   ``stop`` is set; without Kafka this thread only watches the registry.

Shutdown reverses it: gRPC drains (so that the writes it acknowledged are in
the final checkpoint), the pipeline checkpoints and leaves the group, the
metrics endpoint closes.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any

from streamcell.core.checkpoint import check_name
from streamcell.core.coldstore import FOUND_CORRUPT, FOUND_EMPTY, FOUND_OLD_LAYOUT, ColdStore
from streamcell.core.errors import ConfigError, ModelNotLoaded
from streamcell.core.model import resolve_device
from streamcell.core.predictor import Predictor
from streamcell.service import broker_wait, changelog, gc_pauses, reload
from streamcell.service.metrics import Metrics
from streamcell.service.settings import ServeSettings, default_state_dir

log = logging.getLogger(__name__)

WAIT_LOG_EVERY_S = 30.0


class App:
    """One serving replica; ``run(stop)`` blocks until ``stop`` is set."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.predictor: Predictor | None = None
        self.cold: ColdStore | None = None
        self.pipeline: Any = None
        self.grpc: Any = None
        self.metrics_port: int | None = None
        self._http: Any = None
        self._kafka_cfg: Any = None
        self._admin: Any = None
        self.device = resolve_device(settings.state.device)  # a bad --device fails before anything

    # ------------------------------------------------------------- parts
    def _open_cold_tier(self, counted: bool = True) -> None:
        """``counted``: a rebuild at start (one while serving is counted as lost)."""
        s = self.settings
        path = s.state.state_dir or default_state_dir(s.kafka.group_id, s.model)
        self.cold = ColdStore(path, s.state.state_dir_max_bytes)
        found = self.cold.found
        if counted:
            self.metrics.cold_rebuilds.labels(found).inc()
        if found == FOUND_CORRUPT:
            log.warning(
                "the cold tier in %s was corrupt: removed; it is rebuilt from the changelog", path
            )
        elif found == FOUND_EMPTY:
            log.info("cold tier in %s (empty: a first start, or the directory was lost)", path)
        elif found == FOUND_OLD_LAYOUT:
            log.warning(
                "the cold tier in %s was an earlier version's (another key layout): removed; "
                "it is rebuilt from the changelog",
                path,
            )
        else:
            log.info(
                "cold tier in %s: an earlier process's copy was wiped (it may be ahead of the "
                "changelog); it is rebuilt from the changelog",
                path,
            )

    def _reopen_cold_tier(self) -> ColdStore:
        """The cold tier in use failed: close it and open an empty one in its directory."""
        if self.cold is not None:
            self.cold.close()
            self.cold = None
        self._open_cold_tier(counted=False)
        assert self.cold is not None
        return self.cold

    def _start_metrics(self) -> None:
        s = self.settings
        if s.metrics.port is None:
            return
        from prometheus_client import start_http_server

        try:
            self._http, _ = start_http_server(
                s.metrics.port, s.metrics.host, registry=self.metrics.registry
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {s.metrics.host}:{s.metrics.port}: {exc}"
            ) from exc
        self.metrics_port = self._http.server_port
        log.info("metrics on http://%s:%d/metrics", s.metrics.host, self.metrics_port)

    def _ensure_topics(self, stop: threading.Event) -> int | None:
        """Create missing topics, waiting for the brokers if need be.

        Returns the input topic's partition count; None if stopped while waiting.
        """
        from streamcell.service.kafka import KafkaClientConfig

        s = self.settings
        k = s.kafka
        assert k.bootstrap_servers is not None
        self._kafka_cfg = KafkaClientConfig(
            bootstrap_servers=k.bootstrap_servers,
            client=k.client,
            client_id=k.client_id,
            session_timeout_ms=k.session_timeout_ms,
            heartbeat_interval_ms=min(1000, k.session_timeout_ms // 3),
            request_timeout_ms=k.request_timeout_ms,
            compression=k.producer_compression,
        )
        self.metrics.kafka_connected.set(0)
        found = broker_wait.until_reachable(
            self._topics_once,
            k.bootstrap_servers,
            self._kafka_cfg.connect_timeout_s,
            k.broker_wait_s,
            stop,
        )
        if found is None:
            return None
        self.metrics.kafka_connected.set(1)
        partitions, changelog_parts, changelog_configs = found
        t = s.pipeline
        changelog.check_policy(t.changelog_topic, changelog_configs)
        if changelog_parts is not None and changelog_parts != partitions:
            raise ConfigError(
                f"changelog topic {t.changelog_topic} has {changelog_parts} partitions but the "
                f"input topic {t.input_topic} has {partitions}: they must match"
            )
        log.info(
            "Kafka %s (%s): input %s has %d partitions",
            k.bootstrap_servers,
            k.client,
            t.input_topic,
            partitions,
        )
        return partitions

    def _topics_once(
        self, connect_timeout_s: float
    ) -> tuple[int, int | None, dict[str, str] | None]:
        """One attempt: (input partitions, changelog partitions, changelog configs);
        BrokerUnavailable if down."""
        from streamcell.service.kafka import TopicSpec, open_admin

        k, t = self.settings.kafka, self.settings.pipeline
        cfg = dataclasses.replace(self._kafka_cfg, connect_timeout_s=connect_timeout_s)
        admin = open_admin(cfg)
        try:
            partitions = admin.partitions(t.input_topic) or k.partitions
            specs = [
                TopicSpec(t.input_topic, partitions),
                TopicSpec(t.output_topic, partitions),
                TopicSpec(t.dead_letter_topic, partitions),
                TopicSpec(t.changelog_topic, partitions, compacted=True),
            ]
            created = admin.ensure_topics(specs)
            for spec in specs:
                if spec.name in created:
                    log.info(
                        "created topic %s (%d partitions%s)",
                        spec.name,
                        spec.partitions,
                        ", cleanup.policy=compact" if spec.compacted else "",
                    )
            changelog_parts = admin.partitions(t.changelog_topic)
            return partitions, changelog_parts, admin.topic_configs(t.changelog_topic)
        finally:
            admin.close()

    def _start_grpc(self) -> None:
        if self.settings.grpc is None:
            return
        from streamcell.service.grpc_api import start_grpc_server

        warning = self.settings.grpc.exposure_warning()
        if warning:
            log.warning("%s", warning)
        self.grpc = start_grpc_server(
            self.settings.grpc,
            lambda: self.predictor,
            self.metrics,
            owner_of=self._owner_of,
        )

    def _owner_of(self, stream: str) -> str | None:
        pipeline = self.pipeline
        return None if pipeline is None else pipeline.ownership.owner_of(stream)

    def _load_model(self, watcher: reload.ModelWatcher, stop: threading.Event) -> bool:
        """Wait for the first loadable version; False if stopped first."""
        s = self.settings
        waited = -WAIT_LOG_EVERY_S
        clock = 0.0
        while not stop.is_set():
            loaded = watcher.newer(None)
            if loaded is not None:
                self.predictor = Predictor(
                    loaded,
                    max_streams=s.state.max_streams,
                    ttl_seconds=s.state.stream_ttl_s,
                    keep_gates=s.state.keep_gates,
                    device=self.device,
                    cold=self.cold,
                )
                self.metrics.watch_tiers(lambda: self.predictor.tiers if self.predictor else None)
                self.metrics.record_model(
                    loaded.name, loaded.version, reload.validation_mae(loaded)
                )
                self.metrics.watch_store(lambda: self.predictor.store if self.predictor else None)
                log.info(
                    "serving model %s version %s (input %d, hidden %d, layers %d, output %d)",
                    loaded.name,
                    loaded.version,
                    loaded.config.input_size,
                    loaded.config.hidden_size,
                    loaded.config.num_layers,
                    loaded.config.output_size,
                )
                return True
            if s.require_model:
                raise ModelNotLoaded(
                    f"no loadable version of model {s.model!r} in registry {s.registry} "
                    "(and --require-model is set)"
                )
            if clock - waited >= WAIT_LOG_EVERY_S:
                log.warning(
                    "no loadable version of model %r in registry %s yet; waiting for one "
                    "(gRPC health is NOT_SERVING meanwhile)",
                    s.model,
                    s.registry,
                )
                waited = clock
            step = max(min(s.poll_registry_s, 1.0), 0.1)
            stop.wait(step)
            clock += step
        return False

    # --------------------------------------------------------------- run
    def run(self, stop: threading.Event) -> int:
        import torch

        s = self.settings
        check_name(s.model)
        if not s.registry.is_dir():
            raise ConfigError(f"model registry {s.registry} is not a directory")
        torch.set_num_threads(s.state.torch_threads)
        log.info("the LSTM step runs on %s", self.device)
        try:
            self._open_cold_tier()
            self._start_metrics()
            self._start_grpc()
            partitions = None
            if s.kafka.bootstrap_servers:
                partitions = self._ensure_topics(stop)
                if partitions is None:
                    return 0  # stopped while waiting for the brokers
            watcher = reload.ModelWatcher(s.registry, s.model, s.poll_registry_s, self.metrics)
            if not self._load_model(watcher, stop):
                return 0
            watcher.due()  # the first poll just happened
            gc_pauses.settle()  # start-up's objects out of the collector's scans (p99)
            if s.kafka.bootstrap_servers:
                self.pipeline = self._build_pipeline(watcher, partitions)
                log.info("consuming %s as group %s", s.pipeline.input_topic, s.kafka.group_id)
                self.pipeline.run(stop, before_close=self._stop_grpc)
            else:
                log.info("no Kafka bootstrap servers given: serving gRPC only")
                self._watch_registry(watcher, stop)
            return 0
        finally:
            self.close()

    def _build_pipeline(self, watcher: reload.ModelWatcher, partitions: int | None):
        from streamcell.service.kafka import open_admin, open_consumer, open_producer, open_reader
        from streamcell.service.ownership import GroupMembers
        from streamcell.service.pipeline import Pipeline

        s = self.settings
        assert self.predictor is not None
        cfg = self._kafka_cfg
        self._admin = open_admin(cfg)  # for naming other replicas in gRPC errors
        producer = open_producer(cfg)
        try:
            consumer = open_consumer(cfg, s.kafka.group_id)
        except BaseException:
            producer.close()
            raise
        pipeline = Pipeline(
            s.pipeline,
            consumer,
            producer,
            lambda: open_reader(cfg),
            self.predictor,
            self.metrics,
            watcher,
            reopen_cold=self._reopen_cold_tier,
        )
        if partitions is not None:
            pipeline.ownership.set_partition_count(partitions)
        admin = self._admin
        pipeline.ownership.members = GroupMembers(lambda: admin.group_members(s.kafka.group_id))
        return pipeline

    def _watch_registry(self, watcher: reload.ModelWatcher, stop: threading.Event) -> None:
        """gRPC-only mode: swap to newer versions between calls, expire idle streams.

        (With Kafka the loop does both; without it nothing else would run the TTL.)
        """
        assert self.predictor is not None
        while not stop.wait(max(min(self.settings.poll_registry_s, 1.0), 0.05)):
            reload.reload_if_newer(watcher, self.predictor, self.metrics)
            gone = self.predictor.expire()  # at the watermark, the newest event (arrival) time
            if gone:
                self.metrics.sync_store_counters(0, len(gone))

    def _stop_grpc(self) -> None:
        if self.grpc is not None:
            self.grpc.stop(grace=5.0)
            self.grpc = None

    def close(self) -> None:
        try:
            try:
                if self._admin is not None:
                    self._admin.close()
                    self._admin = None
            finally:
                self._stop_grpc()
        finally:
            try:
                if self._http is not None:
                    self._http.shutdown()
                    self._http.server_close()
                    self._http = None
            finally:
                if self.cold is not None:
                    self.cold.close()
                    self.cold = None
