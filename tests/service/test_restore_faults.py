"""Crashes and rebalances in the middle of a large changelog restore (10^5 streams).

Kafka Streams' RestoreIntegrationTest and the issue's restore case. One
replica builds the state of 10^5 tiny streams (hidden 4, one layer, so the
test stays fast) and stops; the next is SIGKILLed while it restores them
(the ``streamcell_changelog_restoring_partitions`` gauge says it is
reading); the one after is joined by a second replica while it restores (a
rebalance mid-restore). Then more events arrive for some streams. Every
prediction, and every stream's final state, equals the uninterrupted run.
"""

from __future__ import annotations

import re
import time
import urllib.request
from datetime import datetime
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
)

from streamcell.service.kafka import KafkaClientConfig, installed_clients, open_consumer

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

STREAMS, PARTITIONS = 100_000, 2
LATER = 500  # streams that get two more events after the restores


def committed_total(cfg: KafkaClientConfig, topics: Topics) -> int:
    consumer = open_consumer(cfg, topics.group)
    try:
        got = consumer.committed([(topics.input, p) for p in range(PARTITIONS)])
    finally:
        consumer.close()
    return sum(o or 0 for o in got.values())


def wait_committed(cfg: KafkaClientConfig, topics: Topics, total: int, *serving: Serve) -> None:
    """Until the group committed ``total`` events (their predictions are out by then)."""
    deadline = time.monotonic() + 120
    while committed_total(cfg, topics) < total:
        for serve in serving:
            assert serve.proc.poll() is None, f"serve exited:\n{serve.text()[-3000:]}"
        assert time.monotonic() < deadline, f"the group never committed {total} events"
        time.sleep(0.5)


def restoring_partitions(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(r"^streamcell_changelog_restoring_partitions (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def logged_at(serve: Serve, pattern: str) -> datetime:
    """The time of the first log line matching ``pattern``."""
    m = re.search(r"^(\S+ \S+) .*" + pattern, serve.text(), re.M)
    assert m, f"no {pattern!r} in {serve.log_path}"
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")


def test_sigkill_and_rebalance_mid_restore_of_1e5_streams_end_exact(kafka_bootstrap, tmp_path):
    # The test's own reads and writes of 10^5 records: the faster client where installed.
    fast = "confluent" if "confluent" in installed_clients() else CLIENT
    cfg = KafkaClientConfig(kafka_bootstrap, client=fast)
    topics = Topics("restore")
    topics.create(cfg, PARTITIONS)
    version = make_model(tmp_path / "reg", hidden=4, layers=1)
    args = serve_args(
        kafka_bootstrap, CLIENT, tmp_path / "reg", topics, "--max-streams", str(2 * STREAMS)
    )
    produce(cfg, topics.input, events(STREAMS, 1))
    serves: list[Serve] = []
    try:
        # The replica of step 3 waits for its model from the start (so that it joins
        # within a second once it gets it).
        empty = tmp_path / "reg-late"
        empty.mkdir()
        late_args = serve_args(
            kafka_bootstrap, CLIENT, empty, topics, "--max-streams", str(2 * STREAMS)
        )
        late = Serve(tmp_path / "late.log", late_args)
        serves.append(late)

        # 1. Build the state of 10^5 streams; its checkpoints fill the changelog.
        first = Serve(tmp_path / "first.log", args)
        serves.append(first)
        wait_committed(cfg, topics, STREAMS, first)
        assert first.terminate() == 0

        # 2. SIGKILL while the next replica is reading that changelog.
        killed = Serve(tmp_path / "killed.log", args)
        serves.append(killed)
        port = int(killed.wait_for(r"metrics on http://[\d.]+:(\d+)/metrics").group(1))
        killed.wait_assigned()
        deadline = time.monotonic() + 30
        while restoring_partitions(port) == 0:
            assert time.monotonic() < deadline, "the restore never started"
            assert "restored from" not in killed.text(), "the restore ended before the kill"
            time.sleep(0.02)
        killed.kill()
        assert "restored from" not in killed.text(), "the kill landed after the restore"

        # 3. A rebalance mid-restore: the second replica gets its model once the
        # first one began restoring.
        late.wait_for("no loadable version")
        restoring = Serve(tmp_path / "restoring.log", args)
        serves.append(restoring)
        restoring.wait_assigned()
        make_model(empty, hidden=4, layers=1, version=Path(version).name)  # the same model
        late.wait_assigned()
        restoring.wait_for(r"partitions revoked")  # the restore was followed by a rebalance
        joined = logged_at(late, "consuming ")
        assert joined < logged_at(restoring, "restored from"), "the join came after the restore"

        # 4. More events for some streams, on both replicas.
        produce(cfg, topics.input, events(LATER, 2, seed=2, first_seq=1))
        total = STREAMS + 2 * LATER
        wait_committed(cfg, topics, total, restoring, late)
        assert restoring.terminate() == 0 and late.terminate() == 0
        out = read_all(cfg, topics.output, PARTITIONS)
    finally:
        for serve in serves:
            serve.stop()
    inputs = read_all(cfg, topics.input, PARTITIONS)
    assert len(inputs) == total
    offline = Offline(load(version), inputs)
    offline.check_predictions(out)
    offline.check_changelog(read_all(cfg, topics.changelog, PARTITIONS))
