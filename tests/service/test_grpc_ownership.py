"""A stream whose partition leaves this replica while a gRPC call waits is refused, not lost.

A revocation checkpoints and lets its partitions go under the Predictor's lock,
so the servicer checks ownership again once it holds the lock: a write applied
after the partitions went would be journaled nowhere and never reach the
changelog, although the client was told it succeeded.
"""

from __future__ import annotations

import grpc
import pytest

from streamcell.core.checkpoint import ModelConfig, load_latest, save_checkpoint
from streamcell.core.model import StreamingLSTM
from streamcell.core.predictor import Predictor
from streamcell.service.client import Client, event
from streamcell.service.grpc_api import GrpcSettings, start_grpc_server
from streamcell.service.metrics import Metrics


@pytest.fixture
def predictor(tmp_path) -> Predictor:
    names, zeros, ones = ("a",), (0.0,), (1.0,)
    config = ModelConfig(1, 4, 1, 1, names, names, zeros, ones, zeros, ones)
    save_checkpoint(tmp_path, "own", StreamingLSTM(1, 4, 1, 1), config)
    return Predictor(load_latest(tmp_path, "own"))


class MovesAfterFirstLook:
    """owner_of: ours at the first check (before the lock), another replica's after."""

    def __init__(self) -> None:
        self.looks: dict[str, int] = {}

    def __call__(self, stream: str) -> str | None:
        self.looks[stream] = self.looks.get(stream, 0) + 1
        return None if self.looks[stream] == 1 else "partition 0 moved to replica b"


@pytest.mark.parametrize("call", ["predict", "predict_batch"])
def test_a_stream_that_moved_during_the_call_is_refused_and_left_alone(predictor, call):
    owner_of = MovesAfterFirstLook()
    handle = start_grpc_server(
        GrpcSettings(port=0, host="127.0.0.1"), lambda: predictor, Metrics(), owner_of=owner_of
    )
    try:
        with Client(f"127.0.0.1:{handle.port}", timeout=5) as client:
            with pytest.raises(grpc.RpcError) as err:
                if call == "predict":
                    client.predict("s1", [1.0])
                else:
                    client.predict_batch([event("s1", [1.0]), event("s1", [2.0])])
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "moved to replica b" in err.value.details()
    finally:
        handle.stop(grace=1)
    assert owner_of.looks["s1"] >= 2  # looked at again under the lock
    assert len(predictor.store) == 0  # nothing was applied
