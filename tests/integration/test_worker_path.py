"""The worker path end to end: processor, HSC, controller and executor, all real.

A task scheduled through the command gateway is enqueued by a real processor
on a real broker, buffered and claimed by a real controller over gRPC, and
run by an in-process executor whose outcome goes back through the HSC. Only
``on_heartbeats_lost`` is replaced (by a recorder), so the test process
survives what would end an executor process.
"""

from __future__ import annotations

import logging
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from atf_es._proto.atf.v1 import worker_pb2, worker_pb2_grpc
from atf_es.app import App, FatalError, RetriableError, TaskContext
from atf_es.clock import now_ms
from atf_es.config import Settings
from atf_es.events import CancelTask, QueryTask, ScheduleTask, Task, TaskStatus
from atf_es.events.replies import Reply
from atf_es.history import read_task_events
from atf_es.services.controller import Controller
from atf_es.services.executor import EXIT_HEARTBEAT_LOST, Executor
from atf_es.services.gateway import CommandGateway
from atf_es.services.grpc_server import GrpcServer
from atf_es.services.hsc import HeartbeatStatusService, hsc_server
from atf_es.services.processor import Processor
from tests.helpers import wait_for
from tests.kafka_harness import prepare

pytestmark = pytest.mark.integration

# 3 x 400 ms + 600 ms = 1800 ms < 2500 ms; heartbeat RPC deadline 200 ms.
FAST: dict[str, Any] = {
    "heartbeat_interval_ms": 400,
    "heartbeat_timeout_ms": 2_500,
    "heartbeat_margin_ms": 600,
    "backoff_base_ms": 100,
    "backoff_max_ms": 500,
    "claim_timeout_ms": 5_000,
}


@dataclass
class Recorder:
    """What the test app's callbacks saw."""

    order: list[int] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    saw_cancel: threading.Event = field(default_factory=threading.Event)
    attempts: list[int] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    runs: list[str] = field(default_factory=list)


def make_app(recorder: Recorder) -> App:
    app = App("worker-path-test")

    @app.lambda_("ok", **FAST)
    def ok(task: TaskContext) -> bytes:
        return b"done:" + task.payload

    @app.lambda_("flaky", **FAST)
    def flaky(task: TaskContext) -> str:
        recorder.attempts.append(task.attempt)
        if task.attempt < 1:
            raise RetriableError("not yet")
        return f"ok on attempt {task.attempt}"

    @app.lambda_("fatal", **FAST)
    def fatal(task: TaskContext) -> None:
        raise FatalError(f"cannot handle {task.payload.decode()}")

    @app.lambda_("failing", **{**FAST, "max_attempts": 2})
    def failing(task: TaskContext) -> None:
        raise RetriableError(f"broken on attempt {task.attempt}")

    @app.lambda_("requeued", **{**FAST, "enqueue_timeout_ms": 1_500})
    def requeued(task: TaskContext) -> None:
        return None

    @app.lambda_("ordered", priorities=3, **FAST)
    def ordered(task: TaskContext) -> None:
        recorder.order.append(task.priority)

    @app.lambda_("steady", **FAST)
    def steady(task: TaskContext) -> str:
        recorder.started.set()
        recorder.release.wait(30)
        return "released"

    def held(task: TaskContext) -> str:
        recorder.runs.append(task.task_id)
        if task.payload == b"block":
            recorder.started.set()
            recorder.release.wait(30)
        return "ran"

    app.lambda_("held", **FAST)(held)
    app.lambda_("held_briefly", **{**FAST, "claim_timeout_ms": 1_500})(held)

    @app.lambda_("looping", **FAST)
    def looping(task: TaskContext) -> str:
        recorder.started.set()
        while not task.cancelled.wait(0.02):
            pass
        recorder.saw_cancel.set()
        return "finished anyway"  # must not be recorded: the task was cancelled

    return app


