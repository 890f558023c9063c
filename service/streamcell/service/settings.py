"""The settings of `streamcell serve`: one frozen tree, and the names every command shares.

:class:`ServeSettings` holds the model to serve and one section per part:
``kafka`` (connecting, the group), ``pipeline`` (topics, batches,
checkpoints), ``state``, ``metrics`` and ``grpc`` (None: no gRPC server).
Each default is written once, as its field's default in a section;
``flags.py`` names the flag of each field and builds the tree from parsed
flags at the entry point. Nothing here reads the environment. Only the
standard library is imported, so the CLI stays quick.
"""

from __future__ import annotations

import ipaddress
import math
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from streamcell.core.errors import ConfigError
from streamcell.service.kafka import COMPRESSIONS, DEFAULT_CLIENT, KafkaClientConfig

# ------------------------------------------------ names written once, for every command
INPUT_TOPIC = "streamcell.events"
OUTPUT_TOPIC = "streamcell.predictions"
DEAD_LETTER_TOPIC = "streamcell.dead-letters"
DEAD_LETTER_MIN_BYTES = 4096  # the smallest --dead-letter-max-bytes
CHANGELOG_TOPIC = "streamcell.state-changelog"
ENV_BOOTSTRAP = "KAFKA_BOOTSTRAP_SERVERS"
FORMAT_JSON = "json"
FORMAT_PROTOBUF = "protobuf"
# How an event is written on the input topic (--event-format), and a prediction
# on the predictions topic (--prediction-format).
FORMATS = (FORMAT_JSON, FORMAT_PROTOBUF)
GRPC_PORT = 50051
STATE_DIR_MIN_BYTES = 1 << 20  # the smallest --state-dir-max-bytes


def _at_least_1(pairs: Iterable[tuple[str, int]]) -> None:
    for name, value in pairs:
        if value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


# ------------------------------------------------------------------ the sections
@dataclass(frozen=True)
class KafkaSettings:
    """How a replica connects and which group it joins (None servers: gRPC only)."""

    bootstrap_servers: str | None = None
    client: str = DEFAULT_CLIENT
    group_id: str = "streamcell"
    client_id: str = KafkaClientConfig.client_id
    partitions: int = 3  # for an input topic that has to be created
    session_timeout_ms: int = KafkaClientConfig.session_timeout_ms
    # How long a request (a produce's delivery included) may take before the client
    # gives up on it and the replica treats the broker as gone.
    request_timeout_ms: int = KafkaClientConfig.request_timeout_ms
    # At start-up, how long to wait for brokers that cannot be reached yet
    # (0: fail at once). Generous: replicas often start before their brokers.
    broker_wait_s: float = 600.0
    # compression.type of the replica's producer (predictions, dead letters,
    # changelog): one producer sends them all, so one setting.
    producer_compression: str = "none"

    def __post_init__(self) -> None:
        if self.producer_compression not in COMPRESSIONS:
            raise ConfigError(f"--producer-compression must be one of {', '.join(COMPRESSIONS)}")
        if not self.broker_wait_s >= 0:  # also refuses nan
            raise ConfigError(
                f"--broker-wait-s must be >= 0 (0: fail at once), got {self.broker_wait_s}"
            )
        _at_least_1(
            (("partitions", self.partitions), ("session_timeout_ms", self.session_timeout_ms))
        )
        if self.session_timeout_ms < 3:  # the heartbeat interval is a third of it
            raise ConfigError(
                f"--session-timeout-ms must be at least 3, got {self.session_timeout_ms}"
            )
        if self.request_timeout_ms < 1000:  # under the fetch wait and a busy broker's replies
            raise ConfigError(
                f"--request-timeout-ms must be at least 1000, got {self.request_timeout_ms}"
            )


