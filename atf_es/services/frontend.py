"""Frontend: the client-facing gRPC service (schedule, inspect, cancel).

A thin shell over a ``CommandGateway`` and a ``ControlView``: requests are
validated here, field by field, so a caller learns what is wrong with an
``INVALID_ARGUMENT`` that names the field; the processor validates again
(the log is the authority), which matters only for a lambda redefined
between the two checks.

Scheduling and idempotency
--------------------------
- Without an idempotency key or a caller-chosen task id, ``Schedule``
  returns as soon as the command is durably in Kafka; the processor will
  record the task, and a ``GetTask`` issued afterwards finds it because reads
  go through the same log partition (read-your-writes).
- With an idempotency key and no task id, the task id is derived from
  ``(lambda_name, idempotency_key)`` (``idempotent_task_id``), so the same key
  twice names the same task. The processor treats a second ``ScheduleTask``
  for an existing task with the same content (lambda, collection, priority,
  payload) as a duplicate and records nothing; different content is refused
  with ``ALREADY_EXISTS``. To report that, keyed requests (and requests with a
  caller-chosen task id, which are idempotent the same way) wait for the
  processor's reply. ``created`` is learnt from a ``QueryTask`` sent just
  before the ``ScheduleTask`` on the same partition: two identical keyed
  requests racing each other may both say ``created=true``, but only one task
  exists.

Every wait is bounded by the caller's deadline and ``max_wait`` (10 s): a
broker outage ends in ``UNAVAILABLE`` with a sentence, never a hang.

Quotas
------
A lambda whose policy sets ``schedule_rate`` has a token bucket in each
Frontend (``atf_es.services.quota``). ``Schedule`` over the quota answers
``RESOURCE_EXHAUSTED`` with the retry hint in the trailing metadata
``atf-retry-after-ms``; in ``ScheduleBatch`` each task takes a token in request
order and those beyond the quota get ``REPLY_CODE_OVER_QUOTA`` and
``retry_after_ms`` while the others go ahead; the k-th refused task of a
lambda is told the wait for k tokens, so a client that waits for the largest
hint resends its refused tail once. Only valid specs take tokens.

History
-------
``History`` and ``GetTask`` with ``as_of_ms`` read the task's task-events
partition (``atf_es.history``): every transition inside the audit window.
``Watch`` streams status events (``atf_es.subscription``, no consumer
group): of one task, ending after its terminal transition, or of every task
the filters select; a client resuming a broken stream passes the last
``at_ms`` it saw as ``from_ms``. At most ``MAX_WATCHES`` at once.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NoReturn

import grpc
from confluent_kafka import KafkaException

from atf_es._proto.atf.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    frontend_pb2,
    frontend_pb2_grpc,
)
from atf_es.clock import now_ms
from atf_es.events import (
    CancelTask,
    Command,
    Event,
    LambdaPolicy,
    QueryTask,
    ScheduleTask,
    Task,
    TaskScheduled,
    TaskStatus,
)
from atf_es.events.chains import (
    CHAIN_ID,
    Chain,
    ChainError,
    ChainLink,
    NodeSpec,
    OnFailure,
    build_chain,
    chain_status,
    root_task_id,
)
from atf_es.events.chains import TASK_ID_PREFIX as CHAIN_PREFIX
from atf_es.events.periodic import TASK_ID_PREFIX
from atf_es.events.policy import COLLECTION_NAME, DEFAULT_COLLECTION, LAMBDA_NAME
from atf_es.events.records import EVENT_DETAIL_FIELDS, EVENT_KINDS
from atf_es.events.replies import Reply, ReplyCode
from atf_es.history import Recorded, partition_of, read_task_events
from atf_es.services import auth
from atf_es.services.admin import AdminService
from atf_es.services.auth import OPEN, ServerSecurity
from atf_es.services.control import ControlView
from atf_es.services.frontend_metrics import counted
from atf_es.services.gateway import (
    CommandGateway,
    CommandRejectedError,
    GatewayError,
    KafkaUnavailableError,
    NoReplyError,
)
from atf_es.services.grpc_server import GrpcServer, abort
from atf_es.services.hsc import REPLY_CODE_KEY
from atf_es.services.partition import Limits, max_payload_bytes
from atf_es.services.quota import OverQuota, Quotas
from atf_es.subscription import Start, Subscription, SubscriptionError, subscribe

MAX_ID_LENGTH = 200
MAX_REASON_CHARS = 4_000
MAX_BATCH = 1000
MAX_TIME_MS = 253_402_300_800_000
"""Year 10000: a bound that keeps ``now + delay`` far from overflowing a long."""
WATCH_POLL_S = 0.2
"""How often a Watch stream checks that its client is still there."""
WATCH_MEMORY = 10_000
MAX_WATCHES = 16
"""Watch streams a Frontend serves at once: each holds one of its 32 gRPC threads."""
RETRY_AFTER_KEY = "atf-retry-after-ms"
"""Trailing metadata of a ``RESOURCE_EXHAUSTED``: milliseconds until a retry is admitted."""

_IDEMPOTENCY_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:atf-es:idempotency-key")


def idempotent_task_id(lambda_name: str, idempotency_key: str) -> str:
    """The task id a keyed schedule gets: the same key of the same lambda, the same task."""
    return uuid.uuid5(_IDEMPOTENCY_NAMESPACE, f"{lambda_name}\x00{idempotency_key}").hex


def task_to_proto(task: Task, *, include_payload: bool = False) -> common_pb2.TaskInfo:
    """The gRPC view of a task snapshot (the payload only when asked for)."""
    info = common_pb2.TaskInfo(
        task_id=task.task_id,
        lambda_name=task.lambda_name,
        collection=task.collection,
        priority=task.priority,
        status=common_pb2.TaskStatus.Value(f"TASK_STATUS_{task.status.name}"),
        attempts=task.attempts,
        lease=task.lease,
        seq=task.seq,
        created_at_ms=task.created_at,
        scheduled_at_ms=task.scheduled_at,
    )
    optional = {
        "next_trigger_at_ms": task.next_trigger_at,
        "enqueued_at_ms": task.enqueued_at,
        "claimed_at_ms": task.claimed_at,
        "started_at_ms": task.started_at,
        "heartbeat_at_ms": task.heartbeat_at,
        "finished_at_ms": task.finished_at,
        "worker": task.worker,
        "last_error": task.last_error,
        "result": task.result,
        "idempotency_key": task.idempotency_key,
        "scheduled_by": task.scheduled_by,
    }
    for name, value in optional.items():
        if value is not None:
            setattr(info, name, value)
    if include_payload:
        info.payload = task.payload
    if task.chain is not None:
        info.chain_id = task.chain.chain.chain_id
        info.chain_node = task.chain.node
        info.root_task_id = task.chain.root_id
        info.parent_task_ids.extend(task.chain.parent_ids)
    return info


def history_to_proto(recorded: Sequence[Recorded]) -> list[common_pb2.HistoryEntry]:
    """The gRPC view of a task's transitions, each with the time since the one before."""
    entries = []
    previous: int | None = None
    for item in recorded:
        entries.append(history_entry(item.event, item.task, previous))
        previous = item.event.at
    return entries


