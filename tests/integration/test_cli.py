"""The ``atf-es`` command as a user runs it: a real subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from atf_es.config import Settings
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


def _command() -> list[str]:
    # The console script installed next to this interpreter, as a user runs it.
    script = Path(sys.executable).parent / "atf-es"
    return [str(script)] if script.exists() else [sys.executable, "-m", "atf_es"]


# Services listen on ports the system picks, so tests never collide on 7070-7072.
_EPHEMERAL = {
    "ATF_FRONTEND_ADDRESS": "127.0.0.1:0",
    "ATF_HSC_ADDRESS": "127.0.0.1:0",
    "ATF_CONTROLLER_ADDRESS": "127.0.0.1:0",
    "ATF_DASHBOARD_ADDRESS": "127.0.0.1:0",
}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATF_")}
    env.update(_EPHEMERAL)
    env.update(extra)
    return env


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_command(), *args],
        env=env if env is not None else _env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_dev_once_runs_the_demo_on_the_embedded_broker(tmp_path: Path) -> None:
    """The README's main job: every service, the demo workload, a summary."""
    result = _run("dev", "--once", "--data-dir", str(tmp_path), "--partitions", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "broker: embedded Tansu (in memory) at 127.0.0.1:" in out
    assert "topics: 6 created, 0 already existed" in out
    assert "atf.task-events                    4 partitions  cleanup.policy=compact" in out
    assert "5 executor processes" in out
    assert "demo: scheduled 32 tasks" in out
    for row in (
        "echo        25  success         success 25",
        "flaky        3  success         success 3",
        "reject       2  fatal_failure   fatal_failure 2",
        "broken       2  dead_lettered   dead_lettered 2",
    ):
        assert row in out, out
    assert "delayed tasks started before their time: 0 of 5" in out
    assert "demo: all tasks ended as expected" in out
    assert "broker: stopped" in out
    assert list((tmp_path / "broker").glob("tansu-*.log"))


def test_dev_once_with_access_control_from_a_config_file(tmp_path: Path) -> None:
    """The executor children get the token from dev's --config file too."""
    token = "ops-" + "o" * 32
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[[principal]]\nname = "ops"\ntoken = "{token}"\nroles = ["admin"]\n')
    config = tmp_path / "atf.toml"
    config.write_text(f'auth_tokens_file = "{tokens}"\nauth_token = "{token}"\n')
    env = {k: v for k, v in _env().items() if k not in ("ATF_AUTH_TOKEN", "ATF_CONFIG")}
    result = _run(
        "dev", "--once", "--config", str(config), "--data-dir", str(tmp_path / "data"), env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo: all tasks ended as expected" in result.stdout, result.stdout


def test_dev_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "out.txt"
    with log.open("w") as out:
        process = subprocess.Popen(
            [*_command(), "dev", "--no-demo", "--data-dir", str(tmp_path)],
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "Ctrl-C to stop" in log.read_text(), 90, "atf-es dev to be running")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    assert "SIGTERM received: stopping" in text
    assert "broker: stopped" in text


def test_config_with_bad_env_var_exits_2() -> None:
    result = _run("config", env=_env(ATF_PARTITIONS="many"))
    assert result.returncode == 2
    assert (
        "partitions must be an integer, got 'many' (from environment variable ATF_PARTITIONS)."
        in result.stderr
    )
    assert result.stdout == ""


def test_config_shows_values_and_sources(tmp_path: Path) -> None:
    config = tmp_path / "atf.toml"
    config.write_text('topic_prefix = "fromfile"\n')
    result = _run(
        "--config", str(config), "config", "--partitions", "3", env=_env(ATF_POLL_INTERVAL_MS="7")
    )
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "fromfile" in lines["topic_prefix"]
    assert f"config file {config}" in lines["topic_prefix"]
    assert "command line" in lines["partitions"]
    assert "environment variable ATF_POLL_INTERVAL_MS" in lines["poll_interval_ms"]


def test_topics_and_check_against_a_broker(settings: Settings) -> None:
    assert settings.kafka_bootstrap is not None
    env = _env(ATF_KAFKA_BOOTSTRAP=settings.kafka_bootstrap)
    prefix = ["--topic-prefix", settings.topic_prefix]

    before = _run("check", *prefix, env=env)
    assert before.returncode == 1, before.stdout + before.stderr
    assert f"missing  {settings.topic_prefix}.commands" in before.stdout

    created = _run("topics", *prefix, env=env)
    assert created.returncode == 0, created.stderr
    assert "6 created, 0 already existed" in created.stdout

    again = _run("topics", *prefix, env=env)
    assert "0 created, 6 already existed" in again.stdout

    after = _run("check", *prefix, env=env)
    assert after.returncode == 0, after.stdout + after.stderr
    assert after.stdout.rstrip().endswith("healthy")


def test_topics_and_check_need_a_broker() -> None:
    for command in ("topics", "check"):
        result = _run(command)
        assert result.returncode == 2
        assert "no broker configured; pass --bootstrap" in result.stderr
    dry = _run("topics", "--dry-run")
    assert dry.returncode == 0
    assert "planned  atf.commands" in dry.stdout


def test_check_reports_an_unreachable_broker() -> None:
    result = _run("check", "--bootstrap", "127.0.0.1:1", "--timeout", "1")
    assert result.returncode == 1
    assert "unhealthy: broker 127.0.0.1:1 did not answer" in result.stdout


def test_help_for_every_command() -> None:
    for command in ("dev", "topics", "config", "check"):
        result = _run(command, "--help")
        assert result.returncode == 0
        assert "ATF_KAFKA_BOOTSTRAP" in result.stdout


def test_python_dash_m_is_the_same_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "atf_es", "topics", "--dry-run", "--topic-prefix", "m"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "planned  m.commands" in result.stdout


def test_hsc_serves_and_stops_on_sigterm(settings: Settings) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.kafka_harness import prepare

    prepare(settings)
    assert settings.kafka_bootstrap is not None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "atf_es",
            "hsc",
            "--bootstrap",
            settings.kafka_bootstrap,
            "--topic-prefix",
            settings.topic_prefix,
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert f"on port {port}" in line, line
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                status = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="atf.v1.HeartbeatStatus"), timeout=10
                )
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            process.send_signal(signal.SIGTERM)
            try:
                stdout, stderr = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, stderr = process.communicate()
                pytest.fail(f"the hsc did not stop within 30 s:\n{stdout}\n{stderr}")
            assert process.returncode == 0, f"{stdout}\n{stderr}"
            assert "SIGTERM received: stopping" in stdout
        finally:
            if process.poll() is None:
                process.kill()


