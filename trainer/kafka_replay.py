"""``--data kafka://TOPIC``: replay an events topic, from the start up to its end offsets.

Events are as DESIGN.md has them: key = stream id, value JSON
``{"seq": int?, "ts": float?, "x": [float, ...]}``. The end offsets are taken
once, before reading, so events produced during the replay are not waited
for. Events the service would dead-letter (undecodable, no key, wrong length,
non-finite) are skipped and counted, as serving skips them. Rows are ordered
by ``seq``, or by offset when any event lacks one (a stream's events share a
partition, so offsets order them).
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from streamcell.errors import BrokerUnavailable, DataError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
SCHEME = "kafka://"


@dataclass(frozen=True)
class Replay:
    frame: pd.DataFrame  # columns stream, seq, *features
    order_column: str
    events: int
    skipped: int


def is_kafka_uri(data: str) -> bool:
    return data.startswith(SCHEME)


def replay_topic(
    uri: str, bootstrap_servers: str, features: Sequence[str], timeout_s: float = 60.0
) -> Replay:
    """Read every event of the topic in ``uri`` that exists now into a long frame."""
    import pandas as pd
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    topic = uri[len(SCHEME) :]
    if not topic:
        raise DataError(f"{uri!r} names no topic (expected kafka://TOPIC)")
    if not features:
        raise DataError("--features is required with kafka:// data (events carry only x)")
    if not bootstrap_servers:
        raise DataError("kafka:// data needs --bootstrap-servers (or KAFKA_BOOTSTRAP_SERVERS)")
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers.split(","),
            client_id=f"streamcell-train-{uuid.uuid4().hex[:8]}",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=int(min(timeout_s, 30) * 1000) + 1000,
        )
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot reach Kafka at {bootstrap_servers}: {exc}") from None
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise DataError(f"topic {topic!r} does not exist on {bootstrap_servers}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        rows: list[tuple[str, int, int, int | None, list[float]]] = []
        skipped = 0
        width = len(features)
        pending = {tp for tp in tps if ends[tp] > consumer.position(tp)}
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise DataError(f"replaying {topic!r} took longer than {timeout_s:g} s")
            for tp, records in consumer.poll(timeout_ms=500, max_records=10_000).items():
                for r in records:
                    if r.offset >= ends[tp]:
                        continue
                    event = _decode(r.key, r.value, width)
                    if event is None:
                        skipped += 1
                    else:
                        rows.append((event[0], tp.partition, r.offset, event[1], event[2]))
            pending = {tp for tp in pending if consumer.position(tp) < ends[tp]}
    except KafkaError as exc:
        raise BrokerUnavailable(f"replaying {topic!r} from {bootstrap_servers}: {exc}") from None
    finally:
        consumer.close()
    if not rows:
        raise DataError(f"topic {topic!r} holds no valid events ({skipped} skipped)")
    if skipped:
        log.warning("skipped %d invalid events of %r (as the service would)", skipped, topic)
    use_seq = all(r[3] is not None for r in rows)
    frame = pd.DataFrame([r[4] for r in rows], columns=list(features), dtype="float64")
    frame.insert(0, "stream", [r[0] for r in rows])
    frame.insert(1, "seq", [r[3] if use_seq else r[2] for r in rows])
    return Replay(frame, "seq", len(rows), skipped)


def _decode(key: bytes | None, value: bytes | None, width: int):
    """(stream, seq or None, x) of a valid event; None where the service would dead-letter."""
    if not key or value is None:
        return None
    try:
        stream = key.decode("utf-8")
        obj = json.loads(value)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(obj, dict):
        return None
    x, seq = obj.get("x"), obj.get("seq")
    if not isinstance(x, list) or len(x) != width:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in x):
        return None
    if not all(math.isfinite(v) for v in x):
        return None
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool) or seq < 0):
        return None
    return stream, seq, [float(v) for v in x]
