"""Models with a quantile head for the tests: random weights, saved as the trainer saves them.

No trainer is needed: the head is an ``nn.Linear`` of ``head_width`` outputs,
laid out level-major, like any other tensor of the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from streamcell.core.checkpoint import ModelConfig, save_checkpoint
from streamcell.core.model import StreamingLSTM

LEVELS = (0.1, 0.5, 0.9)
FEATURES = ("a", "b", "c")


def quantile_config(levels=LEVELS, hidden: int = 16, scaling: str = "global") -> ModelConfig:
    """Targets equal to features (so it forecasts), three of them."""
    n = len(FEATURES)
    return ModelConfig(
        n, hidden, 2, n, FEATURES, FEATURES,
        (0.5, 0.0, 1.0), (2.0, 1.0, 1.0), (0.5, 0.0, 1.0), (2.0, 1.0, 1.0),
        scaling=scaling, quantile_levels=levels,
    )  # fmt: skip


def make_quantile_model(
    registry: Path,
    name: str = "m",
    levels=LEVELS,
    seed: int = 0,
    hidden: int = 16,
    version: str | None = None,
    scaling: str = "global",
) -> Path:
    cfg = quantile_config(levels, hidden, scaling)
    torch.manual_seed(seed)
    model = StreamingLSTM(cfg.input_size, hidden, 2, cfg.head_width)
    with torch.no_grad():
        # Spread the levels apart (level-major rows), so the intervals have width.
        bias = model.head.bias.view(max(1, len(levels)), cfg.output_size)
        for k, level in enumerate(levels):
            bias[k] += 2.0 * (level - 0.5)
    return save_checkpoint(registry, name, model, cfg, version=version)


def make_constant_quantile_model(
    registry: Path, bounds: tuple[float, float, float] = (-1.0, 0.0, 1.0), name: str = "m"
) -> Path:
    """One feature, levels 0.1, 0.5, 0.9 always predicted as ``bounds``: a head of zero
    weights predicts its bias whatever came, so coverage is known in advance."""
    cfg = ModelConfig(
        1, 4, 1, 1, ("v",), ("v",), (0.0,), (1.0,), (0.0,), (1.0,), quantile_levels=LEVELS
    )
    model = StreamingLSTM(1, 4, 1, 3)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor(bounds))
    return save_checkpoint(registry, name, model, cfg)
