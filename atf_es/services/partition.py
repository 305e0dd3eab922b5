"""One partition's batch logic: commands and due triggers in, records out.

This is the processor without Kafka. It reads the projection through the
``TaskStore`` port, runs the pure lifecycle, and collects everything one
Kafka transaction must write (events, tombstones, execution-queue messages
and set-aside (poison) records), the replies to send once it has committed,
and the snapshots to commit to the store then (and the rows to delete).
Nothing here writes anywhere, so a failed transaction leaves no trace: the
shell drops the batch and starts over.

Finished tasks are kept for a retention (``Retention``, from the settings
``finished_retention_ms`` and ``dead_letter_retention_ms``; see
docs/retention.md). Once it has run out, :meth:`PartitionCore.fire_due` writes
a tombstone (the task id, no value) to the partition's own task-events
partition and the row leaves the projection when the batch commits; at most
``Limits.max_expired`` per poll.

Nothing a command says may stop the partition. A transaction that Kafka
refuses is retried, so every record a batch holds must be one Kafka takes:

- a command that would write a record larger than ``Limits.max_record_bytes``
  less a headroom has no effect: it is set aside as invalid and answered so.
  The headroom is ``SCHEDULE_HEADROOM`` for a ``ScheduleTask`` (room for what
  the task's life adds to its snapshot: a worker name, an error, a small
  result) and ``COMMAND_HEADROOM`` for the others (room for what later timer
  transitions add). ``max_payload_bytes`` is the payload that always fits;
- a reply goes only to an existing partition of this deployment's replies
  topic; any other ``reply_to`` is an address we cannot answer (the command
  itself is handled);
- a set-aside record that would not fit keeps the start of the original
  bytes and says so in its reason (the original stays in the commands topic
  for its retention).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace

from atf_es.events import (
    Accepted,
    Command,
    Event,
    Gate,
    GateAction,
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
from atf_es.events.chains import Chain, ChainLink, ChainNode, check_placement, ready
from atf_es.events.codec import (
    DecodeError,
    decode_command,
    encode_event,
    encode_poison,
    encode_reply,
    encode_work,
)
from atf_es.events.periodic import (
    PeriodicSchedule,
    due,
    occurrence_of,
    occurrence_prefix,
    occurrence_task_id,
    schedule_partition,
)
from atf_es.events.records import CommandEnvelope, task_id_of_key
from atf_es.events.replies import PoisonRecord, Reply, ReplyCode
from atf_es.projections.store import TaskStore
from atf_es.topics import Topics

log = logging.getLogger(__name__)

# Rejections that mean the request itself is bad, as opposed to the normal
# refusals of a busy system (a stale lease, a task already claimed).
_BAD_INPUT = frozenset({RejectCode.INVALID, RejectCode.UNKNOWN_LAMBDA})
COMMAND_HEADROOM = 1_024
"""Bytes a command's records must leave free below ``max_record_bytes``."""
SCHEDULE_HEADROOM = 64 * 1_024
"""Bytes a ``ScheduleTask``'s records must leave free below ``max_record_bytes``."""
MAX_REASON_CHARS = 2_000
MAX_POISON_KEY_BYTES = 1_024
_NEVER = 2**63 - 1
"""A wake-up time no poll reaches: the schedule has ended."""
_PARTITION_NUMBER = re.compile(r"[0-9]{1,9}")
_NOTABLE = frozenset(
    {TaskStatus.RETRIABLE_FAILURE, TaskStatus.DEAD_LETTERED, TaskStatus.FATAL_FAILURE}
)
"""Statuses whose entry is logged with the task id (see ``Batch.notable``)."""
_RUNNING = frozenset({TaskStatus.CLAIMED, TaskStatus.PROCESSING})
_WAITING = frozenset({TaskStatus.ENQUEUED, TaskStatus.NEW})
"""A running task back in one of these timed out (or a gate held it): logged too."""


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
    value: bytes | None
    """None: a tombstone."""
    partition: int | None = None


