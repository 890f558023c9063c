"""Server interceptors: request metrics and bearer-token authentication.

Both wrap the method handler's behaviour, so they see every call of every
service (health and reflection included) with the same code path for unary and
streaming methods.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from streamcell.service.metrics import Metrics

Behaviour = Callable[[Any, grpc.ServicerContext], Any]
_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
UNKNOWN_METHOD = "unknown"  # the label of calls to a method the server does not have


def _rewrap(
    handler: grpc.RpcMethodHandler | None, wrap: Callable[[Behaviour, bool], Behaviour]
) -> grpc.RpcMethodHandler | None:
    """The same handler with its behaviour wrapped (``wrap(behaviour, streams_out)``)."""
    if handler is None:
        return None
    for kind in _KINDS:
        behaviour = getattr(handler, kind)
        if behaviour is not None:
            return handler._replace(**{kind: wrap(behaviour, handler.response_streaming)})
    return handler


def method_label(full_method: str) -> str:
    """'/streamcell.v1.Predictor/Predict' -> 'Predict' (bounded label values)."""
    return full_method.rsplit("/", 1)[-1]


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts calls by method and status code and times them (streams: whole call)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        requests = self._metrics.grpc_requests
        if handler is None:
            # The path is the client's to choose: only a method the server has
            # may become a label value, or the series would be unbounded.
            requests.labels(UNKNOWN_METHOD, grpc.StatusCode.UNIMPLEMENTED.name).inc()
            return None
        method = method_label(handler_call_details.method)
        seconds = self._metrics.grpc_seconds.labels(method)

        def done(context: grpc.ServicerContext, start: float, failed: bool) -> None:
            code = context.code()
            if code is None:
                code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
            requests.labels(method, code.name).inc()
            seconds.observe(time.perf_counter() - start)

        def wrap(behaviour: Behaviour, streams_out: bool) -> Behaviour:
            if streams_out:

                def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                    start = time.perf_counter()
                    failed = True
                    try:
                        yield from behaviour(request, context)
                        failed = False
                    finally:
                        done(context, start, failed)

                return streaming

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                start = time.perf_counter()
                failed = True
                try:
                    response = behaviour(request, context)
                    failed = False
                    return response
                finally:
                    done(context, start, failed)

            return unary

        return _rewrap(handler, wrap)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Refuses calls without ``authorization: Bearer <token>`` (UNAUTHENTICATED).

    Methods under ``open_prefixes`` (the health service, for load balancers and
    kubelet probes) stay open.
    """

    def __init__(
        self, token: str, open_prefixes: tuple[str, ...] = ("/grpc.health.v1.Health/",)
    ) -> None:
        self._expected = f"Bearer {token}".encode()
        self._open = open_prefixes

    def _authorized(self, metadata: Any) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                given = value if isinstance(value, bytes) else value.encode()
                return hmac.compare_digest(given, self._expected)
        return False

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        if handler_call_details.method.startswith(self._open) or self._authorized(
            handler_call_details.invocation_metadata
        ):
            return continuation(handler_call_details)

        def wrap(behaviour: Behaviour, streams_out: bool) -> Behaviour:
            def refuse(request: Any, context: grpc.ServicerContext) -> Any:
                context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "missing or wrong bearer token (metadata 'authorization: Bearer <token>')",
                )

            return refuse

        return _rewrap(continuation(handler_call_details), wrap)
