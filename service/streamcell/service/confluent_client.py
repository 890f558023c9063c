"""The confluent-kafka (librdkafka) implementation of the interfaces in ``kafka.py``.

The default client (``--kafka-client confluent``): several times faster than
kafka-python on the measured machine (docs/BENCHMARKS.md, "Kafka").
"""

from __future__ import annotations

import logging
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
)
from confluent_kafka import TopicPartition as CTopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from streamcell.core.errors import StreamcellError
from streamcell.service.kafka import (
    CommitFailed,
    EndTracker,
    Implementation,
    KafkaClientConfig,
    Member,
    Progress,
    Record,
    RecordTooLarge,
    TailReader,
    TopicPartition,
    TopicSpec,
    idempotent,
    unavailable,
)

log = logging.getLogger(__name__)

PARTITION_UA = -1  # librdkafka's "unassigned": the partitioner picks


_last_logged: dict[int, float] = {}
ERROR_LOG_INTERVAL_S = 30.0


def _log_error(err: KafkaError) -> None:
    """librdkafka reports transient trouble here (and retries by itself): log each
    kind of error at most once per interval instead of once per reconnect attempt."""
    now = time.monotonic()
    if now - _last_logged.get(err.code(), -ERROR_LOG_INTERVAL_S) >= ERROR_LOG_INTERVAL_S:
        _last_logged[err.code()] = now
        log.warning("kafka: %s", err.str())


def _common(cfg: KafkaClientConfig) -> dict:
    return {
        "bootstrap.servers": cfg.bootstrap_servers,
        "client.id": cfg.client_id,
        "socket.connection.setup.timeout.ms": int(cfg.connect_timeout_s * 1000),
        "error_cb": _log_error,
        "log_level": 2,  # errors reach error_cb (rate-limited) instead of stderr
    }


def _probe(cfg: KafkaClientConfig, client) -> None:
    """librdkafka connects lazily; ask for metadata so a dead address fails now."""
    try:
        client.list_topics(timeout=cfg.connect_timeout_s)
    except KafkaException as exc:
        raise unavailable(cfg, exc.args[0] if exc.args else exc) from exc


def _records(messages: list) -> list[Record]:
    """Messages -> Records; one inlined loop (a function call per message cost ~40 %)."""
    out: list[Record] = []
    append = out.append
    new = tuple.__new__
    for m in messages:
        err = m.error()
        if err is None:
            h = m.headers()
            append(
                new(
                    Record,
                    (
                        m.topic(),
                        m.partition(),
                        m.offset(),
                        m.key(),
                        m.value(),
                        m.timestamp()[1],
                        tuple(h) if h else (),
                    ),
                )
            )
        elif err.fatal():
            raise KafkaException(err)
        else:
            log.warning("kafka consume: %s", err)
    return out


_CGMD_MAGIC = b"CGMDv2:"
_CGMD_GENERATION = struct.Struct("=i")


def _generation(metadata: bytes) -> int:
    """The generation in librdkafka's serialized consumer-group metadata.

    The Python client exposes it only as those bytes (for transactions):
    rd_kafka_consumer_group_metadata_write puts a magic, then the generation id
    as a native int32; librdkafka resets it to -1 when the member is fenced.
    """
    if not metadata.startswith(_CGMD_MAGIC) or len(metadata) < 11:
        return -1
    return _CGMD_GENERATION.unpack_from(metadata, len(_CGMD_MAGIC))[0]


def _consumer_conf(cfg: KafkaClientConfig, group_id: str) -> dict:
    return {
        **_common(cfg),
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": cfg.auto_offset_reset,
        "fetch.wait.max.ms": cfg.fetch_max_wait_ms,
    }


