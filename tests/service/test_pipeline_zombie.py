"""A zombie replica: frozen (SIGSTOP) until the group evicts it, then resumed.

Kafka Streams' EosIntegrationTest and the issue's fencing case: while one
replica is frozen past its session timeout the other takes its partitions,
restores them and goes on processing; the frozen one, resumed, may still
hold predictions and changelog snapshots it took before the freeze. It must
learn that it lost its partitions, drop them without writing anything for
them, and no record it did write may win over the new owner's: every
prediction and every stream's final state equals the uninterrupted run.
"""

from __future__ import annotations

import signal
import time

import pytest
from pipeline_support import (
    Feeder,
    Offline,
    Serve,
    Topics,
    events,
    load,
    make_model,
    read_all,
    serve_args,
    wait_committed,
    wait_for_predictions,
)

from streamcell.service.kafka import KafkaClientConfig

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

STREAMS, STEPS, PARTITIONS = 8, 100, 2  # fed for 10 s or more: through the takeover


def test_a_replica_frozen_until_evicted_writes_nothing_that_wins(
    kafka_bootstrap, kafka_client, tmp_path
):
    cfg = KafkaClientConfig(kafka_bootstrap, client=kafka_client)
    topics = Topics("zombie")
    topics.create(cfg, PARTITIONS)
    version = make_model(tmp_path / "reg")
    feeder = Feeder(cfg, topics.input, events(STREAMS, STEPS), chunk=STREAMS, interval_s=0.1)
    zombie = Serve(
        tmp_path / "zombie.log", serve_args(kafka_bootstrap, kafka_client, tmp_path / "reg", topics)
    )
    # The other waits for its model in a registry of its own: it joins within a
    # second of getting it, with no start-up time to wait for.
    (tmp_path / "other").mkdir()
    other = Serve(
        tmp_path / "other.log",
        serve_args(kafka_bootstrap, kafka_client, tmp_path / "other", topics),
    )
    try:
        zombie.wait_assigned()
        other.wait_for("no loadable version")
        make_model(tmp_path / "other", version=version.name)  # the same model
        other.wait_for(r"partitions assigned: \[\d\]")
        zombie.wait_for(r"partitions assigned: \[\d\]")
        feeder.start()
        time.sleep(1.0)  # both process; the zombie has checkpoints in flight
        zombie.proc.send_signal(signal.SIGSTOP)
        try:
            # Evicted after its session timeout: the other takes both partitions.
            other.wait_for(r"partitions assigned: \[0, 1\]", timeout_s=60)
            time.sleep(1.5)  # ... and moves them on past what the zombie holds
        finally:
            zombie.proc.send_signal(signal.SIGCONT)
        zombie.wait_for(r"partitions lost \(this replica fell out of the group\)", 30)
        feeder.finish()
        out = wait_for_predictions(
            cfg, topics.output, PARTITIONS, STREAMS * STEPS, serving=[zombie, other]
        )
        wait_committed(cfg, topics, PARTITIONS, STREAMS * STEPS, zombie, other)
        assert other.terminate() == 0
        assert zombie.terminate() == 0
    finally:
        feeder.join(5)
        zombie.stop()
        other.stop()
    inputs = read_all(cfg, topics.input, PARTITIONS)
    assert len(inputs) == STREAMS * STEPS
    offline = Offline(load(version), inputs)
    offline.check_predictions(out)
    offline.check_changelog(read_all(cfg, topics.changelog, PARTITIONS))
