"""Explicit mapping between domain objects and Avro-ready records.

A record is the ``dict`` that fastavro writes for the schemas in
``schemas/avro`` (and reads back with ``return_record_name=True`` and
``return_record_name_override=True``): times are epoch-millisecond ``int``s,
enums are their symbol strings, and the command body, a union of several
records, is a ``(full record name, dict)`` tuple. Byte encoding lives in
:mod:`atf_es.events.codec`; this module never touches bytes on the wire.

Every ``*_from_record`` raises :class:`RecordError` for a record that is
well-typed Avro but means nothing in the domain (for example a
``TASK_ENQUEUED`` event without a lease).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, Final, TypeVar

from atf_es.events.chains import Chain, ChainLink, ChainNode, OnFailure
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
from atf_es.events.gates import Gate, GateAction
from atf_es.events.periodic import Misfire, PeriodicError, PeriodicSchedule
from atf_es.events.policy import FailureKind, LambdaPolicy
from atf_es.events.replies import PoisonRecord, Reply, ReplyCode
from atf_es.events.status import TaskStatus
from atf_es.events.task import Task
from atf_es.events.transitions import (
    Cause,
    CauseKind,
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
)
from atf_es.events.work import WorkItem

__all__ = [
    "EVENT_DETAIL_FIELDS",
    "EVENT_KINDS",
    "NAMESPACE",
    "CommandEnvelope",
    "Record",
    "RecordError",
    "command_from_record",
    "command_to_record",
    "control_from_record",
    "control_key",
    "event_from_record",
    "event_to_record",
    "gate_to_record",
    "lambda_to_record",
    "periodic_to_record",
    "poison_from_record",
    "poison_to_record",
    "reply_from_record",
    "reply_to_record",
    "task_from_record",
    "task_id_of_key",
    "task_to_record",
    "work_from_record",
    "work_to_record",
]

Record = dict[str, Any]
NAMESPACE: Final = "atf.v1"

_INT32_MIN: Final = -(2**31)
_INT32_MAX: Final = 2**31 - 1


class RecordError(ValueError):
    """A record that is valid Avro but not a valid domain object."""


@dataclass(frozen=True, slots=True)
class CommandEnvelope:
    """A command as it travels on the commands topic."""

    command: Command
    reply_to: str | None
    """Opaque reply destination (e.g. ``"<topic>:<partition>"``); None: no reply wanted."""
    sent_at: int


def _int32(name: str, value: int) -> int:
    # fastavro writes an out-of-range Avro ``int`` without complaint, and
    # readers in other languages then fail; refuse it here instead.
    if not _INT32_MIN <= value <= _INT32_MAX:
        raise ValueError(f"{name}={value} does not fit an Avro int (32 bits)")
    return value


_E = TypeVar("_E", bound=Enum)


def _enum(enum: type[_E], symbol: Any) -> _E:
    try:
        return enum[symbol]
    except (KeyError, TypeError) as exc:
        raise RecordError(f"{symbol!r} is not a {enum.__name__} symbol") from exc


# --- Task ---------------------------------------------------------------------


def task_to_record(task: Task) -> Record:
    return {
        "task_id": task.task_id,
        "lambda_name": task.lambda_name,
        "collection": task.collection,
        "priority": _int32("priority", task.priority),
        "payload": task.payload,
        "status": task.status.name,
        "seq": task.seq,
        "created_at": task.created_at,
        "scheduled_at": task.scheduled_at,
        "next_trigger_at": task.next_trigger_at,
        "lease": task.lease,
        "attempts": _int32("attempts", task.attempts),
        "enqueued_at": task.enqueued_at,
        "claimed_at": task.claimed_at,
        "started_at": task.started_at,
        "heartbeat_at": task.heartbeat_at,
        "finished_at": task.finished_at,
        "worker": task.worker,
        "last_error": task.last_error,
        "result": task.result,
        "idempotency_key": task.idempotency_key,
        "chain": None if task.chain is None else link_to_record(task.chain),
        "scheduled_by": task.scheduled_by,
    }


def link_to_record(link: ChainLink) -> Record:
    chain = link.chain
    return {
        "node": link.node,
        "chain": {
            "chain_id": chain.chain_id,
            "on_failure": chain.on_failure.name,
            "nodes": [
                {
                    "name": n.name,
                    "task_id": n.task_id,
                    "lambda_name": n.lambda_name,
                    "collection": n.collection,
                    "priority": _int32("priority", n.priority),
                    "payload": n.payload,
                    "delay_ms": n.delay_ms,
                    "parents": list(n.parents),
                }
                for n in chain.nodes
            ],
        },
    }


def link_from_record(rec: Record | None) -> ChainLink | None:
    if rec is None:
        return None
    chain = rec["chain"]
    return ChainLink(
        Chain(
            chain["chain_id"],
            _enum(OnFailure, chain["on_failure"]),
            tuple(
                ChainNode(
                    n["name"],
                    n["task_id"],
                    n["lambda_name"],
                    n["collection"],
                    n["priority"],
                    n["payload"],
                    n["delay_ms"],
                    tuple(n["parents"]),
                )
                for n in chain["nodes"]
            ),
        ),
        rec["node"],
    )


def task_from_record(rec: Record) -> Task:
    return Task(
        task_id=rec["task_id"],
        lambda_name=rec["lambda_name"],
        collection=rec["collection"],
        priority=rec["priority"],
        payload=rec["payload"],
        status=_enum(TaskStatus, rec["status"]),
        seq=rec["seq"],
        created_at=rec["created_at"],
        scheduled_at=rec["scheduled_at"],
        next_trigger_at=rec["next_trigger_at"],
        lease=rec["lease"],
        attempts=rec["attempts"],
        enqueued_at=rec["enqueued_at"],
        claimed_at=rec["claimed_at"],
        started_at=rec["started_at"],
        heartbeat_at=rec["heartbeat_at"],
        finished_at=rec["finished_at"],
        worker=rec["worker"],
        last_error=rec["last_error"],
        result=rec["result"],
        idempotency_key=rec["idempotency_key"],
        chain=link_from_record(rec.get("chain")),
        scheduled_by=rec.get("scheduled_by"),
    )


# --- TaskEvent ----------------------------------------------------------------

EVENT_KINDS: Final[dict[type[Event], str]] = {
    TaskScheduled: "TASK_SCHEDULED",
    TaskEnqueued: "TASK_ENQUEUED",
    TaskClaimed: "TASK_CLAIMED",
    TaskStarted: "TASK_STARTED",
    HeartbeatRecorded: "HEARTBEAT_RECORDED",
    TaskSucceeded: "TASK_SUCCEEDED",
    TaskFailed: "TASK_FAILED",
    TaskFailedFatally: "TASK_FAILED_FATALLY",
    TaskDeadLettered: "TASK_DEAD_LETTERED",
    TaskCancelled: "TASK_CANCELLED",
    TaskDropped: "TASK_DROPPED",
    TaskRedriven: "TASK_REDRIVEN",
    TaskHeld: "TASK_HELD",
}
"""The ``EventKind`` symbol of each event class: its name in UPPER_SNAKE_CASE."""

_EVENT_CLASSES: Final[dict[str, type[Event]]] = {kind: cls for cls, kind in EVENT_KINDS.items()}

_DETAIL_FIELDS: Final = (
    "lease",
    "worker",
    "deadline",
    "error",
    "retry_at",
    "result",
    "requested_by",
    "reason",
    "gate",
    "run_at",
)

EVENT_DETAIL_FIELDS: Final[dict[type[Event], tuple[tuple[str, ...], tuple[str, ...]]]] = {
    TaskScheduled: ((), ()),
    TaskEnqueued: (("lease", "deadline"), ()),
    TaskClaimed: (("lease", "worker", "deadline"), ()),
    TaskStarted: (("lease", "worker", "deadline"), ()),
    HeartbeatRecorded: (("lease", "deadline"), ()),
    TaskSucceeded: (("lease",), ("result",)),
    TaskFailed: (("lease", "error", "retry_at"), ()),
    TaskFailedFatally: (("lease", "error"), ()),
    TaskDeadLettered: (("error",), ()),
    TaskCancelled: (("requested_by", "reason"), ()),
    TaskDropped: (("gate",), ()),
    TaskHeld: (("gate",), ()),
    TaskRedriven: (("requested_by", "reason", "run_at"), ()),
}
"""Per event class: the detail fields it requires, and those it allows to be null."""

_SCHEDULED_FROM_SNAPSHOT: Final = (
    "lambda_name",
    "collection",
    "priority",
    "payload",
    "scheduled_at",
    "idempotency_key",
    "chain",
    "scheduled_by",
)
"""TaskScheduled's own fields, carried by the snapshot rather than the event record."""


