"""The task lifecycle as two pure functions.

``decide(task, input, now, policy)`` answers a command or a timer with the
events it causes, or with a rejection; ``evolve(task, event)`` folds one
event into the snapshot. Neither does I/O or reads a clock, so every
interleaving can be driven by property tests, and replaying the events of a
task reproduces it exactly.

The next-trigger rule (one trigger per live task, none for finished ones):

=================  ============================================
status             next_trigger_at
=================  ============================================
new                scheduled time (or the redrive or hold time)
enqueued           enqueued_at + enqueue_timeout
claimed            claimed_at + claim_timeout
processing         last heartbeat + heartbeat_timeout
retriable_failure  failure time + backoff
terminal           none
=================  ============================================
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from atf_es.events.backoff import backoff_ms
from atf_es.events.chains import link_problem
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
    TimerFired,
)
from atf_es.events.gates import Gate, GateAction
from atf_es.events.policy import COLLECTION_NAME, LambdaPolicy
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

Input = Command | TimerFired

_WAITING = frozenset({TaskStatus.NEW, TaskStatus.ENQUEUED, TaskStatus.RETRIABLE_FAILURE})
_READY = frozenset({TaskStatus.NEW, TaskStatus.RETRIABLE_FAILURE})
_RUNNING = frozenset({TaskStatus.CLAIMED, TaskStatus.PROCESSING})
_OUTCOME_STATUS = {
    Outcome.SUCCESS: TaskStatus.SUCCESS,
    Outcome.RETRIABLE: TaskStatus.RETRIABLE_FAILURE,
    Outcome.FATAL: TaskStatus.FATAL_FAILURE,
}


class RejectCode(StrEnum):
    NOT_FOUND = "not_found"
    UNKNOWN_LAMBDA = "unknown_lambda"
    INVALID = "invalid"
    ALREADY_EXISTS = "already_exists"
    STALE_LEASE = "stale_lease"
    WRONG_STATE = "wrong_state"
    CANCELLED = "cancelled"
    """The task was cancelled: an executor holding it must stop its work."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """The input is valid; ``events`` may be empty (a duplicate, or a timer not due)."""

    events: tuple[Event, ...] = ()


@dataclass(frozen=True, slots=True)
class Rejected:
    code: RejectCode
    message: str
    events: tuple[Event, ...] = ()
    """What the refusal itself records: a claim refused by a closed gate
    takes the task off the queue (``TaskHeld`` or ``TaskDropped``)."""


Decision = Accepted | Rejected


def decide(
    task: Task | None,
    item: Input,
    now: int,
    policy: LambdaPolicy | None,
    gate: Gate | None = None,
) -> Decision:
    """Answer ``item`` for ``task`` (None if unknown) at time ``now``.

    ``policy`` is the policy of the task's lambda (of the lambda being
    scheduled, for ``ScheduleTask``); None means the lambda is not defined.
    ``gate`` is the closed gate covering the task, if any
    (:func:`~atf_es.events.gates.covering`): under it a task that becomes
    due is not enqueued (``pause`` leaves it waiting, or sends a timed-out
    one back to ``new`` with ``TaskHeld``; ``drop`` ends it ``dropped``), and
    an enqueued task cannot be claimed. Running tasks finish normally.
    """
    if isinstance(item, ScheduleTask):
        return _schedule(task, item, now, policy)
    if task is None:
        if isinstance(item, TimerFired):
            return Accepted()
        return Rejected(RejectCode.NOT_FOUND, f"no task {item.task_id!r}")
    if isinstance(item, QueryTask):
        return Accepted()  # a read: it works whatever became of the lambda
    if policy is None:
        return Rejected(
            RejectCode.UNKNOWN_LAMBDA, f"lambda {task.lambda_name!r} of task is not defined"
        )
    match item:
        case TimerFired():
            return _gated(task, _timer(task, now, policy), gate)
        case ClaimTask():
            return _claim(task, item, now, policy, gate)
        case Heartbeat():
            return _heartbeat(task, item, now, policy)
        case SetResult():
            return _set_result(task, item, now, policy)
        case CancelTask():
            return _cancel(task, item, now)
        case RedriveTask():
            return _redrive(task, item, now)
        case DropTask():
            return _drop(task, item, now)
        case QueryTask():  # pragma: no cover - answered above, before the policy check
            return Accepted()


def _schedule(
    task: Task | None, cmd: ScheduleTask, now: int, policy: LambdaPolicy | None
) -> Decision:
    if policy is None or policy.name != cmd.lambda_name:
        return Rejected(RejectCode.UNKNOWN_LAMBDA, f"lambda {cmd.lambda_name!r} is not defined")
    problems = []
    if not cmd.task_id or len(cmd.task_id) > 200 or not cmd.task_id.isprintable():
        # Printable as the Frontend requires; above all no NUL, which the
        # projection's index keys cannot hold.
        problems.append(
            f"task_id must be 1-200 printable characters, got {len(cmd.task_id)} characters"
            + ("" if cmd.task_id.isprintable() else " with unprintable ones")
        )
    if not COLLECTION_NAME.fullmatch(cmd.collection):
        problems.append(
            f"collection {cmd.collection!r} must be 1-100 letters, digits, '_', '.' or '-'"
        )
    if (problem := policy.check_priority(cmd.priority)) is not None:
        problems.append(problem)
    if len(cmd.payload) > policy.max_payload_bytes:
        problems.append(
            f"payload is {len(cmd.payload)} bytes; lambda {policy.name!r} "
            f"accepts at most {policy.max_payload_bytes}"
        )
    if cmd.run_at < 0:
        problems.append(f"run_at must be a non-negative epoch-millisecond time, got {cmd.run_at}")
    if cmd.chain is not None and (problem := link_problem(cmd.chain, cmd)) is not None:
        problems.append(problem)
    if problems:
        return Rejected(RejectCode.INVALID, "; ".join(problems))
    if task is not None:
        same = (
            task.lambda_name == cmd.lambda_name
            and task.collection == cmd.collection
            and task.priority == cmd.priority
            and task.payload == cmd.payload
            and task.chain == cmd.chain
        )
        if same:
            return Accepted()
        return Rejected(
            RejectCode.ALREADY_EXISTS,
            f"task {cmd.task_id!r} already exists with different content",
        )
    return Accepted(
        (
            TaskScheduled(
                task_id=cmd.task_id,
                seq=1,
                at=now,
                cause=Cause.command("ScheduleTask", cmd.command_id),
                lambda_name=cmd.lambda_name,
                collection=cmd.collection,
                priority=cmd.priority,
                payload=cmd.payload,
                scheduled_at=cmd.run_at,
                idempotency_key=cmd.idempotency_key,
                chain=cmd.chain,
                scheduled_by=cmd.scheduled_by,
            ),
        )
    )


def _timer(task: Task, now: int, policy: LambdaPolicy) -> Accepted:
    if task.next_trigger_at is None or now < task.next_trigger_at:
        return Accepted()
    reason = {
        TaskStatus.NEW: TimerReason.DUE,
        TaskStatus.RETRIABLE_FAILURE: TimerReason.RETRY_DUE,
        TaskStatus.ENQUEUED: TimerReason.ENQUEUE_TIMEOUT,
        TaskStatus.CLAIMED: TimerReason.CLAIM_TIMEOUT,
        TaskStatus.PROCESSING: TimerReason.HEARTBEAT_TIMEOUT,
    }[task.status]
    cause = Cause.timer(reason)
    if task.status in _RUNNING and task.attempts >= policy.max_attempts:
        return Accepted(
            (
                TaskDeadLettered(
                    task_id=task.task_id,
                    seq=task.seq + 1,
                    at=now,
                    cause=cause,
                    error=f"{reason.value.replace('_', ' ')} on attempt {task.attempts} "
                    f"of {policy.max_attempts}",
                ),
            )
        )
    return Accepted(
        (
            TaskEnqueued(
                task_id=task.task_id,
                seq=task.seq + 1,
                at=now,
                cause=cause,
                lease=task.lease + 1,
                deadline=now + policy.enqueue_timeout_ms,
            ),
        )
    )


def _gated(task: Task, decision: Accepted, gate: Gate | None) -> Accepted:
    """``decision`` of a timer, with what a closed gate makes of an enqueue."""
    if gate is None or not gate.closed:
        return decision
    if not any(isinstance(event, TaskEnqueued) for event in decision.events):
        return decision  # not due, or dead-lettered: gates hold work, not endings
    (enqueue,) = decision.events
    if gate.action is GateAction.PAUSE and task.status in _READY:
        return Accepted()  # held where it is: in the ready index, due
    return Accepted((_stopped_by(gate, task, enqueue.at, enqueue.cause),))


def _stopped_by(gate: Gate, task: Task, now: int, cause: Cause) -> TaskHeld | TaskDropped:
    """What a closed gate does to a task that was about to be handed out."""
    if gate.action is GateAction.DROP:
        return TaskDropped(task.task_id, task.seq + 1, now, cause, gate.name)
    return TaskHeld(task.task_id, task.seq + 1, now, cause, gate.name)


def _stale(task: Task, lease: int) -> Rejected | None:
    if lease != task.lease:
        return Rejected(
            RejectCode.STALE_LEASE,
            f"lease {lease} of task {task.task_id!r} is stale; the current lease is {task.lease}",
        )
    return None


def _wrong_state(task: Task, action: str) -> Rejected:
    return Rejected(
        RejectCode.WRONG_STATE, f"cannot {action} task {task.task_id!r}: it is {task.status}"
    )


def _claim(
    task: Task, cmd: ClaimTask, now: int, policy: LambdaPolicy, gate: Gate | None
) -> Decision:
    if (stale := _stale(task, cmd.lease)) is not None:
        return stale
    if task.worker == cmd.worker:
        # The same worker asking again after a lost reply: it holds the claim.
        if task.status is TaskStatus.CLAIMED:
            return Accepted((_started(task, cmd, now, policy, task.seq + 1),) if cmd.start else ())
        if task.status is TaskStatus.PROCESSING and cmd.start:
            return Accepted()
    if task.status is not TaskStatus.ENQUEUED:
        return _wrong_state(task, "claim")
    if gate is not None and gate.closed:
        # Enqueued before the gate closed: off the queue it goes, held or dropped.
        cause = Cause.command("ClaimTask", cmd.command_id)
        return Rejected(
            RejectCode.WRONG_STATE,
            f"cannot claim task {task.task_id!r}: gate {gate.name!r} is {gate.action}",
            (_stopped_by(gate, task, now, cause),),
        )
    claimed = TaskClaimed(
        task_id=task.task_id,
        seq=task.seq + 1,
        at=now,
        cause=Cause.command("ClaimTask", cmd.command_id),
        lease=cmd.lease,
        worker=cmd.worker,
        deadline=now + policy.claim_timeout_ms,
    )
    if cmd.start:
        return Accepted((claimed, _started(task, cmd, now, policy, task.seq + 2)))
    return Accepted((claimed,))


def _started(task: Task, cmd: ClaimTask, now: int, policy: LambdaPolicy, seq: int) -> TaskStarted:
    """A starting claim's second event: processing, the heartbeat clock running."""
    return TaskStarted(
        task.task_id,
        seq,
        now,
        Cause.command("ClaimTask", cmd.command_id),
        cmd.lease,
        cmd.worker,
        now + policy.heartbeat_timeout_ms,
    )


