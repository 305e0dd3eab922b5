"""Garbage at every public interface: a clear error, nothing lost, nothing stalled.

One system for the whole module (a processor, the HSC, the Frontend and a
controller on one topic prefix; starting them is most of the cost), and
``torture.garbage`` to send the garbage. Each test then proves the interface
still does its normal work: a valid request sent after the garbage is
served. Two lambdas keep the tests apart: the controller serves ``served``
only, so tasks of ``plain`` stay ENQUEUED for the Frontend and HSC tests.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from atf_es._proto.atf.v1 import (
    common_pb2,
    frontend_pb2,
    frontend_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)
from atf_es.client import Client
from atf_es.clock import now_ms
from atf_es.config import Settings, load_settings
from atf_es.events import LambdaPolicy, QueryTask, ScheduleTask, Task, TaskStatus
from atf_es.events.replies import Reply
from atf_es.services.control import ControlView
from atf_es.services.controller import Controller
from atf_es.services.frontend import frontend_server
from atf_es.services.gateway import CommandGateway, Delivered
from atf_es.services.grpc_server import GrpcServer
from atf_es.services.hsc import hsc_server
from atf_es.services.partition import max_payload_bytes
from atf_es.services.processor import Processor
from tests.helpers import wait_for
from tests.kafka_harness import TopicReader, decode_poison_records, prepare
from torture.garbage import (
    GrpcAnswer,
    garbage_commands,
    garbage_control_records,
    garbage_exec_records,
    garbage_grpc,
)

pytestmark = pytest.mark.integration

PLAIN = LambdaPolicy(name="plain")
SERVED = LambdaPolicy(name="served", priorities=2)


@dataclass
class System:
    settings: Settings
    processor: Processor
    controller: Controller
    gateway: CommandGateway
    frontend_address: str
    hsc_address: str
    controller_address: str
    channels: dict[str, grpc.Channel] = field(default_factory=dict)

    def channel_to(self, address: str) -> grpc.Channel:
        channel = self.channels.get(address)
        if channel is None:
            channel = self.channels[address] = grpc.insecure_channel(address)
        return channel

    def frontend(self) -> frontend_pb2_grpc.FrontendStub:
        return frontend_pb2_grpc.FrontendStub(self.channel_to(self.frontend_address))

    def schedule(self, lambda_name: str, task_id: str | None = None) -> str:
        task_id = task_id or uuid.uuid4().hex
        reply = self.gateway.send(
            ScheduleTask(uuid.uuid4().hex, task_id, lambda_name, "default", 0, b"p", now_ms())
        )
        assert isinstance(reply, Reply) and reply.accepted, reply
        return task_id

    def task(self, task_id: str) -> Task | None:
        reply = self.gateway.send(QueryTask(uuid.uuid4().hex, task_id))
        assert isinstance(reply, Reply)
        return reply.task

    def ids_on_every_partition(self) -> list[str]:
        """One fresh task id per commands partition (learnt from where a read lands)."""
        found: dict[int, str] = {}
        while len(found) < self.settings.partitions:
            task_id = uuid.uuid4().hex
            landed = self.gateway.send(QueryTask(uuid.uuid4().hex, task_id), wait_reply=False)
            assert isinstance(landed, Delivered)
            found.setdefault(landed.partition, task_id)
        return [found[p] for p in sorted(found)]

    def next_work(self, wait_ms: int = 500) -> list[str]:
        """One NextWork poll, as an executor makes it; the ids handed out."""
        stub = worker_pb2_grpc.ControllerStub(self.channel_to(self.controller_address))
        response = stub.NextWork(
            worker_pb2.NextWorkRequest(
                worker="garbage-test", max_tasks=100, wait_ms=wait_ms, lambda_names=["served"]
            ),
            timeout=10,
        )
        return [item.task_id for item in response.items]

    def next_work_until(self, task_id: str, timeout: float = 20.0) -> None:
        """Poll NextWork until ``task_id`` is handed out."""
        handed: list[str] = []

        def handed_out() -> bool:
            handed.extend(self.next_work())
            return task_id in handed

        wait_for(handed_out, timeout, f"the controller to hand out {task_id}")


@pytest.fixture(scope="module")
def system(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    settings = load_settings(
        overrides={
            "kafka_bootstrap": broker,
            "topic_prefix": f"t-garbage-{uuid.uuid4().hex[:8]}",
            "data_dir": Path(tmp_path_factory.mktemp("garbage")) / "data",
            "session_timeout_ms": 6000,
            "partitions": 2,
        },
        override_source="test fixture",
    )
    prepare(settings, PLAIN, SERVED)
    processor = Processor(settings, broker, instance_id="garbage")
    hsc_gateway = CommandGateway(settings, broker, client_id="garbage-hsc")
    hsc = hsc_server(hsc_gateway, "127.0.0.1:0")
    frontend_gateway = CommandGateway(settings, broker, client_id="garbage-frontend")
    frontend_control = ControlView(settings, broker)
    frontend = frontend_server(frontend_gateway, frontend_control, "127.0.0.1:0")
    gateway = CommandGateway(settings, broker, client_id="garbage-test")
    servers: list[GrpcServer] = [hsc, frontend]
    controller: Controller | None = None
    built: System | None = None
    try:
        processor.start()
        for server in servers:
            server.start()
        hsc_address = f"127.0.0.1:{hsc.port}"
        controller = Controller(
            settings, broker, ["served"], hsc_address, controller_id="garbage-controller"
        )
        controller.start()
        assert processor.ready.wait(30), "the processor did not join its group"
        assert controller.ready.wait(30), "the controller did not join its group"
        built = System(
            settings,
            processor,
            controller,
            gateway,
            f"127.0.0.1:{frontend.port}",
            hsc_address,
            f"127.0.0.1:{controller.port}",
        )
        yield built
        assert not processor.failed, "the processor crashed"
        assert not controller.failed, "the controller's poll loop crashed"
    finally:
        for channel in built.channels.values() if built is not None else ():
            channel.close()
        if controller is not None:
            controller.stop()
        for server in servers:
            server.stop()
        for closing in (gateway, frontend_gateway, hsc_gateway):
            closing.close()
        frontend_control.close()
        processor.stop()


# -- the commands topic ----------------------------------------------------------

# What the poison record of each kind of garbage command must say.
REASONS = {
    "random-bytes": "undecodable command",
    "truncated": "undecodable command",
    "bad-marker": "bad marker",
    "unknown-fingerprint": "unknown schema fingerprint",
    "header-then-random-body": "undecodable command",
    "another-record-type": "unknown schema fingerprint",
    "trailing-bytes": "trailing bytes",
    "empty-value": "shorter than the header",
    "null-value": "empty record",
    "huge-key": "undecodable command",
    "near-size-limit": "cut short to fit a record",
    "unknown-lambda": "unknown_lambda",
    "reply-too-large": "too large (task_id is 400",
    "unprintable-task-id": "printable characters",
    "too-long-task-id": "task_id must be 1-200",
    "bad-collection": "collection",
    "bad-priority": "priority",
    "negative-run-at": "run_at must be",
    "payload-too-large-to-record": "too large (payload is",
}


def test_garbage_commands_are_set_aside_and_every_partition_keeps_moving(
    system: System,
) -> None:
    settings = system.settings
    poison = TopicReader(settings, f"{settings.topic_prefix}.poison")
    try:
        sent = garbage_commands(
            settings, 2 * (len(REASONS) + 1), random.Random(11), lambda_names=["plain"]
        )
        assert all(record.offset >= 0 for record in sent), "garbage was not delivered"
        assert {r.kind for r in sent} == {*REASONS, "bad-reply-to"}

        # Valid commands on every partition, after the garbage: each is answered.
        fresh = system.ids_on_every_partition()
        stub = system.frontend()
        for task_id in fresh:
            response = stub.Schedule(
                frontend_pb2.ScheduleRequest(
                    spec=frontend_pb2.TaskSpec(lambda_name="plain", task_id=task_id)
                ),
                timeout=20,
            )
            assert response.created and response.task.status == common_pb2.TASK_STATUS_ENQUEUED

        expected = {(r.partition, r.offset): r for r in sent if r.poison}
        source = f"{settings.topic_prefix}.commands"

        def every_garbage_record_set_aside() -> bool:
            poison.poll(0.2)
            found = {
                (p.partition, p.offset)
                for p in decode_poison_records(poison)
                if p.source_topic == source
            }
            return set(expected) <= found

        wait_for(every_garbage_record_set_aside, 30, "a poison record for every garbage command")
        records = {(p.partition, p.offset): p for p in decode_poison_records(poison)}
        for position, record in expected.items():
            poisoned = records[position]
            assert REASONS[record.kind] in poisoned.reason, (record.kind, poisoned.reason)
            assert len(poisoned.value) + len(poisoned.key or b"") < 1_000_000
            if record.kind != "near-size-limit":
                assert poisoned.value == (record.value or b""), record.kind
                assert poisoned.key == record.key, record.kind
        unanswerable = {(r.partition, r.offset) for r in sent if not r.poison}
        assert not unanswerable & set(records), "a valid command was set aside"
        assert not system.processor.failed
    finally:
        poison.close()


# -- gRPC ------------------------------------------------------------------------

RAW_INVALID = ("not protobuf", "truncated field", "invalid UTF-8")
EXPECTED_CODES = {
    "Schedule: empty spec": "INVALID_ARGUMENT",
    "Schedule: huge lambda name": "INVALID_ARGUMENT",
    "Schedule: unprintable lambda name": "INVALID_ARGUMENT",
    "Schedule: huge collection": "INVALID_ARGUMENT",
    "Schedule: negative run_at": "INVALID_ARGUMENT",
    "Schedule: huge delay": "INVALID_ARGUMENT",
    "Schedule: huge idempotency key": "INVALID_ARGUMENT",
    "Schedule: unprintable task id": "INVALID_ARGUMENT",
    "Schedule: huge task id": "INVALID_ARGUMENT",
    "Schedule: huge payload, unknown lambda": "NOT_FOUND",
    "Schedule: absurd priority, unknown lambda": "NOT_FOUND",
    "ScheduleBatch: too many specs": "INVALID_ARGUMENT",
    "ScheduleBatch: absurd specs": "OK",
    "GetTask: empty task id": "INVALID_ARGUMENT",
    "GetTask: huge task id": "INVALID_ARGUMENT",
    "GetTask: unknown task": "NOT_FOUND",
    "Cancel: empty task id": "INVALID_ARGUMENT",
    "Cancel: huge task id": "INVALID_ARGUMENT",
    "Cancel: unknown task": "NOT_FOUND",
    # "Cancel: huge reason": clear, but see the frontend tests below.
    "History: empty task id": "INVALID_ARGUMENT",
    "History: huge task id": "INVALID_ARGUMENT",
    "History: unknown task": "NOT_FOUND",
    "SetGate: no action": "INVALID_ARGUMENT",
    "SetGate: bad collection": "INVALID_ARGUMENT",
    "SetGate: unknown lambda": "NOT_FOUND",
    "SetGate: huge reason": "INVALID_ARGUMENT",
    "ListGates: huge lambda": "OK",
    "ListDeadLetters: negative page size": "INVALID_ARGUMENT",
    "ListDeadLetters: foreign page token": "INVALID_ARGUMENT",
    "DeadLetterCounts: huge lambda": "INVALID_ARGUMENT",
    "Redrive: no reason": "INVALID_ARGUMENT",
    "Redrive: unknown tasks": "OK",
    "Redrive: nothing to redrive": "INVALID_ARGUMENT",
    "Watch: huge task id": "INVALID_ARGUMENT",
    "Watch: two starts": "INVALID_ARGUMENT",
    "Watch: unspecified status": "INVALID_ARGUMENT",
    "ClaimTask: empty request": "INVALID_ARGUMENT",
    "ClaimTask: bad lease": "INVALID_ARGUMENT",
    "ClaimTask: huge task id": "INVALID_ARGUMENT",
    "ClaimTask: huge worker": "INVALID_ARGUMENT",
    "ClaimTask: unknown task": "NOT_FOUND",
    "Heartbeat: empty request": "INVALID_ARGUMENT",
    "Heartbeat: bad lease": "INVALID_ARGUMENT",
    "Heartbeat: huge task id": "INVALID_ARGUMENT",
    "Heartbeat: huge worker": "INVALID_ARGUMENT",
    "Heartbeat: unknown task": "NOT_FOUND",
    "ClaimTasks: too many claims": "INVALID_ARGUMENT",
    "ClaimTasks: bad lease": "INVALID_ARGUMENT",
    "ClaimTasks: huge worker": "INVALID_ARGUMENT",
    "ClaimTasks: unknown tasks": "OK",
    "SetResults: too many results": "INVALID_ARGUMENT",
    "SetResults: unknown outcome": "INVALID_ARGUMENT",
    "SetResults: bad lease": "INVALID_ARGUMENT",
    "SetResults: huge error and result, unknown tasks": "OK",
    "NextWork: empty request": "INVALID_ARGUMENT",
    "NextWork: negative max_tasks": "INVALID_ARGUMENT",
    "NextWork: negative wait": "INVALID_ARGUMENT",
    "NextWork: huge worker": "INVALID_ARGUMENT",
    "NextWork: unknown lambdas": "INVALID_ARGUMENT",
}


def check_answers(answers: list[GrpcAnswer]) -> None:
    shown = "\n".join(f"{a.method}: {a.code} {a.details[:300]!r}" for a in answers)
    assert answers, "no calls were made"
    assert all(a.clear for a in answers), shown
    for answer in answers:
        what = answer.method.partition(": ")[2]
        if what in RAW_INVALID:
            assert answer.code == "INVALID_ARGUMENT", shown
            assert "is not a valid atf.v1." in answer.details, shown
        elif what == "over the size limit":
            assert answer.code == "RESOURCE_EXHAUSTED", shown
        elif answer.method in EXPECTED_CODES:
            assert answer.code == EXPECTED_CODES[answer.method], shown
        if answer.code != "OK":
            assert len(answer.details) <= 1_000, shown


def test_garbage_at_the_admin_gets_clear_statuses_and_it_still_gates(system: System) -> None:
    answers = garbage_grpc(
        system.frontend_address, "Admin", random.Random(2), budget=120, call_timeout=15
    )
    check_answers(answers)
    redrive = next(a for a in answers if a.method == "Redrive: unknown tasks")
    assert redrive.details.count("REPLY_CODE_NOT_FOUND") == 2, redrive
    # Nothing was gated, and a real gate still works.
    with Client(system.frontend_address, timeout=20) as atf:
        assert atf.gates() == []
        assert atf.pause("plain", "after-garbage").name == "plain/after-garbage"
        assert [g.name for g in atf.gates()] == ["plain/after-garbage"]
        atf.resume("plain", "after-garbage")


def test_garbage_at_the_frontend_gets_clear_statuses_and_it_still_schedules(
    system: System,
) -> None:
    answers = garbage_grpc(
        system.frontend_address, "Frontend", random.Random(1), budget=120, call_timeout=15
    )
    check_answers(answers)
    batch = next(a for a in answers if a.method == "ScheduleBatch: absurd specs")
    assert batch.details.count("REPLY_CODE_INVALID") == 3, batch
    assert batch.details.count("REPLY_CODE_UNKNOWN_LAMBDA") == 1, batch

    stub = system.frontend()
    scheduled = stub.Schedule(
        frontend_pb2.ScheduleRequest(spec=frontend_pb2.TaskSpec(lambda_name="plain")), timeout=20
    )
    wait_for(
        lambda: (
            (task := system.task(scheduled.task_id)) is not None
            and task.status is TaskStatus.ENQUEUED
        ),
        20,
        "the task scheduled after the garbage to be enqueued",
    )
    got = stub.GetTask(frontend_pb2.GetTaskRequest(task_id=scheduled.task_id), timeout=20)
    assert got.task.status == common_pb2.TASK_STATUS_ENQUEUED


def test_garbage_at_the_hsc_gets_clear_statuses_and_a_claim_still_works(system: System) -> None:
    answers = garbage_grpc(
        system.hsc_address, "HeartbeatStatus", random.Random(2), budget=120, call_timeout=15
    )
    check_answers(answers)
    results = next(a for a in answers if a.method.startswith("SetResults: huge error"))
    assert "[0] REPLY_CODE_NOT_FOUND" in results.details, results
    assert "[1] REPLY_CODE_INVALID" in results.details, results  # too large for Kafka
    claims = next(a for a in answers if a.method == "ClaimTasks: unknown tasks")
    assert "[0] REPLY_CODE_NOT_FOUND" in claims.details, claims
    assert "[1] REPLY_CODE_NOT_FOUND" in claims.details, claims

    task_id = system.schedule("plain")
    hsc = worker_pb2_grpc.HeartbeatStatusStub(system.channel_to(system.hsc_address))
    claim = hsc.ClaimTask(
        worker_pb2.ClaimTaskRequest(task_id=task_id, lease=1, worker="w1"), timeout=20
    )
    assert claim.reply.code == common_pb2.REPLY_CODE_OK
    beat = hsc.Heartbeat(
        worker_pb2.HeartbeatRequest(task_id=task_id, lease=1, worker="w1"), timeout=20
    )
    assert beat.reply.code == common_pb2.REPLY_CODE_OK


def test_garbage_at_the_controller_gets_clear_statuses_and_it_still_hands_out_work(
    system: System,
) -> None:
    discarded = system.controller.stats.discarded
    answers = garbage_grpc(
        system.controller_address, "Controller", random.Random(3), budget=60, call_timeout=15
    )
    check_answers(answers)
    assert system.controller.stats.discarded == discarded, "garbage calls discarded work"
    task_id = system.schedule("served")
    system.next_work_until(task_id)


# -- the exec topics -------------------------------------------------------------


def test_garbage_in_the_exec_topics_does_not_stall_the_controller(system: System) -> None:
    stats = system.controller.stats
    bad, discarded = stats.bad_records, stats.discarded
    rng = random.Random(4)
    sent = [
        record
        for priority in (1, 0)
        for record in garbage_exec_records(system.settings, "served", rng, priority=priority)
    ]
    assert all(record.offset >= 0 for record in sent), "garbage was not delivered"
    # Sent after the garbage, at the lower priority: handed out only once every
    # garbage item ahead of it was skipped or discarded.
    task_id = system.schedule("served")
    system.next_work_until(task_id)
    unreadable = {
        "random-bytes",
        "empty-value",
        "null-value",
        "truncated",
        "trailing-bytes",
        "header-then-random-body",
        "other-lambda",
        "other-priority",
    }
    unclaimable = {"unknown-task", "zero-lease", "negative-lease", "empty-task-id", "huge-task-id"}
    assert {r.kind for r in sent} == unreadable | unclaimable
    wait_for(
        lambda: stats.bad_records - bad == sum(r.kind in unreadable for r in sent),
        10,
        "every unreadable or foreign work item to be skipped",
    )
    wait_for(
        lambda: (
            not system.next_work(wait_ms=0)
            and stats.discarded - discarded == sum(r.kind in unclaimable for r in sent)
        ),
        10,
        "every work item no HSC accepts to be discarded",
    )
    assert not system.controller.failed


def test_a_task_claimed_in_one_call_with_unclaimable_items_is_handed_out(
    system: System,
) -> None:
    """The HSC refuses a ``ClaimTasks`` whose claims include one it cannot take
    (an empty task id, a bad lease) as a whole: the good task batched with such
    items must still be claimed, and only the garbage discarded."""
    stats = system.controller.stats
    received, discarded = stats.received, stats.discarded
    task_id = system.schedule("served")
    wait_for(lambda: stats.received > received, 20, "the task to reach the controller's buffer")
    kinds = {"unknown-task", "zero-lease", "negative-lease", "empty-task-id", "huge-task-id"}
    sent = garbage_exec_records(system.settings, "served", random.Random(6), kinds=kinds)
    assert {r.kind for r in sent} == kinds
    wait_for(
        lambda: stats.received - received == 1 + len(sent),
        20,
        "the garbage to reach the controller's buffer, behind the task",
    )
    # One poll takes them all (max_tasks 100) and claims them in one call.
    assert system.next_work(wait_ms=0) == [task_id]
    assert stats.discarded - discarded == len(sent)
    assert not system.controller.failed


# -- the control topic -----------------------------------------------------------


def test_garbage_in_the_control_topic_does_not_hide_or_change_lambdas(system: System) -> None:
    settings = system.settings
    assert settings.kafka_bootstrap is not None
    sent = garbage_control_records(
        settings, random.Random(5), lambda_names=["plain", "served"], n=16
    )
    assert all(record.offset >= 0 for record in sent), "garbage was not delivered"

    # A reader starting now (a restarted service) finds the lambdas as defined.
    fresh = ControlView(settings, settings.kafka_bootstrap)
    try:
        fresh.catch_up()
        assert fresh.get("plain") == PLAIN
        assert fresh.get("served") == SERVED
        read = [r for r in sent if r.key is not None and r.key.startswith((b"lambda/", b"gate/"))]
        assert fresh.bad_records == sum(r.value is not None for r in read)
        applied = [g for g in fresh.gates.values() if g.set_by == "garbage"]
        assert applied == [], "a gate under the wrong key was applied"
        assert not any(g.closed for g in fresh.gates.values()), fresh.gates
    finally:
        fresh.close()

    # The running Frontend and processor read the garbage too and still schedule
    # and enqueue with the old definitions (a payload limit of 1 MiB, not 1 byte).
    stub = system.frontend()
    too_big = PLAIN.max_payload_bytes + 1
    with pytest.raises(grpc.RpcError) as refused:
        stub.Schedule(
            frontend_pb2.ScheduleRequest(
                spec=frontend_pb2.TaskSpec(lambda_name="plain", payload=b"x" * too_big)
            ),
            timeout=20,
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    for lambda_name in ("plain", "served"):
        task_id = uuid.uuid4().hex
        response = stub.Schedule(
            frontend_pb2.ScheduleRequest(
                spec=frontend_pb2.TaskSpec(lambda_name=lambda_name, task_id=task_id, payload=b"xx")
            ),
            timeout=20,
        )
        assert response.task.status == common_pb2.TASK_STATUS_ENQUEUED, lambda_name
    system.next_work_until(task_id)


# -- sizes the Frontend must check before sending -------------------------------------


def test_a_payload_too_large_to_record_is_refused_by_the_frontend(system: System) -> None:
    payload = b"x" * (max_payload_bytes() + 1)
    assert len(payload) <= PLAIN.max_payload_bytes
    with pytest.raises(grpc.RpcError) as refused:
        system.frontend().Schedule(
            frontend_pb2.ScheduleRequest(
                spec=frontend_pb2.TaskSpec(lambda_name="plain", payload=payload)
            ),
            timeout=20,
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "a Kafka record of this cluster holds at most" in refused.value.details()


def test_a_cancel_reason_too_large_for_kafka_is_invalid(system: System) -> None:
    task_id = system.schedule("plain")
    with pytest.raises(grpc.RpcError) as refused:
        system.frontend().Cancel(
            frontend_pb2.CancelRequest(task_id=task_id, reason="r" * 1_500_000), timeout=20
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
