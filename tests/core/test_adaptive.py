"""Each stream's adaptive width, as updated and served (core.adaptive)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from recipe_support import make_recipe_model, seasonal_series

from streamcell.core.adaptive import HIGHEST, LOWEST, Adaptive, scaled, updated
from streamcell.core.checkpoint import load_checkpoint
from streamcell.core.errors import CheckpointError
from streamcell.core.events import EventBatch
from streamcell.core.predictor import Predictor
from streamcell.core.quantiles import central_intervals
from streamcell.core.state import StateStore

RECIPE = {"target": 0, "lags": [1, 2, 12], "scale_window": 4, "log_scale": True, "periods": [12]}
LEVELS = (0.1, 0.5, 0.9)
STATIC = {"online": [1.3, 1.0, 0.8], "forecast": [[1.2, 1.0, 1.1]]}
ADAPTIVE = {**STATIC, "adaptive": {"gamma": 0.2}}
OUTER = central_intervals(LEVELS)[0]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def predictor(tmp_path: Path, calibration: dict | None) -> Predictor:
    path = make_recipe_model(
        tmp_path, RECIPE, features=("y",), quantile_levels=LEVELS, calibration=calibration
    )
    return Predictor(load_checkpoint(path))


def noisy_series(length: int = 120, seed: int = 0) -> np.ndarray:
    """A season of 12 on a trend with noise the random head knows nothing of."""
    noise = np.random.default_rng(seed).normal(0, 15, (length, 1)).astype(np.float32)
    return seasonal_series(length) + noise


def replay(p: Predictor, x: np.ndarray, start: int = 0) -> np.ndarray:
    """The quantiles served after each event, ``[T, levels, 1]``."""
    out = [
        p.predict(EventBatch.of(["s"], x[k : k + 1], np.array([start + k])), now=0.0).quantiles
        for k in range(len(x))
    ]
    return np.concatenate(out)


def test_a_miss_widens_and_a_hit_narrows_by_gamma_on_the_log_scale():
    served = np.array([[[1.0], [2.0], [3.0]]] * 3, np.float32)  # [K=3, levels, targets]
    actual = np.array([[0.0], [2.5], [9.0]], np.float32)  # below, inside, above
    got = updated(np.zeros((3, 1), np.float32), served, actual, OUTER, 0.5)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got[:, 0], [0.5 * 0.8, -0.5 * 0.2, 0.5 * 0.8], rtol=1e-6)
    # Bounded: misses without end stop at the highest factor, hits at the lowest.
    high = np.full((3, 1), np.log(HIGHEST), np.float32)
    low = np.full((3, 1), np.log(LOWEST), np.float32)
    assert np.exp(updated(high, served, actual, OUTER, 0.5)).max() <= HIGHEST * (1 + 1e-6)
    assert np.exp(updated(low, served, actual, OUTER, 0.5)).min() >= LOWEST * (1 - 1e-6)


def test_served_quantiles_are_ordered_finite_and_keep_the_median(tmp_path):
    x = noisy_series()
    still = replay(predictor(tmp_path / "static", STATIC), x)
    got = replay(predictor(tmp_path / "adaptive", ADAPTIVE), x)
    assert np.isfinite(got).all()
    assert (np.diff(got, axis=1) >= 0).all()
    np.testing.assert_array_equal(got[:, 1], still[:, 1])  # yhat never moves
    # The first event has no actual scored yet: it is served as the static calibration.
    np.testing.assert_array_equal(got[0], still[0])
    assert not np.array_equal(got[1:], still[1:])


def test_the_width_moves_misses_towards_the_interval_coverage():
    # A hand-made stream: actuals N(0, 1) around a median of 0, served intervals of
    # +-0.5 (a 38% interval where 80% is meant) scaled by the stream's factor.
    rng = np.random.default_rng(0)
    y = rng.normal(0, 1, (4000, 1, 1)).astype(np.float32)
    q = np.array([[[-0.5], [0.0], [0.5]]], np.float32)
    log_w = np.zeros((1, 1), np.float32)
    inside = []
    for t in range(len(y)):
        served = scaled(torch.from_numpy(q), torch.from_numpy(log_w), 1).numpy()
        inside.append(bool(served[0, 0, 0] <= y[t, 0, 0] <= served[0, 2, 0]))
        log_w = updated(log_w, served, y[t], OUTER, 0.05)
    assert np.mean(inside[:100]) < 0.6
    assert abs(np.mean(inside[len(y) // 2 :]) - 0.8) < 0.03
    # The factor found: about the 0.9 quantile of N(0, 1) over 0.5.
    assert 2.0 < float(np.exp(log_w[0, 0])) < 3.2


def test_the_predictor_keeps_and_serves_the_width_its_scored_actuals_give(tmp_path):
    x = noisy_series(60)
    still = replay(predictor(tmp_path / "static", STATIC), x)  # [T, levels, 1]
    p = predictor(tmp_path / "adaptive", ADAPTIVE)
    got = replay(p, x)
    # By hand: each actual scores what was served for it, then the next is scaled.
    log_w = np.zeros((1, 1), np.float32)
    expected = [still[0]]
    for t in range(1, len(x)):
        log_w = updated(log_w, expected[-1][None], x[t : t + 1], OUTER, 0.2)
        expected.append(
            scaled(torch.from_numpy(still[t][None]), torch.from_numpy(log_w), 1)[0].numpy()
        )
    np.testing.assert_array_equal(got, np.stack(expected))
    assert p.info("s").width == (float(np.exp(log_w[0, 0])),)


def test_a_replay_serves_byte_identical_quantiles(tmp_path):
    x = noisy_series(60)
    first = replay(predictor(tmp_path / "a", ADAPTIVE), x)
    second = replay(predictor(tmp_path / "b", ADAPTIVE), x)
    assert first.tobytes() == second.tobytes()


def test_the_width_round_trips_through_snapshot_and_restore(tmp_path):
    x = noisy_series(80)
    whole = predictor(tmp_path / "whole", ADAPTIVE)
    expected = replay(whole, x)
    first = predictor(tmp_path / "first", ADAPTIVE)
    replay(first, x[:50])
    (record,) = first.store.snapshot(["s"])
    assert record[:4] == b"SCS3"
    second = predictor(tmp_path / "second", ADAPTIVE)
    second.store.restore([("s", record)])
    assert second.info("s").width == first.info("s").width != (1.0,)
    rest = replay(second, x[50:], start=50)
    assert rest.tobytes() == expected[50:].tobytes()


def test_state_kept_before_the_width_restores_with_the_width_unmoved(tmp_path):
    x = noisy_series(30)
    before = predictor(tmp_path / "before", STATIC)
    replay(before, x)
    (record,) = before.store.snapshot(["s"])
    assert record[:4] == b"SCS2"
    after = predictor(tmp_path / "after", ADAPTIVE)
    after.store.restore([("s", record)])
    info, old = after.info("s"), before.info("s")
    assert info.width == (1.0,)
    assert info.events == old.events and info.history == old.history
    assert (info.h == old.h).all()
    # And the other way round a width cannot be dropped silently: refused, by name.
    (adaptive_record,) = after.store.snapshot(["s"])
    why = before.store.refusal("s", adaptive_record)
    assert why is not None and "adaptive width" in why


def test_a_calibration_without_adaptive_keeps_no_width_and_serves_as_before(tmp_path):
    p = predictor(tmp_path / "static", STATIC)
    assert p.config.adaptive is None and p.store.width is None
    replay(p, noisy_series(20))
    assert p.info("s").width == ()
    assert p.store.snapshot(["s"])[0][:4] == b"SCS2"


def test_versions_with_and_without_a_width_do_not_share_state(tmp_path):
    static = predictor(tmp_path / "static", STATIC)
    adaptive = predictor(tmp_path / "adaptive", ADAPTIVE)
    assert static.config.architecture() != adaptive.config.architecture()


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ({"gamma": -0.1}, r"adaptive\.gamma"),
        ({"gamma": float("nan")}, r"adaptive\.gamma"),
        ({"gamma": True}, r"adaptive\.gamma"),
        ({}, r"adaptive\.gamma"),
        ({"gamma": 0.1, "rate": 2}, "unknown fields"),
        (0.1, "adaptive must be an object"),
    ],
)
def test_a_bad_adaptive_field_is_refused_by_name(tmp_path, value, named):
    with pytest.raises(CheckpointError, match=named):
        predictor(tmp_path, {**STATIC, "adaptive": value})


def test_the_field_round_trips_through_json():
    assert Adaptive.from_json({"gamma": 0.05}, "x").to_json() == {"gamma": 0.05}


def test_a_store_without_levels_cannot_keep_a_width():
    with pytest.raises(ValueError, match="quantile_levels"):
        StateStore(1, 4, 1, 1, adaptive=True)
