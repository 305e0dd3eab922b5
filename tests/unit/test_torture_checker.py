"""The torture checker on hand-made histories: it must catch every kind of breakage."""

from __future__ import annotations

from dataclasses import replace

import pytest

from atf_es.events import (
    Accepted,
    ClaimTask,
    Event,
    Heartbeat,
    LambdaPolicy,
    Outcome,
    ScheduleTask,
    SetResult,
    Task,
    TaskStatus,
    TimerFired,
    decide,
    evolve,
)
from atf_es.events.lifecycle import Input
from torture.checker import (
    NEVER,
    Death,
    Execution,
    Fault,
    LedgerError,
    check,
    execution_end,
    parse_ledger,
)

POLICY = LambdaPolicy(name="torture", backoff_jitter=0.0, heartbeat_timeout_ms=60_000)
T0 = 1_700_000_000_000
MS = 1_000_000  # ns


class History:
    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.task: Task | None = None
        self.entries: list[tuple[Event, Task]] = []
        self.now = T0

    def do(self, item: Input) -> History:
        self.now += 10
        decision = decide(self.task, item, self.now, POLICY)
        assert isinstance(decision, Accepted), decision
        for event in decision.events:
            self.task = evolve(self.task, event)
            self.entries.append((event, self.task))
        return self

    def run(self, outcome: Outcome = Outcome.SUCCESS) -> History:
        """Enqueue (if due), claim, start and finish with ``outcome``."""
        assert self.task is not None
        if self.task.status is not TaskStatus.ENQUEUED:
            self.now = max(self.now, self.task.next_trigger_at or self.now)
            self.do(TimerFired(self.task_id))
        lease = self.task.lease
        self.do(ClaimTask("c", self.task_id, lease, "w"))
        self.do(Heartbeat("c", self.task_id, lease, "w"))
        return self.do(SetResult("c", self.task_id, lease, "w", outcome, "boom"))


def scheduled(task_id: str = "t1") -> History:
    return History(task_id).do(ScheduleTask("c", task_id, "torture", "default", 0, b"", T0))


def run(
    lease: int, start: int, end: int | None, outcome: str | None = "ok", pid: int = 1
) -> Execution:
    return Execution("t1", lease, pid, start * MS, None if end is None else end * MS, outcome)


def test_the_ledger_pairs_ends_with_their_starts() -> None:
    lines = [
        "start t1 1 10 100",
        "start t2 1 11 150",
        "end t1 1 10 200 retry",
        "start t1 2 10 300",
        "",
    ]
    assert parse_ledger(lines) == [
        Execution("t1", 1, 10, 100, 200, "retry"),
        Execution("t2", 1, 11, 150, None, None),
        Execution("t1", 2, 10, 300, None, None),
    ]


@pytest.mark.parametrize("line", ["end t1 1 10 200 ok", "begin t1 1 10 5", "start t1 x 10 5"])
def test_a_bad_ledger_line_is_an_error_that_names_it(line: str) -> None:
    with pytest.raises(LedgerError, match="line 1"):
        parse_ledger([line])


def test_an_execution_without_an_end_ends_when_its_process_died() -> None:
    deaths = {1: [Death(1, 50, "killed"), Death(1, 500, "killed")]}
    assert execution_end(run(1, 0, None), deaths) == 50
    assert execution_end(Execution("t1", 1, 1, 100, None, None), deaths) == 500
    assert execution_end(Execution("t1", 1, 2, 100, None, None), deaths) == NEVER


def test_a_clean_history_has_no_problem() -> None:
    history = scheduled().run(Outcome.RETRIABLE).run()
    report = check(["t1"], {"t1": history.entries}, [run(1, 0, 5, "retry"), run(2, 10, 15, "ok")])
    assert report.ok, report.problems()
    assert (report.tasks, report.duplicates, report.statuses["success"]) == (1, 0, 1)


def test_a_task_that_never_finished_is_lost() -> None:
    history = scheduled()
    report = check(["t1", "t2"], {"t1": history.entries}, [])
    assert len(report.lost) == 2
    assert "no event" in " ".join(report.lost) and "still" in " ".join(report.lost)


def test_overlapping_executions_are_caught_even_without_end_lines() -> None:
    history = scheduled().run()
    killed = Execution("t1", 1, 7, 0, None, None)
    second = run(1, 5, 9)
    report = check(
        ["t1"], {"t1": history.entries}, [killed, second], deaths=[Death(7, 20 * MS, "kill")]
    )
    assert report.overlaps and "started at" in report.overlaps[0]
    # Had the process died before the second start, there would be no overlap.
    report = check(
        ["t1"], {"t1": history.entries}, [killed, run(2, 30, 40)], deaths=[Death(7, 2 * MS, "k")]
    )
    assert not report.overlaps


