"""Models with a recipe for the tests: small, random, saved as the trainer saves them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from streamcell.core.checkpoint import ModelConfig, save_checkpoint
from streamcell.core.model import StreamingLSTM
from streamcell.core.normalization import SCALING_GLOBAL, SCALING_WINDOW
from streamcell.core.recipe import Recipe


def make_recipe_model(
    registry: Path,
    recipe: dict,
    name: str = "m",
    seed: int = 0,
    hidden: int = 16,
    version: str | None = None,
    features: tuple[str, ...] = ("a", "b", "c"),
    horizon: int = 1,
    quantile_levels: tuple[float, ...] = (),
    calibration: dict | None = None,
) -> Path:
    """A small random model with a recipe, over events of ``len(features)`` values.

    ``horizon`` and ``quantile_levels``: its head (a one-step point head by default);
    ``calibration``: its config.json field (streamcell.core.calibration).
    """
    history = Recipe.from_json(recipe, width=len(features), scale_floor=1e-3)
    inputs = history.num_features
    torch.manual_seed(seed)
    model = StreamingLSTM(inputs, hidden, 2, horizon * max(1, len(quantile_levels)))
    gen = torch.Generator().manual_seed(seed)
    cfg = ModelConfig(
        len(features),
        hidden,
        2,
        1,
        features,
        (features[history.target],),
        (torch.randn(inputs, generator=gen) * 0.5).tolist(),
        (torch.rand(inputs, generator=gen) + 0.5).tolist(),
        (0.1,),
        (1.5,),
        scaling=SCALING_WINDOW if history.scale_window else SCALING_GLOBAL,
        recipe=recipe,
        quantile_levels=quantile_levels,
        horizon=horizon,
        calibration=calibration,
    )
    return save_checkpoint(registry, name, model, cfg, version=version)


def seasonal_series(length: int = 40) -> np.ndarray:
    """One stream's values ``[length, 1]``: a season of 12 on a trend."""
    t = np.arange(length)
    return (100 + 20 * np.sin(2 * np.pi * t / 12) + t).astype(np.float32)[:, None]
