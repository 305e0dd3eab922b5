"""Retention of finished tasks in the pure core: settings, expiry, tombstones.

The partition core runs on the in-memory store here (no Kafka). The same
retention against the real broker, and a projection restored from a log that
holds tombstones, are in tests/integration/test_retention.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from atf_es.config import DAY_MS, ConfigError, Settings, load_settings
from atf_es.events import (
    CancelTask,
    ClaimTask,
    Command,
    Heartbeat,
    LambdaPolicy,
    Outcome,
    QueryTask,
    RedriveTask,
    ScheduleTask,
    SetResult,
    Task,
    TaskStatus,
)
from atf_es.events.codec import decode_event, decode_reply, encode_command
from atf_es.events.replies import ReplyCode
from atf_es.projections import MemoryTaskStore
from atf_es.services.partition import (
    Batch,
    Limits,
    Outgoing,
    PartitionCore,
    RawCommand,
    Retention,
    new_batch,
)
from atf_es.topics import Topics

T0 = 1_700_000_000_000
POLICY = LambdaPolicy(name="mail", max_attempts=1, claim_timeout_ms=1_000)
TOPICS = Topics("atf")
PARTITION = 3
FINISHED_MS = 10_000
DEAD_MS = 50_000

# -- the settings ---------------------------------------------------------------------


def test_the_defaults_keep_finished_tasks_a_week_and_dead_letters_a_month() -> None:
    settings = Settings()
    assert settings.finished_retention_ms == 7 * DAY_MS
    assert settings.dead_letter_retention_ms == 30 * DAY_MS
    assert settings.finished_retention_ms == settings.audit_window_ms


def test_the_retentions_come_from_the_environment_and_zero_means_for_ever() -> None:
    settings = load_settings(
        env={"ATF_FINISHED_RETENTION_MS": "86_400_000", "ATF_DEAD_LETTER_RETENTION_MS": "0"}
    )
    assert settings.finished_retention_ms == DAY_MS
    assert settings.dead_letter_retention_ms == 0
    assert settings.source_of("finished_retention_ms") == (
        "environment variable ATF_FINISHED_RETENTION_MS"
    )


def test_bad_retentions_are_refused_naming_the_setting_and_its_source() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            env={"ATF_FINISHED_RETENTION_MS": "-1", "ATF_DEAD_LETTER_RETENTION_MS": "a week"}
        )
    assert caught.value.problems == (
        "dead_letter_retention_ms must be an integer, got 'a week' "
        "(from environment variable ATF_DEAD_LETTER_RETENTION_MS).",
        "finished_retention_ms must be at least 0, got -1 "
        "(from environment variable ATF_FINISHED_RETENTION_MS).",
    )
    with pytest.raises(ConfigError, match="dead_letter_retention_ms must be an integer"):
        Settings(dead_letter_retention_ms=True)


def test_what_expired_means() -> None:
    retention = Retention(finished_ms=FINISHED_MS, dead_letter_ms=DEAD_MS)
    done = _snapshot(TaskStatus.SUCCESS, finished_at=T0)
    dead = _snapshot(TaskStatus.DEAD_LETTERED, finished_at=T0)
    assert not retention.expired(done, T0 + FINISHED_MS - 1)
    assert retention.expired(done, T0 + FINISHED_MS)
    assert not retention.expired(dead, T0 + FINISHED_MS)
    assert retention.expired(dead, T0 + DEAD_MS)
    assert not Retention().expired(done, T0 + 100 * DAY_MS), "0 keeps for ever"
    live = _snapshot(TaskStatus.NEW, finished_at=T0)  # as odd as it is: live stays
    assert not retention.expired(live, T0 + 100 * DAY_MS)
    assert not retention.expired(_snapshot(TaskStatus.SUCCESS, None), T0 + 100 * DAY_MS)


def _snapshot(status: TaskStatus, finished_at: int | None) -> Task:
    return Task("t", "mail", "c", 0, b"", status, 3, T0, T0, None, finished_at=finished_at)


# -- the partition core --------------------------------------------------------------


@dataclass
class Partition:
    """One partition's core on the in-memory store, committing each batch as the
    processor does: snapshots, deletions and the offset in one store commit."""

    retention: Retention = field(default_factory=lambda: Retention(FINISHED_MS, DEAD_MS))
    max_expired: int = 500
    store: MemoryTaskStore = field(default_factory=MemoryTaskStore)
    offset: int = 0
    events: int = 0
    """Records the partition's task-events partition holds (events and tombstones)."""

    def __post_init__(self) -> None:
        self.core = PartitionCore(
            PARTITION,
            self.store,
            {"mail": POLICY}.get,
            TOPICS,
            Limits(max_expired=self.max_expired),
            retention=self.retention,
        )

    def send(self, now: int, *commands: Command, reply_to: str | None = None) -> Batch:
        """Handle ``commands`` and then the due work, as one poll does."""
        records = []
        for command in commands:
            value = encode_command(command, reply_to, now)
            records.append(RawCommand(self.offset, command.task_id.encode(), value))
            self.offset += 1
        batch = new_batch(PARTITION, now)
        self.core.handle(batch, records)
        self.core.fire_due(batch)
        return self._commit(batch)

    def poll(self, now: int, *, timeouts: bool = True) -> Batch:
        batch = new_batch(PARTITION, now)
        self.core.fire_due(batch, timeouts=timeouts)
        return self._commit(batch)

    def _commit(self, batch: Batch) -> Batch:
        self.events += len(batch.events) + len(batch.tombstones)
        offset = self.events - 1 if batch.events or batch.tombstones else None
        self.store.commit(batch.tasks.values(), offset, deleted=batch.deleted)
        return batch

    def schedule(self, now: int, task_id: str) -> None:
        self.send(now, ScheduleTask(f"s-{task_id}", task_id, "mail", "c", 0, b"", now))

    def cancelled(self, now: int, task_id: str) -> None:
        """A task scheduled a minute from ``now``, cancelled at ``now``."""
        self.send(now, ScheduleTask(f"s-{task_id}", task_id, "mail", "c", 0, b"", now + 60_000))
        self.send(now, CancelTask(f"c-{task_id}", task_id, "test"))
        assert self.status(task_id) is TaskStatus.CANCELLED

    def succeeded(self, now: int, task_id: str) -> None:
        self.schedule(now, task_id)
        self.send(
            now,
            ClaimTask(f"cl-{task_id}", task_id, 1, "w"),
            Heartbeat(f"h-{task_id}", task_id, 1, "w"),
            SetResult(f"r-{task_id}", task_id, 1, "w", Outcome.SUCCESS),
        )
        assert self.status(task_id) is TaskStatus.SUCCESS

    def dead_lettered(self, now: int, task_id: str) -> None:
        """Claimed at ``now - claim timeout`` and never started: dead at ``now``."""
        start = now - POLICY.claim_timeout_ms
        self.schedule(start, task_id)
        self.send(start, ClaimTask(f"cl-{task_id}", task_id, 1, "w"))
        self.poll(now)
        assert self.status(task_id) is TaskStatus.DEAD_LETTERED

    def status(self, task_id: str) -> TaskStatus | None:
        task = self.store.get(task_id)
        return None if task is None else task.status


