"""The slab state store: gather/scatter, growth, LRU eviction, TTL expiry, snapshots."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamcell.core.errors import Overloaded, StateFormatError
from streamcell.core.state import StateStore


def store(**kw) -> StateStore:
    args = dict(initial_capacity=2, max_streams=8)
    args.update(kw)
    return StateStore(2, 4, 3, 5, **args)


def write(s: StateStore, streams: list[str], value: float, now: float = 0.0) -> np.ndarray:
    slots = s.slots(streams, now)
    h = torch.full((2, len(streams), 4), value)
    s.scatter(slots, h, -h)
    return slots


def test_new_streams_start_at_zero_and_scatter_gather_round_trip():
    s = store()
    slots = s.slots(["a", "b"], now=1.0)
    h, c = s.gather(slots)
    assert h.shape == (2, 2, 4) and not h.any() and not c.any()
    s.scatter(slots, torch.ones(2, 2, 4), torch.full((2, 2, 4), 2.0))
    h, c = s.gather(s.slots(["b", "a"], now=2.0))
    assert torch.equal(h, torch.ones(2, 2, 4)) and torch.equal(c, torch.full((2, 2, 4), 2.0))


def test_gather_returns_copies():
    s = store()
    slots = write(s, ["a"], 1.0)
    h, _ = s.gather(slots)
    h.fill_(9.0)
    assert torch.equal(s.gather(slots)[0], torch.ones(2, 1, 4))


def test_grows_by_doubling_up_to_the_limit_keeping_state():
    s = store(initial_capacity=2, max_streams=8)
    for k in range(8):
        write(s, [f"s{k}"], float(k))
    assert s.capacity == 8 and len(s) == 8
    for k in range(8):
        assert torch.equal(s.gather(s.slots([f"s{k}"], 0.0))[0], torch.full((2, 1, 4), float(k)))


def test_least_recently_used_are_evicted_at_capacity_and_counted():
    s = store(initial_capacity=4, max_streams=4)
    for k in range(4):
        write(s, [f"s{k}"], float(k), now=k)
    s.slots(["s0"], now=10)  # s0 is now the most recent; s1 the least
    write(s, ["new"], 7.0, now=11)
    assert "s1" not in s and "s0" in s and "new" in s
    assert s.evicted == 1 and len(s) == 4
    assert not s.gather(s.slots(["s1"], now=12))[0].any(), "a returning stream starts fresh"


def test_a_batch_never_evicts_its_own_streams():
    s = store(initial_capacity=3, max_streams=3)
    write(s, ["a", "b", "c"], 1.0)
    slots = s.slots(["a", "x", "b"], now=5.0)  # c must go, not a or b
    assert sorted(s.stream_ids()) == ["a", "b", "x"]
    assert len(set(slots.tolist())) == 3
    with pytest.raises(Overloaded, match="more than the store's capacity of 3"):
        s.slots(["p", "q", "r", "t"], now=6.0)


def test_repeated_ids_in_one_call_share_a_slot():
    s = store()
    slots = s.slots(["a", "a"], now=0.0)
    assert slots[0] == slots[1] and len(s) == 1


def test_idle_streams_expire_after_the_ttl():
    s = store(ttl_seconds=10.0)
    write(s, ["old"], 1.0, now=0.0)
    write(s, ["fresh"], 1.0, now=8.0)
    assert s.expire(now=9.0) == []
    assert s.expire(now=12.0) == ["old"]
    assert s.expired == 1 and "fresh" in s and "old" not in s


def test_last_seen_is_the_newest_event_time_a_late_event_does_not_age_a_stream():
    s = store(ttl_seconds=10.0)
    s.slots(["a", "b"], now=np.array([50.0, 40.0]))
    s.slots(["a"], now=20.0)  # a late event of "a"
    assert s.info("a").last_seen == 50.0 and s.info("b").last_seen == 40.0
    assert s.expire(now=55.0) == ["b"]


def test_expiry_follows_event_time_not_the_order_streams_were_touched_in():
    s = store(ttl_seconds=10.0)
    s.slots(["recent"], now=100.0)
    s.slots(["stale"], now=5.0)  # touched last, but its event is the oldest
    assert s.expire(now=100.0) == ["stale"]
    assert s.stream_ids() == ["recent"]


def test_delete_and_reset():
    s = store()
    slots = write(s, ["a", "b"], 3.0)
    s.partition[slots[0]], s.offset[slots[0]], s.seq[slots[0]] = 2, 40, 7
    assert s.reset("a") and s.info("a").events == 0
    info = s.info("a")
    assert (info.partition, info.offset, info.seq) == (2, 40, 7), "replays stay skipped"
    assert not s.gather(s.slots(["a"], 0.0))[0].any()
    assert s.delete("b") and "b" not in s
    assert not s.delete("b") and not s.reset("zzz")


def test_snapshot_restore_is_byte_exact():
    s = store()
    slots = s.slots(["a", "b"], now=3.5)
    s.scatter(slots, torch.randn(2, 2, 4), torch.randn(2, 2, 4))
    s.yhat[slots[0]] = torch.tensor([1.5, -2.0, 1e-30])
    s.events[slots] = [7, 9]
    s.partition[slots] = [0, 1]
    s.offset[slots] = [41, 42]
    s.seq[slots] = [6, -1]
    s.scale_sum[slots] = np.random.default_rng(0).random((2, 5))
    s.err_sum[slots] = [0.1, 0.2]
    s.err_count[slots] = [3, 4]
    snap = s.snapshot(["a", "b"])
    other = store()
    other.restore(zip(["a", "b"], snap, strict=True))
    assert other.snapshot(["a", "b"]) == snap
    assert other.info("a").offset == 41 and other.info("b").seq == -1
    assert other.info("a").last_seen == 3.5


def test_a_snapshot_block_is_whole_snapshots_back_to_back():
    """The changelog cuts records out of one block: each must be a complete snapshot."""
    s = store()
    slots = s.slots(["a", "b", "c"], now=1.0)
    s.scatter(slots, torch.randn(2, 3, 4), torch.randn(2, 3, 4))
    s.offset[slots] = [5, 6, 7]
    block = s.snapshot_block(["c", "a"])
    size = s.snapshot_size
    assert len(block) == 2 * size
    assert [block[:size], block[size:]] == s.snapshot(["c", "a"])
    fresh = store()
    fresh.restore([("c", block[:size]), ("a", block[size:])])
    assert fresh.info("c").h.equal(s.info("c").h) and fresh.info("a").offset == 5
    with pytest.raises(KeyError, match="zzz"):
        s.snapshot_block(["a", "zzz"])


def test_restore_refuses_foreign_or_broken_records_and_changes_nothing():
    s = store()
    write(s, ["a"], 1.0)
    good = s.snapshot(["a"])[0]
    target = store()
    write(target, ["keep"], 5.0)
    before = target.snapshot(["keep"])
    bad_cases = {
        "truncated": good[:10],
        "short": good[:-1],
        "magic": b"XXXX" + good[4:],
        "arch": _snapshot_of(StateStore(2, 8, 3, 5)),
    }
    for name, value in bad_cases.items():
        with pytest.raises(StateFormatError):
            target.restore([("a", good), ("b", value)])
        assert "a" not in target and "b" not in target, name
    assert target.snapshot(["keep"]) == before


def _snapshot_of(s: StateStore) -> bytes:
    s.slots(["z"], 0.0)
    return s.snapshot(["z"])[0]


def test_architecture_mismatch_message_names_both_shapes():
    other = _snapshot_of(StateStore(2, 8, 3, 5))
    with pytest.raises(StateFormatError, match=r"hidden=8 .* this store has .* hidden=4"):
        store().restore([("z", other)])


def test_restore_keeps_the_last_record_of_a_stream():
    s = store()
    write(s, ["a"], 1.0)
    first = s.snapshot(["a"])[0]
    write(s, ["a"], 2.0)
    second = s.snapshot(["a"])[0]
    target = store()
    assert target.restore([("a", first), ("a", second)]) == 1
    assert target.snapshot(["a"])[0] == second


def test_nbytes_counts_the_slabs():
    s = StateStore(2, 64, 8, 8, initial_capacity=1000, max_streams=1000)
    per_stream = 2 * 2 * 64 * 4 + 8 * 4  # h and c per layer, last prediction
    assert s.nbytes >= 1000 * per_stream
    assert s.nbytes < 1000 * (per_stream + 200)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdefghij"), st.floats(-5, 5)), max_size=60))
def test_eviction_keeps_the_most_recent_and_their_values(ops):
    """Against a reference model: a dict plus an LRU list."""
    s = store(initial_capacity=1, max_streams=4)
    ref: dict[str, float] = {}
    order: list[str] = []
    for now, (stream, value) in enumerate(ops):
        write(s, [stream], value, now=float(now))
        ref[stream] = value
        if stream in order:
            order.remove(stream)
        order.append(stream)
        while len(order) > 4:
            ref.pop(order.pop(0))
    assert sorted(s.stream_ids()) == sorted(ref)
    for stream, value in ref.items():
        slot = s.slot_of(stream)
        assert torch.all(s.h[:, slot] == value)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.lists(st.sampled_from("abcdefg"), min_size=1, max_size=4, unique=True),
            st.sampled_from("abcdefg").map(lambda s: ("delete", s)),
        ),
        max_size=40,
    )
)
def test_batches_evict_and_order_streams_as_one_lru_list(ops):
    """Batches of several streams and deletes, against a reference LRU list: the
    evicted (oldest first), the order of stream_ids and of least_recent."""
    s = store(initial_capacity=1, max_streams=4)
    order: list[str] = []
    for op in ops:
        if isinstance(op, tuple):
            assert s.delete(op[1]) == (op[1] in order)
            if op[1] in order:
                order.remove(op[1])
            continue
        held = [x for x in op if x in order]
        new = [x for x in op if x not in order]
        for x in held:
            order.remove(x)
        order += held
        evicted = [x for x in order if x not in op][: max(len(order) + len(new) - 4, 0)]
        order = [x for x in order if x not in evicted] + new
        s.slots(op, now=0.0)
        assert s.take_evicted() == evicted
        assert s.stream_ids() == order
        assert s.least_recent(2, sparing=order[:1]) == order[1:3]


# ------------------------------------------------------------- history (recipe)
def history_store(**kw) -> StateStore:
    args = dict(initial_capacity=2, max_streams=8, buffer_size=3)
    args.update(kw)
    return StateStore(2, 4, 3, 5, **args)


def test_a_store_without_history_writes_the_fields_it_always_wrote():
    """The changelog of existing models must not change: the sha256 of main's records."""
    s = store()
    slots = s.slots(["a", "b"], now=3.5)
    hc = torch.from_numpy(np.linspace(-3, 3, 32, dtype=np.float32).reshape(2, 2, 2, 4))
    s.scatter(slots, hc[0], hc[1])
    s.yhat[slots[0]] = torch.tensor([1.5, -2.0, 1e-30])
    s.events[slots] = [7, 9]
    s.partition[slots] = [0, 1]
    s.offset[slots] = [41, 42]
    s.seq[slots] = [6, -1]
    s.scale_sum[slots] = np.arange(10.0).reshape(2, 5) / 3
    s.err_sum[slots] = [0.1, 0.2]
    s.err_count[slots] = [3, 4]
    # Format 2 changed the header only: behind the format-1 header (12 bytes),
    # the fields are the bytes format 1 wrote.
    v1 = struct.pack("<4sHHHH", b"SCS1", 2, 4, 3, 5)
    records = s.snapshot(["a", "b"])
    digest = hashlib.sha256(b"".join(v1 + r[24:] for r in records)).hexdigest()
    assert digest == "37e2a6d018cdf6b5aa3be4496ec3e7da5a924ac44833c38a89e61da6ab9e4b30"
    assert records[0][:4] == b"SCS2"
    assert s.ring is None and s.scale is None and s.snapshot_size == 192


