"""``atf.v1.Admin``: the operator's API, served next to the Frontend.

Gates (:mod:`atf_es.events.gates`) are written to the compacted control
topic and read back before ``SetGate`` answers, so a ``ListGates`` that
follows sees the gate, and every processor applies it at its next poll.
``resume`` writes an ``open`` gate rather than a tombstone, so the control
topic keeps who opened it and why; ``ListGates`` shows closed gates only.

Dead letters (``ListDeadLetters``, ``DeadLetterCounts``, ``Redrive``) are
answered from a :class:`~atf_es.services.deadletters.DeadLetterView`, created
at the first such call and read to the end of the task-events topic before
each answer, so a listing shows every task dead-lettered before the call and
none redriven before it. ``Redrive`` sends one ``RedriveTask`` per task
through a ``CommandGateway`` (the Frontend's, or one of its own) and answers
each task with the processor's reply: a task that is no longer dead-lettered
gets ``REPLY_CODE_WRONG_STATE``, the others go back to ``new`` with a fresh
set of attempts. The service owns the view (and a gateway it created):
``close()`` releases them. See docs/dead-letters.md.

Periodic schedules (``SetPeriodic``, ``ListPeriodic``, ``PausePeriodic``,
``RemovePeriodic``) are control-topic entries too, written and read back
like gates; the processor owning each one's partition fires it. See
docs/periodic.md.

``Overview`` (task counts per lambda, collection and status, queue depth and
delivery latency over the last hour) is answered from an
:class:`~atf_es.services.overview.OverviewView`, created at the first call
(which starts its sampling thread) and read to the end of the task-events
topic before each answer. See docs/dashboard.md.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import replace
from typing import Any, NoReturn

import grpc
from confluent_kafka import KafkaException

from atf_es._proto.atf.v1 import admin_pb2, admin_pb2_grpc, common_pb2
from atf_es.clock import now_ms
from atf_es.events import Command, Gate, GateAction, GateError, RedriveTask, Task
from atf_es.events.periodic import SCHEDULE_NAME, Misfire, PeriodicError, PeriodicSchedule
from atf_es.events.policy import COLLECTION_NAME, LAMBDA_NAME
from atf_es.events.replies import Reply
from atf_es.services.auth import acting_as
from atf_es.services.control import ControlView, publish_gate, publish_periodic
from atf_es.services.deadletters import (
    Cursor,
    DeadLetterQuery,
    DeadLetterView,
    PageTokenError,
)
from atf_es.services.gateway import (
    CommandGateway,
    CommandRejectedError,
    GatewayError,
)
from atf_es.services.grpc_server import abort
from atf_es.services.hsc import REPLY_CODE_KEY
from atf_es.services.overview import LambdaOverview, OverviewView

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 2_000
MAX_SET_BY_CHARS = 200
MAX_ID_CHARS = 200
MAX_REDRIVE = 1_000
"""Most tasks one ``Redrive`` call takes (ids) or redrives (a filter's page)."""
MAX_PAGE_SIZE = 1_000
DEFAULT_PAGE_SIZE = 100
MAX_ERROR_FILTER_CHARS = 1_000
MAX_TIME_MS = 253_402_300_800_000
"""Year 10000, as the Frontend bounds times."""
DEFAULT_REQUESTED_BY = "admin"

_ACTIONS = {
    admin_pb2.GATE_ACTION_PAUSE: GateAction.PAUSE,
    admin_pb2.GATE_ACTION_DROP: GateAction.DROP,
    admin_pb2.GATE_ACTION_RESUME: GateAction.OPEN,
}
_PROTO_ACTIONS = {action: proto for proto, action in _ACTIONS.items()}
_MISFIRES = {
    admin_pb2.MISFIRE_UNSPECIFIED: Misfire.CATCH_UP,
    admin_pb2.MISFIRE_SKIP: Misfire.SKIP,
    admin_pb2.MISFIRE_CATCH_UP: Misfire.CATCH_UP,
}
_PROTO_MISFIRES = {
    Misfire.SKIP: admin_pb2.MISFIRE_SKIP,
    Misfire.CATCH_UP: admin_pb2.MISFIRE_CATCH_UP,
}
MAX_CRON_CHARS = 200


def periodic_to_proto(schedule: PeriodicSchedule, now: int) -> admin_pb2.PeriodicSchedule:
    message = admin_pb2.PeriodicSchedule(
        name=schedule.name,
        lambda_name=schedule.lambda_name,
        collection=schedule.collection,
        priority=schedule.priority,
        payload=schedule.payload,
        time_zone=schedule.timezone,
        misfire=_PROTO_MISFIRES[schedule.misfire],
        catch_up_max=schedule.catch_up_max,
        misfire_grace_ms=schedule.misfire_grace_ms,
        paused=schedule.paused,
        set_by=schedule.set_by,
        defined_at_ms=schedule.defined_at,
        next_fire_ms=schedule.next_fire(now) or 0,
    )
    if schedule.cron is not None:
        message.cron = schedule.cron
    if schedule.every_ms is not None:
        message.every_ms = schedule.every_ms
    if schedule.start_ms is not None:
        message.start_ms = schedule.start_ms
    if schedule.end_ms is not None:
        message.end_ms = schedule.end_ms
    return message


def gate_to_proto(gate: Gate) -> admin_pb2.Gate:
    message = admin_pb2.Gate(
        lambda_name=gate.lambda_name,
        action=_PROTO_ACTIONS[gate.action],
        reason=gate.reason,
        set_by=gate.set_by,
        set_at_ms=gate.set_at,
    )
    if gate.collection is not None:
        message.collection = gate.collection
    return message


class AdminService(admin_pb2_grpc.AdminServicer):  # type: ignore[misc]
    def __init__(
        self,
        control: ControlView,
        control_lock: threading.Lock,
        *,
        gateway: CommandGateway | None = None,
        max_wait: float = 10.0,
    ) -> None:
        """``gateway`` sends the redrives; without one, the service makes its own
        (at the first ``Redrive``) and ``close()`` closes it."""
        self.control = control
        self._control_lock = control_lock
        """The lock every reader of ``control`` holds: it is one Kafka consumer."""
        self.max_wait = max_wait
        self._gateway = gateway
        self._own_gateway: CommandGateway | None = None
        self._dead_letters: DeadLetterView | None = None
        self._overview: OverviewView | None = None
        self._lazy_lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Close the dead-letter and overview views and the gateway this service made.
        Safe to call twice."""
        with self._lazy_lock:
            self._closed = True
            view, self._dead_letters = self._dead_letters, None
            overview, self._overview = self._overview, None
            gateway, self._own_gateway = self._own_gateway, None
        if view is not None:
            view.close()
        if overview is not None:
            overview.close()
        if gateway is not None:
            gateway.close()

    def SetGate(
        self, request: admin_pb2.SetGateRequest, context: grpc.ServicerContext
    ) -> admin_pb2.SetGateResponse:
        gate = self._gate_from(request.gate, context)
        with self._control_lock:
            self.control.poll(0)
            if self.control.get(gate.lambda_name) is None:
                self._catch_up(context)
            if self.control.get(gate.lambda_name) is None:
                abort(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    f"lambda {gate.lambda_name!r} is not defined; a gate can only hold "
                    "a defined lambda",
                )
        try:
            publish_gate(self.control.settings, self.control.bootstrap, gate)
        except (RuntimeError, KafkaException) as exc:
            abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        with self._control_lock:
            self._catch_up(context)
        log.info(
            "gate %s set to %s by %r: %s", gate.name, gate.action, gate.set_by, gate.reason or "-"
        )
        return admin_pb2.SetGateResponse(gate=gate_to_proto(gate))

    def ListGates(
        self, request: admin_pb2.ListGatesRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListGatesResponse:
        with self._control_lock:
            self._catch_up(context)
            gates = [
                gate
                for gate in self.control.gates.values()
                if gate.closed
                and (not request.HasField("lambda_name") or gate.lambda_name == request.lambda_name)
            ]
        gates.sort(key=lambda gate: gate.name)
        return admin_pb2.ListGatesResponse(gates=[gate_to_proto(gate) for gate in gates])

    def ListDeadLetters(
        self, request: admin_pb2.ListDeadLettersRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListDeadLettersResponse:
        query = _query(context, "", request, request.lambda_name or None)
        size = _page_size(context, "page_size", request.page_size, DEFAULT_PAGE_SIZE)
        cursor = _cursor(context, request.page_token, query)
        view = self._view(context)
        self._require_lambda(context, view, query.lambda_name)
        page = view.page(query, size, cursor)
        return admin_pb2.ListDeadLettersResponse(
            tasks=[_task_info(task) for task in page.tasks],
            next_page_token="" if page.next is None else page.next.encode(query),
            total_size=page.total,
        )

    def DeadLetterCounts(
        self, request: admin_pb2.DeadLetterCountsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.DeadLetterCountsResponse:
        lambda_name = request.lambda_name if request.HasField("lambda_name") else None
        if lambda_name is not None:
            _check_lambda(context, "lambda_name", lambda_name)
        view = self._view(context)
        self._require_lambda(context, view, lambda_name)
        counts = view.counts(lambda_name)
        return admin_pb2.DeadLetterCountsResponse(
            lambdas=[
                admin_pb2.DeadLetterCount(
                    lambda_name=count.lambda_name,
                    count=count.count,
                    by_collection=count.by_collection,
                    oldest_at_ms=count.oldest_at,
                    newest_at_ms=count.newest_at,
                )
                for count in counts
            ],
            total=sum(count.count for count in counts),
        )

    def Redrive(
        self, request: admin_pb2.RedriveRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RedriveResponse:
        reason = request.reason.strip()
        if not reason:
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "reason is required: say why the tasks are redriven (it is kept in each "
                "task's history)",
            )
        if len(request.reason) > MAX_REASON_CHARS:
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"reason must be at most {MAX_REASON_CHARS} characters, got {len(request.reason)}",
            )
        if len(request.requested_by) > MAX_SET_BY_CHARS:
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"requested_by must be at most {MAX_SET_BY_CHARS} characters, "
                f"got {len(request.requested_by)}",
            )
        requested_by = acting_as(request.requested_by.strip() or DEFAULT_REQUESTED_BY)
        by_filter = request.HasField("filter")
        if by_filter == bool(request.task_ids):
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "give task_ids or a filter, not both"
                if by_filter
                else "nothing to redrive: give task_ids or a filter (a filter with only "
                "lambda_name redrives every dead letter of the lambda)",
            )
        if not by_filter and (request.page_size or request.page_token):
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "page_size and page_token go with a filter, not with task_ids",
            )
        response = admin_pb2.RedriveResponse()
        if by_filter:
            task_ids = self._redrive_page(request, context, response)
        else:
            task_ids = _task_ids(context, request.task_ids)
        if not task_ids:
            return response
        commands: list[Command] = [
            RedriveTask(uuid.uuid4().hex, task_id, requested_by, reason) for task_id in task_ids
        ]
        outcomes = self._gateway_for().send_many(commands, timeout=self._timeout(context))
        failures = [o for o in outcomes if isinstance(o, GatewayError)]
        if len(failures) == len(outcomes) and not isinstance(failures[0], CommandRejectedError):
            abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"no task was redriven: {failures[0]}",
            )
        accepted = 0
        for task_id, outcome in zip(task_ids, outcomes, strict=True):
            reply = common_pb2.CommandReply(task_id=task_id)
            if isinstance(outcome, Reply):
                reply.code = common_pb2.ReplyCode.Value(f"REPLY_CODE_{outcome.code.name}")
                reply.message = outcome.message
                accepted += outcome.accepted
            elif isinstance(outcome, CommandRejectedError):
                reply.code = common_pb2.REPLY_CODE_INVALID
                reply.message = str(outcome)
            else:
                reply.code = common_pb2.REPLY_CODE_UNSPECIFIED
                reply.message = str(outcome)
            response.replies.append(reply)
        log.info(
            "redrive by %r: %d of %d tasks redriven (%s)",
            requested_by,
            accepted,
            len(task_ids),
            reason,
        )
        return response

    def _redrive_page(
        self,
        request: admin_pb2.RedriveRequest,
        context: grpc.ServicerContext,
        response: admin_pb2.RedriveResponse,
    ) -> list[str]:
        """The filter's next page of dead letters; sets the response's token and count."""
        found = request.filter
        if not found.lambda_name:
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "filter.lambda_name is required: a filtered redrive covers one lambda",
            )
        query = _query(context, "filter.", found, found.lambda_name)
        size = _page_size(context, "page_size", request.page_size, MAX_REDRIVE)
        cursor = _cursor(context, request.page_token, query)
        view = self._view(context)
        self._require_lambda(context, view, query.lambda_name)
        page = view.page(query, size, cursor)
        response.next_page_token = "" if page.next is None else page.next.encode(query)
        response.remaining = page.remaining
        return [task.task_id for task in page.tasks]

    # -- periodic schedules ----------------------------------------------

    def SetPeriodic(
        self, request: admin_pb2.SetPeriodicRequest, context: grpc.ServicerContext
    ) -> admin_pb2.SetPeriodicResponse:
        schedule = self._periodic_from(request.schedule, context)
        with self._control_lock:
            self.control.poll(0)
            if self.control.get(schedule.lambda_name) is None:
                self._catch_up(context)
            policy = self.control.get(schedule.lambda_name)
        if policy is None:
            context.set_trailing_metadata(((REPLY_CODE_KEY, "UNKNOWN_LAMBDA"),))
            abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"lambda {schedule.lambda_name!r} is not defined; a schedule can only "
                "schedule a defined lambda",
            )
        if (problem := policy.check_priority(schedule.priority)) is not None:
            _invalid(context, f"schedule.priority: {problem}")
        if len(schedule.payload) > policy.max_payload_bytes:
            _invalid(
                context,
                f"schedule.payload is {len(schedule.payload)} bytes; lambda "
                f"{policy.name!r} takes at most {policy.max_payload_bytes}",
            )
        self._publish_periodic(context, schedule.name, schedule)
        log.info(
            "periodic schedule %s set by %r: %s", schedule.name, schedule.set_by, schedule.when
        )
        return admin_pb2.SetPeriodicResponse(schedule=periodic_to_proto(schedule, now_ms()))

    def ListPeriodic(
        self, request: admin_pb2.ListPeriodicRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListPeriodicResponse:
        if request.HasField("lambda_name"):
            _check_lambda(context, "lambda_name", request.lambda_name)
        with self._control_lock:
            self._catch_up(context)
            schedules = [
                schedule
                for schedule in self.control.schedules.values()
                if not request.HasField("lambda_name")
                or schedule.lambda_name == request.lambda_name
            ]
        schedules.sort(key=lambda schedule: schedule.name)
        now = now_ms()
        return admin_pb2.ListPeriodicResponse(
            schedules=[periodic_to_proto(schedule, now) for schedule in schedules]
        )

    def PausePeriodic(
        self, request: admin_pb2.PausePeriodicRequest, context: grpc.ServicerContext
    ) -> admin_pb2.PausePeriodicResponse:
        found = self._existing_periodic(request.name, context)
        if len(request.set_by) > MAX_SET_BY_CHARS:
            _invalid(context, f"set_by must be at most {MAX_SET_BY_CHARS} characters")
        schedule = replace(
            found,
            paused=request.paused,
            set_by=acting_as(request.set_by or DEFAULT_REQUESTED_BY),
            defined_at=now_ms(),
        )
        self._publish_periodic(context, schedule.name, schedule)
        log.info(
            "periodic schedule %s %s by %r",
            schedule.name,
            "paused" if schedule.paused else "resumed",
            schedule.set_by,
        )
        return admin_pb2.PausePeriodicResponse(schedule=periodic_to_proto(schedule, now_ms()))

    def RemovePeriodic(
        self, request: admin_pb2.RemovePeriodicRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RemovePeriodicResponse:
        _check_schedule_name(context, request.name)
        with self._control_lock:
            self._catch_up(context)
            known = request.name in self.control.schedules
        if known:
            self._publish_periodic(context, request.name, None)
            log.info("periodic schedule %s removed", request.name)
        return admin_pb2.RemovePeriodicResponse(removed=known)

    def _existing_periodic(self, name: str, context: grpc.ServicerContext) -> PeriodicSchedule:
        _check_schedule_name(context, name)
        with self._control_lock:
            self._catch_up(context)
            found = self.control.schedules.get(name)
        if found is None:
            abort(context, grpc.StatusCode.NOT_FOUND, f"there is no periodic schedule {name!r}")
        return found

    def _publish_periodic(
        self, context: grpc.ServicerContext, name: str, schedule: PeriodicSchedule | None
    ) -> None:
        try:
            publish_periodic(self.control.settings, self.control.bootstrap, name, schedule)
        except (RuntimeError, KafkaException) as exc:
            abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        with self._control_lock:
            self._catch_up(context)

    def _periodic_from(
        self, message: admin_pb2.PeriodicSchedule, context: grpc.ServicerContext
    ) -> PeriodicSchedule:
        misfire = _MISFIRES.get(message.misfire)
        if misfire is None:
            _invalid(context, "schedule.misfire must be MISFIRE_SKIP or MISFIRE_CATCH_UP")
        if len(message.set_by) > MAX_SET_BY_CHARS:
            _invalid(context, f"schedule.set_by must be at most {MAX_SET_BY_CHARS} characters")
        if len(message.cron) > MAX_CRON_CHARS:
            _invalid(context, f"schedule.cron must be at most {MAX_CRON_CHARS} characters")
        for name in ("start_ms", "end_ms"):
            if message.HasField(name) and not 0 <= getattr(message, name) < MAX_TIME_MS:
                _invalid(context, f"schedule.{name} must be a time between 1970 and 9999")
        when = message.WhichOneof("when")
        try:
            return PeriodicSchedule(
                name=message.name,
                lambda_name=message.lambda_name,
                collection=message.collection or "default",
                priority=message.priority,
                payload=message.payload,
                cron=message.cron if when == "cron" else None,
                every_ms=message.every_ms if when == "every_ms" else None,
                timezone=message.time_zone or "UTC",
                start_ms=message.start_ms if message.HasField("start_ms") else None,
                end_ms=message.end_ms if message.HasField("end_ms") else None,
                misfire=misfire,
                catch_up_max=message.catch_up_max or 1,
                misfire_grace_ms=(
                    message.misfire_grace_ms if message.HasField("misfire_grace_ms") else 5_000
                ),
                paused=False,
                set_by=acting_as(message.set_by or DEFAULT_REQUESTED_BY),
                defined_at=now_ms(),
            )
        except PeriodicError as exc:
            _invalid(context, f"schedule: {exc}")

    # -- the overview ----------------------------------------------------

    def Overview(
        self, request: admin_pb2.OverviewRequest, context: grpc.ServicerContext
    ) -> admin_pb2.OverviewResponse:
        only = request.lambda_name if request.HasField("lambda_name") else None
        if only is not None:
            _check_lambda(context, "lambda_name", only)
        with self._lazy_lock:
            if self._closed:
                abort(context, grpc.StatusCode.UNAVAILABLE, "the Admin service is stopping")
            if self._overview is None:
                self._overview = OverviewView(self.control.settings, self.control.bootstrap)
                self._overview.start()
            view = self._overview
        self._read_to_end(view, "the overview", context)
        with self._control_lock:
            self._catch_up(context)
            defined = set(self.control.policies)
        names = sorted(defined | set(view.lambdas()))
        if only is not None:
            if only not in names:
                context.set_trailing_metadata(((REPLY_CODE_KEY, "UNKNOWN_LAMBDA"),))
                abort(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    f"lambda {only!r} is not defined and has no tasks",
                )
            names = [only]
        now = now_ms()
        return admin_pb2.OverviewResponse(
            lambdas=[_lambda_overview(found) for found in view.overviews(names, now)],
            sample_interval_ms=view.interval_ms,
            sampling_since_ms=view.sampling_since or 0,
            as_of_ms=now,
            tasks=len(view),
        )

    # -- helpers ---------------------------------------------------------

    def _gate_from(self, message: admin_pb2.Gate, context: grpc.ServicerContext) -> Gate:
        action = _ACTIONS.get(message.action)
        if action is None:
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "gate.action must be GATE_ACTION_PAUSE, GATE_ACTION_DROP or GATE_ACTION_RESUME",
            )
        if len(message.reason) > MAX_REASON_CHARS:
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"gate.reason must be at most {MAX_REASON_CHARS} characters, "
                f"got {len(message.reason)}",
            )
        if len(message.set_by) > MAX_SET_BY_CHARS:
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"gate.set_by must be at most {MAX_SET_BY_CHARS} characters, "
                f"got {len(message.set_by)}",
            )
        try:
            return Gate(
                lambda_name=message.lambda_name,
                collection=message.collection if message.HasField("collection") else None,
                action=action,
                reason=message.reason,
                set_by=acting_as(message.set_by or "admin"),
                set_at=now_ms(),
            )
        except GateError as exc:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"gate: {exc}")

    def _catch_up(self, context: grpc.ServicerContext) -> None:
        remaining = context.time_remaining()
        timeout = self.max_wait if remaining is None else max(0.1, min(self.max_wait, remaining))
        try:
            self.control.catch_up(timeout=timeout)
        except (KafkaException, TimeoutError) as exc:
            abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"cannot read the control topic from Kafka: {exc}",
            )

    def _timeout(self, context: grpc.ServicerContext) -> float:
        """How long this call may wait: ``max_wait``, or less, to answer within the deadline."""
        remaining: float | None = context.time_remaining()
        if remaining is None:
            return self.max_wait
        # Leave a little of the deadline for the answer to travel back, so the
        # caller hears why rather than a bare deadline.
        return max(0.1, min(self.max_wait, remaining - min(0.5, remaining * 0.1)))

    def _view(self, context: grpc.ServicerContext) -> DeadLetterView:
        """The dead-letter view, read to the end of the task-events topic as it is now."""
        with self._lazy_lock:
            if self._closed:
                abort(context, grpc.StatusCode.UNAVAILABLE, "the Admin service is stopping")
            if self._dead_letters is None:
                self._dead_letters = DeadLetterView(self.control.settings, self.control.bootstrap)
            view = self._dead_letters
        self._read_to_end(view, "the dead-letter view", context)
        return view

    def _read_to_end(
        self, view: DeadLetterView | OverviewView, name: str, context: grpc.ServicerContext
    ) -> None:
        """``view`` read to the end of the task-events topic as it is now, or UNAVAILABLE."""
        try:
            view.catch_up(timeout=self._timeout(context))
        except TimeoutError as exc:
            abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"{name} is still reading the task-events topic ({exc}); "
                "it goes on from there at the next call: try again",
            )
        except KafkaException as exc:
            abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"cannot read the task-events topic from Kafka: {exc}",
            )

    def _gateway_for(self) -> CommandGateway:
        if self._gateway is not None:
            return self._gateway
        with self._lazy_lock:
            if self._own_gateway is None:
                self._own_gateway = CommandGateway(
                    self.control.settings, self.control.bootstrap, client_id="admin"
                )
            return self._own_gateway

    def _require_lambda(
        self, context: grpc.ServicerContext, view: DeadLetterView, lambda_name: str | None
    ) -> None:
        """NOT_FOUND unless ``lambda_name`` is defined or has dead letters (None passes)."""
        if lambda_name is None or view.has_lambda(lambda_name):
            return
        with self._control_lock:
            self.control.poll(0)
            if self.control.get(lambda_name) is None:
                self._catch_up(context)
            known = self.control.get(lambda_name) is not None
        if not known:
            context.set_trailing_metadata(((REPLY_CODE_KEY, "UNKNOWN_LAMBDA"),))
            abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"lambda {lambda_name!r} is not defined and has no dead letters",
            )


def _task_info(task: Task) -> common_pb2.TaskInfo:
    from atf_es.services.frontend import task_to_proto  # frontend imports this module

    return task_to_proto(task)


def _lambda_overview(found: LambdaOverview) -> admin_pb2.LambdaOverview:
    return admin_pb2.LambdaOverview(
        lambda_name=found.lambda_name,
        counts=[
            admin_pb2.TaskCount(
                collection=collection,
                status=common_pb2.TaskStatus.Value(f"TASK_STATUS_{status.name}"),
                count=count,
            )
            for (collection, status), count in found.counts.items()
        ],
        depth=[
            admin_pb2.DepthSample(at_ms=point.at_ms, enqueued=point.enqueued, due=point.due)
            for point in found.depth
        ],
        latency=[
            admin_pb2.LatencySample(
                at_ms=point.at_ms,
                started=point.started,
                p50_ms=point.p50_ms,
                p95_ms=point.p95_ms,
                max_ms=point.max_ms,
            )
            for point in found.latency
        ],
    )


def _invalid(context: grpc.ServicerContext, message: str) -> NoReturn:
    abort(context, grpc.StatusCode.INVALID_ARGUMENT, message)


def _check_schedule_name(context: grpc.ServicerContext, name: str) -> None:
    if not SCHEDULE_NAME.fullmatch(name):
        _invalid(
            context,
            f"name {_shown(name)} must be 1-100 letters, digits, '_', '.' or '-'",
        )


def _shown(value: str, limit: int = 120) -> str:
    """``value`` quoted for an error message, cut short so a huge input stays readable."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} chars)"


def _check_lambda(context: grpc.ServicerContext, name: str, value: str) -> None:
    if not LAMBDA_NAME.fullmatch(value):
        _invalid(context, f"{name} {_shown(value)} must be 1-100 letters, digits, '_' or '-'")


def _query(
    context: grpc.ServicerContext,
    where: str,
    message: admin_pb2.ListDeadLettersRequest | admin_pb2.DeadLetterFilter,
    lambda_name: str | None,
) -> DeadLetterQuery:
    """The validated filters of a listing or a redrive (field names prefixed with ``where``)."""

    def optional(name: str) -> Any:
        return getattr(message, name) if message.HasField(name) else None

    collection: str | None = optional("collection")
    error_contains: str | None = optional("error_contains")
    after: int | None = optional("dead_lettered_after_ms")
    before: int | None = optional("dead_lettered_before_ms")
    if lambda_name is not None:
        _check_lambda(context, f"{where}lambda_name", lambda_name)
    if collection is not None and not COLLECTION_NAME.fullmatch(collection):
        _invalid(
            context,
            f"{where}collection {_shown(collection)} must be 1-100 letters, digits, '_', '.' "
            "or '-'",
        )
    if error_contains is not None and not 1 <= len(error_contains) <= MAX_ERROR_FILTER_CHARS:
        _invalid(
            context,
            f"{where}error_contains must be 1-{MAX_ERROR_FILTER_CHARS} characters, "
            f"got {len(error_contains)}",
        )
    for name, value in (("dead_lettered_after_ms", after), ("dead_lettered_before_ms", before)):
        if value is not None and not 0 <= value < MAX_TIME_MS:
            _invalid(
                context,
                f"{where}{name} must be an epoch-millisecond time from 0 to {MAX_TIME_MS - 1}, "
                f"got {value}",
            )
    if after is not None and before is not None and after >= before:
        _invalid(
            context,
            f"{where}dead_lettered_after_ms ({after}) must be before "
            f"{where}dead_lettered_before_ms ({before})",
        )
    return DeadLetterQuery(lambda_name, collection, error_contains, after, before)


def _page_size(context: grpc.ServicerContext, name: str, value: int, default: int) -> int:
    if value == 0:
        return default
    if not 1 <= value <= MAX_PAGE_SIZE:
        _invalid(context, f"{name} must be 1-{MAX_PAGE_SIZE} (0: {default}), got {value}")
    return value


def _cursor(context: grpc.ServicerContext, token: str, query: DeadLetterQuery) -> Cursor | None:
    if not token:
        return None
    try:
        return Cursor.decode(token, query)
    except PageTokenError as exc:
        _invalid(context, str(exc))


def _task_ids(context: grpc.ServicerContext, given: list[str]) -> list[str]:
    """The requested ids, checked, each once, in request order."""
    task_ids = list(dict.fromkeys(given))
    if len(task_ids) > MAX_REDRIVE:
        _invalid(
            context,
            f"task_ids holds {len(task_ids)} tasks; a redrive takes at most {MAX_REDRIVE} "
            "(a filter redrives any number, page by page)",
        )
    for index, task_id in enumerate(task_ids):
        if not 1 <= len(task_id) <= MAX_ID_CHARS or not task_id.isprintable():
            _invalid(
                context,
                f"task_ids[{index}] must be 1-{MAX_ID_CHARS} printable characters, "
                f"got {_shown(task_id, 60)}",
            )
    return task_ids


__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "MAX_REDRIVE",
    "AdminService",
    "gate_to_proto",
]
