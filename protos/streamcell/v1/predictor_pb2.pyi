from streamcell.v1 import event_pb2 as _event_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_PREDICTED: _ClassVar[Outcome]
    OUTCOME_DUPLICATE: _ClassVar[Outcome]
OUTCOME_PREDICTED: Outcome
OUTCOME_DUPLICATE: Outcome

class EventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_event_pb2.Event]
    def __init__(self, events: _Optional[_Iterable[_Union[_event_pb2.Event, _Mapping]]] = ...) -> None: ...

class Quantile(_message.Message):
    __slots__ = ("level", "yhat")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    YHAT_FIELD_NUMBER: _ClassVar[int]
    level: float
    yhat: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, level: _Optional[float] = ..., yhat: _Optional[_Iterable[float]] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("stream", "seq", "yhat", "model", "version", "events", "outcome", "quantiles", "partition", "offset")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    YHAT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    QUANTILES_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    stream: str
    seq: int
    yhat: _containers.RepeatedScalarFieldContainer[float]
    model: str
    version: str
    events: int
    outcome: Outcome
    quantiles: _containers.RepeatedCompositeFieldContainer[Quantile]
    partition: int
    offset: int
    def __init__(self, stream: _Optional[str] = ..., seq: _Optional[int] = ..., yhat: _Optional[_Iterable[float]] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., events: _Optional[int] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., quantiles: _Optional[_Iterable[_Union[Quantile, _Mapping]]] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class PredictionBatch(_message.Message):
    __slots__ = ("predictions",)
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    def __init__(self, predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ...) -> None: ...

class ForecastRequest(_message.Message):
    __slots__ = ("stream", "horizon")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    stream: str
    horizon: int
    def __init__(self, stream: _Optional[str] = ..., horizon: _Optional[int] = ...) -> None: ...

class ForecastStep(_message.Message):
    __slots__ = ("yhat", "quantiles")
    YHAT_FIELD_NUMBER: _ClassVar[int]
    QUANTILES_FIELD_NUMBER: _ClassVar[int]
    yhat: _containers.RepeatedScalarFieldContainer[float]
    quantiles: _containers.RepeatedCompositeFieldContainer[Quantile]
    def __init__(self, yhat: _Optional[_Iterable[float]] = ..., quantiles: _Optional[_Iterable[_Union[Quantile, _Mapping]]] = ...) -> None: ...

class Forecast(_message.Message):
    __slots__ = ("stream", "steps", "model", "version")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    stream: str
    steps: _containers.RepeatedCompositeFieldContainer[ForecastStep]
    model: str
    version: str
    def __init__(self, stream: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[ForecastStep, _Mapping]]] = ..., model: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("stream", "include_gates", "missing_ok")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_GATES_FIELD_NUMBER: _ClassVar[int]
    MISSING_OK_FIELD_NUMBER: _ClassVar[int]
    stream: str
    include_gates: bool
    missing_ok: bool
    def __init__(self, stream: _Optional[str] = ..., include_gates: _Optional[bool] = ..., missing_ok: _Optional[bool] = ...) -> None: ...

class LayerGates(_message.Message):
    __slots__ = ("input", "forget", "cell", "output")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    FORGET_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    input: _containers.RepeatedScalarFieldContainer[float]
    forget: _containers.RepeatedScalarFieldContainer[float]
    cell: _containers.RepeatedScalarFieldContainer[float]
    output: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, input: _Optional[_Iterable[float]] = ..., forget: _Optional[_Iterable[float]] = ..., cell: _Optional[_Iterable[float]] = ..., output: _Optional[_Iterable[float]] = ...) -> None: ...

class StreamState(_message.Message):
    __slots__ = ("stream", "exists", "events", "seq", "partition", "offset", "last_seen", "last_prediction", "online_mae", "gates", "history", "scale", "last_quantiles", "coverage")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_PREDICTION_FIELD_NUMBER: _ClassVar[int]
    ONLINE_MAE_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    LAST_QUANTILES_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    stream: str
    exists: bool
    events: int
    seq: int
    partition: int
    offset: int
    last_seen: float
    last_prediction: _containers.RepeatedScalarFieldContainer[float]
    online_mae: float
    gates: _containers.RepeatedCompositeFieldContainer[LayerGates]
    history: _containers.RepeatedScalarFieldContainer[float]
    scale: float
    last_quantiles: _containers.RepeatedCompositeFieldContainer[Quantile]
    coverage: _containers.RepeatedCompositeFieldContainer[IntervalCoverage]
    def __init__(self, stream: _Optional[str] = ..., exists: _Optional[bool] = ..., events: _Optional[int] = ..., seq: _Optional[int] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ..., last_seen: _Optional[float] = ..., last_prediction: _Optional[_Iterable[float]] = ..., online_mae: _Optional[float] = ..., gates: _Optional[_Iterable[_Union[LayerGates, _Mapping]]] = ..., history: _Optional[_Iterable[float]] = ..., scale: _Optional[float] = ..., last_quantiles: _Optional[_Iterable[_Union[Quantile, _Mapping]]] = ..., coverage: _Optional[_Iterable[_Union[IntervalCoverage, _Mapping]]] = ...) -> None: ...

class IntervalCoverage(_message.Message):
    __slots__ = ("interval", "lower", "upper", "scored", "inside")
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    SCORED_FIELD_NUMBER: _ClassVar[int]
    INSIDE_FIELD_NUMBER: _ClassVar[int]
    interval: float
    lower: float
    upper: float
    scored: int
    inside: int
    def __init__(self, interval: _Optional[float] = ..., lower: _Optional[float] = ..., upper: _Optional[float] = ..., scored: _Optional[int] = ..., inside: _Optional[int] = ...) -> None: ...

class StreamAck(_message.Message):
    __slots__ = ("stream",)
    STREAM_FIELD_NUMBER: _ClassVar[int]
    stream: str
    def __init__(self, stream: _Optional[str] = ...) -> None: ...

class ListStreamsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListStreamsResponse(_message.Message):
    __slots__ = ("streams", "next_page_token")
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    streams: _containers.RepeatedScalarFieldContainer[str]
    next_page_token: str
    def __init__(self, streams: _Optional[_Iterable[str]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfoResponse(_message.Message):
    __slots__ = ("name", "version", "input_size", "hidden_size", "num_layers", "output_size", "features", "targets", "autoregressive", "scaling", "streams", "max_streams", "quantile_levels")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    AUTOREGRESSIVE_FIELD_NUMBER: _ClassVar[int]
    SCALING_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAMS_FIELD_NUMBER: _ClassVar[int]
    QUANTILE_LEVELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    input_size: int
    hidden_size: int
    num_layers: int
    output_size: int
    features: _containers.RepeatedScalarFieldContainer[str]
    targets: _containers.RepeatedScalarFieldContainer[str]
    autoregressive: bool
    scaling: str
    streams: int
    max_streams: int
    quantile_levels: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., input_size: _Optional[int] = ..., hidden_size: _Optional[int] = ..., num_layers: _Optional[int] = ..., output_size: _Optional[int] = ..., features: _Optional[_Iterable[str]] = ..., targets: _Optional[_Iterable[str]] = ..., autoregressive: _Optional[bool] = ..., scaling: _Optional[str] = ..., streams: _Optional[int] = ..., max_streams: _Optional[int] = ..., quantile_levels: _Optional[_Iterable[float]] = ...) -> None: ...
