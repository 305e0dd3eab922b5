"""Replies to synchronous commands, and records set aside as poison."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from atf_es.events.task import Task


class ReplyCode(StrEnum):
    """How a command was answered.

    Every code but ``OK`` has the same value as the lifecycle's
    ``RejectCode`` member of the same name, so ``ReplyCode(rejected.code)``
    converts one into the other.
    """

    OK = "ok"
    NOT_FOUND = "not_found"
    STALE_LEASE = "stale_lease"
    WRONG_STATE = "wrong_state"
    CANCELLED = "cancelled"
    """The task was cancelled: an executor holding it must stop its work."""
    INVALID = "invalid"
    ALREADY_EXISTS = "already_exists"
    UNKNOWN_LAMBDA = "unknown_lambda"


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to one command, sent to the command's ``reply_to``."""

    command_id: str
    task_id: str
    accepted: bool
    code: ReplyCode
    message: str = ""
    task: Task | None = None
    """The task after the command, when the processor knows it."""


@dataclass(frozen=True, slots=True)
class PoisonRecord:
    """A record that could not be decoded or was invalid, kept with its reason.

    ``value`` is the original bytes, unchanged, so the record can be inspected
    or replayed once the cause is fixed.
    """

    source_topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    reason: str
    at: int
