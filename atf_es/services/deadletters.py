"""Dead letters: a read-side view of the dead-lettered tasks, for ``atf.v1.Admin``.

A task that exhausts its attempts ends ``dead_lettered`` with its last error
and stays so until someone redrives it (``RedriveTask`` -> ``TaskRedriven``:
back to ``new``, 0 attempts, due at once) or its retention runs out
(``dead_letter_retention_ms``: the processor tombstones it).

:class:`DeadLetterView` is the projection the Admin service answers from. It
reads every partition of ``<prefix>.task-events`` from the beginning with a
plain consumer (no group, nothing committed) and folds each record:

- a snapshot whose status is ``dead_lettered`` adds or replaces the task;
- a snapshot with any other status (``new`` after a redrive, or a task not
  dead-lettered yet) removes it;
- a tombstone (the task's retention ran out) removes it.

A record whose ``seq`` is below the one held is stale and ignored; at equal
``seq`` the later record wins, as when the processor restores its projection
(brokers that do not filter aborted transactions, the embedded one, show an
aborted batch's events next to the retried batch's). Only dead letters are
held in memory, without their payloads.

:meth:`DeadLetterView.catch_up` reads to the end of every partition as it is
when called; the Admin service calls it before each answer, so a listing
shows every dead letter committed before the call (and not one redriven
before it). The first call reads the whole topic; later ones read only what
was written since. See docs/dead-letters.md for the cost.

Listings are ordered by ``(finished_at, task_id)``: when the task was
dead-lettered, oldest first. A page token names the last task of a page (a
keyset cursor, stable while tasks come and go) and the newest ``finished_at``
the listing covers, fixed at its first page, so a listing or a paged redrive
never picks up tasks dead-lettered while it runs: in particular not a
redriven task that failed again.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import logging
import threading
from dataclasses import dataclass, field, replace

from atf_es.config import Settings
from atf_es.events import Task, TaskStatus
from atf_es.events.codec import DecodeError, decode_event
from atf_es.events.records import task_id_of_key
from atf_es.services.topicreader import TopicReader
from atf_es.topics import Topics

log = logging.getLogger(__name__)

_TOKEN_VERSION = "d1"


class PageTokenError(ValueError):
    """A page token this service did not give out, or one given for other filters."""


@dataclass(frozen=True, slots=True)
class DeadLetterQuery:
    """Which dead letters: every field narrows the set; None leaves it open.

    ``after`` and ``before`` bound the time the task was dead-lettered
    (``finished_at``): ``after <= finished_at < before``. ``error_contains``
    matches the last error case-insensitively.
    """

    lambda_name: str | None = None
    collection: str | None = None
    error_contains: str | None = None
    after: int | None = None
    before: int | None = None
    _needle: str | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.error_contains is not None:
            object.__setattr__(self, "_needle", self.error_contains.casefold())

    def matches(self, task: Task) -> bool:
        if self.lambda_name is not None and task.lambda_name != self.lambda_name:
            return False
        if self.collection is not None and task.collection != self.collection:
            return False
        at = dead_lettered_at(task)
        if self.after is not None and at < self.after:
            return False
        if self.before is not None and at >= self.before:
            return False
        if self._needle is not None:
            return self._needle in (task.last_error or "").casefold()
        return True

    def fingerprint(self) -> str:
        """A short digest of the filters, so a page token serves only the listing it came from."""
        text = "\x00".join(
            "\x01" if value is None else str(value)
            for value in (
                self.lambda_name,
                self.collection,
                self.error_contains,
                self.after,
                self.before,
            )
        )
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def dead_lettered_at(task: Task) -> int:
    """When ``task`` was dead-lettered (its ``finished_at``)."""
    return task.finished_at if task.finished_at is not None else 0


def _order(task: Task) -> tuple[int, str]:
    return (dead_lettered_at(task), task.task_id)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a paged listing stands: its newest time and the last task it returned."""

    bound: int
    """Only tasks dead-lettered at or before this time: the listing's newest, at its start."""
    last: tuple[int, str] | None = None
    """``(finished_at, task_id)`` of the last task returned; the next page starts after it."""

    def encode(self, query: DeadLetterQuery) -> str:
        last_at, last_id = self.last if self.last is not None else (-1, "")
        text = f"{_TOKEN_VERSION}:{query.fingerprint()}:{self.bound}:{last_at}:{last_id}"
        return base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).decode("ascii")

    @classmethod
    def decode(cls, token: str, query: DeadLetterQuery) -> Cursor:
        """The cursor in ``token``; PageTokenError if it is not one for ``query``."""
        try:
            text = base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8", "surrogatepass")
            version, digest, bound, last_at, last_id = text.split(":", 4)
            cursor = cls(int(bound), None if last_id == "" else (int(last_at), last_id))
        except (UnicodeError, binascii.Error, ValueError) as exc:
            raise PageTokenError(
                "page_token is not a token this service gave out; "
                "pass the previous response's next_page_token unchanged"
            ) from exc
        if version != _TOKEN_VERSION:
            raise PageTokenError(
                "page_token is not a token this service gave out; "
                "pass the previous response's next_page_token unchanged"
            )
        if digest != query.fingerprint():
            raise PageTokenError(
                "page_token belongs to a listing with other filters; "
                "keep the filters of the first page, or start again without a token"
            )
        return cursor


