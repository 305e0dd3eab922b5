"""The partition processor against a real broker: commands in, events and work out."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from confluent_kafka import Producer

from atf_es.clock import now_ms
from atf_es.config import Settings
from atf_es.events import (
    CancelTask,
    ClaimTask,
    Heartbeat,
    LambdaPolicy,
    Outcome,
    SetResult,
    TaskStatus,
    TimerReason,
)
from atf_es.events.codec import encode_command
from atf_es.events.replies import ReplyCode
from atf_es.services.processor import Processor, UnstableLogError
from atf_es.topics import Topics
from tests.helpers import wait_for
from tests.kafka_harness import (
    CommandSender,
    EventLog,
    TopicReader,
    decode_poison_records,
    decode_replies,
    decode_work_records,
    prepare,
)

pytestmark = pytest.mark.integration

FAST = LambdaPolicy(
    name="fast",
    enqueue_timeout_ms=800,
    claim_timeout_ms=500,
    heartbeat_interval_ms=100,
    heartbeat_margin_ms=100,
    heartbeat_timeout_ms=600,
    backoff_base_ms=200,
    backoff_jitter=0.0,
    max_attempts=3,
)
EMAIL = LambdaPolicy(name="send_email")


@pytest.fixture
def settings_4(settings: Settings) -> Settings:
    return replace(settings, partitions=4)


@pytest.fixture
def processor(settings_4: Settings) -> Iterator[Processor]:
    prepare(settings_4, FAST, EMAIL)
    assert settings_4.kafka_bootstrap is not None
    proc = Processor(settings_4, settings_4.kafka_bootstrap, instance_id="test")
    proc.start()
    assert proc.ready.wait(30), "the processor did not join its group"
    yield proc
    proc.stop()
    assert not proc.failed


@pytest.fixture
def sender(settings_4: Settings) -> CommandSender:
    return CommandSender(settings_4)


@pytest.fixture
def log(settings_4: Settings) -> Iterator[EventLog]:
    events = EventLog(settings_4)
    yield events
    events.close()


def test_immediate_and_delayed_tasks_are_recorded_and_enqueued(
    processor: Processor, sender: CommandSender, log: EventLog, settings_4: Settings
) -> None:
    now_id = sender.schedule("send_email", priority=2, payload=b"hello")
    later_id = sender.schedule("send_email", delay_ms=1_500, priority=1)
    sender.flush()

    latest = log.wait_until(
        lambda lg: all(
            (t := lg.latest().get(i)) is not None and t.status is TaskStatus.ENQUEUED
            for i in (now_id, later_id)
        ),
        message="both tasks enqueued",
    )
    del latest
    history = log.history()
    first = history[now_id]
    assert [type(e).__name__ for e, _ in first] == ["TaskScheduled", "TaskEnqueued"]
    # Enqueued in the same batch that recorded it: same processing time.
    assert first[0][0].at == first[1][0].at
    delayed = history[later_id]
    scheduled, enqueued = delayed[0][1], delayed[1][0]
    assert enqueued.cause.name == TimerReason.DUE
    assert enqueued.at >= scheduled.scheduled_at, "a delayed task ran early"

    topics = Topics(settings_4.topic_prefix)
    work = TopicReader(settings_4, topics.exec("send_email", 2))
    work.wait_for_count(1)
    item = decode_work_records(work)[0]
    assert (item.task_id, item.lease, item.payload, item.attempt) == (now_id, 1, b"hello", 0)
    work.close()


def test_every_timeout_re_enqueues_with_a_new_lease(
    processor: Processor, sender: CommandSender, log: EventLog
) -> None:
    task_id = sender.schedule("fast")
    sender.flush()

    def enqueued_with(lease: int, reason: str) -> bool:
        for event, task in log.history().get(task_id, []):
            if task.lease == lease and event.cause.name == reason:
                return True
        return False

    # Nobody claims it: the enqueue timeout hands it out again.
    log.wait_until(lambda lg: enqueued_with(2, TimerReason.ENQUEUE_TIMEOUT), message="lease 2")
    # Claimed but never started: the claim timeout.
    sender.send(ClaimTask(uuid.uuid4().hex, task_id, 2, "w1"))
    sender.flush()
    log.wait_until(lambda lg: enqueued_with(3, TimerReason.CLAIM_TIMEOUT), message="lease 3")
    # Started, then silent: the heartbeat timeout.
    sender.send(ClaimTask(uuid.uuid4().hex, task_id, 3, "w2"))
    sender.send(Heartbeat(uuid.uuid4().hex, task_id, 3, "w2"))
    sender.flush()
    log.wait_until(lambda lg: enqueued_with(4, TimerReason.HEARTBEAT_TIMEOUT), message="lease 4")
    # The attempts used up by the two timeouts count: one more silent attempt dead-letters.
    sender.send(ClaimTask(uuid.uuid4().hex, task_id, 4, "w3"))
    sender.flush()
    final = log.wait_until(
        lambda lg: (
            (t := lg.latest().get(task_id)) is not None
            and t.status is TaskStatus.DEAD_LETTERED
            and t
        ),
        message="dead letter",
    )
    assert final.attempts == 3
    assert "claim timeout" in (final.last_error or "")
    assert log.folded()[task_id] == final


def test_replies_reach_the_asker_with_the_command_id(
    processor: Processor, sender: CommandSender, settings_4: Settings
) -> None:
    topics = Topics(settings_4.topic_prefix)
    reply_to = f"{topics.replies}:3"
    replies = TopicReader(settings_4, topics.replies)
    task_id = sender.schedule("send_email", reply_to=reply_to)
    stale = ClaimTask("claim-with-stale-lease", task_id, 7, "w1")
    sender.flush()
    replies.wait_for_count(1)
    sender.send(stale, reply_to)
    sender.send(CancelTask("cancel-1", task_id, "alice", "changed my mind"), reply_to)
    sender.flush()
    replies.wait_for_count(3)
    assert {partition for partition, *_ in replies.records} == {3}
    by_id = {r.command_id: r for r in decode_replies(replies)}
    scheduled = next(
        r for r in by_id.values() if r.command_id not in ("claim-with-stale-lease", "cancel-1")
    )
    assert scheduled.accepted and scheduled.code is ReplyCode.OK
    assert scheduled.task is not None and scheduled.task.status is TaskStatus.ENQUEUED
    refused = by_id["claim-with-stale-lease"]
    assert (refused.accepted, refused.code) == (False, ReplyCode.STALE_LEASE)
    assert "current lease is 1" in refused.message
    cancelled = by_id["cancel-1"]
    assert cancelled.accepted and cancelled.task is not None
    assert cancelled.task.status is TaskStatus.CANCELLED
    replies.close()


def test_transactions_write_only_partitions_their_owner_alone_writes(
    processor: Processor, sender: CommandSender, log: EventLog, settings_4: Settings
) -> None:
    """Events and work land in the commands partition's number; replies are outside.

    A partition that two processors' transactions write is read by
    read_committed consumers only up to the older open transaction of the
    two, so one stalled processor would hold up the other's output; the
    embedded broker never releases such a partition at all after a producer
    dies mid-transaction (bench/txn_shared_partition.py). Only replies are
    shared, and they are sent after the commit.
    """
    topics = Topics(settings_4.topic_prefix)
    reply_to = f"{topics.replies}:2"
    tasks = [sender.schedule("send_email", reply_to=reply_to) for _ in range(24)]
    sender.flush()
    log.wait_until(
        lambda lg: all(
            (t := lg.latest().get(i)) is not None and t.status is TaskStatus.ENQUEUED for i in tasks
        ),
        message="every task enqueued",
    )
    readers = {
        name: TopicReader(settings_4, topic)
        for name, topic in [
            ("commands", topics.commands),
            ("events", topics.task_events),
            ("exec", topics.exec("send_email", 0)),
            ("replies", topics.replies),
        ]
    }
    try:
        for name, reader in readers.items():

            def has_every_task(reader: TopicReader = reader) -> bool:
                reader.poll(0.1)
                return {key.decode() for _, _, key, _ in reader.records if key} >= set(tasks)

            wait_for(has_every_task, message=f"every task on {name}")
        where: dict[str, dict[str, set[int]]] = {}
        for name, reader in readers.items():
            for partition, _, key, _ in reader.records:
                assert key is not None
                where.setdefault(key.decode(), {}).setdefault(name, set()).add(partition)
        for task_id in tasks:
            seen = where[task_id]
            (home,) = seen["commands"]
            assert seen["events"] == seen["exec"] == {home}, (task_id, seen)
            assert seen["replies"] == {2}
        assert len({next(iter(where[t]["commands"])) for t in tasks}) > 1, "one partition only"
    finally:
        for reader in readers.values():
            reader.close()


def test_bad_input_is_set_aside_and_the_partition_keeps_moving(
    processor: Processor, sender: CommandSender, log: EventLog, settings_4: Settings
) -> None:
    topics = Topics(settings_4.topic_prefix)
    poison = TopicReader(settings_4, topics.poison)
    garbage = b"\xc3\x01not an avro record"
    invalid = encode_command(
        # Priority 9 is outside send_email's levels: a valid record, an invalid command.
        replace(_schedule_command("bad-priority"), priority=9),
        None,
        0,
    )
    for partition in range(4):
        sender.send_raw(garbage, b"junk", partition)
        sender.send_raw(None, b"empty", partition)
    sender.send_raw(invalid, b"bad-priority", 0)
    sender.send(_schedule_command("unknown-lambda", lambda_name="nope"))
    good = [sender.schedule("send_email") for _ in range(8)]
    sender.flush()

    log.wait_until(
        lambda lg: all(
            (t := lg.latest().get(i)) is not None and t.status is TaskStatus.ENQUEUED for i in good
        ),
        message="the good tasks after the bad records",
    )
    poison.wait_for_count(10)
    records = decode_poison_records(poison)
    reasons = [r.reason for r in records]
    assert sum("undecodable command" in r for r in reasons) == 4
    assert sum("empty record" in r for r in reasons) == 4
    assert any("priority 9" in r for r in reasons)
    assert any("unknown_lambda" in r and "'nope'" in r for r in reasons)
    originals = {r.value for r in records if "undecodable" in r.reason}
    assert originals == {garbage}, "the original bytes are kept"
    assert all(r.source_topic == topics.commands and r.offset >= 0 for r in records)
    landed = [partition for partition, _, _, value in poison.records if value is not None]
    assert landed == [r.partition for r in records], "poison stays in its own partition"
    assert "bad-priority" not in log.latest()
    wait_for(lambda: processor.stats.poison >= 10, message="the poison counter")
    poison.close()


@contextmanager
def one_partition(
    settings: Settings, instance: str, **overrides: Any
) -> Iterator[tuple[CommandSender, EventLog, Processor]]:
    """A processor of its own over one partition, with these settings changed."""
    single = replace(settings, partitions=1, **overrides)
    prepare(single, EMAIL)
    assert single.kafka_bootstrap is not None
    sender, log = CommandSender(single), EventLog(single)
    proc = Processor(single, single.kafka_bootstrap, instance_id=instance)
    proc.start()
    try:
        assert proc.ready.wait(30)
        yield sender, log, proc
    finally:
        proc.stop()
        log.close()


def test_flow_control_caps_enqueued_but_unclaimed_tasks(settings: Settings) -> None:
    # One partition, so the cluster-wide cap is this partition's share exactly.
    with one_partition(settings, "capped", max_enqueued=2) as (sender, log, _):
        ids = [sender.schedule("send_email") for _ in range(5)]
        sender.flush()

        def statuses() -> list[TaskStatus]:
            latest = log.latest()
            return [latest[i].status for i in ids if i in latest]

        log.wait_until(lambda lg: len(statuses()) == 5, message="all five recorded")
        log.wait_until(
            lambda lg: statuses().count(TaskStatus.ENQUEUED) == 2, message="two enqueued"
        )
        # A claim frees one unit of credit: exactly one more goes out.
        first = next(i for i in ids if log.latest()[i].status is TaskStatus.ENQUEUED)
        sender.send(ClaimTask(uuid.uuid4().hex, first, 1, "w1"))
        sender.flush()
        log.wait_until(
            lambda lg: (
                statuses().count(TaskStatus.ENQUEUED) == 2
                and statuses().count(TaskStatus.CLAIMED) == 1
            ),
            message="one claimed, two enqueued",
        )
        assert statuses().count(TaskStatus.NEW) == 2, "the rest wait in the index"


def test_commands_within_the_commit_interval_share_a_transaction(settings: Settings) -> None:
    """Spread-out commands of one partition, 1 s apart at most per transaction."""
    with one_partition(settings, "spaced", commit_interval_ms=1_000) as (sender, log, proc):
        ids = []
        for _ in range(8):
            ids.append(sender.schedule("send_email"))
            sender.flush()
            time.sleep(0.05)  # spreading the commands out is the point of this test
        log.wait_until(
            lambda lg: all(
                (t := lg.latest().get(i)) is not None and t.status is TaskStatus.ENQUEUED
                for i in ids
            ),
            message="every task enqueued",
        )
        # The first commits at once (nothing committed for a second before
        # it); the seven sent within the next 0.4 s wait for one more. The
        # counters move just after the commit the log already shows.
        wait_for(lambda: proc.stats.commands == 8, message="eight commands counted")
        assert proc.stats.batches <= 3, proc.stats


def test_a_task_runs_to_success_through_raw_commands(
    processor: Processor, sender: CommandSender, log: EventLog
) -> None:
    task_id = sender.schedule("fast")
    sender.flush()
    log.wait_until(lambda lg: task_id in lg.latest(), message="scheduled")
    sender.send(ClaimTask(uuid.uuid4().hex, task_id, 1, "w1"))
    sender.send(Heartbeat(uuid.uuid4().hex, task_id, 1, "w1"))
    sender.send(SetResult(uuid.uuid4().hex, task_id, 1, "w1", Outcome.RETRIABLE, "smtp timeout"))
    sender.flush()
    # The retry goes out after its backoff with lease 2.
    log.wait_until(
        lambda lg: (
            (t := lg.latest().get(task_id)) is not None
            and t.lease == 2
            and t.status is TaskStatus.ENQUEUED
        ),
        message="retry enqueued",
    )
    sender.send(ClaimTask(uuid.uuid4().hex, task_id, 2, "w2"))
    sender.send(SetResult(uuid.uuid4().hex, task_id, 2, "w2", Outcome.SUCCESS, result=b"sent"))
    sender.flush()
    done = log.wait_until(
        lambda lg: (
            (t := lg.latest().get(task_id)) is not None and t.status is TaskStatus.SUCCESS and t
        ),
        message="success",
    )
    assert (done.attempts, done.result, done.last_error) == (2, b"sent", "smtp timeout")
    kinds = [type(e).__name__ for e, _ in log.history()[task_id]]
    assert kinds == [
        "TaskScheduled",
        "TaskEnqueued",
        "TaskClaimed",
        "TaskStarted",
        "TaskFailed",
        "TaskEnqueued",
        "TaskClaimed",
        "TaskSucceeded",
    ]
    assert log.folded()[task_id] == done


def _schedule_command(task_id: str, lambda_name: str = "send_email"):  # type: ignore[no-untyped-def]
    from atf_es.events import ScheduleTask

    return ScheduleTask(uuid.uuid4().hex, task_id, lambda_name, "default", 0, b"", now_ms())


def test_commands_waiting_at_a_takeover_come_before_the_timeouts(settings: Settings) -> None:
    # A heartbeat in the log before its task's deadline, but unread behind a
    # backlog while the partition had no owner, must count: the new owner reads
    # its backlog before it judges timeouts.
    one = replace(settings, partitions=1)
    beating = LambdaPolicy(
        "beating", heartbeat_interval_ms=300, heartbeat_margin_ms=300, heartbeat_timeout_ms=2_000
    )
    prepare(one, beating, EMAIL)
    assert one.kafka_bootstrap is not None
    sender = CommandSender(one)
    log = EventLog(one)
    first = Processor(one, one.kafka_bootstrap, instance_id="first")
    first.start()
    try:
        assert first.ready.wait(30), "the first processor did not join its group"
        task_id = sender.schedule("beating")
        sender.flush()
        log.wait_until(lambda lg: task_id in lg.latest(), message="the task recorded")
        sender.send(ClaimTask(uuid.uuid4().hex, task_id, 1, "w"))
        sender.send(Heartbeat(uuid.uuid4().hex, task_id, 1, "w"))
        sender.flush()
        started = log.wait_until(
            lambda lg: (
                (t := lg.latest().get(task_id)) is not None
                and t.status is TaskStatus.PROCESSING
                and t
            ),
            message="the task processing",
        )
    finally:
        first.stop()
    for _ in range(3_000):
        sender.schedule("send_email")
    sender.send(Heartbeat(uuid.uuid4().hex, task_id, 1, "w"))
    sender.flush()
    deadline = started.next_trigger_at
    assert deadline is not None
    wait_for(lambda: now_ms() > deadline + 300, 10, "the task's heartbeat deadline to pass")
    second = Processor(one, one.kafka_bootstrap, instance_id="second")
    second.start()
    try:
        assert second.ready.wait(30), "the second processor did not join its group"
        wait_for(lambda: second.stats.commands >= 3_001, 30, "the backlog to be read")
        log.wait_until(
            lambda lg: len(lg.history().get(task_id, [])) >= 5, message="the heartbeat applied"
        )
    finally:
        second.stop()
    kinds = [type(e).__name__ for e, _ in log.history()[task_id]]
    assert kinds[:5] == [
        "TaskScheduled",
        "TaskEnqueued",
        "TaskClaimed",
        "TaskStarted",
        "HeartbeatRecorded",
    ], kinds
    assert second.stats.timeouts_held > 0
    log.close()


# The refusal ends the processor's thread with the error, as it ends the process.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_partition_hidden_by_an_open_transaction_is_refused_not_half_restored(
    settings: Settings,
) -> None:
    # Restoring up to the last stable offset while a transaction hides part of
    # the log would build the projection from part of it. The processor must
    # refuse the partition, loudly, and take it once the transaction ends.
    one = replace(settings, partitions=1)
    prepare(one, EMAIL)
    assert one.kafka_bootstrap is not None
    events = Topics(one.topic_prefix).task_events
    rogue = Producer({"bootstrap.servers": one.kafka_bootstrap, "transactional.id": "rogue"})
    rogue.init_transactions(30)
    rogue.begin_transaction()
    rogue.produce(events, b"not an event", b"k", 0)
    rogue.flush(30)
    refused = Processor(one, one.kafka_bootstrap, instance_id="refuses", stable_wait=1.0)
    refused.start()
    try:
        wait_for(lambda: refused.failed, 60, "the processor to refuse the partition")
    finally:
        refused.stop()
    assert isinstance(refused.failure, UnstableLogError), refused.failure
    assert "open transaction" in str(refused.failure)

    rogue.abort_transaction(30)
    sender = CommandSender(one)
    taker = Processor(one, one.kafka_bootstrap, instance_id="takes", stable_wait=10.0)
    taker.start()
    try:
        assert taker.ready.wait(60), "the processor did not take the partition"
        sender.schedule("send_email")
        sender.flush()
        # (The embedded broker shows the aborted record to readers, so the
        # event log is not read here: the processor's count says it recorded.)
        wait_for(lambda: taker.stats.events >= 2, 30, "the task recorded and enqueued")
    finally:
        taker.stop()
    assert not taker.failed
