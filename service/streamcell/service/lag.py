"""Consumer lag: how far each assigned input partition's position is behind its end."""

from __future__ import annotations

import logging

from streamcell.service.kafka import Consumer
from streamcell.service.metrics import Metrics

log = logging.getLogger(__name__)


def record_lag(
    consumer: Consumer,
    metrics: Metrics,
    topic: str,
    assigned: set[int],
    positions: dict[int, int],
) -> None:
    """Set ``consumer_lag`` per assigned partition: end offset minus the next offset to read."""
    if not assigned:
        return
    tps = [(topic, p) for p in sorted(assigned)]
    try:
        ends = consumer.end_offsets(tps)
    except Exception as exc:  # lag is best effort; never stop the loop for it
        log.debug("end offsets unavailable: %s", exc)
        return
    for tp in tps:
        pos = positions.get(tp[1])
        if pos is not None and tp in ends:
            metrics.consumer_lag.labels(topic, str(tp[1])).set(max(ends[tp] - pos, 0))
