"""serve's start-up hides its objects from the cyclic collector, which still frees new cycles."""

from __future__ import annotations

import gc
import weakref

from streamcell.service import gc_pauses


def test_settle_freezes_what_exists_and_still_collects_later_cycles():
    before = gc.get_threshold()
    try:
        gc_pauses.settle()
        assert gc.get_freeze_count() > 1000  # modules, functions, the test session
        assert gc.get_threshold()[0] == gc_pauses.YOUNG_THRESHOLD

        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle made after start-up
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
