"""Helpers for the pipeline's integration tests: models, events, serve processes, checks.

The reference for every exactness check is the model run offline on the same
events (a fresh Predictor over each stream's events in Kafka order), which is
what an uninterrupted service computes; a second check compares it with
torch.nn.LSTM over the whole sequences.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from recipe_support import make_recipe_model

from streamcell.core.checkpoint import LoadedModel, ModelConfig, load_checkpoint, save_checkpoint
from streamcell.core.model import StreamingLSTM
from streamcell.core.predictor import PREDICTED, Predictor
from streamcell.core.state import StateStore
from streamcell.service import changelog, codec
from streamcell.service.kafka import (
    DEFAULT_CLIENT,
    KafkaClientConfig,
    Producer,
    Record,
    TopicSpec,
    open_admin,
    open_consumer,
    open_producer,
    open_reader,
)

INPUT = 3
# A lag model's recipe for events of INPUT values: it follows the first and
# takes the other two as covariates.
LAG_RECIPE = {
    "target": 0, "lags": [1, 2, 5], "scale_window": 4, "log_scale": True,
    "periods": [4], "age": True,
}  # fmt: skip
SESSION_MS = 3000
# The client of the single-client tests (the e2e test runs every installed one).
CLIENT = DEFAULT_CLIENT


def write_changelog(
    producer: Producer, topic: str, store: StateStore, changed: dict[str, int]
) -> tuple[int, int]:
    """Send the state of ``changed`` streams (stream -> partition) at once, as a checkpoint does.

    Streams still in the store get a snapshot, the others a tombstone; the
    caller flushes. Returns (snapshots, tombstones).
    """
    records = changelog.Snapshots(topic, store, changed)
    records.send(producer)
    return records.snapshots, records.tombstones


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_model(
    registry: Path,
    name: str = "m",
    seed: int = 0,
    hidden: int = 16,
    version: str | None = None,
    recipe: dict | None = None,
    layers: int = 2,
) -> Path:
    """A small random model: targets equal to its features (so it forecasts), or
    with ``recipe`` (e.g. LAG_RECIPE) one that predicts feature "a" from its history."""
    if recipe is not None:
        return make_recipe_model(registry, recipe, name, seed, hidden, version)
    torch.manual_seed(seed)
    model = StreamingLSTM(INPUT, hidden, layers, INPUT)
    feats = ("a", "b", "c")
    cfg = ModelConfig(
        INPUT, hidden, layers, INPUT, feats, feats,
        (0.5, 0.0, 1.0), (2.0, 1.0, 1.0), (0.5, 0.0, 1.0), (2.0, 1.0, 1.0),
    )  # fmt: skip
    return save_checkpoint(registry, name, model, cfg, version=version)


class Topics:
    """Fresh topic names for one test."""

    def __init__(self, prefix: str = "pipe") -> None:
        base = unique(prefix)
        self.input = base + ".events"
        self.output = base + ".predictions"
        self.dead = base + ".dead"
        self.changelog = base + ".changelog"
        self.group = base + ".group"

    def flags(self) -> list[str]:
        return [
            "--input-topic", self.input,
            "--output-topic", self.output,
            "--dead-letter-topic", self.dead,
            "--changelog-topic", self.changelog,
            "--group-id", self.group,
        ]  # fmt: skip

    def create(self, cfg: KafkaClientConfig, partitions: int) -> None:
        admin = open_admin(cfg)
        try:
            admin.ensure_topics(
                [
                    TopicSpec(self.input, partitions),
                    TopicSpec(self.output, partitions),
                    TopicSpec(self.dead, partitions),
                    TopicSpec(self.changelog, partitions, compacted=True),
                ]
            )
        finally:
            admin.close()


def events(
    streams: int, steps: int, seed: int = 1, first_seq: int = 0
) -> list[tuple[bytes, bytes]]:
    """Interleaved JSON events: step t of every stream, then step t+1; seq = first_seq + t."""
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(streams, steps, INPUT)).round(4)
    return [
        (f"s{s}".encode(), json.dumps({"seq": first_seq + t, "x": xs[s, t].tolist()}).encode())
        for t in range(steps)
        for s in range(streams)
    ]


def produce(cfg: KafkaClientConfig, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = open_producer(cfg)
    try:
        producer.send_many(topic, records)
        producer.flush()
    finally:
        producer.close()


def read_all(cfg: KafkaClientConfig, topic: str, partitions: int) -> list[Record]:
    reader = open_reader(cfg)
    try:
        out: list[Record] = []
        for batch in reader.read_to_end([(topic, p) for p in range(partitions)], 30.0):
            out.extend(batch)
        return out
    finally:
        reader.close()


def wait_for_predictions(
    cfg: KafkaClientConfig,
    topic: str,
    partitions: int,
    expected: int,
    timeout_s: float = 60,
    serving: list[Serve] | None = None,
    prediction_format: str = codec.FORMAT_JSON,
) -> list[Record]:
    """Read the output until it holds ``expected`` distinct (stream, offset) pairs."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = read_all(cfg, topic, partitions)
        if len(distinct(records, prediction_format)) >= expected or time.monotonic() > deadline:
            return records
        for serve in serving or []:
            code = serve.proc.poll()
            assert code is None, f"serve exited {code} with {len(records)} predictions out"
        time.sleep(0.5)


