"""The processor's consumer of the commands topic takes ``commands_fetch_wait_ms``.

Every other consumer keeps ``kafka_clients.FETCH_WAIT_MS``, which is also the
setting's default; the processor's own wait is a setting because on the
embedded broker a longer one is cheaper under load and slower at low load
(docs/benchmarks.md, "Commands fetch wait").
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from atf_es import kafka_clients
from atf_es.config import Settings
from atf_es.services.processor import commands_consumer_overrides


def test_the_setting_reaches_the_commands_consumer() -> None:
    settings = replace(Settings(), commands_fetch_wait_ms=345, session_timeout_ms=7_000)
    overrides = commands_consumer_overrides(settings, "p-1")
    assert overrides["fetch.wait.max.ms"] == 345
    assert overrides["client.id"] == "processor-p-1"
    assert overrides["session.timeout.ms"] == 7_000
    assert Settings().commands_fetch_wait_ms == kafka_clients.FETCH_WAIT_MS


@pytest.mark.parametrize("wait", [1, Settings().commands_fetch_wait_ms, 10_000])
def test_librdkafka_takes_every_allowed_wait(wait: int) -> None:
    """The bounds ``Settings`` allows are values librdkafka accepts (it checks at construction)."""
    settings = replace(Settings(), commands_fetch_wait_ms=wait)
    consumer = kafka_clients.consumer(
        "127.0.0.1:9", "unit", overrides=commands_consumer_overrides(settings, "unit")
    )
    consumer.close()
