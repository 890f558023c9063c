"""Quantiles served: Kafka JSON, protobuf, gRPC (and reflection), metrics, GetStream coverage.

Models are built by hand (random or constant heads through save_checkpoint);
no trainer runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client import generate_latest
from quantile_support import LEVELS, make_constant_quantile_model, make_quantile_model

from streamcell.core.checkpoint import load_checkpoint
from streamcell.core.events import NO_SEQ, EventBatch
from streamcell.core.predictor import Predictor
from streamcell.service.client import Client, event
from streamcell.service.codec import FORMAT_PROTOBUF, encode_predictions
from streamcell.service.grpc_api import GrpcSettings, start_grpc_server
from streamcell.service.grpc_convert import forecast_into
from streamcell.service.metrics import Metrics
from streamcell.v1 import predictor_pb2 as pb


def serve(predictor: Predictor, metrics: Metrics | None = None) -> Iterator[Client]:
    handle = start_grpc_server(GrpcSettings(port=0, host="127.0.0.1"), lambda: predictor, metrics)
    try:
        with Client(f"127.0.0.1:{handle.port}", timeout=10) as client:
            client.port = handle.port  # type: ignore[attr-defined]
            yield client
    finally:
        handle.stop(grace=1)


@pytest.fixture(scope="module")
def quantile_predictor(tmp_path_factory) -> Predictor:
    return Predictor(load_checkpoint(make_quantile_model(tmp_path_factory.mktemp("q"))))


@pytest.fixture(scope="module")
def quantile_client(quantile_predictor) -> Iterator[Client]:
    yield from serve(quantile_predictor)


def _xs(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)


def _quantiles(message) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.array([list(q.yhat) for q in message.quantiles], dtype=np.float32)


# -------------------------------------------------------------------- Kafka
def test_kafka_json_carries_the_quantiles_as_float32_exactly(tmp_path):
    p = Predictor(load_checkpoint(make_quantile_model(tmp_path)))
    batch = EventBatch.of(["a", "b", "a"], _xs(1, 3), seq=[1, 1, 2])
    r = p.predict(batch, now=1.0)
    out = encode_predictions(batch, r.yhat, np.arange(3), r.model, r.version, r.quantiles, r.levels)
    for row, (_, value) in enumerate(out):
        doc = json.loads(value)
        assert list(doc) == [
            "stream",
            "partition",
            "offset",
            "seq",
            "yhat",
            "quantiles",
            "model",
            "version",
        ]
        assert [q["level"] for q in doc["quantiles"]] == [0.1, 0.5, 0.9]
        back = np.array([q["yhat"] for q in doc["quantiles"]], dtype=np.float32)
        assert back.tobytes() == r.quantiles[row].tobytes()
        assert doc["yhat"] == doc["quantiles"][1]["yhat"]
    # A replay of the same events on a fresh Predictor, one at a time: the same bytes.
    again = Predictor(p.loaded)
    replayed = []
    for k in range(3):
        one = batch.take(np.array([k]))
        rr = again.predict(one, now=1.0)
        replayed += encode_predictions(
            one, rr.yhat, np.arange(1), rr.model, rr.version, rr.quantiles, rr.levels
        )
    assert replayed == out


@pytest.mark.parametrize("levels", [LEVELS, (0.5,), (0.25, 0.5)])
def test_events_with_and_without_seq_get_their_quantiles(tmp_path, levels):
    p = Predictor(load_checkpoint(make_quantile_model(tmp_path, levels=levels)))
    for seqs in ([NO_SEQ, 5, NO_SEQ], [NO_SEQ] * 3):
        batch = EventBatch.of(["a", "b", "c"], _xs(5, 3), seq=seqs)
        r = p.predict(batch, now=1.0)
        out = encode_predictions(
            batch, r.yhat, np.arange(3), r.model, r.version, r.quantiles, r.levels
        )
        for row, (_, value) in enumerate(out):
            doc = json.loads(value)
            assert doc.get("seq", NO_SEQ) == seqs[row]
            assert [q["level"] for q in doc["quantiles"]] == list(levels)
            back = np.array([q["yhat"] for q in doc["quantiles"]], dtype=np.float32)
            assert back.tobytes() == r.quantiles[row].tobytes()


def test_a_point_model_writes_no_quantiles_field(tmp_path):
    p = Predictor(load_checkpoint(make_quantile_model(tmp_path, levels=())))
    batch = EventBatch.of(["a"], _xs(2, 1))
    r = p.predict(batch, now=1.0)
    ((_, value),) = encode_predictions(
        batch, r.yhat, np.arange(1), r.model, r.version, r.quantiles, r.levels
    )
    assert b"quantiles" not in value


def test_kafka_protobuf_carries_the_quantiles_ordered_and_replays_byte_identical(tmp_path):
    p = Predictor(load_checkpoint(make_quantile_model(tmp_path)))
    batch = EventBatch.of(["a", "b", "a"], _xs(1, 3), seq=[1, NO_SEQ, 2], offset=[5, 6, 7])
    r = p.predict(batch, now=1.0)
    out = encode_predictions(
        batch, r.yhat, np.arange(3), r.model, r.version, r.quantiles, r.levels, FORMAT_PROTOBUF
    )
    for row, (key, value) in enumerate(out):
        m = pb.Prediction.FromString(value)
        assert (key.decode(), m.stream, m.offset) == (batch.streams[row], m.stream, 5 + row)
        assert m.HasField("seq") == (row != 1)
        assert [q.level for q in m.quantiles] == list(np.float32(LEVELS))
        back = _quantiles(m)
        assert back.tobytes() == r.quantiles[row].tobytes()
        assert (np.diff(back, axis=0) >= 0).all()  # ordered by level
        assert np.array(m.yhat, np.float32).tobytes() == back[1].tobytes()  # yhat is the median
    again = Predictor(p.loaded)
    replayed = []
    for k in range(3):
        one = batch.take(np.array([k]))
        rr = again.predict(one, now=1.0)
        replayed += encode_predictions(
            one, rr.yhat, np.arange(1), rr.model, rr.version, rr.quantiles, rr.levels,
            FORMAT_PROTOBUF,
        )  # fmt: skip
    assert replayed == out


def test_a_point_model_writes_no_quantiles_field_in_protobuf(tmp_path):
    p = Predictor(load_checkpoint(make_quantile_model(tmp_path, levels=())))
    batch = EventBatch.of(["a"], _xs(2, 1))
    r = p.predict(batch, now=1.0)
    ((_, value),) = encode_predictions(
        batch, r.yhat, np.arange(1), r.model, r.version, r.quantiles, r.levels, FORMAT_PROTOBUF
    )
    m = pb.Prediction.FromString(value)
    assert "quantiles" not in [f.name for f, _ in m.ListFields()]
    assert np.array(m.yhat, np.float32).tobytes() == r.yhat[0].tobytes()


# --------------------------------------------------------------------- gRPC
def test_every_predict_path_carries_the_predictors_quantiles(quantile_client, quantile_predictor):
    client, xs = quantile_client, _xs(3, 6)
    single = client.predict("g1", xs[0].tolist())
    assert [q.level for q in single.quantiles] == pytest.approx(LEVELS)
    batch = client.predict_batch([event("g1", x.tolist()) for x in xs[1:4]])
    streamed = list(client.predict_stream(event("g1", x.tolist()) for x in xs[4:]))
    got = np.stack([_quantiles(m) for m in [single, *batch, *streamed]])
    offline = Predictor(quantile_predictor.loaded).predict(EventBatch.of(["g1"] * 6, xs), now=1.0)
    assert got.tobytes() == offline.quantiles.tobytes()
    assert list(streamed[-1].yhat) == list(streamed[-1].quantiles[1].yhat)
    # Protobuf round trip of a message with quantiles.
    assert pb.Prediction.FromString(single.SerializeToString()) == single


def test_model_info_lists_the_levels_and_get_stream_its_coverage(quantile_client):
    info = quantile_client.model_info()
    assert list(info.quantile_levels) == pytest.approx(LEVELS)
    quantile_client.predict_batch([event("g2", x.tolist()) for x in _xs(4, 5)])
    state = quantile_client.get_stream("g2")
    assert len(state.last_quantiles) == 3
    (cov,) = state.coverage
    assert cov.interval == pytest.approx(0.8) and (cov.lower, cov.upper) == pytest.approx(
        (0.1, 0.9)
    )
    assert cov.scored == 4 * 3 and 0 <= cov.inside <= cov.scored


def test_a_reflection_only_client_reads_the_quantiles(quantile_client):
    with grpc.insecure_channel(f"127.0.0.1:{quantile_client.port}") as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        method = pool.FindServiceByName("streamcell.v1.Predictor").methods_by_name["Predict"]
        request_cls = message_factory.GetMessageClass(method.input_type)
        reply_cls = message_factory.GetMessageClass(method.output_type)
        assert {"level", "yhat"} == {
            f.name for f in pool.FindMessageTypeByName("streamcell.v1.Quantile").fields
        }
        predict = channel.unary_unary(
            "/streamcell.v1.Predictor/Predict",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=reply_cls.FromString,
        )
        reply = predict(request_cls(stream="g3", x=[1.0, 2.0, 3.0]), timeout=10)
    assert [round(q.level, 6) for q in reply.quantiles] == [0.1, 0.5, 0.9]
    assert all(len(q.yhat) == 3 for q in reply.quantiles)


def test_forecast_steps_carry_what_the_forecast_result_carries(quantile_client):
    quantile_client.predict("g4", [1.0, 2.0, 3.0])
    served = quantile_client.forecast("g4", 3)
    assert len(served.steps) == 3
    for step in served.steps:  # sample paths of the one-step quantile head, sorted
        q = _quantiles(step)
        assert q.shape == (3, 3) and np.all(np.diff(q, axis=0) >= 0)
    yhat = np.arange(6, dtype=np.float32).reshape(2, 3)
    q = np.stack([yhat - 1, yhat, yhat + 1], axis=1)  # [horizon, levels, targets]
    whole = forecast_into(pb.Forecast(), SimpleNamespace(yhat=yhat, quantiles=q), LEVELS)
    assert [_quantiles(s).tolist() for s in whole.steps] == q.tolist()
    assert (
        forecast_into(pb.Forecast(), SimpleNamespace(yhat=yhat, quantiles=None), LEVELS)
        .steps[0]
        .quantiles
        == []
    )


def test_a_point_model_serves_with_no_quantile_fields(tmp_path):
    p = Predictor(load_checkpoint(make_quantile_model(tmp_path, levels=())))
    for client in serve(p):
        reply = client.predict("p", [1.0, 2.0, 3.0])
        (other,) = client.predict_batch([event("p", [0.5, 0.5, 0.5])])
        state = client.get_stream("p")
        info = client.model_info()
        forecast = client.forecast("p", 2)
    assert reply.quantiles == [] and other.quantiles == [] and len(reply.yhat) == 3
    assert not state.last_quantiles and not state.coverage and not info.quantile_levels
    assert all(not s.quantiles for s in forecast.steps)


# ------------------------------------------------------------------ metrics
def test_coverage_and_pinball_metrics_count_a_hand_made_stream(tmp_path):
    """Quantiles always -1, 0, 1: actuals 0.5, 3, -1, -2 after a first unscored one."""
    p = Predictor(load_checkpoint(make_constant_quantile_model(tmp_path)))
    metrics = Metrics()
    for client in serve(p, metrics):
        client.predict_batch([event("h", [v]) for v in (0.0, 0.5, 3.0)])
        client.predict("h", [-1.0])
        client.predict("h", [-2.0])
        (cov,) = client.get_stream("h").coverage
    labels = {"model": "m", "version": p.loaded.version}
    get = metrics.registry.get_sample_value
    assert get("streamcell_interval_scored_total", labels) == 4
    assert get("streamcell_interval_inside_total", {**labels, "interval": "0.8"}) == 2
    assert (cov.scored, cov.inside) == (4, 2)
    actual = np.array([0.5, 3.0, -1.0, -2.0])
    for level, q in zip(("0.1", "0.5", "0.9"), (-1.0, 0.0, 1.0), strict=True):
        tau = float(level)
        expect = np.maximum(tau * (actual - q), (tau - 1) * (actual - q)).sum()
        assert get("streamcell_pinball_loss_sum", {**labels, "level": level}) == pytest.approx(
            expect
        )
        assert get("streamcell_pinball_loss_count", {**labels, "level": level}) == 4
    text = generate_latest(metrics.registry).decode()
    assert "# TYPE streamcell_pinball_loss summary" in text


# ------------------------------------------------------- the Kafka pipeline
def test_the_pipeline_sends_quantiles_counts_them_and_restores_the_counters(tmp_path):
    """The Kafka loop with recording fakes: predictions, metrics, changelog, restore."""
    from pipeline_fakes import TOPIC, record
    from test_pipeline_units import build, changelog_records

    from streamcell.service import settings

    loaded = load_checkpoint(make_quantile_model(tmp_path))
    first, consumer, producer, _ = build(loaded)
    consumer.on_assign([(TOPIC, 0)])
    first.process([record("a", k, x=(k, 1.0, -k)) for k in range(4)])
    first.checkpointer.checkpoint()
    docs = [json.loads(v) for t, _, v, _ in producer.sent if t == settings.OUTPUT_TOPIC]
    assert [len(d["quantiles"]) for d in docs] == [3] * 4
    labels = {"model": "m", "version": loaded.version}
    assert first.metrics.registry.get_sample_value("streamcell_interval_scored_total", labels) == 9
    reference = first.predictor.info("a")
    assert reference.scored == 9 and reference.last_quantiles

    second, consumer2, _, _ = build(loaded, changelog_records(producer))
    consumer2.on_assign([(TOPIC, 0)])
    restored = second.predictor.info("a")
    assert (restored.inside, restored.scored) == (reference.inside, reference.scored)
    assert restored.last_quantiles == reference.last_quantiles


def test_the_pipeline_writes_protobuf_predictions_when_told(tmp_path):
    from pipeline_fakes import TOPIC, record
    from test_pipeline_units import build

    from streamcell.service import settings
    from streamcell.service.codec import decode_prediction

    loaded = load_checkpoint(make_quantile_model(tmp_path))
    outs = {}
    for fmt in ("json", "protobuf"):
        pipeline, consumer, producer, _ = build(loaded, settings={"prediction_format": fmt})
        consumer.on_assign([(TOPIC, 0)])
        pipeline.process([record("a", k, x=(k, 1.0, -k)) for k in range(4)])
        outs[fmt] = [v for t, _, v, _ in producer.sent if t == settings.OUTPUT_TOPIC]
    assert len(outs["protobuf"]) == 4
    for js, pbv in zip(outs["json"], outs["protobuf"], strict=True):
        m = pb.Prediction.FromString(pbv)
        doc = json.loads(js)
        assert (m.stream, m.partition, m.offset) == (doc["stream"], doc["partition"], doc["offset"])
        assert m.HasField("seq") == ("seq" in doc)
        want = np.float32([q["yhat"] for q in doc["quantiles"]])
        assert _quantiles(m).tobytes() == want.tobytes()
        assert list(decode_prediction(pbv, "protobuf")) == list(doc)


def test_the_predict_cli_prints_the_quantiles(quantile_client, tmp_path, capsys):
    from streamcell import cli

    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps({"stream": "cli-q", "x": [1.0, 2.0, 3.0]}) + "\n")
    target = f"127.0.0.1:{quantile_client.port}"
    assert cli.main(["predict", str(path), "--target", target]) == 0
    (out,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [q["level"] for q in out["quantiles"]] == [0.1, 0.5, 0.9]
    assert out["quantiles"][1]["yhat"] == out["yhat"]


def test_serve_loads_a_quantile_model_and_swaps_to_it_from_a_point_one(tmp_path):
    """The registry watcher's smoke test takes the head's width, levels and all."""
    from streamcell.service.reload import ModelWatcher

    make_quantile_model(tmp_path, levels=(), version="v1")
    watcher = ModelWatcher(tmp_path, "m", poll_s=0)
    point = watcher.newer(None)
    assert point is not None and point.config.quantile_levels == ()
    make_quantile_model(tmp_path, version="v2")
    loaded = watcher.newer("v1")
    assert loaded is not None and loaded.config.quantile_levels == LEVELS
    p = Predictor(point)
    p.predict(EventBatch.of(["s"], _xs(6, 1)), now=1.0)
    assert p.swap(loaded) is False  # the state's layout differs: streams start afresh
    r = p.predict(EventBatch.of(["s"], _xs(7, 1)), now=1.0)
    assert r.quantiles is not None and r.events.tolist() == [1]
