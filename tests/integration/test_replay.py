"""Replay against a real broker and a real processor: as of a time, per lambda, verified.

``--until`` must reproduce a task's state between two of its transitions
(checked against folding its events with the pure lifecycle); ``--verify``
must find nothing to report against the live projection, running or not,
tolerate a live store that moved on, and catch a projection corrupted by
hand. Tombstones and the edge cases of the log are driven with records
written straight to the task-events topic.
"""

from __future__ import annotations

import io
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from rocksdict import Options as RocksOptions
from rocksdict import Rdict

from atf_es import kafka_clients
from atf_es.clock import now_ms
from atf_es.config import Settings
from atf_es.events import (
    CancelTask,
    Cause,
    ClaimTask,
    LambdaPolicy,
    ScheduleTask,
    Task,
    TaskEnqueued,
    TaskScheduled,
    TaskStatus,
    TimerReason,
    evolve,
    replay,
)
from atf_es.events.codec import encode_command, encode_event
from atf_es.projections import replay as replay_module
from atf_es.projections.replay import (
    ProgressPrinter,
    ReplayProgress,
    VerifyReport,
    open_read_only,
    partition_dirs,
    replay_and_verify,
    state_as_of,
    verify,
)
from atf_es.projections.replay import replay as rebuild
from atf_es.projections.store import RocksTaskStore
from atf_es.services.processor import Processor
from atf_es.topics import Topics
from tests.helpers import wait_for
from tests.kafka_harness import CommandSender, EventLog, dedupe_by_seq, prepare

pytestmark = pytest.mark.integration

EMAIL = LambdaPolicy(name="send_email")
REPORT = LambdaPolicy(name="report")


def _bootstrap(settings: Settings) -> str:
    assert settings.kafka_bootstrap is not None
    return settings.kafka_bootstrap


@pytest.fixture
def settings_4(settings: Settings) -> Settings:
    return replace(settings, partitions=4)


@contextmanager
def _running(settings: Settings) -> Iterator[Processor]:
    prepare(settings, EMAIL, REPORT)
    proc = Processor(settings, _bootstrap(settings), instance_id="live")
    proc.start()
    try:
        assert proc.ready.wait(30), "the processor did not join its group"
        wait_for(
            lambda: len(proc.stats.owned) == settings.partitions,
            30,
            "the processor to own every partition",
        )
        yield proc
    finally:
        proc.stop()
    assert not proc.failed


@pytest.fixture
def processor(settings_4: Settings) -> Iterator[Processor]:
    with _running(settings_4) as proc:
        yield proc


def _stored(root: Path) -> dict[str, Task]:
    """Every task of every p<N> store under ``root``."""
    tasks: dict[str, Task] = {}
    for path in partition_dirs(root).values():
        with open_read_only(path) as store:
            for task in store.tasks():
                tasks[task.task_id] = task
    return tasks


def _status(log: EventLog, task_id: str, status: TaskStatus) -> bool:
    task = log.latest().get(task_id)
    return task is not None and task.status is status


