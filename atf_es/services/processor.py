"""The partition processor: the single writer of its partitions.

Processors join one consumer group on the commands topic. The owner of
commands partition N is the only writer of task-events partition N, and
proves it with a transactional producer whose id names the partition
(``<prefix>.processor.p<N>``): whoever takes the partition over calls
``init_transactions`` with the same id, which fences the previous owner even
if it is paused and comes back later. Each batch of a partition is one
transaction: events, execution-queue messages, set-aside records and the
consumed command offsets commit together or not at all, and every partition
it writes has this owner as its only writer. Replies go to partitions that
every processor writes, so they are sent once the transaction has committed,
by a plain idempotent producer (docs/design.md, "Replies after the commit"). The RocksDB
projection is written after the commit, with the last event offset in the
same WriteBatch, so after a crash it is at worst behind the log, never ahead
of it; on assignment it catches up from the log before taking commands.

Finished tasks whose retention ran out (``finished_retention_ms``,
``dead_letter_retention_ms``) get a tombstone in their partition's batch
transaction, and their rows are deleted from the projection in the same
WriteBatch as the rest; a restore applies tombstones the same way, so a
projection rebuilt from the log equals the live one (docs/retention.md).

Why not one producer per process (EOS v2, fenced by the group generation)?
The embedded broker does not check the generation in TxnOffsetCommit: a
process paused past its session timeout and resumed commits over its
successor's work (tested; see docs/design.md). A producer per partition is
fenced by epoch on every broker, and real Kafka still applies the generation
check because the group metadata is sent as well.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from atf_es import kafka_clients, metrics
from atf_es.clock import now_ms
from atf_es.config import Settings
from atf_es.events import Gate, LambdaPolicy, Task, TaskStatus
from atf_es.events.codec import DecodeError, decode_event
from atf_es.events.periodic import PeriodicSchedule
from atf_es.events.records import task_id_of_key
from atf_es.projections.store import RocksTaskStore, TaskStore, open_or_rebuild
from atf_es.services.control import ControlView
from atf_es.services.partition import (
    Batch,
    Limits,
    PartitionCore,
    RawCommand,
    Retention,
    new_batch,
)
from atf_es.topics import Topics

log = logging.getLogger(__name__)

TXN_TIMEOUT_S = 30.0
RESTORE_CHUNK = 5_000
DEFAULT_MESSAGE_MAX_BYTES = 1_000_000
"""librdkafka's default ``message.max.bytes``."""
REPLY_METADATA_REFRESH_S = 1.0
STATE_REFRESH_S = 1.0
"""How often the processor thread recomputes its gauges (queue depths, lag)."""
_FENCED = frozenset(
    {
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    }
)


@dataclass
class ProcessorStats:
    """Counters an operator reads (and metrics will export)."""

    commands: int = 0
    events: int = 0
    timers: int = 0
    work: int = 0
    replies: int = 0
    replies_undelivered: int = 0
    """Replies Kafka refused after their commit; the asker times out and retries."""
    poison: int = 0
    batches: int = 0
    aborted: int = 0
    fenced: int = 0
    restored_events: int = 0
    rebuilt_stores: int = 0
    bad_event_records: int = 0
    expired: int = 0
    """Finished tasks tombstoned because their retention ran out."""
    restored_tombstones: int = 0
    """Tombstones applied while restoring projections from the log."""
    timeouts_held: int = 0
    """Batches whose timeouts waited for the partition's command backlog."""
    owned: list[int] = field(default_factory=list)


TIMEOUTS_HELD_MAX_S = 2.0
"""How long a partition's timeouts may wait for its command backlog at most.

Commands come before timeouts: a heartbeat or result that reached the log
before its task's deadline, but is still unread behind a backlog (after a
takeover, the whole time the partition had no owner), must be applied before
the deadline is judged, or a task that was alive and well runs twice. While
the partition is behind, its timeouts are held; a flood that never lets it
catch up still fires them every ``TIMEOUTS_HELD_MAX_S``. Holding a timeout
only ever makes it later, which never lets two executions overlap."""


