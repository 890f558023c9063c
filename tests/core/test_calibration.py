"""Calibrated quantiles as served, the Predictor's and a Forecast's (core.calibration)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from recipe_support import make_recipe_model, seasonal_series

from streamcell.core.calibration import Calibration, widen
from streamcell.core.checkpoint import CONFIG_FILE, load_checkpoint
from streamcell.core.errors import CheckpointError
from streamcell.core.events import EventBatch
from streamcell.core.model import rowwise_linear
from streamcell.core.predictor import Predictor

RECIPE = {"target": 0, "lags": [1, 2, 12], "scale_window": 4, "log_scale": True, "periods": [12]}
LEVELS = (0.1, 0.5, 0.9)
ONLINE = [1.7, 1.0, 0.6]  # the lower level widened, the upper narrowed
TABLE = [[0.5, 1.0, 0.5], [2.0, 1.0, 3.0], [1.5, 1.0, 1.2]]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def predictor(tmp_path: Path, calibration: dict | None, horizon: int = 1) -> Predictor:
    path = make_recipe_model(
        tmp_path,
        RECIPE,
        features=("y",),
        horizon=horizon,
        quantile_levels=LEVELS,
        calibration=calibration,
    )
    return Predictor(load_checkpoint(path))


def replay(p: Predictor, x: np.ndarray) -> np.ndarray:
    """The quantiles served after each event, ``[T, levels, 1]``."""
    out = [
        p.predict(EventBatch.of(["s"], x[k : k + 1], np.array([k])), now=0.0).quantiles
        for k in range(len(x))
    ]
    return np.concatenate(out)


def by_hand(raw: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """``m + a (q - m)`` on sorted quantiles ``[N, levels, 1]`` (float32), sorted again."""
    m = raw[:, 1:2]
    return np.sort(m + factors[:, :, None].astype(np.float32) * (raw - m), axis=1)


def test_the_predictor_serves_the_online_factors_about_an_unmoved_median(tmp_path):
    x = seasonal_series()
    raw = replay(predictor(tmp_path / "raw", None), x)
    cal = predictor(tmp_path / "cal", {"online": ONLINE, "forecast": TABLE})
    got = replay(cal, x)
    np.testing.assert_allclose(got, by_hand(raw, np.array([ONLINE])), rtol=1e-6)
    np.testing.assert_array_equal(got[:, 1], raw[:, 1])  # the median, yhat, is unchanged
    assert (np.diff(got, axis=1) >= 0).all()
    # The lower bound moved away from the median, the upper one towards it.
    assert (got[:, 0] <= raw[:, 0]).all() and (got[:, 2] <= raw[:, 2]).all()


@torch.no_grad()
def test_a_config_without_calibration_serves_exactly_as_before(tmp_path):
    path = make_recipe_model(tmp_path, RECIPE, features=("y",), quantile_levels=LEVELS)
    assert "calibration" not in json.loads((path / CONFIG_FILE).read_text())
    p = Predictor(load_checkpoint(path))
    assert p.config.calibration_table is None
    got = replay(p, seasonal_series(20))
    # The head's step 1 at the stream's state, de-normalised and sorted: nothing more.
    slot = p.store.slot_of("s")
    h = p.store.gather(np.array([slot]))[0]
    net, cfg = p.loaded.model, p.loaded.config
    y = rowwise_linear(h[-1], net.head.weight, net.head.bias)[0, :3]
    raw = ((y * cfg.target_std[0] + cfg.target_mean[0]) * float(p.store.scale[slot])).sort()
    np.testing.assert_array_equal(got[-1, :, 0], raw.values.numpy())


@pytest.mark.parametrize("horizon", [1, 4])
def test_a_forecast_applies_its_table_row_by_step_and_the_last_beyond(tmp_path, horizon):
    x = seasonal_series()
    raw_p = predictor(tmp_path / "raw", None, horizon)
    cal_p = predictor(tmp_path / "cal", {"online": ONLINE, "forecast": TABLE}, horizon)
    for p in (raw_p, cal_p):
        replay(p, x)
    steps = 7
    raw = raw_p.forecast_result("s", steps)
    got = cal_p.forecast_result("s", steps)
    assert raw.quantiles is not None and got.quantiles is not None
    rows = np.array([TABLE[min(k, len(TABLE) - 1)] for k in range(steps)])
    np.testing.assert_allclose(got.quantiles, by_hand(raw.quantiles, rows), rtol=1e-6)
    np.testing.assert_array_equal(got.yhat, raw.yhat)  # the point path does not move
    # Replayed: the same bytes.
    again = predictor(tmp_path / "again", {"online": ONLINE, "forecast": TABLE}, horizon)
    replay(again, x)
    assert again.forecast_result("s", steps).quantiles.tobytes() == got.quantiles.tobytes()


def test_an_empty_forecast_table_leaves_a_forecast_as_the_head_gives_it(tmp_path):
    x = seasonal_series(20)
    raw_p = predictor(tmp_path / "raw", None)
    cal_p = predictor(tmp_path / "cal", {"online": ONLINE, "forecast": []})
    online = [replay(p, x) for p in (raw_p, cal_p)]
    assert online[0].tobytes() != online[1].tobytes()
    a, b = (p.forecast_result("s", 5).quantiles for p in (raw_p, cal_p))
    assert a.tobytes() == b.tobytes()


def test_replayed_events_serve_byte_identical_calibrated_quantiles(tmp_path):
    x = seasonal_series(30)
    cal = {"online": ONLINE, "forecast": TABLE}
    first = replay(predictor(tmp_path / "a", cal), x)
    second = replay(predictor(tmp_path / "b", cal), x)
    assert first.tobytes() == second.tobytes()


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ([1.0, 1.0], "calibration"),
        ({"online": [1.0, 1.0]}, r"calibration\.online has 2 factors"),
        ({"online": [1.0, float("nan"), 1.0]}, r"calibration\.online"),
        ({"online": [1.0, 1.0, -0.5]}, r"calibration\.online"),
        ({"online": [1.0, True, 1.0]}, r"calibration\.online"),
        ({"online": [1.0, 1.0, 1.0], "forecast": [[1.0, 1.0]]}, r"calibration\.forecast\[0\]"),
        ({"online": [1, 1, 1], "forecast": [[1, 1, 1], [1, "2", 1]]}, r"forecast\[1\]"),
        ({"online": [1, 1, 1], "forecast": {"1": [1, 1, 1]}}, r"calibration\.forecast"),
        ({"online": [1, 1, 1], "scale": 2}, "calibration has unknown fields"),
        ({"forecast": []}, r"calibration\.online"),
    ],
)
def test_a_bad_calibration_is_refused_by_name(tmp_path, value, named):
    path = make_recipe_model(tmp_path, RECIPE, features=("y",), quantile_levels=LEVELS)
    raw = json.loads((path / CONFIG_FILE).read_text())
    raw["calibration"] = value
    (path / CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=named):
        load_checkpoint(path)


def test_a_point_head_cannot_carry_a_calibration(tmp_path):
    path = make_recipe_model(tmp_path, RECIPE, features=("y",))
    raw = json.loads((path / CONFIG_FILE).read_text())
    raw["calibration"] = {"online": [1.0]}
    (path / CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="calibration needs quantile_levels"):
        load_checkpoint(path)


def test_steps_beyond_the_table_take_its_last_row():
    table = Calibration((1.0, 1.0, 1.0), ((2.0, 1.0, 2.0), (3.0, 1.0, 4.0)))
    got = table.step_factors(4)
    assert got is not None
    np.testing.assert_array_equal(got[:, 2], [2.0, 4.0, 4.0, 4.0])
    assert Calibration((1.0, 1.0, 1.0), ()).step_factors(3) is None


def test_widen_keeps_the_median_and_sorts_crossing_levels():
    q = torch.tensor([[[1.0], [2.0], [3.0], [4.0], [5.0]]])  # m = 3
    got = widen(q, torch.tensor([[3.0], [0.5], [1.0], [0.2], [1.0]]), median=2)
    # Raw: -3, 2.5, 3, 3.2, 5: already sorted; with 0.1 as the first factor it crosses.
    np.testing.assert_allclose(got[0, :, 0].numpy(), [-3.0, 2.5, 3.0, 3.2, 5.0])
    crossed = widen(q, torch.tensor([[0.1], [1.0], [1.0], [1.0], [1.0]]), median=2)
    np.testing.assert_allclose(crossed[0, :, 0].numpy(), [2.0, 2.8, 3.0, 4.0, 5.0])