def committed_total(cfg: KafkaClientConfig, topics: Topics, partitions: int) -> int:
    """How many input events the group has committed, over all partitions."""
    consumer = open_consumer(cfg, topics.group)
    try:
        got = consumer.committed([(topics.input, p) for p in range(partitions)])
    finally:
        consumer.close()
    return sum(o or 0 for o in got.values())


def wait_committed(
    cfg: KafkaClientConfig, topics: Topics, partitions: int, total: int, *serving: Serve
) -> None:
    """Until the group committed ``total`` events.

    All predictions being out is not enough before a check of the changelog: a
    replica killed after its predictions were acknowledged, before its changelog
    and offsets followed, leaves those events to the next one to read again.
    """
    deadline = time.monotonic() + 120
    while committed_total(cfg, topics, partitions) < total:
        for serve in serving:
            assert serve.proc.poll() is None, f"serve exited:\n{serve.text()[-3000:]}"
        assert time.monotonic() < deadline, f"the group never committed {total} events"
        time.sleep(0.5)


def distinct(
    records: Iterable[Record], prediction_format: str = codec.FORMAT_JSON
) -> dict[tuple[str, int], set[bytes]]:
    out: dict[tuple[str, int], set[bytes]] = defaultdict(set)
    for rec in records:
        doc = codec.decode_prediction(rec.value, prediction_format)
        out[doc["stream"], doc["offset"]].add(rec.value)
    return out


class Offline:
    """The uninterrupted reference: a fresh Predictor over the input topic in order."""

    def __init__(
        self,
        loaded: LoadedModel,
        inputs: list[Record],
        event_format: str = codec.FORMAT_JSON,
        prediction_format: str = codec.FORMAT_JSON,
    ) -> None:
        self.predictor = Predictor(loaded)
        self.event_format = event_format
        self.prediction_format = prediction_format
        self.expected: dict[tuple[str, int], bytes] = {}
        self.invalid: list[codec.Invalid] = []
        self.then(None, inputs)

    def then(self, loaded: LoadedModel | None, inputs: list[Record]) -> Offline:
        """Switch to ``loaded`` (as a reload does), then apply more events."""
        if loaded is not None:
            self.predictor.swap(loaded)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            ordered = sorted(inputs, key=lambda r: (r.partition, r.offset))
            decoded = codec.decode(ordered, self.predictor.config.input_size, self.event_format)
            result = self.predictor.predict(decoded.batch, now=time.time())
        finally:
            torch.set_num_threads(threads)
        self.invalid += decoded.invalid
        self.batch, self.yhat, self.outcome = decoded.batch, result.yhat, result.outcome
        rows = np.flatnonzero(result.outcome == PREDICTED)
        for _, value in codec.encode_predictions(
            decoded.batch, result.yhat, rows, result.model, result.version,
            result.quantiles, result.levels, self.prediction_format,
        ):  # fmt: skip
            doc = codec.decode_prediction(value, self.prediction_format)
            self.expected[doc["stream"], doc["offset"]] = value
        return self

    def check_predictions(self, records: list[Record]) -> None:
        """Every event predicted, each exactly as offline; duplicates byte-identical."""
        got = distinct(records, self.prediction_format)
        missing = sorted(set(self.expected) - set(got))
        extra = sorted(set(got) - set(self.expected))
        assert not missing, f"{len(missing)} events have no prediction, e.g. {missing[:5]}"
        assert not extra, f"predictions for unknown events: {extra[:5]}"
        for key, values in got.items():
            assert len(values) == 1, f"{key}: duplicates differ: {values}"
            (value,) = values
            assert value == self.expected[key], f"{key}: {value!r} != {self.expected[key]!r}"

    def check_against_torch_lstm(self, model: LoadedModel) -> None:
        """The offline reference itself agrees with nn.LSTM over whole sequences."""
        cfg = model.config
        mean, std = np.asarray(cfg.input_mean), np.asarray(cfg.input_std)
        for stream in set(self.batch.streams):
            rows = [
                k
                for k, s in enumerate(self.batch.streams)
                if s == stream and self.outcome[k] == PREDICTED
            ]
            x = torch.from_numpy(((self.batch.x[rows] - mean) / std).astype(np.float32))
            with torch.no_grad():
                y, _ = model.model(x.unsqueeze(0))
            want = y[0].numpy() * np.asarray(cfg.target_std) + np.asarray(cfg.target_mean)
            np.testing.assert_allclose(self.yhat[rows], want, rtol=1e-4, atol=1e-5)

    def check_changelog(self, records: list[Record], detail: Iterable[str] | None = None) -> None:
        """The changelog's winning record per stream (the highest (generation, offset), as
        a restore picks it) is the offline final state.

        Every stream is present; the state of those in ``detail`` (all if None)
        is compared field by field (about 60 us a stream).
        """
        latest: dict[str, bytes | None] = {}
        best: dict[str, int] = {}
        for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
            stream, generation = rec.key.decode(), changelog.generation_of(rec.headers)
            if generation >= best.get(stream, changelog.NO_GENERATION):
                best[stream], latest[stream] = generation, rec.value
        ref = self.predictor.store
        live = {k: v for k, v in latest.items() if v is not None}
        assert sorted(live) == sorted(ref.stream_ids())
        store = StateStore(
            ref.num_layers,
            ref.hidden_size,
            ref.output_size,
            ref.input_size,
            buffer_size=ref.buffer_size,
        )
        store.restore(live.items())
        for stream in live if detail is None else detail:
            got, want = store.info(stream), ref.info(stream)
            assert got is not None and want is not None
            assert (got.events, got.partition, got.offset, got.seq) == (
                want.events,
                want.partition,
                want.offset,
                want.seq,
            ), stream
            assert torch.equal(got.h, want.h) and torch.equal(got.c, want.c), stream
            assert got.last_prediction == want.last_prediction, stream
            # A recipe model's history and scale (empty and None without one).
            assert (got.history, got.scale) == (want.history, want.scale), stream
            assert len(got.history) == min(got.events, ref.buffer_size), stream


