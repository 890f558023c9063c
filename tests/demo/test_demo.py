"""`streamcell demo` end to end, and its scorecard."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from streamcell.demo.scoring import EtsThread, score


def test_scores_are_one_step_ahead_with_the_seasonal_naive_scale():
    values = np.array([1.0, 2.0, 3.0, 4.0, 6.0, 5.0])  # n_train 4, period 2
    # In-sample seasonal-naive MAE: |3-1|, |4-2| -> 2. Held out: steps 4 and 5.
    predictions = {("s", 3): 5.0, ("s", 4): 5.5}  # forecasts of steps 4 and 5
    got = score([("s", values, 4)], predictions, period=2)
    assert got.mase["streamcell"] == pytest.approx((1.0 + 0.5) / 2 / 2)
    assert got.mase["last value"] == pytest.approx((2.0 + 1.0) / 2 / 2)  # 4 for 6, 6 for 5
    assert got.mase["seasonal naive"] == pytest.approx((3.0 + 1.0) / 2 / 2)  # 3 for 6, 4 for 5
    assert got.scored_steps == 2 and got.streams == 1


def test_a_stream_missing_a_prediction_is_not_scored_unless_partial():
    values = np.array([1.0, 2.0, 3.0, 4.0, 6.0, 5.0])
    only_first = {("s", 3): 5.0}
    assert score([("s", values, 4)], only_first, period=2).streams == 0
    partial = score([("s", values, 4)], only_first, period=2, partial=True)
    assert partial.scored_steps == 1
    assert partial.mase["streamcell"] == pytest.approx(1.0 / 2)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.kafka
def test_demo_runs_to_the_end_and_leaves_no_process(tmp_path):
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    run = subprocess.run(
        [sys.executable, "-m", "streamcell.cli", "demo", "--out", str(out), "--epochs", "2",
         "--step-seconds", "0", "--workers", "2", "--no-ets"],  # ETS: the test below
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for needle in (
        "[6/6] done", "online error on", "seasonal naive", "Forecast(", "metrics",
        "(no ETS beside it: --no-ets)",
    ):  # fmt: skip
        assert needle in run.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predictions"] == summary["events"] > 60_000
    assert (out / "predictions.png").stat().st_size > 10_000
    leftovers = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", f"processes left behind: {leftovers.stdout}"


def test_other_methods_are_scored_on_the_same_streams_only():
    values = np.array([1.0, 2.0, 3.0, 4.0, 6.0, 5.0])
    ours = {("s", 3): 5.0, ("s", 4): 5.5, ("t", 3): 5.0, ("t", 4): 5.5}
    ets = {("s", 3): 6.0, ("s", 4): 5.0}  # nothing for stream t
    got = score([("s", values, 4), ("t", values, 4)], ours, period=2, others={"ETS": ets})
    assert got.streams == 1 and got.mase["ETS"] == pytest.approx(0.0)
    assert got.mase["streamcell"] == pytest.approx((1.0 + 0.5) / 2 / 2)


def test_ets_forecasts_every_held_out_step_one_ahead():
    pytest.importorskip("statsmodels")
    t = np.arange(48, dtype=float)
    seasonal = 10.0 + np.sin(2 * np.pi * t / 4)  # period 4, positive: multiplicative
    short = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # under two seasons: left out
    ets = EtsThread([("s", seasonal, 40), ("short", short, 4)], period=4)
    ets.run()
    assert ets.why == ""
    assert sorted(ets.forecasts) == [("s", k) for k in range(39, 47)]
    errors = [abs(ets.forecasts[("s", k - 1)] - seasonal[k]) for k in range(40, 48)]
    assert max(errors) < 0.1  # a clean season is learnt


@pytest.mark.parametrize("fmt", ["json", "protobuf"])
def test_the_collector_reads_predictions_in_either_format(fmt):
    import time

    from pipeline_fakes import FakeConsumer

    from streamcell.core.events import EventBatch
    from streamcell.demo.run import PredictionCollector
    from streamcell.service.codec import encode_predictions
    from streamcell.service.kafka import Record

    batch = EventBatch.of(["s", "t"], np.zeros((2, 1)), seq=[3, 4], offset=[0, 1])
    yhat = np.array([[5.0], [5.5]], np.float32)
    values = encode_predictions(batch, yhat, np.arange(2), "m", "v", prediction_format=fmt)
    consumer = FakeConsumer([])
    consumer.queue = [[Record("p", 0, k, key, v, 0, ()) for k, (key, v) in enumerate(values)]]
    collector = PredictionCollector(lambda: consumer, "p", fmt)
    collector.start()
    deadline = time.monotonic() + 10
    while len(collector.predictions) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    collector.stop()
    assert collector.error is None
    assert collector.predictions == {("s", 3): 5.0, ("t", 4): 5.5}
