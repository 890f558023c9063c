"""Calibrating quantiles on validation (trainer.calibrate), and training's record of it."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from streamcell.core.calibration import widen
from streamcell.core.checkpoint import ModelConfig
from streamcell.trainer import calibrate
from streamcell.trainer.api import TrainSettings, load_long_frame, prepare_frame, train_local
from streamcell.trainer.calibrate import (
    ADAPTIVE_GAMMA,
    MIN_CELL,
    MIN_POINTS,
    Counts,
    factors,
    from_counts,
    longer_steps,
    pooled,
    spread_origins,
)
from streamcell.trainer.model_config import as_loaded

LEVELS = (0.1, 0.25, 0.5, 0.75, 0.9)
Z = np.array([-1.2816, -0.6745, 0.0, 0.6745, 1.2816])  # standard normal quantiles


def head(n: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Actuals of unit spread around a per-point median, and quantiles ``spread`` times theirs.

    Each point has its own scale, so a factor must work on the distance from the median.
    """
    rng = np.random.default_rng(seed)
    m = rng.normal(0, 10, n)
    scale = rng.uniform(0.5, 3.0, n)
    y = m + scale * rng.standard_normal(n)
    q = m[:, None] + spread * scale[:, None] * Z[None]
    return q, y


def served(q: np.ndarray, a: list[float]) -> np.ndarray:
    qt = torch.from_numpy(q.astype(np.float32))[:, :, None]
    return widen(qt, torch.tensor(a, dtype=torch.float32)[:, None], 2)[:, :, 0].numpy()


@pytest.mark.parametrize("spread", [0.4, 2.5])  # a head far too narrow, and far too wide
def test_calibration_hits_each_level_on_unseen_points(spread: float) -> None:
    q, y = head(4000, spread, seed=1)
    counts = Counts.zero(1, len(LEVELS))
    counts.add(0, q, y, median=2)
    a = factors(counts.below[0], int(counts.points[0]), LEVELS)
    np.testing.assert_allclose(a[2], 1.0)
    np.testing.assert_allclose(np.delete(a, 2), [1 / spread] * 4, rtol=0.08)
    fresh_q, fresh_y = head(20_000, spread, seed=2)
    before = (fresh_y[:, None] <= fresh_q).mean(axis=0)
    after = (fresh_y[:, None] <= served(fresh_q, a)).mean(axis=0)
    assert np.abs(before - LEVELS)[[0, 4]].min() > 0.05  # raw: far off
    np.testing.assert_allclose(after, LEVELS, atol=0.015)
    inside = (served(fresh_q, a)[:, 0] <= fresh_y) & (fresh_y <= served(fresh_q, a)[:, 4])
    assert 0.78 <= inside.mean() <= 0.82


def test_points_of_zero_width_are_left_out_of_the_fit() -> None:
    """A recipe's flat window serves every level as its value: no factor moves it, so
    its hits (or misses on a bound) must not move the other points' factors."""
    q, y = head(4000, 0.4, seed=3)
    alone = Counts.zero(1, len(LEVELS))
    alone.add(0, q, y, median=2)
    flat_q = np.zeros((1500, len(LEVELS)))
    with_flat = Counts.zero(1, len(LEVELS))
    with_flat.add(0, np.concatenate([q, flat_q]), np.concatenate([y, np.zeros(1500)]), median=2)
    assert (with_flat.below == alone.below).all() and (with_flat.points == alone.points).all()


