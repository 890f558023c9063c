"""The cold tier's store: batched snapshot bytes on disk, oldest first, a size bound, a lock."""

from __future__ import annotations

import numpy as np
import pytest

from streamcell.core.coldstore import (
    DB_NAME,
    FOUND_CORRUPT,
    FOUND_EMPTY,
    FOUND_OLD_LAYOUT,
    FOUND_PREVIOUS,
    LAYOUT_KEY,
    ColdStore,
    _record_bytes,
    age_keys,
)
from streamcell.core.errors import ColdTierError, ConfigError


@pytest.fixture
def cold(tmp_path):
    store = ColdStore(tmp_path / "state")
    yield store
    store.close()


def test_age_keys_sort_as_the_numbers_do():
    ages = np.array([-1e9, -2.5, -0.0, 0.0, 1e-12, 3.0, 1.7e9, 1e300])
    keys = age_keys(ages)
    assert keys == sorted(keys)
    shuffled = np.random.default_rng(0).permutation(ages)
    assert sorted(age_keys(shuffled)) == keys


def test_put_get_take_delete_in_batches(cold):
    block = b"".join(bytes([k]) * 8 for k in range(4))
    cold.put(["a", "b", "c", "d"], block, np.array([4.0, 1.0, 3.0, 2.0]), [0, 1, 0, 2], size=8)
    assert len(cold) == 4
    assert cold.get(["b", "zz", "d"]) == [b"\x01" * 8, None, b"\x03" * 8]
    values, tags = cold.take(["c", "nope"])
    assert values == [b"\x02" * 8, None] and tags == [0, -1]
    assert cold.contains(["a", "c"]).tolist() == [True, False]
    assert cold.delete(["a", "c"]) == [0, None]
    assert len(cold) == 2
    assert cold.streams_after("", 10) == ["b", "d"]


def test_a_replaced_value_keeps_one_record_and_moves_in_age(cold):
    cold.put(["a", "b"], [b"old-a", b"b"], np.array([1.0, 2.0]), [0, 0])
    before = cold.bytes
    cold.put(["a"], [b"new-a"], np.array([3.0]), [5])
    assert len(cold) == 2 and cold.bytes == before
    assert cold.get(["a"]) == [b"new-a"]
    gone = cold.older_than(2.0)  # "a" is now the youngest
    assert gone.streams == ["b"] and cold.streams_after("", 5) == ["a"]


def test_ttl_removes_an_age_prefix_oldest_first(cold):
    cold.put(list("abcde"), [b"x"] * 5, np.array([5.0, 1.0, 4.0, 2.0, 3.0]), [1, 2, 3, 4, 5])
    gone = cold.older_than(3.0)  # at or before
    assert gone.streams == ["b", "d", "e"] and gone.tags == [2, 4, 5]
    assert cold.streams_after("", 5) == ["a", "c"]


def test_the_size_bound_forgets_the_oldest(tmp_path):
    cold = ColdStore(tmp_path / "s")
    try:
        cold.put(["probe"], [b"v" * 100], np.array([0.0]), [0])
        one = cold.bytes
        cold.delete(["probe"])
        cold.max_bytes = 3 * one
        names = [f"s{k}" for k in range(5)]  # same-length ids: same record bytes
        gone = cold.put(names, [b"v" * 100] * 5, np.arange(5.0)[::-1].copy(), list(range(5)))
        # s4 has the smallest age (the oldest): it goes first
        assert gone.streams == ["s4", "s3"] and gone.tags == [4, 3]
        assert len(cold) == 3 and cold.bytes <= cold.max_bytes
    finally:
        cold.close()


def test_paging_and_dropping_by_tag(cold):
    names = [f"k{k:03d}" for k in range(50)]
    cold.put(names, [b"z"] * 50, np.arange(50.0), [k % 3 for k in range(50)])
    assert cold.streams_after("k010", 3) == ["k011", "k012", "k013"]
    dropped = cold.drop_tags({1})
    assert sorted(dropped) == [n for k, n in enumerate(names) if k % 3 == 1]
    assert len(cold) == 50 - len(dropped)
    assert cold.clear().streams and len(cold) == 0 and cold.bytes == 0


def test_dropping_a_tag_reads_only_that_tags_streams(cold):
    many, few = [f"m{k:04d}" for k in range(1000)], ["f1", "f2", "f3"]
    cold.put(many, [b"x"] * 1000, np.arange(1000.0), [0] * 1000)
    cold.put(few, [b"y"] * 3, np.array([5.5, 0.5, 2000.0]), [7] * 3)
    read = 0
    items = cold._items

    def counting(start):
        nonlocal read
        for item in items(start):
            read += 1
            yield item

    cold._items = counting
    assert sorted(cold.drop_tags({7})) == few
    assert read <= len(few) + 1  # the tag's streams and the first key past them
    assert len(cold) == 1000 and cold.get(few) == [None] * 3
    # the age index lost them too: the TTL finds exactly the 1000 left
    assert cold.older_than(1e9).streams == many and cold.bytes == 0


