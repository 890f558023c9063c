"""The Predictor: per-stream state between events, exactly as the model run offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamcell.core.checkpoint import ModelConfig, load_checkpoint, save_checkpoint
from streamcell.core.errors import InvalidEvent, StreamNotFound
from streamcell.core.events import EventBatch
from streamcell.core.model import StreamingLSTM
from streamcell.core.normalization import stream_scales
from streamcell.core.predictor import DUPLICATE, PREDICTED, REPLAYED, Predictor, _waves

F = 3


def save(tmp_path: Path, scaling: str = "global", hidden: int = 16, seed: int = 0, version=None):
    torch.manual_seed(seed)
    model = StreamingLSTM(F, hidden, 2, F)
    names = ["a", "b", "c"]
    cfg = ModelConfig(
        F,
        hidden,
        2,
        F,
        names,
        names,
        [1.0, -1.0, 0.5],
        [2.0, 0.5, 1.0],
        [0.2, 0.1, 0.0],
        [3.0, 1.0, 0.5],
        scaling=scaling,
    )
    return load_checkpoint(save_checkpoint(tmp_path, "m", model, cfg, version=version))


def offline(loaded, x: np.ndarray) -> np.ndarray:
    """What the model predicts for one stream's events in order, computed whole."""
    cfg = loaded.config
    scale = np.ones_like(x)
    if cfg.scaling != "global":
        scale = stream_scales(x, cfg.scale_floor)
    u = (x / scale - np.array(cfg.input_mean, np.float32)) / np.array(cfg.input_std, np.float32)
    with torch.no_grad():
        y, _ = loaded.model(torch.from_numpy(u.astype(np.float32))[None])
    out = y[0].numpy() * np.array(cfg.target_std, np.float32) + np.array(
        cfg.target_mean, np.float32
    )
    return out * scale


@pytest.mark.parametrize("scaling", ["global", "stream_mean_abs"])
def test_interleaved_streams_match_the_model_run_offline(tmp_path, scaling):
    loaded = save(tmp_path, scaling)
    p = Predictor(loaded)
    rng = np.random.default_rng(1)
    series = {
        f"s{k}": (rng.normal(size=(30, F)) * (k + 1) * 10).astype(np.float32) for k in range(5)
    }
    got = {s: [] for s in series}
    # Random interleaving, random batch sizes, several events of a stream per batch.
    queue = [(s, t) for s in series for t in range(30)]
    queue.sort(key=lambda st: (st[1] + rng.integers(0, 5), rng.random()))
    # keep per-stream order
    cursor = {s: 0 for s in series}
    ordered = []
    for s, _ in queue:
        ordered.append((s, cursor[s]))
        cursor[s] += 1
    k = 0
    while k < len(ordered):
        n = int(rng.integers(1, 12))
        chunk = ordered[k : k + n]
        k += n
        res = p.predict(EventBatch.of([s for s, _ in chunk], [series[s][t] for s, t in chunk]))
        assert (res.outcome == PREDICTED).all()
        for (s, _), y in zip(chunk, res.yhat, strict=True):
            got[s].append(y)
    for s, x in series.items():
        np.testing.assert_allclose(np.array(got[s]), offline(loaded, x), rtol=1e-5, atol=1e-4)
        assert p.info(s).events == 30


def test_duplicates_by_seq_are_skipped_even_within_one_batch(tmp_path):
    p = Predictor(save(tmp_path))
    x = np.ones((4, F), np.float32)
    res = p.predict(EventBatch.of(["a", "a", "a", "b"], x, seq=[1, 1, 2, 5]))
    assert res.outcome.tolist() == [PREDICTED, DUPLICATE, PREDICTED, PREDICTED]
    assert p.info("a").events == 2 and p.info("a").seq == 2
    res = p.predict(EventBatch.of(["a", "b"], x[:2], seq=[2, 4]))
    assert res.outcome.tolist() == [DUPLICATE, DUPLICATE]
    assert p.info("b").events == 1


def test_offsets_already_reflected_are_skipped_per_partition(tmp_path):
    p = Predictor(save(tmp_path))
    x = np.ones((3, F), np.float32)
    p.predict(EventBatch.of(["a", "a", "a"], x, partition=[0, 0, 0], offset=[10, 11, 12]))
    res = p.predict(EventBatch.of(["a", "a"], x[:2], partition=[0, 0], offset=[12, 13]))
    assert res.outcome.tolist() == [REPLAYED, PREDICTED]
    info = p.info("a")
    assert (info.partition, info.offset, info.events) == (0, 13, 4)


def test_replayed_event_gives_the_same_prediction_bit_for_bit(tmp_path):
    """Restore a snapshot taken mid-stream and replay: identical bytes, any batch mates."""
    loaded = save(tmp_path)
    torch.set_num_threads(1)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 40, F)).astype(np.float32)
    streams = [f"s{k}" for k in range(20)]
    first = Predictor(loaded)
    outs = []
    for t in range(40):
        outs.append(first.predict(EventBatch.of(streams, x[:, t])).yhat)
        if t == 19:
            snap = first.store.snapshot(streams)
    second = Predictor(loaded)
    second.store.restore(zip(streams, snap, strict=True))
    for t in range(20, 40):  # now one stream at a time: different batch composition
        for k, s in enumerate(streams):
            y = second.predict(EventBatch.of([s], x[k : k + 1, t])).yhat[0]
            assert y.tobytes() == outs[t][k].tobytes()
    for s in streams:  # the snapshots differ only in last-seen wall time
        a, b = first.info(s), second.info(s)
        assert torch.equal(a.h, b.h) and torch.equal(a.c, b.c) and a.events == b.events == 40


