"""The kafka-python implementation of the interfaces in ``kafka.py`` (``--kafka-client
kafka-python``: pure Python, the slower of the two; confluent is the default)."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from kafka import (
    KafkaAdminClient,
    KafkaConsumer,
    KafkaProducer,
)
from kafka import TopicPartition as KTopicPartition
from kafka import codec as kcodec
from kafka import errors as kerrors
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.partitioner.default import murmur2
from kafka.structs import OffsetAndMetadata

from streamcell.core.errors import ConfigError
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

PARTITION_CACHE_MAX = 1_000_000  # keys remembered per topic before the cache starts over


def _common(cfg: KafkaClientConfig) -> dict:
    return {
        "bootstrap_servers": cfg.bootstrap_servers.split(","),
        "client_id": cfg.client_id,
        "request_timeout_ms": cfg.request_timeout_ms,
        "bootstrap_timeout_ms": int(cfg.connect_timeout_s * 1000),
    }


def _consumer_kwargs(cfg: KafkaClientConfig) -> dict:
    return {
        **_common(cfg),
        "enable_auto_commit": False,
        "auto_offset_reset": cfg.auto_offset_reset,
        "fetch_max_wait_ms": cfg.fetch_max_wait_ms,
        "allow_auto_create_topics": False,
    }


def _records(batches: dict) -> list[Record]:
    out: list[Record] = []
    new = tuple.__new__  # skips NamedTuple's Python-level __new__ per record
    for tp in sorted(batches):
        out.extend(
            [
                new(
                    Record,
                    (r.topic, r.partition, r.offset, r.key, r.value, r.timestamp, tuple(r.headers)),
                )
                for r in batches[tp]
            ]
        )
    return out


def _tp(tp: TopicPartition) -> KTopicPartition:
    return KTopicPartition(tp[0], tp[1])


class _Listener(AsyncConsumerRebalanceListener):
    """Forwards rebalances; keeps a callback's exception so ``poll`` can raise it.

    (kafka-python logs and swallows exceptions raised in listeners.) kafka-python
    3 runs listeners on its IO thread, where a blocking call (commit, committed,
    a flush) raises; so each callback runs on a worker thread while the IO loop,
    heartbeats included, keeps going, and ``poll`` returns only after it is done.
    """

    def __init__(self, net, on_assign, on_revoke, on_lost=None) -> None:
        self.net = net
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        self.on_lost = on_lost or on_revoke
        self.error: BaseException | None = None

    async def _call(self, fn, partitions) -> None:
        if self.error is not None:
            return
        done = threading.Event()

        def work() -> None:
            try:
                fn(sorted((p.topic, p.partition) for p in partitions))
            except BaseException as exc:
                self.error = exc
            finally:
                done.set()

        threading.Thread(target=work, name="kafka-rebalance", daemon=True).start()
        while not done.is_set():
            await self.net.sleep(0.005)

    async def on_partitions_revoked(self, revoked) -> None:
        await self._call(self.on_revoke, revoked)

    async def on_partitions_assigned(self, assigned) -> None:
        await self._call(self.on_assign, assigned)

    async def on_partitions_lost(self, lost) -> None:
        # kafka-python calls it once it knows the member fell out of the group
        # (its generation was reset: evicted, fenced); the default would revoke.
        await self._call(self.on_lost, lost)


class KafkaPythonConsumer:
    def __init__(self, cfg: KafkaClientConfig, group_id: str) -> None:
        self.cfg = cfg
        try:
            self._c = KafkaConsumer(
                **_consumer_kwargs(cfg),
                group_id=group_id,
                session_timeout_ms=cfg.session_timeout_ms,
                heartbeat_interval_ms=cfg.heartbeat_interval_ms,
                max_poll_interval_ms=cfg.max_poll_interval_ms,
            )
        except kerrors.KafkaError as exc:
            raise unavailable(cfg, exc) from exc
        self._listener: _Listener | None = None

    def subscribe(
        self,
        topics: list[str],
        on_assign: Callable[[list[TopicPartition]], None],
        on_revoke: Callable[[list[TopicPartition]], None],
        on_lost: Callable[[list[TopicPartition]], None] | None = None,
    ) -> None:
        # kafka-python 3 has no public way for a listener to wait on its IO loop
        # (the loop is not asyncio): the consumer's own selector is reached privately.
        self._listener = _Listener(self._c._net, on_assign, on_revoke, on_lost)
        self._c.subscribe(topics, listener=self._listener)

    def generation(self) -> int:
        # Not public in kafka-python: the coordinator's generation, which its
        # heartbeat and commit handlers reset (-1) when the broker fences the member.
        generation = getattr(self._c._coordinator, "_generation", None)
        if generation is None or generation.is_lost():
            return -1
        return int(generation.generation_id)

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        batches = self._c.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        listener = self._listener
        if listener is not None and listener.error is not None:
            error, listener.error = listener.error, None
            raise error
        return _records(batches) if batches else []

    def commit(
        self, offsets: dict[TopicPartition, int], metadata: dict[TopicPartition, str] | None = None
    ) -> None:
        if not offsets:
            return
        meta = metadata or {}
        try:
            self._c.commit(
                {_tp(tp): OffsetAndMetadata(o, meta.get(tp, ""), -1) for tp, o in offsets.items()}
            )
        except kerrors.KafkaError as exc:
            raise CommitFailed(f"commit of {len(offsets)} partition(s) failed: {exc}") from exc

    def commit_async(
        self,
        offsets: dict[TopicPartition, int],
        metadata: dict[TopicPartition, str] | None,
        on_refused: Callable[[dict[TopicPartition, int], str], None],
    ) -> None:
        # kafka-python's commit_async answers through its own poll loop; this
        # client's commits stay synchronous (its sends dominate its costs anyway).
        try:
            self.commit(offsets, metadata)
        except CommitFailed as exc:
            on_refused(dict(offsets), str(exc))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._c.seek(_tp(tp), offset)

    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        out: dict[TopicPartition, int] = {}
        assigned = self._c.assignment()
        for tp in tps:
            high = self._c.highwater(_tp(tp)) if _tp(tp) in assigned else None
            if high is not None:
                out[tp] = high
        ask = [_tp(tp) for tp in tps if tp not in out]
        if ask:
            try:
                listed = self._c.end_offsets(ask)
            except kerrors.KafkaError as exc:
                raise unavailable(self.cfg, exc) from exc
            out.update({(k.topic, k.partition): v for k, v in listed.items()})
        return out

    def committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        return {tp: self._c.committed(_tp(tp)) for tp in tps}

    def committed_with_metadata(
        self, tps: list[TopicPartition]
    ) -> dict[TopicPartition, tuple[int | None, str]]:
        out: dict[TopicPartition, tuple[int | None, str]] = {}
        for tp in tps:
            got = self._c.committed(_tp(tp), metadata=True)
            out[tp] = (None, "") if got is None else (got.offset, got.metadata or "")
        return out

    def close(self) -> None:
        self._c.close(autocommit=False)


class KafkaPythonReader(TailReader):
    def __init__(self, cfg: KafkaClientConfig) -> None:
        self.cfg = cfg
        try:
            self._c = KafkaConsumer(**_consumer_kwargs(cfg), group_id=None)
        except kerrors.KafkaError as exc:
            raise unavailable(cfg, exc) from exc

    def _read(
        self,
        tps: list[TopicPartition],
        timeout_s: float,
        on_progress: Progress | None,
        tail: bool,
        ends: dict[TopicPartition, int] | None = None,
    ) -> Iterator[list[Record]]:
        """Read to the end from the beginning, or (``tail``) from the last listed record."""
        ktps = [_tp(tp) for tp in tps]
        self._c.assign(ktps)
        begins = self._c.beginning_offsets(ktps)
        listed = self._c.end_offsets(ktps)
        starts = {k: max(listed[k] - 1, begins[k]) if tail else begins[k] for k in ktps}
        for ktp in ktps:
            self._c.seek(ktp, starts[ktp])
        tracker = EndTracker(
            {(k.topic, k.partition): listed[k] for k in ktps},
            {(k.topic, k.partition): starts[k] for k in ktps},
            timeout_s,
            on_progress,
        )
        while tracker.pending():
            stalled = tracker.check()
            if stalled is not None:
                raise unavailable(self.cfg, stalled)
            batches = self._c.poll(timeout_ms=200, max_records=10_000)
            for ktp in ktps:
                tp = (ktp.topic, ktp.partition)
                tracker.update(tp, self._c.position(ktp), self._c.highwater(ktp))
            if batches:
                yield _records(batches)
        self._c.assign([])
        if ends is not None:
            ends.update(tracker.ends)

    def close(self) -> None:
        self._c.close(autocommit=False)


def _producer_kwargs(cfg: KafkaClientConfig) -> dict:
    """Idempotent with acks=all (kafka-python raises if the broker cannot), else one
    request in flight per connection: either way a retry keeps send order."""
    ordering = (
        {"enable_idempotence": True}
        if idempotent(cfg)
        else {"enable_idempotence": False, "max_in_flight_requests_per_connection": 1}
    )
    if cfg.compression != "none" and not getattr(kcodec, f"has_{cfg.compression}")():
        # kafka-python asserts on it inside the producer: say what to install instead
        raise ConfigError(
            f"kafka-python cannot compress with {cfg.compression}: its Python package "
            "is not installed (confluent-kafka has every codec built in)"
        )
    return {
        **_common(cfg),
        "acks": "all" if idempotent(cfg) else int(cfg.acks),
        "linger_ms": cfg.linger_ms,
        "batch_size": cfg.batch_size,
        "compression_type": None if cfg.compression == "none" else cfg.compression,
        "max_request_size": cfg.max_request_bytes,
        **ordering,
    }


def _too_large(topic: str, exc: Exception) -> RecordTooLarge:
    return RecordTooLarge(f"a record for {topic} is over the producer's limit: {exc}")


class KafkaPythonProducer:
    def __init__(self, cfg: KafkaClientConfig) -> None:
        self.cfg = cfg
        try:
            self._p = KafkaProducer(**_producer_kwargs(cfg))
        except kerrors.KafkaError as exc:
            raise unavailable(cfg, exc) from exc
        # Futures of the records not known acknowledged, in send order; _done counts
        # those before them. A mark is a count of records sent: no callback per record.
        self._futures: deque = deque()
        self._done = 0
        self._partition_cache: dict[str, tuple[int, dict[bytes, int]]] = {}

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        try:
            future = self._p.send(topic, value=value, key=key, headers=headers, partition=partition)
        except kerrors.MessageSizeTooLargeError as exc:
            raise _too_large(topic, exc) from exc
        except kerrors.KafkaError as exc:
            raise unavailable(self.cfg, exc) from exc
        self._futures.append(future)

    def send_many(
        self,
        topic: str,
        records: Sequence[tuple[bytes | None, bytes | None]],
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        send = self._p.send
        append = self._futures.append
        try:
            if partition is None:
                where = self._partitioner(topic)
                for key, value in records:
                    part = None if key is None else where(key)
                    append(send(topic, value=value, key=key, headers=headers, partition=part))
            else:
                for key, value in records:
                    append(send(topic, value=value, key=key, headers=headers, partition=partition))
        except kerrors.MessageSizeTooLargeError as exc:
            raise _too_large(topic, exc) from exc
        except kerrors.KafkaError as exc:
            raise unavailable(self.cfg, exc) from exc

    def _partitioner(self, topic: str) -> Callable[[bytes], int]:
        """kafka-python's default partitioner for keys, remembered per key.

        Its partitioner runs pure-Python murmur2 and rebuilds the partition list
        for every record (about a third of ``send``); a stream id maps to the same
        partition as long as the partition count stays, so it is computed once.
        """
        parts = sorted(self._p.partitions_for(topic))
        count, cache = self._partition_cache.get(topic, (0, {}))
        if count != len(parts) or len(cache) > PARTITION_CACHE_MAX:
            cache = {}
            self._partition_cache[topic] = (len(parts), cache)

        def where(key: bytes) -> int:
            part = cache.get(key)
            if part is None:
                part = cache[key] = parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)]
            return part

        return where

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait for every send; a failed record stays (and raises again, also in
        ``acknowledged``): nothing sent after it counts as acknowledged."""
        futures = self._futures
        try:
            self._p.flush(timeout=timeout_s)
        except kerrors.KafkaError as exc:
            raise unavailable(
                self.cfg, f"{len(futures)} record(s) not acknowledged: {exc}"
            ) from exc
        failed = [f for f in futures if f.failed()]
        if failed:
            raise unavailable(
                self.cfg, f"{len(failed)} record(s) not delivered: {failed[0].exception}"
            )
        self._done += len(futures)
        futures.clear()

    def mark(self) -> int:
        return self._done + len(self._futures)

    def acknowledged(self, mark: int) -> bool:
        if self._done < mark:
            self._advance()
        return self._done >= mark

    def _advance(self) -> None:
        """Drop the acknowledged futures at the front; raise at a failed one (it stays)."""
        futures = self._futures
        popleft = futures.popleft
        done = 0
        try:
            while futures and futures[0].is_done:
                if futures[0].failed():
                    raise unavailable(
                        self.cfg, f"a record was not delivered: {futures[0].exception}"
                    )
                popleft()
                done += 1
        finally:
            self._done += done

    def close(self) -> None:
        try:
            self._p.close(timeout=self.cfg.close_timeout_s)
        except kerrors.KafkaError as exc:  # records still unsent: kafka-python's close gives up
            log.warning("closing the producer dropped unsent records: %s", exc)
            # No public way: kafka-python's close() flushes first and raises while
            # records are undeliverable, so its sender is stopped here directly.
            sender = getattr(self._p, "_sender", None)
            if sender is not None:
                sender.force_close()
            self._p._closed = True  # or its __del__ tries (and fails) again


