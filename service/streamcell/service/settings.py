"""The settings of `streamcell serve`: one frozen object, built once at the entry point.

Nothing below ``serve_cli`` reads flags or the environment; every part of the
service gets what it needs from a :class:`ServeSettings`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamcell.core.errors import ConfigError
from streamcell.service.codec import FORMATS


@dataclass(frozen=True)
class ServeSettings:
    """Everything one serving replica is configured with."""

    registry: Path
    model: str
    bootstrap_servers: str | None = None
    kafka_client: str = "kafka-python"
    group_id: str = "streamcell"
    client_id: str = "streamcell"
    input_topic: str = "streamcell.events"
    output_topic: str = "streamcell.predictions"
    dead_letter_topic: str = "streamcell.dead-letters"
    changelog_topic: str = "streamcell.state-changelog"
    partitions: int = 3  # for an input topic that has to be created
    session_timeout_ms: int = 6000
    commit_interval_ms: int = 1000
    idle_commit_ms: int = 100
    event_format: str = "json"
    max_batch: int = 1024
    max_batch_delay_ms: int = 5
    max_streams: int = 100_000
    stream_ttl_s: float | None = None
    poll_registry_s: float = 10.0
    require_model: bool = False
    metrics_host: str = "0.0.0.0"
    metrics_port: int | None = 9100
    keep_gates: bool = False
    torch_threads: int = 1
    device: str = "cpu"  # auto, cpu, cuda or cuda:N (resolved when the service starts)
    restore_timeout_s: float = 60.0
    grpc: Any = None  # grpc_api.GrpcSettings, or None for no gRPC server

    def __post_init__(self) -> None:
        positive = (
            ("commit_interval_ms", self.commit_interval_ms),
            ("max_batch", self.max_batch),
            ("max_streams", self.max_streams),
            ("torch_threads", self.torch_threads),
            ("partitions", self.partitions),
            ("session_timeout_ms", self.session_timeout_ms),
        )
        for name, value in positive:
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        # "not x > 0" (rather than "x <= 0") also refuses nan, which argparse's float accepts
        if not self.restore_timeout_s > 0:
            raise ConfigError(f"--restore-timeout-s must be positive, got {self.restore_timeout_s}")
        if self.max_batch_delay_ms < 0:
            raise ConfigError("--max-batch-delay-ms must be >= 0")
        if self.idle_commit_ms < 0:
            raise ConfigError(f"--idle-commit-ms must be >= 0 (0: off), got {self.idle_commit_ms}")
        if self.stream_ttl_s is not None and not self.stream_ttl_s > 0:
            raise ConfigError(f"--stream-ttl-s must be positive, got {self.stream_ttl_s}")
        if math.isnan(self.poll_registry_s):
            raise ConfigError("--poll-registry-s must be a number of seconds (0: never reload)")
        if self.session_timeout_ms < 3:  # the heartbeat interval is a third of it
            raise ConfigError(
                f"--session-timeout-ms must be at least 3, got {self.session_timeout_ms}"
            )
        if self.event_format not in FORMATS:
            raise ConfigError(f"--event-format must be one of {', '.join(FORMATS)}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"--metrics-port must be in 0..65535, got {self.metrics_port}")
        topics = [self.input_topic, self.output_topic, self.dead_letter_topic, self.changelog_topic]
        if len(set(topics)) != len(topics):
            raise ConfigError(f"the four topics must differ, got {topics}")