def test_an_interval_keeps_its_centre_when_the_median_is_biased() -> None:
    # Actuals a whole spread below the head's median: one factor per interval widens
    # both sides alike until the interval holds its share, and does not shift it.
    q, y = head(6000, 1.0, seed=7)
    y = y - 1.0 * np.abs(q[:, 4] - q[:, 2]) / 1.2816
    counts = Counts.zero(1, len(LEVELS))
    counts.add(0, q, y, median=2)
    a = factors(counts.below[0], int(counts.points[0]), LEVELS)
    assert a[0] == a[4] and a[1] == a[3] and a[0] > 1.2
    fresh_q, fresh_y = head(20_000, 1.0, seed=8)
    fresh_y = fresh_y - np.abs(fresh_q[:, 4] - fresh_q[:, 2]) / 1.2816
    s = served(fresh_q, a)
    assert abs(((s[:, 0] <= fresh_y) & (fresh_y <= s[:, 4])).mean() - 0.8) < 0.015
    assert abs(((s[:, 1] <= fresh_y) & (fresh_y <= s[:, 3])).mean() - 0.5) < 0.015


def test_counts_of_disjoint_parts_add_up_to_the_whole() -> None:
    q, y = head(900, 1.3, seed=3)
    whole, parts = Counts.zero(1, 5), Counts.zero(1, 5)
    whole.add(0, q, y, 2)
    parts.add(0, q[:400], y[:400], 2)
    parts.add(0, q[400:], y[400:], 2)
    np.testing.assert_array_equal(whole.below, parts.below)
    assert whole.points[0] == parts.points[0] == 900


def test_too_few_points_keep_the_factors_at_one() -> None:
    q, y = head(MIN_POINTS - 1, 0.3, seed=4)
    counts = Counts.zero(1, 5)
    counts.add(0, q, y, 2)
    assert factors(counts.below[0], int(counts.points[0]), LEVELS) == [1.0] * 5