@dataclass(frozen=True)
class PipelineSettings:
    """What the consumer loop needs besides its clients (the fields of pipeline.py's)."""

    input_topic: str = INPUT_TOPIC
    output_topic: str = OUTPUT_TOPIC
    dead_letter_topic: str = DEAD_LETTER_TOPIC
    changelog_topic: str = CHANGELOG_TOPIC
    event_format: str = FORMAT_JSON
    prediction_format: str = FORMAT_JSON
    max_batch: int = 1024
    # How long a poll waits for min_batch events at most. Serve's cost per
    # event roughly doubles in small polls (the step's fixed cost per wave), so
    # at a few ms, under half its capacity, a busy machine tipped it into a
    # backlog; a longer wait keeps polls large at the price of that wait in
    # latency. With min_batch, a poll holding that many events returns at once
    # (batching.py); 0: off, every poll not full waits the whole delay.
    max_batch_delay_ms: int = 15
    min_batch: int = 0
    # A checkpoint snapshots every stream changed since the last one, however many events
    # it had: a short interval makes the changelog's bytes and the loop's p99 tail
    # (docs/BENCHMARKS.md, "Where the tail comes from"). 5 s, as Quix Streams' default:
    # a failover re-reads (and predicts again) up to that much input.
    commit_interval_ms: int = 5000
    # Once a poll finds nothing (the input went quiet), checkpoint what was done
    # as soon as this long has passed since the last checkpoint, not at the next
    # interval: the committed offsets and the lag catch up with the input within
    # about this much. 0: on the interval only.
    idle_commit_ms: int = 100
    restore_timeout_s: float = 60.0
    ack_timeout_s: float = 30.0  # a checkpoint not acknowledged by then: the broker is gone
    # A checkpoint's changelog records are sent over this share of the commit
    # interval, a little each step, plus up to send_budget_ms of a step's time.
    changelog_pace: float = 0.5
    changelog_send_budget_ms: float = 1.0
    idle_poll_ms: int = 100
    # A bad record's key and value over this are dead-lettered truncated: under a
    # stock broker's message.max.bytes (1 MB) and the producer's request limit.
    dead_letter_max_bytes: int = 1_000_000

    def __post_init__(self) -> None:
        _at_least_1(
            (
                ("commit_interval_ms", self.commit_interval_ms),
                ("max_batch", self.max_batch),
            )
        )
        if self.min_batch < 0:
            raise ConfigError(f"--min-batch must be >= 0 (0: off), got {self.min_batch}")
        # "not x > 0" (rather than "x <= 0") also refuses nan, which argparse's float accepts
        if not self.restore_timeout_s > 0:
            raise ConfigError(f"--restore-timeout-s must be positive, got {self.restore_timeout_s}")
        if not self.ack_timeout_s > 0:
            raise ConfigError(f"--ack-timeout-s must be positive, got {self.ack_timeout_s}")
        if self.max_batch_delay_ms < 0:
            raise ConfigError("--max-batch-delay-ms must be >= 0")
        if self.idle_commit_ms < 0:
            raise ConfigError(f"--idle-commit-ms must be >= 0 (0: off), got {self.idle_commit_ms}")
        if self.event_format not in FORMATS:
            raise ConfigError(f"--event-format must be one of {', '.join(FORMATS)}")
        if self.prediction_format not in FORMATS:
            raise ConfigError(f"--prediction-format must be one of {', '.join(FORMATS)}")
        # headroom for the headers and the record batch under the request limit
        most = KafkaClientConfig.max_request_bytes - 64 * 1024
        if not DEAD_LETTER_MIN_BYTES <= self.dead_letter_max_bytes <= most:
            raise ConfigError(
                f"--dead-letter-max-bytes must be in [{DEAD_LETTER_MIN_BYTES}, {most}], "
                f"got {self.dead_letter_max_bytes}"
            )
        topics = [self.input_topic, self.output_topic, self.dead_letter_topic, self.changelog_topic]
        if len(set(topics)) != len(topics):
            raise ConfigError(f"the four topics must differ, got {topics}")


@dataclass(frozen=True)
class StateSettings:
    """The per-stream state and where the step runs.

    ``max_streams`` streams are held in memory (hot); the rest are in the cold
    tier on local disk under ``state_dir`` (None: :func:`default_state_dir`),
    whose live records are bounded by ``state_dir_max_bytes``.
    """

    max_streams: int = 100_000
    stream_ttl_s: float | None = None
    keep_gates: bool = False
    torch_threads: int = 1
    device: str = "cpu"  # auto, cpu, cuda or cuda:N (resolved when the service starts)
    state_dir: Path | None = None
    state_dir_max_bytes: int = 16 << 30

    def __post_init__(self) -> None:
        _at_least_1((("max_streams", self.max_streams), ("torch_threads", self.torch_threads)))
        if self.stream_ttl_s is not None and not self.stream_ttl_s > 0:
            raise ConfigError(f"--stream-ttl-s must be positive, got {self.stream_ttl_s}")
        if self.state_dir_max_bytes < STATE_DIR_MIN_BYTES:
            raise ConfigError(
                f"--state-dir-max-bytes must be at least {STATE_DIR_MIN_BYTES}, "
                f"got {self.state_dir_max_bytes}"
            )