class ConfluentConsumer:
    def __init__(self, cfg: KafkaClientConfig, group_id: str) -> None:
        self.cfg = cfg
        self._c = Consumer(
            {
                **_consumer_conf(cfg, group_id),
                "session.timeout.ms": cfg.session_timeout_ms,
                "heartbeat.interval.ms": cfg.heartbeat_interval_ms,
                "max.poll.interval.ms": cfg.max_poll_interval_ms,
                "partition.assignment.strategy": "range,roundrobin",
                "on_commit": self._committed_cb,
            }
        )
        self._on_refused: Callable[[dict[TopicPartition, int], str], None] | None = None
        try:
            _probe(cfg, self._c)
        except Exception:
            self._c.close()
            raise
        self._pending_seeks: dict[TopicPartition, int] | None = None
        self._error: BaseException | None = None

    def subscribe(
        self,
        topics: list[str],
        on_assign: Callable[[list[TopicPartition]], None],
        on_revoke: Callable[[list[TopicPartition]], None],
        on_lost: Callable[[list[TopicPartition]], None] | None = None,
    ) -> None:
        def assigned(consumer, partitions) -> None:
            # Seeks issued inside the callback become the assignment's start offsets:
            # librdkafka refuses seek() before the partition is being fetched.
            self._pending_seeks = {}
            try:
                if self._error is None:
                    on_assign(sorted((p.topic, p.partition) for p in partitions))
            except BaseException as exc:
                self._error = exc
            finally:
                seeks, self._pending_seeks = self._pending_seeks, None
            for p in partitions:
                p.offset = seeks.get((p.topic, p.partition), p.offset)
            consumer.assign(partitions)

        def taken(callback: Callable[[list[TopicPartition]], None]) -> Callable:
            def revoked(consumer, partitions) -> None:
                try:
                    if self._error is None:
                        callback(sorted((p.topic, p.partition) for p in partitions))
                except BaseException as exc:
                    self._error = exc
                consumer.unassign()

            return revoked

        # librdkafka tells a lost assignment (session timed out, fenced) apart.
        self._c.subscribe(
            topics,
            on_assign=assigned,
            on_revoke=taken(on_revoke),
            on_lost=taken(on_lost or on_revoke),
        )

    def generation(self) -> int:
        return _generation(self._c.consumer_group_metadata())

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        try:
            messages = self._c.consume(num_messages=max_records, timeout=timeout_s)
        except KafkaException as exc:
            raise unavailable(self.cfg, exc) from exc
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return _records(messages) if messages else []

    def commit(
        self, offsets: dict[TopicPartition, int], metadata: dict[TopicPartition, str] | None = None
    ) -> None:
        if not offsets:
            return
        tps = _with_metadata(offsets, metadata)
        try:
            result = self._c.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            raise CommitFailed(f"commit of {len(offsets)} partition(s) failed: {exc}") from exc
        failed = [p for p in result or [] if p.error is not None]
        if failed:
            raise CommitFailed(f"commit failed for {failed[0].topic}[{failed[0].partition}]")

    def commit_async(
        self,
        offsets: dict[TopicPartition, int],
        metadata: dict[TopicPartition, str] | None,
        on_refused: Callable[[dict[TopicPartition, int], str], None],
    ) -> None:
        if not offsets:
            return
        tps = _with_metadata(offsets, metadata)
        self._on_refused = on_refused
        try:
            self._c.commit(offsets=tps, asynchronous=True)
        except KafkaException as exc:
            on_refused(dict(offsets), str(exc))

    def _committed_cb(self, err: KafkaError | None, partitions: list) -> None:
        """librdkafka's answer to a commit, served inside a poll (the loop's thread)."""
        failed = {(p.topic, p.partition): p.offset for p in partitions if p.error is not None}
        if err is None and not failed:
            return
        if not failed:
            failed = {(p.topic, p.partition): p.offset for p in partitions}
        if self._on_refused is not None:
            self._on_refused(failed, str(err or next(p.error for p in partitions if p.error)))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if self._pending_seeks is not None:
            self._pending_seeks[tp] = offset
            return
        try:
            self._c.seek(CTopicPartition(tp[0], tp[1], offset))
        except KafkaException:
            # Assigned but not fetching yet: assign again, this partition at the
            # offset, the others where they are (eager protocol: assign(), not
            # incremental_assign()).
            current = self._c.position(self._c.assignment())
            for p in current:
                if (p.topic, p.partition) == tp:
                    p.offset = offset
            self._c.assign(current)

    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        out = {}
        for tp in tps:
            ctp = CTopicPartition(tp[0], tp[1])
            _, high = self._c.get_watermark_offsets(ctp, cached=True)
            if high < 0:  # not fetched yet: ask the broker
                try:
                    _, high = self._c.get_watermark_offsets(ctp, timeout=self.cfg.connect_timeout_s)
                except KafkaException as exc:
                    raise unavailable(self.cfg, exc) from exc
            out[tp] = high
        return out

    def committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        return {tp: offset for tp, (offset, _) in self.committed_with_metadata(tps).items()}

    def committed_with_metadata(
        self, tps: list[TopicPartition]
    ) -> dict[TopicPartition, tuple[int | None, str]]:
        if not tps:
            return {}
        try:
            result = self._c.committed(
                [CTopicPartition(t, p) for t, p in tps], timeout=self.cfg.request_timeout_ms / 1000
            )
        except KafkaException as exc:
            raise unavailable(self.cfg, exc) from exc
        return {
            (p.topic, p.partition): (p.offset if p.offset >= 0 else None, p.metadata or "")
            for p in result
        }

    def close(self) -> None:
        self._c.close()


