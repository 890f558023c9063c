"""proto <-> domain conversion for the gRPC servicer, in bulk where it counts.

PredictBatch is the throughput path: the request's events become one
:class:`EventBatch` with a handful of list comprehensions and one
``np.fromiter`` over all features (no per-event arrays), and the predictions
are built with one ``add`` per event from plain Python lists.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from streamcell.core.events import (
    NO_SEQ,
    EventBatch,
    invalid_lengths,
    invalid_seqs,
    refusal,
)
from streamcell.core.predictor import DUPLICATE, BatchResult
from streamcell.core.quantiles import central_intervals
from streamcell.core.state import StreamInfo
from streamcell.v1 import event_pb2
from streamcell.v1 import predictor_pb2 as pb

_ABSENT = np.iinfo(np.int64).min  # an Event without seq, until mapped to NO_SEQ


def batch_of(events: Sequence[event_pb2.Event], input_size: int) -> EventBatch:
    """An EventBatch from Event messages; InvalidEvent for what cannot enter its columns.

    That is an x of another length (the columns are [N, input]) and an
    explicit negative seq (which the column would read as "no seq"); the
    other rules are checked on the batch by ``events.find_invalid``.
    """
    n = len(events)
    xs = [e.x for e in events]
    streams = [e.stream for e in events]
    bad = invalid_lengths(np.fromiter(map(len, xs), dtype=np.int64, count=n), input_size)
    if bad:
        raise refusal(streams, *bad[0])
    flat = np.fromiter(itertools.chain.from_iterable(xs), dtype=np.float32, count=n * input_size)
    seq = np.fromiter((e.seq if e.HasField("seq") else _ABSENT for e in events), np.int64, n)
    absent = seq == _ABSENT
    bad = invalid_seqs(seq, ~absent)
    if bad:
        raise refusal(streams, *bad[0])
    seq[absent] = NO_SEQ
    ts = np.fromiter((e.ts if e.HasField("ts") else np.nan for e in events), np.float64, n)
    return EventBatch.of(streams, flat.reshape(n, input_size), seq, time=ts)


def event_times(events: Sequence[event_pb2.Event]) -> np.ndarray:
    """The ``ts`` of the events that carry one (seconds), for the latency metric."""
    return np.array([e.ts for e in events if e.HasField("ts")], dtype=np.float64)


def predictions_into(
    out: pb.PredictionBatch, batch: EventBatch, result: BatchResult
) -> pb.PredictionBatch:
    """Append one Prediction per event of ``batch`` to ``out``, in order."""
    add = out.predictions.add
    duplicate = result.outcome == DUPLICATE
    yhat = result.yhat.tolist()
    if duplicate.any():
        for k in np.flatnonzero(duplicate):
            yhat[k] = []
    outcome = np.where(duplicate, pb.OUTCOME_DUPLICATE, pb.OUTCOME_PREDICTED).tolist()
    model, version = result.model, result.version
    quantiles: Iterable[list[pb.Quantile]] = itertools.repeat([], len(yhat))
    if result.quantiles is not None:
        quantiles = [
            [] if dup else quantiles_of(result.levels, q)
            for dup, q in zip(duplicate.tolist(), result.quantiles.tolist(), strict=True)
        ]
    for stream, seq, y, events, oc, qs in zip(
        batch.streams,
        batch.seq.tolist(),
        yhat,
        result.events.tolist(),
        outcome,
        quantiles,
        strict=True,
    ):
        add(
            stream=stream,
            seq=None if seq == NO_SEQ else seq,
            yhat=y,
            model=model,
            version=version,
            events=events,
            outcome=oc,
            quantiles=qs,
        )
    return out


def quantiles_of(levels: Sequence[float], values: Any) -> list[pb.Quantile]:
    """Quantile messages from the levels and ``[levels][targets]`` values (lists or numpy)."""
    return [pb.Quantile(level=lv, yhat=v) for lv, v in zip(levels, values, strict=True)]


def prediction_of(event: event_pb2.Event, result: BatchResult, row: int) -> pb.Prediction:
    """The Prediction for ``event``, row ``row`` of ``result``."""
    quantiles: list[pb.Quantile] = []
    if result.outcome[row] == DUPLICATE:
        yhat, outcome = [], pb.OUTCOME_DUPLICATE
    else:
        yhat, outcome = result.yhat[row].tolist(), pb.OUTCOME_PREDICTED
        if result.quantiles is not None:
            quantiles = quantiles_of(result.levels, result.quantiles[row].tolist())
    return pb.Prediction(
        stream=event.stream,
        seq=event.seq if event.HasField("seq") else None,
        yhat=yhat,
        model=result.model,
        version=result.version,
        events=int(result.events[row]),
        outcome=outcome,
        quantiles=quantiles,
    )


def forecast_into(out: pb.Forecast, result: Any, levels: Sequence[float]) -> pb.Forecast:
    """Append the steps of a Predictor forecast to ``out``, with quantiles where it has them.

    ``result``: the steps' values ``[horizon, targets]``, or a
    ``streamcell.core.forecast.ForecastResult`` (``yhat`` and ``quantiles``
    ``[horizon, levels, targets]`` or None).
    """
    if isinstance(result, np.ndarray):
        rows, quantiles = result.tolist(), None
    else:
        rows = np.asarray(result.yhat).tolist()
        quantiles = None if result.quantiles is None else np.asarray(result.quantiles).tolist()
    for k, yhat in enumerate(rows):
        if quantiles is None or not levels:
            out.steps.add(yhat=yhat)
        else:
            out.steps.add(yhat=yhat, quantiles=quantiles_of(levels, quantiles[k]))
    return out


def stream_state(
    info: StreamInfo, include_gates: bool, levels: Sequence[float] = ()
) -> pb.StreamState:
    out = pb.StreamState(
        stream=info.stream,
        exists=True,
        events=info.events,
        seq=None if info.seq == NO_SEQ else info.seq,
        partition=None if info.partition < 0 else info.partition,
        offset=None if info.offset < 0 else info.offset,
        last_seen=info.last_seen,
        last_prediction=info.last_prediction,
        online_mae=info.online_mae,
        history=info.history,
        scale=info.scale,
    )
    if info.last_quantiles and len(levels) == len(info.last_quantiles):
        out.last_quantiles.extend(quantiles_of(levels, info.last_quantiles))
        for iv, inside in zip(central_intervals(levels), info.inside, strict=True):
            out.coverage.add(
                interval=iv.coverage,
                lower=levels[iv.lower],
                upper=levels[iv.upper],
                scored=info.scored,
                inside=inside,
            )
    if include_gates and info.gates is not None:
        for layer in info.gates.tolist():  # [L, 4, H]: i, f, g, o
            out.gates.add(input=layer[0], forget=layer[1], cell=layer[2], output=layer[3])
    return out
