"""`streamcell demo`: the whole pipeline on the embedded defaults, start to finish.

Broker -> data set -> Ray training -> service -> replay -> live online error ->
plot and summary -> stop everything. Every part is the real one, started the
way a user would start it (the same `streamcell` subcommands), so the demo
doubles as a smoke test of the command line.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from streamcell.demo.children import Child, ChildFailed
from streamcell.demo.plot import Fan, fan_of, plot_streams
from streamcell.demo.scoring import EtsThread, Scores, score
from streamcell.service import settings

if TYPE_CHECKING:
    from streamcell.service.kafka import Consumer

log = logging.getLogger("streamcell.demo")
MODEL = "demo"


@dataclass(frozen=True)
class DemoSettings:
    out: Path
    dataset: str
    workers: int
    epochs: int
    hidden: int
    layers: int
    bootstrap_servers: str | None  # None: start the embedded broker
    kafka_client: str
    grpc_port: int
    metrics_port: int
    step_seconds: float  # replay pace of the held-out part, per calendar step
    keep_running: bool
    train_timeout_s: float = 600.0
    ets: bool = True  # fit ETS beside it (on the training's cores, while it trains)
    prediction_format: str = settings.FORMAT_JSON  # serve's --prediction-format


class PredictionCollector(threading.Thread):
    """Reads the predictions topic into {(stream, seq): yhat} while the demo runs."""

    def __init__(
        self,
        open_consumer: Callable[[], Consumer],
        topic: str,
        prediction_format: str = settings.FORMAT_JSON,
    ) -> None:
        super().__init__(name="prediction-collector", daemon=True)
        self._open = open_consumer
        self.topic = topic
        self.prediction_format = prediction_format
        self.predictions: dict[tuple[str, int], float] = {}
        self.first_at: float | None = None
        self.last_at: float | None = None
        self._halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from streamcell.service.codec import decode_prediction

        try:
            consumer = self._open()
            consumer.subscribe([self.topic], lambda tps: None, lambda tps: None)
            try:
                while not self._halt.is_set():
                    for rec in consumer.poll(5000, 0.2):
                        if rec.value is None:
                            continue  # no prediction is ever a tombstone; nothing to read
                        value = decode_prediction(rec.value, self.prediction_format)
                        if "seq" in value:
                            self.predictions[(value["stream"], value["seq"])] = value["yhat"][0]
                        now = time.monotonic()
                        self.first_at = self.first_at or now
                        self.last_at = now
            finally:
                consumer.close()
        except BaseException as exc:  # surfaced by the main thread
            self.error = exc

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def run_demo(s: DemoSettings, say: Callable[[str], None] = print) -> int:
    from streamcell.service.broker import BrokerSettings, EmbeddedBroker, free_port
    from streamcell.service.kafka import (
        KafkaClientConfig,
        TopicSpec,
        open_admin,
        open_consumer,
        open_producer,
    )
    from streamcell.trainer import datasets

    out = s.out.resolve()
    if out.exists():
        shutil.rmtree(out / "registry", ignore_errors=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    broker: EmbeddedBroker | None = None
    collector: PredictionCollector | None = None
    started = time.monotonic()
    try:
        # 1. The broker.
        if s.bootstrap_servers:
            bootstrap, suffix = s.bootstrap_servers, "." + uuid.uuid4().hex[:8]
            say(f"[1/6] using the Kafka cluster at {bootstrap}")
        else:
            log_file = open(out / "logs" / "broker.log", "ab")  # noqa: SIM115 - lives with the broker
            broker = EmbeddedBroker(
                BrokerSettings("127.0.0.1", free_port()), output=log_file
            ).start()
            bootstrap, suffix = broker.bootstrap, ""
            say(f"[1/6] embedded Kafka-protocol broker (Tansu) on {bootstrap}")
        topics = {
            "input": settings.INPUT_TOPIC + suffix,
            "output": settings.OUTPUT_TOPIC + suffix,
            "dead": settings.DEAD_LETTER_TOPIC + suffix,
            "changelog": settings.CHANGELOG_TOPIC + suffix,
        }
        kafka = KafkaClientConfig(bootstrap, client=s.kafka_client, client_id="streamcell-demo")
        admin = open_admin(kafka)
        try:
            admin.ensure_topics([TopicSpec(topics["input"], 4), TopicSpec(topics["output"], 4)])
        finally:
            admin.close()

        # 2. The data.
        data = datasets.load(s.dataset)
        series = list(data.series())
        train_csv = out / "data" / f"{s.dataset}-train.csv"
        train_csv.parent.mkdir(parents=True, exist_ok=True)
        data.part("train").to_csv(train_csv, index=False)
        n_events = len(data.frame)
        n_held = int(sum(len(v) - n for _, v, n in series))
        say(
            f"[2/6] data set {s.dataset}: {len(series)} streams, {n_events:,} events "
            f"({n_held:,} held out), period {data.period}; training part -> {train_csv}"
        )
        ets = EtsThread(series, data.period)  # a classical baseline, fitted meanwhile
        if s.ets:
            ets.start()
        else:
            ets.why = "--no-ets"

        # 3. Training with Ray.
        say(f"[3/6] training a small LSTM with Ray Train ({s.workers} workers) ...")
        t0 = time.monotonic()
        trainer = Child(
            "streamcell train",
            [
                "train",
                "--data", str(train_csv),
                "--stream-column", "stream",
                "--order-column", "seq",
                "--features", ",".join(data.features),
                "--registry", str(out / "registry"),
                "--model", MODEL,
                "--workers", str(s.workers),
                "--epochs", str(s.epochs),
                "--hidden", str(s.hidden),
                "--layers", str(s.layers),
                # One run of the base settings, not the candidates' four (two
                # candidates, each with its final fit): the demo's training
                # stays within its three minutes on two cores. Everything else
                # is the trainer's defaults: nothing chosen for this data.
                "--no-candidates",
                "--seed", "0",
            ],
            out / "logs" / "train.log",
        )  # fmt: skip
        children.append(trainer.start())
        trainer.run_to_end(s.train_timeout_s, lambda line: say(f"      {line}"))
        train_seconds = time.monotonic() - t0

        # 4. The service.
        grpc_port = s.grpc_port or free_port()
        metrics_port = s.metrics_port or free_port()
        serve = Child(
            "streamcell serve",
            [
                "serve",
                "--bootstrap-servers", bootstrap,
                "--kafka-client", s.kafka_client,
                "--prediction-format", s.prediction_format,
                "--registry", str(out / "registry"),
                "--model", MODEL,
                "--group-id", "streamcell-demo" + suffix,
                "--input-topic", topics["input"],
                "--output-topic", topics["output"],
                "--dead-letter-topic", topics["dead"],
                "--changelog-topic", topics["changelog"],
                "--commit-interval-ms", "500",
                "--grpc-host", "127.0.0.1",
                "--grpc-port", str(grpc_port),
                "--metrics-host", "127.0.0.1",
                "--metrics-port", str(metrics_port),
            ],
            out / "logs" / "serve.log",
        )  # fmt: skip
        children.append(serve.start())
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        serve.wait_until(lambda: _serving(grpc_port), 120, "its gRPC health SERVING")
        say(f"[4/6] streamcell serve: gRPC 127.0.0.1:{grpc_port}, metrics {metrics_url}")

        # 5. Replay: the training part fast (it warms each stream's state), then
        # the held-out part at a visible pace, scoring as predictions arrive.
        collector = PredictionCollector(
            lambda: open_consumer(kafka, "streamcell-demo-reader-" + uuid.uuid4().hex[:8]),
            topics["output"],
            s.prediction_format,
        )
        collector.start()
        producer = open_producer(kafka)
        replay_start = time.monotonic()
        now = time.time()
        warm = list(datasets.to_events(data, "train", start_ts=now, spacing=0.0))
        _send(producer, topics["input"], warm)
        say(
            f"[5/6] replaying the training part ({len(warm):,} events) to warm every stream's state"
        )
        _wait_for(collector, len(warm), 180, say, "warm-up predictions")
        held = list(datasets.to_events(data, "test", start_ts=now, spacing=0.0))
        by_step: dict[float, list] = {}
        held_steps = data.step[data.part("test").index.to_numpy()]
        for (key, value), step in zip(held, held_steps, strict=True):
            by_step.setdefault(float(step), []).append((key, value))
        for k, step in enumerate(sorted(by_step)):
            batch = by_step[step]
            stamp = time.time()
            for _, value in batch:
                value["ts"] = stamp
            _send(producer, topics["input"], batch)
            time.sleep(s.step_seconds)
            _check(collector)
            partial = score(series, collector.predictions, data.period, partial=True)
            say(
                f"      held-out step {k + 1:>3}/{len(by_step)}: "
                f"{len(collector.predictions):>7,} predictions so far; online MASE "
                f"streamcell {partial.mase['streamcell']:.3f} | last value "
                f"{partial.mase['last value']:.3f} | seasonal naive "
                f"{partial.mase['seasonal naive']:.3f}"
            )
        producer.close()
        _wait_for(collector, n_events, 120, say, "predictions")
        replay_seconds = (collector.last_at or time.monotonic()) - replay_start
        if s.ets:
            ets.join(timeout=120)
        others = {"ETS": ets.forecasts} if ets.forecasts else {}
        scores = score(series, collector.predictions, data.period, others=others)
        if not ets.forecasts:
            say(f"      (no ETS beside it: {ets.why})")

        # 6. What a user sees: gRPC, /metrics, a plot, a summary.
        grpc_lines = _grpc_tour(grpc_port, series[0][0])
        metrics_text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
        picks = _pick_streams(series, 4)
        png = plot_streams(
            out / "predictions.png",
            picks,
            collector.predictions,
            f"streamcell on {s.dataset}: one-step-ahead online predictions (shaded: held out)",
            fans=_fans(grpc_port, [stream for stream, _, _ in picks], max(data.period, 6)),
        )
        say("[6/6] done")
        _summary(
            say, s, scores, n_events, len(collector.predictions), train_seconds, replay_seconds,
            _metric(metrics_text, "streamcell_events_total", 'outcome="predicted"'),
            png, metrics_url, grpc_port, grpc_lines, time.monotonic() - started,
        )  # fmt: skip
        (out / "summary.json").write_text(
            json.dumps(
                {
                    "dataset": s.dataset,
                    "events": n_events,
                    "predictions": len(collector.predictions),
                    "online_mase": scores.mase,
                    "online_rmse": scores.rmse,
                    "scored_steps": scores.scored_steps,
                    "train_seconds": train_seconds,
                    "replay_seconds": replay_seconds,
                },
                indent=2,
            )
        )
        if len(collector.predictions) < n_events:
            raise ChildFailed(
                f"only {len(collector.predictions):,} of {n_events:,} predictions arrived"
            )
        if s.keep_running:
            say("--keep-running: broker and service stay up; press Ctrl-C to stop them")
            while serve.alive():
                time.sleep(1)
        return 0
    finally:
        if collector is not None:
            collector.stop()
        for child in reversed(children):
            child.stop()
        if broker is not None:
            broker.stop()


def _send(producer, topic: str, events: list) -> None:
    producer.send_many(topic, [(key.encode(), json.dumps(value).encode()) for key, value in events])
    producer.flush()


def _wait_for(collector: PredictionCollector, count: int, timeout_s: float, say, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    shown = time.monotonic()
    while len(collector.predictions) < count and time.monotonic() < deadline:
        _check(collector)
        if time.monotonic() - shown >= 2:
            say(f"      {len(collector.predictions):>7,} of {count:,} {what}")
            shown = time.monotonic()
        time.sleep(0.1)


def _check(collector: PredictionCollector) -> None:
    if collector.error is not None:
        raise ChildFailed(f"reading predictions failed: {collector.error}")


def _serving(port: int) -> bool:
    from streamcell.service.client import Client

    try:
        with Client(f"127.0.0.1:{port}", timeout=2) as client:
            return client.health() == "SERVING"
    except Exception:
        return False


def _grpc_tour(port: int, stream: str) -> list[str]:
    from streamcell.service.client import Client

    with Client(f"127.0.0.1:{port}", timeout=10) as client:
        info = client.model_info()
        state = client.get_stream(stream)
        forecast = client.forecast(stream, 6)
    steps = ", ".join(f"{step.yhat[0]:.1f}" for step in forecast.steps)
    return [
        f"ModelInfo: {info.name} version {info.version}, {info.num_layers} layer(s) x "
        f"{info.hidden_size}, scaling {info.scaling}, {info.streams} streams held",
        f"GetStream({stream!r}): {state.events} events applied, last offset {state.offset}",
        f"Forecast({stream!r}, 6): {steps}",
    ]


def _fans(port: int, streams: list[str], horizon: int) -> dict[str, Fan]:
    """Each stream's Forecast fan, when the model has quantiles (none otherwise)."""
    from streamcell.service.client import Client

    with Client(f"127.0.0.1:{port}", timeout=10) as client:
        levels = list(client.model_info().quantile_levels)
        if not levels:
            return {}
        fans = {stream: fan_of(client.forecast(stream, horizon), levels) for stream in streams}
    return {stream: fan for stream, fan in fans.items() if fan is not None}