def _cause_to_record(cause: Cause) -> Record:
    return {"kind": cause.kind.name, "name": cause.name, "command_id": cause.command_id}


def _cause_from_record(rec: Record) -> Cause:
    return Cause(_enum(CauseKind, rec["kind"]), rec["name"], rec["command_id"])


def event_to_record(event: Event, task_after: Task) -> Record:
    """The ``TaskEvent`` record for ``event``, with the snapshot it produced.

    Raises ValueError when the snapshot is not the one this event produced
    (another task, another sequence number, or for ``TaskScheduled`` other
    scheduling fields), because the record could not be read back exactly.
    """
    if task_after.task_id != event.task_id or task_after.seq != event.seq:
        raise ValueError(
            f"snapshot {task_after.task_id!r}@{task_after.seq} does not follow "
            f"event {event.task_id!r}@{event.seq}"
        )
    if isinstance(event, TaskScheduled):
        for name in _SCHEDULED_FROM_SNAPSHOT:
            if getattr(event, name) != getattr(task_after, name):
                raise ValueError(f"TaskScheduled.{name} differs from the snapshot's")
    rec: Record = {
        "task_id": event.task_id,
        "seq": event.seq,
        "at": event.at,
        "kind": EVENT_KINDS[type(event)],
        "cause": _cause_to_record(event.cause),
    }
    for name in _DETAIL_FIELDS:
        rec[name] = None
    required, nullable = EVENT_DETAIL_FIELDS[type(event)]
    for name in required + nullable:
        rec[name] = getattr(event, name)
    rec["task"] = task_to_record(task_after)
    return rec


