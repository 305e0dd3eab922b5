"""The torture run's checker: the ledger and the event log against the guarantees.

Pure functions over what the run recorded, so they are unit-tested on
hand-made histories (``tests/unit/test_torture_checker.py``):

- ``parse_ledger``: the executions the lambda recorded (``torture.app``);
- ``check``: every scheduled task reached a terminal state (else it is
  *lost*); no two executions of one task overlap in time; every result in the
  log came from an execution that ran with that lease and ended that way (no
  stale lease reported as the result); each task's events fold to its latest
  snapshot, and the processors' stores equal the log; every extra execution
  (a *duplicate*) falls within a recorded fault, else it is *unexplained*.

An execution with no ``end`` line ended when its process died: the harness
records each death it reaped. One whose process never died and never ended
is still running and overlaps everything after it.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from atf_es.events import (
    Event,
    Task,
    TaskEnqueued,
    TaskFailed,
    TaskScheduled,
    TaskStatus,
    TaskSucceeded,
    replay,
)

NEVER = 2**63 - 1
"""The end time of an execution that never ended."""


@dataclass(frozen=True, slots=True)
class Execution:
    """One run of the callback, as the ledger shows it."""

    task_id: str
    lease: int
    pid: int
    start_ns: int
    end_ns: int | None
    """From the ``end`` line; ``None`` when there is none (the process died first)."""
    outcome: str | None
    """``ok``, ``retry``, or ``None`` without an ``end`` line."""


@dataclass(frozen=True, slots=True)
class Death:
    """A process the harness reaped: killed by it, or exited on its own."""

    pid: int
    at_ns: int
    how: str


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault the harness injected, from its start until it was healed."""

    kind: str
    target: str
    start_ns: int
    end_ns: int
    disruptive: bool = True
    """False for faults that must not cause any extra execution (garbage input)."""


@dataclass
class Report:
    """The figures of a run and every problem found; ``ok`` when there is none."""

    tasks: int = 0
    executions: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    overlaps: list[str] = field(default_factory=list)
    stale_results: list[str] = field(default_factory=list)
    fold_mismatches: list[str] = field(default_factory=list)
    store_mismatches: list[str] = field(default_factory=list)
    history_problems: list[str] = field(default_factory=list)
    unexpected_terminal: list[str] = field(default_factory=list)
    duplicates: int = 0
    unexplained_duplicates: list[str] = field(default_factory=list)

    def problems(self) -> dict[str, list[str]]:
        return {
            name: found
            for name, found in (
                ("lost", self.lost),
                ("overlaps", self.overlaps),
                ("stale results", self.stale_results),
                ("fold != snapshot", self.fold_mismatches),
                ("store != log", self.store_mismatches),
                ("history", self.history_problems),
                ("unexpected terminal state", self.unexpected_terminal),
                ("unexplained duplicates", self.unexplained_duplicates),
            )
            if found
        }

    @property
    def ok(self) -> bool:
        return not self.problems()


class LedgerError(ValueError):
    """A ledger line that is not what ``torture.app`` writes."""


def parse_ledger(lines: Iterable[str]) -> list[Execution]:
    """The executions in a ledger, ``end`` lines matched to their ``start``."""
    open_runs: dict[tuple[str, int, int], list[int]] = defaultdict(list)
    runs: list[Execution] = []
    for number, raw in enumerate(lines, 1):
        parts = raw.split()
        if not parts:
            continue
        try:
            kind, task_id, lease, pid, at = (
                parts[0],
                parts[1],
                int(parts[2]),
                int(parts[3]),
                int(parts[4]),
            )
        except (IndexError, ValueError) as exc:
            raise LedgerError(f"line {number}: {exc}: {raw!r}") from None
        key = (task_id, lease, pid)
        if kind == "start" and len(parts) == 5:
            open_runs[key].append(len(runs))
            runs.append(Execution(task_id, lease, pid, at, None, None))
        elif kind == "end" and len(parts) == 6:
            if not open_runs[key]:
                raise LedgerError(f"line {number}: end without a start: {raw!r}")
            index = open_runs[key].pop(0)
            runs[index] = replace(runs[index], end_ns=at, outcome=parts[5])
        else:
            raise LedgerError(f"line {number}: not a ledger line: {raw!r}")
    return runs


