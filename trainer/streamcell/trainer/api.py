"""The trainer's public Python API (stable: the benchmark and the demo call it).

    frame = load_long_frame("events.csv", features=["value"])
    result = train_local(frame, TrainSettings(epochs=10))        # in-process, no Ray
    result = train_with_ray(frame, settings, workers=2, gpu="auto")
    path = export(result, registry="models", name="demand")

``TrainResult.model`` is the best epoch's model on the CPU, ready for
:class:`streamcell.core.predictor.Predictor` through ``LoadedModel``;
``TrainResult.config`` is the :class:`ModelConfig` that ``export`` writes
(normalisation, metrics of the best epoch, training provenance).
"""

from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from streamcell.core.checkpoint import LoadedModel, ModelConfig, save_checkpoint
from streamcell.core.model import StreamingLSTM
from streamcell.trainer.calibrate import calibrate, from_counts
from streamcell.trainer.data import DataInfo, LongFrame, drop_short, load_long_frame
from streamcell.trainer.evaluate import EvalStats, evaluate
from streamcell.trainer.loop import LoopState, restore_best
from streamcell.trainer.model_config import as_loaded, model_config
from streamcell.trainer.origin import baseline_origin_mase, origin_mase
from streamcell.trainer.periods import build_recipe
from streamcell.trainer.prepare import Prepared, prepare, target_column
from streamcell.trainer.select import (
    Chosen,
    choose,
    forecast_kind,
    resolve_head,
    select_and_fit,
    train_candidates,
)
from streamcell.trainer.settings import TrainSettings

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

__all__ = [
    "LongFrame",
    "TrainResult",
    "TrainSettings",
    "export",
    "load_long_frame",
    "loaded_model",
    "prepare_frame",
    "train_local",
    "train_with_ray",
    "train_with_ray_data",
]


@dataclass(frozen=True)
class TrainResult:
    """The best epoch's model, its config (with metrics), and one record per epoch."""

    model: StreamingLSTM
    config: ModelConfig
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.config.metrics


def prepare_frame(frame: LongFrame, settings: TrainSettings) -> Prepared:
    """Leave out streams too short to learn from, find the recipe, normalise, settle the head.

    Raises DataError before any training starts.
    """
    frame = drop_short(frame, settings.val_fraction)
    recipe = None
    if settings.recipe:
        target = target_column(frame)
        recipe = build_recipe(
            [y[: split(len(y), settings)] for y in (x[:, target] for x in frame.x)],
            width=len(frame.features),
            target=target,
            spacing=frame.spacing,
            periods=settings.periods,
            lags=settings.lags,
            scale_window=settings.scale_window,
            age=settings.age,
            scale_floor=settings.scale_floor,
        )
    prepared = prepare(
        frame,
        settings.val_fraction,
        settings.scaling,
        settings.scale_floor,
        recipe=recipe,
        weights=settings.stream_weights,
    )
    return resolve_head(settings, prepared)[1]


def split(length: int, settings: TrainSettings) -> int:
    from streamcell.trainer.data import split_point

    return split_point(length, settings.val_fraction)


def train_local(
    frame: LongFrame,
    settings: TrainSettings,
    *,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train in this process (no Ray): the plain loop over every stream.

    ``threads`` sets torch's intra-op threads for the run (small models on a
    busy machine train many times faster with 1); None leaves torch's setting.
    With ``settings.candidates`` each is trained and validated and the best
    kept (:mod:`streamcell.trainer.select`), then refitted on every row of
    the training part where ``settings.final_fit`` and the time budget allow.
    """
    started = time.perf_counter()
    with torch_threads(threads):
        chosen = select_and_fit(frame, settings, prepare_frame, device=device, on_epoch=on_epoch)
    return finish_chosen(frame, chosen, device, started)


def finish_chosen(
    frame: LongFrame,
    chosen: Chosen,
    device: str | torch.device,
    started: float,
    workers: int = 1,
) -> TrainResult:
    """The result of a selection's chosen model (select.py), exported as trained."""
    return finish(
        frame,
        chosen.prepared,
        chosen.settings,
        chosen.state,
        chosen.model,
        workers=workers,
        device=str(device),
        seconds=time.perf_counter() - started,
        final=chosen.final,
        selection=chosen.record,
    )


