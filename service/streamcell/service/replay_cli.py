"""`streamcell replay`: produce recorded events into the events topic.

From a long-format CSV/Parquet file (the trainer's format) or JSON lines, keyed
by stream id, optionally paced (``--rate`` events/s) and cut (``--limit``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from streamcell.service import flags, settings

HELP = "produce events from a CSV/Parquet long-format file or JSON lines into the events topic"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="CSV, Parquet, or JSON lines (.jsonl) of events")
    flags.add_arguments(
        parser, ("--bootstrap-servers", "--kafka-client", "--partitions", "--event-format")
    )
    parser.add_argument("--topic", default=settings.INPUT_TOPIC, help="events topic")
    parser.add_argument("--stream-column", default="stream", help="stream id column")
    parser.add_argument(
        "--order-column",
        default="seq",
        help="column giving time order; sent as seq when it holds integers (default: seq)",
    )
    parser.add_argument(
        "--ts-column", help="event time column, seconds or datetimes (default: ts, if present)"
    )
    parser.add_argument(
        "--features", help="comma-separated feature columns (default: every numeric column)"
    )
    parser.add_argument(
        "--rate", type=float, help="events per second (default: as fast as possible)"
    )
    parser.add_argument("--limit", type=int, help="send at most this many events")


def run(args: argparse.Namespace) -> int:
    import logging
    import time

    from streamcell.core.errors import ConfigError
    from streamcell.service import replay
    from streamcell.service.kafka import KafkaClientConfig, TopicSpec, open_admin, open_producer

    log = logging.getLogger("streamcell.replay")
    bootstrap = flags.bootstrap_servers(args, os.environ)
    if not bootstrap:
        raise ConfigError(f"no Kafka: pass --bootstrap-servers or set {settings.ENV_BOOTSTRAP}")
    if args.limit is not None and args.limit < 0:
        raise ConfigError("--limit must be >= 0")
    features = [f.strip() for f in args.features.split(",")] if args.features else None
    events = replay.read_events(
        args.file,
        stream_column=args.stream_column,
        order_column=args.order_column,
        features=features,
        ts_column=args.ts_column,
    )
    if args.limit is not None:
        events = events.rows(0, args.limit)

    cfg = KafkaClientConfig(bootstrap, client=args.kafka_client, client_id="streamcell-replay")
    admin = open_admin(cfg)
    try:
        if admin.ensure_topics([TopicSpec(args.topic, args.partitions)]):
            log.info("created topic %s with %d partitions", args.topic, args.partitions)
    finally:
        admin.close()

    producer = open_producer(cfg)
    began = time.monotonic()
    try:
        for start, stop in replay.paced_chunks(len(events), args.rate):
            chunk = replay.encode(events.rows(start, stop), args.event_format)
            producer.send_many(args.topic, chunk)
        producer.flush()
    finally:
        producer.close()
    seconds = time.monotonic() - began
    print(
        f"replayed {len(events)} events of {len(set(events.streams))} streams into "
        f"{args.topic} in {seconds:.2f} s ({len(events) / max(seconds, 1e-9):,.0f} events/s)"
    )
    return 0
