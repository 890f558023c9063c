"""The Predictor serving a model with a recipe: the features are training's, bit for bit."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from recipe_support import make_recipe_model

from streamcell.core.checkpoint import LoadedModel, load_checkpoint
from streamcell.core.errors import InvalidEvent, StreamNotFound
from streamcell.core.events import EventBatch
from streamcell.core.predictor import PREDICTED, Predictor
from streamcell.core.recipe import featurize

# Each with the event columns it follows: covariates, lags only, no scale, seasons.
CASES = {
    "covariates": (
        {"target": 1, "lags": [1, 2, 5], "scale_window": 4, "log_scale": True, "age": True},
        ("temp", "load", "hour"),
    ),
    "lags": (
        {
            "target": 0,
            "lags": [1, 2, 3, 11, 12, 13],
            "scale_window": 12,
            "log_scale": True,
            "periods": [12],
            "age": True,
        },
        ("y",),
    ),
    "unscaled": ({"target": 0, "lags": [1, 7], "periods": [7, 3]}, ("y",)),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # batch invariance


def model(tmp_path: Path, case: str, seed: int = 0, version: str | None = None) -> LoadedModel:
    recipe, features = CASES[case]
    return load_checkpoint(
        make_recipe_model(tmp_path, recipe, seed=seed, version=version, features=features)
    )


def series(rng: np.random.Generator, length: int, width: int) -> np.ndarray:
    """A seasonal, trending series at a random level, plus noise columns."""
    t = np.arange(length)
    level = rng.uniform(1, 1e3)
    y = level * (1 + 0.3 * np.sin(2 * np.pi * t / 12) + 0.01 * t)
    y += rng.normal(0, level / 20, length)
    x = rng.normal(size=(length, width)) * 5
    x[:, 0] = y
    return x.astype(np.float32)


def featurize_path(loaded: LoadedModel, x: np.ndarray) -> np.ndarray:
    """Training's way: featurize the whole series, normalise, step the model from zero."""
    cfg, net = loaded.config, loaded.model
    assert cfg.history is not None
    features, scale = featurize(cfg.history, x)
    mean = torch.tensor(cfg.input_mean, dtype=torch.float32)
    std = torch.tensor(cfg.input_std, dtype=torch.float32)
    u = (torch.from_numpy(features) - mean) / std
    h, c = net.zero_state(1)
    out = []
    for t in range(len(x)):
        step = net.step(u[t : t + 1], h, c)
        h, c = step.h, step.c
        out.append(step.y)
    y = torch.cat(out) * torch.tensor(cfg.target_std) + torch.tensor(cfg.target_mean)
    return (y * torch.from_numpy(scale)[:, None]).numpy()


def whole_sequence(loaded: LoadedModel, x: np.ndarray) -> np.ndarray:
    """The same through nn.LSTM over the whole sequence (as training runs it)."""
    cfg = loaded.config
    assert cfg.history is not None
    features, scale = featurize(cfg.history, x)
    u = (features - np.float32(cfg.input_mean)) / np.float32(cfg.input_std)
    with torch.no_grad():
        y, _ = loaded.model(torch.from_numpy(u.astype(np.float32))[None])
    return (y[0].numpy() * cfg.target_std[0] + cfg.target_mean[0]) * scale[:, None]


