"""The training loop as a plain function: stateful TBPTT, validation, early stopping.

Runs the same in-process (tests, the benchmark) and inside each Ray worker;
what differs is passed in: the module to train (the model, or its DDP
wrapper), the streams this process owns, and a :class:`Sync` that adds up
numbers across workers (identity when alone).

Per epoch the owned streams are shuffled (seed + epoch, so a resumed run
repeats the same order) and grouped ``batch_size`` at a time, side by side,
padded at the end, the loss masked; an epoch makes at least
``settings.epoch_steps`` updates (as GluonTS's epochs of 50 batches do),
passing over a small data set again, each time in a new order, rather than
stopping early after a handful of updates. Each group's training part is cut into
consecutive windows of ``window`` steps; (h, c) leave one window detached and
enter the next (truncated BPTT), so the model learns from the long state that
serving keeps. Workers may own different amounts of data; every worker runs
the same number of optimiser steps (the largest), padding with zero-gradient
steps, because each DDP step is a collective.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from streamcell.core.model import StreamingLSTM
from streamcell.trainer.budget import Deadline, budget_clock
from streamcell.trainer.ensemble import block_masks, init_members, keep_blocks
from streamcell.trainer.evaluate import EvalStats, evaluate
from streamcell.trainer.prepare import Prepared, horizon_targets
from streamcell.trainer.settings import TrainSettings

log = logging.getLogger(__name__)


class Sync(Protocol):
    """How workers agree; the local implementation is the identity."""

    def max_int(self, value: int) -> int: ...

    def sum(self, values: np.ndarray) -> np.ndarray: ...


class LocalSync:
    def max_int(self, value: int) -> int:
        return value

    def sum(self, values: np.ndarray) -> np.ndarray:
        return values


@dataclass
class LoopState:
    """Everything needed to continue a run after a restart (and its outcome)."""

    epoch: int = 0  # epochs completed
    best_epoch: int = 0
    best_score: float = float("inf")  # the best epoch's settings.monitor metric
    best_metrics: dict[str, Any] = field(default_factory=dict)
    best_state: dict[str, Tensor] | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    # The epochs' time on the budget's clock (streamcell.trainer.budget), this process's;
    # ``fit_budget_seconds`` the share of it in training steps (validation left out).
    budget_seconds: float = 0.0
    fit_budget_seconds: float = 0.0
    samples: int = 0  # target points trained on, all workers, all epochs
    resumed_at: list[int] = field(default_factory=list)  # epochs a restarted run went on from
    # The moving average of the weights (settings.weight_average) and its updates so far.
    ema_state: dict[str, Tensor] | None = None
    ema_updates: int = 0

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.train_seconds if self.train_seconds > 0 else 0.0


def new_model(prepared: Prepared, settings: TrainSettings) -> StreamingLSTM:
    """A fresh model whose head has ``prepared``'s horizon and levels.

    With ``settings.members`` > 1 it holds that many members of
    ``settings.hidden`` units each (streamcell.trainer.ensemble).
    """
    torch.manual_seed(settings.seed)
    f = prepared.streams[0].u.shape[1]
    o = prepared.streams[0].z.shape[1]
    width = o * prepared.horizon * max(1, len(prepared.quantile_levels))
    model = StreamingLSTM(f, settings.hidden * settings.members, settings.layers, width)
    if settings.members > 1:
        init_members(model, settings.members)
    return model


def new_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=settings.lr)


# Updates over which the average's decay warms up to settings.ema_decay (as TensorFlow's
# ExponentialMovingAverage with num_updates does): early weights are soon forgotten.
EMA_WARMUP = 10


class WeightAverage:
    """An exponential moving average of ``model``'s weights, updated after every step.

    Held in a copy of the model, so it is validated as any model is. Under DDP every
    worker applies the same updates to the same weights, so the copies agree.
    """

    def __init__(self, model: StreamingLSTM, decay: float, state: LoopState) -> None:
        self.model = copy.deepcopy(model)
        self.model.eval()
        if state.ema_state is not None:  # a resumed run goes on with its average
            self.model.load_state_dict(state.ema_state)
        self.decay = decay
        self.state = state
        self._pairs = list(zip(self.model.parameters(), model.parameters(), strict=True))

    @torch.no_grad()
    def update(self) -> None:
        n = self.state.ema_updates
        decay = min(self.decay, (1 + n) / (EMA_WARMUP + n))
        for avg, p in self._pairs:
            avg.lerp_(p.detach(), 1.0 - decay)
        self.state.ema_updates = n + 1

    def keep(self) -> None:
        """Into the loop state, so a checkpoint of it resumes the same average."""
        self.state.ema_state = _cpu_copy(self.model)


def _cpu_copy(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def fit(
    model: StreamingLSTM,
    prepared: Prepared,
    settings: TrainSettings,
    *,
    shard: list[int],
    net: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    state: LoopState | None = None,
    sync: Sync | None = None,
    on_epoch: Callable[[LoopState, torch.optim.Optimizer], None] | None = None,
    deadline: Deadline | None = None,
    validate: bool = True,
) -> LoopState:
    """Train ``model`` on the streams ``shard`` until the epochs run out or patience does.

    ``net`` is what the forward pass goes through (a DDP wrapper of ``model``
    in Ray; ``model`` itself otherwise). ``state`` and the optimizer's state
    resume an interrupted run. ``on_epoch`` sees the state after each epoch.
    ``deadline`` (:mod:`streamcell.trainer.budget`: CPU time per thread, capped
    on the wall clock) stops after the epoch that passes it (or one that
    would, at the pace so far); ``settings.time_budget`` sets one from now
    where none is given. ``validate=False`` (the final fit on every
    row) scores nothing and keeps the last epoch.

    ``settings.weight_average``: ``auto`` (a one-step head; a direct head
    keeps its raw weights) also validates a moving average of
    the weights (:class:`WeightAverage`) each epoch and keeps, for the epoch,
    whichever scores better by ``settings.monitor`` (the record says which:
    ``weights``); ``ema`` keeps the average always (without validation too:
    the final fit of a candidate whose average won); ``off`` the raw weights.
    The average is only ever a copy: training goes on from the raw weights.
    """
    net = net or model
    sync = sync or LocalSync()
    optimizer = optimizer or new_optimizer(net, settings)
    state = state or LoopState()
    device = model.head.weight.device
    if deadline is None and settings.time_budget > 0:
        deadline = Deadline.after(settings.time_budget)
    averaging = settings.weight_average
    if averaging == "auto" and prepared.horizon > 1:
        # auto picks an epoch's weights by the one-step monitor: what a one-step head
        # serves, not a direct head's later steps (chosen on fixed-origin validation).
        averaging = "off"
    ema = WeightAverage(model, settings.ema_decay, state) if averaging != "off" else None
    while state.epoch < settings.epochs and not state.stopped_early:
        epoch = state.epoch + 1
        t0 = time.perf_counter()
        c0 = budget_clock()
        loss_sum, points = _train_epoch(
            net, optimizer, prepared, settings, shard, epoch, device, sync,
            None if ema is None else ema.update,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        state.fit_budget_seconds += budget_clock() - c0
        kept: StreamingLSTM = ema.model if ema is not None and averaging == "ema" else model
        metrics: dict[str, Any] = {}
        if validate:
            metrics = EvalStats(sync.sum(evaluate(kept, prepared, shard).values)).metrics()
            if ema is not None and averaging == "auto":
                raw = metrics.get(settings.monitor, float("nan"))
                averaged = EvalStats(sync.sum(evaluate(ema.model, prepared, shard).values))
                other = averaged.metrics()
                wins = other.get(settings.monitor, float("nan")) < raw
                metrics = {
                    **(other if wins else metrics),
                    f"{settings.monitor}_raw": raw,
                    f"{settings.monitor}_ema": other.get(settings.monitor, float("nan")),
                }
                kept = ema.model if wins else model
        if ema is not None:
            metrics["weights"] = "ema" if kept is ema.model else "raw"
            ema.keep()
        state.epoch = epoch
        state.train_seconds += seconds
        state.samples += int(points)
        score = metrics.get(settings.monitor, float("nan"))
        # A NaN score (nothing validated) keeps the newest epoch.
        better = math.isnan(score) or score < state.best_score * (1 - settings.min_delta)
        if better:
            state.best_epoch, state.best_score = epoch, score
            state.best_metrics = {**metrics, "epoch": epoch}
            state.best_state = _cpu_copy(kept)
            state.bad_epochs = 0
        else:
            state.bad_epochs += 1
            state.stopped_early = state.bad_epochs >= settings.patience
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / max(points, 1.0),
            "samples": int(points),
            "samples_per_s": points / seconds if seconds > 0 else 0.0,
            "seconds": seconds,
            "best": better,
            **metrics,
        }
        if not validate:  # the final fit: its own epoch count, no validation
            record.update(final_fit=True, epochs=settings.epochs)
        state.budget_seconds += budget_clock() - c0
        if deadline is not None:
            pace = (budget_clock() - c0) * 0.5  # the next epoch must fit half its time
            late = int(deadline.would_pass(pace))
            if sync.max_int(late) and state.epoch < settings.epochs:
                state.stopped_early = True
                record["out_of_time"] = True
        state.history.append(record)
        if on_epoch is not None:
            on_epoch(state, optimizer)
    return state


def _train_epoch(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    prepared: Prepared,
    settings: TrainSettings,
    shard: list[int],
    epoch: int,
    device: torch.device,
    sync: Sync,
    after_step: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """One epoch: passes over the shard, each in its own order, until it has made at
    least ``settings.epoch_steps`` updates; returns (sum of weighted losses, target points),
    all workers. ``after_step`` runs after every optimiser step."""
    net.train()
    rng = np.random.default_rng([settings.seed, epoch])
    window = settings.window
    batches: list[list[int]] = []
    lengths: list[int] = []
    steps = 0
    while steps < settings.epoch_steps:
        order = [shard[k] for k in rng.permutation(len(shard))]
        more = [
            order[k : k + settings.batch_size] for k in range(0, len(order), settings.batch_size)
        ]
        widest = [max(prepared.streams[i].n_train - 1 for i in b) for b in more]
        added = sum(-(-n // window) for n in widest)
        if not added:  # nothing to train on here (an empty shard)
            break
        batches += more
        lengths += widest
        steps += added
    total_steps = sync.max_int(steps)
    loss_sum = torch.zeros((), dtype=torch.float64)
    points = 0.0
    head = _HeadLoss(prepared, device)
    members = settings.members
    masks = block_masks(net, members)
    for batch, longest in zip(batches, lengths, strict=True):
        if head.plain:
            u, z, mask = _padded(prepared, batch, longest, device)
        else:
            u, z, mask = _padded_horizon(prepared, batch, longest, device)
        h, c = None, None
        for t in range(0, longest, window):
            hc: tuple[Tensor, Tensor] | None = None if h is None or c is None else (h, c)
            y, (h, c) = net(u[:, t : t + window], hc, members)
            m = mask[:, t : t + window]
            if head.plain:
                target = z[:, t : t + window]
                diff = y - (target if members == 1 else target.unsqueeze(2))
                per = diff.abs() if settings.loss == "mae" else diff**2
                sq = per.mean(dim=tuple(range(2, per.dim()))) * m
            else:
                sq = head(y, z[:, t : t + window], m, members)
                m = m[:, :, 0]
            count = (m > 0).sum().clamp(min=1)
            loss = sq.sum() / count
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), settings.grad_clip)
            optimizer.step()
            keep_blocks(masks)
            if after_step is not None:
                after_step()
            loss_sum += sq.sum().detach().double().cpu()
            points += float(count)
            if settings.carry_state:
                h, c = h.detach(), c.detach()
            else:
                h, c = None, None
    f = prepared.streams[0].u.shape[1]
    for _ in range(total_steps - steps):  # keep in step with workers that own more data
        y, _ = net(torch.zeros(1, 1, f, device=device))
        optimizer.zero_grad(set_to_none=True)
        (y.sum() * 0.0).backward()
        nn.utils.clip_grad_norm_(net.parameters(), settings.grad_clip)
        optimizer.step()
        keep_blocks(masks)
        if after_step is not None:
            after_step()
    both = sync.sum(np.array([float(loss_sum), points]))
    return float(both[0]), float(both[1])


def _padded(
    prepared: Prepared, batch: list[int], longest: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    first = prepared.streams[batch[0]]
    u = np.zeros((len(batch), longest, first.u.shape[1]), dtype=np.float32)
    z = np.zeros((len(batch), longest, first.z.shape[1]), dtype=np.float32)
    mask = np.zeros((len(batch), longest), dtype=np.float32)
    for k, i in enumerate(batch):
        s = prepared.streams[i]
        n = s.n_train - 1
        u[k, :n], z[k, :n] = s.u[:n], s.z[:n]
        mask[k, :n] = 1.0 if s.weight is None else s.weight[:n]
    return (
        torch.from_numpy(u).to(device),
        torch.from_numpy(z).to(device),
        torch.from_numpy(mask).to(device),
    )


class _HeadLoss:
    """The loss of a direct or quantile head, per step ``[B, W]``, weights applied.

    Per horizon step and target: half the absolute error of the median (the
    point that is scored) and half the pinball loss averaged over the levels
    (times 2, so that at the median alone it is the absolute error); the
    absolute error of a point head. Over the horizon: half the first step
    (what online serving scores) and half the mean over every step, so the
    first step counts for at least half of the loss.
    """

    def __init__(self, prepared: Prepared, device: torch.device) -> None:
        self.steps = prepared.horizon
        self.levels = prepared.quantile_levels
        self.plain = self.steps == 1 and not self.levels
        self.outputs = prepared.streams[0].z.shape[1]
        self.tau = torch.tensor(self.levels or (0.5,), dtype=torch.float32, device=device)
        self.mid = self.levels.index(0.5) if self.levels else 0
        share = torch.full((self.steps,), 0.5 / self.steps, device=device)
        share[0] += 0.5
        self.share = share

    def __call__(self, y: Tensor, z: Tensor, m: Tensor, members: int = 1) -> Tensor:
        """``y`` [B, W, head] (or [B, W, K, head], K members), ``z`` [B, W, H, O],
        ``m`` [B, W, H] -> [B, W], the members' losses averaged."""
        b, w = y.shape[:2]
        pred = y.reshape(b, w, members, self.steps, len(self.tau), self.outputs)
        diff = z.view(b, w, 1, self.steps, 1, self.outputs) - pred
        tau = self.tau.view(1, 1, 1, 1, -1, 1)
        pinball = 2 * torch.maximum(tau * diff, (tau - 1) * diff)  # [B, W, K, H, L, O]
        per = 0.5 * pinball[:, :, :, :, self.mid].mean(dim=4) + 0.5 * pinball.mean(dim=(4, 5))
        return (per.mean(dim=2) * m * self.share).sum(dim=2)