@dataclass
class System:
    settings: Settings
    gateway: CommandGateway
    hsc: GrpcServer
    app: App
    recorder: Recorder
    controller: Controller = field(init=False)
    executors: list[Executor] = field(default_factory=list)
    controllers: list[Controller] = field(default_factory=list)
    unexpected_losses: list[TaskContext] = field(default_factory=list)

    @property
    def hsc_address(self) -> str:
        return f"127.0.0.1:{self.hsc.port}"

    def executor(self, lambda_name: str, **options: Any) -> Executor:
        # Never the real exit in-process: it would end the whole test session.
        executor = Executor(
            self.app,
            lambda_name,
            f"127.0.0.1:{self.controller.port}",
            self.hsc_address,
            **{
                "threads": 2,
                "wait_ms": 1_000,
                "on_heartbeats_lost": self.unexpected_losses.append,
                **options,
            },
        )
        self.executors.append(executor)
        executor.start()
        return executor

    def schedule(self, lambda_name: str, payload: bytes = b"", priority: int = 0) -> str:
        task_id = uuid.uuid4().hex
        reply = self.gateway.send(
            ScheduleTask(
                uuid.uuid4().hex, task_id, lambda_name, "default", priority, payload, now_ms()
            )
        )
        assert isinstance(reply, Reply) and reply.accepted, reply
        return task_id

    def task(self, task_id: str) -> Task:
        reply = self.gateway.send(QueryTask(uuid.uuid4().hex, task_id))
        assert isinstance(reply, Reply) and reply.task is not None, reply
        return reply.task

    def wait_status(self, task_id: str, status: TaskStatus, timeout: float = 20.0) -> Task:
        seen: list[Task] = []

        def reached() -> Task | None:
            task = self.task(task_id)
            seen[:] = [task]
            return task if task.status is status else None

        try:
            found = wait_for(reached, timeout, f"task {task_id} to be {status}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen: {seen}") from None
        assert found is not None
        return found

    def batch_of_two_blocked(self) -> tuple[Executor, str, str]:
        """Two ``held`` tasks that block, claimed in one NextWork by a one-thread
        executor: (the executor, the task running, the task waiting behind it)."""
        first, second = self.schedule("held", b"block"), self.schedule("held", b"block")
        wait_for(lambda: self.controller.buffered().get(("held", 0)) == 2, 20, "both buffered")
        # Not self.executor(): the estimate must be in place before the first NextWork.
        executor = Executor(
            self.app,
            "held",
            f"127.0.0.1:{self.controller.port}",
            self.hsc_address,
            threads=1,
            wait_ms=1_000,
            on_heartbeats_lost=self.unexpected_losses.append,
        )
        executor._run_estimate = 0.001  # as after short callbacks: it asks for several
        self.executors.append(executor)
        executor.start()
        assert self.recorder.started.wait(15), "the first task did not start"
        wait_for(lambda: executor.stats.batches == 1, 5, "the two to come in one answer")
        running = self.recorder.runs[0]
        return executor, running, second if running == first else first

    def start_controller(self, hsc_address: str | None = None, **options: Any) -> Controller:
        assert self.settings.kafka_bootstrap is not None
        controller = Controller(
            self.settings,
            self.settings.kafka_bootstrap,
            list(self.app.lambdas),
            hsc_address or self.hsc_address,
            **{"controller_id": "test-controller", **options},
        )
        self.controllers.append(controller)
        controller.start()
        assert controller.ready.wait(30), "the controller did not join its group"
        return controller


@pytest.fixture
def system(settings: Settings, request: pytest.FixtureRequest) -> Iterator[System]:
    """Processor, gateway, HSC and a controller; ``request.param`` may set
    ``app`` (default: the test app), ``settings`` fields and ``controller`` options."""
    options: dict[str, Any] = getattr(request, "param", {})
    small = replace(settings, partitions=2, **options.get("settings", {}))
    recorder = Recorder()
    app: App = options.get("app") or make_app(recorder)
    prepare(small, *(policy for policy, _ in app.lambdas.values()))
    assert small.kafka_bootstrap is not None
    processor = Processor(small, small.kafka_bootstrap, instance_id="worker-path")
    gateway = CommandGateway(small, small.kafka_bootstrap)
    hsc = hsc_server(gateway, "127.0.0.1:0")
    built = System(small, gateway, hsc, app, recorder)
    try:
        processor.start()
        hsc.start()
        built.controller = built.start_controller(**options.get("controller", {}))
        assert processor.ready.wait(30), "the processor did not join its group"
        yield built
        assert not built.unexpected_losses, "heartbeats were lost while the HSC was up"
    finally:
        for executor in built.executors:
            executor.stop(grace=2)
        for controller in built.controllers:
            controller.stop()
            controller.stop()
        hsc.stop()
        gateway.close()
        processor.stop()