@dataclass
class Batch:
    """What one transaction writes, the replies to send once it commits, and
    the projection rows it leads to.

    Everything written inside the transaction goes to partitions that only
    this partition's owner writes: its events partition (events, then
    tombstones), the same-numbered exec partitions (co-partitioned by
    task_id) and its own poison partition.
    Replies go to the asking gateway's partition, which every processor
    writes, so they are sent after the commit, outside it (docs/design.md,
    "Replies after the commit").
    """

    partition: int
    now: int
    events: list[Outgoing] = field(default_factory=list)
    work: list[Outgoing] = field(default_factory=list)
    replies: list[Outgoing] = field(default_factory=list)
    poison: list[Outgoing] = field(default_factory=list)
    tombstones: list[Outgoing] = field(default_factory=list)
    """Tombstones of the tasks whose retention ran out (task-events, after the events)."""
    tasks: dict[str, Task] = field(default_factory=dict)
    journal: list[tuple[str, Task | None]] = field(default_factory=list)
    """Each write to ``tasks``: the id and the task it replaced (None: none), so
    that a command's writes (its task's and the chain tasks it scheduled) can
    be undone."""
    deleted: dict[str, None] = field(default_factory=dict)
    """Ids of the tombstoned tasks: rows the commit deletes (none of them in ``tasks``)."""
    last_command_offset: int | None = None
    commands: int = 0
    timers: int = 0
    """Triggers fired by the index scan (not run-now tasks enqueued on arrival)."""
    occurrences: int = 0
    """Tasks scheduled by periodic schedules."""
    enqueued: dict[tuple[str, int], int] = field(default_factory=dict)
    transitions: list[tuple[str, TaskStatus]] = field(default_factory=list)
    """(lambda, status entered) of every status change the batch records: its
    metrics, counted once it commits."""
    notable: list[tuple[Task | None, Task]] = field(default_factory=list)
    """(before, after) of the changes worth a log line once committed: retries,
    dead letters, fatal failures, timed-out claims and heartbeats."""

    @property
    def empty(self) -> bool:
        return not (
            self.events or self.tombstones or self.work or self.replies or self.poison
        ) and (self.last_command_offset is None)

    def transactional(self) -> list[Outgoing]:
        """The records the transaction writes; ``replies`` are sent after it commits."""
        return [*self.events, *self.tombstones, *self.work, *self.poison]


PolicyLookup = Callable[[str], LambdaPolicy | None]
ScheduleLookup = Callable[[], Iterable[PeriodicSchedule]]
"""Every periodic schedule in force (each core fires those its partition owns)."""
GateLookup = Callable[[str, str], Gate | None]
"""(lambda, collection) -> the closed gate covering it, if any."""


def no_gates(_lambda_name: str, _collection: str) -> Gate | None:
    return None


def no_schedules() -> Iterable[PeriodicSchedule]:
    return ()


@dataclass(frozen=True, slots=True)
class Limits:
    max_enqueued: int = 1_000
    """Enqueued-but-unclaimed tasks allowed per (lambda, priority); the rest wait."""
    max_timers: int = 2_000
    """Triggers fired per partition per poll, so one poll cannot grow without bound."""
    max_record_bytes: int = 1_000_000
    """The largest record (key + value) Kafka takes: the producer's ``message.max.bytes``."""
    max_expired: int = 500
    """Tombstones of finished tasks written per partition per poll: a backlog of
    expired tasks (a retention just shortened, or first set on an old log)
    is worked off a slice at a time instead of in one huge transaction."""


@dataclass(frozen=True, slots=True)
class Retention:
    """How long finished tasks are kept after ``finished_at`` (ms; 0: for ever)."""

    finished_ms: int = 0
    """Succeeded, failed fatally, cancelled and dropped tasks."""
    dead_letter_ms: int = 0
    """Dead-lettered tasks, which wait for a redrive."""

    def of(self, task: Task) -> int:
        """The retention of ``task`` (a terminal one)."""
        if task.status is TaskStatus.DEAD_LETTERED:
            return self.dead_letter_ms
        return self.finished_ms

    def expired(self, task: Task, now: int) -> bool:
        """Whether ``task`` finished longer than its retention ago."""
        retention = self.of(task)
        return (
            task.status.terminal
            and task.finished_at is not None
            and retention > 0
            and task.finished_at <= now - retention
        )