def history_entry(event: Event, task: Task, previous_at: int | None) -> common_pb2.HistoryEntry:
    """One transition for gRPC; ``previous_at``: when the task's transition before it was."""
    cause = common_pb2.Cause(
        kind=common_pb2.CauseKind.Value(f"CAUSE_KIND_{event.cause.kind.name}"),
        name=event.cause.name,
    )
    if event.cause.command_id is not None:
        cause.command_id = event.cause.command_id
    entry = common_pb2.HistoryEntry(
        seq=event.seq,
        kind=common_pb2.EventKind.Value(f"EVENT_KIND_{EVENT_KINDS[type(event)]}"),
        at_ms=event.at,
        cause=cause,
        status=common_pb2.TaskStatus.Value(f"TASK_STATUS_{task.status.name}"),
        since_previous_ms=0 if previous_at is None else event.at - previous_at,
    )
    required, nullable = EVENT_DETAIL_FIELDS[type(event)]
    for name in (*required, *nullable):
        value = getattr(event, name)
        if value is not None and name != "result":
            setattr(entry, _HISTORY_FIELDS.get(name, name), value)
    if isinstance(event, TaskScheduled) and task.chain is not None:
        entry.root_task_id = task.chain.root_id
        entry.parent_task_ids.extend(task.chain.parent_ids)
    return entry


_HISTORY_FIELDS = {"deadline": "deadline_ms", "retry_at": "retry_at_ms", "run_at": "run_at_ms"}
"""Event detail fields whose HistoryEntry name differs."""


