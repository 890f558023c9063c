"""The Predictor: one model version plus the state store, shared by every front end.

The Kafka pipeline and the gRPC servicer both hand it an :class:`EventBatch`
and get a :class:`BatchResult`; neither sees slots or tensors. A lock makes it
safe to share between the consumer loop and gRPC worker threads; each call is
one micro-batch, so the lock is taken once per batch, not per event.

Per micro-batch: events of one stream are split into "waves" (its first event
in wave 0, its second in wave 1, ...) so that each wave holds a stream at most
once and the waves run in order: several events of one stream in a batch are
applied in order, never merged or lost. Each wave is one gather, one batched
LSTM step and one scatter. A batch touching more streams than the store holds
is applied in consecutive parts, in order. With a cold tier
(:class:`~streamcell.core.tiers.TieredStore`), each part's streams are made
hot first, with one batched read of the cold ones; the store then never
evicts, and every admin call reaches cold streams too.

A model with a quantile head (``quantile_levels`` in its config) predicts
per level; the levels are de-normalised like the point and sorted, so that
quantiles never cross, and the median is ``yhat``; a version with a
``calibration`` then widens or narrows them about the median
(:mod:`streamcell.core.calibration`). Each stream's previous
quantiles score the actual values that arrive next: per central interval,
whether they fell inside it, and the pinball loss (:mod:`streamcell.core.quantiles`).
A version with an adaptive width (:mod:`streamcell.core.adaptive`) then moves
the stream's width factor by whether the actual fell inside the widest
interval, and serves the new one-step quantiles scaled by it (a Forecast keeps
the version's forecast table alone: see that module).

The Predictor is the one owner of stream state, so it also reports what
changed. Once a front end calls :meth:`Predictor.track_changes` (the Kafka
pipeline does), every call that changes a stream (predict from Kafka or gRPC,
reset, delete, eviction at capacity, TTL expiry, a model swap that resets
state) records the stream with its partition in a journal, under the lock;
the checkpointer drains it with :meth:`Predictor.take_changes` while it
snapshots, under the same lock. A stream that is no longer in the store when
its change is taken is a removal (a changelog tombstone).

TTL expiry runs on event time, never on the wall clock: a stream's
``last_seen`` is the newest event time of its events, and the Predictor's
watermark, the newest event time it has seen, is the "now" that
:meth:`Predictor.expire` compares it with. The service's own downtime thus
idles no stream: after a restart the backlog's streams expire only once the
input's event time has moved past their last events by the TTL.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from streamcell.core import adaptive
from streamcell.core.calibration import uncrossed, widen
from streamcell.core.checkpoint import MAX_HORIZON, LoadedModel
from streamcell.core.coldstore import ColdStore
from streamcell.core.errors import InvalidEvent, StreamNotFound
from streamcell.core.events import (
    NO_POSITION,
    NO_SEQ,
    REASON_NON_FINITE_STATE,
    EventBatch,
    find_invalid,
    non_finite_state,
    refusal,
)
from streamcell.core.forecast import ForecastResult, Normaliser, Origin, held, seed_of
from streamcell.core.forecast import run as run_forecast
from streamcell.core.journal import ChangeJournal, Placement
from streamcell.core.model import Gates
from streamcell.core.normalization import SCALING_GLOBAL, scale_from_sums
from streamcell.core.quantiles import Scores, median_index, score
from streamcell.core.recipe import Recipe, advance, holds_level, level
from streamcell.core.state import StateStore, StreamInfo
from streamcell.core.tiers import TieredStore

PREDICTED = 0
DUPLICATE = 1  # seq at or below the stream's last applied seq
REPLAYED = 2  # Kafka offset the stream's state already reflects
REFUSED = 3  # its step would leave the stream's state or prediction non-finite
OUTCOMES = {
    PREDICTED: "predicted",
    DUPLICATE: "duplicate",
    REPLAYED: "skipped_replay",
    REFUSED: "refused",
}

# Writes a wave's input step prepared, for the rows kept (None: all of them).
Commit = Callable[[np.ndarray | None], None]


def _no_commit(keep: np.ndarray | None) -> None:
    """Nothing to write (a model with global scaling keeps no per-stream input state)."""


@dataclass
class BatchResult:
    outcome: np.ndarray  # [N] int8, one of PREDICTED / DUPLICATE / REPLAYED
    yhat: np.ndarray  # [N, output] float32 in target units (zeros where not predicted)
    events: np.ndarray  # [N] int64: the stream's events applied after this one
    abs_errors: np.ndarray  # [K, output] |actual - previous prediction| scored by this batch
    touched: list[str]  # distinct streams whose state changed
    model: str
    version: str
    evicted: list[str] = field(default_factory=list)  # streams evicted to make room
    # (row, reason, message) of each REFUSED row, in row order within a wave.
    refused: list[tuple[int, str, str]] = field(default_factory=list)
    # A quantile head: [N, levels, output] float32 in target units, sorted along
    # levels (zeros where not predicted), and what the batch's actuals scored.
    quantiles: np.ndarray | None = None
    scores: Scores | None = None
    levels: tuple[float, ...] = ()  # the version's quantile levels (empty: a point head)


@dataclass(frozen=True)
class Restored:
    """What :meth:`Predictor.restore` loaded, skipped (stream, why) and left out for room."""

    streams: list[str]
    skipped: list[tuple[str, str]]
    left_out: int
    cold: int = 0  # of ``streams``, those put in the cold tier (the rest are hot)


class Predictor:
    """Applies events to per-stream state with one model version at a time.

    A model with a recipe (streamcell.core.recipe) sees its history features
    instead of the event's values: per wave the streams' history rings are
    gathered, advanced by the events with :func:`recipe.advance` (the function
    training calls) and scattered back, and the output is multiplied by the
    recipe's scale (a version 2 recipe's flat window: its value, see
    :func:`recipe.level`). A Forecast feeds each predicted value back through the
    same function, into a copy of the stream's history.
    """

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
        cold: ColdStore | None = None,
    ) -> None:
        """``max_streams``: the streams held in memory. With a ``cold`` tier, streams
        beyond it are spilled there and come back with their next event; without
        one, the least recently used are evicted (forgotten)."""
        self._lock = threading.RLock()
        self._clock = clock
        # The newest event time seen (seconds); None until the first event.
        # Not persisted: restored streams keep their last_seen, and the
        # watermark comes back with the next events.
        self._watermark: float | None = None
        # The model and the (h, c) slabs live here; events arrive and results
        # leave as numpy in host memory, one transfer each way per wave.
        self.device = torch.device(device)
        self._on_cpu = self.device.type == "cpu"
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
        self._journal = ChangeJournal()  # off until track_changes(); under the lock
        self.tiers = None if cold is None else TieredStore(self.store, cold, self._journal)

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
        # A recipe that serves flat windows as their value: their zero-width intervals
        # leave the adaptive width where it was (streamcell.core.adaptive.moved).
        self._holds = self._recipe is not None and holds_level(self._recipe)
        self._levels = cfg.quantile_levels
        self._median = median_index(self._levels) if self._levels else 0
        cal = cfg.calibration_table
        self._gamma = 0.0 if cfg.adaptive is None else cfg.adaptive.gamma
        self._widen = (
            None
            if cal is None
            else torch.tensor(cal.online, dtype=torch.float32, device=dev)[:, None]
        )

    def _new_store(self) -> StateStore:
        cfg = self.loaded.config
        history = cfg.history
        args: dict = {  # mixed value types: mypy would refuse a union
            **self._store_args,
            "buffer_size": 0 if history is None else history.buffer_size,
            "quantile_levels": cfg.quantile_levels,
            "adaptive": cfg.adaptive is not None,
        }
        return StateStore(cfg.num_layers, cfg.hidden_size, cfg.output_size, cfg.input_size, **args)

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
                # Every stream's old state is gone: its changelog record too.
                self._journal.removed_all()
                if self.tiers is not None:
                    self.resets += self.tiers.replace_hot(self.store)
            return same

    # -------------------------------------------------------------- changes
    def track_changes(self, place: Placement) -> None:
        """Journal every change from now on; ``place`` partitions changes made outside Kafka."""
        with self._lock:
            self._journal.track(place)

    def take_changes(self) -> dict[str, int]:
        """Streams changed since the last take -> partition, in the order they changed.

        A stream not in the store any more was removed. Call it with the lock
        held across the snapshot of those streams, so that none moves between.
        """
        with self._lock:
            return self._journal.take()

    @property
    def snapshots(self) -> StateStore | TieredStore:
        """What a checkpoint snapshots changed streams from: both tiers where there are two."""
        return self.store if self.tiers is None else self.tiers

    def stream_count(self) -> int:
        """Streams held, in memory and in the cold tier."""
        with self._lock:
            return len(self.store) if self.tiers is None else len(self.tiers)

    def has_changes(self) -> bool:
        return bool(self._journal.changed)

    def partition_of(self, stream: str) -> int | None:
        """The partition a stream in the store belongs to, if known (no lock: one dict read)."""
        return self._journal.home.get(stream)

    def _known_partition(self, stream: str) -> int | None:
        part = self._journal.home.get(stream)
        if part is None:
            slot = self.store.slot_of(stream)
            if slot is not None and self.store.partition[slot] >= 0:
                part = int(self.store.partition[slot])
        return part

    # -------------------------------------------------------------- predict
    def validate(self, batch: EventBatch) -> list[tuple[int, str, str]]:
        return find_invalid(batch, self.loaded.config.input_size)

    def _check(self, batch: EventBatch) -> None:
        bad = self.validate(batch)
        if bad:
            raise refusal(batch.streams, *bad[0])

    @property
    def watermark(self) -> float | None:
        """The newest event time seen (seconds since the epoch), None before any event."""
        return self._watermark

    def _event_times(self, now: float | np.ndarray | None, n: int) -> np.ndarray:
        """Each row's event time: ``now`` (one for all, or per row), else the clock's now.

        An event time ahead of the clock (a producer's skewed clock, a hostile
        ts) counts as the clock's now: it must neither push the watermark,
        expiring every other stream, nor keep its own stream from ever
        expiring. A NaN counts as now too.
        """
        wall = self._clock()
        if now is None:
            return np.full(n, wall, dtype=np.float64)
        times = np.broadcast_to(np.asarray(now, dtype=np.float64), (n,))
        return np.fmin(times, wall)

    def predict(
        self,
        batch: EventBatch,
        now: float | np.ndarray | None = None,
        *,
        validated: bool = False,
    ) -> BatchResult:
        """Apply a batch in order; a bad row raises InvalidEvent and changes nothing.

        ``now``: the events' event times in seconds, one per row (the Kafka
        loop passes each event's ts, else its Kafka timestamp) or one for all;
        None: the batch's ``time`` column (gRPC events' ts), and where an
        event has none, its arrival, the clock's now. They become the
        streams' ``last_seen`` and advance the watermark the TTL runs on.

        ``validated``: the caller already applied :meth:`validate` to this batch
        (the Kafka decoder, the gRPC coalescer), so it is not checked again,
        unless a model swap since then changed the feature count.
        """
        if not validated:
            self._check(batch)
        n = len(batch)
        times = self._event_times(batch.time if now is None else now, n)
        with self._lock:
            if validated and batch.x.shape[1] != self.loaded.config.input_size:
                self._check(batch)
            out_size = self.loaded.config.output_size
            result = BatchResult(
                outcome=np.zeros(n, dtype=np.int8),
                yhat=np.zeros((n, out_size), dtype=np.float32),
                events=np.zeros(n, dtype=np.int64),
                abs_errors=np.zeros((0, out_size), dtype=np.float32),
                touched=[],
                model=self.loaded.name,
                version=self.loaded.version,
            )
            if self._levels:
                result.quantiles = np.zeros((n, len(self._levels), out_size), dtype=np.float32)
                result.scores = Scores.empty(len(self._levels), len(self.store.intervals))
                result.levels = self._levels
            if n:
                newest = float(times.max())
                if self._watermark is None or newest > self._watermark:
                    self._watermark = newest
            errors: list[np.ndarray] = []
            touched: list[str] = []
            limit = self.store.max_streams
            # More rows than the store holds streams: consecutive parts within capacity.
            for start in range(0, n, limit):
                part: dict[str, int] = {}
                if n <= limit:
                    names = batch.streams
                else:
                    rows = np.arange(start, min(start + limit, n))
                    names = [batch.streams[k] for k in rows.tolist()]
                found = None
                known = None
                if self.tiers is not None:  # cold streams loaded, room made: nothing evicted
                    if len(set(names)) == len(names):  # one wave: its slots, looked up once
                        waves = [np.arange(len(names))]
                        found = self.tiers.admit(names)
                    else:
                        waves = _waves(names)
                        self.tiers.admit(list(dict.fromkeys(names)))
                else:
                    looked = self.store.lookup(names)
                    if None in looked:
                        waves = _waves(names)
                    else:  # every stream held: nothing is created or evicted, slots stay put
                        known = np.array(looked, dtype=np.int64)
                        waves = _waves_of(known)  # a stream's rows share its slot
                if n > limit:
                    waves = [rows[w] for w in waves]
                for wave in waves:
                    slots = None if known is None else known[wave - start]
                    self._step_wave(batch, wave, times, result, errors, part, found, slots)
                self._journal.stepped(part, self._known_partition)
                evicted = self.store.take_evicted()
                if evicted:
                    result.evicted.extend(evicted)
                    self._journal.removed(evicted)
                touched.extend(part)
            if errors:
                result.abs_errors = np.concatenate(errors)
            result.touched = touched if n <= limit else list(dict.fromkeys(touched))
            return result

    def _step_wave(
        self,
        batch: EventBatch,
        rows: np.ndarray,
        times: np.ndarray,
        result: BatchResult,
        errors: list[np.ndarray],
        touched: dict[str, int],
        found: list[int | None] | None = None,
        known: np.ndarray | None = None,
    ) -> None:
        """``found``: the tiers' slots of the wave's streams, when it is the whole batch;
        ``known``: the wave's slots, when every stream of the batch is in the store."""
        store = self.store
        names = batch.streams
        streams = names if len(rows) == len(names) else [names[k] for k in rows.tolist()]
        if known is None:
            slots = store.slots(streams, times[rows], found)
        else:
            slots = known
            store.touch(slots, times[rows])
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
        counts = store.events[slots] + 1
        # Nothing is written to the store before the finiteness check below:
        # a refused row must leave its stream exactly as it was.
        at: np.ndarray | None = None  # the streams' levels (recipe.level), None: none
        if self._recipe is None:
            u, out_scale, commit = self._event_inputs(store, slots, x, counts)
        else:
            u, out_scale, at, commit = self._history_inputs(store, slots, x)

        h, c = store.gather(slots)
        step = self.loaded.model.step(u, h, c, return_gates=store.gates is not None)
        quantiles = self._quantiles(step.y, out_scale, at)
        if quantiles is None:
            yhat = step.y[:, : self._out_mean.shape[0]] * self._out_std + self._out_mean
            if out_scale is not None:
                yhat = held(yhat * out_scale, at)
            values = yhat
        else:
            yhat = quantiles[:, self._median]
            values = quantiles.flatten(1)
        # An extreme but finite x can overflow the model. One reduction per
        # wave: a finite sum means every value is finite (NaN and infinities
        # propagate); only when it is not are the rows told apart.
        ok = None
        if not math.isfinite(float(step.h.sum() + step.c.sum() + values.sum())):
            ok = _finite_rows(step.h, step.c, values)
        if ok is not None and not ok.all():
            bad = [
                (k, s) for k, s, good in zip(rows.tolist(), streams, ok, strict=True) if not good
            ]
            result.refused.extend((k, REASON_NON_FINITE_STATE, non_finite_state(s)) for k, s in bad)
            result.outcome[rows[~ok]] = REFUSED
            if not ok.any():
                return
            keep_t = torch.from_numpy(np.flatnonzero(ok)).to(self.device)
            streams = [s for s, k in zip(streams, ok, strict=True) if k]
            rows, slots, x, counts = rows[ok], slots[ok], x[ok], counts[ok]
            seq, part, off = seq[ok], part[ok], off[ok]
            commit(ok)
            step_h, step_c = step.h[:, keep_t], step.c[:, keep_t]
            yhat = yhat[keep_t]
            quantiles = None if quantiles is None else quantiles[keep_t]
            gates = None if step.gates is None else Gates(*(g[:, keep_t] for g in step.gates))
        else:
            commit(None)
            step_h, step_c, gates = step.h, step.c, step.gates

        # Score the previous prediction of each stream against what just arrived.
        if self._target_index is not None:
            seen = counts > 1
            if seen.all():  # the usual case: no row copies to pick the seen ones
                scored, actual = slots, x[:, self._target_index]
            elif seen.any():
                scored, actual = slots[seen], x[seen][:, self._target_index]
            else:
                scored = None
            if scored is not None:
                previous = store.yhat.index_select(0, store.index(scored)).cpu().numpy()
                err = np.abs(actual - previous)
                errors.append(err)
                store.err_sum[scored] += err.mean(axis=1)
                store.err_count[scored] += 1
                if quantiles is not None:
                    self._score(store, scored, actual, result)
        if quantiles is not None and store.width is not None:
            # The width as the actual just scored left it (the median, yhat, never moves).
            log_w = torch.from_numpy(store.width[slots]).to(self.device)
            quantiles = adaptive.scaled(quantiles, log_w, self._median)

        store.scatter(slots, step_h, step_c)
        idx = store.index(slots)
        store.yhat.index_copy_(0, idx, yhat)
        if quantiles is not None and store.quantiles is not None:
            store.quantiles.index_copy_(0, idx, quantiles)
            assert result.quantiles is not None
            result.quantiles[rows] = quantiles.cpu().numpy()
        if store.gates is not None and gates is not None:
            # [L, B, H] x 4 -> [B, L, 4, H]
            store.gates.index_copy_(0, idx, torch.stack(gates, dim=2).permute(1, 0, 2, 3))
        store.events[slots] = counts
        store.seq[slots] = np.where(seq != NO_SEQ, seq, store.seq[slots])
        from_kafka = off != NO_POSITION
        store.partition[slots] = np.where(from_kafka, part, store.partition[slots])
        store.offset[slots] = np.where(from_kafka, off, store.offset[slots])

        result.outcome[rows] = PREDICTED
        result.yhat[rows] = yhat.cpu().numpy()
        result.events[rows] = counts
        touched.update(zip(streams, part.tolist(), strict=True))

    def _quantiles(
        self, y: torch.Tensor, out_scale: torch.Tensor | None, at: np.ndarray | None = None
    ) -> torch.Tensor | None:
        """A quantile head's output ``[B, levels, output]`` in target units, sorted; None
        for a point head. The head's first ``levels x output`` values are the next
        step's quantiles, level-major (a wider head holds later steps after them).
        ``at``: the streams' levels, which every level of their row is set to.
        """
        if not self._levels:
            return None
        levels, out = len(self._levels), self._out_mean.shape[0]
        q = y[:, : levels * out].reshape(-1, levels, out) * self._out_std + self._out_mean
        if out_scale is not None:
            q = held(q * out_scale[:, None, :], at)
        q = uncrossed(q)
        # The version's calibration (streamcell.core.calibration), fitted on validation.
        return q if self._widen is None else widen(q, self._widen, self._median)

    def _score(
        self, store: StateStore, slots: np.ndarray, actual: np.ndarray, result: BatchResult
    ) -> None:
        """The streams' previous quantiles against the actuals that just arrived."""
        assert store.quantiles is not None and store.inside is not None
        assert result.scores is not None
        if self._on_cpu:  # a numpy view: no torch call per gather
            previous = store.quantiles.numpy().take(slots, axis=0)
        else:
            previous = store.quantiles.index_select(0, store.index(slots)).cpu().numpy()
        # One pass of errors for the coverage, the pinball sums and the adaptive width.
        found = score(actual, previous, store.intervals, self._levels)
        store.inside[slots] += found.inside
        if store.width is not None:
            assert found.widest is not None
            outer = store.intervals[0]
            still = adaptive.zero_width(previous, outer) if self._holds else None
            store.width[slots] = adaptive.moved(
                store.width[slots], found.widest, outer, self._gamma, still
            )
        result.scores.add(actual.size, found.inside.sum(axis=0), found.pinball)

    def _event_inputs(
        self, store: StateStore, slots: np.ndarray, x: np.ndarray, counts: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor | None, Commit]:
        """A model without a recipe: the normalised event, the targets' stream scale, and
        the write of the streams' new scale sums (done once the step is known finite)."""
        cfg = self.loaded.config
        if cfg.scaling == SCALING_GLOBAL:
            xt = torch.from_numpy(x).to(self.device)
            return (xt - self._in_mean) / self._in_std, None, _no_commit
        sums = store.scale_sum[slots] + np.abs(x.astype(np.float64))
        scale = torch.from_numpy(scale_from_sums(sums, counts, cfg.scale_floor)).to(self.device)

        def commit(keep: np.ndarray | None) -> None:
            if keep is None:
                store.scale_sum[slots] = sums
            else:
                store.scale_sum[slots[keep]] = sums[keep]

        xt = torch.from_numpy(x).to(self.device)
        u = (xt / scale - self._in_mean) / self._in_std
        return u, scale[:, self._target_columns], commit

    def _history_inputs(
        self, store: StateStore, slots: np.ndarray, x: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None, Commit]:
        """A recipe model: advance the streams' histories by ``x``; inputs, scale, the
        streams' levels (:func:`recipe.level`: None where none has one), and the
        write-back of the advanced rings (done once the step is known finite).

        ``store.events`` still counts the events before these (the caller adds them).
        """
        assert store.ring is not None and store.scale is not None
        assert self._recipe is not None
        ring = store.ring[slots]  # a copy: advanced, then written back
        seen = store.events[slots]
        u, scale = self._featurize(ring, seen, x)
        at = level(self._recipe, ring, seen + 1)

        def commit(keep: np.ndarray | None) -> None:
            assert store.ring is not None and store.scale is not None
            if keep is None:
                store.ring[slots] = ring
                store.scale[slots] = scale
            else:
                store.ring[slots[keep]] = ring[keep]
                store.scale[slots[keep]] = scale[keep]

        return u, torch.from_numpy(scale).to(self.device)[:, None], at, commit

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
        """The next ``horizon`` point predictions ``[horizon, targets]`` (see forecast_result)."""
        return self.forecast_result(stream, horizon).yhat

    def forecast_result(self, stream: str, horizon: int) -> ForecastResult:
        """The next ``horizon`` steps from the stream's state, and their quantiles.

        Only for models whose targets are their features. The stream's state is
        read, never written: predictions are fed back into a copy of it
        (:mod:`streamcell.core.forecast`).
        """
        if not 1 <= horizon <= MAX_HORIZON:
            raise InvalidEvent("bad_horizon", f"horizon must be in 1..{MAX_HORIZON}, got {horizon}")
        with self._lock:
            # One version for the whole forecast, which runs outside the lock:
            # a swap meanwhile must not mix its weights with this state.
            loaded, recipe = self.loaded, self._recipe
            norm = Normaliser(self._in_mean, self._in_std, self._out_mean, self._out_std)
            cfg = loaded.config
            if not cfg.autoregressive:
                raise InvalidEvent("not_autoregressive", self._cannot_forecast())
            store, slot = self._reading(stream)
            slots = np.array([slot], dtype=np.int64)
            h, c = store.gather(slots)  # copies
            last = store.yhat[slot : slot + 1].clone()
            count = int(store.events[slot])
            ring = None if store.ring is None else store.ring[slots]  # a copy
            scale = None
            if recipe is None and cfg.scaling != SCALING_GLOBAL and count > 0:
                scale = torch.from_numpy(
                    scale_from_sums(store.scale_sum[slots], np.array([count]), cfg.scale_floor)
                ).to(self.device)
            elif recipe is not None and store.scale is not None:
                scale = torch.from_numpy(store.scale[slots].copy()).to(self.device)[:, None]
        if count == 0:
            raise StreamNotFound(f"stream {stream!r} has seen no events to forecast from")
        origin = Origin(h, c, last, count, ring, scale)
        return run_forecast(loaded, norm, origin, horizon, seed_of(stream, count, horizon))

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
    def _reading(self, stream: str) -> tuple[StateStore, int]:
        """A store and slot with the stream's state, hot or cold, to read (under the lock)."""
        if self.tiers is None:
            slot = self.store.slot_of(stream)
            found = None if slot is None else (self.store, slot)
        else:
            found = self.tiers.reading(stream)
        if found is None:
            raise StreamNotFound(f"stream {stream!r} is not known to this replica")
        return found

    def info(self, stream: str) -> StreamInfo:
        with self._lock:
            store, _ = self._reading(stream)
            info = store.info(stream)
        assert info is not None
        return info

    def reset(self, stream: str) -> None:
        with self._lock:
            if self.tiers is not None:
                self.tiers.make_hot(stream)
            if not self.store.reset(stream):
                raise StreamNotFound(f"stream {stream!r} is not known to this replica")
            self._journal.edited(stream, self._known_partition(stream), present=True)

    def delete(self, stream: str) -> None:
        with self._lock:
            known = self._known_partition(stream)
            if not self.store.delete(stream):
                tag = None if self.tiers is None else self.tiers.delete_cold(stream)
                if tag is None:
                    raise StreamNotFound(f"stream {stream!r} is not known to this replica")
                known = tag if tag >= 0 else None
            self._journal.edited(stream, known, present=False)

    def list_streams(self, after: str = "", limit: int = 100) -> list[str]:
        """Stream ids in sorted order after ``after`` (for paging), hot and cold."""
        with self._lock:
            ids = self.store.stream_ids()
            cold = [] if self.tiers is None else self.tiers.streams_after(after, limit)
        # O(n log limit), not a full sort per page: replicas hold up to millions.
        return heapq.nsmallest(limit, [*(s for s in ids if s > after), *cold])

    def expire(self, now: float | None = None) -> list[str]:
        """Remove streams idle past the TTL; returns them (journaled as removed).

        ``now``: an event time; None: the watermark (nothing expires before
        the first event, e.g. right after a restore).
        """
        with self._lock:
            now = self._watermark if now is None else now
            if now is None:
                return []
            gone = self.store.expire(now)
            self._journal.removed(gone)
            ttl = self.store.ttl_seconds
            if self.tiers is not None and ttl is not None:
                gone += self.tiers.expire(now - ttl)
            return gone

    # -------------------------------------------------------------- recovery
    def restore(self, items: list[tuple[str, bytes]], partitions: dict[str, int]) -> Restored:
        """Load changelog snapshots (oldest first) as far as they fit; not journaled.

        ``partitions``: each stream's partition (the changelog partition it was
        read from). Records for another architecture are skipped, not fatal.
        """
        with self._lock:
            if self.tiers is not None:  # the most recent hot up to capacity, the rest cold
                hot, cold, skipped = self.tiers.restore(items, partitions)
                self._journal.restored(hot, partitions)
                return Restored(hot + cold, skipped, 0, cold=len(cold))
            loaded, skipped, left_out = self.store.restore_what_fits(items)
            self._journal.removed(self.store.take_evicted())
            self._journal.restored(loaded, partitions)
        return Restored(loaded, skipped, left_out)

    def rebuild_cold(self, cold: ColdStore) -> int:
        """A new, empty cold tier in place of one that failed; returns the hot streams dropped.

        Every stream goes, the hot ones too, unjournaled: the changelog restores them all,
        with the cold ones lost, to one consistent point (the committed offsets).
        """
        with self._lock:
            dropped = self.store.clear()
            self._journal.drop_all()
            old = self.tiers
            self.tiers = TieredStore(
                self.store, cold, self._journal, None if old is None else old.observe
            )
            if old is not None:
                self.tiers.counts = old.counts  # running totals, for the metrics
            return dropped

    def drop_partitions(self, partitions: set[int]) -> list[str]:
        """Forget the streams of these partitions (another replica owns them): no tombstones."""
        with self._lock:
            gone = self._journal.forget(partitions)
            for stream in gone:
                self.store.delete(stream)
            if self.tiers is not None:
                gone += self.tiers.drop_tags(partitions)
            return gone


