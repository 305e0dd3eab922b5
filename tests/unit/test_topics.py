"""Topic names and specs."""

from __future__ import annotations

import pytest

from atf_es.config import Settings
from atf_es.topics import POISON_RETENTION_MS, Topics, core_topic_specs, exec_topic_spec


def test_names() -> None:
    topics = Topics("atf")
    assert topics.commands == "atf.commands"
    assert topics.task_events == "atf.task-events"
    assert topics.control == "atf.control"
    assert topics.replies == "atf.replies"
    assert topics.poison == "atf.poison"
    assert topics.owners == "atf.owners"
    assert topics.exec("send_email", 2) == "atf.exec.send_email.p2"
    assert Topics("my-app.atf").exec("A-b_9", 0) == "my-app.atf.exec.A-b_9.p0"


@pytest.mark.parametrize("name", ["", "send.email", "send email", "x" * 101, "é", None])
def test_bad_lambda_names(name: object) -> None:
    with pytest.raises(ValueError, match=r"lambda name .* must be 1-100 ASCII letters"):
        Topics("atf").exec(name, 0)  # type: ignore[arg-type]


def test_longest_lambda_name_is_a_legal_topic() -> None:
    name = Topics("p" * 120).exec("l" * 100, 999)
    assert len(name) <= 249


@pytest.mark.parametrize("priority", [-1, 1000, True, 1.5])
def test_bad_priorities(priority: object) -> None:
    with pytest.raises(ValueError, match="priority"):
        Topics("atf").exec("job", priority)  # type: ignore[arg-type]


@pytest.mark.parametrize("prefix", ["", "a b", "atf.", "__x"])
def test_bad_prefix(prefix: str) -> None:
    with pytest.raises(ValueError, match="topic prefix"):
        Topics(prefix)


def test_core_specs_follow_settings() -> None:
    settings = Settings(
        topic_prefix="z",
        partitions=5,
        audit_window_ms=1234,
        command_retention_ms=111,
        reply_retention_ms=222,
    )
    specs = {spec.name: spec for spec in core_topic_specs(settings)}
    assert list(specs) == [
        "z.commands",
        "z.task-events",
        "z.control",
        "z.replies",
        "z.poison",
        "z.owners",
    ]
    assert specs["z.commands"].partitions == specs["z.task-events"].partitions == 5
    assert dict(specs["z.commands"].config) == {
        "cleanup.policy": "delete",
        "retention.ms": "111",
    }
    assert dict(specs["z.task-events"].config) == {
        "cleanup.policy": "compact",
        "min.compaction.lag.ms": "1234",
    }
    assert specs["z.control"].partitions == 1
    assert specs["z.control"].config["cleanup.policy"] == "compact"
    assert specs["z.owners"].partitions == 1
    assert specs["z.owners"].config["cleanup.policy"] == "compact"
    assert specs["z.replies"].config["retention.ms"] == "222"
    assert specs["z.poison"].config["retention.ms"] == str(POISON_RETENTION_MS)
    assert specs["z.commands"].exact_partitions
    assert specs["z.task-events"].exact_partitions
    assert not specs["z.replies"].exact_partitions


def test_exec_spec() -> None:
    spec = exec_topic_spec(Settings(exec_retention_ms=99, partitions=3), "job", 1)
    assert spec.name == "atf.exec.job.p1"
    assert spec.partitions == 3
    assert dict(spec.config) == {"cleanup.policy": "delete", "retention.ms": "99"}
