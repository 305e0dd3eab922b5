"""Gates end to end: Admin over gRPC, the control topic, a real processor,
controller and executors on the real broker.

Nothing here is mocked: the gate is set through ``atf.v1.Admin`` on a real
Frontend, read by the processor from the control topic, and the tasks it
holds are observed through ``GetTask``, the task-events topic and what the
executors actually ran.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from atf_es.app import App, TaskContext
from atf_es.client import Client, FailedPrecondition, InvalidArgument, NotFound, TaskInfo
from atf_es.clock import now_ms
from atf_es.config import Settings
from atf_es.events import TaskDropped, TaskHeld, TaskStatus
from atf_es.services.control import ControlView
from atf_es.services.controller import Controller
from atf_es.services.executor import Executor
from atf_es.services.frontend import frontend_server
from atf_es.services.gateway import CommandGateway
from atf_es.services.grpc_server import GrpcServer
from atf_es.services.hsc import hsc_server
from atf_es.services.processor import Processor
from tests.helpers import wait_for
from tests.kafka_harness import EventLog, prepare

pytestmark = pytest.mark.integration

FAST: dict[str, Any] = {
    "heartbeat_interval_ms": 400,
    "heartbeat_timeout_ms": 2_500,
    "heartbeat_margin_ms": 600,
    "claim_timeout_ms": 5_000,
    "enqueue_timeout_ms": 60_000,
}


@dataclass
class Ran:
    """What the executors ran, by collection."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    by_collection: dict[str, list[str]] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)

    def count(self, collection: str) -> int:
        with self.lock:
            return len(self.by_collection.get(collection, []))


def make_app(ran: Ran) -> App:
    app = App("gates-test")

    @app.lambda_("mail", **FAST)
    def mail(task: TaskContext) -> None:
        with ran.lock:
            ran.by_collection.setdefault(task.collection, []).append(task.task_id)

    @app.lambda_("slow", **FAST)
    def slow(task: TaskContext) -> str:
        ran.started.set()
        ran.release.wait(30)
        return "finished"

    return app