def test_online_error_scores_the_previous_prediction(tmp_path):
    p = Predictor(save(tmp_path))
    first = p.predict(EventBatch.of(["a"], [[1.0, 2.0, 3.0]]))
    assert first.abs_errors.shape == (0, F)
    nxt = np.array([[0.0, 1.0, 5.0]], np.float32)
    second = p.predict(EventBatch.of(["a"], nxt))
    np.testing.assert_allclose(second.abs_errors, np.abs(nxt - first.yhat), rtol=1e-6)
    assert p.info("a").online_mae == pytest.approx(float(np.abs(nxt - first.yhat).mean()), rel=1e-6)


@pytest.mark.parametrize(
    ("x", "reason"),
    [
        ([[1.0, 2.0]], "wrong_length"),
        ([[1.0, float("nan"), 0.0]], "non_finite"),
        ([[np.inf, 0, 0]], "non_finite"),
    ],
)
def test_bad_events_raise_and_change_nothing(tmp_path, x, reason):
    p = Predictor(save(tmp_path))
    p.predict(EventBatch.of(["a"], [[1.0, 1.0, 1.0]]))
    before = p.store.snapshot(["a"])
    with pytest.raises(InvalidEvent) as err:
        p.predict(
            EventBatch.of(["a", "b"], np.vstack([np.ones((1, len(x[0]))), x]).astype(np.float32))
        )
    assert err.value.reason == reason
    assert p.store.snapshot(["a"]) == before and "b" not in p.store


def test_empty_stream_id_is_invalid(tmp_path):
    p = Predictor(save(tmp_path))
    with pytest.raises(InvalidEvent) as err:
        p.predict(EventBatch.of([""], [[1.0, 1.0, 1.0]]))
    assert err.value.reason == "missing_key"


def test_forecast_feeds_predictions_back_and_leaves_state_untouched(tmp_path):
    loaded = save(tmp_path)
    p = Predictor(loaded)
    x = np.random.default_rng(3).normal(size=(10, F)).astype(np.float32)
    for row in x:
        p.predict(EventBatch.of(["a"], row[None]))
    before = p.store.snapshot(["a"])
    fc = p.forecast("a", 5)
    assert p.store.snapshot(["a"]) == before
    # The forecast equals stepping the model on its own predictions.
    probe = Predictor(loaded)
    expected = []
    for row in x:
        y = probe.predict(EventBatch.of(["b"], row[None])).yhat
    expected.append(y[0])
    for _ in range(4):
        y = probe.predict(EventBatch.of(["b"], y)).yhat
        expected.append(y[0])
    np.testing.assert_allclose(fc, np.array(expected), rtol=1e-5, atol=1e-5)
    with pytest.raises(StreamNotFound):
        p.forecast("nope", 3)
    with pytest.raises(InvalidEvent, match="horizon must be in"):
        p.forecast("a", 0)


def test_swap_keeps_state_for_the_same_architecture_and_resets_otherwise(tmp_path):
    p = Predictor(save(tmp_path, seed=0, version="v1"))
    p.predict(EventBatch.of(["a"], [[1.0, 2.0, 3.0]]))
    assert p.swap(save(tmp_path, seed=1, version="v2")) is True
    assert p.info("a").events == 1 and p.loaded.version == "v2"
    assert p.swap(save(tmp_path, hidden=8, version="v3")) is False
    assert "a" not in p.store and p.resets == 1
    res = p.predict(EventBatch.of(["a"], [[1.0, 2.0, 3.0]]))
    assert res.version == "v3" and res.events.tolist() == [1]


def test_list_streams_pages_in_sorted_order(tmp_path):
    p = Predictor(save(tmp_path))
    p.predict(EventBatch.of(["c", "a", "b", "d"], np.ones((4, F), np.float32)))
    assert p.list_streams(limit=2) == ["a", "b"]
    assert p.list_streams(after="b", limit=2) == ["c", "d"]
    assert p.list_streams(after="d") == []


def test_gates_of_the_last_step_are_kept_when_asked(tmp_path):
    p = Predictor(save(tmp_path), keep_gates=True)
    p.predict(EventBatch.of(["a"], [[1.0, 2.0, 3.0]]))
    gates = p.info("a").gates
    assert gates is not None and gates.shape == (2, 4, 16)
    assert gates.abs().sum() > 0
    assert gates[:, [0, 1, 3]].min() >= 0 and gates[:, [0, 1, 3]].max() <= 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from("abcde"), max_size=40))
def test_waves_hold_each_stream_once_and_keep_its_events_in_order(streams):
    waves = _waves(streams)
    rows = np.concatenate(waves).tolist() if waves else []
    assert sorted(rows) == list(range(len(streams)))
    for wave in waves:
        assert len({streams[k] for k in wave.tolist()}) == len(wave)
    # A stream's r-th event is in wave r: so its events are applied in batch order.
    rank = {k: r for r, wave in enumerate(waves) for k in wave.tolist()}
    seen: dict[str, int] = {}
    for k, stream in enumerate(streams):
        assert rank[k] == seen.get(stream, 0)
        seen[stream] = rank[k] + 1
