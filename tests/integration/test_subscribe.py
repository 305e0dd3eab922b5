"""Downstream consumers on a real broker: atf_es.subscribe, and a foreign client.

A real processor records real events; subscribers read the real task-events
topic. The kill test runs the subscriber in its own process and SIGKILLs it
mid-stream; the foreign-client test reads the topic with kafka-python and
decodes with the official ``avro`` package, running the snippet of
docs/consumers.md as written.
"""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka import TopicPartition

from atf_es import kafka_clients
from atf_es.config import Settings
from atf_es.events import CancelTask, Cause, LambdaPolicy, Task, TaskScheduled, TaskStatus
from atf_es.events.codec import MARKER, DecodeError, decode_event, find_schema_dir, get_codec
from atf_es.events.records import event_to_record, task_to_record
from atf_es.services.processor import Processor
from atf_es.subscription import (
    Filter,
    NoCommittedOffsetError,
    StatusEvent,
    Subscription,
    SubscriptionError,
    subscribe,
)
from atf_es.topics import Topics
from tests.helpers import wait_for
from tests.kafka_harness import CommandSender, EventLog, prepare
from tests.unit.test_official_avro import _millis

pytestmark = pytest.mark.integration

ALPHA = LambdaPolicy(name="alpha")
BETA = LambdaPolicy(name="beta")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "consumers.md"

Key = tuple[str, int]  # (task_id, seq): one transition


@dataclass
class System:
    settings: Settings
    sender: CommandSender
    log: EventLog
    _decoded: list[tuple[int, int, Any, Task]] = field(default_factory=list)
    _upto: int = 0

    @property
    def bootstrap(self) -> str:
        assert self.settings.kafka_bootstrap is not None
        return self.settings.kafka_bootstrap

    @property
    def topic(self) -> str:
        return Topics(self.settings.topic_prefix).task_events

    def decoded(self) -> list[tuple[int, int, Any, Task]]:
        """(partition, offset, event, task) of every record that decodes, in log order."""
        records = self.log.records
        for partition, offset, _, value in records[self._upto :]:
            if value is None:
                continue
            try:
                event, task = decode_event(value)
            except DecodeError:
                continue
            self._decoded.append((partition, offset, event, task))
        self._upto = len(records)
        return self._decoded

    def keys(self, where: Callable[[Task], bool] = lambda _: True) -> set[Key]:
        return {(e.task_id, e.seq) for _, _, e, t in self.decoded() if where(t)}

    def wait_for_statuses(self, wanted: dict[str, TaskStatus], timeout: float = 30.0) -> None:
        def arrived(log: EventLog) -> bool:
            latest = {e.task_id: t for _, _, e, t in self.decoded()}
            return all(
                task_id in latest and latest[task_id].status is status
                for task_id, status in wanted.items()
            )

        self.log.wait_until(arrived, timeout, f"{len(wanted)} tasks to reach their statuses")


@pytest.fixture
def system(settings: Settings) -> Iterator[System]:
    # No flow-control hold-back: every scheduled task is enqueued at once.
    small = replace(settings, partitions=3, max_enqueued=1_000_000)
    prepare(small, ALPHA, BETA)
    assert small.kafka_bootstrap is not None
    processor = Processor(small, small.kafka_bootstrap, instance_id="subscribe-test")
    processor.start()
    log = EventLog(small)
    try:
        assert processor.ready.wait(30), "the processor did not get its partitions"
        yield System(small, CommandSender(small), log)
    finally:
        log.close()
        processor.stop()


def read_all(sub: Subscription, records: int, timeout: float = 30.0) -> list[StatusEvent]:
    """Poll until ``sub`` has read ``records`` records, then take what is buffered."""
    got: list[StatusEvent] = []

    def done() -> bool:
        got.extend(sub.poll(0.2))
        return sub.stats.read >= records

    wait_for(done, timeout, f"{sub!r} to read {records} records", interval=0)
    while batch := sub.poll(0):
        got.extend(batch)
    return got


