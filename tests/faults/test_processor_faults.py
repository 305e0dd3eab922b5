"""Partition processors as real processes, under the faults that break single writers.

Each test runs ``atf-es processor`` subprocesses against the test broker and
does to them what production does: a second instance joins, one is stopped
(SIGTERM), killed (SIGKILL), frozen past its session timeout (SIGSTOP) and
thawed, or loses its RocksDB directory. Then it reads the event log, the
execution topics, the group's committed offsets and the projections on disk,
and checks the design's invariants: one writer per partition, a
gap-free and conflict-free history per task, nothing lost, the projection
equal to the log.

The embedded broker shows records of aborted transactions to read_committed
readers, so nothing here assumes aborted records are invisible; a batch that
was aborted and then produced again differently shows up as two different
events at one seq, which is reported as such.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
from confluent_kafka import TopicPartition

from atf_es import kafka_clients
from atf_es.clock import now_ms
from atf_es.config import Settings
from atf_es.events import (
    ClaimTask,
    Event,
    LambdaPolicy,
    Outcome,
    ScheduleTask,
    SetResult,
    Task,
    TaskEnqueued,
    TaskScheduled,
    TaskStatus,
    TaskSucceeded,
)
from atf_es.events.chains import ChainLink, NodeSpec, OnFailure, build_chain
from atf_es.events.codec import decode_event
from atf_es.events.periodic import PeriodicSchedule, occurrence_task_id, schedule_partition
from atf_es.events.placement import partition_of
from atf_es.projections.store import RocksTaskStore
from atf_es.services.control import publish_periodic
from atf_es.topics import Topics
from tests.helpers import wait_for
from tests.kafka_harness import (
    CommandSender,
    EventLog,
    TopicReader,
    decode_work_records,
    prepare,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4
ALL = frozenset(range(PARTITIONS))
SESSION_TIMEOUT_MS = 6000
# A join on the embedded broker takes about half the session timeout, a
# rebalance after a member vanished about a whole one; these leave room for both.
JOIN_TIMEOUT = 30.0
SETTLE_TIMEOUT = 60.0
_FENCED_LINE = ": fenced ("  # Processor._failed: "partition N: fenced (<error>); releasing it"
_OWNS = re.compile(r"processor (\S+): owns partitions \[([0-9, ]*)\]")


# -- processes ---------------------------------------------------------------


def waiting(
    predicate: Callable[[], object],
    timeout: float,
    describe: Callable[[], str],
    interval: float = 0.05,
) -> None:
    """``wait_for`` whose failure message is built when it fails, with fresh output."""
    try:
        wait_for(predicate, timeout, "condition", interval=interval)
    except AssertionError:
        raise AssertionError(f"timed out after {timeout:g}s waiting for {describe()}") from None


class ProcessorProcess:
    """One ``atf-es processor`` subprocess, its output captured line by line."""

    def __init__(self, settings: Settings, instance_id: str) -> None:
        self.settings = settings
        self.instance_id = instance_id
        self.process: subprocess.Popen[str] | None = None
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.ownership: list[tuple[float, frozenset[int]]] = []
        """Every ``owns partitions`` report, with the monotonic time it was read."""
        self._lock = threading.Lock()
        self._readers: list[threading.Thread] = []
        self.paused = False

    @property
    def data_dir(self) -> Path:
        return Path(self.settings.data_dir) / "processor" / self.instance_id

    def start(self) -> ProcessorProcess:
        assert self.process is None or self.process.poll() is not None, "already running"
        assert self.settings.kafka_bootstrap is not None
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("ATF_") or k.startswith("ATF_KAFKA__")
        }
        env["ATF_SESSION_TIMEOUT_MS"] = str(SESSION_TIMEOUT_MS)
        env["PYTHONUNBUFFERED"] = "1"
        # Nobody claims in these tests, so flow control (at most max_enqueued
        # enqueued-but-unclaimed tasks per queue) would hold every task past it.
        env["ATF_MAX_ENQUEUED"] = "1000000"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "atf_es",
                "-v",
                "processor",
                "--instance-id",
                self.instance_id,
                "--bootstrap",
                self.settings.kafka_bootstrap,
                "--topic-prefix",
                self.settings.topic_prefix,
                "--partitions",
                str(self.settings.partitions),
                "--data-dir",
                str(self.settings.data_dir),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(stream, into), daemon=True)
            for stream, into in (
                (self.process.stdout, self.stdout),
                (self.process.stderr, self.stderr),
            )
        ]
        for reader in self._readers:
            reader.start()
        return self

    def _read(self, stream: IO[str], into: list[str]) -> None:
        for raw in stream:
            line = raw.rstrip("\n")
            with self._lock:
                into.append(line)
                if into is self.stdout and (match := _OWNS.search(line)):
                    numbers = match.group(2).replace(" ", "").split(",")
                    owned = frozenset(int(n) for n in numbers if n)
                    self.ownership.append((time.monotonic(), owned))
        stream.close()

    # -- observing -------------------------------------------------------

    @property
    def owned(self) -> frozenset[int] | None:
        """The partitions it last reported owning (None before its first report)."""
        with self._lock:
            return self.ownership[-1][1] if self.ownership else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_owns(self, wanted: frozenset[int], timeout: float = JOIN_TIMEOUT) -> None:
        waiting(
            lambda: self.owned == wanted,
            timeout,
            lambda: (
                f"{self.instance_id} to own {sorted(wanted)} (owns {self._owned_text()})\n"
                + self.tail()
            ),
        )

    def _owned_text(self) -> str:
        owned = self.owned
        return "nothing reported" if owned is None else str(sorted(owned))

    def output(self) -> str:
        with self._lock:
            return "\n".join([*self.stdout, *self.stderr])

    def tail(self, lines: int = 25) -> str:
        with self._lock:
            out, err = self.stdout[-lines:], self.stderr[-lines:]
        return (
            f"--- {self.instance_id} stdout (last {lines}) ---\n"
            + "\n".join(out)
            + f"\n--- {self.instance_id} stderr (last {lines}) ---\n"
            + "\n".join(err)
        )

    # -- signals ---------------------------------------------------------

    def _signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: no callbacks, no flush, no leaving the group."""
        if self.running:
            self._signal(signal.SIGKILL)
        self._reap(10)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.paused = False

    def terminate(self, timeout: float = 45.0) -> int:
        """SIGTERM and wait for a clean exit; returns the exit status."""
        assert self.process is not None
        if self.paused:
            self.resume()
        if self.running:
            self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.instance_id} did not stop within {timeout:g}s of SIGTERM\n{self.tail()}"
            ) from None
        self._reap(10)
        return self.process.returncode

    def _reap(self, timeout: float) -> None:
        if self.process is not None:
            self.process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)

    def close(self) -> None:
        """Whatever state it is in, make sure the process is gone."""
        if self.process is None:
            return
        if self.running:
            if self.paused:
                self.resume()
            self._signal(signal.SIGKILL)
        self._reap(10)


