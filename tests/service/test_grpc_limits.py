"""What a hostile or careless gRPC client cannot do to the server's own bookkeeping.

Each test starts its own server on port 0 (loopback) and stops it in a finally block.
"""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest

from streamcell.core.checkpoint import ModelConfig, load_latest, save_checkpoint
from streamcell.core.errors import ConfigError
from streamcell.core.model import StreamingLSTM
from streamcell.core.predictor import Predictor
from streamcell.service.client import Client, event
from streamcell.service.grpc_api import GrpcSettings, start_grpc_server
from streamcell.service.grpc_interceptors import UNKNOWN_METHOD
from streamcell.service.metrics import Metrics
from streamcell.v1 import event_pb2


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    registry = tmp_path_factory.mktemp("registry")
    names, zeros, ones = ("a",), (0.0,), (1.0,)
    config = ModelConfig(1, 4, 1, 1, names, names, zeros, ones, zeros, ones)
    save_checkpoint(registry, "grpc-limits", StreamingLSTM(1, 4, 1, 1), config)
    return Predictor(load_latest(registry, "grpc-limits"))


def test_made_up_method_paths_never_become_metric_labels(predictor: Predictor) -> None:
    metrics = Metrics()
    handle = start_grpc_server(GrpcSettings(port=0, host="127.0.0.1"), lambda: predictor, metrics)
    paths = [f"/made.Up{uuid.uuid4().hex[:8]}/Call{k}" for k in range(20)]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
            for path in paths:
                call = channel.unary_unary(path)
                with pytest.raises(grpc.RpcError) as err:
                    call(b"", timeout=5)
                assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with Client(f"127.0.0.1:{handle.port}", timeout=5) as client:
            client.predict("known", [1.0])
    finally:
        handle.stop(grace=1)
    labels = {
        sample.labels["method"]
        for family in metrics.registry.collect()
        if family.name.startswith("streamcell_grpc_")
        for sample in family.samples
        if "method" in sample.labels
    }
    assert labels == {UNKNOWN_METHOD, "Predict"}
    unknown = metrics.registry.get_sample_value(
        "streamcell_grpc_requests_total", {"method": UNKNOWN_METHOD, "code": "UNIMPLEMENTED"}
    )
    assert unknown == len(paths)


def test_the_health_port_serves_health_alone_with_the_main_servers_status(
    predictor: Predictor,
) -> None:
    """For probes that cannot speak TLS: the status only, none of the data."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    loaded: list[Predictor] = []
    handle = start_grpc_server(
        GrpcSettings(port=0, host="127.0.0.1", health_port=0, auth_token="t0ken"),
        lambda: loaded[0] if loaded else None,
        Metrics(),
    )
    try:
        assert handle.health_port not in (None, 0, handle.port)
        with grpc.insecure_channel(f"127.0.0.1:{handle.health_port}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            request = health_pb2.HealthCheckRequest(service="")
            assert check(request, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
            loaded.append(predictor)
            handle.set_serving(True)
            assert check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as err:
                channel.unary_unary("/streamcell.v1.Predictor/ModelInfo")(b"", timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        handle.stop(grace=1)


def _refusal(call: object, *args: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(*args)  # type: ignore[operator]
    return err.value


def test_a_predict_batch_over_a_cap_is_refused_whole_and_one_at_the_cap_works(
    predictor: Predictor,
) -> None:
    """Each of a stream's events in one call is one LSTM step under the Predictor's lock."""
    settings = GrpcSettings(port=0, host="127.0.0.1", max_batch_events=8, max_batch_depth=3)
    handle = start_grpc_server(settings, lambda: predictor, None)
    try:
        with Client(f"127.0.0.1:{handle.port}", timeout=10) as client:
            wide = [event(f"wide-{k}", [1.0]) for k in range(9)]
            err = _refusal(client.predict_batch, wide)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "--grpc-max-batch-events (8)" in err.details()
            deep = [event("deep", [float(k)]) for k in range(4)] + [event("other", [1.0])]
            err = _refusal(client.predict_batch, deep)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "--grpc-max-batch-depth (3)" in err.details() and "'deep'" in err.details()
            for stream in ("wide-0", "deep", "other"):  # refused whole: nothing changed
                assert not client.get_stream(stream, missing_ok=True).exists
            at_cap = [event("deep", [float(k)]) for k in range(3)]
            at_cap += [event(f"wide-{k}", [1.0]) for k in range(5)]
            assert len(client.predict_batch(at_cap)) == 8
            assert client.get_stream("deep").events == 3
    finally:
        handle.stop(grace=1)


class _Feed:
    """A PredictStream's requests, sent one at a time; ``close`` ends the input."""

    def __init__(self) -> None:
        self._queue: queue.Queue[event_pb2.Event | None] = queue.Queue()

    def send(self, ev: event_pb2.Event) -> None:
        self._queue.put(ev)

    def close(self) -> None:
        self._queue.put(None)

    def __iter__(self) -> Iterator[event_pb2.Event]:
        while (ev := self._queue.get(timeout=30)) is not None:
            yield ev