def test_a_task_runs_and_succeeds_with_its_result(system: System) -> None:
    executor = system.executor("ok")
    task_id = system.schedule("ok", b"hello")
    task = system.wait_status(task_id, TaskStatus.SUCCESS)
    assert task.result == b"done:hello"
    assert task.attempts == 1
    assert task.worker is not None and task.worker.startswith(executor.worker_id)
    wait_for(lambda: executor.stats.succeeded == 1, 5, "the executor to count the success")
    assert executor.stats.heartbeat_failures == 0


def test_without_prefetch_the_claim_starts_the_task(system: System) -> None:
    """One processor round trip fewer per task: no start heartbeat."""
    system.executor("ok", threads=1)
    task_id = system.schedule("ok", b"x")
    system.wait_status(task_id, TaskStatus.SUCCESS)
    assert system.settings.kafka_bootstrap is not None
    recorded = read_task_events(system.settings, system.settings.kafka_bootstrap, task_id)
    # (A claim slower than a heartbeat deadline would add a heartbeat first.)
    kinds = [n for r in recorded if (n := type(r.event).__name__) != "HeartbeatRecorded"]
    assert kinds == ["TaskScheduled", "TaskEnqueued", "TaskClaimed", "TaskStarted", "TaskSucceeded"]
    claimed, started = recorded[2], recorded[3]
    # Both from the one ClaimTask, in one transaction.
    assert started.event.cause == claimed.event.cause
    assert started.event.cause.name == "ClaimTask"
    assert started.offset == claimed.offset + 1
    assert started.task.started_at == claimed.task.claimed_at


def test_a_started_claim_that_arrives_after_its_lease_was_handed_on_is_not_run(
    system: System,
) -> None:
    """A Controller paused between its claim and its answer: the heartbeat
    timeout hands the task on, and the late worker must not run it."""
    task_id = system.schedule("held")
    channel = grpc.insecure_channel(f"127.0.0.1:{system.controller.port}")
    try:
        answer = worker_pb2_grpc.ControllerStub(channel).NextWork(
            worker_pb2.NextWorkRequest(
                worker="late.0", max_tasks=1, wait_ms=10_000, lambda_names=["held"], start=True
            ),
            timeout=20,
        )
    finally:
        channel.close()
    assert answer.started and [i.task_id for i in answer.items] == [task_id]
    assert system.task(task_id).status is TaskStatus.PROCESSING
    # Nobody heartbeats: after heartbeat_timeout_ms it is enqueued on lease 2.
    wait_for(lambda: system.task(task_id).lease == 2, 20, "the heartbeat timeout to hand it on")
    executor = system.executor("held", threads=1)
    executor._run(answer.items[0], "late.0", answer.claimed_at_ms)  # its answer, arriving late
    assert executor.stats.not_started == 1, "the late worker's heartbeat was refused"
    assert system.wait_status(task_id, TaskStatus.SUCCESS).lease == 2
    assert system.recorder.runs == [task_id], "it ran once, on its new lease"


def test_a_thread_claims_short_tasks_several_at_a_time_and_the_claim_starts_them(
    system: System,
) -> None:
    """Batched claims: once the executor has seen that ``ok``'s callbacks are
    short, its one thread takes what waits in the Controller in one NextWork."""
    executor = system.executor("ok", threads=1)
    system.wait_status(system.schedule("ok", b"warm-up"), TaskStatus.SUCCESS)
    task_ids = [uuid.uuid4().hex for _ in range(12)]
    replies = system.gateway.send_many(
        [
            ScheduleTask(uuid.uuid4().hex, task_id, "ok", "default", 0, b"b", now_ms())
            for task_id in task_ids
        ],
        timeout=20,
    )
    assert all(isinstance(r, Reply) and r.accepted for r in replies), replies
    for task_id in task_ids:
        assert system.wait_status(task_id, TaskStatus.SUCCESS).attempts == 1
    assert executor.stats.batches >= 1, "every NextWork brought one task"
    assert executor.stats.not_started == 0
    assert system.settings.kafka_bootstrap is not None
    for task_id in task_ids:
        recorded = read_task_events(system.settings, system.settings.kafka_bootstrap, task_id)
        causes = {type(r.event).__name__: r.event.cause.name for r in recorded}
        assert (causes["TaskClaimed"], causes["TaskStarted"]) == ("ClaimTask", "ClaimTask")


