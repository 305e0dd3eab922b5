"""``atf-es dev``: the whole system in one process tree, and a demo workload.

In this process: the partition processor, the HSC, the Frontend and one
Controller for the app's lambdas. Executors run as child processes, one per
lambda, because an executor that loses its heartbeats ends its own process
(that is what keeps a task from running twice at once); the supervisor here
starts it again. With ``--metrics HOST:PORT`` this process serves the
in-process services' metrics there (cli.main) and each executor child its
own on ``HOST:0``, whose URL is printed (docs/metrics.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TextIO

from atf_es import metrics
from atf_es.app import App
from atf_es.client import AtfError, Client, TaskInfo
from atf_es.config import Settings
from atf_es.dashboard import DashboardError, DashboardServer, dashboard_server
from atf_es.events import TaskStatus
from atf_es.services.auth import ServerSecurity
from atf_es.services.control import ControlView
from atf_es.services.controller import Controller
from atf_es.services.executor import EXIT_HEARTBEAT_LOST
from atf_es.services.frontend import frontend_server
from atf_es.services.gateway import CommandGateway
from atf_es.services.grpc_server import GrpcServer
from atf_es.services.hsc import hsc_server
from atf_es.services.processor import Processor

DEMO_APP = "atf_es.examples.demo:app"


class ExecutorProcess:
    """One ``atf-es executor`` child, restarted if it ends on its own.

    With ``metrics_host``, each child serves its own ``/metrics`` on a free
    port of that host (``--metrics HOST:0``); the supervisor prints the URL
    each child reports (again after a restart) and counts the restarts in
    ``atf_dev_executor_restarts`` on the dev process's endpoint.
    """

    def __init__(
        self,
        app_spec: str,
        lambda_name: str,
        controller: str,
        hsc: str,
        out: TextIO,
        *,
        metrics_host: str | None = None,
        log_format: str = "text",
        env: Mapping[str, str] | None = None,
    ):
        """``env``: the child's environment (``executor_env``); default: this process's."""
        self.name = f"executor[{lambda_name}]"
        self.lambda_name = lambda_name
        self._command = [
            sys.executable, "-m", "atf_es", "executor", app_spec, lambda_name,
            "--controller", controller, "--hsc", hsc, "--threads", "2",
        ]  # fmt: skip
        self._command += ["--log-format", log_format]
        if metrics_host is not None:
            self._command += ["--metrics", f"{metrics_host}:0"]
        self._metrics = metrics_host is not None
        self._env = None if env is None else dict(env)
        self._out = out
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.restarts = 0
        self.metrics_url: str | None = None
        """The current child's /metrics, once it said."""

    def _spawn(self) -> subprocess.Popen[bytes]:
        if not self._metrics:
            return subprocess.Popen(self._command, stdout=subprocess.DEVNULL, env=self._env)
        process = subprocess.Popen(self._command, stdout=subprocess.PIPE, env=self._env)
        threading.Thread(
            target=self._read, args=(process,), name=f"{self.name}-out", daemon=True
        ).start()
        return process

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        """Pass the child's metrics line on; drain the rest (a full pipe would block it)."""
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith("metrics: "):
                self.metrics_url = line.removeprefix("metrics: ")
                print(f"{self.name} {line}", file=self._out, flush=True)
        process.stdout.close()

    def start(self) -> None:
        self._process = self._spawn()
        self._watcher = threading.Thread(target=self._watch, name=self.name, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stopping.is_set():
            process = self._process
            if process is None:
                return
            code = process.wait()
            if self._stopping.is_set():
                return
            self.restarts += 1
            reason = "heartbeats_lost" if code == EXIT_HEARTBEAT_LOST else "exited"
            metrics.DEV_EXECUTOR_RESTARTS.labels(self.lambda_name, reason).inc()
            print(f"{self.name} exited with status {code}; restarting it", file=self._out)
            self._process = self._spawn()

    def stop(self) -> None:
        self._stopping.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._watcher is not None:
            self._watcher.join(5)


def executor_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An executor child's environment: ``base`` (this process's), with the
    settings an executor reads set as ``ATF_*`` variables, so a child sees
    what ``dev`` was given, from a ``--config`` file too: its token and TLS
    roots for the services, and how it claims."""
    env = dict(os.environ if base is None else base)
    env["ATF_EXECUTOR_PREFETCH"] = str(settings.executor_prefetch)
    env["ATF_EXECUTOR_BATCH"] = str(settings.executor_batch)
    for name, value in (
        ("ATF_AUTH_TOKEN", settings.auth_token),
        ("ATF_TLS_CA_FILE", settings.tls_ca_file),
    ):
        if value is None:
            env.pop(name, None)
        else:
            env[name] = str(value)
    return env


@dataclass
class System:
    """Every running part, in start order."""

    processor: Processor
    gateway: CommandGateway
    control: ControlView
    hsc: GrpcServer
    frontend: GrpcServer
    controller: Controller
    executors: list[ExecutorProcess]
    dashboard: DashboardServer | None = None

    @property
    def frontend_address(self) -> str:
        return f"127.0.0.1:{self.frontend.port}"

    def stop(self) -> None:
        if self.dashboard is not None:
            self.dashboard.stop()
        for executor in self.executors:
            executor.stop()
        self.controller.stop()
        self.frontend.stop()
        self.hsc.stop()
        self.gateway.close()
        self.control.close()
        self.processor.stop()


def start_system(
    settings: Settings, bootstrap: str, app: App, app_spec: str, out: TextIO
) -> System:
    app.define(settings, bootstrap)
    print(f"app: {app.name} with lambdas {', '.join(sorted(app.lambdas))}", file=out)
    processor = Processor(settings, bootstrap, instance_id="dev")
    processor.start()
    gateway = CommandGateway(settings, bootstrap, client_id="dev")
    control = ControlView(settings, bootstrap)
    security = ServerSecurity.from_settings(settings)
    hsc = hsc_server(gateway, settings.hsc_address, security=security)
    frontend = frontend_server(gateway, control, settings.frontend_address, security=security)
    hsc.start()
    frontend.start()
    controller = Controller(
        settings,
        bootstrap,
        sorted(app.lambdas),
        f"127.0.0.1:{hsc.port}",
        address=settings.controller_address,
        security=security,
    )
    controller.start()
    executors = [
        ExecutorProcess(
            app_spec,
            name,
            f"127.0.0.1:{controller.port}",
            f"127.0.0.1:{hsc.port}",
            out,
            metrics_host=(
                metrics.parse_address(settings.metrics_address)[0]
                if settings.metrics_address
                else None
            ),
            log_format=settings.log_format,
            env=executor_env(settings),
        )
        for name in sorted(app.lambdas)
    ]
    for executor in executors:
        executor.start()
    system = System(processor, gateway, control, hsc, frontend, controller, executors)
    print(
        f"services: processor, hsc :{hsc.port}, frontend :{frontend.port}, "
        f"controller :{controller.port}, {len(executors)} executor processes",
        file=out,
        flush=True,
    )
    if not processor.ready.wait(60):
        raise RuntimeError("the processor did not get its partitions within 60 s")
    dashboard = dashboard_server(settings, system.frontend_address)
    try:
        dashboard.start()
    except DashboardError as exc:
        print(f"dashboard: not started: {exc} (set ATF_DASHBOARD_ADDRESS)", file=out, flush=True)
    else:
        system.dashboard = dashboard
        print(f"dashboard: {dashboard.url}", file=out, flush=True)
    return system


@dataclass(frozen=True)
class Expected:
    lambda_name: str
    status: TaskStatus
    min_attempts: int = 1


# What the demo schedules: (lambda, how many, delay in seconds, payload, expectation).
DEMO_WORKLOAD: list[tuple[str, int, float, bytes, Expected]] = [
    ("echo", 20, 0.0, b"hello", Expected("echo", TaskStatus.SUCCESS)),
    ("echo", 5, 2.0, b"later", Expected("echo", TaskStatus.SUCCESS)),
    ("flaky", 3, 0.0, b"", Expected("flaky", TaskStatus.SUCCESS, min_attempts=3)),
    ("reject", 2, 0.0, b"bad input", Expected("reject", TaskStatus.FATAL_FAILURE)),
    ("broken", 2, 0.0, b"", Expected("broken", TaskStatus.DEAD_LETTERED, min_attempts=3)),
]


def run_demo(system: System, out: TextIO, *, timeout: float = 90.0) -> int:
    """Schedule the demo workload, show progress, print a summary; 0 if all went as expected."""
    expected: dict[str, Expected] = {}
    delayed: set[str] = set()
    settings = system.controller.settings
    with Client(
        system.frontend_address, token=settings.auth_token, tls_ca_file=settings.tls_ca_file
    ) as client:
        for lambda_name, count, delay, payload, expectation in DEMO_WORKLOAD:
            for _ in range(count):
                task_id = client.schedule(lambda_name, payload, delay=delay or None)
                expected[task_id] = expectation
                if delay:
                    delayed.add(task_id)
        parts = [f"{n} x{c}" + (f" in {d:g}s" if d else "") for n, c, d, _, _ in DEMO_WORKLOAD]
        print(f"demo: scheduled {len(expected)} tasks ({', '.join(parts)})", file=out, flush=True)
        started = time.monotonic()
        infos: dict[str, TaskInfo] = {}
        last_line = ""
        while True:
            for task_id in expected:
                if task_id not in infos or not infos[task_id].terminal:
                    try:
                        infos[task_id] = client.get(task_id)
                    except AtfError as exc:
                        print(f"demo: status of {task_id} failed: {exc}", file=out)
            counts = Counter(info.status.value for info in infos.values())
            line = ", ".join(f"{status} {n}" for status, n in sorted(counts.items()))
            elapsed = time.monotonic() - started
            if line != last_line:
                print(f"  [{elapsed:5.1f}s] {line}", file=out, flush=True)
                last_line = line
            if all(info.terminal for info in infos.values()) and len(infos) == len(expected):
                break
            if elapsed > timeout:
                print(f"demo: not finished after {timeout:g}s", file=out)
                break
            time.sleep(0.5)
    return _summary(expected, infos, delayed, out)


def _summary(
    expected: dict[str, Expected],
    infos: dict[str, TaskInfo],
    delayed: set[str],
    out: TextIO,
) -> int:
    print("\nsummary:", file=out)
    print(f"  {'lambda':<8} {'tasks':>5}  {'expected':<15} {'got':<28} attempts", file=out)
    failures = 0
    by_lambda: dict[str, list[str]] = {}
    for task_id, expectation in expected.items():
        by_lambda.setdefault(expectation.lambda_name, []).append(task_id)
    for lambda_name, task_ids in by_lambda.items():
        want = expected[task_ids[0]]
        got = Counter(infos[t].status.value if t in infos else "unknown" for t in task_ids)
        attempts = sorted({infos[t].attempts for t in task_ids if t in infos})
        ok = all(
            t in infos
            and infos[t].status is expected[t].status
            and infos[t].attempts >= expected[t].min_attempts
            for t in task_ids
        )
        failures += 0 if ok else 1
        got_text = ", ".join(f"{s} {n}" for s, n in sorted(got.items()))
        print(
            f"  {lambda_name:<8} {len(task_ids):>5}  {want.status.value:<15} {got_text:<28} "
            f"{attempts}{'' if ok else '   <-- unexpected'}",
            file=out,
        )
    early = [
        t for t in delayed
        if t in infos
        and (started := infos[t].started_at_ms) is not None
        and started < infos[t].scheduled_at_ms
    ]  # fmt: skip
    print(f"  delayed tasks started before their time: {len(early)} of {len(delayed)}", file=out)
    failures += len(early)
    print(
        "demo: all tasks ended as expected" if not failures else "demo: UNEXPECTED outcomes",
        file=out,
        flush=True,
    )
    return 0 if not failures else 1