@dataclass(frozen=True, slots=True)
class DeadLetterPage:
    """One page of a listing."""

    tasks: list[Task]
    next: Cursor | None
    """Where the next page starts; None on the last page."""
    total: int
    """How many dead letters the listing covers (every page of it)."""
    remaining: int
    """How many of them come after this page."""


@dataclass(frozen=True, slots=True)
class LambdaDeadLetters:
    """The dead letters of one lambda, counted."""

    lambda_name: str
    count: int
    by_collection: dict[str, int]
    oldest_at: int
    newest_at: int


@dataclass(slots=True)
class ViewStats:
    records: int = 0
    """Records read (events and tombstones)."""
    tombstones: int = 0
    bad_records: int = 0
    """Records that do not decode: logged and ignored."""


class DeadLetterView:
    """The dead-lettered tasks of the task-events topic, kept up to date on demand.

    Thread-safe: every method takes one lock (the consumer reads for one
    caller at a time).
    """

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.topic = Topics(settings.topic_prefix).task_events
        self._reader = TopicReader(
            settings,
            bootstrap,
            self.topic,
            settings.partitions,
            self._apply,
            client_id="dead-letters",
        )
        self._tasks: dict[str, Task] = {}
        self._lock = threading.RLock()
        self.stats = ViewStats()
        self._closed = False

    # -- reading ---------------------------------------------------------

    def catch_up(self, timeout: float = 30.0) -> None:
        """Read every partition to its end as it is now (``TopicReader.catch_up``).

        Raises TimeoutError (keeping what was read: the next call goes on from
        there) if that takes more than ``timeout`` seconds, and KafkaException
        if the broker cannot tell where the ends are.
        """
        with self._lock:
            try:
                self._reader.catch_up(timeout)
            finally:
                self.stats.records = self._reader.records

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            # The task's retention ran out: it is gone, and an event of the same
            # id after this starts a new task (at seq 1).
            self.stats.tombstones += 1
            task_id = task_id_of_key(key)
            if task_id is not None:
                self._tasks.pop(task_id, None)
            return
        try:
            _, task = decode_event(value)
        except DecodeError as exc:
            self.stats.bad_records += 1
            log.warning("%s: ignoring an unreadable record: %s", self.topic, exc)
            return
        held = self._tasks.get(task.task_id)
        # At equal seq the later record wins (see the module doc).
        if held is not None and task.seq < held.seq:
            return
        if task.status is TaskStatus.DEAD_LETTERED:
            self._tasks[task.task_id] = replace(task, payload=b"", result=None)
        elif held is not None:
            del self._tasks[task.task_id]

    # -- answering -------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return len(self._tasks)

    def get(self, task_id: str) -> Task | None:
        """The dead letter ``task_id`` (without its payload), or None."""
        with self._lock:
            return self._tasks.get(task_id)

    def has_lambda(self, lambda_name: str) -> bool:
        """Whether any dead letter belongs to ``lambda_name``."""
        with self._lock:
            return any(task.lambda_name == lambda_name for task in self._tasks.values())

    def page(
        self, query: DeadLetterQuery, size: int, cursor: Cursor | None = None
    ) -> DeadLetterPage:
        """Up to ``size`` dead letters matching ``query``, oldest first, after ``cursor``."""
        with self._lock:
            matching = sorted((t for t in self._tasks.values() if query.matches(t)), key=_order)
        if cursor is None:
            if not matching:
                return DeadLetterPage([], None, 0, 0)
            cursor = Cursor(dead_lettered_at(matching[-1]))
        keys = [_order(task) for task in matching]
        end = bisect.bisect_right([at for at, _ in keys], cursor.bound)
        start = 0 if cursor.last is None else bisect.bisect_right(keys, cursor.last, 0, end)
        tasks = matching[start : min(end, start + size)]
        remaining = end - start - len(tasks)
        following = replace(cursor, last=_order(tasks[-1])) if tasks and remaining else None
        return DeadLetterPage(tasks, following, end, remaining)

    def counts(self, lambda_name: str | None = None) -> list[LambdaDeadLetters]:
        """Dead letters per lambda (of one, or of every lambda that has some), by name."""
        per: dict[str, list[Task]] = {}
        with self._lock:
            for task in self._tasks.values():
                if lambda_name is None or task.lambda_name == lambda_name:
                    per.setdefault(task.lambda_name, []).append(task)
        result = []
        for name in sorted(per):
            tasks = per[name]
            by_collection: dict[str, int] = {}
            for task in tasks:
                by_collection[task.collection] = by_collection.get(task.collection, 0) + 1
            times = [dead_lettered_at(task) for task in tasks]
            result.append(
                LambdaDeadLetters(
                    name, len(tasks), dict(sorted(by_collection.items())), min(times), max(times)
                )
            )
        return result

    def close(self) -> None:
        """Close the consumer. Safe to call twice."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._reader.close()


__all__ = [
    "Cursor",
    "DeadLetterPage",
    "DeadLetterQuery",
    "DeadLetterView",
    "LambdaDeadLetters",
    "PageTokenError",
    "ViewStats",
]
