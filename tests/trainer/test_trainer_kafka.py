"""`--data kafka://TOPIC`: replay the events topic up to its end offsets and train on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streamcell.cli import main
from streamcell.core.checkpoint import load_latest
from streamcell.core.errors import DataError
from streamcell.trainer.kafka_replay import replay_topic
from streamcell.trainer.synthetic import interleaved, noisy_sines

pytestmark = pytest.mark.kafka


@pytest.fixture
def events_topic(kafka_bootstrap: str, unique_name) -> tuple[str, np.ndarray]:
    """A 2-partition topic: 3 streams x 60 events (docs/ARCHITECTURE.md, Events), plus junk."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = unique_name("train-events")
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        admin.close()
    frame = interleaved(noisy_sines(streams=3, length=60, seed=11))
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        for row in frame.itertuples():
            value = {"seq": int(row.seq), "ts": float(row.seq), "x": [float(row.value)]}
            producer.send(topic, key=row.stream.encode(), value=json.dumps(value).encode())
        producer.send(topic, key=b"s0", value=b"{not json")
        producer.send(topic, key=b"s1", value=json.dumps({"x": [1.0, 2.0]}).encode())
        producer.send(topic, key=None, value=json.dumps({"x": [1.0]}).encode())
        producer.flush(30)
    finally:
        producer.close()
    return topic, frame


def test_replay_reads_every_valid_event_in_order(
    kafka_bootstrap: str, events_topic, kafka_client: str
) -> None:
    topic, frame = events_topic
    replay = replay_topic(
        f"kafka://{topic}", kafka_bootstrap, ["value"], timeout_s=60, client=kafka_client
    )
    assert replay.events == 180 and replay.skipped == 3
    got = replay.frame.sort_values(["stream", "seq"]).reset_index(drop=True)
    want = frame.sort_values(["stream", "seq"]).reset_index(drop=True)
    assert got["stream"].tolist() == want["stream"].tolist()
    assert got["seq"].tolist() == want["seq"].tolist()
    np.testing.assert_allclose(got["value"], want["value"])


def test_missing_topic_is_a_data_error(kafka_bootstrap: str, unique_name) -> None:
    with pytest.raises(DataError, match="does not exist"):
        replay_topic(f"kafka://{unique_name('absent')}", kafka_bootstrap, ["value"], timeout_s=10)


def test_cli_trains_from_a_topic(kafka_bootstrap: str, events_topic, tmp_path: Path) -> None:
    topic, _ = events_topic
    registry = tmp_path / "registry"
    code = main(
        [
            "train",
            *("--data", f"kafka://{topic}", "--bootstrap-servers", kafka_bootstrap),
            *("--features", "value", "--registry", str(registry), "--model", "replayed"),
            *("--no-ray", "--threads", "1", "--epochs", "2", "--hidden", "8", "--window", "8"),
            "--allow-worse",  # a tiny model: its skill is not what this test is about
        ]
    )
    assert code == 0
    loaded = load_latest(registry, "replayed")
    assert loaded.config.features == ("value",)
    assert loaded.config.training["rows"] == 180 and loaded.config.training["streams"] == 3
