"""Forecast with a direct multi-horizon head and a quantile head (ARCHITECTURE: the head)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from recipe_support import make_recipe_model, seasonal_series

from streamcell.core.checkpoint import CONFIG_FILE, LoadedModel, load_checkpoint
from streamcell.core.errors import CheckpointError
from streamcell.core.events import EventBatch
from streamcell.core.forecast import (
    Normaliser,
    Origin,
    run,
    run_many,
    seed_of,
    shifted_quantiles,
)
from streamcell.core.model import rowwise_linear
from streamcell.core.predictor import Predictor
from streamcell.core.recipe import advance

RECIPE = {"target": 0, "lags": [1, 2, 12], "scale_window": 4, "log_scale": True, "periods": [12]}
LEVELS = (0.1, 0.5, 0.9)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def served(tmp_path: Path, x: np.ndarray, **head) -> Predictor:
    loaded = load_checkpoint(make_recipe_model(tmp_path, RECIPE, features=("y",), **head))
    predictor = Predictor(loaded)
    for k in range(len(x)):
        predictor.predict(EventBatch.of(["s"], x[k : k + 1], np.array([k])), now=0.0)
    return predictor


@torch.no_grad()
def by_hand(
    loaded: LoadedModel, x: np.ndarray, horizon: int, first_only: bool = False
) -> np.ndarray:
    """Replay the stream from zero, then read the head's steps and feed its medians back
    (the median of each step's levels sorted, as the Predictor serves them); with
    ``first_only`` the head's first step alone, one step at a time."""
    cfg, net = loaded.config, loaded.model
    recipe = cfg.history
    assert recipe is not None
    mean, std = torch.tensor(cfg.input_mean), torch.tensor(cfg.input_std)
    ring = np.zeros((1, recipe.buffer_size), np.float32)
    h, c = net.zero_state(1)
    scale = np.ones(1, np.float32)
    seen = 0
    for value in x[:, 0]:
        f, scale = advance(recipe, ring, np.array([seen]), np.array([[value]], np.float32))
        out = net.step((torch.from_numpy(f) - mean) / std, h, c)
        h, c, seen = out.h, out.c, seen + 1
    mid = cfg.quantile_levels.index(0.5) if cfg.quantile_levels else 0
    path: list[np.float32] = []
    while True:
        y = rowwise_linear(h[-1], net.head.weight, net.head.bias)
        y = y.reshape(cfg.horizon, cfg.n_levels).sort(dim=1).values[:, mid]  # sorted, as served
        y = y[:1] if first_only else y
        chunk = ((y * cfg.target_std[0] + cfg.target_mean[0]) * torch.from_numpy(scale)).numpy()
        path.extend(chunk)
        if len(path) >= horizon:
            return np.asarray(path[:horizon], np.float32)
        for value in chunk:
            f, scale = advance(recipe, ring, np.array([seen]), np.array([[value]], np.float32))
            out = net.step((torch.from_numpy(f) - mean) / std, h, c)
            h, c, seen = out.h, out.c, seen + 1


@pytest.mark.parametrize("levels", [(), LEVELS])
def test_direct_head_forecast_is_the_heads_outputs_fed_back_in_chunks(
    tmp_path: Path, levels: tuple[float, ...]
) -> None:
    x = seasonal_series()
    predictor = served(tmp_path, x, horizon=5, quantile_levels=levels)
    # Within the head's horizon, beyond it (two chunks and a part), and one step.
    for horizon in (3, 5, 13, 1):
        got = predictor.forecast("s", horizon)
        np.testing.assert_array_equal(got[:, 0], by_hand(predictor.loaded, x, horizon))


def blended(tmp_path: Path, x: np.ndarray, levels: tuple[float, ...]) -> Predictor:
    """A direct head of 5 steps whose config.json asks for the blend."""
    path = make_recipe_model(tmp_path, RECIPE, features=("y",), horizon=5, quantile_levels=levels)
    raw = json.loads((path / CONFIG_FILE).read_text())
    raw["forecast_blend"] = True
    (path / CONFIG_FILE).write_text(json.dumps(raw))
    predictor = Predictor(load_checkpoint(path))
    for k in range(len(x)):
        predictor.predict(EventBatch.of(["s"], x[k : k + 1], np.array([k])), now=0.0)
    return predictor


@pytest.mark.parametrize("levels", [(), LEVELS])
def test_a_blended_forecast_is_the_mean_of_the_chunks_and_step_one_fed_back(
    tmp_path: Path, levels: tuple[float, ...]
) -> None:
    x = seasonal_series()
    predictor = blended(tmp_path, x, levels)
    assert predictor.loaded.config.forecast_blend
    for horizon in (1, 3, 5, 13):
        chunks = by_hand(predictor.loaded, x, horizon)
        fed = by_hand(predictor.loaded, x, horizon, first_only=True)
        got = predictor.forecast_result("s", horizon)
        np.testing.assert_array_equal(got.yhat[:, 0], (0.5 * (chunks + fed)).astype(np.float32))
        assert got.method == ("blend" if horizon > 1 else "direct")
        assert got.yhat[0, 0] == chunks[0]  # step 1 is the head's own in both paths
    # Beyond step 1 the two paths of 13 steps differ, so the blend is neither of them.
    assert not np.array_equal(chunks, fed)


def test_a_blended_forecasts_quantiles_move_with_its_median(tmp_path: Path) -> None:
    x = seasonal_series()
    plain = served(tmp_path / "plain", x, horizon=5, quantile_levels=LEVELS).forecast_result(
        "s", 13
    )
    mixed = blended(tmp_path / "blend", x, LEVELS).forecast_result("s", 13)
    assert plain.quantiles is not None and mixed.quantiles is not None
    shift = mixed.yhat - plain.yhat  # [13, 1]
    assert np.abs(shift[1:]).max() > 0
    np.testing.assert_allclose(mixed.quantiles, plain.quantiles + shift[:, None, :], atol=1e-4)
    assert (np.diff(mixed.quantiles, axis=1) >= 0).all()
    # Within the head's 5 steps the median is the head's own: served as yhat to the bit.
    mid = LEVELS.index(0.5)
    np.testing.assert_array_equal(mixed.quantiles[:5, mid], mixed.yhat[:5])


def test_the_blends_shift_keeps_the_median_exact_and_the_levels_ordered() -> None:
    mid = 1
    direct = np.array([[0.1], [0.3], [5.0]], np.float32)
    yhat = np.array([[0.7], [0.2], [6.0]], np.float32)
    qs = np.array(
        [
            [[0.0], [0.1], [0.2]],  # the head's own step: its median is direct's
            [[0.3], [0.3], [0.3]],  # zero width: shifted, still zero width
            [[4.0], [4.5], [7.0]],  # a sample path's median, not direct's
        ],
        np.float32,
    )
    got = shifted_quantiles(qs, direct, yhat, mid)
    assert got[0, mid, 0] == yhat[0, 0] and got[1, mid, 0] == yhat[1, 0]
    np.testing.assert_allclose(got[2, :, 0], [5.0, 5.5, 8.0], rtol=1e-6)  # moved by +1
    np.testing.assert_allclose(got[0, :, 0], [0.6, 0.7, 0.8], rtol=1e-6)
    assert (np.diff(got, axis=1) >= 0).all()
    # A rounding that would put a level past the median is clipped to it.
    tight = np.array([[[0.1], [0.1], [0.1 + 1e-9]]], np.float32)
    moved = shifted_quantiles(tight, direct[:1], np.array([[1e7 / 3]], np.float32), mid)
    assert (np.diff(moved, axis=1) >= 0).all() and moved[0, mid, 0] == np.float32(1e7 / 3)


def test_a_one_step_quantile_head_feeds_its_median_back(tmp_path: Path) -> None:
    x = seasonal_series()
    predictor = served(tmp_path, x, quantile_levels=LEVELS)
    np.testing.assert_array_equal(predictor.forecast("s", 9)[:, 0], by_hand(predictor.loaded, x, 9))


@pytest.mark.parametrize("horizon", [1, 4])
@torch.no_grad()
def test_quantiles_are_ordered_finite_and_replay_byte_identical(
    tmp_path: Path, horizon: int
) -> None:
    x = seasonal_series()
    predictor = served(tmp_path, x, horizon=horizon, quantile_levels=LEVELS)
    first = predictor.forecast_result("s", 11)
    again = predictor.forecast_result("s", 11)
    assert first.quantiles is not None and again.quantiles is not None
    assert first.quantiles.shape == (11, 3, 1) and first.quantiles.dtype == np.float32
    assert np.isfinite(first.quantiles).all()
    assert (np.diff(first.quantiles, axis=1) >= 0).all()
    assert first.quantiles.tobytes() == again.quantiles.tobytes()
    assert first.yhat.tobytes() == again.yhat.tobytes()
    assert first.method == ("direct" if horizon > 1 else "feedback")
    # A second Predictor fed the same events gives the same bytes (a replica, a replay).
    other = served(tmp_path / "again", x, horizon=horizon, quantile_levels=LEVELS)
    assert other.forecast_result("s", 11).quantiles.tobytes() == first.quantiles.tobytes()
    # The head's own steps are its quantiles at the stream's state.
    width = predictor.loaded.config.head_width
    h = predictor.store.gather(np.array([predictor.store.slot_of("s")]))[0]
    net = predictor.loaded.model
    y = rowwise_linear(h[-1], net.head.weight, net.head.bias).reshape(horizon, 3)
    cfg = predictor.loaded.config
    scale = float(predictor.store.scale[predictor.store.slot_of("s")])
    direct = ((y * cfg.target_std[0] + cfg.target_mean[0]) * scale).sort(dim=1).values
    assert width == horizon * 3
    np.testing.assert_array_equal(first.quantiles[:horizon, :, 0], direct.numpy())


@torch.no_grad()
def test_the_online_prediction_is_step_one_at_the_median(tmp_path: Path) -> None:
    x = seasonal_series(20)
    predictor = served(tmp_path, x, horizon=3, quantile_levels=LEVELS)
    slot = predictor.store.slot_of("s")
    h = predictor.store.gather(np.array([slot]))[0]
    net, cfg = predictor.loaded.model, predictor.loaded.config
    y = rowwise_linear(h[-1], net.head.weight, net.head.bias)[0, :3]  # step 1, every level
    q = (y * cfg.target_std[0] + cfg.target_mean[0]) * float(predictor.store.scale[slot])
    want = q.sort().values[1]  # served sorted: the median is the middle of three
    assert float(predictor.store.yhat[slot, 0]) == float(want)


def test_a_point_checkpoint_writes_no_head_fields(tmp_path: Path) -> None:
    path = make_recipe_model(tmp_path, RECIPE, features=("y",))
    raw = json.loads((path / CONFIG_FILE).read_text())
    assert "quantile_levels" not in raw and "horizon" not in raw
    assert "forecast_blend" not in raw
    cfg = load_checkpoint(path).config
    assert (cfg.quantile_levels, cfg.horizon, cfg.head_width) == ((), 1, 1)
    x = seasonal_series(10)
    predictor = served(tmp_path / "p", x)
    result = predictor.forecast_result("s", 4)
    assert result.quantiles is None and result.method == "feedback"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("horizon", 0),
        ("horizon", "3"),
        ("horizon", 10_000),
        ("quantile_levels", [0.1, 0.9]),
        ("quantile_levels", [0.5, 0.1]),
        ("quantile_levels", [0.0, 0.5]),
        ("quantile_levels", [0.5, 1.0]),
        ("quantile_levels", [0.5, 0.5]),
        ("quantile_levels", ["0.5"]),
        ("quantile_levels", 0.5),
        ("forecast_blend", "yes"),
        ("forecast_blend", True),  # on a one-step head: nothing to blend
    ],
)
def test_a_bad_head_field_is_refused_by_name(tmp_path: Path, field: str, value: object) -> None:
    path = make_recipe_model(tmp_path, RECIPE, features=("y",))
    raw = json.loads((path / CONFIG_FILE).read_text())
    raw[field] = value
    (path / CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=field):
        load_checkpoint(path)


