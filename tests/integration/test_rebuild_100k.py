"""Invariant 6 at scale: delete the projection and the log rebuilds it exactly.

100,000 tasks go through a real processor: immediate ones, ones due a few
seconds later, ones due in an hour, and some of each cancelled, so the stores
hold tasks in several states and both trigger indexes are populated. Then a
second processor, with its own empty data directory, takes the partitions over
and restores them from the events log; its stores must equal the live ones
task by task.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from atf_es import kafka_clients
from atf_es.clock import now_ms
from atf_es.config import Settings
from atf_es.events import CancelTask, LambdaPolicy, ScheduleTask, Task
from atf_es.events.codec import encode_command
from atf_es.projections.store import CounterKey, RocksTaskStore
from atf_es.services.processor import Processor
from tests.kafka_harness import prepare

pytestmark = pytest.mark.integration

IMMEDIATE = 60_000
SOON = 20_000  # due 1-3 s after sending: fired by the store consumer's poll
LATER = 20_000  # due in an hour: still waiting when the test ends
CANCEL_IMMEDIATE = 5_000  # cancelled after being enqueued
CANCEL_LATER = 5_000  # cancelled while waiting
PARTITIONS = 4
HOUR_MS = 3_600_000


def _wait(processor: Processor, done: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert not processor.failed, f"processor crashed while waiting for {what}"
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what}: {processor.stats}"
            )
        time.sleep(0.05)  # the poll interval of this deadline-bound wait


def _start(settings: Settings, instance_id: str, timeout: float = 120.0) -> Processor:
    assert settings.kafka_bootstrap is not None
    processor = Processor(settings, settings.kafka_bootstrap, instance_id=instance_id)
    processor.start()
    try:
        _wait(
            processor,
            lambda: processor.ready.is_set() and len(processor.stats.owned) == PARTITIONS,
            f"{instance_id} to own (and restore) every partition",
            timeout,
        )
    except BaseException:
        processor.stop()
        raise
    return processor


def _send_workload(settings: Settings) -> tuple[int, int]:
    """Produce the workload; returns (commands sent, tasks that get enqueued)."""
    assert settings.kafka_bootstrap is not None
    topic = f"{settings.topic_prefix}.commands"
    producer = kafka_clients.producer(
        settings.kafka_bootstrap,
        settings.kafka_config,
        overrides={"linger.ms": 20, "batch.num.messages": 10_000},
    )
    sent = 0

    def send(command: ScheduleTask | CancelTask) -> None:
        nonlocal sent
        value = encode_command(command, None, now_ms())
        while True:
            try:
                producer.produce(topic, value, command.task_id.encode())
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        sent += 1

    now = now_ms()
    kinds = [("imm", IMMEDIATE, 0), ("soon", SOON, None), ("later", LATER, HOUR_MS)]
    for kind, count, delay in kinds:
        for i in range(count):
            run_at = now + (delay if delay is not None else 1_000 + (i * 7919) % 2_000)
            send(
                ScheduleTask(
                    uuid.uuid4().hex,
                    f"{kind}-{i:06d}",
                    "rebuild",
                    ("alpha", "beta")[i % 2],
                    i % 3,
                    i.to_bytes(4, "big"),
                    run_at,
                )
            )
    # Keyed like the schedules, so each cancel lands after its task's schedule.
    for kind, count in (("imm", CANCEL_IMMEDIATE), ("later", CANCEL_LATER)):
        for i in range(0, count * 4, 4):
            send(CancelTask(uuid.uuid4().hex, f"{kind}-{i:06d}", "test", "rebuild workload"))
    assert producer.flush(60) == 0, "commands were not delivered"
    return sent, IMMEDIATE + SOON


def _snapshot(data_dir: Path) -> dict[int, tuple[list[Task], dict[CounterKey, int], int]]:
    stores = {}
    for partition in range(PARTITIONS):
        with RocksTaskStore.open(data_dir / f"p{partition}") as store:
            stores[partition] = (list(store.tasks()), store.counts(), store.last_offset())
    return stores


@pytest.mark.timeout(420)
def test_rebuilt_projection_equals_live_one_for_100k_tasks(settings: Settings) -> None:
    settings = dataclasses.replace(settings, partitions=PARTITIONS, max_enqueued=1_000_000)
    prepare(settings, LambdaPolicy(name="rebuild", priorities=3))

    live = _start(settings, "live")
    try:
        commands, enqueued = _send_workload(settings)
        _wait(
            live,
            lambda: live.stats.commands >= commands and live.stats.work >= enqueued,
            "every command handled and every due task enqueued",
            240,
        )
    finally:
        live.stop()
    assert not live.failed
    assert live.stats.commands == commands
    assert live.stats.work == enqueued
    assert live.stats.poison == 0

    expected = _snapshot(live.data_dir)
    tasks_total = sum(len(tasks) for tasks, _, _ in expected.values())
    assert tasks_total == IMMEDIATE + SOON + LATER
    statuses: dict[str, int] = {}
    for _, counts, _ in expected.values():
        for key, n in counts.items():
            statuses[key[3]] = statuses.get(key[3], 0) + n
    assert statuses == {
        "enqueued": IMMEDIATE + SOON - CANCEL_IMMEDIATE,
        "new": LATER - CANCEL_LATER,
        "cancelled": CANCEL_IMMEDIATE + CANCEL_LATER,
    }

    rebuilt = _start(settings, "rebuilt")
    try:
        restored = rebuilt.stats.restored_events
    finally:
        rebuilt.stop()
    assert not rebuilt.failed
    assert rebuilt.data_dir != live.data_dir
    assert restored >= tasks_total

    actual = _snapshot(rebuilt.data_dir)
    for partition in range(PARTITIONS):
        live_tasks, live_counts, live_offset = expected[partition]
        tasks, counts, offset = actual[partition]
        assert len(tasks) == len(live_tasks), f"p{partition}: task count differs"
        for got, want in zip(tasks, live_tasks, strict=True):
            assert got == want, f"p{partition}: {want.task_id} rebuilt differently"
        assert counts == live_counts, f"p{partition}: counts differ"
        assert offset == live_offset, f"p{partition}: last applied offset differs"
