"""History features: one function, the same bits one stream at a time or many at once."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamcell.core.recipe import Recipe, RecipeError, advance, featurize, new_buffers

recipes = st.builds(
    Recipe,
    target=st.just(0),
    width=st.integers(1, 3),
    lags=st.lists(st.integers(1, 30), min_size=1, max_size=6, unique=True).map(tuple),
    scale_window=st.integers(0, 30),
    log_scale=st.just(False),
    periods=st.lists(st.integers(2, 24), max_size=2, unique=True).map(tuple),
    age=st.booleans(),
).map(
    lambda r: Recipe(
        target=r.target,
        width=r.width,
        lags=r.lags,
        scale_window=r.scale_window,
        log_scale=r.scale_window > 0,
        periods=r.periods,
        age=r.age,
    )
)


def by_definition(recipe: Recipe, x: np.ndarray) -> np.ndarray:
    """The formulas of the module's docstring, written out directly over the whole series."""
    x = x.astype(np.float64)
    y = x[:, recipe.target]
    rows = []
    for t in range(len(x)):
        n = t + 1
        if recipe.scale_window:
            recent = np.abs(y[max(0, n - recipe.scale_window) : n])
            s = max(recent.mean(), recipe.scale_floor)
        else:
            s = 1.0
        row = [x[t, k] for k in range(recipe.width) if k != recipe.target]
        row += [y[n - lag] / s if n - lag >= 0 else 0.0 for lag in recipe.lags]
        row += [math.log(s)] if recipe.log_scale else []
        for p in recipe.periods:
            row += [math.sin(2 * math.pi * (n % p) / p), math.cos(2 * math.pi * (n % p) / p)]
        row += [math.log1p(n)] if recipe.age else []
        rows.append(row)
    return np.array(rows)


@settings(max_examples=60, deadline=None)
@given(recipe=recipes, length=st.integers(1, 80), seed=st.integers(0, 2**31 - 1))
def test_features_match_their_definition(recipe: Recipe, length: int, seed: int) -> None:
    x = (np.random.default_rng(seed).standard_normal((length, recipe.width)) * 50).astype(
        np.float32
    )
    features, _ = featurize(recipe, x)
    np.testing.assert_allclose(features, by_definition(recipe, x), rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(recipe=recipes, seed=st.integers(0, 2**31 - 1))
def test_streams_advanced_together_get_the_bits_of_one_at_a_time(recipe: Recipe, seed: int) -> None:
    """Serving steps many streams per call, each at its own age; training one series."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 60, size=5)
    series = [
        (rng.standard_normal((n, recipe.width)) * rng.uniform(0.01, 1e3)).astype(np.float32)
        for n in lengths
    ]
    expected = [featurize(recipe, s) for s in series]
    ring = new_buffers(recipe, len(series))
    seen = np.zeros(len(series), dtype=np.int64)
    got: list[list[np.ndarray]] = [[] for _ in series]
    # Each round, a random subset of the streams that still have events steps once.
    while any(seen[k] < lengths[k] for k in range(len(series))):
        live = [k for k in range(len(series)) if seen[k] < lengths[k]]
        size = rng.integers(1, len(live) + 1)
        wave = np.array(sorted(rng.choice(live, size=size, replace=False)))
        x = np.stack([series[k][seen[k]] for k in wave])
        part = ring[wave]
        features, scale = advance(recipe, part, seen[wave], x)
        ring[wave] = part
        for j, k in enumerate(wave):
            got[k].append(np.r_[features[j], scale[j]])
        seen[wave] += 1
    for k, (features, scale) in enumerate(expected):
        np.testing.assert_array_equal(np.array(got[k]), np.c_[features, scale])


def test_the_ring_keeps_exactly_the_values_the_lags_need() -> None:
    recipe = Recipe(target=0, width=1, lags=(1, 3), scale_window=0)
    x = np.arange(1, 11, dtype=np.float32)[:, None]
    features, _ = featurize(recipe, x)
    assert recipe.buffer_size == 3
    assert features[:, 0].tolist() == list(range(1, 11))
    assert features[:, 1].tolist() == [0, 0, *range(1, 9)]


def test_the_scale_floor_holds_for_a_silent_stream() -> None:
    recipe = Recipe(target=0, width=1, lags=(1,), scale_window=4, log_scale=True, scale_floor=0.5)
    features, scale = featurize(recipe, np.zeros((6, 1), dtype=np.float32))
    assert scale.tolist() == [0.5] * 6
    assert np.allclose(features[:, 1], math.log(0.5))


def test_names_follow_the_order_of_the_features() -> None:
    recipe = Recipe(
        target=1, width=2, lags=(1, 12), scale_window=12, log_scale=True, periods=(12,), age=True
    )
    names = recipe.feature_names(["temp", "load"])
    assert names == (
        "temp",
        "lag_1",
        "lag_12",
        "log_scale",
        "season_sin_12",
        "season_cos_12",
        "age",
    )
    assert len(names) == recipe.num_features


def test_config_json_round_trips() -> None:
    recipe = Recipe(target=0, width=1, lags=(1, 2, 12), scale_window=12, log_scale=True)
    assert Recipe.from_json(recipe.to_json(), width=1, scale_floor=1e-3) == recipe


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ([1, 2], "recipe must be an object"),
        ({"lags": [1]}, "recipe.target"),
        ({"target": 0, "lags": [0]}, "recipe.lags"),
        ({"target": 0, "lags": "1,2"}, "recipe.lags"),
        ({"target": 0, "lags": [1, 1]}, "recipe.lags"),
        ({"target": 0, "lags": [10_001]}, "recipe.lags"),
        ({"target": 2}, "recipe.target"),
        ({"target": 0, "scale_window": -1}, "recipe.scale_window"),
        ({"target": 0, "log_scale": True}, "recipe.log_scale"),
        ({"target": 0, "periods": [1]}, "recipe.periods"),
        ({"target": 0, "age": 1}, "recipe.age"),
        ({"target": 0, "version": 9}, "recipe.version"),
        ({"target": 0, "lag": [1]}, "unknown fields ['lag']"),
    ],
)
def test_a_bad_recipe_names_its_field(raw: object, field: str) -> None:
    with pytest.raises(RecipeError, match=field.replace("[", r"\[").replace("]", r"\]")):
        Recipe.from_json(raw, width=1, scale_floor=1e-3)
