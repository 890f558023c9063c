"""A small Python client for streamcell.v1.Predictor, sync and asyncio.

    with Client("localhost:50051") as client:
        p = client.predict("sensor-1", [0.1, 0.2, 0.3], seq=1)
        print(p.yhat, p.version)

Both clients return the generated protobuf messages. TLS: pass ``tls_ca``
(PEM bytes or a path) - or ``tls=True`` for the system roots; auth: pass
``auth_token`` and every call carries ``authorization: Bearer <token>``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from streamcell.service.settings import GrpcSettings
from streamcell.v1 import event_pb2
from streamcell.v1 import predictor_pb2 as pb
from streamcell.v1 import predictor_pb2_grpc as pb_grpc

Event = event_pb2.Event
PemOrPath = bytes | str | os.PathLike[str]


def event(
    stream: str, x: Sequence[float], seq: int | None = None, ts: float | None = None
) -> event_pb2.Event:
    """An Event message (seq and ts left unset when None)."""
    return event_pb2.Event(stream=stream, x=x, seq=seq, ts=ts)


def _pem(value: PemOrPath) -> bytes:
    if isinstance(value, bytes):
        return value
    with open(value, "rb") as f:
        return f.read()


def _open_channel(
    api: Any, target: str, tls: bool, tls_ca: PemOrPath | None, max_message_bytes: int
) -> Any:
    """A channel from ``api`` (``grpc`` or ``grpc.aio``, which share these functions)."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    if tls or tls_ca is not None:
        root = None if tls_ca is None else _pem(tls_ca)
        creds = grpc.ssl_channel_credentials(root_certificates=root)
        return api.secure_channel(target, creds, options=options)
    return api.insecure_channel(target, options=options)


def _metadata(auth_token: str | None) -> tuple[tuple[str, str], ...] | None:
    return None if auth_token is None else (("authorization", f"Bearer {auth_token}"),)


class _Connected:
    """What both clients hold: a channel from ``_api``, the stubs, each call's metadata.

    ``timeout`` (seconds) is the default deadline of each call.
    """

    _api = "grpc"  # the module whose channels the client opens

    def __init__(
        self,
        target: str,
        *,
        tls: bool = False,
        tls_ca: PemOrPath | None = None,
        auth_token: str | None = None,
        timeout: float | None = 30.0,
        max_message_bytes: int = GrpcSettings.max_message_bytes,
    ) -> None:
        api = importlib.import_module(self._api)
        self.channel = _open_channel(api, target, tls, tls_ca, max_message_bytes)
        self.stub = pb_grpc.PredictorStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self._md = _metadata(auth_token)
        self.timeout = timeout

    def _kw(self, timeout: float | None) -> dict[str, Any]:
        return {"timeout": self.timeout if timeout is None else timeout, "metadata": self._md}