@dataclass
class _Owned:
    partition: int
    producer: Producer
    store: RocksTaskStore
    core: PartitionCore
    next_offset: int = -1
    """The next commands offset to handle (-1: none handled since the assignment)."""
    end_at_assignment: int = -1
    """The end of the commands partition when it was assigned (-1: unknown)."""
    handled_any: bool = False
    held_since: float | None = None
    committed_at: float = 0.0
    """When this partition's last transaction committed (``time.monotonic()``)."""
    waiting: list[RawCommand] = field(default_factory=list)
    """Commands read but held for the next transaction (``commit_interval_ms``)."""


class Processor:
    """Runs until ``stop()``; ``run()`` blocks, so give it a thread or a process."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        *,
        instance_id: str | None = None,
        limits: Limits | None = None,
        clock: Callable[[], int] = now_ms,
        stable_wait: float | None = None,
    ) -> None:
        self.settings = settings
        self.stable_wait = STABLE_WAIT_S if stable_wait is None else stable_wait
        self.bootstrap = bootstrap
        self.topics = Topics(settings.topic_prefix)
        self.instance_id = instance_id or f"{socket.gethostname()}-{os.getpid()}"
        # Each partition's owner sees only its own tasks, so the cluster-wide
        # cap is split evenly between the partitions.
        self.limits = limits or Limits(
            max_enqueued=max(1, settings.max_enqueued // settings.partitions),
            max_record_bytes=record_limit(settings),
        )
        self.retention = Retention(
            finished_ms=settings.finished_retention_ms,
            dead_letter_ms=settings.dead_letter_retention_ms,
        )
        self.clock = clock
        self.data_dir = Path(settings.data_dir) / "processor" / self.instance_id
        self.stats = ProcessorStats()
        self._owned: dict[int, _Owned] = {}
        self._stop = threading.Event()
        self._consumer: Consumer | None = None
        self._control: ControlView | None = None
        self._refreshed = False
        self._reply_partitions = 0
        self._reply_metadata_at = -REPLY_METADATA_REFRESH_S
        self._poison_partitions = 1
        self._replier: Producer | None = None
        self._thread: threading.Thread | None = None
        self.failed = False
        self.failure: BaseException | None = None
        """Why the processor stopped on its own, when ``failed``."""
        self.ready = threading.Event()
        """Set once the processor has joined the group and owns its first partitions."""
        self._state: metrics.StateSnapshot = {}
        """The gauges as of the last refresh; replaced whole, read by scrapes."""
        self._state_at = -STATE_REFRESH_S
        self._restored: dict[int, tuple[int, int]] = {}
        """Per partition: (offsets replayed, offsets to replay) of its last restore."""
        self._unregister: Callable[[], None] | None = None
        self._transitions = metrics.Children(metrics.PROCESSOR_TRANSITIONS)
        self._dead_lettered = metrics.Children(metrics.PROCESSOR_DEAD_LETTERED)
        self._committed = metrics.PROCESSOR_TRANSACTIONS.labels("committed")
        self._batch_commands = metrics.PROCESSOR_BATCH_SIZE.labels("commands")
        self._batch_events = metrics.PROCESSOR_BATCH_SIZE.labels("events")
        self._batch_work = metrics.PROCESSOR_BATCH_SIZE.labels("work")

    # -- lifecycle -------------------------------------------------------

    name = "processor"

    def start(self) -> None:
        """Run in a background thread (``run()`` runs in the caller's)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run_logged, name="processor", daemon=True)
            self._thread.start()

    def _run_logged(self) -> None:
        try:
            self.run()
        except Exception as exc:
            self.failure = exc
            log.exception("processor %s crashed", self.instance_id)
            self.failed = True
            raise

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the current batch, release every partition and return.

        Safe before ``start()`` and safe twice.
        """
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def run(self) -> None:
        if self._unregister is None:
            self._unregister = metrics.add_source(self._gauges)
        self._control = ControlView(self.settings, self.bootstrap)
        self._control.catch_up()
        self._consumer = kafka_clients.consumer(
            self.bootstrap,
            f"{self.settings.topic_prefix}.processor",
            self.settings.kafka_config,
            overrides=commands_consumer_overrides(self.settings, self.instance_id),
        )
        self._reply_partition_exists(0)  # learn the replies topic's partitions now
        self._poison_partitions = self._partition_count(self.topics.poison) or 1
        self._replier = kafka_clients.producer(self.bootstrap, self.settings.kafka_config)
        self._consumer.subscribe(
            [self.topics.commands],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info("processor %s started; data in %s", self.instance_id, self.data_dir)
        try:
            while not self._stop.is_set():
                self._poll_once()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()  # runs on_revoke, which releases every partition
            except (KafkaException, RuntimeError) as exc:
                log.warning("closing the commands consumer: %s", exc)
            self._consumer = None
        for partition in list(self._owned):
            self._release(partition)
        if self._replier is not None:
            left = self._replier.flush(5.0)
            if left:
                log.warning("%d replies not delivered at shutdown", left)
            self._replier = None
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._unregister is not None:
            self._unregister()
            self._unregister = None
        log.info("processor %s stopped", self.instance_id)

    # -- ownership -------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._acquire(tp.partition)
            self._note_backlog(consumer, tp.partition)
        # A partition we were fenced on was paused; librdkafka keeps it paused
        # across rebalances, so being given it again must undo that.
        consumer.resume(partitions)
        self.stats.owned = sorted(self._owned)
        self.ready.set()
        log.info("processor %s owns partitions %s", self.instance_id, self.stats.owned)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._release(tp.partition)
        self.stats.owned = sorted(self._owned)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("processor %s lost partitions %s", self.instance_id, partitions)
        self._on_revoke(consumer, partitions)

    def _acquire(self, partition: int) -> None:
        producer = kafka_clients.transactional_producer(
            self.bootstrap,
            f"{self.settings.topic_prefix}.processor.p{partition}",
            self.settings.kafka_config,
        )
        # Fences the previous owner and aborts whatever it left open, before we
        # read the log: nothing it writes from now on can land.
        producer.init_transactions(TXN_TIMEOUT_S)
        store, rebuilt = open_or_rebuild(self.data_dir / f"p{partition}")
        if rebuilt:
            self.stats.rebuilt_stores += 1
            log.warning("partition %d: projection unreadable; rebuilding from the log", partition)
        self._restore(partition, store)
        core = PartitionCore(
            partition,
            store,
            self._policy,
            self.topics,
            self.limits,
            reply_partition_exists=self._reply_partition_exists,
            poison_partitions=self._poison_partitions,
            gates=self._gate,
            retention=self.retention,
            schedules=self._schedules,
            partitions=self.settings.partitions,
        )
        self._owned[partition] = _Owned(partition, producer, store, core)

    def _note_backlog(self, consumer: Consumer, partition: int) -> None:
        """Where this partition's commands start and end now: the backlog to read first."""
        owned = self._owned.get(partition)
        if owned is None:
            return
        tp = TopicPartition(self.topics.commands, partition)
        try:
            (committed,) = consumer.committed([tp], timeout=5.0)
            _, end = consumer.get_watermark_offsets(tp, timeout=5.0)
        except KafkaException as exc:
            log.warning("partition %d: cannot read its backlog's bounds: %s", partition, exc)
            return
        owned.next_offset = committed.offset if committed.offset >= 0 else 0
        owned.end_at_assignment = end

    def _may_fire_timeouts(self, owned: _Owned, handled: bool) -> bool:
        """Whether this partition's timeouts fire in this batch (see ``TIMEOUTS_HELD_MAX_S``)."""
        assert self._consumer is not None
        tp = TopicPartition(self.topics.commands, owned.partition)
        _, end = self._consumer.get_watermark_offsets(tp, cached=True)
        # A partition whose poll brought nothing is caught up, unless nothing
        # came since the assignment: the first fetch may not have landed yet.
        behind = (handled or not owned.handled_any) and owned.next_offset < max(
            end, owned.end_at_assignment
        )
        now = time.monotonic()
        if not behind:
            owned.held_since = None
            return True
        if owned.held_since is None:
            owned.held_since = now
        if now - owned.held_since < TIMEOUTS_HELD_MAX_S:
            self.stats.timeouts_held += 1
            return False
        owned.held_since = now
        return True

    def _release(self, partition: int) -> None:
        owned = self._owned.pop(partition, None)
        if owned is None:
            return
        owned.store.close()
        # No transaction is ever left open between batches, so there is nothing to flush.
        owned.producer.flush(0)

    def _restore(self, partition: int, store: RocksTaskStore) -> None:
        started = time.monotonic()
        result = restore_partition(
            self.settings,
            self.bootstrap,
            partition,
            store,
            stop=self._stop,
            stable_wait=self.stable_wait,
            progress=lambda done, total: self._restored.__setitem__(partition, (done, total)),
        )
        metrics.PROCESSOR_RESTORED_EVENTS.inc(result.events)
        if result.unreadable:
            metrics.PROCESSOR_BAD_EVENTS.inc(result.unreadable)
        self.stats.restored_events += result.events
        self.stats.restored_tombstones += result.tombstones
        self.stats.bad_event_records += result.unreadable
        log.info(
            "partition %d: restored %d events in %.2fs",
            partition,
            result.events,
            time.monotonic() - started,
        )

    # -- the loop --------------------------------------------------------

    def _policy(self, lambda_name: str) -> LambdaPolicy | None:
        assert self._control is not None
        policy = self._control.get(lambda_name)
        if policy is None and not self._refreshed:
            # Defined a moment ago? Read the control topic to its end, once per
            # batch however many unknown names it holds (garbage may hold many).
            self._refreshed = True
            self._control.catch_up(timeout=5.0)
            policy = self._control.get(lambda_name)
        return policy

    def _gate(self, lambda_name: str, collection: str) -> Gate | None:
        assert self._control is not None
        return self._control.gate(lambda_name, collection)

    def _schedules(self) -> Iterable[PeriodicSchedule]:
        assert self._control is not None
        return self._control.schedules.values()

    def _partition_count(self, topic: str) -> int | None:
        """How many partitions ``topic`` has; None if Kafka cannot say now."""
        assert self._consumer is not None
        try:
            metadata = self._consumer.list_topics(topic, timeout=5.0)
        except KafkaException as exc:
            log.warning("reading the partitions of %s: %s", topic, exc)
            return None
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            return None
        return len(found.partitions)

    def _reply_partition_exists(self, partition: int) -> bool:
        """Whether the replies topic has ``partition``; asks Kafka at most once a second."""
        now = time.monotonic()
        consumer = self._consumer
        if (
            partition >= self._reply_partitions
            and consumer is not None
            and now - self._reply_metadata_at >= REPLY_METADATA_REFRESH_S
        ):
            self._reply_metadata_at = now
            count = self._partition_count(self.topics.replies)
            if count is not None:
                self._reply_partitions = count
        return partition < self._reply_partitions

    def _poll_once(self) -> None:
        assert self._consumer is not None and self._control is not None
        # Wait for the first record only, then take what has already arrived:
        # consume(n, timeout) would hold every command until n arrived or the
        # poll interval ran out.
        first = self._consumer.poll(self._wait_seconds())
        messages = [] if first is None else [first]
        if first is not None and self.settings.max_batch > 1:
            messages += self._consumer.consume(num_messages=self.settings.max_batch - 1, timeout=0)
        self._control.poll()
        self._refreshed = False
        by_partition: dict[int, list[RawCommand]] = defaultdict(list)
        for message in messages:
            if message.error() is not None:
                log.warning("commands topic: %s", message.error())
                continue
            by_partition[_partition(message)].append(
                RawCommand(_offset(message), message.key(), message.value())
            )
        now = self.clock()
        for partition, owned in list(self._owned.items()):
            records = owned.waiting + by_partition.get(partition, [])
            if records and self._too_soon(owned, len(records)):
                owned.waiting = records
                continue
            owned.waiting = []
            batch = new_batch(partition, now)
            owned.core.handle(batch, records)
            if records:
                owned.next_offset = records[-1].offset + 1
                owned.handled_any = True
            owned.core.fire_due(batch, timeouts=self._may_fire_timeouts(owned, bool(records)))
            if batch.empty:
                continue
            self._commit(owned, batch, records[0].offset if records else None)
        if time.monotonic() - self._state_at >= STATE_REFRESH_S:
            self._refresh_state()

    def _too_soon(self, owned: _Owned, records: int) -> bool:
        """Whether commands for ``owned`` should wait to share a later transaction."""
        interval = self.settings.commit_interval_ms / 1000
        return (
            interval > 0
            and records < self.settings.max_batch
            and time.monotonic() - owned.committed_at < interval
        )

    def _wait_seconds(self) -> float:
        """How long to wait for commands: the poll interval, or less if a trigger is due sooner.

        A trigger already in the past is either being fired or held back by flow
        control; waking for it again would spin, so it waits the full interval.
        """
        interval = self.settings.poll_interval_ms
        now = self.clock()
        upcoming = [
            due
            for owned in self._owned.values()
            if (due := owned.store.next_trigger()) is not None and due > now
        ]
        held = [
            (owned.committed_at + self.settings.commit_interval_ms / 1000 - time.monotonic()) * 1000
            for owned in self._owned.values()
            if owned.waiting
        ]
        return max(0.0, min([interval, *(due - now for due in upcoming), *held])) / 1000

    def _commit(self, owned: _Owned, batch: Batch, first_offset: int | None) -> None:
        producer = owned.producer
        events_topic = self.topics.task_events
        last_event = -1

        def delivered(error: KafkaError | None, message: Message) -> None:
            nonlocal last_event
            if error is None and message.topic() == events_topic:
                last_event = max(last_event, _offset(message))

        started = time.perf_counter()
        try:
            producer.begin_transaction()
            for out in batch.transactional():
                if out.partition is None:
                    producer.produce(out.topic, out.value, out.key, on_delivery=delivered)
                else:
                    producer.produce(
                        out.topic, out.value, out.key, out.partition, on_delivery=delivered
                    )
                producer.poll(0)
            producer.flush(TXN_TIMEOUT_S)
            if batch.last_command_offset is not None:
                assert self._consumer is not None
                producer.send_offsets_to_transaction(
                    [
                        TopicPartition(
                            self.topics.commands, batch.partition, batch.last_command_offset + 1
                        )
                    ],
                    self._consumer.consumer_group_metadata(),
                    TXN_TIMEOUT_S,
                )
            producer.commit_transaction(TXN_TIMEOUT_S)
        except KafkaException as exc:
            self._failed(owned, batch, first_offset, exc)
            return
        seconds = time.perf_counter() - started
        owned.committed_at = time.monotonic()
        self._send_replies(batch)
        owned.store.commit(
            batch.tasks.values(),
            last_event if last_event >= 0 else None,
            deleted=batch.deleted,
        )
        stats = self.stats
        stats.batches += 1
        stats.commands += batch.commands
        stats.timers += batch.timers
        stats.events += len(batch.events)
        stats.expired += len(batch.tombstones)
        stats.work += len(batch.work)
        stats.replies += len(batch.replies)
        stats.poison += len(batch.poison)
        self._observe(batch, seconds)

    def _observe(self, batch: Batch, seconds: float) -> None:
        """The metrics of a committed batch: a few updates per batch, none per record."""
        metrics.PROCESSOR_TRANSACTION_SECONDS.observe(seconds)
        self._committed.inc()
        self._batch_commands.observe(batch.commands)
        self._batch_events.observe(len(batch.events))
        self._batch_work.observe(len(batch.work))
        if batch.commands:
            metrics.PROCESSOR_COMMANDS.inc(batch.commands)
        if batch.poison:
            metrics.PROCESSOR_POISON.inc(len(batch.poison))
        if batch.transitions:
            for (lambda_name, status), n in Counter(batch.transitions).items():
                self._transitions(lambda_name, status.value).inc(n)
                if status is TaskStatus.DEAD_LETTERED:
                    self._dead_lettered(lambda_name).inc(n)
        for before, task in batch.notable:
            _log_transition(batch.partition, before, task)

    def _refresh_state(self) -> None:
        """Recompute the gauges from the owned projections' counters (processor thread)."""
        self._state_at = time.monotonic()
        tasks: dict[metrics.Labels, float] = {}
        enqueued: dict[metrics.Labels, float] = {}
        credit: dict[metrics.Labels, float] = {}
        waiting: dict[metrics.Labels, float] = {}
        lag: dict[metrics.Labels, float] = {}
        consumer = self._consumer
        positions: dict[int, int] = {}
        if consumer is not None and self._owned:
            try:
                for tp in consumer.position(
                    [TopicPartition(self.topics.commands, p) for p in self._owned]
                ):
                    positions[tp.partition] = tp.offset
            except KafkaException as exc:
                log.debug("reading the consumer's positions: %s", exc)
        queues: set[tuple[str, int]] = set()
        for owned in self._owned.values():
            for (lambda_name, _, priority, status), n in owned.store.counts().items():
                key = (lambda_name, status)
                tasks[key] = tasks.get(key, 0) + n
                queues.add((lambda_name, priority))
            for (lambda_name, _, priority), n in owned.store.waiting().items():
                key = (lambda_name, str(priority))
                waiting[key] = waiting.get(key, 0) + n
                queues.add((lambda_name, priority))
        for partition, owned in self._owned.items():
            # Every partition has its own share of max_enqueued for every queue.
            for lambda_name, priority in queues:
                used = owned.store.enqueued(lambda_name, priority)
                key = (lambda_name, str(priority))
                enqueued[key] = enqueued.get(key, 0) + used
                credit[key] = credit.get(key, 0) + max(0, self.limits.max_enqueued - used)
            if consumer is not None:
                tp = TopicPartition(self.topics.commands, partition)
                _, high = consumer.get_watermark_offsets(tp, cached=True)
                position = positions.get(partition, -1)
                if position < 0:
                    position = owned.next_offset
                if high >= 0 and position >= 0:
                    lag[(str(partition),)] = max(0, high - position)
        self._state = {
            "atf_processor_tasks": tasks,
            "atf_processor_enqueued": enqueued,
            "atf_processor_enqueue_credit": credit,
            "atf_processor_waiting": waiting,
            "atf_processor_consumer_lag": lag,
            "atf_processor_owned_partitions": {(): len(self._owned)},
        }

    def _gauges(self) -> metrics.StateSnapshot:
        """What a scrape reports (scrape thread): the last refresh and restore progress."""
        restored = dict(self._restored)
        return {
            **self._state,
            "atf_processor_restore_replayed": {(str(p),): d for p, (d, _) in restored.items()},
            "atf_processor_restore_total": {(str(p),): t for p, (_, t) in restored.items()},
        }

    def _send_replies(self, batch: Batch) -> None:
        """Answer the askers of a committed batch.

        A reply lost here (a crash right after the commit) costs its asker a
        timeout and a retry, which the command's id or the task's state
        answers the same way again.
        """
        replier = self._replier
        if replier is None or not batch.replies:
            return

        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                self.stats.replies_undelivered += 1
                metrics.PROCESSOR_REPLIES_UNDELIVERED.inc()
                log.warning("reply to %s[%s]: %s", message.topic(), message.partition(), error)

        for out in batch.replies:
            assert out.partition is not None, "a reply always names its partition"
            for attempt in range(2):
                try:
                    replier.produce(
                        out.topic, out.value, out.key, out.partition, on_delivery=delivered
                    )
                    break
                except BufferError:
                    if attempt:
                        self.stats.replies_undelivered += 1
                        metrics.PROCESSOR_REPLIES_UNDELIVERED.inc()
                        log.warning("reply to %s dropped: the producer queue is full", out.topic)
                    else:
                        replier.poll(1.0)  # let the local queue drain once
                except KafkaException as exc:
                    self.stats.replies_undelivered += 1
                    metrics.PROCESSOR_REPLIES_UNDELIVERED.inc()
                    log.warning("reply to %s[%s]: %s", out.topic, out.partition, exc)
                    break
        replier.poll(0)

    def _failed(
        self, owned: _Owned, batch: Batch, first_offset: int | None, exc: KafkaException
    ) -> None:
        error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        if error is not None and (error.fatal() or error.code() in _FENCED):
            # Someone else owns this partition now. Let go of it without writing.
            self.stats.fenced += 1
            metrics.PROCESSOR_TRANSACTIONS.labels("fenced").inc()
            log.error("partition %d: fenced (%s); releasing it", batch.partition, error)
            self._owned.pop(batch.partition, None)
            self.stats.owned = sorted(self._owned)
            owned.store.close()
            if self._consumer is not None:
                self._consumer.pause([TopicPartition(self.topics.commands, batch.partition)])
            return
        self.stats.aborted += 1
        metrics.PROCESSOR_TRANSACTIONS.labels("aborted").inc()
        log.warning("partition %d: transaction failed (%s); retrying", batch.partition, exc)
        try:
            owned.producer.abort_transaction(TXN_TIMEOUT_S)
        except KafkaException as abort_error:
            log.error("partition %d: abort failed (%s); releasing it", batch.partition, abort_error)
            self._release(batch.partition)
            return
        if first_offset is not None and self._consumer is not None:
            self._consumer.seek(TopicPartition(self.topics.commands, batch.partition, first_offset))


def _log_transition(partition: int, before: Task | None, task: Task) -> None:
    """The log line of a notable committed transition, with the task id as context."""
    context = {
        "task_id": task.task_id,
        "lambda": task.lambda_name,
        "partition": partition,
        "status": task.status.value,
        "attempt": task.attempts,
        "lease": task.lease,
    }
    error = (task.last_error or "")[:500]
    if task.status is TaskStatus.DEAD_LETTERED:
        log.warning(
            "task %s (%s) dead-lettered after %d attempts: %s",
            task.task_id,
            task.lambda_name,
            task.attempts,
            error,
            extra=context,
        )
    elif task.status is TaskStatus.RETRIABLE_FAILURE:
        log.info(
            "task %s (%s) failed on attempt %d; retry due at %s: %s",
            task.task_id,
            task.lambda_name,
            task.attempts,
            task.next_trigger_at,
            error,
            extra=context | {"retry_at": task.next_trigger_at},
        )
    elif task.status is TaskStatus.FATAL_FAILURE:
        log.info(
            "task %s (%s) failed fatally on attempt %d: %s",
            task.task_id,
            task.lambda_name,
            task.attempts,
            error,
            extra=context,
        )
    elif before is not None:
        log.warning(
            "task %s (%s) was %s (lease %d) and is %s again: its %s timed out%s",
            task.task_id,
            task.lambda_name,
            before.status.value,
            before.lease,
            task.status.value,
            "claim" if before.status is TaskStatus.CLAIMED else "heartbeat",
            " (or a gate holds it)" if task.status is TaskStatus.NEW else "",
            extra=context,
        )


def commands_consumer_overrides(settings: Settings, instance_id: str) -> dict[str, int | str]:
    """How a processor's group consumer of the commands topic differs from the others."""
    return {
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": max(100, settings.session_timeout_ms // 10),
        "max.poll.interval.ms": 600_000,
        "client.id": f"processor-{instance_id}",
        "fetch.wait.max.ms": settings.commands_fetch_wait_ms,
    }


def record_limit(settings: Settings) -> int:
    """The largest record the processor's producers take: ``message.max.bytes``."""
    configured = settings.kafka_config.get("message.max.bytes")
    try:
        return int(configured) if configured else DEFAULT_MESSAGE_MAX_BYTES
    except ValueError:
        return DEFAULT_MESSAGE_MAX_BYTES


def _partition(message: Message) -> int:
    partition = message.partition()
    assert partition is not None
    return partition


def _offset(message: Message) -> int:
    offset = message.offset()
    assert offset is not None
    return offset


STABLE_WAIT_S = 30.0
"""How long a restore waits for an open transaction on its event log to end."""


class UnstableLogError(RuntimeError):
    """An open transaction hides part of a partition's event log from us.

    After ``init_transactions`` fenced the partition's previous owner, only a
    foreign transactional writer (or a broker that failed to abort the fenced
    one) can keep a transaction open on it. Restoring up to the last stable
    offset would build the projection from part of the log, and every
    decision after it would be wrong, so the processor refuses the partition.
    """


def _stable_end(
    reader: Consumer,
    settings: Settings,
    bootstrap: str,
    source: TopicPartition,
    *,
    wait: float,
    stop: threading.Event | None,
) -> tuple[int, int]:
    """``(low, end)`` of ``source`` once no open transaction hides part of it."""
    everything = kafka_clients.consumer(
        bootstrap,
        kafka_config=settings.kafka_config,
        overrides={"isolation.level": "read_uncommitted"},
    )
    try:
        deadline = time.monotonic() + wait
        warned = False
        while True:
            low, stable = reader.get_watermark_offsets(source, timeout=TXN_TIMEOUT_S)
            _, end = everything.get_watermark_offsets(source, timeout=TXN_TIMEOUT_S)
            if stable >= end:
                return low, stable
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                raise UnstableLogError(
                    f"{source.topic}[{source.partition}]: an open transaction hides offsets "
                    f"{stable} to {end} for more than {wait:g}s although the previous owner "
                    "was fenced; restoring now would miss committed events, so this "
                    "partition is refused (is another transactional producer writing to it?)"
                )
            if not warned:
                warned = True
                log.warning(
                    "%s[%d]: waiting for an open transaction (stable to %d, ends at %d)",
                    source.topic,
                    source.partition,
                    stable,
                    end,
                )
            if stop is not None:
                stop.wait(0.2)
            else:
                time.sleep(0.2)  # waiting for the broker to end the transaction
    finally:
        everything.close()


@dataclass(frozen=True, slots=True)
class RestoreResult:
    events: int
    """Records read from the event log (tombstones and unreadable ones included)."""
    unreadable: int
    """Records that did not decode as task events (or tombstones without a
    readable key); skipped and logged."""
    tombstones: int = 0
    """Tombstones applied: each deleted its task's row (if there was one)."""


def restore_partition(
    settings: Settings,
    bootstrap: str,
    partition: int,
    store: TaskStore,
    *,
    stop: threading.Event | None = None,
    stable_wait: float = STABLE_WAIT_S,
    progress: Callable[[int, int], None] | None = None,
) -> RestoreResult:
    """Bring ``store`` up to the end of its event-log partition, as it is now.

    A tombstone (a record with a key and no value, written when a finished
    task's retention ran out) deletes its task's row; a task scheduled again
    under the same id after it is a new task. Raises ``UnstableLogError`` when
    an open transaction keeps hiding part of the partition for
    ``stable_wait`` seconds. ``progress(done, total)``, if given, hears how
    many offsets of the log have been replayed so far, of how many.
    """
    source = TopicPartition(Topics(settings.topic_prefix).task_events, partition)
    reader = kafka_clients.consumer(bootstrap, kafka_config=settings.kafka_config)
    try:
        low, high = _stable_end(reader, settings, bootstrap, source, wait=stable_wait, stop=stop)
        start = max(store.last_offset() + 1, low)
        if start >= high:
            if progress is not None:
                progress(0, 0)
            return RestoreResult(0, 0)
        reader.assign([TopicPartition(source.topic, partition, start)])
        pending: dict[str, Task] = {}
        """The latest snapshot per task since its last tombstone in this chunk."""
        deleted: dict[str, None] = {}
        """Tasks tombstoned in this chunk: their stored rows go before ``pending`` applies."""
        last = start - 1
        applied = unreadable = tombstones = 0
        # Done when the position reaches the end, not when a record at the end
        # arrives: a transactional log ends in a commit marker, which no
        # consumer ever receives.
        while (position := reader.position([source])[0].offset) < high:
            if progress is not None:
                progress(max(0, position - start), high - start)
            for message in kafka_clients.consume(reader, RESTORE_CHUNK, 0.1):
                if message.error() is not None:
                    continue
                last = _offset(message)
                applied += 1
                value = message.value()
                if value is None:
                    task_id = task_id_of_key(message.key())
                    if task_id is None:
                        unreadable += 1
                        log.warning(
                            "partition %d offset %d: a tombstone without a task id key",
                            partition,
                            last,
                        )
                        continue
                    # Whatever came before is gone; what follows is a new task.
                    pending.pop(task_id, None)
                    deleted[task_id] = None
                    tombstones += 1
                    continue
                try:
                    _, task = decode_event(value)
                except DecodeError as exc:
                    unreadable += 1
                    log.warning("partition %d offset %d: %s", partition, last, exc)
                    continue
                current = pending.get(task.task_id)
                # At equal seq the later record wins: a batch retried after an
                # abort writes its seq again, and brokers that do not filter
                # aborted transactions (the embedded one) show both copies.
                if current is None or task.seq >= current.seq:
                    pending[task.task_id] = task
            if len(pending) + len(deleted) >= RESTORE_CHUNK:
                store.commit(pending.values(), last, replace_equal=True, deleted=deleted)
                pending.clear()
                deleted.clear()
            if stop is not None and stop.is_set():
                break
        store.commit(pending.values(), last, replace_equal=True, deleted=deleted)
        if progress is not None:
            progress(high - start, high - start)
        return RestoreResult(applied, unreadable, tombstones)
    finally:
        reader.close()
