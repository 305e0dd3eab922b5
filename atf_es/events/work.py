"""The execution-queue message: one ready task with its lease."""

from __future__ import annotations

from dataclasses import dataclass

from atf_es.events.task import Task


@dataclass(frozen=True, slots=True)
class WorkItem:
    """What a controller reads from ``atf.exec.<lambda>.p<priority>``.

    It carries the payload so the worker path never reads the task store; the
    lease makes a copy left over from an earlier enqueue harmless, because a
    claim with a stale lease is refused.
    """

    task_id: str
    lease: int
    lambda_name: str
    collection: str
    priority: int
    payload: bytes
    scheduled_at: int
    enqueued_at: int
    attempt: int
    """Execution attempts before this one (0 on the first run)."""

    @classmethod
    def of(cls, task: Task) -> WorkItem:
        if task.enqueued_at is None:
            raise ValueError(f"task {task.task_id} is {task.status}, not enqueued")
        return cls(
            task_id=task.task_id,
            lease=task.lease,
            lambda_name=task.lambda_name,
            collection=task.collection,
            priority=task.priority,
            payload=task.payload,
            scheduled_at=task.scheduled_at,
            enqueued_at=task.enqueued_at,
            attempt=task.attempts,
        )
