"""Heartbeat and Status Controller: claims, heartbeats and results over gRPC.

Each call becomes a command through the processor and waits for its reply
(bounded by the caller's deadline and the service's own limit). A refused
single-task call ends with a gRPC status and a sentence; the precise
``ReplyCode`` travels in the trailing metadata key ``atf-reply-code`` so an
executor can tell "cancelled: stop" from "stale lease: stop" from a transient
failure. ``SetResults`` and ``ClaimTasks`` are batches and answer one reply
per item.

Requests are checked before anything is sent: a task id longer than the
processor ever accepts (``MAX_TASK_ID_CHARS``), a worker name longer than
``MAX_WORKER_CHARS``, or more than ``MAX_RESULTS`` results or ``MAX_CLAIMS``
claims in one call end in ``INVALID_ARGUMENT``; an error text longer than
``MAX_ERROR_CHARS`` is cut (it is a message for a human, and refusing it
would lose the result). A command too large for Kafka is ``INVALID_ARGUMENT`` too (per item in a
batch: ``REPLY_CODE_INVALID``), never a retryable error.
"""

from __future__ import annotations

import logging
import uuid
from typing import NoReturn

import grpc

from atf_es import metrics
from atf_es._proto.atf.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from atf_es.events import ClaimTask, Command, Heartbeat, Outcome, SetResult
from atf_es.events.replies import Reply, ReplyCode
from atf_es.services.auth import OPEN, ServerSecurity
from atf_es.services.gateway import (
    CommandGateway,
    CommandRejectedError,
    GatewayError,
    KafkaUnavailableError,
)
from atf_es.services.grpc_server import GrpcServer, abort, shorten

log = logging.getLogger(__name__)

REPLY_CODE_KEY = "atf-reply-code"
MAX_TASK_ID_CHARS = 200
"""The longest task id the processor accepts in a ``ScheduleTask``."""
MAX_WORKER_CHARS = 512
"""Room for ``<hostname>-<pid>-<suffix>.<thread>`` with the longest host name."""
MAX_ERROR_CHARS = 4_000
"""As the executor cuts its own error texts."""
MAX_RESULTS = 1_000
MAX_CLAIMS = 100
"""As many as a Controller claims for one ``NextWork``."""
_STATUS = {
    ReplyCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ReplyCode.STALE_LEASE: grpc.StatusCode.FAILED_PRECONDITION,
    ReplyCode.WRONG_STATE: grpc.StatusCode.FAILED_PRECONDITION,
    ReplyCode.CANCELLED: grpc.StatusCode.ABORTED,
    ReplyCode.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ReplyCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ReplyCode.UNKNOWN_LAMBDA: grpc.StatusCode.NOT_FOUND,
}
REFUSAL_CODES = frozenset(
    {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
    }
)
"""The statuses of a claim or heartbeat the HSC refused for good (stale lease,
cancelled, no such task, bad request): asking again with the same lease gets
the same answer, so the caller lets go of the task. Anything else
(``UNAVAILABLE``, ``DEADLINE_EXCEEDED``) may succeed on a retry."""
_OUTCOMES = {
    worker_pb2.OUTCOME_SUCCESS: Outcome.SUCCESS,
    worker_pb2.OUTCOME_RETRIABLE: Outcome.RETRIABLE,
    worker_pb2.OUTCOME_FATAL: Outcome.FATAL,
}


def reply_to_proto(reply: Reply) -> common_pb2.CommandReply:
    return common_pb2.CommandReply(
        task_id=reply.task_id,
        code=common_pb2.ReplyCode.Value(f"REPLY_CODE_{reply.code.name}"),
        message=reply.message,
    )


def _new_id() -> str:
    return uuid.uuid4().hex


