"""The lifecycle, one transition at a time, with explicit times."""

from __future__ import annotations

from dataclasses import replace

import pytest

from atf_es.events import (
    Accepted,
    CancelTask,
    ClaimTask,
    DropTask,
    Event,
    Heartbeat,
    LambdaPolicy,
    Outcome,
    QueryTask,
    RedriveTask,
    RejectCode,
    Rejected,
    ScheduleTask,
    SequenceError,
    SetResult,
    Task,
    TaskStatus,
    TimerFired,
    TimerReason,
    backoff_ms,
    decide,
    evolve,
    replay,
)
from atf_es.events.lifecycle import Input

POLICY = LambdaPolicy(name="send_email", max_attempts=2, backoff_jitter=0.0)
T0 = 1_700_000_000_000


class Run:
    """Feeds inputs through decide/evolve and keeps the history."""

    def __init__(self) -> None:
        self.task: Task | None = None
        self.events: list[Event] = []

    def do(self, item: Input, now: int) -> Event | None:
        decision = decide(self.task, item, now, POLICY)
        assert isinstance(decision, Accepted), decision
        for event in decision.events:
            self.task = evolve(self.task, event)
            self.events.append(event)
        return decision.events[0] if decision.events else None

    def refuse(self, item: Input, now: int) -> Rejected:
        decision = decide(self.task, item, now, POLICY)
        assert isinstance(decision, Rejected), decision
        return decision

    @property
    def t(self) -> Task:
        assert self.task is not None
        return self.task


def schedule(run_at: int = T0, priority: int = 1) -> ScheduleTask:
    return ScheduleTask("c1", "t1", "send_email", "password_reset", priority, b"hi", run_at)


def started(run: Run, now: int = T0) -> Run:
    run.do(schedule(now), now)
    run.do(TimerFired("t1"), now)
    run.do(ClaimTask("c2", "t1", run.t.lease, "w1"), now + 10)
    run.do(Heartbeat("c3", "t1", run.t.lease, "w1"), now + 20)
    return run


def test_seed_table_new_waits_for_its_scheduled_time() -> None:
    run = Run()
    run.do(schedule(T0 + 5_000), T0)
    assert run.t.status is TaskStatus.NEW
    assert run.t.next_trigger_at == T0 + 5_000
    assert run.do(TimerFired("t1"), T0 + 4_999) is None
    event = run.do(TimerFired("t1"), T0 + 5_000)
    assert event is not None and event.cause.name == TimerReason.DUE
    assert run.t.status is TaskStatus.ENQUEUED
    assert run.t.lease == 1


def test_a_starting_claim_is_the_first_heartbeat() -> None:
    run = Run()
    run.do(schedule(), T0)
    run.do(TimerFired("t1"), T0)
    claim = ClaimTask("c2", "t1", 1, "w1", start=True)
    run.do(claim, T0 + 10)
    claimed, began = run.events[-2:]
    assert (type(claimed).__name__, type(began).__name__) == ("TaskClaimed", "TaskStarted")
    assert (claimed.seq, began.seq) == (3, 4)
    assert (began.cause.name, began.cause.command_id) == ("ClaimTask", "c2")
    assert (run.t.status, run.t.worker, run.t.attempts) == (TaskStatus.PROCESSING, "w1", 1)
    assert run.t.started_at == run.t.heartbeat_at == T0 + 10
    assert run.t.next_trigger_at == T0 + 10 + POLICY.heartbeat_timeout_ms
    # The claim again after a lost reply: held, nothing new; another worker: refused.
    assert run.do(replace(claim, command_id="c3"), T0 + 20) is None
    assert len(run.events) == 4
    other = run.refuse(ClaimTask("c4", "t1", 1, "w2", start=True), T0 + 20)
    assert other.code is RejectCode.WRONG_STATE
    # Silent after that: the heartbeat timeout runs from the claim.
    event = run.do(TimerFired("t1"), T0 + 10 + POLICY.heartbeat_timeout_ms)
    assert event is not None and event.cause.name == TimerReason.HEARTBEAT_TIMEOUT