def _padded_horizon(
    prepared: Prepared, batch: list[int], longest: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Inputs ``[B, T, F]``, targets of every horizon step ``[B, T, H, O]``, weights
    ``[B, T, H]`` (0 past the stream's training part)."""
    first = prepared.streams[batch[0]]
    steps = prepared.horizon
    u = np.zeros((len(batch), longest, first.u.shape[1]), dtype=np.float32)
    z = np.zeros((len(batch), longest, steps, first.z.shape[1]), dtype=np.float32)
    mask = np.zeros((len(batch), longest, steps), dtype=np.float32)
    for k, i in enumerate(batch):
        s = prepared.streams[i]
        n = s.n_train - 1
        u[k, :n] = s.u[:n]
        # Targets up to the end of the training part only: validation stays unseen.
        trimmed = replace(s, y=s.y[: s.n_train], z=s.z[:n], target_scale=s.target_scale[:n])
        zk = horizon_targets(trimmed, prepared.norm, steps)
        known = np.isfinite(zk).all(axis=2)
        z[k, :n] = np.where(np.isfinite(zk), zk, 0.0)
        w = np.ones(n, np.float32) if s.weight is None else s.weight[:n]
        mask[k, :n] = known * w[:, None]
    return (
        torch.from_numpy(u).to(device),
        torch.from_numpy(z).to(device),
        torch.from_numpy(mask).to(device),
    )


def restore_best(model: StreamingLSTM, state: LoopState) -> StreamingLSTM:
    """A CPU copy of ``model`` holding the best epoch's weights."""
    best = copy.deepcopy(model).cpu()
    if state.best_state is not None:
        best.load_state_dict(state.best_state)
    best.eval()
    return best


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    if record.get("final_fit"):
        tag = "final fit "
    elif record.get("candidates", 1) > 1:
        tag = f"candidate {record['candidate'] + 1}/{record['candidates']} "
    else:
        tag = ""
    of = record.get("epochs", epochs)
    head = f"{tag}epoch {record['epoch']}/{of}: loss {record['train_loss']:.4f}"
    if "val_mae" not in record:
        return f"{head} {record['samples_per_s']:.0f} samples/s"
    return (
        f"{head} val MAE {record['val_mae']:.5g} RMSE {record['val_rmse']:.5g} "
        f"MASE {record['val_mase']:.4f} (last value {record['last_value_mase']:.4f}, "
        f"seasonal naive {record['seasonal_naive_mase']:.4f}) "
        f"{record['samples_per_s']:.0f} samples/s{' *' if record['best'] else ''}"
        f"{' (out of time)' if record.get('out_of_time') else ''}"
    )