class ConfluentReader(TailReader):
    def __init__(self, cfg: KafkaClientConfig) -> None:
        self.cfg = cfg
        # A group id is required by the client, but assign() never joins the group.
        self._c = Consumer(_consumer_conf(cfg, f"{cfg.client_id}-reader"))
        try:
            _probe(cfg, self._c)
        except Exception:
            self._c.close()
            raise

    def _read(
        self,
        tps: list[TopicPartition],
        timeout_s: float,
        on_progress: Progress | None,
        tail: bool,
        ends: dict[TopicPartition, int] | None = None,
    ) -> Iterator[list[Record]]:
        """Read to the end from the beginning, or (``tail``) from the last listed record."""
        starts, listed = {}, {}
        for tp in tps:
            try:
                low, high = self._c.get_watermark_offsets(
                    CTopicPartition(tp[0], tp[1]), timeout=self.cfg.connect_timeout_s
                )
            except KafkaException as exc:
                raise unavailable(self.cfg, exc) from exc
            starts[tp], listed[tp] = (max(high - 1, low) if tail else low), high
        tracker = EndTracker(listed, starts, timeout_s, on_progress)
        self._c.assign([CTopicPartition(t, p, starts[(t, p)]) for t, p in tps])
        while tracker.pending():
            stalled = tracker.check()
            if stalled is not None:
                raise unavailable(self.cfg, stalled)
            messages = self._c.consume(num_messages=10_000, timeout=0.2)
            for p in self._c.position([CTopicPartition(t, q) for t, q in tps]):
                tp = (p.topic, p.partition)
                _, high = self._c.get_watermark_offsets(p, cached=True)
                position = p.offset if p.offset != OFFSET_INVALID else tracker.positions[tp]
                tracker.update(tp, position, high if high >= 0 else None)
            if messages:
                yield _records(messages)
        self._c.unassign()
        if ends is not None:
            ends.update(tracker.ends)

    def close(self) -> None:
        self._c.close()


# produce()'s positional order is (topic, value, key, partition, on_delivery, callback,
# timestamp, headers): ``callback`` is on_delivery's old alias (None: on_delivery
# stands) and a timestamp of 0 is librdkafka's "now", as when it is left out.
NOW = 0


def _refused(cfg: KafkaClientConfig, topic: str, exc: KafkaException) -> StreamcellError:
    """produce() raising: a record over message.max.bytes, else the client is unusable."""
    err = exc.args[0] if exc.args else None
    if isinstance(err, KafkaError) and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
        return RecordTooLarge(f"a record for {topic} is over the producer's limit: {err.str()}")
    return unavailable(cfg, exc)


class _Epoch:
    """Records sent between two marks: a count of those not acknowledged yet.

    Its ``delivered`` is every record's delivery callback: one Python call
    per record (the price of knowing which records are acknowledged). Only a
    flush that succeeds clears an epoch that a failed record holds open.
    """

    __slots__ = ("delivered", "number", "outstanding")

    def __init__(self, number: int, failures: list[str]) -> None:
        self.number = number
        self.outstanding = 0

        def delivered(err, msg) -> None:
            if err is None:
                self.outstanding -= 1
            else:  # the epoch never drains: no mark at or after it is acknowledged
                failures.append(f"{msg.topic()}: {err}")

        self.delivered = delivered


