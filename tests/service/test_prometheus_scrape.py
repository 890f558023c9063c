"""A real Prometheus scrapes a streamcell process and answers queries for its series.

`streamcell serve` runs (Kafka and gRPC) with a small model; the Debian
``prometheus`` binary is started on loopback with a config made from
deploy/prometheus/prometheus.yml (the ``streamcell`` job pointed at the
service's /metrics, 1 s scrape interval, the shipped rule files). Events go in
through the session's broker and PredictBatch calls through the gRPC client,
and the series are read back over Prometheus's HTTP API: what a dashboard or
an alert would see.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.kafka,
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="prometheus not installed (Debian package prometheus; make system-deps)",
    ),
]

MODEL = r"""
import sys, torch
from streamcell.core.checkpoint import ModelConfig, save_checkpoint
from streamcell.core.model import StreamingLSTM
torch.manual_seed(0)
names = ("a", "b", "c")
cfg = ModelConfig(3, 16, 2, 3, names, names, (0.0,) * 3, (1.0,) * 3, (0.0,) * 3, (1.0,) * 3,
                  metrics={"val_mae": 0.5})
save_checkpoint(sys.argv[1], "m", StreamingLSTM(3, 16, 2, 3), cfg)
"""
STREAMS = [f"s{k}" for k in range(40)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def prometheus_config(target: str, out: Path) -> Path:
    """deploy/prometheus/prometheus.yml with the streamcell job aimed at ``target``."""
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    cfg["global"]["scrape_interval"] = "1s"
    cfg["global"]["evaluation_interval"] = "1s"
    cfg["rule_files"] = [str(PROM / pattern) for pattern in cfg["rule_files"]]
    jobs = {job["job_name"]: job for job in cfg["scrape_configs"]}
    streamcell = jobs["streamcell"]
    streamcell["static_configs"] = [{"targets": [target]}]
    cfg["scrape_configs"] = [streamcell]
    path = out / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict]:
        q = urllib.parse.urlencode({"query": expr})
        return get_json(f"{self.url}/api/v1/query?{q}")["result"]

    def wait_for(self, expr: str, timeout: float = 30.0) -> list[dict]:
        """The query's result once it is non-empty (Prometheus needs a few scrapes)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)


