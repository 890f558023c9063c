"""The hourly and 5-minute held-out sets: gap-free runs of whole days, last 4 weeks tested."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tsdata")

from streamcell.trainer import datasets, heldout_datasets


def test_pedestrian_keeps_whole_days_of_each_sensors_longest_run() -> None:
    ds = datasets.load("heldout_pedestrian")
    assert len(ds.streams) == 4 and ds.period == 24 and ds.origin_every == 24
    assert ds.horizon is None
    for _, y, n in ds.series():
        assert len(y) - n == 672 and len(y) % 24 == 0 and n > 2 * 168
        assert np.isfinite(y).all()
    left = heldout_datasets.LEFT_OUT["heldout_pedestrian"]
    assert left["hours missing"] > 0 and left["hours outside the longest run"] > 0
    # Within a stream the calendar step advances by one hour: no gap was kept.
    for _, group in ds.frame.assign(t=ds.step).groupby("stream"):
        assert (np.diff(group["t"].to_numpy()) == 1).all()
    # Each run, and so its test part, starts at midnight, Melbourne standard time
    # (UTC+10): Bourke Street's run at 2015-04-06 00:00, 14:00 UTC the day before.
    from tsdata.fpp3 import raw

    for stream, _, n in ds.series():
        rows = ds.frame.index[(ds.frame["stream"] == stream) & ds.frame["seq"].isin([0, n])]
        assert (ds.step[rows] % 24 == 0).all()
    df = raw["pedestrian"]
    first = df[(df["Sensor"] == "Bourke Street Mall (North)")]
    first = first[first["Date_Time"] == "2015-04-05T14:00:00Z"]
    y = dict((s, y) for s, y, _ in ds.series())["Bourke Street Mall (North)"]
    assert first["Date"].item() == "2015-04-06" and first["Time"].item() == 0
    assert y[0] == first["Count"].item()


def test_bank_calls_is_one_series_of_working_days() -> None:
    ds = datasets.load("heldout_bank_calls")
    ((_, y, n),) = list(ds.series())
    assert ds.period == ds.origin_every == 169  # 7:00 to 21:00 every 5 minutes
    assert ds.horizon is None
    assert len(y) % 169 == 0 and len(y) - n == 20 * 169
    assert (np.diff(ds.step) == 1).all()