def test_history_is_snapshotted_restored_and_shown_oldest_first():
    s = history_store()
    slots = s.slots(["a", "b"], now=1.0)
    s.ring[slots] = [[1.0, 2.0, 3.0], [7.0, 8.0, 0.0]]
    s.events[slots] = [4, 2]  # a: values 0..3, value 3 overwrote slot 0; b: two values
    s.scale[slots] = [2.5, 7.5]
    assert s.snapshot_size == store().snapshot_size + 3 * 4 + 4
    snap = s.snapshot(["a", "b"])
    other = history_store(initial_capacity=1)
    other.restore(zip(["a", "b"], snap, strict=True))
    assert other.snapshot(["a", "b"]) == snap
    a, b = other.info("a"), other.info("b")
    assert (a.history, a.scale) == ((2.0, 3.0, 1.0), 2.5)
    assert (b.history, b.scale) == ((7.0, 8.0), 7.5)
    assert _info_of_plain().history == ()


def _info_of_plain():
    s = store()
    s.slots(["z"], 0.0)
    info = s.info("z")
    assert info is not None and info.scale is None
    return info


def test_history_grows_with_capacity_is_cleared_and_counted():
    s = history_store(initial_capacity=1, max_streams=8)
    for k in range(8):
        slot = s.slots([f"s{k}"], 0.0)
        s.ring[slot] = float(k)
        s.events[slot] = 1
        s.scale[slot] = float(k)
    assert s.capacity == 8 and s.ring.shape == (8, 3)
    assert [s.info(f"s{k}").history for k in range(8)] == [(float(k),) for k in range(8)]
    assert s.reset("s1") and s.info("s1").history == () and s.info("s1").scale is None
    assert not s.ring[s.slot_of("s1")].any() and s.scale[s.slot_of("s1")] == 0
    slot = s.slot_of("s2")
    assert s.delete("s2") and not s.ring[slot].any()
    assert history_store().nbytes - store().nbytes == 2 * (3 * 4 + 4)


