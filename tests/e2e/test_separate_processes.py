"""Every service as its own OS process, as a deployment runs them.

processor, hsc, frontend, controller and executors are started with
``python -m atf_es ...``; the tests talk to them only through the Frontend
(``Client``) and watch what the lambda did through a ledger file that every
execution appends to (see ``tests.e2e.ledger_app``).
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from atf_es.client import Client
from atf_es.config import Settings, load_settings
from atf_es.events.status import TaskStatus
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
APP = "tests.e2e.ledger_app:app"
START_TIMEOUT = 120.0
TASK_TIMEOUT = 60.0
HEARTBEAT_TIMEOUT_MS = 2000  # as in tests.e2e.ledger_app

_PORT = re.compile(r"on port (\d+)")


def _env(ledger: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATF_")}
    env.update(
        ATF_FRONTEND_ADDRESS="127.0.0.1:0",
        ATF_HSC_ADDRESS="127.0.0.1:0",
        ATF_CONTROLLER_ADDRESS="127.0.0.1:0",
        ATF_SESSION_TIMEOUT_MS="6000",
        ATFTEST_LEDGER=str(ledger),
        PYTHONPATH=os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        ),
        PYTHONUNBUFFERED="1",
    )
    return env


@dataclass
class Service:
    """One ``python -m atf_es`` child; its output goes to a log file (no pipes)."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_line(self, pattern: re.Pattern[str], what: str) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.process.returncode} before {what}:\n"
                    + self.output()
                )
            return pattern.search(self.output())

        try:
            match = wait_for(found, START_TIMEOUT, f"{self.name}: {what}", interval=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- {self.name} output ---\n{self.output()}") from None
        assert match is not None
        return match

    def port(self) -> int:
        return int(self.wait_line(_PORT, "its port line").group(1))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


@dataclass
class Deployment:
    settings: Settings
    ledger: Path
    logs: Path
    base: list[str]
    env: dict[str, str]
    services: list[Service] = field(default_factory=list)
    hsc: str = ""
    controller: str = ""
    frontend: str = ""
    executors: list[Service] = field(default_factory=list)

    def start(self, name: str, *args: str) -> Service:
        log = self.logs / f"{name}-{len(self.services)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "atf_es", *args, *self.base],
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        service = Service(name, process, log)
        self.services.append(service)
        return service

    def start_executor(self) -> Service:
        executor = self.start(
            "executor",
            "executor",
            APP,
            "work",
            "--threads",
            "2",
            "--controller",
            self.controller,
            "--hsc",
            self.hsc,
        )
        executor.wait_line(re.compile(r"executor: 2 threads for work"), "its ready line")
        self.executors.append(executor)
        return executor

    def outputs(self) -> str:
        return "\n".join(
            f"--- {s.name} (pid {s.process.pid}) ---\n{s.output()}" for s in self.services
        )

    def stop_all(self) -> None:
        for service in reversed(self.services):
            service.stop()


@dataclass(frozen=True)
class Line:
    kind: str
    task_id: str
    lease: int
    pid: int
    time_ns: int


def _ledger(path: Path, task_id: str) -> list[Line]:
    if not path.exists():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        kind, tid, lease, pid, t = raw.split()
        if tid == task_id:
            lines.append(Line(kind, tid, int(lease), int(pid), int(t)))
    return lines


@pytest.fixture(scope="module")
def deployment(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    from tests.e2e.ledger_app import app
    from tests.kafka_harness import prepare

    tmp = tmp_path_factory.mktemp("e2e")
    settings = load_settings(
        overrides={
            "kafka_bootstrap": broker,
            "topic_prefix": f"t-e2e-{uuid.uuid4().hex[:8]}",
            "partitions": 2,
            "data_dir": tmp / "data",
            "session_timeout_ms": 6000,
        },
        override_source="test fixture",
    )
    prepare(settings)
    app.define(settings, broker)

    ledger = tmp / "ledger.txt"
    logs = tmp / "logs"
    logs.mkdir()
    base = [
        "--bootstrap",
        broker,
        "--topic-prefix",
        settings.topic_prefix,
        "--partitions",
        "2",
        "--data-dir",
        str(tmp / "data"),
    ]
    system = Deployment(settings, ledger, logs, base, _env(ledger))
    try:
        processor = system.start("processor", "processor", "--instance-id", "e2e")
        hsc = system.start("hsc", "hsc", "--listen", "127.0.0.1:0")
        frontend = system.start("frontend", "frontend", "--listen", "127.0.0.1:0")
        system.hsc = f"127.0.0.1:{hsc.port()}"
        system.frontend = f"127.0.0.1:{frontend.port()}"
        controller = system.start(
            "controller", "controller", APP, "--hsc", system.hsc, "--listen", "127.0.0.1:0"
        )
        system.controller = f"127.0.0.1:{controller.port()}"
        processor.wait_line(re.compile(r"owns partitions \[0, 1\]"), "owning both partitions")
        system.start_executor()
        yield system
    finally:
        system.stop_all()


def test_a_task_runs_once_through_separate_processes(deployment: Deployment) -> None:
    with Client(deployment.frontend, timeout=30) as client:
        task_id = client.schedule("work", b"0")
        info = client.wait(task_id, timeout=TASK_TIMEOUT)
    assert info.status is TaskStatus.SUCCESS, (info, deployment.outputs())
    kinds = [line.kind for line in _ledger(deployment.ledger, task_id)]
    assert kinds == ["start", "end"], kinds


def test_sigkill_an_executor_mid_task_then_the_task_runs_again_without_overlap(
    deployment: Deployment,
) -> None:
    ledger = deployment.ledger
    with Client(deployment.frontend, timeout=30) as client:
        task_id = client.schedule("work", b"4")
        first = wait_for(
            lambda: next((x for x in _ledger(ledger, task_id) if x.kind == "start"), None),
            TASK_TIMEOUT,
            "the task's first start in the ledger",
            interval=0.02,
        )
        assert first is not None
        victim = next(
            (
                e
                for e in deployment.executors
                if e.process.pid == first.pid and e.process.poll() is None
            ),
            None,
        )
        assert victim is not None, (first, [e.process.pid for e in deployment.executors])
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(timeout=30)
        # After wait() returns the process is gone: it cannot append any more.
        killed_at = time.time_ns()
        deployment.executors.remove(victim)

        deployment.start_executor()
        info = client.wait(task_id, timeout=TASK_TIMEOUT)
    assert info.status is TaskStatus.SUCCESS, (info, deployment.outputs())

    lines = _ledger(ledger, task_id)
    text = "\n".join(map(str, lines))
    starts = [x for x in lines if x.kind == "start"]
    assert len(starts) >= 2, text
    assert starts[0] == first, text
    assert starts[1].lease > starts[0].lease, text
    # The retry is the very next lease: no long poll left open by the killed
    # executor claimed it and held it until a claim timeout.
    assert starts[1].lease == starts[0].lease + 1, text
    assert starts[1].pid != victim.process.pid, text
    assert not any(x.pid == victim.process.pid and x.kind == "end" for x in lines), text

    # Execution intervals keyed by (pid, lease): [start, end], or [start, kill] for the victim.
    intervals: list[tuple[int, int, Line]] = []
    for start in starts:
        end = next(
            (x for x in lines if x.kind == "end" and (x.pid, x.lease) == (start.pid, start.lease)),
            None,
        )
        if end is not None:
            stop = end.time_ns
        elif start.pid == victim.process.pid:
            stop = killed_at
        else:
            raise AssertionError(f"execution {start} never ended:\n{text}")
        intervals.append((start.time_ns, stop, start))
    intervals.sort(key=lambda i: i[0])
    for (_, stop_a, a), (start_b, _, b) in itertools.pairwise(intervals):
        assert start_b > stop_a, f"{b} started before {a} stopped:\n{text}"

    delay_ms = (starts[1].time_ns - killed_at) / 1e6
    assert starts[1].time_ns > killed_at, (
        f"second start {delay_ms:.0f} ms after the kill (heartbeat timeout "
        f"{HEARTBEAT_TIMEOUT_MS} ms):\n{text}"
    )
    print(
        f"second start {delay_ms:.0f} ms after the kill; first start -> kill "
        f"{(killed_at - first.time_ns) / 1e6:.0f} ms"
    )
