"""Shared fixtures: which broker the integration tests talk to, and isolation.

``--broker`` chooses the broker (default: ``external`` when ATF_KAFKA_BOOTSTRAP
is set, else ``embedded``):

* ``embedded``: a Tansu broker per test module, logging under a tmp dir;
* ``external``: the broker at ATF_KAFKA_BOOTSTRAP;
* ``testcontainers``: Apache Kafka (KRaft) in Docker; skipped without a Docker engine.

Each test gets its own topic prefix, so tests never see each other's records.
"""

from __future__ import annotations

import importlib
import os
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atf_es.broker import EmbeddedBroker
from atf_es.config import Settings, load_settings

BROKER_CHOICES = ("embedded", "external", "testcontainers")
BOOTSTRAP_ENV = "ATF_KAFKA_BOOTSTRAP"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--broker",
        choices=BROKER_CHOICES,
        default=None,
        help="broker for integration tests: embedded (Tansu, the default), external "
        f"(${BOOTSTRAP_ENV}, the default when it is set) or testcontainers (Kafka in Docker)",
    )


def _broker_kind(config: pytest.Config) -> str:
    chosen: str | None = config.getoption("--broker")
    if chosen is not None:
        return chosen
    return "external" if os.environ.get(BOOTSTRAP_ENV) else "embedded"


def pytest_report_header(config: pytest.Config) -> str:
    return f"atf-es integration broker: {_broker_kind(config)}"


def _kafka_container_class() -> Any:
    # testcontainers >= 4.9 moved the module; the old path warns (an error here).
    for module in ("testcontainers.community.kafka", "testcontainers.kafka"):
        try:
            return importlib.import_module(module).KafkaContainer
        except ImportError:
            continue
    pytest.skip("testcontainers[kafka] is not installed")


def _docker_problem() -> str | None:
    # Probe the socket ourselves first: the docker library leaks a socket
    # (a ResourceWarning, hence an error here) when no engine answers.
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(host.removeprefix("unix://"))
        elif host.startswith("tcp://"):
            address, _, port = host.removeprefix("tcp://").rpartition(":")
            with socket.create_connection((address, int(port)), timeout=2):
                pass
    except (OSError, ValueError) as exc:
        return f"no Docker engine answers at {host} ({exc})"
    import docker  # type: ignore[import-untyped]

    client = docker.from_env()
    try:
        client.ping()
    except Exception as exc:
        return f"the Docker engine at {host} does not answer a ping ({exc})"
    finally:
        client.close()
    return None


@pytest.fixture(scope="session")
def shared_broker(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The external or containerised broker every module shares; None for embedded."""
    kind = _broker_kind(request.config)
    if kind == "external":
        bootstrap = os.environ.get(BOOTSTRAP_ENV)
        if not bootstrap:
            pytest.fail(f"--broker=external needs ${BOOTSTRAP_ENV}")
        yield bootstrap
    elif kind == "testcontainers":
        if (problem := _docker_problem()) is not None:
            pytest.skip(f"--broker=testcontainers: {problem}")
        container = _kafka_container_class()().with_kraft()
        with container:
            yield container.get_bootstrap_server()
    else:
        yield None


@pytest.fixture(scope="module")
def broker(shared_broker: str | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of the broker chosen with ``--broker``.

    The embedded broker is started afresh for each test module: it keeps
    every record in memory and some of its work grows with all it holds
    (measured: the 100k-task rebuild took 35 s on a fresh broker and more
    than ten times that on one that had served the modules before it).
    """
    if shared_broker is not None:
        yield shared_broker
        return
    with EmbeddedBroker(tmp_path_factory.mktemp("broker")) as embedded:
        yield embedded.bootstrap


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> str:
    """A topic prefix no other test uses: readable test name plus random suffix."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name).strip("-")[:40]
    return f"t-{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def settings(broker: str, topic_prefix: str, tmp_path: Path) -> Settings:
    """Settings for this test's prefix on the session broker.

    Reads ATF_* from the environment (so ATF_KAFKA__* client properties for an
    external broker apply), then pins what isolates the test.
    """
    return load_settings(
        overrides={
            "kafka_bootstrap": broker,
            "topic_prefix": topic_prefix,
            "data_dir": tmp_path / "data",
            "session_timeout_ms": 6000,
        },
        override_source="test fixture",
    )
