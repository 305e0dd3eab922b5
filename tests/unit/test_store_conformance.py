"""One conformance suite for every TaskStore adapter, plus what only RocksDB has."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atf_es.events import Task, TaskStatus
from atf_es.projections import (
    FORMAT_VERSION,
    MemoryTaskStore,
    RocksTaskStore,
    StoreError,
    StoreLockedError,
    TaskStore,
    open_or_rebuild,
)
from atf_es.projections import store as store_module

S = TaskStatus
READY = {S.NEW, S.RETRIABLE_FAILURE}
TIMEOUTS = {S.ENQUEUED, S.CLAIMED, S.PROCESSING}


def task(
    task_id: str = "t1",
    status: TaskStatus = S.NEW,
    seq: int = 1,
    trigger: int | None = 100,
    *,
    lambda_name: str = "send_email",
    collection: str = "marketing",
    priority: int = 0,
    payload: bytes = b"{}",
    finished_at: int | None = None,
) -> Task:
    return Task(
        task_id=task_id,
        lambda_name=lambda_name,
        collection=collection,
        priority=priority,
        payload=payload,
        status=status,
        seq=seq,
        created_at=10,
        scheduled_at=100,
        next_trigger_at=trigger,
        lease=seq,
        finished_at=finished_at,
    )


@pytest.fixture(params=["memory", "rocks"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskStore]:
    s: TaskStore
    s = MemoryTaskStore() if request.param == "memory" else RocksTaskStore.open(tmp_path / "db")
    with s:
        yield s


# -- rows ------------------------------------------------------------------------------


def test_get_commit_round_trip(store: TaskStore) -> None:
    t = replace(
        task(status=S.PROCESSING, trigger=500, payload=b"\x00\xff"),
        worker="w1",
        heartbeat_at=400,
        result=None,
        last_error="boom",
    )
    assert store.get("t1") is None
    store.commit([t], 0)
    assert store.get("t1") == t
    assert store.get("t2") is None
    assert list(store.tasks()) == [t]


def test_recommitting_the_same_snapshot_changes_nothing(store: TaskStore) -> None:
    t = task(status=S.ENQUEUED, trigger=200)
    store.commit([t], 5)
    before = (store.counts(), store.waiting(), store.due_timeouts(10**6, 10), store.last_offset())
    store.commit([t], 5)
    store.commit([t, t], None)
    after = (store.counts(), store.waiting(), store.due_timeouts(10**6, 10), store.last_offset())
    assert after == before
    assert store.get("t1") == t
    assert store.enqueued("send_email", 0) == 1


def test_an_older_snapshot_is_ignored(store: TaskStore) -> None:
    newer = task(status=S.CLAIMED, seq=3, trigger=300)
    store.commit([newer], 1)
    store.commit([task(status=S.NEW, seq=2, trigger=100)], 2)
    assert store.get("t1") == newer
    assert store.due_ready(("send_email", "marketing", 0), 10**6, 10) == []
    assert store.due_timeouts(10**6, 10) == [(300, "t1")]
    assert store.counts() == {("send_email", "marketing", 0, "claimed"): 1}
    assert store.last_offset() == 2


@pytest.mark.parametrize("order", ["ascending", "descending", "shuffled"])
def test_the_highest_seq_in_one_commit_wins(store: TaskStore, order: str) -> None:
    snapshots = [
        task(status=S.NEW, seq=1, trigger=100),
        task(status=S.ENQUEUED, seq=2, trigger=200),
        task(status=S.CLAIMED, seq=3, trigger=300),
    ]
    batch = {
        "ascending": snapshots,
        "descending": snapshots[::-1],
        "shuffled": [snapshots[1], snapshots[2], snapshots[0]],
    }[order]
    store.commit(batch, 7)
    assert store.get("t1") == snapshots[2]
    assert store.due_timeouts(10**6, 10) == [(300, "t1")]
    assert store.waiting() == {}
    assert store.counts() == {("send_email", "marketing", 0, "claimed"): 1}


def test_equal_seqs_in_one_commit_keep_the_first(store: TaskStore) -> None:
    first = task(status=S.NEW, seq=2, trigger=100)
    second = task(status=S.NEW, seq=2, trigger=999)
    store.commit([first, second], None)
    assert store.get("t1") == first


def test_replace_equal_lets_a_later_record_of_the_same_seq_win(store: TaskStore) -> None:
    # Restoring from a log where an aborted batch's record is followed by the
    # committed retry of the same seq (brokers that show aborted records).
    aborted = task(status=S.ENQUEUED, seq=2, trigger=100)
    committed = task(status=S.ENQUEUED, seq=2, trigger=150)
    store.commit([task(status=S.NEW, seq=1, trigger=50)], 0)
    store.commit([aborted], 1, replace_equal=True)
    store.commit([committed], 2, replace_equal=True)
    assert store.get("t1") == committed
    assert store.due_timeouts(10**6, 10) == [(150, "t1")]
    assert store.counts() == {("send_email", "marketing", 0, "enqueued"): 1}
    store.commit([aborted, committed], 3, replace_equal=True)
    assert store.get("t1") == committed, "within one call the last of a seq wins"
    store.commit([aborted], 4)
    assert store.get("t1") == committed, "without replace_equal an equal seq changes nothing"
    store.commit([task(status=S.NEW, seq=1, trigger=50)], 5, replace_equal=True)
    assert store.get("t1") == committed, "an older seq never replaces"


def test_nul_characters_are_refused_and_nothing_is_written(store: TaskStore) -> None:
    good = task("ok")
    for bad in (
        task("a\x00b"),
        task(lambda_name="l\x00"),
        task(collection="\x00c"),
    ):
        with pytest.raises(ValueError, match="NUL"):
            store.commit([good, bad], 3)
    assert store.get("ok") is None
    assert store.last_offset() == -1
    assert store.counts() == {}
    with pytest.raises(ValueError, match="64-bit"):
        store.commit([task(priority=2**63)], None)


def test_tasks_lists_every_row_in_id_byte_order(store: TaskStore) -> None:
    ids = ["b", "a", "é", "Z", "a1", "\U0001f600", "ab"]
    store.commit([task(i) for i in ids], None)
    listed = [t.task_id for t in store.tasks()]
    assert listed == sorted(ids, key=str.encode)


def test_last_id_with_prefix_is_the_greatest_id_that_starts_with_it(store: TaskStore) -> None:
    ids = ["p:a:001", "p:a:003~2", "p:a:002", "p:ab:009", "p:b:000", "p:a", "q", "p:a:\U0001f600"]
    store.commit([task(i) for i in ids], None)
    assert store.last_id_with_prefix("p:a:") == "p:a:\U0001f600"
    assert store.last_id_with_prefix("p:a:0") == "p:a:003~2"
    assert store.last_id_with_prefix("p:b:") == "p:b:000"
    assert store.last_id_with_prefix("p:c:") is None
    assert store.last_id_with_prefix("r") is None
    assert store.last_id_with_prefix("") == "q"
    store.commit([], None, deleted=["p:a:\U0001f600", "p:a:003~2"])
    assert store.last_id_with_prefix("p:a:") == "p:a:002"


# -- the indexes -----------------------------------------------------------------------


def test_the_index_entry_follows_the_status(store: TaskStore) -> None:
    def where() -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
        return store.due_ready(("send_email", "marketing", 0), 10**9, 100), store.due_timeouts(
            10**9, 100
        )

    steps: list[tuple[TaskStatus, int | None, str | None]] = [
        (S.NEW, 100, "ready"),
        (S.ENQUEUED, 200, "timeouts"),
        (S.CLAIMED, 300, "timeouts"),
        (S.PROCESSING, 400, "timeouts"),
        (S.PROCESSING, 450, "timeouts"),
        (S.RETRIABLE_FAILURE, 500, "ready"),
        (S.ENQUEUED, 600, "timeouts"),
        (S.SUCCESS, None, None),
    ]
    for seq, (status, trigger, index) in enumerate(steps, start=1):
        store.commit([task(status=status, seq=seq, trigger=trigger)], seq)
        ready, timeouts = where()
        expected = [(trigger, "t1")] if trigger is not None else []
        assert ready == (expected if index == "ready" else [])
        assert timeouts == (expected if index == "timeouts" else [])
        assert store.next_trigger() == trigger


@pytest.mark.parametrize("status", [s for s in S if s.terminal])
def test_terminal_tasks_leave_the_index(store: TaskStore, status: TaskStatus) -> None:
    store.commit([task("a", S.NEW, 1, 100), task("b", S.PROCESSING, 1, 100)], None)
    store.commit([task("a", status, 2, None), task("b", status, 2, None)], None)
    assert store.due_ready(("send_email", "marketing", 0), 10**9, 10) == []
    assert store.due_timeouts(10**9, 10) == []
    assert store.waiting() == {}
    assert store.next_trigger() is None


def test_a_terminal_snapshot_carrying_a_trigger_is_not_indexed(store: TaskStore) -> None:
    store.commit([task("a", S.SUCCESS, 1, 100)], None)
    assert store.due_ready(("send_email", "marketing", 0), 10**9, 10) == []
    assert store.due_timeouts(10**9, 10) == []
    assert store.next_trigger() is None


def test_due_timeouts_order_bounds_and_limit(store: TaskStore) -> None:
    store.commit(
        [
            task("c", S.ENQUEUED, 1, 200),
            task("a", S.CLAIMED, 1, 200),
            task("z", S.PROCESSING, 1, 50),
            task("late", S.ENQUEUED, 1, 201),
            task("ready", S.NEW, 1, 10),
            task("negative", S.ENQUEUED, 1, -5),
        ],
        None,
    )
    assert store.due_timeouts(200, 10) == [(-5, "negative"), (50, "z"), (200, "a"), (200, "c")]
    assert store.due_timeouts(199, 10) == [(-5, "negative"), (50, "z")]
    assert store.due_timeouts(200, 3) == [(-5, "negative"), (50, "z"), (200, "a")]
    assert store.due_timeouts(200, 0) == []
    assert store.due_timeouts(-6, 10) == []
    assert store.due_timeouts(-(2**64), 10) == []
    assert store.due_timeouts(2**63 - 1, 10)[-1] == (201, "late")


def test_triggers_earlier_than_every_earlier_one_are_still_found(store: TaskStore) -> None:
    # Tasks leave the index and new ones arrive in front of where the scans
    # last started: a store that seeks from where it last found a key must
    # still see every one of them.
    live: dict[str, tuple[TaskStatus, int]] = {}
    for step in range(30):
        for task_id, status, at in (
            (f"t{step}", S.ENQUEUED, 1_000 - step),
            (f"r{step}", S.NEW, 500 - step),
        ):
            store.commit([task(task_id, status, 1, at)], None)
            live[task_id] = (status, at)
            assert store.next_trigger() == min(at for _, at in live.values())
        store.commit([task(f"t{step}", S.SUCCESS, 2, None)], None)
        del live[f"t{step}"]
        store.commit([task(f"r{step}", S.ENQUEUED, 2, 700 - step)], None)
        live[f"r{step}"] = (S.ENQUEUED, 700 - step)
        assert store.next_trigger() == min(at for _, at in live.values())
    timeouts = sorted((at, t) for t, (status, at) in live.items() if status is S.ENQUEUED)
    assert store.due_timeouts(10_000, 100) == timeouts
    assert store.due_ready(("send_email", "marketing", 0), 10_000, 10) == []
    store.commit([task("late", S.NEW, 1, 5)], None)
    assert store.next_trigger() == 5
    assert store.due_ready(("send_email", "marketing", 0), 5, 10) == [(5, "late")]


def test_due_ready_is_per_queue_ordered_and_bounded(store: TaskStore) -> None:
    store.commit(
        [
            task("a2", S.NEW, 1, 20, lambda_name="a"),
            task("a1", S.RETRIABLE_FAILURE, 1, 10, lambda_name="a"),
            task("a3", S.NEW, 1, 30, lambda_name="a"),
            task("ab", S.NEW, 1, 5, lambda_name="ab"),
            task("a-hi", S.NEW, 1, 1, lambda_name="a", priority=1),
            task("a-neg", S.NEW, 1, 1, lambda_name="a", priority=-1),
            task("a-enq", S.ENQUEUED, 1, 1, lambda_name="a"),
        ],
        None,
    )
    assert store.due_ready(("a", "marketing", 0), 20, 10) == [(10, "a1"), (20, "a2")]
    assert store.due_ready(("a", "marketing", 0), 100, 2) == [(10, "a1"), (20, "a2")]
    assert store.due_ready(("a", "marketing", 0), 9, 10) == []
    assert store.due_ready(("a", "marketing", 0), 100, 0) == []
    assert store.due_ready(("a", "marketing", 0), 2**63 - 1, 10) == [
        (10, "a1"),
        (20, "a2"),
        (30, "a3"),
    ]
    assert store.due_ready(("ab", "marketing", 0), 100, 10) == [(5, "ab")]
    assert store.due_ready(("a", "marketing", 1), 100, 10) == [(1, "a-hi")]
    assert store.due_ready(("a", "marketing", -1), 100, 10) == [(1, "a-neg")]
    assert store.due_ready(("nobody", "marketing", 0), 100, 10) == []
    assert store.due_ready(("a", "marketing", 0), -(2**64), 10) == []
    with pytest.raises(ValueError, match="NUL"):
        store.due_ready(("a\x00", "marketing", 0), 100, 10)
    with pytest.raises(ValueError, match="64-bit"):
        store.due_ready(("a", "marketing", 2**63), 100, 10)
    assert store.waiting() == {
        ("a", "marketing", 0): 3,
        ("ab", "marketing", 0): 1,
        ("a", "marketing", 1): 1,
        ("a", "marketing", -1): 1,
    }
    assert store.next_trigger() == 1


def test_each_collection_is_a_queue_of_its_own(store: TaskStore) -> None:
    store.commit(
        [
            task("m1", S.NEW, 1, 10, collection="marketing"),
            task("r1", S.NEW, 1, 5, collection="reset"),
            task("m2", S.RETRIABLE_FAILURE, 1, 1, collection="marketing"),
        ],
        None,
    )
    assert store.due_ready(("send_email", "marketing", 0), 100, 10) == [(1, "m2"), (10, "m1")]
    assert store.due_ready(("send_email", "reset", 0), 100, 10) == [(5, "r1")]
    assert store.due_ready(("send_email", "mark", 0), 100, 10) == []
    assert store.waiting() == {("send_email", "marketing", 0): 2, ("send_email", "reset", 0): 1}
    assert store.enqueued("send_email", 0) == 0
    with pytest.raises(ValueError, match="NUL"):
        store.due_ready(("send_email", "x\x00", 0), 100, 10)


def test_counters_through_a_sequence_of_transitions(store: TaskStore) -> None:
    key = ("send_email", "marketing", 0)
    store.commit([task(f"t{i}", S.NEW, 1, 100 + i) for i in range(5)], 0)
    assert store.counts() == {(*key, "new"): 5}
    assert store.waiting() == {("send_email", "marketing", 0): 5}
    assert store.enqueued("send_email", 0) == 0

    store.commit([task(f"t{i}", S.ENQUEUED, 2, 1000) for i in range(3)], 1)
    assert store.counts() == {(*key, "new"): 2, (*key, "enqueued"): 3}
    assert store.waiting() == {("send_email", "marketing", 0): 2}
    assert store.enqueued("send_email", 0) == 3

    store.commit(
        [
            task("t0", S.CLAIMED, 3, 2000),
            task("t1", S.PROCESSING, 3, 3000),
            task("t3", S.CANCELLED, 2, None),
            task("other", S.ENQUEUED, 1, 5, collection="password_reset", priority=2),
        ],
        2,
    )
    assert store.counts() == {
        (*key, "new"): 1,
        (*key, "enqueued"): 1,
        (*key, "claimed"): 1,
        (*key, "processing"): 1,
        (*key, "cancelled"): 1,
        ("send_email", "password_reset", 2, "enqueued"): 1,
    }
    assert store.waiting() == {("send_email", "marketing", 0): 1}
    assert store.enqueued("send_email", 0) == 1
    assert store.enqueued("send_email", 2) == 1
    assert store.enqueued("other_lambda", 0) == 0

    store.commit(
        [
            task("t0", S.SUCCESS, 4, None),
            task("t1", S.RETRIABLE_FAILURE, 4, 5000),
            task("t2", S.DEAD_LETTERED, 3, None),
            task("t4", S.DROPPED, 2, None),
            task("other", S.CLAIMED, 2, 9, collection="password_reset", priority=2),
        ],
        3,
    )
    assert store.counts() == {
        (*key, "success"): 1,
        (*key, "retriable_failure"): 1,
        (*key, "dead_lettered"): 1,
        (*key, "cancelled"): 1,
        (*key, "dropped"): 1,
        ("send_email", "password_reset", 2, "claimed"): 1,
    }
    assert store.waiting() == {("send_email", "marketing", 0): 1}
    assert store.enqueued("send_email", 0) == 0
    assert store.enqueued("send_email", 2) == 0


def test_a_task_moving_between_queues_moves_its_counters(store: TaskStore) -> None:
    store.commit([task("t", S.NEW, 1, 10, lambda_name="a", priority=0)], None)
    store.commit([task("t", S.NEW, 2, 20, lambda_name="b", priority=3)], None)
    assert store.waiting() == {("b", "marketing", 3): 1}
    assert store.due_ready(("a", "marketing", 0), 100, 10) == []
    assert store.due_ready(("b", "marketing", 3), 100, 10) == [(20, "t")]
    assert store.counts() == {("b", "marketing", 3, "new"): 1}


def test_last_offset_never_goes_backwards(store: TaskStore) -> None:
    assert store.last_offset() == -1
    store.commit([], 4)
    assert store.last_offset() == 4
    store.commit([task()], 2)
    assert store.last_offset() == 4
    assert store.get("t1") is not None
    store.commit([], None)
    assert store.last_offset() == 4
    store.commit([task(seq=2)], 9)
    assert store.last_offset() == 9


def test_close_twice_and_use_after_close(store: TaskStore) -> None:
    store.commit([task()], 0)
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get("t1")
    with pytest.raises(StoreError, match="closed"):
        store.commit([task(seq=2)], 1)


# -- deletion and the finished index ---------------------------------------------------

Q = ("send_email", "marketing", 0)


def _everything(s: TaskStore) -> dict[str, object]:
    return {
        "rows": list(s.tasks()),
        "counts": s.counts(),
        "waiting": s.waiting(),
        "enqueued": s.enqueued("send_email", 0),
        "timeouts": s.due_timeouts(2**62, 100),
        "ready": s.due_ready(Q, 2**62, 100),
        "finished": s.finished_by(2**62, 100),
        "dead": s.finished_by(2**62, 100, dead_letters=True),
        "next": s.next_trigger(),
    }


def test_a_deleted_row_leaves_every_index_and_counter(store: TaskStore) -> None:
    store.commit(
        [
            task("ready", S.NEW, 1, 100),
            task("out", S.ENQUEUED, 2, 200),
            task("done", S.SUCCESS, 3, None, finished_at=50),
            task("dead", S.DEAD_LETTERED, 4, None, finished_at=60),
        ],
        7,
    )
    store.commit([], 8, deleted=["ready", "out", "done", "dead", "never-was"])
    for task_id in ("ready", "out", "done", "dead"):
        assert store.get(task_id) is None
    assert _everything(store) == {
        "rows": [],
        "counts": {},
        "waiting": {},
        "enqueued": 0,
        "timeouts": [],
        "ready": [],
        "finished": [],
        "dead": [],
        "next": None,
    }
    assert store.last_offset() == 8


def test_deleting_some_rows_keeps_the_others(store: TaskStore) -> None:
    keep = [task("a", S.SUCCESS, 2, None, finished_at=10), task("b", S.NEW, 1, 30)]
    store.commit([*keep, task("c", S.SUCCESS, 2, None, finished_at=20)], None)
    store.commit([], None, deleted=["c"])
    store.commit([], None, deleted=["c"])  # twice: nothing left to delete
    assert list(store.tasks()) == keep
    assert store.finished_by(100, 10) == [(10, "a")]
    assert store.counts() == {(*Q, "success"): 1, (*Q, "new"): 1}
    assert store.waiting() == {Q: 1}


def test_a_deleted_id_scheduled_again_in_the_same_commit_is_a_new_task(
    store: TaskStore,
) -> None:
    # Restoring a log that holds a tombstone and then a new TaskScheduled for
    # the same id: the new seq 1 must not lose against the old row's seq 7.
    store.commit([task("t", S.CANCELLED, 7, None, finished_at=40)], 3)
    reborn = task("t", S.NEW, 1, 500)
    store.commit([reborn], 5, deleted=["t"])
    assert store.get("t") == reborn
    assert store.finished_by(10**6, 10) == []
    assert store.due_ready(Q, 10**6, 10) == [(500, "t")]
    assert store.counts() == {(*Q, "new"): 1}
    assert store.waiting() == {Q: 1}
    # ... and the same with replace_equal, as the restore passes it.
    store.commit([task("t", S.SUCCESS, 2, None, finished_at=600)], 6)
    again = task("t", S.NEW, 1, 700)
    store.commit([again], 7, replace_equal=True, deleted=["t"])
    assert store.get("t") == again
    assert store.finished_by(10**6, 10) == []


def test_deleted_ids_are_validated_and_nothing_is_written(store: TaskStore) -> None:
    store.commit([task("a", S.SUCCESS, 1, None, finished_at=1)], 1)
    with pytest.raises(ValueError, match="NUL"):
        store.commit([task("b")], 2, deleted=["a", "x\x00y"])
    assert store.get("a") is not None
    assert store.get("b") is None
    assert store.last_offset() == 1


def test_the_finished_index_orders_bounds_limits_and_separates_dead_letters(
    store: TaskStore,
) -> None:
    store.commit(
        [
            task("s", S.SUCCESS, 3, None, finished_at=300),
            task("f", S.FATAL_FAILURE, 3, None, finished_at=100),
            task("c", S.CANCELLED, 2, None, finished_at=200),
            task("b", S.DROPPED, 2, None, finished_at=200),
            task("neg", S.SUCCESS, 2, None, finished_at=-5),
            task("d1", S.DEAD_LETTERED, 6, None, finished_at=150),
            task("d0", S.DEAD_LETTERED, 6, None, finished_at=50),
            task("live", S.NEW, 1, 10),
            task("odd", S.PROCESSING, 3, 20, finished_at=1),  # live: never indexed
            task("no-time", S.SUCCESS, 3, None),  # no finished_at: nothing to expire by
        ],
        None,
    )
    assert store.finished_by(200, 10) == [(-5, "neg"), (100, "f"), (200, "b"), (200, "c")]
    assert store.finished_by(199, 10) == [(-5, "neg"), (100, "f")]
    assert store.finished_by(300, 2) == [(-5, "neg"), (100, "f")]
    assert store.finished_by(300, 0) == []
    assert store.finished_by(-6, 10) == []
    assert store.finished_by(-(2**64), 10) == []
    assert store.finished_by(2**63 - 1, 10)[-1] == (300, "s")
    assert store.finished_by(2**64, 10)[-1] == (300, "s")
    assert store.finished_by(149, 10, dead_letters=True) == [(50, "d0")]
    assert store.finished_by(10**6, 10, dead_letters=True) == [(50, "d0"), (150, "d1")]
    # The finished index is apart from the triggers.
    assert store.next_trigger() == 10
    assert store.due_timeouts(10**6, 10) == [(20, "odd")]


def test_a_terminal_snapshot_with_a_trigger_is_finished_but_never_due(store: TaskStore) -> None:
    store.commit([task("a", S.SUCCESS, 2, 100, finished_at=90)], None)
    assert store.finished_by(90, 10) == [(90, "a")]
    assert store.due_timeouts(10**9, 10) == []
    assert store.due_ready(Q, 10**9, 10) == []
    assert store.next_trigger() is None


def test_a_redriven_dead_letter_leaves_the_finished_index(store: TaskStore) -> None:
    store.commit([task("t", S.DEAD_LETTERED, 5, None, finished_at=100)], 1)
    assert store.finished_by(100, 10, dead_letters=True) == [(100, "t")]
    store.commit([task("t", S.NEW, 6, 300)], 2)  # TaskRedriven clears finished_at
    assert store.finished_by(10**6, 10, dead_letters=True) == []
    assert store.finished_by(10**6, 10) == []
    assert store.due_ready(Q, 10**6, 10) == [(300, "t")]
    store.commit([task("t", S.SUCCESS, 9, None, finished_at=400)], 3)
    assert store.finished_by(10**6, 10) == [(400, "t")]
    assert store.finished_by(10**6, 10, dead_letters=True) == []


def test_finished_tasks_earlier_than_every_earlier_scan_are_still_found(
    store: TaskStore,
) -> None:
    # The processor scans this index on every poll and deletes from its front;
    # a store that starts its scans where the last one ended must still see
    # entries that arrive in front of it (a clock that went back, a restore).
    live: dict[str, int] = {}
    for step in range(30):
        at = 1_000 + step * 10
        store.commit([task(f"a{step}", S.SUCCESS, 2, None, finished_at=at)], None)
        live[f"a{step}"] = at
        assert store.finished_by(at - 5, 100) == sorted(
            (t, i) for i, t in live.items() if t <= at - 5
        )
        oldest = min(live, key=lambda i: live[i])
        store.commit([], None, deleted=[oldest])
        del live[oldest]
        store.commit([task(f"b{step}", S.CANCELLED, 2, None, finished_at=900 - step)], None)
        live[f"b{step}"] = 900 - step
        assert store.finished_by(10**6, 1) == [min((t, i) for i, t in live.items())]
    assert store.finished_by(10**6, 100) == sorted((t, i) for i, t in live.items())
    assert store.finished_by(10**6, 100, dead_letters=True) == []


# -- against a model, and Rocks against Memory ----------------------------------------

IDS = ["t0", "t1", "t2", "é", "\U0001f600"]
QUEUES = [("a", 0), ("a", 1), ("ab", -1)]
"""(lambda, priority) pairs; a ready queue is one of them with a collection."""
COLLECTIONS = ["x", "y"]
READY_QUEUES = [(q[0], c, q[1]) for q in QUEUES for c in COLLECTIONS]

snapshots = st.builds(
    lambda task_id, status, seq, trigger, queue, collection, finished_at: task(
        task_id,
        status,
        seq,
        # Mostly what the lifecycle produces; sometimes a terminal one with a trigger.
        trigger if status.live or seq % 5 == 0 else None,
        lambda_name=queue[0],
        priority=queue[1],
        collection=collection,
        payload=task_id.encode() * seq,
        # Terminal ones mostly with a finish time, live ones mostly without.
        finished_at=finished_at if status.terminal or seq % 4 == 0 else None,
    ),
    st.sampled_from(IDS),
    st.sampled_from(list(S)),
    st.integers(1, 6),
    st.one_of(st.none(), st.integers(0, 100)),
    st.sampled_from(QUEUES),
    st.sampled_from(COLLECTIONS),
    st.one_of(st.none(), st.integers(0, 100), st.integers(0, 100)),
)
batches = st.lists(
    st.tuples(
        st.lists(snapshots, max_size=6),
        st.one_of(st.none(), st.integers(-1, 30)),
        st.lists(st.sampled_from(IDS), max_size=3),
    ),
    min_size=1,
    max_size=12,
)


def _observe(s: TaskStore) -> dict[str, object]:
    return {
        "rows": {t.task_id: t for t in s.tasks()},
        "counts": s.counts(),
        "waiting": s.waiting(),
        "enqueued": {q: s.enqueued(*q) for q in QUEUES},
        "timeouts": s.due_timeouts(2**62, 1000),
        "ready": {q: s.due_ready(q, 2**62, 1000) for q in READY_QUEUES},
        "next": s.next_trigger(),
        "offset": s.last_offset(),
        "finished": {
            (dead, at): s.finished_by(at, 1000, dead_letters=dead)
            for dead in (False, True)
            for at in FINISHED_CUTS
        },
    }


FINISHED_CUTS = (-1, 0, 37, 100, 2**62)
"""The ``at`` of every ``finished_by`` the model test asks."""


def _expected(model: dict[str, Task], offset: int) -> dict[str, object]:
    ready = {
        q: sorted(
            (t.next_trigger_at, t.task_id)
            for t in model.values()
            if t.status in READY
            and t.next_trigger_at is not None
            and (t.lambda_name, t.collection, t.priority) == q
        )
        for q in READY_QUEUES
    }
    timeouts = sorted(
        (t.next_trigger_at, t.task_id)
        for t in model.values()
        if t.status in TIMEOUTS and t.next_trigger_at is not None
    )
    triggers = [ts for entries in ready.values() for ts, _ in entries] + [ts for ts, _ in timeouts]
    return {
        "rows": model,
        "counts": dict(
            Counter(
                (t.lambda_name, t.collection, t.priority, t.status.value) for t in model.values()
            )
        ),
        "waiting": {q: len(entries) for q, entries in ready.items() if entries},
        "enqueued": {
            q: sum(
                1
                for t in model.values()
                if t.status is S.ENQUEUED and (t.lambda_name, t.priority) == q
            )
            for q in QUEUES
        },
        "timeouts": timeouts,
        "ready": ready,
        "next": min(triggers, default=None),
        "offset": offset,
        "finished": {
            (dead, at): sorted(
                (t.finished_at, t.task_id)
                for t in model.values()
                if t.status.terminal
                and t.finished_at is not None
                and t.finished_at <= at
                and (t.status is S.DEAD_LETTERED) == dead
            )
            for dead in (False, True)
            for at in FINISHED_CUTS
        },
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches)
def test_random_commit_sequences_keep_the_invariants(
    sequence: list[tuple[list[Task], int | None, list[str]]],
) -> None:
    model: dict[str, Task] = {}
    offset = -1
    with tempfile.TemporaryDirectory() as tmp:
        memory = MemoryTaskStore()
        rocks = RocksTaskStore.open(Path(tmp) / "db", cache_size=2)
        try:
            for tasks, events_offset, deleted in sequence:
                # Deletions first; the snapshots then apply to what is left.
                for task_id in deleted:
                    model.pop(task_id, None)
                for t in tasks:
                    if t.task_id not in model or t.seq > model[t.task_id].seq:
                        model[t.task_id] = t
                if events_offset is not None:
                    offset = max(offset, events_offset)
                memory.commit(tasks, events_offset, deleted=deleted)
                rocks.commit(iter(tasks), events_offset, deleted=iter(deleted))
                expected = _expected(model, offset)
                assert _observe(memory) == expected
                assert _observe(rocks) == expected
            rocks.close()
            rocks = RocksTaskStore.open(Path(tmp) / "db")
            assert _observe(rocks) == _expected(model, offset)
        finally:
            rocks.close()
            memory.close()


# -- RocksDB only ----------------------------------------------------------------------


def test_reopening_keeps_rows_indexes_counters_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with RocksTaskStore.open(path) as s:
        s.commit(
            [
                task("a", S.NEW, 1, 100, lambda_name="l", priority=1),
                task("b", S.ENQUEUED, 2, 200),
                task("c", S.SUCCESS, 5, None, finished_at=70),
                task("d", S.DEAD_LETTERED, 5, None, finished_at=80),
                task("gone", S.SUCCESS, 5, None, finished_at=60),
            ],
            40,
        )
        s.commit([], 41, deleted=["gone"])
        before = _observe_all(s)
    with RocksTaskStore.open(path) as s:
        assert _observe_all(s) == before
        assert s.enqueued("send_email", 0) == 1
        assert s.waiting() == {("l", "marketing", 1): 1}
        assert s.last_offset() == 41
        assert s.next_trigger() == 100
        assert s.finished_by(100, 10) == [(70, "c")]
        assert s.finished_by(100, 10, dead_letters=True) == [(80, "d")]
        assert s.get("gone") is None


def _observe_all(s: TaskStore) -> dict[str, object]:
    return {
        "rows": list(s.tasks()),
        "counts": s.counts(),
        "waiting": s.waiting(),
        "timeouts": s.due_timeouts(2**62, 100),
        "ready": s.due_ready(("l", "marketing", 1), 2**62, 100),
        "offset": s.last_offset(),
        "next": s.next_trigger(),
        "finished": s.finished_by(2**62, 100),
        "dead": s.finished_by(2**62, 100, dead_letters=True),
    }


def test_open_or_rebuild_sets_a_garbage_directory_aside(tmp_path: Path) -> None:
    path = tmp_path / "db"
    path.mkdir()
    (path / "junk.bin").write_bytes(b"\x00\x01garbage")
    (path / "notes.txt").write_text("not a database")
    s, rebuilt = open_or_rebuild(path)
    with s:
        assert rebuilt
        assert s.last_offset() == -1
        assert list(s.tasks()) == []
    [aside] = [p for p in tmp_path.iterdir() if p.name.startswith("db.broken-")]
    assert (aside / "junk.bin").read_bytes() == b"\x00\x01garbage"
    assert (aside / "notes.txt").read_text() == "not a database"


def test_open_or_rebuild_sets_a_corrupt_rocksdb_aside(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with RocksTaskStore.open(path) as s:
        s.commit([task()], 3)
    (path / "CURRENT").write_text("garbage\n")
    with pytest.raises(StoreError, match="cannot open"):
        RocksTaskStore.open(path)
    s, rebuilt = open_or_rebuild(path)
    with s:
        assert rebuilt
        assert s.get("t1") is None
    assert len(list(tmp_path.glob("db.broken-*"))) == 1


def test_open_or_rebuild_keeps_a_healthy_store(tmp_path: Path) -> None:
    path = tmp_path / "db"
    s, rebuilt = open_or_rebuild(path)
    with s:
        assert not rebuilt
        s.commit([task()], 3)
    s, rebuilt = open_or_rebuild(path)
    with s:
        assert not rebuilt
        assert s.last_offset() == 3
        assert s.get("t1") == task()
    assert list(tmp_path.glob("db.broken-*")) == []


def test_another_format_version_is_refused_and_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "db"
    with RocksTaskStore.open(path) as s:
        s.commit([task()], 3)
    monkeypatch.setattr(store_module, "FORMAT_VERSION", FORMAT_VERSION + 1)
    with pytest.raises(
        StoreError,
        match=f"format version b'{FORMAT_VERSION}', this build reads version {FORMAT_VERSION + 1}",
    ):
        RocksTaskStore.open(path)
    s, rebuilt = open_or_rebuild(path)
    with s:
        assert rebuilt
        assert s.get("t1") is None
    assert len(list(tmp_path.glob("db.broken-*"))) == 1


def test_a_file_in_place_of_the_directory_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "db"
    path.write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        RocksTaskStore.open(path)


def test_a_second_open_in_this_process_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with RocksTaskStore.open(path):
        with pytest.raises(StoreLockedError, match="already open"):
            RocksTaskStore.open(path)
        # A live owner's store is not broken: never set it aside.
        with pytest.raises(StoreLockedError):
            open_or_rebuild(path)
        assert list(tmp_path.glob("db.broken-*")) == []


def test_an_open_in_another_process_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "db"
    RocksTaskStore.open(path).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys
                from atf_es.projections import RocksTaskStore
                with RocksTaskStore.open({str(path)!r}):
                    print("open", flush=True)
                    sys.stdin.read()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreLockedError, match="already open"):
            RocksTaskStore.open(path)
    finally:
        holder.communicate("", timeout=30)
    with RocksTaskStore.open(path):
        pass


def test_close_releases_the_lock_even_mid_scan(tmp_path: Path) -> None:
    path = tmp_path / "db"
    s = RocksTaskStore.open(path)
    s.commit([task(f"t{i:04}", S.ENQUEUED, 1, i) for i in range(3000)], 0)
    rows = s.tasks()
    assert next(rows).task_id == "t0000"
    assert len(s.due_timeouts(10**6, 2500)) == 2500
    s.close()
    with RocksTaskStore.open(path) as again:
        assert sum(1 for _ in again.tasks()) == 3000
        assert again.due_timeouts(10**6, 5000)[-1] == (2999, "t2999")


def test_scans_cross_chunk_boundaries(tmp_path: Path) -> None:
    with RocksTaskStore.open(tmp_path / "db") as s:
        s.commit([task(f"t{i:05}", S.NEW, 1, i // 2) for i in range(2100)], None)
        due = s.due_ready(("send_email", "marketing", 0), 10**6, 2049)
        assert due == sorted((i // 2, f"t{i:05}") for i in range(2049))
        assert [t.task_id for t in s.tasks()] == [f"t{i:05}" for i in range(2100)]