def _producer_conf(cfg: KafkaClientConfig) -> dict[str, Any]:
    """Idempotent with acks=all, else one request in flight per connection: either
    way a retry keeps send order. message.max.bytes is librdkafka's request limit
    (its default, 1 MB, would refuse what kafka-python sends)."""
    ordering: dict[str, Any] = (
        {"enable.idempotence": True}
        if idempotent(cfg)
        else {"enable.idempotence": False, "max.in.flight.requests.per.connection": 1}
    )
    return {
        **_common(cfg),
        "acks": "all" if idempotent(cfg) else cfg.acks,
        "linger.ms": cfg.linger_ms,
        "batch.size": cfg.batch_size,
        "compression.type": cfg.compression,
        "message.max.bytes": cfg.max_request_bytes,
        "partitioner": "murmur2_random",  # the Java/kafka-python partitioner
        "queue.buffering.max.messages": 1_000_000,
        "message.timeout.ms": cfg.request_timeout_ms,
        "delivery.report.only.error": False,  # successes count for acknowledged()
        **ordering,
    }


class ConfluentProducer:
    def __init__(self, cfg: KafkaClientConfig) -> None:
        self.cfg = cfg
        self._failures: list[str] = []
        self._epoch = _Epoch(0, self._failures)
        self._epochs: deque[_Epoch] = deque([self._epoch])  # oldest first; the last is open
        self._p = Producer(
            {
                **_producer_conf(cfg),
                "on_delivery": self._on_delivery,
            }
        )
        _probe(cfg, self._p)

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err}")

    def _produce(self, topic, key, value, headers, partition) -> None:
        """One record, retried while the local queue is full (caller counted it)."""
        epoch = self._epoch
        part = PARTITION_UA if partition is None else partition
        while True:
            try:
                # Positional arguments cost less per call than keywords (see NOW).
                self._p.produce(topic, value, key, part, epoch.delivered, None, NOW, headers)
                return
            except BufferError:  # the local queue is full: let librdkafka drain it
                self._p.poll(0.05)
            except KafkaException as exc:
                raise _refused(self.cfg, topic, exc) from exc

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        epoch = self._epoch
        epoch.outstanding += 1
        try:
            self._produce(topic, key, value, headers, partition)
        except BaseException:
            epoch.outstanding -= 1  # not queued: nothing will report it
            raise

    def send_many(
        self,
        topic: str,
        records: Sequence[tuple[bytes | None, bytes | None]],
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        produce = self._p.produce
        epoch = self._epoch
        epoch.outstanding += len(records)
        delivered = epoch.delivered
        pending = iter(records)
        part = PARTITION_UA if partition is None else partition
        try:
            if headers is None:  # predictions: the shortest positional call
                for key, value in pending:
                    try:
                        produce(topic, value, key, part, delivered)
                    except BufferError:
                        self._produce(topic, key, value, headers, partition)
                    except KafkaException as exc:
                        raise _refused(self.cfg, topic, exc) from exc
            else:  # changelog records: headers positionally too (keywords cost more a call)
                wire: Any = headers  # the stubs' list type is invariant in its tuples
                for key, value in pending:
                    try:
                        produce(topic, value, key, part, delivered, None, NOW, wire)
                    except BufferError:
                        self._produce(topic, key, value, headers, partition)
                    except KafkaException as exc:
                        raise _refused(self.cfg, topic, exc) from exc
        except StreamcellError:  # refused: it and the records after it were not queued
            epoch.outstanding -= 1 + sum(1 for _ in pending)
            raise
        self._p.poll(0)

    def flush(self, timeout_s: float = 30.0) -> None:
        left = self._p.flush(timeout_s)
        if left:
            self._failures.clear()
            raise unavailable(self.cfg, f"{left} record(s) not acknowledged within {timeout_s} s")
        self._raise_failures()
        epochs = self._epochs  # all sent records are acknowledged: every epoch drained
        while epochs[0] is not self._epoch:
            epochs.popleft()
        self._epoch.outstanding = 0

    def mark(self) -> int:
        number = self._epoch.number
        self._epoch = _Epoch(number + 1, self._failures)
        self._epochs.append(self._epoch)
        return number

    def acknowledged(self, mark: int) -> bool:
        self._p.poll(0)  # serve delivery reports: the epochs' counts go down
        self._raise_failures()
        epochs = self._epochs
        while epochs[0] is not self._epoch and epochs[0].outstanding <= 0:
            epochs.popleft()
        return epochs[0].number > mark

    def _raise_failures(self) -> None:
        if self._failures:
            failures = list(self._failures)
            self._failures.clear()  # the same list the epochs append to
            raise unavailable(self.cfg, f"{len(failures)} record(s) not delivered: {failures[0]}")

    def close(self) -> None:
        left = self._p.flush(self.cfg.close_timeout_s)
        if left:
            log.warning("closing the producer dropped %d unsent record(s)", left)


class ConfluentAdmin:
    def __init__(self, cfg: KafkaClientConfig) -> None:
        self.cfg = cfg
        self._a = AdminClient(_common(cfg))
        _probe(cfg, self._a)

    def _topics(self) -> dict:
        try:
            return self._a.list_topics(timeout=self.cfg.request_timeout_ms / 1000).topics
        except KafkaException as exc:
            raise unavailable(self.cfg, exc) from exc

    def ensure_topics(self, specs: list[TopicSpec]) -> list[str]:
        existing = self._topics()
        missing = [
            NewTopic(
                s.name,
                num_partitions=s.partitions,
                replication_factor=s.replication_factor,
                config={"cleanup.policy": "compact"} if s.compacted else {},
            )
            for s in specs
            if s.name not in existing
        ]
        if not missing:
            return []
        created = []
        futures = self._a.create_topics(missing, operation_timeout=self.cfg.connect_timeout_s)
        for name, future in futures.items():
            try:
                future.result(timeout=self.cfg.request_timeout_ms / 1000)
            except KafkaException as exc:
                if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue  # another replica created it first
                raise unavailable(self.cfg, f"creating topic {name!r}: {exc}") from exc
            created.append(name)
        return created

    def partitions(self, topic: str) -> int | None:
        meta = self._topics().get(topic)
        return None if meta is None or meta.error is not None else len(meta.partitions)

    def group_members(self, group: str) -> list[Member]:
        try:
            (future,) = self._a.describe_consumer_groups([group]).values()
            description = future.result(timeout=self.cfg.request_timeout_ms / 1000)
        except KafkaException as exc:
            log.debug("describe_consumer_groups(%s) failed: %s", group, exc)
            return []
        return [
            Member(
                m.member_id,
                m.client_id,
                m.host,
                tuple((p.topic, p.partition) for p in m.assignment.topic_partitions),
            )
            for m in description.members
        ]

    def topic_configs(self, topic: str) -> dict[str, str] | None:
        timeout = self.cfg.request_timeout_ms / 1000
        try:
            futures = self._a.describe_configs(
                [ConfigResource("topic", topic)], request_timeout=timeout
            )
            entries = next(iter(futures.values())).result(timeout=timeout)
        except (KafkaException, ValueError) as exc:
            log.debug("describe_configs(%s) failed: %s", topic, exc)
            return None
        return {k: e.value for k, e in entries.items() if e.value is not None}

    def close(self) -> None:
        pass  # AdminClient has no close; its threads end with the object


IMPLEMENTATION = Implementation(
    ConfluentConsumer, ConfluentReader, ConfluentProducer, ConfluentAdmin
)


def _with_metadata(
    offsets: dict[TopicPartition, int], metadata: dict[TopicPartition, str] | None
) -> list[CTopicPartition]:
    """The commit's partitions, each with its metadata string ("" where none is given)."""
    meta = metadata or {}
    return [
        CTopicPartition(t, p, o, metadata=meta.get((t, p), "")) for (t, p), o in offsets.items()
    ]
