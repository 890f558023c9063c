"""Protocol B's origins: one at the split, or every ``origin_every`` steps of the test part."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("tsdata")

# bench/ is a directory of scripts at the repository root, not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.accuracy import b_origins
from streamcell.trainer import datasets


def test_vic_elec_is_forecast_from_each_midnight_of_its_test_year() -> None:
    ds = datasets.load("vic_elec")
    starts, h = b_origins(ds) or ({}, 0)
    n = ds.n_train["vic_elec"]
    # As before origin_every: range(n, len - 48 + 1, 48), 365 origins.
    assert h == 48 and starts == {"vic_elec": list(range(n, 52608 - 47, 48))}
    assert len(starts["vic_elec"]) == 365


@pytest.mark.parametrize(
    ("name", "day", "days"), [("heldout_pedestrian", 24, 28), ("heldout_bank_calls", 169, 20)]
)
def test_hourly_sets_are_forecast_a_day_from_each_days_start(
    name: str, day: int, days: int
) -> None:
    ds = datasets.load(name)
    starts, h = b_origins(ds) or ({}, 0)
    assert h == day and set(starts) == set(ds.streams)
    for stream, y, n in ds.series():
        assert starts[stream] == [n + k * day for k in range(days)]
        assert starts[stream][-1] + day == len(y)


def test_a_set_without_origin_every_has_one_origin_at_the_split() -> None:
    ds = datasets.load("tourism_quarterly")
    starts, h = b_origins(ds) or ({}, 0)
    assert h == 8 and all(starts[s] == [n] for s, _, n in ds.series())