def test_a_record_of_the_other_layout_is_refused_with_a_clear_message():
    plain, ringed = _snapshot_of(store()), _snapshot_of(history_store())
    other_ring = _snapshot_of(history_store(buffer_size=5))
    with pytest.raises(StateFormatError, match=r"history=0 \(no recipe\); this store has .*"
                       r"history=3 \(a recipe's ring of 3 values\)"):  # fmt: skip
        history_store().restore([("z", plain)])
    with pytest.raises(StateFormatError, match=r"history=3 .* this store has .* history=0"):
        store().restore([("z", ringed)])
    with pytest.raises(StateFormatError, match=r"history=5 .* this store has .* history=3"):
        history_store().restore([("z", other_ring)])
    with pytest.raises(StateFormatError, match="truncated"):
        history_store().restore([("z", ringed[:14])])
    with pytest.raises(StateFormatError, match="has 35 bytes"):
        history_store().restore([("z", ringed[:35])])


@pytest.mark.parametrize("kw", [{}, {"keep_gates": True}, {"buffer_size": 3}])
def test_records_that_take_the_slots_of_leaving_streams_equal_a_remove_then_restore(kw):
    """A load swapped for a spill: the slots are reused without clearing them first."""
    source = store(**kw)
    write(source, ["x", "y"], 0.0, now=9.0)
    source.events[source.slots(["x", "y"], 9.0)] = [3, 4]
    items = list(zip(["x", "y"], source.snapshot(["x", "y"]), strict=True))
    stores = []
    for swap in (False, True):
        s = store(max_streams=4, **kw)
        slots = write(s, ["a", "b", "c", "d"], 5.0, now=1.0)
        s.events[slots] = [1, 2, 3, 4]
        s.offset[slots] = [10, 11, 12, 13]
        if s.gates is not None:
            s.gates.fill_(7.0)
        if s.ring is not None:
            s.ring[slots] = 2.5
        if swap:
            s.restore(items, replacing=["b", "d"])
        else:
            s.remove(["b", "d"])
            s.restore(items)
        stores.append(s)
    removed, swapped = stores
    assert swapped.stream_ids() == removed.stream_ids() == ["a", "c", "x", "y"]
    assert swapped.snapshot(["a", "c", "x", "y"]) == removed.snapshot(["a", "c", "x", "y"])
    assert swapped.snapshot(["x", "y"]) == [v for _, v in items]
    if swapped.gates is not None:  # a loaded stream's gates read zero, as after a remove
        slots = swapped.slots(["x", "y"], 9.0)
        assert not swapped.gates[slots].any() and not removed.gates[slots].any()