@pytest.fixture
def fault_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, partitions=PARTITIONS)


@pytest.fixture
def processors(fault_settings: Settings) -> Iterator[Callable[[str], ProcessorProcess]]:
    """Start processor processes; every one is killed at the end, whatever happened."""
    started: list[ProcessorProcess] = []

    def start(instance_id: str) -> ProcessorProcess:
        proc = ProcessorProcess(fault_settings, instance_id).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


def _policy() -> LambdaPolicy:
    # enqueue_timeout stays at its default (10 min): nobody claims in these
    # tests, and a re-enqueue would make the expected histories harder to state.
    return LambdaPolicy(name=f"fault_{uuid.uuid4().hex[:8]}", priorities=1)


# -- reading the outcome -----------------------------------------------------


def _wait_all_enqueued(
    log: EventLog, scheduled: set[str], timeout: float, *procs: ProcessorProcess
) -> dict[str, Task]:
    def done() -> bool:
        latest = log.latest()
        return all(
            (t := latest.get(task_id)) is not None and t.status is TaskStatus.ENQUEUED
            for task_id in scheduled
        )

    try:
        log.wait_until(lambda _: done(), timeout, "every scheduled task to be enqueued")
    except AssertionError:
        latest = log.latest()
        missing = sorted(t for t in scheduled if t not in latest)
        stuck = sorted(
            f"{t}={latest[t].status}"
            for t in scheduled
            if t in latest and latest[t].status is not TaskStatus.ENQUEUED
        )
        raise AssertionError(
            f"not every task was enqueued within {timeout:g}s: {len(missing)} never seen "
            f"in the log {missing[:10]}, {len(stuck)} in another state {stuck[:10]}; "
            f"commands partitions of the missing: {_command_partitions(log.settings, missing)}\n"
            + "\n".join(p.tail() for p in procs)
        ) from None
    return log.latest()


