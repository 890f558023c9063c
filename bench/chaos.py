"""A chaos run: replicas SIGKILLed and frozen, the broker frozen, then every output checked.

    .venv/bin/python bench/chaos.py --minutes 3   # --replicas 3 --client kafka-python --seed N

By hand, bounded in time (``--minutes``). It starts its own embedded broker
(so that it can freeze it) and ``--replicas`` ``streamcell serve`` processes
in one group, feeds events at ``--rate`` per second over ``--streams``
streams, and meanwhile, every few seconds (``--mean-gap-s``, exponential),
injects one fault at random:

- ``kill``: SIGKILL a replica, restart it a moment later;
- ``freeze``: SIGSTOP a replica for 1-12 s, then SIGCONT (past the 3 s
  session timeout the group evicts it: a zombie when it wakes up);
- ``broker``: SIGSTOP the broker for 3-15 s, then SIGCONT.

Then the feed stops, the faults stop, and once the group has committed every
input offset the replicas stop and the verifier reads every output, as Kafka
Streams' ``streams_eos_test`` does: the input, the predictions, the
changelog. The reference is the model run offline over the input in order
(``tests/pipeline_support.Offline``, the tests' own reference). It prints
whether every event was predicted, whether every prediction (duplicates
included) equals the reference byte for byte, and whether every stream's
final state in the changelog (the record a restore would pick) equals the
reference's; the exit status is 0 only when all three hold.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = ["core", "service", "trainer", "demo", "protos"]
# This checkout's code, here and in the processes started (as tests/conftest.py does).
os.environ["PYTHONPATH"] = os.pathsep.join(str(REPO / root) for root in SOURCE_ROOTS)
sys.path[:0] = [str(REPO / root) for root in SOURCE_ROOTS] + [str(REPO / "tests")]

from broker_support import start_embedded_broker, stop_process  # noqa: E402
from pipeline_support import (  # noqa: E402
    Offline,
    Serve,
    Topics,
    distinct,
    events,
    load,
    make_model,
    read_all,
    serve_args,
)

from streamcell.core.errors import StreamcellError  # noqa: E402
from streamcell.service.kafka import (  # noqa: E402
    KafkaClientConfig,
    open_consumer,
    open_producer,
)


class Feed(threading.Thread):
    """Events at a steady rate until stopped; a failed flush is retried with a new producer
    (an event may then be in the input twice: the reference reads the input as it is)."""

    def __init__(self, cfg: KafkaClientConfig, topic: str, records, rate: float) -> None:
        super().__init__(name="feed", daemon=True)
        self.cfg, self.topic, self.records, self.rate = cfg, topic, records, rate
        self.stop = threading.Event()
        self.sent = 0
        self.retries = 0

    def run(self) -> None:
        chunk = max(1, int(self.rate / 10))
        producer = open_producer(self.cfg)
        start = time.monotonic()
        try:
            while self.sent < len(self.records) and not self.stop.is_set():
                part = self.records[self.sent : self.sent + chunk]
                try:
                    producer.send_many(self.topic, part)
                    producer.flush(60.0)
                except StreamcellError:
                    self.retries += 1
                    producer.close()
                    time.sleep(1.0)
                    producer = open_producer(self.cfg)
                    continue
                self.sent += len(part)
                ahead = start + self.sent / self.rate - time.monotonic()
                if ahead > 0:
                    self.stop.wait(ahead)
        finally:
            producer.close()


class Cluster:
    """The replicas; each fault is logged with its time."""

    def __init__(self, root: Path, args: list[str], replicas: int, broker) -> None:
        self.root, self.args, self.broker = root, args, broker
        self.serves = [self._start(k) for k in range(replicas)]
        self.faults: Counter[str] = Counter()
        self.t0 = time.monotonic()

    def _start(self, k: int) -> Serve:
        return Serve(self.root / f"replica-{k}.log", self.args)

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {text}", flush=True)

    def kill(self, rng: random.Random) -> None:
        k = rng.randrange(len(self.serves))
        self.say(f"SIGKILL replica {k}")
        self.serves[k].kill()
        time.sleep(rng.uniform(0.0, 2.0))
        self.serves[k] = self._start(k)
        self.faults["kill"] += 1

    def freeze(self, rng: random.Random) -> None:
        k = rng.randrange(len(self.serves))
        seconds = rng.uniform(1.0, 12.0)
        self.say(f"SIGSTOP replica {k} for {seconds:.1f}s")
        proc = self.serves[k].proc
        proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            proc.send_signal(signal.SIGCONT)
        self.faults["freeze"] += 1

    def freeze_broker(self, rng: random.Random) -> None:
        seconds = rng.uniform(3.0, 15.0)
        self.say(f"SIGSTOP the broker for {seconds:.1f}s")
        self.broker.send_signal(signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            self.broker.send_signal(signal.SIGCONT)
        self.faults["broker"] += 1

    def check_alive(self) -> None:
        for k, serve in enumerate(self.serves):
            code = serve.proc.poll()
            if code is not None:
                raise SystemExit(f"replica {k} exited {code}:\n{serve.text()[-3000:]}")

    def stop(self) -> list[int]:
        return [serve.terminate() for serve in self.serves]


def committed(cfg: KafkaClientConfig, topics: Topics, partitions: int) -> int:
    consumer = open_consumer(cfg, topics.group)
    try:
        got = consumer.committed([(topics.input, p) for p in range(partitions)])
    finally:
        consumer.close()
    return sum(o or 0 for o in got.values())


def verify(cfg: KafkaClientConfig, topics: Topics, partitions: int, version: Path) -> bool:
    inputs = read_all(cfg, topics.input, partitions)
    outputs = read_all(cfg, topics.output, partitions)
    offline = Offline(load(version), inputs)
    got = distinct(outputs)
    expected = offline.expected
    missing = set(expected) - set(got)
    unknown = set(got) - set(expected)
    wrong = [k for k in set(got) & set(expected) if got[k] != {expected[k]}]
    print(f"input events {len(inputs)}, predictions expected {len(expected)}")
    print(f"prediction records {len(outputs)} ({len(outputs) - len(got)} duplicates)")
    delivered = not missing and not unknown
    print(
        f"ALL-RECORDS-DELIVERED: {delivered} ({len(missing)} events without a prediction, "
        f"{len(unknown)} predictions of unknown events)"
    )
    exact = not wrong
    print(f"PREDICTIONS-EXACT: {exact} ({len(wrong)} (stream, offset) with a differing value)")
    changelog = read_all(cfg, topics.changelog, partitions)
    try:
        offline.check_changelog(changelog)
        states = True
        why = f"{len(offline.predictor.store)} streams"
    except AssertionError as exc:
        states, why = False, str(exc).splitlines()[0]
    print(f"FINAL-STATES-EXACT: {states} ({why}; {len(changelog)} changelog records)")
    return delivered and exact and states


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--streams", type=int, default=48)
    ap.add_argument("--rate", type=float, default=100.0, help="events per second")
    ap.add_argument("--mean-gap-s", type=float, default=6.0, help="mean time between faults")
    ap.add_argument("--client", default="kafka-python")
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"chaos: {a.minutes} min, {a.replicas} replicas, client {a.client}, seed {seed}")
    root = Path(tempfile.mkdtemp(prefix="chaos-"))
    broker, bootstrap = start_embedded_broker()
    cluster = None
    feed = None
    try:
        cfg = KafkaClientConfig(bootstrap, client=a.client)
        topics = Topics("chaos")
        topics.create(cfg, a.partitions)
        version = make_model(root / "reg")
        steps = int(a.minutes * 60 * a.rate / a.streams) + 1
        args = serve_args(bootstrap, a.client, root / "reg", topics)
        cluster = Cluster(root, args, a.replicas, broker)
        for serve in cluster.serves:
            serve.wait_assigned(120)
        feed = Feed(cfg, topics.input, events(a.streams, steps), a.rate)
        feed.start()
        deadline = time.monotonic() + a.minutes * 60
        actions = [cluster.kill, cluster.freeze, cluster.freeze_broker]
        while time.monotonic() < deadline:
            time.sleep(min(rng.expovariate(1 / a.mean_gap_s), max(deadline - time.monotonic(), 0)))
            if time.monotonic() >= deadline:
                break
            cluster.check_alive()
            rng.choice(actions)(rng)
        feed.stop.set()
        feed.join(120)
        cluster.say(f"faults over; {feed.sent} events fed ({feed.retries} feed retries)")
        total = feed.sent
        wait_until = time.monotonic() + 300
        while committed(cfg, topics, a.partitions) < total:
            cluster.check_alive()
            if time.monotonic() > wait_until:
                print("the group never committed every event within 300 s")
                break
            time.sleep(1.0)
        cluster.say("every input offset committed; stopping the replicas")
        codes = cluster.stop()
        cluster.say(f"replicas exited {codes}; faults injected: {dict(cluster.faults)}")
        ok = verify(cfg, topics, a.partitions, version)
        print(f"logs in {root}")
        return 0 if ok and codes == [0] * a.replicas else 1
    finally:
        if feed is not None:
            feed.stop.set()
        if cluster is not None:
            for serve in cluster.serves:
                if serve.proc.poll() is None:
                    serve.proc.send_signal(signal.SIGCONT)
                    serve.kill()
        if broker.poll() is None:
            broker.send_signal(signal.SIGCONT)
        stop_process(broker)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.TimeoutExpired as exc:
        sys.exit(f"timed out: {exc}")