def test_streams_forgotten_or_moved_leave_no_tag_behind(cold):
    cold.put(["a", "b", "c"], [b"1", b"2", b"3"], np.array([1.0, 2.0, 3.0]), [1, 1, 2])
    assert cold.older_than(1.0).streams == ["a"]  # the TTL
    cold.put(["b"], [b"2'"], np.array([4.0]), [2])  # b now has tag 2
    values, tags = cold.take(["c"])  # a load
    assert values == [b"3"] and tags == [2]
    assert cold.drop_tags({1}) == []
    assert cold.drop_tags({2}) == ["b"] and len(cold) == 0 and cold.bytes == 0


def test_a_second_process_on_the_same_dir_gets_a_clear_error(cold, tmp_path):
    with pytest.raises(ConfigError, match=r"in use by another process.*own --state-dir"):
        ColdStore(tmp_path / "state")


def test_what_an_earlier_process_left_is_never_trusted(tmp_path):
    path = tmp_path / "state"
    first = ColdStore(path)
    assert first.found == FOUND_EMPTY
    first.put(["a"], [b"state"], np.array([1.0]), [0])
    first.close()
    again = ColdStore(path)
    try:
        assert again.found == FOUND_PREVIOUS
        assert len(again) == 0 and again.get(["a"]) == [None]
    finally:
        again.close()


def test_an_earlier_layout_is_detected_said_and_rebuilt(tmp_path, caplog):
    path = tmp_path / "state"
    first = ColdStore(path)
    first.put(["a"], [b"state"], np.array([1.0]), [0])
    first._db.delete(LAYOUT_KEY)  # as layout 1 left it: no marker, no partition index
    first.close()
    again = ColdStore(path)
    try:
        assert again.found == FOUND_OLD_LAYOUT
        assert "has another layout" in caplog.text and "rebuilt from the changelog" in caplog.text
        assert len(again) == 0 and again.get(["a"]) == [None]
    finally:
        again.close()
    third = ColdStore(path)
    third.close()
    assert third.found == FOUND_PREVIOUS  # what this version wrote is recognised


def test_a_store_of_layout_2_is_told_apart_and_rebuilt(tmp_path):
    path = tmp_path / "state"
    first = ColdStore(path)
    first.put(["a"], [b"state"], np.array([1.0]), [0])
    first._db.put(LAYOUT_KEY, b"streamcell cold tier layout 2")  # its third record per stream
    first._db.flush()
    first.close()
    again = ColdStore(path)
    try:
        assert again.found == FOUND_OLD_LAYOUT and again.get(["a"]) == [None]
    finally:
        again.close()


def test_a_corrupt_dir_is_detected_and_rebuilt(tmp_path):
    path = tmp_path / "state"
    ColdStore(path).close()
    for f in (path / DB_NAME).iterdir():
        if f.name.startswith(("MANIFEST", "CURRENT")):
            f.write_bytes(b"\x00garbage")
    cold = ColdStore(path)
    try:
        assert cold.found == FOUND_CORRUPT
        cold.put(["a"], [b"ok"], np.array([1.0]), [0])
        assert cold.get(["a"]) == [b"ok"]
    finally:
        cold.close()


def test_a_dir_deleted_while_in_use_is_detected(tmp_path):
    import shutil

    cold = ColdStore(tmp_path / "state")
    try:
        cold.check()
        shutil.rmtree(tmp_path / "state")
        with pytest.raises(ColdTierError, match="deleted or replaced"):
            cold.check()
    finally:
        cold.close()


def test_loads_and_reads_leave_the_block_cache_empty(cold):
    """A record read from the files is not cached (rocksdict's multi-get ignores a
    read_opt argument; the store's read options are the database's own)."""
    n, size = 2000, 1000
    rng = np.random.default_rng(7)
    block = bytes(rng.integers(0, 256, n * size, np.uint8))
    names = [f"r{k:04d}" for k in range(n)]
    cold.put(names, block, np.arange(float(n)), [0] * n, size=size, known_absent=True)
    cold.compact()  # in the files, none in the memtable
    usage = cold._db.property_int_value("rocksdb.block-cache-usage")
    assert cold.get(names[::3]) == [block[k * size : (k + 1) * size] for k in range(0, n, 3)]
    values, _, _ = cold.exchange(names[1::3], [], b"", np.empty(0), [], size)
    assert values == [block[k * size : (k + 1) * size] for k in range(1, n, 3)]
    # no data block of the ~2 MB read was kept (an index or filter block may be)
    assert cold._db.property_int_value("rocksdb.block-cache-usage") - usage < 64 << 10