def _command_partitions(settings: Settings, task_ids: list[str]) -> dict[int, int]:
    """How many of ``task_ids`` were sent to each commands partition."""
    wanted = {t.encode() for t in task_ids}
    reader = TopicReader(settings, Topics(settings.topic_prefix).commands)
    try:
        while reader.poll(1.0):
            pass
        return dict(Counter(p for p, _, key, _ in reader.records if key in wanted))
    finally:
        reader.close()


def _history_problems(log: EventLog, scheduled: set[str]) -> list[str]:
    """Everything wrong with the per-task histories, one line per task and problem."""
    problems: list[str] = []
    history = log.history()
    for task_id in sorted(scheduled - history.keys()):
        problems.append(f"{task_id}: scheduled but has no event in the log")
    for task_id in sorted(history.keys() - scheduled):
        problems.append(f"{task_id}: has events but was never scheduled by this test")
    for task_id, entries in sorted(history.items()):
        by_seq: dict[int, Event] = {}
        for event, snapshot in entries:
            if snapshot.seq != event.seq:
                problems.append(f"{task_id}: snapshot seq {snapshot.seq} != event seq {event.seq}")
            seen = by_seq.get(event.seq)
            if seen is not None and seen != event:
                problems.append(
                    f"{task_id}: two different events at seq {event.seq}:\n"
                    f"      {seen}\n      {event}"
                )
            by_seq.setdefault(event.seq, event)
        seqs = sorted(by_seq)
        if seqs != list(range(1, len(seqs) + 1)):
            problems.append(f"{task_id}: seqs are not 1..n without gaps: {seqs}")
        events = [by_seq[s] for s in seqs]
        kinds = Counter(type(e).__name__ for e in events)
        if kinds["TaskScheduled"] != 1 or not isinstance(events[0], TaskScheduled):
            problems.append(f"{task_id}: expected one TaskScheduled first, got {kinds}")
        leases = [e.lease for e in events if isinstance(e, TaskEnqueued)]
        if any(b <= a for a, b in itertools.pairwise(leases)):
            problems.append(f"{task_id}: lease tokens do not strictly increase: {leases}")
        raw = Counter(e.seq for e, _ in entries)
        repeats = {s: n for s, n in raw.items() if n > 1}
        if repeats:
            problems.append(f"{task_id}: records written more than once per seq: {repeats}")
    return problems


def _assert_no_problems(problems: list[str], what: str) -> None:
    if problems:
        shown = "\n  ".join(problems[:40])
        more = f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""
        raise AssertionError(f"{len(problems)} problem(s) with {what}:\n  {shown}{more}")


def _enqueued_once_with_lease_1(latest: dict[str, Task], log: EventLog) -> list[str]:
    problems = []
    for task_id, entries in log.history().items():
        enqueues = {e for e, _ in entries if isinstance(e, TaskEnqueued)}
        if len(enqueues) != 1 or next(iter(enqueues)).lease != 1:
            problems.append(f"{task_id}: expected one TaskEnqueued with lease 1, got {enqueues}")
        if latest[task_id].lease != 1:
            problems.append(f"{task_id}: latest snapshot has lease {latest[task_id].lease}")
    return problems