def execution_end(execution: Execution, deaths: Mapping[int, Sequence[Death]]) -> int:
    """When ``execution`` stopped: its ``end`` line, else its process's death, else never."""
    if execution.end_ns is not None:
        return execution.end_ns
    for death in deaths.get(execution.pid, ()):
        if death.at_ns >= execution.start_ns:
            return death.at_ns
    return NEVER


def _deaths_by_pid(deaths: Iterable[Death]) -> dict[int, list[Death]]:
    by_pid: dict[int, list[Death]] = defaultdict(list)
    for death in sorted(deaths, key=lambda d: d.at_ns):
        by_pid[death.pid].append(death)
    return by_pid


def _dedupe(entries: Sequence[tuple[Event, Task]], task_id: str, into: list[str]) -> list[Event]:
    """Events by seq; a seq written twice must be the same event."""
    by_seq: dict[int, Event] = {}
    for event, snapshot in entries:
        if snapshot.seq != event.seq:
            into.append(f"{task_id}: snapshot seq {snapshot.seq} != event seq {event.seq}")
        seen = by_seq.setdefault(event.seq, event)
        if seen != event:
            into.append(f"{task_id}: two different events at seq {event.seq}: {seen} / {event}")
    seqs = sorted(by_seq)
    if seqs != list(range(1, len(seqs) + 1)):
        into.append(f"{task_id}: seqs are not 1..n without gaps: {seqs}")
    return [by_seq[s] for s in seqs]


def check(
    scheduled: Iterable[str],
    history: Mapping[str, Sequence[tuple[Event, Task]]],
    executions: Sequence[Execution],
    *,
    deaths: Iterable[Death] = (),
    faults: Sequence[Fault] = (),
    stores: Mapping[str, Task] | None = None,
    expected: TaskStatus = TaskStatus.SUCCESS,
    grace_ns: int = 0,
) -> Report:
    """Everything the run promised, checked; see the module's docstring.

    A fault explains a duplicate when it overlaps the time from the earlier
    execution's start to the later one's, or ended at most ``grace_ns``
    before that earlier start (a fault's aftermath: commands it held up are
    still being answered).
    """
    wanted = set(scheduled)
    report = Report(tasks=len(wanted), executions=len(executions))
    by_pid = _deaths_by_pid(deaths)
    runs: dict[str, list[Execution]] = defaultdict(list)
    for execution in executions:
        runs[execution.task_id].append(execution)

    latest: dict[str, Task] = {}
    for task_id in sorted(wanted | history.keys()):
        entries = history.get(task_id, ())
        if task_id not in wanted:
            report.history_problems.append(f"{task_id}: has events but was never scheduled")
        if not entries:
            report.lost.append(f"{task_id}: scheduled, but no event was ever recorded")
            continue
        events = _dedupe(entries, task_id, report.history_problems)
        snapshot = max(entries, key=lambda e: e[1].seq)[1]
        latest[task_id] = snapshot
        report.statuses[snapshot.status.value] += 1
        if not isinstance(events[0], TaskScheduled):
            report.history_problems.append(f"{task_id}: first event is {type(events[0]).__name__}")
        try:
            folded = replay(events)
        except Exception as exc:  # the fold itself refusing the history is a finding
            report.fold_mismatches.append(f"{task_id}: the events do not fold: {exc}")
        else:
            if folded != snapshot:
                report.fold_mismatches.append(f"{task_id}: fold {folded} != snapshot {snapshot}")
        if task_id in wanted and not snapshot.status.terminal:
            report.lost.append(f"{task_id}: still {snapshot.status.value} at the end")
        elif snapshot.status.terminal and snapshot.status is not expected:
            report.unexpected_terminal.append(
                f"{task_id}: ended {snapshot.status.value}: {snapshot.last_error}"
            )
        _check_results(task_id, events, runs.get(task_id, []), report)

    for task_id, task_runs in runs.items():
        _check_runs(
            task_id,
            sorted(task_runs, key=lambda r: r.start_ns),
            by_pid,
            report,
            faults=faults,
            grace_ns=grace_ns,
        )
        if task_id not in history:
            report.history_problems.append(f"{task_id}: ran, but has no event in the log")

    if stores is not None:
        for task_id in sorted(latest.keys() - stores.keys()):
            report.store_mismatches.append(f"{task_id}: in the log but in no store")
        for task_id in sorted(stores.keys() - latest.keys()):
            report.store_mismatches.append(f"{task_id}: in a store but not in the log")
        for task_id in sorted(latest.keys() & stores.keys()):
            if stores[task_id] != latest[task_id]:
                report.store_mismatches.append(
                    f"{task_id}: store {stores[task_id]} != log {latest[task_id]}"
                )
    return report


