"""Ray Train end to end: 2 workers, a servable checkpoint, recovery from a worker failure.

One local Ray cluster (2 CPUs) for the module; each test runs a TorchTrainer on it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamcell.cli import main
from streamcell.core.checkpoint import load_latest
from streamcell.core.events import EventBatch
from streamcell.core.predictor import Predictor
from streamcell.trainer import ray_train
from streamcell.trainer.api import TrainSettings, load_long_frame, train_local, train_with_ray
from streamcell.trainer.synthetic import interleaved, noisy_sines

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


def test_cli_trains_with_two_workers_and_the_service_beats_last_value(
    ray_cluster: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full = noisy_sines(streams=8, length=240, period=20, noise=0.1, seed=7)
    csv = tmp_path / "sines.csv"
    interleaved(full[full["seq"] < 200]).to_csv(csv, index=False)  # the last 40 steps held out
    registry = tmp_path / "registry"
    code = main(
        [
            "train",
            *("--data", str(csv), "--registry", str(registry), "--model", "sines"),
            *("--workers", "2", "--gpu", "auto", "--epochs", "12", "--hidden", "16"),
            *("--layers", "1", "--window", "16", "--lr", "0.01", "--batch-size", "8"),
            *("--scaling", "global"),  # the raw values in: the Predictor below serves them
            *("--final-fit", "blend", "--seeds", "1"),  # one run: the blend's width below
        ]
    )
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err
    assert "epoch 1/12: loss" in captured.err  # progress, printed by the driver
    loaded = load_latest(registry, "sines")
    assert f"exported {loaded.path}" in out
    training = loaded.config.training
    assert training["workers"] == 2 and training["device"] == "cpu" and training["streams"] == 8
    assert loaded.config.metrics["val_mae"] < loaded.config.metrics["last_value_mae"]
    # The validated model and its refit on every row, served as one of twice the units.
    assert "final fit: whole training part" in out and "averaged with the validated" in out
    assert "final fit epoch 1/" in captured.err  # the refit's progress, its own epoch count
    assert loaded.config.hidden_size == 32

    predictor = Predictor(loaded)
    rows = interleaved(full)
    yhat = {}
    for seq, step in rows.groupby("seq", sort=True):
        batch = EventBatch.of(step["stream"].tolist(), step[["value"]].to_numpy(np.float32))
        yhat[seq] = dict(
            zip(batch.streams, predictor.predict(batch, now=0.0).yhat[:, 0], strict=True)
        )
    model_err, naive_err = [], []
    for stream, series in full.groupby("stream"):
        y = series.sort_values("seq")["value"].to_numpy()
        for t in range(200, 240):
            model_err.append(abs(y[t] - yhat[t - 1][stream]))
            naive_err.append(abs(y[t] - y[t - 1]))
    assert np.mean(model_err) < 0.7 * np.mean(naive_err), (np.mean(model_err), np.mean(naive_err))


def fail_once_after(epoch: int, marker: Path) -> ray_train.AfterEpoch:
    """A hook that makes the last worker raise once, after ``epoch``'s checkpoint.

    A closure, so Ray pickles it by value into its workers; ``marker`` (a file)
    remembers across the restart that it has failed.
    """

    def hook(done: int, rank: int, world: int) -> None:
        if done == epoch and rank == world - 1 and not marker.exists():
            marker.touch()
            # Rank 0's checkpoint of this epoch is registered when the controller
            # next polls (every 0.2 s, ray_train.RAY_TRAIN_ENV); failing at once let
            # a restart resume from the epoch before (seen once in CI).
            time.sleep(1.0)
            raise RuntimeError(f"injected failure after epoch {done} (test of recovery)")

    return hook


def test_a_worker_failure_resumes_from_the_last_checkpoint(
    ray_cluster: None, tmp_path: Path
) -> None:
    data = load_long_frame(noisy_sines(streams=4, length=120, seed=9))
    # One pass an epoch (epoch_steps=1): the check below is one of float sums, whose
    # rounding differences grow with the steps taken.
    # No final fit: the resumed run is what is compared (a refit is one more Ray run).
    settings = TrainSettings(
        hidden=8, layers=1, epochs=4, window=16, lr=0.01, patience=10, epoch_steps=1,
        final_fit="off",
    )  # fmt: skip
    fail = fail_once_after(2, tmp_path / "failed-once")
    result = ray_train.train(data, settings, workers=2, max_failures=1, after_epoch=fail)
    assert result.config.training["resumed_at_epochs"] == [2]
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    # Equal shards and one batch per shard: DDP's averaged gradient is the local one, so
    # the interrupted 2-worker run lands where one uninterrupted process does.
    local = train_local(data, settings, threads=1)
    assert result.metrics["val_mae"] == pytest.approx(local.metrics["val_mae"], rel=1e-3)
    for a, b in zip(result.history, local.history, strict=True):
        assert a["val_mae"] == pytest.approx(b["val_mae"], rel=1e-3)
    # Ray Train's result is calibrated by the driver as the local one is (trainer.calibrate).
    ours, theirs = result.config.calibration_table, local.config.calibration_table
    assert ours is not None and theirs is not None
    assert len(ours.forecast) == len(theirs.forecast) > 0
    assert "coverage_after" in result.metrics["calibration"]["online"]


def test_shards_are_disjoint_and_cover_every_stream() -> None:
    shards = [ray_train.shard_streams(7, rank, 3) for rank in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(7))
    assert [len(s) for s in shards] == [3, 2, 2]


def test_workers_with_unequal_data_stay_in_step(ray_cluster: None) -> None:
    """Shards of different sizes and lengths: the lighter worker pads with no-op steps."""
    frame = pd.concat(
        [
            noisy_sines(streams=1, length=60, seed=1),
            noisy_sines(streams=1, length=150, seed=2).replace({"stream": {"s0": "s1"}}),
            noisy_sines(streams=1, length=90, seed=3).replace({"stream": {"s0": "s2"}}),
        ]
    )
    data = load_long_frame(frame)
    settings = TrainSettings(
        hidden=8, layers=1, epochs=2, window=8, batch_size=1, epoch_steps=1, final_fit="off"
    )
    result = train_with_ray(data, settings, workers=2)
    assert [r["epoch"] for r in result.history] == [1, 2]
    # Every stream's training points were trained on, once per epoch, across both workers.
    assert result.history[0]["samples"] == result.config.training["train_pairs"]
    assert result.metrics["val_points"] == 12 + 30 + 18


def test_failures_beyond_max_failures_are_reported(ray_cluster: None, tmp_path: Path) -> None:
    data = load_long_frame(noisy_sines(streams=2, length=60, seed=1))
    settings = TrainSettings(hidden=4, layers=1, epochs=2, window=8)
    with pytest.raises(ray_train.TrainingFailed, match="injected failure"):
        fail = fail_once_after(1, tmp_path / "failed-once")
        ray_train.train(data, settings, workers=2, max_failures=0, after_epoch=fail)


def test_candidates_are_chosen_on_ray_as_in_one_process(ray_cluster: None) -> None:
    """The default CLI path (Ray, a recipe): each candidate a Ray Train run, chosen at fixed
    origin, then its final fit, with the record the in-process path writes."""
    data = load_long_frame(noisy_sines(streams=4, length=120, period=12, noise=0.1, seed=5))
    settings = TrainSettings(
        hidden=8,
        layers=1,
        epochs=2,
        window=8,
        epoch_steps=1,
        candidates=({}, {"horizon": 1}),
        online_first_step=False,  # one final fit, not two: three Ray runs in all
    )
    records: list[dict] = []
    result = train_with_ray(data, settings, workers=1, on_epoch=records.append)
    selection = result.config.training["selection"]
    assert selection["chosen_by"] == "val_origin_mase"
    assert {r.get("candidate") for r in records} >= {0, 1}  # each run's progress, told apart
    tried = selection["candidates"]
    assert [c["horizon"] for c in tried] == [24, 1]
    scores = [c["origin_score"] for c in tried]
    assert all(np.isfinite(scores)) and selection["chosen"] == int(np.argmin(scores))
    assert result.config.horizon == (24, 1)[selection["chosen"]]
    assert selection["final_fit"].startswith("whole training part")
    # A final fit blended with the validated model: two members of 8 units.
    assert result.config.hidden_size == 16
    assert result.metrics["val_origin_mase"] == pytest.approx(min(scores), rel=1e-4)


def test_a_chosen_candidates_extra_seed_is_a_ray_run_too(ray_cluster: None) -> None:
    data = load_long_frame(noisy_sines(streams=4, length=120, period=12, noise=0.1, seed=5))
    settings = TrainSettings(
        hidden=8, layers=1, epochs=2, window=8, epoch_steps=1, final_fit="off", seeds=2
    )
    records: list[dict] = []
    result = train_with_ray(data, settings, workers=1, on_epoch=records.append)
    selection = result.config.training["selection"]
    assert [s["seed"] for s in selection["seeds"]] == [1000]
    assert len([r for r in records if r.get("candidate") is None]) >= 1  # the seed's epochs
    kept = selection["seeds_average"]["kept"]
    # Where the average won at fixed origin but the first run alone one step ahead,
    # that run's first step is served beside it (select.first_step_pick).
    first = 8 if "first_step" in selection else 0
    assert result.config.hidden_size == (16 if kept else 8) + first
    assert "first_step" not in selection or kept
