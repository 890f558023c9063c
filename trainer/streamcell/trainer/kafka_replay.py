"""``--data kafka://TOPIC``: replay an events topic, from the start up to its end offsets.

Reading goes through the service's Kafka layer (serve's default client
unless told otherwise; its reader learns each partition's true end even on
brokers that report it loosely) and decoding through the service's codec, so the trainer accepts
exactly the events the service would apply: undecodable, keyless,
wrong-length or non-finite events are skipped and counted, as serving
dead-letters them. Events produced after the replay starts are not waited
for. Rows are ordered by ``seq``, or by offset when any event lacks one (a
stream's events share a partition, so offsets order them).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from streamcell.core.errors import DataError
from streamcell.core.events import NO_SEQ

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
    uri: str,
    bootstrap_servers: str,
    features: Sequence[str],
    timeout_s: float = 120.0,
    client: str | None = None,
) -> Replay:
    """Read every event of the topic in ``uri`` that exists now into a long frame.

    ``client``: the Kafka client (``kafka.CLIENTS``); None: serve's default.
    """
    import pandas as pd

    from streamcell.service.codec import decode
    from streamcell.service.kafka import (
        DEFAULT_CLIENT,
        KafkaClientConfig,
        open_admin,
        open_reader,
    )

    topic = uri[len(SCHEME) :]
    if not topic:
        raise DataError(f"{uri!r} names no topic (expected kafka://TOPIC)")
    if not features:
        raise DataError("--features is required with kafka:// data (events carry only x)")
    if not bootstrap_servers:
        raise DataError("kafka:// data needs --bootstrap-servers (or KAFKA_BOOTSTRAP_SERVERS)")
    cfg = KafkaClientConfig(
        bootstrap_servers,
        client=client or DEFAULT_CLIENT,
        client_id=f"streamcell-train-{uuid.uuid4().hex[:8]}",
    )
    admin = open_admin(cfg)
    try:
        partitions = admin.partitions(topic)
    finally:
        admin.close()
    if not partitions:
        raise DataError(f"topic {topic!r} does not exist on {bootstrap_servers}")
    streams: list[str] = []
    seqs, offsets, xs = [], [], []
    skipped = 0
    reader = open_reader(cfg)
    try:
        tps = [(topic, p) for p in range(partitions)]
        for records in reader.read_to_end(tps, timeout_s):
            decoded = decode(records, len(features))
            skipped += len(decoded.invalid)
            streams.extend(decoded.batch.streams)
            seqs.append(decoded.batch.seq)
            offsets.append(decoded.batch.offset)
            xs.append(decoded.batch.x)
    finally:
        reader.close()
    if not streams:
        raise DataError(f"topic {topic!r} holds no valid events ({skipped} skipped)")
    if skipped:
        log.warning("skipped %d invalid events of %r (as the service would)", skipped, topic)
    seq = np.concatenate(seqs)
    order = seq if (seq != NO_SEQ).all() else np.concatenate(offsets)
    frame = pd.DataFrame(np.concatenate(xs).astype(np.float64), columns=list(features))
    frame.insert(0, "stream", streams)
    frame.insert(1, "seq", order)
    return Replay(frame, "seq", len(streams), skipped)