def event_from_record(rec: Record) -> tuple[Event, Task]:
    """The event and the snapshot after it.

    Detail fields the event kind does not use are ignored.
    """
    cls = _EVENT_CLASSES.get(rec["kind"])
    if cls is None:
        raise RecordError(f"unknown event kind {rec['kind']!r}")
    task = task_from_record(rec["task"])
    if task.task_id != rec["task_id"] or task.seq != rec["seq"]:
        raise RecordError(
            f"snapshot {task.task_id!r}@{task.seq} does not follow "
            f"event {rec['task_id']!r}@{rec['seq']}"
        )
    kwargs: Record = {
        "task_id": rec["task_id"],
        "seq": rec["seq"],
        "at": rec["at"],
        "cause": _cause_from_record(rec["cause"]),
    }
    required, nullable = EVENT_DETAIL_FIELDS[cls]
    for name in required:
        if rec[name] is None:
            raise RecordError(f"{rec['kind']} event without {name}")
        kwargs[name] = rec[name]
    for name in nullable:
        kwargs[name] = rec[name]
    if cls is TaskScheduled:
        for name in _SCHEDULED_FROM_SNAPSHOT:
            kwargs[name] = getattr(task, name)
    return cls(**kwargs), task


# --- Command ------------------------------------------------------------------

_COMMAND_NAMES: Final[dict[type[Command], str]] = {
    ScheduleTask: f"{NAMESPACE}.ScheduleTask",
    ClaimTask: f"{NAMESPACE}.ClaimTask",
    Heartbeat: f"{NAMESPACE}.Heartbeat",
    SetResult: f"{NAMESPACE}.SetResult",
    CancelTask: f"{NAMESPACE}.CancelTask",
    RedriveTask: f"{NAMESPACE}.RedriveTask",
    DropTask: f"{NAMESPACE}.DropTask",
    QueryTask: f"{NAMESPACE}.QueryTask",
}


def _command_body(cmd: Command) -> Record:
    match cmd:
        case ScheduleTask():
            return {
                "task_id": cmd.task_id,
                "lambda_name": cmd.lambda_name,
                "collection": cmd.collection,
                "priority": _int32("priority", cmd.priority),
                "payload": cmd.payload,
                "run_at": cmd.run_at,
                "idempotency_key": cmd.idempotency_key,
                "chain": None if cmd.chain is None else link_to_record(cmd.chain),
                "scheduled_by": cmd.scheduled_by,
            }
        case ClaimTask():
            return {
                "task_id": cmd.task_id,
                "lease": cmd.lease,
                "worker": cmd.worker,
                "start": cmd.start,
            }
        case Heartbeat():
            return {"task_id": cmd.task_id, "lease": cmd.lease, "worker": cmd.worker}
        case SetResult():
            return {
                "task_id": cmd.task_id,
                "lease": cmd.lease,
                "worker": cmd.worker,
                "outcome": cmd.outcome.name,
                "error": cmd.error,
                "result": cmd.result,
            }
        case CancelTask() | RedriveTask():
            return {"task_id": cmd.task_id, "requested_by": cmd.requested_by, "reason": cmd.reason}
        case DropTask():
            return {"task_id": cmd.task_id, "gate": cmd.gate}
        case QueryTask():
            return {"task_id": cmd.task_id}