def _cancelled(task: Task) -> Rejected | None:
    if task.status is TaskStatus.CANCELLED:
        return Rejected(RejectCode.CANCELLED, f"task {task.task_id!r} was cancelled; stop its work")
    return None


def _heartbeat(task: Task, cmd: Heartbeat, now: int, policy: LambdaPolicy) -> Decision:
    if (stale := _stale(task, cmd.lease)) is not None:
        return stale
    if (cancelled := _cancelled(task)) is not None:
        return cancelled
    cause = Cause.command("Heartbeat", cmd.command_id)
    deadline = now + policy.heartbeat_timeout_ms
    seq = task.seq + 1
    if task.status is TaskStatus.CLAIMED:
        return Accepted(
            (TaskStarted(task.task_id, seq, now, cause, cmd.lease, cmd.worker, deadline),)
        )
    if task.status is TaskStatus.PROCESSING:
        return Accepted((HeartbeatRecorded(task.task_id, seq, now, cause, cmd.lease, deadline),))
    return _wrong_state(task, "heartbeat")


def _set_result(task: Task, cmd: SetResult, now: int, policy: LambdaPolicy) -> Decision:
    if (stale := _stale(task, cmd.lease)) is not None:
        return stale
    if (cancelled := _cancelled(task)) is not None:
        return cancelled
    if task.status not in _RUNNING:
        # The same lease's result again (a retry after a lost reply): it was
        # recorded once already. A retriable failure that used the last attempt
        # left the task dead-lettered.
        if task.status is _OUTCOME_STATUS[cmd.outcome] or (
            task.status is TaskStatus.DEAD_LETTERED and cmd.outcome is Outcome.RETRIABLE
        ):
            return Accepted()
        return _wrong_state(task, f"record a {cmd.outcome} result for")
    cause = Cause.command("SetResult", cmd.command_id)
    seq = task.seq + 1
    error = cmd.error or ""
    match cmd.outcome:
        case Outcome.SUCCESS:
            event: Event = TaskSucceeded(task.task_id, seq, now, cause, cmd.lease, cmd.result)
        case Outcome.FATAL:
            event = TaskFailedFatally(task.task_id, seq, now, cause, cmd.lease, error)
        case Outcome.RETRIABLE if task.attempts >= policy.max_attempts:
            event = TaskDeadLettered(task.task_id, seq, now, cause, error)
        case Outcome.RETRIABLE:
            retry_at = now + backoff_ms(policy, task.attempts, task.task_id)
            event = TaskFailed(task.task_id, seq, now, cause, cmd.lease, error, retry_at)
    return Accepted((event,))


