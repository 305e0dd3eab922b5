"""Per-lambda policy: priorities, attempts, backoff and timeouts, validated."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from enum import StrEnum

# Lambda names become part of Kafka topic names; both rules use fullmatch (a
# trailing newline must not slip through as "$" would let it).
LAMBDA_NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")
COLLECTION_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
DEFAULT_COLLECTION = "default"


class FailureKind(StrEnum):
    """How an unexpected exception in a callback is treated."""

    RETRIABLE = "retriable"
    FATAL = "fatal"


class PolicyError(ValueError):
    """A lambda policy that cannot work; lists every problem found."""

    def __init__(self, lambda_name: str, problems: list[str]) -> None:
        self.lambda_name = lambda_name
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid policy for lambda {lambda_name!r}:\n{lines}")


@dataclass(frozen=True, slots=True)
class LambdaPolicy:
    """How the framework treats one lambda's tasks.

    Defaults follow what a Celery or Sidekiq user would expect: a handful of
    attempts with exponential backoff, unexpected errors retried, and
    timeouts long enough for real work but short enough to notice a dead
    worker within a minute.
    """

    name: str
    priorities: int = 3
    """Number of priority levels: a task's priority is 0 .. priorities-1, higher first."""
    max_attempts: int = 5
    """Execution attempts before a task is dead-lettered."""
    backoff_base_ms: int = 1_000
    backoff_multiplier: float = 2.0
    backoff_max_ms: int = 3_600_000
    backoff_jitter: float = 0.2
    """Fraction of each delay that is randomised (deterministically per task and attempt)."""
    enqueue_timeout_ms: int = 600_000
    """An enqueued task nobody claimed in this time is enqueued again."""
    claim_timeout_ms: int = 60_000
    """A claimed task whose executor never started it in this time is enqueued again."""
    heartbeat_interval_ms: int = 5_000
    heartbeat_timeout_ms: int = 30_000
    heartbeat_margin_ms: int = 5_000
    """Slack between an executor's self-termination and the heartbeat timeout.

    An executor kills its work after 3 consecutive failed heartbeats, that is
    within 3 intervals plus one RPC deadline of its last good one; the margin
    must cover that RPC deadline, clock skew and the store consumer's poll.
    """
    default_failure: FailureKind = FailureKind.RETRIABLE
    max_payload_bytes: int = 1_048_576
    schedule_rate: float = 0.0
    """Scheduling quota: tasks per second each Frontend admits for this lambda; 0 is no quota."""
    schedule_burst: int = 1_000
    """Scheduling quota: tasks a Frontend admits at once above the rate (the bucket's size)."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise PolicyError(self.name, problems)

    def problems(self) -> list[str]:
        found: list[str] = []
        if not isinstance(self.name, str) or not LAMBDA_NAME.fullmatch(self.name):
            found.append(
                f"name {self.name!r} must be 1-100 letters, digits, '_' or '-' "
                "(it becomes part of Kafka topic names)"
            )
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_ms") and value <= 0:
                found.append(f"{f.name} must be positive, got {value}")
        if not 1 <= self.priorities <= 10:
            found.append(f"priorities must be between 1 and 10, got {self.priorities}")
        if not self.schedule_rate >= 0.0 or self.schedule_rate == float("inf"):
            found.append(
                f"schedule_rate must be a finite number of tasks per second, 0 for no quota, "
                f"got {self.schedule_rate}"
            )
        if self.schedule_burst < 1:
            found.append(f"schedule_burst must be at least 1, got {self.schedule_burst}")
        if self.max_attempts < 1:
            found.append(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.backoff_multiplier < 1.0:
            found.append(f"backoff_multiplier must be at least 1.0, got {self.backoff_multiplier}")
        if not 0.0 <= self.backoff_jitter <= 1.0:
            found.append(f"backoff_jitter must be between 0 and 1, got {self.backoff_jitter}")
        if self.backoff_max_ms < self.backoff_base_ms:
            found.append(
                f"backoff_max_ms ({self.backoff_max_ms}) must not be below "
                f"backoff_base_ms ({self.backoff_base_ms})"
            )
        floor = 3 * self.heartbeat_interval_ms + self.heartbeat_margin_ms
        if self.heartbeat_timeout_ms <= floor:
            found.append(
                f"heartbeat_timeout_ms ({self.heartbeat_timeout_ms}) must exceed "
                f"3 x heartbeat_interval_ms + heartbeat_margin_ms = {floor}, so that an "
                "executor stops its work after 3 failed heartbeats before the task "
                "can be handed to another executor"
            )
        return found

    def check_priority(self, priority: int) -> str | None:
        if 0 <= priority < self.priorities:
            return None
        return (
            f"priority {priority} is outside lambda {self.name!r}'s levels 0..{self.priorities - 1}"
        )