def test_records_cannot_take_the_slots_of_streams_already_in_the_store():
    s = store(max_streams=4)
    write(s, ["a", "b"], 1.0)
    before = s.snapshot(["a", "b"])
    record = s.snapshot(["a"])[0]
    with pytest.raises(ValueError, match="in the store already"):
        s.restore([("a", record)], replacing=["b"])
    with pytest.raises(ValueError, match="2 streams to replace by 1 records"):
        s.restore([("z", record)], replacing=["a", "b"])
    assert s.stream_ids() == ["a", "b"] and s.snapshot(["a", "b"]) == before


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.lists(st.integers(0, 29), min_size=1, max_size=6, unique=True),
            st.tuples(st.just("remove"), st.lists(st.integers(0, 29), max_size=3, unique=True)),
            st.tuples(st.just("oldest"), st.integers(1, 20), st.integers(0, 29)),
        ),
        max_size=80,
    )
)
def test_the_oldest_streams_kept_between_calls_are_the_lru_order(ops):
    """The prefix of the LRU order kept between calls (shorter than the store, so it
    runs out and is found again) answers as a fresh sort of every slot would."""
    import streamcell.core.state as state_module

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(state_module, "LRU_PREFIX", 5)
        _lru_against_a_list(ops)


def _lru_against_a_list(ops) -> None:
    s = store(initial_capacity=4, max_streams=16)
    order: list[str] = []
    for op in ops:
        if isinstance(op, list):
            names = [f"s{k}" for k in op]
            held = [x for x in names if x in order]
            new = [x for x in names if x not in order]
            order = [x for x in order if x not in held] + held
            evicted = [x for x in order if x not in names][: max(len(order) + len(new) - 16, 0)]
            order = [x for x in order if x not in evicted] + new
            s.slots(names, now=0.0)
            assert s.take_evicted() == evicted
        elif op[0] == "remove":
            gone = [f"s{k}" for k in op[1] if f"s{k}" in order]
            s.remove(gone)
            order = [x for x in order if x not in gone]
        else:
            _, n, spare = op
            spared = [f"s{spare}"]
            assert s.least_recent(n, sparing=spared) == [x for x in order if x not in spared][:n]


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"keep_gates": True, "buffer_size": 3},
        {"quantile_levels": (0.1, 0.5, 0.9), "adaptive": True},
    ],
)
def test_host_memory_copies_equal_the_device_path(kw):
    """In host memory, snapshots and restores copy rows with numpy; the same stores
    through the torch path (any other device) give the same bytes and state."""
    rng = np.random.default_rng(9)
    stores = []
    for torch_path in (False, True):
        s = store(max_streams=6, **kw)
        if torch_path:
            s._rows = None  # as on a device: index_select and index_copy_
        slots = s.slots(["a", "b", "c", "d", "e"], 2.0)
        s.h.copy_(torch.from_numpy(rng.standard_normal(s.h.shape).astype(np.float32)))
        s.c.copy_(torch.from_numpy(rng.standard_normal(s.c.shape).astype(np.float32)))
        s.yhat.copy_(torch.from_numpy(rng.standard_normal(s.yhat.shape).astype(np.float32)))
        if s.quantiles is not None:
            q = rng.standard_normal(s.quantiles.shape).astype(np.float32)
            s.quantiles.copy_(torch.from_numpy(q))
        if s.gates is not None:
            s.gates.fill_(3.0)
        s.events[slots] = [5, 6, 7, 8, 9]
        rng = np.random.default_rng(9)  # the same values in both stores
        stores.append(s)
    blocks = [bytes(s.snapshot_block(["d", "a", "e"])) for s in stores]
    assert blocks[0] == blocks[1]
    size = stores[0].snapshot_size
    items = [("x", blocks[0][:size]), ("y", blocks[0][2 * size :])]
    for s in stores:
        s.restore(items, replacing=["b"])  # x takes b's slot, y a free one
    assert stores[0].stream_ids() == stores[1].stream_ids()
    names = ["a", "c", "d", "e", "x", "y"]
    assert bytes(stores[0].snapshot_block(names)) == bytes(stores[1].snapshot_block(names))
    assert stores[0].snapshot(["x", "y"]) == [v for _, v in items]
    for name in ("h", "c", "yhat", "gates", "quantiles"):
        ours, theirs = getattr(stores[0], name), getattr(stores[1], name)
        assert (ours is None) == (theirs is None)
        if ours is not None:
            assert torch.equal(ours, theirs)
    if stores[0].gates is not None:  # a restored stream's gates read zero
        assert not stores[0].gates[stores[0].slots(["x", "y"], 3.0)].any()


