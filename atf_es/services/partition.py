"""One partition's batch logic: commands and due triggers in, records out.

This is the processor without Kafka. It reads the projection through the
``TaskStore`` port, runs the pure lifecycle, and collects everything one
Kafka transaction must write: events, execution-queue messages, replies and
set-aside (poison) records, plus the snapshots to commit to the store once
the transaction has committed. Nothing here writes anywhere, so a failed
transaction leaves no trace: the shell drops the batch and starts over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from atf_es.events import (
    Accepted,
    Command,
    Event,
    LambdaPolicy,
    RejectCode,
    Rejected,
    ScheduleTask,
    Task,
    TaskEnqueued,
    TaskStatus,
    TimerFired,
    WorkItem,
    decide,
    evolve,
)
from atf_es.events.codec import (
    DecodeError,
    decode_command,
    encode_event,
    encode_poison,
    encode_reply,
    encode_work,
)
from atf_es.events.records import CommandEnvelope
from atf_es.events.replies import PoisonRecord, Reply, ReplyCode
from atf_es.projections.store import TaskStore
from atf_es.topics import Topics

# Rejections that mean the request itself is bad, as opposed to the normal
# refusals of a busy system (a stale lease, a task already claimed).
_BAD_INPUT = frozenset({RejectCode.INVALID, RejectCode.UNKNOWN_LAMBDA})


@dataclass(frozen=True, slots=True)
class RawCommand:
    """A record as consumed from the commands topic."""

    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes
    partition: int | None = None


@dataclass
class Batch:
    """What one transaction writes, and the projection rows it leads to."""

    partition: int
    now: int
    events: list[Outgoing] = field(default_factory=list)
    work: list[Outgoing] = field(default_factory=list)
    replies: list[Outgoing] = field(default_factory=list)
    poison: list[Outgoing] = field(default_factory=list)
    tasks: dict[str, Task] = field(default_factory=dict)
    last_command_offset: int | None = None
    commands: int = 0
    timers: int = 0
    """Triggers fired by the index scan (not run-now tasks enqueued on arrival)."""
    enqueued: dict[tuple[str, int], int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.events or self.work or self.replies or self.poison) and (
            self.last_command_offset is None
        )

    def outgoing(self) -> list[Outgoing]:
        return [*self.events, *self.work, *self.replies, *self.poison]


PolicyLookup = Callable[[str], LambdaPolicy | None]


@dataclass(frozen=True, slots=True)
class Limits:
    max_enqueued: int = 1_000
    """Enqueued-but-unclaimed tasks allowed per (lambda, priority); the rest wait."""
    max_timers: int = 2_000
    """Triggers fired per partition per poll, so one poll cannot grow without bound."""


class PartitionCore:
    """Turns one partition's commands and due triggers into a ``Batch``."""

    def __init__(
        self,
        partition: int,
        store: TaskStore,
        policies: PolicyLookup,
        topics: Topics,
        limits: Limits = Limits(),
    ) -> None:
        self.partition = partition
        self.store = store
        self.policies = policies
        self.topics = topics
        self.limits = limits

    # -- reading through the batch ---------------------------------------

    def _task(self, batch: Batch, task_id: str) -> Task | None:
        task = batch.tasks.get(task_id)
        return task if task is not None else self.store.get(task_id)

    def _credit(self, batch: Batch, lambda_name: str, priority: int) -> int:
        pair = (lambda_name, priority)
        used = self.store.enqueued(lambda_name, priority) + batch.enqueued.get(pair, 0)
        return self.limits.max_enqueued - used

    # -- commands --------------------------------------------------------

    def handle(self, batch: Batch, records: list[RawCommand]) -> None:
        for record in records:
            batch.last_command_offset = record.offset
            batch.commands += 1
            if record.value is None:
                self._set_aside(batch, record, "empty record (no value)")
                continue
            try:
                envelope = decode_command(record.value)
            except DecodeError as exc:
                self._set_aside(batch, record, f"undecodable command: {exc}")
                continue
            self._apply_command(batch, record, envelope)

    def _apply_command(self, batch: Batch, record: RawCommand, envelope: CommandEnvelope) -> None:
        command = envelope.command
        task = self._task(batch, command.task_id)
        lambda_name = command.lambda_name if isinstance(command, ScheduleTask) else None
        if lambda_name is None and task is not None:
            lambda_name = task.lambda_name
        policy = self.policies(lambda_name) if lambda_name is not None else None
        decision = decide(task, command, batch.now, policy)
        if isinstance(decision, Rejected):
            if decision.code in _BAD_INPUT:
                self._set_aside(batch, record, f"{decision.code}: {decision.message}")
            self._reply(batch, envelope, command, decision, task)
            return
        task = self._record(batch, task, decision.events)
        if (
            task is not None
            and policy is not None
            and task.status is TaskStatus.NEW
            and task.next_trigger_at is not None
            and task.next_trigger_at <= batch.now
            and self._credit(batch, task.lambda_name, task.priority) > 0
        ):
            # Run-now tasks go out in the same transaction that records them.
            task = self._fire(batch, task, policy)
        self._reply(batch, envelope, command, decision, task)

    def _reply(
        self,
        batch: Batch,
        envelope: CommandEnvelope,
        command: Command,
        decision: Accepted | Rejected,
        task: Task | None,
    ) -> None:
        if not envelope.reply_to:
            return
        topic, _, partition = envelope.reply_to.rpartition(":")
        if not topic or not partition.isdigit():
            return  # an address we cannot answer; the command itself was handled
        if isinstance(decision, Rejected):
            reply = Reply(
                command.command_id,
                command.task_id,
                False,
                ReplyCode(decision.code.value),
                decision.message,
                task,
            )
        else:
            reply = Reply(command.command_id, command.task_id, True, ReplyCode.OK, "", task)
        batch.replies.append(
            Outgoing(topic, command.task_id.encode(), encode_reply(reply), int(partition))
        )

    def _set_aside(self, batch: Batch, record: RawCommand, reason: str) -> None:
        poison = PoisonRecord(
            source_topic=self.topics.commands,
            partition=self.partition,
            offset=record.offset,
            key=record.key,
            value=record.value or b"",
            reason=reason,
            at=batch.now,
        )
        batch.poison.append(Outgoing(self.topics.poison, record.key, encode_poison(poison)))

    # -- timers ----------------------------------------------------------

    def fire_due(self, batch: Batch) -> None:
        """What the store consumer does on every poll."""
        budget = self.limits.max_timers
        for _, task_id in self.store.due_timeouts(batch.now, budget):
            budget -= self._timer(batch, task_id)
        # Highest priority first, so that a shared budget favours it.
        pairs = sorted(self.store.waiting(), key=lambda pair: (-pair[1], pair[0]))
        for lambda_name, priority in pairs:
            if budget <= 0:
                break
            credit = min(budget, self._credit(batch, lambda_name, priority))
            if credit <= 0:
                continue
            for _, task_id in self.store.due_ready(lambda_name, priority, batch.now, credit):
                budget -= self._timer(batch, task_id)

    def _timer(self, batch: Batch, task_id: str) -> int:
        """Fire one trigger; returns how many transitions it made (0 or 1)."""
        task = self._task(batch, task_id)
        if task is None:
            return 0
        policy = self.policies(task.lambda_name)
        if policy is None:
            return 0  # the lambda was removed; its tasks wait until it is defined again
        if self._fire(batch, task, policy) is task:
            return 0
        batch.timers += 1
        return 1

    def _fire(self, batch: Batch, task: Task, policy: LambdaPolicy) -> Task:
        """Run the task's due trigger; returns ``task`` itself when nothing was due."""
        decision = decide(task, TimerFired(task.task_id), batch.now, policy)
        if isinstance(decision, Rejected) or not decision.events:
            return task
        after = self._record(batch, task, decision.events)
        return after if after is not None else task

    # -- recording -------------------------------------------------------

    def _record(self, batch: Batch, task: Task | None, events: tuple[Event, ...]) -> Task | None:
        for event in events:
            before = task
            task = evolve(task, event)
            batch.events.append(
                Outgoing(
                    self.topics.task_events,
                    task.task_id.encode(),
                    encode_event(event, task),
                    self.partition,
                )
            )
            if isinstance(event, TaskEnqueued):
                pair = (task.lambda_name, task.priority)
                batch.enqueued[pair] = batch.enqueued.get(pair, 0) + 1
                batch.work.append(
                    Outgoing(
                        self.topics.exec(task.lambda_name, task.priority),
                        task.task_id.encode(),
                        encode_work(WorkItem.of(task)),
                    )
                )
            if before is not None and before.status is TaskStatus.ENQUEUED:
                pair = (before.lambda_name, before.priority)
                batch.enqueued[pair] = batch.enqueued.get(pair, 0) - 1
        if task is not None:
            batch.tasks[task.task_id] = task
        return task


def new_batch(partition: int, now: int) -> Batch:
    return Batch(partition=partition, now=now)


__all__ = [
    "Batch",
    "Limits",
    "Outgoing",
    "PartitionCore",
    "PolicyLookup",
    "RawCommand",
    "new_batch",
]
