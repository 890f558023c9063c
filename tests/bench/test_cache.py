"""The on-disk cache of protocol B from many origins: a round trip, and a stale key."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("statsmodels")

# bench/ is a directory of scripts at the repository root, not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import cache
from bench.metrics import LEVELS


def test_origins_round_trip_and_a_stale_key_misses(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(cache, "CACHE_DIR", tmp_path)
    ds = SimpleNamespace(name="toy")
    rng = np.random.default_rng(0)
    origins = {
        "a": (rng.normal(size=6), rng.normal(size=(6, len(LEVELS)))),
        "b": (rng.normal(size=4), rng.normal(size=(4, len(LEVELS)))),
    }
    key = cache.cache_key("data", "sarima_origins")
    file = cache.save_origins(ds, "sarima_origins", key, origins)
    assert file.parent == tmp_path
    back = cache.load_origins(ds, "sarima_origins", key)
    assert back is not None and list(back) == ["a", "b"]
    for stream, (paths, bands) in origins.items():
        np.testing.assert_array_equal(back[stream][0], paths)
        np.testing.assert_array_equal(back[stream][1], bands)
    other = cache.cache_key("other data", "sarima_origins")
    assert cache.load_origins(ds, "sarima_origins", other) is None
    assert cache.load_origins(ds, "ets_origins", key) is None


def test_origin_entries_have_their_own_code_versions() -> None:
    # Adding them must not have changed the methods' own keys (no recompute elsewhere).
    assert cache.CODE_VERSIONS["sarima"] == cache.CODE_VERSIONS["ets"] == 2
    assert {"sarima_origins", "ets_origins"} <= set(cache.CODE_VERSIONS)