def test_schedule_status_cancel_and_gate_against_a_running_dev(tmp_path: Path) -> None:
    import json
    import re

    log = tmp_path / "dev.txt"
    with log.open("w") as out:
        dev = subprocess.Popen(
            [*_command(), "dev", "--no-demo", "--data-dir", str(tmp_path), "--partitions", "2"],
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "Ctrl-C to stop" in log.read_text(), 90, "atf-es dev to be running")
        match = re.search(r"frontend :(\d+)", log.read_text())
        assert match, log.read_text()
        frontend = f"127.0.0.1:{match.group(1)}"

        scheduled = _run("schedule", "echo", "--payload", "hi", "--frontend", frontend)
        assert scheduled.returncode == 0, scheduled.stderr
        task_id = scheduled.stdout.strip()

        def status_of(task_id: str) -> dict[str, object]:
            shown = _run("status", task_id, "--json", "--frontend", frontend)
            assert shown.returncode == 0, shown.stderr
            return json.loads(shown.stdout)  # type: ignore[no-any-return]

        def status() -> dict[str, object]:
            return status_of(task_id)

        done = wait_for(lambda: (s := status())["status"] == "success" and s, 60, "success")
        assert done["result"] == "hi" and done["attempts"] == 1

        slow = _run("schedule", "slow", "--payload", "30", "--delay", "60", "--frontend", frontend)
        slow_id = slow.stdout.strip()
        cancelled = _run("cancel", slow_id, "--reason", "not needed", "--frontend", frontend)
        assert cancelled.returncode == 0, cancelled.stderr
        assert cancelled.stdout.strip() == f"{slow_id}: cancelled"

        unknown = _run("status", "no-such-task", "--frontend", frontend)
        assert unknown.returncode == 1 and "no-such-task" in unknown.stderr
        bad = _run("schedule", "echo", "--priority", "7", "--frontend", frontend)
        assert bad.returncode == 1 and "priority" in bad.stderr

        paused = _run("gate", "pause", "echo/news", "--reason", "outage", "--frontend", frontend)
        assert paused.returncode == 0, paused.stderr
        assert paused.stdout.strip() == "echo/news: paused"
        held_id = _run(
            "schedule", "echo", "--collection", "news", "--frontend", frontend
        ).stdout.strip()
        held = wait_for(lambda: (s := status_of(held_id)).get("held_by") and s, 30, "held_by")
        assert (held["held_by"], held["held_action"], held["status"]) == (
            "echo/news",
            "pause",
            "new",
        )
        listed = _run("gate", "list", "--frontend", frontend)
        assert listed.returncode == 0 and "echo/news" in listed.stdout and "outage" in listed.stdout
        assert _run("gate", "resume", "echo/news", "--frontend", frontend).returncode == 0
        wait_for(lambda: status_of(held_id)["status"] == "success", 60, "the held task to run")
        assert _run("gate", "list", "--frontend", frontend).stdout.strip() == "no closed gates"
        no_target = _run("gate", "pause", "--frontend", frontend)
        assert no_target.returncode == 2 and "name a LAMBDA" in no_target.stderr
        unknown_lambda = _run("gate", "drop", "nope", "--frontend", frontend)
        assert unknown_lambda.returncode == 1 and "'nope' is not defined" in unknown_lambda.stderr
    finally:
        dev.send_signal(signal.SIGTERM)
        try:
            dev.wait(timeout=60)
        finally:
            if dev.poll() is None:
                dev.kill()
                dev.wait()
