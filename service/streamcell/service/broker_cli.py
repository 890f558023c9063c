"""`streamcell broker`: the embedded Kafka-protocol broker, in the foreground.

For development, tests and the demo (no Docker needed). Storage is in memory:
topics vanish when it stops. SIGTERM or SIGINT stop it cleanly (exit 0).
"""

from __future__ import annotations

import argparse

HELP = "run the embedded Kafka-protocol broker (Tansu, in memory) until interrupted"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        default="127.0.0.1:9092",
        metavar="HOST:PORT",
        help="address to listen on (default: 127.0.0.1:9092; port 0 picks a free port)",
    )
    parser.add_argument(
        "--advertised-host",
        help="host name given to clients (default: the listen host; the machine's "
        "host name when listening on 0.0.0.0)",
    )
    parser.add_argument("--quiet", action="store_true", help="hide the broker's own log output")


class _Stop(Exception):
    pass


def _raise_stop(signum, frame) -> None:
    raise _Stop(signum)


def run(args: argparse.Namespace) -> int:
    import signal
    import subprocess
    import sys

    from streamcell.service.broker import BrokerSettings, EmbeddedBroker, free_port

    settings = BrokerSettings.parse(args.listen, args.advertised_host)
    if settings.port == 0:
        settings = BrokerSettings(settings.host, free_port(settings.host), settings.advertised_host)
    broker = EmbeddedBroker(settings, output=subprocess.DEVNULL if args.quiet else sys.stderr)
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        broker.start()
        print(f"broker listening on {broker.bootstrap}", flush=True)
        code = broker.wait()
        print(
            f"streamcell broker: error: the broker exited by itself (code {code})", file=sys.stderr
        )
        return 1
    except _Stop:
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        broker.stop()