class KafkaPythonAdmin:
    def __init__(self, cfg: KafkaClientConfig) -> None:
        self.cfg = cfg
        try:
            self._a = KafkaAdminClient(**_common(cfg))
        except kerrors.KafkaError as exc:
            raise unavailable(cfg, exc) from exc

    def ensure_topics(self, specs: list[TopicSpec]) -> list[str]:
        existing = set(self._a.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created = []
        for spec in missing:
            configs = {"cleanup.policy": "compact"} if spec.compacted else {}
            topic = NewTopic(
                spec.name, spec.partitions, spec.replication_factor, topic_configs=configs
            )
            try:
                self._a.create_topics([topic])
            except kerrors.TopicAlreadyExistsError:
                continue  # another replica created it first
            except kerrors.KafkaError as exc:
                raise unavailable(self.cfg, f"creating topic {spec.name!r}: {exc}") from exc
            created.append(spec.name)
        return created

    def partitions(self, topic: str) -> int | None:
        if topic not in set(self._a.list_topics()):
            return None
        described = self._a.describe_topics([topic])
        return len(described[0]["partitions"]) if described else None

    def group_members(self, group: str) -> list[Member]:
        try:
            described = self._a.describe_groups([group])
        except (kerrors.KafkaError, ValueError) as exc:  # Tansu sends ACL bits it cannot parse
            log.debug("describe_groups(%s) failed: %s", group, exc)
            return []
        members = []
        for m in described.get(group, {}).get("members", []):
            assignment = m.get("member_assignment")
            tps: list[TopicPartition] = []
            for t in getattr(assignment, "assigned_partitions", None) or []:
                topic = getattr(t, "topic", None) or t[0]
                parts = getattr(t, "partitions", None) or t[1]
                tps.extend((topic, p) for p in parts)
            members.append(
                Member(m["member_id"], m.get("client_id", ""), m.get("client_host", ""), tuple(tps))
            )
        return members

    def topic_configs(self, topic: str) -> dict[str, str] | None:
        # "all": the default filter ("modified") hides what Tansu reports as a default
        resource = ConfigResource(ConfigResourceType.TOPIC, topic)
        try:
            described = self._a.describe_configs([resource], config_filter="all")
        except (kerrors.KafkaError, ValueError) as exc:
            log.debug("describe_configs(%s) failed: %s", topic, exc)
            return None
        entries = described.get("topic", {}).get(topic, {})
        return {k: str(e["value"]) for k, e in entries.items() if e.get("value") is not None}

    def close(self) -> None:
        self._a.close()


IMPLEMENTATION = Implementation(
    KafkaPythonConsumer, KafkaPythonReader, KafkaPythonProducer, KafkaPythonAdmin
)
