"""Dead letters end to end: a real broker, processor, HSC, Controller and executors.

The acceptance case: tasks that fail every attempt land in the dead letters;
they are listed by lambda, collection, error text and time, counted per
lambda; once the lambda is fixed, a redrive of the filtered set runs every one
of them to success while the other collection's dead letters stay, and each
redriven task's history records who redrove it and why. Nothing is mocked.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
import pytest

from atf_es import kafka_clients
from atf_es._proto.atf.v1 import admin_pb2, admin_pb2_grpc, common_pb2, frontend_pb2_grpc
from atf_es.app import App, RetriableError, TaskContext
from atf_es.cli import main
from atf_es.client import (
    Client,
    DeadLetterFilter,
    FailedPrecondition,
    InvalidArgument,
    TaskInfo,
    TaskNotFound,
    UnknownLambda,
)
from atf_es.config import Settings
from atf_es.events import Task, TaskStatus
from atf_es.events.codec import encode_event
from atf_es.events.transitions import (
    Cause,
    TaskDeadLettered,
    TaskFailed,
    TaskRedriven,
    TimerReason,
)
from atf_es.services.admin import AdminService
from atf_es.services.control import ControlView
from atf_es.services.controller import Controller
from atf_es.services.deadletters import DeadLetterQuery, DeadLetterView
from atf_es.services.executor import Executor
from atf_es.services.frontend import FrontendService
from atf_es.services.gateway import CommandGateway
from atf_es.services.grpc_server import GrpcServer
from atf_es.services.hsc import hsc_server
from atf_es.services.processor import Processor
from atf_es.topics import Topics
from tests.helpers import wait_for
from tests.kafka_harness import prepare

pytestmark = pytest.mark.integration

FAST: dict[str, Any] = {
    "heartbeat_interval_ms": 400,
    "heartbeat_timeout_ms": 2_500,
    "heartbeat_margin_ms": 600,
    "claim_timeout_ms": 5_000,
    "backoff_base_ms": 50,
    "backoff_max_ms": 100,
    "backoff_jitter": 0.0,
}


@dataclass
class Broken:
    """The lambdas' bug: ``mail`` fails until ``fixed`` is set; ``resize`` always fails."""

    fixed: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    runs: dict[str, int] = field(default_factory=dict)

    def ran(self, task_id: str) -> None:
        with self.lock:
            self.runs[task_id] = self.runs.get(task_id, 0) + 1


def make_app(broken: Broken) -> App:
    app = App("dead-letters-test")

    @app.lambda_("mail", max_attempts=2, **FAST)
    def mail(task: TaskContext) -> str:
        broken.ran(task.task_id)
        if not broken.fixed.is_set():
            raise RetriableError(f"SMTP 421 {task.collection} relay unavailable")
        return "sent"

    @app.lambda_("resize", max_attempts=1, **FAST)
    def resize(task: TaskContext) -> str:
        broken.ran(task.task_id)
        raise MemoryError("out of memory")

    return app


def admin_server(gateway: CommandGateway, control: ControlView) -> tuple[GrpcServer, AdminService]:
    """The Frontend and Admin on one port, as ``frontend_server`` serves them, with the
    Admin service at hand to close."""
    frontend = FrontendService(gateway, control)
    admin = AdminService(control, frontend.control_lock, gateway=gateway)
    server = GrpcServer(
        "frontend",
        "127.0.0.1:0",
        [
            lambda server: frontend_pb2_grpc.add_FrontendServicer_to_server(frontend, server),
            lambda server: admin_pb2_grpc.add_AdminServicer_to_server(admin, server),
        ],
        ["atf.v1.Frontend", "atf.v1.Admin"],
    )
    return server, admin


@dataclass
class Deployment:
    settings: Settings
    atf: Client
    address: str
    broken: Broken

    def schedule(self, lambda_name: str, collection: str, n: int) -> list[str]:
        return [self.atf.schedule(lambda_name, b"payload", collection=collection) for _ in range(n)]

    def wait_all(
        self, task_ids: list[str], status: TaskStatus, timeout: float = 30
    ) -> list[TaskInfo]:
        def done() -> list[TaskInfo] | None:
            infos = [self.atf.get(t) for t in task_ids]
            return infos if all(i.status is status for i in infos) else None

        return wait_for(done, timeout, f"{len(task_ids)} tasks to be {status}", interval=0.1)

    def admin_stub(self) -> tuple[grpc.Channel, admin_pb2_grpc.AdminStub]:
        channel = grpc.insecure_channel(self.address)
        return channel, admin_pb2_grpc.AdminStub(channel)


