"""A flat window served as its value (recipe version 2, streamcell.core.recipe.level).

A stream whose last ``scale_window`` values are all one value c (a
discontinued product's zeros, a stuck sensor) has nothing for a
scale-normalised model to scale: version 2 serves every output of such a row
as c, with zero width, on every path (the Predictor, a Forecast's direct head,
its fed-back median and sample paths, calibrated or not); version 1 serves
exactly as before.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from recipe_support import make_recipe_model, seasonal_series

from streamcell.core.checkpoint import load_checkpoint
from streamcell.core.events import EventBatch
from streamcell.core.predictor import Predictor
from streamcell.core.recipe import Recipe, RecipeError, advance, level, levels, new_buffers

WINDOW = 6
RECIPE = {
    "target": 0,
    "lags": [1, 2, 12],
    "scale_window": WINDOW,
    "log_scale": True,
    "periods": [12],
}
LEVELS = (0.1, 0.5, 0.9)
CALIBRATION = {
    "online": [1.7, 1.0, 0.6],
    "forecast": [[0.5, 1.0, 0.5], [2.0, 1.0, 3.0]],
    "adaptive": {"gamma": 0.2},
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def then_flat(value: float, flat: int = 20, history: int = 30) -> np.ndarray:
    """Seasonal history, then ``flat`` events of exactly ``value``: ``[T, 1]``."""
    return np.concatenate([seasonal_series(history), np.full((flat, 1), value, np.float32)])


def replay(version: int, tmp_path: Path, x: np.ndarray, **head) -> tuple[Predictor, list]:
    path = make_recipe_model(
        tmp_path / f"v{version}", {**RECIPE, "version": version}, features=("y",), **head
    )
    p = Predictor(load_checkpoint(path))
    out = [
        p.predict(EventBatch.of(["s"], x[k : k + 1], np.array([k])), now=0.0) for k in range(len(x))
    ]
    return p, out


def first_flat_row(x: np.ndarray) -> int:
    """The first event after which the last WINDOW values are equal."""
    flat = levels(Recipe(target=0, width=1, scale_window=WINDOW), x[:, 0])
    assert flat is not None
    return int(np.flatnonzero(~np.isnan(flat))[0])


@pytest.mark.parametrize("value", [0.0, 57.25, -3.5])
def test_version_1_serves_a_flat_stream_off_its_value(tmp_path, value):
    """The flaw version 2 fixes: the head's output times the scale is not the value."""
    x = then_flat(value)
    _, out = replay(1, tmp_path, x, quantile_levels=LEVELS)
    last = out[-1]
    assert last.yhat[0, 0] != np.float32(value)
    lo, hi = last.quantiles[0, 0, 0], last.quantiles[0, 2, 0]
    assert hi > lo  # a width, with nothing to scale it


@pytest.mark.parametrize("value", [0.0, 57.25, -3.5])
@pytest.mark.parametrize("head", [{}, {"quantile_levels": LEVELS}, {"calibration": CALIBRATION}])
def test_version_2_serves_a_flat_window_as_its_value_with_zero_width(tmp_path, value, head):
    if "calibration" in head:
        head = {"quantile_levels": LEVELS, **head}
    x = then_flat(value)
    start = first_flat_row(x)
    p1, old = replay(1, tmp_path, x, **head)
    p2, new = replay(2, tmp_path, x, **head)
    for k, (a, b) in enumerate(zip(old, new, strict=True)):
        if k < start:  # a window that moves: the bits of version 1
            assert a.yhat.tobytes() == b.yhat.tobytes(), k
            if a.quantiles is not None:
                assert a.quantiles.tobytes() == b.quantiles.tobytes(), k
        else:
            assert b.yhat[0, 0] == np.float32(value), k
            if b.quantiles is not None:
                assert (b.quantiles == np.float32(value)).all(), k
    # The state (h, c, the history) is the same in both versions: only the output moved.
    h1, c1 = p1.store.gather(np.array([p1.store.slot_of("s")]))
    h2, c2 = p2.store.gather(np.array([p2.store.slot_of("s")]))
    assert h1.numpy().tobytes() == h2.numpy().tobytes()
    assert c1.numpy().tobytes() == c2.numpy().tobytes()


def test_a_flat_streams_actuals_are_all_inside(tmp_path):
    """Scored online: the zeros fall inside every interval once the window is flat."""
    x = then_flat(0.0, flat=30)
    start = first_flat_row(x)
    _, new = replay(2, tmp_path, x, quantile_levels=LEVELS)
    scored = [r.scores for r in new[start + 1 :]]
    assert all(s is not None and s.scored == 1 and s.inside.tolist() == [1] for s in scored)
    assert all(float(s.pinball.sum()) == 0.0 for s in scored)


@pytest.mark.parametrize("horizon", [1, 4])
@pytest.mark.parametrize("value", [0.0, 57.25])
def test_a_forecast_from_a_flat_window_is_its_value(tmp_path, horizon, value):
    """Direct head, fed-back median, sample paths beyond the head, calibrated per step."""
    x = then_flat(value)
    head = {"horizon": horizon, "quantile_levels": LEVELS, "calibration": CALIBRATION}
    p2, _ = replay(2, tmp_path, x, **head)
    made = p2.forecast_result("s", 11)
    assert made.quantiles is not None
    assert (made.yhat == np.float32(value)).all()
    assert (made.quantiles == np.float32(value)).all()
    p1, _ = replay(1, tmp_path, x, **head)
    assert (p1.forecast_result("s", 11).yhat != np.float32(value)).any()


