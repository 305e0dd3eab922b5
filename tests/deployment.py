"""A whole system in this process on the test's broker, for tests that drive it from outside.

The processor, the HSC, the Frontend (with Admin), a Controller and
in-process executors for every lambda of an app, as ``atf-es dev`` runs them
but without child processes, so a test's lambdas can share state with it.
Nothing is mocked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from atf_es.app import App
from atf_es.config import Settings
from atf_es.services.control import ControlView
from atf_es.services.controller import Controller
from atf_es.services.executor import Executor
from atf_es.services.frontend import frontend_server
from atf_es.services.gateway import CommandGateway
from atf_es.services.hsc import hsc_server
from atf_es.services.processor import Processor
from tests.kafka_harness import prepare


@dataclass(frozen=True)
class Running:
    settings: Settings
    frontend_address: str


@contextmanager
def running_system(settings: Settings, app: App, *, name: str = "test") -> Iterator[Running]:
    """Start everything for ``app`` on ``settings``; stop it all on exit."""
    prepare(settings, *(policy for policy, _ in app.lambdas.values()))
    bootstrap = settings.kafka_bootstrap
    assert bootstrap is not None
    processor = Processor(settings, bootstrap, instance_id=name)
    gateway = CommandGateway(settings, bootstrap)
    hsc = hsc_server(gateway, "127.0.0.1:0")
    control = ControlView(settings, bootstrap)
    frontend = frontend_server(gateway, control, "127.0.0.1:0")
    controller: Controller | None = None
    executors: list[Executor] = []
    try:
        processor.start()
        hsc.start()
        frontend.start()
        controller = Controller(
            settings, bootstrap, list(app.lambdas), f"127.0.0.1:{hsc.port}", controller_id=name
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
        yield Running(settings, f"127.0.0.1:{frontend.port}")
    finally:
        for executor in executors:
            executor.stop(grace=2)
        if controller is not None:
            controller.stop()
        frontend.stop()
        control.close()
        hsc.stop()
        gateway.close()
        processor.stop()
