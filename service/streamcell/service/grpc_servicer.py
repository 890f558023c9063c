"""The Predictor gRPC service: converts proto <-> domain and calls the Predictor.

Every method makes one call into the shared :class:`~streamcell.core.predictor.Predictor`
(the same object the Kafka loop uses), which also journals the streams each
call changes for the changelog: the servicer tells no one. Errors are StreamcellError subclasses
turned into status codes by :mod:`streamcell.service.grpc_errors`. Before any
state changes, a request is checked whole: model loaded, stream ownership,
feature count and values, and the client's deadline; a refused request
changes nothing. Caps (settings.GrpcSettings) bound what one call may ask:
a PredictBatch's events and depth, since it holds the lock the Kafka loop
needs, and the PredictStream calls open at once, since each holds a thread.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np

from streamcell.core.errors import (
    InvalidEvent,
    ModelNotLoaded,
    Overloaded,
    StreamcellError,
    StreamNotFound,
)
from streamcell.core.events import EMPTY_STREAM, REASON_MISSING_KEY, EventBatch, refusal
from streamcell.core.predictor import OUTCOMES, REFUSED, BatchResult, Predictor
from streamcell.service import grpc_errors
from streamcell.service.grpc_coalesce import Coalescer, DeadlineExpired
from streamcell.service.grpc_convert import (
    batch_of,
    event_times,
    forecast_into,
    prediction_of,
    predictions_into,
    stream_state,
)
from streamcell.service.grpc_errors import NotOwned, RequestTooLarge
from streamcell.service.metrics import Metrics
from streamcell.service.settings import GrpcSettings
from streamcell.v1 import event_pb2
from streamcell.v1 import predictor_pb2 as pb
from streamcell.v1 import predictor_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Predictor"].full_name
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 10_000

PredictorOf = Callable[[], Predictor | None]
OwnerOf = Callable[[str], str | None]
R = TypeVar("R")


def _mapped(method: Callable[..., R]) -> Callable[..., R]:
    """Turn a StreamcellError raised by a unary method into its status code."""

    @functools.wraps(method)
    def wrapper(self: PredictorServicer, request: Any, context: grpc.ServicerContext) -> R:
        try:
            return method(self, request, context)
        except StreamcellError as exc:
            grpc_errors.abort(context, exc)
            raise  # unreachable: abort raises

    return wrapper


def _stream_id(stream: str) -> str:
    if not stream:
        raise InvalidEvent(REASON_MISSING_KEY, EMPTY_STREAM)
    return stream


_COUNTED_AS = {REFUSED: "invalid"}  # outcome -> the events metric's label


class PredictorServicer(pb_grpc.PredictorServicer):
    """streamcell.v1.Predictor over a Predictor that may not be loaded yet."""

    def __init__(
        self,
        predictor_of: PredictorOf,
        metrics: Metrics | None = None,
        owner_of: OwnerOf | None = None,
        settings: GrpcSettings | None = None,
    ) -> None:
        self._predictor_of = predictor_of
        self._metrics = metrics
        self._owner_of = owner_of
        self._coalescer = Coalescer(self._record, self._check_owned)
        self._settings = settings or GrpcSettings()
        self._stream_slots = threading.BoundedSemaphore(self._settings.predict_stream_limit)

    # ------------------------------------------------------------- helpers
    def _predictor(self) -> Predictor:
        predictor = self._predictor_of()
        if predictor is None:
            raise ModelNotLoaded("no model version is loaded yet; retry once the registry has one")
        return predictor

    def _check_owned(self, streams: list[str]) -> None:
        if self._owner_of is None:
            return
        for stream in dict.fromkeys(streams):
            owner = self._owner_of(stream)
            if owner is not None:
                raise NotOwned(f"stream {stream!r} is served by another replica: {owner}")

    def _check_batch_events(self, events: int) -> None:
        cap = self._settings.max_batch_events
        if events > cap:
            raise RequestTooLarge(
                f"PredictBatch has {events} events, more than --grpc-max-batch-events "
                f"({cap}); split it into calls of at most {cap}"
            )

    def _check_batch_depth(self, streams: list[str]) -> None:
        cap = self._settings.max_batch_depth
        ((stream, depth),) = Counter(streams).most_common(1)
        if depth > cap:
            raise RequestTooLarge(
                f"PredictBatch has {depth} events of stream {stream!r}, more than "
                f"--grpc-max-batch-depth ({cap}) of one stream per call; send them in "
                "several calls, in order"
            )

    def _latency(self, events: Sequence[event_pb2.Event]) -> None:
        """Event time (``ts``) to prediction, for events that carry a ts."""
        if self._metrics is not None:
            ts = event_times(events)
            if ts.size:
                self._metrics.event_latency.observe_many(time.time() - ts, "grpc")

    def _record(self, batch: EventBatch, result: BatchResult) -> None:
        """After an applied batch: count it."""
        if self._metrics is not None:
            counts = np.bincount(result.outcome, minlength=len(OUTCOMES))
            # A refused event counts as invalid, as the Kafka path counts it.
            self._metrics.record_batch(
                "grpc",
                {_COUNTED_AS.get(k, OUTCOMES[k]): int(n) for k, n in enumerate(counts)},
                len(batch) - int(counts[1:].sum()),
                result.abs_errors,
                result.model,
                result.version,
                result.scores,
                result.levels,
            )
            if result.evicted:
                self._metrics.sync_store_counters(len(result.evicted), 0)

    def _apply(
        self, predictor: Predictor, batch: EventBatch, context: grpc.ServicerContext
    ) -> BatchResult:
        """Apply a batch in one Predictor call (which validates it whole first)."""
        self._check_owned(batch.streams)
        # Wait for the Predictor (the Kafka loop may hold it) no longer than the
        # client's deadline: a call that gave up must not change state.
        remaining = context.time_remaining()
        wait = -1 if remaining is None or remaining > threading.TIMEOUT_MAX else remaining
        if wait == 0 or not predictor.lock.acquire(timeout=wait):
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before applying")
        try:
            # Again under the lock: a revocation takes it to checkpoint and let the
            # partitions go, so a stream owned when the call arrived may be gone now,
            # and a write applied then would never reach the changelog.
            self._check_owned(batch.streams)
            result = predictor.predict(batch)
        finally:
            predictor.lock.release()
        self._record(batch, result)
        return result

    def _apply_one(
        self, predictor: Predictor, event: event_pb2.Event, context: grpc.ServicerContext
    ) -> pb.Prediction:
        """One event, merged with concurrent single-event calls (see grpc_coalesce)."""
        batch = batch_of([event], predictor.config.input_size)
        bad = predictor.validate(batch)
        if bad:
            raise refusal(batch.streams, *bad[0])
        self._check_owned(batch.streams)
        try:
            result, row = self._coalescer.submit(predictor, batch, context)
        except DeadlineExpired:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before applying")
        self._latency([event])
        return prediction_of(event, result, row)

    # ---------------------------------------------------------- predictions
    @_mapped
    def Predict(self, request: event_pb2.Event, context: grpc.ServicerContext) -> pb.Prediction:
        return self._apply_one(self._predictor(), request, context)

    @_mapped
    def PredictBatch(
        self, request: pb.EventBatch, context: grpc.ServicerContext
    ) -> pb.PredictionBatch:
        predictor = self._predictor()
        out = pb.PredictionBatch()
        if not request.events:
            return out
        self._check_batch_events(len(request.events))
        batch = batch_of(request.events, predictor.config.input_size)
        self._check_batch_depth(batch.streams)
        result = self._apply(predictor, batch, context)
        if result.refused:
            # The Predictor applied the others (a refused event changes nothing):
            # say so, so that a retry sends only what was refused.
            row, reason, message = result.refused[0]
            raise InvalidEvent(
                reason,
                f"event {row} (stream {batch.streams[row]!r}): {message}; "
                f"{len(result.refused)} of the batch's {len(batch)} events were refused, "
                "the others were applied",
            )
        self._latency(request.events)
        return predictions_into(out, batch, result)

    def PredictStream(
        self, request_iterator: Iterator[event_pb2.Event], context: grpc.ServicerContext
    ) -> Iterator[pb.Prediction]:
        if not self._stream_slots.acquire(blocking=False):
            limit = self._settings.predict_stream_limit
            grpc_errors.abort(
                context,
                Overloaded(
                    f"{limit} PredictStream calls are open, the most --grpc-max-predict-streams "
                    "allows; retry after one closes, or use Predict or PredictBatch"
                ),
            )
        try:
            for event in request_iterator:
                yield self._apply_one(self._predictor(), event, context)
        except StreamcellError as exc:
            grpc_errors.abort(context, exc)
        finally:  # also on cancellation: the request iterator raises, or the generator closes
            self._stream_slots.release()

    @_mapped
    def Forecast(self, request: pb.ForecastRequest, context: grpc.ServicerContext) -> pb.Forecast:
        predictor = self._predictor()
        stream = _stream_id(request.stream)
        self._check_owned([stream])
        loaded = predictor.loaded
        steps = predictor.forecast_result(stream, request.horizon)
        out = pb.Forecast(stream=stream, model=loaded.name, version=loaded.version)
        return forecast_into(out, steps, loaded.config.quantile_levels)

    # ---------------------------------------------------------------- admin
    @_mapped
    def GetStream(self, request: pb.StreamRequest, context: grpc.ServicerContext) -> pb.StreamState:
        predictor = self._predictor()
        stream = _stream_id(request.stream)
        self._check_owned([stream])
        with predictor.lock:  # the levels of the version whose state this is
            levels = predictor.config.quantile_levels
            try:
                info = predictor.info(stream)
            except StreamNotFound:
                if request.missing_ok:
                    return pb.StreamState(stream=stream, exists=False)
                raise
        return stream_state(info, request.include_gates, levels)

    @_mapped
    def ResetStream(self, request: pb.StreamRequest, context: grpc.ServicerContext) -> pb.StreamAck:
        stream = _stream_id(request.stream)
        self._check_owned([stream])
        self._predictor().reset(stream)
        return pb.StreamAck(stream=stream)

    @_mapped
    def DeleteStream(
        self, request: pb.StreamRequest, context: grpc.ServicerContext
    ) -> pb.StreamAck:
        stream = _stream_id(request.stream)
        self._check_owned([stream])
        self._predictor().delete(stream)
        return pb.StreamAck(stream=stream)

    @_mapped
    def ListStreams(
        self, request: pb.ListStreamsRequest, context: grpc.ServicerContext
    ) -> pb.ListStreamsResponse:
        size = request.page_size or DEFAULT_PAGE_SIZE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidEvent("bad_page_size", f"page_size must be in 1..{MAX_PAGE_SIZE}")
        streams = self._predictor().list_streams(after=request.page_token, limit=size + 1)
        more = len(streams) > size
        streams = streams[:size]
        return pb.ListStreamsResponse(streams=streams, next_page_token=streams[-1] if more else "")

    @_mapped
    def ModelInfo(
        self, request: pb.ModelInfoRequest, context: grpc.ServicerContext
    ) -> pb.ModelInfoResponse:
        predictor = self._predictor()
        with predictor.lock:
            loaded, cfg, store = predictor.loaded, predictor.config, predictor.store
            streams = predictor.stream_count()  # in memory and in the cold tier
        return pb.ModelInfoResponse(
            name=loaded.name,
            version=loaded.version,
            input_size=cfg.input_size,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            output_size=cfg.output_size,
            features=cfg.features,
            targets=cfg.targets,
            autoregressive=cfg.autoregressive,
            scaling=cfg.scaling,
            streams=streams,
            max_streams=store.max_streams,
            quantile_levels=cfg.quantile_levels,
        )
