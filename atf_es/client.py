"""The client SDK: schedule, inspect, cancel and wait for tasks over gRPC.

``Client`` is synchronous; ``AsyncClient`` has the same task methods for
asyncio. The operator's methods over ``atf.v1.Admin`` (gates: ``pause``,
``drop``, ``resume``, ``gates``; dead letters: ``dead_letters``,
``dead_letter_counts``, ``redrive``) are on ``Client`` only.
Both talk to the Frontend service and turn gRPC errors into a small typed
hierarchy rooted at ``AtfError``, keeping the server's sentence::

    from atf_es.client import Client

    with Client("127.0.0.1:7070") as atf:
        task_id = atf.schedule("send_email", b'{"to": "ada@example.com"}')
        info = atf.wait(task_id, timeout=60)
        print(info.status, info.result)

Scheduling with an ``idempotency_key`` makes retries safe: the same key for
the same lambda always names the same task, and a repeat schedules nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
import grpc.aio

from atf_es._proto.atf.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    frontend_pb2,
    frontend_pb2_grpc,
)
from atf_es.events.status import TaskStatus
from atf_es.services.channels import Credentials, open_async_channel, open_channel

REPLY_CODE_KEY = "atf-reply-code"
"""Trailing metadata carrying the precise reply code (as ``atf_es.services.hsc`` sends it)."""
RETRY_AFTER_KEY = "atf-retry-after-ms"
"""Trailing metadata of ``RESOURCE_EXHAUSTED`` (as ``atf_es.services.frontend`` sends it)."""
_FIRST_INTERVAL = 0.02
_MAX_REDRIVE = 1_000
"""Most tasks one Redrive call takes (``atf_es.services.admin.MAX_REDRIVE``)."""
_MAX_INTERVAL = 1.0


# -- errors ------------------------------------------------------------------


class AtfError(Exception):
    """A call the Frontend refused or could not complete; ``message`` is the server's sentence."""

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class InvalidArgument(AtfError, ValueError):  # noqa: N818 - named after the gRPC status
    """The request is malformed; the message names the field."""


class NotFound(AtfError):  # noqa: N818 - named after the gRPC status
    """Something the request refers to does not exist."""


class TaskNotFound(NotFound):
    """No task has this id."""


class UnknownLambda(NotFound):
    """The lambda is not defined."""


class AlreadyExists(AtfError):  # noqa: N818 - named after the gRPC status
    """The task id (or idempotency key) is taken by a task with different content."""


class FailedPrecondition(AtfError):  # noqa: N818 - named after the gRPC status
    """The task is in a state that does not allow this (e.g. cancelling a finished task)."""


class Unavailable(AtfError):  # noqa: N818 - named after the gRPC status
    """The Frontend, Kafka or the processors could not be reached in time; retry later."""


class DeadlineExceeded(Unavailable, TimeoutError):  # noqa: N818 - named after the gRPC status
    """The call did not finish within its timeout."""


class Unimplemented(AtfError):  # noqa: N818 - named after the gRPC status
    """The server does not offer this call yet."""


class ResourceExhausted(AtfError):  # noqa: N818 - named after the gRPC status
    """The lambda is over its scheduling quota; ``retry_after`` says when to try again.

    ``retry_after`` is in seconds; ``None`` when the server gave no hint (or when
    the batch can never be admitted at once).
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = grpc.StatusCode.RESOURCE_EXHAUSTED,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class Unauthenticated(AtfError):  # noqa: N818 - named after the gRPC status
    """The call carried no token, or one the service does not know (docs/security.md)."""


class PermissionDenied(AtfError):  # noqa: N818 - named after the gRPC status
    """The caller's token does not allow this call; the message says what it allows."""


def _retry_after(milliseconds: object) -> float | None:
    try:
        value = int(str(milliseconds))
    except ValueError:
        return None
    return value / 1000 if value > 0 else None