def _work_problems(settings: Settings, policy: LambdaPolicy, log: EventLog) -> list[str]:
    """Every work item matches a TaskEnqueued (task and lease) and vice versa."""
    reader = TopicReader(settings, Topics(settings.topic_prefix).exec(policy.name, 0))
    try:
        enqueued = {
            (e.task_id, e.lease)
            for entries in log.history().values()
            for e, _ in entries
            if isinstance(e, TaskEnqueued)
        }

        def complete() -> bool:
            reader.poll(0.2)
            return {(w.task_id, w.lease) for w in decode_work_records(reader)} >= enqueued

        with contextlib.suppress(AssertionError):  # reported below, with the difference
            wait_for(complete, 20, "a work item for every TaskEnqueued")
        items = Counter((w.task_id, w.lease) for w in decode_work_records(reader))
    finally:
        reader.close()
    problems = [
        f"work item {key} has no TaskEnqueued with that task and lease"
        for key in sorted(items.keys() - enqueued)
    ]
    problems += [f"TaskEnqueued {key} has no work item" for key in sorted(enqueued - items.keys())]
    problems += [f"work item {key} was published {n} times" for key, n in items.items() if n > 1]
    return problems


def _event_partitions(log: EventLog) -> dict[str, set[int]]:
    where: dict[str, set[int]] = {}
    for partition, _, _, value in log.records:
        assert value is not None
        _, task = decode_event(value)
        where.setdefault(task.task_id, set()).add(partition)
    return where


def _store_problems(proc: ProcessorProcess, log: EventLog) -> list[str]:
    """Open each partition's projection on disk and compare it with the log's latest."""
    latest = log.latest()
    where = _event_partitions(log)
    problems = [f"{t}: events on several partitions {p}" for t, p in where.items() if len(p) > 1]
    for partition in range(PARTITIONS):
        expected = {t: latest[t] for t, ps in where.items() if partition in ps}
        path = proc.data_dir / f"p{partition}"
        if not path.exists():
            if expected:
                problems.append(f"p{partition}: no store at {path}, but {len(expected)} tasks")
            continue
        with RocksTaskStore.open(path) as store:
            stored = {t.task_id: t for t in store.tasks()}
        for task_id in sorted(expected.keys() - stored.keys()):
            problems.append(f"p{partition}: {task_id} is in the log but not in the store")
        for task_id in sorted(stored.keys() - expected.keys()):
            problems.append(f"p{partition}: {task_id} is in the store but not in the log")
        for task_id in sorted(expected.keys() & stored.keys()):
            if stored[task_id] != expected[task_id]:
                problems.append(
                    f"p{partition}: {task_id} differs:\n      store {stored[task_id]}\n"
                    f"      log   {expected[task_id]}"
                )
    return problems


def _fold_problems(log: EventLog) -> list[str]:
    problems = []
    latest = log.latest()
    try:
        folded = log.folded()
    except AssertionError as exc:
        return [f"folding the log failed: {exc}"]
    for task_id, task in sorted(folded.items()):
        if task != latest[task_id]:
            problems.append(f"{task_id}: fold {task}\n      != latest snapshot {latest[task_id]}")
    return problems


def _end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """Where each partition of a non-transactional topic ends, found by reading it.

    Not ``get_watermark_offsets``: the embedded broker (Tansu 0.6.0) answers
    ListOffsets(latest) with the base offset of the last record batch plus one,
    which is short of the end whenever that batch holds more than one record.
    """
    assert settings.kafka_bootstrap is not None
    reader = kafka_clients.consumer(
        settings.kafka_bootstrap,
        kafka_config=settings.kafka_config,
        overrides={"enable.partition.eof": True},
    )
    ends: dict[int, int] = {}
    try:
        reader.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        deadline = time.monotonic() + 20
        while len(ends) < PARTITIONS and time.monotonic() < deadline:
            for message in kafka_clients.consume(reader, 10_000, 0.2):
                partition, offset = message.partition(), message.offset()
                assert partition is not None and offset is not None
                if message.error() is None:
                    ends.pop(partition, None)
                else:
                    ends[partition] = offset
    finally:
        reader.close()
    assert len(ends) == PARTITIONS, f"could not read {topic} to its end: {ends}"
    return ends


