"""The plain training loop (no Ray): stateful TBPTT, serving-identical evaluation, export."""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from streamcell.core.checkpoint import load_latest
from streamcell.core.events import EventBatch
from streamcell.core.predictor import Predictor
from streamcell.trainer.api import (
    TrainSettings,
    export,
    load_long_frame,
    loaded_model,
    prepare_frame,
    train_local,
)
from streamcell.trainer.evaluate import evaluate, predict_streams
from streamcell.trainer.loop import (
    EMA_WARMUP,
    LoopState,
    WeightAverage,
    fit,
    new_model,
    restore_best,
)
from streamcell.trainer.synthetic import interleaved, noisy_sines, square_waves

# One torch thread: small models train many times faster so on a busy 2-core machine.
train = functools.partial(train_local, threads=1)


def replay(predictor: Predictor, frame: pd.DataFrame, features: list[str]) -> dict[str, np.ndarray]:
    """Feed every row through the Predictor in replay order; per stream, yhat after each row."""
    rows = interleaved(frame)
    out: dict[str, list[np.ndarray]] = {}
    for _, step in rows.groupby("seq", sort=True):
        batch = EventBatch.of(
            step["stream"].tolist(), step[features].to_numpy(np.float32), step["seq"].to_numpy()
        )
        res = predictor.predict(batch, now=0.0)
        for s, y in zip(batch.streams, res.yhat, strict=True):
            out.setdefault(s, []).append(y)
    return {s: np.stack(v) for s, v in out.items()}


def test_carrying_state_across_windows_is_what_makes_it_learn() -> None:
    """A flip every 5 steps with windows of 4: only the carried state can know when."""
    data = load_long_frame(square_waves(streams=16, length=300, period=10, seed=0))
    base = dict(hidden=24, layers=1, epochs=15, window=4, batch_size=16, lr=1e-2, seed=0)
    base.update(scaling="global")  # the raw values in: no lags to read the phase from
    carried = train(data, TrainSettings(**base, carry_state=True)).metrics
    reset = train(data, TrainSettings(**base, carry_state=False)).metrics
    # Last value misses every flip (1 step in 5, by 2): MAE about 0.44.
    assert carried["val_mae"] < 0.35 * carried["last_value_mae"], carried
    assert reset["val_mae"] > 3 * carried["val_mae"], (reset, carried)