def _metric(text: str, name: str, label: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _pick_streams(series: list, n: int) -> list:
    """A few streams spread over the range of sizes, for the plot."""
    ordered = sorted(series, key=lambda s: float(np.mean(s[1])))
    idx = np.linspace(0, len(ordered) - 1, n).round().astype(int)
    return [ordered[k] for k in idx]


def _summary(
    say, s: DemoSettings, scores: Scores, n_events: int, n_predictions: int, train_s: float,
    replay_s: float, predicted_metric: float, png: Path, metrics_url: str, grpc_port: int,
    grpc_lines: list[str], total_s: float,
) -> None:  # fmt: skip
    say("")
    say(
        f"  events replayed        {n_events:,} ({scores.streams} streams scored on held-out steps)"
    )
    say(f"  predictions received   {n_predictions:,} (the service counted {predicted_metric:,.0f})")
    say(f"  training (Ray)         {train_s:.0f} s")
    say(f"  replay to last prediction {replay_s:.1f} s")
    say(f"  online error on {scores.scored_steps:,} held-out steps (MASE, lower is better; RMSE):")
    for method in scores.mase:
        say(f"    {method:<16} MASE {scores.mase[method]:.3f}   RMSE {scores.rmse[method]:.2f}")
    say(f"  plot                   {png}")
    say(f"  metrics                {metrics_url}")
    say(f"  gRPC                   127.0.0.1:{grpc_port} (health, reflection on)")
    for line in grpc_lines:
        say(f"    {line}")
    say(f"  total                  {total_s:.0f} s")
