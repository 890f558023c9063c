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
