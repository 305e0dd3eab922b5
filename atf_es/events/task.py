"""The task snapshot: everything the system knows about one task."""

from __future__ import annotations

from dataclasses import dataclass

from atf_es.events.chains import ChainLink
from atf_es.events.status import TaskStatus


@dataclass(frozen=True, slots=True)
class Task:
    """A task as of its latest event.

    Times are epoch milliseconds. ``seq`` is the sequence number of the last
    event applied (1 for a freshly scheduled task); ``lease`` is the lease
    token, bumped every time the task is (re)enqueued; ``attempts`` counts the
    claims accepted since the task was scheduled or redriven.
    """

    task_id: str
    lambda_name: str
    collection: str
    priority: int
    payload: bytes
    status: TaskStatus
    seq: int
    created_at: int
    scheduled_at: int
    next_trigger_at: int | None
    lease: int = 0
    attempts: int = 0
    enqueued_at: int | None = None
    claimed_at: int | None = None
    started_at: int | None = None
    heartbeat_at: int | None = None
    finished_at: int | None = None
    worker: str | None = None
    last_error: str | None = None
    result: bytes | None = None
    idempotency_key: str | None = None
    chain: ChainLink | None = None
    """For a node of a chain: the chain, and which node this is."""
    scheduled_by: str | None = None
    """The principal whose token scheduled the task (docs/security.md); None
    without access control. Besides admins, only it may cancel the task."""
