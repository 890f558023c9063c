"""`streamcell broker`: serves the Kafka API, stops cleanly, leaves no process behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from streamcell.service.broker import free_port, kafka_api_ready

pytestmark = pytest.mark.kafka


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


@pytest.fixture
def broker_cli() -> Iterator[tuple[subprocess.Popen, int]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamcell.cli", "broker", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"broker listening on 127.0.0.1:{port}"
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serves_kafka_then_stops_cleanly(broker_cli, sig):
    proc, port = broker_cli
    assert kafka_api_ready("127.0.0.1", port)
    (tansu,) = children(proc.pid)
    proc.send_signal(sig)
    assert proc.wait(15) == 0
    assert wait_gone(tansu)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_broker_dies_with_a_killed_cli(broker_cli):
    proc, _ = broker_cli
    (tansu,) = children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert wait_gone(tansu)


def test_port_taken_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "streamcell.cli", "broker", "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: the port is taken" in done.stderr


def test_missing_binary_is_a_clear_error(tmp_path):
    env = {**os.environ, "CALF_TANSU_BIN": str(tmp_path / "no-such-tansu")}
    done = subprocess.run(
        [sys.executable, "-m", "streamcell.cli", "broker", "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert done.returncode == 2
    assert "no Tansu broker binary" in done.stderr
