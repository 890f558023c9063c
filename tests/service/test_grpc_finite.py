"""gRPC: an event whose step would overflow the model is INVALID_ARGUMENT for its caller alone.

Over a real socket, with a model whose input stds are below 1, so that a
finite x = (3e38, -3e38, 3e38) normalises to infinities and its step to NaN.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import torch

from streamcell.core.checkpoint import ModelConfig, load_latest, save_checkpoint
from streamcell.core.model import StreamingLSTM
from streamcell.core.predictor import Predictor
from streamcell.service.client import Client, event
from streamcell.service.grpc_api import GrpcSettings, start_grpc_server
from streamcell.service.metrics import Metrics

HUGE = (3e38, -3e38, 3e38)
CLOCK = 1e9  # one event time for all: a refused event changes no last_seen either


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Predictor, str]]:
    root: Path = tmp_path_factory.mktemp("registry")
    torch.manual_seed(0)
    feats = ("a", "b", "c")
    cfg = ModelConfig(3, 8, 1, 3, feats, feats, (0.0,) * 3, (0.5,) * 3, (0.0,) * 3, (1.0,) * 3)
    save_checkpoint(root, "finite", StreamingLSTM(3, 8, 1, 3), cfg)
    predictor = Predictor(load_latest(root, "finite"), clock=lambda: CLOCK)
    handle = start_grpc_server(
        GrpcSettings(port=0, host="127.0.0.1", workers=8), lambda: predictor, Metrics()
    )
    try:
        yield predictor, f"127.0.0.1:{handle.port}"
    finally:
        handle.stop(grace=1)


def refused(call, *args) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    return info.value.code(), info.value.details()


def test_predict_of_an_overflowing_event_is_invalid_argument_and_the_stream_untouched(served):
    predictor, target = served
    with Client(target, timeout=10) as client:
        client.predict("fin-1", [0.5, 0.5, 0.5])
        before = predictor.store.snapshot(["fin-1"])
        code, details = refused(client.predict, "fin-1", list(HUGE))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "fin-1" in details and "overflowed the model" in details
        assert predictor.store.snapshot(["fin-1"]) == before
        assert client.get_stream("fin-1").events == 1
        assert client.predict("fin-1", [0.5, 0.5, 0.5]).events == 2


def test_only_the_caller_whose_event_was_refused_gets_the_error(served):
    """Calls queued behind a held Predictor are merged into one batch by the coalescer."""
    predictor, target = served
    with Client(target, timeout=10) as client, ThreadPoolExecutor(4) as pool:
        client.predict("co-bad", [0.5, 0.5, 0.5])
        before = predictor.store.snapshot(["co-bad"])
        calls = [("co-lead", [1.0, 1.0, 1.0])]
        calls += [("co-1", [1.0, 2.0, 3.0]), ("co-bad", list(HUGE)), ("co-2", [0.0, 1.0, 0.0])]
        with predictor.lock:  # as the Kafka loop holds it: the calls queue up meanwhile
            lead = pool.submit(client.predict, *calls[0])
            time.sleep(0.3)  # the leader took its batch and waits for the lock
            rest = [pool.submit(client.predict, *c) for c in calls[1:]]
            time.sleep(0.3)  # the others queued behind it: the next batch holds all three
        assert lead.result().events == 1
        assert rest[0].result().events == 1 and rest[2].result().events == 1
        err = rest[1].exception()
        assert isinstance(err, grpc.RpcError)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "co-bad" in err.details()
        assert predictor.store.snapshot(["co-bad"]) == before


def test_predict_batch_refuses_naming_the_event_and_applies_the_others(served):
    predictor, target = served
    with Client(target, timeout=10) as client:
        client.predict("pb-bad", [0.5, 0.5, 0.5])
        before = predictor.store.snapshot(["pb-bad"])
        batch = [event("pb-1", [1, 2, 3]), event("pb-bad", HUGE), event("pb-2", [1, 1, 1])]
        code, details = refused(client.predict_batch, batch)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "event 1" in details and "pb-bad" in details and "others were applied" in details
        assert predictor.store.snapshot(["pb-bad"]) == before
        assert client.get_stream("pb-1").events == 1 and client.get_stream("pb-2").events == 1
