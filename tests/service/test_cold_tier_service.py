"""The cold tier in the service: its flags, its lock at start, its metrics, and its
directory vanishing or replaced while `streamcell serve` runs."""

from __future__ import annotations

import argparse
import re
import shutil
import threading
import time
import urllib.request

import numpy as np
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
    wait_for_predictions,
)
from prometheus_client import generate_latest

from streamcell.core.checkpoint import load_checkpoint
from streamcell.core.coldstore import ColdStore
from streamcell.core.errors import ConfigError
from streamcell.core.events import EventBatch
from streamcell.core.predictor import Predictor
from streamcell.service import flags
from streamcell.service.app import App
from streamcell.service.kafka import KafkaClientConfig
from streamcell.service.metrics import Metrics
from streamcell.service.settings import ServeSettings, StateSettings, default_state_dir


def parse(*argv: str) -> ServeSettings:
    parser = argparse.ArgumentParser()
    flags.add_arguments(parser)
    return flags.from_args(parser.parse_args(["--registry", "r", "--model", "m", *argv]), {})


def test_the_flags_and_their_defaults(tmp_path):
    s = parse("--state-dir", str(tmp_path / "x"), "--state-dir-max-bytes", "2000000")
    assert (s.state.state_dir, s.state.state_dir_max_bytes) == (tmp_path / "x", 2_000_000)
    assert parse().state.state_dir is None
    default = default_state_dir("grp", "m")
    assert default.name == "grp.m" and default.parent.name == "streamcell-state"
    with pytest.raises(ConfigError, match="--state-dir-max-bytes must be at least"):
        StateSettings(state_dir_max_bytes=10)


def test_a_second_replica_on_the_same_state_dir_fails_at_start(tmp_path):
    (tmp_path / "reg").mkdir()
    state = tmp_path / "state"
    holder = ColdStore(state)
    try:
        app = App(parse("--state-dir", str(state), "--no-grpc", "--no-metrics"))
        app.settings = ServeSettings(
            registry=tmp_path / "reg", model="m", state=app.settings.state, grpc=None
        )
        with pytest.raises(ConfigError, match="in use by another process"):
            app.run(threading.Event())
    finally:
        holder.close()


def test_the_tiers_are_scraped(tmp_path):
    loaded = load_checkpoint(make_model(tmp_path / "reg"))
    cold = ColdStore(tmp_path / "state")
    try:
        predictor = Predictor(loaded, max_streams=2, cold=cold)
        metrics = Metrics()
        metrics.watch_tiers(lambda: predictor.tiers)
        x = np.zeros((1, 3), np.float32)
        for k in [0, 1, 2, 3, 0, 1]:
            predictor.predict(EventBatch.of([f"s{k}"], x))
        text = generate_latest(metrics.registry).decode()
    finally:
        cold.close()

    def value(name: str) -> float:
        (line,) = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
        return float(line.split()[1])

    assert value("streamcell_state_hot_streams") == 2
    assert value("streamcell_state_cold_streams") == 2
    assert value("streamcell_state_spills_total") == 4
    assert value("streamcell_state_loads_total") == 2
    assert value("streamcell_state_cold_bytes") > 0
    assert value("streamcell_state_hot_hit_ratio") == 0.0
    assert 'streamcell_state_lookups_total{tier="new"} 4.0' in text
    # every batch had a stream not in memory: six looked in the cold tier
    assert value("streamcell_state_cold_batch_seconds_count") == 6


def wait_until(done, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.kafka
@pytest.mark.slow
def test_a_state_dir_lost_while_serving_is_rebuilt_and_every_stream_stays_exact(
    kafka_bootstrap, kafka_client, tmp_path
):
    streams, steps, partitions = 8, 40, 2
    cfg = KafkaClientConfig(kafka_bootstrap, client=kafka_client)
    topics = Topics("vanish")
    topics.create(cfg, partitions)
    version = make_model(tmp_path / "reg")
    # Room for 3 of the 8 streams: most of them are in the cold tier at any moment.
    args = serve_args(kafka_bootstrap, kafka_client, tmp_path / "reg", topics, "--max-streams", "3")
    log = tmp_path / "serve.log"
    state = log.with_suffix(".state")
    feeder = Feeder(cfg, topics.input, events(streams, steps), chunk=streams, interval_s=0.2)
    serve = Serve(log, args)
    failed = "the cold tier failed while serving"
    try:
        serve.wait_assigned()
        port = int(serve.wait_for(r"metrics on http://[\d.]+:(\d+)/metrics").group(1))
        feeder.start()
        time.sleep(1.5)
        shutil.rmtree(state)  # deleted under the running replica
        serve.wait_for(failed + r" \(.*deleted or replaced")
        wait_until(lambda: serve.text().count("restored from") >= 2)  # rebuilt, serving
        time.sleep(1.0)
        state.rename(tmp_path / "moved.state")  # replaced: another, empty directory there
        state.mkdir()
        wait_until(lambda: serve.text().count(failed) >= 2)
        feeder.finish()
        out = wait_for_predictions(cfg, topics.output, partitions, streams * steps, serving=[serve])
        url = f"http://127.0.0.1:{port}/metrics"
        metrics = urllib.request.urlopen(url, timeout=5).read().decode()
        assert serve.terminate() == 0  # it kept serving: a clean stop, not a crash
    finally:
        feeder.join(5)
        serve.stop()
    inputs = read_all(cfg, topics.input, partitions)
    assert len(inputs) == streams * steps
    offline = Offline(load(version), inputs)
    offline.check_predictions(out)  # every (stream, offset), repeats byte-identical
    offline.check_changelog(read_all(cfg, topics.changelog, partitions))
    text = serve.text()
    assert text.count(failed) == 2
    assert text.count("empty: a first start, or the directory was lost") == 3
    assert text.count("partitions assigned") == 1, "the rebuilds were in the same process"
    restored = re.findall(r"restored from \S+: (\d+) streams", text)
    assert len(restored) >= 3 and sum(map(int, restored[1:])) > 0
    assert 'streamcell_state_cold_rebuilds_total{found="lost"} 2.0' in metrics
