"""GetStream and Forecast over gRPC for a model with a recipe: the history is shown."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from pipeline_support import make_model
from recipe_support import make_recipe_model

from streamcell.core.checkpoint import load_checkpoint
from streamcell.core.predictor import Predictor
from streamcell.service.client import Client, event
from streamcell.service.grpc_api import GrpcSettings, start_grpc_server

RECIPE = {"target": 0, "lags": [1, 2, 4], "scale_window": 4, "log_scale": True, "age": True}


def serve(predictor: Predictor) -> Iterator[Client]:
    handle = start_grpc_server(GrpcSettings(port=0, host="127.0.0.1"), lambda: predictor, None)
    try:
        with Client(f"127.0.0.1:{handle.port}", timeout=10) as client:
            yield client
    finally:
        handle.stop(grace=1)


@pytest.fixture
def lag_client(tmp_path) -> Iterator[tuple[Client, Predictor]]:
    predictor = Predictor(load_checkpoint(make_recipe_model(tmp_path, RECIPE, features=("y",))))
    for client in serve(predictor):
        yield client, predictor


def test_get_stream_shows_the_history_and_scale(lag_client) -> None:
    client, predictor = lag_client
    values = [3.0, -1.5, 4.0, 2.0, 8.0, 0.5]
    client.predict_batch([event("h", [v]) for v in values[:2]])
    state = client.get_stream("h")
    assert list(state.history) == values[:2] and state.scale == pytest.approx(2.25)
    client.predict_batch([event("h", [v]) for v in values[2:]])
    state = client.get_stream("h")
    assert list(state.history) == values[2:], "the last 4 values, oldest first"
    assert state.scale == predictor.info("h").scale == pytest.approx(3.625)
    forecast = client.forecast("h", 6)
    assert client.get_stream("h") == state, "a forecast changes nothing"
    np.testing.assert_array_equal(
        [list(s.yhat) for s in forecast.steps], predictor.forecast("h", 6)
    )
    client.reset_stream("h")
    state = client.get_stream("h")
    assert list(state.history) == [] and not state.HasField("scale")


def test_a_model_without_a_recipe_shows_no_history(tmp_path) -> None:
    predictor = Predictor(load_checkpoint(make_model(tmp_path)))
    for client in serve(predictor):
        client.predict("p", [1.0, 2.0, 3.0])
        state = client.get_stream("p")
        assert state.events == 1 and list(state.history) == [] and not state.HasField("scale")
