"""Brokers down when `streamcell serve` starts: it waits for them, then serves exactly.

As Kafka Streams' ``streams_broker_down_resilience_test`` does, the replica
starts before its broker: meanwhile gRPC health is NOT_SERVING and
``streamcell_kafka_connected`` is 0; once the broker is up every event is
predicted as the offline reference predicts it. With a short
``--broker-wait-s`` the replica still fails, quickly, with the clear error.
A broker frozen (SIGSTOP) mid-stream, past the replica's request and
acknowledgement timeouts, is survived, exactly.
Each test starts its own broker (on a port chosen before serve starts) and
stops it, and every serve, by pid.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from broker_support import start_embedded_broker, stop_process
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pipeline_support import (
    Offline,
    Serve,
    Topics,
    events,
    load,
    make_model,
    produce,
    read_all,
    serve_args,
    wait_for_predictions,
)

from streamcell.core.errors import BrokerUnavailable
from streamcell.service import broker_wait
from streamcell.service.kafka import KafkaClientConfig

BROKER_DOWN_S = 15.0  # serve runs this long before its broker starts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(port: int) -> subprocess.Popen:
    return start_embedded_broker(f"127.0.0.1:{port}")[0]


def health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def gauge(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    (value,) = [ln.split()[1] for ln in text.splitlines() if ln.split(" ")[0] == name]
    return float(value)


@pytest.mark.kafka
@pytest.mark.slow
def test_serve_started_before_its_broker_waits_then_predicts_exactly(
    kafka_client: str, tmp_path: Path
) -> None:
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    topics = Topics("outage")
    version = make_model(tmp_path / "reg")
    args = serve_args(bootstrap, kafka_client, tmp_path / "reg", topics, "--partitions", "2")
    started = time.monotonic()
    serve = Serve(tmp_path / "serve.log", [*args, "--broker-wait-s", "120"])
    broker: subprocess.Popen | None = None
    try:
        grpc_port = int(serve.wait_for(r"gRPC listening on [\d.]+:(\d+)").group(1))
        metrics_port = int(serve.wait_for(r"metrics on http://[\d.]+:(\d+)/metrics").group(1))
        serve.wait_for(f"cannot reach Kafka at {bootstrap}.*waiting for the brokers")
        assert health(grpc_port) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert gauge(metrics_port, "streamcell_kafka_connected") == 0
        time.sleep(max(0.0, started + BROKER_DOWN_S - time.monotonic()))
        assert serve.proc.poll() is None, "serve gave up while its broker was down"
        assert health(grpc_port) == health_pb2.HealthCheckResponse.NOT_SERVING

        broker = start_broker(port)
        serve.wait_for(f"reached Kafka at {bootstrap} after waiting", timeout_s=30)
        serve.wait_assigned()
        assert gauge(metrics_port, "streamcell_kafka_connected") == 1
        cfg = KafkaClientConfig(bootstrap, client=kafka_client)
        good = events(streams=4, steps=10)
        produce(cfg, topics.input, good)
        out = wait_for_predictions(cfg, topics.output, 2, expected=len(good), serving=[serve])
        assert health(grpc_port) == health_pb2.HealthCheckResponse.SERVING
        assert serve.terminate() == 0
        offline = Offline(load(version), read_all(cfg, topics.input, 2))
        assert len(offline.expected) == len(good)
        offline.check_predictions(out)
        assert len(out) == len(good)
    finally:
        serve.stop()
        if broker is not None:
            stop_process(broker)


@pytest.mark.slow
def test_a_short_broker_wait_fails_quickly_with_the_clear_error(tmp_path: Path) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there
    make_model(tmp_path)
    args = [
        "--registry", str(tmp_path), "--model", "m", "--bootstrap-servers", bootstrap,
        "--broker-wait-s", "1", "--metrics-port", "0", "--grpc-port", "0",
        "--grpc-host", "127.0.0.1", "--metrics-host", "127.0.0.1",
        "--state-dir", str(tmp_path / "state"),
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "streamcell.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"error: cannot reach Kafka at {bootstrap}" in done.stderr
    assert "--broker-wait-s 1)" in done.stderr
    assert took < 20, f"took {took:.1f} s"  # interpreter and torch start-up included


class FakeTime(threading.Event):
    """A clock that the waits advance, instead of sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(timeout)
        self.now += timeout
        return self.is_set()

    def clock(self) -> float:
        return self.now


