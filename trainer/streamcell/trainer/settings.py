"""TrainSettings: every knob of one training run, frozen and checked once.

Built by the CLI from its flags (or by a caller of :mod:`streamcell.trainer.api`),
then handed unchanged to the local loop, the Ray workers and the exported
config.json, so a checkpoint records exactly what produced it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from streamcell.core.errors import ConfigError
from streamcell.core.normalization import SCALING_GLOBAL, SCALINGS

GPU_MODES = ("auto", "on", "off")
MONITORS = ("val_mae", "val_rmse", "val_mase")


@dataclass(frozen=True)
class TrainSettings:
    """Model shape, optimisation and validation settings (no data, no I/O)."""

    hidden: int = 64
    layers: int = 2
    epochs: int = 20
    window: int = 32  # TBPTT length: gradients flow this many steps back
    batch_size: int = 64  # streams side by side in one batch
    lr: float = 3e-3
    seed: int = 0
    val_fraction: float = 0.2  # last fraction of every stream, predicted online
    patience: int = 5  # epochs without a better `monitor` before stopping
    scaling: str = SCALING_GLOBAL
    scale_floor: float = 1e-3
    grad_clip: float = 1.0
    carry_state: bool = True  # False resets (h, c) at every window (for comparison only)
    min_delta: float = 0.0  # relative improvement of `monitor` that counts as better
    monitor: str = "val_mae"  # picks the best epoch; val_mase weighs streams of any size alike

    def __post_init__(self) -> None:
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")

        for name in ("hidden", "layers", "epochs", "window", "batch_size", "patience"):
            positive_int(name)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if not (isinstance(self.lr, int | float) and 0 < self.lr < 10):
            raise ConfigError(f"lr must be in (0, 10), got {self.lr!r}")
        if not (isinstance(self.val_fraction, int | float) and 0 < self.val_fraction < 1):
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if self.scaling not in SCALINGS:
            raise ConfigError(f"scaling must be one of {', '.join(SCALINGS)}, got {self.scaling!r}")
        if not (isinstance(self.scale_floor, int | float) and self.scale_floor > 0):
            raise ConfigError(f"scale_floor must be positive, got {self.scale_floor!r}")
        if not (isinstance(self.grad_clip, int | float) and self.grad_clip > 0):
            raise ConfigError(f"grad_clip must be positive, got {self.grad_clip!r}")
        if self.monitor not in MONITORS:
            raise ConfigError(f"monitor must be one of {', '.join(MONITORS)}, got {self.monitor!r}")
        if not (isinstance(self.min_delta, int | float) and 0 <= self.min_delta < 1):
            raise ConfigError(f"min_delta must be in [0, 1), got {self.min_delta!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
