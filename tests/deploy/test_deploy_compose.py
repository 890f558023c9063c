"""docker-compose.yml: valid for docker-compose, and every `streamcell ...` command real.

No Docker engine runs here, so the cluster is checked without running it:
``docker-compose config`` (Debian package) validates and resolves the file,
each service whose command is ``streamcell SUB ...`` is parsed by the real
argparse parser of core/streamcell/cli.py, and the wiring between services (topics,
group, scrape targets, health checks, start order) is checked against the
other deploy/ files.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamcell import cli

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKER_COMPOSE = shutil.which("docker-compose")
REQUIRED_SUBCOMMANDS = ("train", "serve", "replay", "broker")

needs_compose = pytest.mark.skipif(
    DOCKER_COMPOSE is None,
    reason="docker-compose not installed (Debian package docker-compose; make system-deps)",
)


def compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    assert DOCKER_COMPOSE is not None
    return subprocess.run(
        [DOCKER_COMPOSE, "-f", str(path), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=path.parent,
    )


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    """The services as docker-compose resolves them (anchors and merges applied)."""
    if DOCKER_COMPOSE is None:
        return yaml.safe_load(COMPOSE.read_text())["services"]
    done = compose_config(COMPOSE)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)["services"]


def streamcell_commands(services: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """service -> argv after `streamcell`, also for `ray job submit ... -- streamcell ...`."""
    out = {}
    for name, svc in services.items():
        command = svc.get("command")
        if not isinstance(command, list) or not command:
            continue
        if command[0] == "ray" and "--" in command:
            command = command[command.index("--") + 1 :]
        if command[0] == "streamcell":
            out[name] = command[1:]
    return out


def ray_commands(services: dict[str, dict[str, Any]]) -> list[list[str]]:
    """argv after `ray` of every command and health check that runs Ray's CLI."""
    out = []
    for svc in services.values():
        command = svc.get("command")
        if isinstance(command, list) and command and command[0] == "ray":
            out.append(command[1:])
        test = svc.get("healthcheck", {}).get("test", [])
        shell = test[1] if test[:1] == ["CMD-SHELL"] else " ".join(map(shlex.quote, test[1:]))
        for part in shell.split("&&"):
            argv = shlex.split(part.split(">")[0])
            if argv and argv[0] == "ray":
                out.append(argv[1:])
    return out


def option(argv: list[str], name: str) -> str | None:
    for arg in argv:
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


@needs_compose
def test_docker_compose_config_validates() -> None:
    done = compose_config(COMPOSE)
    assert done.returncode == 0, done.stderr
    assert "services:" in done.stdout


@needs_compose
def test_docker_compose_config_rejects_a_broken_file(tmp_path: Path) -> None:
    """The validation can fail: a dependency on a missing service is refused."""
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["producer"]["depends_on"]["no-such-service"] = {
        "condition": "service_healthy"
    }
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    (tmp_path / "deploy").symlink_to(ROOT / "deploy")
    done = compose_config(path)
    assert done.returncode != 0
    assert "no-such-service" in done.stderr


def test_every_streamcell_command_parses(services: dict[str, dict[str, Any]]) -> None:
    commands = streamcell_commands(services)
    assert {argv[0] for argv in commands.values()} >= {"train", "serve", "replay"}
    missing = [s for s in REQUIRED_SUBCOMMANDS if s not in cli.SUBCOMMANDS]
    parser = cli.build_parser()
    for name, argv in commands.items():
        if argv[0] in missing:
            continue
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # argparse already printed why
            raise AssertionError(
                f"service {name}: `streamcell {' '.join(argv)}` is invalid"
            ) from exc
        assert args.command == argv[0]
    with pytest.raises(SystemExit):  # the check can fail: an unknown option is refused
        parser.parse_args(["serve", "--registry=/r", "--model=m", "--no-such-option"])
    if missing:
        pytest.skip(
            f"subcommands not registered in core/streamcell/cli.py yet: {', '.join(missing)}"
        )


RAY_PARSE = """
import json, sys
import click
from ray.scripts.scripts import cli
bad = []
for argv in json.loads(sys.argv[1]):
    try:
        command, name, args = cli, "ray", list(argv)
        while isinstance(command, click.Group):  # ray job submit: descend to `submit`
            ctx = command.make_context(name, list(args), resilient_parsing=True)
            name, args = args[0], args[1:]
            command = command.get_command(ctx, name)
            if command is None:
                raise click.UsageError(f"no command {name!r}")
        command.make_context(name, args)
    except Exception as exc:
        bad.append(f"ray {' '.join(argv)}: {exc}")
print(json.dumps(bad))
"""


