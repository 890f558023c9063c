"""Ray Train on a Ray Dataset: data that need not fit in the driver (``--data DIR``).

The driver reads the Parquet files as a Ray Dataset of whole streams
(:mod:`streamcell.trainer.ray_data`), computes prepare()'s statistics in
distributed passes (:mod:`streamcell.trainer.dataset_plan`), and gives each
rank a dataset of whole streams: taken in the order of a hash of their ids,
as many to each rank as round-robin gives (:func:`ray_data.shards`). Each
worker streams its streams in, prepares them with the plan and keeps them on
its local disk
(:mod:`streamcell.trainer.stream_store`); then the loop of loop.py runs as on
the in-memory path (ray_train.py: DDP, a checkpoint per epoch, restarts).
At the end each worker scores the best epoch through the serving step on its
streams and the sums come back, so the exported metrics are those the
in-memory path computes in the driver; with them, the counts that fit the
online quantile calibration (streamcell.trainer.calibrate; no Forecast table
here: its origins' Forecasts would need each stream in one place). The driver holds the plan, one
example stream (the model's shape) and the summaries; nothing grows with the
data.

Candidates (``settings.candidates``) are each trained in a run of their own
and the best on online (one-step) validation is kept; select.py's
fixed-origin choice needs the streams in the driver, so a direct head and
one fed back are compared here on step 1 only. The final fit on every row is
not offered here.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from streamcell.core.errors import ConfigError, DataError
from streamcell.trainer import ray_cluster
from streamcell.trainer.api import TrainResult, finish
from streamcell.trainer.calibrate import GRID
from streamcell.trainer.dataset_plan import example, plan_dataset
from streamcell.trainer.evaluate import EvalStats
from streamcell.trainer.loop import LoopState, new_model
from streamcell.trainer.prepare import Plan, StreamArrays
from streamcell.trainer.ray_data import StreamDataset, read_streams, shards
from streamcell.trainer.ray_train import (
    AfterEpoch,
    _fit,
    _ray_session,
    _train_worker,
    _use_gpu,
)
from streamcell.trainer.select import candidate_settings, forecast_kind, resolve_head
from streamcell.trainer.settings import GPU_MODES, TrainSettings

SHARD = "streams_rank_{}"
INGEST_STREAMS = 64  # streams a worker prepares at a time


def train_dataset(
    data: str | os.PathLike[str],
    settings: TrainSettings,
    *,
    stream_column: str = "stream",
    order_column: str = "seq",
    features: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    workers: int = 2,
    gpu: str = "auto",
    max_failures: int = 1,
    storage_path: str | None = None,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    log_to_driver: bool = False,
    after_epoch: AfterEpoch | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    threads: int = 1,
) -> TrainResult:
    """Train on a Parquet file or directory read as a Ray Dataset (see the module's text)."""
    if gpu not in GPU_MODES:
        raise ConfigError(f"gpu must be one of {', '.join(GPU_MODES)}, got {gpu!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    if not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    started = time.perf_counter()
    with _ray_session(ray_address, num_cpus or workers * threads, log_to_driver) as (joined, ray):
        streams = read_streams(
            data,
            stream_column,
            order_column,
            features,
            targets,
            val_fraction=settings.val_fraction,
        )
        if workers > streams.streams:
            raise DataError(
                f"--workers {workers} needs at least as many streams; the data has "
                f"{streams.streams} long enough to train on (each worker trains its own)"
            )
        own_storage = storage_path is None
        storage = storage_path or tempfile.mkdtemp(prefix="streamcell-ray-")
        try:
            if joined:
                ray_cluster.check_storage(storage)
            use_gpu = _use_gpu(gpu, workers, ray.cluster_resources())
            datasets = {SHARD.format(r): d for r, d in enumerate(shards(streams, workers))}
            chosen = _select(
                streams,
                settings,
                datasets,
                workers=workers,
                use_gpu=use_gpu,
                threads=threads,
                max_failures=max_failures,
                storage=storage,
                after_epoch=after_epoch,
                on_epoch=on_epoch,
            )
        finally:
            if own_storage:
                shutil.rmtree(storage, ignore_errors=True)
    option, plan, sample, state, stats, device, counts, record = chosen
    prepared = resolve_head(option, plan.prepared((sample,)))[1]
    return finish(
        streams.info,
        prepared,
        option,
        state,
        new_model(prepared, option),
        workers=workers,
        device=device,
        seconds=time.perf_counter() - started,
        selection=record,
        step_stats=stats,
        trained=(streams.streams, streams.train_pairs),
        calibration_counts=counts,
    )


def _with_horizon(option: TrainSettings, plan: Plan) -> TrainSettings:
    """The head's horizon settled as the in-memory path settles it (resolve_head)."""
    if option.horizon is not None:
        return option
    return replace(option, horizon=plan.default_horizon if plan.recipe is not None else 1)


def _select(
    streams: StreamDataset,
    settings: TrainSettings,
    datasets: dict[str, Any],
    **run: Any,
) -> tuple[
    TrainSettings,
    Plan,
    StreamArrays,
    LoopState,
    EvalStats,
    str,
    tuple[np.ndarray, int] | None,
    dict[str, Any],
]:
    """Each candidate trained and validated in a run of its own; the best one."""
    options = candidate_settings(settings)
    started = time.monotonic()
    budget = float(settings.time_budget)
    plans: dict[str, tuple[Plan, StreamArrays]] = {}
    tried: list[dict[str, Any]] = []
    best: tuple[float, Any] | None = None
    on_epoch = run.pop("on_epoch")
    widths = (len(streams.info.features), len(streams.info.targets))
    for k, option in enumerate(options):
        key = repr((option.periods, option.lags, option.scale_window, option.age, option.scaling))
        if key not in plans:
            plan = plan_dataset(streams, option)
            plans[key] = (plan, example(streams, plan))
        plan, sample = plans[key]
        option = _with_horizon(option, plan)
        share = 0.0
        if budget > 0:
            left = started + budget - time.monotonic()
            share = max(left / (len(options) - k), 1e-3)

        def report(record: dict[str, Any], k: int = k) -> None:
            if on_epoch is not None:
                extra = {"candidate": k, "candidates": len(options)} if len(options) > 1 else {}
                on_epoch({**record, **extra})

        t0 = time.monotonic()
        state, device, metrics = _fit(
            _dataset_worker,
            {"plan": plan, "widths": widths},
            datasets,
            replace(option, time_budget=share),
            on_epoch=report,
            **run,
        )
        stats = EvalStats(_array(metrics["step_stats"]))
        counts = None
        if "calibration_counts" in metrics:  # summed over the workers (trainer.calibrate)
            below = np.asarray(metrics["calibration_counts"], np.float64).reshape(-1, len(GRID))
            counts = (below, int(metrics["calibration_points"]))
        tried.append(
            {
                "overrides": dict((settings.candidates or ({},))[k]),
                "horizon": option.horizon,
                "score": state.best_score,
                "origin_score": math.nan,  # no driver-side streams to forecast from
                "best_epoch": state.best_epoch,
                "epochs_run": state.epoch,
                "seconds": round(time.monotonic() - t0, 1),
            }
        )
        if best is None or state.best_score < best[0]:
            best = (state.best_score, (option, plan, sample, state, stats, device, counts))
    assert best is not None
    record = {
        "monitor": settings.monitor,
        "candidates": tried,
        "chosen_by": settings.monitor,  # online validation: see the module's text
        "forecast": forecast_kind(best[1][0].horizon or 1),
        # The refit needs every row of a stream at once on one worker: in memory only.
        "final_fit": "off" if settings.final_fit == "off" else "off: in memory only",
    }
    return (*best[1], record)


def _array(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def _dataset_worker(config: dict[str, Any]) -> None:
    """One Ray worker: stream its rank's dataset in, keep it on disk, train on it."""
    import ray.train

    from streamcell.trainer.ray_data import decode
    from streamcell.trainer.stream_store import StreamStore

    rank = ray.train.get_context().get_world_rank()
    plan: Plan = config["plan"]
    features, targets = config["widths"]
    rows = ray.train.get_dataset_shard(SHARD.format(rank))
    with StreamStore() as store:
        for batch in rows.iter_batches(batch_size=INGEST_STREAMS, batch_format="numpy"):
            names, xs, ys = decode(batch, features, targets)
            for s in plan.build(names, xs, ys):
                store.append(s)
        store.seal()
        # Never empty: there are at least as many streams as workers (checked).
        settings = TrainSettings(**config["settings"])
        prepared = resolve_head(settings, plan.prepared(store))[1]
        _train_worker(config, prepared, list(range(len(store))), step_stats=True)
