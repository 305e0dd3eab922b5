"""Retention of finished tasks against a real broker: tombstones on the log, and
a projection restored from that log that equals the live one.

Tasks are scheduled an hour ahead and cancelled (no worker needed), so they
finish at once; with a retention of 1.5 s the processor tombstones them. A
second processor with a fresh data directory and no retention of its own
(so that it tombstones nothing itself) then restores the partitions from the
log: the tombstones must have deleted the rows, and an id scheduled again
after its tombstone must be the new task.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from atf_es.config import Settings
from atf_es.events import CancelTask, LambdaPolicy, QueryTask, Task, TaskStatus
from atf_es.events.codec import decode_event
from atf_es.events.replies import ReplyCode
from atf_es.projections.store import CounterKey, RocksTaskStore
from atf_es.services.processor import Processor
from atf_es.topics import Topics
from tests.helpers import wait_for
from tests.kafka_harness import CommandSender, TopicReader, decode_replies, prepare

pytestmark = pytest.mark.integration

PARTITIONS = 2
RETENTION_MS = 1_500
HOUR_MS = 3_600_000
EMAIL = LambdaPolicy(name="send_email")


@pytest.fixture
def retained(settings: Settings) -> Settings:
    return dataclasses.replace(settings, partitions=PARTITIONS, finished_retention_ms=RETENTION_MS)


def _start(settings: Settings, instance_id: str) -> Processor:
    assert settings.kafka_bootstrap is not None
    processor = Processor(settings, settings.kafka_bootstrap, instance_id=instance_id)
    processor.start()
    try:
        wait_for(
            lambda: processor.failed or len(processor.stats.owned) == PARTITIONS,
            timeout=60,
            message=f"{instance_id} to own (and restore) every partition",
        )
        assert not processor.failed, processor.failure
    except BaseException:
        processor.stop()
        raise
    return processor


@pytest.fixture
def events(retained: Settings) -> Iterator[TopicReader]:
    prepare(retained, EMAIL)
    reader = TopicReader(retained, Topics(retained.topic_prefix).task_events)
    yield reader
    reader.close()


Stores = dict[int, tuple[list[Task], dict[CounterKey, int], list[list[tuple[int, str]]]]]


def _snapshot(data_dir: Path) -> Stores:
    stores = {}
    for partition in range(PARTITIONS):
        with RocksTaskStore.open(data_dir / f"p{partition}") as store:
            finished = [
                store.finished_by(2**62, 1_000, dead_letters=dead) for dead in (False, True)
            ]
            stores[partition] = (list(store.tasks()), store.counts(), finished)
    return stores


def _tombstones(reader: TopicReader) -> dict[str, int]:
    """Task id -> partition of every tombstone read so far."""
    return {
        key.decode(): partition
        for partition, _, key, value in reader.records
        if value is None and key is not None
    }


def _partitions_of(reader: TopicReader) -> dict[str, int]:
    """Task id -> partition of every event read so far."""
    found = {}
    for partition, _, _, value in reader.records:
        if value is not None:
            event, _ = decode_event(value)
            found[event.task_id] = partition
    return found


@pytest.mark.timeout(180)
def test_finished_tasks_are_tombstoned_and_a_restore_applies_the_tombstones(
    retained: Settings, events: TopicReader
) -> None:
    topics = Topics(retained.topic_prefix)
    sender = CommandSender(retained)
    cancelled = [f"done-{i}" for i in range(6)]
    live = _start(retained, "live")
    try:
        for task_id in cancelled:
            sender.schedule("send_email", task_id=task_id, delay_ms=HOUR_MS)
        waiting = sender.schedule("send_email", task_id="waiting", delay_ms=HOUR_MS)
        for task_id in cancelled:
            sender.send(CancelTask(uuid.uuid4().hex, task_id, "test", "retention"))
        sender.flush()

        # Each cancelled task gets one tombstone, on its own events partition.
        def tombstoned() -> bool:
            events.poll(0.1)
            return set(cancelled) <= set(_tombstones(events))

        wait_for(tombstoned, timeout=60, message="a tombstone for every cancelled task")
        placed = _partitions_of(events)
        assert {t: placed[t] for t in cancelled} == {
            t: p for t, p in _tombstones(events).items() if t in cancelled
        }
        assert "waiting" not in _tombstones(events)
        # The counter moves just after the commit the log already shows.
        wait_for(lambda: live.stats.expired == len(cancelled), message="expiries counted")

        # The projection no longer knows them: a read answers NOT_FOUND.
        replies = TopicReader(retained, topics.replies)
        try:
            reply_to = f"{topics.replies}:1"
            for task_id in [cancelled[0], waiting]:
                sender.send(QueryTask(f"q-{task_id}", task_id), reply_to)
            sender.flush()
            replies.wait_for_count(2, timeout=30)
            codes = {r.task_id: r.code for r in decode_replies(replies)}
            assert codes == {cancelled[0]: ReplyCode.NOT_FOUND, waiting: ReplyCode.OK}
        finally:
            replies.close()

        # An id scheduled again after its tombstone is a new task.
        sender.schedule("send_email", task_id=cancelled[1], delay_ms=HOUR_MS, payload=b"again")
        sender.flush()

        tomb_offset = max(
            offset
            for _, offset, key, value in events.records
            if value is None and key == cancelled[1].encode()
        )

        def reborn() -> bool:
            events.poll(0.1)
            return any(
                value is not None and key == cancelled[1].encode() and offset > tomb_offset
                for _, offset, key, value in events.records
            )

        wait_for(reborn, timeout=30, message="the reused id recorded again")
        wait_for(
            lambda: live.stats.events >= 2 * len(cancelled) + 2,
            timeout=30,
            message="the live projection to commit the new task",
        )
    finally:
        live.stop()
    assert not live.failed, live.failure

    expected = _snapshot(live.data_dir)
    rows = {t.task_id: t for tasks, _, _ in expected.values() for t in tasks}
    assert set(rows) == {"waiting", cancelled[1]}
    again = rows[cancelled[1]]
    assert (again.seq, again.status, again.payload) == (1, TaskStatus.NEW, b"again")
    for _, _, finished in expected.values():
        assert finished == [[], []]

    # A second processor restores from the log into an empty data directory.
    # With no retention of its own it tombstones nothing: what it lacks, the
    # restore deleted.
    keep_all = dataclasses.replace(retained, finished_retention_ms=0, dead_letter_retention_ms=0)
    rebuilt = _start(keep_all, "rebuilt")
    try:
        restored = rebuilt.stats.restored_tombstones
    finally:
        rebuilt.stop()
    assert not rebuilt.failed, rebuilt.failure
    assert rebuilt.data_dir != live.data_dir
    assert restored == len(cancelled)
    assert rebuilt.stats.expired == 0
    assert _snapshot(rebuilt.data_dir) == expected