def test_predict_streams_past_the_bound_are_refused_while_unary_calls_and_health_answer(
    predictor: Predictor,
) -> None:
    """Each open PredictStream holds a worker thread: the bound keeps threads for the rest."""
    settings = GrpcSettings(port=0, host="127.0.0.1", workers=4, max_predict_streams=2)
    metrics = Metrics()  # as serve runs it: the interceptor wraps the stream handler
    handle = start_grpc_server(settings, lambda: predictor, metrics)
    feeds: list[_Feed] = []
    try:
        with Client(f"127.0.0.1:{handle.port}", timeout=10) as client:

            def open_stream(name: str) -> tuple[_Feed, Iterator[object]]:
                feed = _Feed()
                feeds.append(feed)
                replies = client.predict_stream(feed, timeout=30)
                feed.send(event(name, [1.0]))
                return feed, replies

            held = [open_stream(f"open-{k}") for k in range(2)]
            for _, replies in held:  # both are running, each on a worker thread
                assert next(replies).stream.startswith("open-")  # type: ignore[attr-defined]
            _, extra = open_stream("extra")
            err = _refusal(next, extra)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--grpc-max-predict-streams" in err.details()
            assert client.health() == "SERVING"
            assert client.predict("unary", [1.0]).stream == "unary"
            assert len(client.predict_batch([event("unary", [2.0])])) == 1
            assert not client.get_stream("extra", missing_ok=True).exists
            # Closing or cancelling an open one frees its place.
            feed, replies = held[0]
            feed.close()
            assert list(replies) == []
            feed, replies = open_stream("again-0")
            assert next(replies).stream == "again-0"  # type: ignore[attr-defined]
            held[1][1].cancel()  # type: ignore[attr-defined]
            deadline = time.monotonic() + 10  # the server sees the cancellation soon after
            while True:
                feed, replies = open_stream("again-1")
                try:
                    assert next(replies).stream == "again-1"  # type: ignore[attr-defined]
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert time.monotonic() < deadline, "a cancelled PredictStream kept its place"
                    time.sleep(0.05)
    finally:
        for feed in feeds:
            feed.close()
        handle.stop(grace=1)


def test_the_predict_stream_bound_stays_below_the_worker_threads() -> None:
    assert GrpcSettings().predict_stream_limit == GrpcSettings().workers // 2
    assert GrpcSettings(workers=1).predict_stream_limit == 0
    with pytest.raises(ConfigError, match="--grpc-max-predict-streams"):
        GrpcSettings(workers=4, max_predict_streams=4)
    with pytest.raises(ConfigError, match="--grpc-max-batch-depth"):
        GrpcSettings(max_batch_depth=0)
