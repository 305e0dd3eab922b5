"""docker-compose.yml: valid, complete, and running the commands the tests run.

No Docker engine runs here, so the file is checked three ways: ``docker
compose config`` (or the older ``docker-compose config``) validates it when
either is installed (.ci/run installs Debian's docker-compose); every atf-es
service's command must fit the template of its kind in
``tests.e2e.deployment.SERVICE_COMMANDS`` (what the e2e deployment runs),
with only the values differing; and every command must parse with the real
``atf-es`` argument parser.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from atf_es.app import load_app
from atf_es.cli import build_parser
from tests.e2e.deployment import SERVICE_COMMANDS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _atf_services() -> dict[str, list[str]]:
    return {
        name: service["command"]
        for name, service in _compose()["services"].items()
        if service.get("image") == "atf-es:local"
    }


def _fits(command: list[str], template: tuple[str, ...]) -> bool:
    if len(command) != len(template):
        return False
    return all(
        part.startswith("{") or part == value for part, value in zip(template, command, strict=True)
    )


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy is not None else None


def test_docker_compose_config_accepts_the_file() -> None:
    cli = _compose_cli()
    if cli is None:
        if os.environ.get("CI"):
            pytest.fail("CI must validate docker-compose.yml: install docker-compose")
        pytest.skip("neither 'docker compose' nor 'docker-compose' is installed")
    done = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr


def test_every_service_of_the_issue_is_there_with_a_health_check() -> None:
    services = _compose()["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "broker,controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft
    kinds = {command[0] for command in _atf_services().values()}
    assert {"topics", "define", "processor", "hsc", "frontend", "controller", "executor"} <= kinds
    assert "dashboard" in kinds
    for name, service in services.items():
        if service.get("restart") == "no":
            continue  # one-shot setup: it ends, it has nothing to probe
        assert "healthcheck" in service, f"{name} has no health check"


def test_the_executors_cover_every_lambda_of_the_demo_app() -> None:
    lambdas = {c[2] for c in _atf_services().values() if c[0] == "executor"}
    assert lambdas == set(load_app("atf_es.examples.demo:app").lambdas)


def test_every_command_is_the_one_the_tests_run() -> None:
    for name, command in _atf_services().items():
        template = SERVICE_COMMANDS.get(command[0])
        assert template is not None, f"{name}: no e2e template for {command[0]!r}"
        assert _fits(command, template), f"{name}: {command} does not fit {template}"


def test_every_command_parses_with_the_atf_es_parser() -> None:
    parser = build_parser()
    for name, command in _atf_services().items():
        try:
            args = parser.parse_args(command)
        except SystemExit as exc:  # argparse's way of saying no
            pytest.fail(f"{name}: atf-es {' '.join(command)} does not parse ({exc})")
        assert callable(args.handler), name


def test_the_grpc_health_checks_probe_the_port_their_service_listens_on() -> None:
    services = _compose()["services"]
    for name, command in _atf_services().items():
        if "--listen" not in command or command[0] == "dashboard":
            continue
        port = command[command.index("--listen") + 1].rsplit(":", 1)[1]
        probe = services[name]["healthcheck"]["test"]
        assert probe[1:4] == ["atf-es", "health", f"127.0.0.1:{port}"], (name, probe)
