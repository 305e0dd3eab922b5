"""Kafka SASL/SSL settings reach every client: no client is made without ``kafka_config``.

``Settings.kafka_config`` (``[kafka]`` in the config file, ``ATF_KAFKA__*``)
carries ``security.protocol``, ``sasl.*`` and ``ssl.*``. One client built
without it would connect in plaintext and fail against a secured cluster,
so this reads the source: confluent-kafka clients are constructed only in
the two factory modules, and every call of a factory passes the settings'
``kafka_config``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from atf_es import kafka_clients

PACKAGE = Path(__file__).resolve().parents[2] / "atf_es"
FACTORIES = {
    # name: index of the kafka_config positional argument
    "producer": 1,
    "transactional_producer": 2,
    "consumer": 2,
    "admin_client": 1,
    "end_reader": 1,
    "ensure_topics": 2,
}
CONSTRUCTORS = {"Producer", "Consumer", "AdminClient"}
FACTORY_MODULES = {"kafka_clients.py", "broker.py"}


def _sources() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if "_proto" not in p.parts]


def _name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _calls() -> list[tuple[Path, ast.Call, str]]:
    found = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and (name := _name(node)) is not None:
                found.append((path, node, name))
    return found


def test_confluent_clients_are_made_only_by_the_factories() -> None:
    outside = [
        f"{path.relative_to(PACKAGE)}:{call.lineno} {name}(...)"
        for path, call, name in _calls()
        if name in CONSTRUCTORS and path.name not in FACTORY_MODULES
    ]
    assert outside == []


def test_every_factory_call_passes_kafka_config() -> None:
    calls = [(p, c, n) for p, c, n in _calls() if n in FACTORIES]
    assert len(calls) >= 10, "the scan found too few factory calls to mean anything"
    missing = [
        f"{path.relative_to(PACKAGE)}:{call.lineno} {name}(...)"
        for path, call, name in calls
        if not any(k.arg == "kafka_config" for k in call.keywords)
        and len(call.args) <= FACTORIES[name]
        # The factories' own definitions forward their parameter by keyword or position.
        and path.name not in FACTORY_MODULES
    ]
    assert missing == []


@pytest.mark.parametrize(
    "settings_config",
    [
        {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512"},
        {"ssl.ca.location": "/etc/ssl/ca.pem", "security.protocol": "SSL"},
    ],
)
def test_the_factories_put_kafka_config_into_the_client_config(
    settings_config: dict[str, str],
) -> None:
    config = kafka_clients._base("broker:9092", settings_config)
    assert {k: config[k] for k in settings_config} == settings_config
    assert config["bootstrap.servers"] == "broker:9092"