def test_until_between_two_transitions_reproduces_the_state_at_that_time(
    processor: Processor, settings_4: Settings, tmp_path: Path
) -> None:
    bootstrap = _bootstrap(settings_4)
    sender = CommandSender(settings_4)
    log = EventLog(settings_4)
    try:
        claimed = sender.schedule("send_email", payload=b"claimed later")
        cancelled = sender.schedule("send_email", delay_ms=3_600_000)
        other = sender.schedule("report")
        sender.flush()
        log.wait_until(
            lambda lg: (
                _status(lg, claimed, TaskStatus.ENQUEUED)
                and _status(lg, cancelled, TaskStatus.NEW)
                and _status(lg, other, TaskStatus.ENQUEUED)
            ),
            message="the first transitions",
        )
        # `between` strictly after them and before the rest, on the millisecond clock.
        first = now_ms()
        between = wait_for(lambda: (t := now_ms()) > first and t, 5, "the clock to move")
        wait_for(lambda: now_ms() > between, 5, "the clock to move past `between`")
        sender.send(ClaimTask(uuid.uuid4().hex, claimed, 1, "worker-1"))
        sender.send(CancelTask(uuid.uuid4().hex, cancelled, "test", "not needed"))
        later = sender.schedule("send_email")
        sender.flush()
        log.wait_until(
            lambda lg: (
                _status(lg, claimed, TaskStatus.CLAIMED)
                and _status(lg, cancelled, TaskStatus.CANCELLED)
                and _status(lg, later, TaskStatus.ENQUEUED)
            ),
            message="the second transitions",
        )
        history = log.history()
        latest = log.latest()
    finally:
        log.close()

    # The log really has a transition on each side of `between`.
    for task_id in (claimed, cancelled):
        times = [event.at for event, _ in history[task_id]]
        assert min(times) < between < max(times), task_id
    assert min(event.at for event, _ in history[later]) > between

    printed = io.StringIO()
    seen: list[ReplayProgress] = []

    def progress(p: ReplayProgress) -> None:
        seen.append(p)
        ProgressPrinter(printed)(p)

    result = rebuild(settings_4, bootstrap, tmp_path / "as-of", until=between, progress=progress)
    as_of = _stored(tmp_path / "as-of")
    expected = {
        task_id: folded
        for task_id, entries in history.items()
        if (folded := replay(dedupe_by_seq(e for e, _ in entries if e.at <= between)))
    }
    assert as_of == expected
    assert as_of[claimed].status is TaskStatus.ENQUEUED
    assert as_of[cancelled].status is TaskStatus.NEW
    assert as_of[other].status is TaskStatus.ENQUEUED
    assert later not in as_of
    assert result.tasks == 3
    assert sum(p.after_until for p in result.partitions) >= 3
    assert sorted(p.partition for p in result.partitions) == [0, 1, 2, 3]
    assert {p.partition for p in seen if p.finished} == {0, 1, 2, 3}
    assert printed.getvalue().count(" done\n") == 4

    # One task as of the same time, from its own partition.
    for task_id in (claimed, cancelled, other):
        assert state_as_of(settings_4, bootstrap, task_id, between) == expected[task_id]
    assert state_as_of(settings_4, bootstrap, later, between) is None

    # Now, one lambda only: what the log's latest records say.
    result = rebuild(settings_4, bootstrap, tmp_path / "email", lambda_name="send_email")
    email = _stored(tmp_path / "email")
    assert email == {i: t for i, t in latest.items() if t.lambda_name == "send_email"}
    assert email[claimed].status is TaskStatus.CLAIMED
    assert email[cancelled].status is TaskStatus.CANCELLED
    assert sum(p.other_lambdas for p in result.partitions) >= 2
    assert result.records >= sum(len(entries) for entries in history.values())

    # A replay never writes over a store.
    with pytest.raises(replay_module.ReplayError, match="not empty"):
        rebuild(settings_4, bootstrap, tmp_path / "email")