@pytest.fixture
def deployment(settings: Settings) -> Iterator[Deployment]:
    small = replace(settings, partitions=3)
    broken = Broken()
    app = make_app(broken)
    prepare(small, *(policy for policy, _ in app.lambdas.values()))
    bootstrap = small.kafka_bootstrap
    assert bootstrap is not None
    processor = Processor(small, bootstrap, instance_id="dead-letters")
    gateway = CommandGateway(small, bootstrap)
    hsc = hsc_server(gateway, "127.0.0.1:0")
    control = ControlView(small, bootstrap)
    frontend, admin = admin_server(gateway, control)
    controller: Controller | None = None
    executors: list[Executor] = []
    try:
        processor.start()
        hsc.start()
        frontend.start()
        controller = Controller(
            small,
            bootstrap,
            list(app.lambdas),
            f"127.0.0.1:{hsc.port}",
            controller_id="dead-letters",
        )
        controller.start()
        assert processor.ready.wait(30) and controller.ready.wait(30)
        for lambda_name in app.lambdas:
            executor = Executor(
                app,
                lambda_name,
                f"127.0.0.1:{controller.port}",
                f"127.0.0.1:{hsc.port}",
                threads=2,
                wait_ms=1_000,
            )
            executors.append(executor)
            executor.start()
        address = f"127.0.0.1:{frontend.port}"
        with Client(address, timeout=20) as client:
            yield Deployment(small, client, address, broken)
    finally:
        for executor in executors:
            executor.stop(grace=2)
        if controller is not None:
            controller.stop()
        frontend.stop()
        admin.close()
        control.close()
        hsc.stop()
        gateway.close()
        processor.stop()


def _order(task: TaskInfo) -> tuple[int, str]:
    assert task.finished_at_ms is not None
    return (task.finished_at_ms, task.task_id)


