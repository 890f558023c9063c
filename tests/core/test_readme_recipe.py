"""README's plain-PyTorch recipe, run as written, reproduces the service's predictions.

The code blocks of README.md's "Reproducing the service's predictions" part
(numpy and torch.nn only: no streamcell import) are executed against random
models and series, and must match the Predictor to 1e-5, Forecast included:
relative, and absolute in units of the series' mean |y| (a prediction near
zero from a stream at level 1000 is a difference of large float32 numbers).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from recipe_support import make_recipe_model

from streamcell.core.checkpoint import ModelConfig, load_checkpoint, save_checkpoint
from streamcell.core.events import EventBatch
from streamcell.core.model import StreamingLSTM
from streamcell.core.predictor import Predictor

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "#### Reproducing the service's predictions with plain PyTorch"
PATH_LINE = 'path = "registry/demo/VERSION"'


def readme_code(version: Path) -> dict:
    """The section's Python blocks, executed in order, loading ``version``."""
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n#", start + len(SECTION))
    blocks = re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)
    assert len(blocks) == 3 and PATH_LINE in blocks[0]
    namespace: dict = {}
    exec(blocks[0].replace(PATH_LINE, f"path = {str(version)!r}"), namespace)
    exec(blocks[1], namespace)
    exec(blocks[2], namespace)
    assert not any(k.startswith("streamcell") for k in namespace)
    return namespace


def random_recipe(rng: np.random.Generator) -> dict:
    window = int(rng.choice([0, 1, 6, 12, 24]))
    return {
        "target": 0,
        "lags": sorted(rng.choice(np.arange(1, 30), size=int(rng.integers(1, 8)), replace=False)
                       .tolist()),
        "scale_window": window,
        "log_scale": bool(window and rng.random() < 0.7),
        "periods": sorted(rng.choice([3, 7, 12, 24], size=int(rng.integers(0, 3)), replace=False)
                          .tolist()),
        "age": bool(rng.random() < 0.5),
    }  # fmt: skip


def random_series(rng: np.random.Generator, length: int, width: int) -> np.ndarray:
    t = np.arange(length)
    level = rng.uniform(0.5, 2e3)
    y = level * (1.2 + np.sin(2 * np.pi * t / rng.integers(3, 13)) * rng.uniform(0, 0.5))
    x = rng.normal(size=(length, width)) * 3
    x[:, 0] = y + rng.normal(0, level / 10, length)
    return x.astype(np.float32)