# ------------------------------------------------------------------ processes
class Serve:
    """`streamcell serve` as a subprocess, logging to a file; always stopped by the test."""

    def __init__(self, log_path: Path, args: list[str]) -> None:
        if "--state-dir" not in args:  # one cold tier per log: a restart reuses it
            args = [*args, "--state-dir", str(log_path.with_suffix(".state"))]
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed in stop)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamcell.cli", "--log-level", "INFO", "serve", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self._mark = log_path.stat().st_size

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout_s: float = 60, since_start: bool = True) -> re.Match:
        deadline = time.monotonic() + timeout_s
        start = self._mark if since_start else 0
        while True:
            text = self.log_path.read_bytes()[start:].decode(errors="replace")
            m = re.search(pattern, text)
            if m:
                return m
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}:\n{text[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in the serve log:\n{text[-3000:]}")
            time.sleep(0.1)

    def wait_assigned(self, timeout_s: float = 60) -> None:
        self.wait_for(r"partitions assigned: \[\d", timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def terminate(self, timeout_s: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        finally:
            if self.proc.poll() is None:
                self.kill()
            self._log.close()

    def stop(self) -> None:
        """Last-resort cleanup (tests' finally); the log tail shows up if the test failed."""
        if self.proc.poll() is None:
            self.kill()
        self._log.close()
        lines = [ln for ln in self.text().splitlines() if " kafka." not in ln]
        print(f"--- {self.log_path} (kafka client lines left out):", *lines[-60:], sep="\n")


def serve_args(
    bootstrap: str, client: str, registry: Path, topics: Topics, *extra: str
) -> list[str]:
    return [
        "--registry", str(registry),
        "--model", "m",
        "--bootstrap-servers", bootstrap,
        "--kafka-client", client,
        "--session-timeout-ms", str(SESSION_MS),
        "--metrics-port", "0",
        "--grpc-port", "0",
        "--grpc-host", "127.0.0.1",
        "--metrics-host", "127.0.0.1",
        "--commit-interval-ms", "300",
        "--max-batch-delay-ms", "20",
        "--poll-registry-s", "0.5",
        *topics.flags(),
        *extra,
    ]  # fmt: skip


def load(path: Path) -> LoadedModel:
    return load_checkpoint(path)


class Feeder(threading.Thread):
    """Produces events in chunks at a steady pace, while the test kills and restarts."""

    def __init__(
        self,
        cfg: KafkaClientConfig,
        topic: str,
        records: list[tuple[bytes | None, bytes]],
        chunk: int,
        interval_s: float,
    ) -> None:
        super().__init__(name="feeder", daemon=True)
        self.cfg, self.topic, self.records = cfg, topic, records
        self.chunk, self.interval_s = chunk, interval_s
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            producer = open_producer(self.cfg)
            try:
                for k in range(0, len(self.records), self.chunk):
                    producer.send_many(self.topic, self.records[k : k + self.chunk])
                    producer.flush()
                    time.sleep(self.interval_s)
            finally:
                producer.close()
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout_s: float = 60) -> None:
        self.join(timeout_s)
        assert not self.is_alive(), "the feeder did not finish"
        assert self.error is None, f"the feeder failed: {self.error!r}"