def group_committed(system: System, group: str) -> dict[int, int]:
    """What the broker holds as ``group``'s committed offsets."""
    consumer = kafka_clients.consumer(system.bootstrap, group, system.settings.kafka_config)
    try:
        partitions = [TopicPartition(system.topic, p) for p in range(system.settings.partitions)]
        return {
            tp.partition: tp.offset
            for tp in consumer.committed(partitions, timeout=10)
            if tp.offset >= 0
        }
    finally:
        consumer.close()


def test_filters_select_on_the_snapshot_and_everything_advances_progress(
    system: System,
) -> None:
    s = system.sender
    red = [s.schedule("alpha", collection="red") for _ in range(3)]
    blue = [s.schedule("alpha", collection="blue") for _ in range(2)]
    beta = [s.schedule("beta", collection="red") for _ in range(2)]
    later = s.schedule("alpha", collection="red", delay_ms=3_600_000)
    for task_id in (blue[0], later):
        s.send(CancelTask(uuid.uuid4().hex, task_id, "test"))
    s.flush()
    wanted = dict.fromkeys([*red, blue[1], *beta], TaskStatus.ENQUEUED)
    wanted |= {blue[0]: TaskStatus.CANCELLED, later: TaskStatus.CANCELLED}
    system.wait_for_statuses(wanted)
    # A record that is not an event and a tombstone: skipped, never fatal.
    producer = kafka_clients.producer(system.bootstrap, system.settings.kafka_config)
    producer.produce(system.topic, b"not avro at all", b"junk", partition=0)
    producer.produce(system.topic, None, b"gone", partition=1)
    assert producer.flush(10) == 0
    total = system.log.wait_for_count(len(system.log.records) + 2)
    by_position = {(p, o): (e.task_id, e.seq) for p, o, e, _ in system.decoded()}

    cases: list[tuple[Subscription, Callable[[Task], bool]]] = [
        (
            subscribe("by-lambda", lambdas="beta", settings=system.settings),
            lambda t: t.lambda_name == "beta",
        ),
        (
            subscribe(None, collections=["red"], settings=system.settings),
            lambda t: t.collection == "red",
        ),
        (
            subscribe(None, statuses=["cancelled", "NEW"], settings=system.settings),
            lambda t: t.status in (TaskStatus.CANCELLED, TaskStatus.NEW),
        ),
        (
            subscribe(
                None,
                filter=Filter.of(lambdas=["alpha"], collections="blue", statuses="enqueued"),
                settings=system.settings,
            ),
            lambda t: (
                (t.lambda_name, t.collection, t.status) == ("alpha", "blue", TaskStatus.ENQUEUED)
            ),
        ),
    ]
    try:
        for sub, where in cases:
            delivered = read_all(sub, total)
            expected = system.keys(where)
            assert expected, "the case selects something"
            keys = [(ev.task_id, ev.seq) for ev in delivered]
            assert sorted(keys) == sorted(expected), sub.filter
            for ev in delivered:
                assert by_position[(ev.partition, ev.offset)] == (ev.task_id, ev.seq)
                assert ev.task.task_id == ev.task_id and ev.status is ev.task.status
                assert re.fullmatch(r"TASK_[A-Z]+", ev.kind)
                assert ev.timestamp is not None and ev.timestamp > 0
            assert sub.stats.undecodable == 1 and sub.stats.tombstones == 1
            assert sub.stats.read == total
            assert sub.stats.filtered == total - 2 - len(expected)
        # A view of some partitions (a Watch of one task needs only its own).
        busiest, _ = Counter(p for p, _, _, _ in system.decoded()).most_common(1)[0]
        with subscribe(None, partitions=[busiest], settings=system.settings) as one:
            in_one = sum(1 for p, _, _, _ in system.log.records if p == busiest)
            delivered = read_all(one, in_one)
            assert {ev.partition for ev in delivered} == {busiest}
            assert sorted((ev.task_id, ev.seq) for ev in delivered) == sorted(
                (e.task_id, e.seq) for p, _, e, _ in system.decoded() if p == busiest
            )
        # Filtered, undecodable and tombstone records all count as progress.
        by_lambda = cases[0][0]
        by_lambda.commit()
        ends: dict[int, int] = {}
        for partition, offset, _, _ in system.log.records:
            ends[partition] = max(ends.get(partition, 0), offset + 1)
        assert by_lambda.committed() == ends
    finally:
        for sub, _ in cases:
            sub.close()
    assert group_committed(system, "by-lambda") == ends


