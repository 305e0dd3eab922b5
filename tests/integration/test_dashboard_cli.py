"""``atf-es dashboard`` as a process: port 0, the printed URL, pages, a clean stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from atf_es.app import App, TaskContext
from atf_es.client import Client
from atf_es.config import Settings
from tests.deployment import running_system
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@contextmanager
def dashboard_process(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    log = tmp_path / "dashboard.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATF_")}
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "atf_es", "dashboard", "--listen", "127.0.0.1:0", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        found = wait_for(
            lambda: re.search(r"dashboard: (http://127\.0\.0\.1:(\d+)/) ", log.read_text()),
            30,
            "the dashboard's URL",
            interval=0.05,
        )
        assert found is not None and int(found.group(2)) > 0
        yield process, found.group(1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
        assert "SIGTERM received: stopping" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_dashboard_command_serves_a_running_frontend(
    settings: Settings, tmp_path: Path
) -> None:
    app = App("dashboard-cli-test")

    @app.lambda_("echo")
    def echo(task: TaskContext) -> bytes:
        return task.payload

    with running_system(replace(settings, partitions=2), app, name="dashboard-cli") as running:
        with Client(running.frontend_address) as atf:
            task_id = atf.schedule("echo", b"<hi>")
            atf.wait(task_id, 30)
        with dashboard_process(tmp_path, "--frontend", running.frontend_address) as (_, url):
            status, body = _get(url)
            assert status == 200
            assert 'data-lambda="echo"' in body
            status, body = _get(f"{url}tasks/{task_id}")
            assert status == 200 and "TASK_SUCCEEDED" in body
            assert "&lt;hi&gt;" in body and "<hi>" not in body
            status, body = _get(f"{url}nowhere")
            assert status == 404 and "there is no page /nowhere" in body


def test_an_unreachable_frontend_gives_503_pages_and_the_command_still_stops(
    tmp_path: Path,
) -> None:
    with dashboard_process(tmp_path, "--frontend", "127.0.0.1:1") as (process, url):
        status, body = _get(f"{url}dead-letters")
        assert status == 503
        assert "The Frontend at 127.0.0.1:1 is unavailable" in body
        assert "Traceback" not in body
        assert process.poll() is None


def test_a_busy_port_is_one_sentence_and_exit_status_1() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "atf_es", "dashboard", "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert f"the dashboard cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
