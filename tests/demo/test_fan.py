"""The demo's Forecast fan: read from a gRPC Forecast, drawn beside the predictions."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from streamcell.core.events import EventBatch
from streamcell.demo.plot import fan_of, plot_streams
from streamcell.service.grpc_convert import forecast_into
from streamcell.v1 import predictor_pb2 as pb

LEVELS = (0.1, 0.5, 0.9)


def _forecast(horizon: int, with_quantiles: bool = True) -> pb.Forecast:
    median = np.linspace(10.0, 12.0, horizon, dtype=np.float32)[:, None]
    width = np.arange(1, horizon + 1, dtype=np.float32)[:, None]  # widening with the horizon
    q = np.stack([median - width, median, median + width], axis=1)
    result = SimpleNamespace(yhat=median, quantiles=q if with_quantiles else None)
    return forecast_into(pb.Forecast(stream="s"), result, LEVELS)


def test_a_fan_is_the_median_and_the_widest_interval():
    fan = fan_of(_forecast(4), LEVELS)
    assert fan is not None and fan.label == "80% interval"
    assert fan.median.tolist() == np.linspace(10.0, 12.0, 4, dtype=np.float32).tolist()
    assert (fan.upper - fan.lower).tolist() == [2.0, 4.0, 6.0, 8.0]
    assert fan_of(_forecast(4, with_quantiles=False), LEVELS) is None
    assert fan_of(_forecast(4), ()) is None


def test_the_plot_draws_fans_beside_the_predictions(tmp_path):
    values = np.sin(np.arange(40.0)) + 10
    series = [("s", values, 30), ("t", values * 2, 30)]
    predictions = {("s", k): float(values[k + 1]) for k in range(39)}
    plain = plot_streams(tmp_path / "plain.png", series, predictions, "plain")
    fans = {"s": fan_of(_forecast(6), LEVELS)}
    fanned = plot_streams(tmp_path / "fan.png", series, predictions, "fans", fans=fans)
    assert fanned.stat().st_size > plain.stat().st_size > 10_000


def test_the_demo_asks_the_service_for_fans_only_when_the_model_has_quantiles(tmp_path):
    from quantile_support import make_quantile_model

    from streamcell.core.checkpoint import load_checkpoint
    from streamcell.core.predictor import Predictor
    from streamcell.demo.run import _fans
    from streamcell.service.grpc_api import GrpcSettings, start_grpc_server

    def fans_from(predictor: Predictor) -> dict:
        handle = start_grpc_server(GrpcSettings(port=0, host="127.0.0.1"), lambda: predictor, None)
        try:
            predictor.predict(EventBatch.of(["s", "s"], np.ones((2, 3), np.float32)), now=1.0)
            return _fans(handle.port, ["s"], 4)
        finally:
            handle.stop(grace=1)

    point = Predictor(load_checkpoint(make_quantile_model(tmp_path / "p", levels=())))
    assert fans_from(point) == {}
    quantile = Predictor(load_checkpoint(make_quantile_model(tmp_path / "q")))
    (fan,) = fans_from(quantile).values()  # its Forecast's sample paths: a fan
    assert len(fan.median) == 4
    assert np.all(fan.lower <= fan.median) and np.all(fan.median <= fan.upper)