def test_a_batched_task_reached_after_its_lease_was_handed_on_is_not_run(system: System) -> None:
    """Two tasks claimed started in one NextWork; the first runs past the
    heartbeat timeout, which hands the second (no heartbeats while it waits)
    on. The thread must not run the second on its old lease, only on the new."""
    executor, running, waiting = system.batch_of_two_blocked()
    wait_for(lambda: system.task(waiting).lease == 2, 20, "the heartbeat timeout to hand it on")
    system.recorder.release.set()
    assert system.wait_status(running, TaskStatus.SUCCESS).lease == 1
    assert system.wait_status(waiting, TaskStatus.SUCCESS).lease == 2
    assert system.recorder.runs == [running, waiting], "each ran once; the second on lease 2"
    assert executor.stats.not_started == 1, "its heartbeat on the old lease was refused"


def test_an_executor_stopped_mid_batch_starts_none_of_the_rest_after_its_grace(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    executor, running, waiting = system.batch_of_two_blocked()
    with caplog.at_level(logging.INFO, logger="atf_es.services.executor"):
        executor.stop(grace=0.2)
        system.recorder.release.set()  # the callback returns after the grace
        thread = executor._threads[0]
        wait_for(lambda: not thread.is_alive(), 10, "the worker thread to end")
    assert system.recorder.runs == [running], "nothing of the batch started after the grace"
    assert "1 claimed tasks not run" in caplog.text
    # Both come back after their heartbeat timeout (the first was cancelled
    # by the stop, so it was not reported), and run on new leases.
    system.executor("held", threads=1)
    assert system.wait_status(waiting, TaskStatus.SUCCESS).lease == 2
    assert system.wait_status(running, TaskStatus.SUCCESS).lease == 2
    assert system.recorder.runs.count(waiting) == 1


class _OlderHsc(HeartbeatStatusService):
    """An HSC from before ClaimTasks: the generated base answers UNIMPLEMENTED."""

    ClaimTasks = worker_pb2_grpc.HeartbeatStatusServicer.ClaimTasks


def test_a_controller_claims_one_by_one_through_an_hsc_without_claim_tasks(
    system: System,
) -> None:
    """A rolling upgrade that reached the Controller first loses nothing."""
    older = _OlderHsc(system.gateway)
    server = GrpcServer(
        "older-hsc",
        "127.0.0.1:0",
        [lambda s: worker_pb2_grpc.add_HeartbeatStatusServicer_to_server(older, s)],
        [worker_pb2.DESCRIPTOR.services_by_name["HeartbeatStatus"].full_name],
    )
    server.start()
    try:
        system.controller.stop()
        system.controller = system.start_controller(hsc_address=f"127.0.0.1:{server.port}")
        executor = system.executor("ok", threads=1)
        system.wait_status(system.schedule("ok", b"warm-up"), TaskStatus.SUCCESS)
        task_ids = [system.schedule("ok", b"b") for _ in range(6)]
        for task_id in task_ids:
            assert system.wait_status(task_id, TaskStatus.SUCCESS).attempts == 1
        assert system.controller.stats.discarded == 0
        assert executor.stats.not_started == 0
    finally:
        for executor in system.executors:
            executor.stop(grace=2)
        system.controller.stop()
        server.stop()


def test_a_retriable_error_is_retried_until_success(system: System) -> None:
    system.executor("flaky")
    task_id = system.schedule("flaky")
    task = system.wait_status(task_id, TaskStatus.SUCCESS)
    assert task.attempts == 2
    assert task.result == b"ok on attempt 1"
    assert system.recorder.attempts == [0, 1]


def test_a_fatal_error_ends_the_task_with_its_message(system: System) -> None:
    system.executor("fatal")
    task_id = system.schedule("fatal", b"this payload")
    task = system.wait_status(task_id, TaskStatus.FATAL_FAILURE)
    assert task.last_error == "FatalError: cannot handle this payload"
    assert task.attempts == 1


def test_a_task_failing_every_attempt_is_dead_lettered(system: System) -> None:
    executor = system.executor("failing")
    task_id = system.schedule("failing")
    task = system.wait_status(task_id, TaskStatus.DEAD_LETTERED)
    assert task.attempts == 2
    assert task.last_error == "RetriableError: broken on attempt 1"
    wait_for(lambda: executor.stats.failed == 2, 5, "two failed attempts to be reported")


def test_new_work_wakes_the_executor_that_can_take_it(system: System) -> None:
    # Condition.notify() wakes the longest waiter: with executors of other
    # lambdas waiting first, waking a single waiter would leave "ok" asleep
    # for its whole long poll (30 s here).
    for name in ("fatal", "failing", "flaky"):
        system.executor(name, threads=1, wait_ms=30_000)
    wait_for(lambda: system.controller.stats.waiting == 3, 20, "3 idle executors to wait")
    system.executor("ok", threads=1, wait_ms=30_000)
    wait_for(lambda: system.controller.stats.waiting == 4, 20, "the 4th idle executor to wait")
    task_id = system.schedule("ok")
    system.wait_status(task_id, TaskStatus.SUCCESS, timeout=15)


def test_with_prefetch_a_thread_claims_its_next_task_while_it_runs_one(system: System) -> None:
    executor = system.executor("held", threads=1, prefetch=True)
    running = system.schedule("held", b"block")
    assert system.recorder.started.wait(15), "the first task did not start"
    waiting = system.schedule("held")
    claimed = system.wait_status(waiting, TaskStatus.CLAIMED)
    assert claimed.worker == f"{executor.worker_id}.0"
    system.recorder.release.set()
    for task_id in (running, waiting):
        assert system.wait_status(task_id, TaskStatus.SUCCESS).attempts == 1
    assert system.recorder.runs == [running, waiting]
    assert executor.stats.not_started == 0
    # A prefetched task is claimed, not started, until its thread is free:
    # its first heartbeat starts it.
    assert system.settings.kafka_bootstrap is not None
    recorded = read_task_events(system.settings, system.settings.kafka_bootstrap, waiting)
    causes = {type(r.event).__name__: r.event.cause.name for r in recorded}
    assert (causes["TaskClaimed"], causes["TaskStarted"]) == ("ClaimTask", "Heartbeat")


def test_a_prefetched_claim_that_timed_out_is_not_run_on_its_old_lease(system: System) -> None:
    # The thread holds the second task's claim while the first runs past the
    # claim timeout: the task is enqueued again on a new lease, and the thread
    # must not start it on the old one (never concurrently), only on the new.
    executor = system.executor("held_briefly", threads=1, prefetch=True)
    running = system.schedule("held_briefly", b"block")
    assert system.recorder.started.wait(15), "the first task did not start"
    waiting = system.schedule("held_briefly")
    first = system.wait_status(waiting, TaskStatus.CLAIMED)
    wait_for(
        lambda: system.task(waiting).lease > first.lease,
        15,
        "the claim timeout to enqueue the prefetched task again",
    )
    system.recorder.release.set()
    assert system.wait_status(running, TaskStatus.SUCCESS).attempts == 1
    done = system.wait_status(waiting, TaskStatus.SUCCESS)
    assert done.lease > first.lease
    assert system.recorder.runs.count(waiting) == 1
    wait_for(lambda: executor.stats.not_started == 1, 10, "the stale claim to be let go")


def test_buffered_tasks_run_highest_priority_first(system: System) -> None:
    task_ids = [system.schedule("ordered", priority=p) for p in (0, 1, 2)]
    wait_for(
        lambda: all(system.controller.buffered()[("ordered", p)] == 1 for p in (0, 1, 2)),
        20,
        "the controller to buffer one task per priority",
    )
    system.executor("ordered", threads=1)
    for task_id in task_ids:
        system.wait_status(task_id, TaskStatus.SUCCESS)
    assert system.recorder.order == [2, 1, 0]


STRICT: dict[str, Any] = {"settings": {"priority_policy": "strict"}}
# Longer than any test, shorter than the lambdas' enqueue timeout (10 min).
LONG_AGING: dict[str, Any] = {
    "settings": {"priority_policy": "aging", "priority_aging_ms": 300_000}
}
SHORT_AGING_MS = 1_000


@pytest.mark.parametrize("system", [STRICT, LONG_AGING], indirect=True, ids=["strict", "aging"])
def test_a_mixed_backlog_runs_in_priority_order_on_one_thread(system: System) -> None:
    per_priority = 15
    priorities = [p for p in range(3) for _ in range(per_priority)]
    random.Random(11).shuffle(priorities)
    task_ids = [system.schedule("ordered", priority=p) for p in priorities]
    wait_for(
        lambda: all(system.controller.buffered()[("ordered", p)] == per_priority for p in range(3)),
        30,
        f"the controller to buffer all {len(task_ids)} tasks",
    )
    system.executor("ordered", threads=1)
    for task_id in task_ids:
        system.wait_status(task_id, TaskStatus.SUCCESS)
    assert system.recorder.order == sorted(priorities, reverse=True)
    stats = system.controller.stats
    assert (stats.claimed, stats.discarded, stats.aged) == (len(task_ids), 0, 0)


@pytest.mark.parametrize(
    "system",
    [STRICT, {"settings": {"priority_policy": "aging", "priority_aging_ms": SHORT_AGING_MS}}],
    indirect=True,
    ids=["strict", "aging"],
)
def test_a_low_priority_task_that_waited_too_long_runs_first_only_under_aging(
    system: System,
) -> None:
    def buffered(priority: int, count: int) -> None:
        wait_for(
            lambda: system.controller.buffered()[("ordered", priority)] == count,
            20,
            f"the controller to buffer {count} tasks of priority {priority}",
        )

    low = [system.schedule("ordered", priority=0) for _ in range(2)]
    buffered(0, 2)
    since = time.monotonic()
    # Not the check, just the premise: the low items are older than the aging time.
    wait_for(
        lambda: time.monotonic() - since > SHORT_AGING_MS / 1000,
        5,
        "the low-priority items to age",
    )
    # Priority 2 is scheduled and buffered before priority 1, so the expected
    # order is the same whether or not these age too before they are served.
    high = [system.schedule("ordered", priority=2) for _ in range(3)]
    buffered(2, 3)
    middle = [system.schedule("ordered", priority=1) for _ in range(3)]
    buffered(1, 3)
    system.executor("ordered", threads=1)
    for task_id in [*low, *high, *middle]:
        system.wait_status(task_id, TaskStatus.SUCCESS)
    if system.settings.priority_policy == "aging":
        assert system.recorder.order == [0, 0, 2, 2, 2, 1, 1, 1]
        assert system.controller.stats.aged >= 2
    else:
        assert system.recorder.order == [2, 2, 2, 1, 1, 1, 0, 0]
        assert system.controller.stats.aged == 0


def test_cancelling_a_running_task_stops_it_at_its_next_heartbeat(system: System) -> None:
    executor = system.executor("looping")
    task_id = system.schedule("looping")
    assert system.recorder.started.wait(20), "the callback did not start"
    system.wait_status(task_id, TaskStatus.PROCESSING)
    reply = system.gateway.send(CancelTask(uuid.uuid4().hex, task_id, "test", "not needed"))
    assert isinstance(reply, Reply) and reply.accepted, reply
    interval = FAST["heartbeat_interval_ms"] / 1000
    assert system.recorder.saw_cancel.wait(interval + 5), "the callback never saw the cancel"
    wait_for(lambda: executor.stats.stopped == 1, 5, "the executor to drop the task")
    task = system.task(task_id)
    assert task.status is TaskStatus.CANCELLED
    assert task.result is None
    assert executor.stats.succeeded == 0


def test_an_hsc_restart_between_two_heartbeats_costs_the_running_task_nothing(
    system: System,
) -> None:
    # gRPC's default reconnect backoff (1 s, growing) would fail the next
    # heartbeats fast even after the HSC is back, and 3 failures end the work.
    executor = system.executor("steady", threads=1)
    task_id = system.schedule("steady")
    assert system.recorder.started.wait(20), "the callback did not start"
    system.wait_status(task_id, TaskStatus.PROCESSING)
    good = executor.stats.heartbeats
    wait_for(lambda: executor.stats.heartbeats > good, 5, "a heartbeat after the start")
    port = system.hsc.port
    system.hsc.stop(grace=0)
    wait_for(lambda: executor.stats.heartbeat_failures >= 1, 5, "a heartbeat to fail")
    system.hsc = hsc_server(system.gateway, f"127.0.0.1:{port}")
    system.hsc.start()
    beats = executor.stats.heartbeats
    wait_for(lambda: executor.stats.heartbeats > beats, 10, "a heartbeat to the new HSC")
    system.recorder.release.set()
    assert system.wait_status(task_id, TaskStatus.SUCCESS).result == b"released"
    assert executor.stats.heartbeats_lost == 0
    assert executor.stats.heartbeat_failures < 3


def test_a_result_the_hsc_cannot_take_yet_is_reported_when_it_is_back(system: System) -> None:
    """The callback has returned; its result waits for the HSC, which is down.

    The reporter retries with backoff while the worker thread is free, and
    the heartbeats that fail meanwhile end nothing: there is no work left to
    stop (the fixture fails the test if ``on_heartbeats_lost`` is called).
    """
    executor = system.executor("steady", threads=1)
    task_id = system.schedule("steady")
    assert system.recorder.started.wait(20), "the callback did not start"
    system.wait_status(task_id, TaskStatus.PROCESSING)
    port = system.hsc.port
    system.hsc.stop(grace=0)
    system.recorder.release.set()
    wait_for(lambda: executor.stats.heartbeat_failures >= 1, 5, "a heartbeat to fail")
    assert executor.stats.succeeded == 0
    system.hsc = hsc_server(system.gateway, f"127.0.0.1:{port}")
    system.hsc.start()
    task = system.wait_status(task_id, TaskStatus.SUCCESS)
    assert (task.result, task.attempts) == (b"released", 1)
    wait_for(lambda: executor.stats.succeeded == 1, 5, "the executor to count the success")
    assert executor.stats.unreported == 0
    assert executor.stats.heartbeats_lost == 0


def test_three_failed_heartbeats_end_the_work(system: System) -> None:
    lost: list[tuple[str, float]] = []
    lost_event = threading.Event()

    def on_lost(task: TaskContext) -> None:
        lost.append((task.task_id, time.monotonic()))
        lost_event.set()

    def counted(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"lambda": "looping"}) or 0.0

    failures_before = counted("atf_executor_heartbeat_failures_total")
    ends_before = counted("atf_executor_self_terminations_total")
    executor = system.executor("looping", threads=1, on_heartbeats_lost=on_lost)
    task_id = system.schedule("looping")
    assert system.recorder.started.wait(20), "the callback did not start"
    system.wait_status(task_id, TaskStatus.PROCESSING)
    good = executor.stats.heartbeats
    wait_for(lambda: executor.stats.heartbeats > good, 5, "a heartbeat after the start")
    system.hsc.stop(grace=0)
    stopped_at = time.monotonic()
    assert lost_event.wait(10), "on_heartbeats_lost was not called"
    (lost_task, lost_at), *more = lost
    assert lost_task == task_id and not more
    assert executor.stats.heartbeat_failures == 3
    assert executor.stats.heartbeats_lost == 1
    # What /metrics says about it (docs/metrics.md): the same counts.
    assert counted("atf_executor_heartbeat_failures_total") - failures_before == 3
    assert counted("atf_executor_self_terminations_total") - ends_before == 1
    # The invariant: the work stops before the heartbeat timeout could hand the
    # task to someone else (measured from the HSC stop, after the last good beat).
    assert (lost_at - stopped_at) * 1000 < FAST["heartbeat_timeout_ms"]
    assert system.recorder.saw_cancel.wait(5), "the callback was not told to stop"
    wait_for(lambda: executor.stats.stopped == 1, 5, "the executor to drop the task")
    assert executor.stats.succeeded == 0


