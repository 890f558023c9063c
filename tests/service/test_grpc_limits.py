"""What a hostile or careless gRPC client cannot do to the server's own bookkeeping.

Each test starts its own server on port 0 (loopback) and stops it in a finally block.
"""

from __future__ import annotations

import uuid

import grpc
import pytest

from streamcell.core.checkpoint import ModelConfig, load_latest, save_checkpoint
from streamcell.core.model import StreamingLSTM
from streamcell.core.predictor import Predictor
from streamcell.service.client import Client
from streamcell.service.grpc_api import GrpcSettings, start_grpc_server
from streamcell.service.grpc_interceptors import UNKNOWN_METHOD
from streamcell.service.metrics import Metrics


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
