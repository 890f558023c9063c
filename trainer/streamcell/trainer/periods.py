"""The recipe a model gets when its settings leave it open: periods, lags, scale window.

Periods come from ``--period`` or from the data: the timestamps' spacing where
the order column holds times that the rows fill (monthly -> 12, quarterly -> 4,
daily -> 7, hourly -> 24 and 168, half-hourly -> 48 and 336, ...), else the
autocorrelation of the differenced series, averaged over streams (each stream
counts alike); where that shows no season, that of the changes over 2, 4, then
8 steps (:data:`CHANGE_SPANS`: noisy short steps). Lags are 1..7 plus p-1, p,
p+1 for the last three seasons of each period (as GluonTS's lag sets do), kept
where the median training part is long enough to have seen them; the scale
window is one season of the shortest period (at least 4 steps).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from streamcell.core.recipe import MAX_LAG, Recipe

SHORT_LAGS = 7
SEASONS_BACK = 3
MIN_SCALE_WINDOW = 4
NO_PERIOD_SCALE_WINDOW = 8
# The direct head's default horizon: two of the longest season, at most this
# many steps (a day of 15 minutes, two of half-hours), at most a quarter of a
# typical training part (it needs targets that far ahead), this many without a season.
MAX_DEFAULT_HORIZON = 96
NO_PERIOD_HORIZON = 8
ACF_THRESHOLD = 0.2  # mean autocorrelation (differenced) that counts as a season
ACF_MAX_LAG = 800
# The changes whose autocorrelation is looked at, in turn while none shows a season:
# over 1 step, then 2, 4, 8. Where each step is short and noisy (calls counted every
# 5 minutes) the change from one step to the next is mostly noise, which hides a day's
# shape that the change over a few steps shows. A span's own noise dips the
# autocorrelation at its lag (-0.5 for white noise), so only seasons longer than twice
# the span count for it.
CHANGE_SPANS = (1, 2, 4, 8)
_DAY = 86_400.0
# Step length (seconds) -> periods; matched within 10%.
_BY_SPACING: tuple[tuple[float, tuple[int, ...]], ...] = (
    (60.0, (60, 1440)),
    (300.0, (12, 288)),
    (600.0, (6, 144)),
    (900.0, (96, 672)),
    (1800.0, (48, 336)),
    (3600.0, (24, 168)),
    (_DAY, (7,)),
    (7 * _DAY, (52,)),
    (30.44 * _DAY, (12,)),
    (91.31 * _DAY, (4,)),
    (365.25 * _DAY, ()),
)


# Calendar periods count rows only where the rows fill their time: data with its
# nights, weekends or holidays left out (calls in working hours) has fewer rows a day
# than its spacing says, so its periods come from the autocorrelation instead.
MIN_FILL = 0.75


def calendar_spacing(gaps: dict[float, int]) -> float | None:
    """The median time between a stream's consecutive rows (``gaps``: seconds -> how
    many, over every stream), or None where the rows fill less than :data:`MIN_FILL`
    of the steps of that length their time spans."""
    gaps = {g: n for g, n in gaps.items() if n > 0}
    if not gaps:
        return None
    median = median_of_counts(gaps)
    if median <= 0:
        return None
    steps = sum(g * n for g, n in gaps.items()) / median
    return median if sum(gaps.values()) >= MIN_FILL * steps else None


def median_of_counts(counts: dict[Any, int]) -> float:
    """np.median of the values ``counts`` holds (value -> how many), without them all."""
    values = sorted(counts)
    total = sum(counts.values())
    picks = [(total - 1) // 2, total // 2]
    out: list[float] = []
    seen = 0
    for v in values:
        seen += counts[v]
        while picks and picks[0] < seen:
            out.append(float(v))
            picks.pop(0)
    return (out[0] + out[1]) / 2


def periods_from_spacing(seconds: float) -> tuple[int, ...] | None:
    """Periods for a known step length, or None when it is none of the usual ones."""
    for step, periods in _BY_SPACING:
        if abs(seconds - step) <= 0.1 * step:
            return periods
    return None


def periods_from_acf(series: Sequence[np.ndarray], max_lag: int = ACF_MAX_LAG) -> tuple[int, ...]:
    """Seasons seen in the mean autocorrelation of the differenced series."""
    top = acf_top([len(y) for y in series], max_lag)
    if top is None:
        return ()
    return periods_from_sums(*_sums(series, top))


def periods_from_sums(total: np.ndarray, count: np.ndarray) -> tuple[int, ...]:
    """Seasons from :func:`acf_sums` summed over every stream (in memory or by Ray Data)."""
    return periods_from_mean_acf(acf_mean(total, count), acf_noise(total, count))


def periods_from_mean_acf(acf: np.ndarray, noise: np.ndarray | None = None) -> tuple[int, ...]:
    """Seasons in a mean autocorrelation (lags 0..L): ``[spans, L + 1]``, one row per
    change span (:data:`CHANGE_SPANS`), or the one-step row alone.

    In the one-step row, the strongest peak above :data:`ACF_THRESHOLD` is a
    season; so is its smallest divisor that is itself a peak above it (a day
    inside a week), and then both are kept when the longer one is stronger, the
    longer one as the shortest peak stronger than the day that is a multiple of
    it and divides the strongest (a week, where a fortnight peaks a little
    higher). Where it has none, the first longer span with a peak above the
    threshold gives one season (:func:`_first_season`). With ``noise`` (each
    span's standard error, :func:`acf_noise`), a peak must also pass it
    :data:`NOISE_Z` times.
    """
    rows = np.atleast_2d(acf)

    def floor(k: int) -> float:
        return ACF_THRESHOLD if noise is None else max(ACF_THRESHOLD, NOISE_Z * float(noise[k]))

    seasons = _seasons(rows[0], 2, floor(0)) if len(rows[0]) else ()
    if seasons:
        return seasons
    for k, (span, row) in enumerate(zip(CHANGE_SPANS[1:], rows[1:], strict=False), start=1):
        found = _first_season(row, span, floor(k))
        if found:
            return (found,)
    return ()


# The change over several steps is smoothed: its peaks at the season's multiples are
# about as high as the season's, and the highest of them is so by chance. Its season
# is the first peak nearly as high as the highest above the threshold (as YIN finds a
# pitch, not an octave), a peak being the highest within a span on either side (not
# noise on a broad peak's flank).
NEAR_BEST = 0.8
# One short series' autocorrelation is noisy: at 100 values its standard error is
# about 0.1 at each lag, and the change over 8 steps (a moving sum) of a random walk
# of 1,000 has about 0.07; across tens or hundreds of lags some pass 0.2 by chance.
# A peak counts only this many standard errors (Bartlett's, from the span's own
# short lags and the streams' lengths) above zero; over many streams that is far
# under 0.2.
NOISE_Z = 4.0


def _first_season(acf: np.ndarray, span: int, floor: float = ACF_THRESHOLD) -> int | None:
    peaks = [
        lag
        for lag in _peaks(acf, 2 * span + 1, threshold=-1.0)
        if acf[lag] >= acf[max(0, lag - span) : lag + span + 1].max()
    ]
    best = max((acf[lag] for lag in peaks), default=0.0)
    if best <= floor:
        return None
    return min(lag for lag in peaks if acf[lag] >= NEAR_BEST * best)


def _peaks(acf: np.ndarray, shortest: int, threshold: float = ACF_THRESHOLD) -> list[int]:
    return [
        lag
        for lag in range(shortest, len(acf) - 1)
        if acf[lag] > threshold and acf[lag] >= acf[lag - 1] and acf[lag] >= acf[lag + 1]
    ]


def _seasons(acf: np.ndarray, shortest: int, floor: float = ACF_THRESHOLD) -> tuple[int, ...]:
    if len(acf) < 4:
        return ()
    peaks = _peaks(acf, shortest, floor)
    if not peaks:
        return ()
    best = max(peaks, key=lambda lag: acf[lag])
    base = min(q for q in peaks if best % q == 0)
    # The longer season: the shortest peak between them that is stronger than the base,
    # a multiple of it and a divisor of the strongest (a week, not the fortnight that
    # peaks a little higher by chance).
    longer = [q for q in peaks if q % base == 0 and best % q == 0 and acf[q] > acf[base]]
    if base != best and longer:
        return (base, min(longer))
    return (base,)


def mean_acf(series: Sequence[np.ndarray], max_lag: int) -> np.ndarray:
    """Autocorrelation at lags 0..L of each series' changes over each span of
    :data:`CHANGE_SPANS`, averaged (NaN-free): ``[spans, L + 2]``."""
    top = acf_top([len(y) for y in series], max_lag)
    if top is None:
        return np.zeros((len(CHANGE_SPANS), 0))
    return acf_mean(*_sums(series, top))


def _sums(series: Sequence[np.ndarray], top: int) -> tuple[np.ndarray, np.ndarray]:
    total = np.zeros((len(CHANGE_SPANS), top + 3))
    count = np.zeros((len(CHANGE_SPANS), top + 3))
    for y in series:
        t, c = acf_sums(y, top)
        total += t
        count += c
    return total, count


def acf_top(lengths: Sequence[int] | np.ndarray, max_lag: int) -> int | None:
    """The longest lag the mean autocorrelation goes to (None: no series long enough)."""
    long = [n for n in lengths if n > 8]
    if not long:
        return None
    return min(max_lag, int(np.median(long)) // 3)


def acf_sums(y: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """One series' share of the mean autocorrelation: (values, counts) at lags 0..top+1
    of its changes over each span of :data:`CHANGE_SPANS`, ``[spans, top + 3]``, the
    last column 1 / (changes) and 1 (for :func:`acf_noise`).

    Summed over any split of the series and divided (:func:`acf_mean`), these
    give :func:`mean_acf` of them all: how the Ray Data path finds periods.
    """
    total = np.zeros((len(CHANGE_SPANS), top + 3))
    count = np.zeros((len(CHANGE_SPANS), top + 3))
    y = np.asarray(y, dtype=np.float64)
    for row, span in enumerate(CHANGE_SPANS):
        d = y[span:] - y[:-span]
        if len(d) < 8:
            break
        d = d - d.mean()
        power = float((d * d).sum())
        if power <= 0:
            continue
        size = 1 << math.ceil(math.log2(2 * len(d)))
        spectrum = np.fft.rfft(d, size)
        full = np.fft.irfft(spectrum * np.conj(spectrum), size)[: top + 2] / power
        usable = min(top + 2, len(d) // 2)
        total[row, :usable] += full[:usable]
        count[row, :usable] += 1
        total[row, -1] += 1.0 / len(d)
        count[row, -1] += 1
    return total, count


def acf_mean(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """The mean autocorrelation ``[spans, top + 2]`` from summed :func:`acf_sums`."""
    total, count = total[:, :-1], count[:, :-1]
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def acf_noise(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Each span's standard error of the mean autocorrelation at lags past its own
    (Bartlett: sqrt((1 + 2 sum r_k^2) / n) a stream, k up to twice the span, over
    the streams' mean): ``[spans]``, inf where no stream was long enough."""
    acf = acf_mean(total, count)
    inverse, streams = total[:, -1], count[:, -1]
    noise = np.full(len(CHANGE_SPANS), np.inf)
    for row, span in enumerate(CHANGE_SPANS):
        if streams[row] <= 0:
            continue
        short = acf[row, 1 : 2 * span + 1]
        spread = 1.0 + 2.0 * float((short * short).sum())
        noise[row] = math.sqrt(spread * inverse[row]) / streams[row]
    return noise


def default_lags(periods: Sequence[int], longest: int) -> tuple[int, ...]:
    """1..7 and p-1, p, p+1 for the last three seasons of each period, up to ``longest``."""
    lags = set(range(1, SHORT_LAGS + 1))
    for p in periods:
        for k in range(1, SEASONS_BACK + 1):
            lags.update((k * p - 1, k * p, k * p + 1))
    keep = sorted(lag for lag in lags if lag <= max(longest, SHORT_LAGS) and lag <= MAX_LAG)
    return tuple(keep)


def default_horizon(periods: Sequence[int], median_length: int) -> int:
    """Steps the direct head predicts when the settings leave it open (see the constants)."""
    wanted = 2 * max(periods) if periods else NO_PERIOD_HORIZON
    return max(1, min(wanted, MAX_DEFAULT_HORIZON, median_length // 4))


def build_recipe(
    series: Sequence[np.ndarray],
    *,
    width: int,
    target: int,
    spacing: float | None,
    periods: Sequence[int] | None,
    lags: Sequence[int] | None,
    scale_window: int | None,
    age: bool,
    scale_floor: float,
) -> Recipe:
    """The recipe for these training series: what is given, the rest found from them.

    ``series`` are the target values of each stream's training part.
    """
    lengths = [len(y) for y in series]
    return recipe_from(
        int(np.median(lengths)) if lengths else 0,
        lambda: periods_from_acf(series),
        width=width,
        target=target,
        spacing=spacing,
        periods=periods,
        lags=lags,
        scale_window=scale_window,
        age=age,
        scale_floor=scale_floor,
    )


def recipe_from(
    median: int,
    acf_periods: Callable[[], tuple[int, ...]],
    *,
    width: int,
    target: int,
    spacing: float | None,
    periods: Sequence[int] | None,
    lags: Sequence[int] | None,
    scale_window: int | None,
    age: bool,
    scale_floor: float,
) -> Recipe:
    """:func:`build_recipe` from what it needs of the series: the median training length,
    and the periods of their autocorrelation (asked for only when nothing else gives them).
    """
    if periods is None:
        found = periods_from_spacing(spacing) if spacing is not None else None
        periods = found if found is not None else acf_periods()
        # A season needs two of them in a typical series to be learnt from.
        periods = tuple(p for p in periods if 2 * p <= median)
    periods = tuple(sorted(set(periods)))
    if lags is None:
        lags = default_lags(periods, longest=median // 2 if median >= 4 else SHORT_LAGS)
    if scale_window is None:
        scale_window = max(MIN_SCALE_WINDOW, periods[0]) if periods else NO_PERIOD_SCALE_WINDOW
    return Recipe(
        target=target,
        width=width,
        lags=tuple(lags),
        scale_window=int(scale_window),
        log_scale=True,
        periods=periods,
        age=age,
        scale_floor=float(scale_floor),
    )
