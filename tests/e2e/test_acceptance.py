"""Issue 4's acceptance scenarios, with every service a separate OS process.

Each test talks only to the Frontend process (``Client`` over gRPC) and
checks what the lambdas really did in the ledger (``tests.e2e.ledger_app``):
immediate and delayed tasks, retries with growing backoff, fatal failures,
dead letters, cancelling waiting and running tasks, the statuses a task
passes through, and idempotent scheduling. The deployment is the one
``tests/e2e/conftest.py`` starts for the whole package.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from atf_es.client import AlreadyExists, Client, TaskInfo
from atf_es.clock import now_ms
from atf_es.events.status import TaskStatus
from tests.e2e.deployment import TASK_TIMEOUT, Deployment, Line, read_ledger
from tests.e2e.ledger_app import (
    DOOMED_MAX_ATTEMPTS,
    FLAKY_BACKOFF_BASE_MS,
    HEARTBEAT_TIMEOUT_MS,
)
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

# From a retry's due time to its start: the processor's timer, the enqueue, the
# controller's read, the claim and the first heartbeat (~200 ms when idle).
RETRY_LATENCY_MS = 3000

# The order a task that succeeds moves through its statuses.
LIFECYCLE = [
    TaskStatus.NEW,
    TaskStatus.ENQUEUED,
    TaskStatus.CLAIMED,
    TaskStatus.PROCESSING,
    TaskStatus.SUCCESS,
]


@pytest.fixture
def client(deployment: Deployment) -> Iterator[Client]:
    with Client(deployment.frontend, timeout=30) as frontend:
        yield frontend


@dataclass(frozen=True)
class Sample:
    """One status query, with the task's ledger lines read just before and after it."""

    before: tuple[str, ...]
    info: TaskInfo
    answered_at_ms: int
    """Wall-clock time just after the answer came."""
    after: tuple[str, ...]


def watch(client: Client, deployment: Deployment, task_id: str) -> list[Sample]:
    """Query the task about every 20 ms until it is terminal; every answer, in order."""
    samples: list[Sample] = []

    def kinds() -> tuple[str, ...]:
        return tuple(x.kind for x in read_ledger(deployment.ledger, task_id))

    def finished() -> bool:
        before = kinds()
        info = client.get(task_id)
        samples.append(Sample(before, info, now_ms(), kinds()))
        return info.terminal

    wait_for(finished, TASK_TIMEOUT, f"task {task_id} to finish", interval=0.02)
    return samples


def wait_ledger(deployment: Deployment, task_id: str, kind: str, count: int = 1) -> list[Line]:
    """Wait until the ledger has ``count`` lines of ``kind`` for the task; all its lines."""

    def enough() -> list[Line] | None:
        lines = read_ledger(deployment.ledger, task_id)
        return lines if sum(x.kind == kind for x in lines) >= count else None

    lines = wait_for(enough, TASK_TIMEOUT, f"{count} {kind!r} line(s) of task {task_id}")
    assert lines is not None
    return lines


def kinds(deployment: Deployment, task_id: str) -> list[str]:
    return [x.kind for x in read_ledger(deployment.ledger, task_id)]


def test_an_immediate_task_succeeds_with_its_result(deployment: Deployment, client: Client) -> None:
    task_id = client.schedule("work", b"0.1")
    info = client.wait(task_id, timeout=TASK_TIMEOUT)
    assert info.status is TaskStatus.SUCCESS, (info, deployment.outputs())
    assert info.result == b"worked 0.1s"
    assert info.attempts == 1
    assert info.last_error is None
    assert kinds(deployment, task_id) == ["start", "end"]


def test_a_delayed_task_waits_as_new_and_starts_no_earlier_than_its_time(
    deployment: Deployment, client: Client
) -> None:
    task_id = client.schedule("work", b"0", delay=2.0)
    first = client.get(task_id)
    assert first.status is TaskStatus.NEW, first
    run_at = first.scheduled_at_ms
    assert run_at >= first.created_at_ms + 1900, first
    assert first.next_trigger_at_ms == run_at, first

    samples = watch(client, deployment, task_id)
    final = samples[-1].info
    assert final.status is TaskStatus.SUCCESS, (final, deployment.outputs())
    # Every answer that came before the run-at time: still new, nothing ran.
    early = [s for s in samples if s.answered_at_ms < run_at]
    assert early, f"no query before the run-at time {run_at}: {samples[0]}"
    assert {s.info.status for s in early} == {TaskStatus.NEW}, early
    assert all(s.before == () for s in early), early

    lines = read_ledger(deployment.ledger, task_id)
    assert [x.kind for x in lines] == ["start", "end"], lines
    assert lines[0].time_ms >= run_at, f"started {run_at - lines[0].time_ms:.0f} ms early"
    assert final.started_at_ms is not None and final.started_at_ms >= run_at, final
    print(f"started {lines[0].time_ms - run_at:.0f} ms after its run-at time")


