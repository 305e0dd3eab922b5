"""The lambda the torture run executes: it records every execution in a ledger.

Each run appends ``start <task> <lease> <pid> <ns>`` to the file named by
``ATFTORTURE_LEDGER`` before working and ``end <task> <lease> <pid> <ns>
<outcome>`` after; every line is one ``write`` to a file opened with
``O_APPEND``, so lines of concurrent processes never interleave. The ledger
lives outside the system under test: the checker compares it with the event
log.

The payload is ``<work ms> <failures>``: the callback works that long, then
raises ``RetriableError`` while its attempt number is below ``failures``, so
some tasks take the retry path on purpose.
"""

from __future__ import annotations

import os
import time

from atf_es.app import App, RetriableError, TaskContext

LEDGER_ENV = "ATFTORTURE_LEDGER"
# Not ATF_*: atf-es refuses ATF_* variables that are not its settings.

app = App("torture")

POLICY = {
    "max_attempts": 50,
    "backoff_base_ms": 100,
    "backoff_max_ms": 1_000,
    "heartbeat_interval_ms": 500,
    "heartbeat_margin_ms": 1_000,
    "heartbeat_timeout_ms": 3_000,
    "claim_timeout_ms": 5_000,
    "enqueue_timeout_ms": 60_000,
}
"""Short heartbeat and claim timeouts, so a fault's effect shows within seconds;
many attempts, so faults never exhaust a task's attempts (that would be a lost
task by design). The enqueue timeout stays long: a controller that dies reads
its unclaimed items again anyway, and a short one re-enqueues a whole backlog
over and over (measured: leases above 30 with 8 s and a backlog of 800)."""


def _record(line: str) -> None:
    fd = os.open(os.environ[LEDGER_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def encode_payload(work_ms: int, failures: int) -> bytes:
    return f"{work_ms} {failures}".encode()


@app.lambda_("torture", **POLICY)
def torture(task: TaskContext) -> str:
    work_ms, failures = (int(x) for x in task.payload.decode().split())
    me = f"{task.task_id} {task.lease} {os.getpid()}"
    _record(f"start {me} {time.time_ns()}\n")
    deadline = time.monotonic() + work_ms / 1000
    while time.monotonic() < deadline and not task.cancelled.is_set():
        time.sleep(0.01)  # the task's simulated work, not a wait in a test
    if task.attempt < failures:
        _record(f"end {me} {time.time_ns()} retry\n")
        raise RetriableError(f"planned failure {task.attempt + 1} of {failures}")
    _record(f"end {me} {time.time_ns()} ok\n")
    return "ok"