def _committed_offset_problems(settings: Settings) -> list[str]:
    """The commands group has committed exactly up to the end of every partition."""
    assert settings.kafka_bootstrap is not None
    topic = Topics(settings.topic_prefix).commands
    ends = _end_offsets(settings, topic)
    consumer = kafka_clients.consumer(
        settings.kafka_bootstrap, f"{settings.topic_prefix}.processor", settings.kafka_config
    )
    try:
        committed = consumer.committed(
            [TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10
        )
    finally:
        consumer.close()
    return [
        f"commands p{tp.partition}: committed {tp.offset}, end {ends[tp.partition]}"
        for tp in committed
        if tp.offset != ends[tp.partition]
    ]


class Scheduler:
    """Schedules tasks at a steady pace from a background thread until stopped."""

    def __init__(self, sender: CommandSender, lambda_name: str, max_delay_ms: int) -> None:
        self.sender = sender
        self.lambda_name = lambda_name
        self.max_delay_ms = max_delay_ms
        self.scheduled: list[str] = []
        self._stop = threading.Event()
        self._random = random.Random(7)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> Scheduler:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.05):
                task_id = self.sender.schedule(
                    self.lambda_name, delay_ms=self._random.randint(0, self.max_delay_ms)
                )
                self.scheduled.append(task_id)
                self.sender.flush()
        except BaseException as exc:
            self.error = exc

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)
        assert self.error is None, f"the scheduler thread failed: {self.error!r}"


# -- the tests ---------------------------------------------------------------


def test_two_processors_split_the_partitions_and_hand_over(
    fault_settings: Settings, processors: Callable[[str], ProcessorProcess]
) -> None:
    policy = _policy()
    prepare(fault_settings, policy)
    log = EventLog(fault_settings)
    sender = CommandSender(fault_settings)
    try:
        a = processors("a")
        a.wait_owns(ALL)
        with Scheduler(sender, policy.name, max_delay_ms=2000) as scheduler:
            log.wait_until(lambda lg: len(lg.history()) >= 10, 20, "A to record tasks")
            b = processors("b")

            def split() -> bool:
                oa, ob = a.owned, b.owned
                return bool(oa and ob and not oa & ob and oa | ob == ALL)

            waiting(split, JOIN_TIMEOUT, lambda: f"A and B to split\n{a.tail()}\n{b.tail()}")
            before = len(scheduler.scheduled)
            wait_for(lambda: len(scheduler.scheduled) >= before + 20, 20, "more tasks while split")
            assert a.terminate() == 0, a.tail()
            b.wait_owns(ALL)
            before = len(scheduler.scheduled)
            wait_for(lambda: len(scheduler.scheduled) >= before + 20, 20, "tasks after handover")
        scheduled = set(scheduler.scheduled)
        assert len(scheduled) == len(scheduler.scheduled)
        latest = _wait_all_enqueued(log, scheduled, SETTLE_TIMEOUT, b)
        _assert_no_problems(_history_problems(log, scheduled), "the task histories")
        _assert_no_problems(_enqueued_once_with_lease_1(latest, log), "the enqueues")
        _assert_no_problems(_work_problems(fault_settings, policy, log), "the work items")
        assert "owns partitions" in a.output()
    finally:
        log.close()


def test_a_frozen_processor_is_fenced_when_it_comes_back(
    fault_settings: Settings, processors: Callable[[str], ProcessorProcess]
) -> None:
    policy = _policy()
    prepare(fault_settings, policy)
    log = EventLog(fault_settings)
    sender = CommandSender(fault_settings)
    try:
        a = processors("a")
        a.wait_owns(ALL)
        with Scheduler(sender, policy.name, max_delay_ms=1000) as scheduler:
            log.wait_until(lambda lg: len(lg.history()) >= 20, 20, "A to record tasks")
            # Frozen under load, so that A is likely caught inside a transaction,
            # with fetched commands and due timers in hand.
            a.pause()
            b = processors("b")
            b.wait_owns(ALL)
            taken_over = time.monotonic()
            before = len(scheduler.scheduled)
            wait_for(lambda: len(scheduler.scheduled) >= before + 20, 20, "tasks under B")

            # A thaws believing it still owns everything. Whatever it still
            # tries to write must be fenced.
            a.resume()

            def a_gave_up() -> bool:
                if not a.running:
                    return True
                oa, ob = a.owned, b.owned
                return oa is not None and ob is not None and not oa & ob and oa | ob == ALL

            waiting(
                a_gave_up,
                SETTLE_TIMEOUT,
                lambda: f"A to exit or to own a set disjoint from B's\n{a.tail()}\n{b.tail()}",
            )
            before = len(scheduler.scheduled)
            wait_for(lambda: len(scheduler.scheduled) >= before + 20, 20, "tasks after thawing")
        scheduled = set(scheduler.scheduled)
        _wait_all_enqueued(log, scheduled, SETTLE_TIMEOUT, a, b)
        more = {sender.schedule(policy.name) for _ in range(20)}
        sender.flush()
        scheduled |= more
        latest = _wait_all_enqueued(log, scheduled, SETTLE_TIMEOUT, a, b)

        _assert_no_problems(_history_problems(log, scheduled), "the task histories")
        _assert_no_problems(_enqueued_once_with_lease_1(latest, log), "the enqueues")
        _assert_no_problems(_work_problems(fault_settings, policy, log), "the work items")
        waiting(
            lambda: not _committed_offset_problems(fault_settings),
            20,
            lambda: (
                f"committed offsets to reach the end: {_committed_offset_problems(fault_settings)}"
            ),
            interval=0.5,
        )
        # A must have noticed, in its own words, that it no longer owned everything.
        reports_after = [owned for at, owned in a.ownership if at > taken_over]
        noticed = (
            _FENCED_LINE in a.output()
            or "lost partitions" in a.output()
            or any(owned != ALL for owned in reports_after)
            or not a.running
        )
        assert noticed, f"A never showed it lost its partitions\n{a.tail()}"
        fenced = _FENCED_LINE in a.output()
        print(f"A's writes were {'fenced' if fenced else 'never tried (it noticed first)'}")
        print(f"after thawing:\n{a.tail(15)}\n{b.tail(5)}")
    finally:
        log.close()


