"""One root exception for the project, one-line subclasses.

Each subclass maps to one gRPC status code (service/grpc_errors.py) and, for
events, one dead-letter reason (``InvalidEvent.reason``); nowhere else decides.
"""

from __future__ import annotations


class StreamcellError(Exception):
    """Root of every error streamcell raises on purpose."""


class ConfigError(StreamcellError):
    """A setting, flag or config file is wrong."""


class CheckpointError(StreamcellError):
    """A checkpoint is missing, truncated, mismatched or hostile."""


class ModelNotLoaded(StreamcellError):
    """No model version is loaded yet."""


class StreamNotFound(StreamcellError):
    """The stream id is not in the state store."""


class Overloaded(StreamcellError):
    """A configured in-flight or capacity limit was reached."""


class BrokerUnavailable(StreamcellError):
    """The Kafka cluster cannot be reached."""


class DataError(StreamcellError):
    """Training data is unreadable or unusable."""


class StateFormatError(StreamcellError):
    """A state snapshot does not decode, or was written for another architecture."""


class InvalidEvent(StreamcellError):
    """An event failed decoding or validation; ``reason`` is a short stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ColdTierError(StreamcellError):
    """The cold tier on local disk failed, or its directory went away: rebuild it from the
    changelog (the Kafka loop does, in the running process)."""