def train_local_per_protocol(
    frame: LongFrame,
    settings: TrainSettings,
    *,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, TrainResult]:
    """Like :func:`train_local`, choosing once per protocol from one set of candidates.

    ``online``: the candidate best one step ahead on validation (for online
    predictions); ``origin``: the best at fixed origin (for Forecast, what
    :func:`train_local` exports). Two models where the choices differ (each
    with its own final fit, as the budget left allows), one where they agree.
    """
    started = time.perf_counter()
    out: dict[str, TrainResult] = {}
    with torch_threads(threads):
        trials = train_candidates(frame, settings, prepare_frame, device=device, on_epoch=on_epoch)
        for protocol in ("origin", "online"):
            chosen = choose(trials, protocol, device=device, on_epoch=on_epoch)
            same = [r for r in out.values() if _same_choice(r, chosen.record)]
            out[protocol] = same[0] if same else finish_chosen(frame, chosen, device, started)
    return out


def _same_choice(result: TrainResult, record: dict[str, Any]) -> bool:
    """Whether a result holds the model ``record`` chose (the same candidate(s), kept alike)."""

    def picked(r: dict[str, Any]) -> tuple[Any, ...]:
        served = r["served"]
        first = r.get("first_step") or {}
        return r["chosen"], tuple(served["candidates"]), served["seeds"], first.get("candidate")

    return picked(result.config.training["selection"]) == picked(record)


def train_with_ray(
    frame: LongFrame,
    settings: TrainSettings,
    workers: int = 2,
    gpu: str = "auto",
    *,
    max_failures: int = 1,
    storage_path: str | None = None,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    log_to_driver: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    threads: int = 1,
) -> TrainResult:
    """Train with Ray Train: DDP over ``workers``, each on its own streams.

    Uses the running Ray if there is one, else joins ``ray_address``, else
    starts a local Ray with ``num_cpus`` (default: ``workers``) and stops it
    after. ``gpu``: auto (GPUs if Ray sees one per worker), on, off.
    ``max_failures``: worker-group restarts from the last epoch's checkpoint.
    ``storage_path``: where Ray keeps checkpoints (default: a temp dir,
    removed after). ``on_epoch`` gets each epoch's record in this process.
    ``threads``: torch threads (and CPUs reserved) per worker.
    """
    from streamcell.trainer.ray_train import train

    return train(
        frame,
        settings,
        workers=workers,
        gpu=gpu,
        max_failures=max_failures,
        storage_path=storage_path,
        ray_address=ray_address,
        num_cpus=num_cpus,
        log_to_driver=log_to_driver,
        on_epoch=on_epoch,
        threads=threads,
    )


def train_with_ray_data(
    data: str | os.PathLike[str],
    settings: TrainSettings,
    workers: int = 2,
    gpu: str = "auto",
    *,
    stream_column: str = "stream",
    order_column: str = "seq",
    features: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    **ray: Any,
) -> TrainResult:
    """Train with Ray Train on a Parquet file or directory read as a Ray Dataset.

    The driver's memory does not grow with the data: statistics come from
    distributed passes and each worker streams in its own whole streams
    (:mod:`streamcell.trainer.dataset_train`). ``ray`` takes the keywords of
    :func:`train_with_ray`. ``settings.candidates`` are each trained and the
    best on validation kept.
    """
    from streamcell.trainer.dataset_train import train_dataset

    return train_dataset(
        data,
        settings,
        stream_column=stream_column,
        order_column=order_column,
        features=features,
        targets=targets,
        workers=workers,
        gpu=gpu,
        **ray,
    )