def test_a_retriable_failure_is_retried_with_growing_delays_until_it_succeeds(
    deployment: Deployment, client: Client
) -> None:
    succeed_on = 4
    task_id = client.schedule("flaky", str(succeed_on).encode())
    info = client.wait(task_id, timeout=TASK_TIMEOUT)
    assert info.status is TaskStatus.SUCCESS, (info, deployment.outputs())
    assert info.attempts == succeed_on
    assert info.result == f"succeeded on attempt {succeed_on}".encode()

    lines = read_ledger(deployment.ledger, task_id)
    text = "\n".join(map(str, lines))
    starts = [x for x in lines if x.kind == "start"]
    assert [x.attempt for x in starts] == list(range(succeed_on)), text
    assert [x.kind for x in lines] == ["start", "fail"] * (succeed_on - 1) + ["start", "end"]
    assert all(b.lease > a.lease for a, b in itertools.pairwise(starts)), text

    gaps = [(b.time_ns - a.time_ns) / 1e6 for a, b in itertools.pairwise(starts)]
    # No jitter on "flaky": the retry after failed attempt n waits base * 2**(n-1).
    backoffs = [FLAKY_BACKOFF_BASE_MS * 2**n for n in range(succeed_on - 1)]
    print(f"gaps between attempt starts (ms): {[round(g) for g in gaps]}; backoffs {backoffs}")
    for gap, backoff in zip(gaps, backoffs, strict=True):
        assert gap >= backoff, f"a retry started {gap:.0f} ms after the last, before {backoff}"
        # The retry is picked up promptly once due: not, say, only when an idle
        # executor's 5 s long poll for work happens to end.
        assert gap - backoff < RETRY_LATENCY_MS, f"a retry started {gap:.0f} ms after the last"
    # The backoffs grow by 400 and 800 ms; the latency around them varies far less.
    assert all(b > a for a, b in itertools.pairwise(gaps)), gaps


def test_a_fatal_failure_ends_the_task_with_its_message(
    deployment: Deployment, client: Client
) -> None:
    task_id = client.schedule("fatal", b"this payload")
    info = client.wait(task_id, timeout=TASK_TIMEOUT)
    assert info.status is TaskStatus.FATAL_FAILURE, (info, deployment.outputs())
    assert info.last_error == "FatalError: cannot handle this payload"
    assert info.attempts == 1
    assert info.result is None
    assert kinds(deployment, task_id) == ["start", "fail"]


def test_a_task_failing_every_attempt_is_dead_lettered_after_max_attempts(
    deployment: Deployment, client: Client
) -> None:
    task_id = client.schedule("doomed")
    info = client.wait(task_id, timeout=TASK_TIMEOUT)
    assert info.status is TaskStatus.DEAD_LETTERED, (info, deployment.outputs())
    assert info.attempts == DOOMED_MAX_ATTEMPTS
    assert info.last_error == f"RetriableError: attempt {DOOMED_MAX_ATTEMPTS} always fails"
    lines = read_ledger(deployment.ledger, task_id)
    assert [x.kind for x in lines] == ["start", "fail"] * DOOMED_MAX_ATTEMPTS, lines
    assert [x.attempt for x in lines if x.kind == "start"] == list(range(DOOMED_MAX_ATTEMPTS))


def test_a_cancelled_waiting_task_never_starts(deployment: Deployment, client: Client) -> None:
    task_id = client.schedule("work", b"0", delay=2.0)
    waiting = client.get(task_id)
    assert waiting.status is TaskStatus.NEW, waiting
    cancelled = client.cancel(task_id, reason="not needed", requested_by="e2e")
    assert cancelled.status is TaskStatus.CANCELLED, cancelled

    # A task due after the cancelled one ran: the processor's timers have gone
    # past the cancelled task's run-at time, and it did not start.
    later = client.schedule("work", b"0", run_at=waiting.scheduled_at_ms + 500)
    assert client.wait(later, timeout=TASK_TIMEOUT).status is TaskStatus.SUCCESS
    assert kinds(deployment, later) == ["start", "end"]

    info = client.get(task_id)
    assert info.status is TaskStatus.CANCELLED, info
    assert info.attempts == 0, info
    assert info.started_at_ms is None, info
    assert kinds(deployment, task_id) == []