def test_a_starting_claim_after_a_plain_one_starts_it() -> None:
    run = Run()
    run.do(schedule(), T0)
    run.do(TimerFired("t1"), T0)
    run.do(ClaimTask("c2", "t1", 1, "w1"), T0 + 10)
    assert run.refuse(ClaimTask("c3", "t1", 1, "w2", start=True), T0 + 15).code is (
        RejectCode.WRONG_STATE
    )
    event = run.do(ClaimTask("c3", "t1", 1, "w1", start=True), T0 + 20)
    assert type(event).__name__ == "TaskStarted"
    assert run.t.status is TaskStatus.PROCESSING
    # A plain claim of a started task is not a heartbeat.
    assert run.refuse(ClaimTask("c4", "t1", 1, "w1"), T0 + 30).code is RejectCode.WRONG_STATE
    assert run.refuse(ClaimTask("c5", "t1", 0, "w1", start=True), T0 + 30).code is (
        RejectCode.STALE_LEASE
    )


def test_seed_table_enqueued_times_out_with_a_new_lease() -> None:
    run = Run()
    run.do(schedule(), T0)
    run.do(TimerFired("t1"), T0)
    assert run.t.next_trigger_at == T0 + POLICY.enqueue_timeout_ms
    event = run.do(TimerFired("t1"), T0 + POLICY.enqueue_timeout_ms)
    assert event is not None and event.cause.name == TimerReason.ENQUEUE_TIMEOUT
    assert run.t.lease == 2
    assert run.refuse(ClaimTask("c", "t1", 1, "w1"), T0).code is RejectCode.STALE_LEASE


def test_seed_table_claimed_times_out_and_counts_the_attempt() -> None:
    run = Run()
    run.do(schedule(), T0)
    run.do(TimerFired("t1"), T0)
    run.do(ClaimTask("c2", "t1", 1, "w1"), T0 + 10)
    assert run.t.status is TaskStatus.CLAIMED
    assert run.t.next_trigger_at == T0 + 10 + POLICY.claim_timeout_ms
    event = run.do(TimerFired("t1"), T0 + 10 + POLICY.claim_timeout_ms)
    assert event is not None and event.cause.name == TimerReason.CLAIM_TIMEOUT
    assert (run.t.status, run.t.lease, run.t.attempts) == (TaskStatus.ENQUEUED, 2, 1)


def test_seed_table_processing_is_kept_alive_by_heartbeats() -> None:
    run = started(Run())
    assert run.t.status is TaskStatus.PROCESSING
    assert run.t.next_trigger_at == T0 + 20 + POLICY.heartbeat_timeout_ms
    run.do(Heartbeat("c4", "t1", 1, "w1"), T0 + 5_000)
    assert run.t.next_trigger_at == T0 + 5_000 + POLICY.heartbeat_timeout_ms
    event = run.do(TimerFired("t1"), T0 + 5_000 + POLICY.heartbeat_timeout_ms)
    assert event is not None and event.cause.name == TimerReason.HEARTBEAT_TIMEOUT
    assert (run.t.status, run.t.lease) == (TaskStatus.ENQUEUED, 2)


def test_seed_table_retriable_failure_backs_off_then_dead_letters() -> None:
    run = started(Run())
    run.do(SetResult("c5", "t1", 1, "w1", Outcome.RETRIABLE, "smtp down"), T0 + 100)
    assert run.t.status is TaskStatus.RETRIABLE_FAILURE
    assert run.t.next_trigger_at == T0 + 100 + backoff_ms(POLICY, 1, "t1") == T0 + 1_100
    assert run.t.last_error == "smtp down"
    run.do(TimerFired("t1"), T0 + 1_100)
    run.do(ClaimTask("c6", "t1", 2, "w2"), T0 + 1_200)
    run.do(SetResult("c7", "t1", 2, "w2", Outcome.RETRIABLE, "still down"), T0 + 1_300)
    assert run.t.status is TaskStatus.DEAD_LETTERED
    assert run.t.next_trigger_at is None
    assert run.t.last_error == "still down"


