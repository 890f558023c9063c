"""The gRPC server: starting and stopping it (its settings are settings.GrpcSettings).

``start_grpc_server`` is separate from ``streamcell serve`` (service/app.py
calls it) so that tests bind port 0 and get the port back. The server is the
sync ``grpc.server`` on a thread pool: the Predictor is CPU-bound and takes a
lock per call, so threads cost nothing extra, and the handle is easy to drive
from the composition root's threads. An open PredictStream holds one worker
thread for its lifetime, so ``--grpc-max-predict-streams`` keeps them below
``--grpc-workers``; ``--grpc-max-in-flight`` bounds calls in progress (more of
either are refused with RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from streamcell.core.errors import ConfigError
from streamcell.service.settings import GrpcSettings

if TYPE_CHECKING:  # grpc and torch load in start_grpc_server, not with the CLI's flags
    from concurrent.futures import Executor

    import grpc

    from streamcell.core.predictor import Predictor
    from streamcell.service.grpc_servicer import OwnerOf, PredictorOf
    from streamcell.service.metrics import Metrics

log = logging.getLogger(__name__)


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
        health_server: grpc.Server | None = None,
        health_port: int | None = None,
    ) -> None:
        self.server = server
        self._health_server = health_server
        self.health_port = health_port  # the plaintext health-only port, if any
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
        if self._health_server is not None:
            self._health_server.stop(0).wait()
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
        PredictorServicer(predictor_of, metrics, owner_of, settings), server
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
    health_server, health_port = None, None
    if settings.health_port is not None:
        health_server, health_port = _health_only(settings, health_servicer, health_workers)
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
        health_server=health_server,
        health_port=health_port,
    )


def _health_only(
    settings: GrpcSettings, health_servicer: Any, workers: Executor
) -> tuple[grpc.Server, int]:
    """A plaintext server with the health service alone, sharing the main one's status."""
    import grpc
    from grpc_health.v1 import health_pb2_grpc

    server = grpc.server(workers, options=[("grpc.so_reuseport", 0)], maximum_concurrent_rpcs=8)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{settings.host}:{settings.health_port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ConfigError(f"cannot bind the gRPC health port to {address}: {exc}") from exc
    if port == 0:
        raise ConfigError(f"cannot bind the gRPC health port to {address}")
    server.start()
    log.info("gRPC health (alone, plaintext) on %s:%d", settings.host, port)
    return server, port
