"""The start-up checks of the changelog topic, over a fake Admin (no broker)."""

from __future__ import annotations

import logging
import threading

import pytest

from streamcell.core.errors import ConfigError
from streamcell.service import kafka
from streamcell.service.app import App
from streamcell.service.kafka import TopicSpec
from streamcell.service.settings import KafkaSettings, PipelineSettings, ServeSettings


class FakeAdmin:
    """Topics as given; the changelog's configs as the broker would report them."""

    def __init__(self, changelog: str, configs: dict[str, str] | None) -> None:
        self.changelog, self.configs = changelog, configs
        self.topics: dict[str, int] = {}

    def ensure_topics(self, specs: list[TopicSpec]) -> list[str]:
        created = [s.name for s in specs if s.name not in self.topics]
        self.topics.update({s.name: s.partitions for s in specs if s.name in created})
        return created

    def partitions(self, topic: str) -> int | None:
        return self.topics.get(topic)

    def group_members(self, group: str) -> list:
        return []

    def topic_configs(self, topic: str) -> dict[str, str] | None:
        assert topic == self.changelog
        return self.configs

    def close(self) -> None:
        pass


def ensure(monkeypatch, tmp_path, configs: dict[str, str] | None) -> int | None:
    settings = ServeSettings(
        registry=tmp_path,
        model="m",
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9", broker_wait_s=0),
        pipeline=PipelineSettings(changelog_topic="state-cl"),
    )
    monkeypatch.setattr(kafka, "open_admin", lambda cfg: FakeAdmin("state-cl", configs))
    return App(settings)._ensure_topics(threading.Event())


@pytest.mark.parametrize("policy", ["compact", "compact,delete", "delete, compact"])
def test_a_compacted_changelog_is_accepted(monkeypatch, tmp_path, policy):
    assert ensure(monkeypatch, tmp_path, {"cleanup.policy": policy}) == 3


def test_a_delete_only_changelog_is_refused_naming_topic_and_policy(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match=r"changelog topic state-cl has cleanup.policy=delete"):
        ensure(monkeypatch, tmp_path, {"cleanup.policy": "delete", "retention.ms": "1000"})


@pytest.mark.parametrize("configs", [None, {}])
def test_a_policy_the_broker_does_not_report_is_a_warning(monkeypatch, tmp_path, caplog, configs):
    with caplog.at_level(logging.WARNING, logger="streamcell.service.changelog"):
        assert ensure(monkeypatch, tmp_path, configs) == 3
    assert "cannot tell the cleanup.policy of changelog topic state-cl" in caplog.text


def test_a_changelog_with_another_partition_count_than_the_input_is_refused(monkeypatch, tmp_path):
    settings = ServeSettings(
        registry=tmp_path,
        model="m",
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9", broker_wait_s=0),
        pipeline=PipelineSettings(changelog_topic="state-cl"),
    )
    admin = FakeAdmin("state-cl", {"cleanup.policy": "compact"})
    admin.topics["state-cl"] = 5  # made by hand, before the input topic (3 partitions)
    monkeypatch.setattr(kafka, "open_admin", lambda cfg: admin)
    with pytest.raises(ConfigError, match=r"state-cl has 5 partitions but the input topic"):
        App(settings)._ensure_topics(threading.Event())
