"""The controller: one per worker host, between the exec topics and the executors.

It consumes the execution topics of the lambdas it serves (every priority)
into local FIFO buffers, one per (lambda, priority), and answers the
executors' ``NextWork`` long polls from them. An item is handed out only
after the HSC accepted its claim for the asking worker (the items of one
``NextWork`` are claimed in one ``ClaimTasks`` call, so the processor can
record them in one transaction); a refused claim (stale lease, wrong state,
cancelled) means the item is a leftover from an earlier enqueue, and it is
discarded.

Priority. ``NextWork`` takes from the highest non-empty priority level, and
lambdas at the same level take turns: "higher runs first once ready", which
is what an owner can reason about. Strict order alone starves the low levels
for as long as high-priority work keeps coming, so ``Settings.priority_policy``
chooses what happens then (:class:`PrioritySelector`; docs/priorities.md):

* ``aging`` (the default): an item that has waited in its buffer longer than
  ``Settings.priority_aging_ms`` (60 s) is served before everything else, the
  oldest such item first. In normal operation nothing waits that long and the
  order is strict; under a sustained flood every level still moves, about a
  buffer's worth of items per aging period. No weights to tune: one number,
  "how long may low priority be held back", which is the question an owner
  can answer. The age counts from the moment the item entered this
  controller's buffer (a monotonic clock: no skew between hosts).
* ``strict``: the order is strict, always; a starved item is enqueued again by
  its enqueue timeout, and again, until capacity frees up. For owners who
  would rather add capacity than run low priority ahead of high.

Offsets. The consumer group is ``<prefix>.controller`` with
``enable.auto.offset.store=false``: an item's offset is stored (and then
auto-committed) only once the item was claimed or discarded, and never past
an item of the same partition still buffered or being claimed. A crashed
controller therefore loses nothing that was read but not claimed: its
successor reads those items again (a repeat is refused by its lease), and
anything truly lost is re-enqueued by the processor's enqueue timeout.

Flow control. Each buffer holds at most ``buffer_per_priority`` items
(``Settings.controller_buffer``). When one is full the partitions of its
topic are paused (a message that arrives anyway is not buffered: its
partition is rewound to it) and resumed once the buffer has drained to half,
so a busy host never reads much more than it can run.

Threads: one poll thread owns the Kafka consumer (assignment, pause/resume,
offset storage); gRPC handler threads only touch the buffers, under a lock,
and report finished items back to the poll thread through a queue.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from atf_es import kafka_clients, metrics
from atf_es._proto.atf.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from atf_es.clock import now_ms
from atf_es.config import PRIORITY_POLICIES, Settings
from atf_es.events import LambdaPolicy, WorkItem
from atf_es.events.codec import DecodeError, decode_work
from atf_es.services.auth import OPEN, ServerSecurity
from atf_es.services.channels import Credentials, service_channel
from atf_es.services.control import ControlView
from atf_es.services.grpc_server import GrpcServer, abort
from atf_es.services.hsc import MAX_WORKER_CHARS, REFUSAL_CODES, REPLY_CODE_KEY
from atf_es.topics import Topics

__all__ = ["Controller", "ControllerStats", "PrioritySelector"]

log = logging.getLogger(__name__)

MAX_TASKS_PER_CALL = 100
MAX_WAIT_MS = 60_000
CLAIM_DEADLINE_S = 5.0
CLAIM_ATTEMPTS = 3
CLAIM_RETRY_DELAY_S = 0.1
ONE_BY_ONE_S = 60
"""How long to claim one task per call after an HSC did not know ``ClaimTasks``."""
POLL_TIMEOUT_S = 0.05

# A claim refused for good (hsc.REFUSAL_CODES: the item is a leftover, or its
# task is gone or cancelled) is discarded; so is one the HSC failed on
# (_BROKEN, below). Anything else may be transient and is retried.
#
# The HSC failed on this very item (an input it cannot take, or a bug the item
# hits): asking again fails the same way, and an item put back at the head of
# its buffer would block every item behind it for good. Discarded like a
# refusal, but loudly; a real task's enqueue timeout enqueues it again.
_BROKEN = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.DATA_LOSS,
    }
)

_Key = tuple[str, int]
"""(lambda name, priority): one buffer, one exec topic."""


@dataclass(frozen=True, slots=True)
class _Buffered:
    item: WorkItem
    topic: str
    partition: int
    offset: int
    generation: int
    """The assignment this item was read under; a stale one stores no offset."""
    arrived: float
    """``time.monotonic()`` when the item entered its buffer: its age for ``aging``."""


@dataclass
class ControllerStats:
    """Counters an operator reads (and metrics will export)."""

    received: int = 0
    claimed: int = 0
    discarded: int = 0
    bad_records: int = 0
    claim_errors: int = 0
    pauses: int = 0
    aged: int = 0
    """Items served by the ``aging`` rule: they had waited longer than
    ``priority_aging_ms``. A count that keeps growing means the low levels
    are held back that long: the host needs more capacity."""
    waiting: int = 0
    """NextWork calls waiting for work right now (idle executor threads)."""


class _Arrived(Protocol):
    @property
    def arrived(self) -> float: ...


class PrioritySelector:
    """Which (lambda, priority) buffer ``NextWork`` takes its next item from.

    Pure: it reads the buffers it is given and the time it is told, and keeps
    only the same-level turn. The controller calls it under its lock for every
    item, so it looks at the front of each buffer only: a buffer is FIFO by
    arrival (an item put back goes to the front, and it is older than the rest;
    two put back at once may swap places), so its front is its oldest item.

    ``strict``: the highest non-empty level among ``lambdas``; lambdas at the
    same level take turns. ``aging``: first, of the items that have waited
    longer than ``aging_ms``, the one that arrived first (ties: the higher
    priority); only when there is none, as ``strict``.
    """

    def __init__(self, keys: Iterable[_Key], policy: str, aging_ms: int) -> None:
        if policy not in PRIORITY_POLICIES:
            raise ValueError(f"priority policy must be one of {PRIORITY_POLICIES}, got {policy!r}")
        if aging_ms < 1:
            raise ValueError(f"priority aging must be at least 1 ms, got {aging_ms}")
        self.policy = policy
        self.aging_ms = aging_ms
        self._aging_s = aging_ms / 1000
        levels: dict[int, list[_Key]] = {}
        for key in dict.fromkeys(keys):
            levels.setdefault(key[1], []).append(key)
        self._levels = [levels[p] for p in sorted(levels, reverse=True)]
        """Highest priority first; each level in the order its keys were given."""
        self._turn = 0

    def pick(
        self,
        buffers: Mapping[_Key, Sequence[_Arrived]],
        lambdas: Collection[str],
        now: float,
    ) -> tuple[_Key, bool] | None:
        """The buffer to take from and whether the aging rule chose it; None if all are empty."""
        self._turn += 1
        if self.policy == "aging":
            # Arrived strictly before the cutoff: waited longer than aging_ms.
            oldest_at = now - self._aging_s
            oldest: _Key | None = None
            for level in self._levels:
                for key in level:
                    if key[0] in lambdas:
                        buffer = buffers[key]
                        if buffer and buffer[0].arrived < oldest_at:
                            oldest, oldest_at = key, buffer[0].arrived
            if oldest is not None:
                return oldest, True
        for level in self._levels:
            served = [key for key in level if key[0] in lambdas]
            for offset in range(len(served)):
                key = served[(self._turn + offset) % len(served)]
                if buffers[key]:
                    return key, False
        return None


class _PartitionOffsets:
    """Offsets read from one partition and not yet claimed or discarded."""

    __slots__ = ("next", "open", "stored")

    def __init__(self) -> None:
        self.open: set[int] = set()
        self.next = -1
        self.stored = -1

    def read(self, offset: int) -> None:
        self.open.add(offset)
        self.next = max(self.next, offset + 1)

    def skipped(self, offset: int) -> None:
        self.next = max(self.next, offset + 1)

    def finish(self, offset: int) -> int | None:
        """Forget ``offset``; return the offset to store if it moved."""
        self.open.discard(offset)
        safe = min(self.open) if self.open else self.next
        if safe > self.stored:
            self.stored = safe
            return safe
        return None


class Controller:
    """Serves ``atf.v1.Controller/NextWork`` for ``lambda_names`` on ``address``."""

    name = "controller"

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        lambda_names: list[str] | tuple[str, ...],
        hsc_address: str,
        *,
        controller_id: str | None = None,
        address: str = "127.0.0.1:0",
        buffer_per_priority: int | None = None,
        max_workers: int = 64,
        security: ServerSecurity = OPEN,
    ) -> None:
        """``security``: how NextWork is served (TLS, access control); the
        Controller calls the HSC with ``settings``' token and TLS roots.
        ``buffer_per_priority``: default ``settings.controller_buffer``."""
        if buffer_per_priority is None:
            buffer_per_priority = settings.controller_buffer
        if not lambda_names:
            raise ValueError("a controller needs at least one lambda to serve")
        if buffer_per_priority < 1:
            raise ValueError(f"buffer_per_priority must be at least 1, got {buffer_per_priority}")
        self.settings = settings
        self.bootstrap = bootstrap
        self.lambda_names = tuple(dict.fromkeys(lambda_names))
        self.hsc_address = hsc_address
        self.controller_id = controller_id or f"{socket.gethostname()}-{os.getpid()}"
        self.address = address
        self.buffer_per_priority = buffer_per_priority
        self.priority_policy = settings.priority_policy
        self.priority_aging_ms = settings.priority_aging_ms
        self.topics = Topics(settings.topic_prefix)
        self.stats = ControllerStats()
        self.policies: dict[str, LambdaPolicy] = {}
        self.ready = threading.Event()
        """Set once the consumer group gave this controller its first partitions."""
        self.port: int | None = None
        self.failed = False
        """Set if the poll thread crashed: the buffers get no new work."""
        self._max_workers = max_workers
        self._security = security
        self._lock = threading.Condition()
        self._buffers: dict[_Key, deque[_Buffered]] = {}
        self._selector = PrioritySelector((), self.priority_policy, self.priority_aging_ms)
        self._key_of_topic: dict[str, _Key] = {}
        self._finished: queue.SimpleQueue[_Buffered] = queue.SimpleQueue()
        # Owned by the poll thread only.
        self._offsets: dict[tuple[str, int], _PartitionOffsets] = {}
        self._assigned: dict[str, set[int]] = {}
        self._paused: set[_Key] = set()
        self._generation = 0
        self._consumer: Consumer | None = None
        self._server: GrpcServer | None = None
        self._channel: grpc.Channel | None = None
        self._hsc: worker_pb2_grpc.HeartbeatStatusStub | None = None
        self._one_by_one_until = 0.0
        """``time.monotonic()`` until which claims go one ``ClaimTask`` each: the
        HSC answered ``ClaimTasks`` with UNIMPLEMENTED (it is older)."""
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._unregister: Callable[[], None] | None = None
        self._items = metrics.Children(metrics.CONTROLLER_ITEMS)

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Read the policies, join the group and start serving. Raises if a lambda is unknown."""
        if self._thread is not None:
            return
        self.policies = self._read_policies()
        for lambda_name, policy in self.policies.items():
            for priority in range(policy.priorities):
                key = (lambda_name, priority)
                self._buffers[key] = deque()
                self._key_of_topic[self.topics.exec(lambda_name, priority)] = key
        self._selector = PrioritySelector(
            self._buffers, self.priority_policy, self.priority_aging_ms
        )
        self._check_aging()
        self._channel = service_channel(self.hsc_address, Credentials.from_settings(self.settings))
        self._hsc = worker_pb2_grpc.HeartbeatStatusStub(self._channel)
        self._consumer = kafka_clients.consumer(
            self.bootstrap,
            f"{self.settings.topic_prefix}.controller",
            self.settings.kafka_config,
            overrides={
                "enable.auto.offset.store": False,
                "enable.auto.commit": True,
                "auto.commit.interval.ms": 1_000,
                "session.timeout.ms": self.settings.session_timeout_ms,
                "heartbeat.interval.ms": max(100, self.settings.session_timeout_ms // 10),
                "client.id": f"controller-{self.controller_id}",
            },
        )
        self._consumer.subscribe(
            sorted(self._key_of_topic),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        service = _ControllerService(self)
        self._server = GrpcServer(
            "controller",
            self.address,
            [lambda server: worker_pb2_grpc.add_ControllerServicer_to_server(service, server)],
            [worker_pb2.DESCRIPTOR.services_by_name["Controller"].full_name],
            max_workers=self._max_workers,
            security=self._security,
        )
        self._server.start()
        self.port = self._server.port
        self._unregister = metrics.add_source(self._gauges)
        self._thread = threading.Thread(target=self._run, name="controller-poll", daemon=True)
        self._thread.start()
        log.info(
            "controller %s serving %s on port %s",
            self.controller_id,
            ", ".join(self.lambda_names),
            self.port,
        )

    def stop(self, grace: float = 2.0) -> None:
        """Stop serving and consuming; stored offsets are committed. Safe unstarted and twice."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._server is not None:
            self._server.stop(grace)
            self._server = None
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(30)
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._unregister is not None:
            self._unregister()
            self._unregister = None

    def _gauges(self) -> metrics.StateSnapshot:
        """Buffers, their free room and pause state (scrape thread, under the lock)."""
        with self._lock:
            sizes = {key: len(buffer) for key, buffer in self._buffers.items()}
            idle = self.stats.waiting
        paused = set(self._paused)  # a copy: the poll thread owns the set
        labels = {key: (key[0], str(key[1])) for key in sizes}
        return {
            "atf_controller_buffered": {labels[k]: n for k, n in sizes.items()},
            "atf_controller_buffer_credit": {
                labels[k]: max(0, self.buffer_per_priority - n) for k, n in sizes.items()
            },
            "atf_controller_paused": {labels[k]: float(k in paused) for k in sizes},
            "atf_controller_idle_calls": {(): idle},
        }

    def buffered(self) -> dict[_Key, int]:
        """How many items wait in each (lambda, priority) buffer."""
        with self._lock:
            return {key: len(buffer) for key, buffer in self._buffers.items()}

    def _check_aging(self) -> None:
        if self.priority_policy != "aging":
            return
        for name, policy in sorted(self.policies.items()):
            if policy.priorities > 1 and policy.enqueue_timeout_ms <= self.priority_aging_ms:
                log.warning(
                    "lambda %r: its enqueue_timeout_ms (%d) is not above priority_aging_ms "
                    "(%d): a starved item is enqueued again before it ages, and aging cannot "
                    "help it; lower priority_aging_ms",
                    name,
                    policy.enqueue_timeout_ms,
                    self.priority_aging_ms,
                )

    def _read_policies(self) -> dict[str, LambdaPolicy]:
        control = ControlView(self.settings, self.bootstrap)
        try:
            control.catch_up()
            policies = {name: control.get(name) for name in self.lambda_names}
        finally:
            control.close()
        missing = sorted(name for name, policy in policies.items() if policy is None)
        if missing:
            raise ValueError(
                f"lambda(s) {', '.join(map(repr, missing))} are not defined on "
                f"{self.topics.control}; define them first (App.define)"
            )
        return {name: policy for name, policy in policies.items() if policy is not None}

    # -- the poll thread -------------------------------------------------

    def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            while not self._stop.is_set():
                messages = kafka_clients.consume(consumer, 500, POLL_TIMEOUT_S)
                self._accept(consumer, messages)
                self._store_finished(consumer)
                self._flow_control(consumer)
        except Exception:
            log.exception("controller %s: the poll loop crashed", self.controller_id)
            self.failed = True
            raise
        finally:
            self._store_finished(consumer)
            try:
                consumer.close()  # commits the stored offsets
            except (KafkaException, RuntimeError) as exc:
                log.warning("closing the exec consumer: %s", exc)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._generation += 1
        for tp in partitions:
            self._assigned.setdefault(tp.topic, set()).add(tp.partition)
            self._offsets[(tp.topic, tp.partition)] = _PartitionOffsets()
        # A buffer that was full before this rebalance must not read more.
        self._paused.clear()
        self.ready.set()
        log.info(
            "controller %s assigned %s",
            self.controller_id,
            sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions),
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The next owner reads these partitions from the committed offsets, so
        # their buffered items are dropped here rather than handed out twice.
        self._store_finished(consumer)
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._generation += 1
        for topic, partition in gone:
            self._assigned.get(topic, set()).discard(partition)
            self._offsets.pop((topic, partition), None)
        with self._lock:
            for buffer in self._buffers.values():
                kept = [b for b in buffer if (b.topic, b.partition) not in gone]
                buffer.clear()
                buffer.extend(kept)
        self._paused.clear()
        log.info("controller %s lost %d partitions", self.controller_id, len(partitions))

    def _accept(self, consumer: Consumer, messages: list[Message]) -> None:
        rewound: set[tuple[str, int]] = set()
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("exec topics: %s", error)
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            assert topic is not None and partition is not None and offset is not None
            if (topic, partition) in rewound:
                continue
            key = self._key_of_topic.get(topic)
            offsets = self._offsets.get((topic, partition))
            if key is None or offsets is None:
                continue
            value = message.value()
            try:
                item = decode_work(value if value is not None else b"")
            except DecodeError as exc:
                self.stats.bad_records += 1
                metrics.CONTROLLER_BAD_RECORDS.inc()
                log.warning(
                    "%s[%d]@%d: skipping an unreadable work item: %s", topic, partition, offset, exc
                )
                offsets.skipped(offset)
                self._store(consumer, topic, partition, offsets.finish(-1))
                continue
            if (item.lambda_name, item.priority) != key:
                # The processor writes each item to its own lambda's topic at its
                # own priority; anything else is foreign and must not be run here.
                self.stats.bad_records += 1
                metrics.CONTROLLER_BAD_RECORDS.inc()
                log.warning(
                    "%s[%d]@%d: skipping a work item of lambda %.100r priority %d",
                    topic,
                    partition,
                    offset,
                    item.lambda_name,
                    item.priority,
                )
                offsets.skipped(offset)
                self._store(consumer, topic, partition, offsets.finish(-1))
                continue
            with self._lock:
                buffer = self._buffers[key]
                full = len(buffer) >= self.buffer_per_priority
                if not full:
                    offsets.read(offset)
                    buffer.append(
                        _Buffered(
                            item, topic, partition, offset, self._generation, time.monotonic()
                        )
                    )
                    self.stats.received += 1
                    # Every waiter: each NextWork waits for its own lambdas, and
                    # notify() could wake one that cannot take this item.
                    self._lock.notify_all()
            if full:
                # Paused too late for this one: read it again after the resume.
                self._pause(consumer, key)
                consumer.seek(TopicPartition(topic, partition, offset))
                rewound.add((topic, partition))

    def _store_finished(self, consumer: Consumer) -> None:
        while True:
            try:
                done = self._finished.get_nowait()
            except queue.Empty:
                return
            if done.generation != self._generation:
                continue  # read before a rebalance: the partition's owner decides now
            offsets = self._offsets.get((done.topic, done.partition))
            if offsets is not None:
                self._store(consumer, done.topic, done.partition, offsets.finish(done.offset))

    def _store(self, consumer: Consumer, topic: str, partition: int, offset: int | None) -> None:
        if offset is None:
            return
        try:
            consumer.store_offsets(offsets=[TopicPartition(topic, partition, offset)])
        except KafkaException as exc:
            log.warning("storing offset %s[%d]@%d: %s", topic, partition, offset, exc)

    def _flow_control(self, consumer: Consumer) -> None:
        with self._lock:
            sizes = {key: len(buffer) for key, buffer in self._buffers.items()}
        for key, size in sizes.items():
            if key not in self._paused and size >= self.buffer_per_priority:
                self._pause(consumer, key)
            elif key in self._paused and size <= self.buffer_per_priority // 2:
                self._paused.discard(key)
                consumer.resume(self._partitions_of(key))

    def _pause(self, consumer: Consumer, key: _Key) -> None:
        if key in self._paused:
            return
        self._paused.add(key)
        self.stats.pauses += 1
        consumer.pause(self._partitions_of(key))

    def _partitions_of(self, key: _Key) -> list[TopicPartition]:
        topic = self.topics.exec(*key)
        return [TopicPartition(topic, p) for p in sorted(self._assigned.get(topic, ()))]

    # -- serving NextWork ------------------------------------------------

    def _take(self, lambdas: frozenset[str], deadline: float) -> _Buffered | None:
        """The next item by the priority policy, waiting until ``deadline``."""
        with self._lock:
            while not self._stop.is_set():
                found = self._pop(lambdas)
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.stats.waiting += 1
                try:
                    self._lock.wait(remaining)
                finally:
                    self.stats.waiting -= 1
            return None

    def _pop(self, lambdas: frozenset[str]) -> _Buffered | None:
        picked = self._selector.pick(self._buffers, lambdas, time.monotonic())
        if picked is None:
            return None
        key, aged = picked
        if aged:
            self.stats.aged += 1
        return self._buffers[key].popleft()

    def _put_back(self, entry: _Buffered) -> None:
        if entry.generation != self._generation:
            return  # its partition moved on a rebalance; the new owner reads it again
        with self._lock:
            self._buffers[self._key_of_topic[entry.topic]].appendleft(entry)
            self._lock.notify_all()

    def _finish(self, entry: _Buffered) -> None:
        self._finished.put(entry)

    def _claim(
        self,
        entries: list[_Buffered],
        worker: str,
        start: bool,
        context: grpc.ServicerContext,
    ) -> list[bool | None]:
        """Claim ``entries`` for ``worker`` in one ``ClaimTasks`` call, ``start``-ed
        if asked: per entry True claimed, False refused (or broken), None not
        known after every attempt (the HSC or the processor is unreachable)."""
        hsc = self._hsc
        assert hsc is not None
        outcome: list[bool | None] = [None] * len(entries)
        pending = list(range(len(entries)))
        for attempt in range(CLAIM_ATTEMPTS):
            remaining = context.time_remaining()
            timeout = CLAIM_DEADLINE_S if remaining is None else min(CLAIM_DEADLINE_S, remaining)
            if timeout <= 0 or self._stop.is_set():
                break
            request = worker_pb2.ClaimTasksRequest(
                claims=[
                    worker_pb2.ClaimTaskRequest(
                        task_id=entries[i].item.task_id,
                        lease=entries[i].item.lease,
                        worker=worker,
                        start=start,
                    )
                    for i in pending
                ]
            )
            failure = ""
            replies: Sequence[common_pb2.CommandReply] | None = None
            try:
                replies = self._claim_tasks(hsc, request, timeout)
            except grpc.RpcError as error:
                code = error.code()
                if (code in REFUSAL_CODES or code in _BROKEN) and len(pending) > 1:
                    # The HSC refused the batch as a whole: one claim in it is one
                    # it cannot take (a garbage item's empty task id or bad lease).
                    # Asked claim by claim, only that one is discarded.
                    log.debug(
                        "ClaimTasks refused %d claims as a whole (%s %s): claiming one by one",
                        len(pending),
                        code.name,
                        error.details(),
                    )
                    replies = _one_by_one(hsc, request, timeout)
                elif code in REFUSAL_CODES or code in _BROKEN:
                    # The call itself was refused: asking again fails the same way.
                    for i in pending:
                        outcome[i] = False
                        self._refused(entries[i], worker, code.name, error.details(), code)
                    return outcome
                else:
                    failure = f"{code.name} {error.details()}"
                    still = pending
            if replies is not None:
                if len(replies) != len(pending):
                    # An HSC bug: which claim went through is not known. Discarded
                    # loudly, like a broken call; their claim timeouts enqueue them.
                    for i in pending:
                        outcome[i] = False
                        self._refused(
                            entries[i],
                            worker,
                            "MISMATCH",
                            f"{len(replies)} replies to {len(pending)} claims",
                            grpc.StatusCode.INTERNAL,
                        )
                    return outcome
                still = []
                for i, reply in zip(pending, replies, strict=True):
                    if reply.code == common_pb2.REPLY_CODE_OK:
                        outcome[i] = True
                    elif reply.code == common_pb2.REPLY_CODE_UNSPECIFIED:
                        still.append(i)
                        failure = reply.message
                    else:
                        outcome[i] = False
                        reason = common_pb2.ReplyCode.Name(reply.code).removeprefix("REPLY_CODE_")
                        self._refused(entries[i], worker, reason, reply.message)
            if not still:
                return outcome
            pending = still
            with self._lock:
                self.stats.claim_errors += len(pending)
            metrics.CONTROLLER_CLAIM_ERRORS.inc(len(pending))
            log.warning(
                "claiming %d tasks, first %.200s lease %d (try %d of %d): %s",
                len(pending),
                entries[pending[0]].item.task_id,
                entries[pending[0]].item.lease,
                attempt + 1,
                CLAIM_ATTEMPTS,
                failure,
            )
            # A retry by the same worker is accepted even if the first claim
            # went through and only its reply was lost.
            if self._stop.wait(CLAIM_RETRY_DELAY_S * 2**attempt):
                break
        return outcome

    def _claim_tasks(
        self,
        hsc: worker_pb2_grpc.HeartbeatStatusStub,
        request: worker_pb2.ClaimTasksRequest,
        timeout: float,
    ) -> Sequence[common_pb2.CommandReply]:
        """``ClaimTasks``, or one ``ClaimTask`` per claim through an older HSC."""
        if time.monotonic() >= self._one_by_one_until:
            try:
                return hsc.ClaimTasks(request, timeout=timeout).replies  # type: ignore[no-any-return]
            except grpc.RpcError as error:
                if error.code() is not grpc.StatusCode.UNIMPLEMENTED:
                    raise
            log.warning(
                "the HSC at %s does not serve ClaimTasks (it is older than this Controller): "
                "claiming one task per call for the next %d s; upgrade the HSCs",
                self.hsc_address,
                ONE_BY_ONE_S,
            )
            self._one_by_one_until = time.monotonic() + ONE_BY_ONE_S
        return _one_by_one(hsc, request, timeout)

    def _refused(
        self,
        entry: _Buffered,
        worker: str,
        reason: str,
        details: str | None,
        code: grpc.StatusCode | None = None,
    ) -> None:
        log.log(
            logging.WARNING if code in _BROKEN else logging.DEBUG,
            "claim refused: discarding %.200s lease %d: %s (%s)",
            entry.item.task_id,
            entry.item.lease,
            reason,
            details,
            extra={
                "task_id": entry.item.task_id[:200],
                "lambda": entry.item.lambda_name,
                "lease": entry.item.lease,
                "worker": worker,
            },
        )

    def next_work(
        self, request: worker_pb2.NextWorkRequest, context: grpc.ServicerContext
    ) -> worker_pb2.NextWorkResponse:
        if not request.worker:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "worker is required")
        if len(request.worker) > MAX_WORKER_CHARS:
            # Checked here, not only by the HSC: a claim it refuses would
            # discard a good item on behalf of a bad caller.
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"worker must be at most {MAX_WORKER_CHARS} characters, got {len(request.worker)}",
            )
        if request.max_tasks < 0 or request.wait_ms < 0:
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "max_tasks and wait_ms must not be negative",
            )
        unknown = sorted(set(request.lambda_names) - set(self.lambda_names))
        if unknown:
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"this controller does not serve {', '.join(map(repr, unknown))}; "
                f"it serves {', '.join(map(repr, self.lambda_names))}",
            )
        lambdas = frozenset(request.lambda_names or self.lambda_names)
        max_tasks = min(max(request.max_tasks, 1), MAX_TASKS_PER_CALL)
        wait = min(request.wait_ms, MAX_WAIT_MS) / 1000
        remaining = context.time_remaining()
        if remaining is not None:
            wait = min(wait, max(0.0, remaining - 0.1))
        deadline = time.monotonic() + wait
        taken: list[_Buffered] = []
        while len(taken) < max_tasks:
            # Wait only for the first item; then take what is already there.
            entry = self._take(lambdas, deadline if not taken else 0.0)
            if entry is None:
                break
            taken.append(entry)
        if taken and not context.is_active():
            # The worker went away while this poll waited (a killed executor's
            # idle thread): claiming for it would hold the tasks until their
            # claim timeout. Leave them for a live poll.
            for entry in reversed(taken):
                self._put_back(entry)
            taken = []
        items: list[common_pb2.WorkItem] = []
        claimed_at = now_ms()
        outcomes = self._claim(taken, request.worker, request.start, context) if taken else []
        unknown = [entry for entry, claimed in zip(taken, outcomes, strict=True) if claimed is None]
        for entry in reversed(unknown):  # at the head of their buffers, in order
            self._put_back(entry)
        for entry, claimed in zip(taken, outcomes, strict=True):
            if claimed is None:
                continue
            self._finish(entry)
            with self._lock:
                if claimed:
                    self.stats.claimed += 1
                else:
                    self.stats.discarded += 1
            self._items(entry.item.lambda_name, "claimed" if claimed else "discarded").inc()
            if claimed:
                items.append(_to_proto(entry.item))
        if items and not context.is_active():
            log.warning(
                "worker %s left before receiving %d claimed tasks; their claim (or "
                "heartbeat) timeout will enqueue them again",
                request.worker,
                len(items),
            )
        if not (request.start and items):
            return worker_pb2.NextWorkResponse(items=items)
        return worker_pb2.NextWorkResponse(items=items, started=True, claimed_at_ms=claimed_at)


def _one_by_one(
    hsc: worker_pb2_grpc.HeartbeatStatusStub, request: worker_pb2.ClaimTasksRequest, timeout: float
) -> list[common_pb2.CommandReply]:
    """The replies ``ClaimTasks`` would give, from one ``ClaimTask`` per claim."""
    deadline = time.monotonic() + timeout
    replies: list[common_pb2.CommandReply] = []
    for claim in request.claims:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            message = "no time left to claim it"
            replies.append(common_pb2.CommandReply(task_id=claim.task_id, message=message))
            continue
        try:
            replies.append(hsc.ClaimTask(claim, timeout=remaining).reply)
        except grpc.RpcError as error:
            code = error.code()
            if code in REFUSAL_CODES or code in _BROKEN:
                name = dict(error.trailing_metadata() or ()).get(REPLY_CODE_KEY, "INVALID")
                reply_code = common_pb2.ReplyCode.Value(f"REPLY_CODE_{name}")
            else:
                reply_code = common_pb2.REPLY_CODE_UNSPECIFIED
            replies.append(
                common_pb2.CommandReply(
                    task_id=claim.task_id,
                    code=reply_code,
                    message=f"{code.name} {error.details()}",
                )
            )
    return replies


def _to_proto(item: WorkItem) -> common_pb2.WorkItem:
    return common_pb2.WorkItem(
        task_id=item.task_id,
        lease=item.lease,
        lambda_name=item.lambda_name,
        collection=item.collection,
        priority=item.priority,
        payload=item.payload,
        scheduled_at_ms=item.scheduled_at,
        enqueued_at_ms=item.enqueued_at,
        attempt=item.attempt,
    )


class _ControllerService(worker_pb2_grpc.ControllerServicer):  # type: ignore[misc]
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def NextWork(
        self, request: worker_pb2.NextWorkRequest, context: grpc.ServicerContext
    ) -> worker_pb2.NextWorkResponse:
        return self.controller.next_work(request, context)
