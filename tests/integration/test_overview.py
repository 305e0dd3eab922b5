"""The overview on a real broker: ``Admin/Overview`` and the sampling view behind it.

Tasks run through a whole system (processor, HSC, Frontend, Controller,
executors); the counts, the delivery latency and the queue depth are checked
against what the tasks did. Nothing is mocked.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from atf_es.app import App, RetriableError, TaskContext
from atf_es.client import Client, InvalidArgument, UnknownLambda
from atf_es.config import Settings
from atf_es.events import TaskStatus
from atf_es.services.overview import OverviewView
from tests.deployment import Running, running_system
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

FAST: dict[str, Any] = {
    "heartbeat_interval_ms": 400,
    "heartbeat_timeout_ms": 2_500,
    "heartbeat_margin_ms": 600,
    "backoff_base_ms": 50,
    "backoff_max_ms": 100,
    "backoff_jitter": 0.0,
}


def make_app() -> App:
    app = App("overview-test")

    @app.lambda_("echo", **FAST)
    def echo(task: TaskContext) -> bytes:
        return task.payload

    @app.lambda_("mail", max_attempts=2, **FAST)
    def mail(task: TaskContext) -> str:
        raise RetriableError("SMTP 421")

    return app


@pytest.fixture
def system(settings: Settings) -> Iterator[Running]:
    with running_system(replace(settings, partitions=3), make_app(), name="overview") as running:
        yield running


def test_overview_counts_each_lambda_by_collection_and_status_with_its_latency(
    system: Running,
) -> None:
    with Client(system.frontend_address, timeout=20) as atf:
        news = [atf.schedule("echo", b"n", collection="news") for _ in range(5)]
        billing = [atf.schedule("echo", b"b", collection="billing") for _ in range(3)]
        later = [atf.schedule("echo", b"l", delay=300) for _ in range(2)]
        mail = [atf.schedule("mail") for _ in range(2)]
        for task_id in news + billing:
            assert atf.wait(task_id, 30).status is TaskStatus.SUCCESS
        for task_id in mail:
            assert atf.wait(task_id, 30).status is TaskStatus.DEAD_LETTERED

        overview = atf.overview()
        assert set(overview.lambdas) == {"echo", "mail"}
        echo = overview.lambdas["echo"]
        assert echo.counts == {
            ("billing", TaskStatus.SUCCESS): 3,
            ("default", TaskStatus.NEW): 2,
            ("news", TaskStatus.SUCCESS): 5,
        }
        assert echo.by_status == {TaskStatus.SUCCESS: 8, TaskStatus.NEW: 2}
        assert echo.by_collection == {"billing": 3, "default": 2, "news": 5}
        assert overview.lambdas["mail"].counts == {("default", TaskStatus.DEAD_LETTERED): 2}
        assert overview.tasks == 12
        assert len(later) == 2

        # Every start is counted once, in the interval it fell in; latencies are
        # from the due time, so none is negative and none is absurd here.
        assert sum(p.started for p in echo.latency) == 8
        assert sum(p.started for p in overview.lambdas["mail"].latency) == 4  # 2 attempts each
        for point in echo.latency:
            assert 0 <= point.p50_ms <= point.p95_ms <= point.max_ms < 30_000
            assert point.at_ms % overview.sample_interval_ms == 0
        # The first call started the sampling: at least one depth sample, and
        # nothing is waiting (the delayed tasks are not due).
        assert overview.sampling_since_ms is not None
        assert echo.depth and echo.depth[-1].waiting == 0

        assert set(atf.overview("mail").lambdas) == {"mail"}
        with pytest.raises(UnknownLambda, match="'nope' is not defined and has no tasks"):
            atf.overview("nope")
        with pytest.raises(InvalidArgument, match="lambda_name"):
            atf.overview("no spaces allowed")


def test_queue_depth_shows_tasks_held_by_a_pause_and_drains_after_resume(
    system: Running,
) -> None:
    settings = system.settings
    assert settings.kafka_bootstrap is not None
    view = OverviewView(settings, settings.kafka_bootstrap, interval_ms=200)
    try:
        view.start()
        with Client(system.frontend_address, timeout=20) as atf:
            atf.pause("echo", reason="test")
            held = [atf.schedule("echo", b"x") for _ in range(3)]

            def due_now() -> int:
                (found,) = view.overviews(["echo"], 0)
                return found.depth[-1].due if found.depth else -1

            wait_for(lambda: due_now() == 3, 20, "3 due tasks held by the pause", interval=0.1)
            atf.resume("echo")
            for task_id in held:
                assert atf.wait(task_id, 30).status is TaskStatus.SUCCESS
            wait_for(lambda: due_now() == 0, 20, "the held tasks to leave the queue")
        view.catch_up(10)  # what an answer does first: the starts are all read
        (found,) = view.overviews(["echo"], 0)
        assert max(p.due for p in found.depth) == 3
        assert sum(p.started for p in found.latency) == 3
        # They waited for the pause: their latency is at least the time held.
        assert max(p.max_ms for p in found.latency) >= 200
    finally:
        view.close()
        view.close()