def _tombstoned(batch: Batch) -> list[str]:
    for out in batch.tombstones:
        assert out == Outgoing(TOPICS.task_events, out.key, None, PARTITION)
    return [out.key.decode() for out in batch.tombstones if out.key is not None]


def test_finished_tasks_are_tombstoned_once_their_retention_has_run_out() -> None:
    p = Partition()
    p.cancelled(T0, "cancelled")
    p.succeeded(T0 + 1, "succeeded")
    p.cancelled(T0 + 2, "later")
    p.schedule(T0, "waiting")  # due now: enqueued, and live whatever the time
    p.send(T0, ScheduleTask("s-delayed", "delayed", "mail", "c", 0, b"", T0 + 10 * DAY_MS))
    assert p.poll(T0 + FINISHED_MS - 1).tombstones == []

    batch = p.poll(T0 + FINISHED_MS + 1)
    assert _tombstoned(batch) == ["cancelled", "succeeded"]
    assert list(batch.deleted) == ["cancelled", "succeeded"]
    assert not batch.empty
    assert batch.transactional()[-2:] == batch.tombstones, "tombstones follow the events"
    assert p.status("cancelled") is None and p.status("succeeded") is None
    assert p.status("later") is TaskStatus.CANCELLED
    # Live tasks stay, however old; the ones that enqueued time out and go
    # round again, but they never leave through the finished index.
    assert p.status("waiting") is not None and p.status("delayed") is TaskStatus.NEW
    assert p.store.counts() == {
        ("mail", "c", 0, "cancelled"): 1,
        ("mail", "c", 0, str(p.status("waiting"))): 1,
        ("mail", "c", 0, "new"): 1,
    }

    assert _tombstoned(p.poll(T0 + FINISHED_MS + 2)) == ["later"]
    assert p.poll(T0 + 20 * DAY_MS).tombstones == []
    assert p.store.finished_by(2**62, 10) == []
    assert {t.task_id for t in p.store.tasks()} == {"waiting", "delayed"}


