"""The HSC over real gRPC, with a real processor behind it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from atf_es._proto.atf.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from atf_es.clock import now_ms
from atf_es.config import Settings
from atf_es.events import CancelTask, LambdaPolicy, QueryTask, ScheduleTask, TaskStatus
from atf_es.events.replies import Reply
from atf_es.services.gateway import CommandGateway
from atf_es.services.hsc import REPLY_CODE_KEY, hsc_server
from atf_es.services.processor import Processor
from tests.kafka_harness import prepare

pytestmark = pytest.mark.integration


System = tuple[CommandGateway, worker_pb2_grpc.HeartbeatStatusStub, grpc.Channel]


@pytest.fixture
def system(settings: Settings) -> Iterator[System]:
    small = replace(settings, partitions=2)
    prepare(small, LambdaPolicy(name="send_email"))
    assert small.kafka_bootstrap is not None
    processor = Processor(small, small.kafka_bootstrap, instance_id="hsc-test")
    processor.start()
    gateway = CommandGateway(small, small.kafka_bootstrap)
    server = hsc_server(gateway, "127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        assert processor.ready.wait(30)
        yield gateway, worker_pb2_grpc.HeartbeatStatusStub(channel), channel
    finally:
        channel.close()
        server.stop()
        server.stop()
        gateway.close()
        processor.stop()


def scheduled(gateway: CommandGateway) -> str:
    task_id = uuid.uuid4().hex
    reply = gateway.send(
        ScheduleTask(uuid.uuid4().hex, task_id, "send_email", "default", 0, b"", now_ms())
    )
    assert isinstance(reply, Reply) and reply.accepted
    return task_id


def code_of(error: grpc.RpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get(REPLY_CODE_KEY)  # type: ignore[attr-defined]


def test_claim_heartbeat_and_result(system: System) -> None:
    gateway, hsc, _ = system
    task_id = scheduled(gateway)
    claim = hsc.ClaimTask(worker_pb2.ClaimTaskRequest(task_id=task_id, lease=1, worker="w1"))
    assert claim.reply.code == common_pb2.REPLY_CODE_OK
    beat = hsc.Heartbeat(worker_pb2.HeartbeatRequest(task_id=task_id, lease=1, worker="w1"))
    assert beat.reply.code == common_pb2.REPLY_CODE_OK
    done = hsc.SetResults(
        worker_pb2.SetResultsRequest(
            results=[
                worker_pb2.TaskResult(
                    task_id=task_id, lease=1, worker="w1", outcome=worker_pb2.OUTCOME_SUCCESS
                ),
                worker_pb2.TaskResult(
                    task_id="no-such-task",
                    lease=1,
                    worker="w1",
                    outcome=worker_pb2.OUTCOME_SUCCESS,
                ),
            ]
        ),
        timeout=10,
    )
    codes = [r.code for r in done.replies]
    assert codes == [common_pb2.REPLY_CODE_OK, common_pb2.REPLY_CODE_NOT_FOUND]


def test_claim_tasks_answers_each_claim_in_order(system: System) -> None:
    """One call, one reply per claim: a refusal does not spoil its neighbours."""
    gateway, hsc, _ = system
    first, second, third = (scheduled(gateway) for _ in range(3))
    answer = hsc.ClaimTasks(
        worker_pb2.ClaimTasksRequest(
            claims=[
                worker_pb2.ClaimTaskRequest(task_id=first, lease=1, worker="w1", start=True),
                worker_pb2.ClaimTaskRequest(task_id=second, lease=9, worker="w1", start=True),
                worker_pb2.ClaimTaskRequest(task_id="no-such-task", lease=1, worker="w1"),
                worker_pb2.ClaimTaskRequest(task_id=third, lease=1, worker="w1"),
            ]
        ),
        timeout=10,
    )
    assert [(r.task_id, r.code) for r in answer.replies] == [
        (first, common_pb2.REPLY_CODE_OK),
        (second, common_pb2.REPLY_CODE_STALE_LEASE),
        ("no-such-task", common_pb2.REPLY_CODE_NOT_FOUND),
        (third, common_pb2.REPLY_CODE_OK),
    ]
    assert "lease 9" in answer.replies[1].message
    # The first was claimed started, the last claimed only: its heartbeat
    # starts it, and a started task's heartbeat is just a heartbeat.
    for task_id in (first, third):
        beat = hsc.Heartbeat(worker_pb2.HeartbeatRequest(task_id=task_id, lease=1, worker="w1"))
        assert beat.reply.code == common_pb2.REPLY_CODE_OK
    # The same worker's claim again (a lost answer) holds the task.
    again = hsc.ClaimTasks(
        worker_pb2.ClaimTasksRequest(
            claims=[worker_pb2.ClaimTaskRequest(task_id=second, lease=1, worker="w1", start=True)]
        ),
        timeout=10,
    )
    assert [r.code for r in again.replies] == [common_pb2.REPLY_CODE_OK]
    retried = hsc.ClaimTasks(
        worker_pb2.ClaimTasksRequest(
            claims=[worker_pb2.ClaimTaskRequest(task_id=second, lease=1, worker="w1", start=True)]
        ),
        timeout=10,
    )
    assert [r.code for r in retried.replies] == [common_pb2.REPLY_CODE_OK]
    assert hsc.ClaimTasks(worker_pb2.ClaimTasksRequest(), timeout=10).replies == []


@pytest.mark.parametrize(
    ("leases", "expected"),
    [([1] * 101, "at most 100"), ([1, 0], "claims[1].lease"), ([1, 1, -3], "claims[2].lease")],
)
def test_a_bad_claim_tasks_call_names_the_claim_and_sends_nothing(
    system: System, leases: list[int], expected: str
) -> None:
    gateway, hsc, _ = system
    task_id = scheduled(gateway)
    claims = [worker_pb2.ClaimTaskRequest(task_id=task_id, lease=n, worker="w") for n in leases]
    with pytest.raises(grpc.RpcError) as caught:
        hsc.ClaimTasks(worker_pb2.ClaimTasksRequest(claims=claims), timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert expected in caught.value.details()  # type: ignore[attr-defined]
    reply = gateway.send(QueryTask(uuid.uuid4().hex, task_id))
    assert isinstance(reply, Reply) and reply.task is not None
    assert reply.task.status is TaskStatus.ENQUEUED, "the good claims before it were not sent"


def test_a_stale_lease_is_refused_with_a_clear_status(system: System) -> None:
    gateway, hsc, _ = system
    task_id = scheduled(gateway)
    with pytest.raises(grpc.RpcError) as caught:
        hsc.ClaimTask(worker_pb2.ClaimTaskRequest(task_id=task_id, lease=5, worker="w1"))
    error = caught.value
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert "lease 5" in error.details() and "current lease is 1" in error.details()  # type: ignore[attr-defined]
    assert code_of(error) == "STALE_LEASE"


def test_a_cancelled_task_is_stopped_at_its_next_heartbeat(system: System) -> None:
    gateway, hsc, _ = system
    task_id = scheduled(gateway)
    hsc.ClaimTask(worker_pb2.ClaimTaskRequest(task_id=task_id, lease=1, worker="w1"))
    hsc.Heartbeat(worker_pb2.HeartbeatRequest(task_id=task_id, lease=1, worker="w1"))
    gateway.send(CancelTask(uuid.uuid4().hex, task_id, "alice", "not needed"))
    with pytest.raises(grpc.RpcError) as caught:
        hsc.Heartbeat(worker_pb2.HeartbeatRequest(task_id=task_id, lease=1, worker="w1"))
    assert caught.value.code() is grpc.StatusCode.ABORTED  # type: ignore[attr-defined]
    assert code_of(caught.value) == "CANCELLED"


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (worker_pb2.ClaimTaskRequest(task_id="", lease=1, worker="w"), "task_id"),
        (worker_pb2.ClaimTaskRequest(task_id="t", lease=0, worker="w"), "lease"),
        (worker_pb2.ClaimTaskRequest(task_id="t", lease=1, worker=""), "worker"),
    ],
)
def test_bad_requests_name_the_field(
    system: System, request_: worker_pb2.ClaimTaskRequest, field: str
) -> None:
    _, hsc, _ = system
    with pytest.raises(grpc.RpcError) as caught:
        hsc.ClaimTask(request_)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert field in caught.value.details()  # type: ignore[attr-defined]


def test_health_is_serving(system: System) -> None:
    _, _, channel = system
    health = health_pb2_grpc.HealthStub(channel)
    response = health.Check(
        health_pb2.HealthCheckRequest(service="atf.v1.HeartbeatStatus"), timeout=5
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING
