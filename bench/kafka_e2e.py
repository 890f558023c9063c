"""End to end over Kafka: streamcell serve against the transport's limit and the naive design.

    python bench/kafka_e2e.py [--events 500000] [--streams 10000] [--clients confluent,kafka-python]
        [--latency] [--replicas 2]

One run, one broker (the embedded one, started here), one preloaded input
topic of E JSON events over S streams (8 features, seq per stream). For each
Kafka client:

(a) raw consume: the client library reads the E events, no processing (the
    transport's limit on this machine), measured two ways: counting each
    poll's records, and touching each value (its bytes taken into Python);
(b) ``streamcell serve`` (a subprocess, gRPC off, metrics on) in a fresh
    group with fresh output and changelog topics: events/s from its first
    prediction (the Kafka timestamp of the earliest prediction record, so
    model load and the group join are left out) to the moment the group's
    committed offsets cover all E events (polled every 20 ms), and to the
    last prediction's timestamp;
(d) the echo worker (bench/echo_worker.py: the same client and poll loop,
    consume and re-produce, no work) on the same events: events/s to its last
    output, the transport's limit for a service that produces a record per
    event; serve is also compared with the fastest client's echo;
(r) with ``--replicas N``: N serves started together in one group (one
    changelog) on the same preloaded topic, each its own output topic: events/s
    to the group's commit of all E, against (b), and the partitions each served;
(c) once per run: the naive design on the same events: per event json.loads,
    one torch.nn.LSTM call with (h, c) kept in a dict, the head, json.dumps.
    It gets the records already in memory (no Kafka cost), so (b)/(c) is
    conservative. Time-boxed (``--naive-seconds``).

Then the latency run (``--latency``): a fresh serve with the same client,
events produced at ``--latency-fraction`` (default 0.5) of the (b) rate for
``--latency-seconds``; p50/p99 of prediction timestamp - event timestamp, both
Kafka CreateTime (the producer's clock when the record was handed to the
client; one machine, one clock). Before it, the same input through
bench/echo_worker.py (consume and re-produce with the same client and loop
shape, no work): the floor that the transport itself puts under the latency.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from kafka_bench import bench_raw, make_messages

from streamcell.core.checkpoint import ModelConfig, save_checkpoint
from streamcell.core.model import StreamingLSTM
from streamcell.service.broker import BrokerSettings, EmbeddedBroker, free_port
from streamcell.service.codec import decode_prediction
from streamcell.service.kafka import (
    KafkaClientConfig,
    TopicSpec,
    installed_clients,
    open_admin,
    open_consumer,
    open_producer,
    open_reader,
)

INPUT, HIDDEN, LAYERS = 8, 64, 2
MODEL = "bench"


def make_registry(root: Path) -> Path:
    torch.manual_seed(0)
    model = StreamingLSTM(INPUT, HIDDEN, LAYERS, INPUT)
    names = tuple(f"f{k}" for k in range(INPUT))
    zeros, ones = (0.0,) * INPUT, (1.0,) * INPUT
    save_checkpoint(
        root,
        MODEL,
        model,
        ModelConfig(INPUT, HIDDEN, LAYERS, INPUT, names, names, zeros, ones, zeros, ones),
    )
    return root


def produce_all(bootstrap: str, topic: str, messages, partitions: int) -> None:
    cfg = KafkaClientConfig(bootstrap, client=_fast_client())
    admin = open_admin(cfg)
    admin.ensure_topics([TopicSpec(topic, partitions)])
    admin.close()
    producer = open_producer(cfg)
    for k in range(0, len(messages), 20_000):
        producer.send_many(topic, messages[k : k + 20_000])
    producer.flush(300)
    producer.close()


def _fast_client() -> str:
    return "confluent" if "confluent" in installed_clients() else "kafka-python"


def prediction_format(args) -> str:
    """The format serve writes its predictions in: ``--prediction-format`` of ``--serve-args``."""
    words = args.serve_args.split()
    return (
        words[words.index("--prediction-format") + 1] if "--prediction-format" in words else "json"
    )


def read_topic(bootstrap: str, topic: str, partitions: int):
    reader = open_reader(KafkaClientConfig(bootstrap, client=_fast_client()))
    try:
        return [
            r for b in reader.read_to_end([(topic, p) for p in range(partitions)], 600) for r in b
        ]
    finally:
        reader.close()


class Serve:
    """``streamcell serve`` as a subprocess with its own output topic.

    Its own group, changelog and dead-letter topics too, unless ``group_tag``
    names those of a group it joins as one more replica.
    """

    def __init__(
        self,
        bootstrap: str,
        registry: Path,
        client: str,
        input_topic: str,
        args,
        group_tag: str | None = None,
    ) -> None:
        tag = uuid.uuid4().hex[:8]
        shared = group_tag or tag
        self.group = f"e2e-{client}-{shared}"
        self.output = f"{input_topic}.pred-{tag}"
        self.log = open(Path(tempfile.gettempdir()) / f"kafka_e2e_serve_{tag}.log", "w")  # noqa: SIM115
        cmd = [
            sys.executable, "-m", "streamcell.cli", "--log-level", "WARNING", "serve",
            "--registry", str(registry), "--model", MODEL,
            "--bootstrap-servers", bootstrap, "--kafka-client", client,
            "--group-id", self.group, "--client-id", f"{self.group}-{tag}",
            "--input-topic", input_topic, "--output-topic", self.output,
            "--dead-letter-topic", f"{input_topic}.dlq-{shared}",
            "--changelog-topic", f"{input_topic}.changelog-{shared}",
            "--max-streams", str(max(args.streams * 2, 1000)),
            "--max-batch", str(args.max_batch),
            "--poll-registry-s", "0", "--metrics-port", "0", "--no-grpc",
            *args.serve_args.split(),
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Echo(Serve):
    """bench/echo_worker.py as a subprocess: the same transport, no work (latency floor)."""

    def __init__(self, bootstrap: str, registry: Path, client: str, input_topic: str, args) -> None:
        tag = uuid.uuid4().hex[:8]
        self.group = f"echo-{client}-{tag}"
        self.output = f"{input_topic}.echo-{tag}"
        self.log = open(Path(tempfile.gettempdir()) / f"kafka_e2e_echo_{tag}.log", "w")  # noqa: SIM115
        # Created here with the input's partition count, as serve creates its
        # own: an auto-created topic gets the broker's default count, and
        # read_topic reads only the input's (a quarter of the echo's outputs
        # went unread before).
        admin = open_admin(KafkaClientConfig(bootstrap, client=_fast_client()))
        admin.ensure_topics([TopicSpec(self.output, args.partitions)])
        admin.close()
        worker = Path(__file__).with_name("echo_worker.py")
        cmd = [
            sys.executable, str(worker), bootstrap, client, self.group, input_topic,
            self.output, str(args.max_batch), "5",
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)


def wait_committed(
    bootstrap: str,
    client: str,
    group: str,
    topic: str,
    partitions: int,
    total: int,
    timeout_s: float,
    serve: Serve | list[Serve],
    samples: list[tuple[float, int, float]] | None = None,
) -> float:
    """time.time() when the group's committed offsets first cover ``total`` events.

    ``samples`` collects (time, events committed, CPU seconds of the workers) per check.
    """
    workers = serve if isinstance(serve, list) else [serve]
    probe = open_consumer(KafkaClientConfig(bootstrap, client=client, client_id="e2e-probe"), group)
    tps = [(topic, p) for p in range(partitions)]
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            done = sum(o or 0 for o in probe.committed(tps).values())
            if samples is not None:
                cpu = sum(cpu_seconds(w.proc.pid) for w in workers)
                samples.append((time.time(), done, cpu))
            if done >= total:
                return time.time()
            for w in workers:
                if w.proc.poll() is not None:
                    raise RuntimeError(f"serve exited with {w.proc.returncode}; see {w.log.name}")
            time.sleep(0.02)
    finally:
        probe.close()
    logs = ", ".join(w.log.name for w in workers)
    raise RuntimeError(f"serve did not commit {total} events within {timeout_s} s; see {logs}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_serve(bootstrap, registry, client, topic, args, worker=Serve) -> dict:
    serve = worker(bootstrap, registry, client, topic, args)
    samples: list[tuple[float, int, float]] = []
    try:
        committed_at = wait_committed(
            bootstrap,
            client,
            serve.group,
            topic,
            args.partitions,
            args.events,
            args.timeout,
            serve,
            samples,
        )
    finally:
        serve.stop()
    # CPU rate: events committed per CPU second of serve, from its first commit to the last
    _, done0, cpu0 = next(s for s in samples if s[1] > 0)
    _, done1, cpu1 = samples[-1]
    predictions = read_topic(bootstrap, serve.output, args.partitions)
    stamps = np.array([r.timestamp_ms for r in predictions], np.float64) / 1000
    first, last = stamps.min(), stamps.max()
    docs = [decode_prediction(r.value, prediction_format(args)) for r in predictions]
    unique = {(doc["partition"], doc["offset"]) for doc in docs}
    return {
        "predictions": len(predictions),
        "unique_predictions": len(unique),
        "serve_to_commit": args.events / (committed_at - first),
        "serve_to_last_prediction": args.events / (last - first),
        "seconds_to_commit": committed_at - first,
        "serve_cpu": (done1 - done0) / max(cpu1 - cpu0, 1e-9),
        "bytes_per_prediction": sum(len(r.value) for r in predictions) / max(len(predictions), 1),
    }


def bench_replicas(bootstrap, registry, client, topic, args, replicas: int) -> dict:
    """``replicas`` serves started together in one group on the preloaded topic.

    Events/s from the first prediction of any replica until the group's
    commits cover all E; per replica, the input partitions it predicted for.
    A partition predicted by two replicas means a rebalance moved it during
    the run (the replicas did not join in one generation): reported, as it
    costs a restore from the changelog and the events redone.
    """
    tag = uuid.uuid4().hex[:8]
    serves = [
        Serve(bootstrap, registry, client, topic, args, group_tag=tag) for _ in range(replicas)
    ]
    samples: list[tuple[float, int, float]] = []
    try:
        committed_at = wait_committed(
            bootstrap,
            client,
            serves[0].group,
            topic,
            args.partitions,
            args.events,
            args.timeout,
            serves,
            samples,
        )
    finally:
        for serve in serves:
            serve.stop()
    _, done0, cpu0 = next(s for s in samples if s[1] > 0)
    _, done1, cpu1 = samples[-1]
    firsts, owned, predictions = [], [], 0
    for serve in serves:
        records = read_topic(bootstrap, serve.output, args.partitions)
        predictions += len(records)
        if records:
            firsts.append(min(r.timestamp_ms for r in records) / 1000)
        fmt = prediction_format(args)
        owned.append(sorted({decode_prediction(r.value, fmt)["partition"] for r in records}))
    seen = [p for parts in owned for p in parts]
    return {
        "replicas": replicas,
        "serve_to_commit": args.events / (committed_at - min(firsts)),
        "serve_cpu": (done1 - done0) / max(cpu1 - cpu0, 1e-9),
        "predictions": predictions,
        "partitions_per_replica": owned,
        "rebalanced": len(seen) != len(set(seen)),
    }


def bench_naive(records, seconds: float) -> tuple[float, float]:
    """Per event: decode, one nn.LSTM call with dict state, head, encode.

    Returns (events per second, events per CPU second)."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(INPUT, HIDDEN, LAYERS, batch_first=True).eval()
    head = torch.nn.Linear(HIDDEN, INPUT).eval()
    states: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    zero = torch.zeros(LAYERS, 1, HIDDEN)
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for r in records:
            event = json.loads(r.value)
            stream = r.key.decode()
            x = torch.tensor(event["x"], dtype=torch.float32).view(1, 1, INPUT)
            out, state = lstm(x, states.get(stream, (zero, zero)))
            states[stream] = state
            y = head(out[0, -1]).tolist()
            json.dumps({"stream": stream, "offset": r.offset, "yhat": y}).encode()
            done += 1
            if done % 256 == 0 and time.perf_counter() - start > seconds:
                break
    return done / (time.perf_counter() - start), done / (time.process_time() - cpu)


