"""The overview fold: counts, due tasks, delivery latency, with explicit times."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from atf_es.events import Task, TaskStatus
from atf_es.events.codec import encode_event
from atf_es.events.transitions import Cause, TaskStarted, TaskSucceeded, TimerReason
from atf_es.services.overview import LatencyHistogram, OverviewState

T0 = 1_800_000_000_000
CAUSE = Cause.timer(TimerReason.DUE)


def task(task_id: str, status: TaskStatus, seq: int, **fields: object) -> Task:
    base = Task(
        task_id=task_id,
        lambda_name="mail",
        collection="news",
        priority=0,
        payload=b"",
        status=status,
        seq=seq,
        created_at=T0,
        scheduled_at=T0,
        next_trigger_at=T0,
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def started(task_id: str, seq: int, at: int) -> TaskStarted:
    return TaskStarted(task_id, seq, at, CAUSE, 1, "w", at + 30_000)


def run_through(state: OverviewState, task_id: str, due: int, start: int) -> None:
    """new (due at ``due``), enqueued, claimed, started at ``start``, succeeded."""
    state.apply_task(task(task_id, TaskStatus.NEW, 1, next_trigger_at=due, scheduled_at=due))
    state.apply_task(task(task_id, TaskStatus.ENQUEUED, 2, enqueued_at=due + 1))
    state.apply_task(task(task_id, TaskStatus.CLAIMED, 3))
    state.apply_task(task(task_id, TaskStatus.PROCESSING, 4), started(task_id, 4, start))
    state.apply_task(task(task_id, TaskStatus.SUCCESS, 5, finished_at=start + 5))


def test_counts_follow_each_task_to_its_latest_status() -> None:
    state = OverviewState()
    run_through(state, "a", T0, T0 + 100)
    state.apply_task(task("b", TaskStatus.NEW, 1, collection="billing"))
    state.apply_task(task("c", TaskStatus.ENQUEUED, 2))
    found = state.overview("mail", T0 + 1_000)
    assert found.counts == {
        ("billing", TaskStatus.NEW): 1,
        ("news", TaskStatus.ENQUEUED): 1,
        ("news", TaskStatus.SUCCESS): 1,
    }
    assert state.lambdas() == ["mail"]
    assert len(state) == 3


def test_a_stale_record_is_ignored_and_a_tombstone_removes_the_task() -> None:
    state = OverviewState()
    state.apply_task(task("a", TaskStatus.SUCCESS, 5))
    state.apply_task(task("a", TaskStatus.ENQUEUED, 2))  # an older record read later
    assert state.overview("mail", T0).counts == {("news", TaskStatus.SUCCESS): 1}
    state.apply(b"a", None)
    assert state.overview("mail", T0).counts == {}
    assert len(state) == 0


def test_records_from_the_wire_are_decoded() -> None:
    state = OverviewState()
    after = task("a", TaskStatus.SUCCESS, 5, finished_at=T0)
    state.apply(b"a", encode_event(TaskSucceeded("a", 5, T0, CAUSE, 1, None), after))
    state.apply(b"b", b"not avro")
    assert state.overview("mail", T0).counts == {("news", TaskStatus.SUCCESS): 1}
    assert state.bad_records == 1


def test_delivery_latency_is_start_minus_due_in_the_interval_of_the_start() -> None:
    state = OverviewState(interval_ms=1_000)
    state.sample(T0)
    for n, latency in enumerate([10, 20, 30, 40, 900]):
        run_through(state, f"t{n}", T0, T0 + latency)
    run_through(state, "late", T0 + 1_500, T0 + 2_000)
    points = state.overview("mail", T0 + 3_000).latency
    assert [(p.at_ms, p.started) for p in points] == [(T0 + 1_000, 5), (T0 + 2_000 + 1_000, 1)]
    first = points[0]
    assert first.max_ms == 900
    assert 28 <= first.p50_ms <= 32  # 30, within a bin
    assert 855 <= first.p95_ms <= 900
    assert points[1].p50_ms == points[1].max_ms == 500


def test_a_repeated_start_at_the_same_seq_counts_once() -> None:
    state = OverviewState()
    state.sample(T0)
    state.apply_task(task("a", TaskStatus.NEW, 1, next_trigger_at=T0))
    state.apply_task(task("a", TaskStatus.ENQUEUED, 2, enqueued_at=T0))
    state.apply_task(task("a", TaskStatus.PROCESSING, 3), started("a", 3, T0 + 50))
    state.apply_task(task("a", TaskStatus.PROCESSING, 3), started("a", 3, T0 + 60))
    (point,) = state.overview("mail", T0 + 10_000).latency
    assert point.started == 1


def test_a_task_held_by_a_gate_keeps_its_first_due_time() -> None:
    state = OverviewState()
    state.sample(T0)
    state.apply_task(task("a", TaskStatus.NEW, 1, next_trigger_at=T0))
    state.apply_task(task("a", TaskStatus.ENQUEUED, 2, enqueued_at=T0 + 10))
    state.apply_task(task("a", TaskStatus.NEW, 3, next_trigger_at=T0 + 4_000))  # TaskHeld
    state.apply_task(task("a", TaskStatus.ENQUEUED, 4, enqueued_at=T0 + 4_000))
    state.apply_task(task("a", TaskStatus.PROCESSING, 5), started("a", 5, T0 + 4_200))
    (point,) = state.overview("mail", T0 + 10_000).latency
    assert point.max_ms == 4_200


def test_queue_depth_counts_enqueued_tasks_and_due_tasks_not_enqueued() -> None:
    state = OverviewState(interval_ms=1_000)
    state.apply_task(task("due", TaskStatus.NEW, 1, next_trigger_at=T0 - 5))
    state.apply_task(task("later", TaskStatus.NEW, 1, next_trigger_at=T0 + 1_500))
    state.apply_task(task("queued", TaskStatus.ENQUEUED, 2))
    state.apply_task(task("claimed", TaskStatus.CLAIMED, 3))
    state.apply_task(task("running", TaskStatus.PROCESSING, 4))
    state.sample(T0)
    state.sample(T0 + 1_000)
    state.sample(T0 + 2_000)  # "later" is due now
    state.apply_task(task("due", TaskStatus.ENQUEUED, 2, enqueued_at=T0 + 2_100))
    state.sample(T0 + 3_000)
    state.apply_task(task("later", TaskStatus.CANCELLED, 2))
    state.sample(T0 + 4_000)
    depth = state.overview("mail", T0 + 4_000).depth
    assert [(p.enqueued, p.due) for p in depth] == [(2, 1), (2, 1), (2, 2), (3, 1), (3, 0)]
    assert state.sampling_since == T0


def test_samples_older_than_the_window_are_forgotten() -> None:
    state = OverviewState(interval_ms=1_000, window_ms=3_000)
    state.sample(T0)
    run_through(state, "a", T0, T0 + 10)
    for n in range(1, 6):
        state.sample(T0 + n * 1_000)
    found = state.overview("mail", T0 + 5_000)
    assert [p.at_ms for p in found.depth] == [T0 + 3_000, T0 + 4_000, T0 + 5_000]
    assert found.latency == []
    # A start older than the window is not counted at all.
    run_through(state, "b", T0, T0 + 20)
    assert state.overview("mail", T0 + 5_000).latency == []


@pytest.mark.parametrize("values", [[5], list(range(1, 101)), [0, 0, 0, 7_200_000]])
def test_histogram_percentiles_are_within_a_bin_of_the_exact_ones(values: list[int]) -> None:
    histogram = LatencyHistogram()
    for value in values:
        histogram.add(value)
    ordered = sorted(values)
    for fraction in (0.5, 0.95, 1.0):
        exact = ordered[max(1, math.ceil(fraction * len(ordered))) - 1]
        got = histogram.percentile(fraction)
        assert abs(got - exact) <= max(1, 0.06 * exact), (fraction, got, exact)
    assert histogram.max_ms == max(values)
