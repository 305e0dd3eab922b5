"""Periodic schedules end to end: Admin over gRPC and the CLI, the control
topic, a real processor firing them, a controller and an executor running
the tasks, on the real broker.

The owner killed mid-run is in tests/faults/test_processor_faults.py; the
pure rules (cron, misfires, ids) in tests/unit/test_periodic.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from atf_es.app import App, TaskContext
from atf_es.cli import main
from atf_es.client import Client, InvalidArgument, NotFound
from atf_es.clock import now_ms
from atf_es.config import Settings
from atf_es.events import TaskStatus
from atf_es.events.periodic import occurrence_of
from atf_es.services.control import ControlView
from atf_es.services.controller import Controller
from atf_es.services.executor import Executor
from atf_es.services.frontend import frontend_server
from atf_es.services.gateway import CommandGateway
from atf_es.services.hsc import hsc_server
from atf_es.services.processor import Processor
from tests.helpers import wait_for
from tests.kafka_harness import prepare

pytestmark = pytest.mark.integration

FAST: dict[str, Any] = {
    "heartbeat_interval_ms": 400,
    "heartbeat_timeout_ms": 2_500,
    "heartbeat_margin_ms": 600,
}


@dataclass
class Runs:
    lock: threading.Lock = field(default_factory=threading.Lock)
    seen: list[tuple[str, bytes, str, int]] = field(default_factory=list)
    """(task id, payload, collection, ms at the start of the run)."""

    def of(self, name: str) -> list[tuple[int, bytes, str, int]]:
        """(occurrence, payload, collection, started at) of schedule ``name``'s runs."""
        with self.lock:
            found = []
            for task_id, payload, collection, started in self.seen:
                occurrence = occurrence_of(task_id)
                if occurrence is not None and occurrence[0] == name:
                    found.append((occurrence[1], payload, collection, started))
            return sorted(found)


@pytest.fixture
def system(settings: Settings) -> Iterator[tuple[Client, Runs, str]]:
    """Processor, Frontend (with Admin), HSC, controller and an executor of ``report``."""
    small = replace(settings, partitions=2)
    runs = Runs()
    app = App("periodic-test")

    @app.lambda_("report", priorities=2, **FAST)
    def report(task: TaskContext) -> None:
        with runs.lock:
            runs.seen.append((task.task_id, task.payload, task.collection, now_ms()))

    prepare(small, *(policy for policy, _ in app.lambdas.values()))
    assert small.kafka_bootstrap is not None
    bootstrap = small.kafka_bootstrap
    gateway = CommandGateway(small, bootstrap)
    hsc = hsc_server(gateway, "127.0.0.1:0")
    processor = Processor(small, bootstrap, instance_id="periodic-test")
    control = ControlView(small, bootstrap)
    frontend = frontend_server(gateway, control, "127.0.0.1:0")
    controller: Controller | None = None
    executor: Executor | None = None
    client: Client | None = None
    try:
        hsc.start()
        processor.start()
        assert processor.ready.wait(30), "the processor did not join its group"
        frontend.start()
        controller = Controller(
            small, bootstrap, list(app.lambdas), f"127.0.0.1:{hsc.port}", controller_id="c"
        )
        controller.start()
        assert controller.ready.wait(30), "the controller did not join its group"
        executor = Executor(
            app, "report", f"127.0.0.1:{controller.port}", f"127.0.0.1:{hsc.port}", threads=2
        )
        executor.start()
        address = f"127.0.0.1:{frontend.port}"
        client = Client(address, timeout=15)
        yield client, runs, address
    finally:
        if client is not None:
            client.close()
        if executor is not None:
            executor.stop(grace=2)
        if controller is not None:
            controller.stop()
        frontend.stop()
        control.close()
        hsc.stop()
        gateway.close()
        processor.stop()


