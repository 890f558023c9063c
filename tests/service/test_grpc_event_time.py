"""gRPC events' event time for the TTL: their ts, else their arrival (no server needed)."""

from __future__ import annotations

import numpy as np

from streamcell.service.grpc_coalesce import merge
from streamcell.service.grpc_convert import batch_of
from streamcell.v1 import event_pb2


def test_an_event_s_ts_becomes_the_batch_s_time_column_nan_without_one():
    events = [event_pb2.Event(stream="a", x=[1.0], ts=12.5), event_pb2.Event(stream="b", x=[2.0])]
    batch = batch_of(events, 1)
    assert batch.time[0] == 12.5 and np.isnan(batch.time[1])


def test_merged_batches_keep_each_row_s_time():
    one = batch_of([event_pb2.Event(stream="a", x=[1.0], ts=3.0)], 1)
    two = batch_of([event_pb2.Event(stream="b", x=[1.0])], 1)
    two.time = None  # a batch built without the column
    merged = merge([one, two])
    assert merged.time[0] == 3.0 and np.isnan(merged.time[1]) and len(merged.time) == 2
