"""An App for end-to-end tests that records every execution in a ledger file.

Each run of ``work`` appends ``start <task_id> <lease> <pid> <time_ns>`` to the
file named by ``ATFTEST_LEDGER``, works for the number of seconds in its
payload, then appends ``end <task_id> <lease> <pid> <time_ns>``. Every line is
one ``write`` to a file opened with ``O_APPEND``, so lines from concurrent
processes never interleave.
"""

from __future__ import annotations

import os
import time

from atf_es.app import App, TaskContext

# Not ATF_TEST_LEDGER: atf-es rejects every ATF_* variable that is not one of its settings.
LEDGER_ENV = "ATFTEST_LEDGER"

app = App("ledger")


def _record(kind: str, task: TaskContext) -> None:
    line = f"{kind} {task.task_id} {task.lease} {os.getpid()} {time.time_ns()}\n"
    fd = os.open(os.environ[LEDGER_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


@app.lambda_(
    "work",
    heartbeat_interval_ms=300,
    heartbeat_margin_ms=700,
    heartbeat_timeout_ms=2000,
    claim_timeout_ms=3000,
    backoff_base_ms=100,
)
def work(task: TaskContext) -> str:
    _record("start", task)
    seconds = float(task.payload.decode() or "0")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)  # the task's simulated work, not a wait in a test
    _record("end", task)
    return f"worked {seconds:g}s"