class SpecError(Exception):
    """A ``TaskSpec`` the frontend refuses before sending anything."""

    def __init__(self, status: grpc.StatusCode, code: ReplyCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class _Planned:
    """A validated spec: the command to send and whether to wait for its reply."""

    command: ScheduleTask
    wait_reply: bool
    policy: LambdaPolicy


def _new_id() -> str:
    return uuid.uuid4().hex


def _invalid(message: str) -> SpecError:
    return SpecError(grpc.StatusCode.INVALID_ARGUMENT, ReplyCode.INVALID, message)


def _shown(value: str, limit: int = 120) -> str:
    """``value`` quoted for an error message, cut short so a huge input stays readable."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} chars)"


def _check_id(name: str, value: str) -> None:
    if not 1 <= len(value) <= MAX_ID_LENGTH or not value.isprintable():
        raise _invalid(
            f"{name} must be 1-{MAX_ID_LENGTH} printable characters, got {len(value)} characters"
        )


class FrontendService(frontend_pb2_grpc.FrontendServicer):  # type: ignore[misc]
    def __init__(
        self,
        gateway: CommandGateway,
        control: ControlView,
        *,
        max_wait: float = 10.0,
        quotas: Quotas | None = None,
    ) -> None:
        self.gateway = gateway
        self.control = control
        self.max_wait = max_wait
        self.quotas = quotas or Quotas()
        # A payload the lambda allows may still not fit in one Kafka record with
        # the rest of its command; refuse it here rather than poison it later.
        self.payload_limit = max_payload_bytes(Limits(max_record_bytes=gateway.max_record_bytes))
        # ControlView is a single consumer and a plain dict: one reader at a time.
        self.control_lock = threading.Lock()
        self._watches = 0
        """Watch streams open now (each holds a gRPC worker thread)."""

    # -- helpers ---------------------------------------------------------

    def _timeout(self, context: grpc.ServicerContext) -> float:
        """How long this call may wait: ``max_wait``, or less, to answer within the deadline."""
        remaining: float | None = context.time_remaining()
        if remaining is None:
            return self.max_wait
        # Leave a little of the caller's deadline for the answer to travel back,
        # so the caller hears "Kafka is unavailable" rather than a bare deadline.
        return max(0.0, min(self.max_wait, remaining - min(0.5, remaining * 0.1)))

    def _policy(self, lambda_name: str, timeout: float) -> LambdaPolicy:
        with self.control_lock:
            self.control.poll(0)
            policy = self.control.get(lambda_name)
            if policy is None:
                # Defined a moment ago? Read the control topic to its end once.
                try:
                    self.control.catch_up(timeout=max(0.1, timeout))
                except (KafkaException, TimeoutError) as exc:
                    raise SpecError(
                        grpc.StatusCode.UNAVAILABLE,
                        ReplyCode.UNKNOWN_LAMBDA,
                        f"cannot read the lambda definitions from Kafka to check lambda "
                        f"{lambda_name!r}: {exc}",
                    ) from exc
                policy = self.control.get(lambda_name)
        if policy is None:
            raise SpecError(
                grpc.StatusCode.NOT_FOUND,
                ReplyCode.UNKNOWN_LAMBDA,
                f"lambda {lambda_name!r} is not defined; define it before scheduling its tasks",
            )
        return policy

    def _plan(self, spec: frontend_pb2.TaskSpec, where: str, timeout: float, now: int) -> _Planned:
        """Validate ``spec`` (field names prefixed with ``where``) and build its command."""
        if not spec.lambda_name:
            raise _invalid(f"{where}lambda_name is required")
        if not LAMBDA_NAME.fullmatch(spec.lambda_name):
            raise _invalid(
                f"{where}lambda_name {_shown(spec.lambda_name)} must be 1-100 letters, digits, "
                "'_' or '-'"
            )
        collection = spec.collection or DEFAULT_COLLECTION
        if not COLLECTION_NAME.fullmatch(collection):
            raise _invalid(
                f"{where}collection {_shown(collection)} must be 1-100 letters, digits, '_', "
                "'.' or '-'"
            )
        when = spec.WhichOneof("when")
        if when == "run_at_ms":
            if not 0 <= spec.run_at_ms < MAX_TIME_MS:
                raise _invalid(
                    f"{where}run_at_ms must be an epoch-millisecond time from 0 to "
                    f"{MAX_TIME_MS - 1}, got {spec.run_at_ms}"
                )
            run_at = spec.run_at_ms
        elif when == "delay_ms":
            if not 0 <= spec.delay_ms < MAX_TIME_MS - now:
                raise _invalid(
                    f"{where}delay_ms must be a non-negative number of milliseconds before "
                    f"year 10000, got {spec.delay_ms}"
                )
            run_at = now + spec.delay_ms
        else:
            run_at = now
        key: str | None = None
        if spec.HasField("idempotency_key"):
            key = spec.idempotency_key
            _check_id(f"{where}idempotency_key", key)
        if spec.HasField("task_id"):
            _check_id(f"{where}task_id", spec.task_id)
            for prefix, owner in (
                (TASK_ID_PREFIX, "the occurrences of periodic schedules"),
                (CHAIN_PREFIX, "the tasks of chains (ScheduleChain)"),
            ):
                if spec.task_id.startswith(prefix):
                    raise _invalid(
                        f"{where}task_id {_shown(spec.task_id)}: ids starting {prefix!r} "
                        f"are {owner}"
                    )
            task_id = spec.task_id
        elif key is not None:
            task_id = idempotent_task_id(spec.lambda_name, key)
        else:
            task_id = _new_id()
        policy = self._policy(spec.lambda_name, timeout)
        if (problem := policy.check_priority(spec.priority)) is not None:
            raise _invalid(f"{where}priority: {problem}")
        limit = min(policy.max_payload_bytes, self.payload_limit)
        if len(spec.payload) > limit:
            why = (
                f"lambda {policy.name!r} accepts"
                if limit == policy.max_payload_bytes
                else "a Kafka record of this cluster holds"
            )
            raise _invalid(f"{where}payload is {len(spec.payload)} bytes; {why} at most {limit}")
        command = ScheduleTask(
            _new_id(),
            task_id,
            spec.lambda_name,
            collection,
            spec.priority,
            spec.payload,
            run_at,
            key,
            scheduled_by=auth.scheduler(),
        )
        return _Planned(command, key is not None or spec.HasField("task_id"), policy)

    def _send(self, command: Command, context: grpc.ServicerContext) -> Reply:
        try:
            outcome = self.gateway.send(command, timeout=self._timeout(context))
        except GatewayError as exc:
            _gateway_abort(context, exc)
        assert isinstance(outcome, Reply)
        return outcome

    def _schedule_all(
        self, planned: Sequence[_Planned], timeout: float
    ) -> list[tuple[bool, Reply | None] | GatewayError]:
        """Send every planned schedule; per spec, ``(created, reply)`` or the error.

        Fire-and-forget commands go first, all at once; waiting ones follow, each
        as a ``QueryTask`` + ``ScheduleTask`` pair (same key, so same partition,
        in order): the query tells whether the task existed before.
        """
        gateway = self.gateway
        deadline = time.monotonic() + timeout
        results: list[tuple[bool, Reply | None] | GatewayError | None] = [None] * len(planned)
        quick = [i for i, p in enumerate(planned) if not p.wait_reply]
        if quick:
            outcomes = gateway.send_many(
                [planned[i].command for i in quick], timeout=timeout, wait_reply=False
            )
            for i, outcome in zip(quick, outcomes, strict=True):
                results[i] = outcome if isinstance(outcome, GatewayError) else (True, None)
        slow = [i for i, p in enumerate(planned) if p.wait_reply]
        if slow:
            commands: list[Command] = []
            for i in slow:
                schedule = planned[i].command
                commands += [QueryTask(_new_id(), schedule.task_id), schedule]
            left = max(0.0, deadline - time.monotonic())
            outcomes = gateway.send_many(commands, timeout=left)
            for n, i in enumerate(slow):
                before, reply = outcomes[2 * n], outcomes[2 * n + 1]
                if isinstance(reply, GatewayError):
                    results[i] = reply
                    continue
                assert isinstance(reply, Reply)
                existed = isinstance(before, Reply) and before.code is not ReplyCode.NOT_FOUND
                results[i] = (reply.accepted and not existed, reply)
        return [r for r in results if r is not None]

    # -- RPCs ------------------------------------------------------------

    @counted("Schedule")
    def Schedule(
        self, request: frontend_pb2.ScheduleRequest, context: grpc.ServicerContext
    ) -> frontend_pb2.ScheduleResponse:
        timeout = self._timeout(context)
        try:
            planned = self._plan(request.spec, "spec.", timeout, now_ms())
        except SpecError as exc:
            _refuse(context, exc.status, exc.code, exc.message)
        if (over := self.quotas.take(planned.policy)) is not None:
            _over_quota(context, over)
        (outcome,) = self._schedule_all([planned], timeout)
        if isinstance(outcome, GatewayError):
            _gateway_abort(context, outcome)
        created, reply = outcome
        task_id = planned.command.task_id
        if reply is None:
            return frontend_pb2.ScheduleResponse(task_id=task_id, created=True)
        if not reply.accepted:
            _refuse(context, _status_of(reply.code), reply.code, reply.message)
        response = frontend_pb2.ScheduleResponse(task_id=task_id, created=created)
        if reply.task is not None:
            response.task.CopyFrom(task_to_proto(reply.task))
        return response

    @counted("ScheduleBatch")
    def ScheduleBatch(
        self, request: frontend_pb2.ScheduleBatchRequest, context: grpc.ServicerContext
    ) -> frontend_pb2.ScheduleBatchResponse:
        if len(request.specs) > MAX_BATCH:
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"specs holds {len(request.specs)} tasks; a batch takes at most {MAX_BATCH}",
            )
        timeout = self._timeout(context)
        now = now_ms()
        results: list[frontend_pb2.ScheduleResult] = []
        planned: list[_Planned] = []
        positions: list[int] = []
        refused: dict[str, int] = {}
        for index, spec in enumerate(request.specs):
            try:
                plan = self._plan(spec, f"specs[{index}].", timeout, now)
            except SpecError as exc:
                if exc.status is grpc.StatusCode.UNAVAILABLE:
                    abort(context, exc.status, exc.message)
                results.append(
                    frontend_pb2.ScheduleResult(
                        task_id=spec.task_id, code=_reply_code(exc.code), message=exc.message
                    )
                )
                continue
            if (over := self.quotas.take(plan.policy)) is not None:
                # The k-th refused task of a lambda needs k tokens to have come
                # back: its hint says when, so a client honouring the largest
                # hint resends the refused tail once, not once per token.
                refused[plan.policy.name] = queued = refused.get(plan.policy.name, 0) + 1
                retry_after_ms = over.retry_after_ms
                if retry_after_ms:
                    retry_after_ms += math.ceil((queued - 1) * 1000 / over.rate)
                results.append(
                    frontend_pb2.ScheduleResult(
                        task_id=plan.command.task_id,
                        code=common_pb2.REPLY_CODE_OVER_QUOTA,
                        message=over.message(),
                        retry_after_ms=retry_after_ms,
                    )
                )
                continue
            results.append(frontend_pb2.ScheduleResult(task_id=plan.command.task_id))
            planned.append(plan)
            positions.append(index)
        outcomes = self._schedule_all(planned, timeout)
        unavailable = [o for o in outcomes if isinstance(o, KafkaUnavailableError)]
        if outcomes and len(unavailable) == len(outcomes):
            abort(context, grpc.StatusCode.UNAVAILABLE, str(unavailable[0]))
        for index, outcome in zip(positions, outcomes, strict=True):
            result = results[index]
            if isinstance(outcome, GatewayError):
                result.code = (
                    common_pb2.REPLY_CODE_INVALID
                    if isinstance(outcome, CommandRejectedError)
                    else common_pb2.REPLY_CODE_UNSPECIFIED
                )
                result.message = str(outcome)
                continue
            created, reply = outcome
            if reply is None:
                result.created = True
                result.code = common_pb2.REPLY_CODE_OK
            else:
                result.created = created
                result.code = _reply_code(reply.code)
                result.message = reply.message
        return frontend_pb2.ScheduleBatchResponse(results=results)

    def GetTask(
        self, request: frontend_pb2.GetTaskRequest, context: grpc.ServicerContext
    ) -> frontend_pb2.GetTaskResponse:
        _require_task_id(context, request.task_id)
        if request.HasField("as_of_ms"):
            return self._task_as_of(request, context)
        reply = self._send(QueryTask(_new_id(), request.task_id), context)
        if not reply.accepted or reply.task is None:
            _refuse(context, _status_of(reply.code), reply.code, reply.message)
        auth.require_lambda(context, reply.task.lambda_name, "read")
        info = task_to_proto(reply.task, include_payload=request.include_payload)
        if reply.task.status in _GATEABLE:
            with self.control_lock:
                self.control.poll(0)
                gate = self.control.gate(reply.task.lambda_name, reply.task.collection)
            if gate is not None:
                info.held_by = gate.name
                info.held_action = gate.action.value
        return frontend_pb2.GetTaskResponse(task=info)

    def _task_as_of(
        self, request: frontend_pb2.GetTaskRequest, context: grpc.ServicerContext
    ) -> frontend_pb2.GetTaskResponse:
        recorded = self._read_history(request.task_id, context, until=request.as_of_ms)
        if not recorded:
            _refuse(
                context,
                grpc.StatusCode.NOT_FOUND,
                ReplyCode.NOT_FOUND,
                f"task {request.task_id!r} did not exist at {request.as_of_ms} (epoch ms), "
                "or its events are past the audit window",
            )
        task = recorded[-1].task
        auth.require_lambda(context, task.lambda_name, "read")
        return frontend_pb2.GetTaskResponse(
            task=task_to_proto(task, include_payload=request.include_payload)
        )

    def _read_history(
        self, task_id: str, context: grpc.ServicerContext, *, until: int | None = None
    ) -> list[Recorded]:
        try:
            return read_task_events(
                self.control.settings,
                self.control.bootstrap,
                task_id,
                until=until,
                timeout=max(1.0, self._timeout(context)),
            )
        except (KafkaException, TimeoutError) as exc:
            abort(context, grpc.StatusCode.UNAVAILABLE, f"cannot read the task's history: {exc}")

    def Cancel(
        self, request: frontend_pb2.CancelRequest, context: grpc.ServicerContext
    ) -> frontend_pb2.CancelResponse:
        _require_task_id(context, request.task_id)
        if len(request.reason) > MAX_REASON_CHARS:
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"reason must be at most {MAX_REASON_CHARS} characters, got {len(request.reason)}",
            )
        if len(request.requested_by) > MAX_ID_LENGTH:
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"requested_by must be at most {MAX_ID_LENGTH} characters, "
                f"got {len(request.requested_by)}",
            )
        requested_by = auth.acting_as(request.requested_by or "frontend")
        principal = auth.current_principal()
        if principal is not None and not principal.admin:
            found = self._send(QueryTask(_new_id(), request.task_id), context)
            if found.task is not None:
                auth.require_owner(context, found.task.scheduled_by, found.task.lambda_name)
        reply = self._send(
            CancelTask(_new_id(), request.task_id, requested_by, request.reason), context
        )
        if not reply.accepted or reply.task is None:
            status = (
                grpc.StatusCode.FAILED_PRECONDITION
                if reply.code is ReplyCode.UNKNOWN_LAMBDA
                else _status_of(reply.code)
            )
            _refuse(context, status, reply.code, reply.message)
        return frontend_pb2.CancelResponse(task=task_to_proto(reply.task))

    def History(
        self, request: frontend_pb2.HistoryRequest, context: grpc.ServicerContext
    ) -> frontend_pb2.HistoryResponse:
        _require_task_id(context, request.task_id)
        recorded = self._read_history(request.task_id, context)
        if not recorded:
            _refuse(
                context,
                grpc.StatusCode.NOT_FOUND,
                ReplyCode.NOT_FOUND,
                f"no history for task {request.task_id!r}: never scheduled, or its "
                "events are past the audit window",
            )
        auth.require_lambda(context, recorded[-1].task.lambda_name, "read")
        return frontend_pb2.HistoryResponse(entries=history_to_proto(recorded))

    @counted("ScheduleChain")
    def ScheduleChain(
        self, request: frontend_pb2.ScheduleChainRequest, context: grpc.ServicerContext
    ) -> frontend_pb2.ScheduleChainResponse:
        timeout = self._timeout(context)
        now = now_ms()
        try:
            chain, run_at, policy = self._plan_chain(request, timeout, now)
        except SpecError as exc:
            _refuse(context, exc.status, exc.code, exc.message)
        if (over := self.quotas.take(policy)) is not None:
            _over_quota(context, over)
        root = chain.root
        command = ScheduleTask(
            _new_id(),
            root.task_id,
            root.lambda_name,
            root.collection,
            root.priority,
            root.payload,
            run_at,
            None,
            ChainLink(chain, root.name),
            scheduled_by=auth.scheduler(),
        )
        (outcome,) = self._schedule_all([_Planned(command, True, policy)], timeout)
        if isinstance(outcome, GatewayError):
            _gateway_abort(context, outcome)
        created, reply = outcome
        if reply is not None and not reply.accepted:
            message = reply.message
            if reply.code is ReplyCode.ALREADY_EXISTS:
                message = f"chain {chain.chain_id!r} already exists with other nodes"
            _refuse(context, _status_of(reply.code), reply.code, message)
        return frontend_pb2.ScheduleChainResponse(
            chain_id=chain.chain_id,
            created=created,
            nodes=[frontend_pb2.ChainNodeRef(name=n.name, task_id=n.task_id) for n in chain.nodes],
        )

    def _plan_chain(
        self, request: frontend_pb2.ScheduleChainRequest, timeout: float, now: int
    ) -> tuple[Chain, int, LambdaPolicy]:
        """The checked chain, when its nodes without parents may run, and the
        root's lambda (whose quota the call takes)."""
        chain_id = request.chain_id if request.HasField("chain_id") else _new_id()
        on_failure = (
            OnFailure.CONTINUE
            if request.on_failure == frontend_pb2.CHAIN_FAILURE_POLICY_CONTINUE
            else OnFailure.STOP
        )
        specs = [
            NodeSpec(
                n.name,
                n.lambda_name,
                n.collection or DEFAULT_COLLECTION,
                n.priority,
                n.payload,
                n.delay_ms,
                tuple(n.parents),
            )
            for n in request.nodes
        ]
        try:
            chain = build_chain(chain_id, specs, on_failure, self.control.settings.partitions)
        except ChainError as exc:
            raise _invalid(str(exc)) from exc
        when = request.WhichOneof("when")
        if when == "run_at_ms":
            if not 0 <= request.run_at_ms < MAX_TIME_MS:
                raise _invalid(
                    f"run_at_ms must be an epoch-millisecond time, got {request.run_at_ms}"
                )
            start = request.run_at_ms
        elif when == "delay_ms":
            if not 0 <= request.delay_ms < MAX_TIME_MS - now:
                raise _invalid(f"delay_ms must not be negative, got {request.delay_ms}")
            start = now + request.delay_ms
        else:
            start = now
        policies: dict[str, LambdaPolicy] = {}
        for index, node in enumerate(chain.nodes):
            policy = policies.get(node.lambda_name) or self._policy(node.lambda_name, timeout)
            policies[node.lambda_name] = policy
            where = f"node {node.name!r}"
            if (problem := policy.check_priority(node.priority)) is not None:
                raise _invalid(f"{where}: priority: {problem}")
            limit = min(policy.max_payload_bytes, self.payload_limit)
            if len(node.payload) > limit:
                raise _invalid(f"{where}: payload is {len(node.payload)} bytes; at most {limit}")
            if index == 0 and start + node.delay_ms >= MAX_TIME_MS:
                raise _invalid(f"{where}: its delay puts it after year 10000")
        return chain, start + chain.root.delay_ms, policies[chain.root.lambda_name]

    def GetChain(
        self, request: frontend_pb2.GetChainRequest, context: grpc.ServicerContext
    ) -> frontend_pb2.GetChainResponse:
        if not CHAIN_ID.fullmatch(request.chain_id):
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"chain_id {_shown(request.chain_id)} must be 1-100 letters, digits, '_', "
                "'.' or '-'",
            )
        root_id = root_task_id(request.chain_id)
        reply = self._send(QueryTask(_new_id(), root_id), context)
        if not reply.accepted or reply.task is None or reply.task.chain is None:
            _refuse(
                context,
                grpc.StatusCode.NOT_FOUND,
                ReplyCode.NOT_FOUND,
                f"no chain {request.chain_id!r}: never scheduled, or its root task "
                f"{root_id!r} is past its retention",
            )
        chain = reply.task.chain.chain
        for node in chain.nodes:
            auth.require_lambda(context, node.lambda_name, "read")
        tasks: dict[str, Task | None] = {root_id: reply.task}
        others = chain.nodes[1:]
        try:
            outcomes = self.gateway.send_many(
                [QueryTask(_new_id(), n.task_id) for n in others], timeout=self._timeout(context)
            )
        except GatewayError as exc:
            _gateway_abort(context, exc)
        for node, outcome in zip(others, outcomes, strict=True):
            if isinstance(outcome, GatewayError):
                _gateway_abort(context, outcome)
            assert isinstance(outcome, Reply)
            tasks[node.task_id] = outcome.task if outcome.accepted else None
        status = chain_status(chain, tasks)
        response = frontend_pb2.GetChainResponse(
            chain_id=chain.chain_id,
            state=frontend_pb2.ChainState.Value(f"CHAIN_STATE_{status.state.name}"),
            on_failure=frontend_pb2.ChainFailurePolicy.Value(
                f"CHAIN_FAILURE_POLICY_{status.on_failure.name}"
            ),
            summary=status.summary,
        )
        for each in status.nodes:
            entry = response.nodes.add(
                name=each.name, task_id=each.task_id, state=each.state, parents=each.parents
            )
            if each.task is not None:
                entry.task.CopyFrom(task_to_proto(each.task))
            if each.blocked_by is not None:
                entry.blocked_by = each.blocked_by
        return response

    def Watch(
        self, request: frontend_pb2.WatchRequest, context: grpc.ServicerContext
    ) -> Iterator[frontend_pb2.WatchResponse]:
        subscription = self._watch_subscription(request, context)
        previous: dict[str, int] = {}
        """When each task's last transition streamed was (bounded: cleared when full)."""
        try:
            while context.is_active():
                for status in subscription.poll(WATCH_POLL_S):
                    event = status.event
                    if len(previous) >= WATCH_MEMORY:
                        previous.clear()
                    entry = history_entry(event, status.task, previous.get(event.task_id))
                    previous[event.task_id] = event.at
                    yield frontend_pb2.WatchResponse(entry=entry, task=task_to_proto(status.task))
                    if request.task_id and status.task.status.terminal:
                        return
        finally:
            subscription.close()
            with self.control_lock:
                self._watches -= 1

    def _watch_subscription(
        self, request: frontend_pb2.WatchRequest, context: grpc.ServicerContext
    ) -> Subscription:
        if len(request.task_id) > MAX_ID_LENGTH:
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"task_id must be at most {MAX_ID_LENGTH} characters, got {len(request.task_id)}",
            )
        principal = auth.current_principal()
        if principal is not None and not principal.admin and principal.lambdas is not None:
            if not request.lambdas:
                abort(
                    context,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{principal.name!r} may watch only its lambdas "
                    f"({principal.granted()}): name them in the lambdas filter",
                )
            for lambda_name in request.lambdas:
                auth.require_lambda(context, lambda_name, "watch")
        if request.from_start and request.HasField("from_ms"):
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "give from_start or from_ms, not both")
        start: Start = "latest"
        if request.from_start:
            start = "earliest"
        elif request.HasField("from_ms"):
            start = request.from_ms
        statuses = [
            common_pb2.TaskStatus.Name(s).removeprefix("TASK_STATUS_").lower()
            for s in request.statuses
        ]
        if "unspecified" in statuses:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "statuses: TASK_STATUS_UNSPECIFIED")
        settings = self.control.settings
        with self.control_lock:
            if self._watches >= MAX_WATCHES:
                abort(
                    context,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"this Frontend serves at most {MAX_WATCHES} Watch streams at once; "
                    "retry later, or follow the task-events topic (docs/consumers.md)",
                )
            self._watches += 1
        try:
            return subscribe(
                None,
                task_ids=[request.task_id] if request.task_id else None,
                partitions=(
                    [partition_of(request.task_id, settings.partitions)]
                    if request.task_id
                    else None
                ),
                lambdas=list(request.lambdas) or None,
                collections=list(request.collections) or None,
                statuses=statuses or None,
                from_=start,
                settings=settings,
                bootstrap=self.control.bootstrap,
            )
        except BaseException as exc:
            with self.control_lock:
                self._watches -= 1
            if isinstance(exc, ValueError):
                abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            if isinstance(exc, (SubscriptionError, KafkaException)):
                abort(context, grpc.StatusCode.UNAVAILABLE, f"cannot follow task events: {exc}")
            raise