@dataclass
class Deployment:
    settings: Settings
    gateway: CommandGateway
    hsc: GrpcServer
    app: App
    ran: Ran
    processor: Processor | None = None
    frontend: GrpcServer | None = None
    control: ControlView | None = None
    client: Client | None = None
    controller: Controller | None = None
    executors: list[Executor] = field(default_factory=list)
    processors: int = 0

    def start_processor(self) -> None:
        assert self.settings.kafka_bootstrap is not None
        self.processors += 1
        self.processor = Processor(
            self.settings, self.settings.kafka_bootstrap, instance_id=f"gates-{self.processors}"
        )
        self.processor.start()
        assert self.processor.ready.wait(30), "the processor did not join its group"

    def stop_processor(self) -> None:
        assert self.processor is not None
        self.processor.stop()
        self.processor = None

    def start_frontend(self) -> Client:
        assert self.settings.kafka_bootstrap is not None
        self.control = ControlView(self.settings, self.settings.kafka_bootstrap)
        self.frontend = frontend_server(self.gateway, self.control, "127.0.0.1:0")
        self.frontend.start()
        self.client = Client(f"127.0.0.1:{self.frontend.port}", timeout=15)
        return self.client

    def stop_frontend(self) -> None:
        assert self.client and self.frontend and self.control
        self.client.close()
        self.frontend.stop()
        self.control.close()
        self.client = self.frontend = self.control = None

    def executor(self, lambda_name: str) -> Executor:
        assert self.controller is not None
        executor = Executor(
            self.app,
            lambda_name,
            f"127.0.0.1:{self.controller.port}",
            f"127.0.0.1:{self.hsc.port}",
            threads=2,
            wait_ms=1_000,
        )
        self.executors.append(executor)
        executor.start()
        return executor

    @property
    def atf(self) -> Client:
        assert self.client is not None
        return self.client

    def schedule(self, collection: str, n: int, *, delay: float | None = None) -> list[str]:
        return [self.atf.schedule("mail", collection=collection, delay=delay) for _ in range(n)]

    def wait_all(self, task_ids: list[str], status: TaskStatus, timeout: float = 30) -> None:
        seen: list[TaskStatus] = []

        def done() -> bool:
            seen[:] = [self.atf.get(t).status for t in task_ids]
            return all(s is status for s in seen)

        try:
            wait_for(done, timeout, f"{len(task_ids)} tasks to be {status}", interval=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen: {[str(s) for s in seen]}") from None

    def wait_held(self, task_ids: list[str], gate: str, timeout: float = 30) -> list[TaskInfo]:
        """Until every task is due, past one processor poll, and still waiting under ``gate``."""

        def held() -> list[TaskInfo] | None:
            infos = [self.atf.get(t) for t in task_ids]
            if all(
                i.status is TaskStatus.NEW
                and i.held_by == gate
                and i.next_trigger_at_ms is not None
                and i.next_trigger_at_ms + 1_000 < self._now()
                for i in infos
            ):
                return infos
            return None

        return wait_for(held, timeout, f"tasks to be due and held by {gate}", interval=0.1)

    @staticmethod
    def _now() -> int:
        return now_ms()


@pytest.fixture
def deployment(settings: Settings) -> Iterator[Deployment]:
    small = replace(settings, partitions=2)
    ran = Ran()
    app = make_app(ran)
    prepare(small, *(policy for policy, _ in app.lambdas.values()))
    assert small.kafka_bootstrap is not None
    gateway = CommandGateway(small, small.kafka_bootstrap)
    hsc = hsc_server(gateway, "127.0.0.1:0")
    built = Deployment(small, gateway, hsc, app, ran)
    try:
        hsc.start()
        built.start_processor()
        built.start_frontend()
        built.controller = Controller(
            small,
            small.kafka_bootstrap,
            list(app.lambdas),
            f"127.0.0.1:{hsc.port}",
            controller_id="gates-controller",
        )
        built.controller.start()
        assert built.controller.ready.wait(30), "the controller did not join its group"
        yield built
    finally:
        for executor in built.executors:
            executor.stop(grace=2)
        if built.controller is not None:
            built.controller.stop()
        if built.client is not None:
            built.stop_frontend()
        hsc.stop()
        gateway.close()
        if built.processor is not None:
            built.stop_processor()


def test_pause_holds_a_collection_resume_runs_it_and_the_other_collection_never_waits(
    deployment: Deployment,
) -> None:
    d = deployment
    d.executor("mail")
    gate = d.atf.pause("mail", "news", reason="provider outage", by="test")
    assert (gate.name, gate.action, gate.reason) == ("mail/news", "pause", "provider outage")
    assert [g.name for g in d.atf.gates()] == ["mail/news"]

    news = d.schedule("news", 8, delay=0.5)
    reset = d.schedule("reset", 8, delay=0.5)
    d.wait_all(reset, TaskStatus.SUCCESS)
    held = d.wait_held(news, "mail/news")
    assert {i.held_action for i in held} == {"pause"}
    assert d.ran.count("news") == 0, "a task of the paused collection ran"

    d.atf.resume("mail", "news", by="test")
    assert d.atf.gates() == []
    d.wait_all(news, TaskStatus.SUCCESS)
    assert sorted(d.ran.by_collection["news"]) == sorted(news)
    assert all(d.atf.get(t).held_by is None for t in news)


def test_drop_ends_due_tasks_dropped_naming_the_gate_and_spares_the_other_collection(
    deployment: Deployment,
) -> None:
    d = deployment
    d.executor("mail")
    d.atf.drop("mail", "news", reason="spam wave", by="test")
    news = d.schedule("news", 6)
    reset = d.schedule("reset", 6)
    d.wait_all(news, TaskStatus.DROPPED)
    d.wait_all(reset, TaskStatus.SUCCESS)
    assert d.ran.count("news") == 0
    log = EventLog(d.settings)
    try:
        history = log.wait_until(
            lambda log: h if all(t in (h := log.history()) for t in news) else None,
            message="the dropped tasks' events",
        )
        for task_id in news:
            (dropped,) = [e for e, _ in history[task_id] if isinstance(e, TaskDropped)]
            assert dropped.gate == "mail/news"
    finally:
        log.close()
    # Tasks due after a resume run again. A gate takes effect within one poll
    # of the processor after SetGate returns (docs/gates.md), so they are due
    # a second later, not at once: a task due before the processor read the
    # resume would rightly be dropped.
    d.atf.resume("mail", "news")
    later = d.schedule("news", 3, delay=1.0)
    d.wait_all(later, TaskStatus.SUCCESS)


def test_an_enqueued_task_is_taken_off_the_queue_and_a_running_one_finishes(
    deployment: Deployment,
) -> None:
    d = deployment
    running = d.atf.schedule("slow")
    d.executor("slow")
    assert d.ran.started.wait(20), "the slow task did not start"
    # Enqueued before the gate closes, with no executor of its lambda yet.
    waiting = d.schedule("news", 3)
    d.wait_all(waiting, TaskStatus.ENQUEUED)
    leases = {t: d.atf.get(t).lease for t in waiting}
    d.atf.pause("slow")
    d.atf.pause("mail")
    d.ran.release.set()
    assert d.atf.wait(running, timeout=20).status is TaskStatus.SUCCESS

    d.executor("mail")  # its claims are refused: the tasks go back to new, held
    log = EventLog(d.settings)
    try:
        log.wait_until(
            lambda log: all(
                any(isinstance(e, TaskHeld) for e, _ in log.history().get(t, ())) for t in waiting
            ),
            message="TaskHeld for each enqueued task",
        )
    finally:
        log.close()
    d.wait_held(waiting, "mail")
    assert d.ran.count("news") == 0

    d.atf.resume("mail")
    d.wait_all(waiting, TaskStatus.SUCCESS)
    assert all(d.atf.get(t).lease > leases[t] for t in waiting)


def test_gates_survive_a_restart_of_the_processor_and_of_the_frontend(
    deployment: Deployment,
) -> None:
    d = deployment
    d.executor("mail")
    d.atf.pause("mail", reason="maintenance", by="test")
    d.stop_processor()
    d.start_processor()
    tasks = d.schedule("news", 4)
    d.wait_held(tasks, "mail")

    d.stop_frontend()
    d.start_frontend()
    (gate,) = d.atf.gates("mail")
    assert (gate.name, gate.action, gate.reason, gate.set_by) == (
        "mail",
        "pause",
        "maintenance",
        "test",
    )
    d.stop_processor()
    d.start_processor()
    d.wait_held(tasks, "mail")
    assert d.ran.count("news") == 0

    d.atf.resume("mail")
    d.wait_all(tasks, TaskStatus.SUCCESS)


def test_bad_gate_requests_get_a_clear_error(deployment: Deployment) -> None:
    d = deployment
    with pytest.raises(NotFound, match="lambda 'nope' is not defined"):
        d.atf.pause("nope")
    with pytest.raises(InvalidArgument, match="collection"):
        d.atf.pause("mail", "a/b")
    with pytest.raises(InvalidArgument, match="lambda name"):
        d.atf.drop("")
    with pytest.raises(InvalidArgument, match="reason must be at most"):
        d.atf.pause("mail", reason="x" * 5_000)
    assert d.atf.gates() == []
    # The service is still answering, and nothing was gated.
    task_id = d.atf.schedule("mail", collection=uuid.uuid4().hex[:8])
    d.executor("mail")
    assert d.atf.wait(task_id, timeout=20).status is TaskStatus.SUCCESS
    with pytest.raises(FailedPrecondition):
        d.atf.cancel(task_id)
