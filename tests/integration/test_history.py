"""A task's history over gRPC and the CLI, read from the real task-events topic.

The acceptance case: a task that fails twice and then succeeds shows every
transition, in order, with its cause, lease, worker, error and timings; and
``GetTask`` as of a time between two transitions shows the state then.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from atf_es import kafka_clients
from atf_es.app import App, RetriableError, TaskContext
from atf_es.cli import main
from atf_es.client import Client, HistoryEntry, TaskNotFound
from atf_es.clock import now_ms
from atf_es.config import Settings
from atf_es.events import TaskStatus
from atf_es.history import murmur2, partition_of
from atf_es.services.control import ControlView
from atf_es.services.controller import Controller
from atf_es.services.executor import Executor
from atf_es.services.frontend import frontend_server
from atf_es.services.gateway import CommandGateway
from atf_es.services.hsc import hsc_server
from atf_es.services.processor import Processor
from atf_es.topics import Topics
from tests.kafka_harness import prepare

pytestmark = pytest.mark.integration

FAST: dict[str, Any] = {
    "heartbeat_interval_ms": 400,
    "heartbeat_timeout_ms": 2_500,
    "heartbeat_margin_ms": 600,
    "backoff_base_ms": 200,
    "backoff_max_ms": 1_000,
    "backoff_jitter": 0.0,
    "max_attempts": 5,
}


def make_app() -> App:
    app = App("history-test")

    @app.lambda_("twice", **FAST)
    def twice(task: TaskContext) -> str:
        if task.attempt < 2:
            raise RetriableError(f"not yet ({task.attempt})")
        return "third time lucky"

    return app


@dataclass
class Deployment:
    settings: Settings
    client: Client
    frontend: str


@pytest.fixture
def deployment(settings: Settings) -> Iterator[Deployment]:
    small = replace(settings, partitions=3)
    app = make_app()
    prepare(small, *(policy for policy, _ in app.lambdas.values()))
    bootstrap = small.kafka_bootstrap
    assert bootstrap is not None
    processor = Processor(small, bootstrap, instance_id="history")
    gateway = CommandGateway(small, bootstrap)
    hsc = hsc_server(gateway, "127.0.0.1:0")
    control = ControlView(small, bootstrap)
    frontend = frontend_server(gateway, control, "127.0.0.1:0")
    controller: Controller | None = None
    executor: Executor | None = None
    try:
        processor.start()
        hsc.start()
        frontend.start()
        controller = Controller(
            small, bootstrap, list(app.lambdas), f"127.0.0.1:{hsc.port}", controller_id="history"
        )
        controller.start()
        assert processor.ready.wait(30) and controller.ready.wait(30)
        executor = Executor(
            app, "twice", f"127.0.0.1:{controller.port}", f"127.0.0.1:{hsc.port}", threads=1
        )
        executor.start()
        address = f"127.0.0.1:{frontend.port}"
        with Client(address, timeout=20) as client:
            yield Deployment(small, client, address)
    finally:
        if executor is not None:
            executor.stop(grace=2)
        if controller is not None:
            controller.stop()
        frontend.stop()
        control.close()
        hsc.stop()
        gateway.close()
        processor.stop()


def _without_heartbeats(entries: list[HistoryEntry]) -> list[HistoryEntry]:
    return [e for e in entries if e.kind != "HEARTBEAT_RECORDED"]


def test_a_task_retried_twice_then_succeeding_shows_every_transition(
    deployment: Deployment,
) -> None:
    atf = deployment.client
    task_id = atf.schedule("twice", b"x")
    assert atf.wait(task_id, timeout=60).status is TaskStatus.SUCCESS
    entries = atf.history(task_id)
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    main_line = _without_heartbeats(entries)
    attempt = [
        ("TASK_ENQUEUED", "timer", TaskStatus.ENQUEUED),
        ("TASK_CLAIMED", "command", TaskStatus.CLAIMED),
        ("TASK_STARTED", "command", TaskStatus.PROCESSING),
    ]
    failed = ("TASK_FAILED", "command", TaskStatus.RETRIABLE_FAILURE)
    expected = [
        ("TASK_SCHEDULED", "command", TaskStatus.NEW),
        *attempt,
        failed,
        *attempt,
        failed,
        *attempt,
        ("TASK_SUCCEEDED", "command", TaskStatus.SUCCESS),
    ]
    assert [(e.kind, e.cause, e.status) for e in main_line] == expected

    names = [e.cause_name for e in main_line]
    assert names[0] == "ScheduleTask" and names[-1] == "SetResult"
    assert [names[i] for i in (1, 5, 9)] == ["due", "retry_due", "retry_due"]
    # The executor asks for its work started: one ClaimTask claims and starts it.
    assert [names[i] for i in (2, 3, 4)] == ["ClaimTask", "ClaimTask", "SetResult"]
    assert main_line[2].command_id == main_line[3].command_id
    assert all(e.command_id for e in main_line if e.cause == "command")
    assert all(e.command_id is None for e in main_line if e.cause == "timer")

    enqueues = [e for e in main_line if e.kind == "TASK_ENQUEUED"]
    assert [e.lease for e in enqueues] == [1, 2, 3]
    claims = [e for e in main_line if e.kind == "TASK_CLAIMED"]
    assert [c.lease for c in claims] == [1, 2, 3]
    assert all(c.worker for c in claims)
    failures = [e for e in main_line if e.kind == "TASK_FAILED"]
    assert [f.error for f in failures] == [
        "RetriableError: not yet (0)",
        "RetriableError: not yet (1)",
    ]
    # Timings: each entry's delay is the gap to the one before, and a retry is
    # enqueued no earlier than its backoff allowed.
    for before, after in itertools.pairwise(entries):
        assert after.since_previous_ms == after.at_ms - before.at_ms >= 0
    for failure, retry in ((main_line[4], main_line[5]), (main_line[8], main_line[9])):
        assert failure.retry_at_ms is not None and retry.at_ms >= failure.retry_at_ms

    # The state as of a moment between the first failure and its retry.
    between = (main_line[4].at_ms + main_line[5].at_ms) // 2
    if main_line[5].at_ms > main_line[4].at_ms:
        then = atf.get(task_id, as_of=between)
        assert then.status is TaskStatus.RETRIABLE_FAILURE
        assert then.attempts == 1 and then.last_error == "RetriableError: not yet (0)"
    # A run-now task is enqueued in the batch that records it: at the same time.
    first = atf.get(task_id, as_of=main_line[0].at_ms)
    assert main_line[1].at_ms == main_line[0].at_ms
    assert first.status is TaskStatus.ENQUEUED and first.attempts == 0 and first.lease == 1
    with pytest.raises(TaskNotFound):
        atf.get(task_id, as_of=main_line[0].at_ms - 1)


def test_the_cli_prints_the_history_and_a_past_state(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    atf = deployment.client
    task_id = atf.schedule("twice")
    assert atf.wait(task_id, timeout=60).status is TaskStatus.SUCCESS
    assert main(["history", task_id, "--frontend", deployment.frontend]) == 0
    text = capsys.readouterr().out
    assert f"task {task_id}:" in text
    assert "task_failed" in text and "error=RetriableError: not yet (1)" in text
    assert "timer: retry_due" in text and "task_succeeded" in text

    assert main(["history", task_id, "--json", "--frontend", deployment.frontend]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["kind"] == "TASK_SCHEDULED" and rows[-1]["status"] == "success"

    at = rows[0]["at_ms"]
    assert main(["status", task_id, "--as-of", str(at), "--frontend", deployment.frontend]) == 0
    assert "status: enqueued" in capsys.readouterr().out
    bad = main(["status", task_id, "--as-of", "yesterday", "--frontend", deployment.frontend])
    assert bad == 2
    assert "is not a time" in capsys.readouterr().err
    assert main(["history", "no-such-task", "--frontend", deployment.frontend]) == 1
    assert "no history for task 'no-such-task'" in capsys.readouterr().err


def test_partition_of_places_keys_where_the_producer_does(settings: Settings) -> None:
    """Our murmur2 against librdkafka's murmur2_random on a real topic."""
    small = replace(settings, partitions=7)
    prepare(small)
    assert small.kafka_bootstrap is not None
    producer = kafka_clients.producer(small.kafka_bootstrap, small.kafka_config)
    placed: dict[str, int] = {}
    lock = threading.Lock()
    rng = random.Random(3)
    keys = [f"{rng.random():.17f}-{i}-é" for i in range(300)]

    def delivered(error: object, message: Any) -> None:
        assert error is None, error
        with lock:
            placed[message.key().decode()] = message.partition()

    for key in keys:
        producer.produce(
            Topics(small.topic_prefix).commands, b"x", key.encode(), on_delivery=delivered
        )
    assert producer.flush(30) == 0
    assert {key: partition_of(key, 7) for key in keys} == placed
    assert len(set(placed.values())) == 7


