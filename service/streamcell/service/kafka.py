"""Thin Kafka wrappers: one small interface, two clients behind it.

The pipeline, the changelog and the tools talk to these four protocols only
(:class:`Consumer`, :class:`Reader`, :class:`Producer`, :class:`Admin`), so the
client is a setting (``--kafka-client confluent|kafka-python``; confluent,
librdkafka's Python binding, by default) and one contract test suite runs
over both. The implementations live in
``kafka_python_client.py`` and ``confluent_client.py`` and load their client
library only when opened.

Conventions shared by both implementations:

- offsets are "the next offset to read", as Kafka commits them;
- consumers never auto-commit, and rebalance callbacks fire inside ``poll``;
  partitions *lost* (the member was evicted or fenced) are told apart from
  partitions *revoked* (``on_lost``), and ``Consumer.generation`` says the
  group generation (-1 once fenced), which the changelog records carry;
- a broker that cannot be reached when a client opens raises
  :class:`~streamcell.core.errors.BrokerUnavailable` naming the bootstrap servers;
- producers are idempotent with acks=all, else one request in flight per
  connection (:func:`idempotent`): a retry never reorders a partition's records;
- the producer partitions keys with murmur2 in both clients (the Java
  client's partitioner), so a stream lands on the same partition whichever
  client wrote it.

``Consumer.end_offsets`` answers from the high watermark of the last fetch
of each partition when there is one (no round trip: it is called for the lag
metric at every checkpoint), and asks the broker only for the others.

Broker quirk handled here: Tansu (the embedded broker) answers ListOffsets
"latest" with the base offset of the last record batch plus one, not the log
end; fetch responses carry the true high watermark. So ``end_offsets`` is
exact for fetched partitions, and ``Reader.read_to_end`` and ``Reader.ends``
learn the true end from their first fetch.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from streamcell.core.errors import BrokerUnavailable, ConfigError, StreamcellError

TopicPartition = tuple[str, int]
"""(topic, partition)."""

CLIENTS: dict[str, str] = {
    "kafka-python": "streamcell.service.kafka_python_client",
    "confluent": "streamcell.service.confluent_client",
}
DEFAULT_CLIENT = "confluent"  # librdkafka: several times the rate of kafka-python
ACKS = ("all", "0", "1", "-1")
# A producer's compression.type (the Kafka names; none: not compressed).
COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")


def idempotent(cfg: KafkaClientConfig) -> bool:
    """Whether producers run idempotent: only with acks=all (the broker requires it).

    An idempotent producer keeps a partition's records in send order across
    retries (up to 5 requests in flight); without it (acks 0 or 1) both clients
    send one request at a time per connection instead, so a retry cannot put a
    later snapshot of a stream before an earlier one.
    """
    return cfg.acks in ("all", "-1")


class CommitFailed(StreamcellError):
    """An offset commit was refused (usually: the group is rebalancing)."""


class RecordTooLarge(StreamcellError):
    """The client refused to send a record over its request limit (``max_request_bytes``)."""


class Record(NamedTuple):
    """One consumed record. A NamedTuple: immutable and cheap to build per record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create when it is missing."""

    name: str
    partitions: int
    compacted: bool = False
    replication_factor: int = 1


@dataclass(frozen=True)
class Member:
    """One consumer-group member, as far as the broker tells (best effort)."""

    member_id: str
    client_id: str
    host: str
    partitions: tuple[TopicPartition, ...]


@dataclass(frozen=True)
class KafkaClientConfig:
    """Connection and tuning settings common to both clients.

    The defaults suit Tansu and a local Apache Kafka alike: a short session
    timeout (Tansu's first assignment takes about half of it; 6000 ms is the
    smallest a stock Apache Kafka broker accepts) and a short fetch wait
    (Tansu holds every fetch for the full wait, even when records are there:
    at 100 ms the median event-to-prediction latency was ~55 ms and a
    consumer got ~half the records per second it gets at 10 ms).
    """

    bootstrap_servers: str
    client: str = DEFAULT_CLIENT
    client_id: str = "streamcell"
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    max_poll_interval_ms: int = 300_000
    auto_offset_reset: str = "earliest"
    connect_timeout_s: float = 5.0
    close_timeout_s: float = 5.0
    request_timeout_ms: int = 30_000
    fetch_max_wait_ms: int = 10
    linger_ms: int = 5
    batch_size: int = 256 * 1024
    acks: str = "all"
    compression: str = "none"  # the producer's compression.type
    # The largest request a producer sends (kafka-python max_request_size,
    # librdkafka message.max.bytes); a record over it is refused by the client.
    max_request_bytes: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        if not self.bootstrap_servers.strip():
            raise ConfigError("bootstrap servers are empty (use --bootstrap-servers HOST:PORT)")
        if self.client not in CLIENTS:
            raise ConfigError(
                f"unknown Kafka client {self.client!r}; choose one of {', '.join(CLIENTS)}"
            )
        if self.acks not in ACKS:
            raise ConfigError(f"acks must be one of {', '.join(ACKS)}, got {self.acks!r}")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(
                f"compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}"
            )
        if self.max_request_bytes < 1024:
            raise ConfigError(f"max_request_bytes must be >= 1024, got {self.max_request_bytes}")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ConfigError("the heartbeat interval must be shorter than the session timeout")


class Consumer(Protocol):
    """A consumer-group member with manual commits (auto commit is off)."""

    def subscribe(
        self,
        topics: list[str],
        on_assign: Callable[[list[TopicPartition]], None],
        on_revoke: Callable[[list[TopicPartition]], None],
        on_lost: Callable[[list[TopicPartition]], None] | None = None,
    ) -> None:
        """Join the group. ``on_lost``: partitions taken away while this member was
        out of the group (evicted, fenced), where nothing may be written for them
        any more; without it they go to ``on_revoke`` as the clients do."""
        ...

    def generation(self) -> int:
        """The group generation of this member's assignment; -1 before the first join
        and once the client learnt it was fenced (the group moved on without it)."""
        ...

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        """Records in partition order; rebalance callbacks fire inside."""
        ...

    def commit(
        self, offsets: dict[TopicPartition, int], metadata: dict[TopicPartition, str] | None = None
    ) -> None:
        """Synchronous commit of the next offsets to read (each with its metadata string,
        "" where none is given); raises CommitFailed."""
        ...

    def commit_async(
        self,
        offsets: dict[TopicPartition, int],
        metadata: dict[TopicPartition, str] | None,
        on_refused: Callable[[dict[TopicPartition, int], str], None],
    ) -> None:
        """The same commit, sent without waiting for the broker's answer; a refusal
        reaches ``on_refused(offsets, why)`` in a later poll (or at once)."""
        ...

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` at the next poll (recovery and replays)."""
        ...

    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Log end per partition: the last fetch's high watermark, else the broker's answer."""
        ...

    def committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, int | None]: ...

    def committed_with_metadata(
        self, tps: list[TopicPartition]
    ) -> dict[TopicPartition, tuple[int | None, str]]:
        """The committed offsets and the metadata committed with them ("" if none)."""
        ...

    def close(self) -> None:
        """Leave the group (no commit) and release the connections."""
        ...


class Reader(Protocol):
    """No group: assigned partitions read from the beginning to their current end."""

    def read_to_end(
        self, tps: list[TopicPartition], timeout_s: float, on_progress: Progress | None = None
    ) -> Iterator[list[Record]]:
        """Batches of records until every partition reached the end it had at the call.

        No time limit while records keep arriving: raises BrokerUnavailable
        only when no partition advanced for ``timeout_s``. ``on_progress`` is
        called every few seconds of a long read.
        """
        ...

    def ends(self, tps: list[TopicPartition], timeout_s: float) -> dict[TopicPartition, int]:
        """Each partition's true log end: its high watermark, read by fetching its last
        record (ListOffsets alone can fall short on Tansu, see the module note)."""
        ...

    def close(self) -> None: ...


class Producer(Protocol):
    """Asynchronous sends; ``flush`` is where delivery failures surface."""

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        """Queue one record; raises RecordTooLarge when it exceeds ``max_request_bytes``."""
        ...

    def send_many(
        self,
        topic: str,
        records: Sequence[tuple[bytes | None, bytes | None]],
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        """Send (key, value) pairs, all with the same headers (and partition, if given)."""
        ...

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every send is acknowledged; raises BrokerUnavailable otherwise."""
        ...

    def mark(self) -> int:
        """A token for "every record sent so far"; later marks compare greater."""
        ...

    def acknowledged(self, mark: int) -> bool:
        """Whether every record sent before ``mark()`` returned it is acknowledged.

        Does not wait (a cheap check per loop iteration: the pipeline commits
        offsets once the changelog records before them are durable). Raises
        BrokerUnavailable when any send has failed, so no later commit passes it.
        """
        ...

    def close(self) -> None: ...


