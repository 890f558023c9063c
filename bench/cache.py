"""On-disk cache of the slow, deterministic baselines (SARIMA, ETS, River).

One compressed ``.npz`` per (data set, method) under ``bench/accuracy_cache/``,
holding every series' forecasts and a key: the data's fingerprint, the method,
and the versions of the libraries that computed it. A different key means the
entry is stale and is recomputed.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from bench.baselines import Forecasts
from streamcell.trainer.datasets import Dataset

CACHE_DIR = Path(__file__).with_name("accuracy_cache")
CODE_VERSION = 1  # bump when a baseline's definition changes
# Per method, where it changed since: SARIMA and ETS gained their intervals.
# "<method>_origins": protocol B from many origins (vic_elec), cached apart from
# the method's own entry so that adding it recomputed nothing else.
CODE_VERSIONS = {"sarima": 2, "ets": 2, "sarima_origins": 1, "ets_origins": 1}


def fingerprint(ds: Dataset) -> str:
    """SHA-256 of the series values, the splits, the period and the horizon."""
    digest = hashlib.sha256(repr((ds.name, ds.period, ds.horizon)).encode())
    for stream, y, n in ds.series():
        digest.update(f"{stream}\0{n}\0".encode())
        digest.update(y.astype("<f8").tobytes())
    return digest.hexdigest()


def cache_key(ds_fingerprint: str, method: str) -> str:
    libs = {name: version(name) for name in ("numpy", "scipy", "statsmodels", "river")}
    return json.dumps(
        {
            "data": ds_fingerprint,
            "method": method,
            "code": CODE_VERSIONS.get(method, CODE_VERSION),
            "libs": libs,
        },
        sort_keys=True,
    )


def _arrays(ds: Dataset, method: str, key: str) -> dict[str, np.ndarray] | None:
    """The cache file's arrays, None where there is none or it was made for another key."""
    file = CACHE_DIR / f"{ds.name}__{method}.npz"
    if not file.exists():
        return None
    with np.load(file, allow_pickle=False) as data:
        if str(data["key"]) != key:
            return None
        return {name: data[name] for name in data.files}


def load(ds: Dataset, method: str, key: str) -> dict[str, Forecasts] | None:
    data = _arrays(ds, method, key)
    if data is None:
        return None
    streams = [str(s) for s in data["streams"]]
    counts = np.cumsum(data["lengths"])[:-1]
    one = np.split(data["one_step"], counts)
    origin = data.get("origin")
    one_q = np.split(data["one_step_q"], counts) if "one_step_q" in data else None
    origin_q = data.get("origin_q")
    return {
        s: Forecasts(
            o,
            None if origin is None else origin[k],
            None if one_q is None else one_q[k],
            None if origin_q is None else origin_q[k],
        )
        for k, (s, o) in enumerate(zip(streams, one, strict=True))
    }


def save(ds: Dataset, method: str, key: str, forecasts: dict[str, Forecasts]) -> Path:
    CACHE_DIR.mkdir(exist_ok=True)
    file = CACHE_DIR / f"{ds.name}__{method}.npz"
    streams = list(forecasts)
    arrays: dict[str, Any] = {
        "key": np.array(key),
        "streams": np.array(streams),
        "lengths": np.array([len(forecasts[s].one_step) for s in streams], dtype=np.int64),
        "one_step": np.concatenate([forecasts[s].one_step for s in streams]),
    }
    if ds.horizon is not None:
        origins = [forecasts[s].origin for s in streams]
        if any(o is None for o in origins):
            raise ValueError(f"{ds.name}/{method}: a series has no protocol-B forecast")
        arrays["origin"] = np.stack([np.asarray(o) for o in origins])
    if all(forecasts[s].one_step_q is not None for s in streams):
        arrays["one_step_q"] = np.concatenate([forecasts[s].one_step_q for s in streams])
    if ds.horizon is not None and all(forecasts[s].origin_q is not None for s in streams):
        arrays["origin_q"] = np.stack([np.asarray(forecasts[s].origin_q) for s in streams])
    np.savez_compressed(file, **arrays)
    return file


Origins = dict[str, tuple[np.ndarray | None, np.ndarray | None]]


def load_origins(ds: Dataset, method: str, key: str) -> Origins | None:
    """Per stream the forecasts from every protocol-B origin ``[O * h]`` and their quantiles."""
    data = _arrays(ds, method, key)
    if data is None:
        return None
    streams = [str(s) for s in data["streams"]]
    counts = np.cumsum(data["lengths"])[:-1]
    paths = np.split(data["origin"], counts)
    bands = np.split(data["origin_q"], counts)
    return dict(zip(streams, zip(paths, bands, strict=True), strict=True))


def save_origins(ds: Dataset, method: str, key: str, origins: Origins) -> Path:
    CACHE_DIR.mkdir(exist_ok=True)
    file = CACHE_DIR / f"{ds.name}__{method}.npz"
    streams = list(origins)
    paths = [np.asarray(origins[s][0], np.float64) for s in streams]
    bands = [np.asarray(origins[s][1], np.float64) for s in streams]
    np.savez_compressed(
        file,
        key=np.array(key),
        streams=np.array(streams),
        lengths=np.array([len(p) for p in paths], dtype=np.int64),
        origin=np.concatenate(paths),
        origin_q=np.concatenate(bands),
    )
    return file