@pytest.mark.parametrize("horizon", [1, 4])
def test_a_forecast_from_a_moving_window_is_version_1s(tmp_path, horizon):
    """Paths that reach a flat window are held there; those that do not keep their bits."""
    x = seasonal_series(40)
    head = {"horizon": horizon, "quantile_levels": LEVELS, "calibration": CALIBRATION}
    p1, _ = replay(1, tmp_path, x, **head)
    p2, _ = replay(2, tmp_path, x, **head)
    a, b = p1.forecast_result("s", 13), p2.forecast_result("s", 13)
    assert a.yhat.tobytes() == b.yhat.tobytes()
    assert a.quantiles is not None and b.quantiles is not None
    assert a.quantiles.tobytes() == b.quantiles.tobytes()


def test_the_point_forecast_of_a_one_step_head_is_held_too(tmp_path):
    x = then_flat(0.0)
    p2, _ = replay(2, tmp_path, x)
    assert (p2.forecast("s", 7) == 0).all()


# --------------------------------------------------------------- the rule itself
def flat_series(rng: np.random.Generator, length: int) -> np.ndarray:
    """Runs of repeated values (zeros among them) between noise: ``[length, 1]``."""
    out = []
    while len(out) < length:
        kind = rng.integers(3)
        run = int(rng.integers(1, 15))
        if kind == 0:
            out += rng.normal(0, 10, run).tolist()
        else:
            out += [0.0 if kind == 1 else float(rng.normal(0, 10))] * run
    return np.asarray(out[:length], np.float32)[:, None]


@settings(max_examples=60, deadline=None)
@given(
    window=st.integers(0, 12),
    extra_lag=st.integers(1, 20),
    version=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**31 - 1),
)
def test_levels_of_a_whole_series_are_the_bits_of_the_ring(window, extra_lag, version, seed):
    """Training and the offline scorer take ``levels`` over a whole series; serving takes
    ``level`` from each wave's rings, streams at different ages side by side."""
    recipe = Recipe(
        target=0,
        width=1,
        lags=(1, extra_lag) if extra_lag > 1 else (1,),
        scale_window=window,
        log_scale=window > 0,
        version=version,
    )
    rng = np.random.default_rng(seed)
    series = [flat_series(rng, int(rng.integers(1, 60))) for _ in range(4)]
    ring = new_buffers(recipe, len(series))
    seen = np.zeros(len(series), dtype=np.int64)
    got: list[list[float]] = [[] for _ in series]
    while any(seen[k] < len(series[k]) for k in range(len(series))):
        live = [k for k in range(len(series)) if seen[k] < len(series[k])]
        wave = np.array(sorted(rng.choice(live, size=int(rng.integers(1, len(live) + 1)))))
        wave = np.unique(wave)
        part = ring[wave]
        advance(recipe, part, seen[wave], np.stack([series[k][seen[k]] for k in wave]))
        at = level(recipe, part, seen[wave] + 1)
        ring[wave] = part
        for j, k in enumerate(wave):
            got[k].append(np.nan if at is None else float(at[j]))
        seen[wave] += 1
    for k, s in enumerate(series):
        want = levels(recipe, s[:, 0])
        expected = np.full(len(s), np.nan) if want is None else want.astype(np.float64)
        np.testing.assert_array_equal(np.array(got[k]), expected)
        # By definition: the last `window` values exist and are all the newest.
        y = s[:, 0]
        for t in range(len(y)):
            n = t + 1
            flat = (
                version == 2 and window >= 2 and n >= window and (y[n - window : n] == y[t]).all()
            )
            assert (not np.isnan(expected[t])) == flat
            if flat:
                assert expected[t] == y[t]


def test_a_version_is_written_and_read_and_a_missing_one_means_1():
    recipe = Recipe(target=0, width=1, lags=(1, 12), scale_window=12, log_scale=True)
    raw = recipe.to_json()
    assert raw["version"] == 2
    assert Recipe.from_json(raw, width=1, scale_floor=1e-3) == recipe
    old = {k: v for k, v in raw.items() if k != "version"}
    assert Recipe.from_json(old, width=1, scale_floor=1e-3).version == 1
    assert Recipe.from_json({**raw, "version": 1}, width=1, scale_floor=1e-3).version == 1
    for bad in (0, 3, True, "2"):
        with pytest.raises(RecipeError, match=r"recipe\.version"):
            Recipe.from_json({**raw, "version": bad}, width=1, scale_floor=1e-3)


def test_state_carries_over_between_the_versions(tmp_path):
    """The versions' features and state are the same: a swap keeps the streams."""
    configs = [
        load_checkpoint(
            make_recipe_model(tmp_path / f"v{v}", {**RECIPE, "version": v}, features=("y",))
        ).config
        for v in (1, 2)
    ]
    assert configs[0].architecture() == configs[1].architecture()
    assert configs[0].history != configs[1].history


def test_a_flat_run_leaves_the_adaptive_width_where_it_was(tmp_path):
    """Zero-width intervals say nothing of the width: a long run of zeros does not
    shrink it to its floor for the values after it (core.adaptive.moved)."""
    x = then_flat(0.0, flat=60)
    start = first_flat_row(x)
    p, _ = replay(2, tmp_path, x[: start + 1], quantile_levels=LEVELS, calibration=CALIBRATION)
    assert p.store.width is not None
    slot = p.store.slot_of("s")
    before = p.store.width[slot].copy()
    for k in range(start + 1, len(x)):
        p.predict(EventBatch.of(["s"], x[k : k + 1], np.array([k])), now=0.0)
    assert p.store.width[slot].tobytes() == before.tobytes()
    p1, _ = replay(1, tmp_path, x, quantile_levels=LEVELS, calibration=CALIBRATION)
    assert p1.store.width is not None
    assert p1.store.width[p1.store.slot_of("s")][0] != before[0]  # version 1 moved it