def test_kill_9_under_load_then_restart_with_the_same_store(
    fault_settings: Settings, processors: Callable[[str], ProcessorProcess]
) -> None:
    policy = _policy()
    prepare(fault_settings, policy)
    log = EventLog(fault_settings)
    sender = CommandSender(fault_settings)
    total = 3000
    scheduled: list[str] = []
    killed = threading.Event()
    sent_at_kill: list[int] = []
    failure: list[BaseException] = []

    def send_all() -> None:
        rng = random.Random(3)
        try:
            for i in range(total):
                delay = 0 if rng.random() < 0.5 else rng.randint(1, 1500)
                scheduled.append(sender.schedule(policy.name, delay_ms=delay))
                if i % 100 == 99:
                    sender.flush()
                    # Pace the load so that the kill lands while commands still arrive.
                    killed.wait(0.05)
            sender.flush()
        except BaseException as exc:
            failure.append(exc)

    try:
        proc = processors("p")
        proc.wait_owns(ALL)
        thread = threading.Thread(target=send_all, daemon=True)
        thread.start()
        log.wait_until(lambda lg: len(lg.history()) >= 1000, 60, "1000 tasks in the log")
        proc.kill()
        sent_at_kill.append(len(scheduled))
        killed.set()
        recorded_at_kill = len(log.history())

        proc = processors("p")  # same instance id, same data dir: the store is reused
        proc.wait_owns(ALL)
        thread.join(60)
        assert not failure, f"sending failed: {failure[0]!r}"
        assert len(scheduled) == total
        print(f"kill -9 after {sent_at_kill[0]} of {total} sent, {recorded_at_kill} in the log")
        _wait_all_enqueued(log, set(scheduled), SETTLE_TIMEOUT, proc)
        assert proc.terminate() == 0, proc.tail()
        log.poll(0.5)

        _assert_no_problems(_history_problems(log, set(scheduled)), "the task histories")
        _assert_no_problems(_fold_problems(log), "folding the log")
        _assert_no_problems(_store_problems(proc, log), "the projection on disk")
    finally:
        log.close()