def _cancel(task: Task, cmd: CancelTask, now: int) -> Decision:
    if task.status is TaskStatus.CANCELLED:
        return Accepted()
    if task.status.terminal:
        return _wrong_state(task, "cancel")
    cause = Cause.command("CancelTask", cmd.command_id)
    return Accepted(
        (TaskCancelled(task.task_id, task.seq + 1, now, cause, cmd.requested_by, cmd.reason),)
    )


def _redrive(task: Task, cmd: RedriveTask, now: int) -> Decision:
    if task.status is not TaskStatus.DEAD_LETTERED:
        return _wrong_state(task, "redrive")
    cause = Cause.command("RedriveTask", cmd.command_id)
    return Accepted(
        (TaskRedriven(task.task_id, task.seq + 1, now, cause, cmd.requested_by, cmd.reason, now),)
    )


def _drop(task: Task, cmd: DropTask, now: int) -> Decision:
    if task.status is TaskStatus.DROPPED:
        return Accepted()
    if task.status not in _WAITING:
        # Running tasks finish normally; finished ones stay as they are.
        return _wrong_state(task, "drop")
    cause = Cause.command("DropTask", cmd.command_id)
    return Accepted((TaskDropped(task.task_id, task.seq + 1, now, cause, cmd.gate),))


class SequenceError(ValueError):
    """An event does not follow the task's history (a gap or a foreign task)."""