_GATEABLE = frozenset({TaskStatus.NEW, TaskStatus.ENQUEUED, TaskStatus.RETRIABLE_FAILURE})
"""Statuses a gate holds a task in (running tasks finish normally)."""

_STATUS = {
    ReplyCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ReplyCode.UNKNOWN_LAMBDA: grpc.StatusCode.NOT_FOUND,
    ReplyCode.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ReplyCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ReplyCode.WRONG_STATE: grpc.StatusCode.FAILED_PRECONDITION,
    ReplyCode.STALE_LEASE: grpc.StatusCode.FAILED_PRECONDITION,
    ReplyCode.CANCELLED: grpc.StatusCode.FAILED_PRECONDITION,
}


def _status_of(code: ReplyCode) -> grpc.StatusCode:
    return _STATUS.get(code, grpc.StatusCode.UNKNOWN)


def _reply_code(code: ReplyCode) -> common_pb2.ReplyCode:
    value: common_pb2.ReplyCode = common_pb2.ReplyCode.Value(f"REPLY_CODE_{code.name}")
    return value


def _refuse(
    context: grpc.ServicerContext, status: grpc.StatusCode, code: ReplyCode, message: str
) -> NoReturn:
    # The precise reply code rides along, as with the HSC, so a client can tell
    # "no such task" from "no such lambda" (both NOT_FOUND).
    context.set_trailing_metadata(((REPLY_CODE_KEY, code.name),))
    abort(context, status, message)


