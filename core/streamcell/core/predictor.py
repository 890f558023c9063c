"""The Predictor: one model version plus the state store, shared by every front end.

The Kafka pipeline and the gRPC servicer both hand it an :class:`EventBatch`
and get a :class:`BatchResult`; neither sees slots or tensors. A lock makes it
safe to share between the consumer loop and gRPC worker threads; each call is
one micro-batch, so the lock is taken once per batch, not per event.

Per micro-batch: events of one stream are split into "waves" (its first event
in wave 0, its second in wave 1, ...) so that each wave holds a stream at most
once and the waves run in order: several events of one stream in a batch are
applied in order, never merged or lost. Each wave is one gather, one batched
LSTM step and one scatter.

A model with a recipe (streamcell.core.recipe) sees its history features
instead of the event's values: per wave the streams' history rings are
gathered, advanced by the events with :func:`recipe.advance` (the function
training calls) and scattered back, and the output is multiplied by the
recipe's scale. A Forecast feeds each predicted value back through the same
function, into a copy of the stream's history.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from streamcell.core.checkpoint import LoadedModel
from streamcell.core.errors import InvalidEvent, StreamNotFound
from streamcell.core.events import NO_POSITION, NO_SEQ, EventBatch, find_invalid
from streamcell.core.normalization import SCALING_GLOBAL, scale_from_sums
from streamcell.core.recipe import Recipe, advance
from streamcell.core.state import StateStore, StreamInfo

PREDICTED = 0
DUPLICATE = 1  # seq at or below the stream's last applied seq
REPLAYED = 2  # Kafka offset the stream's state already reflects
OUTCOMES = {PREDICTED: "predicted", DUPLICATE: "duplicate", REPLAYED: "skipped_replay"}
MAX_HORIZON = 1000


@dataclass
class BatchResult:
    outcome: np.ndarray  # [N] int8, one of PREDICTED / DUPLICATE / REPLAYED
    yhat: np.ndarray  # [N, output] float32 in target units (zeros where not predicted)
    events: np.ndarray  # [N] int64: the stream's events applied after this one
    abs_errors: np.ndarray  # [K, output] |actual - previous prediction| scored by this batch
    touched: list[str]  # distinct streams whose state changed
    model: str
    version: str


class Predictor:
    """Applies events to per-stream state with one model version at a time."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_streams: int = 100_000,
        initial_capacity: int = 1024,
        ttl_seconds: float | None = None,
        keep_gates: bool = False,
        clock: Callable[[], float] = time.time,
        device: torch.device | str = "cpu",
    ) -> None:
        self._lock = threading.RLock()
        self._clock = clock
        # The model and the (h, c) slabs live here; events arrive and results
        # leave as numpy in host memory, one transfer each way per wave.
        self.device = torch.device(device)
        self._store_args = dict(
            max_streams=max_streams,
            initial_capacity=initial_capacity,
            ttl_seconds=ttl_seconds,
            keep_gates=keep_gates,
            device=self.device,
        )
        self.resets = 0  # streams dropped because a new version changed the architecture
        self._install(loaded)
        self.store = self._new_store()

    # ---------------------------------------------------------------- model
    def _install(self, loaded: LoadedModel) -> None:
        cfg = loaded.config
        dev = self.device
        loaded.model.to(dev)
        self.loaded = loaded
        self._in_mean = torch.tensor(cfg.input_mean, dtype=torch.float32, device=dev)
        self._in_std = torch.tensor(cfg.input_std, dtype=torch.float32, device=dev)
        self._out_mean = torch.tensor(cfg.target_mean, dtype=torch.float32, device=dev)
        self._out_std = torch.tensor(cfg.target_std, dtype=torch.float32, device=dev)
        tidx = cfg.target_index
        self._target_index = None if tidx is None else np.asarray(tidx, dtype=np.int64)
        self._target_columns = (
            None if tidx is None else torch.as_tensor(tidx, dtype=torch.int64, device=dev)
        )
        self._recipe: Recipe | None = cfg.history

    def _new_store(self) -> StateStore:
        cfg = self.loaded.config
        history = cfg.history
        return StateStore(
            cfg.num_layers,
            cfg.hidden_size,
            cfg.output_size,
            cfg.input_size,
            buffer_size=0 if history is None else history.buffer_size,
            **self._store_args,
        )

    @property
    def config(self):
        return self.loaded.config

    @property
    def lock(self) -> threading.RLock:
        """Held by every call; a caller may hold it across several (e.g. snapshot+commit)."""
        return self._lock

    def swap(self, loaded: LoadedModel) -> bool:
        """Serve a new version from the next batch on.

        Returns True if the streams kept their state (same architecture), False
        if they were reset because the new version's state is not compatible.
        """
        with self._lock:
            same = loaded.config.architecture() == self.loaded.config.architecture()
            self._install(loaded)
            if not same:
                self.resets += self.store.clear()
                self.store = self._new_store()
            return same

    # -------------------------------------------------------------- predict
    def validate(self, batch: EventBatch) -> list[tuple[int, str, str]]:
        return find_invalid(batch, self.loaded.config.input_size)

    def predict(self, batch: EventBatch, now: float | None = None) -> BatchResult:
        """Apply a batch in order; a bad row raises InvalidEvent and changes nothing."""
        bad = self.validate(batch)
        if bad:
            row, reason, message = bad[0]
            raise InvalidEvent(reason, f"event {row} (stream {batch.streams[row]!r}): {message}")
        now = self._clock() if now is None else now
        n = len(batch)
        out_size = self.loaded.config.output_size
        with self._lock:
            result = BatchResult(
                outcome=np.zeros(n, dtype=np.int8),
                yhat=np.zeros((n, out_size), dtype=np.float32),
                events=np.zeros(n, dtype=np.int64),
                abs_errors=np.zeros((0, out_size), dtype=np.float32),
                touched=[],
                model=self.loaded.name,
                version=self.loaded.version,
            )
            errors: list[np.ndarray] = []
            touched: dict[str, None] = {}
            for rows in _waves(batch.streams):
                self._step_wave(batch, rows, now, result, errors, touched)
            if errors:
                result.abs_errors = np.concatenate(errors)
            result.touched = list(touched)
            return result

    def _step_wave(
        self,
        batch: EventBatch,
        rows: np.ndarray,
        now: float,
        result: BatchResult,
        errors: list[np.ndarray],
        touched: dict[str, None],
    ) -> None:
        store = self.store
        names = batch.streams
        streams = names if len(rows) == len(names) else [names[k] for k in rows.tolist()]
        slots = store.slots(streams, now)
        seq, part, off = batch.seq[rows], batch.partition[rows], batch.offset[rows]
        duplicate = (seq != NO_SEQ) & (store.seq[slots] >= seq)
        replayed = (
            (off != NO_POSITION) & (store.partition[slots] == part) & (store.offset[slots] >= off)
        )
        result.outcome[rows[duplicate]] = DUPLICATE
        result.outcome[rows[replayed & ~duplicate]] = REPLAYED
        result.events[rows] = store.events[slots]
        keep = ~(duplicate | replayed)
        if not keep.any():
            return
        if not keep.all():
            streams = [s for s, k in zip(streams, keep, strict=True) if k]
            rows, slots = rows[keep], slots[keep]
            seq, part, off = seq[keep], part[keep], off[keep]
        x = batch.x[rows]

        # Score the previous prediction of each stream against what just arrived.
        if self._target_index is not None:
            seen = store.events[slots] > 0
            if seen.any():
                actual = x[seen][:, self._target_index]
                err = np.abs(actual - store.yhat[store.index(slots[seen])].cpu().numpy())
                errors.append(err)
                store.err_sum[slots[seen]] += err.mean(axis=1)
                store.err_count[slots[seen]] += 1

        counts = store.events[slots] + 1
        if self._recipe is None:
            u, out_scale = self._event_inputs(store, slots, x, counts)
        else:
            u, out_scale = self._history_inputs(store, slots, x)

        h, c = store.gather(slots)
        step = self.loaded.model.step(u, h, c, return_gates=store.gates is not None)
        store.scatter(slots, step.h, step.c)
        yhat = step.y * self._out_std + self._out_mean
        if out_scale is not None:
            yhat = yhat * out_scale
        idx = store.index(slots)
        store.yhat.index_copy_(0, idx, yhat)
        if store.gates is not None and step.gates is not None:
            # [L, B, H] x 4 -> [B, L, 4, H]
            store.gates.index_copy_(0, idx, torch.stack(step.gates, dim=2).permute(1, 0, 2, 3))
        store.events[slots] = counts
        store.seq[slots] = np.where(seq != NO_SEQ, seq, store.seq[slots])
        from_kafka = off != NO_POSITION
        store.partition[slots] = np.where(from_kafka, part, store.partition[slots])
        store.offset[slots] = np.where(from_kafka, off, store.offset[slots])

        result.outcome[rows] = PREDICTED
        result.yhat[rows] = yhat.cpu().numpy()
        result.events[rows] = counts
        touched.update(dict.fromkeys(streams))

    def _event_inputs(
        self, store: StateStore, slots: np.ndarray, x: np.ndarray, counts: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A model without a recipe: the normalised event and the targets' stream scale."""
        cfg = self.loaded.config
        scale = None
        if cfg.scaling != SCALING_GLOBAL:
            store.scale_sum[slots] += np.abs(x.astype(np.float64))
            scale = torch.from_numpy(
                scale_from_sums(store.scale_sum[slots], counts, cfg.scale_floor)
            ).to(self.device)
        xt = torch.from_numpy(x).to(self.device)
        if scale is None:
            return (xt - self._in_mean) / self._in_std, None
        return (xt / scale - self._in_mean) / self._in_std, scale[:, self._target_columns]

    def _history_inputs(
        self, store: StateStore, slots: np.ndarray, x: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A recipe model: advance the streams' histories by ``x``; inputs and scale.

        The rings are gathered and scattered back; ``store.events`` still
        counts the events before these (the caller adds them).
        """
        assert store.ring is not None and store.scale is not None
        ring = store.ring[slots]  # a copy: advanced, then written back
        u, scale = self._featurize(ring, store.events[slots], x)
        store.ring[slots] = ring
        store.scale[slots] = scale
        return u, torch.from_numpy(scale).to(self.device)[:, None]

    def _featurize(
        self, ring: np.ndarray, seen: np.ndarray, x: np.ndarray
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Events ``x`` ``[B, width]`` into rings ``[B, buffer]`` (in place): inputs, scale.

        Returns the normalised LSTM inputs and the scale ``[B]`` its output is multiplied by.
        """
        assert self._recipe is not None
        features, scale = advance(self._recipe, ring, seen, x)
        u = (torch.from_numpy(features).to(self.device) - self._in_mean) / self._in_std
        return u, scale

    # ------------------------------------------------------------- forecast
    def forecast(self, stream: str, horizon: int) -> np.ndarray:
        """The next ``horizon`` steps from the stream's state, feeding predictions back.

        Only for models whose targets are their features. The stream's state is
        read, never written: a recipe model feeds each prediction, as the next
        event's value, into a copy of the stream's history.
        """
        cfg = self.loaded.config
        if not cfg.autoregressive:
            raise InvalidEvent("not_autoregressive", self._cannot_forecast())
        if not 1 <= horizon <= MAX_HORIZON:
            raise InvalidEvent("bad_horizon", f"horizon must be in 1..{MAX_HORIZON}, got {horizon}")
        with self._lock:
            slot = self.store.slot_of(stream)
            if slot is None:
                raise StreamNotFound(f"stream {stream!r} is not known to this replica")
            slots = np.array([slot], dtype=np.int64)
            h, c = self.store.gather(slots)  # copies
            prev = self.store.yhat[slot : slot + 1].clone()
            count = int(self.store.events[slot])
            ring = None if self.store.ring is None else self.store.ring[slots]  # a copy
            scale = None
            if self._recipe is None and cfg.scaling != SCALING_GLOBAL and count > 0:
                scale = torch.from_numpy(
                    scale_from_sums(self.store.scale_sum[slots], np.array([count]), cfg.scale_floor)
                ).to(self.device)
        if count == 0:
            raise StreamNotFound(f"stream {stream!r} has seen no events to forecast from")
        out = np.empty((horizon, cfg.output_size), dtype=np.float32)
        model = self.loaded.model
        for k in range(horizon):
            out[k] = prev[0].cpu().numpy()
            if k + 1 == horizon:
                break
            if ring is None:
                xt = prev if scale is None else prev / scale
                u = (xt - self._in_mean) / self._in_std
            else:
                u, fed = self._featurize(ring, np.array([count + k]), out[k : k + 1])
                scale = torch.from_numpy(fed).to(self.device)[:, None]
            step = model.step(u, h, c)
            h, c = step.h, step.c
            prev = step.y * self._out_std + self._out_mean
            if scale is not None:
                prev = prev * scale
        return out

    def _cannot_forecast(self) -> str:
        cfg = self.loaded.config
        recipe = self._recipe
        if recipe is not None:
            others = [f for k, f in enumerate(cfg.features) if k != recipe.target]
            return (
                f"model {self.loaded.name} takes covariates {others} besides "
                f"{cfg.features[recipe.target]!r}; a forecast cannot know their future values"
            )
        return (
            f"model {self.loaded.name} predicts {list(cfg.targets)} from {list(cfg.features)}; "
            "forecasting needs targets equal to features"
        )

    # ---------------------------------------------------------------- admin
    def info(self, stream: str) -> StreamInfo:
        with self._lock:
            info = self.store.info(stream)
        if info is None:
            raise StreamNotFound(f"stream {stream!r} is not known to this replica")
        return info

    def reset(self, stream: str) -> None:
        with self._lock:
            if not self.store.reset(stream):
                raise StreamNotFound(f"stream {stream!r} is not known to this replica")

    def delete(self, stream: str) -> None:
        with self._lock:
            if not self.store.delete(stream):
                raise StreamNotFound(f"stream {stream!r} is not known to this replica")

    def list_streams(self, after: str = "", limit: int = 100) -> list[str]:
        """Stream ids in sorted order after ``after`` (for paging)."""
        with self._lock:
            ids = self.store.stream_ids()
        # O(n log limit), not a full sort per page: replicas hold up to millions.
        return heapq.nsmallest(limit, (s for s in ids if s > after))

    def expire(self, now: float | None = None) -> list[str]:
        with self._lock:
            return self.store.expire(self._clock() if now is None else now)


def _waves(streams: list[str]) -> list[np.ndarray]:
    """Row indices grouped so that each group holds a stream at most once, in order.

    Row k goes to wave r when it is its stream's r-th event in the batch; the
    rank is found with numpy over each row's first row of the same stream
    (one dict call per row, in C), not with a Python loop.
    """
    n = len(streams)
    if n == 0:
        return []
    first: dict[str, int] = {}
    group = np.fromiter(map(first.setdefault, streams, range(n)), np.int64, n)
    if len(first) == n:  # every stream once: one wave
        return [np.arange(n)]
    order = np.argsort(group, kind="stable")  # rows by stream, in batch order within it
    sorted_group = group[order]
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    sizes = np.diff(np.r_[starts, n])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(starts, sizes)
    depth = int(sizes.max())
    by_rank = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[by_rank], np.arange(1, depth))
    return np.split(by_rank, bounds)
