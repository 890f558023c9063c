"""Training direct and quantile heads, and choosing a direct head or feedback on validation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from streamcell.cli import main
from streamcell.core.checkpoint import load_latest
from streamcell.core.errors import ConfigError
from streamcell.trainer.api import TrainSettings, load_long_frame, prepare_frame, train_local
from streamcell.trainer.loop import _HeadLoss
from streamcell.trainer.origin import origins_of
from streamcell.trainer.periods import MAX_DEFAULT_HORIZON, default_horizon
from streamcell.trainer.prepare import horizon_targets


def seasonal(streams: int, length: int, period: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(streams):
        t = np.arange(length)
        y = 50.0 * (k + 1) * (1 + 0.3 * np.sin(2 * np.pi * t / period)) + rng.normal(0, 1, length)
        rows.append(pd.DataFrame({"stream": f"s{k}", "seq": t, "value": y}))
    return pd.concat(rows, ignore_index=True)


def test_default_horizon_is_two_of_the_longest_season_capped() -> None:
    assert default_horizon((12,), 300) == 24
    assert default_horizon((48, 336), 30_000) == MAX_DEFAULT_HORIZON
    assert default_horizon((12,), 40) == 10  # a quarter of a typical training part
    assert default_horizon((), 300) == 8


def test_horizon_targets_are_the_next_steps_scaled_at_the_origin() -> None:
    data = load_long_frame(seasonal(streams=2, length=60, period=12, seed=1))
    prepared = prepare_frame(data, TrainSettings(horizon=5))
    assert prepared.horizon == 5 and len(prepared.quantile_levels) == 9
    s, norm = prepared.streams[0], prepared.norm
    z = horizon_targets(s, norm, 5)
    np.testing.assert_array_equal(z[:, 0], s.z)  # step 1 is the one-step target
    t, k = 10, 3
    want = (s.y[t + 1 + k] / s.target_scale[t] - norm.target_mean) / norm.target_std
    np.testing.assert_allclose(z[t, k], want, rtol=1e-6)
    assert np.isnan(z[-1, 1:]).all()  # past the end: no target


def test_pinball_loss_at_the_median_alone_is_the_absolute_error() -> None:
    data = load_long_frame(seasonal(streams=2, length=40, period=12, seed=2))
    prepared = prepare_frame(data, TrainSettings(horizon=1, quantile_levels=(0.5,)))
    loss = _HeadLoss(prepared, torch.device("cpu"))
    y, z = torch.randn(2, 3, 1), torch.randn(2, 3, 1, 1)
    m = torch.ones(2, 3, 1)
    torch.testing.assert_close(loss(y, z, m), (z[:, :, 0, 0] - y[:, :, 0]).abs())


def test_origins_spread_over_validation() -> None:
    data = load_long_frame(seasonal(streams=1, length=1000, period=12, seed=3))
    s = prepare_frame(data, TrainSettings()).streams[0]
    assert origins_of(s, 24) == list(range(s.n_train, len(s.y), 24))  # 200 rows: 9 origins
    starts = origins_of(s, 5)  # at most 16, spread over all 200 rows
    assert starts[0] == s.n_train and len(starts) == 16 and starts[-1] > len(s.y) - 20


def test_candidates_chosen_by_fixed_origin_validation_and_exported(tmp_path: Path) -> None:
    data = load_long_frame(seasonal(streams=4, length=120, period=12, seed=5))
    settings = TrainSettings(hidden=8, layers=1, epochs=2, candidates=({}, {"horizon": 1}))
    result = train_local(data, settings, threads=1)
    selection = result.config.training["selection"]
    assert selection["chosen_by"] == "val_origin_mase" and selection["origin_horizon"] == 24
    scores = [c["origin_score"] for c in selection["candidates"]]
    assert [c["horizon"] for c in selection["candidates"]] == [24, 1]
    assert selection["chosen"] == int(np.argmin(scores))
    assert result.config.horizon == (24, 1)[selection["chosen"]]
    m = result.metrics
    blend = selection.get("forecast_blend")  # a direct head's choice (scored again)
    if blend is not None:
        assert blend["without"] == pytest.approx(min(scores), rel=1e-4)
        assert result.config.forecast_blend == blend["kept"]
        assert m["val_origin_mase"] == pytest.approx(min(blend["origin_score"], blend["without"]))
    else:
        assert m["val_origin_mase"] == pytest.approx(min(scores), rel=1e-4)
    assert np.isfinite(m["last_value_origin_mase"]) and np.isfinite(m["seasonal_naive_origin_mase"])
    assert result.config.quantile_levels == settings.quantile_levels


def test_cli_trains_a_direct_quantile_head_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "s.csv"
    seasonal(streams=3, length=100, period=12, seed=6).to_csv(csv, index=False)
    args = ["train", "--data", str(csv), "--registry", str(tmp_path / "reg"), "--model", "s"]
    tiny = ["--no-ray", "--threads", "1", "--epochs", "1", "--hidden", "4", "--allow-worse"]
    assert main([*args, *tiny, "--horizon", "6", "--quantiles", "0.1,0.5,0.9"]) == 0
    out = capsys.readouterr().out
    assert "forecast: direct (6 steps" in out and "quantiles: 0.1, 0.5, 0.9" in out
    raw = json.loads((load_latest(tmp_path / "reg", "s").path / "config.json").read_text())
    assert raw["horizon"] == 6 and raw["quantile_levels"] == [0.1, 0.5, 0.9]
    # Calibrated on validation: the factors in config.json, the coverage in the summary.
    cal = raw["calibration"]
    assert len(cal["online"]) == 3 and len(cal["forecast"]) == raw["metrics"]["origin_horizon"]
    assert "calibrated on validation, 80% interval coverage: online " in out
    assert main([*args, *tiny, "--horizon", "1", "--quantiles", "none"]) == 0
    raw = json.loads((load_latest(tmp_path / "reg", "s").path / "config.json").read_text())
    assert "horizon" not in raw and "quantile_levels" not in raw  # a point checkpoint
    assert "calibration" not in raw


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("horizon", 0),
        ("horizon", 2.5),
        ("quantile_levels", (0.1, 0.9)),
        ("quantile_levels", (0.9, 0.5)),
        ("quantile_levels", (0.5, 1.5)),
    ],
)
def test_bad_head_settings_name_their_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        TrainSettings(**{field: value})
    with pytest.raises(ConfigError, match="quantile_levels"):
        TrainSettings(loss="mse")  # a squared loss trains a point head only
    TrainSettings(loss="mse", quantile_levels=())


def test_the_cli_refuses_bad_levels_by_name(tmp_path: Path) -> None:
    csv = tmp_path / "s.csv"
    seasonal(streams=2, length=40, period=12, seed=7).to_csv(csv, index=False)
    args = ["train", "--data", str(csv), "--registry", str(tmp_path / "reg"), "--model", "s"]
    assert main([*args, "--no-ray", "--quantiles", "0.2,0.8"]) != 0


def test_first_step_from_the_candidate_best_online_beside_a_direct_head(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streamcell.trainer import select

    # The direct head wins at fixed origin whatever it learns; online, the scores decide.
    monkeypatch.setattr(select, "origin_mase", lambda loaded, _p, _h: 1 / loaded.config.horizon)
    data = load_long_frame(seasonal(streams=4, length=120, period=12, seed=5))
    # A small, slow direct head and a faster one-step head (scores 1.97 and 1.75).
    candidates = ({"horizon": 6, "hidden": 2, "lr": 1e-4}, {"horizon": 1, "lr": 1e-2})
    base = TrainSettings(hidden=8, layers=1, epochs=3, candidates=candidates)
    result = train_local(data, base, threads=1)
    selection = result.config.training["selection"]
    direct, one_step = selection["candidates"]
    assert selection["chosen"] == 0 and one_step["score"] < direct["score"]
    assert selection["first_step"]["candidate"] == 1
    # One model: 2 x 8 units the one-step head's (validated and refit), 2 x 2 the direct's.
    assert result.config.horizon == 6 and result.model.hidden_size == 2 * 8 + 2 * 2
    assert result.metrics["val_mase"] == pytest.approx(one_step["score"], rel=1e-4)
    alone = train_local(data, replace(base, online_first_step=False), threads=1)
    assert "first_step" not in alone.config.training["selection"]
    assert alone.model.hidden_size == 2 * 2
    assert alone.metrics["val_mase"] == pytest.approx(direct["score"], rel=1e-4)


@pytest.mark.parametrize("blend_wins", [True, False])
def test_a_direct_heads_forecast_blend_is_kept_where_it_validates_better(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, blend_wins: bool
) -> None:
    from streamcell.trainer import select

    def scored(loaded, _p, _h) -> float:
        return 1.0 - 0.1 * (loaded.config.forecast_blend == blend_wins)

    monkeypatch.setattr(select, "origin_mase", scored)
    frame = seasonal(streams=3, length=100, period=12, seed=5)
    data = load_long_frame(frame)
    result = train_local(data, TrainSettings(hidden=4, layers=1, epochs=1, horizon=6), threads=1)
    record = result.config.training["selection"]["forecast_blend"]
    assert record["kept"] is blend_wins and result.config.forecast_blend is blend_wins
    assert ("first step fed back" in result.metrics["forecast"]) is blend_wins
    # The exported checkpoint says so (and a plain one writes no field), and its
    # Forecasts are what the field asks for.
    from streamcell.core.events import EventBatch
    from streamcell.core.predictor import Predictor
    from streamcell.trainer.api import loaded_model

    raw = json.loads(result.config.to_json())
    assert raw.get("forecast_blend", False) is blend_wins
    predictor = Predictor(loaded_model(result))
    values = frame.loc[frame["stream"] == "s0", "value"].to_numpy(np.float32)
    for k, v in enumerate(values[:40]):
        predictor.predict(EventBatch.of(["s0"], np.array([[v]]), np.array([k])), now=0.0)
    made = predictor.forecast_result("s0", 12)
    assert made.method == ("blend" if blend_wins else "direct")


def test_the_blend_is_scored_on_the_best_epoch_served() -> None:
    data = load_long_frame(seasonal(streams=3, length=100, period=12, seed=5))
    settings = TrainSettings(hidden=4, layers=1, epochs=8, horizon=6, patience=1, seeds=1, lr=0.05)
    result = train_local(data, settings, threads=1)
    selection = result.config.training["selection"]
    record = selection["forecast_blend"]
    # One candidate, no average, splice or seed: what is scored is the chosen run itself.
    assert "first_step" not in selection
    assert record["without"] == pytest.approx(record["chosen_run"], rel=1e-6)
    # Early stopped past its best epoch, so the last epoch's weights are not the best's:
    # a blend scored on the last would not match the chosen run's score above.
    candidate = selection["candidates"][0]
    assert candidate["best_epoch"] < candidate["epochs_run"]


def test_a_fed_back_head_has_no_blend_to_choose() -> None:
    data = load_long_frame(seasonal(streams=3, length=100, period=12, seed=5))
    result = train_local(data, TrainSettings(hidden=4, layers=1, epochs=1, horizon=1), threads=1)
    assert "forecast_blend" not in result.config.training["selection"]
    assert not result.config.forecast_blend


def test_no_first_step_pick_for_a_fed_back_head_or_a_better_direct_one() -> None:
    from streamcell.trainer.select import first_step_pick

    tried = [
        {"horizon": 24, "score": 0.5},
        {"horizon": 1, "score": 0.4},
        {"horizon": 1, "score": 0.3},
    ]
    assert first_step_pick(tried, ["a", "a", "b"], 0) == 1  # "b" has other features
    assert first_step_pick(tried, ["a", "a", "a"], 0) == 2
    assert first_step_pick(tried, ["a", "a", "a"], 1) is None  # feedback: its first step is all
    assert first_step_pick([tried[0], {"horizon": 1, "score": 0.6}], ["a", "a"], 0) is None


def test_the_best_candidates_averaged_where_the_average_validates_better() -> None:
    data = load_long_frame(seasonal(streams=4, length=120, period=12, seed=5))
    candidates = ({"horizon": 1}, {"horizon": 1, "seed": 1}, {"horizon": 1, "hidden": 4})
    settings = TrainSettings(
        hidden=8, layers=1, epochs=2, final_fit="off", average_top=2, candidates=candidates
    )
    result = train_local(data, settings, threads=1)
    selection = result.config.training["selection"]
    scores = [c["origin_score"] for c in selection["candidates"]]
    average = selection["average"]
    assert average["candidates"] == list(np.argsort(scores)[:2])
    assert average["kept"] == (average["origin_score"] < min(scores))
    widths = [(8, 8, 4)[k] for k in average["candidates"]]
    assert result.model.hidden_size == (sum(widths) if average["kept"] else widths[0])
    assert result.metrics["val_origin_mase"] == pytest.approx(
        average["origin_score"] if average["kept"] else min(scores), rel=1e-4
    )


def test_one_set_of_candidates_chosen_once_per_protocol() -> None:
    from streamcell.trainer.api import train_local_per_protocol

    data = load_long_frame(seasonal(streams=4, length=120, period=12, seed=5))
    candidates = ({"horizon": 6, "hidden": 2, "lr": 1e-4}, {"horizon": 1, "lr": 1e-2}, {})
    settings = TrainSettings(
        hidden=8, layers=1, epochs=3, candidates=candidates, online_first_step=False
    )
    results = train_local_per_protocol(data, settings, threads=1)
    online, origin = results["online"].config, results["origin"].config
    tried = origin.training["selection"]["candidates"]
    assert online.training["selection"]["candidates"] == tried  # trained once
    assert origin.training["selection"]["chosen"] == int(
        np.argmin([c["origin_score"] for c in tried])
    )
    assert online.training["selection"]["chosen"] == int(np.argmin([c["score"] for c in tried]))
    same = online.training["selection"]["chosen"] == origin.training["selection"]["chosen"]
    assert (results["online"] is results["origin"]) == same
    # Where both protocols pick one candidate, the one model is the origin choice's.
    expected_by = "val_origin_mase" if same else "val_mase"
    assert online.training["selection"]["chosen_by"] == expected_by
    assert results["online"].metrics["val_mase"] == pytest.approx(
        min(c["score"] for c in tried), rel=1e-4
    )


def test_a_final_fit_keeps_the_weights_its_validated_model_kept() -> None:
    from streamcell.trainer.loop import LoopState
    from streamcell.trainer.select import refit_settings

    settings = TrainSettings()
    for kept, mode in (("ema", "ema"), ("raw", "off"), (None, "off")):
        state = LoopState(best_metrics={} if kept is None else {"weights": kept})
        assert refit_settings(settings, state).weight_average == mode


def test_extra_seeds_of_the_chosen_candidate_averaged_where_that_validates_better() -> None:
    from streamcell.trainer.select import SEED_STRIDE

    data = load_long_frame(seasonal(streams=4, length=120, period=12, seed=5))
    settings = TrainSettings(
        hidden=8, layers=1, epochs=2, final_fit="off", seeds=3, candidates=({"horizon": 1},)
    )
    result = train_local(data, settings, threads=1)
    selection = result.config.training["selection"]
    assert [s["seed"] for s in selection["seeds"]] == [SEED_STRIDE, 2 * SEED_STRIDE]
    assert len({s["score"] for s in selection["seeds"]}) == 2  # other seeds, other nets
    assert "average" not in selection  # average_top 1: no other candidates averaged
    average = selection["seeds_average"]
    assert average["seeds"] == 2 and average["candidates"] == [0]
    assert selection["served"]["seeds"] == (2 if average["kept"] else 0)
    one = selection["candidates"][0]["origin_score"]
    assert average["kept"] == (average["origin_score"] < one)
    assert result.model.hidden_size == (3 * 8 if average["kept"] else 8)
    assert result.metrics["val_origin_mase"] == pytest.approx(
        average["origin_score"] if average["kept"] else one, rel=1e-4
    )


def test_no_extra_seed_where_the_budget_left_would_not_hold_it() -> None:
    from streamcell.trainer.budget import Deadline
    from streamcell.trainer.select import train_candidates, train_seeds

    data = load_long_frame(seasonal(streams=4, length=120, period=12, seed=5))
    settings = TrainSettings(hidden=8, layers=1, epochs=2, final_fit="off", seeds=3)
    trials = train_candidates(data, settings, prepare_frame)
    assert train_seeds(replace(trials, deadline=Deadline.after(0.0), seeded={}), 0) == []
    runs = train_seeds(trials, 0)
    assert [len(trials.trained), len(runs)] == [3, 2]
    assert train_seeds(trials, 0) is runs  # a second choice reuses them


def test_extra_seeds_join_the_kept_average_and_never_undo_it() -> None:
    data = load_long_frame(seasonal(streams=4, length=120, period=12, seed=5))
    candidates = ({"horizon": 1}, {"horizon": 1, "seed": 1}, {"horizon": 1, "hidden": 4})
    settings = TrainSettings(
        hidden=8, layers=1, epochs=2, final_fit="off", average_top=2, seeds=2, candidates=candidates
    )
    selection = train_local(data, settings, threads=1).config.training["selection"]
    average, seeded = selection["average"], selection["seeds_average"]
    pick = selection["candidates"][selection["chosen"]]["origin_score"]
    before = average["origin_score"] if average["kept"] else pick
    assert seeded["kept"] == (seeded["origin_score"] < before)
    kept = average["candidates"] if average["kept"] else [selection["chosen"]]
    assert seeded["candidates"] == kept and seeded["seeds"] == 1
    assert selection["served"] == {"candidates": sorted(kept), "seeds": int(seeded["kept"])}
