"""`streamcell serve`: flags and environment -> settings; clear errors; waiting for a model."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pipeline_support import LAG_RECIPE, Serve, make_model

from streamcell.cli import main
from streamcell.core.errors import ConfigError
from streamcell.service import serve_cli


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    return parser.parse_args(["--registry", "reg", "--model", "m", *argv])


def test_bootstrap_servers_come_from_the_flag_else_the_environment():
    env = {"KAFKA_BOOTSTRAP_SERVERS": "envhost:9092"}
    assert serve_cli.settings_from_args(parse(), env).kafka.bootstrap_servers == "envhost:9092"
    flagged = parse("--bootstrap-servers", "flaghost:9092")
    assert serve_cli.settings_from_args(flagged, env).kafka.bootstrap_servers == "flaghost:9092"
    assert serve_cli.settings_from_args(parse(), {}).kafka.bootstrap_servers is None


def test_settings_carry_the_flags():
    s = serve_cli.settings_from_args(
        parse(
            "--kafka-client", "confluent", "--event-format", "protobuf", "--max-streams", "7",
            "--stream-ttl-s", "60", "--commit-interval-ms", "250", "--grpc-port", "0",
            "--no-metrics", "--idle-commit-ms", "0",
        ),
        {},
    )  # fmt: skip
    assert (s.kafka.client, s.pipeline.event_format, s.state.max_streams) == (
        "confluent",
        "protobuf",
        7,
    )
    assert s.state.stream_ttl_s == 60.0 and s.pipeline.commit_interval_ms == 250
    assert s.metrics.port is None and s.state.torch_threads == 1
    assert s.pipeline.idle_commit_ms == 0
    assert s.grpc is not None and s.grpc.port == 0
    assert serve_cli.settings_from_args(parse("--no-grpc"), {}).grpc is None
    with pytest.raises(AttributeError):
        s.state.max_streams = 1  # frozen
    assert not hasattr(s, "max_streams")  # one name per setting: the section's


def test_the_prediction_format_and_compression_flags_reach_the_settings():
    from streamcell.service import settings
    from streamcell.service.confluent_client import _producer_conf
    from streamcell.service.kafka import KafkaClientConfig
    from streamcell.service.kafka_python_client import _producer_kwargs

    default = serve_cli.settings_from_args(parse(), {})
    assert default.pipeline.prediction_format == settings.FORMAT_JSON  # today's consumers
    assert default.kafka.producer_compression == "none"
    s = serve_cli.settings_from_args(
        parse("--prediction-format", "protobuf", "--producer-compression", "lz4"), {}
    )
    assert (s.pipeline.prediction_format, s.kafka.producer_compression) == ("protobuf", "lz4")
    cfg = KafkaClientConfig("h:1", compression="lz4")
    assert _producer_conf(cfg)["compression.type"] == "lz4"
    gzip = KafkaClientConfig("h:1", compression="gzip")  # the standard library's
    assert _producer_kwargs(gzip)["compression_type"] == "gzip"
    assert _producer_kwargs(KafkaClientConfig("h:1"))["compression_type"] is None
    import kafka.codec

    if not kafka.codec.has_lz4():
        with pytest.raises(ConfigError, match="kafka-python cannot compress with lz4"):
            _producer_kwargs(cfg)
    with pytest.raises(ConfigError, match="compression must be one of"):
        KafkaClientConfig("h:1", compression="brotli")
    with pytest.raises(ConfigError, match="--prediction-format must be one of"):
        settings.PipelineSettings(prediction_format="avro")
    with pytest.raises(ConfigError, match="--producer-compression must be one of"):
        settings.KafkaSettings(producer_compression="brotli")


def test_every_flag_default_is_its_fields_default():
    """One table: each flag's default is read from its section's field, nowhere else."""
    from streamcell.service import settings

    s = serve_cli.settings_from_args(parse(), {})
    assert s.kafka == settings.KafkaSettings()
    assert s.pipeline == settings.PipelineSettings()
    assert s.state == settings.StateSettings()
    assert s.metrics == settings.MetricsSettings()
    assert s.grpc == settings.GrpcSettings()
    assert (s.require_model, s.poll_registry_s) == (False, 10.0)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-batch", "0"], "--max-batch must be at least 1"),
        (["--idle-commit-ms", "-5"], "--idle-commit-ms must be >= 0 (0: off), got -5"),
        (["--dead-letter-max-bytes", "100"], "--dead-letter-max-bytes must be in [4096, "),
        (["--input-topic", "t", "--output-topic", "t"], "the four topics must differ"),
        (["--stream-ttl-s", "-1"], "--stream-ttl-s must be positive"),
        (["--stream-ttl-s", "nan"], "--stream-ttl-s must be positive, got nan"),
        (["--restore-timeout-s", "nan"], "--restore-timeout-s must be positive"),
        (["--ack-timeout-s", "0"], "--ack-timeout-s must be positive, got 0.0"),
        (["--request-timeout-ms", "10"], "--request-timeout-ms must be at least 1000, got 10"),
        (["--poll-registry-s", "nan"], "--poll-registry-s must be a number"),
        (["--device", "gpu"], "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        pytest.param(
            ["--device", "cuda"],
            "sees no CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here"),
        ),
    ],
)
def test_bad_settings_exit_2_with_a_message(flags, message, capsys):
    assert main(["serve", "--registry", "reg", "--model", "m", *flags]) == 2
    assert message in capsys.readouterr().err


def run_serve(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as state:  # its own cold tier: tests run side by side
        return subprocess.run(
            [sys.executable, "-m", "streamcell.cli", "serve", "--metrics-port", "0",
             "--grpc-port", "0", "--grpc-host", "127.0.0.1", "--state-dir", state, *argv],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_unreachable_broker_is_a_clear_error(tmp_path):
    make_model(tmp_path)
    addr = f"127.0.0.1:{free_port()}"  # nothing listens there
    done = run_serve(
        "--registry", str(tmp_path), "--model", "m", "--bootstrap-servers", addr,
        "--broker-wait-s", "0",  # fail at once, as before the wait existed
    )  # fmt: skip
    assert done.returncode == 2
    assert f"cannot reach Kafka at {addr}" in done.stderr


@pytest.mark.slow
def test_missing_registry_and_missing_model_are_clear_errors(tmp_path):
    done = run_serve("--registry", str(tmp_path / "nope"), "--model", "m")
    assert done.returncode == 2
    assert f"model registry {tmp_path / 'nope'} is not a directory" in done.stderr
    done = run_serve("--registry", str(tmp_path), "--model", "m", "--require-model")
    assert done.returncode == 2
    assert "no loadable version of model 'm'" in done.stderr


@pytest.mark.slow
def test_a_bad_recipe_is_refused_at_load_naming_the_field(tmp_path):
    version = make_model(tmp_path, recipe=LAG_RECIPE)
    config = json.loads((version / "config.json").read_text())
    config["recipe"]["periods"] = [1]
    (version / "config.json").write_text(json.dumps(config))
    done = run_serve("--registry", str(tmp_path), "--model", "m", "--require-model")
    assert done.returncode == 2
    assert "recipe.periods must be integers in 2..100000, got 1" in done.stderr
    assert "no loadable version of model 'm'" in done.stderr


def health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


@pytest.mark.slow
def test_serve_waits_for_a_model_then_serves_and_stops_on_sigterm(tmp_path: Path):
    serve = Serve(
        tmp_path / "serve.log",
        ["--registry", str(tmp_path), "--model", "m", "--poll-registry-s", "0.2",
         "--metrics-port", "0", "--grpc-port", "0", "--grpc-host", "127.0.0.1"],
    )  # fmt: skip
    try:
        port = int(serve.wait_for(r"gRPC listening on [\d.]+:(\d+)").group(1))
        serve.wait_for("no loadable version of model 'm' in registry .* waiting for one")
        assert health(port) == health_pb2.HealthCheckResponse.NOT_SERVING
        make_model(tmp_path, version="v1")
        serve.wait_for("serving model m version v1")
        serve.wait_for("serving gRPC only")
        for _ in range(50):  # the health watcher refreshes every 0.2 s
            if health(port) == health_pb2.HealthCheckResponse.SERVING:
                break
            time.sleep(0.1)
        assert health(port) == health_pb2.HealthCheckResponse.SERVING
        assert serve.terminate() == 0
    finally:
        serve.stop()


def test_replay_takes_its_kafka_flags_from_the_same_table():
    from streamcell.service import flags, replay_cli, settings

    parser = argparse.ArgumentParser()
    replay_cli.add_arguments(parser)
    args = parser.parse_args(["events.csv"])
    assert (args.kafka_client, args.partitions, args.event_format, args.topic) == (
        settings.KafkaSettings.client,
        settings.KafkaSettings.partitions,
        settings.PipelineSettings.event_format,
        settings.INPUT_TOPIC,
    )
    assert flags.bootstrap_servers(args, {settings.ENV_BOOTSTRAP: "h:1"}) == "h:1"


@pytest.mark.parametrize(
    ("host", "token", "warned"),
    [
        ("0.0.0.0", None, True),
        ("::", None, True),
        ("10.1.2.3", None, True),
        ("0.0.0.0", "s3cret", False),
        ("127.0.0.1", None, False),
        ("localhost", None, False),
        ("::1", None, False),
    ],
)
def test_serve_warns_when_state_changing_rpcs_are_open_to_the_network(host, token, warned):
    from streamcell.service.settings import GrpcSettings

    warning = GrpcSettings(host=host, auth_token=token).exposure_warning()
    assert (warning is not None) == warned
    if warned:
        assert "DeleteStream" in warning and "--auth-token-file" in warning
