"""Task chains end to end: ScheduleChain and GetChain over gRPC and the CLI,
a real processor scheduling children as their parents end, a controller and
an executor running them, on the real broker.

The pure rules (ordering, checks, status) and the partition core are in
tests/unit/test_chains.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from atf_es.app import App, FatalError, TaskContext
from atf_es.cli import main
from atf_es.client import AlreadyExists, ChainStep, Client, InvalidArgument, NotFound
from atf_es.clock import now_ms
from atf_es.config import Settings
from atf_es.events import TaskStatus
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


@dataclass
class Runs:
    lock: threading.Lock = field(default_factory=threading.Lock)
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Payload text -> (ms at the start of the run, ms at its end)."""
    count: dict[str, int] = field(default_factory=dict)


@pytest.fixture
def system(settings: Settings) -> Iterator[tuple[Client, Runs, str]]:
    """Processor, Frontend, HSC, controller and an executor of ``step``, whose
    payload ``fail:...`` fails fatally and anything else succeeds."""
    small = replace(settings, partitions=3)
    runs = Runs()
    app = App("chain-test")

    @app.lambda_("step", max_attempts=1)
    def step(task: TaskContext) -> bytes:
        text = task.payload.decode()
        started = now_ms()
        with runs.lock:
            runs.count[text] = runs.count.get(text, 0) + 1
        ended = now_ms()
        with runs.lock:
            runs.spans[text] = (started, ended)
        if text.startswith("fail:"):
            raise FatalError(f"{text} failed on purpose")
        return text.encode()

    prepare(small, *(policy for policy, _ in app.lambdas.values()))
    assert small.kafka_bootstrap is not None
    bootstrap = small.kafka_bootstrap
    gateway = CommandGateway(small, bootstrap)
    hsc = hsc_server(gateway, "127.0.0.1:0")
    processor = Processor(small, bootstrap, instance_id="chain-test")
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
            app, "step", f"127.0.0.1:{controller.port}", f"127.0.0.1:{hsc.port}", threads=4
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


def _three_levels(prefix: str, middle: str = "ok") -> list[ChainStep]:
    return [
        ChainStep("extract", "step", f"{prefix}:extract".encode()),
        ChainStep("clean", "step", f"{prefix}:clean".encode(), after=["extract"]),
        ChainStep("enrich", "step", f"{middle}:{prefix}:enrich".encode(), after=["extract"]),
        ChainStep("load", "step", f"{prefix}:load".encode(), after=["clean", "enrich"]),
        ChainStep("report", "step", f"{prefix}:report".encode(), after=["load"]),
    ]


def test_a_three_level_chain_runs_in_order_and_records_parents_and_root(
    system: tuple[Client, Runs, str],
) -> None:
    atf, runs, _ = system
    chain_id, ids = atf.schedule_chain(_three_levels("good"), chain_id="good")
    assert chain_id == "good" and ids["extract"] == "chain:good"
    assert list(ids) == ["extract", "clean", "enrich", "load", "report"]
    done = wait_for(
        lambda: (info := atf.chain("good")).state != "running" and info,
        60,
        "the chain to finish",
    )
    assert done.state == "succeeded", done.summary
    assert done.summary == "all 5 tasks succeeded"
    span = runs.spans
    assert {k: v for k, v in runs.count.items() if "good" in k} == {
        "good:extract": 1,
        "good:clean": 1,
        "ok:good:enrich": 1,
        "good:load": 1,
        "good:report": 1,
    }
    # Every node started after each of its parents had ended.
    assert span["good:clean"][0] >= span["good:extract"][1]
    assert span["ok:good:enrich"][0] >= span["good:extract"][1]
    assert span["good:load"][0] >= max(span["good:clean"][1], span["ok:good:enrich"][1])
    assert span["good:report"][0] >= span["good:load"][1]
    # Each task knows its chain, its root and its parents; so does its history.
    load = atf.get(ids["load"])
    assert (load.chain_id, load.chain_node, load.root_task_id) == ("good", "load", "chain:good")
    assert load.parent_task_ids == (ids["clean"], ids["enrich"])
    assert load.status is TaskStatus.SUCCESS and load.result == b"good:load"
    scheduled = atf.history(ids["load"])[0]
    assert scheduled.kind == "TASK_SCHEDULED"
    assert scheduled.root_task_id == "chain:good"
    assert scheduled.parent_task_ids == (ids["clean"], ids["enrich"])
    # A repeat of the same chain schedules nothing; another chain under its id is refused.
    assert atf.schedule_chain(_three_levels("good"), chain_id="good")[0] == "good"
    assert runs.count["good:extract"] == 1
    with pytest.raises(AlreadyExists, match="already exists"):
        atf.schedule_chain(_three_levels("other"), chain_id="good")


