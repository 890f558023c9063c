"""TrainSettings: every knob of one training run, frozen and checked once.

Built by the CLI from its flags (or by a caller of :mod:`streamcell.trainer.api`),
then handed unchanged to the local loop, the Ray workers and the exported
config.json, so a checkpoint records exactly what produced it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from streamcell.core.checkpoint import check_head
from streamcell.core.errors import ConfigError
from streamcell.core.normalization import SCALING_WINDOW, SCALINGS
from streamcell.core.quantiles import check_levels

GPU_MODES = ("auto", "on", "off")
MONITORS = ("val_mae", "val_rmse", "val_mase")
LOSSES = ("mae", "mse")
# off: export the validated model; refit: a refit on every training row instead;
# blend: both, served as one model that averages them (streamcell.trainer.select).
FINAL_FITS = ("off", "refit", "blend")
# auto: validate a moving average of the weights beside them each epoch, keep the better;
# ema: the average always; off: the weights as trained (streamcell.trainer.loop.fit).
WEIGHT_AVERAGES = ("auto", "ema", "off")
# What `streamcell train` tries besides its settings (overrides), chosen on validation:
# the direct multi-horizon head of the defaults, and the one-step head fed back.
DEFAULT_CANDIDATES: tuple[dict[str, Any], ...] = ({}, {"horizon": 1})
# Nine levels: the weighted quantile loss is scored over exactly these, and the
# sample paths of a Forecast draw from a quantile function resolved in tenths.
DEFAULT_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class TrainSettings:
    """Model shape, optimisation and validation settings (no data, no I/O)."""

    # Units per layer of each model (the default blend serves two: 64 in all).
    hidden: int = 32
    layers: int = 2
    # Independent LSTMs trained side by side and served as one of members x hidden
    # units whose head averages them (streamcell.trainer.ensemble).
    members: int = 1
    epochs: int = 20
    window: int = 32  # TBPTT length: gradients flow this many steps back
    batch_size: int = 32  # streams side by side in one batch
    # An epoch makes at least this many updates, passing over a small data set again
    # (as GluonTS's epochs of 50 batches do): a few short streams make few batches.
    epoch_steps: int = 50
    lr: float = 3e-3
    seed: int = 0
    val_fraction: float = 0.2  # last fraction of every stream, predicted online
    patience: int = 5  # epochs without a better `monitor` before stopping
    # window_mean_abs: the model takes the history features of a recipe
    # (streamcell.core.recipe); global and stream_mean_abs: the event's values.
    scaling: str = SCALING_WINDOW
    scale_floor: float = 1e-3
    grad_clip: float = 1.0
    # One of WEIGHT_AVERAGES, and the average's decay per optimiser step.
    weight_average: str = "auto"
    ema_decay: float = 0.99
    carry_state: bool = True  # False resets (h, c) at every window (for comparison only)
    min_delta: float = 0.0  # relative improvement of `monitor` that counts as better
    monitor: str = "val_mase"  # picks the best epoch; val_mase weighs streams of any size alike
    # mae: the absolute error MASE scores (with quantile levels: the pinball loss,
    # which is the absolute error at the median); mse: squared (a point head only)
    loss: str = "mae"
    # MASE weighs series equally: each point's loss is weighed by its scale over
    # its stream's in-sample last-value MAE (what its error counts for in MASE).
    stream_weights: bool = True
    # Recipe (window_mean_abs only). None: found from the data (streamcell.trainer.periods).
    periods: tuple[int, ...] | None = None
    lags: tuple[int, ...] | None = None
    scale_window: int | None = None
    age: bool = False  # log(1 + n): serving runs past the ages trained on, so off by default
    time_budget: float = 0.0  # seconds for the whole run; 0: no limit (epochs and patience)
    # Candidates tried on validation (overrides of these settings); the best is kept.
    candidates: tuple[dict[str, Any], ...] = ()
    final_fit: str = "blend"  # one of FINAL_FITS (see streamcell.trainer.select)
    # Where the chosen candidate has a direct head and another is better one step
    # ahead on validation: serve that one's first step (online) beside the chosen
    # one's later steps (Forecast), as one model (streamcell.trainer.select).
    online_first_step: bool = True
    # Up to this many candidates of the chosen one's head and features, the best at
    # fixed origin, averaged as one model where the average validates better there.
    average_top: int = 1
    # The chosen candidate trained this many times in all (other seeds), where the
    # budget left allows, and the runs averaged where that validates better.
    seeds: int = 1
    # The head: steps predicted at once (None: streamcell.trainer.periods.default_horizon;
    # 1: the next step, fed back to forecast further) and quantile levels (empty: a point).
    horizon: int | None = None
    quantile_levels: tuple[float, ...] = DEFAULT_LEVELS

    def __post_init__(self) -> None:
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")

        for name in (
            "hidden",
            "layers",
            "members",
            "epochs",
            "window",
            "batch_size",
            "epoch_steps",
            "patience",
            "average_top",
            "seeds",
        ):
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
        if self.weight_average not in WEIGHT_AVERAGES:
            raise ConfigError(
                f"weight_average must be one of {', '.join(WEIGHT_AVERAGES)}, "
                f"got {self.weight_average!r}"
            )
        if not (
            isinstance(self.ema_decay, int | float)
            and not isinstance(self.ema_decay, bool)
            and 0 < self.ema_decay < 1
        ):
            raise ConfigError(f"ema_decay must be in (0, 1), got {self.ema_decay!r}")
        if self.monitor not in MONITORS:
            raise ConfigError(f"monitor must be one of {', '.join(MONITORS)}, got {self.monitor!r}")
        if not (isinstance(self.min_delta, int | float) and 0 <= self.min_delta < 1):
            raise ConfigError(f"min_delta must be in [0, 1), got {self.min_delta!r}")
        if isinstance(self.final_fit, bool):  # the flag of earlier versions
            object.__setattr__(self, "final_fit", "refit" if self.final_fit else "off")
        if self.final_fit not in FINAL_FITS:
            raise ConfigError(
                f"final_fit must be one of {', '.join(FINAL_FITS)}, got {self.final_fit!r}"
            )
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        for name in ("periods", "lags"):
            value = getattr(self, name)
            if value is None:
                continue
            value = tuple(value)
            object.__setattr__(self, name, value)
            low = 2 if name == "periods" else 1
            if any(not isinstance(v, int) or isinstance(v, bool) or v < low for v in value):
                raise ConfigError(f"{name} must be integers >= {low}, got {list(value)}")
        if self.lags == ():
            raise ConfigError("lags must name at least one lag")
        if self.scale_window is not None and (
            not isinstance(self.scale_window, int) or self.scale_window < 1
        ):
            raise ConfigError(f"scale_window must be a positive integer, got {self.scale_window!r}")
        if not (isinstance(self.time_budget, int | float) and self.time_budget >= 0):
            raise ConfigError(f"time_budget must be >= 0 seconds, got {self.time_budget!r}")
        try:
            object.__setattr__(self, "quantile_levels", check_levels(self.quantile_levels))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        problem = check_head(1 if self.horizon is None else self.horizon)
        if problem:
            raise ConfigError(problem)
        if self.loss == "mse" and self.quantile_levels:
            raise ConfigError(
                "loss mse trains a point head; quantile_levels must be empty (--quantiles none)"
            )
        object.__setattr__(self, "candidates", tuple(dict(c) for c in self.candidates))
        for candidate in self.candidates:
            unknown = set(candidate) - set(self.__dataclass_fields__) - {"candidates"}
            if unknown or "candidates" in candidate:
                raise ConfigError(f"candidate {candidate} names unknown settings")
            replace(self, candidates=(), **candidate)  # checks its values

    @property
    def recipe(self) -> bool:
        """Whether the model takes a recipe's history features."""
        return self.scaling == SCALING_WINDOW

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
