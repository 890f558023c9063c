"""History features: the inputs a model derives from each stream's own past.

A model may declare a recipe in its config.json. The recipe follows one
column of the event (the target, y) and turns each event into the model's
input from that stream's history, as DeepAR-style forecasters do: lagged
values of y, a scale from the recent values of |y| (and its log), the
position in each season, and the stream's age. The producer sends its values
and nothing else; the service keeps the history per stream.

Per stream the history is a ring buffer of the last ``buffer_size`` values of
y (value number k, counting from 0, at slot ``k % buffer_size``) and the
number of events the stream has seen. :func:`advance` is the one function
that computes the features: serving calls it for a wave of streams at a time,
training calls it (through :func:`featurize`) one step at a time over whole
series, so both get the same bits. Every operation is row-wise, so the
result for a stream does not depend on which other streams share the call.

For an event x_t that is the stream's n-th (n = t + 1 events seen, this one
included), with y_k the followed column of event k:

    s_t        = max(mean(|y_k| for the last min(window, n) values), floor)   (1 if window = 0)
    lag l      = y_{n-l} / s_t                   (0 where n - l < 0; lag 1 is y_t itself)
    log_scale  = log(s_t)
    season p   = sin(2 pi (n mod p) / p), cos(2 pi (n mod p) / p)   (n: the step predicted)
    age        = log(1 + n)
    covariates = the event's other columns, unscaled

in the order covariates, lags, log_scale, seasons (sin then cos per period),
age. The model is trained to predict y_{t+1} / s_t; the Predictor multiplies
its output by s_t. A model without a recipe sees the event's columns as
before (streamcell.core.normalization).

Version 2 adds one rule to that output (:func:`level`): where the stream's
last ``window`` values (a full window, n >= window >= 2) are all exactly one
value c, every output of the model, at every quantile level, is served as c.
The scale measures the stream's movement over the window; where there is
none, a scale-free model predicts none: a stream of zeros (a discontinued
product) is predicted as exactly 0 with an interval of zero width, where the
floored scale left it a hair above zero, outside every interval. The features
are the same in both versions; version 1 (configs written before it) serves
exactly as it did.

Pure: numpy and the standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RECIPE_VERSION = 2  # 2: a flat window is served as its value (see level)
VERSIONS = (1, 2)
LEGACY_VERSION = 1  # what a config.json recipe without "version" means
MAX_LAG = 10_000  # bounds the ring buffer a config can ask for
MAX_PERIOD = 100_000
_KEYS = {"version", "target", "lags", "scale_window", "log_scale", "periods", "age"}


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Recipe:
    """Which history features a model sees, and how they are computed."""

    target: int  # column of the event's x that the recipe follows
    width: int  # columns of an event
    lags: tuple[int, ...] = (1,)
    scale_window: int = 0  # values of |y| averaged into the scale; 0: no scale
    log_scale: bool = False
    periods: tuple[int, ...] = ()
    age: bool = False
    scale_floor: float = 1e-3
    version: int = RECIPE_VERSION

    def __post_init__(self) -> None:
        if self.version not in VERSIONS or isinstance(self.version, bool):
            raise RecipeError(
                f"recipe.version {self.version!r} is not supported (this build reads {VERSIONS})"
            )
        object.__setattr__(self, "lags", tuple(self.lags))
        object.__setattr__(self, "periods", tuple(self.periods))
        _check_int("width", self.width, 1, 1 << 16)
        _check_int("target", self.target, 0, self.width - 1)
        if not self.lags:
            raise RecipeError("recipe.lags must name at least one lag")
        for lag in self.lags:
            _check_int("lags", lag, 1, MAX_LAG)
        if len(set(self.lags)) != len(self.lags):
            raise RecipeError(f"recipe.lags has repeated entries: {list(self.lags)}")
        _check_int("scale_window", self.scale_window, 0, MAX_LAG)
        for period in self.periods:
            _check_int("periods", period, 2, MAX_PERIOD)
        if self.log_scale and self.scale_window == 0:
            raise RecipeError("recipe.log_scale needs a scale: set recipe.scale_window")
        for name in ("log_scale", "age"):
            if not isinstance(getattr(self, name), bool):
                raise RecipeError(f"recipe.{name} must be true or false")
        floor = self.scale_floor
        if not (isinstance(floor, float | int) and math.isfinite(floor) and floor > 0):
            raise RecipeError(f"scale floor must be a positive number, got {floor!r}")

    # ----------------------------------------------------------------- shape
    @property
    def buffer_size(self) -> int:
        """Values of y each stream keeps: enough for the longest lag and the window."""
        return max(max(self.lags), self.scale_window)

    @property
    def num_features(self) -> int:
        return (
            (self.width - 1)
            + len(self.lags)
            + int(self.log_scale)
            + 2 * len(self.periods)
            + int(self.age)
        )

    def feature_names(self, columns: Sequence[str]) -> tuple[str, ...]:
        """Names of the model's inputs, in order, for the event's column names."""
        if len(columns) != self.width:
            raise RecipeError(f"recipe follows events of {self.width} columns, got {len(columns)}")
        names = [c for k, c in enumerate(columns) if k != self.target]
        names += [f"lag_{lag}" for lag in self.lags]
        names += ["log_scale"] if self.log_scale else []
        for p in self.periods:
            names += [f"season_sin_{p}", f"season_cos_{p}"]
        names += ["age"] if self.age else []
        return tuple(names)

    # ------------------------------------------------------------ config.json
    def to_json(self) -> dict[str, Any]:
        """The config.json form (the scale floor is the config's own scale_floor)."""
        return {
            "version": self.version,
            "target": self.target,
            "lags": list(self.lags),
            "scale_window": self.scale_window,
            "log_scale": self.log_scale,
            "periods": list(self.periods),
            "age": self.age,
        }

    @classmethod
    def from_json(cls, raw: object, *, width: int, scale_floor: float) -> Recipe:
        """Parse config.json's ``recipe``; a RecipeError names the field that is wrong."""
        if not isinstance(raw, Mapping):
            raise RecipeError(f"recipe must be an object, got {type(raw).__name__}")
        unknown = sorted(set(raw) - _KEYS)
        if unknown:
            raise RecipeError(f"recipe has unknown fields {unknown}; known: {sorted(_KEYS)}")
        version = raw.get("version", LEGACY_VERSION)
        if version not in VERSIONS or isinstance(version, bool):
            raise RecipeError(
                f"recipe.version {version!r} is not supported (this build reads {VERSIONS})"
            )
        if "target" not in raw:
            raise RecipeError("recipe.target is missing")
        for name in ("lags", "periods"):
            if name in raw and not isinstance(raw[name], list):
                raise RecipeError(f"recipe.{name} must be a list of integers")
        return cls(
            target=raw["target"],
            width=width,
            lags=tuple(raw.get("lags", [1])),
            scale_window=raw.get("scale_window", 0),
            log_scale=raw.get("log_scale", False),
            periods=tuple(raw.get("periods", [])),
            age=raw.get("age", False),
            scale_floor=scale_floor,
            version=version,
        )


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RecipeError(f"recipe.{name} must be integers in {low}..{high}, got {value!r}")


# --------------------------------------------------------------------- compute
def new_buffers(recipe: Recipe, streams: int) -> np.ndarray:
    """Empty histories for ``streams`` streams: ``[streams, buffer_size]`` float32."""
    return np.zeros((streams, recipe.buffer_size), dtype=np.float32)


def advance(
    recipe: Recipe, ring: np.ndarray, seen: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Append one event per stream to its history; its features and scale.

    ``ring`` ``[B, buffer_size]`` float32 is updated in place; ``seen`` ``[B]``
    int64 holds the events each stream had seen before this one (the caller
    adds one afterwards); ``x`` ``[B, width]`` float32 are the events.
    Returns ``(features [B, num_features] float32, scale [B] float32)``.
    """
    size = recipe.buffer_size
    rows = np.arange(len(seen))
    y = x[:, recipe.target].astype(np.float32)
    ring[rows, seen % size] = y
    n = seen + 1  # events seen, this one included
    parts: list[np.ndarray] = []
    if recipe.width > 1:
        parts.append(np.delete(x, recipe.target, axis=1).astype(np.float32))
    scale = _scale(recipe, ring, n)
    lags = np.asarray(recipe.lags, dtype=np.int64)
    back = n[:, None] - lags[None, :]  # event number of each lag
    values = ring[rows[:, None], back % size]
    parts.append(np.where(back >= 0, values / scale[:, None], np.float32(0.0)).astype(np.float32))
    if recipe.log_scale:
        parts.append(np.log(scale)[:, None])
    for p in recipe.periods:
        angle = (2.0 * np.pi / p) * (n % p).astype(np.float64)
        parts.append(np.stack([np.sin(angle), np.cos(angle)], axis=1).astype(np.float32))
    if recipe.age:
        parts.append(np.log1p(n.astype(np.float64)).astype(np.float32)[:, None])
    return np.concatenate(parts, axis=1), scale


def _scale(recipe: Recipe, ring: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Mean |y| over each stream's last ``min(window, n)`` values, floored; float32."""
    if recipe.scale_window == 0:
        return np.ones(len(n), dtype=np.float32)
    w = recipe.scale_window
    back = n[:, None] - 1 - np.arange(w, dtype=np.int64)[None, :]  # newest first
    window = np.abs(ring[np.arange(len(n))[:, None], back % recipe.buffer_size]).astype(np.float64)
    total = np.where(back >= 0, window, 0.0).sum(axis=1)
    count = np.minimum(n, w).astype(np.float64)
    return np.maximum(total / count, recipe.scale_floor).astype(np.float32)


def holds_level(recipe: Recipe) -> bool:
    """Whether the recipe serves a flat window as its value (version 2 with a window)."""
    return recipe.version >= 2 and recipe.scale_window >= 2


def level(recipe: Recipe, ring: np.ndarray, n: np.ndarray) -> np.ndarray | None:
    """Per stream, the value c its output is served as, NaN where it has none; ``[B]``
    float32, or None where no stream has one (and always for version 1).

    ``ring`` ``[B, buffer_size]`` holds each stream's values, ``n`` ``[B]`` the
    events it has seen (after :func:`advance`: ``seen + 1``). A stream has a
    level where it has seen a full window and its last ``scale_window`` values
    are all exactly c (c is then the newest).
    """
    if not holds_level(recipe) or len(n) == 0:
        return None
    w, size = recipe.scale_window, recipe.buffer_size
    rows = np.arange(len(n))
    newest = ring[rows, (n - 1) % size]
    # Only a stream whose last two values are equal can be flat: the whole window is
    # read for those alone (serving calls this for every wave).
    maybe = np.flatnonzero((n >= w) & (newest == ring[rows, (n - 2) % size]))
    if len(maybe) == 0:
        return None
    back = n[maybe, None] - 1 - np.arange(w, dtype=np.int64)[None, :]
    window = ring[maybe[:, None], back % size]
    flat = maybe[(window == newest[maybe, None]).all(axis=1)]
    if len(flat) == 0:
        return None
    out = np.full(len(n), np.nan, dtype=np.float32)
    out[flat] = newest[flat]
    return out


def levels(recipe: Recipe, y: np.ndarray) -> np.ndarray | None:
    """:func:`level` after each value of one whole stream ``y`` ``[T]``: ``[T]`` float32
    (NaN: none), or None where it has none; the same values, from runs of equal values."""
    y = np.asarray(y, dtype=np.float32)
    if not holds_level(recipe) or len(y) == 0:
        return None
    t = np.arange(len(y))
    starts = np.r_[True, y[1:] != y[:-1]]  # where a run of equal values begins
    run = t - np.maximum.accumulate(np.where(starts, t, 0)) + 1
    flat = run >= recipe.scale_window
    if not flat.any():
        return None
    return np.where(flat, y, np.float32(np.nan)).astype(np.float32)


def featurize(recipe: Recipe, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features and scale after each event of one whole stream, as serving computes them.

    ``x`` ``[T, width]`` -> ``(features [T, num_features], scale [T])``, by
    :func:`advance` one event at a time, so the bits equal serving's.
    """
    x = np.asarray(x, dtype=np.float32)
    ring = new_buffers(recipe, 1)
    features = np.empty((len(x), recipe.num_features), dtype=np.float32)
    scale = np.empty(len(x), dtype=np.float32)
    seen = np.zeros(1, dtype=np.int64)
    for t in range(len(x)):
        f, s = advance(recipe, ring, seen, x[t : t + 1])
        features[t], scale[t] = f[0], s[0]
        seen += 1
    return features, scale