def test_a_deleted_projection_is_rebuilt_from_the_log(
    fault_settings: Settings, processors: Callable[[str], ProcessorProcess]
) -> None:
    policy = _policy()
    prepare(fault_settings, policy)
    log = EventLog(fault_settings)
    sender = CommandSender(fault_settings)
    try:
        proc = processors("p")
        proc.wait_owns(ALL)
        immediate = {sender.schedule(policy.name) for _ in range(100)}
        soon = {sender.schedule(policy.name, delay_ms=random.randint(0, 500)) for _ in range(50)}
        # Due only after the restart below (a clean leave and a join take a few seconds).
        later = {sender.schedule(policy.name, delay_ms=12_000) for _ in range(50)}
        sender.flush()
        _wait_all_enqueued(log, immediate | soon, 30, proc)
        log.wait_until(lambda lg: later <= lg.history().keys(), 20, "the delayed tasks recorded")
        assert proc.terminate() == 0, proc.tail()
        log.poll(0.5)
        pending = {t for t, task in log.latest().items() if task.status is TaskStatus.NEW}
        assert pending, "every delayed task fired before the restart; lengthen the delay"
        _assert_no_problems(_store_problems(proc, log), "the projection before deleting it")

        shutil.rmtree(proc.data_dir)
        proc = processors("p")
        proc.wait_owns(ALL)
        scheduled = immediate | soon | later
        _wait_all_enqueued(log, scheduled, SETTLE_TIMEOUT, proc)
        assert proc.terminate() == 0, proc.tail()
        log.poll(0.5)
        stats = [line for line in proc.stdout if ": stopped; ProcessorStats(" in line]
        assert stats and "restored_events=0," not in stats[-1], stats

        _assert_no_problems(_history_problems(log, scheduled), "the task histories")
        _assert_no_problems(_fold_problems(log), "folding the log")
        _assert_no_problems(_store_problems(proc, log), "the rebuilt projection")
    finally:
        log.close()