def test_failing_tasks_are_dead_letters_and_a_fixed_lambda_plus_a_filtered_redrive_runs_them(
    deployment: Deployment,
) -> None:
    d = deployment
    atf = d.atf
    news = d.schedule("mail", "news", 4)
    dead_news = d.wait_all(news, TaskStatus.DEAD_LETTERED)
    boundary = max(info.finished_at_ms or 0 for info in dead_news) + 1
    billing = d.schedule("mail", "billing", 3)
    resize = d.schedule("resize", "default", 2)
    d.wait_all(billing, TaskStatus.DEAD_LETTERED)
    d.wait_all(resize, TaskStatus.DEAD_LETTERED)

    # Every attempt failed: the last error is kept, the attempts are used up.
    mail = list(atf.dead_letters("mail"))
    assert {t.task_id for t in mail} == set(news + billing)
    assert mail == sorted(mail, key=_order), "not oldest first"
    assert all(t.status is TaskStatus.DEAD_LETTERED and t.attempts == 2 for t in mail)
    assert all(t.payload is None for t in mail), "a listing carries no payloads"
    assert {t.last_error for t in mail if t.collection == "news"} == {
        "RetriableError: SMTP 421 news relay unavailable"
    }
    assert len(list(atf.dead_letters())) == 9
    (only,) = [t for t in atf.dead_letters("resize") if t.task_id == resize[0]]
    assert only.attempts == 1 and "out of memory" in (only.last_error or "")

    # Filters: collection, error text (any case), time.
    assert {t.task_id for t in atf.dead_letters("mail", collection="news")} == set(news)
    assert {t.task_id for t in atf.dead_letters(error_contains="smtp 421 BILLING")} == set(billing)
    assert {t.task_id for t in atf.dead_letters("mail", after=boundary)} == set(billing)
    assert {t.task_id for t in atf.dead_letters("mail", before=boundary)} == set(news)
    assert list(atf.dead_letters("mail", error_contains="no such text")) == []

    # Pages of 3: the same tasks, in the same order, each once.
    pages, token = [], ""
    while True:
        page = atf.dead_letter_page("mail", page_size=3, page_token=token)
        assert page.total == 7
        pages.append([t.task_id for t in page.tasks])
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [t for p in pages for t in p] == [t.task_id for t in mail]
    assert [t.task_id for t in atf.dead_letters("mail", limit=4, page_size=2)] == [
        t.task_id for t in mail[:4]
    ]

    # Counts per lambda, and per collection.
    counts = atf.dead_letter_counts()
    assert {name: c.count for name, c in counts.items()} == {"mail": 7, "resize": 2}
    assert counts["mail"].by_collection == {"billing": 3, "news": 4}
    assert counts["mail"].oldest_at_ms == _order(mail[0])[0]
    assert counts["mail"].newest_at_ms == _order(mail[-1])[0]

    # The fix ships; redrive the news collection only.
    d.broken.fixed.set()
    result = atf.redrive(
        DeadLetterFilter("mail", collection="news"), reason="SMTP relay fixed", by="ops-ada"
    )
    assert result.ok and result.redriven == [t.task_id for t in mail if t.collection == "news"]
    done = d.wait_all(news, TaskStatus.SUCCESS)
    assert all(info.attempts == 1 and info.result == b"sent" for info in done)
    assert {t.task_id for t in atf.dead_letters("mail")} == set(billing)
    assert atf.dead_letter_counts("mail")["mail"].by_collection == {"billing": 3}

    # The history records who redrove the task and why; attempts start again.
    history = atf.history(news[0])
    kinds = [e.kind for e in history]
    assert "TASK_DEAD_LETTERED" in kinds
    (redriven,) = [e for e in history if e.kind == "TASK_REDRIVEN"]
    assert (redriven.requested_by, redriven.reason, redriven.status) == (
        "ops-ada",
        "SMTP relay fixed",
        TaskStatus.NEW,
    )
    assert kinds.index("TASK_DEAD_LETTERED") < kinds.index("TASK_REDRIVEN")
    assert kinds[-1] == "TASK_SUCCEEDED"

    # Redriving by id: each task is answered on its own.
    result = atf.redrive([news[0], billing[0], "no-such-task", billing[0]], reason="again")
    assert [(r.task_id, r.code) for r in result.replies] == [
        (news[0], "WRONG_STATE"),
        (billing[0], "OK"),
        ("no-such-task", "NOT_FOUND"),
    ]
    assert result.redriven == [billing[0]] and not result.ok
    assert isinstance(result.refused[0].error, FailedPrecondition)
    assert isinstance(result.refused[1].error, TaskNotFound)
    d.wait_all([billing[0]], TaskStatus.SUCCESS)
    (again,) = [e for e in atf.history(billing[0]) if e.kind == "TASK_REDRIVEN"]
    assert (again.requested_by, again.reason) == ("admin", "again")

    # All of a lambda: the rest of mail; resize (still broken) is left alone.
    result = atf.redrive(DeadLetterFilter("mail"), reason="all fixed", by="ops-ada")
    assert sorted(result.redriven) == sorted(billing[1:])
    d.wait_all(billing, TaskStatus.SUCCESS)
    assert list(atf.dead_letters("mail")) == []
    assert {name: c.count for name, c in atf.dead_letter_counts().items()} == {"resize": 2}
    assert all(d.broken.runs[t] == 3 for t in news), "2 failed attempts, then 1 success"