@pytest.mark.parametrize("system", [{"controller": {"buffer_per_priority": 2}}], indirect=True)
def test_a_full_buffer_pauses_reading_and_loses_nothing(system: System) -> None:
    task_ids = [system.schedule("ok", str(n).encode()) for n in range(7)]
    wait_for(
        lambda: system.controller.buffered()[("ok", 0)] == 2 and system.controller.stats.pauses,
        20,
        "the controller to fill its buffer and pause",
    )
    system.executor("ok", threads=1)
    for n, task_id in enumerate(task_ids):
        assert system.wait_status(task_id, TaskStatus.SUCCESS).result == f"done:{n}".encode()
    assert system.controller.buffered()[("ok", 0)] == 0
    assert system.controller.stats.claimed == 7


def test_a_restarted_controller_rereads_exactly_the_unclaimed_items(system: System) -> None:
    first = system.executor("ok")
    done = [system.schedule("ok") for _ in range(2)]
    for task_id in done:
        system.wait_status(task_id, TaskStatus.SUCCESS)
    first.stop(grace=2)
    waiting = [system.schedule("ok") for _ in range(3)]
    wait_for(lambda: system.controller.buffered()[("ok", 0)] == 3, 20, "the controller to buffer 3")
    system.controller.stop()  # claimed offsets are committed; buffered ones are not
    successor = system.start_controller(controller_id="successor")
    wait_for(lambda: successor.stats.received >= 3, 20, "the successor to read the 3 again")
    system.controller = successor
    system.executor("ok")
    for task_id in waiting:
        system.wait_status(task_id, TaskStatus.SUCCESS)
    # The two claimed before the restart were not read again.
    assert (successor.stats.received, successor.stats.claimed) == (3, 3)
    assert successor.stats.discarded == 0


