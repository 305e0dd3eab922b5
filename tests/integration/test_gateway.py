"""Commands through the gateway: durable acks, matched replies, bounded waits."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest

from atf_es.clock import now_ms
from atf_es.config import Settings
from atf_es.events import ClaimTask, LambdaPolicy, ScheduleTask, TaskStatus
from atf_es.events.replies import Reply, ReplyCode
from atf_es.services.gateway import (
    CommandGateway,
    Delivered,
    KafkaUnavailableError,
    NoReplyError,
)
from atf_es.services.processor import Processor
from tests.kafka_harness import prepare

pytestmark = pytest.mark.integration

EMAIL = LambdaPolicy(name="send_email")


def schedule(task_id: str | None = None) -> ScheduleTask:
    return ScheduleTask(
        uuid.uuid4().hex, task_id or uuid.uuid4().hex, "send_email", "default", 0, b"", now_ms()
    )


@pytest.fixture
def small(settings: Settings) -> Settings:
    prepared = replace(settings, partitions=2)
    prepare(prepared, EMAIL)
    return prepared


@pytest.fixture
def gateway(small: Settings) -> Iterator[CommandGateway]:
    assert small.kafka_bootstrap is not None
    gw = CommandGateway(small, small.kafka_bootstrap)
    yield gw
    gw.close()
    gw.close()


@pytest.fixture
def processor(small: Settings) -> Iterator[Processor]:
    assert small.kafka_bootstrap is not None
    proc = Processor(small, small.kafka_bootstrap, instance_id="gw-test")
    proc.start()
    assert proc.ready.wait(30)
    yield proc
    proc.stop()


def test_replies_are_matched_to_their_commands(
    processor: Processor, gateway: CommandGateway
) -> None:
    reply = gateway.send(schedule("t-1"))
    assert isinstance(reply, Reply) and reply.accepted
    assert reply.task is not None and reply.task.status is TaskStatus.ENQUEUED
    refused = gateway.send(ClaimTask("stale", "t-1", 9, "w"))
    assert isinstance(refused, Reply)
    assert (refused.command_id, refused.code) == ("stale", ReplyCode.STALE_LEASE)
    claimed = gateway.send(ClaimTask("ok", "t-1", 1, "w"))
    assert isinstance(claimed, Reply) and claimed.accepted
    assert claimed.task is not None and claimed.task.status is TaskStatus.CLAIMED


def test_a_batch_gets_one_reply_each(processor: Processor, gateway: CommandGateway) -> None:
    commands = [schedule() for _ in range(300)]
    results = gateway.send_many(list(commands), timeout=30)
    assert all(isinstance(r, Reply) and r.accepted for r in results), results[:3]
    replies = [r for r in results if isinstance(r, Reply)]
    assert [r.task_id for r in replies] == [c.task_id for c in commands]


def test_durable_ack_without_waiting_for_a_processor(gateway: CommandGateway) -> None:
    delivered = gateway.send(schedule(), wait_reply=False)
    assert isinstance(delivered, Delivered) and delivered.offset >= 0


def test_no_processor_means_a_bounded_wait(gateway: CommandGateway) -> None:
    # Warm the producer (metadata, idempotence) so the timeout below is spent
    # waiting for the reply, which is what this test is about.
    assert isinstance(gateway.send(schedule(), wait_reply=False, timeout=30), Delivered)
    started = time.monotonic()
    with pytest.raises(NoReplyError, match="is a processor running"):
        gateway.send(schedule(), timeout=1.0)
    assert time.monotonic() - started < 5, "the wait must be bounded by the timeout"


def test_a_broker_outage_means_a_bounded_wait(small: Settings) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: the outage
    gw = CommandGateway(small, f"127.0.0.1:{port}")
    try:
        started = time.monotonic()
        with pytest.raises(KafkaUnavailableError, match="did not acknowledge"):
            gw.send(schedule(), timeout=2.0)
        # A hang check, not a speed goal: the call must return near its timeout.
        assert time.monotonic() - started < 6
    finally:
        gw.close()
