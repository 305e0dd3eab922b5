"""The system under torture: every service a real process, restartable on fixed ports.

Each service is ``python -m atf_es <command>`` with its output in a log file.
A reaper thread per process waits for it and records when it died, which is
when any execution it was running ended (the checker needs that). Executors
are supervised like a process manager would (restarted whenever they end:
after a kill, or after exiting on their own when their heartbeats failed);
the other services are restarted by the fault that stopped them.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from atf_es.config import Settings
from torture.app import LEDGER_ENV
from torture.checker import Death

REPO_ROOT = Path(__file__).resolve().parent.parent
APP = "torture.app:app"
LAMBDA = "torture"
START_TIMEOUT = 120.0

_OWNS = re.compile(r"owns partitions \[([0-9, ]*)\]")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServiceError(RuntimeError):
    """A service did not start, with the tail of its output."""


@dataclass
class Service:
    """One restartable ``python -m atf_es`` process."""

    name: str
    args: list[str]
    ready: re.Pattern[str]
    """The output line that says it is serving."""
    system: System
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.system.logs / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self, wait: bool = True) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        banner = f"\n=== start {self.starts + 1} at {time.time_ns()} ===\n".encode()
        offset += len(banner)
        with self.log.open("ab") as out:
            out.write(banner)
            process = subprocess.Popen(
                [sys.executable, "-m", "atf_es", *self.args, *self.system.base_args],
                cwd=REPO_ROOT,
                env=self.system.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.process = process
        self.starts += 1
        threading.Thread(
            target=self.system.reap, args=(self, process), name=f"reap-{self.name}", daemon=True
        ).start()
        if wait:
            self.wait_ready(offset)

    def wait_ready(self, offset: int = 0) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ready.search(self.output()[offset:]):
            if not self.alive:
                raise ServiceError(f"{self.name} exited while starting:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{self.name} not ready after {START_TIMEOUT:g}s:\n{self.tail()}"
                )
            time.sleep(0.05)  # polling the log file for the ready line

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL, and return once it is reaped (its death recorded)."""
        process = self.process
        if process is None:
            return
        self.system.cause[process.pid] = "SIGKILL"
        self.signal(signal.SIGCONT)  # a stopped process dies on SIGKILL too, but be plain
        self.signal(signal.SIGKILL)
        process.wait()
        self.system.reaped(process.pid)

    def terminate(self, timeout: float = 60.0) -> int | None:
        process = self.process
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        self.system.cause[process.pid] = "SIGTERM"
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return process.returncode

    def owned(self) -> frozenset[int] | None:
        """The partitions the output last said this processor owns."""
        found = _OWNS.findall(self.output())
        if not found:
            return None
        return frozenset(int(p) for p in found[-1].split(",") if p.strip())