def test_start_positions_resume_and_what_counts_as_done(system: System) -> None:
    s = system.sender
    first = [s.schedule("alpha") for _ in range(3)]
    s.flush()
    system.wait_for_statuses(dict.fromkeys(first, TaskStatus.ENQUEUED))
    before = system.keys()
    boundary = max(e.at for _, _, e, _ in system.decoded()) + 1

    latest = subscribe("from-latest", from_="latest", settings=system.settings)
    strict = subscribe("never-committed", from_="committed", settings=system.settings)
    since = subscribe(None, from_=boundary, settings=system.settings)
    try:
        second = [s.schedule("alpha") for _ in range(2)]
        s.flush()
        system.wait_for_statuses(dict.fromkeys(second, TaskStatus.ENQUEUED))
        after = system.keys() - before
        total = len(system.log.records)
        # A time start reads everything and skips what is older.
        assert {(ev.task_id, ev.seq) for ev in read_all(since, total)} == after
        assert since.stats.filtered == len(before)
        # "latest" is the end when subscribe() returned, not when the group was joined.
        assert {(ev.task_id, ev.seq) for ev in _read_until(latest, after)} == after
        with pytest.raises(NoCommittedOffsetError, match="never-committed"):
            wait_for(lambda: strict.poll(0.2), 30, "the group to be joined")
        with pytest.raises(NoCommittedOffsetError):
            strict.poll(0)  # sticky
    finally:
        for sub in (latest, strict, since):
            sub.close()

    # A body that fails keeps its last event undone; one that ends normally does not.
    settings = system.settings
    everything = system.keys()
    with pytest.raises(RuntimeError), subscribe("resume", settings=settings) as sub:
        taken = [next(sub) for _ in range(4)]
        raise RuntimeError("the handler failed on the 4th event")
    seen = [(ev.task_id, ev.seq) for ev in taken]
    with subscribe("resume", from_="committed", settings=settings) as sub:
        rest = [(ev.task_id, ev.seq) for ev in read_all(sub, total - 3)]
    assert seen[3] in rest, "the event whose handling failed comes again"
    assert set(seen[:3]).isdisjoint(rest), "finished events do not"
    assert set(seen) | set(rest) == everything
    ends: dict[int, int] = {}
    for partition, offset, _, _ in system.log.records:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    assert group_committed(system, "resume") == ends, "a clean exit committed everything"


def _read_until(sub: Subscription, keys: set[Key], timeout: float = 30.0) -> list[StatusEvent]:
    got: list[StatusEvent] = []

    def complete() -> bool:
        got.extend(sub.poll(0.2))
        return keys <= {(ev.task_id, ev.seq) for ev in got}

    wait_for(complete, timeout, f"{len(keys)} events on {sub!r}", interval=0)
    while batch := sub.poll(0):
        got.extend(batch)
    return got


def test_arguments_are_checked(settings: Settings) -> None:
    prepare(settings)
    with pytest.raises(ValueError, match="empty"):
        subscribe("g", lambdas=[], settings=settings)
    with pytest.raises(ValueError, match="unknown status"):
        subscribe("g", statuses=["finished"], settings=settings)
    with pytest.raises(ValueError, match="timezone-aware"):
        subscribe("g", from_=datetime(2024, 1, 1), settings=settings)
    with pytest.raises(ValueError, match="only without a group"):
        subscribe("g", partitions=[0], settings=settings)
    with pytest.raises(ValueError, match="subset"):
        subscribe(None, partitions=[settings.partitions], settings=settings)
    with pytest.raises(ValueError, match="needs a group"):
        subscribe(None, from_="committed", settings=settings)
    with pytest.raises(SubscriptionError, match="not readable"):
        subscribe("g", settings=replace(settings, topic_prefix=settings.topic_prefix + "-none"))


# -- kill and restart -------------------------------------------------------

