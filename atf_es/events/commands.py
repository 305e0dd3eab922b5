"""Commands: requests to change a task, as they arrive on the commands topic.

Every write in the system is one of these. ``command_id`` identifies the
request for replies and for the audit trail; transport details such as the
reply destination live in the envelope, not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from atf_es.events.chains import ChainLink


class Outcome(StrEnum):
    """What an executor reports at the end of an attempt."""

    SUCCESS = "success"
    RETRIABLE = "retriable"
    FATAL = "fatal"


@dataclass(frozen=True, slots=True)
class ScheduleTask:
    command_id: str
    task_id: str
    lambda_name: str
    collection: str
    priority: int
    payload: bytes
    run_at: int
    idempotency_key: str | None = None
    chain: ChainLink | None = None
    """For a node of a chain (the root, as a client sends it; the others, as the
    processor schedules them)."""
    scheduled_by: str | None = None
    """The principal that scheduled it, under access control (docs/security.md)."""


@dataclass(frozen=True, slots=True)
class ClaimTask:
    command_id: str
    task_id: str
    lease: int
    worker: str
    start: bool = False
    """Claim and start in one step, enqueued -> claimed -> processing, for a
    worker that runs the task at once: the claim is its first heartbeat."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    command_id: str
    task_id: str
    lease: int
    worker: str


@dataclass(frozen=True, slots=True)
class SetResult:
    command_id: str
    task_id: str
    lease: int
    worker: str
    outcome: Outcome
    error: str | None = None
    result: bytes | None = None


@dataclass(frozen=True, slots=True)
class CancelTask:
    command_id: str
    task_id: str
    requested_by: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RedriveTask:
    """Give a dead-lettered task a fresh set of attempts."""

    command_id: str
    task_id: str
    requested_by: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DropTask:
    """End a waiting task because a drop gate covers it."""

    command_id: str
    task_id: str
    gate: str


@dataclass(frozen=True, slots=True)
class QueryTask:
    """Read a task through the log: answered after every earlier command for it.

    Changes nothing; its reply carries the snapshot. This is how a status read
    right after a schedule is guaranteed to find the task.
    """

    command_id: str
    task_id: str


Command = (
    ScheduleTask
    | ClaimTask
    | Heartbeat
    | SetResult
    | CancelTask
    | RedriveTask
    | DropTask
    | QueryTask
)

COMMAND_TYPES: tuple[type[Command], ...] = (
    ScheduleTask,
    ClaimTask,
    Heartbeat,
    SetResult,
    CancelTask,
    RedriveTask,
    DropTask,
    QueryTask,
)


@dataclass(frozen=True, slots=True)
class TimerFired:
    """The store consumer found the task's next trigger due.

    Not a command: it never travels on the commands topic. The processor
    makes one when it scans the next-trigger index.
    """

    task_id: str