@pytest.mark.parametrize("scaling", ["global", "stream_mean_abs", "window_mean_abs"])
def test_training_side_validation_equals_the_predictor(scaling: str) -> None:
    frame = noisy_sines(streams=5, length=80, seed=3)
    frame["value"] = frame["value"] * (1 + np.arange(len(frame)) % 5 * 10.0)  # varied sizes
    frame["aux"] = np.cos(frame["seq"] / 3.0) + 2.0
    data = load_long_frame(frame, features=["value", "aux"], targets=["value"])
    settings = TrainSettings(
        hidden=8, layers=2, epochs=2, window=8, scaling=scaling, seed=1, final_fit=False
    )
    result = train(data, settings)
    prepared = prepare_frame(data, settings)
    predictor = Predictor(loaded_model(result))
    served = replay(predictor, frame, ["value", "aux"])
    all_streams = list(range(len(prepared)))
    step = predict_streams(result.model, prepared, all_streams, path="step")
    forward = predict_streams(result.model, prepared, all_streams, path="forward")
    errors = []
    for k, s in enumerate(prepared.streams):
        # Row t of the trainer's forecasts is the Predictor's answer to event t.
        np.testing.assert_allclose(step[k], served[s.stream][:-1], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(forward[k], served[s.stream][:-1], rtol=1e-4, atol=1e-4)
        y = s.y[:, 0]
        errors.append(np.abs(y[s.n_train :] - served[s.stream][s.n_train - 1 : -1, 0]))
    # The exported val MAE is the Predictor's MAE on the validation rows.
    assert result.metrics["val_mae"] == pytest.approx(np.concatenate(errors).mean(), rel=1e-5)
    assert evaluate(result.model, prepared, all_streams).metrics()["val_mae"] == pytest.approx(
        result.metrics["val_mae"], rel=1e-4
    )


def test_validation_metrics_by_hand() -> None:
    frame = noisy_sines(streams=2, length=50, seed=5)
    data = load_long_frame(frame)
    settings = TrainSettings(hidden=4, layers=1, epochs=1, window=8, final_fit=False)
    result = train(data, settings)
    prepared = prepare_frame(data, settings)
    preds = predict_streams(result.model, prepared, [0, 1], path="step")
    abs_err, naive_err, mase, naive_mase = [], [], [], []
    for s, p in zip(prepared.streams, preds, strict=True):
        y = s.y[:, 0].astype(np.float64)
        n = s.n_train
        assert n == 40
        e, ne = np.abs(y[n:] - p[n - 1 :, 0]), np.abs(y[n:] - y[n - 1 : -1])
        scale = np.abs(np.diff(y[:n])).mean()
        abs_err.append(e)
        naive_err.append(ne)
        mase.append(e.mean() / scale)
        naive_mase.append(ne.mean() / scale)
    m = result.metrics
    assert m["val_points"] == 20
    assert m["val_mae"] == pytest.approx(np.concatenate(abs_err).mean(), rel=1e-5)
    assert m["val_rmse"] == pytest.approx(np.sqrt((np.concatenate(abs_err) ** 2).mean()), rel=1e-5)
    assert m["last_value_mae"] == pytest.approx(np.concatenate(naive_err).mean(), rel=1e-9)
    assert m["val_mase"] == pytest.approx(np.mean(mase), rel=1e-5)
    assert m["last_value_mase"] == pytest.approx(np.mean(naive_mase), rel=1e-9)


def test_normalisation_uses_the_training_part_only() -> None:
    frame = noisy_sines(streams=2, length=50, seed=6)
    frame.loc[frame["seq"] >= 40, "value"] += 1000.0  # only in the validation tail
    prepared = prepare_frame(load_long_frame(frame), TrainSettings(window=8, val_fraction=0.2))
    assert abs(float(prepared.norm.input_mean[0])) < 2.0
    assert float(prepared.norm.input_std[0]) < 2.0


def test_early_stopping_keeps_the_best_epoch() -> None:
    data = load_long_frame(noisy_sines(streams=4, length=80, seed=2))
    settings = TrainSettings(hidden=8, layers=1, epochs=30, window=8, lr=0.5, patience=2)
    result = train(data, settings)
    history = result.history
    best = min(history, key=lambda r: r["val_mae"])
    assert result.metrics["epoch"] == best["epoch"]
    assert result.metrics["val_mae"] == pytest.approx(best["val_mae"], rel=1e-4)
    if result.metrics["stopped_early"]:
        assert len(history) == best["epoch"] + 2 < 30


def test_export_writes_a_servable_version(tmp_path: Path) -> None:
    data = load_long_frame(noisy_sines(streams=3, length=60, seed=4))
    settings = TrainSettings(hidden=8, layers=1, epochs=2, window=8, scaling="stream_mean_abs")
    result = train(data, settings)
    path = export(result, tmp_path, "sines")
    loaded = load_latest(tmp_path, "sines")
    assert loaded.path == path
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["scaling"] == "stream_mean_abs" and cfg["features"] == ["value"]
    for key in ("val_mae", "val_rmse", "val_mase", "last_value_mae", "epoch"):
        assert np.isfinite(cfg["metrics"][key])
    training = cfg["training"]
    assert training["data_fingerprint"] == data.fingerprint and len(data.fingerprint) == 64
    assert training["rows"] == 180 and training["streams"] == 3 and training["workers"] == 1
    assert training["args"]["window"] == 8 and training["args"]["stream_column"] == "stream"
    assert training["samples_per_s"] > 0
    for name, tensor in result.model.state_dict().items():
        np.testing.assert_array_equal(tensor.numpy(), loaded.model.state_dict()[name].numpy())


@pytest.mark.parametrize(("streams", "passes"), [(4, 50), (200, 1)])
def test_an_epoch_passes_over_a_small_data_set_until_it_has_enough_updates(
    streams: int, passes: int
) -> None:
    """One update per batch of whole streams (window longer than each): a few streams
    take 50 passes for one epoch of 50 updates (the default); enough for 50 batches, one."""
    data = load_long_frame(noisy_sines(streams=streams, length=30, seed=1))
    settings = TrainSettings(hidden=4, layers=1, epochs=1, window=32, batch_size=4)
    prepared = prepare_frame(data, settings)
    state = fit(new_model(prepared, settings), prepared, settings, shard=list(range(streams)))
    one_pass = sum(s.n_train - 1 for s in prepared.streams)
    assert state.history[0]["samples"] == passes * one_pass


def test_the_moving_average_of_the_weights_by_hand() -> None:
    data = load_long_frame(noisy_sines(streams=2, length=40, seed=5))
    settings = TrainSettings(hidden=4, layers=1, window=8)
    model = new_model(prepare_frame(data, settings), settings)
    ema = WeightAverage(model, 0.9, LoopState())
    p, avg = next(model.parameters()), next(ema.model.parameters())
    expected = p.detach().clone()
    for n in range(30):
        with torch.no_grad():
            p.add_(1.0)
        decay = min(0.9, (1 + n) / (EMA_WARMUP + n))
        expected = decay * expected + (1 - decay) * p.detach()
        ema.update()
    torch.testing.assert_close(avg, expected)
    assert ema.state.ema_updates == 30


def test_weight_averaging_keeps_the_better_of_the_two_on_validation() -> None:
    """The average is validated beside the raw weights, never trained on: the raw
    weights follow the same path as without it, and each epoch keeps the better."""
    data = load_long_frame(noisy_sines(streams=4, length=120, seed=2))
    base = dict(
        hidden=8, layers=1, epochs=6, window=8, lr=0.05, patience=10, final_fit="off", horizon=1
    )
    off = train(data, TrainSettings(**base, weight_average="off"))
    auto = train(data, TrainSettings(**base, weight_average="auto", ema_decay=0.9))
    assert all("weights" not in r for r in off.history)
    for a, o in zip(auto.history, off.history, strict=True):
        assert a["val_mase_raw"] == pytest.approx(o["val_mase"], rel=1e-6)
        assert a["val_mase"] == min(a["val_mase_raw"], a["val_mase_ema"])
        assert a["weights"] == ("ema" if a["val_mase_ema"] < a["val_mase_raw"] else "raw")
    best = min(auto.history, key=lambda r: r["val_mase"])
    assert auto.metrics["val_mase"] == pytest.approx(best["val_mase"], rel=1e-4)
    # Averaging a noisy descent at a high learning rate validates better at some epoch.
    assert any(r["weights"] == "ema" for r in auto.history)


def test_the_kept_average_is_what_the_best_state_holds() -> None:
    data = load_long_frame(noisy_sines(streams=4, length=120, seed=2))
    settings = TrainSettings(hidden=8, layers=1, epochs=4, window=8, lr=0.05, patience=10)
    prepared = prepare_frame(data, settings)
    model = new_model(prepared, settings)
    for mode in ("ema", "auto"):
        state = fit(model, prepared, replace(settings, weight_average=mode), shard=[0, 1, 2, 3])
        kept = restore_best(model, state)
        score = evaluate(kept, prepared, [0, 1, 2, 3]).metrics()["val_mase"]
        assert score == pytest.approx(state.best_score, rel=1e-5)
        if mode == "ema":
            assert all(r["weights"] == "ema" and "val_mase_raw" not in r for r in state.history)


def test_a_direct_head_keeps_its_raw_weights_under_auto() -> None:
    """auto judges the average one step ahead, which is not what a direct head is for."""
    data = load_long_frame(noisy_sines(streams=4, length=120, seed=2))
    base = dict(hidden=8, layers=1, epochs=3, window=8, lr=0.05, final_fit="off", horizon=4)
    auto = train(data, TrainSettings(**base, weight_average="auto"))
    off = train(data, TrainSettings(**base, weight_average="off"))
    assert all("val_mase_ema" not in r and "weights" not in r for r in auto.history)
    assert [r["val_mase"] for r in auto.history] == [r["val_mase"] for r in off.history]
