"""Two tiers: a stream's state and predictions never depend on where it was (hot or cold)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from streamcell.core.checkpoint import ModelConfig, load_checkpoint, save_checkpoint
from streamcell.core.coldstore import PENDING_BYTES, ColdStore
from streamcell.core.errors import StreamNotFound
from streamcell.core.events import EventBatch
from streamcell.core.model import StreamingLSTM
from streamcell.core.predictor import PREDICTED, Predictor

F = 3
LAGS = {"target": 0, "lags": [1, 3], "scale_window": 4, "log_scale": True, "periods": [4]}


def plain_model(tmp_path: Path, hidden: int = 8, layers: int = 2):
    torch.manual_seed(0)
    names = ["a", "b", "c"]
    cfg = ModelConfig(
        F, hidden, layers, F, names, names,
        [0.5, 0.0, 1.0], [2.0, 1.0, 1.0], [0.5, 0.0, 1.0], [2.0, 1.0, 1.0],
        scaling="stream_mean_abs",
    )  # fmt: skip
    model = StreamingLSTM(F, hidden, layers, F)
    return load_checkpoint(save_checkpoint(tmp_path / "reg", "m", model, cfg))


def lag_model(tmp_path: Path):
    from recipe_support import make_recipe_model

    return load_checkpoint(make_recipe_model(tmp_path / "reg", LAGS, hidden=8))


def quantile_model(tmp_path: Path):
    from quantile_support import make_quantile_model

    return load_checkpoint(make_quantile_model(tmp_path / "reg", hidden=8))


MODELS = pytest.mark.parametrize(
    "make", [plain_model, lag_model, quantile_model], ids=["plain", "lag", "quantiles"]
)


# Spills written at once, a few at a time behind, and all held (the default bound).
@pytest.fixture(params=[0, 4096, PENDING_BYTES], ids=["write-through", "behind", "held"])
def cold(tmp_path, request):
    store = ColdStore(tmp_path / "state", pending_bytes=request.param)
    yield store
    store.close()


def batches(streams: int, count: int, size: int, seed: int = 3):
    """Random batches over ``streams`` ids, a stream repeated within a batch at times."""
    rng = np.random.default_rng(seed)
    offsets = np.zeros(streams, dtype=np.int64)
    for b in range(count):
        ids = rng.integers(0, streams, size)
        x = rng.normal(size=(size, F)).round(3).astype(np.float32) * 3
        off = []
        for k in ids:
            off.append(offsets[k])
            offsets[k] += 1
        yield EventBatch.of(
            [f"s{k:03d}" for k in ids], x, partition=ids % 2, offset=off,
            time=np.full(size, 1000.0 + b),
        )  # fmt: skip


def all_state(predictor: Predictor, streams: list[str]) -> bytes:
    return bytes(predictor.snapshots.snapshot_block(streams))


@MODELS
def test_predictions_and_state_equal_an_unlimited_store(tmp_path, cold, make):
    loaded = make(tmp_path)
    tiered = Predictor(loaded, max_streams=5, initial_capacity=2, cold=cold, clock=lambda: 5e9)
    unlimited = Predictor(loaded, clock=lambda: 5e9)
    for batch in batches(40, 30, 12):
        got, want = tiered.predict(batch), unlimited.predict(batch)
        assert np.array_equal(got.outcome, want.outcome)
        assert got.yhat.tobytes() == want.yhat.tobytes()
        if want.quantiles is not None:
            assert got.quantiles.tobytes() == want.quantiles.tobytes()
        assert not got.evicted and len(tiered.store) <= 5
    ids = sorted(unlimited.store.stream_ids())
    assert tiered.stream_count() == len(ids) and len(tiered.store) == 5
    assert all_state(tiered, ids) == all_state(unlimited, ids)
    counts = tiered.tiers.counts
    assert counts.spills > 0 and counts.loads > 0 and counts.new == len(ids)
    for stream in ids:  # GetStream and Forecast, hot or cold, read the same state
        a, b = tiered.info(stream), unlimited.info(stream)
        assert (a.events, a.offset, a.history, a.last_prediction) == (
            b.events, b.offset, b.history, b.last_prediction,
        )  # fmt: skip
        assert torch.equal(a.h, b.h) and torch.equal(a.c, b.c)
        # A quantile head's last quantiles and interval counts ride in the snapshot.
        assert (a.last_quantiles, a.inside, a.scored) == (b.last_quantiles, b.inside, b.scored)
    if loaded.config.autoregressive:
        cold_one = next(s for s in ids if s not in tiered.store)
        assert np.array_equal(tiered.forecast(cold_one, 5), unlimited.forecast(cold_one, 5))
        assert cold_one not in tiered.store  # reading does not make it hot


def test_a_batch_larger_than_the_hot_tier_is_applied_in_parts(tmp_path, cold):
    loaded = plain_model(tmp_path)
    tiered = Predictor(loaded, max_streams=3, cold=cold, clock=lambda: 5e9)
    unlimited = Predictor(loaded, clock=lambda: 5e9)
    for batch in batches(10, 4, 25, seed=9):
        assert tiered.predict(batch).yhat.tobytes() == unlimited.predict(batch).yhat.tobytes()
    ids = sorted(unlimited.store.stream_ids())
    assert all_state(tiered, ids) == all_state(unlimited, ids)


def test_spilling_writes_no_tombstone_and_checkpoints_read_the_cold_tier(tmp_path, cold):
    tiered = Predictor(plain_model(tmp_path), max_streams=2, cold=cold, clock=lambda: 5e9)
    tiered.track_changes(lambda stream, known: 0 if known is None else known)
    for batch in batches(6, 5, 4):
        tiered.predict(batch)
    changed = tiered.take_changes()
    assert len(changed) == 6
    present = tiered.snapshots.contains(list(changed))
    assert present.all(), "a spilled stream would have become a tombstone"
    assert changed == {f"s{k:03d}": k % 2 for k in range(6) if f"s{k:03d}" in changed}


def test_admin_calls_reach_cold_streams(tmp_path, cold):
    tiered = Predictor(plain_model(tmp_path), max_streams=2, cold=cold, clock=lambda: 5e9)
    tiered.track_changes(lambda stream, known: known if known is not None else 1)
    for batch in batches(8, 6, 4):
        tiered.predict(batch)
    tiered.take_changes()
    everything = tiered.list_streams(limit=100)
    assert everything == sorted(everything) and len(everything) == 8
    assert tiered.list_streams(after=everything[2], limit=3) == everything[3:6]
    cold_ids = [s for s in everything if s not in tiered.store]
    reset, deleted = cold_ids[0], cold_ids[1]
    tiered.reset(reset)
    info = tiered.info(reset)
    assert info.events == 0 and info.offset >= 0 and not info.h.any()
    tiered.delete(deleted)
    with pytest.raises(StreamNotFound):
        tiered.info(deleted)
    with pytest.raises(StreamNotFound):
        tiered.delete(deleted)
    changes = tiered.take_changes()
    assert set(changes) == {reset, deleted}
    present = tiered.snapshots.contains([reset, deleted]).tolist()
    assert present == [True, False]  # a snapshot and a tombstone
    assert tiered.stream_count() == 7


def test_restore_fills_hot_then_cold_and_continues_exactly(tmp_path, cold):
    loaded = plain_model(tmp_path)
    before = Predictor(loaded, clock=lambda: 5e9)
    stream_batches = list(batches(12, 10, 6))
    for batch in stream_batches[:6]:
        before.predict(batch)
    ids = before.store.stream_ids()  # least recently used first, as a changelog holds them
    records = list(zip(ids, before.store.snapshot(ids), strict=True))
    restored = Predictor(loaded, max_streams=4, cold=cold, clock=lambda: 5e9)
    done = restored.restore(records, {s: int(s[1:]) % 2 for s in ids})
    assert done.cold == len(ids) - 4 and sorted(done.streams) == sorted(ids)
    assert sorted(restored.store.stream_ids()) == sorted(ids[-4:])  # the most recent are hot
    for batch in stream_batches[6:]:
        assert restored.predict(batch).yhat.tobytes() == before.predict(batch).yhat.tobytes()
    every = sorted(before.store.stream_ids())
    assert all_state(restored, every) == all_state(before, every)


def test_ttl_expires_cold_streams_with_tombstones(tmp_path, cold):
    p = Predictor(
        plain_model(tmp_path), max_streams=2, ttl_seconds=10, cold=cold, clock=lambda: 5e9
    )
    p.track_changes(lambda stream, known: 0)
    x = np.zeros((1, F), np.float32)
    for k, t in enumerate([100.0, 105.0, 200.0, 201.0]):  # s0 and s1 spill, then idle
        p.predict(EventBatch.of([f"s{k}"], x, time=[t]))
    p.take_changes()
    gone = p.expire()
    assert sorted(gone) == ["s0", "s1"] and p.stream_count() == 2
    assert p.tiers.counts.expired == 2
    changes = p.take_changes()
    assert set(changes) == {"s0", "s1"}
    assert not p.snapshots.contains(["s0", "s1"]).any()  # tombstones


def test_the_size_bound_forgets_oldest_with_tombstones(tmp_path):
    cold = ColdStore(tmp_path / "state", max_bytes=1)
    try:
        p = Predictor(plain_model(tmp_path), max_streams=1, cold=cold, clock=lambda: 5e9)
        p.track_changes(lambda stream, known: 0)
        x = np.zeros((1, F), np.float32)
        for k in range(3):
            out = p.predict(EventBatch.of([f"s{k}"], x, time=[100.0 + k]))
            assert out.outcome[0] == PREDICTED
        assert p.tiers.counts.forgotten == 2 and p.stream_count() == 1
        changes = p.take_changes()
        assert p.snapshots.contains(list(changes)).tolist() == [False, False, True]
    finally:
        cold.close()


def test_a_partition_let_go_leaves_both_tiers_without_tombstones(tmp_path, cold):
    p = Predictor(plain_model(tmp_path), max_streams=2, cold=cold, clock=lambda: 5e9)
    p.track_changes(lambda stream, known: known)
    for batch in batches(8, 6, 4):
        p.predict(batch)
    p.take_changes()
    gone = p.drop_partitions({1})
    assert sorted(gone) == [f"s{k:03d}" for k in range(1, 8, 2)]
    assert all(int(s[1:]) % 2 == 0 for s in p.list_streams(limit=100))
    assert not p.take_changes()


def test_a_model_of_another_architecture_clears_the_cold_tier(tmp_path, cold):
    p = Predictor(plain_model(tmp_path), max_streams=2, cold=cold, clock=lambda: 5e9)
    p.track_changes(lambda stream, known: known)
    for batch in batches(6, 4, 4):
        p.predict(batch)
    p.take_changes()
    held = p.list_streams(limit=100)
    assert len(cold) > 0
    assert not p.swap(plain_model(tmp_path / "other", hidden=4))
    assert p.stream_count() == 0 and len(cold) == 0
    assert sorted(p.take_changes()) == held  # every stream's record becomes a tombstone


def test_a_restore_keeps_the_last_record_of_a_stream(tmp_path, cold):
    loaded = plain_model(tmp_path)
    source = Predictor(loaded, clock=lambda: 5e9)
    for batch in batches(6, 3, 4):
        source.predict(batch)
    ids = source.store.stream_ids()
    old = list(zip(ids, source.store.snapshot(ids), strict=True))
    for batch in batches(6, 2, 6, seed=5):
        source.predict(batch)
    new = list(zip(ids, source.store.snapshot(ids), strict=True))
    restored = Predictor(loaded, max_streams=2, cold=cold, clock=lambda: 5e9)
    done = restored.restore(old + new, {s: 0 for s in ids})
    assert sorted(done.streams) == sorted(ids) and len(cold) == len(ids) - 2
    assert all_state(restored, ids) == all_state(source, ids)


def test_a_tail_of_streams_seen_once_spills_before_the_hot_set(tmp_path, cold):
    p = Predictor(plain_model(tmp_path), max_streams=4, cold=cold, clock=lambda: 5e9)
    x = np.zeros((2, F), np.float32)
    p.predict(EventBatch.of(["h0", "h1"], x))
    p.predict(EventBatch.of(["h0", "h1"], x))  # seen again: out of probation
    for k in range(0, 12, 2):  # a tail, each stream once; LRU would spill h0 and h1 first
        p.predict(EventBatch.of([f"t{k}", f"t{k + 1}"], x))
        assert {"h0", "h1"} <= set(p.store.stream_ids()) and len(p.store) <= 4
    assert p.predict(EventBatch.of(["t0", "h0"], x)).events.tolist() == [2, 3]  # t0 loaded
    # Room for four: t0 made room by spilling the oldest stream on probation, t10, not h1
    assert sorted(p.store.stream_ids()) == ["h0", "h1", "t0", "t11"]
    assert p.tiers.counts.loads == 1 and p.tiers.counts.spills == 11  # 10 by the tail, 1 for t0


def test_a_stream_back_soon_after_its_spill_from_probation_is_kept(tmp_path, cold):
    p = Predictor(plain_model(tmp_path), max_streams=4, cold=cold, clock=lambda: 5e9)
    x = np.zeros((2, F), np.float32)
    for names in (["h0", "h1"], ["h0", "h1"], ["t0", "t1"], ["t2", "t3"]):  # t0, t1 spill
        p.predict(EventBatch.of(names, x))
    p.predict(EventBatch.of(["t0"], x[:1]))  # back while remembered: seen twice, kept
    p.predict(EventBatch.of(["t4", "t5"], x))  # room: t3 from probation, then the LRU h0
    assert sorted(p.store.stream_ids()) == ["h1", "t0", "t4", "t5"]


def test_a_stream_back_after_its_spill_by_the_lru_is_kept(tmp_path, cold):
    p = Predictor(plain_model(tmp_path), max_streams=4, cold=cold, clock=lambda: 5e9)
    x = np.zeros((2, F), np.float32)
    for names in (["h0", "h1"], ["h0", "h1"], ["h2", "h3"], ["h2", "h3"]):  # all seen twice
        p.predict(EventBatch.of(names, x))
    p.predict(EventBatch.of(["t0"], x[:1]))  # nothing on probation: the LRU spills h0
    p.predict(EventBatch.of(["h0"], x[:1]))  # back: t0 spills; h0 was seen twice, kept
    p.predict(EventBatch.of(["t1", "t2"], x))  # room from the LRU: h1, h2, not h0
    assert sorted(p.store.stream_ids()) == ["h0", "h3", "t1", "t2"]
    assert p.tiers.counts.loads == 1


def test_probation_keeps_its_order_when_its_table_is_built_anew(tmp_path, cold):
    from streamcell.core.tiers import PROBATION_REBUILD_AT

    n = PROBATION_REBUILD_AT + 4
    p = Predictor(plain_model(tmp_path), max_streams=n, cold=cold, clock=lambda: 5e9)
    names = [f"n{k:05d}" for k in range(n)]
    p.predict(EventBatch.of(names, np.zeros((n, F), np.float32)))  # all on probation
    again = names[: n - 3]  # seen again: off probation, which then holds 3 of n (rebuilt)
    p.predict(EventBatch.of(again, np.zeros((len(again), F), np.float32)))
    assert list(p.tiers._probation) == names[n - 3 :] and p.tiers._probation_peak == 3
    p.predict(EventBatch.of(["t0", "t1"], np.zeros((2, F), np.float32)))
    # room: the two oldest on probation spill, in order, none of the streams seen twice
    assert cold.streams_after("", 5) == names[n - 3 : n - 1]


@pytest.mark.parametrize("held", [3, 40])
def test_streams_seen_again_leave_probation_in_order_whichever_side_is_looked_up(
    tmp_path, cold, held
):
    """Probation smaller than the batch is looked up in the batch, larger the batch in
    it: either way the batch's streams leave, and the rest keep their order."""
    from collections import OrderedDict

    p = Predictor(plain_model(tmp_path), max_streams=64, cold=cold, clock=lambda: 5e9)
    on = [f"p{k:02d}" for k in range(held)]
    p.tiers._probation = OrderedDict.fromkeys(on)
    batch = [*on[::2], *(f"q{k}" for k in range(10))]  # 10 not on probation
    p.tiers._seen_again(batch)
    assert list(p.tiers._probation) == on[1::2]
    p.tiers._probation = OrderedDict.fromkeys(on)
    p.tiers._seen_again(batch, set(batch))
    assert list(p.tiers._probation) == on[1::2]
