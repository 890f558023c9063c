"""streamcell errors -> gRPC status codes, decided here and nowhere else.

The servicer raises (or lets through) :class:`~streamcell.core.errors.StreamcellError`
subclasses; :func:`status_of` picks the code, and the message is the
exception's own text, which says what was wrong.
"""

from __future__ import annotations

import grpc

from streamcell.core.errors import (
    ConfigError,
    InvalidEvent,
    ModelNotLoaded,
    Overloaded,
    StreamcellError,
    StreamNotFound,
)


class NotOwned(StreamcellError):
    """The stream's partition is assigned to another replica; the message names it."""


class RequestTooLarge(StreamcellError):
    """A request over a configured cap (PredictBatch's events or depth); the message names it.

    INVALID_ARGUMENT, not RESOURCE_EXHAUSTED: the request is refused whatever
    the server's load, so retrying it unchanged never helps; splitting it does.
    """


CODES: dict[type[StreamcellError], grpc.StatusCode] = {
    InvalidEvent: grpc.StatusCode.INVALID_ARGUMENT,
    ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    StreamNotFound: grpc.StatusCode.NOT_FOUND,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ModelNotLoaded: grpc.StatusCode.UNAVAILABLE,
    NotOwned: grpc.StatusCode.FAILED_PRECONDITION,
    RequestTooLarge: grpc.StatusCode.INVALID_ARGUMENT,
}


def status_of(exc: StreamcellError) -> tuple[grpc.StatusCode, str]:
    """The status code and details for an error (INTERNAL for anything unmapped)."""
    for cls in type(exc).__mro__:
        code = CODES.get(cls)
        if code is not None:
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"


def abort(context: grpc.ServicerContext, exc: StreamcellError) -> None:
    """End the call with the error's status (raises, as ``context.abort`` does)."""
    code, details = status_of(exc)
    context.abort(code, details)
