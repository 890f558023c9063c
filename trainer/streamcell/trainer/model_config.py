"""The ModelConfig a trained model is served with: its shape, normalisation, recipe and head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamcell.core.checkpoint import LoadedModel, ModelConfig
from streamcell.core.model import StreamingLSTM
from streamcell.trainer.data import DataInfo, LongFrame
from streamcell.trainer.prepare import Prepared
from streamcell.trainer.settings import TrainSettings


def model_config(
    frame: LongFrame | DataInfo,
    prepared: Prepared,
    model: StreamingLSTM,
    settings: TrainSettings,
    *,
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
    forecast_blend: bool = False,
) -> ModelConfig:
    norm = prepared.norm
    return ModelConfig(
        input_size=len(frame.features),
        hidden_size=model.hidden_size,
        num_layers=model.num_layers,
        output_size=len(frame.targets),
        features=frame.features,
        targets=frame.targets,
        input_mean=tuple(float(v) for v in norm.input_mean),
        input_std=tuple(float(v) for v in norm.input_std),
        target_mean=tuple(float(v) for v in norm.target_mean),
        target_std=tuple(float(v) for v in norm.target_std),
        scaling=settings.scaling,
        scale_floor=float(settings.scale_floor),
        metrics=metrics or {},
        training=training or {},
        recipe=None if prepared.recipe is None else prepared.recipe.to_json(),
        quantile_levels=prepared.quantile_levels,
        horizon=prepared.horizon,
        calibration=calibration,
        forecast_blend=forecast_blend,
    )


def as_loaded(
    frame: LongFrame,
    prepared: Prepared,
    model: StreamingLSTM,
    settings: TrainSettings,
    forecast_blend: bool = False,
) -> LoadedModel:
    """A model still in training as a LoadedModel (what validation forecasts with)."""
    config = model_config(frame, prepared, model, settings, forecast_blend=forecast_blend)
    return LoadedModel("validation", "unsaved", Path("."), config, model)