def test_every_ray_command_parses(services: dict[str, dict[str, Any]]) -> None:
    """`ray start`, `ray job submit` and the health checks use options Ray's CLI accepts."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (the train extra)")
    argvs = ray_commands(services)
    assert {tuple(a[:2]) for a in argvs} >= {("start", "--head"), ("job", "submit")}
    argvs.append(["start", "--no-such-option"])  # the check can fail
    argvs.append(["job", "submit", "--adress=http://x:8265", "--", "true"])
    # In a subprocess: importing Ray here would leak into the tests that assert it is absent.
    done = subprocess.run(
        [sys.executable, "-c", RAY_PARSE, json.dumps(argvs)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    bad = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(bad) == 2, bad
    assert "--no-such-option" in bad[0] and "--adress" in bad[1]


def test_kafka_runs_in_kraft_mode_and_topics_match_the_service(
    services: dict[str, dict[str, Any]],
) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "ZOOKEEPER" not in " ".join(env)
    assert "healthcheck" in kafka
    setup = services["kafka-topics"]
    assert setup["depends_on"]["kafka"]["condition"] == "service_healthy"
    script = " ".join(setup["command"])
    for name, argv in streamcell_commands(services).items():
        if argv[0] != "serve":
            continue
        for flag in ("--input-topic", "--output-topic", "--dead-letter-topic", "--changelog-topic"):
            topic = option(argv, flag)
            assert topic and f"--topic {topic} " in script, f"{name}: {flag} not created"
    changelog = next(line for line in script.splitlines() if "state-changelog --partitions" in line)
    events = next(line for line in script.splitlines() if "events --partitions" in line)
    assert "cleanup.policy=compact" in changelog
    assert (
        changelog.split("--partitions ")[1].split()[0]
        == events.split("--partitions ")[1].split()[0]
    )


def test_two_replicas_in_one_group_scraped_by_prometheus(
    services: dict[str, dict[str, Any]],
) -> None:
    replicas = {n: a for n, a in streamcell_commands(services).items() if a[0] == "serve"}
    assert len(replicas) == 2
    assert len({option(a, "--group-id") for a in replicas.values()}) == 1
    assert len({option(a, "--client-id") for a in replicas.values()}) == 2
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "streamcell")
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{n}:{option(a, '--metrics-port')}" for n, a in replicas.items()}
    for name in replicas:
        test = " ".join(services[name]["healthcheck"]["test"])
        assert "grpc_health" in test and "SERVING" in test, f"{name}: no gRPC health check"
        port = option(replicas[name], "--grpc-port")
        assert f"localhost:{port}" in test


def test_start_order_and_health(services: dict[str, dict[str, Any]]) -> None:
    def needs(service: str, dependency: str, condition: str) -> None:
        got = services[service].get("depends_on", {}).get(dependency, {}).get("condition")
        assert got == condition, f"{service} should wait for {dependency} ({condition}), got {got}"

    needs("ray-worker", "ray-head", "service_healthy")
    needs("train", "ray-head", "service_healthy")
    needs("train", "data", "service_completed_successfully")
    needs("producer", "streamcell-1", "service_healthy")
    needs("producer", "streamcell-2", "service_healthy")
    needs("streamcell-1", "kafka-topics", "service_completed_successfully")
    needs("grafana", "prometheus", "service_healthy")
    for name in ("kafka", "ray-head", "streamcell-1", "streamcell-2", "prometheus", "grafana"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"
    # The training job is submitted to the Ray cluster; its driver runs on the head, which
    # shares the registry with the replicas; head and worker share Ray Train's storage.
    assert services["train"]["command"][:3] == ["ray", "job", "submit"]
    assert "--address=http://ray-head:8265" in services["train"]["command"]
    assert "ray start --head" in " ".join(services["ray-head"]["command"])
    assert "--address=ray-head:6379" in services["ray-worker"]["command"]
    assert "8265/api/gcs_healthz" in " ".join(services["ray-head"]["healthcheck"]["test"])
    # One Ray auth setting for every member of the cluster and the job submitter.
    ray_env = [
        {k: v for k, v in services[n].get("environment", {}).items() if k.startswith("RAY_AUTH")}
        for n in ("ray-head", "ray-worker", "train")
    ]
    assert ray_env[0] and ray_env[0] == ray_env[1] == ray_env[2]

    def volume(service: str, target: str) -> str:
        for v in services[service].get("volumes", []):
            source, mounted = (
                (v.get("source"), v["target"]) if isinstance(v, dict) else v.split(":")[:2]
            )
            if mounted == target:
                return str(source)
        raise AssertionError(f"{service} mounts nothing at {target}")

    train = streamcell_commands(services)["train"]
    assert train[0] == "train"
    registry, data, storage = (
        option(train, "--registry"),
        option(train, "--data"),
        option(train, "--storage-path"),
    )
    assert registry and data and storage
    for name in ("streamcell-1", "streamcell-2"):
        assert volume(name, registry) == volume("ray-head", registry)
    assert volume("ray-head", storage) == volume("ray-worker", storage)
    data_dir = str(Path(data).parent)
    assert volume("ray-head", data_dir) == volume("data", data_dir)
    assert option(streamcell_commands(services)["streamcell-1"], "--model") == option(
        train, "--model"
    )


def test_prometheus_and_grafana_get_the_deploy_files(services: dict[str, dict[str, Any]]) -> None:
    def mounts(name: str) -> dict[str, str]:
        out = {}
        for v in services[name]["volumes"]:
            if isinstance(v, dict):
                out[v["target"]] = v["source"]
            else:
                source, target = v.split(":")[:2]
                out[target] = source
        return out

    prom = mounts("prometheus")
    assert Path(prom["/etc/prometheus"]).resolve() == ROOT / "deploy" / "prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    grafana = mounts("grafana")
    assert (
        Path(grafana["/etc/grafana/provisioning"]).resolve() == ROOT / "deploy/grafana/provisioning"
    )
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/streamcell.yml").read_text()
    )["providers"][0]
    dashboards = Path(grafana[provider["options"]["path"]]).resolve()
    assert dashboards == ROOT / "deploy" / "grafana" / "dashboards"
    assert (dashboards / "streamcell.json").is_file()


def test_dockerfile_builds_cpu_by_default_with_a_cuda_switch() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG TORCH_VARIANT=cpu" in dockerfile
    assert "download.pytorch.org/whl/${TORCH_VARIANT}" in dockerfile
    for part in ("core", "service", "trainer", "protos"):
        assert f"COPY {part} {part}" in dockerfile
    assert '"ray[default]"' in dockerfile  # the Jobs API behind `ray job submit` and RayJob
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


MODEL = r"""
import sys, torch
from streamcell.core.checkpoint import ModelConfig, save_checkpoint
from streamcell.core.model import StreamingLSTM
names = ("a", "b", "c")
cfg = ModelConfig(3, 8, 1, 3, names, names, (0.0,) * 3, (1.0,) * 3, (0.0,) * 3, (1.0,) * 3)
save_checkpoint(sys.argv[1], "m", StreamingLSTM(3, 8, 1, 3), cfg)
"""


@pytest.mark.slow
def test_replica_health_check_follows_the_model(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """The replicas' health check, run against a real `streamcell serve`: unhealthy until a
    model version exists, healthy after (what the producer's depends_on waits for)."""
    test = services["streamcell-1"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = test[3].replace("localhost:50051", f"127.0.0.1:{port}")
    assert script != test[3]

    def healthy() -> bool:
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, timeout=30, check=False
        )
        return done.returncode == 0

    registry = tmp_path / "registry"
    registry.mkdir()
    serve = ["serve", f"--registry={registry}", "--model=m", "--poll-registry-s=0.5"]
    local = ["--no-metrics", "--grpc-host=127.0.0.1", f"--grpc-port={port}"]
    local.append(f"--state-dir={tmp_path / 'state'}")  # its own cold tier
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamcell.cli", *serve, *local], stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 60
        while "gRPC listening" not in (tmp_path / "serve.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (
                tmp_path / "serve.log"
            ).read_text()
            time.sleep(0.2)
        assert not healthy(), "healthy before any model version exists"
        subprocess.run([sys.executable, "-c", MODEL, str(registry)], check=True, timeout=120)
        while not healthy():
            assert proc.poll() is None and time.monotonic() < deadline, (
                tmp_path / "serve.log"
            ).read_text()
            time.sleep(0.5)
        assert re.search(r"serving model m version", (tmp_path / "serve.log").read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
