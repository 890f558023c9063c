"""`streamcell predict`: send events to a running service, print its predictions.

Reads JSON lines (the event contract of docs/ARCHITECTURE.md: ``{"stream", "seq"?, "ts"?, "x"}``)
from a file or stdin and prints one JSON line per prediction, so the API can be
tried by hand: ``echo '{"stream":"a","x":[1,2,3]}' | streamcell predict``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from streamcell.core.errors import ConfigError, InvalidEvent, StreamcellError
from streamcell.service.settings import GRPC_PORT

HELP = "send events (JSON lines) to a streamcell gRPC service and print its predictions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input", nargs="?", default="-", help="JSON-lines file of events ('-' or none: stdin)"
    )
    parser.add_argument(
        "--target", default=f"localhost:{GRPC_PORT}", help="host:port of the service"
    )
    parser.add_argument("--tls", action="store_true", help="use TLS with the system's CA roots")
    parser.add_argument("--tls-ca", default=None, help="PEM CA certificate to trust (implies TLS)")
    parser.add_argument("--auth-token", default=None, help="bearer token")
    parser.add_argument(
        "--batch",
        type=int,
        default=0,
        metavar="N",
        help="send N events per PredictBatch call (default: one Predict call per event)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline per call, seconds")


def _events(stream: IO[str]) -> Iterator[Any]:
    """Event messages of the non-blank lines, read as the service reads a JSON event."""
    from streamcell.core.events import EMPTY_STREAM, NO_SEQ, REASON_MISSING_KEY
    from streamcell.service.client import event
    from streamcell.service.codec import parse_json

    for lineno, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            name, seq, ts, x = parse_json(line.encode())
            if not name:  # no Kafka key here: the stream id is the value's
                raise InvalidEvent(REASON_MISSING_KEY, EMPTY_STREAM)
        except InvalidEvent as exc:
            raise InvalidEvent(exc.reason, f"line {lineno}: not an event: {exc}") from exc
        yield event(name, x, None if seq == NO_SEQ else seq, ts)


def _as_json(p: Any) -> str:
    out: dict[str, Any] = {"stream": p.stream}
    if p.HasField("seq"):
        out["seq"] = p.seq
    out["yhat"] = list(p.yhat)
    if p.quantiles:  # as the Kafka predictions write them; a level is a float32 on the wire
        out["quantiles"] = [
            {"level": float(f"{q.level:.7g}"), "yhat": list(q.yhat)} for q in p.quantiles
        ]
    out.update(model=p.model, version=p.version, events=p.events)
    if p.outcome:
        out["duplicate"] = True
    return json.dumps(out)


def _chunks(events: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for e in events:
        chunk.append(e)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run(args: argparse.Namespace) -> int:
    import grpc

    from streamcell.service.client import Client

    if args.batch < 0:
        raise ConfigError("--batch must be >= 0")
    try:
        tls_ca = None if args.tls_ca is None else Path(args.tls_ca).read_bytes()
        source = sys.stdin if args.input == "-" else open(args.input)  # noqa: SIM115
    except OSError as exc:
        raise ConfigError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    client = Client(
        args.target,
        tls=args.tls,
        tls_ca=tls_ca,
        auth_token=args.auth_token,
        timeout=args.timeout,
    )
    try:
        events = _events(source)
        if args.batch:
            for chunk in _chunks(events, args.batch):
                for p in client.predict_batch(chunk):
                    print(_as_json(p), flush=False)
                sys.stdout.flush()
        else:
            for e in events:
                print(_as_json(client.predict_event(e)), flush=True)
    except grpc.RpcError as exc:
        raise StreamcellError(f"{exc.code().name}: {exc.details()}") from exc  # type: ignore[attr-defined]
    finally:
        client.close()
        if source is not sys.stdin:
            source.close()
    return 0
