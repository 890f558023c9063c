"""`streamcell serve`: the serving replica (Kafka pipeline, gRPC, metrics, hot reloads).

The only place that reads the environment (``KAFKA_BOOTSTRAP_SERVERS``) and
turns flags into the frozen :class:`ServeSettings`. SIGTERM and SIGINT stop it
gracefully: the batch in hand is finished, state and offsets are committed,
the replica leaves its group and exits 0.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "serve predictions: Kafka events in, per-stream LSTM state, predictions out; gRPC API"

ENV_BOOTSTRAP = "KAFKA_BOOTSTRAP_SERVERS"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", required=True, type=Path, help="model registry directory")
    parser.add_argument("--model", required=True, help="model name in the registry")
    parser.add_argument(
        "--require-model",
        action="store_true",
        help="exit with an error if the registry has no version yet (default: wait for one)",
    )
    parser.add_argument(
        "--poll-registry-s",
        type=float,
        default=10.0,
        help="seconds between checks for a newer version (0: never reload; default 10)",
    )
    k = parser.add_argument_group("Kafka")
    k.add_argument(
        "--bootstrap-servers",
        default=None,
        help=f"HOST:PORT[,...] (default ${ENV_BOOTSTRAP}); without it only gRPC is served",
    )
    k.add_argument("--kafka-client", choices=("kafka-python", "confluent"), default="kafka-python")
    k.add_argument("--group-id", default="streamcell", help="consumer group (default streamcell)")
    k.add_argument("--client-id", default="streamcell", help="Kafka client id")
    k.add_argument("--input-topic", default="streamcell.events")
    k.add_argument("--output-topic", default="streamcell.predictions")
    k.add_argument("--dead-letter-topic", default="streamcell.dead-letters")
    k.add_argument(
        "--changelog-topic",
        default="streamcell.state-changelog",
        help="compacted; created with the input topic's partition count",
    )
    k.add_argument(
        "--partitions", type=int, default=3, help="partitions of an input topic to create"
    )
    k.add_argument("--session-timeout-ms", type=int, default=6000)
    k.add_argument(
        "--commit-interval-ms",
        type=int,
        default=1000,
        help="flush predictions, write changed state, commit offsets this often (default 1000)",
    )
    k.add_argument(
        "--idle-commit-ms",
        type=int,
        default=100,
        help="once a poll finds no events, checkpoint this long after the last checkpoint "
        "instead of at the next interval (default 100; 0: on the interval only)",
    )
    k.add_argument(
        "--restore-timeout-s",
        type=float,
        default=60.0,
        help="longest a changelog restore on assignment may take (default 60)",
    )
    k.add_argument("--event-format", choices=("json", "protobuf"), default="json")
    k.add_argument("--max-batch", type=int, default=1024, help="events per micro-batch at most")
    k.add_argument(
        "--max-batch-delay-ms",
        type=int,
        default=5,
        help="how long one poll waits for events to fill a batch (default 5)",
    )
    st = parser.add_argument_group("state")
    st.add_argument(
        "--max-streams", type=int, default=100_000, help="streams held before LRU eviction"
    )
    st.add_argument("--stream-ttl-s", type=float, default=None, help="expire idle streams")
    st.add_argument(
        "--keep-gates", action="store_true", help="keep each stream's last gate activations"
    )
    st.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: keeps the step batch-invariant and bit-exact)",
    )
    st.add_argument(
        "--device",
        default="cpu",
        help="where the LSTM step and the (h, c) slabs live: cpu (default), cuda, cuda:N, "
        "or auto (the first GPU if torch sees one, else the CPU)",
    )
    m = parser.add_argument_group("metrics")
    m.add_argument("--metrics-host", default="0.0.0.0")
    m.add_argument(
        "--metrics-port", type=int, default=9100, help="Prometheus /metrics (0: a free port)"
    )
    m.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")
    parser.add_argument("--no-grpc", action="store_true", help="do not serve gRPC")
    try:
        from streamcell.service.grpc_api import add_grpc_arguments
    except ImportError:  # gRPC extras missing: serve Kafka only
        return
    add_grpc_arguments(parser)


def settings_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None):
    """Flags and environment -> ServeSettings (no I/O besides reading the env mapping)."""
    from streamcell.service.settings import ServeSettings

    env = os.environ if environ is None else environ
    grpc = None
    if not args.no_grpc and hasattr(args, "grpc_port"):
        from streamcell.service.grpc_api import GrpcSettings

        grpc = GrpcSettings.from_args(args)
    return ServeSettings(
        registry=args.registry,
        model=args.model,
        bootstrap_servers=args.bootstrap_servers or env.get(ENV_BOOTSTRAP) or None,
        kafka_client=args.kafka_client,
        group_id=args.group_id,
        client_id=args.client_id,
        input_topic=args.input_topic,
        output_topic=args.output_topic,
        dead_letter_topic=args.dead_letter_topic,
        changelog_topic=args.changelog_topic,
        partitions=args.partitions,
        session_timeout_ms=args.session_timeout_ms,
        commit_interval_ms=args.commit_interval_ms,
        idle_commit_ms=args.idle_commit_ms,
        event_format=args.event_format,
        max_batch=args.max_batch,
        max_batch_delay_ms=args.max_batch_delay_ms,
        max_streams=args.max_streams,
        stream_ttl_s=args.stream_ttl_s,
        poll_registry_s=args.poll_registry_s,
        require_model=args.require_model,
        metrics_host=args.metrics_host,
        metrics_port=None if args.no_metrics else args.metrics_port,
        keep_gates=args.keep_gates,
        torch_threads=args.torch_threads,
        device=args.device,
        restore_timeout_s=args.restore_timeout_s,
        grpc=grpc,
    )


def run(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from streamcell.service.app import App

    settings = settings_from_args(args)
    stop = threading.Event()
    log = logging.getLogger("streamcell.serve")

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            return
        name = signal.Signals(signum).name
        log.info("%s received: finishing the batch, committing, leaving the group", name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return App(settings).run(stop)
