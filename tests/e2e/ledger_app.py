"""An App for end-to-end tests that records every execution in a ledger file.

Every run appends ``start <task_id> <lease> <attempt> <pid> <time_ns>`` to the
file named by ``ATFTEST_LEDGER`` when it begins, and one more line of the same
shape when it finishes, whose first word says how:

* ``end``: the callback returned (the task succeeds);
* ``fail``: it is about to raise ``RetriableError`` or ``FatalError``;
* ``stopped``: it saw ``task.cancelled`` and gave up its work.

A run killed with its process leaves only its ``start``. Every line is one
``write`` to a file opened with ``O_APPEND``, so lines from concurrent
processes never interleave.

The lambdas:

* ``work``: works for the number of seconds in its payload, stopping early
  if the task is cancelled (or its lease lost);
* ``flaky``: fails (retriable) until its attempt number -- 1-based -- reaches
  the one in its payload, then succeeds; no jitter, so its backoff is exactly
  ``FLAKY_BACKOFF_BASE_MS * 2 ** (attempt - 1)``;
* ``fatal``: raises ``FatalError("cannot handle <payload>")``;
* ``doomed``: always raises ``RetriableError``; it has ``DOOMED_MAX_ATTEMPTS``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from atf_es.app import App, FatalError, RetriableError, TaskContext

# Not ATF_TEST_LEDGER: atf-es rejects every ATF_* variable that is not one of its settings.
LEDGER_ENV = "ATFTEST_LEDGER"

HEARTBEAT_INTERVAL_MS = 300
HEARTBEAT_TIMEOUT_MS = 2000
FLAKY_BACKOFF_BASE_MS = 400
DOOMED_MAX_ATTEMPTS = 3

# 3 x 300 ms + 700 ms = 1600 ms < 2000 ms; the heartbeat RPC deadline is 300 ms.
FAST: dict[str, Any] = {
    "heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS,
    "heartbeat_margin_ms": 700,
    "heartbeat_timeout_ms": HEARTBEAT_TIMEOUT_MS,
    "claim_timeout_ms": 3000,
}

app = App("ledger")


def _record(kind: str, task: TaskContext) -> None:
    line = f"{kind} {task.task_id} {task.lease} {task.attempt} {os.getpid()} {time.time_ns()}\n"
    fd = os.open(os.environ[LEDGER_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


@app.lambda_("work", backoff_base_ms=100, **FAST)
def work(task: TaskContext) -> str:
    _record("start", task)
    seconds = float(task.payload.decode() or "0")
    deadline = time.monotonic() + seconds
    # The task's simulated work; a cancel (or a lost lease) ends it early.
    while (left := deadline - time.monotonic()) > 0:
        if task.cancelled.wait(min(0.05, left)):
            _record("stopped", task)
            return "stopped"  # not reported: the executor drops a cancelled task
    _record("end", task)
    return f"worked {seconds:g}s"


@app.lambda_(
    "flaky",
    backoff_base_ms=FLAKY_BACKOFF_BASE_MS,
    backoff_multiplier=2.0,
    backoff_jitter=0.0,
    max_attempts=10,
    **FAST,
)
def flaky(task: TaskContext) -> str:
    _record("start", task)
    succeed_on = int(task.payload.decode())
    attempt = task.attempt + 1
    if attempt < succeed_on:
        _record("fail", task)
        raise RetriableError(f"attempt {attempt} of {succeed_on} fails")
    _record("end", task)
    return f"succeeded on attempt {attempt}"


@app.lambda_("fatal", **FAST)
def fatal(task: TaskContext) -> None:
    _record("start", task)
    _record("fail", task)
    raise FatalError(f"cannot handle {task.payload.decode()}")


@app.lambda_(
    "doomed", max_attempts=DOOMED_MAX_ATTEMPTS, backoff_base_ms=100, backoff_jitter=0.0, **FAST
)
def doomed(task: TaskContext) -> None:
    _record("start", task)
    _record("fail", task)
    raise RetriableError(f"attempt {task.attempt + 1} always fails")
