"""Downstream consumers: follow the task-events topic as typed status events.

:func:`subscribe` joins a consumer group on ``<prefix>.task-events`` and
returns a :class:`Subscription`, an iterator of :class:`StatusEvent` (the
event, the task snapshot after it, and where the record sits in the log).
Delivery is at least once, with progress committed to the group:

* an event handed to the caller is **done** once the caller comes back for
  more (the next ``next()`` or :meth:`Subscription.poll`), calls
  :meth:`Subscription.commit`, or leaves a ``with`` block without an
  exception;
* only done positions are ever committed, and a partition's committed offset
  never passes an event that is not done. Commits happen before every fetch
  from the broker (asynchronously), at most ``commit_interval`` seconds apart
  while the caller works through a fetched batch, synchronously before a
  partition is handed to another group member, and in :meth:`commit` and
  :meth:`close`;
* a subscriber that dies therefore resumes, in its group, at or before the
  first event it had not finished: it may see events again (dedupe on
  ``(task_id, seq)`` if that matters), it never misses one.

Records the filters reject, tombstones and records that do not decode are
done as soon as they are read: they advance committed progress like any
other. Undecodable records are counted (:attr:`Subscription.stats`) and
logged; they never stop the stream.

The same machinery serves a server-streaming RPC: build a :class:`Filter`,
call :func:`subscribe` (``group=None`` reads without a group and commits
nothing) and loop on :meth:`Subscription.poll` with a short timeout, or on
:meth:`Subscription.stream` with a stop condition, so the handler notices a
departed client within one timeout.

A Subscription is used by one thread at a time; only :meth:`Subscription.stop`
may be called from another thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Final, Literal, Self

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from atf_es import kafka_clients
from atf_es.config import Settings, load_settings
from atf_es.events import Event, Task, TaskStatus
from atf_es.events.codec import DecodeError, decode_event
from atf_es.events.records import EVENT_KINDS
from atf_es.topics import Topics

log = logging.getLogger(__name__)

__all__ = [
    "Filter",
    "NoCommittedOffsetError",
    "Start",
    "StatusEvent",
    "Subscription",
    "SubscriptionError",
    "SubscriptionStats",
    "subscribe",
]

Start = Literal["earliest", "latest", "committed"] | int | datetime
"""Where a subscription starts; see :func:`subscribe`."""

DEFAULT_MAX_BATCH: Final = 500
DEFAULT_COMMIT_INTERVAL: Final = 1.0
METADATA_TIMEOUT: Final = 30.0
_WAIT_SLICE: Final = 0.2
"""Longest single wait on the broker, so :meth:`Subscription.stop` is noticed quickly."""


class SubscriptionError(Exception):
    """The subscription cannot go on (see the message); close it."""


class NoCommittedOffsetError(SubscriptionError):
    """``from_="committed"`` and the group has committed nothing on the topic."""


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """One transition of one task, as the task-events topic holds it."""

    event: Event
    task: Task
    """The task snapshot after ``event``."""
    partition: int
    offset: int
    timestamp: int | None
    """The Kafka record's timestamp (epoch ms), None if the broker gave none."""

    @property
    def task_id(self) -> str:
        return self.event.task_id

    @property
    def seq(self) -> int:
        return self.event.seq

    @property
    def status(self) -> TaskStatus:
        """The task's status after the transition."""
        return self.task.status

    @property
    def kind(self) -> str:
        """The Avro ``EventKind`` symbol, e.g. ``TASK_SCHEDULED``."""
        return EVENT_KINDS[type(self.event)]