class Admin(Protocol):
    def ensure_topics(self, specs: list[TopicSpec]) -> list[str]:
        """Create the missing topics; return the names created."""
        ...

    def partitions(self, topic: str) -> int | None:
        """Partition count, or None when the topic does not exist."""
        ...

    def group_members(self, group: str) -> list[Member]:
        """Members and their partitions; empty when the broker does not say (Tansu)."""
        ...

    def topic_configs(self, topic: str) -> dict[str, str] | None:
        """The topic's configs as the broker reports them (all it sends, defaults too);
        None when the broker cannot be asked (DescribeConfigs failed)."""
        ...

    def close(self) -> None: ...


class Implementation(NamedTuple):
    """What a client module (``CLIENTS``) provides, as its ``IMPLEMENTATION``."""

    consumer: Callable[[KafkaClientConfig, str], Consumer]
    reader: Callable[[KafkaClientConfig], Reader]
    producer: Callable[[KafkaClientConfig], Producer]
    admin: Callable[[KafkaClientConfig], Admin]


def _impl(cfg: KafkaClientConfig) -> Implementation:
    try:
        return importlib.import_module(CLIENTS[cfg.client]).IMPLEMENTATION
    except ImportError as exc:  # a broken install: both clients are dependencies
        raise ConfigError(
            f"Kafka client {cfg.client!r} does not import ({exc}); reinstall streamcell "
            "(confluent-kafka and kafka-python are dependencies) or pick the other --kafka-client"
        ) from exc


