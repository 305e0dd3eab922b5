"""Reads of the task-events topic see everything committed before them, under load.

A reader that stops at its own idea of the log's end (a ``read_committed``
consumer's last stable offset) read an empty log about one time in ten
while the processor had a transaction open on the partition: the embedded
broker reports 0 then. That made ``History`` answer "no history" for a task
the dashboard had just redriven. Here a load keeps transactions open while
the history and dead-letter readers run again and again, each from scratch
(see ``kafka_clients.log_ends``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from atf_es.app import App, RetriableError, TaskContext
from atf_es.client import Client, TaskRequest
from atf_es.config import Settings
from atf_es.events import TaskStatus
from atf_es.history import read_task_events
from atf_es.services.deadletters import DeadLetterView
from atf_es.subscription import subscribe
from tests.deployment import running_system

pytestmark = pytest.mark.integration

READS = 40


def make_app() -> App:
    app = App("reads-under-load")

    @app.lambda_("echo")
    def echo(task: TaskContext) -> bytes:
        return task.payload

    @app.lambda_("doomed", max_attempts=1)
    def doomed(task: TaskContext) -> None:
        raise RetriableError("never works")

    return app


@pytest.fixture
def loaded(settings: Settings) -> Iterator[tuple[Settings, str, str]]:
    """A finished task and a dead letter, and a load that keeps transactions open."""
    with (
        running_system(settings, make_app(), name="reads") as system,
        Client(system.frontend_address, timeout=30) as client,
    ):
        done = client.schedule("echo", b"x")
        doomed = client.schedule("doomed")
        assert client.wait(done, 30).status is TaskStatus.SUCCESS
        assert client.wait(doomed, 30).status is TaskStatus.DEAD_LETTERED
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                client.schedule_many([TaskRequest("echo", b"") for _ in range(20)])

        thread = threading.Thread(target=load, name="load", daemon=True)
        thread.start()
        try:
            yield settings, done, doomed
        finally:
            stop.set()
            thread.join(30)


def test_a_history_read_during_open_transactions_is_never_empty(
    loaded: tuple[Settings, str, str],
) -> None:
    settings, done, _ = loaded
    assert settings.kafka_bootstrap is not None
    for attempt in range(READS):
        recorded = read_task_events(settings, settings.kafka_bootstrap, done, timeout=20)
        statuses = [r.task.status for r in recorded]
        assert statuses and statuses[-1] is TaskStatus.SUCCESS, (attempt, statuses)


def test_a_new_dead_letter_view_during_open_transactions_sees_every_dead_letter(
    loaded: tuple[Settings, str, str],
) -> None:
    settings, _, doomed = loaded
    assert settings.kafka_bootstrap is not None
    for attempt in range(READS // 2):
        view = DeadLetterView(settings, settings.kafka_bootstrap)
        try:
            view.catch_up(20)
            found = view.get(doomed)
            assert found is not None and found.status is TaskStatus.DEAD_LETTERED, attempt
        finally:
            view.close()


def test_a_subscription_from_latest_during_open_transactions_replays_nothing_old(
    loaded: tuple[Settings, str, str],
) -> None:
    settings, done, doomed = loaded
    for attempt in range(READS // 4):
        with subscribe(None, from_="latest", settings=settings, task_ids=[done, doomed]) as sub:
            # Both tasks ended before the subscription: nothing of theirs may come.
            # Anything from the start of the log would arrive within these polls.
            seen = [event for _ in range(5) for event in sub.poll(0.2)]
            assert seen == [], (attempt, [(e.task.task_id, e.event) for e in seen])