def finish(
    frame: LongFrame | DataInfo,
    prepared: Prepared,
    settings: TrainSettings,
    state: LoopState,
    model: StreamingLSTM,
    *,
    workers: int,
    device: str,
    seconds: float,
    final: StreamingLSTM | None = None,
    selection: dict[str, Any] | None = None,
    step_stats: EvalStats | None = None,
    trained: tuple[int, int] | None = None,
    calibration_counts: tuple[np.ndarray, int] | None = None,
) -> TrainResult:
    """The best epoch's model, re-scored through the serving step, and its config.

    ``final``: the chosen settings refitted on every training row; it is
    what is exported, while the metrics stay those of the validated model.
    A Ray Dataset run, whose driver holds no data, passes the workers'
    ``step_stats`` and the (streams, train_pairs) it ``trained`` on.
    """
    best = restore_best(model, state)
    # The exported metrics come from the streaming step (the Predictor's code path).
    if step_stats is None:
        step_stats = evaluate(best, prepared, list(range(len(prepared))), path="step")
    if trained is None:
        trained = (len(prepared), prepared.train_pairs())
    metrics: dict[str, Any] = dict(step_stats.metrics())
    metrics.update(
        epoch=state.best_epoch,
        epochs_run=state.epoch,
        stopped_early=state.stopped_early,
        eval_path="step",
        season=prepared.season,
        final_fit=final is not None,
    )
    blend = bool((selection or {}).get("forecast_blend", {}).get("kept", False))
    metrics.update(horizon=prepared.horizon, forecast=forecast_kind(prepared.horizon, blend))
    if isinstance(frame, LongFrame):  # a Ray Dataset's driver holds no streams to forecast
        eval_horizon = max(prepared.default_horizon, prepared.horizon)
        metrics.update(
            val_origin_mase=origin_mase(
                as_loaded(frame, prepared, best, settings, blend), prepared, eval_horizon
            ),
            **baseline_origin_mase(prepared, eval_horizon),
            origin_horizon=eval_horizon,
        )
    # The factors are fitted for the model that is served: with a final fit, the
    # export. Its refit saw the validation rows, so they are not held out from it;
    # the validated model's factors were further off on held-out data, the blend's
    # spread and bias being its own (docs/BENCHMARKS.md, "Calibrated intervals, adaptive").
    # A Ray Dataset run's counts come from its workers' validated model.
    served = best if final is None or calibration_counts is not None else final
    calibration, metrics["calibration"] = quantile_calibration(
        frame, prepared, served, settings, calibration_counts, blend
    )
    if final is not None:
        best = final
        if calibration is not None:
            metrics["calibration"]["fitted_on"] = (
                "the validated model (the final fit: no holdout)"
                if served is not final
                else "the served model (its refit saw the validation rows)"
            )
    training = {
        "args": {
            **settings.to_dict(),
            "stream_column": frame.stream_column,
            "order_column": frame.order_column,
            "data": frame.source,
        },
        "data_fingerprint": frame.fingerprint,
        "rows": frame.rows,
        "streams": frame.stream_count,
        "streams_left_out": frame.stream_count - trained[0],
        "train_pairs": trained[1],
        "selection": selection or {},
        "workers": workers,
        "device": device,
        "seconds": round(seconds, 3),
        "train_seconds": round(state.train_seconds, 3),
        "samples_per_s": round(state.samples_per_second, 1),
        "resumed_at_epochs": list(state.resumed_at),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    config = model_config(
        frame,
        prepared,
        best,
        settings,
        metrics=metrics,
        training=training,
        calibration=calibration,
        forecast_blend=blend,
    )
    return TrainResult(best, config, list(state.history))


def quantile_calibration(
    frame: LongFrame | DataInfo,
    prepared: Prepared,
    best: StreamingLSTM,
    settings: TrainSettings,
    counts: tuple[np.ndarray, int] | None = None,
    forecast_blend: bool = False,
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The chosen model's ``calibration`` (None: none) and its record (see calibrate.py).

    A Ray Dataset run passes the online counts its workers summed (``counts``).
    """
    if not prepared.quantile_levels:
        return None, {}
    if not isinstance(frame, LongFrame):
        if counts is not None:
            return from_counts(counts[0], counts[1], prepared.quantile_levels)
        return None, {
            "skipped": "a Ray Dataset run without its workers' counts: its driver holds no "
            "validation data to fit on, so the quantiles are served as the head gives them"
        }
    horizon = max(prepared.default_horizon, prepared.horizon)
    return calibrate(as_loaded(frame, prepared, best, settings, forecast_blend), prepared, horizon)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (None: unchanged), then restore."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def export(result: TrainResult, registry: str | os.PathLike[str], name: str) -> Path:
    """Write the result as a new version in the registry; returns the version directory."""
    return save_checkpoint(registry, name, result.model, result.config)


def loaded_model(result: TrainResult, name: str = "unsaved") -> LoadedModel:
    """The result as a LoadedModel, for a Predictor without going through the registry."""
    return LoadedModel(name, "unsaved", Path("."), result.config, result.model)