def test_success_and_fatal_are_terminal_and_absorbing() -> None:
    for outcome, status in [
        (Outcome.SUCCESS, TaskStatus.SUCCESS),
        (Outcome.FATAL, TaskStatus.FATAL_FAILURE),
    ]:
        run = started(Run())
        run.do(SetResult("c5", "t1", 1, "w1", outcome, "bad input", b"ok"), T0 + 100)
        assert run.t.status is status and run.t.next_trigger_at is None
        assert run.t.finished_at == T0 + 100
        # The same result again (a lost reply) is accepted and changes nothing.
        assert run.do(SetResult("c5b", "t1", 1, "w1", outcome, "bad input"), T0 + 200) is None
        assert run.refuse(CancelTask("c6", "t1", "me"), T0).code is RejectCode.WRONG_STATE
        assert run.refuse(RedriveTask("c7", "t1", "me"), T0).code is RejectCode.WRONG_STATE
        assert run.do(TimerFired("t1"), T0 + 10**9) is None


def test_stale_lease_is_rejected_everywhere() -> None:
    run = started(Run())
    for item in (
        ClaimTask("x", "t1", 0, "w1"),
        Heartbeat("x", "t1", 0, "w1"),
        SetResult("x", "t1", 2, "w1", Outcome.SUCCESS),
    ):
        rejected = run.refuse(item, T0 + 50)
        assert rejected.code is RejectCode.STALE_LEASE
        assert "current lease is 1" in rejected.message


def test_a_claim_needs_the_enqueued_state() -> None:
    run = Run()
    run.do(schedule(T0 + 1_000), T0)
    assert run.refuse(ClaimTask("x", "t1", 0, "w1"), T0).code is RejectCode.WRONG_STATE
    run.do(TimerFired("t1"), T0 + 1_000)
    run.do(ClaimTask("c2", "t1", 1, "w1"), T0 + 1_001)
    # The same worker asking again after a lost reply still holds the claim;
    # anyone else is refused.
    assert run.do(ClaimTask("c2", "t1", 1, "w1"), T0 + 1_002) is None
    assert run.refuse(ClaimTask("c3", "t1", 1, "w2"), T0 + 1_002).code is RejectCode.WRONG_STATE


def test_cancel_stops_a_running_task_at_its_next_heartbeat() -> None:
    run = started(Run())
    run.do(CancelTask("c5", "t1", "alice", "no longer needed"), T0 + 30)
    assert run.t.status is TaskStatus.CANCELLED
    assert run.refuse(Heartbeat("c6", "t1", 1, "w1"), T0 + 40).code is RejectCode.CANCELLED
    assert run.refuse(SetResult("c7", "t1", 1, "w1", Outcome.SUCCESS), T0).code is (
        RejectCode.CANCELLED
    )
    assert run.do(CancelTask("c8", "t1", "alice"), T0 + 50) is None  # idempotent


def test_redrive_gives_a_dead_letter_fresh_attempts() -> None:
    run = started(Run())
    run.do(SetResult("c5", "t1", 1, "w1", Outcome.RETRIABLE, "e"), T0 + 100)
    run.do(TimerFired("t1"), T0 + 2_000)
    run.do(ClaimTask("c6", "t1", 2, "w1"), T0 + 2_001)
    run.do(SetResult("c7", "t1", 2, "w1", Outcome.RETRIABLE, "e"), T0 + 2_002)
    assert run.t.status is TaskStatus.DEAD_LETTERED
    run.do(RedriveTask("c8", "t1", "bob", "fixed in v2"), T0 + 3_000)
    assert (run.t.status, run.t.attempts, run.t.next_trigger_at) == (TaskStatus.NEW, 0, T0 + 3_000)
    run.do(TimerFired("t1"), T0 + 3_000)
    assert run.t.lease == 3


def test_drop_ends_waiting_tasks_but_not_running_ones() -> None:
    run = Run()
    run.do(schedule(T0 + 1_000), T0)
    run.do(DropTask("c2", "t1", "send_email/marketing"), T0 + 1)
    assert run.t.status is TaskStatus.DROPPED and run.t.next_trigger_at is None
    running = started(Run())
    rejected = running.refuse(DropTask("c9", "t1", "send_email"), T0 + 30)
    assert rejected.code is RejectCode.WRONG_STATE


