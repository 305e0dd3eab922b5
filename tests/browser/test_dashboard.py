"""The dashboard in headless Chromium, against a whole system on a real broker.

Clicks through what an operator does: pause a lambda and resume it (the page
and ``ListGates`` agree each time), inspect a dead letter and redrive it (it
leaves the list, runs, and its history shows who redrove it and why), and
reads the overview and the periodic schedules. Also: output is escaped, and
an unreachable Frontend is a page with a sentence, not a traceback.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest

from atf_es.app import App, RetriableError, TaskContext
from atf_es.client import Client
from atf_es.config import Settings
from atf_es.dashboard import DashboardServer, dashboard_server
from atf_es.events import TaskStatus
from tests.deployment import Running, running_system
from tests.helpers import wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.integration

FAST: dict[str, Any] = {
    "heartbeat_interval_ms": 400,
    "heartbeat_timeout_ms": 2_500,
    "heartbeat_margin_ms": 600,
    "backoff_base_ms": 50,
    "backoff_max_ms": 100,
    "backoff_jitter": 0.0,
}
TIMEOUT_MS = 20_000


def make_app(fixed: threading.Event) -> App:
    app = App("dashboard-test")

    @app.lambda_("echo", **FAST)
    def echo(task: TaskContext) -> bytes:
        return task.payload

    @app.lambda_("mail", max_attempts=1, **FAST)
    def mail(task: TaskContext) -> str:
        if not fixed.is_set():
            raise RetriableError(f"relay said <b>{task.payload.decode()}</b> & gave up")
        return "sent"

    return app


class Setup:
    def __init__(self, running: Running, dashboard: DashboardServer, fixed: threading.Event):
        self.running = running
        self.dashboard = dashboard
        self.fixed = fixed
        self.atf = Client(running.frontend_address, timeout=20)

    def url(self, path: str = "") -> str:
        return self.dashboard.url + path.lstrip("/")


@pytest.fixture
def setup(settings: Settings) -> Iterator[Setup]:
    fixed = threading.Event()
    small = replace(settings, partitions=2)
    with running_system(small, make_app(fixed), name="dashboard") as running:
        dashboard = dashboard_server(small, running.frontend_address, "127.0.0.1:0")
        dashboard.start()
        built = Setup(running, dashboard, fixed)
        try:
            yield built
        finally:
            built.atf.close()
            dashboard.stop()
            dashboard.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    try:
        yield opened
    finally:
        context.close()


def test_pause_and_resume_a_lambda_from_the_gates_page(setup: Setup, page: Page) -> None:
    from playwright.sync_api import expect

    page.goto(setup.url("/gates"))
    row = page.locator('tr[data-lambda="echo"]')
    expect(row.locator("td.state")).to_have_text("open")
    assert setup.atf.gates() == []

    row.locator('button[data-action="pause"]').click()
    expect(page.locator(".flash.ok")).to_have_text("echo paused")
    expect(row.locator("td.state")).to_have_text("paused")
    (gate,) = setup.atf.gates()
    assert (gate.name, gate.action, gate.set_by) == ("echo", "pause", "dashboard")

    # Held, not lost: a task scheduled now waits, and the overview shows it as such.
    task_id = setup.atf.schedule("echo", b"held")
    wait_for(lambda: setup.atf.get(task_id).held_by == "echo", 20, "the task to be held")
    page.goto(setup.url("/"))
    expect(page.locator('section[data-lambda="echo"] h2 .badge')).to_have_text("paused")

    page.goto(setup.url("/gates"))
    row.locator('button[data-action="resume"]').click()
    expect(page.locator(".flash.ok")).to_have_text("echo resumed")
    expect(row.locator("td.state")).to_have_text("open")
    assert setup.atf.gates() == []
    assert setup.atf.wait(task_id, 30).status is TaskStatus.SUCCESS


def test_inspect_and_redrive_a_dead_letter(setup: Setup, page: Page) -> None:
    from playwright.sync_api import expect

    atf = setup.atf
    task_id = atf.schedule("mail", b"no")
    assert atf.wait(task_id, 30).status is TaskStatus.DEAD_LETTERED

    page.goto(setup.url("/dead-letters"))
    listed = page.locator(f'tr.dead-letter[data-task="{task_id}"]')
    expect(listed).to_have_count(1)
    expect(listed).to_contain_text("relay said <b>no</b> & gave up")
    listed.locator("a").click()

    # The inspect page: the full last error, escaped (no <b> element made of it).
    expect(page.locator("h1")).to_have_text("Dead letter")
    expect(page.locator("pre.error")).to_have_text("RetriableError: relay said <b>no</b> & gave up")
    assert page.locator("pre.error b").count() == 0

    setup.fixed.set()
    page.fill('form.redrive input[name="reason"]', "relay fixed")
    page.fill('form.redrive input[name="by"]', "ada")
    page.click('form.redrive button[name="redrive"]')

    # Back on the task page: the redrive is in the history, with who and why.
    expect(page).to_have_url(re.compile(rf"/tasks/{task_id}\?ok="))
    expect(page.locator(".flash.ok")).to_have_text("redriven 1 of 1 by ada: relay fixed")
    redriven = page.locator('ol.timeline li[data-kind="TASK_REDRIVEN"]')
    expect(redriven).to_have_count(1)
    expect(redriven).to_contain_text("by: ada")
    expect(redriven).to_contain_text("reason: relay fixed")
    entries = page.locator("ol.timeline li")
    kinds = [entries.nth(i).get_attribute("data-kind") for i in range(entries.count())]
    assert kinds.index("TASK_DEAD_LETTERED") < kinds.index("TASK_REDRIVEN")

    assert atf.wait(task_id, 30).status is TaskStatus.SUCCESS
    history = atf.history(task_id)
    assert [(h.requested_by, h.reason) for h in history if h.kind == "TASK_REDRIVEN"] == [
        ("ada", "relay fixed")
    ]
    page.reload()
    expect(page.locator("dl.fields")).to_contain_text("success")
    expect(page.locator('ol.timeline li[data-kind="TASK_SUCCEEDED"]')).to_have_count(1)

    page.goto(setup.url("/dead-letters"))
    expect(page.locator(f'tr.dead-letter[data-task="{task_id}"]')).to_have_count(0)
    assert list(atf.dead_letters()) == []

    # Redriving it again is refused by the processor, and the page says so.
    page.goto(setup.url(f"/dead-letters/{task_id}"))
    expect(page.locator("form.redrive")).to_have_count(0)
    expect(page.locator("main")).to_contain_text("This task is success, not dead-lettered.")


def test_overview_periodic_and_task_search(setup: Setup, page: Page) -> None:
    from playwright.sync_api import expect

    atf = setup.atf
    done = [atf.schedule("echo", b"x", collection="news") for _ in range(3)]
    for task_id in done:
        atf.wait(task_id, 30)
    atf.set_periodic("nightly", "echo", cron="0 3 * * *", time_zone="Europe/Paris")

    page.goto(setup.url("/"))
    section = page.locator('section[data-lambda="echo"]')
    news = section.locator("table.counts tr", has_text="news")
    expect(news).to_contain_text("3")
    assert section.locator("svg.chart").count() == 2
    assert page.locator('section[data-lambda="mail"]').count() == 1

    page.goto(setup.url("/periodic"))
    expect(page.locator("table tr", has_text="nightly")).to_contain_text("cron 0 3 * * *")

    page.fill('header input[name="id"]', done[0])
    page.press('header input[name="id"]', "Enter")
    expect(page.locator("h1")).to_have_text(f"Task {done[0]}")
    expect(page.locator('ol.timeline li[data-kind="TASK_SCHEDULED"]')).to_have_count(1)

    missing = page.goto(setup.url("/tasks/no-such-task"))
    assert missing is not None and missing.status == 404
    expect(page.locator(".flash.error")).to_contain_text("no-such-task")


def test_an_unreachable_frontend_is_a_page_with_a_sentence(
    settings: Settings, browser: Browser
) -> None:
    dashboard = dashboard_server(settings, "127.0.0.1:1", "127.0.0.1:0")
    dashboard.start()
    page = browser.new_page()
    try:
        response = page.goto(dashboard.url + "gates")
        assert response is not None and response.status == 503
        text = page.locator(".flash.error").inner_text()
        assert "The Frontend at 127.0.0.1:1 is unavailable" in text
        assert "Traceback" not in page.content()
        posted = page.request.post(
            dashboard.url + "gates",
            form={"lambda": "echo", "action": "pause"},
            headers={"Origin": "http://evil.example"},
            max_redirects=0,
        )
        assert posted.status == 403
    finally:
        page.close()
        dashboard.stop()
