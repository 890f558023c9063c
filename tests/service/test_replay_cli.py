"""`streamcell replay` against the real broker: what lands in the topic is what the
file holds, keyed by stream, in each stream's order, decodable by the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streamcell.cli import main
from streamcell.service.codec import decode
from streamcell.service.kafka import KafkaClientConfig, Record, open_admin, open_reader
from streamcell.v1.event_pb2 import Event

pytestmark = pytest.mark.kafka

STREAMS = ("alpha", "beta", "gamma")
STEPS = 6


def write_long_csv(path: Path) -> Path:
    """Long format, grouped by stream (the way files usually come), with a ts column."""
    rows = ["stream,seq,ts,a,b,c"]
    for k, stream in enumerate(STREAMS):
        for t in range(STEPS):
            rows.append(f"{stream},{t},{1000.0 + t},{k + t * 0.5},{-t * 0.25},{t / 3}")
    path.write_text("\n".join(rows) + "\n")
    return path


def read_topic(bootstrap: str, topic: str) -> list[Record]:
    cfg = KafkaClientConfig(bootstrap)
    admin = open_admin(cfg)
    partitions = admin.partitions(topic)
    admin.close()
    assert partitions is not None
    reader = open_reader(cfg)
    try:
        return [
            r for b in reader.read_to_end([(topic, p) for p in range(partitions)], 20) for r in b
        ]
    finally:
        reader.close()


def replay(bootstrap: str, *args: str) -> int:
    return main(["replay", "--bootstrap-servers", bootstrap, *args])


def test_csv_replay_sends_every_row_keyed_in_order(kafka_bootstrap, unique_name, tmp_path, capsys):
    topic = unique_name("replay")
    src = write_long_csv(tmp_path / "events.csv")
    assert replay(kafka_bootstrap, str(src), "--topic", topic, "--rate", "500") == 0
    assert f"replayed {len(STREAMS) * STEPS} events of 3 streams" in capsys.readouterr().out

    records = read_topic(kafka_bootstrap, topic)
    assert len(records) == len(STREAMS) * STEPS
    for k, stream in enumerate(STREAMS):
        mine = sorted((r for r in records if r.key == stream.encode()), key=lambda r: r.offset)
        events = [json.loads(r.value) for r in mine]
        assert [e["seq"] for e in events] == list(range(STEPS))
        assert {e["stream"] for e in events} == {stream}
        assert [e["ts"] for e in events] == [1000.0 + t for t in range(STEPS)]
        expected = [[k + t * 0.5, -t * 0.25, t / 3] for t in range(STEPS)]
        np.testing.assert_array_equal(
            np.array([e["x"] for e in events], np.float32), np.array(expected, np.float32)
        )
    # the pipeline's decoder accepts every one of them
    decoded = decode(records, input_size=3)
    assert not decoded.invalid and len(decoded.batch) == len(records)


def test_limit_and_protobuf(kafka_bootstrap, unique_name, tmp_path):
    topic = unique_name("replay-pb")
    src = write_long_csv(tmp_path / "events.csv")
    assert (
        replay(
            kafka_bootstrap,
            str(src),
            "--topic",
            topic,
            "--event-format",
            "protobuf",
            "--limit",
            "7",
        )
        == 0
    )
    records = read_topic(kafka_bootstrap, topic)
    assert len(records) == 7
    # time order across streams: the first seq values sent are 0,0,0,1,1,1,2
    seqs = sorted(Event.FromString(r.value).seq for r in records)
    assert seqs == [0, 0, 0, 1, 1, 1, 2]
    decoded = decode(records, input_size=3, event_format="protobuf")
    assert not decoded.invalid and sorted(decoded.batch.seq.tolist()) == seqs


def test_json_lines_replay(kafka_bootstrap, unique_name, tmp_path):
    topic = unique_name("replay-jsonl")
    lines = [{"stream": f"s{i % 2}", "seq": i // 2, "x": [float(i), 1.5]} for i in range(10)]
    src = tmp_path / "events.jsonl"
    src.write_text("\n".join(json.dumps(e) for e in lines) + "\n")
    assert replay(kafka_bootstrap, str(src), "--topic", topic, "--partitions", "2") == 0
    records = read_topic(kafka_bootstrap, topic)
    assert sorted(json.loads(r.value)["x"][0] for r in records) == [float(i) for i in range(10)]
    assert all(json.loads(r.value)["stream"] == r.key.decode() for r in records)
    assert open_admin(KafkaClientConfig(kafka_bootstrap)).partitions(topic) == 2


def test_bad_input_is_a_clean_error(kafka_bootstrap, tmp_path, capsys):
    src = write_long_csv(tmp_path / "events.csv")
    assert replay(kafka_bootstrap, str(src), "--stream-column", "nope") == 2
    assert "column 'nope' is missing" in capsys.readouterr().err
    assert replay(kafka_bootstrap, str(tmp_path / "absent.csv")) == 2
    assert "no such file" in capsys.readouterr().err
