"""One plausible example of every event, command and message, for codec tests."""

from __future__ import annotations

from dataclasses import replace

from atf_es.events.commands import (
    CancelTask,
    ClaimTask,
    Command,
    DropTask,
    Heartbeat,
    Outcome,
    QueryTask,
    RedriveTask,
    ScheduleTask,
    SetResult,
)
from atf_es.events.replies import PoisonRecord, Reply, ReplyCode
from atf_es.events.status import TaskStatus
from atf_es.events.task import Task
from atf_es.events.transitions import (
    Cause,
    Event,
    HeartbeatRecorded,
    TaskCancelled,
    TaskClaimed,
    TaskDeadLettered,
    TaskDropped,
    TaskEnqueued,
    TaskFailed,
    TaskFailedFatally,
    TaskHeld,
    TaskRedriven,
    TaskScheduled,
    TaskStarted,
    TaskSucceeded,
    TimerReason,
)
from atf_es.events.work import WorkItem

T0 = 1_764_000_000_000
"""An epoch-millisecond time in late 2025."""

NEW = Task(
    task_id="t-1",
    lambda_name="send_email",
    collection="password_reset",
    priority=2,
    payload=b'{"to": "a@example.com"}\x00\xff',
    status=TaskStatus.NEW,
    seq=1,
    created_at=T0,
    scheduled_at=T0 + 1_000,
    next_trigger_at=T0 + 1_000,
    idempotency_key="req-42",
)
ENQUEUED = replace(
    NEW,
    status=TaskStatus.ENQUEUED,
    seq=2,
    lease=1,
    enqueued_at=T0 + 1_000,
    next_trigger_at=T0 + 31_000,
)
CLAIMED = replace(
    ENQUEUED,
    status=TaskStatus.CLAIMED,
    seq=3,
    attempts=1,
    claimed_at=T0 + 1_100,
    worker="host-a/7",
    next_trigger_at=T0 + 11_100,
)
PROCESSING = replace(
    CLAIMED,
    status=TaskStatus.PROCESSING,
    seq=4,
    started_at=T0 + 1_200,
    heartbeat_at=T0 + 1_200,
    next_trigger_at=T0 + 16_200,
)


def _cmd(name: str, n: int) -> Cause:
    return Cause.command(name, f"cmd-{n}")