def test_a_paged_redrive_of_a_still_broken_lambda_ends_and_bad_requests_get_clear_errors(
    deployment: Deployment,
) -> None:
    d = deployment
    atf = d.atf
    resize = d.schedule("resize", "default", 2)
    d.wait_all(resize, TaskStatus.DEAD_LETTERED)
    oldest = [t.task_id for t in atf.dead_letters("resize")]
    channel, stub = d.admin_stub()
    try:
        # One task per call: the first fails again (a new, later dead letter)
        # before the second call, which still redrives only the second.
        request = admin_pb2.RedriveRequest(
            filter=admin_pb2.DeadLetterFilter(lambda_name="resize"),
            reason="try once more",
            requested_by="test",
            page_size=1,
        )
        first = stub.Redrive(request, timeout=20)
        assert [r.task_id for r in first.replies] == oldest[:1]
        assert first.remaining == 1 and first.next_page_token
        wait_for(
            lambda: (
                d.broken.runs.get(oldest[0], 0) == 2
                and atf.get(oldest[0]).status is TaskStatus.DEAD_LETTERED
            ),
            20,
            "the redriven task to fail again",
        )
        request.page_token = first.next_page_token
        second = stub.Redrive(request, timeout=20)
        assert [r.task_id for r in second.replies] == oldest[1:]
        assert [r.code for r in second.replies] == [common_pb2.REPLY_CODE_OK]
        assert (second.remaining, second.next_page_token) == (0, "")
        d.wait_all(resize, TaskStatus.DEAD_LETTERED)

        def refused(rpc: Any, message: Any) -> tuple[grpc.StatusCode, str]:
            with pytest.raises(grpc.RpcError) as caught:
                rpc(message, timeout=20)
            return caught.value.code(), caught.value.details()

        both = admin_pb2.RedriveRequest(
            task_ids=["a"], filter=admin_pb2.DeadLetterFilter(lambda_name="resize"), reason="r"
        )
        assert refused(stub.Redrive, both) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "give task_ids or a filter, not both",
        )
        code, message = refused(stub.Redrive, admin_pb2.RedriveRequest(reason="r"))
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "nothing to redrive" in message
        code, message = refused(
            stub.Redrive, admin_pb2.RedriveRequest(task_ids=["a"], reason="r", page_size=3)
        )
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "go with a filter" in message
    finally:
        channel.close()

    with pytest.raises(UnknownLambda, match="lambda 'nope' is not defined"):
        list(atf.dead_letters("nope"))
    with pytest.raises(UnknownLambda, match="lambda 'nope' is not defined"):
        atf.dead_letter_counts("nope")
    with pytest.raises(UnknownLambda):
        atf.redrive(DeadLetterFilter("nope"), reason="r")
    with pytest.raises(InvalidArgument, match="reason is required"):
        atf.redrive(resize, reason="  ")
    with pytest.raises(InvalidArgument, match="reason must be at most 2000"):
        atf.redrive(resize, reason="x" * 2_001)
    with pytest.raises(InvalidArgument, match="requested_by must be at most"):
        atf.redrive(resize, reason="r", by="x" * 201)
    with pytest.raises(InvalidArgument, match=r"filter\.lambda_name is required"):
        atf.redrive(DeadLetterFilter(""), reason="r")
    with pytest.raises(InvalidArgument, match="at most 1000"):
        atf.redrive([f"t{i}" for i in range(1_001)], reason="r")
    with pytest.raises(InvalidArgument, match=r"task_ids\[1\] must be 1-200"):
        atf.redrive(["ok", "x" * 201], reason="r")
    with pytest.raises(InvalidArgument, match="collection 'a/b'"):
        list(atf.dead_letters("resize", collection="a/b"))
    with pytest.raises(InvalidArgument, match="lambda_name 'bad name'"):
        list(atf.dead_letters("bad name"))
    with pytest.raises(InvalidArgument, match="must be before"):
        list(atf.dead_letters("resize", after=2_000, before=1_000))
    with pytest.raises(InvalidArgument, match="error_contains must be 1-1000"):
        list(atf.dead_letters("resize", error_contains=""))
    with pytest.raises(InvalidArgument, match="page_size must be 1-1000"):
        atf.dead_letter_page("resize", page_size=5_000)
    with pytest.raises(InvalidArgument, match="not a token this service gave out"):
        atf.dead_letter_page("resize", page_token="garbage")
    token = atf.dead_letter_page("resize", page_size=1).next_page_token
    assert token
    with pytest.raises(InvalidArgument, match="other filters"):
        atf.dead_letter_page("resize", collection="default", page_token=token)
    # A defined lambda without dead letters is an empty listing, not an error.
    assert list(atf.dead_letters("mail")) == []
    assert atf.dead_letter_counts("mail") == {}
    assert atf.redrive(DeadLetterFilter("mail"), reason="r").replies == []
    # Nothing above redrove anything.
    assert {t.task_id for t in atf.dead_letters("resize")} == set(resize)