def test_a_cancelled_running_task_stops_at_its_next_heartbeat(
    deployment: Deployment, client: Client
) -> None:
    task_id = client.schedule("work", b"60")
    (start,) = wait_ledger(deployment, task_id, "start")
    assert client.get(task_id).status is TaskStatus.PROCESSING

    cancelling_at = time.time_ns()
    cancelled = client.cancel(task_id, reason="changed my mind")
    assert cancelled.status is TaskStatus.CANCELLED, cancelled

    lines = wait_ledger(deployment, task_id, "stopped")
    assert [x.kind for x in lines] == ["start", "stopped"], lines
    stopped = lines[1]
    assert (stopped.pid, stopped.lease) == (start.pid, start.lease), lines
    # The heartbeat after the cancel (every 300 ms) told the executor to stop:
    # well before the heartbeat timeout could have handed the task to anyone.
    latency_ms = (stopped.time_ns - cancelling_at) / 1e6
    print(f"the work stopped {latency_ms:.0f} ms after the cancel was sent")
    assert 0 < latency_ms < HEARTBEAT_TIMEOUT_MS, lines

    info = client.get(task_id)
    assert info.status is TaskStatus.CANCELLED, info
    assert info.result is None, info
    assert info.attempts == 1, info

    # The freed thread runs the next task; the cancelled one is not run again.
    after = client.schedule("work", b"0")
    assert client.wait(after, timeout=TASK_TIMEOUT).status is TaskStatus.SUCCESS
    assert kinds(deployment, task_id) == ["start", "stopped"]
    assert client.get(task_id).status is TaskStatus.CANCELLED


def test_status_queries_show_every_stage_of_a_task(deployment: Deployment, client: Client) -> None:
    # Delayed, so that the first query surely finds it new.
    task_id = client.schedule("work", b"2", delay=1.0)
    samples = watch(client, deployment, task_id)
    statuses = [s.info.status for s in samples]
    distinct = [status for status, _ in itertools.groupby(statuses)]
    print(f"{len(samples)} queries saw {[str(s) for s in distinct]}")

    # The statuses come in lifecycle order, from new to success.
    assert distinct[0] is TaskStatus.NEW, distinct
    assert distinct[-1] is TaskStatus.SUCCESS, distinct
    assert TaskStatus.PROCESSING in distinct, distinct
    assert all(s in LIFECYCLE for s in distinct), distinct
    assert distinct == sorted(distinct, key=LIFECYCLE.index), distinct

    # What the queries said agrees with what the lambda did: nothing succeeds
    # before the callback returned, and while it runs the task is processing.
    for sample in samples:
        if sample.after == ():
            assert sample.info.status is not TaskStatus.SUCCESS, sample
    running = [s.info for s in samples if s.before == s.after == ("start",)]
    assert all(info.status is TaskStatus.PROCESSING for info in running), running
    assert running, "no query while the ledger showed the task started and not ended"
    assert all(info.worker and info.started_at_ms for info in running), running
    # Heartbeats (every 300 ms for 2 s) are visible while it runs.
    beats = {info.heartbeat_at_ms for info in running}
    assert len(beats) >= 2, running

    final = samples[-1].info
    lines = read_ledger(deployment.ledger, task_id)
    assert [x.kind for x in lines] == ["start", "end"], lines
    assert final.attempts == 1
    assert final.result == b"worked 2s"
    stamps = [
        final.scheduled_at_ms,
        final.enqueued_at_ms,
        final.claimed_at_ms,
        final.started_at_ms,
        final.finished_at_ms,
    ]
    known = [stamp for stamp in stamps if stamp is not None]
    assert known == sorted(known) and len(known) == len(stamps), final
    assert final.finished_at_ms is not None and final.finished_at_ms >= lines[1].time_ns // 10**6


def test_the_same_idempotency_key_schedules_one_task(
    deployment: Deployment, client: Client
) -> None:
    key = f"e2e-{uuid.uuid4().hex}"
    first = client.schedule("work", b"0.5", idempotency_key=key)
    second = client.schedule("work", b"0.5", idempotency_key=key)
    assert second == first
    info = client.wait(first, timeout=TASK_TIMEOUT)
    assert info.status is TaskStatus.SUCCESS, (info, deployment.outputs())
    assert info.idempotency_key == key

    # A repeat after the task finished names the same task and runs nothing.
    assert client.schedule("work", b"0.5", idempotency_key=key) == first
    again = client.get(first)
    assert again.status is TaskStatus.SUCCESS, again
    assert (again.lease, again.attempts, again.finished_at_ms) == (
        info.lease,
        1,
        info.finished_at_ms,
    )
    # The same key with other content is refused, not scheduled.
    with pytest.raises(AlreadyExists):
        client.schedule("work", b"other", idempotency_key=key)
    assert kinds(deployment, first) == ["start", "end"]