EVENTS: list[tuple[Event, Task]] = [
    (
        TaskScheduled(
            "t-1",
            1,
            T0,
            _cmd("ScheduleTask", 1),
            NEW.lambda_name,
            NEW.collection,
            NEW.priority,
            NEW.payload,
            NEW.scheduled_at,
            NEW.idempotency_key,
        ),
        NEW,
    ),
    (TaskEnqueued("t-1", 2, T0 + 1_000, Cause.timer(TimerReason.DUE), 1, T0 + 31_000), ENQUEUED),
    (
        TaskClaimed("t-1", 3, T0 + 1_100, _cmd("ClaimTask", 2), 1, "host-a/7", T0 + 11_100),
        CLAIMED,
    ),
    (
        TaskStarted("t-1", 4, T0 + 1_200, _cmd("Heartbeat", 3), 1, "host-a/7", T0 + 16_200),
        PROCESSING,
    ),
    (
        HeartbeatRecorded("t-1", 5, T0 + 6_200, _cmd("Heartbeat", 4), 1, T0 + 21_200),
        replace(PROCESSING, seq=5, heartbeat_at=T0 + 6_200, next_trigger_at=T0 + 21_200),
    ),
    (
        TaskSucceeded("t-1", 6, T0 + 7_000, _cmd("SetResult", 5), 1, b"ok\x00"),
        replace(
            PROCESSING,
            status=TaskStatus.SUCCESS,
            seq=6,
            finished_at=T0 + 7_000,
            result=b"ok\x00",
            next_trigger_at=None,
        ),
    ),
    (
        TaskFailed("t-1", 6, T0 + 7_000, _cmd("SetResult", 6), 1, "timeout: smtp", T0 + 9_000),
        replace(
            PROCESSING,
            status=TaskStatus.RETRIABLE_FAILURE,
            seq=6,
            last_error="timeout: smtp",
            next_trigger_at=T0 + 9_000,
        ),
    ),
    (
        TaskFailedFatally("t-1", 6, T0 + 7_000, _cmd("SetResult", 7), 1, "bad address ✉"),
        replace(
            PROCESSING,
            status=TaskStatus.FATAL_FAILURE,
            seq=6,
            finished_at=T0 + 7_000,
            last_error="bad address ✉",
            next_trigger_at=None,
        ),
    ),
    (
        TaskDeadLettered("t-1", 6, T0 + 7_000, _cmd("SetResult", 8), "out of attempts"),
        replace(
            PROCESSING,
            status=TaskStatus.DEAD_LETTERED,
            seq=6,
            finished_at=T0 + 7_000,
            last_error="out of attempts",
            next_trigger_at=None,
        ),
    ),
    (
        TaskCancelled("t-1", 2, T0 + 500, _cmd("CancelTask", 9), "alice", "sent twice"),
        replace(
            NEW, status=TaskStatus.CANCELLED, seq=2, finished_at=T0 + 500, next_trigger_at=None
        ),
    ),
    (
        TaskDropped("t-1", 2, T0 + 500, _cmd("DropTask", 10), "send_email/marketing"),
        replace(NEW, status=TaskStatus.DROPPED, seq=2, finished_at=T0 + 500, next_trigger_at=None),
    ),
    (
        TaskHeld("t-1", 6, T0 + 40_000, Cause.timer(TimerReason.HEARTBEAT_TIMEOUT), "send_email"),
        replace(
            PROCESSING,
            status=TaskStatus.NEW,
            seq=6,
            enqueued_at=None,
            claimed_at=None,
            started_at=None,
            heartbeat_at=None,
            worker=None,
            next_trigger_at=T0 + 40_000,
        ),
    ),
    (
        TaskRedriven(
            "t-1", 7, T0 + 60_000, _cmd("RedriveTask", 11), "bob", "smtp fixed", T0 + 60_000
        ),
        replace(
            PROCESSING,
            status=TaskStatus.NEW,
            seq=7,
            attempts=0,
            scheduled_at=T0 + 60_000,
            next_trigger_at=T0 + 60_000,
        ),
    ),
]

COMMANDS: list[Command] = [
    ScheduleTask("c-1", "t-1", "send_email", "password_reset", 2, b"\x00payload", T0, "req-42"),
    ScheduleTask("c-2", "t-2", "send_email", "", -1, b"", T0),
    ScheduleTask("c-3", "t-3", "send_email", "x", 0, b"", T0, scheduled_by="billing"),
    ClaimTask("c-3", "t-1", 1, "host-a/7"),
    ClaimTask("c-3s", "t-1", 1, "host-a/7", start=True),
    Heartbeat("c-4", "t-1", 1, "host-a/7"),
    SetResult("c-5", "t-1", 1, "host-a/7", Outcome.SUCCESS, None, b"ok"),
    SetResult("c-6", "t-1", 1, "host-a/7", Outcome.RETRIABLE, "timeout"),
    SetResult("c-7", "t-1", 1, "host-a/7", Outcome.FATAL, "boom", None),
    CancelTask("c-8", "t-1", "alice", "sent twice"),
    CancelTask("c-9", "t-1", "alice"),
    RedriveTask("c-10", "t-1", "bob", "smtp fixed"),
    DropTask("c-11", "t-1", "send_email/marketing"),
    QueryTask("c-12", "t-1"),
]

WORK = WorkItem.of(ENQUEUED)

REPLIES: list[Reply] = [
    Reply("c-3", "t-1", True, ReplyCode.OK, "", CLAIMED),
    Reply("c-4", "t-1", False, ReplyCode.STALE_LEASE, "lease 1 is not current (2)"),
    *(Reply("c-x", "t-9", False, code, code.value) for code in ReplyCode),
]

POISON: list[PoisonRecord] = [
    PoisonRecord("atf.commands", 3, 12_345, b"t-1", b"\xc3\x01garbage", "unknown fingerprint", T0),
    PoisonRecord("atf.commands", 0, 0, None, b"", "empty value", T0),
]