def open_consumer(cfg: KafkaClientConfig, group_id: str) -> Consumer:
    return _impl(cfg).consumer(cfg, group_id)


def open_reader(cfg: KafkaClientConfig) -> Reader:
    return _impl(cfg).reader(cfg)


def open_producer(cfg: KafkaClientConfig) -> Producer:
    return _impl(cfg).producer(cfg)


def open_admin(cfg: KafkaClientConfig) -> Admin:
    return _impl(cfg).admin(cfg)


def installed_clients() -> list[str]:
    """The client names whose library imports here."""
    names = []
    for name, lib in (("kafka-python", "kafka"), ("confluent", "confluent_kafka")):
        try:
            importlib.import_module(lib)
        except ImportError:
            continue
        names.append(name)
    return names


def unavailable(cfg: KafkaClientConfig, why: object) -> BrokerUnavailable:
    """The one message for "cannot reach the cluster"."""
    return BrokerUnavailable(f"cannot reach Kafka at {cfg.bootstrap_servers}: {why}")


Progress = Callable[[dict[TopicPartition, tuple[int, int]]], None]
"""Called during a long ``read_to_end``: per partition (offsets read, offsets to read)."""


class TailReader:
    """``read_to_end`` and ``ends`` of the Reader protocol over one client's ``_read``.

    A client implements ``_read``: read ``tps`` from the beginning to the end
    they had at the call or, with ``tail``, from the last listed record only,
    filling ``ends`` with each partition's true end.
    """

    def read_to_end(
        self, tps: list[TopicPartition], timeout_s: float, on_progress: Progress | None = None
    ) -> Iterator[list[Record]]:
        if tps:
            yield from self._read(tps, timeout_s, on_progress, tail=False)

    def ends(self, tps: list[TopicPartition], timeout_s: float) -> dict[TopicPartition, int]:
        out: dict[TopicPartition, int] = {}
        for _ in self._read(tps, timeout_s, None, tail=True, ends=out):
            pass
        return out

    def _read(
        self,
        tps: list[TopicPartition],
        timeout_s: float,
        on_progress: Progress | None,
        tail: bool,
        ends: dict[TopicPartition, int] | None = None,
    ) -> Iterator[list[Record]]:
        raise NotImplementedError


class EndTracker:
    """Follows each partition's end while reading it to the end (Reader helper).

    Starts from ListOffsets; raises a partition's end to the high watermark of
    any later fetch (see the module note on Tansu). A read has no time limit
    while it moves: :meth:`check` fails only after ``stall_s`` without any
    partition's position advancing, and reports progress every ``every_s``.
    """

    def __init__(
        self,
        ends: dict[TopicPartition, int],
        starts: dict[TopicPartition, int],
        stall_s: float,
        on_progress: Progress | None = None,
        every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ends = dict(ends)
        self.starts = dict(starts)
        self.positions = dict(starts)
        self.stall_s = stall_s
        self.on_progress = on_progress
        self.every_s = every_s
        self.clock = clock
        self._moved = self._reported = clock()

    def update(self, tp: TopicPartition, position: int, high_watermark: int | None) -> None:
        if position > self.positions[tp]:
            self._moved = self.clock()
        self.positions[tp] = position
        if high_watermark is not None and high_watermark > self.ends[tp]:
            self.ends[tp] = high_watermark

    def pending(self) -> list[TopicPartition]:
        return [tp for tp, end in self.ends.items() if self.positions[tp] < end]

    def progress(self) -> dict[TopicPartition, tuple[int, int]]:
        """Per partition: (offsets read, offsets from the start to the end)."""
        return {
            tp: (self.positions[tp] - self.starts[tp], end - self.starts[tp])
            for tp, end in self.ends.items()
        }

    def check(self) -> str | None:
        """Why the read should stop (no progress for ``stall_s``), else None; reports progress."""
        now = self.clock()
        if self.on_progress is not None and now - self._reported >= self.every_s:
            self._reported = now
            self.on_progress(self.progress())
        if now - self._moved <= self.stall_s:
            return None
        stuck = ", ".join(
            f"{t}/{p} at offset {self.positions[(t, p)]} of end {self.ends[(t, p)]} "
            f"({self.positions[(t, p)] - self.starts[(t, p)]} read)"
            for t, p in self.pending()
        )
        return f"reading to the end made no progress for over {self.stall_s} s: {stuck}"