class Client(_Connected):
    """Blocking client."""

    def predict(
        self,
        stream: str,
        x: Sequence[float],
        seq: int | None = None,
        ts: float | None = None,
        *,
        timeout: float | None = None,
    ) -> pb.Prediction:
        return self.stub.Predict(event(stream, x, seq, ts), **self._kw(timeout))

    def predict_event(
        self, event: event_pb2.Event, *, timeout: float | None = None
    ) -> pb.Prediction:
        return self.stub.Predict(event, **self._kw(timeout))

    def predict_batch(
        self, events: Iterable[event_pb2.Event], *, timeout: float | None = None
    ) -> list[pb.Prediction]:
        reply = self.stub.PredictBatch(pb.EventBatch(events=events), **self._kw(timeout))
        return list(reply.predictions)

    def predict_stream(
        self, events: Iterable[event_pb2.Event], *, timeout: float | None = None
    ) -> Iterator[pb.Prediction]:
        kw = self._kw(timeout)
        kw["timeout"] = timeout  # a stream lives as long as its input unless told otherwise
        return iter(self.stub.PredictStream(iter(events), **kw))

    def forecast(self, stream: str, horizon: int, *, timeout: float | None = None) -> pb.Forecast:
        request = pb.ForecastRequest(stream=stream, horizon=horizon)
        return self.stub.Forecast(request, **self._kw(timeout))

    def get_stream(
        self,
        stream: str,
        *,
        include_gates: bool = False,
        missing_ok: bool = False,
        timeout: float | None = None,
    ) -> pb.StreamState:
        request = pb.StreamRequest(
            stream=stream, include_gates=include_gates, missing_ok=missing_ok
        )
        return self.stub.GetStream(request, **self._kw(timeout))

    def reset_stream(self, stream: str, *, timeout: float | None = None) -> None:
        self.stub.ResetStream(pb.StreamRequest(stream=stream), **self._kw(timeout))

    def delete_stream(self, stream: str, *, timeout: float | None = None) -> None:
        self.stub.DeleteStream(pb.StreamRequest(stream=stream), **self._kw(timeout))

    def list_streams(self, page_size: int = 1000, *, timeout: float | None = None) -> Iterator[str]:
        """Every stream id of the replica, fetched a page at a time."""
        token = ""
        while True:
            request = pb.ListStreamsRequest(page_size=page_size, page_token=token)
            page = self.stub.ListStreams(request, **self._kw(timeout))
            yield from page.streams
            token = page.next_page_token
            if not token:
                return

    def model_info(self, *, timeout: float | None = None) -> pb.ModelInfoResponse:
        return self.stub.ModelInfo(pb.ModelInfoRequest(), **self._kw(timeout))

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """'SERVING', 'NOT_SERVING', ... for ``service`` ('' = the whole server)."""
        reply = self._health.Check(
            health_pb2.HealthCheckRequest(service=service), **self._kw(timeout)
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Connected):
    """asyncio client (grpc.aio); the same methods as :class:`Client`, awaitable."""

    _api = "grpc.aio"

    async def predict(
        self,
        stream: str,
        x: Sequence[float],
        seq: int | None = None,
        ts: float | None = None,
        *,
        timeout: float | None = None,
    ) -> pb.Prediction:
        return await self.stub.Predict(event(stream, x, seq, ts), **self._kw(timeout))

    async def predict_batch(
        self, events: Iterable[event_pb2.Event], *, timeout: float | None = None
    ) -> list[pb.Prediction]:
        reply = await self.stub.PredictBatch(pb.EventBatch(events=events), **self._kw(timeout))
        return list(reply.predictions)

    async def predict_stream(
        self, events: Iterable[event_pb2.Event], *, timeout: float | None = None
    ) -> AsyncIterator[pb.Prediction]:
        call = self.stub.PredictStream(iter(events), timeout=timeout, metadata=self._md)
        async for prediction in call:
            yield prediction

    async def forecast(
        self, stream: str, horizon: int, *, timeout: float | None = None
    ) -> pb.Forecast:
        request = pb.ForecastRequest(stream=stream, horizon=horizon)
        return await self.stub.Forecast(request, **self._kw(timeout))

    async def get_stream(
        self,
        stream: str,
        *,
        include_gates: bool = False,
        missing_ok: bool = False,
        timeout: float | None = None,
    ) -> pb.StreamState:
        request = pb.StreamRequest(
            stream=stream, include_gates=include_gates, missing_ok=missing_ok
        )
        return await self.stub.GetStream(request, **self._kw(timeout))

    async def reset_stream(self, stream: str, *, timeout: float | None = None) -> None:
        await self.stub.ResetStream(pb.StreamRequest(stream=stream), **self._kw(timeout))

    async def delete_stream(self, stream: str, *, timeout: float | None = None) -> None:
        await self.stub.DeleteStream(pb.StreamRequest(stream=stream), **self._kw(timeout))

    async def model_info(self, *, timeout: float | None = None) -> pb.ModelInfoResponse:
        return await self.stub.ModelInfo(pb.ModelInfoRequest(), **self._kw(timeout))

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        request = health_pb2.HealthCheckRequest(service=service)
        reply = await self._health.Check(request, **self._kw(timeout))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
