"""The demo's Forecast fan: read from a gRPC Forecast, drawn beside the predictions."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

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
