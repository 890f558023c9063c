"""The gRPC API over a real socket: predictions, forecasts, admin, errors, reflection.

One server per module (port 0, plaintext, no token) over a Predictor with a
small random model; each test uses its own stream ids.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from streamcell import cli
from streamcell.core.checkpoint import ModelConfig, load_latest, save_checkpoint
from streamcell.core.model import StreamingLSTM
from streamcell.core.predictor import Predictor
from streamcell.service.client import AsyncClient, Client, event
from streamcell.service.grpc_api import GrpcSettings, start_grpc_server
from streamcell.service.metrics import Metrics
from streamcell.v1 import predictor_pb2 as pb

FEATURES = ("a", "b", "c")
IN_MEAN, IN_STD = (0.5, -1.0, 2.0), (2.0, 0.5, 1.0)
OUT_MEAN, OUT_STD = (0.1, 0.2, 0.3), (1.5, 1.0, 0.5)


def make_registry(root: Path) -> Path:
    """A registry holding one version of a small random autoregressive model."""
    torch.manual_seed(7)
    model = StreamingLSTM(3, 16, 2, 3)
    cfg = ModelConfig(3, 16, 2, 3, FEATURES, FEATURES, IN_MEAN, IN_STD, OUT_MEAN, OUT_STD)
    save_checkpoint(root, "grpc-test", model, cfg)
    return root


class Served:
    def __init__(self, predictor: Predictor, metrics: Metrics, port: int):
        self.predictor, self.metrics, self.port = predictor, metrics, port
        self.target = f"127.0.0.1:{port}"
        self._changed: set[str] = set()

    def changed(self) -> set[str]:
        """Every stream the Predictor journaled so far (as the checkpointer would take)."""
        self._changed.update(self.predictor.take_changes())
        return self._changed


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    registry = make_registry(tmp_path_factory.mktemp("registry"))
    predictor = Predictor(load_latest(registry, "grpc-test"), keep_gates=True)
    predictor.track_changes(lambda stream, known: 0)  # every stream on partition 0
    metrics = Metrics()

    def owner_of(stream: str) -> str | None:
        return "partition 3, member replica-2 (10.0.0.2)" if stream.startswith("remote") else None

    handle = start_grpc_server(
        GrpcSettings(port=0, host="127.0.0.1", workers=8),
        lambda: predictor,
        metrics,
        owner_of=owner_of,
    )
    try:
        yield Served(predictor, metrics, handle.port)
    finally:
        handle.stop(grace=1)


@pytest.fixture
def client(served: Served) -> Iterator[Client]:
    with Client(served.target, timeout=10) as c:
        yield c


def sequence(seed: int, steps: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(steps, 3)).astype(np.float32) * 2


def offline(predictor: Predictor, xs: np.ndarray) -> np.ndarray:
    """The model run offline over the whole sequence with torch.nn.LSTM."""
    u = (torch.from_numpy(xs) - torch.tensor(IN_MEAN)) / torch.tensor(IN_STD)
    with torch.no_grad():
        y, _ = predictor.loaded.model(u[None])
    return (y[0] * torch.tensor(OUT_STD) + torch.tensor(OUT_MEAN)).numpy()


def yhats(predictions) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.array([list(p.yhat) for p in predictions], dtype=np.float32)


def code_of(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value.code(), info.value.details()


# ----------------------------------------------------------------- predictions
def test_predict_over_a_sequence_equals_the_model_offline(served: Served, client: Client) -> None:
    xs = sequence(1, 12)
    got = [client.predict("offline-1", row.tolist(), seq=k) for k, row in enumerate(xs)]
    np.testing.assert_allclose(yhats(got), offline(served.predictor, xs), rtol=0, atol=2e-5)
    assert [p.events for p in got] == list(range(1, 13))
    assert [p.seq for p in got] == list(range(12))
    assert {(p.model, p.version) for p in got} == {("grpc-test", served.predictor.loaded.version)}


def test_predict_batch_and_predict_stream_agree_with_predict(client: Client) -> None:
    seqs = {k: sequence(10 + k, 5) for k in range(3)}
    # Interleaved: each stream several times in one batch, in order.
    order = [(k, t) for t in range(5) for k in range(3)]

    def events(prefix: str) -> list:  # type: ignore[type-arg]
        return [event(f"{prefix}-{k}", seqs[k][t].tolist(), seq=t) for k, t in order]

    unary = [client.predict_event(e) for e in events("agree-unary")]
    batch = client.predict_batch(events("agree-batch"))
    streamed = list(client.predict_stream(events("agree-stream")))
    assert len(batch) == len(streamed) == len(unary) == 15
    np.testing.assert_allclose(yhats(batch), yhats(unary), rtol=0, atol=1e-6)
    np.testing.assert_allclose(yhats(streamed), yhats(unary), rtol=0, atol=1e-6)
    assert [p.events for p in batch] == [p.events for p in unary] == [t + 1 for _, t in order]
    assert [p.stream.split("-")[-1] for p in batch] == [str(k) for k, _ in order]


def test_concurrent_unary_calls_keep_each_streams_order(served: Served) -> None:
    """Concurrent Predict calls are merged into shared LSTM steps; each stream stays exact."""
    xs = {k: sequence(100 + k, 10) for k in range(8)}

    def run(k: int) -> np.ndarray:
        with Client(served.target, timeout=10) as c:
            return yhats([c.predict(f"conc-{k}", row.tolist()) for row in xs[k]])

    with ThreadPoolExecutor(max_workers=8) as pool:
        got = dict(zip(range(8), pool.map(run, range(8)), strict=True))
    for k in range(8):
        np.testing.assert_allclose(got[k], offline(served.predictor, xs[k]), rtol=0, atol=2e-5)


def test_duplicate_seq_is_not_applied(client: Client) -> None:
    first = client.predict("dup-1", [1, 2, 3], seq=5)
    again = client.predict("dup-1", [9, 9, 9], seq=5)
    assert again.outcome == pb.OUTCOME_DUPLICATE and list(again.yhat) == []
    state = client.get_stream("dup-1")
    assert state.events == 1 and state.seq == 5
    np.testing.assert_array_equal(state.last_prediction, first.yhat)


def test_forecast_leaves_the_state_untouched(client: Client) -> None:
    xs = sequence(3, 6)
    for name in ("fc-a", "fc-b", "fc-c"):
        client.predict_batch([event(name, row.tolist()) for row in xs])
    before = client.get_stream("fc-a", include_gates=True)
    forecast = client.forecast("fc-a", 4)
    after = client.get_stream("fc-a", include_gates=True)
    assert after == before
    assert len(before.gates) == 2 and len(before.gates[0].forget) == 16
    steps = yhats(forecast.steps)
    assert steps.shape == (4, 3)
    np.testing.assert_array_equal(steps[0], before.last_prediction)
    # The next Predict equals one with no Forecast in between (fc-b has the same history).
    nxt = [0.3, -0.2, 1.0]
    assert client.predict("fc-a", nxt).yhat == client.predict("fc-b", nxt).yhat
    # Forecast feeds its prediction back: step 1 is what feeding step 0 as an event gives.
    fed = client.predict("fc-c", steps[0].tolist())
    np.testing.assert_allclose(fed.yhat, steps[1], rtol=0, atol=1e-5)


# ----------------------------------------------------------------------- admin
def test_list_reset_delete_and_model_info(served: Served, client: Client) -> None:
    names = [f"adm-{k:02d}" for k in range(7)]
    client.predict_batch([event(n, [0.1, 0.2, 0.3]) for n in names])
    listed = [s for s in client.list_streams(page_size=3) if s.startswith("adm-")]
    assert listed == names
    page = client.stub.ListStreams(pb.ListStreamsRequest(page_size=2, page_token="adm-02"))
    assert list(page.streams) == ["adm-03", "adm-04"] and page.next_page_token == "adm-04"

    client.reset_stream("adm-00")
    reset = client.get_stream("adm-00")
    assert reset.exists and reset.events == 0
    client.delete_stream("adm-01")
    assert client.get_stream("adm-01", missing_ok=True).exists is False
    assert {"adm-00", "adm-01"} <= served.changed()

    info = client.model_info()
    assert (info.name, info.version) == ("grpc-test", served.predictor.loaded.version)
    assert (info.input_size, info.hidden_size, info.num_layers, info.output_size) == (3, 16, 2, 3)
    assert list(info.features) == list(FEATURES) and info.autoregressive
    assert info.streams == len(served.predictor.store)


def test_applied_streams_are_journaled_for_the_changelog(served: Served, client: Client) -> None:
    client.predict_batch([event("chg-1", [1, 1, 1]), event("chg-2", [2, 2, 2])])
    client.predict("chg-3", [3, 3, 3])
    assert {"chg-1", "chg-2", "chg-3"} <= served.changed()


# ---------------------------------------------------------------------- errors
NAN, INF = math.nan, math.inf
BAD_REQUESTS = [
    ("wrong feature count", "Predict", event("err-1", [1.0, 2.0]), "x has 2 values"),
    ("NaN", "Predict", event("err-1", [1.0, NAN, 2.0]), "NaN"),
    ("infinity", "Predict", event("err-1", [1.0, INF, 2.0]), "infinite"),
    ("empty stream id", "Predict", event("", [1.0, 2.0, 3.0]), "empty"),
    ("seq -1", "Predict", event("err-1", [1.0, 2.0, 3.0], seq=-1), "seq must be >= 0, got -1"),
    (
        "seq -1 in a batch",
        "PredictBatch",
        pb.EventBatch(events=[event("err-1", [1.0, 2.0, 3.0]), event("err-1", [0.0] * 3, seq=-1)]),
        "event 1 (stream 'err-1'): seq must be >= 0",
    ),
    ("horizon 0", "Forecast", pb.ForecastRequest(stream="err-known", horizon=0), "horizon"),
    ("horizon 1001", "Forecast", pb.ForecastRequest(stream="err-known", horizon=1001), "horizon"),
    ("empty stream in GetStream", "GetStream", pb.StreamRequest(stream=""), "empty"),
]


@pytest.mark.parametrize(("what", "method", "request_", "says"), BAD_REQUESTS)
def test_bad_requests_are_invalid_argument(
    client: Client, what: str, method: str, request_: object, says: str
) -> None:
    client.predict("err-known", [0.0, 0.0, 0.0])
    code, details = code_of(getattr(client.stub, method), request_)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, what
    assert says in details


@pytest.mark.parametrize("method", ["GetStream", "Forecast", "ResetStream", "DeleteStream"])
def test_unknown_stream_is_not_found(client: Client, method: str) -> None:
    request = (
        pb.ForecastRequest(stream="nobody", horizon=2)
        if method == "Forecast"
        else pb.StreamRequest(stream="nobody")
    )
    code, details = code_of(getattr(client.stub, method), request)
    assert code == grpc.StatusCode.NOT_FOUND and "nobody" in details


def test_a_bad_event_in_a_batch_changes_no_state(served: Served, client: Client) -> None:
    client.predict("atomic-1", [1, 2, 3])
    before = client.get_stream("atomic-1")
    code, details = code_of(
        client.predict_batch,
        [
            event("atomic-1", [4, 5, 6]),
            event("atomic-2", [1, 1, 1]),
            event("atomic-3", [1, NAN, 1]),
        ],
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "event 2" in details
    after = client.get_stream("atomic-1")
    assert (after.events, list(after.last_prediction)) == (1, list(before.last_prediction))
    assert not client.get_stream("atomic-2", missing_ok=True).exists


def test_stream_of_another_replica_is_failed_precondition_naming_it(client: Client) -> None:
    for call in (
        lambda: client.predict("remote-1", [1, 2, 3]),
        lambda: client.predict_batch([event("here-1", [1, 2, 3]), event("remote-2", [1, 2, 3])]),
        lambda: client.get_stream("remote-1"),
    ):
        code, details = code_of(call)
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "replica-2" in details and "partition 3" in details
    assert not client.get_stream("here-1", missing_ok=True).exists


def test_predict_stream_error_ends_the_stream_with_its_code(client: Client) -> None:
    replies = client.predict_stream([event("ps-err", [1, 2, 3]), event("ps-err", [1, 2])])
    first = next(replies)
    assert first.events == 1
    with pytest.raises(grpc.RpcError) as info:
        next(replies)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_call_whose_deadline_passes_while_waiting_applies_nothing(
    served: Served, client: Client
) -> None:
    with served.predictor.lock:  # as the Kafka loop does during a micro-batch
        code, _ = code_of(client.predict, "late-1", [1, 2, 3], timeout=0.3)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert not client.get_stream("late-1", missing_ok=True).exists


def test_stop_leaves_no_server_thread_behind(served: Served) -> None:
    import threading

    before = set(threading.enumerate())
    handle = start_grpc_server(
        GrpcSettings(port=0, host="127.0.0.1", workers=2), lambda: served.predictor, None
    )
    with Client(f"127.0.0.1:{handle.port}", timeout=10) as c:
        assert c.health() == "SERVING"
        assert c.model_info().name == "grpc-test"
    handle.stop(grace=1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [t.name for t in set(threading.enumerate()) - before if t.name.startswith("grpc")]
        if not left:
            break
        time.sleep(0.05)
    assert left == []


def test_requests_are_counted_by_method_and_code(served: Served, client: Client) -> None:
    def count(method: str, code: str) -> float:
        value = served.metrics.registry.get_sample_value(
            "streamcell_grpc_requests_total", {"method": method, "code": code}
        )
        return value or 0.0

    ok, bad = count("Predict", "OK"), count("Predict", "INVALID_ARGUMENT")
    client.predict("metrics-1", [1, 2, 3])
    code_of(client.predict, "metrics-1", [1, 2])
    assert count("Predict", "OK") == ok + 1
    assert count("Predict", "INVALID_ARGUMENT") == bad + 1
    grpc_events = served.metrics.registry.get_sample_value(
        "streamcell_events_total", {"source": "grpc", "outcome": "predicted"}
    )
    assert grpc_events is not None and grpc_events >= 1

    def latency(what: str) -> float:
        name = f"streamcell_event_latency_seconds_{what}"
        return served.metrics.registry.get_sample_value(name, {"source": "grpc"}) or 0.0

    n, total = latency("count"), latency("sum")
    client.predict_batch(
        [event("metrics-2", [1, 2, 3], ts=time.time() - 2.0), event("m-3", [1, 2, 3])]
    )
    assert latency("count") == n + 1  # only the event with a ts
    assert 2.0 <= latency("sum") - total < 60


# ------------------------------------------------- reflection, async, the CLI
def test_a_reflection_only_client_lists_the_service_and_calls_predict(served: Served) -> None:
    with grpc.insecure_channel(served.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = database.get_services()
        assert "streamcell.v1.Predictor" in services
        assert "grpc.health.v1.Health" in services
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("streamcell.v1.Predictor")
        assert {"Predict", "PredictBatch", "PredictStream", "Forecast", "GetStream"} <= {
            m.name for m in service.methods
        }
        method = service.methods_by_name["Predict"]
        request_cls = message_factory.GetMessageClass(method.input_type)
        reply_cls = message_factory.GetMessageClass(method.output_type)
        predict = channel.unary_unary(
            "/streamcell.v1.Predictor/Predict",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=reply_cls.FromString,
        )
        reply = predict(request_cls(stream="reflect-1", x=[1.0, 2.0, 3.0]), timeout=10)
    assert reply.stream == "reflect-1" and len(reply.yhat) == 3 and reply.events == 1
    assert reply.model == "grpc-test"


def test_async_client(served: Served, client: Client) -> None:
    async def go() -> tuple[list[float], int, str]:
        async with AsyncClient(served.target, timeout=10) as aclient:
            p = await aclient.predict("async-1", [1, 2, 3])
            state = await aclient.get_stream("async-1")
            return list(p.yhat), state.events, await aclient.health()

    yhat, events, health = asyncio.run(go())
    assert events == 1 and health == "SERVING"
    assert yhat == list(client.get_stream("async-1").last_prediction)


@pytest.mark.parametrize("batch", ["0", "2"])
def test_predict_cli_prints_one_json_line_per_event(
    served: Served,
    client: Client,
    batch: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = f"cli-{batch}"
    lines = [{"stream": name, "seq": k, "x": [k, 1.0, -1.0]} for k in range(3)]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in lines) + "\n")
    assert cli.main(["predict", str(path), "--target", served.target, "--batch", batch]) == 0
    out = [json.loads(line) for line in io.StringIO(capsys.readouterr().out)]
    assert [(o["stream"], o["seq"], o["events"]) for o in out] == [
        (name, k, k + 1) for k in range(3)
    ]
    assert out[-1]["yhat"] == pytest.approx(list(client.get_stream(name).last_prediction))


def test_predict_cli_reports_a_refused_event(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"stream": "cli-bad", "x": [1.0]}) + "\n")
    assert cli.main(["predict", str(path), "--target", served.target]) == 2
    assert "INVALID_ARGUMENT" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "value is not JSON: Expecting value"),
        ("[1, 2]", "value must be a JSON object, got list"),
        ('{"x": [1.0]}', "the stream id is empty"),
        ('{"stream": "a", "x": [true]}', "x must hold numbers only, found true"),
        ('{"stream": "a", "x": [1.0], "seq": "3"}', 'seq must be an integer >= 0, got "3"'),
        ('{"stream": "a", "x": [1.0], "ts": NaN}', "ts must be a finite number of seconds"),
        ('{"stream": "a", "x": [1.0], "stream": 5}', "stream must be a string"),
    ],
)
def test_predict_cli_names_what_is_wrong_with_a_line(
    line: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n" + line + "\n")  # refused before any call: no server needed
    assert cli.main(["predict", str(path), "--target", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "line 2: not an event" in err and message in err


def test_predict_cli_unreadable_files_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.jsonl"
    assert cli.main(["predict", str(missing)]) == 2
    assert f"cannot read {missing}" in capsys.readouterr().err
    events = tmp_path / "events.jsonl"
    events.write_text("")
    assert cli.main(["predict", str(events), "--tls-ca", str(missing)]) == 2
    assert f"cannot read {missing}" in capsys.readouterr().err


# ------------------------------------------------------------- settings, flags
def test_flags_build_settings_and_reject_bad_combinations(tmp_path: Path) -> None:
    import argparse

    from streamcell.core.errors import ConfigError
    from streamcell.service import flags

    parser = argparse.ArgumentParser()
    flags.add_arguments(parser, flags.GRPC_FLAGS)
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    settings = flags.grpc_from_args(
        parser.parse_args(["--grpc-port", "0", "--auth-token-file", str(token_file)])
    )
    assert (settings.port, settings.auth_token, settings.tls) == (0, "from-a-file", False)
    assert "from-a-file" not in repr(settings)
    for bad in (
        ["--tls-cert", "cert.pem"],
        ["--auth-token", "a", "--auth-token-file", str(token_file)],
        ["--grpc-workers", "0"],
        ["--grpc-port", "70000"],
    ):
        with pytest.raises(ConfigError):
            flags.grpc_from_args(parser.parse_args(bad))


def test_the_cli_modules_import_neither_grpc_nor_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, streamcell.service.grpc_api, streamcell.service.predict_cli; "
        "print(sorted({'torch', 'grpc', 'ray'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