def test_a_failure_in_the_middle_stops_the_dependents_and_the_status_says_where(
    system: tuple[Client, Runs, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    atf, runs, address = system
    atf.schedule_chain(_three_levels("bad", middle="fail"), chain_id="bad")
    info = wait_for(
        lambda: (i := atf.chain("bad")).state != "running" and i, 60, "the chain to stop"
    )
    assert info.state == "failed"
    states = {n.name: n.state for n in info.nodes}
    assert states == {
        "extract": "success",
        "clean": "success",
        "enrich": "fatal_failure",
        "load": "blocked",
        "report": "blocked",
    }
    assert info.node("load").blocked_by == "enrich"
    assert info.node("report").blocked_by == "enrich"
    assert (
        "'enrich' ended fatal_failure (FatalError: fail:bad:enrich failed on purpose)"
        in info.summary
    )
    assert "'load', 'report' will not run" in info.summary
    assert "bad:load" not in runs.count and "bad:report" not in runs.count
    with pytest.raises(NotFound):
        atf.get(info.node("load").task_id)

    # The CLI says the same, and fails.
    assert main(["chain", "status", "bad", "--frontend", address]) == 1
    out = capsys.readouterr().out
    assert "chain bad: failed (on failure: stop)" in out
    assert "blocked by enrich" in out

    # With "continue", the dependents run anyway; the CLI schedules it from a file.
    spec = tmp_path / "chain.json"
    nodes = [
        {"name": "a", "lambda": "step", "payload": "fail:cont:a"},
        {"name": "b", "lambda": "step", "payload": "cont:b", "after": ["a"], "delay": "200ms"},
    ]
    spec.write_text(json.dumps({"chain_id": "cont", "on_failure": "continue", "nodes": nodes}))
    assert main(["chain", "run", str(spec), "--frontend", address]) == 0
    assert "chain cont: 2 tasks" in capsys.readouterr().out
    info = wait_for(lambda: (i := atf.chain("cont")).state != "running" and i, 60, "cont to end")
    assert [n.state for n in info.nodes] == ["fatal_failure", "success"]
    assert info.state == "failed" and info.summary.startswith("finished with failures")


def test_bad_chains_are_refused_with_a_reason(system: tuple[Client, Runs, str]) -> None:
    atf, _, _ = system
    cases: list[tuple[list[ChainStep], str]] = [
        ([], "at least one node"),
        ([ChainStep("a", "step", after=["b"]), ChainStep("b", "step", after=["a"])], "cycle"),
        ([ChainStep("a", "step", after=["nope"])], "unknown node 'nope'"),
        ([ChainStep("a", "step"), ChainStep("a", "step")], "used twice"),
        ([ChainStep("a", "step"), ChainStep("b", "undefined_lambda")], "not defined"),
        ([ChainStep("a", "step", priority=7)], "priority"),
    ]
    for steps, message in cases:
        with pytest.raises(Exception, match=message) as caught:
            atf.schedule_chain(steps)
        assert caught.value.__class__.__name__ in {"InvalidArgument", "UnknownLambda"}
    with pytest.raises(InvalidArgument, match="chain_id"):
        atf.chain("no spaces allowed")
    with pytest.raises(NotFound, match="no chain 'never'"):
        atf.chain("never")
    with pytest.raises(InvalidArgument, match="tasks of chains"):
        atf.schedule("step", b"x", task_id="chain:mine")