class LogWatcher(threading.Thread):
    """Reads a child's log lines (so its pipe never fills) and remembers them."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(daemon=True)
        self.stream, self.lines = stream, []

    def run(self) -> None:
        for line in self.stream:
            self.lines.append(line)

    def wait_for(self, pattern: str, proc: subprocess.Popen, timeout: float = 60.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if found := re.search(pattern, line):
                    return found
            assert proc.poll() is None, "".join(self.lines)[-3000:]
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in the log within {timeout} s: {self.lines[-20:]}")


def drive_grpc(target: str, stop_event: threading.Event) -> None:
    """PredictBatch calls, one event per stream each, until told to stop."""
    import grpc

    from streamcell.service.client import Client, event

    rng = np.random.default_rng(0)
    with Client(target, timeout=10) as client:
        seq = 0
        while not stop_event.is_set():
            seq += 1
            x = rng.normal(size=(len(STREAMS), 3))
            ts = time.time()
            # (a call may fail before the group assigned this replica its partitions)
            with contextlib.suppress(grpc.RpcError):
                client.predict_batch(
                    event(f"g{s}", row, seq, ts) for s, row in zip(STREAMS, x, strict=True)
                )
            stop_event.wait(0.1)


def drive_kafka(bootstrap: str, topic: str, stop_event: threading.Event) -> None:
    """JSON events (key = stream id) into the input topic, and one undecodable event per round."""
    from streamcell.service.kafka import KafkaClientConfig, open_producer

    producer = open_producer(KafkaClientConfig(bootstrap, client_id="prometheus-test"))
    rng = np.random.default_rng(1)
    try:
        seq = 0
        while not stop_event.is_set():
            seq += 1
            ts = time.time()
            records: list[tuple[bytes | None, bytes | None]] = [
                (
                    f"k{s}".encode(),
                    json.dumps({"seq": seq, "ts": ts, "x": rng.normal(size=3).tolist()}).encode(),
                )
                for s in STREAMS
            ]
            records.append((b"broken", b"{not json"))
            producer.send_many(topic, records)
            producer.flush(10)
            stop_event.wait(0.2)
    finally:
        producer.close()


@pytest.fixture(scope="module")
def metrics_target(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`streamcell serve` (Kafka and gRPC) under traffic from both; yields host:port of /metrics."""
    tmp_path = tmp_path_factory.mktemp("serve")
    registry = tmp_path / "registry"
    subprocess.run([sys.executable, "-c", MODEL, str(registry)], check=True, timeout=120)
    name = f"prom-{uuid.uuid4().hex[:10]}"
    topics = {t: f"{name}.{t}" for t in ("events", "predictions", "dead", "changelog")}
    serve = ["serve", "--registry", str(registry), "--model", "m", "--poll-registry-s", "1"]
    serve += ["--state-dir", str(tmp_path / "state")]
    kafka = [
        *("--bootstrap-servers", kafka_bootstrap, "--group-id", name, "--partitions", "2"),
        *("--input-topic", topics["events"], "--output-topic", topics["predictions"]),
        *("--dead-letter-topic", topics["dead"], "--changelog-topic", topics["changelog"]),
    ]
    local = ["--metrics-host", "127.0.0.1", "--metrics-port", "0", "--grpc-host", "127.0.0.1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamcell.cli", *serve, *kafka, *local, "--grpc-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    stop_event = threading.Event()
    drivers: list[threading.Thread] = []
    try:
        assert proc.stdout is not None
        log = LogWatcher(proc.stdout)
        log.start()
        metrics_port = log.wait_for(r"metrics on http://[\d.]+:(\d+)/metrics", proc).group(1)
        grpc_port = log.wait_for(r"gRPC listening on [\d.]+:(\d+)", proc).group(1)
        log.wait_for(r"serving model m version", proc)
        log.wait_for(r"consuming .* as group", proc)
        drivers = [
            threading.Thread(target=drive_grpc, args=(f"127.0.0.1:{grpc_port}", stop_event)),
            threading.Thread(
                target=drive_kafka, args=(kafka_bootstrap, topics["events"], stop_event)
            ),
        ]
        for driver in drivers:
            driver.start()
        yield f"127.0.0.1:{metrics_port}"
    finally:
        stop_event.set()
        for driver in drivers:
            driver.join(timeout=20)
        stop(proc)


@pytest.fixture(scope="module")
def prometheus(
    metrics_target: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    assert PROMETHEUS is not None
    tmp_path = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config = prometheus_config(metrics_target, tmp_path)
    log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "GOMAXPROCS": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "prometheus did not become ready in 30 s"
            time.sleep(0.2)
        yield Prometheus(url)
    finally:
        stop(proc)
        log.close()


def value(result: list[dict]) -> float:
    return sum(float(r["value"][1]) for r in result)


def test_prometheus_scrapes_the_service_series(prometheus: Prometheus) -> None:
    up = prometheus.wait_for('up{job="streamcell"} == 1')
    assert up, "the streamcell target never came up"

    # Both front ends, each with its own source label.
    for source in ("grpc", "kafka"):
        predicted = prometheus.wait_for(f'streamcell_predictions_total{{source="{source}"}} > 0')
        assert value(predicted) > 0, f"no {source} predictions scraped"
        events = prometheus.wait_for(
            f'streamcell_events_total{{source="{source}", outcome="predicted"}} > 0'
        )
        assert value(events) > 0
    dead = prometheus.wait_for("streamcell_dead_letters_total > 0")
    assert dead and all(r["metric"]["reason"] for r in dead)
    assert value(prometheus.wait_for("streamcell_active_streams >= 80")) == 80  # 40 + 40 streams
    assert value(prometheus.wait_for("streamcell_model_loaded")) == 1
    info = prometheus.wait_for("streamcell_model_info")
    assert info and info[0]["metric"]["model"] == "m"
    validation = prometheus.wait_for('streamcell_model_validation_mae{model="m"}')
    assert value(validation) == 0.5

    # Kafka bookkeeping: offsets committed, lag per assigned partition.
    assert value(prometheus.wait_for("streamcell_commits_total > 0")) > 0
    lag = prometheus.wait_for("streamcell_consumer_lag_messages")
    assert {r["metric"]["partition"] for r in lag} == {"0", "1"}
    # The assignment restored its partitions from the changelog (empty here), timed.
    assert value(prometheus.wait_for("streamcell_changelog_restore_seconds_count > 0")) >= 1
    assert value(prometheus.wait_for("streamcell_changelog_restoring_partitions")) == 0

    calls = prometheus.wait_for('streamcell_grpc_requests_total{method=~".*PredictBatch"} > 0')
    assert "OK" in {r["metric"]["code"] for r in calls}
    assert prometheus.wait_for("process_resident_memory_bytes > 0")

    # Histograms arrive whole: buckets, sum and count, usable by histogram_quantile.
    # The events carry their time (ts): latency from it to the prediction is under a minute.
    p99 = prometheus.wait_for(
        "histogram_quantile(0.99, sum by (le) (streamcell_event_latency_seconds_bucket)) > 0"
    )
    assert 0 < value(p99) <= 60
    for source in ("grpc", "kafka"):  # both front ends time events that carry a ts
        assert prometheus.wait_for(
            f'streamcell_event_latency_seconds_count{{source="{source}"}} > 0'
        ), f"no {source} event latency"
    assert prometheus.wait_for('streamcell_batch_size_events_count{source="kafka"} > 0')
    assert prometheus.wait_for("streamcell_model_step_seconds_count > 0")
    mae = prometheus.wait_for("streamcell_online_mae > 0")
    assert mae and mae[0]["metric"]["model"] == "m"

    # The shipped rules were loaded and evaluate against these series.
    rules = get_json(f"{prometheus.url}/api/v1/rules")["groups"]
    names = {r["name"] for g in rules for r in g["rules"]}
    assert {"StreamcellNoModelLoaded", "StreamcellOnlineErrorHigh"} <= names
    assert prometheus.query('ALERTS{alertname="StreamcellNoModelLoaded"}') == []


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query in the Grafana dashboard, Grafana variables filled."""
    dash = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "streamcell.json").read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*")
            out.append((panel["title"], expr))
    return out


def test_dashboard_queries_run_and_show_the_service(prometheus: Prometheus) -> None:
    """Every dashboard query is valid PromQL; the core panels show data from the service."""
    # rate() needs two samples in its window: wait for a few scrapes.
    assert prometheus.wait_for(
        'count_over_time(streamcell_predictions_total{source="kafka"}[1m]) > 2'
    )
    queries = dashboard_queries()
    assert len(queries) >= 10
    empty = []
    for title, expr in queries:
        if not prometheus.query(expr):  # a bad query raises (HTTP 400) in get_json
            empty.append(title)
    for must_show in (
        "Events by source and outcome",
        "Predictions and dead letters",
        "End-to-end event latency (event time to prediction)",
        "Model step and gRPC handling",
        "Consumer lag by partition",
        "Active streams and capacity",
        "Online error by model version",
        "Served model",
    ):
        assert must_show not in empty, f"dashboard panel {must_show!r} shows no data"