def _send_workload(sender: CommandSender, prefix: str, count: int) -> list[str]:
    ids = []
    for i in range(count):
        delay = 0 if i % 3 else 3_600_000
        ids.append(
            sender.schedule(
                ("send_email", "report")[i % 2],
                task_id=f"{prefix}-{i:05d}",
                delay_ms=delay,
                priority=i % 2,
                collection=("alpha", "beta")[i % 4 // 2],
            )
        )
    sender.flush()
    return ids


def _idle(processor: Processor, commands: int) -> None:
    wait_for(
        lambda: processor.stats.commands >= commands,
        60,
        f"{commands} commands handled ({processor.stats})",
        interval=0.05,
    )
    # Work is written in the transaction of its command: once the count is
    # reached nothing more moves until a trigger is due (an hour away).


def test_verify_finds_no_difference_and_catches_a_corrupted_projection(
    processor: Processor, settings_4: Settings, tmp_path: Path
) -> None:
    bootstrap = _bootstrap(settings_4)
    live_dir = processor.data_dir
    sender = CommandSender(settings_4)
    ids = _send_workload(sender, "task", 2_000)
    _idle(processor, 2_000)
    for task_id in ids[1:400:3]:  # enqueued ones
        sender.send(ClaimTask(uuid.uuid4().hex, task_id, 1, "worker"))
    for task_id in ids[2:400:3] + ids[0:600:6]:  # enqueued and waiting ones
        sender.send(CancelTask(uuid.uuid4().hex, task_id, "test", "verify workload"))
    sender.flush()
    commands = 2_000 + len(ids[1:400:3]) + len(ids[2:400:3] + ids[0:600:6])
    _idle(processor, commands)
    assert processor.stats.poison == 0

    # While the processor runs: rebuilt through the offsets its stores stand at.
    result, report = replay_and_verify(settings_4, bootstrap, tmp_path / "rebuilt", live_dir)
    assert report.ok, report.render()
    assert result.tasks == 2_000
    assert all(p.exact and p.equal == p.live_tasks for p in report.partitions), report.render()
    assert sum(p.equal for p in report.partitions) == 2_000
    assert "0 differences" in report.render()

    # The directories alone, with the processor still running (and idle).
    report = verify(tmp_path / "rebuilt", live_dir)
    assert report.ok, report.render()

    # One lambda's share.
    report = verify(tmp_path / "rebuilt", live_dir, lambda_name="report")
    assert report.ok, report.render()
    assert sum(p.equal for p in report.partitions) == 1_000

    # The live projection moves on: newer, not different.
    more = _send_workload(sender, "more", 40)
    claimed_later = ids[401:440:6]  # enqueued, not claimed or cancelled yet
    for task_id in claimed_later:
        sender.send(ClaimTask(uuid.uuid4().hex, task_id, 1, "worker-2"))
    sender.flush()
    _idle(processor, commands + len(more) + len(claimed_later))
    report = verify(tmp_path / "rebuilt", live_dir)
    assert report.ok, report.render()
    assert sum(p.newer_in_live for p in report.partitions) == len(more) + len(claimed_later)
    assert not any(p.exact for p in report.partitions if p.newer_in_live)

    processor.stop()
    assert not processor.failed

    corrupt = tmp_path / "corrupt"
    changed, deleted = _corrupt_copy(live_dir, corrupt, ids[443], ids[445])
    result, report = replay_and_verify(settings_4, bootstrap, tmp_path / "rebuilt-2", corrupt)
    _assert_caught(report, changed, deleted)

    # The same comparison against the untouched live directory: nothing.
    report = verify(tmp_path / "rebuilt-2", live_dir)
    assert report.ok, report.render()


def _corrupt_copy(live_dir: Path, corrupt: Path, change: str, delete: str) -> tuple[Task, Task]:
    """Copy ``live_dir`` and corrupt the copy: one (enqueued) row changed through the
    store with a higher seq, one deleted behind the store's back, one added."""
    shutil.copytree(live_dir, corrupt)
    changed = _find(corrupt, change)
    deleted = _find(corrupt, delete)
    assert changed[1].status is deleted[1].status is TaskStatus.ENQUEUED
    with RocksTaskStore.open(changed[0]) as store:
        task = changed[1]
        changed_row = replace(task, seq=task.seq + 1, status=TaskStatus.SUCCESS)
        store.commit([changed_row, replace(task, task_id="intruder")], None)
    names = [n for n in Rdict.list_cf(str(deleted[0])) if n != "default"]
    db = Rdict(
        str(deleted[0]),
        RocksOptions(raw_mode=True),
        column_families={n: RocksOptions(raw_mode=True) for n in names},
    )
    try:
        db.get_column_family("tasks").delete(delete.encode())
    finally:
        db.close()
    return changed[1], deleted[1]


def _find(root: Path, task_id: str) -> tuple[Path, Task]:
    for path in partition_dirs(root).values():
        with open_read_only(path) as store:
            task = store.get(task_id)
        if task is not None:
            return path, task
    raise AssertionError(f"{task_id} is in no store under {root}")


def _assert_caught(report: VerifyReport, changed: Task, deleted: Task) -> None:
    text = report.render()
    assert not report.ok, text
    assert sum(p.differing for p in report.partitions) == 1, text
    assert sum(p.only_rebuilt for p in report.partitions) == 1, text
    assert sum(p.only_live for p in report.partitions) == 1, text
    kinds = {(d.task_id, d.kind) for d in report.diffs}
    assert kinds == {
        (changed.task_id, "differs"),
        (deleted.task_id, "only_rebuilt"),
        ("intruder", "only_live"),
    }
    (diff,) = (d for d in report.diffs if d.kind == "differs")
    assert {f.name for f in diff.fields} == {"seq", "status"}
    # The changed row moved its counter and left the timeout index through the
    # store: that shows in the aggregates too. The deleted row left its counter
    # and index entry behind, as the rebuild has them: only its row tells.
    aggregates = [line for p in report.partitions for line in p.aggregates]
    assert any("success" in line for line in aggregates), text
    assert any("timeout index" in line for line in aggregates), text
    assert changed.task_id in text and deleted.task_id in text and "intruder" in text


# -- the acceptance workload: 100,000 tasks ----------------------------------------

IMMEDIATE = 60_000
SOON = 20_000  # due 1-3 s after sending: fired by the processor's timers
LATER = 20_000  # due in an hour: still waiting when the test ends
CANCELLED = 5_000  # of the immediate ones (enqueued) and of the later ones (waiting) each


def _send_bulk(settings: Settings) -> tuple[int, int]:
    """Schedule 100,000 tasks and cancel some; returns (commands, tasks that get enqueued)."""
    producer = kafka_clients.producer(
        _bootstrap(settings),
        settings.kafka_config,
        overrides={"linger.ms": 20, "batch.num.messages": 10_000},
    )
    topic = Topics(settings.topic_prefix).commands
    sent = 0

    def send(command: ScheduleTask | CancelTask) -> None:
        nonlocal sent
        value = encode_command(command, None, now_ms())
        while True:
            try:
                producer.produce(topic, value, command.task_id.encode())
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        sent += 1

    now = now_ms()
    for kind, count in (("imm", IMMEDIATE), ("soon", SOON), ("later", LATER)):
        for i in range(count):
            run_at = now + {"imm": 0, "soon": 1_000 + (i * 7919) % 2_000, "later": 3_600_000}[kind]
            lambda_name = ("send_email", "report")[i % 2]
            collection = ("alpha", "beta")[i % 4 // 2]
            payload = i.to_bytes(4, "big")
            task_id = f"{kind}-{i:06d}"
            send(
                ScheduleTask(uuid.uuid4().hex, task_id, lambda_name, collection, 0, payload, run_at)
            )
    # Keyed like the schedules, so each cancel lands after its task's schedule.
    for kind in ("imm", "later"):
        for i in range(0, CANCELLED * 4, 4):
            send(CancelTask(uuid.uuid4().hex, f"{kind}-{i:06d}", "test", "bulk workload"))
    assert producer.flush(60) == 0, "commands were not delivered"
    return sent, IMMEDIATE + SOON


@pytest.mark.timeout(300)
def test_verify_100k_tasks_finds_nothing_then_catches_a_corrupted_copy(
    settings: Settings, tmp_path: Path
) -> None:
    settings = replace(settings, partitions=4, max_enqueued=1_000_000)
    bootstrap = _bootstrap(settings)
    with _running(settings) as processor:
        commands, enqueued = _send_bulk(settings)
        wait_for(
            lambda: processor.stats.commands >= commands and processor.stats.work >= enqueued,
            240,
            "every command handled and every due task enqueued",
            interval=0.1,
        )
        assert processor.stats.poison == 0
        # The processor is running (idle: its next triggers are an hour away).
        live_dir = processor.data_dir
        result, report = replay_and_verify(settings, bootstrap, tmp_path / "rebuilt", live_dir)
        assert report.ok, report.render()
        assert result.tasks == IMMEDIATE + SOON + LATER
        assert result.records >= IMMEDIATE + SOON + LATER + 2 * CANCELLED
        assert all(p.exact for p in report.partitions), report.render()
        assert sum(p.equal for p in report.partitions) == result.tasks
    changed, deleted = _corrupt_copy(live_dir, tmp_path / "corrupt", "imm-000001", "imm-000003")
    report = verify(tmp_path / "rebuilt", tmp_path / "corrupt")
    _assert_caught(report, changed, deleted)


# -- the log's edge cases, written straight to the topic ----------------------------


def _scheduled(task_id: str, at: int, lambda_name: str = "send_email") -> tuple[bytes, Task]:
    event = TaskScheduled(
        task_id,
        1,
        at,
        Cause.command("ScheduleTask", uuid.uuid4().hex),
        lambda_name,
        "default",
        0,
        b"",
        at,
        None,
    )
    task = evolve(None, event)
    return encode_event(event, task), task


def _enqueued(task: Task, at: int) -> tuple[bytes, Task]:
    event = TaskEnqueued(
        task.task_id, task.seq + 1, at, Cause.timer(TimerReason.DUE), task.lease + 1, at + 60_000
    )
    after = evolve(task, event)
    return encode_event(event, after), after


@pytest.mark.parametrize("chunk", [1, 5_000], ids=["flush-every-record", "one-flush"])
def test_tombstones_delete_tasks_and_until_applies_to_them(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    settings = replace(settings, partitions=1)
    prepare(settings)
    bootstrap = _bootstrap(settings)
    monkeypatch.setattr(replay_module, "CHUNK", chunk)
    topic = Topics(settings.topic_prefix).task_events
    producer = kafka_clients.producer(bootstrap, settings.kafka_config)
    t0 = now_ms() - 60_000

    def put(key: str, value: bytes | None, at: int) -> None:
        producer.produce(topic, value, key.encode(), 0, timestamp=at)

    gone_value, gone = _scheduled("gone", t0)
    kept_value, kept = _scheduled("kept", t0)
    kept_enqueued_value, kept_enqueued = _enqueued(kept, t0 + 2_000)
    reborn_value, first_life = _scheduled("reborn", t0)
    second_value, second_life = _scheduled("reborn", t0 + 4_000, lambda_name="report")
    put("gone", gone_value, t0)
    put("kept", kept_value, t0)
    put("reborn", reborn_value, t0)
    put("kept", kept_enqueued_value, t0 + 2_000)
    put("reborn", None, t0 + 2_500)
    put("gone", None, t0 + 3_000)
    put("garbage", b"not an event", t0 + 3_500)
    put("reborn", second_value, t0 + 4_000)
    assert producer.flush(30) == 0

    result = rebuild(settings, bootstrap, tmp_path / "now")
    assert _stored(tmp_path / "now") == {"kept": kept_enqueued, "reborn": second_life}
    (p0,) = result.partitions
    assert (p0.records, p0.tombstones, p0.unreadable, p0.tasks) == (8, 2, 1, 2)
    with open_read_only(tmp_path / "now" / "p0") as store:
        assert sum(store.counts().values()) == 2
        assert store.last_offset() == p0.last_offset >= 7
        assert [task_id for _, task_id in store.due_timeouts(2**62, 10)] == ["kept"]

    cases = {
        t0 + 1_000: {"gone": gone, "kept": kept, "reborn": first_life},
        t0 + 2_700: {"gone": gone, "kept": kept_enqueued},
        t0 + 3_200: {"kept": kept_enqueued},
    }
    for until, expected in cases.items():
        into = tmp_path / f"until-{until}"
        rebuild(settings, bootstrap, into, until=until)
        assert _stored(into) == expected, until

    rebuild(settings, bootstrap, tmp_path / "email", lambda_name="send_email")
    assert _stored(tmp_path / "email") == {"kept": kept_enqueued}

    # Through an offset: where a live store would stand.
    rebuild(settings, bootstrap, tmp_path / "through", through={0: 3})
    assert _stored(tmp_path / "through") == {
        "gone": gone,
        "kept": kept_enqueued,
        "reborn": first_life,
    }


# -- the progress bar ----------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_printer_redraws_on_a_terminal_and_prints_lines_elsewhere() -> None:
    now = [0.0]

    def at(records: int, finished: bool = False) -> ReplayProgress:
        return ReplayProgress(1, 0, 2, records, 100 + records, records, 100, finished, 2.0)

    terminal = _Terminal()
    printer = ProgressPrinter(terminal, clock=lambda: now[0])
    printer(at(10))
    now[0] += 0.01
    printer(at(20))  # too soon: not drawn
    now[0] += 0.2
    printer(at(50))
    printer(at(100, finished=True))
    drawn = terminal.getvalue()
    assert drawn.count("\r") == 3 and drawn.endswith("done\n")
    assert "p1 (1/2)" in drawn and " 50%" in drawn and "50 records (150 in all, 75/s)" in drawn

    plain = io.StringIO()
    printer = ProgressPrinter(plain, clock=lambda: now[0])
    for records in range(0, 100, 10):
        printer(at(records))
        now[0] += 0.125
    printer(at(100, finished=True))
    lines = plain.getvalue().splitlines()
    assert "\r" not in plain.getvalue()
    assert len(lines) == 4  # at 0 s, 0.5 s, 1 s and the finish
    assert lines[-1].endswith("done") and "[" + "#" * 30 + "]" in lines[-1]


def test_the_cli_replays_verifies_and_exits_1_on_a_difference(
    processor: Processor, settings_4: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from atf_es.cli import main

    sender = CommandSender(settings_4)
    ids = _send_workload(sender, "cli", 200)
    _idle(processor, 200)
    common = ["--bootstrap", _bootstrap(settings_4), "--topic-prefix", settings_4.topic_prefix]
    common += ["--partitions", "4", "--no-progress"]
    live = str(processor.data_dir)
    assert main(["replay", str(tmp_path / "r1"), "--verify", live, *common]) == 0
    out = capsys.readouterr().out
    assert "0 differences" in out

    assert main(["replay", str(tmp_path / "r2"), "--lambda", "report", *common]) == 0
    assert len(_stored(tmp_path / "r2")) == 100
    capsys.readouterr()

    processor.stop()
    corrupt = tmp_path / "corrupt"
    _corrupt_copy(processor.data_dir, corrupt, ids[1], ids[4])
    assert main(["replay", str(tmp_path / "r3"), "--verify", str(corrupt), *common]) == 1
    assert ids[1] in capsys.readouterr().out

    bad = main(["replay", str(tmp_path / "r4"), "--until", "soon", *common])
    assert bad == 2 and "is not a time" in capsys.readouterr().err
    again = main(["replay", str(tmp_path / "r1"), *common])
    assert again == 1 and "atf-es replay:" in capsys.readouterr().err