def command_to_record(cmd: Command, reply_to: str | None, sent_at: int) -> Record:
    """The ``Command`` envelope record; ``command_id`` is kept in the envelope only."""
    return {
        "command_id": cmd.command_id,
        "reply_to": reply_to,
        "sent_at": sent_at,
        "body": (_COMMAND_NAMES[type(cmd)], _command_body(cmd)),
    }


def command_from_record(rec: Record) -> CommandEnvelope:
    try:
        name, body = rec["body"]
    except (TypeError, ValueError) as exc:
        raise RecordError("command body is not a (record name, record) pair") from exc
    command_id: str = rec["command_id"]
    cmd: Command
    match name:
        case "atf.v1.ScheduleTask":
            cmd = ScheduleTask(
                command_id=command_id,
                task_id=body["task_id"],
                lambda_name=body["lambda_name"],
                collection=body["collection"],
                priority=body["priority"],
                payload=body["payload"],
                run_at=body["run_at"],
                idempotency_key=body["idempotency_key"],
                chain=link_from_record(body.get("chain")),
                scheduled_by=body.get("scheduled_by"),
            )
        case "atf.v1.ClaimTask":
            cmd = ClaimTask(
                command_id, body["task_id"], body["lease"], body["worker"], body.get("start", False)
            )
        case "atf.v1.Heartbeat":
            cmd = Heartbeat(command_id, body["task_id"], body["lease"], body["worker"])
        case "atf.v1.SetResult":
            cmd = SetResult(
                command_id=command_id,
                task_id=body["task_id"],
                lease=body["lease"],
                worker=body["worker"],
                outcome=_enum(Outcome, body["outcome"]),
                error=body["error"],
                result=body["result"],
            )
        case "atf.v1.CancelTask":
            cmd = CancelTask(command_id, body["task_id"], body["requested_by"], body["reason"])
        case "atf.v1.RedriveTask":
            cmd = RedriveTask(command_id, body["task_id"], body["requested_by"], body["reason"])
        case "atf.v1.DropTask":
            cmd = DropTask(command_id, body["task_id"], body["gate"])
        case "atf.v1.QueryTask":
            cmd = QueryTask(command_id, body["task_id"])
        case _:
            raise RecordError(f"unknown command type {name!r}")
    return CommandEnvelope(cmd, rec["reply_to"], rec["sent_at"])


# --- WorkItem -----------------------------------------------------------------


def work_to_record(item: WorkItem) -> Record:
    return {
        "task_id": item.task_id,
        "lease": item.lease,
        "lambda_name": item.lambda_name,
        "collection": item.collection,
        "priority": _int32("priority", item.priority),
        "payload": item.payload,
        "scheduled_at": item.scheduled_at,
        "enqueued_at": item.enqueued_at,
        "attempt": _int32("attempt", item.attempt),
    }


def work_from_record(rec: Record) -> WorkItem:
    return WorkItem(
        task_id=rec["task_id"],
        lease=rec["lease"],
        lambda_name=rec["lambda_name"],
        collection=rec["collection"],
        priority=rec["priority"],
        payload=rec["payload"],
        scheduled_at=rec["scheduled_at"],
        enqueued_at=rec["enqueued_at"],
        attempt=rec["attempt"],
    )


# --- Reply --------------------------------------------------------------------


def reply_to_record(reply: Reply) -> Record:
    return {
        "command_id": reply.command_id,
        "task_id": reply.task_id,
        "accepted": reply.accepted,
        "code": reply.code.name,
        "message": reply.message,
        "task": None if reply.task is None else task_to_record(reply.task),
    }


def reply_from_record(rec: Record) -> Reply:
    task = rec["task"]
    return Reply(
        command_id=rec["command_id"],
        task_id=rec["task_id"],
        accepted=rec["accepted"],
        code=_enum(ReplyCode, rec["code"]),
        message=rec["message"],
        task=None if task is None else task_from_record(task),
    )


# --- PoisonRecord -------------------------------------------------------------


def poison_to_record(poison: PoisonRecord) -> Record:
    return {
        "source_topic": poison.source_topic,
        "partition": _int32("partition", poison.partition),
        "offset": poison.offset,
        "key": poison.key,
        "value": poison.value,
        "reason": poison.reason,
        "at": poison.at,
    }