def _names(what: str, values: Iterable[str] | str | None) -> frozenset[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    chosen = frozenset(values)
    if not chosen:
        raise ValueError(f"{what}: an empty selection matches nothing; pass None for any")
    for value in chosen:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{what}: {value!r} is not a non-empty string")
    return chosen


def _status(value: TaskStatus | str) -> TaskStatus:
    if isinstance(value, TaskStatus):
        return value
    if isinstance(value, str):
        for status in TaskStatus:
            if value.lower() in (status.value, status.name.lower()):
                return status
    known = ", ".join(s.value for s in TaskStatus)
    raise ValueError(f"statuses: unknown status {value!r} (known: {known})")


@dataclass(frozen=True, slots=True)
class Filter:
    """Which events to deliver, judged on the task snapshot after each event.

    A field left ``None`` matches anything; the fields combine with AND, the
    values of one field with OR. Build it with :meth:`of`, which validates.
    """

    lambdas: frozenset[str] | None = None
    collections: frozenset[str] | None = None
    statuses: frozenset[TaskStatus] | None = None
    """The status *after* the transition (``task.status``)."""
    task_ids: frozenset[str] | None = None

    @classmethod
    def of(
        cls,
        *,
        lambdas: Iterable[str] | str | None = None,
        collections: Iterable[str] | str | None = None,
        statuses: Iterable[TaskStatus | str] | TaskStatus | str | None = None,
        task_ids: Iterable[str] | str | None = None,
    ) -> Filter:
        """A validated filter. Statuses may be given as ``TaskStatus``, value or name.

        Raises ValueError for an empty selection (pass None for "any") or an
        unknown status.
        """
        chosen_statuses: frozenset[TaskStatus] | None = None
        if statuses is not None:
            if isinstance(statuses, str):  # TaskStatus is a str too
                statuses = [statuses]
            chosen_statuses = frozenset(_status(s) for s in statuses)
            if not chosen_statuses:
                raise ValueError("statuses: an empty selection matches nothing; pass None for any")
        return cls(
            lambdas=_names("lambdas", lambdas),
            collections=_names("collections", collections),
            statuses=chosen_statuses,
            task_ids=_names("task_ids", task_ids),
        )

    def matches(self, task: Task) -> bool:
        return (
            (self.lambdas is None or task.lambda_name in self.lambdas)
            and (self.collections is None or task.collection in self.collections)
            and (self.statuses is None or task.status in self.statuses)
            and (self.task_ids is None or task.task_id in self.task_ids)
        )


@dataclass(slots=True)
class SubscriptionStats:
    """What a subscription has read so far."""

    read: int = 0
    """Records fetched from the broker, of every kind."""
    delivered: int = 0
    """Events handed to the caller."""
    filtered: int = 0
    """Events the filter (or a timestamp start) skipped."""
    tombstones: int = 0
    undecodable: int = 0
    commits: int = 0
    """Commit requests sent to the group coordinator."""
    commit_failures: int = 0


@dataclass(slots=True)
class _Entry:
    partition: int
    offset: int
    event: StatusEvent | None
    """None: nothing to deliver (filtered out, tombstone, undecodable)."""


def _start_ms(from_: Start) -> int | None:
    if isinstance(from_, bool):
        raise ValueError(f"from_: {from_!r} is not a start")
    if isinstance(from_, int):
        if from_ < 0:
            raise ValueError(f"from_: {from_} is not an epoch-millisecond time")
        return from_
    if isinstance(from_, datetime):
        if from_.tzinfo is None or from_.utcoffset() is None:
            raise ValueError("from_: a datetime must be timezone-aware (e.g. tzinfo=UTC)")
        return int(from_.timestamp() * 1000)
    if from_ not in ("earliest", "latest", "committed"):
        raise ValueError(
            f"from_: {from_!r} is not 'earliest', 'latest', 'committed', "
            "an epoch-ms int or an aware datetime"
        )
    return None


class Subscription:
    """An iterator of :class:`StatusEvent`; see the module docstring for delivery.

    Iterating blocks until the next matching event (or :meth:`stop`);
    :meth:`poll` waits at most ``timeout`` and returns a batch.
    """

    def __init__(
        self,
        group: str | None,
        *,
        settings: Settings,
        bootstrap: str,
        filter: Filter,
        from_: Start = "earliest",
        max_batch: int = DEFAULT_MAX_BATCH,
        commit_interval: float = DEFAULT_COMMIT_INTERVAL,
        client_id: str | None = None,
        kafka_overrides: Mapping[str, object] | None = None,
        partitions: Iterable[int] | None = None,
    ) -> None:
        only = None if partitions is None else sorted(set(partitions))
        if only is not None and group is not None:
            raise ValueError("partitions: only without a group (a group divides partitions itself)")
        if group is not None and (not isinstance(group, str) or not group.strip()):
            raise ValueError(f"group: {group!r} is not a consumer group name")
        self._since = _start_ms(from_)
        if group is None and from_ == "committed":
            raise ValueError("from_='committed' needs a group: without one nothing is committed")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.group = group
        self.filter = filter
        self.from_ = from_
        self.topic = Topics(settings.topic_prefix).task_events
        self.stats = SubscriptionStats()
        self._settings = settings
        self._max_batch = max_batch
        self._commit_interval = commit_interval
        self._buffer: deque[_Entry] = deque()
        self._handed: dict[int, int] = {}
        """Per partition: offset after the last entry handed out and not yet done."""
        self._done: dict[int, int] = {}
        """Per partition: offset after the last done entry (what may be committed)."""
        self._committed: dict[int, int] = {}
        self._assigned: set[int] = set()
        self._seen: set[int] = set()
        self._failure: SubscriptionError | None = None
        self._stop = threading.Event()
        self._closed = False
        self._last_commit = time.monotonic()

        overrides: dict[str, object] = {
            "client.id": client_id or (f"subscriber-{group}" if group else "atf-watch"),
            # A committed offset that is out of range (log truncated by
            # retention) restarts at what is left: never skip events.
            "auto.offset.reset": "earliest",
        }
        if group is not None:
            overrides |= {
                "session.timeout.ms": settings.session_timeout_ms,
                "heartbeat.interval.ms": max(100, settings.session_timeout_ms // 10),
                "on_commit": self._on_commit,
            }
        overrides |= kafka_overrides or {}
        self._consumer: Consumer = kafka_clients.consumer(
            bootstrap, group, settings.kafka_config, overrides=overrides
        )
        try:
            existing = self._partition_ids = self._partitions()
            if only is not None:
                if not only or not set(only) <= set(existing):
                    raise ValueError(
                        f"partitions: {only} is not a non-empty subset of {self.topic}'s {existing}"
                    )
                existing = only
            # "latest" means: what is recorded after this call returned, even
            # though joining the group takes a while (the end is taken now).
            self._start_ends: dict[int, int] = {}
            if from_ == "latest":
                # Not the consumer's own end (0 on the embedded broker while a
                # transaction is open: it would replay the whole log); see
                # kafka_clients.log_ends.
                ends = kafka_clients.end_reader(bootstrap, kafka_config=settings.kafka_config)
                try:
                    self._start_ends = kafka_clients.log_ends(
                        ends, self.topic, list(existing), METADATA_TIMEOUT
                    )
                finally:
                    ends.close()
            if group is None:
                start = [
                    TopicPartition(self.topic, p, self._start_ends.get(p, OFFSET_BEGINNING))
                    for p in existing
                ]
                self._consumer.assign(start)
                self._assigned = set(existing)
                self._seen = set(existing)
            else:
                self._consumer.subscribe(
                    [self.topic],
                    on_assign=self._on_assign,
                    on_revoke=self._on_revoke,
                    on_lost=self._on_lost,
                )
        except BaseException:
            self._consumer.close()
            self._closed = True
            raise

    def __repr__(self) -> str:
        return f"Subscription(group={self.group!r}, topic={self.topic!r}, filter={self.filter})"

    # -- iteration -------------------------------------------------------

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> StatusEvent:
        """The next matching event; blocks. Ends (StopIteration) after stop() or close()."""
        while True:
            events = self._poll(_WAIT_SLICE, 1)
            if events:
                return events[0]
            if self._closed or self._stop.is_set():
                raise StopIteration

    def poll(self, timeout: float = 1.0, max_events: int | None = None) -> list[StatusEvent]:
        """Matching events that arrive within ``timeout`` seconds (maybe none).

        Returns as soon as there is at least one. Every event an earlier call
        returned is done from this call on (committed at the next commit).
        Raises SubscriptionError once the subscription is closed or has failed.
        """
        self._check_open()
        return self._poll(timeout, max_events or self._max_batch)

    def stream(
        self, until: Callable[[], bool] | None = None, poll_timeout: float = _WAIT_SLICE
    ) -> Iterator[StatusEvent]:
        """Matching events until ``until()`` is true (checked every ``poll_timeout`` s or event).

        Also ends after :meth:`stop`. An event becomes done when the generator
        is resumed for the next one.
        """
        while not (self._closed or self._stop.is_set() or (until is not None and until())):
            yield from self._poll(poll_timeout, 1)

    def stop(self) -> None:
        """Make iteration end within ~0.2 s; safe from any thread. Then call close()."""
        self._stop.set()

    # -- progress --------------------------------------------------------

    def commit(self) -> None:
        """Mark every event handed out so far done and commit synchronously.

        Raises SubscriptionError if the commit fails (the events will be
        delivered again after a restart).
        """
        self._check_open()
        self._settle()
        self._commit(asynchronous=False, strict=True)

    def committed(self) -> dict[int, int]:
        """Per assigned partition, the offset this subscription last committed."""
        return dict(self._committed)

    @property
    def assignment(self) -> list[int]:
        """The partitions this subscription reads now (empty until the group is joined)."""
        return sorted(self._assigned)

    def close(self) -> None:
        """Commit what is done (not the events of the last call), leave the group. Idempotent."""
        if self._closed:
            return
        try:
            self._commit(asynchronous=False)
        finally:
            self._closed = True
            self._buffer.clear()
            try:
                self._consumer.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("subscription %s: closing the consumer: %s", self.group, exc)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A body that ended normally finished the events it was given.
        if exc_type is None and not self._closed:
            self._settle()
        self.close()

    # -- internals -------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SubscriptionError("the subscription is closed")
        if self._failure is not None:
            raise self._failure

    def _poll(self, timeout: float, limit: int) -> list[StatusEvent]:
        if self._closed:
            return []
        self._check_open()
        self._settle()
        events = self._take(limit)
        if events:
            if time.monotonic() - self._last_commit >= self._commit_interval:
                self._commit(asynchronous=True)
            return events
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            self._commit(asynchronous=True)
            self._fetch(min(_WAIT_SLICE, max(0.0, deadline - time.monotonic())))
            if self._failure is not None:
                raise self._failure
            events = self._take(limit)
            if events or time.monotonic() >= deadline or self._stop.is_set():
                return events

    def _settle(self) -> None:
        """What was handed out is done: the caller came back for more."""
        self._done.update(self._handed)
        self._handed.clear()

    def _take(self, limit: int) -> list[StatusEvent]:
        out: list[StatusEvent] = []
        while self._buffer and len(out) < limit:
            entry = self._buffer.popleft()
            if entry.event is None:
                # Nothing to deliver. Done at once unless an event handed out
                # in this same call precedes it (its partition may be the same).
                (self._handed if out else self._done)[entry.partition] = entry.offset + 1
                continue
            out.append(entry.event)
            self._handed[entry.partition] = entry.offset + 1
        self.stats.delivered += len(out)
        return out

    def _fetch(self, timeout: float) -> None:
        for message in kafka_clients.consume(self._consumer, self._max_batch, timeout):
            entry = self._entry(message)
            if entry is not None:
                self._buffer.append(entry)

    def _entry(self, message: Message) -> _Entry | None:
        error = message.error()
        if error is not None:
            if error.fatal():
                self._failure = SubscriptionError(f"{self.topic}: {error}")
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("subscription %s: %s", self.group, error)
            return None
        partition, offset = message.partition(), message.offset()
        if partition is None or offset is None or partition not in self._assigned:
            return None
        self.stats.read += 1
        value = message.value()
        if value is None:
            self.stats.tombstones += 1
            return _Entry(partition, offset, None)
        try:
            event, task = decode_event(value)
        except DecodeError as exc:
            self.stats.undecodable += 1
            log.warning(
                "subscription %s: skipping undecodable record %s[%d]@%d: %s",
                self.group,
                self.topic,
                partition,
                offset,
                exc,
            )
            return _Entry(partition, offset, None)
        if (self._since is not None and event.at < self._since) or not self.filter.matches(task):
            self.stats.filtered += 1
            return _Entry(partition, offset, None)
        kind, ts = message.timestamp()
        timestamp = None if kind == TIMESTAMP_NOT_AVAILABLE else ts
        return _Entry(partition, offset, StatusEvent(event, task, partition, offset, timestamp))

    def _commit(
        self, *, asynchronous: bool, strict: bool = False, only: set[int] | None = None
    ) -> None:
        if self.group is None:
            return
        offsets = [
            TopicPartition(self.topic, p, o)
            for p, o in sorted(self._done.items())
            if p in self._assigned and self._committed.get(p) != o and (only is None or p in only)
        ]
        self._last_commit = time.monotonic()
        if not offsets:
            return
        self.stats.commits += 1
        try:
            if asynchronous:
                self._consumer.commit(offsets=offsets, asynchronous=True)
                failed = []
            else:
                results = self._consumer.commit(offsets=offsets, asynchronous=False)
                failed = [tp for tp in results if tp.error is not None]
        except KafkaException as exc:
            self.stats.commit_failures += 1
            log.warning("subscription %s: commit failed (will retry): %s", self.group, exc)
            if strict:
                raise SubscriptionError(f"commit failed: {exc}") from exc
            return
        bad = {tp.partition for tp in failed}
        if failed:
            self.stats.commit_failures += 1
            reasons = "; ".join(f"partition {tp.partition}: {tp.error}" for tp in failed)
            log.warning("subscription %s: commit failed (will retry): %s", self.group, reasons)
        for tp in offsets:
            if tp.partition not in bad:
                self._committed[tp.partition] = tp.offset
        if failed and strict:
            raise SubscriptionError(f"commit failed: {reasons}")

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        failed = [tp for tp in partitions if error is not None or tp.error is not None]
        if failed:
            self.stats.commit_failures += 1
            log.warning("subscription %s: commit failed (will retry): %s", self.group, error)
        for tp in failed:
            # Forget it, so the next commit sends this partition again.
            if self._committed.get(tp.partition) == tp.offset:
                del self._committed[tp.partition]

    def _partitions(self) -> list[int]:
        metadata = self._consumer.list_topics(self.topic, timeout=METADATA_TIMEOUT)
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            why = topic.error if topic is not None and topic.error is not None else "not found"
            raise SubscriptionError(
                f"topic {self.topic} is not readable ({why}): is topic_prefix "
                f"{self._settings.topic_prefix!r} right, and has a processor created it?"
            )
        return sorted(topic.partitions)

    # -- group membership (run inside poll, on this thread) --------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        first = {tp.partition for tp in partitions} - self._seen
        if self._since is not None:
            # A timestamp start reads each partition from its beginning the
            # first time this subscription gets it, whatever the group committed.
            for tp in partitions:
                tp.offset = OFFSET_BEGINNING if tp.partition in first else OFFSET_INVALID
        elif self.from_ in ("latest", "committed"):
            self._place_uncommitted(consumer, partitions)
        for tp in partitions:
            self._forget(tp.partition)
        self._seen |= first
        self._assigned |= {tp.partition for tp in partitions}
        consumer.assign(partitions)
        log.info("subscription %s reads %s partitions %s", self.group, self.topic, self.assignment)

    def _place_uncommitted(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Where partitions the group never committed start: see ``from_`` in subscribe()."""
        asked = partitions
        if self.from_ == "committed":
            # Whether the group committed anything on the topic, not only on
            # these partitions: one that never had an event has no offset.
            asked = [TopicPartition(self.topic, p) for p in self._partition_ids]
        try:
            found = consumer.committed(
                [TopicPartition(tp.topic, tp.partition) for tp in asked],
                timeout=METADATA_TIMEOUT,
            )
        except KafkaException as exc:
            # Unknown: librdkafka uses the committed offset or else the
            # beginning. Too much rather than too little.
            log.warning("subscription %s: cannot read committed offsets: %s", self.group, exc)
            return
        committed = {tp.partition: tp.offset for tp in found if tp.offset >= 0}
        if self.from_ == "committed" and not committed:
            if self._failure is None:
                self._failure = NoCommittedOffsetError(
                    f"group {self.group!r} has no committed offset on {self.topic} "
                    "(from_='committed')"
                )
            return
        for tp in partitions:
            if tp.partition in committed:
                tp.offset = committed[tp.partition]
            elif self.from_ == "latest":
                tp.offset = self._start_ends.get(tp.partition, OFFSET_INVALID)
            # else ("committed", the group has offsets elsewhere): the beginning

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in partitions}
        # What the caller finished is committed before another member takes over.
        self._commit(asynchronous=False, only=gone)
        self._drop(gone)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("subscription %s lost partitions %s", self.group, partitions)
        self._drop({tp.partition for tp in partitions})

    def _drop(self, gone: set[int]) -> None:
        # Events fetched or handed out but not done will come again, from the
        # committed offset, to whoever owns the partition next.
        self._buffer = deque(e for e in self._buffer if e.partition not in gone)
        for partition in gone:
            self._forget(partition)
        self._assigned -= gone

    def _forget(self, partition: int) -> None:
        self._handed.pop(partition, None)
        self._done.pop(partition, None)
        self._committed.pop(partition, None)


def subscribe(
    group: str | None,
    *,
    lambdas: Iterable[str] | str | None = None,
    collections: Iterable[str] | str | None = None,
    statuses: Iterable[TaskStatus | str] | TaskStatus | str | None = None,
    task_ids: Iterable[str] | str | None = None,
    from_: Start = "earliest",
    settings: Settings | None = None,
    bootstrap: str | None = None,
    filter: Filter | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    commit_interval: float = DEFAULT_COMMIT_INTERVAL,
    client_id: str | None = None,
    kafka_overrides: Mapping[str, object] | None = None,
    partitions: Iterable[int] | None = None,
) -> Subscription:
    """Follow ``<prefix>.task-events`` in consumer group ``group``, filtered.

    ``lambdas``, ``collections``, ``statuses`` (``TaskStatus``, value or name)
    and ``task_ids`` select on the task snapshot after each event; None means
    any. Alternatively pass a ready :class:`Filter` as ``filter``.

    ``from_`` says where to start on a partition the group has no committed
    offset for: ``"earliest"`` (default: everything the topic still holds),
    ``"latest"`` (only events recorded after this call returns) or
    ``"committed"`` (a resume that must not silently start over: if the group
    has committed nothing on the topic, iteration raises
    :class:`NoCommittedOffsetError`; if it has, a partition without an offset
    of its own, which never had an event for it, starts at the beginning).
    With a committed offset the group resumes there. An epoch-millisecond ``int`` or an aware
    ``datetime`` is different: the first time this subscription is given a
    partition it reads it from its beginning, whatever was committed, and
    skips events whose ``at`` is earlier (brokers' ``offsets_for_times`` is
    not relied on).

    ``group=None`` reads every partition (or only ``partitions``) without
    joining a group and commits nothing, for live views such as a gRPC Watch.
    A view of one task needs only the task's partition:
    ``partitions=[partition_of(task_id, n)]`` with Kafka's murmur2 partitioner.

    ``settings`` default to :func:`atf_es.config.load_settings` (file and
    ``ATF_*`` environment); ``bootstrap`` defaults to ``settings.kafka_bootstrap``.
    ``kafka_overrides`` are extra librdkafka consumer properties.
    """
    if settings is None:
        settings = load_settings()
    bootstrap = bootstrap or settings.kafka_bootstrap
    if not bootstrap:
        raise ValueError(
            "no Kafka bootstrap servers: pass bootstrap=... or set ATF_KAFKA_BOOTSTRAP "
            "(the address `atf-es dev` prints)"
        )
    selection = Filter.of(
        lambdas=lambdas, collections=collections, statuses=statuses, task_ids=task_ids
    )
    if filter is not None:
        if selection != Filter():
            raise ValueError("pass either filter= or lambdas/collections/statuses/task_ids")
        selection = filter
    return Subscription(
        group,
        settings=settings,
        bootstrap=bootstrap,
        filter=selection,
        from_=from_,
        max_batch=max_batch,
        commit_interval=commit_interval,
        client_id=client_id,
        kafka_overrides=kafka_overrides,
        partitions=partitions,
    )
