"""gRPC TLS, bearer-token auth, health before/after a model, the in-flight limit.

Each test starts its own server on port 0 and stops it in a finally block.
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from streamcell.core.checkpoint import ModelConfig, load_latest, save_checkpoint
from streamcell.core.model import StreamingLSTM
from streamcell.core.predictor import Predictor
from streamcell.service.client import Client, event
from streamcell.service.grpc_api import GrpcServerHandle, GrpcSettings, start_grpc_server
from streamcell.service.metrics import Metrics

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    registry = tmp_path_factory.mktemp("registry")
    names, zeros, ones = ("a", "b", "c"), (0.0,) * 3, (1.0,) * 3
    config = ModelConfig(3, 8, 1, 3, names, names, zeros, ones, zeros, ones)
    save_checkpoint(registry, "grpc-sec", StreamingLSTM(3, 8, 1, 3), config)
    return Predictor(load_latest(registry, "grpc-sec"))


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def serve(settings: GrpcSettings, predictor_of: Callable[[], Predictor | None]) -> GrpcServerHandle:
    return start_grpc_server(settings, predictor_of, Metrics())


@pytest.fixture
def secured(predictor: Predictor, tls_files: tuple[Path, Path]) -> Iterator[GrpcServerHandle]:
    cert, key = tls_files
    settings = GrpcSettings(port=0, host="127.0.0.1", tls_cert=cert, tls_key=key, auth_token=TOKEN)
    handle = serve(settings, lambda: predictor)
    try:
        yield handle
    finally:
        handle.stop(grace=1)


def test_tls_and_token_served_with_credentials(
    secured: GrpcServerHandle, tls_files: tuple[Path, Path]
) -> None:
    cert, _ = tls_files
    with Client(f"localhost:{secured.port}", tls_ca=cert, auth_token=TOKEN, timeout=10) as c:
        p = c.predict("tls-1", [1, 2, 3])
        assert p.events == 1 and len(p.yhat) == 3
        assert c.get_stream("tls-1").events == 1


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_token_auth_refuses_a_missing_or_wrong_token(
    secured: GrpcServerHandle, tls_files: tuple[Path, Path], token: str | None
) -> None:
    cert, _ = tls_files
    with Client(f"localhost:{secured.port}", tls_ca=cert, auth_token=token, timeout=10) as c:
        with pytest.raises(grpc.RpcError) as info:
            c.predict("tls-refused", [1, 2, 3])
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            list(c.predict_stream([event("tls-refused", [1, 2, 3])]))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert c.health() == "SERVING"  # health stays open for probes
    with Client(f"localhost:{secured.port}", tls_ca=cert, auth_token=TOKEN, timeout=10) as c:
        assert not c.get_stream("tls-refused", missing_ok=True).exists


def test_tls_refuses_plaintext_and_untrusted_clients(secured: GrpcServerHandle) -> None:
    with Client(f"localhost:{secured.port}", auth_token=TOKEN, timeout=3) as plain:
        with pytest.raises(grpc.RpcError) as info:
            plain.predict("tls-plain", [1, 2, 3])
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # TLS with the system roots: our self-signed certificate is not trusted.
    with Client(f"localhost:{secured.port}", tls=True, auth_token=TOKEN, timeout=3) as other:
        with pytest.raises(grpc.RpcError) as info:
            other.predict("tls-untrusted", [1, 2, 3])
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_health_and_unavailable_before_a_model(predictor: Predictor) -> None:
    loaded: list[Predictor] = []
    handle = serve(
        GrpcSettings(port=0, host="127.0.0.1", health_poll_seconds=0.05),
        lambda: loaded[0] if loaded else None,
    )
    try:
        with Client(f"127.0.0.1:{handle.port}", timeout=10) as c:
            assert c.health() == "NOT_SERVING"
            assert c.health("streamcell.v1.Predictor") == "NOT_SERVING"
            for call in (lambda: c.predict("early-1", [1, 2, 3]), c.model_info):
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "no model" in info.value.details()
            loaded.append(predictor)
            deadline = time.monotonic() + 10
            while c.health() != "SERVING" and time.monotonic() < deadline:
                time.sleep(0.02)
            assert c.health("streamcell.v1.Predictor") == "SERVING"
            assert c.predict("early-1", [1, 2, 3]).events == 1
            handle.set_serving(False)
            assert c.health() == "NOT_SERVING"
    finally:
        handle.stop(grace=1)


def test_in_flight_limit_is_resource_exhausted(predictor: Predictor) -> None:
    handle = serve(GrpcSettings(port=0, host="127.0.0.1", max_in_flight=1), lambda: predictor)
    inbox: queue.Queue = queue.Queue()

    def requests() -> Iterator:  # type: ignore[type-arg]
        while (item := inbox.get()) is not None:
            yield item

    try:
        with Client(f"127.0.0.1:{handle.port}", timeout=10) as c:
            replies = c.predict_stream(requests())  # holds the one in-flight slot open
            inbox.put(event("busy-1", [1, 2, 3]))
            assert next(replies).events == 1
            with pytest.raises(grpc.RpcError) as info:
                c.predict("busy-2", [1, 2, 3])
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            inbox.put(None)
            assert list(replies) == []
            deadline = time.monotonic() + 10
            while True:  # the slot frees once the stream's end reaches the server
                try:
                    assert c.predict("busy-2", [1, 2, 3]).events == 1
                    break
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
    finally:
        inbox.put(None)
        handle.stop(grace=1)


def test_an_oversized_request_is_refused(predictor: Predictor) -> None:
    handle = serve(
        GrpcSettings(port=0, host="127.0.0.1", max_message_bytes=2048), lambda: predictor
    )
    try:
        with Client(f"127.0.0.1:{handle.port}", timeout=10) as c:
            small = [event(f"size-{k}", [1, 2, 3]) for k in range(10)]
            assert len(c.predict_batch(small)) == 10
            with pytest.raises(grpc.RpcError) as info:
                c.predict_batch([event(f"size-{k}", [1, 2, 3]) for k in range(200)])
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert not c.get_stream("size-150", missing_ok=True).exists
    finally:
        handle.stop(grace=1)


def test_predict_cli_with_tls_and_token(
    secured: GrpcServerHandle,
    tls_files: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from streamcell import cli

    cert, _ = tls_files
    path = tmp_path / "events.jsonl"
    path.write_text('{"stream": "cli-tls", "x": [1, 2, 3]}\n')
    target = f"localhost:{secured.port}"
    argv = ["predict", str(path), "--target", target, "--tls-ca", str(cert)]
    assert cli.main([*argv, "--auth-token", TOKEN]) == 0
    assert '"stream": "cli-tls"' in capsys.readouterr().out
    assert cli.main(argv) == 2
    assert "UNAUTHENTICATED" in capsys.readouterr().err
