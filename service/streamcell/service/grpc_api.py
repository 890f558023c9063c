"""The gRPC server: settings and flags, and starting/stopping it.

``start_grpc_server`` is separate from ``streamcell serve`` (service/app.py
calls it) so that tests bind port 0 and get the port back. The server is the
sync ``grpc.server`` on a thread pool: the Predictor is CPU-bound and takes a
lock per call, so threads cost nothing extra, and the handle is easy to drive
from the composition root's threads. An open PredictStream holds one worker
thread for its lifetime; ``--grpc-workers`` bounds those, ``--grpc-max-in-flight``
bounds calls in progress (more are refused with RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamcell.core.errors import ConfigError

if TYPE_CHECKING:  # grpc and torch load in start_grpc_server, not with the CLI's flags
    from concurrent.futures import Executor

    import grpc

    from streamcell.core.predictor import Predictor
    from streamcell.service.grpc_servicer import OwnerOf, PredictorOf
    from streamcell.service.metrics import Metrics

log = logging.getLogger(__name__)

DEFAULT_PORT = 50051
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class GrpcSettings:
    """How the gRPC server listens, authenticates and limits work."""

    port: int = DEFAULT_PORT  # 0: any free port (see GrpcServerHandle.port)
    host: str = "0.0.0.0"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth_token: str | None = field(default=None, repr=False)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    workers: int = 16
    max_in_flight: int = 256  # 0: no limit
    health_poll_seconds: float = 0.2

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--grpc-port must be in 0..65535, got {self.port}")
        if self.workers < 1:
            raise ConfigError(f"--grpc-workers must be at least 1, got {self.workers}")
        if self.max_in_flight < 0:
            raise ConfigError(f"--grpc-max-in-flight must be >= 0, got {self.max_in_flight}")
        if self.max_message_bytes < 1024:
            raise ConfigError("--grpc-max-message-bytes must be at least 1024")
        if self.auth_token is not None and not self.auth_token.strip():
            raise ConfigError("the auth token is empty")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> GrpcSettings:
        token = args.auth_token
        if args.auth_token_file is not None:
            if token is not None:
                raise ConfigError("give --auth-token or --auth-token-file, not both")
            try:
                token = Path(args.auth_token_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read --auth-token-file: {exc}") from exc
        return cls(
            port=args.grpc_port,
            host=args.grpc_host,
            tls_cert=None if args.tls_cert is None else Path(args.tls_cert),
            tls_key=None if args.tls_key is None else Path(args.tls_key),
            auth_token=token,
            max_message_bytes=args.grpc_max_message_bytes,
            workers=args.grpc_workers,
            max_in_flight=args.grpc_max_in_flight,
        )


def add_grpc_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("gRPC")
    g.add_argument("--grpc-port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    g.add_argument("--grpc-host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    g.add_argument("--tls-cert", default=None, help="PEM certificate chain: serve TLS")
    g.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    g.add_argument(
        "--auth-token", default=None, help="require 'authorization: Bearer TOKEN' (not health)"
    )
    g.add_argument("--auth-token-file", default=None, help="read the bearer token from a file")
    g.add_argument(
        "--grpc-max-message-bytes",
        type=int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        help="largest request/response message (default 16 MiB)",
    )
    g.add_argument("--grpc-workers", type=int, default=16, help="server threads (default 16)")
    g.add_argument(
        "--grpc-max-in-flight",
        type=int,
        default=256,
        help="calls in progress before RESOURCE_EXHAUSTED (0: no limit; default 256)",
    )


class GrpcServerHandle:
    """A running server: its port, health switch and graceful stop."""

    def __init__(
        self,
        server: grpc.Server,
        port: int,
        health_servicer: Any,
        predictor_of: PredictorOf,
        poll_seconds: float,
        services: tuple[str, ...],
        executors: tuple[Executor, ...] = (),
    ) -> None:
        self.server = server
        self._executors = executors  # grpc's stop() leaves them running: shut down in stop()
        self._services = services
        self.port = port
        self._health = health_servicer
        self._predictor_of = predictor_of
        self._allowed = True
        self._serving: bool | None = None
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._refresh()
        self._watch = threading.Thread(
            target=self._watch_loop, args=(poll_seconds,), name="grpc-health", daemon=True
        )
        self._watch.start()

    def set_serving(self, serving: bool) -> None:
        """Allow (True) or force off (False) SERVING; SERVING also needs a loaded model."""
        self._allowed = serving
        self._refresh()

    def _refresh(self) -> None:
        with self._lock:
            if self._stopped.is_set():
                return
            serving = self._allowed and self._predictor_of() is not None
            if serving != self._serving:
                from grpc_health.v1 import health_pb2

                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if serving
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for name in self._services:
                    self._health.set(name, status)
                self._serving = serving

    def _watch_loop(self, poll_seconds: float) -> None:
        while not self._stopped.wait(poll_seconds):
            self._refresh()

    def stop(self, grace: float | None = 5.0) -> None:
        """Report NOT_SERVING, finish calls in progress for up to ``grace`` s, stop."""
        with self._lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
            self._health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        for executor in self._executors:
            executor.shutdown(wait=False)
        self._watch.join(timeout=5)


def start_grpc_server(
    settings: GrpcSettings,
    predictor_of: Callable[[], Predictor | None],
    metrics: Metrics | None,
    owner_of: OwnerOf | None = None,
) -> GrpcServerHandle:
    """Start serving streamcell.v1.Predictor, health and reflection; return at once."""
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    from streamcell.service.grpc_interceptors import BearerTokenInterceptor, MetricsInterceptor
    from streamcell.service.grpc_servicer import SERVICE_NAME, PredictorServicer
    from streamcell.v1 import predictor_pb2_grpc as pb_grpc

    interceptors: list[grpc.ServerInterceptor] = []
    if metrics is not None:
        interceptors.append(MetricsInterceptor(metrics))
    if settings.auth_token is not None:
        interceptors.append(BearerTokenInterceptor(settings.auth_token))
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    workers = futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="grpc")
    health_workers = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="grpc-health")
    server = grpc.server(
        workers,
        interceptors=interceptors,
        options=options,
        maximum_concurrent_rpcs=settings.max_in_flight or None,
    )
    pb_grpc.add_PredictorServicer_to_server(
        PredictorServicer(predictor_of, metrics, owner_of), server
    )
    health_servicer = health.HealthServicer(
        experimental_non_blocking=True,
        experimental_thread_pool=health_workers,
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{settings.host}:{settings.port}"
    try:
        if settings.tls:
            assert settings.tls_cert is not None and settings.tls_key is not None
            creds = grpc.ssl_server_credentials(
                [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())]
            )
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS certificate or key: {exc}") from exc
    except RuntimeError as exc:
        raise ConfigError(f"cannot bind gRPC to {address}: {exc}") from exc
    if port == 0:
        raise ConfigError(f"cannot bind gRPC to {address}")
    server.start()
    log.info(
        "gRPC listening on %s:%d (%s%s)",
        settings.host,
        port,
        "TLS" if settings.tls else "plaintext",
        ", bearer token" if settings.auth_token else "",
    )
    return GrpcServerHandle(
        server,
        port,
        health_servicer,
        predictor_of,
        settings.health_poll_seconds,
        services=("", SERVICE_NAME),  # "" = the whole server
        executors=(workers, health_workers),
    )