def test_the_cli_lists_shows_and_redrives_dead_letters(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    d = deployment
    at = ["--frontend", d.address]
    news = d.schedule("mail", "news", 2)
    billing = d.schedule("mail", "billing", 2)
    d.wait_all(news + billing, TaskStatus.DEAD_LETTERED)
    resize = d.schedule("resize", "default", 1)
    d.wait_all(resize, TaskStatus.DEAD_LETTERED)

    assert main(["dlq", "list", *at]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "dead letters: mail 4, resize 1 (5 in all)"
    assert all(t in text for t in news + billing + resize)
    assert "SMTP 421 news relay unavailable" in text
    assert "showing all 5 matching dead letters" in text

    assert main(["dlq", "list", "mail", "--collection", "news", "--limit", "1", *at]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "dead letters of mail: 4 (billing 2, news 2)"
    assert "showing 1 of 2 matching dead letters" in text

    assert main(["dlq", "list", "--error", "BILLING relay", "--since", "1h", "--json", *at]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["matching"] == 2
    assert {t["task_id"] for t in document["tasks"]} == set(billing)
    assert document["counts"]["mail"]["by_collection"] == {"billing": 2, "news": 2}
    assert {t["status"] for t in document["tasks"]} == {"dead_lettered"}

    assert main(["dlq", "list", "--counts", *at]) == 0
    text = capsys.readouterr().out
    assert "billing 2, news 2" in text and "resize" in text

    assert main(["dlq", "list", "--until", "1h", *at]) == 0
    assert "no dead letters match" in capsys.readouterr().out
    assert main(["dlq", "list", "--since", "last tuesday", *at]) == 2
    assert "is not a time" in capsys.readouterr().err
    assert main(["dlq", "list", "nope", *at]) == 1
    assert "lambda 'nope' is not defined" in capsys.readouterr().err

    assert main(["dlq", "show", news[0], *at]) == 0
    text = capsys.readouterr().out
    assert f"task {news[0]}: dead_lettered" in text
    assert "last error:    RetriableError: SMTP 421 news relay unavailable" in text
    assert "attempts:      2" in text and "dead-lettered:" in text
    assert "failures (2):" in text and "task_dead_lettered" in text

    # A set needs --yes; without it, only how many.
    redrive = ["dlq", "redrive", "--lambda", "mail", "--collection", "news"]
    assert main([*redrive, "--reason", "relay fixed", *at]) == 2
    captured = capsys.readouterr()
    assert "would redrive 2 dead letters of mail/news" in captured.out
    assert "only with --yes" in captured.err
    assert main([*redrive, *at]) == 2
    assert "--reason is required" in capsys.readouterr().err
    assert main(["dlq", "redrive", "--reason", "r", *at]) == 2
    assert "name the tasks" in capsys.readouterr().err
    assert main(["dlq", "redrive", news[0], "--collection", "x", "--reason", "r", *at]) == 2
    assert "go with --lambda" in capsys.readouterr().err

    d.broken.fixed.set()
    assert main([*redrive, "--reason", "relay fixed", "--by", "ada", "--yes", *at]) == 0
    text = capsys.readouterr().out
    assert "redriven 2 of 2 (the dead letters of mail/news) by ada (atf-es dlq): relay fixed" in (
        text
    )
    d.wait_all(news, TaskStatus.SUCCESS)
    (entry,) = [e for e in d.atf.history(news[0]) if e.kind == "TASK_REDRIVEN"]
    assert (entry.requested_by, entry.reason) == ("ada (atf-es dlq)", "relay fixed")

    # By id: a task that is no longer dead-lettered is refused, the others go.
    assert main(["dlq", "redrive", news[0], billing[0], "--reason", "again", *at]) == 1
    captured = capsys.readouterr()
    assert "redriven 1 of 2 (2 tasks)" in captured.out
    assert f"not redriven {news[0]}: WRONG_STATE" in captured.out
    assert "1 of 2 tasks were not redriven" in captured.err
    d.wait_all([billing[0]], TaskStatus.SUCCESS)

    assert main(["dlq", "show", news[0], *at]) == 1
    captured = capsys.readouterr()
    assert "is not dead-lettered: its status is success" in captured.err
    assert "redriven " in captured.out and "by ada (atf-es dlq): relay fixed" in captured.out

    assert main(["dlq", "redrive", "--all-of", "mail", "--reason", "the rest", "--yes", *at]) == 0
    assert "redriven 1 of 1 (the dead letters of mail)" in capsys.readouterr().out
    d.wait_all(billing, TaskStatus.SUCCESS)
    assert main(["dlq", "redrive", "--all-of", "mail", "--reason", "again", "--yes", *at]) == 0
    assert "nothing to redrive" in capsys.readouterr().out
    assert main(["dlq", "list", "mail", *at]) == 0
    assert "dead letters of mail: none" in capsys.readouterr().out


def _task(task_id: str, seq: int, status: TaskStatus, **changes: Any) -> Task:
    base = Task(
        task_id=task_id,
        lambda_name="mail",
        collection="news",
        priority=0,
        payload=b"big payload",
        status=status,
        seq=seq,
        created_at=1_000,
        scheduled_at=1_000,
        next_trigger_at=None,
        attempts=2,
        finished_at=5_000 if status is TaskStatus.DEAD_LETTERED else None,
        last_error="boom",
    )
    return replace(base, **changes)


def test_the_view_folds_redrives_tombstones_stale_and_repeated_records(settings: Settings) -> None:
    """The fold, on records written straight to a task-events topic (no processor)."""
    small = replace(settings, partitions=2)
    prepare(small)
    bootstrap = small.kafka_bootstrap
    assert bootstrap is not None
    topic = Topics(small.topic_prefix).task_events
    producer = kafka_clients.producer(bootstrap, small.kafka_config)
    timer = Cause.timer(TimerReason.HEARTBEAT_TIMEOUT)

    def dead(task_id: str, seq: int, error: str = "boom", at: int = 5_000) -> None:
        task = _task(task_id, seq, TaskStatus.DEAD_LETTERED, last_error=error, finished_at=at)
        producer.produce(
            topic, encode_event(TaskDeadLettered(task_id, seq, at, timer, error), task), task_id
        )

    def failed(task_id: str, seq: int) -> None:
        task = _task(task_id, seq, TaskStatus.RETRIABLE_FAILURE)
        event = TaskFailed(task_id, seq, 4_000, timer, 1, "boom", 4_100)
        producer.produce(topic, encode_event(event, task), task_id)

    def redriven(task_id: str, seq: int) -> None:
        task = _task(task_id, seq, TaskStatus.NEW, attempts=0)
        event = TaskRedriven(task_id, seq, 6_000, Cause.command("RedriveTask", "c"), "a", "r", 1)
        producer.produce(topic, encode_event(event, task), task_id)

    def flush() -> None:
        assert producer.flush(30) == 0

    names = [uuid.uuid4().hex for _ in range(5)]
    kept, stale, redone, expired, repeated = names
    dead(kept, 5, at=5_001)
    dead(stale, 5)
    failed(stale, 4)  # an older record after a newer one: ignored
    dead(redone, 5)
    redriven(redone, 6)
    dead(expired, 5)
    producer.produce(topic, None, expired)  # its retention ran out
    dead(repeated, 5, "first copy")
    dead(repeated, 5, "second copy")  # the same seq again: the later one wins
    producer.produce(topic, b"\x00garbage", "garbage")
    flush()
    view = DeadLetterView(small, bootstrap)
    try:
        view.catch_up(timeout=20)
        assert {t.task_id for t in view.page(DeadLetterQuery(), 100).tasks} == {
            kept,
            stale,
            repeated,
        }
        assert view.get(repeated) is not None and view.get(repeated).last_error == "second copy"  # type: ignore[union-attr]
        assert view.get(kept).payload == b""  # type: ignore[union-attr]
        assert (view.stats.tombstones, view.stats.bad_records) == (1, 1)
        # Incremental: what is written later is read by the next catch-up.
        redriven(kept, 6)
        dead(redone, 9, at=7_000)
        flush()
        view.catch_up(timeout=20)
        page = view.page(DeadLetterQuery(lambda_name="mail"), 2)
        assert [t.task_id for t in page.tasks] == sorted([stale, repeated])
        assert (page.total, page.remaining) == (3, 1) and page.next is not None
        rest = view.page(DeadLetterQuery(lambda_name="mail"), 2, page.next)
        assert [t.task_id for t in rest.tasks] == [redone]
        assert rest.next is None and rest.remaining == 0
        assert [(c.lambda_name, c.count, c.oldest_at, c.newest_at) for c in view.counts()] == [
            ("mail", 3, 5_000, 7_000)
        ]
    finally:
        view.close()
