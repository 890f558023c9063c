"""The settings of `streamcell serve`: one frozen tree, built once at the entry point.

:class:`ServeSettings` holds the model to serve and one section per part:
``kafka`` (connecting, the group), ``pipeline`` (topics, batches,
checkpoints), ``state``, ``metrics`` and ``grpc`` (None: no gRPC server).
Each default is written once, as its field's default in a section, and
:data:`FLAGS` names the flag of each field: the command line
(:func:`add_arguments`) and the tree (:func:`from_args`) are both built from
that one table. Nothing here or below reads the environment: the entry point
passes it in. Only the standard library is imported, so the CLI stays quick.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamcell.core.errors import ConfigError
from streamcell.service.kafka import CLIENTS, DEFAULT_CLIENT, KafkaClientConfig

# ------------------------------------------------ names written once, for every command
INPUT_TOPIC = "streamcell.events"
OUTPUT_TOPIC = "streamcell.predictions"
DEAD_LETTER_TOPIC = "streamcell.dead-letters"
CHANGELOG_TOPIC = "streamcell.state-changelog"
ENV_BOOTSTRAP = "KAFKA_BOOTSTRAP_SERVERS"
FORMAT_JSON = "json"
FORMAT_PROTOBUF = "protobuf"
FORMATS = (FORMAT_JSON, FORMAT_PROTOBUF)  # how an event is written on the input topic
GRPC_PORT = 50051


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

    def __post_init__(self) -> None:
        _at_least_1(
            (("partitions", self.partitions), ("session_timeout_ms", self.session_timeout_ms))
        )
        if self.session_timeout_ms < 3:  # the heartbeat interval is a third of it
            raise ConfigError(
                f"--session-timeout-ms must be at least 3, got {self.session_timeout_ms}"
            )


@dataclass(frozen=True)
class PipelineSettings:
    """What the consumer loop needs besides its clients (the fields of pipeline.py's)."""

    input_topic: str = INPUT_TOPIC
    output_topic: str = OUTPUT_TOPIC
    dead_letter_topic: str = DEAD_LETTER_TOPIC
    changelog_topic: str = CHANGELOG_TOPIC
    event_format: str = FORMAT_JSON
    max_batch: int = 1024
    max_batch_delay_ms: int = 5
    commit_interval_ms: int = 1000
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

    def __post_init__(self) -> None:
        _at_least_1(
            (("commit_interval_ms", self.commit_interval_ms), ("max_batch", self.max_batch))
        )
        # "not x > 0" (rather than "x <= 0") also refuses nan, which argparse's float accepts
        if not self.restore_timeout_s > 0:
            raise ConfigError(f"--restore-timeout-s must be positive, got {self.restore_timeout_s}")
        if self.max_batch_delay_ms < 0:
            raise ConfigError("--max-batch-delay-ms must be >= 0")
        if self.idle_commit_ms < 0:
            raise ConfigError(f"--idle-commit-ms must be >= 0 (0: off), got {self.idle_commit_ms}")
        if self.event_format not in FORMATS:
            raise ConfigError(f"--event-format must be one of {', '.join(FORMATS)}")
        topics = [self.input_topic, self.output_topic, self.dead_letter_topic, self.changelog_topic]
        if len(set(topics)) != len(topics):
            raise ConfigError(f"the four topics must differ, got {topics}")


@dataclass(frozen=True)
class StateSettings:
    """The per-stream state and where the step runs."""

    max_streams: int = 100_000
    stream_ttl_s: float | None = None
    keep_gates: bool = False
    torch_threads: int = 1
    device: str = "cpu"  # auto, cpu, cuda or cuda:N (resolved when the service starts)

    def __post_init__(self) -> None:
        _at_least_1((("max_streams", self.max_streams), ("torch_threads", self.torch_threads)))
        if self.stream_ttl_s is not None and not self.stream_ttl_s > 0:
            raise ConfigError(f"--stream-ttl-s must be positive, got {self.stream_ttl_s}")


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

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--grpc-port must be in 0..65535, got {self.port}")
        if self.workers < 1:
            raise ConfigError(f"--grpc-workers must be at least 1, got {self.workers}")
        if self.max_in_flight < 0:
            raise ConfigError(f"--grpc-max-in-flight must be >= 0, got {self.max_in_flight}")
        if self.max_message_bytes < 1024:
            raise ConfigError("--grpc-max-message-bytes must be at least 1024")
        if self.auth_token is not None and not self.auth_token.strip():
            raise ConfigError("the auth token is empty")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> GrpcSettings:
        """The gRPC section alone from parsed flags (those of ``add_arguments(p, GRPC)``)."""
        return cls(**_section_values(args, "grpc"), auth_token=_auth_token(args))


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

    def __getattr__(self, name: str) -> Any:
        # A bridge for app.py, which reads the flat names (s.group_id, ...) until it
        # reads the sections: a flag's name finds its field in the tree.
        flag = _BY_DEST.get(name)
        if flag is None or flag.field is None or "." not in flag.field:
            raise AttributeError(name)
        section, attr = flag.field.split(".")
        return getattr(getattr(self, section), attr)


_SECTIONS: dict[str, type] = {
    "": ServeSettings,
    "kafka": KafkaSettings,
    "pipeline": PipelineSettings,
    "state": StateSettings,
    "metrics": MetricsSettings,
    "grpc": GrpcSettings,
}


# ------------------------------------------------------------------ the flag table
@dataclass(frozen=True)
class Flag:
    """One command-line flag: the field it sets ("section.name"; None: read by from_args)."""

    flag: str
    field: str | None
    help: str | None = None
    type: Callable[[str], Any] | None = None  # None: the default's type (str if None)
    choices: tuple[str, ...] | None = None
    required: bool = False
    group: str | None = None  # the --help heading

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def default(self) -> Any:
        if self.field is None:
            return False  # a switch
        section, _, name = self.field.rpartition(".")
        (spec,) = (f for f in dataclasses.fields(_SECTIONS[section]) if f.name == name)
        return None if spec.default is dataclasses.MISSING else spec.default


KAFKA, STATE, METRICS, GRPC = "Kafka", "state", "metrics", "gRPC"
FLAGS: tuple[Flag, ...] = (
    Flag("--registry", "registry", "model registry directory", Path, required=True),
    Flag("--model", "model", "model name in the registry", required=True),
    Flag(
        "--require-model",
        "require_model",
        "exit with an error if the registry has no version yet (default: wait for one)",
    ),
    Flag(
        "--poll-registry-s",
        "poll_registry_s",
        "seconds between checks for a newer version (0: never reload; default %(default)s)",
    ),
    Flag(
        "--bootstrap-servers",
        "kafka.bootstrap_servers",
        f"HOST:PORT[,...] (default ${ENV_BOOTSTRAP}; serve without any: gRPC only)",
        group=KAFKA,
    ),
    Flag("--kafka-client", "kafka.client", choices=tuple(CLIENTS), group=KAFKA),
    Flag("--group-id", "kafka.group_id", "consumer group (default %(default)s)", group=KAFKA),
    Flag("--client-id", "kafka.client_id", "Kafka client id", group=KAFKA),
    Flag("--input-topic", "pipeline.input_topic", group=KAFKA),
    Flag("--output-topic", "pipeline.output_topic", group=KAFKA),
    Flag("--dead-letter-topic", "pipeline.dead_letter_topic", group=KAFKA),
    Flag(
        "--changelog-topic",
        "pipeline.changelog_topic",
        "compacted; created with the input topic's partition count",
        group=KAFKA,
    ),
    Flag("--partitions", "kafka.partitions", "partitions of an input topic to create", group=KAFKA),
    Flag("--session-timeout-ms", "kafka.session_timeout_ms", group=KAFKA),
    Flag(
        "--commit-interval-ms",
        "pipeline.commit_interval_ms",
        "flush predictions, write changed state, commit offsets this often (default %(default)s)",
        group=KAFKA,
    ),
    Flag(
        "--idle-commit-ms",
        "pipeline.idle_commit_ms",
        "once a poll finds no events, checkpoint this long after the last checkpoint "
        "instead of at the next interval (default %(default)s; 0: on the interval only)",
        group=KAFKA,
    ),
    Flag(
        "--restore-timeout-s",
        "pipeline.restore_timeout_s",
        "longest a changelog restore on assignment may take (default %(default)s)",
        group=KAFKA,
    ),
    Flag("--event-format", "pipeline.event_format", choices=FORMATS, group=KAFKA),
    Flag("--max-batch", "pipeline.max_batch", "events per micro-batch at most", group=KAFKA),
    Flag(
        "--max-batch-delay-ms",
        "pipeline.max_batch_delay_ms",
        "how long one poll waits for events to fill a batch (default %(default)s)",
        group=KAFKA,
    ),
    Flag("--max-streams", "state.max_streams", "streams held before LRU eviction", group=STATE),
    Flag("--stream-ttl-s", "state.stream_ttl_s", "expire idle streams", float, group=STATE),
    Flag(
        "--keep-gates", "state.keep_gates", "keep each stream's last gate activations", group=STATE
    ),
    Flag(
        "--torch-threads",
        "state.torch_threads",
        "torch intra-op threads (default %(default)s: keeps the step batch-invariant and "
        "bit-exact)",
        group=STATE,
    ),
    Flag(
        "--device",
        "state.device",
        "where the LSTM step and the (h, c) slabs live: cpu (default), cuda, cuda:N, "
        "or auto (the first GPU if torch sees one, else the CPU)",
        group=STATE,
    ),
    Flag("--metrics-host", "metrics.host", group=METRICS),
    Flag("--metrics-port", "metrics.port", "Prometheus /metrics (0: a free port)", group=METRICS),
    Flag("--no-metrics", None, "do not serve /metrics", group=METRICS),
    Flag("--no-grpc", None, "do not serve gRPC"),
    Flag("--grpc-port", "grpc.port", "0 picks a free port", group=GRPC),
    Flag("--grpc-host", "grpc.host", "address to bind (default %(default)s)", group=GRPC),
    Flag("--tls-cert", "grpc.tls_cert", "PEM certificate chain: serve TLS", Path, group=GRPC),
    Flag("--tls-key", "grpc.tls_key", "PEM private key of --tls-cert", Path, group=GRPC),
    Flag(
        "--auth-token",
        "grpc.auth_token",
        "require 'authorization: Bearer TOKEN' (not health)",
        group=GRPC,
    ),
    Flag("--auth-token-file", None, "read the bearer token from a file", Path, group=GRPC),
    Flag(
        "--grpc-max-message-bytes",
        "grpc.max_message_bytes",
        "largest request/response message (default 16 MiB)",
        group=GRPC,
    ),
    Flag("--grpc-workers", "grpc.workers", "server threads (default %(default)s)", group=GRPC),
    Flag(
        "--grpc-max-in-flight",
        "grpc.max_in_flight",
        "calls in progress before RESOURCE_EXHAUSTED (0: no limit; default %(default)s)",
        group=GRPC,
    ),
)
_BY_DEST = {f.dest: f for f in FLAGS}
SERVE = tuple(f.flag for f in FLAGS)
GRPC_FLAGS = tuple(f.flag for f in FLAGS if f.group == GRPC)


def add_arguments(parser: argparse.ArgumentParser, flags: Iterable[str] = SERVE) -> None:
    """Add the named rows of :data:`FLAGS` to ``parser``, under their headings."""
    groups: dict[str | None, Any] = {None: parser}
    by_flag = {f.flag: f for f in FLAGS}
    for name in flags:
        flag = by_flag[name]
        if flag.group not in groups:
            groups[flag.group] = parser.add_argument_group(flag.group)
        target = groups[flag.group]
        default = flag.default
        kwargs: dict[str, Any] = {"help": flag.help}
        if flag.required:
            kwargs["required"] = True
        if default is False and flag.type is None:  # a switch
            kwargs["action"] = "store_true"
        else:
            kind = flag.type or (type(default) if default is not None else None)
            if kind is not None and kind is not str:
                kwargs["type"] = kind
            if not flag.required:
                kwargs["default"] = default if flag.field else None
            if flag.choices is not None:
                kwargs["choices"] = flag.choices
        target.add_argument(flag.flag, **kwargs)


def bootstrap_servers(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """--bootstrap-servers, else $KAFKA_BOOTSTRAP_SERVERS, else None."""
    return args.bootstrap_servers or environ.get(ENV_BOOTSTRAP) or None


def from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> ServeSettings:
    """Parsed flags and the environment -> the tree (no I/O besides --auth-token-file)."""
    kafka = _section_values(args, "kafka")
    kafka["bootstrap_servers"] = bootstrap_servers(args, environ)
    metrics = _section_values(args, "metrics")
    if args.no_metrics:
        metrics["port"] = None
    return ServeSettings(
        **_section_values(args, ""),
        kafka=KafkaSettings(**kafka),
        pipeline=PipelineSettings(**_section_values(args, "pipeline")),
        state=StateSettings(**_section_values(args, "state")),
        metrics=MetricsSettings(**metrics),
        grpc=None if args.no_grpc else GrpcSettings.from_args(args),
    )


def _section_values(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """The fields of one section that its flags set (auth_token aside: see _auth_token)."""
    out = {}
    for flag in FLAGS:
        if not flag.field or flag.field == "grpc.auth_token":
            continue
        owner, _, name = flag.field.rpartition(".")
        if owner == section:
            out[name] = getattr(args, flag.dest)
    return out


def _auth_token(args: argparse.Namespace) -> str | None:
    token = args.auth_token
    if args.auth_token_file is not None:
        if token is not None:
            raise ConfigError("give --auth-token or --auth-token-file, not both")
        try:
            token = Path(args.auth_token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read --auth-token-file: {exc}") from exc
    return token
