"""`streamcell serve` end to end against the real broker (a subprocess per replica).

N streams x M events in -> exactly N x M predictions out, each byte-equal to
the model run offline on the same events (which itself matches torch.nn.LSTM);
bad events land in the dead-letter topic with their reasons while the good
ones flow on; SIGTERM commits and exits 0; a model reload happens without a
restart; the state in memory stays within --max-streams, the rest in the
cold tier, exact.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import urllib.request
from pathlib import Path

import pytest
from pipeline_support import (
    CLIENT,
    Offline,
    Serve,
    Topics,
    events,
    load,
    make_model,
    produce,
    read_all,
    serve_args,
    wait_for_predictions,
)

from streamcell.service.kafka import KafkaClientConfig, open_consumer

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

BAD = [
    (b"s0", b"{this is not json", "bad_json"),
    (b"s1", json.dumps({"x": [1.0, 2.0]}).encode(), "wrong_length"),
    (b"s2", b'{"x": [1.0, NaN, 2.0]}', "non_finite"),
    (None, json.dumps({"x": [1.0, 2.0, 3.0]}).encode(), "missing_key"),
]


def committed(cfg: KafkaClientConfig, group: str, topic: str, partitions: int) -> dict:
    consumer = open_consumer(cfg, group)
    try:
        got = consumer.committed([(topic, p) for p in range(partitions)])
    finally:
        consumer.close()
    return {p: got[(topic, p)] for p in range(partitions)}


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found, f"{name} not exported"
    return total


def metrics_port(serve: Serve) -> int:
    return int(serve.wait_for(r"metrics on http://[\d.]+:(\d+)/metrics").group(1))


def test_end_to_end_exact_with_dead_letters(kafka_bootstrap, kafka_client, tmp_path: Path):
    cfg = KafkaClientConfig(kafka_bootstrap, client=kafka_client)
    topics = Topics("e2e")
    version = make_model(tmp_path / "reg")
    serve = Serve(
        tmp_path / "serve.log",
        serve_args(kafka_bootstrap, kafka_client, tmp_path / "reg", topics, "--partitions", "2"),
    )
    try:
        serve.wait_for(f"created topic {re.escape(topics.changelog)} \\(2 partitions, "
                       "cleanup.policy=compact\\)")  # fmt: skip
        serve.wait_assigned()
        good = events(streams=6, steps=20)
        resent = good[:3]  # seq 0 of s0..s2 again: duplicates, counted and skipped
        produce(cfg, topics.input, good[:60] + [(k, v) for k, v, _ in BAD] + good[60:] + resent)
        out = wait_for_predictions(cfg, topics.output, 2, expected=len(good), serving=[serve])
        port = metrics_port(serve)
        assert metric(port, "streamcell_dead_letters_total") == len(BAD)
        dup = 'streamcell_events_total{outcome="duplicate",source="kafka"}'
        for _ in range(50):  # the last batch may still be on its way
            if metric(port, dup) == len(resent):
                break
            time.sleep(0.1)
        assert metric(port, dup) == len(resent)
        assert serve.terminate() == 0
    finally:
        serve.stop()
    inputs = read_all(cfg, topics.input, 2)
    offline = Offline(load(version), inputs)
    offline.check_against_torch_lstm(load(version))
    assert len(offline.expected) == len(good)
    offline.check_predictions(out)
    assert len(out) == len(good)  # no restart: not even duplicates

    dead = read_all(cfg, topics.dead, 2)
    reasons = sorted(dict(r.headers)["reason"].decode() for r in dead)
    assert reasons == sorted(reason for _, _, reason in BAD)
    assert sorted(r.value for r in dead) == sorted(v for _, v, _ in BAD)

    # SIGTERM: the final state is in the changelog and every offset is committed.
    offline.check_changelog(read_all(cfg, topics.changelog, 2))
    ends = {p: 1 + max(r.offset for r in inputs if r.partition == p) for p in (0, 1)}
    assert committed(cfg, topics.group, topics.input, 2) == ends
    assert "pipeline stopped; offsets committed" in serve.text()


def test_model_reload_without_restart(kafka_bootstrap, tmp_path: Path):
    cfg = KafkaClientConfig(kafka_bootstrap, client=CLIENT)
    topics = Topics("reload")
    topics.create(cfg, 1)
    reg = tmp_path / "reg"
    v1 = make_model(reg, seed=1, version="v1")
    serve = Serve(tmp_path / "serve.log", serve_args(kafka_bootstrap, CLIENT, reg, topics))
    phase = [events(4, 5, seed=k, first_seq=5 * k) for k in range(4)]
    try:
        serve.wait_assigned()
        produce(cfg, topics.input, phase[0])
        wait_for_predictions(cfg, topics.output, 1, expected=20, serving=[serve])

        v2 = make_model(reg, seed=2, version="v2")  # same architecture: state kept
        serve.wait_for("switched from version v1 to v2; 4 streams keep their state")
        produce(cfg, topics.input, phase[1])
        wait_for_predictions(cfg, topics.output, 1, expected=40, serving=[serve])

        v3 = make_model(reg, seed=3, hidden=8, version="v3")  # new architecture: reset
        serve.wait_for("switched from version v2 to v3 with another architecture; 4 streams")
        produce(cfg, topics.input, phase[2])
        wait_for_predictions(cfg, topics.output, 1, expected=60, serving=[serve])

        # A broken version (truncated weights) appears atomically, as a trainer writes one.
        broken = make_model(tmp_path / "staging", seed=4, version="v4")
        (broken / "model.safetensors").write_bytes(b"\x00" * 10)
        broken.rename(reg / "m" / "v4")
        serve.wait_for("refusing model m version v4 .*still serving v3")
        produce(cfg, topics.input, phase[3])
        out = wait_for_predictions(cfg, topics.output, 1, expected=80, serving=[serve])
        port = metrics_port(serve)
        assert metric(port, 'streamcell_model_reloads_total{result="state_kept"}') == 1
        assert metric(port, 'streamcell_model_reloads_total{result="state_reset"}') == 1
        assert metric(port, 'streamcell_model_reloads_total{result="failed"}') == 1
        assert serve.terminate() == 0
    finally:
        serve.stop()
    assert len(out) == 80
    out.sort(key=lambda r: r.offset)
    assert [json.loads(r.value)["version"] for r in out] == ["v1"] * 20 + ["v2"] * 20 + ["v3"] * 40
    # The same switches offline: v1, then v2 on the same state, then v3 from zero state.
    inputs = sorted(read_all(cfg, topics.input, 1), key=lambda r: r.offset)
    offline = Offline(load(v1), inputs[:20]).then(load(v2), inputs[20:40])
    offline.then(load(v3), inputs[40:])
    offline.check_predictions(out)


def test_memory_stays_bounded_and_streams_past_it_go_cold(kafka_bootstrap, tmp_path: Path):
    cfg = KafkaClientConfig(kafka_bootstrap, client=CLIENT)
    topics = Topics("memory")
    topics.create(cfg, 1)
    version = make_model(tmp_path / "reg")
    serve = Serve(
        tmp_path / "serve.log",
        serve_args(kafka_bootstrap, CLIENT, tmp_path / "reg", topics,
                   "--max-streams", "8"),
    )  # fmt: skip
    try:
        serve.wait_assigned()
        port = metrics_port(serve)
        produce(cfg, topics.input, events(streams=40, steps=3))
        out = wait_for_predictions(cfg, topics.output, 1, expected=120, serving=[serve])
        assert len(out) == 120
        assert metric(port, "streamcell_active_streams") <= 8
        assert metric(port, "streamcell_state_capacity_streams") <= 8
        assert metric(port, "streamcell_state_hot_streams") <= 8
        assert metric(port, "streamcell_state_cold_streams") >= 32
        assert metric(port, "streamcell_state_spills_total") >= 32
        assert metric(port, "streamcell_state_loads_total") > 0
        assert metric(port, "streamcell_state_cold_bytes") > 0
        assert metric(port, "streamcell_streams_evicted_total") == 0
        assert metric(port, 'streamcell_state_cold_rebuilds_total{found="empty"}') == 1
        assert serve.terminate() == 0
    finally:
        serve.stop()
    # Spilled streams are kept, not forgotten: no tombstones, all 40 exactly as offline.
    records = read_all(cfg, topics.changelog, 1)
    assert all(rec.value is not None for rec in records)
    offline = Offline(load(version), read_all(cfg, topics.input, 1))
    offline.check_predictions(out)
    offline.check_changelog(records)


def test_protobuf_predictions_compressed(kafka_bootstrap, tmp_path: Path):
    """--prediction-format protobuf over an lz4 producer: every prediction as offline, exactly."""
    from streamcell.v1.predictor_pb2 import Prediction

    cfg = KafkaClientConfig(kafka_bootstrap, client=CLIENT)
    topics = Topics("pbout")
    topics.create(cfg, 1)
    version = make_model(tmp_path / "reg")
    extra = ["--prediction-format", "protobuf"]
    if CLIENT == "confluent":  # kafka-python's lz4 needs a package the venv lacks
        extra += ["--producer-compression", "lz4"]
    serve = Serve(
        tmp_path / "serve.log",
        serve_args(kafka_bootstrap, CLIENT, tmp_path / "reg", topics, *extra),
    )
    good = events(3, 4)
    try:
        serve.wait_assigned()
        produce(cfg, topics.input, [*good[:6], (b"s0", b"{not json"), *good[6:]])
        out = wait_for_predictions(
            cfg, topics.output, 1, len(good), serving=[serve], prediction_format="protobuf"
        )
        assert serve.terminate() == 0
    finally:
        serve.stop()
    offline = Offline(load(version), read_all(cfg, topics.input, 1), prediction_format="protobuf")
    offline.check_predictions(out)
    assert len(offline.expected) == len(good)
    assert all(Prediction.FromString(r.value).HasField("offset") for r in out)
    (dead,) = read_all(cfg, topics.dead, 1)
    assert (dict(dead.headers)["reason"], dict(dead.headers)["format"]) == (b"bad_json", b"json")


def test_protobuf_events(kafka_bootstrap, tmp_path: Path):
    from streamcell.v1.event_pb2 import Event

    cfg = KafkaClientConfig(kafka_bootstrap, client=CLIENT)
    topics = Topics("proto")
    topics.create(cfg, 1)
    version = make_model(tmp_path / "reg")
    serve = Serve(
        tmp_path / "serve.log",
        serve_args(kafka_bootstrap, CLIENT, tmp_path / "reg", topics, "--event-format", "protobuf"),
    )
    good = [
        (f"p{s}".encode(), Event(seq=t, x=[0.1 * t, -0.2 * s, 1.0]).SerializeToString())
        for t in range(4)
        for s in range(3)
    ]
    try:
        serve.wait_assigned()
        produce(cfg, topics.input, [*good[:6], (b"p0", b"\xff\xff not protobuf"), *good[6:]])
        out = wait_for_predictions(cfg, topics.output, 1, expected=len(good), serving=[serve])
        assert serve.terminate() == 0
    finally:
        serve.stop()
    offline = Offline(load(version), read_all(cfg, topics.input, 1), event_format="protobuf")
    offline.check_predictions(out)
    assert len(offline.expected) == len(good)
    (dead,) = read_all(cfg, topics.dead, 1)
    assert dict(dead.headers)["reason"] == b"bad_protobuf"


def test_grpc_writes_share_state_with_kafka_and_reach_the_changelog(kafka_bootstrap, tmp_path):
    from streamcell.core.state import StateStore
    from streamcell.service.client import Client
    from streamcell.service.ownership import murmur2_partition

    cfg = KafkaClientConfig(kafka_bootstrap, client=CLIENT)
    topics = Topics("grpc")
    topics.create(cfg, 2)
    make_model(tmp_path / "reg")
    serve = Serve(
        tmp_path / "serve.log", serve_args(kafka_bootstrap, CLIENT, tmp_path / "reg", topics)
    )
    try:
        port = int(serve.wait_for(r"gRPC listening on [\d.]+:(\d+)").group(1))
        serve.wait_assigned()
        produce(cfg, topics.input, events(streams=3, steps=4))
        wait_for_predictions(cfg, topics.output, 2, expected=12, serving=[serve])
        with Client(f"127.0.0.1:{port}", timeout=10) as client:
            assert client.get_stream("s0").events == 4  # the state Kafka built
            client.predict("s0", [0.5, 0.5, 0.5], seq=100)
            client.delete_stream("s1")
            client.predict("fresh", [1.0, 2.0, 3.0])
        assert serve.terminate() == 0
    finally:
        serve.stop()
    latest: dict[str, tuple[int, bytes | None]] = {}
    for rec in sorted(read_all(cfg, topics.changelog, 2), key=lambda r: (r.partition, r.offset)):
        latest[rec.key.decode()] = (rec.partition, rec.value)
    assert latest["s1"][1] is None  # DeleteStream: a tombstone
    assert latest["fresh"][0] == murmur2_partition(b"fresh", 2)
    store = StateStore(2, 16, 3, 3)
    store.restore((k, v) for k, (_, v) in latest.items() if v is not None)
    assert store.info("s0").events == 5 and store.info("s0").seq == 100
    assert store.info("fresh").events == 1 and store.info("s2").events == 4


def test_a_record_too_large_to_dead_letter_whole_does_not_stop_serve(
    kafka_bootstrap, kafka_client, tmp_path: Path
):
    """An 8.5 MB record that is not an event, between 100 good ones: over the
    producer's 8 MiB request limit, it used to fail its dead-letter send and
    stop serve at the same record on every restart (guarantee 4)."""
    cfg = KafkaClientConfig(kafka_bootstrap, client=kafka_client)
    topics = Topics("poison")
    topics.create(cfg, 1)
    version = make_model(tmp_path / "reg")
    serve = Serve(
        tmp_path / "serve.log", serve_args(kafka_bootstrap, kafka_client, tmp_path / "reg", topics)
    )
    poison = b"\x00not an event " * (8_500_000 // 14)
    good = events(streams=5, steps=20)
    try:
        serve.wait_assigned()
        big = dataclasses.replace(cfg, max_request_bytes=16 * 1024 * 1024)
        produce(big, topics.input, [*good[:50], (b"s0", poison), *good[50:]])
        out = wait_for_predictions(cfg, topics.output, 1, expected=len(good), serving=[serve])
        assert serve.proc.poll() is None  # still serving
        assert serve.terminate() == 0
    finally:
        serve.stop()
    offline = Offline(load(version), read_all(cfg, topics.input, 1))
    assert len(offline.expected) == len(good)
    offline.check_predictions(out)
    assert len(out) == len(good)

    (dead,) = read_all(cfg, topics.dead, 1)
    headers = dict(dead.headers)
    assert headers["reason"] == b"bad_json"
    assert headers["truncated"] == b"true"
    assert headers["original-size"] == str(len(poison)).encode()
    assert headers["source_offset"] == b"50"
    assert dead.key == b"s0"
    assert dead.value == poison[: 1_000_000 - len(b"s0")]  # the --dead-letter-max-bytes default
    assert "dead-lettered" in serve.text() and "truncated" in serve.text()
