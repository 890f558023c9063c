"""The command line of `streamcell serve` (and replay's Kafka flags): one table, one builder.

:data:`FLAGS` names the flag of each field of the settings tree
(``settings.py``); :func:`add_arguments` adds rows of it to a parser, their
defaults read from the fields, and :func:`from_args` builds the frozen tree
from the parsed flags and the environment the entry point passes in.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamcell.core.errors import ConfigError
from streamcell.service.kafka import CLIENTS
from streamcell.service.settings import (
    ENV_BOOTSTRAP,
    FORMATS,
    GrpcSettings,
    KafkaSettings,
    MetricsSettings,
    PipelineSettings,
    ServeSettings,
    StateSettings,
)

_SECTIONS: dict[str, type] = {
    "": ServeSettings,
    "kafka": KafkaSettings,
    "pipeline": PipelineSettings,
    "state": StateSettings,
    "metrics": MetricsSettings,
    "grpc": GrpcSettings,
}


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
    Flag(
        "--kafka-client",
        "kafka.client",
        "Kafka client library: confluent (librdkafka) or kafka-python (pure Python, "
        "several times slower; default %(default)s)",
        choices=tuple(CLIENTS),
        group=KAFKA,
    ),
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
        "--broker-wait-s",
        "kafka.broker_wait_s",
        "at start-up, wait this long for brokers that cannot be reached yet, retrying with "
        "capped backoff (0: fail at once; default %(default)s)",
        group=KAFKA,
    ),
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
        "longest a changelog restore on assignment may go without reading a record; "
        "a restore that keeps reading has no time limit (default %(default)s)",
        group=KAFKA,
    ),
    Flag("--event-format", "pipeline.event_format", choices=FORMATS, group=KAFKA),
    Flag(
        "--dead-letter-max-bytes",
        "pipeline.dead_letter_max_bytes",
        "a bad record's key and value over this are dead-lettered truncated (default %(default)s)",
        group=KAFKA,
    ),
    Flag("--max-batch", "pipeline.max_batch", "events per micro-batch at most", group=KAFKA),
    Flag(
        "--max-batch-delay-ms",
        "pipeline.max_batch_delay_ms",
        "how long one poll waits for --min-batch events at most (default %(default)s)",
        group=KAFKA,
    ),
    Flag(
        "--min-batch",
        "pipeline.min_batch",
        "a poll holding this many events returns without waiting out --max-batch-delay-ms "
        "(in 2 ms slices; default %(default)s: off, a poll not full waits it out)",
        group=KAFKA,
    ),
    Flag(
        "--max-streams",
        "state.max_streams",
        "streams held in memory (the hot tier); the least recently used beyond it are "
        "spilled to the cold tier on disk, and loaded back with their next event",
        group=STATE,
    ),
    Flag(
        "--state-dir",
        "state.state_dir",
        "the cold tier's directory, one per replica (default: under the system temp dir, "
        "per group and model); rebuilt from the changelog at every start",
        Path,
        group=STATE,
    ),
    Flag(
        "--state-dir-max-bytes",
        "state.state_dir_max_bytes",
        "bound on the cold tier's records; past it the streams idle the longest are "
        "forgotten (changelog tombstones, counted; default %(default)s)",
        group=STATE,
    ),
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
        "--grpc-health-port",
        "grpc.health_port",
        "also serve the health service alone, in plaintext, on this port (for probes "
        "that cannot speak TLS, e.g. the kubelet's; 0: a free port)",
        int,
        group=GRPC,
    ),
    Flag(
        "--grpc-max-in-flight",
        "grpc.max_in_flight",
        "calls in progress before RESOURCE_EXHAUSTED (0: no limit; default %(default)s)",
        group=GRPC,
    ),
    Flag(
        "--grpc-max-batch-events",
        "grpc.max_batch_events",
        "most events in one PredictBatch call (more: INVALID_ARGUMENT; default %(default)s)",
        group=GRPC,
    ),
    Flag(
        "--grpc-max-batch-depth",
        "grpc.max_batch_depth",
        "most events of one stream in one PredictBatch call, each one LSTM step in turn "
        "(more: INVALID_ARGUMENT; default %(default)s)",
        group=GRPC,
    ),
    Flag(
        "--grpc-max-predict-streams",
        "grpc.max_predict_streams",
        "PredictStream calls open at once, below --grpc-workers (more: RESOURCE_EXHAUSTED; "
        "default: half of --grpc-workers)",
        int,
        group=GRPC,
    ),
)
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
        grpc=None if args.no_grpc else grpc_from_args(args),
    )


def grpc_from_args(args: argparse.Namespace) -> GrpcSettings:
    """The gRPC section alone from parsed flags (those of ``add_arguments(p, GRPC_FLAGS)``)."""
    return GrpcSettings(**_section_values(args, "grpc"), auth_token=_auth_token(args))


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