def test_a_block_of_the_wrong_length_is_refused(cold):
    with pytest.raises(ValueError, match="a block of 10 bytes for 2 values of 8"):
        cold.put(["a", "b"], b"x" * 10, np.array([1.0, 2.0]), [0, 0], size=8)
    assert len(cold) == 0


def test_a_killed_process_leaves_its_layout_recognisable(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "state"
    code = (
        "import os, signal, sys\n"
        "from streamcell.core.coldstore import ColdStore\n"
        "ColdStore(sys.argv[1])\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], timeout=60)
    assert done.returncode == -9
    again = ColdStore(path)
    again.close()
    assert again.found == FOUND_PREVIOUS  # not taken for an earlier layout


def test_the_index_agrees_with_a_model_of_the_store(cold):
    """Puts, loads, deletes, TTL and partition drops at random over a few tags: what the
    store holds, and what its index gives back oldest first, equal a dict's answers."""
    rng = np.random.default_rng(5)
    model: dict[str, tuple[float, int, bytes]] = {}  # stream -> age, tag, value
    names = [f"s{k}" for k in range(60)]

    def oldest_first(streams):
        return sorted(streams, key=lambda s: model[s][0])

    for _ in range(200):
        op = rng.integers(5)
        some = [names[k] for k in rng.choice(len(names), 6, replace=False)]
        if op == 0:  # spills (a stream there is replaced)
            ages, tags = rng.random(6) * 100, rng.integers(-1, 4, 6).tolist()
            values = [bytes(rng.integers(0, 256, 9, np.uint8)) for _ in some]
            cold.put(some, values, ages, tags)
            model.update(zip(some, zip(ages.tolist(), tags, values, strict=True), strict=True))
        elif op == 1:  # loads
            values, tags = cold.take(some)
            want = [model.pop(s, None) for s in some]
            assert values == [None if w is None else w[2] for w in want]
            assert tags == [-1 if w is None else w[1] for w in want]
        elif op == 2:
            assert cold.delete(some) == [None if s not in model else model.pop(s)[1] for s in some]
        elif op == 3:  # the TTL
            cutoff = rng.random() * 40
            gone = oldest_first([s for s, (age, _, _) in model.items() if age <= cutoff])
            assert cold.older_than(cutoff).streams == gone
            for s in gone:
                del model[s]
        else:  # a partition let go
            tag = int(rng.integers(-1, 4))
            gone = sorted(cold.drop_tags({tag}))
            assert gone == sorted(s for s, (_, t, _) in model.items() if t == tag)
            for s in gone:
                del model[s]
        assert len(cold) == len(model)
        assert cold.get(names) == [model[s][2] if s in model else None for s in names]
    everything = oldest_first(model)
    assert cold.clear().streams == everything and len(cold) == 0 and cold.bytes == 0


# ------------------------------------------------------ spills written behind
SIZE = 16


def spill(cold, names, rng, taken=(), tags=None):
    """One micro-batch's exchange: ``taken`` loaded, ``names`` spilled with random bytes."""
    block = bytes(rng.integers(0, 256, SIZE * len(names), np.uint8))
    ages = rng.random(len(names)) * 100
    tags = [k % 3 for k in range(len(names))] if tags is None else tags
    values, found, gone = cold.exchange(list(taken), list(names), block, ages, tags, SIZE)
    pieces = [block[k * SIZE : (k + 1) * SIZE] for k in range(len(names))]
    return dict(zip(names, pieces, strict=True)), values, found, gone


def on_disk(cold, stream: str) -> bool:
    return cold._db.get(b"v" + stream.encode()) is not None


def one_record(cold) -> int:
    """The bytes one stream's records count for (ids of 3 characters, SIZE bytes)."""
    probe = ColdStore(cold.path.parent / "probe")
    try:
        probe.put(["abc"], [b"x" * SIZE], np.array([0.0]), [0])
        return probe.bytes
    finally:
        probe.close()


def counting_io(cold):
    """Count the keys read from disk and the writes, from now on."""
    io = {"read": 0, "writes": 0}
    get, write = cold._get, cold._write

    def counted_get(keys):
        io["read"] += len(keys)
        return get(keys)

    def counted_write(batch):
        io["writes"] += 1
        return write(batch)

    cold._get, cold._write = counted_get, counted_write
    return io


def test_a_load_of_a_pending_spill_is_its_bytes_without_a_read_or_a_write(tmp_path):
    cold = ColdStore(tmp_path / "state", pending_bytes=1 << 20)
    try:
        rng = np.random.default_rng(0)
        spilled, _, _, _ = spill(cold, ["s00", "s01", "s02"], rng, tags=[4, -1, 2])
        assert cold.pending == 3 and len(cold) == 3 and not on_disk(cold, "s00")
        io = counting_io(cold)
        _, values, tags, _ = spill(cold, [], rng, taken=["s02", "s00", "zzz"])
        assert values == [spilled["s02"], spilled["s00"], None] and tags == [2, 4, -1]
        assert all(type(v) is bytes for v in values[:2])  # as a read from disk gives them
        assert io == {"read": 1, "writes": 0}  # only "zzz" was looked for on disk
        assert len(cold) == 1 and cold.pending == 1
        assert cold.get(["s01", "s00"]) == [spilled["s01"], None]
        assert cold.contains(["s01", "s02"]).tolist() == [True, False]
    finally:
        cold.close()


def test_pending_spills_are_written_oldest_first_within_their_bound_in_bytes(tmp_path):
    cold = ColdStore(tmp_path / "state", pending_bytes=1)
    one = one_record(cold)
    cold.close()
    cold = ColdStore(tmp_path / "state", pending_bytes=3 * one)
    try:
        rng = np.random.default_rng(1)
        every, _, _, _ = spill(cold, ["a00", "a01"], rng)
        assert cold.pending == 2 and cold._pending_size == 2 * one
        io = counting_io(cold)
        later, values, _, _ = spill(cold, ["b00", "b01", "b02"], rng, taken=["a01"])
        every.update(later)
        # a01 came back from memory; a00, the oldest spill, made room for the batch's
        assert values == [every["a01"]] and io == {"read": 0, "writes": 1}
        assert [k.decode() for k in cold._pending] == ["b00", "b01", "b02"]
        assert cold._pending_size == 3 * one <= cold.pending_bytes
        assert on_disk(cold, "a00") and not on_disk(cold, "b00")
        # a load from disk: its deletion and the next oldest spill in one write
        _, values, _, _ = spill(cold, ["c00"], rng, taken=["a00"])
        assert values == [every["a00"]] and io == {"read": 1, "writes": 2}
        assert [k.decode() for k in cold._pending] == ["b01", "b02", "c00"]
        assert not on_disk(cold, "a00") and on_disk(cold, "b00") and not on_disk(cold, "b01")
        assert len(cold) == 4 and cold.bytes == 4 * one
        assert cold.get(["b00", "b02"]) == [every["b00"], every["b02"]]
    finally:
        cold.close()


def test_every_scan_of_the_disk_sees_the_pending_spills(tmp_path):
    cold = ColdStore(tmp_path / "state", pending_bytes=1 << 20)
    try:
        rng = np.random.default_rng(2)
        block = bytes(rng.integers(0, 256, 4 * SIZE, np.uint8))
        names = ["p00", "p01", "p02", "p03"]
        cold.exchange([], names, block, np.array([4.0, 1.0, 3.0, 2.0]), [0, 1, 0, 2], SIZE)
        assert cold.streams_after("", 10) == names and cold.pending == 0
        cold.exchange([], ["q00"], block[:SIZE], np.array([0.5]), [1], SIZE)
        assert cold.older_than(1.0).streams == ["q00", "p01"]  # oldest first, both tiers
        cold.exchange([], ["q01"], block[:SIZE], np.array([9.0]), [2], SIZE)
        assert sorted(cold.drop_tags({2})) == ["p03", "q01"]
        cold.exchange([], ["q02"], block[:SIZE], np.array([0.1]), [0], SIZE)
        assert cold.clear().streams == ["q02", "p02", "p00"]
        assert len(cold) == 0 and cold.bytes == 0 and cold.pending == 0
    finally:
        cold.close()


def test_the_size_bound_forgets_the_oldest_pending_or_written(tmp_path):
    cold = ColdStore(tmp_path / "state", pending_bytes=1)
    one = one_record(cold)
    cold.close()
    cold = ColdStore(tmp_path / "state", max_bytes=3 * one, pending_bytes=10 * one)
    try:
        rng = np.random.default_rng(3)
        block = bytes(rng.integers(0, 256, 2 * SIZE, np.uint8))
        cold.exchange([], ["w00", "w01"], block, np.array([5.0, 2.0]), [0, 1], SIZE)
        cold.flush()  # on disk
        _, _, gone = cold.exchange([], ["m00", "m01"], block, np.array([1.0, 6.0]), [2, 3], SIZE)
        assert gone.streams == ["m00"] and gone.tags == [2]  # the oldest, still pending
        assert len(cold) == 3 and cold.bytes == 3 * one and cold.pending == 0
        assert cold.streams_after("", 9) == ["m01", "w00", "w01"]
    finally:
        cold.close()


def test_a_put_or_delete_of_a_pending_spill_replaces_or_removes_it(tmp_path):
    cold = ColdStore(tmp_path / "state", pending_bytes=1 << 20)
    try:
        rng = np.random.default_rng(4)
        spilled, _, _, _ = spill(cold, ["d00", "d01"], rng, tags=[7, 8])
        before = cold.bytes
        cold.put(["d00"], [b"n" * SIZE], np.array([1.0]), [9])
        assert len(cold) == 2 and cold.bytes == before and cold.pending == 1
        assert cold.get(["d00", "d01"]) == [b"n" * SIZE, spilled["d01"]]
        assert cold.delete(["d01", "d00", "nope"]) == [8, 9, None]
        assert len(cold) == 0 and cold.bytes == 0 and cold.pending == 0
        assert cold.streams_after("", 9) == []
    finally:
        cold.close()


@pytest.mark.parametrize("pending", [0, 40, 400])
def test_exchanges_agree_with_a_model_of_the_store(tmp_path, pending):
    """Exchanges (loads and spills) mixed with puts, deletes, the TTL and partition
    drops, at random: what the store gives back equals a dict's answers, and its counts
    equal a store that writes every spill at once."""
    cold = ColdStore(tmp_path / "state", pending_bytes=pending * SIZE)
    twin = ColdStore(tmp_path / "twin", pending_bytes=0)
    rng = np.random.default_rng(6)
    model: dict[str, tuple[float, int, bytes]] = {}  # stream -> age, tag, value
    names = [f"s{k:02d}" for k in range(40)]
    try:
        for _ in range(300):
            op = rng.integers(6)
            some = [names[k] for k in rng.choice(len(names), 6, replace=False)]
            if op <= 1:  # a micro-batch: the absent ones of ``some`` spilled, the rest loaded
                out = [s for s in some if s not in model]
                taken = [s for s in some if s in model] + ["never"]
                ages, tags = rng.random(len(out)) * 100, rng.integers(-1, 4, len(out))
                block = bytes(rng.integers(0, 256, SIZE * len(out), np.uint8))
                want = [model.pop(s) for s in taken[:-1]]
                for store in (cold, twin):
                    values, found, gone = store.exchange(taken, out, block, ages, tags, SIZE)
                    assert values == [w[2] for w in want] + [None]
                    assert found == [w[1] for w in want] + [-1] and not gone.streams
                for k, s in enumerate(out):
                    model[s] = (float(ages[k]), int(tags[k]), block[k * SIZE : (k + 1) * SIZE])
            elif op == 2:  # a restore's put (a stream there is replaced)
                ages, tags = rng.random(6) * 100, rng.integers(-1, 4, 6).tolist()
                values = [bytes(rng.integers(0, 256, SIZE, np.uint8)) for _ in some]
                for store in (cold, twin):
                    store.put(some, values, ages, tags)
                model.update(zip(some, zip(ages.tolist(), tags, values, strict=True), strict=True))
            elif op == 3:
                want = [None if s not in model else model.pop(s)[1] for s in some]
                assert cold.delete(some) == want == twin.delete(some)
            elif op == 4:  # the TTL
                cutoff = rng.random() * 30
                gone = sorted(
                    (s for s, (age, _, _) in model.items() if age <= cutoff),
                    key=lambda s: model[s][0],
                )
                assert cold.older_than(cutoff).streams == gone == twin.older_than(cutoff).streams
                for s in gone:
                    del model[s]
            else:  # a partition let go
                tag = int(rng.integers(-1, 4))
                gone = sorted(s for s, (_, t, _) in model.items() if t == tag)
                assert sorted(cold.drop_tags({tag})) == gone == sorted(twin.drop_tags({tag}))
                for s in gone:
                    del model[s]
            assert len(cold) == len(model) == len(twin) and cold.bytes == twin.bytes
            assert cold._pending_size <= cold.pending_bytes
            assert cold._pending_size == sum(
                _record_bytes(len(k), len(r) - 12) for k, (r, _) in cold._pending.items()
            )
            assert cold.get(names) == [model[s][2] if s in model else None for s in names]
            assert cold.contains(names).tolist() == [s in model for s in names]
        assert cold.clear().streams == twin.clear().streams
    finally:
        cold.close()
        twin.close()