def feed(p: Predictor, data: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
    """Every stream's events in order, interleaved in random batches; the predictions."""
    order = [s for s, x in data.items() for _ in range(len(x))]
    rng.shuffle(order)  # a random interleaving; each stream's events stay in order
    cursor = dict.fromkeys(data, 0)
    events = []
    for s in order:
        events.append((s, data[s][cursor[s]]))
        cursor[s] += 1
    got: dict[str, list[np.ndarray]] = {s: [] for s in data}
    k = 0
    while k < len(events):
        chunk = events[k : k + int(rng.integers(1, 12))]  # often a stream twice
        k += len(chunk)
        res = p.predict(EventBatch.of([s for s, _ in chunk], np.array([x for _, x in chunk])))
        assert (res.outcome == PREDICTED).all()
        for (s, _), y in zip(chunk, res.yhat, strict=True):
            got[s].append(y)
    return {s: np.array(v) for s, v in got.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_predictions_are_the_bits_of_trainings_featurize_path(tmp_path, case):
    loaded = model(tmp_path, case)
    width = loaded.config.input_size
    rng = np.random.default_rng(7)
    data = {f"s{k}": series(rng, int(rng.integers(1, 60)), width) for k in range(6)}
    got = feed(Predictor(loaded), data, rng)
    for s, x in data.items():
        want = featurize_path(loaded, x)
        assert got[s].tobytes() == want.tobytes(), s
        np.testing.assert_allclose(got[s], whole_sequence(loaded, x), rtol=1e-4, atol=1e-4)


def test_the_history_and_scale_are_kept_shown_and_cleared(tmp_path):
    loaded = model(tmp_path, "lags")  # ring of 13, scale over 12
    p = Predictor(loaded)
    x = series(np.random.default_rng(1), 20, 1)
    for k in range(3):
        p.predict(EventBatch.of(["a"], x[k : k + 1]))
    info = p.info("a")
    assert info.history == tuple(x[:3, 0].tolist())
    assert info.scale == pytest.approx(float(np.abs(x[:3, 0]).mean()), rel=1e-6)
    p.predict(EventBatch.of(["a"] * 17, x[3:]))
    info = p.info("a")
    assert info.history == tuple(x[7:, 0].tolist()), "the last 13 values, oldest first"
    _, scale = featurize(loaded.config.history, x)
    assert info.scale == float(scale[-1])
    p.reset("a")
    info = p.info("a")
    assert (info.events, info.history, info.scale) == (0, (), None)
    assert not p.store.ring[p.store.slot_of("a")].any()
    # After a reset the stream starts afresh: the same predictions as a new one.
    again = p.predict(EventBatch.of(["a"] * 5, x[:5])).yhat
    assert again.tobytes() == featurize_path(loaded, x[:5]).tobytes()


def test_a_restored_stream_continues_with_the_same_bits(tmp_path):
    loaded = model(tmp_path, "covariates")
    rng = np.random.default_rng(3)
    data = {f"s{k}": series(rng, 40, 3) for k in range(5)}
    streams = list(data)
    first = Predictor(loaded)
    out = []
    for t in range(40):
        out.append(first.predict(EventBatch.of(streams, np.stack([data[s][t] for s in streams]))))
        if t == 24:
            snap = first.store.snapshot(streams)
    second = Predictor(loaded, initial_capacity=1)  # grows while restoring
    second.store.restore(zip(streams, snap, strict=True))
    for t in range(25, 40):
        for k, s in enumerate(streams):
            y = second.predict(EventBatch.of([s], data[s][t][None])).yhat[0]
            assert y.tobytes() == out[t].yhat[k].tobytes()
    for s in streams:
        a, b = first.info(s), second.info(s)
        assert (a.history, a.scale, a.events) == (b.history, b.scale, b.events)
        assert torch.equal(a.h, b.h) and torch.equal(a.c, b.c)


def test_swap_keeps_histories_for_the_same_recipe_and_resets_for_another(tmp_path):
    p = Predictor(model(tmp_path, "lags", seed=0, version="v1"))
    x = series(np.random.default_rng(4), 5, 1)
    p.predict(EventBatch.of(["a"] * 5, x))
    history = p.info("a").history
    assert p.swap(model(tmp_path, "lags", seed=1, version="v2")) is True
    assert p.info("a").history == history
    assert p.swap(model(tmp_path, "unscaled", version="v3")) is False
    assert "a" not in p.store and p.store.buffer_size == 7


def hand_written_forecast(loaded: LoadedModel, x: np.ndarray, horizon: int) -> np.ndarray:
    """torch.nn.LSTM + nn.Linear over features written from recipe.py's docstring formulas."""
    cfg = loaded.config
    spec = cfg.recipe
    assert spec is not None
    weights = loaded.model.state_dict()
    lstm = torch.nn.LSTM(cfg.lstm_input_size, cfg.hidden_size, cfg.num_layers, batch_first=True)
    head = torch.nn.Linear(cfg.hidden_size, cfg.output_size)
    lstm.load_state_dict({k[5:]: v for k, v in weights.items() if k.startswith("lstm.")})
    head.load_state_dict({k[5:]: v for k, v in weights.items() if k.startswith("head.")})

    def features(y: list[float]) -> tuple[list[float], float]:
        n, w = len(y), spec["scale_window"]
        s = max(float(np.mean(np.abs(y[-w:]))), cfg.scale_floor) if w else 1.0
        row = [y[n - lag] / s if n - lag >= 0 else 0.0 for lag in spec["lags"]]
        row += [math.log(s)] if spec["log_scale"] else []
        for p in spec["periods"]:
            row += [math.sin(2 * math.pi * (n % p) / p), math.cos(2 * math.pi * (n % p) / p)]
        row += [math.log1p(n)] if spec["age"] else []
        return row, s

    values = [float(v) for v in x[:, 0]]
    state, out = None, []
    with torch.no_grad():
        for n in range(1, len(x) + horizon):  # n: values seen, the fed-back ones included
            row, s = features(values[:n])
            u = (np.array(row) - np.array(cfg.input_mean)) / np.array(cfg.input_std)
            top, state = lstm(torch.tensor(u, dtype=torch.float32)[None, None], state)
            y = (float(head(top[0, 0])[0]) * cfg.target_std[0] + cfg.target_mean[0]) * s
            if n >= len(x):
                out.append(y)
                values.append(y)  # the prediction is the next value
    return np.array(out)[:, None]


@pytest.mark.parametrize("case", ["lags", "unscaled"])
def test_forecast_with_lags_equals_a_hand_written_feedback_loop(tmp_path, case):
    loaded = model(tmp_path, case)
    p = Predictor(loaded)
    x = series(np.random.default_rng(5), 30, 1)
    p.predict(EventBatch.of(["a"] * 30, x))
    before = p.store.snapshot(["a"])
    fc = p.forecast("a", 25)  # past every lag and the scale window: all fed back
    assert p.store.snapshot(["a"]) == before, "the stream's state is not written"
    assert fc.shape == (25, 1)
    np.testing.assert_allclose(fc, hand_written_forecast(loaded, x, 25), rtol=1e-4, atol=1e-4)
    # The first step is the stream's own prediction; one step is no feedback at all.
    assert fc[0].tobytes() == p.store.yhat[p.store.slot_of("a")].numpy().tobytes()
    assert p.forecast("a", 1).tobytes() == fc[:1].tobytes()


def test_forecast_equals_feeding_the_predictions_as_events(tmp_path):
    """Bit for bit: a forecast is what the stream would predict if its predictions came true."""
    loaded = model(tmp_path, "lags")
    p = Predictor(loaded)
    x = series(np.random.default_rng(6), 15, 1)
    p.predict(EventBatch.of(["a"] * 15, x))
    fc = p.forecast("a", 10)
    probe = Predictor(loaded)
    y = probe.predict(EventBatch.of(["b"] * 15, x)).yhat[-1:]
    expected = [y[0]]
    for _ in range(9):
        y = probe.predict(EventBatch.of(["b"], y)).yhat
        expected.append(y[0])
    assert fc.tobytes() == np.array(expected).tobytes()


def test_a_model_with_covariates_cannot_forecast(tmp_path):
    p = Predictor(model(tmp_path, "covariates"))
    p.predict(EventBatch.of(["a"], np.ones((1, 3), np.float32)))
    with pytest.raises(InvalidEvent, match=r"covariates \['temp', 'hour'\] besides 'load'") as err:
        p.forecast("a", 3)
    assert err.value.reason == "not_autoregressive"


def test_forecast_of_an_unknown_or_empty_stream(tmp_path):
    p = Predictor(model(tmp_path, "lags"))
    with pytest.raises(StreamNotFound):
        p.forecast("nope", 3)
    p.predict(EventBatch.of(["a"], np.ones((1, 1), np.float32)))
    p.reset("a")
    with pytest.raises(StreamNotFound, match="seen no events"):
        p.forecast("a", 3)


@settings(max_examples=25, deadline=None)
@given(
    width=st.integers(1, 3),
    lags=st.lists(st.integers(1, 20), min_size=1, max_size=5, unique=True),
    window=st.integers(0, 20),
    periods=st.lists(st.integers(2, 15), max_size=2, unique=True),
    age=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_any_recipe_is_served_with_the_bits_of_featurize(
    tmp_path_factory, width, lags, window, periods, age, seed
):
    """Every feature kind, random series and batches: serving equals training's path."""
    recipe = {"target": width - 1, "lags": lags, "scale_window": window,
              "log_scale": window > 0, "periods": periods, "age": age}  # fmt: skip
    features = ("a", "b", "c")[:width]
    version = make_recipe_model(tmp_path_factory.mktemp("m"), recipe, seed=seed % 1000,
                                features=features)  # fmt: skip
    loaded = load_checkpoint(version)
    rng = np.random.default_rng(seed)
    data = {f"s{k}": series(rng, int(rng.integers(1, 40)), width)[:, ::-1].copy() for k in range(3)}
    got = feed(Predictor(loaded), data, rng)
    for s, x in data.items():
        assert got[s].tobytes() == featurize_path(loaded, x).tobytes(), (recipe, s)