def test_the_kept_oldest_checked_from_the_front_answer_as_the_lru_order():
    """A kept prefix far longer than the calls ask for: its front is checked first,
    the rest only when the front has too few; and spared streams among the oldest
    make least_recent look further. Against an LRU list, at random."""
    import streamcell.core.state as state_module

    rng = np.random.default_rng(12)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(state_module, "LRU_PREFIX", 300)
        s = store(initial_capacity=400, max_streams=400)
        order = [f"s{k}" for k in range(400)]
        s.slots(order, now=0.0)
        for _ in range(600):
            op = rng.integers(4)
            if op == 0:  # used: to the newest end (some of them among the oldest)
                pool = order[:150] if rng.random() < 0.5 else order  # the window, all of it
                names = list(dict.fromkeys(rng.choice(pool, int(rng.integers(1, 150)))))
                s.slots(names, now=0.0)
                order = [x for x in order if x not in names] + names
            elif op == 1:  # removed, then new ones in their slots (newest)
                gone = list(dict.fromkeys(rng.choice(order[:60], int(rng.integers(1, 5)))))
                s.remove(gone)
                new = [f"n{rng.integers(1 << 30)}" for _ in gone]
                s.slots(new, now=0.0)
                order = [x for x in order if x not in gone] + new
            else:
                n = int(rng.integers(1, 8))
                k = int(rng.integers(0, 3 * n + 40))  # up to all of the front spared
                spared = set(order[:k]) | {"not-there"}
                want = [x for x in order if x not in spared][:n]
                assert s.least_recent(n, sparing=spared) == want
                assert s._by_use(n) == order[:n]
