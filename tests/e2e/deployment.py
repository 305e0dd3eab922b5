"""Every service as its own OS process, as a deployment runs them.

processor, hsc, frontend, controller and one executor per lambda of
``tests.e2e.ledger_app`` are started with ``python -m atf_es ...``; tests talk
to them only through the Frontend (``Client``) and watch what the lambdas did
through the ledger file that every execution appends to.

``tests/e2e/conftest.py`` starts one deployment for the whole package, shared
by every e2e test module.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from atf_es.config import Settings, load_settings
from tests.helpers import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
APP = "tests.e2e.ledger_app:app"
START_TIMEOUT = 120.0
TASK_TIMEOUT = 60.0

# Executor threads per lambda: two for ``work`` (tests run two of its tasks at
# once or kill one mid-task), one for every other lambda, to spare the CPU.
EXECUTOR_THREADS = {"work": 2}

_PORT = re.compile(r"on port (\d+)")
_METRICS = re.compile(r"^metrics: (http://\S+/metrics)$", re.MULTILINE)

SERVICE_COMMANDS: dict[str, tuple[str, ...]] = {
    "topics": ("topics",),
    "define": ("define", "{app}"),
    "processor": ("processor", "--instance-id", "{instance_id}"),
    "hsc": ("hsc", "--listen", "{listen}"),
    "frontend": ("frontend", "--listen", "{listen}"),
    "controller": ("controller", "{app}", "--hsc", "{hsc}", "--listen", "{listen}"),
    "executor": (
        "executor", "{app}", "{lambda_name}", "--threads", "{threads}",
        "--controller", "{controller}", "--hsc", "{hsc}",
    ),
    "dashboard": ("dashboard", "--frontend", "{frontend}", "--listen", "{listen}"),
}  # fmt: skip
"""The ``atf-es`` command of each kind of service, with its values as placeholders.
docker-compose.yml runs the same commands (tests/unit/test_compose.py checks)."""


def command(kind: str, **values: str) -> list[str]:
    """The command of a ``kind`` of service with ``values`` filled in."""
    return [part.format(**values) for part in SERVICE_COMMANDS[kind]]


def _env(ledger: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATF_")}
    env.update(
        ATF_FRONTEND_ADDRESS="127.0.0.1:0",
        ATF_HSC_ADDRESS="127.0.0.1:0",
        ATF_CONTROLLER_ADDRESS="127.0.0.1:0",
        # Every service serves /metrics on a free port and prints its URL
        # (the environment, so the commands stay those docker-compose.yml runs).
        ATF_METRICS_ADDRESS="127.0.0.1:0",
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

    def metrics_url(self) -> str:
        """Where this service serves /metrics (its ``metrics: URL`` line)."""
        return self.wait_line(_METRICS, "its metrics line").group(1)

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
    executors: dict[str, list[Service]] = field(default_factory=dict)
    """Live executor processes by lambda name."""

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

    def run(self, name: str, *args: str) -> None:
        """Run a one-shot command to its end; fail with its output if it fails."""
        done = subprocess.run(
            [sys.executable, "-m", "atf_es", *args, *self.base],
            cwd=REPO_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, (
            f"{name} exited with {done.returncode}:\n{done.stdout}{done.stderr}"
        )

    def launch_executor(self, lambda_name: str) -> Service:
        """Start an executor for ``lambda_name``; ``ready`` waits for it."""
        threads = EXECUTOR_THREADS.get(lambda_name, 1)
        executor = self.start(
            f"executor-{lambda_name}",
            *command(
                "executor",
                app=APP,
                lambda_name=lambda_name,
                threads=str(threads),
                controller=self.controller,
                hsc=self.hsc,
            ),
        )
        self.executors.setdefault(lambda_name, []).append(executor)
        return executor

    @staticmethod
    def ready(executor: Service) -> None:
        executor.wait_line(re.compile(r"executor: \d+ threads for \S+"), "its ready line")

    def start_executor(self, lambda_name: str) -> Service:
        executor = self.launch_executor(lambda_name)
        self.ready(executor)
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
    """One ledger line: ``kind`` is start, end, fail or stopped (see ``ledger_app``)."""

    kind: str
    task_id: str
    lease: int
    attempt: int
    pid: int
    time_ns: int

    @property
    def time_ms(self) -> float:
        return self.time_ns / 1e6


def read_ledger(path: Path, task_id: str) -> list[Line]:
    """The ledger lines of ``task_id``, in the order they were appended."""
    if not path.exists():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        kind, tid, lease, attempt, pid, t = raw.split()
        if tid == task_id:
            lines.append(Line(kind, tid, int(lease), int(attempt), int(pid), int(t)))
    return lines


@contextmanager
def deployment_of_processes(broker: str, tmp: Path) -> Iterator[Deployment]:
    """Start the whole system as separate processes; kill them all on exit."""
    from tests.e2e.ledger_app import app

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
        # The one-shot setup docker-compose.yml runs too: topics, then the lambdas.
        for kind in ("topics", "define"):
            system.run(kind, *command(kind, app=APP))
        processor = system.start("processor", *command("processor", instance_id="e2e"))
        hsc = system.start("hsc", *command("hsc", listen="127.0.0.1:0"))
        frontend = system.start("frontend", *command("frontend", listen="127.0.0.1:0"))
        system.hsc = f"127.0.0.1:{hsc.port()}"
        system.frontend = f"127.0.0.1:{frontend.port()}"
        controller = system.start(
            "controller", *command("controller", app=APP, hsc=system.hsc, listen="127.0.0.1:0")
        )
        system.controller = f"127.0.0.1:{controller.port()}"
        # Start every executor before waiting for any: they import in parallel.
        executors = [system.launch_executor(name) for name in sorted(app.lambdas)]
        processor.wait_line(re.compile(r"owns partitions \[0, 1\]"), "owning both partitions")
        for executor in executors:
            system.ready(executor)
        yield system
    finally:
        system.stop_all()
