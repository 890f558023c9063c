"""The `streamcell` command: one entry point, a subcommand per job.

Each subcommand lives in its own module exposing ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Those modules import
nothing heavy at import time (torch, Ray, Kafka clients load inside ``run``),
so ``streamcell --help`` is quick and the service never loads Ray.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import sys
from collections.abc import Sequence

from streamcell.core.errors import StreamcellError

SUBCOMMANDS: dict[str, str] = {
    "models": "streamcell.core.registry_cli",
    "train": "streamcell.trainer.cli",
    "broker": "streamcell.service.broker_cli",
    "replay": "streamcell.service.replay_cli",
    "predict": "streamcell.service.predict_cli",
    "serve": "streamcell.service.serve_cli",
    "demo": "streamcell.demo.cli",
}


def version() -> str:
    """The installed distribution's version: pyproject.toml is the one place it is written."""
    try:
        return importlib.metadata.version("streamcell")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamcell",
        description="Online sequence prediction on event streams (Kafka, gRPC, Ray, Prometheus).",
    )
    parser.add_argument("--version", action="version", version=f"streamcell {version()}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity (default: INFO)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        child = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(child)
        child.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if logging.getLogger().level > logging.DEBUG:
        # kafka-python narrates every connection at INFO; keep that for --log-level DEBUG.
        logging.getLogger("kafka").setLevel(logging.WARNING)
    try:
        return int(args._run(args) or 0)
    except StreamcellError as exc:
        print(f"streamcell {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