@pytest.mark.filterwarnings("ignore:(read_text|open_text) is deprecated:DeprecationWarning")
def test_murmur2_matches_an_independent_implementation() -> None:
    from kafka.partitioner.default import murmur2 as kafka_python_murmur2

    rng = random.Random(5)
    for _ in range(5_000):
        data = rng.randbytes(rng.randint(0, 64))
        assert murmur2(data) & 0x7FFFFFFF == kafka_python_murmur2(data) & 0x7FFFFFFF


def test_an_id_reused_after_its_tombstone_shows_only_its_new_life(settings: Settings) -> None:
    from atf_es.events import Cause, TaskCancelled, TaskScheduled, evolve
    from atf_es.events.codec import encode_event
    from atf_es.history import read_task_events

    small = replace(settings, partitions=2)
    prepare(small)
    bootstrap = small.kafka_bootstrap
    assert bootstrap is not None
    topic = Topics(small.topic_prefix).task_events
    partition = partition_of("reused", 2)
    producer = kafka_clients.producer(bootstrap, small.kafka_config)

    def life(at: int, payload: bytes, cancel: bool) -> None:
        scheduled = TaskScheduled(
            "reused", 1, at, Cause.command("ScheduleTask", f"c{at}"), "l", "c", 0, payload, at, None
        )
        task = evolve(None, scheduled)
        producer.produce(topic, encode_event(scheduled, task), b"reused", partition)
        if cancel:
            cancelled = TaskCancelled(
                "reused", 2, at + 1, Cause.command("CancelTask", "x"), "t", ""
            )
            producer.produce(
                topic, encode_event(cancelled, evolve(task, cancelled)), b"reused", partition
            )

    life(1_000, b"first", cancel=True)
    producer.produce(topic, None, b"reused", partition)  # the first life's retention ran out
    life(5_000, b"second", cancel=False)
    assert producer.flush(30) == 0
    recorded = read_task_events(small, bootstrap, "reused")
    assert [(r.event.seq, r.task.payload) for r in recorded] == [(1, b"second")]
    assert [r.task.payload for r in read_task_events(small, bootstrap, "reused", until=1_500)] == [
        b"first",
        b"first",
    ]