@dataclass(frozen=True, slots=True)
class _Mark:
    """A batch as it was before one command: what undoing the command restores."""

    events: int
    work: int
    replies: int
    poison: int
    journal: int
    enqueued: dict[tuple[str, int], int]
    transitions: int
    notable: int

    @classmethod
    def of(cls, batch: Batch) -> _Mark:
        return cls(
            len(batch.events),
            len(batch.work),
            len(batch.replies),
            len(batch.poison),
            len(batch.journal),
            dict(batch.enqueued),
            len(batch.transitions),
            len(batch.notable),
        )

    def added(self, batch: Batch) -> list[Outgoing]:
        return [
            *batch.events[self.events :],
            *batch.work[self.work :],
            *batch.replies[self.replies :],
        ]

    def undo(self, batch: Batch) -> None:
        del batch.events[self.events :]
        del batch.work[self.work :]
        del batch.replies[self.replies :]
        del batch.poison[self.poison :]
        del batch.transitions[self.transitions :]
        del batch.notable[self.notable :]
        for task_id, before in reversed(batch.journal[self.journal :]):
            if before is None:
                batch.tasks.pop(task_id, None)
            else:
                batch.tasks[task_id] = before
        del batch.journal[self.journal :]
        batch.enqueued.clear()
        batch.enqueued.update(self.enqueued)


def max_payload_bytes(limits: Limits = Limits()) -> int:
    """The largest payload whose ``ScheduleTask`` is never too large (with ids of
    at most 200 characters); what a front door can check before sending one."""
    return limits.max_record_bytes - SCHEDULE_HEADROOM - 2 * 1_024


def _size(out: Outgoing) -> int:
    return len(out.value or b"") + len(out.key or b"")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... [{len(text)} characters, cut]"


def _large_fields(command: Command) -> str:
    found = []
    for f in fields(command):
        value = getattr(command, f.name)
        if isinstance(value, str | bytes) and len(value) > 1_000:
            unit = "characters" if isinstance(value, str) else "bytes"
            found.append(f"{f.name} is {len(value)} {unit}")
    return f" ({', '.join(found)})" if found else ""


