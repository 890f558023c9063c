"""Keep Python's cyclic garbage collector out of the latency tail.

Measured on ``bench/kafka_e2e.py --latency`` at 32,000 events/s: the
collector's full (generation 2) passes took 80-93 ms each, every few seconds.
Each pass walked the hundreds of thousands of objects that importing torch,
numpy, grpc and the Kafka client leaves behind. Each pause held every event
queued behind it, which made the p99 of event-to-prediction latency. The hot
path frees its garbage by reference counting: per-event objects form no
cycles. So the collector has little to find, and its cost is the scan.
"""

from __future__ import annotations

import gc

# Collections of the youngest generation per this many new container
# objects (Python's default is 700). One poll of 1,024 JSON events allocates
# several thousand such objects (a dict per event, tuples, records) and
# frees them within the poll. At 700 the collector runs several times per
# poll and promotes the poll's live objects to older generations, where they
# die later and feed the full passes. At 50,000 it runs every few polls.
YOUNG_THRESHOLD = 50_000


def settle() -> None:
    """Once start-up is done: move what exists now out of the collector's sight.

    ``gc.freeze()`` puts every object alive now (modules, the model, the
    servers) into a permanent generation that collections never scan. Later
    objects (streams' bookkeeping, batches) are still collected as usual, so
    a cycle created after start-up is still freed.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