def default_state_dir(group_id: str, model: str) -> Path:
    """Where a replica keeps its cold tier without --state-dir: one per group and model.

    Enough for one replica per host; a second process given the same directory
    is refused at start (the cold tier's lock file).
    """
    return Path(tempfile.gettempdir()) / "streamcell-state" / f"{group_id}.{model}"


@dataclass(frozen=True)
class MetricsSettings:
    host: str = "0.0.0.0"
    port: int | None = 9100  # None: no /metrics

    def __post_init__(self) -> None:
        if self.port is not None and not 0 <= self.port <= 65535:
            raise ConfigError(f"--metrics-port must be in 0..65535, got {self.port}")


@dataclass(frozen=True)
class GrpcSettings:
    """How the gRPC server listens, authenticates and limits work."""

    port: int = GRPC_PORT  # 0: any free port (see GrpcServerHandle.port)
    host: str = "0.0.0.0"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth_token: str | None = field(default=None, repr=False)
    max_message_bytes: int = 16 * 1024 * 1024
    workers: int = 16
    max_in_flight: int = 256  # 0: no limit
    health_poll_seconds: float = 0.2
    # A second, plaintext port that serves the health service alone: for
    # probes that cannot speak TLS (the kubelet's gRPC probe). None: none.
    health_port: int | None = None
    # PredictBatch runs under the Predictor's lock, which the Kafka loop needs
    # too: a call's events bound its work, and the events of one stream in it
    # (its depth) bound the sequential LSTM steps ("waves") it takes.
    max_batch_events: int = 100_000
    max_batch_depth: int = 1_000
    # An open PredictStream holds a worker thread for its lifetime; below
    # `workers` so that unary calls and health keep threads. None: workers // 2.
    max_predict_streams: int | None = None

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--grpc-port must be in 0..65535, got {self.port}")
        if self.health_port is not None and not 0 <= self.health_port <= 65535:
            raise ConfigError(f"--grpc-health-port must be in 0..65535, got {self.health_port}")
        if self.workers < 1:
            raise ConfigError(f"--grpc-workers must be at least 1, got {self.workers}")
        if self.max_in_flight < 0:
            raise ConfigError(f"--grpc-max-in-flight must be >= 0, got {self.max_in_flight}")
        if self.max_message_bytes < 1024:
            raise ConfigError("--grpc-max-message-bytes must be at least 1024")
        if self.max_batch_events < 1:
            raise ConfigError(f"--grpc-max-batch-events must be >= 1, got {self.max_batch_events}")
        if self.max_batch_depth < 1:
            raise ConfigError(f"--grpc-max-batch-depth must be >= 1, got {self.max_batch_depth}")
        if not 0 <= self.predict_stream_limit < self.workers:
            raise ConfigError(
                f"--grpc-max-predict-streams must be in 0..{self.workers - 1} (below "
                f"--grpc-workers {self.workers}, so that unary calls and health keep a "
                f"thread), got {self.max_predict_streams}"
            )
        if self.auth_token is not None and not self.auth_token.strip():
            raise ConfigError("the auth token is empty")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def predict_stream_limit(self) -> int:
        """How many PredictStream calls may be open at once (0: PredictStream refused)."""
        if self.max_predict_streams is None:
            return self.workers // 2
        return self.max_predict_streams

    def exposure_warning(self) -> str | None:
        """Why this server is open to anyone who reaches it, if it is (None: it is not)."""
        if self.auth_token is not None or is_loopback(self.host):
            return None
        return (
            f"gRPC listens on {self.host}:{self.port} without a token: anyone who reaches it "
            "can reset and delete streams (ResetStream, DeleteStream); set --auth-token-file "
            "(and --tls-cert/--tls-key), or --grpc-host 127.0.0.1"
            + ("" if self.tls else "; traffic is also plaintext")
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name, or an address in brackets or not) is a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeSettings:
    """Everything one serving replica is configured with."""

    registry: Path
    model: str
    require_model: bool = False
    poll_registry_s: float = 10.0
    kafka: KafkaSettings = KafkaSettings()
    pipeline: PipelineSettings = PipelineSettings()
    state: StateSettings = StateSettings()
    metrics: MetricsSettings = MetricsSettings()
    grpc: GrpcSettings | None = None  # None: no gRPC server

    def __post_init__(self) -> None:
        if math.isnan(self.poll_registry_s):
            raise ConfigError("--poll-registry-s must be a number of seconds (0: never reload)")