def test_a_periodic_schedule_fires_each_occurrence_once_while_its_owner_is_killed_twice(
    fault_settings: Settings, processors: Callable[[str], ProcessorProcess]
) -> None:
    """Every second for a minute; the processor owning the schedule's partition
    is killed with SIGKILL twice (and started again with the same store). With
    catch-up, every occurrence is one task: no gap, no duplicate."""
    policy = _policy()
    prepare(fault_settings, policy)
    name = f"tick-{uuid.uuid4().hex[:8]}"
    home = schedule_partition(name, PARTITIONS)
    log = EventLog(fault_settings)
    try:
        a, b = processors("a"), processors("b")

        def split() -> bool:
            oa, ob = a.owned, b.owned
            return bool(oa and ob and not oa & ob and oa | ob == ALL)

        waiting(split, 2 * JOIN_TIMEOUT, lambda: f"A and B to split\n{a.tail()}\n{b.tail()}")
        assert fault_settings.kafka_bootstrap is not None
        # Occurrences from a little after the definition: none before it fires.
        start = (now_ms() // 1_000 + 2) * 1_000
        expected = {
            occurrence_task_id(name, start + i * 1_000, PARTITIONS): start + i * 1_000
            for i in range(60)
        }
        schedule = PeriodicSchedule(
            name,
            policy.name,
            every_ms=1_000,
            start_ms=start,
            end_ms=start + 59_000,
            catch_up_max=100,
            defined_at=now_ms(),
        )
        publish_periodic(fault_settings, fault_settings.kafka_bootstrap, name, schedule)
        live = {"a": a, "b": b}
        kills = []
        for threshold in (12, 35):
            log.wait_until(
                lambda lg, n=threshold: len(lg.history()) >= n,
                60,
                f"{threshold} occurrences in the log",
            )
            owner = next(p for p in live.values() if p.owned is not None and home in p.owned)
            kills.append((owner.instance_id, len(log.history()), now_ms() - start))
            owner.kill()
            live[owner.instance_id] = processors(owner.instance_id)  # same id, same store
        latest = _wait_all_enqueued(log, set(expected), 120, *live.values())
        print(f"killed the owner of p{home} (instance, occurrences seen) at {kills}")
        lateness = sorted(latest[t].created_at - at for t, at in expected.items())
        print(f"scheduled after the occurrence: median {lateness[30]} ms, max {lateness[-1]} ms")
        _assert_no_problems(_history_problems(log, set(expected)), "the occurrence histories")
        _assert_no_problems(_enqueued_once_with_lease_1(latest, log), "the enqueues")
        _assert_no_problems(_work_problems(fault_settings, policy, log), "the work items")
        assert {latest[t].scheduled_at for t in expected} == set(expected.values())
        assert {p for t in expected for p in _event_partitions(log)[t]} == {home}
    finally:
        log.close()


def test_a_chain_schedules_each_node_once_after_its_parents_while_its_owner_is_killed_twice(
    fault_settings: Settings, processors: Callable[[str], ProcessorProcess]
) -> None:
    """A root, 30 children and a grandchild under each; the test answers every
    enqueued node (claim, success) as a worker would, and kills the processor
    owning the chain's partition with SIGKILL twice along the way. Every node
    is scheduled exactly once, after each of its parents succeeded, and the
    whole chain ends on the root's partition."""
    policy = _policy()
    prepare(fault_settings, policy)
    chain = build_chain(
        f"fault-{uuid.uuid4().hex[:8]}",
        [
            NodeSpec("root", policy.name),
            *(NodeSpec(f"m{i}", policy.name, parents=("root",)) for i in range(30)),
            *(NodeSpec(f"l{i}", policy.name, parents=(f"m{i}",)) for i in range(30)),
        ],
        OnFailure.STOP,
        PARTITIONS,
    )
    ids = {node.task_id for node in chain.nodes}
    home = partition_of(chain.root.task_id, PARTITIONS)
    log = EventLog(fault_settings)
    sender = CommandSender(fault_settings)
    try:
        a, b = processors("a"), processors("b")

        def split() -> bool:
            oa, ob = a.owned, b.owned
            return bool(oa and ob and not oa & ob and oa | ob == ALL)

        waiting(split, 2 * JOIN_TIMEOUT, lambda: f"A and B to split\n{a.tail()}\n{b.tail()}")
        root = chain.root
        sender.send(
            ScheduleTask(
                uuid.uuid4().hex,
                root.task_id,
                root.lambda_name,
                root.collection,
                root.priority,
                root.payload,
                now_ms(),
                None,
                ChainLink(chain, root.name),
            )
        )
        sender.flush()
        live = {"a": a, "b": b}
        answered: set[tuple[str, int]] = set()
        kills: list[tuple[str, int]] = []
        thresholds = [15, 40]
        deadline = time.monotonic() + 180

        def succeeded() -> int:
            latest = log.latest()
            return sum(
                1
                for t in ids
                if (task := latest.get(t)) is not None and task.status is TaskStatus.SUCCESS
            )

        while (done := succeeded()) < len(ids):
            assert time.monotonic() < deadline, (
                f"{done} of {len(ids)} nodes succeeded in 180 s\n"
                + "\n".join(p.tail() for p in live.values())
            )
            if thresholds and done >= thresholds[0]:
                thresholds.pop(0)
                owner = next(p for p in live.values() if p.owned is not None and home in p.owned)
                kills.append((owner.instance_id, done))
                owner.kill()
                live[owner.instance_id] = processors(owner.instance_id)  # same id, same store
            # Act as the worker: claim and finish enqueued nodes, once per lease, two
            # at a time, so that the kills fall in the middle of the chain.
            ready = [
                (task_id, task.lease)
                for task_id, task in log.latest().items()
                if task_id in ids
                and task.status is TaskStatus.ENQUEUED
                and (task_id, task.lease) not in answered
            ]
            for task_id, lease in sorted(ready)[:2]:
                answered.add((task_id, lease))
                sender.send(ClaimTask(uuid.uuid4().hex, task_id, lease, "w"))
                sender.send(SetResult(uuid.uuid4().hex, task_id, lease, "w", Outcome.SUCCESS))
            sender.flush()
            log.poll(0.3)  # read what the processors wrote since
        assert len(kills) == 2, kills
        print(f"killed the owner of p{home} (instance, nodes succeeded) at {kills}")
        _assert_no_problems(_history_problems(log, ids), "the chain's histories")
        history = log.history()
        succeeded_at = {
            t: min(e.at for e, _ in history[t] if isinstance(e, TaskSucceeded)) for t in ids
        }
        problems = []
        for node in chain.nodes:
            scheduled = [e for e, _ in history[node.task_id] if isinstance(e, TaskScheduled)]
            for parent in node.parents:
                parent_id = chain.node(parent).task_id
                if scheduled[0].at < succeeded_at[parent_id]:
                    problems.append(f"{node.name} was scheduled before its parent {parent} ended")
        _assert_no_problems(problems, "the order of the nodes")
        assert {p for t in ids for p in _event_partitions(log)[t]} == {home}
    finally:
        log.close()