def served(version: Path, x: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The Predictor's prediction after each event, and its Forecast (None where it has none)."""
    p = Predictor(load_checkpoint(version))
    got = p.predict(EventBatch.of(["s"] * len(x), x)).yhat
    forecast = p.forecast("s", horizon) if p.config.autoregressive else None
    return got, forecast


@pytest.mark.parametrize("seed", range(8))
def test_a_random_lag_model_is_reproduced_from_the_readme(tmp_path, seed):
    rng = np.random.default_rng(seed)
    recipe = random_recipe(rng)
    width = 1 if seed % 2 == 0 else 3  # odd seeds: with covariates (no Forecast)
    features = ("y", "temp", "promo")[:width]
    levels = (0.1, 0.5, 0.9) if seed >= 5 else ()  # the last three: a quantile head
    # Two of them calibrated (streamcell.core.calibration), one served raw.
    calibration = random_calibration(rng, len(levels)) if seed >= 6 else None
    version = make_recipe_model(
        tmp_path,
        recipe,
        seed=seed,
        features=features,
        quantile_levels=levels,
        calibration=calibration,
    )
    x = random_series(rng, int(rng.integers(20, 70)), width)
    if seed in FLAT_SEEDS:  # version 2, and a stream that ends flat: held at its value
        recipe["version"] = 2
        version = make_recipe_model(
            tmp_path / "v2",
            recipe,
            seed=seed,
            features=features,
            quantile_levels=levels,
            calibration=calibration,
        )
        x = flat_tail(x, recipe["scale_window"] + 3, 0.0 if seed % 2 else float(x[-1, 0]))
    horizon = 24 if width == 1 else 1
    got, forecast = served(version, x, horizon)
    doc = readme_code(version)
    want = doc["predictions"](x, doc["cfg"], doc["lstm"], doc["head"], horizon)
    tol = dict(rtol=1e-5, atol=1e-5 * float(np.abs(x[:, 0]).mean()), err_msg=str(recipe))
    np.testing.assert_allclose(got, want[: len(x)], **tol)
    if width == 1:
        assert forecast is not None
        np.testing.assert_allclose(forecast, want[len(x) - 1 :], **tol)
    if levels:
        p = Predictor(load_checkpoint(version))
        quantiles = p.predict(EventBatch.of(["s"] * len(x), x)).quantiles
        online, _ = doc["served_quantiles"](x, doc["cfg"], doc["lstm"], doc["head"])
        np.testing.assert_allclose(quantiles, online, **tol)


FLAT_SEEDS = (0, 3, 6, 7)


def flat_tail(x: np.ndarray, length: int, value: float) -> np.ndarray:
    """``x`` with its target's last ``length`` values all ``value``."""
    x = x.copy()
    x[-length:, 0] = value
    return x


def random_calibration(rng: np.random.Generator, levels: int) -> dict:
    """Factors about the median: online, and a forecast table shorter than the horizons asked."""
    rows = rng.uniform(0.3, 3.0, size=(3, levels)).round(4)
    rows[:, levels // 2] = 1.0
    return {"online": rows[0].tolist(), "forecast": rows[1:].tolist()}


@pytest.mark.parametrize(("calibrated", "flat"), [(False, False), (True, False), (True, True)])
def test_a_direct_heads_calibrated_quantiles_are_reproduced_from_the_readme(
    tmp_path, calibrated, flat
):
    rng = np.random.default_rng(11)
    levels = (0.1, 0.25, 0.5, 0.75, 0.9)
    recipe = {"target": 0, "lags": [1, 2, 12], "scale_window": 6, "log_scale": True}
    if flat:  # version 2 and a stream that ends in zeros: its quantiles are all 0
        recipe["version"] = 2
    version = make_recipe_model(
        tmp_path,
        {**recipe, "periods": [12], "age": True},
        seed=4,
        features=("y",),
        horizon=4,
        quantile_levels=levels,
        calibration=random_calibration(rng, len(levels)) if calibrated else None,
    )
    x = random_series(rng, 50, 1)
    if flat:
        x = flat_tail(x, 9, 0.0)
    p = Predictor(load_checkpoint(version))
    quantiles = p.predict(EventBatch.of(["s"] * len(x), x)).quantiles
    forecast = p.forecast_result("s", 4).quantiles
    doc = readme_code(version)
    online, steps = doc["served_quantiles"](x, doc["cfg"], doc["lstm"], doc["head"])
    tol = dict(rtol=1e-5, atol=1e-5 * float(np.abs(x[:, 0]).mean()))
    np.testing.assert_allclose(quantiles, online, **tol)
    np.testing.assert_allclose(forecast, steps, **tol)
    if flat:
        assert (quantiles[-4:] == 0).all() and (forecast == 0).all() and (steps == 0).all()


def test_a_blended_forecast_is_reproduced_from_the_readme(tmp_path):
    rng = np.random.default_rng(12)
    levels = (0.1, 0.5, 0.9)
    recipe = {"target": 0, "lags": [1, 2, 12], "scale_window": 6, "log_scale": True}
    version = make_recipe_model(
        tmp_path, {**recipe, "periods": [12]}, seed=5, features=("y",), horizon=4,
        quantile_levels=levels,
    )  # fmt: skip
    raw = json.loads((version / "config.json").read_text())
    raw["forecast_blend"] = True
    (version / "config.json").write_text(json.dumps(raw))
    x = random_series(rng, 50, 1)
    p = Predictor(load_checkpoint(version))
    p.predict(EventBatch.of(["s"] * len(x), x))
    result = p.forecast_result("s", 4)
    doc = readme_code(version)
    _, steps = doc["served_quantiles"](x, doc["cfg"], doc["lstm"], doc["head"])
    direct = steps[:, levels.index(0.5)]
    fed = doc["predictions"](x, doc["cfg"], doc["lstm"], doc["head"], 4)[len(x) - 1 :]
    want = 0.5 * (direct + fed)
    tol = dict(rtol=1e-5, atol=1e-5 * float(np.abs(x[:, 0]).mean()))
    assert result.method == "blend"
    np.testing.assert_allclose(result.yhat, want, **tol)
    np.testing.assert_allclose(result.quantiles, steps + (want - direct)[:, None], **tol)
    assert np.abs(want - direct)[1:].max() > 1e-3 * float(np.abs(x[:, 0]).mean())


@pytest.mark.parametrize("scaling", ["global", "stream_mean_abs"])
def test_a_model_without_a_recipe_is_reproduced_from_the_readme(tmp_path, scaling):
    torch.manual_seed(3)
    names = ("a", "b", "c")
    cfg = ModelConfig(
        3, 12, 2, 3, names, names, (0.5, -1.0, 2.0), (2.0, 0.5, 1.0), (0.1, 0.2, 0.3),
        (1.5, 1.0, 0.5), scaling=scaling,
    )  # fmt: skip
    version = save_checkpoint(tmp_path, "m", StreamingLSTM(3, 12, 2, 3), cfg)
    x = random_series(np.random.default_rng(9), 40, 3)
    got, forecast = served(version, x, horizon=10)
    doc = readme_code(version)
    want = doc["predictions"](x, doc["cfg"], doc["lstm"], doc["head"], horizon=10)
    tol = dict(rtol=1e-5, atol=1e-5 * float(np.abs(x).mean()))
    np.testing.assert_allclose(got, want[: len(x)], **tol)
    if scaling == "global":  # a stream_mean_abs forecast keeps the last real event's scale
        np.testing.assert_allclose(forecast, want[len(x) - 1 :], **tol)