def poison_from_record(rec: Record) -> PoisonRecord:
    return PoisonRecord(
        source_topic=rec["source_topic"],
        partition=rec["partition"],
        offset=rec["offset"],
        key=rec["key"],
        value=rec["value"],
        reason=rec["reason"],
        at=rec["at"],
    )


# -- control records ------------------------------------------------------

_LAMBDA_DEFINITION: Final = f"{NAMESPACE}.LambdaDefinition"
_GATE: Final = f"{NAMESPACE}.Gate"
_PERIODIC: Final = f"{NAMESPACE}.PeriodicSchedule"


def lambda_to_record(policy: LambdaPolicy, at: int) -> Record:
    """A lambda definition for the control topic, keyed ``lambda/<name>``."""
    body: Record = {
        f.name: getattr(policy, f.name) for f in fields(policy) if f.name not in ("name",)
    }
    body["lambda_name"] = policy.name
    body["default_failure"] = policy.default_failure.name
    return {"name": control_key(policy.name), "at": at, "body": (_LAMBDA_DEFINITION, body)}


def gate_to_record(gate: Gate) -> Record:
    """A gate for the control topic, keyed ``gate/<lambda>[/<collection>]``."""
    body: Record = {
        "lambda_name": gate.lambda_name,
        "collection": gate.collection,
        "action": gate.action.name,
        "reason": gate.reason,
        "set_by": gate.set_by,
    }
    return {"name": gate.key, "at": gate.set_at, "body": (_GATE, body)}


def periodic_to_record(schedule: PeriodicSchedule) -> Record:
    """A periodic schedule for the control topic, keyed ``periodic/<name>``."""
    body: Record = {
        "schedule_name": schedule.name,
        "lambda_name": schedule.lambda_name,
        "collection": schedule.collection,
        "priority": _int32("priority", schedule.priority),
        "payload": schedule.payload,
        "cron": schedule.cron,
        "every_ms": schedule.every_ms,
        "timezone": schedule.timezone,
        "start_ms": schedule.start_ms,
        "end_ms": schedule.end_ms,
        "misfire": schedule.misfire.name,
        "catch_up_max": schedule.catch_up_max,
        "misfire_grace_ms": schedule.misfire_grace_ms,
        "paused": schedule.paused,
        "set_by": schedule.set_by,
    }
    return {"name": schedule.key, "at": schedule.defined_at, "body": (_PERIODIC, body)}


def control_from_record(rec: Record) -> LambdaPolicy | Gate | PeriodicSchedule:
    # fastavro names the branch of a union only while it has more than one
    # record (ControlRecord v1 had one).
    kind, body = (
        rec["body"] if isinstance(rec["body"], tuple) else (_LAMBDA_DEFINITION, rec["body"])
    )
    if kind == _GATE:
        return Gate(
            lambda_name=body["lambda_name"],
            collection=body["collection"],
            action=_enum(GateAction, body["action"]),
            reason=body["reason"],
            set_by=body["set_by"],
            set_at=rec["at"],
        )
    if kind == _PERIODIC:
        try:
            return PeriodicSchedule(
                name=body["schedule_name"],
                lambda_name=body["lambda_name"],
                collection=body["collection"],
                priority=body["priority"],
                payload=body["payload"],
                cron=body["cron"],
                every_ms=body["every_ms"],
                timezone=body["timezone"],
                start_ms=body["start_ms"],
                end_ms=body["end_ms"],
                misfire=_enum(Misfire, body["misfire"]),
                catch_up_max=body["catch_up_max"],
                misfire_grace_ms=body["misfire_grace_ms"],
                paused=body["paused"],
                set_by=body["set_by"],
                defined_at=rec["at"],
            )
        except PeriodicError as exc:
            raise RecordError(str(exc)) from exc
    if kind != _LAMBDA_DEFINITION:
        raise RecordError(f"unknown control record body {kind!r}")
    values = {k: v for k, v in body.items() if k not in ("lambda_name", "default_failure")}
    return LambdaPolicy(
        name=body["lambda_name"],
        default_failure=_enum(FailureKind, body["default_failure"]),
        **values,
    )


def task_id_of_key(key: bytes | None) -> str | None:
    """The task id a task-events key (e.g. a tombstone's) names; None if it names none."""
    if not key:
        return None
    try:
        task_id = key.decode()
    except UnicodeDecodeError:
        return None
    return None if "\x00" in task_id else task_id


def control_key(lambda_name: str) -> str:
    return f"lambda/{lambda_name}"