def test_a_leftover_with_a_stale_lease_is_discarded(system: System) -> None:
    # Nobody claims the first enqueue in time, so the processor enqueues the
    # task again with a new lease; the first copy must not run.
    task_id = system.schedule("requeued")
    wait_for(
        lambda: system.controller.buffered()[("requeued", 0)] == 2,
        20,
        "the controller to hold both enqueues",
    )
    executor = system.executor("requeued", threads=1)
    task = system.wait_status(task_id, TaskStatus.SUCCESS)
    assert task.attempts == 1 and task.lease >= 2
    wait_for(lambda: system.controller.stats.discarded >= 1, 5, "the stale copy to be discarded")
    assert executor.stats.started == 1


def demo_app() -> App:
    from atf_es.examples.demo import app

    return app


@pytest.mark.parametrize("system", [{"app": demo_app()}], indirect=True)
def test_the_demo_app_shows_every_outcome(system: System) -> None:
    for name in ("echo", "flaky", "reject", "broken"):
        system.executor(name, threads=1)
    echo = system.schedule("echo", b"hi")
    flaky = system.schedule("flaky")
    reject = system.schedule("reject", b"x")
    broken = system.schedule("broken")
    assert system.wait_status(echo, TaskStatus.SUCCESS).result == b"hi"
    assert system.wait_status(flaky, TaskStatus.SUCCESS).attempts == 3
    assert system.wait_status(reject, TaskStatus.FATAL_FAILURE).last_error is not None
    assert system.wait_status(broken, TaskStatus.DEAD_LETTERED).attempts == 3


@pytest.mark.parametrize("system", [{"app": demo_app()}], indirect=True)
def test_an_executor_process_exits_after_three_failed_heartbeats(system: System) -> None:
    script = (
        "import logging, sys\n"
        "from atf_es.examples.demo import app\n"
        "from atf_es.services.executor import Executor\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "Executor(app, 'slow', sys.argv[1], sys.argv[2], threads=1).run_forever()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, f"127.0.0.1:{system.controller.port}", system.hsc_address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        task_id = system.schedule("slow", b"60")
        started = system.wait_status(task_id, TaskStatus.PROCESSING)
        # A beat after the start proves the callback runs: the executor is in its
        # heartbeat loop, not still retrying the first heartbeat.
        wait_for(
            lambda: (system.task(task_id).heartbeat_at or 0) > (started.started_at or 0),
            20,
            "a heartbeat after the start",
        )
        system.hsc.stop(grace=0)
        _, stderr = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == EXIT_HEARTBEAT_LOST, stderr
    assert f"3 consecutive heartbeats of task {task_id}" in stderr
