"""The cold tier in the service: its flags, its lock at start, its metrics."""

from __future__ import annotations

import argparse
import threading

import numpy as np
import pytest
from pipeline_support import make_model
from prometheus_client import generate_latest

from streamcell.core.checkpoint import load_checkpoint
from streamcell.core.coldstore import ColdStore
from streamcell.core.errors import ConfigError
from streamcell.core.events import EventBatch
from streamcell.core.predictor import Predictor
from streamcell.service import flags
from streamcell.service.app import App
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
