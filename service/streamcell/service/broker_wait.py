"""Waiting at start-up for Kafka brokers that are not up yet, with capped backoff.

A replica that starts before its brokers (a cluster starting at once, a
broker being replaced) waits for them, as a Kafka Streams application does,
instead of exiting into a restart loop; ``--broker-wait-s`` bounds the wait,
after which the error is the one a replica gives at once with 0.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from streamcell.core.errors import BrokerUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_BACKOFF_S = 0.5
BACKOFF_CAP_S = 5.0  # plus an attempt's own connect timeout: a broker that came up is found soon
LOG_EVERY_S = 30.0
MIN_ATTEMPT_S = 1.0  # the shortest connect timeout an attempt is given near the deadline


def until_reachable(
    attempt: Callable[[float], T],
    servers: str,
    connect_timeout_s: float,
    wait_s: float,
    stop: threading.Event,
    clock: Callable[[], float] = time.monotonic,
) -> T | None:
    """``attempt(connect_timeout_s)`` until it does not raise BrokerUnavailable.

    Retries for up to ``wait_s`` seconds (0: one attempt), sleeping 0.5 s,
    1 s, 2 s ... up to :data:`BACKOFF_CAP_S` between attempts; an attempt near
    the deadline gets a shorter connect timeout so the bound holds. Returns
    None if ``stop`` is set while waiting; raises the last BrokerUnavailable,
    saying how long it waited, once the wait is spent.
    """
    start = clock()
    deadline = start + wait_s
    backoff = FIRST_BACKOFF_S
    last_log: float | None = None
    while True:
        timeout = connect_timeout_s
        if wait_s > 0:
            timeout = min(connect_timeout_s, max(deadline - clock(), MIN_ATTEMPT_S))
        try:
            result = attempt(timeout)
        except BrokerUnavailable as exc:
            now = clock()
            if wait_s <= 0:
                raise
            if now + backoff >= deadline:
                raise BrokerUnavailable(
                    f"{exc} (waited {now - start:.0f} s for it: --broker-wait-s {wait_s:g})"
                ) from exc
            if last_log is None or now - last_log >= LOG_EVERY_S:
                log.warning(
                    "%s; waiting for the brokers (retrying with backoff up to %g s, for %.0f s "
                    "more: --broker-wait-s); gRPC health is NOT_SERVING meanwhile",
                    exc,
                    BACKOFF_CAP_S,
                    deadline - now,
                )
                last_log = now
            if stop.wait(backoff):
                return None
            backoff = min(backoff * 2, BACKOFF_CAP_S)
            continue
        if last_log is not None:
            log.info("reached Kafka at %s after waiting %.1f s", servers, clock() - start)
        return result