def test_thin_steps_pool_their_neighbours() -> None:
    counts = Counts.zero(6, 5)
    for k in range(6):
        q, y = head(MIN_CELL // 3 + 1, 1.0, seed=10 + k)
        counts.add(k, q, y, 2)
    below, points = pooled(counts)
    assert (points >= MIN_CELL).all()
    # Step 0 needs steps 0..2 (clipped at the start), a middle step those beside it.
    assert points[0] == counts.points[:3].sum()
    np.testing.assert_array_equal(below[2], counts.below[1:4].sum(axis=0))


def seasonal(streams: int, length: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(streams):
        t = np.arange(length)
        level = 50.0 * (k + 1) * (1 + 0.3 * np.sin(2 * np.pi * t / 12))
        y = level + rng.normal(0, 5 * (k + 1), length)
        rows.append(pd.DataFrame({"stream": f"s{k}", "seq": t, "value": y}))
    return pd.concat(rows, ignore_index=True)


def test_training_stores_the_calibration_and_records_coverage_before_and_after() -> None:
    data = load_long_frame(seasonal(streams=6, length=150, seed=5))
    settings = TrainSettings(hidden=8, layers=1, epochs=3, quantile_levels=(0.1, 0.5, 0.9))
    result = train_local(data, settings, threads=1)
    cfg = result.config
    table = cfg.calibration_table
    assert table is not None and len(table.online) == 3 and table.online[1] == 1.0
    assert table.online[0] == table.online[2]  # one factor for the interval's two levels
    assert table.adaptive is not None and table.adaptive.gamma == ADAPTIVE_GAMMA
    assert len(table.forecast) == result.metrics["origin_horizon"]  # 30 rows / 2 < 2 x 24
    record = result.metrics["calibration"]
    online = record["online"]
    assert online["points"] > MIN_POINTS
    assert set(online["coverage_before"]) == {"0.8"}
    # Fitted on these very points: the validation coverage is the level's up to ties.
    assert abs(online["coverage_after"]["0.8"] - 0.8) < 0.02
    assert abs(record["forecast"]["coverage_after"]["0.8"] - 0.8) < 0.05
    assert record["seconds"] >= 0
    assert record["fitted_on"].startswith("the served model")  # the blend, by default
    # It travels through config.json.
    again = ModelConfig.from_dict(json.loads(cfg.to_json()))
    assert again.calibration_table == table


def test_a_point_head_has_no_calibration() -> None:
    data = load_long_frame(seasonal(streams=3, length=80, seed=6))
    result = train_local(data, TrainSettings(hidden=8, layers=1, epochs=1, quantile_levels=()))
    assert result.config.calibration is None and result.metrics["calibration"] == {}


def test_calibration_origins_start_at_every_phase_of_the_season() -> None:
    data = load_long_frame(seasonal(streams=1, length=1200, seed=7))
    s = prepare_frame(data, TrainSettings()).streams[0]
    starts = spread_origins(s, 24, limit=64, season=12)
    assert starts[0] == s.n_train and all(b - a >= 24 for a, b in itertools.pairwise(starts))
    # 25 apart, not 24: the origins do not all fall on one phase of the 12-step season.
    assert len(starts) == 10 and len({b % 12 for b in starts}) == 10  # 240 rows: 10 phases


def test_the_record_from_counts_alone_matches_the_points() -> None:
    q, y = head(3000, 0.6, seed=8)
    counts = Counts.zero(1, len(LEVELS))
    counts.add(0, q, y, 2)
    field, record = from_counts(counts.below[0].astype(np.float64), 3000, LEVELS)
    assert field["forecast"] == [] and len(field["online"]) == 5
    inside = (q[:, 0] <= y) & (y <= q[:, 4])
    online = record["online"]
    assert abs(online["coverage_before"]["0.8"] - inside.mean()) < 0.002
    assert abs(online["coverage_after"]["0.8"] - 0.8) < 0.005


def test_the_forecast_table_goes_on_past_the_horizon_with_its_first_rows_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No season: the head's horizon and fixed-origin validation are 8 steps, but a
    Forecast may ask for 30; its later steps get rows fitted at those steps."""
    rng = np.random.default_rng(9)
    frame = pd.DataFrame(
        {
            "stream": np.repeat([f"w{k}" for k in range(16)], 300),
            "seq": np.tile(np.arange(300), 16),
            "value": (100 + np.cumsum(rng.normal(size=(16, 300)), axis=1)).ravel(),
        }
    )
    data = load_long_frame(frame)
    settings = TrainSettings(hidden=8, layers=1, epochs=2, quantile_levels=(0.1, 0.5, 0.9))
    result = train_local(data, settings, threads=1)
    horizon = result.metrics["origin_horizon"]
    record = result.metrics["calibration"]["forecast"]
    prepared = prepare_frame(data, settings)
    assert horizon == 8 and longer_steps(prepared, horizon) == 30  # 60 validation rows / 2
    assert len(result.config.calibration_table.forecast) == 30
    assert record["steps"] == 8 and record["longer"]["steps"] == 30
    assert record["longer"]["origins"] >= calibrate.MIN_LONGER_ORIGINS
    assert record["longer"]["points"] > MIN_POINTS
    # The first rows are the table as fitted without the longer part.
    monkeypatch.setattr(calibrate, "LONGER_STEPS", 0)
    blend = result.config.forecast_blend  # the table is fitted on the Forecasts served
    loaded = as_loaded(data, prepared, result.model, settings, blend)
    short, _ = calibrate._forecast(loaded, prepared, horizon)
    assert short == [list(r) for r in result.config.calibration_table.forecast[:8]]


def test_a_longer_table_from_too_few_origins_is_not_kept() -> None:
    """One stream with room for two 60-step Forecasts: two paths' chance would set every
    later step's width, so the table keeps the validated 8 steps."""
    rng = np.random.default_rng(9)
    frame = pd.DataFrame(
        {"stream": "w", "seq": np.arange(600), "value": 100 + np.cumsum(rng.normal(size=600))}
    )
    data = load_long_frame(frame)
    settings = TrainSettings(hidden=8, layers=1, epochs=2, quantile_levels=(0.1, 0.5, 0.9))
    result = train_local(data, settings, threads=1)
    record = result.metrics["calibration"]["forecast"]
    assert len(result.config.calibration_table.forecast) == record["steps"] == 8
    assert record["longer"]["origins"] < calibrate.MIN_LONGER_ORIGINS and "why" in record["longer"]