class PartitionCore:
    """Turns one partition's commands and due triggers into a ``Batch``."""

    def __init__(
        self,
        partition: int,
        store: TaskStore,
        policies: PolicyLookup,
        topics: Topics,
        limits: Limits = Limits(),
        *,
        reply_partition_exists: Callable[[int], bool] | None = None,
        poison_partitions: int = 1,
        gates: GateLookup = no_gates,
        retention: Retention = Retention(),
        schedules: ScheduleLookup = no_schedules,
        partitions: int = 1,
    ) -> None:
        if poison_partitions < 1:
            raise ValueError(f"poison_partitions must be at least 1, got {poison_partitions}")
        self.partition = partition
        self.store = store
        self.policies = policies
        self.gates = gates
        self.topics = topics
        self.limits = limits
        self.retention = retention
        self.reply_partition_exists = reply_partition_exists
        """Whether the replies topic has a partition; None: do not check."""
        self.poison_partition = partition % poison_partitions
        self.schedules = schedules
        self.partitions = partitions
        """The commands topic's partition count: where a schedule and its occurrences go."""
        self._considered: dict[tuple[str, int], int] = {}
        """Per (schedule, defined_at): an occurrence every earlier one of which was
        fired or skipped. Skipping is final (a late occurrence stays late), so
        this survives a failed batch; fired ones are read from the store."""
        self._wake: dict[tuple[str, int], int] = {}
        """Per (schedule, defined_at): nothing is due before this time (set only
        by a poll that fired nothing, so no uncommitted occurrence relies on it)."""
        self._refused: set[tuple[str, int]] = set()
        """Schedules (as defined) whose occurrences the lifecycle refused: logged once."""
        self._turn = 0
        """Polls so far: which lambda of a priority level goes first."""
        """Where this partition's poison goes: its own partition when the topic has it."""

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
            mark = _Mark.of(batch)
            self._apply_command(batch, record, envelope)
            if (problem := self._too_large(batch, mark, envelope.command)) is not None:
                mark.undo(batch)
                self._set_aside(batch, record, f"{RejectCode.INVALID}: {problem}")
                rejected = Rejected(RejectCode.INVALID, problem)
                self._reply(batch, envelope, envelope.command, rejected, None, shrink=True)

    def _too_large(self, batch: Batch, mark: _Mark, command: Command) -> str | None:
        """Why the records ``command`` added cannot be written, if they cannot."""
        headroom = SCHEDULE_HEADROOM if isinstance(command, ScheduleTask) else COMMAND_HEADROOM
        limit = self.limits.max_record_bytes - headroom
        for out in mark.added(batch):
            if (size := _size(out)) > limit:
                return (
                    f"the command is too large{_large_fields(command)}: it would write a "
                    f"{size}-byte record to {out.topic}, and a record takes at most {limit}"
                )
        return None

    def _apply_command(self, batch: Batch, record: RawCommand, envelope: CommandEnvelope) -> None:
        command = envelope.command
        task = self._task(batch, command.task_id)
        lambda_name = command.lambda_name if isinstance(command, ScheduleTask) else None
        if lambda_name is None and task is not None:
            lambda_name = task.lambda_name
        policy = self.policies(lambda_name) if lambda_name is not None else None
        gate = None if task is None else self.gates(task.lambda_name, task.collection)
        decision = decide(task, command, batch.now, policy, gate)
        if (
            isinstance(command, ScheduleTask)
            and command.chain is not None
            and isinstance(decision, Accepted)
            and (problem := check_placement(command.chain.chain, self.partition, self.partitions))
            is not None
        ):
            decision = Rejected(RejectCode.INVALID, problem)
        if isinstance(decision, Rejected):
            if decision.code in _BAD_INPUT:
                self._set_aside(batch, record, f"{decision.code}: {decision.message}")
            if decision.events:
                task = self._record(batch, task, decision.events)
            self._reply(batch, envelope, command, decision, task)
            return
        task = self._run_now(batch, self._record(batch, task, decision.events), policy)
        self._reply(batch, envelope, command, decision, task)

    def _run_now(self, batch: Batch, task: Task | None, policy: LambdaPolicy | None) -> Task | None:
        """Enqueue a task just scheduled, if it is due and its queue has credit:
        run-now tasks go out in the same transaction that records them."""
        if (
            task is not None
            and policy is not None
            and task.status is TaskStatus.NEW
            and task.next_trigger_at is not None
            and task.next_trigger_at <= batch.now
            and self._credit(batch, task.lambda_name, task.priority) > 0
        ):
            return self._fire(batch, task, policy)
        return task

    def _reply(
        self,
        batch: Batch,
        envelope: CommandEnvelope,
        command: Command,
        decision: Accepted | Rejected,
        task: Task | None,
        *,
        shrink: bool = False,
    ) -> None:
        """Answer ``envelope.reply_to``; with ``shrink``, cut the reply to fit, or drop it."""
        if not envelope.reply_to:
            return
        topic, _, number = envelope.reply_to.rpartition(":")
        if (
            topic != self.topics.replies
            or not _PARTITION_NUMBER.fullmatch(number)
            or (
                self.reply_partition_exists is not None
                and not self.reply_partition_exists(int(number))
            )
        ):
            # An address we cannot answer (the command itself was handled): a
            # reply there would fail the transaction, again and again, or land
            # in a topic that is not for replies.
            log.warning(
                "partition %d: not answering command %.100r at %.200r: not a partition of %s",
                self.partition,
                command.command_id,
                envelope.reply_to,
                self.topics.replies,
            )
            return
        partition = int(number)
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
        out = Outgoing(topic, command.task_id.encode(), encode_reply(reply), partition)
        if shrink and _size(out) > self.limits.max_record_bytes:
            reply = replace(reply, message=_cut(reply.message, MAX_REASON_CHARS), task=None)
            out = Outgoing(topic, command.task_id.encode(), encode_reply(reply), partition)
            if _size(out) > self.limits.max_record_bytes:
                log.warning(
                    "partition %d: dropping the %d-byte reply to command %.100r: too large",
                    self.partition,
                    _size(out),
                    command.command_id,
                )
                return
        batch.replies.append(out)

    def _set_aside(self, batch: Batch, record: RawCommand, reason: str) -> None:
        reason = _cut(reason, MAX_REASON_CHARS)
        key, value = record.key, record.value or b""
        task_id = task_id_of_key(key[:MAX_POISON_KEY_BYTES] if key else None)
        log.warning(
            "partition %d: command at offset %d (task %.200r) set aside as poison: %.300s",
            self.partition,
            record.offset,
            task_id,
            reason,
            extra={"task_id": task_id, "partition": self.partition, "offset": record.offset},
        )
        poison = PoisonRecord(
            source_topic=self.topics.commands,
            partition=self.partition,
            offset=record.offset,
            key=key,
            value=value,
            reason=reason,
            at=batch.now,
        )
        out = Outgoing(self.topics.poison, key, encode_poison(poison), self.poison_partition)
        if _size(out) > self.limits.max_record_bytes:
            # Keep what fits: the reason, where the original is, and its start.
            kept_key = None if key is None else key[:MAX_POISON_KEY_BYTES]
            spare = (
                self.limits.max_record_bytes
                - COMMAND_HEADROOM
                - 2 * len(kept_key or b"")
                - len(reason.encode())
                - len(self.topics.commands.encode())
            )
            kept_value = value[: max(0, spare)]
            poison = replace(
                poison,
                key=kept_key,
                value=kept_value,
                reason=f"{reason} [cut short to fit a record: the first {len(kept_value)} of "
                f"{len(value)} value bytes and {len(kept_key or b'')} of {len(key or b'')} key "
                f"bytes are kept; the original is at {self.topics.commands}[{self.partition}] "
                f"offset {record.offset}]",
            )
            out = Outgoing(
                self.topics.poison, kept_key, encode_poison(poison), self.poison_partition
            )
        batch.poison.append(out)

    # -- timers ----------------------------------------------------------

    def fire_due(self, batch: Batch, *, timeouts: bool = True) -> None:
        """What the store consumer does on every poll.

        ``timeouts=False`` holds the enqueue, claim and heartbeat timeouts (the
        processor does while commands that may answer them are unread) and
        fires only what is ready: due tasks and retries. It holds the
        expiry of finished tasks as well: a redrive of a dead letter may be
        among the unread commands.
        """
        self.fire_periodic(batch)
        budget = self.limits.max_timers
        if timeouts:
            for _, task_id in self.store.due_timeouts(batch.now, budget):
                budget -= self._timer(batch, task_id)
        collections: dict[tuple[str, int], list[str]] = {}
        for lambda_name, collection, priority in self.store.waiting():
            collections.setdefault((lambda_name, priority), []).append(collection)
        for (lambda_name, priority), names in self._fire_order(collections):
            if budget <= 0:
                break
            credit = min(budget, self._credit(batch, lambda_name, priority))
            # (trigger, task_id, whether a drop gate covers it), from every
            # collection the gates let through, merged into trigger order.
            due: list[tuple[int, str, bool]] = []
            for collection in names:
                gate = self.gates(lambda_name, collection)
                if gate is not None and gate.action is GateAction.PAUSE:
                    continue  # held in the index; skipping the range costs nothing
                dropping = gate is not None
                limit = budget if dropping else credit
                queue = (lambda_name, collection, priority)
                due.extend(
                    (at, task_id, dropping)
                    for at, task_id in self.store.due_ready(queue, batch.now, limit)
                )
            due.sort()
            for _, task_id, dropping in due:
                if budget <= 0:
                    break
                if dropping or self._credit(batch, lambda_name, priority) > 0:
                    # Dropping a task enqueues nothing, so it needs no credit.
                    budget -= self._timer(batch, task_id)
        if timeouts:
            self.expire(batch)

    def fire_periodic(self, batch: Batch) -> None:
        """Schedule the due occurrences of the periodic schedules this partition owns.

        An occurrence's task id is a function of the schedule and its time, so
        one that is already a task (fired before a crash, by the previous
        owner, or earlier in this batch) is not scheduled again. The latest
        occurrence stored tells where to carry on after a restart.
        """
        for schedule in self.schedules():
            if (
                schedule.paused
                or schedule_partition(schedule.name, self.partitions) != self.partition
            ):
                continue
            policy = self.policies(schedule.lambda_name)
            if policy is None:
                continue  # its occurrences wait (within the misfire policy) for the lambda
            key = (schedule.name, schedule.defined_at)
            if batch.now < self._wake.get(key, batch.now):
                continue  # the next occurrence is later: no read, no arithmetic
            prefix = occurrence_prefix(schedule.name)
            latest = self.store.last_id_with_prefix(prefix)
            fired = occurrence_of(latest) if latest is not None else None
            after = fired[1] if fired is not None else None
            considered = self._considered.get(key)
            if considered is not None and (after is None or considered > after):
                after = considered
            result = due(schedule, after, batch.now)
            if result.through is not None:
                # Everything before the first occurrence fired now is settled.
                settled = result.fire[0] - 1 if result.fire else result.through
                self._considered[key] = settled
            if not result.fire:
                # What is not due now never becomes due before the next occurrence.
                upcoming = schedule.next_after(batch.now)
                self._wake[key] = upcoming if upcoming is not None else _NEVER
            for at in result.fire:
                self._occur(batch, schedule, policy, at)

    def _occur(
        self, batch: Batch, schedule: PeriodicSchedule, policy: LambdaPolicy, at: int
    ) -> None:
        task_id = occurrence_task_id(schedule.name, at, self.partitions)
        if self._task(batch, task_id) is not None:
            return
        command = ScheduleTask(
            command_id=task_id,
            task_id=task_id,
            lambda_name=schedule.lambda_name,
            collection=schedule.collection,
            priority=schedule.priority,
            payload=schedule.payload,
            run_at=at,
        )
        decision = decide(None, command, batch.now, policy, None)
        if isinstance(decision, Rejected):
            if (schedule.name, schedule.defined_at) not in self._refused:
                self._refused.add((schedule.name, schedule.defined_at))
                log.warning(
                    "partition %d: periodic schedule %r cannot schedule %s: %s",
                    self.partition,
                    schedule.name,
                    task_id,
                    decision.message,
                )
            return
        task = self._record(batch, None, decision.events)
        batch.occurrences += 1
        if (
            task is not None
            and task.status is TaskStatus.NEW
            and self._credit(batch, task.lambda_name, task.priority) > 0
        ):
            self._fire(batch, task, policy)

    def expire(self, batch: Batch) -> None:
        """Tombstone the finished tasks whose retention ran out, oldest first.

        At most ``Limits.max_expired``, finished tasks before dead letters. A
        task the batch changed is judged as it is now (a dead letter redriven
        by a command of this batch is live again and stays).
        """
        budget = self.limits.max_expired
        for dead_letters, retention in (
            (False, self.retention.finished_ms),
            (True, self.retention.dead_letter_ms),
        ):
            if retention <= 0 or budget <= 0:
                continue
            cutoff = batch.now - retention
            for _, task_id in self.store.finished_by(cutoff, budget, dead_letters=dead_letters):
                task = self._task(batch, task_id)
                if (
                    task is None
                    or task_id in batch.deleted
                    or not self.retention.expired(task, batch.now)
                ):
                    continue
                batch.tasks.pop(task_id, None)
                batch.deleted[task_id] = None
                batch.tombstones.append(
                    Outgoing(self.topics.task_events, task_id.encode(), None, self.partition)
                )
                budget -= 1

    def _fire_order(
        self, collections: dict[tuple[str, int], list[str]]
    ) -> list[tuple[tuple[str, int], list[str]]]:
        """Highest priority first, so that a shared budget favours it; lambdas at
        the same priority take turns going first, so that it favours no name."""
        levels: dict[int, list[tuple[tuple[str, int], list[str]]]] = {}
        for item in sorted(collections.items(), key=lambda item: (-item[0][1], item[0][0])):
            levels.setdefault(item[0][1], []).append(item)
        self._turn += 1
        ordered = []
        for level in levels.values():
            start = self._turn % len(level)
            ordered.extend(level[start:] + level[:start])
        return ordered

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
        """Run the task's due trigger; returns ``task`` itself when nothing was due
        (or a pause gate holds it)."""
        gate = self.gates(task.lambda_name, task.collection)
        decision = decide(task, TimerFired(task.task_id), batch.now, policy, gate)
        if isinstance(decision, Rejected) or not decision.events:
            return task
        after = self._record(batch, task, decision.events)
        return after if after is not None else task

    # -- recording -------------------------------------------------------

    def _record(self, batch: Batch, task: Task | None, events: tuple[Event, ...]) -> Task | None:
        first = task
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
            if before is None or before.status is not task.status:
                batch.transitions.append((task.lambda_name, task.status))
                if task.status in _NOTABLE or (
                    before is not None and before.status in _RUNNING and task.status in _WAITING
                ):
                    batch.notable.append((before, task))
        if task is not None:
            batch.journal.append((task.task_id, batch.tasks.get(task.task_id)))
            batch.tasks[task.task_id] = task
            if (
                events
                and task.chain is not None
                and (
                    (first is None and task.chain.node == task.chain.chain.root.name)
                    or (task.status.terminal and (first is None or first.status.live))
                )
            ):
                self._advance_chain(batch, task, task.chain)
        return task

    # -- chains ----------------------------------------------------------

    def _advance_chain(self, batch: Batch, task: Task, link: ChainLink) -> None:
        """Schedule the nodes of ``task``'s chain that its change let go: the
        other nodes without parents when the root is scheduled, the children
        whose parents are all done when a node ends."""
        chain = link.chain
        if task.status.terminal:
            candidates = chain.children(link.node)
            start = batch.now
        else:
            candidates = [n for n in chain.nodes[1:] if not n.parents]
            start = task.scheduled_at - chain.root.delay_ms
        for node in candidates:
            if self._task(batch, node.task_id) is not None:
                continue  # scheduled already (by an earlier parent, or before a crash)
            parents = {
                chain.node(name).task_id: self._task(batch, chain.node(name).task_id)
                for name in node.parents
            }
            if not ready(node, chain, parents):
                continue
            self._schedule_node(
                batch, chain, node, max(0, start + node.delay_ms), task.scheduled_by
            )

    def _schedule_node(
        self,
        batch: Batch,
        chain: Chain,
        node: ChainNode,
        run_at: int,
        scheduled_by: str | None,
    ) -> None:
        """Schedule one node; it belongs to whoever scheduled the chain."""
        policy = self.policies(node.lambda_name)
        command = ScheduleTask(
            command_id=node.task_id,
            task_id=node.task_id,
            lambda_name=node.lambda_name,
            collection=node.collection,
            priority=node.priority,
            payload=node.payload,
            run_at=run_at,
            chain=ChainLink(chain, node.name),
            scheduled_by=scheduled_by,
        )
        decision = decide(None, command, batch.now, policy, None)
        if isinstance(decision, Rejected):
            log.warning(
                "partition %d: chain %r cannot schedule node %r (%s): %s",
                self.partition,
                chain.chain_id,
                node.name,
                node.task_id,
                decision.message,
            )
            return
        self._run_now(batch, self._record(batch, None, decision.events), policy)


def new_batch(partition: int, now: int) -> Batch:
    return Batch(partition=partition, now=now)


__all__ = [
    "Batch",
    "GateLookup",
    "Limits",
    "Outgoing",
    "PartitionCore",
    "PolicyLookup",
    "RawCommand",
    "Retention",
    "ScheduleLookup",
    "max_payload_bytes",
    "new_batch",
]