def test_a_schedule_runs_each_occurrence_once_pauses_resumes_and_is_removed(
    system: tuple[Client, Runs, str],
) -> None:
    atf, runs, _ = system
    added = atf.set_periodic(
        "every-half-second",
        "report",
        every=0.5,
        payload=b"tick",
        collection="eu",
        priority=1,
        catch_up_max=5,
    )
    assert (added.every_ms, added.misfire, added.catch_up_max, added.paused) == (
        500,
        "catch_up",
        5,
        False,
    )
    assert added.next_fire_ms is not None and added.next_fire_ms % 500 == 0
    wait_for(lambda: len(runs.of("every-half-second")) >= 6, 30, "six occurrences to run")

    paused = atf.pause_periodic("every-half-second", by="test")
    assert paused.paused and paused.next_fire_ms is None
    assert [s.name for s in atf.periodic("report")] == ["every-half-second"]
    # Whatever was fired before the pause reached the processor has run once
    # the runs stop growing; then nothing new runs while it stays paused.
    settled = wait_for(_stable(runs, "every-half-second"), 15, "the runs to stop", interval=0.6)
    # Keep it paused long enough for several occurrences to fall in the pause.
    wait_for(lambda: now_ms() >= paused.defined_at_ms + 2_000, 10, "two seconds of pause")
    settled = wait_for(_stable(runs, "every-half-second"), 15, "the runs to stop", interval=0.6)
    resumed = atf.resume_periodic("every-half-second", by="test")
    assert not resumed.paused
    wait_for(lambda: len(runs.of("every-half-second")) >= len(settled) + 3, 30, "three more runs")
    assert atf.remove_periodic("every-half-second") is True
    assert atf.remove_periodic("every-half-second") is False
    assert atf.periodic() == []
    done = wait_for(_stable(runs, "every-half-second"), 15, "the runs to stop", interval=0.6)

    occurrences = [occurrence for occurrence, *_ in done]
    assert len(occurrences) == len(set(occurrences)), "an occurrence ran twice"
    assert all(at % 500 == 0 for at in occurrences)
    assert {(payload, collection) for _, payload, collection, _ in done} == {(b"tick", "eu")}
    # The processor may fire one occurrence before it reads the pause (it
    # polls the control topic every 50 ms); none later than that runs, and
    # the resume does not catch up the ones in between (the cap is 5).
    assert resumed.defined_at_ms - paused.defined_at_ms >= 2_000
    while_paused = [
        at for at in occurrences if paused.defined_at_ms + 600 <= at < resumed.defined_at_ms
    ]
    assert while_paused == [], "occurrences while paused ran"
    assert any(at >= resumed.defined_at_ms for at in occurrences)
    task_id = f"periodic:every-half-second:{occurrences[0]:013d}"
    # The id may carry a ~N suffix that puts it on the schedule's partition.
    matching = [t for t, *_ in runs.seen if t.startswith(task_id)]
    assert len(matching) == 1
    info = atf.get(matching[0])
    assert info.status is TaskStatus.SUCCESS and info.scheduled_at_ms == occurrences[0]


def _stable(runs: Runs, name: str) -> Any:
    """A predicate true (returning the runs) once two calls in a row see the same runs."""
    last: list[list[tuple[int, bytes, str, int]]] = []

    def check() -> list[tuple[int, bytes, str, int]] | None:
        now = runs.of(name)
        same = bool(last) and last[-1] == now
        last.append(now)
        return now if same and now else None

    return check


def test_bad_schedules_are_refused_with_a_sentence(system: tuple[Client, Runs, str]) -> None:
    atf, _, _ = system
    with pytest.raises(NotFound, match="lambda 'nope' is not defined"):
        atf.set_periodic("x", "nope", every=1)
    with pytest.raises(InvalidArgument, match="exactly one of a cron expression and an interval"):
        atf.set_periodic("x", "report")
    with pytest.raises(InvalidArgument, match="cron minute: 61 is outside 0-59"):
        atf.set_periodic("x", "report", cron="61 * * * *")
    with pytest.raises(InvalidArgument, match="time zone 'Nowhere/City' is not known"):
        atf.set_periodic("x", "report", cron="@daily", time_zone="Nowhere/City")
    with pytest.raises(InvalidArgument, match="priority"):
        atf.set_periodic("x", "report", every=1, priority=7)
    with pytest.raises(InvalidArgument, match="schedule name 'a b'"):
        atf.set_periodic("a b", "report", every=1)
    with pytest.raises(NotFound, match="no periodic schedule 'ghost'"):
        atf.pause_periodic("ghost")
    with pytest.raises(InvalidArgument, match="occurrences of periodic schedules"):
        atf.schedule("report", task_id="periodic:x:0000000000001")
    assert atf.periodic() == []


def test_the_cli_adds_lists_pauses_and_removes(
    system: tuple[Client, Runs, str], capsys: pytest.CaptureFixture[str]
) -> None:
    atf, _, address = system
    base = ["--frontend", address]
    assert main(["periodic", "add", "nightly", "report", "--cron", "0 3 * * *", "--tz",
                 "Europe/Paris", "--misfire", "skip", "--grace", "1m", *base]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith("nightly: report cron 0 3 * * * (Europe/Paris); fires next at 20")
    (info,) = atf.periodic()
    assert (info.cron, info.time_zone, info.misfire, info.misfire_grace_ms) == (
        "0 3 * * *",
        "Europe/Paris",
        "skip",
        60_000,
    )
    assert main(["periodic", "list", *base]) == 0
    listed = capsys.readouterr().out
    assert "nightly" in listed and "report/default p0" in listed and "next 20" in listed
    assert main(["periodic", "pause", "nightly", "--by", "ops", *base]) == 0
    assert capsys.readouterr().out == "nightly: paused\n"
    assert main(["periodic", "list", *base]) == 0
    assert "paused  by ops (atf-es periodic)" in capsys.readouterr().out
    assert main(["periodic", "remove", "nightly", *base]) == 0
    assert main(["periodic", "remove", "nightly", *base]) == 1
    assert "there is no schedule 'nightly'" in capsys.readouterr().err
    assert main(["periodic", "add", "x", "report", "--every", "soon", *base]) == 2
    assert "--every 'soon' is not a duration" in capsys.readouterr().err
    assert main(["periodic", "add", "x", "report", "--every", "1s", "--tz", "Bad/Zone", *base]) == 1
    assert "time zone 'Bad/Zone' is not known" in capsys.readouterr().err