def test_weights_of_another_head_width_are_refused(tmp_path: Path) -> None:
    path = make_recipe_model(tmp_path, RECIPE, features=("y",))
    raw = json.loads((path / CONFIG_FILE).read_text())
    raw["horizon"] = 4
    (path / CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"head\.weight"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("horizon", "levels", "blend"),
    [(1, LEVELS, False), (5, (), False), (5, LEVELS, False), (5, LEVELS, True)],
)
def test_origins_stepped_together_forecast_as_each_alone(
    tmp_path: Path, horizon: int, levels: tuple[float, ...], blend: bool
) -> None:
    path = make_recipe_model(
        tmp_path, RECIPE, features=("y",), horizon=horizon, quantile_levels=levels
    )
    if blend:
        raw = json.loads((path / CONFIG_FILE).read_text())
        raw["forecast_blend"] = True
        (path / CONFIG_FILE).write_text(json.dumps(raw))
    loaded = load_checkpoint(path)
    cfg, recipe = loaded.config, loaded.config.history
    assert recipe is not None
    norm = Normaliser(
        torch.tensor(cfg.input_mean),
        torch.tensor(cfg.input_std),
        torch.tensor(cfg.target_mean),
        torch.tensor(cfg.target_std),
    )
    gen = torch.Generator().manual_seed(3)
    rng = np.random.default_rng(3)
    origins, futures = [], []
    for k in range(7):  # each its own state, age and history; futures of their own lengths
        h, c = (torch.randn(2, 1, 16, generator=gen) for _ in range(2))
        ring = rng.normal(10, 2, (1, recipe.buffer_size)).astype(np.float32)
        scale = torch.rand(1, 1, generator=gen) + 0.5
        origins.append(Origin(h, c, scale * 10, int(rng.integers(1, 60)), ring, scale))
        futures.append(rng.normal(10, 2, (13 - k % 3, 1)).astype(np.float32))
    seeds = [seed_of(f"s{k}", o.count, 13) for k, o in enumerate(origins)]
    together = run_many(loaded, norm, origins, 13, seeds, futures=futures)
    for o, seed, future, got in zip(origins, seeds, futures, together, strict=True):
        alone = run(loaded, norm, o, 13, seed, future=future)
        assert got.method == alone.method
        np.testing.assert_array_equal(got.yhat, alone.yhat)
        if levels:
            assert got.quantiles is not None and alone.quantiles is not None
            np.testing.assert_array_equal(got.quantiles, alone.quantiles)
        else:
            assert got.quantiles is None and alone.quantiles is None
    # The origins differ, so a batch that mixed them up would fail above.
    assert not np.array_equal(together[0].yhat, together[1].yhat)