def test_backoff_doubles_up_to_its_cap_and_the_bound_holds() -> None:
    fake = FakeTime()
    timeouts: list[float] = []

    def attempt(connect_timeout_s: float) -> str:
        timeouts.append(connect_timeout_s)
        fake.now += connect_timeout_s
        raise BrokerUnavailable("cannot reach Kafka at h:1: down")

    with pytest.raises(BrokerUnavailable, match=r"at h:1: down \(waited \d+ s .*-s 60\)"):
        broker_wait.until_reachable(attempt, "h:1", 5.0, 60.0, fake, fake.clock)
    assert fake.waits[:5] == [0.5, 1.0, 2.0, 4.0, 5.0]
    assert set(fake.waits[4:]) == {5.0}
    assert fake.now <= 60.0 + broker_wait.MIN_ATTEMPT_S
    assert min(timeouts) >= broker_wait.MIN_ATTEMPT_S and max(timeouts) == 5.0


def test_no_wait_is_one_attempt_and_a_later_success_returns() -> None:
    fake = FakeTime()
    calls: list[float] = []

    def down(connect_timeout_s: float) -> str:
        calls.append(connect_timeout_s)
        raise BrokerUnavailable("cannot reach Kafka at h:1: down")

    with pytest.raises(BrokerUnavailable, match=r"^cannot reach Kafka at h:1: down$"):
        broker_wait.until_reachable(down, "h:1", 5.0, 0.0, fake, fake.clock)
    assert calls == [5.0] and fake.waits == []

    results = iter([BrokerUnavailable("x"), BrokerUnavailable("x"), None])

    def third_time(connect_timeout_s: float) -> str:
        error = next(results)
        if error is not None:
            raise error
        return "up"

    assert broker_wait.until_reachable(third_time, "h:1", 5.0, 60.0, fake, fake.clock) == "up"


def test_stop_while_waiting_returns_none() -> None:
    fake = FakeTime()
    fake.set()

    def down(connect_timeout_s: float) -> str:
        raise BrokerUnavailable("x")

    assert broker_wait.until_reachable(down, "h:1", 5.0, 60.0, fake, fake.clock) is None


# Shorter than their defaults, so that a freeze past both stays short.
REQUEST_TIMEOUT_MS, ACK_TIMEOUT_S = 4000, 5.0
FREEZE_S = 12.0  # past the acknowledgement, request and session timeouts


@pytest.mark.kafka
@pytest.mark.slow
def test_a_broker_frozen_mid_stream_is_survived_exactly(kafka_client: str, tmp_path: Path) -> None:
    """SIGSTOP the broker 0.3 s after half the events were produced, SIGCONT 12 s later.

    The freeze lands while that half's predictions, changelog records and
    commits are under way or just done (which of them is not asserted); the
    consumer's heartbeats and fetches certainly meet the frozen broker.
    """
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    topics = Topics("freeze")
    version = make_model(tmp_path / "reg")
    broker = start_broker(port)
    serve: Serve | None = None
    try:
        args = serve_args(
            bootstrap, kafka_client, tmp_path / "reg", topics, "--partitions", "2",
            "--request-timeout-ms", str(REQUEST_TIMEOUT_MS), "--ack-timeout-s", str(ACK_TIMEOUT_S),
        )  # fmt: skip
        serve = Serve(tmp_path / "serve.log", args)
        serve.wait_assigned()
        cfg = KafkaClientConfig(bootstrap, client=kafka_client)
        good = events(streams=6, steps=60)
        half = len(good) // 2
        produce(cfg, topics.input, good[:half])
        time.sleep(0.3)  # predictions and a checkpoint under way
        broker.send_signal(signal.SIGSTOP)
        try:
            time.sleep(FREEZE_S)
            assert serve.proc.poll() is None, f"serve exited {serve.proc.returncode} mid-freeze"
        finally:
            broker.send_signal(signal.SIGCONT)
        produce(cfg, topics.input, good[half:])
        out = wait_for_predictions(
            cfg, topics.output, 2, expected=len(good), timeout_s=90, serving=[serve]
        )
        assert serve.terminate() == 0
        offline = Offline(load(version), read_all(cfg, topics.input, 2))
        assert len(offline.expected) == len(good)
        offline.check_predictions(out)  # duplicates allowed, byte-identical
    finally:
        if serve is not None:
            serve.stop()
        stop_process(broker)
