"""Events: the facts the lifecycle records, one per transition.

Each event names what happened (past tense), when (``at``), why (``cause``),
and its place in the task's history (``seq``). Events carry every value that
a policy decided (deadlines, retry times), so folding them needs no policy and
no clock: replaying the log reproduces the state exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from atf_es.events.chains import ChainLink


class CauseKind(StrEnum):
    COMMAND = "command"
    TIMER = "timer"


class TimerReason(StrEnum):
    """Why a trigger fired, as recorded in an event's cause."""

    DUE = "due"
    """A new task reached its scheduled time."""
    RETRY_DUE = "retry_due"
    """A retriable failure waited out its backoff."""
    ENQUEUE_TIMEOUT = "enqueue_timeout"
    CLAIM_TIMEOUT = "claim_timeout"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"


@dataclass(frozen=True, slots=True)
class Cause:
    """What made a transition happen: a command (by id) or a timer."""

    kind: CauseKind
    name: str
    command_id: str | None = None

    @classmethod
    def command(cls, name: str, command_id: str) -> Cause:
        return cls(CauseKind.COMMAND, name, command_id)

    @classmethod
    def timer(cls, reason: TimerReason) -> Cause:
        return cls(CauseKind.TIMER, reason.value)


@dataclass(frozen=True, slots=True)
class TaskScheduled:
    task_id: str
    seq: int
    at: int
    cause: Cause
    lambda_name: str
    collection: str
    priority: int
    payload: bytes
    scheduled_at: int
    idempotency_key: str | None
    chain: ChainLink | None = None
    scheduled_by: str | None = None


@dataclass(frozen=True, slots=True)
class TaskEnqueued:
    """Pushed onto its execution topic with a fresh lease token."""

    task_id: str
    seq: int
    at: int
    cause: Cause
    lease: int
    deadline: int
    """When an unclaimed task is enqueued again."""


@dataclass(frozen=True, slots=True)
class TaskClaimed:
    task_id: str
    seq: int
    at: int
    cause: Cause
    lease: int
    worker: str
    deadline: int
    """When a claim that never started is taken back."""


@dataclass(frozen=True, slots=True)
class TaskStarted:
    """The executor's first heartbeat: the callback is running."""

    task_id: str
    seq: int
    at: int
    cause: Cause
    lease: int
    worker: str
    deadline: int
    """When a silent executor is presumed dead."""


@dataclass(frozen=True, slots=True)
class HeartbeatRecorded:
    task_id: str
    seq: int
    at: int
    cause: Cause
    lease: int
    deadline: int


@dataclass(frozen=True, slots=True)
class TaskSucceeded:
    task_id: str
    seq: int
    at: int
    cause: Cause
    lease: int
    result: bytes | None


@dataclass(frozen=True, slots=True)
class TaskFailed:
    """A retriable failure; the task runs again at ``retry_at``."""

    task_id: str
    seq: int
    at: int
    cause: Cause
    lease: int
    error: str
    retry_at: int


@dataclass(frozen=True, slots=True)
class TaskFailedFatally:
    task_id: str
    seq: int
    at: int
    cause: Cause
    lease: int
    error: str


@dataclass(frozen=True, slots=True)
class TaskDeadLettered:
    """Out of attempts; ends here until someone redrives it."""

    task_id: str
    seq: int
    at: int
    cause: Cause
    error: str


@dataclass(frozen=True, slots=True)
class TaskCancelled:
    task_id: str
    seq: int
    at: int
    cause: Cause
    requested_by: str
    reason: str


@dataclass(frozen=True, slots=True)
class TaskDropped:
    task_id: str
    seq: int
    at: int
    cause: Cause
    gate: str


@dataclass(frozen=True, slots=True)
class TaskHeld:
    """A task whose timeout fired while a pause gate covers it: back to ``new``,
    due at once, and held in the ready index until the gate opens."""

    task_id: str
    seq: int
    at: int
    cause: Cause
    gate: str


@dataclass(frozen=True, slots=True)
class TaskRedriven:
    """A dead letter given a fresh set of attempts, due at ``run_at``."""

    task_id: str
    seq: int
    at: int
    cause: Cause
    requested_by: str
    reason: str
    run_at: int


Event = (
    TaskScheduled
    | TaskEnqueued
    | TaskClaimed
    | TaskStarted
    | HeartbeatRecorded
    | TaskSucceeded
    | TaskFailed
    | TaskFailedFatally
    | TaskDeadLettered
    | TaskCancelled
    | TaskDropped
    | TaskHeld
    | TaskRedriven
)

EVENT_TYPES: tuple[type[Event], ...] = (
    TaskScheduled,
    TaskEnqueued,
    TaskClaimed,
    TaskStarted,
    HeartbeatRecorded,
    TaskSucceeded,
    TaskFailed,
    TaskFailedFatally,
    TaskDeadLettered,
    TaskCancelled,
    TaskDropped,
    TaskHeld,
    TaskRedriven,
)
