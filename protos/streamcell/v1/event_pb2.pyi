from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Event(_message.Message):
    __slots__ = ("stream", "seq", "ts", "x")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    stream: str
    seq: int
    ts: float
    x: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, stream: _Optional[str] = ..., seq: _Optional[int] = ..., ts: _Optional[float] = ..., x: _Optional[_Iterable[float]] = ...) -> None: ...