def test_dead_letters_have_a_retention_of_their_own() -> None:
    p = Partition()
    p.dead_lettered(T0, "dead")
    p.cancelled(T0, "done")
    assert _tombstoned(p.poll(T0 + FINISHED_MS)) == ["done"]
    assert p.poll(T0 + DEAD_MS - 1).tombstones == []
    assert _tombstoned(p.poll(T0 + DEAD_MS)) == ["dead"]
    assert p.store.counts() == {}


@pytest.mark.parametrize(
    ("retention", "kept"),
    [
        (Retention(0, DEAD_MS), {"done"}),
        (Retention(FINISHED_MS, 0), {"dead"}),
        (Retention(0, 0), {"done", "dead"}),
    ],
)
def test_a_retention_of_zero_keeps_for_ever(retention: Retention, kept: set[str]) -> None:
    p = Partition(retention=retention)
    p.dead_lettered(T0, "dead")
    p.cancelled(T0, "done")
    p.poll(T0 + 1_000 * DAY_MS)
    assert {t.task_id for t in p.store.tasks()} == kept


def test_each_poll_tombstones_at_most_its_budget_oldest_first() -> None:
    p = Partition(max_expired=3)
    for i in range(5):
        p.dead_lettered(T0 + i, f"dead{i}")
    for i in range(5):
        p.cancelled(T0 + 10 - i, f"done{i}")
    now = T0 + DAY_MS
    assert _tombstoned(p.poll(now)) == ["done4", "done3", "done2"]
    # Finished tasks first, then the budget left goes to dead letters.
    assert _tombstoned(p.poll(now)) == ["done1", "done0", "dead0"]
    assert _tombstoned(p.poll(now)) == ["dead1", "dead2", "dead3"]
    assert _tombstoned(p.poll(now)) == ["dead4"]
    assert p.poll(now).empty


def test_expiry_waits_with_the_timeouts_for_the_command_backlog() -> None:
    p = Partition()
    p.cancelled(T0, "done")
    assert p.poll(T0 + DAY_MS, timeouts=False).tombstones == []
    assert _tombstoned(p.poll(T0 + DAY_MS)) == ["done"]


def test_a_dead_letter_redriven_in_the_same_batch_is_not_tombstoned() -> None:
    p = Partition()
    p.dead_lettered(T0, "dead")
    batch = p.send(T0 + DEAD_MS, RedriveTask("rd", "dead", "ops", "fixed"))
    assert batch.tombstones == []
    assert p.status("dead") is TaskStatus.ENQUEUED, "redriven and run at once"
    assert p.store.finished_by(2**62, 10, dead_letters=True) == []


def test_a_task_read_in_the_batch_that_expires_it_is_answered_then_tombstoned() -> None:
    p = Partition()
    p.cancelled(T0, "done")
    reply_to = f"{TOPICS.replies}:0"
    batch = p.send(T0 + FINISHED_MS, QueryTask("q1", "done"), reply_to=reply_to)
    (reply,) = (decode_reply(out.value) for out in batch.replies if out.value is not None)
    assert reply.code is ReplyCode.OK and reply.task is not None
    assert _tombstoned(batch) == ["done"]
    batch = p.send(T0 + FINISHED_MS, QueryTask("q2", "done"), reply_to=reply_to)
    (reply,) = (decode_reply(out.value) for out in batch.replies if out.value is not None)
    assert reply.code is ReplyCode.NOT_FOUND


def test_a_tombstoned_id_scheduled_again_is_a_new_task() -> None:
    p = Partition()
    p.cancelled(T0, "again")
    assert _tombstoned(p.poll(T0 + FINISHED_MS)) == ["again"]
    batch = p.send(
        T0 + FINISHED_MS + 1,
        ScheduleTask("s2", "again", "mail", "other", 0, b"new", T0 + DAY_MS),
    )
    event, task = decode_event(batch.events[0].value or b"")
    assert (event.seq, task.status, task.collection, task.payload) == (
        1,
        TaskStatus.NEW,
        "other",
        b"new",
    )
    assert p.store.get("again") == task