class System:
    """Processors, HSC, Frontend, Controller and executors on one broker."""

    def __init__(
        self,
        settings: Settings,
        workdir: Path,
        *,
        processors: int = 2,
        executors: int = 2,
        threads: int = 2,
        app: str = APP,
        lambdas: tuple[str, ...] = (LAMBDA,),
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``app`` and ``lambdas``: what the controller and executors run (the
        torture's ledger lambda by default); ``env``: more variables for every
        service (not ``ATF_*``)."""
        assert settings.kafka_bootstrap is not None
        self.settings = settings
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.ledger = workdir / "ledger.txt"
        self.deaths: list[Death] = []
        self.cause: dict[int, str] = {}
        self._lock = threading.Lock()
        self._reaped: dict[int, threading.Event] = {}
        self._stopping = threading.Event()
        self.on_death: Callable[[Service, Death], None] | None = None
        ports = {name: free_port() for name in ("hsc", "frontend", "controller")}
        self.hsc_address = f"127.0.0.1:{ports['hsc']}"
        self.frontend_address = f"127.0.0.1:{ports['frontend']}"
        self.controller_address = f"127.0.0.1:{ports['controller']}"
        self.base_args = [
            "--bootstrap",
            settings.kafka_bootstrap,
            "--topic-prefix",
            settings.topic_prefix,
            "--partitions",
            str(settings.partitions),
            "--data-dir",
            str(settings.data_dir),
        ]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ATF_")}
        self.env.update(
            ATF_SESSION_TIMEOUT_MS=str(settings.session_timeout_ms),
            PYTHONPATH=os.pathsep.join(
                p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
            PYTHONUNBUFFERED="1",
        )
        self.env[LEDGER_ENV] = str(self.ledger)
        self.env.update(env or {})
        port_line = re.compile(r"on port \d+")
        self.processors = [
            Service(f"processor-{i}", ["processor", "--instance-id", f"t{i}"], _OWNS, self)
            for i in range(processors)
        ]
        self.hsc = Service("hsc", ["hsc", "--listen", self.hsc_address], port_line, self)
        self.frontend = Service(
            "frontend", ["frontend", "--listen", self.frontend_address], port_line, self
        )
        self.controller = Service(
            "controller",
            ["controller", app, "--hsc", self.hsc_address, "--listen", self.controller_address],
            port_line,
            self,
        )
        executor_args = [
            "executor",
            app,
            *lambdas,
            "--threads",
            str(threads),
            "--controller",
            self.controller_address,
            "--hsc",
            self.hsc_address,
        ]
        self.executors = [
            Service(f"executor-{i}", executor_args, re.compile(r"executor: \d+ threads"), self)
            for i in range(executors)
        ]

    @property
    def services(self) -> list[Service]:
        return [*self.processors, self.hsc, self.frontend, self.controller, *self.executors]

    def start(self) -> None:
        for processor in self.processors:
            processor.start(wait=False)
        for service in (self.hsc, self.frontend, self.controller):
            service.start()
        self.wait_partitions_owned()
        for executor in self.executors:
            executor.start()

    def wait_partitions_owned(self, timeout: float = START_TIMEOUT) -> None:
        """Until the processors' outputs say every partition has exactly one owner."""
        wanted = set(range(self.settings.partitions))
        deadline = time.monotonic() + timeout
        while True:
            owned = [p.owned() or frozenset() for p in self.processors if p.alive]
            together = [partition for o in owned for partition in o]
            if sorted(together) == sorted(wanted):
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {p.name}\n{p.tail(10)}" for p in self.processors)
                raise ServiceError(f"partitions not owned after {timeout:g}s: {owned}\n{tails}")
            time.sleep(0.1)  # polling the processors' output

    def reap(self, service: Service, process: subprocess.Popen[bytes]) -> None:
        """Wait for ``process`` to end; record the death; restart an executor."""
        with self._lock:
            done = self._reaped.setdefault(process.pid, threading.Event())
        code = process.wait()
        at = time.time_ns()
        how = self.cause.pop(process.pid, f"exit {code}")
        death = Death(process.pid, at, how)
        with self._lock:
            self.deaths.append(death)
        done.set()
        if self.on_death is not None:
            self.on_death(service, death)
        if service in self.executors and not self._stopping.is_set():
            with contextlib.suppress(OSError):  # shutting down
                service.start(wait=False)

    def reaped(self, pid: int) -> None:
        """Wait until the reaper recorded ``pid``'s death."""
        with self._lock:
            done = self._reaped.setdefault(pid, threading.Event())
        done.wait(30)

    def heal(self) -> None:
        """Every service running again (after a fault that was cut short)."""
        for service in self.services:
            service.signal(signal.SIGCONT)
            if not service.alive and service not in self.executors:
                service.start()

    def owners(self) -> dict[int, Service]:
        """Which processor owns each partition, from their latest output."""
        found: dict[int, Service] = {}
        for processor in self.processors:
            for partition in processor.owned() or ():
                found[partition] = processor
        return found

    def stop(self) -> None:
        self._stopping.set()
        for service in reversed(self.services):
            service.terminate(timeout=30)

    def data_dir(self, processor: Service) -> Path:
        instance = processor.args[processor.args.index("--instance-id") + 1]
        return Path(self.settings.data_dir) / "processor" / instance


__all__ = ["APP", "LAMBDA", "Service", "ServiceError", "System", "free_port"]