class HeartbeatStatusService(worker_pb2_grpc.HeartbeatStatusServicer):  # type: ignore[misc]
    def __init__(self, gateway: CommandGateway, *, max_wait: float = 10.0) -> None:
        self.gateway = gateway
        self.max_wait = max_wait

    def _timeout(self, context: grpc.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self.max_wait if remaining is None else max(0.0, min(self.max_wait, remaining))

    def _send(self, command: Command, context: grpc.ServicerContext) -> Reply:
        try:
            reply = self.gateway.send(command, timeout=self._timeout(context))
        except KafkaUnavailableError as exc:
            abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        except CommandRejectedError as exc:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except GatewayError as exc:
            abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        assert isinstance(reply, Reply)
        return reply

    def _refuse(self, call: str, reply: Reply, context: grpc.ServicerContext) -> NoReturn:
        metrics.HSC_REFUSALS.labels(call, reply.code.value).inc()
        log.debug(
            "%s of task %.200s refused: %s (%s)",
            call,
            reply.task_id,
            reply.code.value,
            reply.message,
            extra={"task_id": reply.task_id[:200], "status": reply.code.value},
        )
        context.set_trailing_metadata(((REPLY_CODE_KEY, reply.code.name),))
        abort(context, _STATUS.get(reply.code, grpc.StatusCode.UNKNOWN), reply.message)

    def ClaimTask(
        self, request: worker_pb2.ClaimTaskRequest, context: grpc.ServicerContext
    ) -> worker_pb2.ClaimTaskResponse:
        _require_ids(context, request.task_id, request.worker)
        _require_lease(context, request.lease)
        reply = self._send(
            ClaimTask(_new_id(), request.task_id, request.lease, request.worker, request.start),
            context,
        )
        if not reply.accepted:
            self._refuse("claim", reply, context)
        return worker_pb2.ClaimTaskResponse(reply=reply_to_proto(reply))

    def Heartbeat(
        self, request: worker_pb2.HeartbeatRequest, context: grpc.ServicerContext
    ) -> worker_pb2.HeartbeatResponse:
        _require_ids(context, request.task_id, request.worker)
        _require_lease(context, request.lease)
        reply = self._send(
            Heartbeat(_new_id(), request.task_id, request.lease, request.worker), context
        )
        if not reply.accepted:
            self._refuse("heartbeat", reply, context)
        return worker_pb2.HeartbeatResponse(reply=reply_to_proto(reply))

    def SetResults(
        self, request: worker_pb2.SetResultsRequest, context: grpc.ServicerContext
    ) -> worker_pb2.SetResultsResponse:
        _require_at_most(context, "results", len(request.results), MAX_RESULTS)
        commands: list[Command] = []
        for index, result in enumerate(request.results):
            where = f"results[{index}]"
            _require_ids(context, result.task_id, result.worker, f"{where}.")
            _require_lease(context, result.lease, f"{where}.lease")
            outcome = _OUTCOMES.get(result.outcome)
            if outcome is None:
                abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{where}.outcome must be SUCCESS, RETRIABLE or FATAL",
                )
            commands.append(
                SetResult(
                    _new_id(),
                    result.task_id,
                    result.lease,
                    result.worker,
                    outcome,
                    shorten(result.error, MAX_ERROR_CHARS) if result.HasField("error") else None,
                    result.result if result.HasField("result") else None,
                )
            )
        return worker_pb2.SetResultsResponse(replies=self._send_all(commands, context))

    def ClaimTasks(
        self, request: worker_pb2.ClaimTasksRequest, context: grpc.ServicerContext
    ) -> worker_pb2.ClaimTasksResponse:
        _require_at_most(context, "claims", len(request.claims), MAX_CLAIMS)
        commands: list[Command] = []
        for index, claim in enumerate(request.claims):
            where = f"claims[{index}]"
            _require_ids(context, claim.task_id, claim.worker, f"{where}.")
            _require_lease(context, claim.lease, f"{where}.lease")
            commands.append(
                ClaimTask(_new_id(), claim.task_id, claim.lease, claim.worker, claim.start)
            )
        replies = self._send_all(commands, context, refusals="claim")
        return worker_pb2.ClaimTasksResponse(replies=replies)

    def _send_all(
        self, commands: list[Command], context: grpc.ServicerContext, refusals: str | None = None
    ) -> list[common_pb2.CommandReply]:
        """One reply per command, in order: the processor's, ``INVALID`` for a
        command Kafka cannot take, ``UNSPECIFIED`` (not known) for one Kafka or
        the processor did not answer in time. ``refusals``: the call whose
        refusals to count."""
        replies: list[common_pb2.CommandReply] = []
        for command, outcome_or_error in zip(
            commands,
            self.gateway.send_many(commands, timeout=self._timeout(context)),
            strict=True,
        ):
            if isinstance(outcome_or_error, Reply):
                if refusals is not None and not outcome_or_error.accepted:
                    metrics.HSC_REFUSALS.labels(refusals, outcome_or_error.code.value).inc()
                replies.append(reply_to_proto(outcome_or_error))
            elif isinstance(outcome_or_error, CommandRejectedError):
                replies.append(
                    common_pb2.CommandReply(
                        task_id=command.task_id,
                        code=common_pb2.REPLY_CODE_INVALID,
                        message=str(outcome_or_error),
                    )
                )
            else:
                replies.append(
                    common_pb2.CommandReply(
                        task_id=command.task_id,
                        code=common_pb2.REPLY_CODE_UNSPECIFIED,
                        message=str(outcome_or_error),
                    )
                )
        return replies


def _require_ids(context: grpc.ServicerContext, task_id: str, worker: str, where: str = "") -> None:
    for name, value, limit in (
        ("task_id", task_id, MAX_TASK_ID_CHARS),
        ("worker", worker, MAX_WORKER_CHARS),
    ):
        if not value:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{where}{name} is required")
        if len(value) > limit:
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{where}{name} must be at most {limit} characters, got {len(value)}",
            )


def _require_at_most(context: grpc.ServicerContext, field: str, count: int, limit: int) -> None:
    if count > limit:
        abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{field} holds {count} {field}; a call takes at most {limit}",
        )


def _require_lease(context: grpc.ServicerContext, lease: int, name: str = "lease") -> None:
    if lease < 1:
        abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{name} must be the positive lease token from the work item, got {lease}",
        )


def hsc_server(
    gateway: CommandGateway, address: str, *, security: ServerSecurity = OPEN
) -> GrpcServer:
    service = HeartbeatStatusService(gateway)
    return GrpcServer(
        "hsc",
        address,
        [lambda server: worker_pb2_grpc.add_HeartbeatStatusServicer_to_server(service, server)],
        [worker_pb2.DESCRIPTOR.services_by_name["HeartbeatStatus"].full_name],
        security=security,
    )