SUBSCRIBER = """
import json, sys, time
import atf_es
from atf_es.config import Settings

config, group, lambda_name, out, work_s = sys.argv[1:]
settings = Settings(**json.loads(config))
with open(out, "a", encoding="utf-8") as f:
    sub = atf_es.subscribe(group, lambdas=[lambda_name], settings=settings)
    for ev in sub:
        f.write(f"{ev.task_id} {ev.seq}\\n")
        f.flush()
        time.sleep(float(work_s))  # the "work" that a kill interrupts
"""


def _start_subscriber(
    system: System, group: str, out: Path, work_s: float
) -> subprocess.Popen[bytes]:
    config = {
        "kafka_bootstrap": system.bootstrap,
        "topic_prefix": system.settings.topic_prefix,
        "partitions": system.settings.partitions,
        "session_timeout_ms": system.settings.session_timeout_ms,
        "kafka_config": dict(system.settings.kafka_config),
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            SUBSCRIBER,
            json.dumps(config),
            group,
            "alpha",
            str(out),
            str(work_s),
        ],
        stdout=subprocess.DEVNULL,
    )


def _lines(out: Path) -> list[Key]:
    if not out.exists():
        return []
    keys = []
    for line in out.read_text(encoding="utf-8").splitlines():
        task_id, seq = line.split()  # a kill can cut nothing: one write+flush per line
        keys.append((task_id, int(seq)))
    return keys


def _committed_past_some_line(system: System, group: str, out: Path) -> bool:
    committed = group_committed(system, group)
    system.log.poll(0)
    where = {(e.task_id, e.seq): (p, o) for p, o, e, _ in system.decoded()}
    for key in _lines(out):
        partition, offset = where.get(key, (-1, -1))
        if offset >= 0 and offset < committed.get(partition, -1):
            return True
    return False


def test_a_subscriber_killed_mid_stream_misses_nothing(system: System, tmp_path: Path) -> None:
    out = tmp_path / "received.txt"
    # A backlog, so the subscriber fetches far more than it has handled when it dies.
    scheduled = [system.sender.schedule(lambda_name) for lambda_name in ["alpha", "beta"] * 200]
    system.sender.flush()
    system.wait_for_statuses(dict.fromkeys(scheduled, TaskStatus.ENQUEUED), 60)
    stop = threading.Event()

    def keep_scheduling() -> None:
        while not stop.wait(0.02):
            scheduled.append(system.sender.schedule("alpha"))
            scheduled.append(system.sender.schedule("beta"))

    producer = threading.Thread(target=keep_scheduling, name="scheduler", daemon=True)
    producer.start()
    # The first one is slow, so it is killed with fetched events it has not
    # handled yet; the second one catches up.
    first = _start_subscriber(system, "killed", out, work_s=0.02)
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: len(_lines(out)) >= 100, 60, "the subscriber to receive 100 events")
        # Kill it once it has committed progress past some of what it wrote,
        # so the restart shows whether it resumes or starts over.
        wait_for(
            lambda: _committed_past_some_line(system, "killed", out),
            30,
            "the subscriber to commit progress",
            interval=0.1,
        )
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        at_kill = len(_lines(out))
        # Events keep coming while nobody listens.
        system.log.poll(0)
        recorded = len(system.log.records)
        system.log.wait_until(lambda log: len(log.records) >= recorded + 100, 30)
        second = _start_subscriber(system, "killed", out, work_s=0.001)
        wait_for(lambda: len(_lines(out)) >= at_kill + 100, 60, "the restarted subscriber")
        stop.set()
        producer.join(10)
        system.sender.flush()
        system.wait_for_statuses(dict.fromkeys(scheduled, TaskStatus.ENQUEUED), 60)
        expected = system.keys(lambda t: t.lambda_name == "alpha")
        try:
            wait_for(lambda: expected <= set(_lines(out)), 60, "all events", interval=0.1)
        except AssertionError:
            missing = sorted(expected - set(_lines(out)))
            raise AssertionError(
                f"{len(missing)} of {len(expected)} events never reached the subscriber "
                f"(killed after {at_kill}), e.g. {missing[:5]}"
            ) from None
    finally:
        stop.set()
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)
    received = _lines(out)
    assert set(received) <= expected, "only events of the subscribed lambda, all real"
    repeats = sum(n - 1 for n in Counter(received).values())
    # The restart resumed from committed progress, not from the beginning.
    assert repeats < at_kill, (repeats, at_kill)
    print(f"{len(expected)} events, {len(received)} received, {repeats} again after the kill")


