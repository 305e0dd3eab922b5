"""The benchmark's no-op task for atf-es: it records when it starts, like the peers' tasks."""

from __future__ import annotations

from atf_es.app import App, TaskContext
from bench.peer_apps.ledger import record

app = App("bench")


@app.lambda_("noop", max_attempts=3)
def noop(task: TaskContext) -> str:
    return record(task.payload.decode())