def test_an_execution_that_never_ended_overlaps_what_follows() -> None:
    history = scheduled().run()
    report = check(["t1"], {"t1": history.entries}, [run(1, 0, None, None, pid=3), run(2, 99, 100)])
    assert report.overlaps and "never ended" in report.overlaps[0]


def test_a_result_without_a_matching_execution_is_a_stale_result() -> None:
    history = scheduled().run()
    report = check(["t1"], {"t1": history.entries}, [run(1, 0, 5, "retry")])
    assert (
        report.stale_results
        and "no execution with that lease ended 'ok'" in report.stale_results[0]
    )


def test_a_result_on_an_old_lease_is_a_stale_result() -> None:
    history = scheduled().run()
    event, task = history.entries[-1]
    forged = replace(event, lease=0)  # type: ignore[type-var]
    entries = [*history.entries[:-1], (forged, task)]
    report = check(["t1"], {"t1": entries}, [run(1, 0, 5)])
    assert any("while the current lease was 1" in s for s in report.stale_results)


def test_one_lease_running_twice_is_caught() -> None:
    history = scheduled().run()
    report = check(["t1"], {"t1": history.entries}, [run(1, 0, 5), run(1, 10, 15)])
    assert any("ran more than once" in s for s in report.stale_results)


def test_a_snapshot_that_disagrees_with_the_fold_is_caught() -> None:
    history = scheduled().run()
    event, task = history.entries[-1]
    entries = [*history.entries[:-1], (event, replace(task, attempts=99))]
    report = check(["t1"], {"t1": entries}, [run(1, 0, 5)])
    assert report.fold_mismatches


def test_a_store_that_disagrees_with_the_log_is_caught() -> None:
    history = scheduled().run()
    assert history.task is not None
    entries = {"t1": history.entries}
    assert check(["t1"], entries, [run(1, 0, 5)], stores={"t1": history.task}).ok
    report = check(["t1"], entries, [run(1, 0, 5)], stores={"t1": replace(history.task, seq=1)})
    assert report.store_mismatches
    assert check(["t1"], entries, [run(1, 0, 5)], stores={}).store_mismatches


def test_two_different_events_at_one_seq_are_caught() -> None:
    history = scheduled().run()
    event, task = history.entries[-1]
    entries = [*history.entries, (replace(event, at=event.at + 1), task)]  # type: ignore[type-var]
    report = check(["t1"], {"t1": entries}, [run(1, 0, 5)])
    assert any("two different events" in s for s in report.history_problems)


def test_a_duplicate_is_explained_only_by_a_disruptive_fault_between_the_runs() -> None:
    first_ran_twice = scheduled()
    first_ran_twice.do(TimerFired("t1"))
    # The first execution's result was never recorded; a timeout re-enqueued it.
    first_ran_twice.do(ClaimTask("c", "t1", 1, "w")).do(Heartbeat("c", "t1", 1, "w"))
    assert first_ran_twice.task is not None
    first_ran_twice.now = first_ran_twice.task.next_trigger_at or 0
    first_ran_twice.do(TimerFired("t1")).run()
    entries = {"t1": first_ran_twice.entries}
    runs = [run(1, 0, 5, "ok"), run(2, 100, 105, "ok")]
    unexplained = check(["t1"], entries, runs)
    assert (unexplained.duplicates, len(unexplained.unexplained_duplicates)) == (1, 1)
    garbage = Fault("garbage", "frontend", 50 * MS, 51 * MS, disruptive=False)
    assert check(["t1"], entries, runs, faults=[garbage]).unexplained_duplicates
    before = Fault("kill", "hsc", -20 * MS, -10 * MS)
    assert check(["t1"], entries, runs, faults=[before]).unexplained_duplicates
    assert check(["t1"], entries, runs, faults=[before], grace_ns=10 * MS).ok
    assert not check(["t1"], entries, runs, faults=[before], grace_ns=9 * MS).ok
    during = Fault("kill", "hsc", 3 * MS, 4 * MS)
    explained = check(["t1"], entries, runs, faults=[during])
    assert explained.duplicates == 1 and explained.ok, explained.problems()


def test_an_unexpected_terminal_state_is_reported() -> None:
    history = scheduled().run(Outcome.FATAL)
    report = check(["t1"], {"t1": history.entries}, [run(1, 0, 5, "retry")])
    assert report.unexpected_terminal and "fatal" in report.unexpected_terminal[0]
