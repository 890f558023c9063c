"""One contract suite for the Kafka wrappers, run over every installed client
against the session's real broker (service/kafka.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator

import pytest

from streamcell.core.errors import BrokerUnavailable
from streamcell.service.broker import BrokerSettings, EmbeddedBroker, free_port
from streamcell.service.kafka import (
    Consumer,
    KafkaClientConfig,
    Producer,
    Record,
    RecordTooLarge,
    TopicPartition,
    TopicSpec,
    installed_clients,
    open_admin,
    open_consumer,
    open_producer,
    open_reader,
)

try:
    from streamcell.service.confluent_client import _producer_conf
except ImportError:  # confluent-kafka not installed: its cases are not collected
    _producer_conf = None  # type: ignore[assignment]
from streamcell.service.kafka_python_client import KafkaPythonProducer

pytestmark = pytest.mark.kafka


def make_topic(cfg: KafkaClientConfig, name: str, partitions: int = 3) -> str:
    admin = open_admin(cfg)
    try:
        assert admin.ensure_topics([TopicSpec(name, partitions)]) == [name]
    finally:
        admin.close()
    return name


def produce(cfg: KafkaClientConfig, topic: str, records, flushes: int = 1, **kw) -> None:
    """Send in ``flushes`` separate flushes, so the log holds several record batches."""
    producer = open_producer(cfg)
    try:
        step = max(1, len(records) // flushes)
        for start in range(0, len(records), step):
            producer.send_many(topic, records[start : start + step], **kw)
            producer.flush(10)
    finally:
        producer.close()


def read_all(cfg: KafkaClientConfig, tps: list[TopicPartition]) -> list[Record]:
    reader = open_reader(cfg)
    try:
        return [r for batch in reader.read_to_end(tps, timeout_s=20) for r in batch]
    finally:
        reader.close()


def poll_until(consumer: Consumer, count: int, timeout_s: float = 20) -> list[Record]:
    got: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        got.extend(consumer.poll(500, 0.2))
    return got


def test_round_trip_keeps_keys_values_headers_and_order(kafka_config, unique_name):
    topic = make_topic(kafka_config, unique_name("roundtrip"))
    producer = open_producer(kafka_config)
    producer.send(topic, b"s1", b"first", headers=[("reason", b"x"), ("n", b"1")], partition=1)
    producer.send(topic, b"s1", None, partition=1)
    producer.send_many(topic, [(b"s1", b"v%d" % i) for i in range(50)], headers=[("h", b"y")])
    producer.flush(10)
    producer.close()

    records = read_all(kafka_config, [(topic, p) for p in range(3)])
    assert len(records) == 52
    first, tombstone = [r for r in records if r.partition == 1][:2]
    assert (first.key, first.value, first.headers) == (
        b"s1",
        b"first",
        (("reason", b"x"), ("n", b"1")),
    )
    assert (tombstone.key, tombstone.value, tombstone.offset) == (b"s1", None, 1)
    assert first.timestamp_ms > 1_500_000_000_000
    same_key = [r for r in records if r.headers == (("h", b"y"),)]
    assert len({r.partition for r in same_key}) == 1  # one key, one partition
    assert [r.value for r in same_key] == [b"v%d" % i for i in range(50)]
    assert [r.offset for r in same_key] == sorted(r.offset for r in same_key)


def test_reader_reaches_the_true_end_over_many_batches(kafka_config, unique_name):
    # Tansu's ListOffsets reports the last batch's base offset + 1: the reader
    # must still deliver every record of the last batch.
    topic = make_topic(kafka_config, unique_name("reader"), partitions=2)
    produce(kafka_config, topic, [(b"k", b"%d" % i) for i in range(400)], flushes=4, partition=0)
    records = read_all(kafka_config, [(topic, 0), (topic, 1)])
    assert [int(r.value) for r in records] == list(range(400))
    assert read_all(kafka_config, [(topic, 1)]) == []
    reader = open_reader(kafka_config)
    try:  # the true ends, by reading the last batch only
        assert reader.ends([(topic, 0), (topic, 1)], timeout_s=20) == {
            (topic, 0): 400,
            (topic, 1): 0,
        }
    finally:
        reader.close()


def test_group_callbacks_commit_seek_and_resume(kafka_config, unique_name):
    topic = make_topic(kafka_config, unique_name("group"))
    group = unique_name("group")
    produce(kafka_config, topic, [(b"key-%d" % i, b"a%d" % i) for i in range(30)])
    tps = [(topic, p) for p in range(3)]

    assigned: list[list[TopicPartition]] = []
    revoked: list[list[TopicPartition]] = []
    consumer = open_consumer(kafka_config, group)
    try:
        consumer.subscribe([topic], assigned.append, revoked.append)
        got = poll_until(consumer, 30)
        assert sorted(r.value for r in got) == sorted(b"a%d" % i for i in range(30))
        assert assigned and assigned[-1] == tps
        first_generation = consumer.generation()
        assert first_generation >= 0
        ends = consumer.end_offsets(tps)
        assert sum(ends.values()) == 30
        read_to = {(r.topic, r.partition): r.offset + 1 for r in got}
        assert {tp: read_to.get(tp, 0) for tp in tps} == ends
        assert consumer.committed(tps) == dict.fromkeys(tps)

        # seek back: the partition is delivered again from there
        busiest = max(tps, key=ends.__getitem__)
        consumer.seek(busiest, 1)
        again = poll_until(consumer, ends[busiest] - 1)
        assert [r.offset for r in again] == list(range(1, ends[busiest]))

        consumer.commit(ends, {tp: f"end={tp[1]}" for tp in tps[1:]})
        assert consumer.committed(tps) == ends
        marks = consumer.committed_with_metadata(tps)
        assert {tp: offset for tp, (offset, _) in marks.items()} == ends
        kept = {tp: (ends[tp], "" if tp == tps[0] else f"end={tp[1]}") for tp in tps}
        # The embedded broker (Tansu) keeps no commit metadata: it answers "" for all.
        assert marks == kept or {meta for _, meta in marks.values()} == {""}
    finally:
        consumer.close()
    assert revoked and revoked[-1] == tps  # leaving the group revokes

    produce(kafka_config, topic, [(b"key-%d" % i, b"b%d" % i) for i in range(10)])
    second = open_consumer(kafka_config, group)
    try:
        second.subscribe([topic], lambda tps: None, lambda tps: None)
        resumed = poll_until(second, 10)
        assert sorted(r.value for r in resumed) == sorted(b"b%d" % i for i in range(10))
        assert not second.poll(100, 0.5)  # nothing from before the commit
        assert second.generation() > first_generation  # the group moved on
    finally:
        second.close()


def test_a_commit_not_waited_for_lands_in_order(kafka_config, unique_name):
    topic = make_topic(kafka_config, unique_name("async"), partitions=1)
    produce(kafka_config, topic, [(b"k", b"%d" % i) for i in range(10)])
    tp = (topic, 0)
    refused: list = []
    consumer = open_consumer(kafka_config, unique_name("async"))
    try:
        consumer.subscribe([topic], lambda tps: None, lambda tps: None)
        poll_until(consumer, 10)
        for offset in (4, 7, 10):  # the last sent is the one that stays
            consumer.commit_async({tp: offset}, None, lambda o, why: refused.append((o, why)))
        consumer.poll(10, 0.5)  # the answers are served inside a poll
        assert consumer.committed([tp]) == {tp: 10}
        assert refused == []
    finally:
        consumer.close()


def test_a_failing_assign_callback_surfaces_from_poll(kafka_config, unique_name):
    topic = make_topic(kafka_config, unique_name("cb"), partitions=1)

    def boom(tps):
        raise RuntimeError("restore failed")

    consumer = open_consumer(kafka_config, unique_name("cb"))
    try:
        consumer.subscribe([topic], boom, lambda tps: None)
        with pytest.raises(RuntimeError, match="restore failed"):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                consumer.poll(10, 0.2)
    finally:
        consumer.close()


def test_ensure_topics_creates_missing_ones_once(kafka_config, unique_name):
    events, changelog = unique_name("events"), unique_name("changelog")
    admin = open_admin(kafka_config)
    try:
        assert admin.partitions(events) is None
        specs = [TopicSpec(events, 4), TopicSpec(changelog, 4, compacted=True)]
        assert sorted(admin.ensure_topics(specs)) == sorted([events, changelog])
        assert admin.ensure_topics(specs) == []
        assert admin.partitions(events) == 4
        assert admin.partitions(changelog) == 4
        assert isinstance(admin.group_members(unique_name("nobody")), list)
    finally:
        admin.close()


def test_topic_configs_report_a_compacted_changelog(kafka_config, unique_name):
    events, changelog = unique_name("events"), unique_name("changelog")
    admin = open_admin(kafka_config)
    try:
        admin.ensure_topics([TopicSpec(events, 2), TopicSpec(changelog, 2, compacted=True)])
        assert admin.topic_configs(changelog)["cleanup.policy"] == "compact"
        # Kafka reports its default ("delete"); Tansu leaves a default out.
        assert admin.topic_configs(events).get("cleanup.policy", "delete") == "delete"
    finally:
        admin.close()


@pytest.mark.skipif(len(installed_clients()) < 2, reason="needs both clients")
def test_both_clients_put_a_key_on_the_same_partition(kafka_bootstrap, unique_name):
    topic = make_topic(KafkaClientConfig(kafka_bootstrap), unique_name("partitioner"), 6)
    keys = [f"stream-{i}".encode() for i in range(60)]
    for client in ("kafka-python", "confluent"):
        produce(
            KafkaClientConfig(kafka_bootstrap, client=client),
            topic,
            [(k, client.encode()) for k in keys],
        )
    records = read_all(KafkaClientConfig(kafka_bootstrap), [(topic, p) for p in range(6)])
    where = {(r.value, r.key): r.partition for r in records}
    assert len(where) == 120
    assert all(where[(b"kafka-python", k)] == where[(b"confluent", k)] for k in keys)
    assert len({where[(b"confluent", k)] for k in keys}) > 1


@pytest.mark.timeout(60)
def test_dead_address_raises_broker_unavailable(kafka_client):
    dead = f"127.0.0.1:{free_port()}"
    cfg = KafkaClientConfig(dead, client=kafka_client, connect_timeout_s=1.0)
    for opener in (open_admin, open_producer, open_reader, lambda c: open_consumer(c, "g")):
        with pytest.raises(BrokerUnavailable, match=dead):
            opener(cfg)


@pytest.fixture
def private_broker() -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(BrokerSettings(port=free_port()))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.mark.timeout(60)
def test_flush_raises_when_the_broker_is_gone(kafka_client, private_broker, unique_name):
    cfg = KafkaClientConfig(
        private_broker.bootstrap, client=kafka_client, request_timeout_ms=3000, close_timeout_s=0.5
    )
    topic = make_topic(cfg, unique_name("gone"), partitions=1)
    producer = open_producer(cfg)
    try:
        producer.send(topic, b"k", b"v")
        producer.flush(10)
        private_broker.stop()
        producer.send(topic, b"k", b"lost")
        assert not producer.acknowledged(producer.mark())
        with pytest.raises(BrokerUnavailable, match=private_broker.bootstrap):
            producer.flush(2)
    finally:
        producer.close()


def test_callbacks_may_call_blocking_consumer_methods(kafka_config, unique_name):
    # The pipeline restores state in on_assign (committed offsets, a changelog
    # read) and commits in on_revoke: both must work inside the callbacks.
    topic = make_topic(kafka_config, unique_name("blocking"), partitions=2)
    produce(kafka_config, topic, [(b"k%d" % i, b"v") for i in range(20)])
    tps = [(topic, 0), (topic, 1)]
    seen: dict[str, object] = {}
    group = unique_name("blocking")
    consumer = open_consumer(kafka_config, group)

    def on_assign(assigned):
        seen["committed"] = consumer.committed(assigned)
        seen["restored"] = len(read_all(kafka_config, assigned))
        consumer.seek(assigned[0], 0)

    def on_revoke(revoked):
        if revoked:  # also on close: the last chance to commit
            consumer.commit(consumer.end_offsets(revoked))  # everything was read

    try:
        consumer.subscribe([topic], on_assign, on_revoke)
        assert len(poll_until(consumer, 20)) == 20
    finally:
        consumer.close()
    assert seen["committed"] == dict.fromkeys(tps)
    assert seen["restored"] == 20
    probe = open_consumer(kafka_config, group)
    try:
        assert sum(probe.committed(tps).values()) == 20
    finally:
        probe.close()


def test_sends_are_acknowledged_without_a_flush(kafka_config, unique_name):
    topic = make_topic(kafka_config, unique_name("inflight"), partitions=2)
    producer = open_producer(kafka_config)
    try:
        producer.send_many(topic, [(b"k%d" % i, b"v" * 100) for i in range(2000)])
        assert wait_acknowledged(producer, producer.mark())
    finally:
        producer.close()
    assert len(read_all(kafka_config, [(topic, 0), (topic, 1)])) == 2000


def wait_acknowledged(producer, mark: int, timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while not producer.acknowledged(mark) and time.monotonic() < deadline:
        time.sleep(0.01)
    return producer.acknowledged(mark)


def test_marks_are_acknowledged_in_order_without_a_flush(kafka_config, unique_name):
    topic = make_topic(kafka_config, unique_name("marks"), partitions=3)
    producer = open_producer(kafka_config)
    try:
        empty = producer.mark()
        assert wait_acknowledged(producer, empty)  # nothing sent before it
        producer.send_many(topic, [(b"k%d" % i, b"v" * 100) for i in range(3000)])
        first = producer.mark()
        producer.send(topic, b"one", b"more", partition=1)
        producer.send(topic, b"h", b"v", headers=[("h", b"1")])
        second = producer.mark()
        assert first > empty and second > first
        assert wait_acknowledged(producer, second)
        assert producer.acknowledged(first)  # an older mark stays acknowledged
        producer.send(topic, b"late", b"v")  # sent after the mark: not part of it
        assert producer.acknowledged(second)
        producer.flush(10)
        assert producer.acknowledged(producer.mark())
    finally:
        producer.close()
    assert len(read_all(kafka_config, [(topic, p) for p in range(3)])) == 3003


@pytest.mark.timeout(60)
def test_a_failed_send_is_raised_and_no_later_mark_is_acknowledged(
    kafka_client, private_broker, unique_name
):
    cfg = KafkaClientConfig(
        private_broker.bootstrap, client=kafka_client, request_timeout_ms=2000, close_timeout_s=0.5
    )
    topic = make_topic(cfg, unique_name("lost"), partitions=1)
    producer = open_producer(cfg)
    try:
        producer.send(topic, b"k", b"v")
        before = producer.mark()
        assert wait_acknowledged(producer, before)
        private_broker.stop()
        producer.send(topic, b"k", b"lost")
        lost = producer.mark()
        assert not producer.acknowledged(lost)  # in flight: the broker is gone
        if kafka_client == "confluent":  # fails at message.timeout.ms (= request timeout)
            deadline = time.monotonic() + 30
            with pytest.raises(BrokerUnavailable, match=private_broker.bootstrap):
                while time.monotonic() < deadline:
                    producer.acknowledged(lost)
                    time.sleep(0.05)
        else:  # kafka-python fails it at its delivery timeout (2 min): flush gives up first
            with pytest.raises(BrokerUnavailable, match=private_broker.bootstrap):
                producer.flush(2)
        later = producer.mark()
        assert producer.acknowledged(before)
        for mark in (lost, later):  # the failure is never passed
            with contextlib.suppress(BrokerUnavailable):
                assert not producer.acknowledged(mark)
    finally:
        producer.close()


def producer_settings(producer: Producer) -> dict[str, object]:
    """The ordering and size settings a producer was opened with, one spelling for both."""
    if isinstance(producer, KafkaPythonProducer):
        conf = producer._p.config
        idempotence, acks = conf["enable_idempotence"], conf["acks"]
        in_flight, limit = conf["max_in_flight_requests_per_connection"], conf["max_request_size"]
    else:
        conf = _producer_conf(producer.cfg)
        idempotence, acks = conf["enable.idempotence"], conf["acks"]
        in_flight = conf.get("max.in.flight.requests.per.connection", 5)  # librdkafka's default
        limit = conf["message.max.bytes"]
    acks = {"-1": "all"}.get(str(acks), str(acks))  # kafka-python keeps "all" as -1
    got = {"idempotence": idempotence, "acks": acks, "max_request_bytes": limit}
    return got if idempotence else {**got, "in_flight": in_flight}


@pytest.mark.parametrize(
    ("acks", "expected"),
    [
        ("all", {"idempotence": True, "acks": "all"}),
        ("1", {"idempotence": False, "acks": "1", "in_flight": 1}),
    ],
)
def test_producers_keep_send_order_across_retries(kafka_config, unique_name, acks, expected):
    """Idempotent with acks=all (the broker accepts it: records arrive once, in
    order), else one request in flight: a retry never reorders two snapshots."""
    cfg = dataclasses.replace(kafka_config, acks=acks, max_request_bytes=2 * 1024 * 1024)
    topic = make_topic(cfg, unique_name("order"), partitions=1)
    producer = open_producer(cfg)
    try:
        got = producer_settings(producer)
        assert got == {**expected, "max_request_bytes": 2 * 1024 * 1024}
        producer.send_many(topic, [(b"k", str(i).encode()) for i in range(500)])
        producer.flush(10)
    finally:
        producer.close()
    values = [r.value for r in read_all(cfg, [(topic, 0)])]
    assert values == [str(i).encode() for i in range(500)]


def test_a_record_over_the_request_limit_raises_record_too_large(kafka_config, unique_name):
    """Refused by the client at send, with its own error (not "cannot reach Kafka"),
    and the producer stays usable: what was sent before and after is delivered."""
    cfg = dataclasses.replace(kafka_config, max_request_bytes=64 * 1024)
    topic = make_topic(cfg, unique_name("big"), partitions=1)
    producer = open_producer(cfg)
    try:
        producer.send(topic, b"k", b"before")
        with pytest.raises(RecordTooLarge, match="over the producer's limit"):
            producer.send(topic, b"k", b"x" * (128 * 1024))
        producer.send(topic, b"k", b"after")
        mark = producer.mark()
        producer.flush(10)
        assert producer.acknowledged(mark)
    finally:
        producer.close()
    assert [r.value for r in read_all(cfg, [(topic, 0)])] == [b"before", b"after"]


def test_send_many_stops_at_a_record_over_the_limit_and_later_marks_still_pass(
    kafka_config, unique_name
):
    """The records before the refused one are sent, those after it are not, and
    the producer's marks still drain (no count is left waiting for them)."""
    cfg = dataclasses.replace(kafka_config, max_request_bytes=64 * 1024)
    topic = make_topic(cfg, unique_name("bigmany"), partitions=1)
    producer = open_producer(cfg)
    try:
        records = [(b"k", b"1"), (b"k", b"x" * (128 * 1024)), (b"k", b"never")]
        with pytest.raises(RecordTooLarge):
            producer.send_many(topic, records)
        producer.send(topic, b"k", b"2")
        mark = producer.mark()
        deadline = time.monotonic() + 10
        while not producer.acknowledged(mark):
            assert time.monotonic() < deadline, "the mark after a refused record never passed"
            time.sleep(0.01)
    finally:
        producer.close()
    assert [r.value for r in read_all(cfg, [(topic, 0)])] == [b"1", b"2"]