def _check_results(
    task_id: str, events: Sequence[Event], task_runs: Sequence[Execution], report: Report
) -> None:
    """Each recorded result came from an execution with that lease that ended that way."""
    ended = {(r.lease, r.outcome) for r in task_runs if r.outcome is not None}
    current_lease = 0
    for event in events:
        if isinstance(event, TaskEnqueued):
            current_lease = event.lease
        elif isinstance(event, TaskSucceeded | TaskFailed):
            outcome = "ok" if isinstance(event, TaskSucceeded) else "retry"
            if event.lease != current_lease:
                report.stale_results.append(
                    f"{task_id}: {type(event).__name__} with lease {event.lease} recorded "
                    f"while the current lease was {current_lease}"
                )
            elif (event.lease, outcome) not in ended:
                report.stale_results.append(
                    f"{task_id}: {type(event).__name__} with lease {event.lease}, but no "
                    f"execution with that lease ended {outcome!r} (ledger: "
                    f"{sorted((r.lease, r.outcome or '-') for r in task_runs)})"
                )


def _check_runs(
    task_id: str,
    task_runs: Sequence[Execution],
    by_pid: Mapping[int, Sequence[Death]],
    report: Report,
    *,
    faults: Sequence[Fault],
    grace_ns: int,
) -> None:
    """No two executions overlap; an extra execution lies within a recorded fault."""
    reused = [lease for lease, n in Counter(r.lease for r in task_runs).items() if n > 1]
    if reused:
        # One lease is one claim: the HSC lets it start once.
        report.stale_results.append(f"{task_id}: lease(s) {sorted(reused)} ran more than once")
    for first, second in itertools.combinations(task_runs, 2):
        first_end = execution_end(first, by_pid)
        if second.start_ns < first_end:
            ended = "never ended" if first_end == NEVER else f"ended at {first_end}"
            report.overlaps.append(
                f"{task_id}: lease {second.lease} (pid {second.pid}) started at "
                f"{second.start_ns} while lease {first.lease} (pid {first.pid}, started "
                f"{first.start_ns}) {ended}"
            )
    for previous, following in itertools.pairwise(task_runs):
        if previous.outcome == "retry":
            continue  # the planned failure's retry, not a duplicate
        report.duplicates += 1
        if not any(
            f.disruptive
            and f.start_ns <= following.start_ns
            and f.end_ns + grace_ns >= previous.start_ns
            for f in faults
        ):
            report.unexplained_duplicates.append(
                f"{task_id}: ran again (lease {following.lease}) after lease {previous.lease} "
                f"ended {previous.outcome or 'without an end line'}, and no fault was recorded "
                f"between {previous.start_ns} and {following.start_ns}"
            )


def counts(report: Report) -> dict[str, int]:
    """The figures to print, by name."""
    return {
        "tasks": report.tasks,
        "executions": report.executions,
        "lost": len(report.lost),
        "overlaps": len(report.overlaps),
        "stale results": len(report.stale_results),
        "duplicates": report.duplicates,
        "unexplained duplicates": len(report.unexplained_duplicates),
        "fold != snapshot": len(report.fold_mismatches),
        "store != log": len(report.store_mismatches),
    }


__all__ = [
    "NEVER",
    "Death",
    "Execution",
    "Fault",
    "LedgerError",
    "Report",
    "check",
    "counts",
    "execution_end",
    "parse_ledger",
]