def test_schedule_validation_names_the_field() -> None:
    bad = ScheduleTask("c", "t1", "send_email", "not ok!", 7, b"x" * 2_000_000, -5)
    decision = decide(None, bad, T0, POLICY)
    assert isinstance(decision, Rejected) and decision.code is RejectCode.INVALID
    for phrase in ("collection", "priority 7", "payload is 2000000 bytes", "run_at"):
        assert phrase in decision.message
    unknown = decide(None, schedule(), T0, None)
    assert isinstance(unknown, Rejected) and unknown.code is RejectCode.UNKNOWN_LAMBDA


def test_scheduling_the_same_task_twice() -> None:
    run = Run()
    run.do(schedule(), T0)
    assert run.do(schedule(), T0 + 1) is None
    other = ScheduleTask("c9", "t1", "send_email", "password_reset", 1, b"other", T0)
    assert run.refuse(other, T0).code is RejectCode.ALREADY_EXISTS


def test_unknown_task() -> None:
    decision = decide(None, ClaimTask("c", "nope", 1, "w"), T0, POLICY)
    assert isinstance(decision, Rejected) and decision.code is RejectCode.NOT_FOUND
    assert decide(None, TimerFired("nope"), T0, POLICY) == Accepted()


def test_evolve_rejects_gaps_and_ignores_repeats() -> None:
    run = started(Run())
    assert replay(run.events) == run.t
    assert evolve(run.t, run.events[1]) == run.t
    with pytest.raises(SequenceError, match="gap"):
        evolve(replay(run.events[:1]), run.events[2])
    with pytest.raises(SequenceError, match="unknown task"):
        evolve(None, run.events[1])


def test_backoff_grows_caps_and_is_deterministic() -> None:
    policy = LambdaPolicy(name="l", backoff_base_ms=100, backoff_max_ms=1_000, backoff_jitter=0.5)
    delays = [backoff_ms(policy, attempt, "t1") for attempt in range(1, 10)]
    assert delays == [backoff_ms(policy, attempt, "t1") for attempt in range(1, 10)]
    ceilings = [min(1_000, 100 * 2 ** (a - 1)) for a in range(1, 10)]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling * 0.5 <= delay <= ceiling
    assert len({backoff_ms(policy, 9, f"t{i}") for i in range(50)}) > 10, "jitter must spread"
    with pytest.raises(ValueError, match="attempt"):
        backoff_ms(policy, 0, "t1")


def test_policy_validation_lists_every_problem() -> None:
    with pytest.raises(ValueError) as caught:
        LambdaPolicy(
            name="bad name",
            priorities=0,
            max_attempts=0,
            heartbeat_interval_ms=10_000,
            heartbeat_timeout_ms=20_000,
            backoff_jitter=2,
        )
    text = str(caught.value)
    for phrase in (
        "name 'bad name'",
        "priorities must be between 1 and 10",
        "max_attempts must be at least 1",
        "backoff_jitter",
        "heartbeat_timeout_ms (20000) must exceed 3 x heartbeat_interval_ms",
    ):
        assert phrase in text


def test_names_reject_a_trailing_newline() -> None:
    with pytest.raises(ValueError, match="name"):
        LambdaPolicy(name="send_email\n")
    decision = decide(None, replace(schedule(), collection="default\n"), T0, POLICY)
    assert isinstance(decision, Rejected) and "collection" in decision.message


def test_a_query_reads_and_changes_nothing() -> None:
    run = started(Run())
    before = run.t
    assert run.do(QueryTask("q1", "t1"), T0 + 99) is None
    assert run.t == before
    missing = decide(None, QueryTask("q2", "nope"), T0, POLICY)
    assert isinstance(missing, Rejected) and missing.code is RejectCode.NOT_FOUND
    # A read works even when the task's lambda is no longer defined.
    assert decide(before, QueryTask("q3", "t1"), T0, None) == Accepted()
