"""The Frontend and the client SDK over real gRPC, with a real processor behind them."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from confluent_kafka import TopicPartition
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from atf_es import kafka_clients
from atf_es.client import (
    AlreadyExists,
    AsyncClient,
    Client,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    TaskNotFound,
    TaskRequest,
    Unavailable,
    UnknownLambda,
)
from atf_es.clock import now_ms
from atf_es.config import Settings
from atf_es.events import LambdaPolicy, TaskScheduled, TaskStatus
from atf_es.events.codec import decode_event
from atf_es.services.control import ControlView
from atf_es.services.frontend import RETRY_AFTER_KEY, frontend_server, idempotent_task_id
from atf_es.services.gateway import CommandGateway
from atf_es.services.grpc_server import GrpcServer
from atf_es.services.processor import Processor
from atf_es.topics import Topics
from tests.helpers import wait_for
from tests.kafka_harness import prepare

pytestmark = pytest.mark.integration

EMAIL = LambdaPolicy(name="send_email", priorities=3, max_payload_bytes=1024)


@dataclass
class System:
    settings: Settings
    server: GrpcServer
    address: str
    client: Client


def _stop_all(*stoppers: Any) -> None:
    for stop in stoppers:
        stop()


@pytest.fixture
def small(settings: Settings) -> Settings:
    prepared = replace(settings, partitions=2)
    prepare(prepared, EMAIL)
    return prepared


@pytest.fixture
def frontend(small: Settings) -> Iterator[System]:
    """A Frontend on the live broker, without a processor (enough for validation)."""
    assert small.kafka_bootstrap is not None
    gateway = CommandGateway(small, small.kafka_bootstrap)
    control = ControlView(small, small.kafka_bootstrap)
    server = frontend_server(gateway, control, "127.0.0.1:0")
    server.start()
    address = f"127.0.0.1:{server.port}"
    client = Client(address, timeout=15)
    try:
        yield System(small, server, address, client)
    finally:
        _stop_all(client.close, client.close, server.stop, gateway.close, control.close)


@pytest.fixture
def system(frontend: System) -> Iterator[System]:
    """The Frontend with a processor behind it."""
    settings = frontend.settings
    assert settings.kafka_bootstrap is not None
    processor = Processor(settings, settings.kafka_bootstrap, instance_id="frontend-test")
    processor.start()
    try:
        assert processor.ready.wait(30)
        yield frontend
    finally:
        processor.stop()


def scheduled_events(settings: Settings, task_id: str) -> list[TaskScheduled]:
    """Every TaskScheduled recorded for ``task_id`` so far: reads the events topic to its end."""
    assert settings.kafka_bootstrap is not None
    topic = Topics(settings.topic_prefix).task_events
    consumer = kafka_clients.consumer(settings.kafka_bootstrap, kafka_config=settings.kafka_config)
    try:
        partitions = [TopicPartition(topic, p, 0) for p in range(settings.partitions)]
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in partitions}
        consumer.assign(partitions)
        found: list[TaskScheduled] = []
        deadline = time.monotonic() + 20
        while any(
            consumer.position([TopicPartition(topic, p)])[0].offset < end
            for p, end in ends.items()
            if end > 0
        ):
            assert time.monotonic() < deadline, "could not read the events topic to its end"
            for message in kafka_clients.consume(consumer, 1000, 0.1):
                value = message.value()
                if message.error() is not None or value is None:
                    continue
                event, _ = decode_event(value)
                if isinstance(event, TaskScheduled) and event.task_id == task_id:
                    found.append(event)
        return found
    finally:
        consumer.close()


def test_a_task_is_readable_right_after_schedule_returns(system: System) -> None:
    before = now_ms()
    task_id = system.client.schedule("send_email", b"hello", collection="welcome", priority=2)
    info = system.client.get(task_id, include_payload=True)
    assert info.task_id == task_id
    assert info.status is TaskStatus.ENQUEUED
    assert (info.lambda_name, info.collection, info.priority) == ("send_email", "welcome", 2)
    assert info.payload == b"hello"
    assert info.lease == 1 and info.attempts == 0
    assert info.created_at_ms >= before and info.enqueued_at_ms is not None
    assert info.finished_at_ms is None and info.result is None and info.last_error is None
    assert system.client.get(task_id).payload is None, "payload only when asked for"


def test_a_delayed_task_waits_as_new_with_its_scheduled_time(system: System) -> None:
    before = now_ms()
    delayed = system.client.schedule("send_email", delay=timedelta(hours=1))
    info = system.client.get(delayed)
    assert info.status is TaskStatus.NEW
    assert before + 3_600_000 <= info.scheduled_at_ms <= now_ms() + 3_600_000
    assert info.next_trigger_at_ms == info.scheduled_at_ms

    at = datetime.now(UTC) + timedelta(days=1)
    absolute = system.client.schedule("send_email", run_at=at)
    assert system.client.get(absolute).scheduled_at_ms == round(at.timestamp() * 1000)


def test_the_same_idempotency_key_schedules_one_task(system: System) -> None:
    key = f"order-{uuid.uuid4().hex}"
    first = system.client.schedule("send_email", b"receipt", idempotency_key=key)
    second = system.client.schedule("send_email", b"receipt", idempotency_key=key)
    assert first == second == idempotent_task_id("send_email", key)
    assert system.client.get(first).idempotency_key == key
    assert len(scheduled_events(system.settings, first)) == 1


def test_the_schedule_response_says_whether_it_created_the_task(system: System) -> None:
    from atf_es._proto.atf.v1 import frontend_pb2, frontend_pb2_grpc

    with grpc.insecure_channel(system.address) as channel:
        stub = frontend_pb2_grpc.FrontendStub(channel)
        spec = frontend_pb2.TaskSpec(lambda_name="send_email", idempotency_key="k-created")
        first = stub.Schedule(frontend_pb2.ScheduleRequest(spec=spec), timeout=15)
        again = stub.Schedule(frontend_pb2.ScheduleRequest(spec=spec), timeout=15)
    assert (first.created, again.created) == (True, False)
    assert first.task_id == again.task_id == first.task.task_id


def test_the_same_key_with_different_content_is_refused(system: System) -> None:
    key = f"order-{uuid.uuid4().hex}"
    system.client.schedule("send_email", b"one", idempotency_key=key)
    with pytest.raises(AlreadyExists, match="different content"):
        system.client.schedule("send_email", b"two", idempotency_key=key)


def test_a_caller_chosen_task_id_is_idempotent_too(system: System) -> None:
    task_id = f"mine-{uuid.uuid4().hex}"
    assert system.client.schedule("send_email", b"x", task_id=task_id) == task_id
    assert system.client.schedule("send_email", b"x", task_id=task_id) == task_id
    with pytest.raises(AlreadyExists, match=task_id):
        system.client.schedule("send_email", b"y", task_id=task_id)
    assert len(scheduled_events(system.settings, task_id)) == 1


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"lambda_name": ""}, "lambda_name"),
        ({"lambda_name": "bad name!"}, "lambda_name"),
        ({"lambda_name": "x" * 101}, "lambda_name"),
        ({"collection": "no spaces"}, "collection"),
        ({"priority": 3}, "priority"),
        ({"priority": -1}, "priority"),
        ({"payload": b"x" * 1025}, "payload"),
        ({"run_at": -5}, "run_at_ms"),
        ({"delay": -1.0}, "delay_ms"),
        ({"idempotency_key": "k" * 201}, "idempotency_key"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"task_id": ""}, "task_id"),
        ({"task_id": "t" * 201}, "task_id"),
        ({"task_id": "line\nbreak"}, "task_id"),
    ],
)
def test_invalid_input_names_the_field(
    frontend: System, arguments: dict[str, Any], field: str
) -> None:
    given = {"lambda_name": "send_email", **arguments}
    with pytest.raises(InvalidArgument) as caught:
        frontend.client.schedule(given.pop("lambda_name"), **given)
    assert field in caught.value.message


def test_a_naive_datetime_is_refused_before_sending(frontend: System) -> None:
    with pytest.raises(InvalidArgument, match="timezone-aware"):
        frontend.client.schedule("send_email", run_at=datetime(2030, 1, 1))


def test_an_unknown_lambda_is_not_found(frontend: System) -> None:
    with pytest.raises(UnknownLambda, match="'no_such_lambda' is not defined"):
        frontend.client.schedule("no_such_lambda")


def test_a_lambda_defined_after_start_is_found(system: System) -> None:
    prepare(system.settings, LambdaPolicy(name="late_comer"))
    task_id = system.client.schedule("late_comer")
    assert system.client.get(task_id).status is TaskStatus.ENQUEUED


def test_cancel_a_waiting_task(system: System) -> None:
    task_id = system.client.schedule("send_email", delay=3600)
    info = system.client.cancel(task_id, reason="not needed", requested_by="alice")
    assert info.status is TaskStatus.CANCELLED and info.finished_at_ms is not None
    assert system.client.get(task_id).status is TaskStatus.CANCELLED
    assert system.client.wait(task_id, timeout=5).status is TaskStatus.CANCELLED
    # Cancelling twice is harmless; the task stays cancelled.
    assert system.client.cancel(task_id).status is TaskStatus.CANCELLED


def test_cancel_refuses_unknown_and_finished_tasks(system: System) -> None:
    with pytest.raises(TaskNotFound, match="no-such-task"):
        system.client.cancel("no-such-task")
    gateway = CommandGateway(system.settings, system.settings.kafka_bootstrap or "")
    try:
        from atf_es.events import ClaimTask, Outcome, SetResult

        task_id = system.client.schedule("send_email")
        gateway.send(ClaimTask(uuid.uuid4().hex, task_id, 1, "w1"))
        gateway.send(SetResult(uuid.uuid4().hex, task_id, 1, "w1", Outcome.SUCCESS, None, b"ok"))
    finally:
        gateway.close()
    done = system.client.wait(task_id, timeout=10)
    assert done.status is TaskStatus.SUCCESS and done.result == b"ok" and done.attempts == 1
    with pytest.raises(FailedPrecondition, match="it is success"):
        system.client.cancel(task_id)


def test_get_an_unknown_task(system: System) -> None:
    with pytest.raises(TaskNotFound, match="no task 'nobody'"):
        system.client.get("nobody")
    with pytest.raises(InvalidArgument, match="task_id"):
        system.client.get("")


def test_wait_times_out_with_the_last_status(system: System) -> None:
    task_id = system.client.schedule("send_email", delay=3600)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="last status was new"):
        system.client.wait(task_id, timeout=0.3)
    assert time.monotonic() - started < 5


def test_a_batch_of_200(system: System) -> None:
    requests = [TaskRequest("send_email", f"{i}".encode(), priority=i % 3) for i in range(200)]
    keyed = TaskRequest("send_email", b"k", idempotency_key="batch-key")
    bad = TaskRequest("send_email", priority=7)
    unknown = TaskRequest("ghost")
    outcomes = system.client.schedule_many([*requests, keyed, keyed, bad, unknown])
    assert len(outcomes) == 204
    assert all(o.ok and o.created for o in outcomes[:200]), outcomes[:3]
    assert len({o.task_id for o in outcomes[:200]}) == 200
    assert outcomes[200].ok and outcomes[201].ok
    assert outcomes[200].task_id == outcomes[201].task_id
    assert [outcomes[200].created, outcomes[201].created] == [True, False]
    assert isinstance(outcomes[202].error, InvalidArgument)
    assert "specs[202].priority" in outcomes[202].error.message
    assert isinstance(outcomes[203].error, UnknownLambda)
    infos = [system.client.get(o.task_id) for o in outcomes[:200:20]]
    assert all(i.status is TaskStatus.ENQUEUED for i in infos)


def test_a_lambda_over_its_quota_is_resource_exhausted_with_a_retry_hint(system: System) -> None:
    # One token every 4 s: the checks below take far less, so none comes back meanwhile.
    prepare(system.settings, LambdaPolicy("metered", schedule_rate=0.25, schedule_burst=3))
    client = system.client
    admitted = [client.schedule("metered") for _ in range(3)]
    with pytest.raises(ResourceExhausted, match="over its scheduling quota") as refused:
        client.schedule("metered", idempotency_key="refused-key")
    assert refused.value.retry_after is not None
    assert 0 < refused.value.retry_after <= 4.0
    # Nothing was recorded for the refused task; the admitted ones are there.
    with pytest.raises(TaskNotFound):
        client.get(idempotent_task_id("metered", "refused-key"))
    assert all(client.get(t).status is TaskStatus.ENQUEUED for t in admitted)
    # Another lambda is not held back by this one's quota.
    assert client.get(client.schedule("send_email")).status is TaskStatus.ENQUEUED

    # The raw status and trailing metadata, as a non-Python client sees them.
    from atf_es._proto.atf.v1 import frontend_pb2, frontend_pb2_grpc

    with grpc.insecure_channel(system.address) as channel:
        stub = frontend_pb2_grpc.FrontendStub(channel)
        spec = frontend_pb2.TaskSpec(lambda_name="metered")
        with pytest.raises(grpc.RpcError) as raw:
            stub.Schedule(frontend_pb2.ScheduleRequest(spec=spec), timeout=10)
    assert raw.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    trailers = dict(raw.value.trailing_metadata())  # type: ignore[attr-defined]
    assert 0 < int(trailers[RETRY_AFTER_KEY]) <= 4000

    # Waiting as told is enough.
    def admitted_again() -> str | None:
        try:
            return client.schedule("metered")
        except ResourceExhausted:
            return None

    assert wait_for(admitted_again, 10, "a task of 'metered' admitted again", interval=0.1)


def test_a_batch_over_the_quota_admits_what_fits(system: System) -> None:
    prepare(system.settings, LambdaPolicy("metered_batch", schedule_rate=0.5, schedule_burst=4))
    outcomes = system.client.schedule_many(
        [TaskRequest("metered_batch", f"{i}".encode()) for i in range(6)]
        + [TaskRequest("send_email"), TaskRequest("metered_batch", priority=9)]
    )
    assert [o.ok for o in outcomes] == [True] * 4 + [False, False, True, False]
    for over in outcomes[4:6]:
        assert isinstance(over.error, ResourceExhausted), over
        assert over.error.retry_after is not None and 0 < over.error.retry_after <= 4.001
        with pytest.raises(TaskNotFound):
            system.client.get(over.task_id)
    # The second refused task needs one more token (2 s at 0.5/s) than the first.
    first, second = (o.error.retry_after for o in outcomes[4:6])  # type: ignore[union-attr]
    assert first is not None and second is not None and second - first == pytest.approx(2.0)
    # An invalid spec is refused as invalid, taking no token.
    assert isinstance(outcomes[7].error, InvalidArgument)


def test_the_async_client(system: System) -> None:
    async def scenario() -> None:
        async with AsyncClient(system.address, timeout=15) as atf:
            task_id = await atf.schedule("send_email", b"async", delay=60)
            info = await atf.get(task_id)
            assert info.status is TaskStatus.NEW
            outcomes = await atf.schedule_many([TaskRequest("send_email")] * 3)
            assert all(o.ok for o in outcomes)
            cancelled = await atf.cancel(task_id, "done with it")
            assert cancelled.status is TaskStatus.CANCELLED
            assert (await atf.wait(task_id, timeout=5)).status is TaskStatus.CANCELLED
            with pytest.raises(TaskNotFound):
                await atf.get("nobody")
            with pytest.raises(UnknownLambda):
                await atf.schedule("ghost")

    asyncio.run(scenario())


def test_history_and_watch_refuse_bad_requests_with_a_sentence(frontend: System) -> None:
    from atf_es._proto.atf.v1 import frontend_pb2, frontend_pb2_grpc

    with grpc.insecure_channel(frontend.address) as channel:
        stub = frontend_pb2_grpc.FrontendStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.History(frontend_pb2.HistoryRequest(task_id="never-scheduled"), timeout=10)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND
        assert "no history for task 'never-scheduled'" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Watch(frontend_pb2.WatchRequest(from_start=True, from_ms=5), timeout=10))
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "from_start or from_ms" in caught.value.details()


def test_health_and_reflection(frontend: System) -> None:
    with grpc.insecure_channel(frontend.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        response = health.Check(health_pb2.HealthCheckRequest(service="atf.v1.Frontend"), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert "atf.v1.Frontend" in services


def _dead_port() -> int:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port: int = closed.getsockname()[1]
    closed.close()  # nothing listens there: the outage
    return port


@pytest.mark.parametrize("keyed", [False, True])
def test_a_broker_outage_is_unavailable_not_a_hang(small: Settings, keyed: bool) -> None:
    assert small.kafka_bootstrap is not None
    # The lambda definitions come from the live broker; the commands go nowhere.
    control = ControlView(small, small.kafka_bootstrap)
    gateway = CommandGateway(small, f"127.0.0.1:{_dead_port()}")
    server = frontend_server(gateway, control, "127.0.0.1:0")
    server.start()
    client = Client(f"127.0.0.1:{server.port}", timeout=3)
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="Kafka") as caught:
            client.schedule("send_email", idempotency_key="k" if keyed else None)
        # A hang check, not a speed goal: the call ends near the client's timeout.
        assert time.monotonic() - started < 10
        assert type(caught.value) is Unavailable, "the server answered before the deadline"
        started = time.monotonic()
        with pytest.raises(Unavailable):
            client.get("any")
        assert time.monotonic() - started < 10
        outcomes_started = time.monotonic()
        with pytest.raises(Unavailable):
            client.schedule_many([TaskRequest("send_email")] * 5)
        assert time.monotonic() - outcomes_started < 10
    finally:
        _stop_all(client.close, server.stop, gateway.close, control.close)


def test_no_processor_is_unavailable(frontend: System) -> None:
    client = Client(frontend.address, timeout=5)
    try:
        # Without a key the task is accepted once durable: a processor will record it later.
        assert client.schedule("send_email")
        started = time.monotonic()
        with pytest.raises(Unavailable, match="no processor answered"):
            client.get("any")
        assert time.monotonic() - started < 10
    finally:
        client.close()


def test_unreadable_lambda_definitions_are_unavailable_not_a_hang(small: Settings) -> None:
    dead = replace(small, kafka_bootstrap=f"127.0.0.1:{_dead_port()}")
    assert dead.kafka_bootstrap is not None
    control = ControlView(dead, dead.kafka_bootstrap)
    gateway = CommandGateway(dead, dead.kafka_bootstrap)
    server = frontend_server(gateway, control, "127.0.0.1:0")
    server.start()
    client = Client(f"127.0.0.1:{server.port}", timeout=3)
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="lambda definitions"):
            client.schedule("send_email")
        assert time.monotonic() - started < 10
    finally:
        _stop_all(client.close, server.stop, gateway.close, control.close)
