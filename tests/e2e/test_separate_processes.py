"""Every service as its own OS process: a task runs once, and survives a SIGKILL.

The deployment (``tests.e2e.deployment``) starts processor, hsc, frontend,
controller and executors with ``python -m atf_es ...``; the tests talk to
them only through the Frontend (``Client``) and watch what the lambda did
through the ledger file that every execution appends to (see
``tests.e2e.ledger_app``). The acceptance scenarios are in
``test_acceptance.py``, on the same deployment.
"""

from __future__ import annotations

import itertools
import signal
import time

import pytest

from atf_es.client import Client
from atf_es.events.status import TaskStatus
from tests.e2e.deployment import TASK_TIMEOUT, Deployment, Line, read_ledger
from tests.e2e.ledger_app import HEARTBEAT_TIMEOUT_MS
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


def test_a_task_runs_once_through_separate_processes(deployment: Deployment) -> None:
    with Client(deployment.frontend, timeout=30) as client:
        task_id = client.schedule("work", b"0")
        info = client.wait(task_id, timeout=TASK_TIMEOUT)
    assert info.status is TaskStatus.SUCCESS, (info, deployment.outputs())
    kinds = [line.kind for line in read_ledger(deployment.ledger, task_id)]
    assert kinds == ["start", "end"], kinds


def test_sigkill_an_executor_mid_task_then_the_task_runs_again_without_overlap(
    deployment: Deployment,
) -> None:
    ledger = deployment.ledger
    with Client(deployment.frontend, timeout=30) as client:
        task_id = client.schedule("work", b"4")
        first = wait_for(
            lambda: next((x for x in read_ledger(ledger, task_id) if x.kind == "start"), None),
            TASK_TIMEOUT,
            "the task's first start in the ledger",
            interval=0.02,
        )
        assert first is not None
        workers = deployment.executors["work"]
        victim = next(
            (e for e in workers if e.process.pid == first.pid and e.process.poll() is None),
            None,
        )
        assert victim is not None, (first, [e.process.pid for e in workers])
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(timeout=30)
        # After wait() returns the process is gone: it cannot append any more.
        killed_at = time.time_ns()
        workers.remove(victim)

        deployment.start_executor("work")
        info = client.wait(task_id, timeout=TASK_TIMEOUT)
    assert info.status is TaskStatus.SUCCESS, (info, deployment.outputs())

    lines = read_ledger(ledger, task_id)
    text = "\n".join(map(str, lines))
    starts = [x for x in lines if x.kind == "start"]
    assert len(starts) >= 2, text
    assert starts[0] == first, text
    assert starts[1].lease > starts[0].lease, text
    # The retry is the very next lease: no long poll left open by the killed
    # executor claimed it and held it until a claim timeout.
    assert starts[1].lease == starts[0].lease + 1, text
    assert starts[1].pid != victim.process.pid, text
    assert not any(x.pid == victim.process.pid and x.kind == "end" for x in lines), text

    # Execution intervals keyed by (pid, lease): [start, end], or [start, kill] for the victim.
    intervals: list[tuple[int, int, Line]] = []
    for start in starts:
        end = next(
            (x for x in lines if x.kind == "end" and (x.pid, x.lease) == (start.pid, start.lease)),
            None,
        )
        if end is not None:
            stop = end.time_ns
        elif start.pid == victim.process.pid:
            stop = killed_at
        else:
            raise AssertionError(f"execution {start} never ended:\n{text}")
        intervals.append((start.time_ns, stop, start))
    intervals.sort(key=lambda i: i[0])
    for (_, stop_a, a), (start_b, _, b) in itertools.pairwise(intervals):
        assert start_b > stop_a, f"{b} started before {a} stopped:\n{text}"

    delay_ms = (starts[1].time_ns - killed_at) / 1e6
    assert starts[1].time_ns > killed_at, (
        f"second start {delay_ms:.0f} ms after the kill (heartbeat timeout "
        f"{HEARTBEAT_TIMEOUT_MS} ms):\n{text}"
    )
    print(
        f"second start {delay_ms:.0f} ms after the kill; first start -> kill "
        f"{(killed_at - first.time_ns) / 1e6:.0f} ms"
    )
