"""A busy loop's poll: it returns once it holds ``--min-batch`` records, not at the end of its wait.

librdkafka's ``consume()`` returns when it holds every record asked for or
when its timeout ends, so at half of serve's capacity a 1,024-record poll
always waited its whole ``--max-batch-delay-ms``, and every event waited
with it. The wait is there to keep polls large enough (serve's cost per
event grows in small polls), not to fill them: :func:`poll` asks in short
slices and stops once it holds ``min_records``, when the delay is over, or
when it is full.

Rebalance callbacks fire inside a poll. When one moves a partition between
two slices (its generation changes, or it is gone), the records already read
from partitions not held in the same generation are dropped, as carried
records are (their next owner reads them again from the committed offset),
and the poll stops, so that the loop restores what was just assigned before
it processes anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from streamcell.service.kafka import Consumer, Record

SLICE_S = 0.002  # one consume() call's wait: the most a poll waits past min_records


def poll(
    consumer: Consumer,
    room: int,
    min_records: int,
    delay_s: float,
    generations: dict[int, int],
    clock: Callable[[], float] = time.monotonic,
) -> list[Record]:
    """Up to ``room`` records, waiting at most ``delay_s`` for ``min_records`` of them.

    ``generations``: partition -> the group generation it is held in (the
    loop's own, which the callbacks update).
    """
    if min_records >= room:  # nothing to stop early for: one wait, as before
        return consumer.poll(room, max(delay_s, 0.001))
    deadline = clock() + delay_s
    before = dict(generations)
    records = consumer.poll(room, min(SLICE_S, max(delay_s, 0.001)))
    while len(records) < min_records:
        left = deadline - clock()
        if left <= 0:
            break
        more = consumer.poll(room - len(records), min(SLICE_S, left))
        if generations != before:  # a rebalance in that poll: keep only what is still held
            kept = [r for r in records if generations.get(r.partition) == before.get(r.partition)]
            return kept + more
        records = records + more
    return records
