"""Exactness across crashes and rebalances, on the real broker (docs/ARCHITECTURE.md, guarantee 1).

Events are produced at a steady pace while `streamcell serve` is SIGKILLed at
random moments and restarted, or while a second replica joins and leaves the
group. Afterwards: every event has a prediction; each prediction, and every
duplicate of it, is byte-identical to the model run offline without
interruption; the changelog's final state of every stream equals the offline
one (h, c, and a lag model's history ring and scale). Both run with a plain
model for each installed Kafka client, and with a lag model (a recipe) for
one: the client carries records, never state, and the suite's time counts.

The plain model runs with room in memory for 3 of the 8 streams, so nearly
every event loads its stream from the cold tier on disk and spills another:
the reference is still the model run with unlimited capacity. Between the
kills the SIGKILL test also deletes the state directory once and corrupts it
once; each start detects that, says so, and rebuilds the tier from the
changelog. The lag model runs with every stream in memory.
"""

from __future__ import annotations

import random
import re
import shutil
import time
from pathlib import Path

import pytest
from pipeline_support import (
    CLIENT,
    LAG_RECIPE,
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

STREAMS, STEPS, PARTITIONS = 8, 48, 2
MODELS = pytest.mark.parametrize("recipe", [None, LAG_RECIPE], ids=["plain", "lag"])
HOT = 3  # the plain model's room in memory: fewer than STREAMS


def hot_capacity(recipe: dict | None) -> list[str]:
    return ["--max-streams", str(HOT)] if recipe is None else []


def spoil(state_dir: Path, how: str) -> None:
    """Delete the state directory a killed replica left, or corrupt its database."""
    if how == "delete":
        shutil.rmtree(state_dir)
        return
    for f in (state_dir / "cold").iterdir():
        if f.name.startswith(("CURRENT", "MANIFEST")):
            f.write_bytes(b"not a manifest")


def one_client_for_lags(kafka_client: str, recipe: dict | None) -> None:
    if recipe is not None and kafka_client != CLIENT:
        pytest.skip(f"the lag model runs with {CLIENT} only (the client never touches state)")


def check_exact(cfg: KafkaClientConfig, topics: Topics, version: Path, out) -> Offline:
    inputs = read_all(cfg, topics.input, PARTITIONS)
    assert len(inputs) == STREAMS * STEPS
    offline = Offline(load(version), inputs)
    offline.check_predictions(out)
    offline.check_changelog(read_all(cfg, topics.changelog, PARTITIONS))
    return offline


@MODELS
def test_sigkill_at_random_moments_loses_nothing_and_stays_exact(
    kafka_bootstrap, kafka_client, tmp_path, recipe
):
    one_client_for_lags(kafka_client, recipe)
    seed = random.randrange(1 << 30)
    print(f"kill schedule seed: {seed}")
    rng = random.Random(seed)
    cfg = KafkaClientConfig(kafka_bootstrap, client=kafka_client)
    topics = Topics("crash")
    topics.create(cfg, PARTITIONS)
    version = make_model(tmp_path / "reg", recipe=recipe)
    args = serve_args(
        kafka_bootstrap, kafka_client, tmp_path / "reg", topics, *hot_capacity(recipe)
    )
    log = tmp_path / "serve.log"
    feeder = Feeder(cfg, topics.input, events(STREAMS, STEPS), chunk=STREAMS, interval_s=0.2)
    serve = Serve(log, args)
    try:
        serve.wait_assigned()
        feeder.start()
        for spoiled in ("delete", "corrupt", None):
            time.sleep(rng.uniform(0.2, 1.5))
            serve.kill()
            if spoiled is not None:
                spoil(log.with_suffix(".state"), spoiled)
            serve = Serve(log, args)
            serve.wait_assigned()
        feeder.finish()
        out = wait_for_predictions(cfg, topics.output, PARTITIONS, STREAMS * STEPS, serving=[serve])
        # The last replica may start with events its killed predecessor predicted
        # but never committed: it reads them again before the changelog is final.
        wait_committed(cfg, topics, PARTITIONS, STREAMS * STEPS, serve)
        assert serve.terminate() == 0
    finally:
        feeder.join(5)
        serve.stop()
    check_exact(cfg, topics, version, out)
    text = log.read_text()
    assert text.count("partitions assigned") >= 4
    restored = [int(n) for n in re.findall(r"restored from \S+: (\d+) streams", text)]
    assert sum(restored) > 0, "no restart restored any state from the changelog"
    assert "empty: a first start, or the directory was lost" in text
    assert re.search(r"the cold tier in \S+ was corrupt: removed; it is rebuilt", text)
    assert "an earlier process's copy was wiped" in text
    if recipe is None:
        cold = [int(n) for n in re.findall(r"(\d+) of them to the cold tier", text)]
        assert sum(cold) > 0, "no restart put restored streams in the cold tier"


@MODELS
def test_replica_joining_and_leaving_keeps_state_exact(
    kafka_bootstrap, kafka_client, tmp_path, recipe
):
    one_client_for_lags(kafka_client, recipe)
    cfg = KafkaClientConfig(kafka_bootstrap, client=kafka_client)
    topics = Topics("rebalance")
    topics.create(cfg, PARTITIONS)
    version = make_model(tmp_path / "reg", recipe=recipe)
    args = serve_args(
        kafka_bootstrap, kafka_client, tmp_path / "reg", topics, *hot_capacity(recipe)
    )
    feeder = Feeder(cfg, topics.input, events(STREAMS, STEPS), chunk=STREAMS, interval_s=0.15)
    first = Serve(tmp_path / "first.log", args)
    second = None
    try:
        first.wait_assigned()
        feeder.start()
        time.sleep(1.0)
        second = Serve(tmp_path / "second.log", args)
        second.wait_for(r"partitions assigned: \[\d\]")  # it took one of the two
        first.wait_for(r"partitions assigned: \[\d\]")
        time.sleep(1.5)
        assert second.terminate() == 0  # leaves the group: the first takes both again
        first.wait_for(r"partitions assigned: \[0, 1\] \(kept in memory: \[\d\]\)")
        feeder.finish()
        out = wait_for_predictions(cfg, topics.output, PARTITIONS, STREAMS * STEPS, serving=[first])
        assert first.terminate() == 0
    finally:
        feeder.join(5)
        first.stop()
        if second is not None:
            second.stop()
    check_exact(cfg, topics, version, out)
    # The second replica really served: some predictions came from it.
    handed = re.findall(r"restored from \S+: (\d+) streams", second.text())
    assert handed and int(handed[0]) > 0
