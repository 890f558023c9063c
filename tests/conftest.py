"""Shared fixtures: one real Kafka-protocol broker per session, fresh names per test.

The broker is, in order of preference: the cluster named by
``KAFKA_BOOTSTRAP_SERVERS``; testcontainers' Kafka when a Docker engine
answers; else the embedded broker started with ``streamcell broker`` as a
subprocess (stopped at session end, also on failure).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from broker_support import start_embedded_broker, stop_process

from streamcell.service.kafka import KafkaClientConfig, installed_clients

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = ["core", "service", "trainer", "demo", "protos"]  # as in pyproject.toml

# Processes the tests start (`python -m streamcell.cli ...`, Ray workers)
# import this checkout's code, as the tests themselves do through pytest's
# pythonpath, whatever checkout the virtual environment was installed from.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO_ROOT / root) for root in SOURCE_ROOTS]
    + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)


def unique_name(prefix: str) -> str:
    """A topic / group / client name no other test (or engineer) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(name="unique_name")
def unique_name_fixture() -> Callable[[str], str]:
    return unique_name


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


class Broker(NamedTuple):
    bootstrap: str
    kind: str  # "external", "testcontainers" or "embedded"


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[Broker]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield Broker(external, "external")
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield Broker(kafka.get_bootstrap_server(), "testcontainers")
        return
    proc, bootstrap = start_embedded_broker()
    try:
        yield Broker(bootstrap, "embedded")
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: Broker) -> str:
    """ "host:port" of the session's broker."""
    return kafka_broker.bootstrap


@pytest.fixture(params=installed_clients())
def kafka_client(request: pytest.FixtureRequest) -> str:
    """Each installed Kafka client in turn: "kafka-python", "confluent"."""
    return request.param


@pytest.fixture
def kafka_config(kafka_bootstrap: str, kafka_client: str) -> KafkaClientConfig:
    """Client settings for this test: its own client id, the short session timeout."""
    return KafkaClientConfig(kafka_bootstrap, client=kafka_client, client_id=unique_name("test"))


class RegistryWithModel(NamedTuple):
    path: Path
    name: str
    version: str


@pytest.fixture
def registry_with_model(tmp_path: Path) -> RegistryWithModel:
    """A tmp registry with one version of a small random autoregressive LSTM.

    Input 3 (features a, b, c), hidden 16, 2 layers, targets = features, global
    normalisation with non-trivial means and scales.
    """
    import torch

    from streamcell.core.checkpoint import ModelConfig, save_checkpoint
    from streamcell.core.model import StreamingLSTM

    torch.manual_seed(11)
    model = StreamingLSTM(3, 16, 2, 3)
    features = ("a", "b", "c")
    cfg = ModelConfig(
        3,
        16,
        2,
        3,
        features,
        features,
        (1.0, -2.0, 0.5),
        (2.0, 1.5, 0.5),
        (1.0, -2.0, 0.5),
        (2.0, 1.5, 0.5),
    )
    path = save_checkpoint(tmp_path / "registry", "test-model", model, cfg)
    return RegistryWithModel(tmp_path / "registry", "test-model", path.name)


@pytest.fixture(name="one_torch_thread")
def fixture_one_torch_thread() -> Iterator[None]:
    """One torch thread for the test, as the service runs (batch invariance holds there)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
