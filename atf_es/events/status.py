"""Task states and their meaning."""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    """Where a task is in its lifecycle.

    The first five rows follow the seed's state table; the last three are the
    terminal states this project adds (cancellation, dead letters, gating).
    """

    NEW = "new"
    """Recorded; waits in the next-trigger index for its scheduled time."""
    ENQUEUED = "enqueued"
    """On its execution topic with the current lease; may be claimed."""
    CLAIMED = "claimed"
    """A controller holds it for an executor; nothing runs yet."""
    PROCESSING = "processing"
    """An executor runs it and heartbeats."""
    RETRIABLE_FAILURE = "retriable_failure"
    """The last attempt failed in a retriable way; waits out its backoff."""
    SUCCESS = "success"
    """Terminal: the callback returned."""
    FATAL_FAILURE = "fatal_failure"
    """Terminal: the callback signalled a fatal error."""
    CANCELLED = "cancelled"
    """Terminal: a client cancelled it."""
    DEAD_LETTERED = "dead_lettered"
    """Terminal but redrivable: it used up its attempts."""
    DROPPED = "dropped"
    """Terminal: a drop gate on its lambda or collection ended it."""

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def live(self) -> bool:
        return self not in _TERMINAL


_TERMINAL = frozenset(
    {
        TaskStatus.SUCCESS,
        TaskStatus.FATAL_FAILURE,
        TaskStatus.CANCELLED,
        TaskStatus.DEAD_LETTERED,
        TaskStatus.DROPPED,
    }
)
