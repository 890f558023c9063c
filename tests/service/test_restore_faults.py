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

import random
import re
import time
import urllib.request
from datetime import datetime

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
    wait_committed,
)

from streamcell.service.changelog import generation_of as changelog_generation
from streamcell.service.kafka import KafkaClientConfig, installed_clients

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

STREAMS, PARTITIONS = 100_000, 2
LATER = 500  # streams that get two more events after the restores


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
    produce(cfg, topics.input, events(STREAMS, 1))
    serves: list[Serve] = []

    def waiting(name: str) -> Serve:
        """A replica started now that waits for its model (its own empty registry) and
        joins within a second of getting it: no start-up time in the timings below."""
        (tmp_path / name).mkdir()
        flags = ("--max-streams", str(2 * STREAMS))
        serve = Serve(
            tmp_path / f"{name}.log",
            serve_args(kafka_bootstrap, CLIENT, tmp_path / name, topics, *flags),
        )
        serves.append(serve)
        return serve

    def give_model(serve: Serve) -> None:
        serve.wait_for("no loadable version")
        make_model(serve.log_path.with_suffix(""), hidden=4, layers=1, version=version.name)

    try:
        first, killed, restoring, late = (
            waiting(n) for n in ("first", "killed", "restoring", "late")
        )
        # 1. Build the state of 10^5 streams; its checkpoints fill the changelog.
        give_model(first)
        wait_committed(cfg, topics, PARTITIONS, STREAMS, first)
        assert first.terminate() == 0

        # 2. SIGKILL while the next replica is reading that changelog.
        port = int(killed.wait_for(r"metrics on http://[\d.]+:(\d+)/metrics").group(1))
        give_model(killed)
        killed.wait_assigned()
        deadline = time.monotonic() + 30
        while restoring_partitions(port) == 0:
            assert time.monotonic() < deadline, "the restore never started"
            assert "restored from" not in killed.text(), "the restore ended before the kill"
            time.sleep(0.02)
        killed.kill()
        assert "restored from" not in killed.text(), "the kill landed after the restore"

        # 3. A rebalance mid-restore: a second replica joins once the next one began
        # restoring.
        give_model(restoring)
        restoring.wait_assigned()
        give_model(late)
        late.wait_assigned()
        restoring.wait_for(r"partitions revoked")  # the restore was followed by a rebalance
        joined = logged_at(late, "consuming ")
        assert joined < logged_at(restoring, "restored from"), "the join came after the restore"

        # 4. More events for some streams, on both replicas.
        produce(cfg, topics.input, events(LATER, 2, seed=2, first_seq=1))
        total = STREAMS + 2 * LATER
        wait_committed(cfg, topics, PARTITIONS, total, restoring, late)
        assert restoring.terminate() == 0 and late.terminate() == 0
        out = read_all(cfg, topics.output, PARTITIONS)
    finally:
        for serve in serves:
            serve.stop()
    inputs = read_all(cfg, topics.input, PARTITIONS)
    assert len(inputs) == total
    offline = Offline(load(version), inputs)
    offline.check_predictions(out)
    changelog = read_all(cfg, topics.changelog, PARTITIONS)
    # Field by field: the streams with events after the restores, and a sample of
    # the others, whose winning record must still be the one the first replica wrote.
    untouched = [f"s{k}" for k in random.Random(0).sample(range(LATER, STREAMS), 1000)]
    offline.check_changelog(changelog, [f"s{k}" for k in range(LATER)] + untouched)
    first_generation = min(changelog_generation(r.headers) for r in changelog)
    rewritten = {r.key for r in changelog if changelog_generation(r.headers) > first_generation}
    assert not rewritten - {f"s{k}".encode() for k in range(LATER)}
