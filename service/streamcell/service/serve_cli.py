"""`streamcell serve`: the serving replica (Kafka pipeline, gRPC, metrics, hot reloads).

The only place that reads the environment (``KAFKA_BOOTSTRAP_SERVERS``) and
turns flags into the frozen settings tree (``settings.py``). SIGTERM and SIGINT stop it
gracefully: the batch in hand is finished, state and offsets are committed,
the replica leaves its group and exits 0.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from streamcell.service import flags, settings

HELP = "serve predictions: Kafka events in, per-stream LSTM state, predictions out; gRPC API"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    flags.add_arguments(parser)


def settings_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> settings.ServeSettings:
    """Flags and environment -> ServeSettings (no I/O besides reading the env mapping)."""
    return flags.from_args(args, os.environ if environ is None else environ)


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
