"""Quantile heads in the core: config levels, state counters, the Predictor's quantiles."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from quantile_support import (
    LEVELS,
    make_constant_quantile_model,
    make_quantile_model,
    quantile_config,
)

from streamcell.core import quantiles as qt
from streamcell.core.checkpoint import (
    CONFIG_FILE,
    ModelConfig,
    expected_shapes,
    load_checkpoint,
    save_checkpoint,
)
from streamcell.core.errors import CheckpointError, StateFormatError
from streamcell.core.events import EventBatch
from streamcell.core.model import StreamingLSTM
from streamcell.core.predictor import PREDICTED, Predictor, uncrossed
from streamcell.core.state import StateStore

F = 3


# ------------------------------------------------------------------ levels
@pytest.mark.parametrize(
    ("levels", "message"),
    [
        ([0.1, 0.9], "must contain 0.5"),
        ([0.5, 0.1], "strictly increasing"),
        ([0.1, 0.5, 0.5], "strictly increasing"),
        ([0.0, 0.5], "strictly between 0 and 1"),
        ([0.5, 1.0], "strictly between 0 and 1"),
        ([0.5, float("nan")], "finite numbers"),
        ([True, 0.5], "finite numbers"),
        (["0.1", 0.5], "finite numbers"),
        ("0.5", "must be a list"),
    ],
)
def test_bad_levels_are_refused_naming_the_field(levels, message):
    with pytest.raises(CheckpointError, match=rf"quantile_levels .*{message}"):
        quantile_config(levels)


def test_levels_give_the_head_width_and_the_shapes():
    cfg = quantile_config((0.1, 0.25, 0.5, 0.75, 0.9), hidden=8)
    assert cfg.head_width == 5 * F
    assert expected_shapes(cfg)["head.weight"] == (5 * F, 8)
    assert expected_shapes(cfg)["head.bias"] == (5 * F,)
    assert quantile_config(()).head_width == F  # a point head
    ivs = qt.central_intervals(cfg.quantile_levels)
    assert [(iv.lower, iv.upper, iv.label) for iv in ivs] == [(0, 4, "0.8"), (1, 3, "0.5")]
    assert qt.central_intervals((0.05, 0.5, 0.9)) == ()  # no symmetric pair


def test_levels_round_trip_through_config_json_and_null_is_a_point_head(tmp_path):
    path = make_quantile_model(tmp_path)
    data = json.loads((path / CONFIG_FILE).read_text())
    assert data["quantile_levels"] == [0.1, 0.5, 0.9]
    loaded = load_checkpoint(path)
    assert loaded.config.quantile_levels == LEVELS
    assert loaded.model.head.weight.shape == (3 * F, 16)
    data["quantile_levels"] = None
    assert ModelConfig.from_dict(data).quantile_levels == ()
    point = quantile_config(())
    assert "quantile_levels" not in json.loads(point.to_json())  # written as before


def test_a_head_of_the_wrong_width_is_refused(tmp_path):
    cfg = quantile_config()
    with pytest.raises(CheckpointError, match="does not match its config"):
        save_checkpoint(tmp_path, "m", StreamingLSTM(F, 16, 2, F), cfg)


# -------------------------------------------------------------- predictor
def _events(streams: int, steps: int, seed: int = 3) -> EventBatch:
    gen = np.random.default_rng(seed)
    names = [f"s{k}" for k in range(streams)] * steps
    return EventBatch.of(names, gen.normal(size=(len(names), F)).astype(np.float32))


@pytest.mark.parametrize("scaling", ["global", "stream_mean_abs"])
def test_quantiles_are_sorted_finite_and_the_median_is_yhat(tmp_path, scaling):
    p = Predictor(load_checkpoint(make_quantile_model(tmp_path, scaling=scaling)))
    r = p.predict(_events(5, 4), now=1.0)
    assert (r.outcome == PREDICTED).all()
    q = r.quantiles
    assert q is not None and q.shape == (20, 3, F) and q.dtype == np.float32
    assert np.isfinite(q).all()
    assert (np.diff(q, axis=1) >= 0).all()
    assert np.array_equal(r.yhat, q[:, 1])
    assert (q[:, 2] - q[:, 0] > 0).any()
    info = p.info("s0")
    assert info.last_quantiles == tuple(map(tuple, q[-5].tolist()))


def test_crossing_levels_are_served_sorted(tmp_path):
    cfg = quantile_config()
    torch.manual_seed(0)
    model = StreamingLSTM(F, 16, 2, cfg.head_width)
    with torch.no_grad():  # level 0.1 far above level 0.9: every raw output crosses
        model.head.bias.view(3, F)[0] += 50.0
    p = Predictor(load_checkpoint(save_checkpoint(tmp_path, "m", model, cfg)))
    q = p.predict(_events(3, 1), now=1.0).quantiles
    assert (np.diff(q, axis=1) >= 0).all()


def test_a_replayed_event_gives_byte_identical_quantiles(tmp_path):
    loaded = load_checkpoint(make_quantile_model(tmp_path))
    batch = _events(7, 3)
    first = Predictor(loaded).predict(batch, now=1.0)
    # The same events again, on a fresh Predictor, in other micro-batches.
    again = Predictor(loaded)
    parts = [
        again.predict(batch.take(np.arange(k, min(k + 4, 21))), now=1.0) for k in range(0, 21, 4)
    ]
    assert np.concatenate([r.quantiles for r in parts]).tobytes() == first.quantiles.tobytes()


def test_a_point_head_serves_as_before_with_no_quantiles(tmp_path):
    p = Predictor(load_checkpoint(make_quantile_model(tmp_path, levels=())))
    r = p.predict(_events(3, 2), now=1.0)
    assert r.quantiles is None and r.scores is None
    assert p.store.quantiles is None and p.store.inside is None
    info = p.info("s0")
    assert info.last_quantiles == () and info.inside == () and info.scored == 0


def test_coverage_and_pinball_count_a_hand_made_stream(tmp_path):
    """Quantiles known in advance: always -1, 0, 1 for the levels 0.1, 0.5, 0.9."""
    p = Predictor(load_checkpoint(make_constant_quantile_model(tmp_path)))
    values = [0.0, 0.5, 3.0, -1.0, -2.0]  # the first is not scored; then in, out, on a bound, out
    scores = qt.Scores.empty(3, 1)
    for v in values:
        r = p.predict(EventBatch.of(["s"], np.array([[v]], np.float32)), now=1.0)
        assert r.scores is not None
        scores.add(r.scores.scored, r.scores.inside, r.scores.pinball)
    assert scores.scored == 4
    assert scores.inside.tolist() == [2]  # 0.5 and -1.0 (a bound counts as inside)
    # Pinball per level over 0.5, 3, -1, -2 against q = -1, 0, 1.
    actual = np.array([0.5, 3.0, -1.0, -2.0])
    expect = [
        sum(max(t * (a - q), (t - 1) * (a - q)) for a in actual)
        for t, q in ((0.1, -1.0), (0.5, 0.0), (0.9, 1.0))
    ]
    assert scores.pinball.tolist() == pytest.approx(expect)
    info = p.info("s")
    assert (info.scored, info.inside) == (4, (2,))
    p.reset("s")
    assert (p.info("s").scored, p.info("s").inside) == (0, (0,))


# ------------------------------------------------------------------ state
def _quantile_store(levels=LEVELS) -> StateStore:
    return StateStore(2, 4, 3, 5, initial_capacity=2, max_streams=8, quantile_levels=levels)


def test_the_counters_and_last_quantiles_survive_a_snapshot():
    s = _quantile_store()
    slots = s.slots(["a", "b"], now=1.0)
    s.quantiles[torch.from_numpy(slots)] = torch.arange(18.0).reshape(2, 3, 3)
    s.inside[slots] = [[5], [7]]
    s.err_count[slots] = [6, 9]
    records = s.snapshot(["a", "b"])
    assert records[0][:4] == b"SCS2" and len(records[0]) == s.snapshot_size
    other = _quantile_store()
    other.restore(zip(["a", "b"], records, strict=True))
    assert other.snapshot(["a", "b"]) == records
    info = other.info("b")
    assert info.inside == (7,) and info.scored == 27
    assert info.last_quantiles[2] == (15.0, 16.0, 17.0)


def test_old_records_are_read_and_other_levels_refused():
    point = StateStore(2, 4, 3, 5, initial_capacity=2, max_streams=8)
    point.slots(["a"], now=1.0)
    point.events[point.slot_of("a")] = 4
    record = point.snapshot(["a"])[0]
    v1 = struct.pack("<4sHHHH", b"SCS1", 2, 4, 3, 5) + record[24:]  # as format 1 wrote it
    fresh = StateStore(2, 4, 3, 5, initial_capacity=2, max_streams=8)
    fresh.restore([("a", v1)])
    assert fresh.info("a").events == 4 and fresh.snapshot(["a"])[0] == record
    with pytest.raises(
        StateFormatError, match=r"quantile_levels=0; this store has .*quantile_levels=3"
    ):
        _quantile_store().restore([("a", v1)])
    with pytest.raises(StateFormatError, match=r"quantile_levels=3 \(other levels\)"):
        _quantile_store((0.2, 0.5, 0.8)).restore([("a", _rec())])


def _rec() -> bytes:
    s = _quantile_store()
    s.slots(["a"], now=1.0)
    return s.snapshot(["a"])[0]


def test_a_forecast_of_a_quantile_model_feeds_its_median_back(tmp_path):
    p = Predictor(load_checkpoint(make_quantile_model(tmp_path)))
    batch = _events(1, 3)
    r = p.predict(batch, now=1.0)
    steps = p.forecast("s0", 3)
    assert np.array_equal(steps[0], r.yhat[-1])
    # Step 2 is the prediction after the median of step 1 came as the next event.
    fed = p.predict(EventBatch.of(["s0"], steps[:1].copy()), now=1.0)
    assert np.array_equal(steps[1], fed.yhat[0])


def test_uncrossing_sorts_only_the_rows_that_cross_like_torch_sort():
    gen = torch.Generator().manual_seed(0)
    for levels in (2, 3, 9):
        q = torch.randn(50, levels, 4, generator=gen)
        q[::2] = torch.sort(q[::2], dim=1).values  # half the rows already in order
        got = uncrossed(q)
        assert torch.equal(got, torch.sort(q, dim=1).values)
        assert torch.equal(uncrossed(got), got)
    ordered = torch.sort(torch.randn(5, 3, 2, generator=gen), dim=1).values
    assert uncrossed(ordered) is ordered  # nothing to do: no copy


def test_a_recipe_model_with_a_quantile_head_serves_and_snapshots(tmp_path):
    from recipe_support import make_recipe_model

    recipe = {"target": 0, "lags": [1, 2], "scale_window": 3, "log_scale": True}
    path = make_recipe_model(tmp_path, recipe, features=("y",), quantile_levels=LEVELS)
    p = Predictor(load_checkpoint(path))
    values = np.abs(np.random.default_rng(0).normal(size=(6, 1))).astype(np.float32) * 10
    for v in values:
        r = p.predict(EventBatch.of(["r"], v[None]), now=1.0)
    assert (np.diff(r.quantiles, axis=1) >= 0).all() and np.array_equal(r.yhat, r.quantiles[:, 1])
    record = p.store.snapshot(["r"])[0]
    again = Predictor(p.loaded)
    again.store.restore([("r", record)])
    assert again.info("r").inside == p.info("r").inside and again.info("r").scored == 5
    assert again.store.snapshot(["r"])[0] == record


@pytest.mark.parametrize("levels", [(0.5,), (0.1, 0.5, 0.9), tuple(k / 10 for k in range(1, 10))])
def test_the_fused_score_equals_the_counts_and_sums_bit_for_bit(levels):
    """The Predictor's one pass (quantiles.score) against inside_counts and pinball_sums,
    with actuals on the bounds, between them, outside, and quantiles that tie."""
    rng = np.random.default_rng(1)
    intervals = qt.central_intervals(levels)
    for rows, targets in ((1, 1), (7, 3), (300, 8)):
        q = np.sort(rng.normal(size=(rows, len(levels), targets)).astype(np.float32), axis=1)
        q[::3, :, 0] = q[::3, :1, 0]  # every level equal: an interval of width 0
        actual = rng.normal(size=(rows, targets)).astype(np.float32) * 2
        pick = rng.integers(0, len(levels), size=(rows, targets))
        on_bound = rng.random((rows, targets)) < 0.3
        actual[on_bound] = np.take_along_axis(q, pick[:, None], axis=1)[:, 0][on_bound]
        got = qt.score(actual, q, intervals, levels)
        assert np.array_equal(got.inside, qt.inside_counts(actual, q, intervals))
        assert got.pinball.tobytes() == qt.pinball_sums(actual, q, levels).tobytes()
        if intervals:
            widest = intervals[0]
            expect = (q[:, widest.lower] <= actual) & (actual <= q[:, widest.upper])
            assert np.array_equal(got.widest, expect)
        else:
            assert got.widest is None and got.inside.shape == (rows, 0)
