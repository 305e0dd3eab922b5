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
from atf_es.events import CancelTask, LambdaPolicy, ScheduleTask
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
