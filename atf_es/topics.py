"""Topic names and topic specifications, in one place.

Every topic name is ``<prefix>.<role>``. ``commands`` and ``task-events`` are
co-partitioned (same count, keyed by task_id, default partitioner), so the
owner of commands partition N is the only writer of task-events partition N.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from atf_es.config import DAY_MS, validate_topic_prefix
from atf_es.events.policy import LAMBDA_NAME

if TYPE_CHECKING:
    from collections.abc import Mapping

    from atf_es.config import Settings

__all__ = [
    "LAMBDA_NAME",
    "MAX_PRIORITY",
    "POISON_RETENTION_MS",
    "TopicSpec",
    "Topics",
    "core_topic_specs",
    "exec_topic_spec",
]

MAX_PRIORITY = 999
# Poison records are evidence for a human; keep them well beyond any audit window.
POISON_RETENTION_MS = 30 * DAY_MS


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic as it must exist on the broker."""

    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)
    exact_partitions: bool = True
    """Whether code relies on this exact partition count (checked for existing topics)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))


class Topics:
    """The names of every topic for one ``prefix``."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        if (why := validate_topic_prefix(prefix)) is not None:
            raise ValueError(f"topic prefix {why}")
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"Topics({self.prefix!r})"

    @property
    def commands(self) -> str:
        """Every write request, keyed by task_id."""
        return f"{self.prefix}.commands"

    @property
    def task_events(self) -> str:
        """Every state transition with the full task snapshot, keyed by task_id."""
        return f"{self.prefix}.task-events"

    @property
    def control(self) -> str:
        """Lambda definitions, gates, periodic schedules and quotas, keyed by name."""
        return f"{self.prefix}.control"

    @property
    def replies(self) -> str:
        """Results of synchronous commands, read by the gateway that asked."""
        return f"{self.prefix}.replies"

    @property
    def poison(self) -> str:
        """Records that could not be decoded or were invalid, with the reason."""
        return f"{self.prefix}.poison"

    @property
    def owners(self) -> str:
        """Which processor instance owns which commands partition."""
        return f"{self.prefix}.owners"

    def exec(self, lambda_name: str, priority: int) -> str:
        """The ready-to-run queue of one lambda at one priority."""
        if not isinstance(lambda_name, str) or not LAMBDA_NAME.fullmatch(lambda_name):
            raise ValueError(
                f"lambda name {lambda_name!r} must be 1-100 ASCII letters, digits, '_' or '-' "
                "(it becomes part of a Kafka topic name)"
            )
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ValueError(f"priority must be an integer, got {priority!r}")
        if not 0 <= priority <= MAX_PRIORITY:
            raise ValueError(f"priority must be between 0 and {MAX_PRIORITY}, got {priority}")
        return f"{self.prefix}.exec.{lambda_name}.p{priority}"


def exec_topic_spec(settings: Settings, lambda_name: str, priority: int) -> TopicSpec:
    """The spec of one exec topic; created when a lambda is defined."""
    return TopicSpec(
        Topics(settings.topic_prefix).exec(lambda_name, priority),
        settings.partitions,
        {"cleanup.policy": "delete", "retention.ms": str(settings.exec_retention_ms)},
        exact_partitions=False,
    )


def core_topic_specs(settings: Settings) -> list[TopicSpec]:
    """The topics every deployment needs, whatever lambdas it runs."""
    topics = Topics(settings.topic_prefix)
    return [
        TopicSpec(
            topics.commands,
            settings.partitions,
            {"cleanup.policy": "delete", "retention.ms": str(settings.command_retention_ms)},
        ),
        TopicSpec(
            topics.task_events,
            settings.partitions,
            {
                "cleanup.policy": "compact",
                "min.compaction.lag.ms": str(settings.audit_window_ms),
            },
        ),
        TopicSpec(topics.control, 1, {"cleanup.policy": "compact"}),
        TopicSpec(
            topics.replies,
            settings.partitions,
            {"cleanup.policy": "delete", "retention.ms": str(settings.reply_retention_ms)},
            exact_partitions=False,
        ),
        TopicSpec(
            # One partition per commands partition, so that each processor's
            # transactions write only partitions nobody else writes.
            topics.poison,
            settings.partitions,
            {"cleanup.policy": "delete", "retention.ms": str(POISON_RETENTION_MS)},
            exact_partitions=False,
        ),
        TopicSpec(topics.owners, 1, {"cleanup.policy": "compact"}),
    ]