def bench_latency(bootstrap, registry, client, rate: float, args, worker=Serve) -> dict:
    topic = f"lat-{uuid.uuid4().hex[:8]}"
    cfg = KafkaClientConfig(bootstrap, client=_fast_client(), client_id="e2e-latency")
    admin = open_admin(cfg)
    admin.ensure_topics([TopicSpec(topic, args.partitions)])
    admin.close()
    total = int(rate * args.latency_seconds)
    messages = make_messages(total + 100, args.streams, seed=1)
    warmup, paced = messages[:100], messages[100:]
    serve = worker(bootstrap, registry, client, topic, args)
    producer = open_producer(cfg)
    try:
        producer.send_many(topic, warmup)
        producer.flush()
        wait_committed(
            bootstrap, client, serve.group, topic, args.partitions, 100, args.timeout, serve
        )
        step = max(1, int(rate / 200))  # 200 sends per second
        began = time.monotonic()
        paced_from_ms = time.time() * 1000  # the warm-up events (group join) are left out
        for k in range(0, total, step):
            wait = began + k / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            producer.send_many(topic, paced[k : k + step])
        producer.flush()
        achieved = total / (time.monotonic() - began)
        wait_committed(
            bootstrap, client, serve.group, topic, args.partitions, total + 100, args.timeout, serve
        )
    finally:
        producer.close()
        serve.stop()
    events = {
        (r.partition, r.offset): r.timestamp_ms
        for r in read_topic(bootstrap, topic, args.partitions)
    }
    lat, sent = [], []
    for r in read_topic(bootstrap, serve.output, args.partitions):
        v = decode_prediction(r.value, prediction_format(args))
        sent_ms = events.get((v["partition"], v["offset"]))
        if sent_ms is not None and sent_ms >= paced_from_ms:
            lat.append(r.timestamp_ms - sent_ms)
            sent.append(sent_ms)
    latency = np.array(lat, np.float64)
    second = ((np.array(sent, np.float64) - paced_from_ms) // 1000).astype(np.int64)
    # Per second of the paced input (by event time): a tail spread over the run
    # (a periodic stall) reads differently from one in its first seconds (warm-up).
    by_second = [float(np.percentile(latency[second == k], 99)) for k in np.unique(second).tolist()]
    return {
        "rate": rate,
        "achieved_rate": achieved,
        "events": len(latency),
        "p50_ms": float(np.percentile(latency, 50)),
        "p99_ms": float(np.percentile(latency, 99)),
        "max_ms": float(latency.max()),
        "p99_by_second_ms": by_second,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=500_000)
    p.add_argument("--streams", type=int, default=10_000)
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--max-batch", type=int, default=1024)
    p.add_argument("--clients", type=lambda s: s.split(","), default=installed_clients())
    p.add_argument("--naive-seconds", type=float, default=10.0)
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="also run this many serve replicas in one group on the same input (needs "
        "--partitions at least as many)",
    )
    p.add_argument("--latency", action="store_true", help="also run the latency test")
    p.add_argument("--latency-fraction", type=float, default=0.5)
    p.add_argument(
        "--latency-rate",
        type=float,
        help="events/s for the latency run instead of the fraction of (b): "
        "the same load for runs to compare",
    )
    p.add_argument("--latency-seconds", type=float, default=15.0)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument(
        "--serve-args", default="", help='extra flags for serve, e.g. "--commit-interval-ms 5000"'
    )
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args()
    if args.replicas > args.partitions:
        p.error(f"--replicas {args.replicas} needs at least as many --partitions")
    torch.set_num_threads(1)

    results: dict = {"events": args.events, "streams": args.streams, "clients": {}}
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(BrokerSettings(port=free_port())) as broker,
    ):
        bootstrap = broker.bootstrap
        registry = make_registry(Path(tmp) / "registry")
        topic = f"e2e-{uuid.uuid4().hex[:8]}"
        messages = make_messages(args.events, args.streams)
        produce_all(bootstrap, topic, messages, args.partitions)
        del messages
        print(
            f"preloaded {args.events:,} events over {args.streams:,} streams "
            f"into {args.partitions} partitions"
        )

        records = read_topic(bootstrap, topic, args.partitions)
        naive, naive_cpu = bench_naive(records, args.naive_seconds)
        del records
        results["naive"], results["naive_cpu"] = naive, naive_cpu
        print(
            f"(c) naive, one nn.LSTM call per event:   {naive:>10,.0f} events/s "
            f"({naive_cpu:,.0f} per CPU second)"
        )

        echoes: dict[str, float] = {}
        for client in args.clients:
            cfg = KafkaClientConfig(bootstrap, client=client)
            raw, raw_cpu = bench_raw(cfg, topic, args.partitions, args.events, 10_000)
            touched, touched_cpu = bench_raw(
                cfg, topic, args.partitions, args.events, 10_000, touch=True
            )
            serve = bench_serve(bootstrap, registry, client, topic, args)
            b, b_cpu = serve["serve_to_commit"], serve["serve_cpu"]
            # (d): the echo worker, consume and produce with no work, to its last output
            # (it commits once a second, so its commit time says little)
            echo = bench_serve(bootstrap, registry, client, topic, args, Echo)
            d = echoes[client] = echo["serve_to_last_prediction"]
            row = {
                "echo_to_last_output": d,
                "b_over_d": serve["serve_to_last_prediction"] / d,
                "echo_cpu": echo["serve_cpu"],
                "cpu_b_over_d": b_cpu / max(echo["serve_cpu"], 1e-9),
                "raw_consume": raw,
                "raw_consume_cpu": raw_cpu,
                "raw_consume_touched": touched,
                "raw_consume_touched_cpu": touched_cpu,
                **serve,
                "b_over_a": b / raw,
                "b_over_c": b / naive,
                "cpu_b_over_a": b_cpu / raw_cpu,
                "cpu_b_over_c": b_cpu / naive_cpu,
            }
            print(
                f"{client:>13}: (a) raw consume, counting records {raw:,.0f}/s "
                f"({raw_cpu:,.0f} per CPU s); touching each value {touched:,.0f}/s "
                f"({touched_cpu:,.0f} per CPU s)"
            )
            print(
                f"{'':>13}  (a) raw consume {raw:>10,.0f}/s  (b) serve {b:>9,.0f}/s "
                f"(to last prediction {serve['serve_to_last_prediction']:,.0f}/s; "
                f"{serve['predictions']:,} predictions, {serve['unique_predictions']:,} distinct)  "
                f"(b)/(a) = {b / raw:.2f}  (b)/(c) = {b / naive:.1f}"
            )
            print(
                f"{'':>13}  per CPU second: (a) {raw_cpu:,.0f}  (b) {b_cpu:,.0f}  "
                f"(c) {naive_cpu:,.0f}  (b)/(a) = {b_cpu / raw_cpu:.2f}  "
                f"(b)/(c) = {b_cpu / naive_cpu:.1f}"
            )
            print(
                f"{'':>13}  (d) echo, consume + produce, no work: {d:,.0f}/s to its last output; "
                f"serve to its last prediction / (d) = {row['b_over_d']:.2f}; per CPU second "
                f"(d) {echo['serve_cpu']:,.0f}, (b)/(d) = {row['cpu_b_over_d']:.2f}"
            )
            if args.replicas > 1:
                rep = bench_replicas(bootstrap, registry, client, topic, args, args.replicas)
                row["replicas"] = rep
                print(
                    f"{'':>13}  (r) {rep['replicas']} replicas in one group: "
                    f"{rep['serve_to_commit']:,.0f}/s to commit = "
                    f"{rep['serve_to_commit'] / b:.2f} x one replica (b); per CPU second "
                    f"{rep['serve_cpu']:,.0f} = {rep['serve_cpu'] / max(b_cpu, 1e-9):.2f} x (b); "
                    f"partitions per replica {rep['partitions_per_replica']}"
                    + ("; A REBALANCE MOVED PARTITIONS DURING THE RUN" if rep["rebalanced"] else "")
                )
            if args.latency:
                rate = args.latency_rate or b * args.latency_fraction
                for name, worker in (("echo", Echo), ("serve", Serve)):
                    lat = bench_latency(bootstrap, registry, client, rate, args, worker)
                    row["latency" if name == "serve" else "echo_latency"] = lat
                    print(
                        f"{'':>13}  {name:>5} latency at {lat['achieved_rate']:,.0f} events/s: "
                        f"p50 {lat['p50_ms']:.1f} ms  p99 {lat['p99_ms']:.1f} ms  "
                        f"max {lat['max_ms']:.0f} ms"
                    )
            results["clients"][client] = row
        # The floor for a service that writes a record per event: the fastest client's echo.
        fastest = max(echoes, key=echoes.__getitem__)
        results["fastest_echo"] = {"client": fastest, "rate": echoes[fastest]}
        for client, row in results["clients"].items():
            row["b_over_fastest_echo"] = row["serve_to_last_prediction"] / echoes[fastest]
            print(
                f"{client:>13}: serve to its last prediction / the fastest echo "
                f"({fastest}, {echoes[fastest]:,.0f}/s) = {row['b_over_fastest_echo']:.2f}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