def _finite_rows(h: torch.Tensor, c: torch.Tensor, yhat: torch.Tensor) -> np.ndarray:
    """[B] bool: row b's h and c ``[L, B, H]`` and prediction ``[B, out]`` are all finite."""
    finite = (
        torch.isfinite(h).all(dim=2).all(dim=0)
        & torch.isfinite(c).all(dim=2).all(dim=0)
        & torch.isfinite(yhat).all(dim=1)
    )
    return finite.cpu().numpy()


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
    return _waves_of(group)


def _waves_of(group: np.ndarray) -> list[np.ndarray]:
    """:func:`_waves` of rows given as one integer per row that is equal for the rows of
    one stream (its first row, or its slot in the store): sorting, no dict."""
    n = len(group)
    if n == 0:
        return []
    order = np.argsort(group, kind="stable")  # rows by stream, in batch order within it
    sorted_group = group[order]
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(sorted_group[1:], sorted_group[:-1], out=new[1:])
    if new.all():  # every stream once: one wave
        return [np.arange(n)]
    starts = np.flatnonzero(new)
    sizes = np.diff(np.r_[starts, n])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(starts, sizes)
    depth = int(sizes.max())
    by_rank = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[by_rank], np.arange(1, depth))
    return np.split(by_rank, bounds)
