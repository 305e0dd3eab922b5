"""``atf.v1.Admin``: the operator's API, served next to the Frontend.

Gates (:mod:`atf_es.events.gates`) are written to the compacted control
topic and read back before ``SetGate`` answers, so a ``ListGates`` that
follows sees the gate, and every processor applies it at its next poll.
``resume`` writes an ``open`` gate rather than a tombstone, so the control
topic keeps who opened it and why; ``ListGates`` shows closed gates only.

Dead letters (``ListDeadLetters``, ``Redrive``) are not served yet: they
answer ``UNIMPLEMENTED`` with a sentence.
"""

from __future__ import annotations

import logging
import threading

import grpc
from confluent_kafka import KafkaException

from atf_es._proto.atf.v1 import admin_pb2, admin_pb2_grpc
from atf_es.clock import now_ms
from atf_es.events import Gate, GateAction, GateError
from atf_es.services.control import ControlView, publish_gate
from atf_es.services.grpc_server import abort

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 2_000
MAX_SET_BY_CHARS = 200
DEAD_LETTERS_UNIMPLEMENTED = (
    "dead-letter listing and redrive are not served yet; "
    "a dead-lettered task can be inspected with Frontend.GetTask"
)

_ACTIONS = {
    admin_pb2.GATE_ACTION_PAUSE: GateAction.PAUSE,
    admin_pb2.GATE_ACTION_DROP: GateAction.DROP,
    admin_pb2.GATE_ACTION_RESUME: GateAction.OPEN,
}
_PROTO_ACTIONS = {action: proto for proto, action in _ACTIONS.items()}


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
        self, control: ControlView, control_lock: threading.Lock, *, max_wait: float = 10.0
    ) -> None:
        self.control = control
        self._control_lock = control_lock
        """The lock every reader of ``control`` holds: it is one Kafka consumer."""
        self.max_wait = max_wait

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
        abort(context, grpc.StatusCode.UNIMPLEMENTED, DEAD_LETTERS_UNIMPLEMENTED)

    def Redrive(
        self, request: admin_pb2.RedriveRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RedriveResponse:
        abort(context, grpc.StatusCode.UNIMPLEMENTED, DEAD_LETTERS_UNIMPLEMENTED)

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
                set_by=message.set_by or "admin",
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


__all__ = ["DEAD_LETTERS_UNIMPLEMENTED", "AdminService", "gate_to_proto"]
