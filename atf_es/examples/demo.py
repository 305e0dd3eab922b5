"""A demo app with one lambda per outcome, tuned to finish within seconds.

Run it with ``atf-es executor atf_es.examples.demo:app <lambda>`` (or under
``atf-es dev``) and schedule tasks against ``echo``, ``flaky``, ``reject``,
``broken`` and ``slow``.
"""

from __future__ import annotations

import time

from atf_es.app import App, FatalError, RetriableError, TaskCancelled, TaskContext

app = App("demo")

# Short timeouts so a demo shows retries, dead letters and lost executors
# within seconds: 3 x 500 ms + 1000 ms margin stays below the 3000 ms timeout.
# The enqueue timeout stays above the default priority_aging_ms (60 s), or
# every Controller warns at start that aging cannot help a starved item.
FAST = {
    "heartbeat_interval_ms": 500,
    "heartbeat_timeout_ms": 3_000,
    "heartbeat_margin_ms": 1_000,
    "backoff_base_ms": 200,
    "backoff_max_ms": 2_000,
    "claim_timeout_ms": 5_000,
    "enqueue_timeout_ms": 90_000,
}


@app.lambda_("echo", **FAST)
def echo(task: TaskContext) -> bytes:
    """Succeeds at once with the payload as its result."""
    return task.payload


@app.lambda_("flaky", **FAST)
def flaky(task: TaskContext) -> str:
    """Fails twice with a retriable error, then succeeds on the third attempt."""
    if task.attempt < 2:
        raise RetriableError(f"attempt {task.attempt} failed; try again")
    return f"succeeded on attempt {task.attempt}"


@app.lambda_("reject", **FAST)
def reject(task: TaskContext) -> None:
    """Fails for good: a fatal failure is never retried."""
    raise FatalError(f"payload {task.payload!r} can never be processed")


@app.lambda_("broken", **{**FAST, "max_attempts": 3})
def broken(task: TaskContext) -> None:
    """Always fails: after 3 attempts the task is dead-lettered."""
    raise RetriableError(f"still broken on attempt {task.attempt}")


@app.lambda_("slow", **FAST)
def slow(task: TaskContext) -> str:
    """Works for the number of seconds in its payload (default 5), stopping if cancelled."""
    try:
        seconds = float(task.payload.decode() or "5")
    except ValueError as exc:
        raise FatalError(f"payload must be a number of seconds, got {task.payload!r}") from exc
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if task.cancelled.wait(0.1):
            raise TaskCancelled(f"task {task.task_id} was cancelled")
    return f"worked {seconds:g}s"
