"""The trainer's default path: recipe features, found periods, weights, budget, the gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamcell.cli import main
from streamcell.core.checkpoint import load_latest
from streamcell.core.errors import ConfigError
from streamcell.core.recipe import Recipe, featurize
from streamcell.trainer.api import (
    TrainSettings,
    export,
    load_long_frame,
    prepare_frame,
    train_local,
)
from streamcell.trainer.cli import DEFAULT_SEEDS
from streamcell.trainer.evaluate import worse_than_baselines
from streamcell.trainer.loop import LoopState
from streamcell.trainer.periods import (
    CHANGE_SPANS,
    acf_mean,
    acf_noise,
    acf_sums,
    build_recipe,
    calendar_spacing,
    default_lags,
    mean_acf,
    periods_from_acf,
    periods_from_mean_acf,
    periods_from_spacing,
    periods_from_sums,
)
from streamcell.trainer.prepare import featurize_all
from streamcell.trainer.select import SEED_STRIDE, refit_seconds


def seasonal(streams: int, length: int, period: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(streams):
        t = np.arange(length + k * 7)
        level = 50.0 * (k + 1) + 0.05 * t
        y = level * (1 + 0.3 * np.sin(2 * np.pi * t / period)) + rng.normal(0, 1, len(t))
        rows.append(pd.DataFrame({"stream": f"s{k}", "seq": t, "value": y}))
    return pd.concat(rows, ignore_index=True)


def test_training_features_are_serving_bits_for_every_stream() -> None:
    rng = np.random.default_rng(0)
    recipe = Recipe(
        target=1, width=2, lags=(1, 3, 12), scale_window=5, log_scale=True, periods=(4, 7), age=True
    )
    xs = [rng.normal(0, 10, (n, 2)).astype(np.float32) for n in (1, 30, 7, 30, 55)]
    xs[1][:6, 1] = 0.0  # a window of zeros: the scale at its floor
    for x, (features, scale) in zip(xs, featurize_all(recipe, xs), strict=True):
        want_f, want_s = featurize(recipe, x)
        assert features.tobytes() == want_f.tobytes()
        assert scale.tobytes() == want_s.tobytes()


def test_periods_from_timestamps_and_from_the_series() -> None:
    assert periods_from_spacing(30 * 86_400.0) == (12,)
    assert periods_from_spacing(1800.0) == (48, 336)
    assert periods_from_spacing(3600.0) == (24, 168)
    assert periods_from_spacing(92 * 86_400.0) == (4,)
    assert periods_from_spacing(12345.0) is None
    frame = seasonal(streams=6, length=120, period=12, seed=1)
    series = [g["value"].to_numpy() for _, g in frame.groupby("stream")]
    assert periods_from_acf(series) == (12,)
    rng = np.random.default_rng(2)
    assert periods_from_acf([np.cumsum(rng.normal(size=300)) for _ in range(5)]) == ()
    short = (1, 2, 3, 4, 5, 6, 7)
    assert default_lags((12,), longest=100) == (*short, 11, 12, 13, 23, 24, 25, 35, 36, 37)
    assert default_lags((12,), longest=30) == (*short, 11, 12, 13, 23, 24, 25)


def test_a_noisy_short_step_shows_its_day_in_the_change_over_a_few_steps() -> None:
    # Calls counted every 5 minutes in working hours (the nights not in the data, so
    # each day opens on a jump): a day of 169 steps under Poisson noise. The change
    # from one step to the next is mostly noise (its autocorrelation at the day far
    # under the threshold); the change over a few steps shows the day.
    rng = np.random.default_rng(0)
    phase = np.arange(169 * 40) % 169
    y = rng.poisson(60.0 + 200.0 * np.sin(0.2 + 0.8 * np.pi * phase / 169)).astype(float)
    acf = mean_acf([y], 800)
    assert acf.shape == (len(CHANGE_SPANS), 802) and periods_from_mean_acf(acf[0]) == ()
    assert periods_from_acf([y]) == (169,)
    # The Ray Data path sums each stream's share, batch by batch: the same mean and noise.
    other = rng.poisson(90.0, size=len(y) // 2).astype(float)
    parts = [acf_sums(stream, 800) for stream in (y, other)]
    total, count = (sum(p[k] for p in parts) for k in (0, 1))
    np.testing.assert_allclose(acf_mean(total, count), mean_acf([y, other], 800))
    assert periods_from_sums(total, count) == (169,)
    # Bartlett's standard error of the mean over the two, by hand, for the 4-step row.
    row = CHANGE_SPANS.index(4)
    r = acf_mean(total, count)[row]
    lengths = [len(y) - 4, len(other) - 4]
    want = np.sqrt((1 + 2 * (r[1:9] ** 2).sum()) * sum(1 / n for n in lengths)) / 2
    assert acf_noise(total, count)[row] == pytest.approx(want)
    # A random walk has no season at any span.
    assert periods_from_acf([np.cumsum(rng.normal(size=5000))]) == ()


def test_one_short_series_without_a_season_gets_none_by_chance() -> None:
    # One random walk of 100 values: its autocorrelation passes 0.2 at some lag in a
    # quarter of such walks. Of 300 or 1,000, the change over 8 steps does in a third
    # (a sixth). Their standard errors say that is noise.
    for seed in range(20):
        rng = np.random.default_rng(seed)
        for n in (100, 300, 1000):
            walk = np.cumsum(rng.normal(size=n))
            ar = np.zeros(n)
            for t, e in enumerate(rng.normal(size=n - 1), start=1):
                ar[t] = 0.9 * ar[t - 1] + e
            assert periods_from_acf([walk]) == () and periods_from_acf([ar]) == ()


def test_the_longer_season_is_a_week_not_a_fortnight_that_peaks_by_chance() -> None:
    acf = np.zeros(400)
    for lag, value in ((24, 0.62), (48, 0.5), (168, 0.72), (336, 0.73)):
        acf[lag] = value
    assert periods_from_mean_acf(acf) == (24, 168)
    acf[168] = 0.55  # the week no stronger than the day: the fortnight is the season
    assert periods_from_mean_acf(acf) == (24, 336)


def test_recipe_from_monthly_timestamps_and_given_periods() -> None:
    series = [np.arange(60.0)] * 3
    found = build_recipe(
        series, width=1, target=0, spacing=31 * 86_400.0, periods=None, lags=None,
        scale_window=None, age=False, scale_floor=1e-3,
    )  # fmt: skip
    assert found.periods == (12,) and found.scale_window == 12 and 24 in found.lags
    given = build_recipe(
        series, width=1, target=0, spacing=None, periods=(5,), lags=(1, 2), scale_window=3,
        age=True, scale_floor=1e-3,
    )  # fmt: skip
    assert (given.periods, given.lags, given.scale_window, given.age) == ((5,), (1, 2), 3, True)


def test_datetime_order_column_gives_the_spacing() -> None:
    frame = seasonal(streams=2, length=40, period=12, seed=3)
    frame["month"] = pd.Timestamp("2000-01-01") + pd.to_timedelta(frame["seq"] * 30, unit="D")
    data = load_long_frame(frame.drop(columns="seq"), order_column="month")
    assert data.spacing == pytest.approx(30 * 86_400.0)


def test_times_the_rows_do_not_fill_give_no_calendar_periods() -> None:
    # Every 5 minutes, 7:00 to 21:00 on working days: 169 rows a day, not 288.
    days = pd.bdate_range("2003-03-03", periods=30)
    times = [d + pd.Timedelta(hours=7, minutes=5 * k) for d in days for k in range(169)]
    frame = pd.DataFrame({"stream": "calls", "time": times, "value": np.arange(len(times))})
    assert load_long_frame(frame, order_column="time").spacing is None
    # A few hours missing (a sensor down): still hourly.
    hours = pd.date_range("2015-01-01", periods=500, freq="h").delete(range(100, 130))
    frame = pd.DataFrame({"stream": "s", "time": hours, "value": np.arange(len(hours))})
    assert load_long_frame(frame, order_column="time").spacing == 3600.0
    assert calendar_spacing({3600.0: 10, 7200.0: 1}) == 3600.0
    assert calendar_spacing({300.0: 168, 36_000.0: 1}) is None


def test_weights_balance_streams_and_mask_zero_windows() -> None:
    frame = seasonal(streams=3, length=80, period=12, seed=4)
    frame.loc[frame["stream"] == "s2", "value"] *= 1000.0  # a huge stream
    frame.loc[(frame["stream"] == "s0") & (frame["seq"] < 15), "value"] = 0.0
    prepared = prepare_frame(load_long_frame(frame), TrainSettings())
    train_w = np.concatenate([s.weight[: s.n_train - 1] for s in prepared.streams])
    assert train_w.mean() == pytest.approx(1.0, rel=1e-5)
    means = [float(s.weight[20 : s.n_train - 1].mean()) for s in prepared.streams]
    assert max(means) / min(means) < 3  # scale-free: the huge stream does not dominate
    s0 = prepared.streams[0]
    assert (s0.weight[:14] == 0).all()  # a window of zeros: the scaled target is meaningless


def test_default_training_exports_a_recipe_model_with_its_skill(tmp_path: Path) -> None:
    data = load_long_frame(seasonal(streams=4, length=100, period=12, seed=5))
    settings = TrainSettings(hidden=8, layers=1, epochs=3, candidates=({}, {"hidden": 4}))
    result = train_local(data, settings, threads=1)
    m = result.metrics
    for key in ("val_mase", "last_value_mase", "seasonal_naive_mase"):
        assert np.isfinite(m[key])
    assert m["season"] == 12
    selection = result.config.training["selection"]
    assert len(selection["candidates"]) == 2
    assert selection["final_fit"].endswith("averaged with the validated model")  # the default
    path = export(result, tmp_path, "seasonal")
    config = json.loads((path / "config.json").read_text())
    assert config["scaling"] == "window_mean_abs"
    assert config["recipe"]["periods"] == [12] and config["recipe"]["scale_window"] == 12
    loaded = load_latest(tmp_path, "seasonal")
    assert loaded.config.history is not None
    assert loaded.model.input_size == loaded.config.history.num_features


def test_final_fit_and_time_budget() -> None:
    data = load_long_frame(seasonal(streams=3, length=60, period=12, seed=6))
    result = train_local(
        data, TrainSettings(hidden=4, layers=1, epochs=3, final_fit="refit"), threads=1
    )
    assert result.config.training["selection"]["final_fit"].startswith("whole training part")
    assert result.model.hidden_size == 4
    blend = train_local(
        data, TrainSettings(hidden=4, layers=1, epochs=3, final_fit="blend"), threads=1
    )
    assert blend.config.training["selection"]["final_fit"].endswith("with the validated model")
    assert blend.model.hidden_size == 8  # the validated model and the refit, side by side
    assert TrainSettings(final_fit=True).final_fit == "refit"  # the flag of earlier versions
    with pytest.raises(ConfigError, match="final_fit must be one of off, refit, blend"):
        TrainSettings(final_fit="sometimes")
    # A budget that any epoch outlasts (0.01 s fitted two warm epochs): one epoch, then stop.
    quick = train_local(
        data, TrainSettings(hidden=4, layers=1, epochs=50, time_budget=1e-6), threads=1
    )
    assert quick.metrics["epochs_run"] == 1 and quick.history[-1]["out_of_time"]


def test_worse_than_both_baselines_is_named() -> None:
    ok = {"val_mase": 0.9, "last_value_mase": 1.0, "seasonal_naive_mase": 0.8}
    assert worse_than_baselines(ok) is None
    bad = {"val_mase": 1.2, "last_value_mase": 1.0, "seasonal_naive_mase": 1.1}
    assert "1.2000 is worse than both last value (1.0000) and seasonal naive (1.1000)" in (
        worse_than_baselines(bad) or ""
    )


def test_cli_refuses_a_model_worse_than_the_baselines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = _random_walks_csv(tmp_path, seed=7)
    common = ["train", "--data", str(csv), "--registry", str(tmp_path / "reg"), "--model", "w"]
    tiny = ["--no-ray", "--threads", "1", "--epochs", "1", "--hidden", "2", "--lr", "1e-5"]
    code = main([*common, *tiny, "--no-candidates"])
    err = capsys.readouterr().err
    assert code == 2 and "not published" in err and "worse than both last value" in err
    assert not (tmp_path / "reg" / "w").exists()
    assert main([*common, *tiny, "--no-candidates", "--allow-worse"]) == 0
    assert "seasonal naive" in capsys.readouterr().out
    assert load_latest(tmp_path / "reg", "w").config.recipe is not None


class _Rows:
    """A prepared data set reduced to what refit_seconds reads: its training pairs."""

    def __init__(self, pairs: int, whole: int) -> None:
        self.pairs, self.whole_pairs = pairs, whole

    def train_pairs(self) -> int:
        return self.pairs

    def whole(self) -> _Rows:
        return _Rows(self.whole_pairs, self.whole_pairs)


def test_a_refit_is_costed_on_the_budgets_clock_not_the_wall() -> None:
    # Four epochs that took 40 s of the budget's clock but 400 s of wall (a busy machine).
    state = LoopState(epoch=4, best_epoch=3, train_seconds=400.0, fit_budget_seconds=40.0)
    # Per epoch 10 s, on 1.25 times the rows, for the best epoch count (3).
    assert refit_seconds(state, _Rows(800, 1000)) == pytest.approx(37.5)  # type: ignore[arg-type]


def test_cli_weight_average_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = _random_walks_csv(tmp_path, seed=8)
    common = ["train", "--data", str(csv), "--registry", str(tmp_path / "reg"), "--model", "w"]
    tiny = ["--no-ray", "--threads", "1", "--epochs", "2", "--hidden", "2", "--no-candidates"]
    for bad in (["--ema-decay", "1"], ["--ema-decay", "0"], ["--weight-average", "swa"]):
        with pytest.raises(SystemExit) as info:
            main([*common, *tiny, *bad])
        assert info.value.code == 2
    capsys.readouterr()
    flags = ["--weight-average", "ema", "--ema-decay", "0.5", "--allow-worse"]
    assert main([*common, *tiny, *flags]) == 0
    training = load_latest(tmp_path / "reg", "w").config.training
    assert training["args"]["weight_average"] == "ema"
    assert training["args"]["ema_decay"] == 0.5


def test_cli_trains_a_second_seed_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = _random_walks_csv(tmp_path, seed=9)
    common = ["train", "--data", str(csv), "--registry", str(tmp_path / "reg"), "--model", "w"]
    tiny = ["--no-ray", "--threads", "1", "--epochs", "2", "--hidden", "2", "--no-candidates"]
    assert main([*common, *tiny, "--allow-worse"]) == 0
    assert "seeds: the chosen candidate trained 2 times" in capsys.readouterr().out
    training = load_latest(tmp_path / "reg", "w").config.training
    assert training["args"]["seeds"] == DEFAULT_SEEDS == 2
    assert [s["seed"] for s in training["selection"]["seeds"]] == [SEED_STRIDE]
    assert training["selection"]["seeds_average"]["seeds"] == 1
    kept = training["selection"]["seeds_average"]["kept"]
    assert training["selection"]["served"] == {"candidates": [0], "seeds": int(kept)}
    assert main([*common, *tiny, "--allow-worse", "--seeds", "1"]) == 0
    assert "seeds" not in load_latest(tmp_path / "reg", "w").config.training["selection"]
    capsys.readouterr()


def _random_walks_csv(tmp_path: Path, seed: int) -> Path:
    """Three random walks of 80 steps as a training CSV."""
    rng = np.random.default_rng(seed)
    walks = pd.concat(
        pd.DataFrame({"stream": f"w{k}", "seq": range(80), "value": np.cumsum(rng.normal(size=80))})
        for k in range(3)
    )
    csv = tmp_path / "walks.csv"
    walks.to_csv(csv, index=False)
    return csv


def test_validation_holds_a_flat_window_at_its_value_as_serving_does() -> None:
    """Streams that go flat in validation (zeros, a repeated value): the trainer's
    validation and calibration see what the Predictor serves (recipe.level)."""
    from dataclasses import replace

    from streamcell.core.events import EventBatch
    from streamcell.core.predictor import Predictor
    from streamcell.trainer.api import TrainResult, loaded_model
    from streamcell.trainer.evaluate import predict_levels, predict_streams

    frame = seasonal(streams=3, length=90, period=12, seed=7)
    frame.loc[(frame["stream"] == "s0") & (frame["seq"] >= 50), "value"] = 0.0
    frame.loc[(frame["stream"] == "s1") & (frame["seq"] >= 60), "value"] = 123.5
    data = load_long_frame(frame)
    settings = TrainSettings(hidden=8, layers=1, epochs=2, horizon=1, final_fit="off", seed=2)
    result = train_local(data, settings, threads=1)
    assert result.config.history is not None and result.config.history.version == 2
    prepared = prepare_frame(data, settings)
    indices = list(range(len(prepared.streams)))
    points = predict_streams(result.model, prepared, indices, path="step")
    quantiles = predict_levels(result.model, prepared, indices)
    # The head's quantiles as validation sees them: before the calibration it fits.
    raw = TrainResult(result.model, replace(result.config, calibration=None), result.history)
    predictor = Predictor(loaded_model(raw))
    window = result.config.history.scale_window
    for k, s in enumerate(prepared.streams):
        x = frame[frame["stream"] == s.stream]["value"].to_numpy(np.float32)[:, None]
        out = predictor.predict(EventBatch.of([s.stream] * len(x), x), now=0.0)
        assert out.quantiles is not None
        np.testing.assert_allclose(points[k], out.yhat[:-1], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(quantiles[k], out.quantiles[:-1], rtol=1e-5, atol=1e-4)
        if s.stream in ("s0", "s1"):
            start = {"s0": 50, "s1": 60}[s.stream] + window - 1  # the first flat window
            c = np.float32(x[-1, 0])
            assert (points[k][start:] == c).all() and (quantiles[k][start:] == c).all()
            assert (out.quantiles[start:] == c).all()
            assert (points[k][: start - 1] != c).all()
