"""Ray Train: the plain loop of loop.py on N workers with DistributedDataParallel.

The driver validates and normalises the data before Ray starts (bad data fails
fast), puts it in the object store once, and runs a ``TorchTrainer``. Each
worker owns a disjoint shard of the streams (round-robin by rank), wraps the
model with ``prepare_model`` (DDP; gradients averaged every step), and after
every epoch reports its metrics; rank 0 also reports a checkpoint (weights,
optimiser, loop state, best weights). A worker failure restarts the group
from the last checkpoint (``FailureConfig``). The driver reads the final
checkpoint and builds the result from the best epoch; nothing here writes to
the model registry.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamcell.core.errors import ConfigError, DataError, StreamcellError
from streamcell.core.model import StreamingLSTM
from streamcell.trainer import ray_cluster
from streamcell.trainer.api import TrainResult, finish_chosen, prepare_frame
from streamcell.trainer.budget import Deadline, budget_clock
from streamcell.trainer.calibrate import online_counts
from streamcell.trainer.data import LongFrame
from streamcell.trainer.evaluate import evaluate
from streamcell.trainer.loop import (
    LoopState,
    epoch_line,
    fit,
    new_model,
    new_optimizer,
    restore_best,
)
from streamcell.trainer.prepare import Prepared
from streamcell.trainer.select import (
    Fitter,
    choose,
    train_candidates,
)
from streamcell.trainer.settings import GPU_MODES, TrainSettings

log = logging.getLogger(__name__)

STATE_FILE = "loop.json"
MODEL_FILE = "model.pt"
BEST_FILE = "best.pt"
EMA_FILE = "ema.pt"  # the moving average of the weights (settings.weight_average)
OPTIMIZER_FILE = "optimizer.pt"


# Ray Train's controller polls workers every 2 s by default and a report blocks until it
# is polled, so each epoch would cost at least 2 s; small runs poll faster. A value the
# user set in the environment wins.
RAY_TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}


AfterEpoch = Callable[[int, int, int], None]
"""(epoch, rank, world) -> None, called in each worker after its report of an epoch."""


class TrainingFailed(StreamcellError):
    """Ray Train gave up (the workers failed more often than max_failures allows)."""


def train(
    frame: LongFrame,
    settings: TrainSettings,
    *,
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
    """Train with ``workers`` Ray workers; starts (and stops) a local Ray if none is running.

    ``ray_address`` joins an existing cluster instead. ``after_epoch`` is
    called in every worker once it has reported an epoch (a test's failure
    injection raises there). ``on_epoch`` is called in the driver with
    each epoch's record as rank 0's checkpoints appear in the storage.
    ``threads``: torch threads (and CPUs reserved) per worker.
    """
    if gpu not in GPU_MODES:
        raise ConfigError(f"gpu must be one of {', '.join(GPU_MODES)}, got {gpu!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    if not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    if workers > len(frame.streams):
        raise DataError(
            f"--workers {workers} needs at least as many streams; the data has "
            f"{len(frame.streams)} (each worker trains on its own streams)"
        )
    started = time.perf_counter()
    prepare_frame(frame, settings)  # bad data fails here, before Ray starts
    with _ray_session(ray_address, num_cpus or workers * threads, log_to_driver) as (joined, ray):
        own_storage = storage_path is None
        storage = storage_path or tempfile.mkdtemp(prefix="streamcell-ray-")
        try:
            if joined:  # rank 0 writes checkpoints on its node; this driver reads them
                ray_cluster.check_storage(storage)
            use_gpu = _use_gpu(gpu, workers, ray.cluster_resources())
            run = partial(
                _fit,
                _worker,
                workers=workers,
                use_gpu=use_gpu,
                threads=threads,
                max_failures=max_failures,
                storage=storage,
                after_epoch=after_epoch,
                on_epoch=on_epoch,
            )
            # One selection as in one process (select.py), each fit a Ray Train
            # run of its own; without candidates, the settings alone.
            fitter = RayFitter(run)
            trials = train_candidates(
                frame, settings, prepare_frame, on_epoch=on_epoch, fitter=fitter
            )
            chosen = choose(trials, "origin", on_epoch=on_epoch)
        finally:
            if own_storage:
                shutil.rmtree(storage, ignore_errors=True)
    return finish_chosen(frame, chosen, fitter.device, started, workers)


class RayFitter(Fitter):
    """Each model of a selection (candidates, final fits) trained as a Ray Train run.

    The budget's clock is the driver's own plus what each run used on its
    workers' clock (rank 0's ``LoopState.budget_seconds``, at most its share),
    so a busy machine makes the selection slower, not different, as in one
    process.
    """

    def __init__(self, run: Callable[..., tuple[LoopState, str, dict[str, Any]]]) -> None:
        self._run = run
        self._spent = 0.0
        self.device = "cpu"

    def clock(self) -> float:
        return budget_clock() + self._spent

    def fit(
        self,
        model: StreamingLSTM,
        prepared: Prepared,
        settings: TrainSettings,
        *,
        deadline: Deadline | None,
        validate: bool,
        on_record: Callable[[dict[str, Any]], None] | None,
    ) -> LoopState:
        import ray

        share = 0.0 if deadline is None else max(deadline.left(), 1e-3)
        state, self.device, _ = self._run(
            {"data": ray.put(prepared), "validate": validate},
            None,
            replace(settings, time_budget=share),
            on_epoch=on_record,
        )
        if share:
            self._spent += min(state.budget_seconds, share)
        return state


@contextmanager
def _ray_session(
    ray_address: str | None, num_cpus: int, log_to_driver: bool
) -> Iterator[tuple[bool, Any]]:
    """The running Ray, or a joined cluster, or a local Ray of our own (stopped after).

    Yields (whether a cluster was joined, the ray module).
    """
    import ray

    own_ray = not ray.is_initialized()
    joined = own_ray and bool(ray_address)
    if own_ray:
        if ray_address:
            ray_cluster.join(ray_address, log_to_driver=log_to_driver)
        else:
            node_ip = ray_cluster.local_node_ip()
            where: dict[str, Any] = {} if node_ip is None else {"_node_ip_address": node_ip}
            ray.init(  # "local": a fresh instance, never one found via `ray start` state
                address="local",
                **where,
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=log_to_driver,
                configure_logging=False,
            )
    try:
        yield joined, ray
    finally:
        if own_ray:
            ray.shutdown()


def shard_streams(streams: int, rank: int, world: int) -> list[int]:
    """The stream indices worker ``rank`` of ``world`` trains and validates on (round-robin)."""
    return list(range(rank, streams, world))


def _use_gpu(mode: str, workers: int, resources: dict[str, float]) -> bool:
    gpus = resources.get("GPU", 0.0)
    if mode == "off":
        return False
    if mode == "on" and gpus < workers:
        raise ConfigError(f"--gpu on needs a GPU per worker: Ray sees {gpus:g} for {workers}")
    return gpus >= workers


def _fit(
    worker: Callable[[dict[str, Any]], None],
    config: dict[str, Any],
    datasets: dict[str, Any] | None,
    settings: TrainSettings,
    *,
    workers: int,
    use_gpu: bool,
    threads: int,
    max_failures: int,
    storage: str,
    after_epoch: AfterEpoch | None,
    on_epoch: Callable[[dict[str, Any]], None] | None,
) -> tuple[LoopState, str, dict[str, Any]]:
    """Run ``worker`` on a TorchTrainer; the final loop state, the device and rank 0's
    last metrics."""
    from ray.train import (
        CheckpointConfig,
        DataConfig,
        FailureConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchTrainer

    name = f"streamcell-{uuid.uuid4().hex[:12]}"
    extra: dict[str, Any] = {}
    if datasets:
        # Each rank has a dataset of its own (whole streams): none is split.
        extra = {"datasets": datasets, "dataset_config": DataConfig(datasets_to_split=[])}
    trainer = TorchTrainer(
        worker,
        train_loop_config={
            **config,
            "settings": settings.to_dict(),
            "threads": threads,
            "after_epoch": after_epoch,
        },
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": threads, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        **extra,
    )
    progress = _Progress(Path(storage) / name, on_epoch) if on_epoch else None
    try:
        if progress:
            progress.start()
        with _ray_train_env(RAY_TRAIN_ENV):
            result = trainer.fit()
    except Exception as exc:  # Ray wraps worker errors in its own types
        raise TrainingFailed(f"Ray training failed: {exc}") from exc
    finally:
        if progress:
            progress.finish()
    if result.error is not None:
        raise TrainingFailed(f"Ray training failed: {result.error}")
    if result.checkpoint is None:
        raise TrainingFailed("Ray training finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        state = _load_state(Path(d))
    return state, "cuda" if use_gpu else "cpu", dict(result.metrics or {})


def _worker(config: dict[str, Any]) -> None:
    """One Ray worker of the in-memory path: its round-robin shard of the prepared data."""
    import ray
    import ray.train

    ctx = ray.train.get_context()
    prepared: Prepared = ray.get(config["data"])
    _train_worker(
        config, prepared, shard_streams(len(prepared), ctx.get_world_rank(), ctx.get_world_size())
    )


def _train_worker(
    config: dict[str, Any], prepared: Prepared, shard: list[int], step_stats: bool = False
) -> None:
    """DDP over the workers, a checkpoint per epoch from rank 0.

    ``step_stats``: afterwards, score the best epoch through the serving step on
    each shard and report the sums (the driver holds no data to do it).
    """
    import ray
    import ray.train
    import ray.train.torch

    torch.set_num_threads(config["threads"])
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one line per report otherwise
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    settings = TrainSettings(**config["settings"])
    device = ray.train.torch.get_device()
    model = new_model(prepared, settings).to(device)
    optimizer = new_optimizer(model, settings)
    state = LoopState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = _load_state(Path(d))
            state.resumed_at.append(state.epoch)
            model.load_state_dict(torch.load(Path(d) / MODEL_FILE, weights_only=True))
            optimizer.load_state_dict(torch.load(Path(d) / OPTIMIZER_FILE, weights_only=True))
    net = ray.train.torch.prepare_model(model)
    after_epoch: AfterEpoch | None = config["after_epoch"]

    def save(st: LoopState, opt: torch.optim.Optimizer, record: dict[str, Any]) -> None:
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                _save_state(Path(tmp), st, model, opt)
                ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(record)

    def report(st: LoopState, opt: torch.optim.Optimizer) -> None:
        record = st.history[-1]
        if rank == 0:
            # Not print(): Ray Train patches it into a logger, which prints twice.
            sys.stderr.write(epoch_line(record, settings.epochs) + "\n")
            sys.stderr.flush()
        save(st, opt, record)
        if after_epoch is not None:
            after_epoch(st.epoch, rank, world)

    sync = _DistSync(device)
    state = fit(
        model,
        prepared,
        settings,
        shard=shard,
        net=net,
        optimizer=optimizer,
        state=state,
        sync=sync,
        on_epoch=report,
        validate=config.get("validate", True),  # False: the final fit on every row
    )
    if step_stats:
        best = restore_best(model, state)
        stats = sync.sum(evaluate(best, prepared, shard, path="step").values)
        record: dict[str, Any] = {"step_stats": stats.tolist()}
        if prepared.quantile_levels:  # the online calibration's counts (trainer.calibrate)
            counts = online_counts(best, prepared, shard)
            record["calibration_counts"] = sync.sum(counts.below[0].ravel()).tolist()
            record["calibration_points"] = int(sync.sum(counts.points.astype(np.float64))[0])
        save(state, optimizer, record)


@contextmanager
def _ray_train_env(values: dict[str, str]) -> Iterator[None]:
    """Set Ray Train knobs (propagated by Ray to its controller) for one fit, then restore."""
    added = [k for k in values if k not in os.environ]
    for k in added:
        os.environ[k] = values[k]
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


class _Progress(threading.Thread):
    """Reports epochs in the driver as rank 0's checkpoints land in the run's storage."""

    def __init__(self, run_dir: Path, callback: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(name="streamcell-train-progress", daemon=True)
        self.run_dir, self.callback = run_dir, callback
        self.seen = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            self.poll()

    def finish(self) -> None:
        self.done.set()
        self.join(5)
        self.poll()

    def poll(self) -> None:
        files = sorted(self.run_dir.glob(f"checkpoint_*/{STATE_FILE}"))
        if not files:
            return
        try:
            history = json.loads(files[-1].read_text())["history"]
        except (OSError, ValueError, KeyError):
            return  # being written; the next poll reads it
        for record in history[self.seen :]:
            self.callback(record)
        self.seen = max(self.seen, len(history))


class _DistSync:
    """Sums and maxima across the DDP process group."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def max_int(self, value: int) -> int:
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def sum(self, values: np.ndarray) -> np.ndarray:
        import torch.distributed as dist

        t = torch.from_numpy(np.asarray(values, dtype=np.float64)).to(self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().numpy()


def _save_state(
    d: Path, state: LoopState, model: torch.nn.Module, opt: torch.optim.Optimizer
) -> None:
    scalars = {k: v for k, v in asdict(state).items() if k not in ("best_state", "ema_state")}
    (d / STATE_FILE).write_text(json.dumps(scalars, default=float))
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, d / MODEL_FILE)
    torch.save(opt.state_dict(), d / OPTIMIZER_FILE)
    if state.best_state is not None:
        torch.save(state.best_state, d / BEST_FILE)
    if state.ema_state is not None:
        torch.save(state.ema_state, d / EMA_FILE)


def _load_state(d: Path) -> LoopState:
    state = LoopState(**json.loads((d / STATE_FILE).read_text()))
    if (d / BEST_FILE).exists():
        state.best_state = torch.load(d / BEST_FILE, weights_only=True)
    if (d / EMA_FILE).exists():
        state.ema_state = torch.load(d / EMA_FILE, weights_only=True)
    return state