def evolve(task: Task | None, event: Event) -> Task:
    """Fold ``event`` into ``task``. An event already applied changes nothing."""
    if isinstance(event, TaskScheduled):
        if task is not None:
            if event.seq <= task.seq:
                return task
            raise SequenceError(f"task {event.task_id!r} is scheduled twice")
        if event.seq != 1:
            raise SequenceError(f"TaskScheduled of {event.task_id!r} has seq {event.seq}, not 1")
        return Task(
            task_id=event.task_id,
            lambda_name=event.lambda_name,
            collection=event.collection,
            priority=event.priority,
            payload=event.payload,
            status=TaskStatus.NEW,
            seq=1,
            created_at=event.at,
            scheduled_at=event.scheduled_at,
            next_trigger_at=event.scheduled_at,
            idempotency_key=event.idempotency_key,
            chain=event.chain,
            scheduled_by=event.scheduled_by,
        )
    if task is None:
        raise SequenceError(f"{type(event).__name__} for unknown task {event.task_id!r}")
    if task.task_id != event.task_id:
        raise SequenceError(f"event for {event.task_id!r} applied to {task.task_id!r}")
    if event.seq <= task.seq:
        return task
    if event.seq != task.seq + 1:
        raise SequenceError(
            f"task {task.task_id!r} is at seq {task.seq}; event seq {event.seq} leaves a gap"
        )
    base = replace(task, seq=event.seq)
    match event:
        case TaskEnqueued():
            return replace(
                base,
                status=TaskStatus.ENQUEUED,
                lease=event.lease,
                enqueued_at=event.at,
                claimed_at=None,
                started_at=None,
                heartbeat_at=None,
                worker=None,
                next_trigger_at=event.deadline,
            )
        case TaskClaimed():
            return replace(
                base,
                status=TaskStatus.CLAIMED,
                attempts=task.attempts + 1,
                claimed_at=event.at,
                worker=event.worker,
                next_trigger_at=event.deadline,
            )
        case TaskStarted():
            return replace(
                base,
                status=TaskStatus.PROCESSING,
                started_at=event.at,
                heartbeat_at=event.at,
                worker=event.worker,
                next_trigger_at=event.deadline,
            )
        case HeartbeatRecorded():
            return replace(base, heartbeat_at=event.at, next_trigger_at=event.deadline)
        case TaskSucceeded():
            return _finished(base, TaskStatus.SUCCESS, event.at, result=event.result)
        case TaskFailed():
            return replace(
                base,
                status=TaskStatus.RETRIABLE_FAILURE,
                last_error=event.error,
                next_trigger_at=event.retry_at,
            )
        case TaskFailedFatally():
            return _finished(base, TaskStatus.FATAL_FAILURE, event.at, error=event.error)
        case TaskDeadLettered():
            return _finished(base, TaskStatus.DEAD_LETTERED, event.at, error=event.error)
        case TaskCancelled():
            return _finished(base, TaskStatus.CANCELLED, event.at)
        case TaskDropped():
            return _finished(base, TaskStatus.DROPPED, event.at)
        case TaskHeld():
            return replace(
                base,
                status=TaskStatus.NEW,
                enqueued_at=None,
                claimed_at=None,
                started_at=None,
                heartbeat_at=None,
                worker=None,
                next_trigger_at=event.at,
            )
        case TaskRedriven():
            return replace(
                base,
                status=TaskStatus.NEW,
                attempts=0,
                finished_at=None,
                scheduled_at=event.run_at,
                next_trigger_at=event.run_at,
            )


def _finished(
    task: Task,
    status: TaskStatus,
    at: int,
    *,
    error: str | None = None,
    result: bytes | None = None,
) -> Task:
    return replace(
        task,
        status=status,
        finished_at=at,
        next_trigger_at=None,
        last_error=error if error is not None else task.last_error,
        result=result,
    )


def replay(events: list[Event] | tuple[Event, ...]) -> Task | None:
    """The snapshot that a task's events fold into."""
    task: Task | None = None
    for event in events:
        task = evolve(task, event)
    return task