_ERRORS: dict[grpc.StatusCode, type[AtfError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


def _error_from(code: grpc.StatusCode, details: str | None, metadata: Any) -> AtfError:
    message = details or code.name.lower()
    trailers = dict(metadata or ())
    reply_code = trailers.get(REPLY_CODE_KEY)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(
            message, code=code, retry_after=_retry_after(trailers.get(RETRY_AFTER_KEY))
        )
    if code is grpc.StatusCode.NOT_FOUND:
        kind: type[AtfError] = UnknownLambda if reply_code == "UNKNOWN_LAMBDA" else TaskNotFound
    else:
        kind = _ERRORS.get(code, AtfError)
    return kind(message, code=code)


def _translate(error: grpc.RpcError) -> AtfError:
    return _error_from(error.code(), error.details(), error.trailing_metadata())


# -- values ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A task as the Frontend last saw it. Times are epoch milliseconds."""

    task_id: str
    lambda_name: str
    collection: str
    priority: int
    status: TaskStatus
    attempts: int
    """Claims accepted since the task was scheduled or redriven."""
    lease: int
    """The current lease token; bumped on every (re)enqueue."""
    seq: int
    created_at_ms: int
    scheduled_at_ms: int
    next_trigger_at_ms: int | None = None
    enqueued_at_ms: int | None = None
    claimed_at_ms: int | None = None
    started_at_ms: int | None = None
    heartbeat_at_ms: int | None = None
    finished_at_ms: int | None = None
    worker: str | None = None
    last_error: str | None = None
    result: bytes | None = None
    idempotency_key: str | None = None
    payload: bytes | None = None
    """Only when asked for (``get(..., include_payload=True)``)."""
    held_by: str | None = None
    """The closed gate covering this waiting task ("lambda" or "lambda/collection")."""
    held_action: str | None = None
    """What that gate does once the task is due: "pause" (hold it) or "drop"."""
    chain_id: str | None = None
    """For a node of a chain: the chain, the node, the chain's root task and
    the node's parents' tasks."""
    chain_node: str | None = None
    root_task_id: str | None = None
    parent_task_ids: tuple[str, ...] = ()
    scheduled_by: str | None = None
    """The principal whose token scheduled it (docs/security.md); None without
    access control."""

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    @classmethod
    def from_proto(cls, info: common_pb2.TaskInfo) -> TaskInfo:
        def opt(name: str) -> Any:
            return getattr(info, name) if info.HasField(name) else None

        status_name = common_pb2.TaskStatus.Name(info.status).removeprefix("TASK_STATUS_")
        return cls(
            task_id=info.task_id,
            lambda_name=info.lambda_name,
            collection=info.collection,
            priority=info.priority,
            status=TaskStatus[status_name],
            attempts=info.attempts,
            lease=info.lease,
            seq=info.seq,
            created_at_ms=info.created_at_ms,
            scheduled_at_ms=info.scheduled_at_ms,
            next_trigger_at_ms=opt("next_trigger_at_ms"),
            enqueued_at_ms=opt("enqueued_at_ms"),
            claimed_at_ms=opt("claimed_at_ms"),
            started_at_ms=opt("started_at_ms"),
            heartbeat_at_ms=opt("heartbeat_at_ms"),
            finished_at_ms=opt("finished_at_ms"),
            worker=opt("worker"),
            last_error=opt("last_error"),
            result=opt("result"),
            idempotency_key=opt("idempotency_key"),
            payload=opt("payload"),
            held_by=opt("held_by"),
            held_action=opt("held_action"),
            chain_id=opt("chain_id"),
            chain_node=opt("chain_node"),
            root_task_id=opt("root_task_id"),
            parent_task_ids=tuple(info.parent_task_ids),
            scheduled_by=opt("scheduled_by"),
        )


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One transition of a task, as the task-events topic recorded it."""

    seq: int
    kind: str
    """The event type, e.g. ``TASK_CLAIMED`` (the Avro ``EventKind`` symbol)."""
    at_ms: int
    status: TaskStatus
    """The status the transition led to."""
    cause: str
    """``command`` or ``timer``."""
    cause_name: str
    """The command's type (``ClaimTask``) or the timer's reason (``heartbeat_timeout``)."""
    command_id: str | None
    since_previous_ms: int
    lease: int | None = None
    worker: str | None = None
    error: str | None = None
    deadline_ms: int | None = None
    retry_at_ms: int | None = None
    requested_by: str | None = None
    reason: str | None = None
    gate: str | None = None
    run_at_ms: int | None = None
    root_task_id: str | None = None
    """On the scheduling of a chain node: the chain's root task."""
    parent_task_ids: tuple[str, ...] = ()
    """On the scheduling of a chain node: its parents' tasks."""

    @classmethod
    def from_proto(cls, entry: common_pb2.HistoryEntry) -> HistoryEntry:
        def opt(name: str) -> Any:
            return getattr(entry, name) if entry.HasField(name) else None

        status = common_pb2.TaskStatus.Name(entry.status).removeprefix("TASK_STATUS_")
        return cls(
            seq=entry.seq,
            kind=common_pb2.EventKind.Name(entry.kind).removeprefix("EVENT_KIND_"),
            at_ms=entry.at_ms,
            status=TaskStatus[status],
            cause=common_pb2.CauseKind.Name(entry.cause.kind).removeprefix("CAUSE_KIND_").lower(),
            cause_name=entry.cause.name,
            command_id=entry.cause.command_id if entry.cause.HasField("command_id") else None,
            since_previous_ms=entry.since_previous_ms,
            lease=opt("lease"),
            worker=opt("worker"),
            error=opt("error"),
            deadline_ms=opt("deadline_ms"),
            retry_at_ms=opt("retry_at_ms"),
            requested_by=opt("requested_by"),
            reason=opt("reason"),
            gate=opt("gate"),
            run_at_ms=opt("run_at_ms"),
            root_task_id=opt("root_task_id"),
            parent_task_ids=tuple(entry.parent_task_ids),
        )


@dataclass(frozen=True, slots=True)
class ChainStep:
    """One node of a chain to schedule (``Client.schedule_chain``)."""

    name: str
    lambda_name: str
    payload: bytes = b""
    after: Sequence[str] = ()
    """Names of the nodes it depends on."""
    collection: str = "default"
    priority: int = 0
    delay: float | timedelta = 0
    """From the moment it may run (its parents done) to its scheduled time."""

    def to_proto(self) -> frontend_pb2.ChainNodeSpec:
        return frontend_pb2.ChainNodeSpec(
            name=self.name,
            lambda_name=self.lambda_name,
            collection=self.collection,
            priority=self.priority,
            payload=self.payload,
            delay_ms=_milliseconds(self.delay),
            parents=list(self.after),
        )


@dataclass(frozen=True, slots=True)
class ChainNodeInfo:
    name: str
    task_id: str
    state: str
    """The task's status, or ``pending`` (waiting for its parents) or ``blocked``
    (an ancestor ended without success under ``stop``)."""
    parents: tuple[str, ...]
    task: TaskInfo | None
    blocked_by: str | None


@dataclass(frozen=True, slots=True)
class ChainInfo:
    """The status of a whole chain (``Client.chain``)."""

    chain_id: str
    state: str
    """``running``, ``succeeded`` or ``failed``."""
    on_failure: str
    summary: str
    """Where the chain is and, if it failed, where and why."""
    nodes: tuple[ChainNodeInfo, ...]

    def node(self, name: str) -> ChainNodeInfo:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    @classmethod
    def from_proto(cls, response: frontend_pb2.GetChainResponse) -> ChainInfo:
        return cls(
            chain_id=response.chain_id,
            state=frontend_pb2.ChainState.Name(response.state).removeprefix("CHAIN_STATE_").lower(),
            on_failure=frontend_pb2.ChainFailurePolicy.Name(response.on_failure)
            .removeprefix("CHAIN_FAILURE_POLICY_")
            .lower(),
            summary=response.summary,
            nodes=tuple(
                ChainNodeInfo(
                    n.name,
                    n.task_id,
                    n.state,
                    tuple(n.parents),
                    TaskInfo.from_proto(n.task) if n.HasField("task") else None,
                    n.blocked_by if n.HasField("blocked_by") else None,
                )
                for n in response.nodes
            ),
        )


def _milliseconds(value: float | timedelta) -> int:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    return round(seconds * 1000)


_GATE_ACTIONS = {
    admin_pb2.GATE_ACTION_PAUSE: "pause",
    admin_pb2.GATE_ACTION_DROP: "drop",
    admin_pb2.GATE_ACTION_RESUME: "open",
}


@dataclass(frozen=True, slots=True)
class GateInfo:
    """A gate as the control topic holds it."""

    lambda_name: str
    collection: str | None
    """None: every collection of the lambda."""
    action: str
    """"pause", "drop", or "open" (what ``resume`` leaves)."""
    reason: str
    set_by: str
    set_at_ms: int

    @property
    def name(self) -> str:
        return (
            self.lambda_name if self.collection is None else f"{self.lambda_name}/{self.collection}"
        )

    @classmethod
    def from_proto(cls, gate: admin_pb2.Gate) -> GateInfo:
        return cls(
            lambda_name=gate.lambda_name,
            collection=gate.collection if gate.HasField("collection") else None,
            action=_GATE_ACTIONS.get(gate.action, "unspecified"),
            reason=gate.reason,
            set_by=gate.set_by,
            set_at_ms=gate.set_at_ms,
        )


_MISFIRE_NAMES = {admin_pb2.MISFIRE_SKIP: "skip", admin_pb2.MISFIRE_CATCH_UP: "catch_up"}
_MISFIRE_VALUES = {name: value for value, name in _MISFIRE_NAMES.items()}


@dataclass(frozen=True, slots=True)
class PeriodicInfo:
    """A periodic schedule as the control topic holds it (docs/periodic.md)."""

    name: str
    lambda_name: str
    collection: str
    priority: int
    payload: bytes
    cron: str | None
    every_ms: int | None
    time_zone: str
    start_ms: int | None
    end_ms: int | None
    misfire: str
    """"skip" or "catch_up"."""
    catch_up_max: int
    misfire_grace_ms: int
    paused: bool
    set_by: str
    defined_at_ms: int
    next_fire_ms: int | None
    """When it fires next; None if paused or ended."""

    @property
    def when(self) -> str:
        if self.cron is not None:
            return f"cron {self.cron} ({self.time_zone})"
        return f"every {self.every_ms} ms"

    @classmethod
    def from_proto(cls, message: admin_pb2.PeriodicSchedule) -> PeriodicInfo:
        def optional(name: str) -> Any:
            return getattr(message, name) if message.HasField(name) else None

        when = message.WhichOneof("when")
        return cls(
            name=message.name,
            lambda_name=message.lambda_name,
            collection=message.collection,
            priority=message.priority,
            payload=message.payload,
            cron=message.cron if when == "cron" else None,
            every_ms=message.every_ms if when == "every_ms" else None,
            time_zone=message.time_zone,
            start_ms=optional("start_ms"),
            end_ms=optional("end_ms"),
            misfire=_MISFIRE_NAMES.get(message.misfire, "catch_up"),
            catch_up_max=message.catch_up_max,
            misfire_grace_ms=message.misfire_grace_ms,
            paused=message.paused,
            set_by=message.set_by,
            defined_at_ms=message.defined_at_ms,
            next_fire_ms=message.next_fire_ms or None,
        )


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """A set of dead letters of one lambda, for ``Client.redrive`` (and ``dead_letters``).

    ``after`` and ``before`` (aware datetimes or epoch milliseconds) bound when
    the task was dead-lettered: ``after <= finished_at < before``.
    ``error_contains`` matches the last error, case-insensitively.
    ``DeadLetterFilter("send_email")`` is every dead letter of the lambda.
    """

    lambda_name: str
    collection: str | None = None
    error_contains: str | None = None
    after: datetime | int | None = None
    before: datetime | int | None = None

    def to_proto(self) -> admin_pb2.DeadLetterFilter:
        message = admin_pb2.DeadLetterFilter(lambda_name=self.lambda_name)
        _set_filters(message, self.collection, self.error_contains, self.after, self.before)
        return message


def _set_filters(
    message: admin_pb2.DeadLetterFilter | admin_pb2.ListDeadLettersRequest,
    collection: str | None,
    error_contains: str | None,
    after: datetime | int | None,
    before: datetime | int | None,
) -> None:
    if collection is not None:
        message.collection = collection
    if error_contains is not None:
        message.error_contains = error_contains
    if after is not None:
        message.dead_lettered_after_ms = _epoch_ms(after, "after")
    if before is not None:
        message.dead_lettered_before_ms = _epoch_ms(before, "before")


@dataclass(frozen=True, slots=True)
class DeadLetterPage:
    """One page of ``Client.dead_letter_page``."""

    tasks: list[TaskInfo]
    """Oldest first (by when they were dead-lettered), without payloads."""
    next_page_token: str
    """Pass it back for the next page; empty on the last."""
    total: int
    """How many dead letters the listing matches, on every page."""


@dataclass(frozen=True, slots=True)
class DeadLetterCount:
    """The dead letters of one lambda."""

    lambda_name: str
    count: int
    by_collection: dict[str, int]
    oldest_at_ms: int
    """When the oldest of them was dead-lettered."""
    newest_at_ms: int

    @classmethod
    def from_proto(cls, count: admin_pb2.DeadLetterCount) -> DeadLetterCount:
        return cls(
            lambda_name=count.lambda_name,
            count=count.count,
            by_collection=dict(sorted(count.by_collection.items())),
            oldest_at_ms=count.oldest_at_ms,
            newest_at_ms=count.newest_at_ms,
        )


@dataclass(frozen=True, slots=True)
class RedriveReply:
    """What became of one task of a redrive."""

    task_id: str
    code: str
    """The reply code: ``OK``, or why not (``WRONG_STATE``: not dead-lettered; ``NOT_FOUND``;
    ``UNSPECIFIED``: no answer, e.g. Kafka or the processor was unavailable)."""
    message: str

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    @property
    def error(self) -> AtfError | None:
        """The refusal as the error a single call would raise; None if redriven."""
        if self.ok:
            return None
        code = common_pb2.ReplyCode.Value(f"REPLY_CODE_{self.code}")
        return _OUTCOME_ERRORS.get(code, AtfError)(self.message or self.code.lower())

    @classmethod
    def from_proto(cls, reply: common_pb2.CommandReply) -> RedriveReply:
        return cls(
            reply.task_id,
            common_pb2.ReplyCode.Name(reply.code).removeprefix("REPLY_CODE_"),
            reply.message,
        )


@dataclass(frozen=True, slots=True)
class RedriveResult:
    """The outcome of ``Client.redrive``: one reply per task, in order."""

    replies: list[RedriveReply]

    @property
    def redriven(self) -> list[str]:
        """The tasks given a fresh set of attempts."""
        return [r.task_id for r in self.replies if r.ok]

    @property
    def refused(self) -> list[RedriveReply]:
        """The tasks not redriven, each with its reason."""
        return [r for r in self.replies if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.refused


@dataclass(frozen=True, slots=True)
class DepthPoint:
    """A lambda's queue depth at one instant (``Client.overview``)."""

    at_ms: int
    enqueued: int
    """Enqueued or claimed, not started yet."""
    due: int
    """Due but not enqueued: held by a pause gate, or waiting for flow-control credit."""

    @property
    def waiting(self) -> int:
        return self.enqueued + self.due


@dataclass(frozen=True, slots=True)
class LatencyPoint:
    """Delivery latency (due to started) of a lambda's starts in ``[at_ms - interval, at_ms)``."""

    at_ms: int
    started: int
    p50_ms: int
    p95_ms: int
    max_ms: int


@dataclass(frozen=True, slots=True)
class LambdaOverview:
    """One lambda in ``Client.overview``: its tasks counted, its queue and latency over time."""

    lambda_name: str
    counts: dict[tuple[str, TaskStatus], int]
    """Non-zero counts by ``(collection, status)``."""
    depth: list[DepthPoint]
    """Oldest first, the last hour (since the Frontend's view started sampling)."""
    latency: list[LatencyPoint]
    """Oldest first, the last hour; only intervals in which tasks started."""

    @property
    def by_status(self) -> dict[TaskStatus, int]:
        totals: dict[TaskStatus, int] = {}
        for (_, status), count in self.counts.items():
            totals[status] = totals.get(status, 0) + count
        return totals

    @property
    def by_collection(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for (collection, _), count in self.counts.items():
            totals[collection] = totals.get(collection, 0) + count
        return totals

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @classmethod
    def from_proto(cls, message: admin_pb2.LambdaOverview) -> LambdaOverview:
        return cls(
            lambda_name=message.lambda_name,
            counts={
                (count.collection, _status(count.status)): count.count for count in message.counts
            },
            depth=[DepthPoint(d.at_ms, d.enqueued, d.due) for d in message.depth],
            latency=[
                LatencyPoint(p.at_ms, p.started, p.p50_ms, p.p95_ms, p.max_ms)
                for p in message.latency
            ],
        )


@dataclass(frozen=True, slots=True)
class Overview:
    """What ``Client.overview`` returns (docs/dashboard.md)."""

    lambdas: dict[str, LambdaOverview]
    """By lambda name: every lambda that is defined or has tasks."""
    sample_interval_ms: int
    sampling_since_ms: int | None
    """When the Frontend's view took its first depth sample; None: not yet."""
    as_of_ms: int
    tasks: int
    """Tasks the view holds (all not yet deleted by retention)."""


def _status(value: int) -> TaskStatus:
    return TaskStatus[common_pb2.TaskStatus.Name(value).removeprefix("TASK_STATUS_")]


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """One task for ``schedule_many``; the fields mean what ``Client.schedule``'s arguments do."""

    lambda_name: str
    payload: bytes = b""
    collection: str = "default"
    priority: int = 0
    run_at: datetime | int | None = None
    delay: float | timedelta | None = None
    idempotency_key: str | None = None
    task_id: str | None = None

    def to_proto(self) -> frontend_pb2.TaskSpec:
        if self.run_at is not None and self.delay is not None:
            raise InvalidArgument("give run_at or delay, not both")
        spec = frontend_pb2.TaskSpec(
            lambda_name=self.lambda_name,
            collection=self.collection,
            priority=self.priority,
            payload=self.payload,
        )
        if self.run_at is not None:
            spec.run_at_ms = _epoch_ms(self.run_at)
        if self.delay is not None:
            seconds = (
                self.delay.total_seconds() if isinstance(self.delay, timedelta) else self.delay
            )
            spec.delay_ms = round(seconds * 1000)
        if self.idempotency_key is not None:
            spec.idempotency_key = self.idempotency_key
        if self.task_id is not None:
            spec.task_id = self.task_id
        return spec


@dataclass(frozen=True, slots=True)
class ScheduleOutcome:
    """What became of one task of ``schedule_many``: its id, or why it was refused."""

    task_id: str
    created: bool
    error: AtfError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


_OUTCOME_ERRORS: dict[int, type[AtfError]] = {
    common_pb2.REPLY_CODE_INVALID: InvalidArgument,
    common_pb2.REPLY_CODE_NOT_FOUND: TaskNotFound,
    common_pb2.REPLY_CODE_UNKNOWN_LAMBDA: UnknownLambda,
    common_pb2.REPLY_CODE_ALREADY_EXISTS: AlreadyExists,
    common_pb2.REPLY_CODE_WRONG_STATE: FailedPrecondition,
    common_pb2.REPLY_CODE_UNSPECIFIED: Unavailable,
}


def _outcome(result: frontend_pb2.ScheduleResult) -> ScheduleOutcome:
    if result.code == common_pb2.REPLY_CODE_OK:
        return ScheduleOutcome(result.task_id, result.created)
    if result.code == common_pb2.REPLY_CODE_OVER_QUOTA:
        error = ResourceExhausted(result.message, retry_after=_retry_after(result.retry_after_ms))
        return ScheduleOutcome(result.task_id, False, error)
    kind = _OUTCOME_ERRORS.get(result.code, AtfError)
    return ScheduleOutcome(result.task_id, False, kind(result.message))


def _epoch_ms(when: datetime | int, name: str = "run_at") -> int:
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise InvalidArgument(
                f"{name} must be a timezone-aware datetime (e.g. datetime.now(UTC)) "
                "or epoch milliseconds"
            )
        return round(when.timestamp() * 1000)
    return when


def _requests(tasks: Iterable[TaskRequest]) -> frontend_pb2.ScheduleBatchRequest:
    return frontend_pb2.ScheduleBatchRequest(specs=[task.to_proto() for task in tasks])


def _timeout_error(task_id: str, timeout: float, last: TaskInfo) -> TimeoutError:
    return TimeoutError(
        f"task {task_id!r} did not finish within {timeout:g}s; its last status was {last.status}"
    )


# -- the clients -------------------------------------------------------------


def _credentials(token: str | None, tls_ca_file: str | Path | None) -> Credentials:
    return Credentials(token, Path(tls_ca_file) if tls_ca_file is not None else None)


class Client:
    """A synchronous Frontend client; every call is bounded by ``timeout`` seconds.

    >>> with Client("127.0.0.1:7070") as atf:  # doctest: +SKIP
    ...     task_id = atf.schedule("send_email", b"hi", delay=timedelta(minutes=5))
    ...     atf.cancel(task_id, reason="changed my mind").status
    <TaskStatus.CANCELLED: 'cancelled'>
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float = 10.0,
        token: str | None = None,
        tls_ca_file: str | Path | None = None,
    ) -> None:
        """``token``: sent as a bearer token with every call; ``tls_ca_file``: PEM
        roots to verify the Frontend's certificate (TLS). See docs/security.md."""
        self.address = address
        self.timeout = timeout
        self._channel = open_channel(address, _credentials(token, tls_ca_file))
        self._stub = frontend_pb2_grpc.FrontendStub(self._channel)
        self._admin = admin_pb2_grpc.AdminStub(self._channel)

    def schedule(
        self,
        lambda_name: str,
        payload: bytes = b"",
        *,
        collection: str = "default",
        priority: int = 0,
        run_at: datetime | int | None = None,
        delay: float | timedelta | None = None,
        idempotency_key: str | None = None,
        task_id: str | None = None,
    ) -> str:
        """Schedule one task; returns its id.

        ``run_at`` is a timezone-aware datetime or epoch milliseconds; ``delay`` is
        seconds or a timedelta; neither means now. With ``idempotency_key``, a
        repeat returns the same id and schedules nothing.

        >>> atf.schedule("send_email", b"hi", idempotency_key="order-42")  # doctest: +SKIP
        '5f0c...'
        """
        spec = TaskRequest(
            lambda_name, payload, collection, priority, run_at, delay, idempotency_key, task_id
        ).to_proto()
        response = self._call(self._stub.Schedule, frontend_pb2.ScheduleRequest(spec=spec))
        task_id_: str = response.task_id
        return task_id_

    def schedule_many(self, tasks: Iterable[TaskRequest]) -> list[ScheduleOutcome]:
        """Schedule many tasks in one call; one outcome per task, in order.

        >>> outcomes = atf.schedule_many(TaskRequest("resize", p) for p in images)  # doctest: +SKIP
        >>> [o.task_id for o in outcomes if o.ok]  # doctest: +SKIP
        """
        response = self._call(self._stub.ScheduleBatch, _requests(tasks))
        return [_outcome(result) for result in response.results]

    def get(
        self,
        task_id: str,
        *,
        include_payload: bool = False,
        as_of: datetime | int | None = None,
    ) -> TaskInfo:
        """The task as of every command sent for it so far; ``TaskNotFound`` if unknown.

        ``as_of`` (an aware datetime or epoch milliseconds) shows the task as it
        was then, from its recorded history (inside the audit window).
        """
        request = frontend_pb2.GetTaskRequest(task_id=task_id, include_payload=include_payload)
        if as_of is not None:
            request.as_of_ms = _epoch_ms(as_of)
        response = self._call(self._stub.GetTask, request)
        return TaskInfo.from_proto(response.task)

    def cancel(self, task_id: str, reason: str = "", *, requested_by: str = "") -> TaskInfo:
        """Cancel a task that has not finished; ``FailedPrecondition`` if it has."""
        response = self._call(
            self._stub.Cancel,
            frontend_pb2.CancelRequest(task_id=task_id, reason=reason, requested_by=requested_by),
        )
        return TaskInfo.from_proto(response.task)

    def history(self, task_id: str) -> list[HistoryEntry]:
        """Every recorded transition of the task, oldest first; ``TaskNotFound`` if none.

        >>> [(h.kind, h.cause_name) for h in atf.history(task_id)]  # doctest: +SKIP
        [('TASK_SCHEDULED', 'ScheduleTask'), ('TASK_ENQUEUED', 'due'), ...]
        """
        response = self._call(self._stub.History, frontend_pb2.HistoryRequest(task_id=task_id))
        return [HistoryEntry.from_proto(entry) for entry in response.entries]

    def schedule_chain(
        self,
        steps: Iterable[ChainStep],
        *,
        chain_id: str | None = None,
        on_failure: str = "stop",
        run_at: datetime | int | None = None,
        delay: float | timedelta | None = None,
    ) -> tuple[str, dict[str, str]]:
        """Schedule a chain or small DAG of tasks; returns its id and each node's task id.

        A node runs once every node it comes ``after`` has succeeded
        (``on_failure="stop"``) or has ended however (``"continue"``). With
        ``chain_id``, a repeat of the same chain schedules nothing.

        >>> chain_id, ids = atf.schedule_chain([  # doctest: +SKIP
        ...     ChainStep("extract", "extract"),
        ...     ChainStep("load", "load", after=["extract"]),
        ... ])
        """
        if on_failure not in ("stop", "continue"):
            raise InvalidArgument(f"on_failure must be 'stop' or 'continue', got {on_failure!r}")
        request = frontend_pb2.ScheduleChainRequest(
            nodes=[step.to_proto() for step in steps],
            on_failure=(
                frontend_pb2.CHAIN_FAILURE_POLICY_CONTINUE
                if on_failure == "continue"
                else frontend_pb2.CHAIN_FAILURE_POLICY_STOP
            ),
        )
        if chain_id is not None:
            request.chain_id = chain_id
        if run_at is not None:
            request.run_at_ms = _epoch_ms(run_at)
        elif delay is not None:
            request.delay_ms = _milliseconds(delay)
        response = self._call(self._stub.ScheduleChain, request)
        return response.chain_id, {n.name: n.task_id for n in response.nodes}

    def chain(self, chain_id: str) -> ChainInfo:
        """The status of a whole chain; ``NotFound`` if there is none."""
        response = self._call(self._stub.GetChain, frontend_pb2.GetChainRequest(chain_id=chain_id))
        return ChainInfo.from_proto(response)

    def pause(
        self, lambda_name: str, collection: str | None = None, *, reason: str = "", by: str = ""
    ) -> GateInfo:
        """Hold the lambda's (or one collection's) tasks as they become due; nothing is lost.

        >>> atf.pause("send_email", "marketing", reason="provider outage")  # doctest: +SKIP
        """
        return self._set_gate(admin_pb2.GATE_ACTION_PAUSE, lambda_name, collection, reason, by)

    def drop(
        self, lambda_name: str, collection: str | None = None, *, reason: str = "", by: str = ""
    ) -> GateInfo:
        """End the lambda's (or one collection's) tasks ``dropped`` as they become due."""
        return self._set_gate(admin_pb2.GATE_ACTION_DROP, lambda_name, collection, reason, by)

    def resume(
        self, lambda_name: str, collection: str | None = None, *, reason: str = "", by: str = ""
    ) -> GateInfo:
        """Open the gate: held tasks go out again, within the flow-control limit."""
        return self._set_gate(admin_pb2.GATE_ACTION_RESUME, lambda_name, collection, reason, by)

    def gates(self, lambda_name: str | None = None) -> list[GateInfo]:
        """The closed gates (of one lambda, or of all), by name."""
        request = admin_pb2.ListGatesRequest()
        if lambda_name is not None:
            request.lambda_name = lambda_name
        response = self._call(self._admin.ListGates, request)
        return [GateInfo.from_proto(gate) for gate in response.gates]

    def dead_letter_page(
        self,
        lambda_name: str | None = None,
        *,
        collection: str | None = None,
        error_contains: str | None = None,
        after: datetime | int | None = None,
        before: datetime | int | None = None,
        page_size: int = 100,
        page_token: str = "",
    ) -> DeadLetterPage:
        """One page of dead letters (of one lambda, or of all), oldest first.

        The filters mean what ``DeadLetterFilter``'s do; pass the same ones
        with the previous page's ``next_page_token`` for the next page.
        ``UnknownLambda`` if the lambda is neither defined nor has dead letters.
        """
        request = admin_pb2.ListDeadLettersRequest(
            lambda_name=lambda_name or "", page_size=page_size, page_token=page_token
        )
        _set_filters(request, collection, error_contains, after, before)
        response = self._call(self._admin.ListDeadLetters, request)
        return DeadLetterPage(
            [TaskInfo.from_proto(task) for task in response.tasks],
            response.next_page_token,
            response.total_size,
        )

    def dead_letters(
        self,
        lambda_name: str | None = None,
        *,
        collection: str | None = None,
        error_contains: str | None = None,
        after: datetime | int | None = None,
        before: datetime | int | None = None,
        limit: int | None = None,
        page_size: int = 100,
    ) -> Iterator[TaskInfo]:
        """Every matching dead letter (at most ``limit``), oldest first, page by page.

        The first page is read before this returns, so a bad filter raises
        here; later pages are read as the iteration reaches them.

        >>> for task in atf.dead_letters("send_email", error_contains="SMTP"):  # doctest: +SKIP
        ...     print(task.task_id, task.last_error)
        """
        if limit is not None and limit < 0:
            raise InvalidArgument(f"limit must not be negative, got {limit}")

        def page(token: str) -> DeadLetterPage:
            return self.dead_letter_page(
                lambda_name,
                collection=collection,
                error_contains=error_contains,
                after=after,
                before=before,
                page_size=page_size if limit is None else max(1, min(page_size, limit)),
                page_token=token,
            )

        first = page("")

        def iterate() -> Iterator[TaskInfo]:
            current, left = first, limit
            while True:
                for task in current.tasks:
                    if left is not None:
                        if left <= 0:
                            return
                        left -= 1
                    yield task
                if not current.next_page_token or left == 0:
                    return
                current = page(current.next_page_token)

        return iterate()

    def dead_letter_counts(self, lambda_name: str | None = None) -> dict[str, DeadLetterCount]:
        """Dead letters per lambda (only lambdas that have some), by lambda name.

        >>> atf.dead_letter_counts()["send_email"].by_collection  # doctest: +SKIP
        {'billing': 3, 'news': 5}
        """
        request = admin_pb2.DeadLetterCountsRequest()
        if lambda_name is not None:
            request.lambda_name = lambda_name
        response = self._call(self._admin.DeadLetterCounts, request)
        return {count.lambda_name: DeadLetterCount.from_proto(count) for count in response.lambdas}

    def redrive(
        self,
        target: Iterable[str] | DeadLetterFilter,
        *,
        reason: str,
        by: str = "",
        limit: int | None = None,
    ) -> RedriveResult:
        """Give dead letters a fresh set of attempts: these task ids, or every match of a filter.

        Each task goes back to ``new``, due at once, with 0 attempts; its
        history records ``by`` (default: "admin") and ``reason`` (required).
        A task that is not dead-lettered is not an error of the call: its
        reply says ``WRONG_STATE`` (see ``RedriveResult.refused``). A filter
        is redriven up to 1000 tasks per call, for as many calls as it takes
        (at most ``limit`` tasks in all); tasks dead-lettered after the
        first call are left alone, so a lambda that is still broken cannot
        keep this going.

        >>> atf.redrive(DeadLetterFilter("send_email", collection="news"),  # doctest: +SKIP
        ...             reason="SMTP credentials fixed", by="ada").redriven
        """
        if isinstance(target, DeadLetterFilter):
            return self._redrive_filter(target, reason, by, limit)
        task_ids = [target] if isinstance(target, str) else list(target)
        if limit is not None:
            task_ids = task_ids[: max(0, limit)]
        if not task_ids:
            return RedriveResult([])
        response = self._call(
            self._admin.Redrive,
            admin_pb2.RedriveRequest(task_ids=task_ids, reason=reason, requested_by=by),
        )
        return RedriveResult([RedriveReply.from_proto(r) for r in response.replies])

    def _redrive_filter(
        self, found: DeadLetterFilter, reason: str, by: str, limit: int | None
    ) -> RedriveResult:
        replies: list[RedriveReply] = []
        token = ""
        message = found.to_proto()
        while limit is None or len(replies) < limit:
            left = _MAX_REDRIVE if limit is None else min(_MAX_REDRIVE, limit - len(replies))
            response = self._call(
                self._admin.Redrive,
                admin_pb2.RedriveRequest(
                    filter=message,
                    reason=reason,
                    requested_by=by,
                    page_size=left,
                    page_token=token,
                ),
            )
            replies += [RedriveReply.from_proto(r) for r in response.replies]
            token = response.next_page_token
            if not token:
                break
        return RedriveResult(replies)

    def set_periodic(
        self,
        name: str,
        lambda_name: str,
        *,
        cron: str | None = None,
        every: float | None = None,
        payload: bytes = b"",
        collection: str = "",
        priority: int = 0,
        time_zone: str = "UTC",
        start_ms: int | None = None,
        end_ms: int | None = None,
        misfire: str = "catch_up",
        catch_up_max: int = 1,
        misfire_grace_ms: int | None = None,
        by: str = "",
    ) -> PeriodicInfo:
        """Add a periodic schedule, or replace the one called ``name``.

        Exactly one of ``cron`` (five fields or a macro such as ``@daily``, in
        ``time_zone``) and ``every`` (seconds, at least 0.1). Each occurrence
        schedules one task, whose id is ``periodic:<name>:<ms>[~N]``.

        >>> atf.set_periodic("nightly", "report", cron="0 3 * * *")  # doctest: +SKIP
        """
        if misfire not in _MISFIRE_VALUES:
            raise InvalidArgument(f"misfire must be 'skip' or 'catch_up', got {misfire!r}")
        message = admin_pb2.PeriodicSchedule(
            name=name,
            lambda_name=lambda_name,
            collection=collection,
            priority=priority,
            payload=payload,
            time_zone=time_zone,
            misfire=_MISFIRE_VALUES[misfire],
            catch_up_max=catch_up_max,
            set_by=by,
        )
        if cron is not None:
            message.cron = cron
        if every is not None:
            message.every_ms = round(every * 1000)
        if start_ms is not None:
            message.start_ms = start_ms
        if end_ms is not None:
            message.end_ms = end_ms
        if misfire_grace_ms is not None:
            message.misfire_grace_ms = misfire_grace_ms
        request = admin_pb2.SetPeriodicRequest(schedule=message)
        return PeriodicInfo.from_proto(self._call(self._admin.SetPeriodic, request).schedule)

    def periodic(self, lambda_name: str | None = None) -> list[PeriodicInfo]:
        """The periodic schedules (of one lambda, or of all), by name."""
        request = admin_pb2.ListPeriodicRequest()
        if lambda_name is not None:
            request.lambda_name = lambda_name
        response = self._call(self._admin.ListPeriodic, request)
        return [PeriodicInfo.from_proto(schedule) for schedule in response.schedules]

    def pause_periodic(self, name: str, *, by: str = "") -> PeriodicInfo:
        """Stop firing ``name`` until resumed; the occurrences in between are not caught up."""
        request = admin_pb2.PausePeriodicRequest(name=name, paused=True, set_by=by)
        return PeriodicInfo.from_proto(self._call(self._admin.PausePeriodic, request).schedule)

    def resume_periodic(self, name: str, *, by: str = "") -> PeriodicInfo:
        """Fire ``name`` again, from its next occurrence."""
        request = admin_pb2.PausePeriodicRequest(name=name, paused=False, set_by=by)
        return PeriodicInfo.from_proto(self._call(self._admin.PausePeriodic, request).schedule)

    def remove_periodic(self, name: str) -> bool:
        """Remove ``name``; False if there was none. Tasks it scheduled stay."""
        request = admin_pb2.RemovePeriodicRequest(name=name)
        return bool(self._call(self._admin.RemovePeriodic, request).removed)

    def overview(self, lambda_name: str | None = None) -> Overview:
        """Task counts by collection and status, queue depth and delivery latency
        over the last hour, per lambda (or of one; ``UnknownLambda`` if it is
        neither defined nor has tasks).

        >>> atf.overview().lambdas["send_email"].by_status  # doctest: +SKIP
        {<TaskStatus.SUCCESS: 'success'>: 120, <TaskStatus.ENQUEUED: 'enqueued'>: 3}
        """
        request = admin_pb2.OverviewRequest()
        if lambda_name is not None:
            request.lambda_name = lambda_name
        response = self._call(self._admin.Overview, request)
        return Overview(
            lambdas={
                found.lambda_name: LambdaOverview.from_proto(found) for found in response.lambdas
            },
            sample_interval_ms=response.sample_interval_ms,
            sampling_since_ms=response.sampling_since_ms or None,
            as_of_ms=response.as_of_ms,
            tasks=response.tasks,
        )

    def _set_gate(
        self,
        action: admin_pb2.GateAction,
        lambda_name: str,
        collection: str | None,
        reason: str,
        by: str,
    ) -> GateInfo:
        gate = admin_pb2.Gate(lambda_name=lambda_name, action=action, reason=reason, set_by=by)
        if collection is not None:
            gate.collection = collection
        response = self._call(self._admin.SetGate, admin_pb2.SetGateRequest(gate=gate))
        return GateInfo.from_proto(response.gate)

    def wait(self, task_id: str, timeout: float) -> TaskInfo:
        """Poll until the task is terminal; ``TimeoutError`` after ``timeout`` seconds.

        >>> atf.wait(task_id, timeout=30).status  # doctest: +SKIP
        <TaskStatus.SUCCESS: 'success'>
        """
        deadline = time.monotonic() + timeout
        interval = _FIRST_INTERVAL
        while True:
            info = self.get(task_id)
            if info.terminal:
                return info
            left = deadline - time.monotonic()
            if left <= 0:
                raise _timeout_error(task_id, timeout, info)
            time.sleep(min(interval, left))
            interval = min(interval * 1.5, _MAX_INTERVAL)

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise _translate(error) from None

    def close(self) -> None:
        """Close the channel. Safe to call twice."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient:
    """``Client`` for asyncio (grpc.aio); create and use it inside a running loop.

    >>> async with AsyncClient("127.0.0.1:7070") as atf:  # doctest: +SKIP
    ...     task_id = await atf.schedule("send_email", b"hi")
    ...     info = await atf.wait(task_id, timeout=60)
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float = 10.0,
        token: str | None = None,
        tls_ca_file: str | Path | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = open_async_channel(address, _credentials(token, tls_ca_file))
        self._stub = frontend_pb2_grpc.FrontendStub(self._channel)

    async def schedule(
        self,
        lambda_name: str,
        payload: bytes = b"",
        *,
        collection: str = "default",
        priority: int = 0,
        run_at: datetime | int | None = None,
        delay: float | timedelta | None = None,
        idempotency_key: str | None = None,
        task_id: str | None = None,
    ) -> str:
        """Schedule one task; returns its id (see ``Client.schedule``)."""
        spec = TaskRequest(
            lambda_name, payload, collection, priority, run_at, delay, idempotency_key, task_id
        ).to_proto()
        response = await self._call(self._stub.Schedule, frontend_pb2.ScheduleRequest(spec=spec))
        task_id_: str = response.task_id
        return task_id_

    async def schedule_many(self, tasks: Iterable[TaskRequest]) -> list[ScheduleOutcome]:
        """Schedule many tasks in one call; one outcome per task, in order."""
        response = await self._call(self._stub.ScheduleBatch, _requests(tasks))
        return [_outcome(result) for result in response.results]

    async def get(self, task_id: str, *, include_payload: bool = False) -> TaskInfo:
        """The task as of every command sent for it so far; ``TaskNotFound`` if unknown."""
        response = await self._call(
            self._stub.GetTask,
            frontend_pb2.GetTaskRequest(task_id=task_id, include_payload=include_payload),
        )
        return TaskInfo.from_proto(response.task)

    async def cancel(self, task_id: str, reason: str = "", *, requested_by: str = "") -> TaskInfo:
        """Cancel a task that has not finished; ``FailedPrecondition`` if it has."""
        response = await self._call(
            self._stub.Cancel,
            frontend_pb2.CancelRequest(task_id=task_id, reason=reason, requested_by=requested_by),
        )
        return TaskInfo.from_proto(response.task)

    async def wait(self, task_id: str, timeout: float) -> TaskInfo:
        """Poll until the task is terminal; ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        interval = _FIRST_INTERVAL
        while True:
            info = await self.get(task_id)
            if info.terminal:
                return info
            left = deadline - time.monotonic()
            if left <= 0:
                raise _timeout_error(task_id, timeout, info)
            await asyncio.sleep(min(interval, left))
            interval = min(interval * 1.5, _MAX_INTERVAL)

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as error:
            raise _error_from(error.code(), error.details(), error.trailing_metadata()) from None

    async def close(self) -> None:
        """Close the channel. Safe to call twice."""
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


__all__ = [
    "AlreadyExists",
    "AsyncClient",
    "AtfError",
    "ChainInfo",
    "ChainNodeInfo",
    "ChainStep",
    "Client",
    "DeadLetterCount",
    "DeadLetterFilter",
    "DeadLetterPage",
    "DeadlineExceeded",
    "DepthPoint",
    "FailedPrecondition",
    "GateInfo",
    "HistoryEntry",
    "InvalidArgument",
    "LambdaOverview",
    "LatencyPoint",
    "NotFound",
    "Overview",
    "PeriodicInfo",
    "PermissionDenied",
    "RedriveReply",
    "RedriveResult",
    "ResourceExhausted",
    "ScheduleOutcome",
    "TaskInfo",
    "TaskNotFound",
    "TaskRequest",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "UnknownLambda",
]