# -- a foreign client: kafka-python + the official avro package ---------------


def _doc_snippet() -> dict[str, Any]:
    """docs/consumers.md's kafka-python + avro block, executed as a module."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL)
    (snippet,) = [b for b in blocks if "KafkaConsumer" in b]
    namespace: dict[str, Any] = {"__name__": "consumers_md"}
    exec(compile(snippet, str(DOCS), "exec"), namespace)
    return namespace


def _legacy_event() -> tuple[bytes, TaskScheduled, Task]:
    """A TASK_SCHEDULED written with TaskEvent v1, as an older writer would have."""
    codec = get_codec("TaskEvent")
    v1 = codec.versions[0]
    assert v1.version == 1 and v1 is not codec.current
    task_id = f"legacy-{uuid.uuid4().hex[:8]}"
    task = Task(
        task_id=task_id,
        lambda_name="alpha",
        collection="legacy",
        priority=0,
        payload=b"\x00old",
        status=TaskStatus.NEW,
        seq=1,
        created_at=1_600_000_000_000,
        scheduled_at=1_600_000_000_000,
        next_trigger_at=1_600_000_000_000,
    )
    event = TaskScheduled(
        task_id,
        1,
        1_600_000_000_000,
        Cause.command("ScheduleTask", "c-legacy"),
        "alpha",
        "legacy",
        0,
        b"\x00old",
        1_600_000_000_000,
        None,
    )
    body = io.BytesIO()
    fastavro.schemaless_writer(body, v1.parsed, event_to_record(event, task))
    value = MARKER + v1.fingerprint + body.getvalue()
    assert decode_event(value) == (event, task)
    return value, event, task


# kafka-python reads its protocol schemas with importlib.resources APIs deprecated in 3.11.
@pytest.mark.filterwarnings("ignore:(open|read)_text is deprecated:DeprecationWarning")
def test_a_foreign_client_decodes_the_topic_with_only_the_avsc_files(system: System) -> None:
    s = system.sender
    tasks = [s.schedule("alpha", payload=b"\xffbinary"), s.schedule("beta", collection="x")]
    s.send(CancelTask(uuid.uuid4().hex, tasks[1], "test", "because"))
    s.flush()
    system.wait_for_statuses({tasks[0]: TaskStatus.ENQUEUED, tasks[1]: TaskStatus.CANCELLED})
    legacy, legacy_event, legacy_task = _legacy_event()
    producer = kafka_clients.producer(system.bootstrap, system.settings.kafka_config)
    producer.produce(system.topic, legacy, legacy_event.task_id.encode())
    assert producer.flush(10) == 0
    records = system.log.wait_for_count(len(system.log.records) + 1)
    ours = {(p, o): v for p, o, _, v in system.log.records}

    doc = _doc_snippet()
    writers, newest = doc["load_schemas"](find_schema_dir())
    assert set(writers) == {v.fingerprint for v in get_codec("TaskEvent").versions}
    assert newest.name == "TaskEvent" and newest.namespace == "atf.v1"
    decoded: dict[tuple[int, int], dict[str, Any]] = {}
    stream = doc["follow"](
        system.bootstrap,
        system.topic,
        "foreign-reader",
        find_schema_dir(),
        session_timeout_ms=system.settings.session_timeout_ms,
        heartbeat_interval_ms=system.settings.session_timeout_ms // 10,
    )
    try:
        for partition, offset, event in stream:
            decoded[(partition, offset)] = event
            if len(decoded) == records:
                break
    finally:
        stream.close()

    assert decoded.keys() == ours.keys()
    for position, event in decoded.items():
        value = ours[position]
        assert value is not None
        assert _millis(event) == event_to_record(*decode_event(value)), position
    (old,) = [e for e in decoded.values() if e["task_id"] == legacy_event.task_id]
    assert _millis(old["task"]) == task_to_record(legacy_task)
    kinds = Counter(e["kind"] for e in decoded.values())
    assert kinds["TASK_CANCELLED"] == 1 and kinds["TASK_SCHEDULED"] == 3