def test_watch_follows_one_task_to_its_end_and_filters_a_live_stream(
    deployment: Deployment,
) -> None:
    import grpc

    from atf_es._proto.atf.v1 import common_pb2, frontend_pb2, frontend_pb2_grpc

    atf = deployment.client
    task_id = atf.schedule("twice")
    with grpc.insecure_channel(deployment.frontend) as channel:
        stub = frontend_pb2_grpc.FrontendStub(channel)
        # One task, from its start: the stream ends after the terminal transition.
        one = list(
            stub.Watch(frontend_pb2.WatchRequest(task_id=task_id, from_start=True), timeout=60)
        )
        assert [m.entry.seq for m in one] == list(range(1, len(one) + 1))
        assert one[-1].task.status == common_pb2.TASK_STATUS_SUCCESS
        history = atf.history(task_id)
        assert [common_pb2.EventKind.Name(m.entry.kind) for m in one] == [
            f"EVENT_KIND_{h.kind}" for h in history
        ]

        # Every task of the lambda, only successes, from a time: three new tasks,
        # three messages (from_ms, not "latest", so that nothing races the stream).
        live = stub.Watch(
            frontend_pb2.WatchRequest(
                lambdas=["twice"], statuses=[common_pb2.TASK_STATUS_SUCCESS], from_ms=now_ms()
            ),
            timeout=90,
        )
        scheduled = {atf.schedule("twice") for _ in range(3)}
        got = [next(live) for _ in range(3)]
        live.cancel()
        assert {m.task.task_id for m in got} == scheduled
        assert {m.task.status for m in got} == {common_pb2.TASK_STATUS_SUCCESS}
        assert all(m.entry.kind == common_pb2.EVENT_KIND_TASK_SUCCEEDED for m in got)

        with pytest.raises(grpc.RpcError) as refused:
            list(
                stub.Watch(
                    frontend_pb2.WatchRequest(task_id="x", from_start=True, from_ms=1), timeout=10
                )
            )
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