def _over_quota(context: grpc.ServicerContext, over: OverQuota) -> NoReturn:
    context.set_trailing_metadata(((RETRY_AFTER_KEY, str(over.retry_after_ms)),))
    abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, over.message())


def _gateway_abort(context: grpc.ServicerContext, error: GatewayError) -> NoReturn:
    if isinstance(error, CommandRejectedError):
        abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))
    if isinstance(error, NoReplyError):
        abort(
            context,
            grpc.StatusCode.UNAVAILABLE,
            f"no processor answered in time: {error}",
        )
    if isinstance(error, KafkaUnavailableError):
        abort(context, grpc.StatusCode.UNAVAILABLE, f"Kafka is unavailable: {error}")
    abort(context, grpc.StatusCode.UNAVAILABLE, str(error))


def _require_task_id(context: grpc.ServicerContext, task_id: str) -> None:
    if not task_id:
        abort(context, grpc.StatusCode.INVALID_ARGUMENT, "task_id is required")
    if len(task_id) > MAX_ID_LENGTH:
        abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"task_id must be at most {MAX_ID_LENGTH} characters, got {len(task_id)}",
        )


def frontend_server(
    gateway: CommandGateway,
    control: ControlView,
    address: str,
    *,
    security: ServerSecurity = OPEN,
) -> GrpcServer:
    """The Frontend and ``atf.v1.Admin`` on ``address`` (``host:0`` picks a port),
    with health and reflection; ``security``: TLS and access control."""
    service = FrontendService(gateway, control)
    admin = AdminService(control, service.control_lock, gateway=gateway)
    return GrpcServer(
        "frontend",
        address,
        [
            lambda server: frontend_pb2_grpc.add_FrontendServicer_to_server(service, server),
            lambda server: admin_pb2_grpc.add_AdminServicer_to_server(admin, server),
        ],
        [
            frontend_pb2.DESCRIPTOR.services_by_name["Frontend"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
        ],
        on_stop=[admin.close],
        security=security,
    )


__all__ = [
    "MAX_WATCHES",
    "RETRY_AFTER_KEY",
    "FrontendService",
    "frontend_server",
    "idempotent_task_id",
    "task_to_proto",
]
