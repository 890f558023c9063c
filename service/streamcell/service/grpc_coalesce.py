"""Merge concurrent one-event calls (Predict, PredictStream) into one Predictor call.

One LSTM step for one stream costs nearly as much as a step for dozens, so
when several gRPC threads each bring one event, the first becomes the
*leader*: it takes every event queued so far, applies them in one
``Predictor.predict`` (events of one stream keep their arrival order), hands
each caller its row, and passes leadership to a waiting caller if more arrived
meanwhile. A lone call pays no wait: the leader never sleeps for company.

Callers validate their own event first, so the merged batch fails only as a
whole (e.g. Overloaded), and then every caller in it gets that error; an event
the Predictor refuses (its step would overflow the model) fails its caller
alone, with InvalidEvent, and changes nothing. A caller
whose deadline passes before the leader holds the Predictor's lock is dropped
from the batch and changes nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import grpc
import numpy as np

from streamcell.core.events import EventBatch, refusal
from streamcell.core.predictor import BatchResult, Predictor

log = logging.getLogger(__name__)


class DeadlineExpired(Exception):
    """The caller's deadline passed before its event was applied."""


class _Item:
    __slots__ = ("batch", "context", "error", "lead", "predictor", "result", "row", "wake")

    def __init__(self, predictor: Predictor, batch: EventBatch, context: grpc.ServicerContext):
        self.predictor = predictor
        self.batch = batch
        self.context = context
        self.wake = threading.Event()
        self.lead = False
        self.result: BatchResult | None = None
        self.row = 0
        self.error: BaseException | None = None


def merge(batches: list[EventBatch]) -> EventBatch:
    """One EventBatch holding the rows of ``batches`` in order."""
    return EventBatch(
        [s for b in batches for s in b.streams],
        np.concatenate([b.x for b in batches]),
        np.concatenate([b.seq for b in batches]),
        np.concatenate([b.partition for b in batches]),
        np.concatenate([b.offset for b in batches]),
        np.concatenate([np.full(len(b), np.nan) if b.time is None else b.time for b in batches]),
    )


class Coalescer:
    """Leader/follower batching of single-event calls; ``after`` sees each applied batch."""

    def __init__(
        self,
        after: Callable[[EventBatch, BatchResult], None],
        check: Callable[[list[str]], None] = lambda streams: None,
    ) -> None:
        """``check`` runs under the Predictor's lock for each call and may raise to refuse
        it alone (the stream's partition left this replica since the call arrived)."""
        self._after = after
        self._check = check
        self._lock = threading.Lock()
        self._pending: list[_Item] = []
        self._leading = False

    def submit(
        self, predictor: Predictor, batch: EventBatch, context: grpc.ServicerContext
    ) -> tuple[BatchResult, int]:
        """Apply a validated one-event batch; returns the merged result and this event's row."""
        item = _Item(predictor, batch, context)
        with self._lock:
            self._pending.append(item)
            if not self._leading:
                self._leading = item.lead = True
        if not item.lead:
            item.wake.wait()
        if item.lead:
            self._round()
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result, item.row

    def _round(self) -> None:
        with self._lock:
            take, self._pending = self._pending, []
        try:
            self._apply(take)
        finally:
            for item in take:
                if not item.lead:
                    item.wake.set()
            with self._lock:
                if self._pending:
                    successor = self._pending[0]
                    successor.lead = True
                    successor.wake.set()
                else:
                    self._leading = False

    def _apply(self, take: list[_Item]) -> None:
        predictor = take[-1].predictor
        try:
            with predictor.lock:
                live = []
                for item in take:
                    if item.context.time_remaining() <= 0:
                        item.error = DeadlineExpired()
                        continue
                    try:
                        self._check(item.batch.streams)
                    except Exception as exc:  # refused alone; the others go on
                        item.error = exc
                        continue
                    live.append(item)
                if not live:
                    return
                batch = merge([item.batch for item in live])
                result = predictor.predict(batch, validated=True)
        except BaseException as exc:  # every caller of the batch re-raises it
            for item in take:
                if item.error is None:
                    item.error = exc
            return
        for row, item in enumerate(live):
            item.result, item.row = result, row
        # Refused by the Predictor (its step would overflow the model): that
        # caller alone gets the error; the others' events were applied.
        for row, reason, message in result.refused:
            live[row].error = refusal(live[row].batch.streams, 0, reason, message)
        try:
            self._after(batch, result)
        except Exception:  # the state changed: callers still get their predictions
            log.exception("recording a coalesced gRPC batch failed")
