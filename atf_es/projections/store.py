"""The per-partition projection of the task log: task rows, trigger indexes, counters.

The partition processor is the single writer of one partition's store. It
folds events into task snapshots and hands them to :meth:`TaskStore.commit`
together with the ids of the tasks it tombstoned (``deleted``) and the offset
of the events-log partition they came from; one commit is one atomic write,
so the rows, the indexes, the counters and the offset never drift apart after
a crash (the offset is eventsourcing's tracking record, not faust's separate
write).

What is stored:

* ``tasks``: ``task_id`` → the snapshot, Avro single-object encoded
  (:func:`~atf_es.events.codec.encode_task`). A snapshot replaces the stored
  one only when its ``seq`` is higher, so replaying the log changes nothing.
* ``ready``: tasks waiting to be enqueued (``new``, ``retriable_failure``),
  keyed ``lambda \\0 collection \\0 priority next_trigger_at task_id`` so one
  range scan finds the due tasks of a queue, a (lambda, collection,
  priority), in trigger order, and a gate that holds one collection costs
  the scans of the others nothing.
* ``timeouts``: tasks out on a queue or with a worker (``enqueued``,
  ``claimed``, ``processing``), keyed ``next_trigger_at task_id``.
* ``finished``: terminal tasks by the time they finished, keyed
  ``kind finished_at task_id``, the kind ``D`` for dead letters and ``F`` for
  every other terminal status, so that the processor finds the tasks whose
  retention has run out (docs/retention.md) with one range scan per kind,
  oldest first. A deleted row leaves every index.
* ``counters``: tasks per (lambda, collection, priority, status), and tasks
  in the ready index per queue; kept in memory as well, so flow
  control never touches the disk.
* ``meta``: the format version and the last applied events offset.

Every live task with a ``next_trigger_at`` has exactly one entry, in the index
its status selects; a terminal task has none (the lifecycle gives it no
trigger, and the store would not index it if it had one). The ``finished``
index is apart from those: a terminal task with a ``finished_at`` has exactly
one entry in it, and no other task has one. Integers in keys are
8-byte big-endian with the sign bit flipped, so byte order is numeric order;
strings are UTF-8, and those followed by another field end with ``\\0``, which
is why ids and names must not contain it.

:class:`MemoryTaskStore` behaves exactly like :class:`RocksTaskStore` and is
what unit tests of the pure core use; one conformance suite runs against both.
"""

from __future__ import annotations

import bisect
import logging
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Final, Protocol, Self, TypeAlias, TypeVar, cast

from rocksdict import (
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    Rdict,
    ReadOptions,
    WriteBatch,
)
from rocksdict import Options as RocksOptions

from atf_es.events.codec import DecodeError, decode_task, encode_task
from atf_es.events.status import TaskStatus
from atf_es.events.task import Task

__all__ = [
    "FORMAT_VERSION",
    "CounterKey",
    "MemoryTaskStore",
    "Queue",
    "RocksTaskStore",
    "StoreError",
    "StoreLockedError",
    "TaskStore",
    "open_or_rebuild",
]

log = logging.getLogger(__name__)

FORMAT_VERSION: Final = 3
"""Version of the on-disk layout; a store of another version is refused (and
:func:`open_or_rebuild` rebuilds it from the log). 2: ready keys and waiting
counters name the collection. 3: the ``finished`` index."""

CounterKey: TypeAlias = tuple[str, str, int, str]
"""(lambda_name, collection, priority, status value)."""
Queue: TypeAlias = tuple[str, str, int]
"""(lambda_name, collection, priority): one range of the ready index."""

_READY_STATUSES: Final = frozenset({TaskStatus.NEW, TaskStatus.RETRIABLE_FAILURE})
_TIMEOUT_STATUSES: Final = frozenset(
    {TaskStatus.ENQUEUED, TaskStatus.CLAIMED, TaskStatus.PROCESSING}
)
_ENQUEUED: Final = TaskStatus.ENQUEUED.value

_I64_MIN: Final = -(2**63)
_I64_MAX: Final = 2**63 - 1
_BIAS: Final = 2**63
_U64: Final = struct.Struct(">Q")

_COLUMN_FAMILIES: Final = ("tasks", "ready", "timeouts", "finished", "counters", "meta")
_FINISHED: Final = b"F"
"""The ``finished`` range of every terminal status but ``dead_lettered``."""
_DEAD_LETTERS: Final = b"D"
"""The ``finished`` range of dead letters."""
_META_FORMAT: Final = b"format_version"
_META_OFFSET: Final = b"events_offset"
_STATUS_COUNTER: Final = b"S"
_WAITING_COUNTER: Final = b"W"
_SCAN_CHUNK: Final = 1024

_K = TypeVar("_K")


class StoreError(Exception):
    """The store cannot be opened or read: corrupt, foreign, or of another format."""


class StoreLockedError(StoreError):
    """Another process (or another handle in this one) has the store open.

    :func:`open_or_rebuild` never sets such a store aside: it belongs to a
    live owner.
    """


class TaskStore(Protocol):
    """The projection one partition processor reads and writes."""

    def get(self, task_id: str) -> Task | None:
        """The stored snapshot of ``task_id``, or None."""
        ...

    def commit(
        self,
        tasks: Iterable[Task],
        events_offset: int | None,
        *,
        replace_equal: bool = False,
        deleted: Iterable[str] = (),
    ) -> None:
        """Delete rows, apply snapshots and the events offset they came from, atomically.

        The rows of ``deleted`` (tombstoned tasks) go first, with their index
        entries and counts; an id without a row is ignored. ``tasks`` then
        apply to what is left, so an id in both is a new task under a reused
        id (a tombstone followed by a new ``TaskScheduled`` in the log).
        A snapshot is applied only if its ``seq`` is higher than the stored
        one; within one call the highest ``seq`` of a task wins. With
        ``replace_equal`` (restoring from a log, where a later record of the
        same seq supersedes an earlier one), an equal ``seq`` also replaces,
        and within one call the last snapshot of a seq wins. The offset
        never goes backwards. Raises ValueError (writing nothing) for an id,
        lambda or collection containing ``\\0`` or an out-of-range integer.
        """
        ...

    def due_timeouts(self, now: int, limit: int) -> list[tuple[int, str]]:
        """(next_trigger_at, task_id) of timeout entries due at ``now``, oldest first."""
        ...

    def due_ready(self, queue: Queue, now: int, limit: int) -> list[tuple[int, str]]:
        """(next_trigger_at, task_id) of ready entries of one queue due at ``now``."""
        ...

    def finished_by(
        self, at: int, limit: int, *, dead_letters: bool = False
    ) -> list[tuple[int, str]]:
        """(finished_at, task_id) of terminal tasks that finished at or before ``at``,
        oldest first: the dead letters with ``dead_letters``, else every other
        terminal task."""
        ...

    def waiting(self) -> dict[Queue, int]:
        """Tasks in the ready index per queue, due or not."""
        ...

    def enqueued(self, lambda_name: str, priority: int) -> int:
        """Enqueued tasks of (lambda, priority); O(1), from memory."""
        ...

    def next_trigger(self) -> int | None:
        """The earliest ``next_trigger_at`` over both indexes."""
        ...

    def counts(self) -> dict[CounterKey, int]:
        """Tasks per (lambda, collection, priority, status); no zero entries."""
        ...

    def last_offset(self) -> int:
        """The last applied events offset, -1 when nothing was applied."""
        ...

    def tasks(self) -> Iterator[Task]:
        """Every stored snapshot, in task_id byte order."""
        ...

    def last_id_with_prefix(self, prefix: str) -> str | None:
        """The greatest stored task id (in byte order) that starts with ``prefix``."""
        ...

    def close(self) -> None:
        """Release the store; closing twice is fine."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


# -- the rules both adapters share -------------------------------------------------


def _check_text(what: str, value: str) -> None:
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL characters: {value!r}")


def _check_i64(what: str, value: int) -> None:
    if not _I64_MIN <= value <= _I64_MAX:
        raise ValueError(f"{what} out of the signed 64-bit range: {value}")


def _latest_by_id(tasks: Iterable[Task], later_wins: bool = False) -> dict[str, Task]:
    """Validate ``tasks`` and keep the highest ``seq`` per task (on ties the first,
    or the last with ``later_wins``)."""
    latest: dict[str, Task] = {}
    for task in tasks:
        _check_text("task_id", task.task_id)
        _check_text("lambda_name", task.lambda_name)
        _check_text("collection", task.collection)
        _check_i64("priority", task.priority)
        if task.next_trigger_at is not None:
            _check_i64("next_trigger_at", task.next_trigger_at)
        if task.finished_at is not None:
            _check_i64("finished_at", task.finished_at)
        current = latest.get(task.task_id)
        if current is None or task.seq > current.seq or (later_wins and task.seq == current.seq):
            latest[task.task_id] = task
    return latest


def _deleted_ids(deleted: Iterable[str]) -> dict[str, None]:
    """Validate ``deleted``; the ids in their order, each once."""
    ids: dict[str, None] = {}
    for task_id in deleted:
        _check_text("task_id", task_id)
        ids[task_id] = None
    return ids


def _superseded(new: Task, old: Task, replace_equal: bool) -> bool:
    """Whether the stored ``old`` stays: ``new`` is older, or equal and not replacing."""
    return new.seq < old.seq or (new.seq == old.seq and (not replace_equal or new == old))


def _is_ready(task: Task) -> bool:
    return task.next_trigger_at is not None and task.status in _READY_STATUSES


def _is_timeout(task: Task) -> bool:
    return task.next_trigger_at is not None and task.status in _TIMEOUT_STATUSES


def _is_finished(task: Task) -> bool:
    return task.finished_at is not None and task.status.terminal


def _finished_space(task: Task) -> bytes:
    return _DEAD_LETTERS if task.status is TaskStatus.DEAD_LETTERED else _FINISHED


def _queue(task: Task) -> Queue:
    return (task.lambda_name, task.collection, task.priority)


def _check_queue(queue: Queue) -> None:
    _check_text("lambda_name", queue[0])
    _check_text("collection", queue[1])
    _check_i64("priority", queue[2])


def _counter_key(task: Task) -> CounterKey:
    return (task.lambda_name, task.collection, task.priority, task.status.value)


class _Delta:
    """What one commit does to the counters, computed before anything is written."""

    __slots__ = ("status", "waiting")

    def __init__(self) -> None:
        self.status: dict[CounterKey, int] = {}
        self.waiting: dict[Queue, int] = {}

    def move(self, old: Task | None, new: Task) -> None:
        new_key = _counter_key(new)
        old_key = None if old is None else _counter_key(old)
        if old_key != new_key:
            self.status[new_key] = self.status.get(new_key, 0) + 1
            if old_key is not None:
                self.status[old_key] = self.status.get(old_key, 0) - 1
        if old is not None and _is_ready(old):
            queue = _queue(old)
            self.waiting[queue] = self.waiting.get(queue, 0) - 1
        if _is_ready(new):
            queue = _queue(new)
            self.waiting[queue] = self.waiting.get(queue, 0) + 1

    def remove(self, old: Task) -> None:
        key = _counter_key(old)
        self.status[key] = self.status.get(key, 0) - 1
        if _is_ready(old):
            queue = _queue(old)
            self.waiting[queue] = self.waiting.get(queue, 0) - 1


def _apply_counts(counters: dict[_K, int], delta: dict[_K, int]) -> dict[_K, int]:
    """The new values of the counters ``delta`` touches (0 means: remove)."""
    return {key: counters.get(key, 0) + d for key, d in delta.items() if d}


def _enqueued_by_queue(counts: dict[CounterKey, int]) -> dict[tuple[str, int], int]:
    enqueued: dict[tuple[str, int], int] = {}
    for (lambda_name, _, priority, status), n in counts.items():
        if status == _ENQUEUED:
            queue = (lambda_name, priority)
            enqueued[queue] = enqueued.get(queue, 0) + n
    return enqueued


class _Counters:
    """The in-memory counters of a store, changed only after a successful write."""

    __slots__ = ("enqueued", "status", "waiting")

    def __init__(self, status: dict[CounterKey, int], waiting: dict[Queue, int]) -> None:
        self.status = status
        self.waiting = waiting
        self.enqueued = _enqueued_by_queue(status)

    def update(self, status: dict[CounterKey, int], waiting: dict[Queue, int]) -> None:
        for key, value in status.items():
            old = self.status.get(key, 0)
            if value:
                self.status[key] = value
            else:
                self.status.pop(key, None)
            if key[3] == _ENQUEUED:
                pair = (key[0], key[2])
                n = self.enqueued.get(pair, 0) + value - old
                if n:
                    self.enqueued[pair] = n
                else:
                    self.enqueued.pop(pair, None)
        for queue, value in waiting.items():
            if value:
                self.waiting[queue] = value
            else:
                self.waiting.pop(queue, None)


# -- in memory -----------------------------------------------------------------------


class MemoryTaskStore:
    """A :class:`TaskStore` in dicts and sorted lists, for unit tests of the core."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._ready: dict[Queue, list[tuple[int, str]]] = {}
        self._timeouts: list[tuple[int, str]] = []
        self._finished: dict[bool, list[tuple[int, str]]] = {False: [], True: []}
        """(finished_at, task_id) of terminal tasks; True: of dead letters."""
        self._counters = _Counters({}, {})
        self._offset = -1
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

    def get(self, task_id: str) -> Task | None:
        self._check_open()
        return self._tasks.get(task_id)

    def commit(
        self,
        tasks: Iterable[Task],
        events_offset: int | None,
        *,
        replace_equal: bool = False,
        deleted: Iterable[str] = (),
    ) -> None:
        self._check_open()
        latest = _latest_by_id(tasks, replace_equal)
        gone = _deleted_ids(deleted)
        delta = _Delta()
        removed: list[Task] = []
        for task_id in gone:
            old = self._tasks.get(task_id)
            if old is not None:
                removed.append(old)
                delta.remove(old)
        applied: list[tuple[Task | None, Task]] = []
        for task_id, new in latest.items():
            old = None if task_id in gone else self._tasks.get(task_id)
            if old is not None and _superseded(new, old, replace_equal):
                continue
            applied.append((old, new))
            delta.move(old, new)
        status = _apply_counts(self._counters.status, delta.status)
        waiting = _apply_counts(self._counters.waiting, delta.waiting)
        # Nothing above can fail half-way through what follows.
        for old in removed:
            self._unindex(old)
            del self._tasks[old.task_id]
        for old, new in applied:
            if old is not None:
                self._unindex(old)
            self._index(new)
            self._tasks[new.task_id] = new
        self._counters.update(status, waiting)
        if events_offset is not None and events_offset > self._offset:
            self._offset = events_offset

    def _index(self, task: Task) -> None:
        if _is_finished(task):
            assert task.finished_at is not None
            entries = self._finished[task.status is TaskStatus.DEAD_LETTERED]
            bisect.insort(entries, (task.finished_at, task.task_id))
        if task.next_trigger_at is None:
            return
        entry = (task.next_trigger_at, task.task_id)
        if task.status in _READY_STATUSES:
            queue = self._ready.setdefault(_queue(task), [])
            bisect.insort(queue, entry)
        elif task.status in _TIMEOUT_STATUSES:
            bisect.insort(self._timeouts, entry)

    def _unindex(self, task: Task) -> None:
        if _is_finished(task):
            assert task.finished_at is not None
            entries = self._finished[task.status is TaskStatus.DEAD_LETTERED]
            del entries[bisect.bisect_left(entries, (task.finished_at, task.task_id))]
        if task.next_trigger_at is None:
            return
        entry = (task.next_trigger_at, task.task_id)
        if task.status in _READY_STATUSES:
            key = _queue(task)
            queue = self._ready[key]
            del queue[bisect.bisect_left(queue, entry)]
            if not queue:
                del self._ready[key]
        elif task.status in _TIMEOUT_STATUSES:
            del self._timeouts[bisect.bisect_left(self._timeouts, entry)]

    def due_timeouts(self, now: int, limit: int) -> list[tuple[int, str]]:
        self._check_open()
        return _due(self._timeouts, now, limit)

    def due_ready(self, queue: Queue, now: int, limit: int) -> list[tuple[int, str]]:
        self._check_open()
        _check_queue(queue)
        return _due(self._ready.get(queue, []), now, limit)

    def finished_by(
        self, at: int, limit: int, *, dead_letters: bool = False
    ) -> list[tuple[int, str]]:
        self._check_open()
        return _due(self._finished[dead_letters], at, limit)

    def waiting(self) -> dict[Queue, int]:
        self._check_open()
        return dict(self._counters.waiting)

    def enqueued(self, lambda_name: str, priority: int) -> int:
        return self._counters.enqueued.get((lambda_name, priority), 0)

    def next_trigger(self) -> int | None:
        self._check_open()
        firsts = [queue[0][0] for queue in self._ready.values()]
        if self._timeouts:
            firsts.append(self._timeouts[0][0])
        return min(firsts, default=None)

    def counts(self) -> dict[CounterKey, int]:
        self._check_open()
        return dict(self._counters.status)

    def last_offset(self) -> int:
        self._check_open()
        return self._offset

    def tasks(self) -> Iterator[Task]:
        self._check_open()
        # Code-point order is the byte order of UTF-8, so this matches RocksDB.
        for task_id in sorted(self._tasks):
            yield self._tasks[task_id]

    def last_id_with_prefix(self, prefix: str) -> str | None:
        self._check_open()
        return max((task_id for task_id in self._tasks if task_id.startswith(prefix)), default=None)


def _due(entries: list[tuple[int, str]], now: int, limit: int) -> list[tuple[int, str]]:
    if limit <= 0:
        return []
    # Ids sort by code point here and by UTF-8 byte in RocksDB: the same order.
    end = bisect.bisect_right(entries, now, key=lambda entry: entry[0])
    return entries[: min(end, limit)]


# -- RocksDB --------------------------------------------------------------------------


def _i64(value: int) -> bytes:
    return _U64.pack(value + _BIAS)


def _from_i64(data: bytes) -> int:
    value: int = _U64.unpack(data)[0]
    return value - _BIAS


def _ready_prefix(queue: Queue) -> bytes:
    lambda_name, collection, priority = queue
    return lambda_name.encode() + b"\x00" + collection.encode() + b"\x00" + _i64(priority)


def _ready_key(task: Task) -> bytes:
    assert task.next_trigger_at is not None
    return _ready_prefix(_queue(task)) + _i64(task.next_trigger_at) + task.task_id.encode()


def _timeout_key(task: Task) -> bytes:
    assert task.next_trigger_at is not None
    return _i64(task.next_trigger_at) + task.task_id.encode()


def _finished_key(task: Task) -> bytes:
    assert task.finished_at is not None
    return _finished_space(task) + _i64(task.finished_at) + task.task_id.encode()


def _status_counter_key(key: CounterKey) -> bytes:
    lambda_name, collection, priority, status = key
    return (
        _STATUS_COUNTER
        + lambda_name.encode()
        + b"\x00"
        + collection.encode()
        + b"\x00"
        + _i64(priority)
        + status.encode()
    )


def _parse_status_counter_key(key: bytes) -> CounterKey:
    lambda_end = key.index(b"\x00", 1)
    collection_end = key.index(b"\x00", lambda_end + 1)
    priority_end = collection_end + 9
    return (
        key[1:lambda_end].decode(),
        key[lambda_end + 1 : collection_end].decode(),
        _from_i64(key[collection_end + 1 : priority_end]),
        key[priority_end:].decode(),
    )


def _waiting_counter_key(queue: Queue) -> bytes:
    return _WAITING_COUNTER + _ready_prefix(queue)


def _parse_waiting_counter_key(key: bytes) -> Queue:
    lambda_end = key.index(b"\x00", 1)
    collection_end = key.index(b"\x00", lambda_end + 1)
    return (
        key[1:lambda_end].decode(),
        key[lambda_end + 1 : collection_end].decode(),
        _from_i64(key[collection_end + 1 : collection_end + 9]),
    )


def _db_options() -> RocksOptions:
    options = RocksOptions(raw_mode=True)
    options.create_if_missing(True)
    options.create_missing_column_families(True)
    options.increase_parallelism(max(2, min(os.cpu_count() or 2, 8)))
    options.set_max_background_jobs(4)
    options.set_keep_log_file_num(4)
    # Small column families (meta, counters) would otherwise pin old WAL files.
    options.set_max_total_wal_size(256 << 20)
    return options


def _cf_options(cache: Cache, *, point_lookups: bool, queue_like: bool) -> RocksOptions:
    options = RocksOptions(raw_mode=True)
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    if point_lookups:
        table.set_bloom_filter(10, False)
    options.set_block_based_table_factory(table)
    options.set_compression_type(DBCompressionType.lz4())
    if queue_like:
        # Index entries are deleted as tasks move on, leaving tombstones right
        # where the due scans start; compact files that fill up with them.
        options.add_compact_on_deletion_collector_factory(1024, 512, 0.5)
    return options


def _is_lock_error(message: str) -> bool:
    return "/LOCK" in message or "lock hold" in message.lower()


class RocksTaskStore:
    """A :class:`TaskStore` in RocksDB (rocksdict, raw mode); open with :meth:`open`."""

    def __init__(self, db: Rdict, path: Path, cache_size: int) -> None:
        # Use open(): this only wires an already opened database.
        self._db: Rdict | None = db
        self._path = path
        self._cf = {name: db.get_column_family(name) for name in _COLUMN_FAMILIES}
        self._handle = {name: db.get_column_family_handle(name) for name in _COLUMN_FAMILIES}
        self._cache: OrderedDict[str, Task] = OrderedDict()
        self._cache_size = cache_size
        self._offset = -1
        self._counters = _Counters({}, {})
        self._floors: dict[tuple[str, bytes], bytes | None] = {}
        """Per index range, (column family, the range's prefix: b"" for the
        timeouts, a queue's prefix for its ready keys, a kind for the finished
        keys): a key no live key of the range is below, or None when the range
        is empty. Absent: the range's start.

        RocksDB keeps a deleted key as a tombstone until a compaction, and a
        seek steps over every tombstone after its target. Every task leaves a
        trail of deleted trigger keys at the front of these ranges, so seeking
        from the range's start cost more with every task ever done (measured:
        an idle processor's CPU went from 1% to 12% after 10,000 tasks).
        Seeking from the floor steps over only what was deleted since the
        last seek."""

    def _floor(self, cf_name: str, space: bytes) -> bytes | None:
        return self._floors.get((cf_name, space), space)

    def _lower_floor(self, cf_name: str, space: bytes, key: bytes) -> None:
        floor = self._floor(cf_name, space)
        if floor is None or key < floor:
            self._floors[cf_name, space] = key

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, cache_size: int = 16384) -> RocksTaskStore:
        """Open the store at ``path``, creating it (and its parents) if missing.

        ``cache_size`` bounds the decoded snapshots kept in memory for the tasks
        touched last (a commit reads the stored snapshot of every task it
        changes). Raises :class:`StoreLockedError` if the store is open
        elsewhere, :class:`StoreError` if it is unreadable, foreign or of
        another format version.
        """
        where = Path(path)
        if where.exists() and not where.is_dir():
            raise StoreError(f"task store {where}: exists and is not a directory")
        if where.is_dir() and any(where.iterdir()) and not (where / "CURRENT").exists():
            raise StoreError(f"task store {where}: not a RocksDB directory (no CURRENT file)")
        try:
            where.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"task store {where}: cannot create it: {exc}") from exc
        block_cache = Cache(64 << 20)
        column_families = {
            name: _cf_options(
                block_cache,
                point_lookups=name == "tasks",
                queue_like=name in ("ready", "timeouts", "finished"),
            )
            for name in _COLUMN_FAMILIES
        }
        try:
            db = Rdict(str(where), _db_options(), column_families=column_families)
        except Exception as exc:
            message = str(exc)
            if _is_lock_error(message):
                raise StoreLockedError(
                    f"task store {where} is already open (in this or another process): {message}"
                ) from exc
            raise StoreError(f"task store {where}: cannot open: {message}") from exc
        store = cls(db, where, cache_size)
        try:
            store._load()
        except BaseException:
            store.close()
            raise
        return store

    def _load(self) -> None:
        meta = self._cf["meta"]
        try:
            version = meta.get(_META_FORMAT)
            if version is None:
                if any(self._first_key(name) is not None for name in _COLUMN_FAMILIES):
                    raise StoreError(
                        f"task store {self._path}: has data but no format version; "
                        "not an atf-es task store"
                    )
                meta[_META_FORMAT] = str(FORMAT_VERSION).encode()
                return
            if version != str(FORMAT_VERSION).encode():
                raise StoreError(
                    f"task store {self._path}: format version {version!r}, "
                    f"this build reads version {FORMAT_VERSION}"
                )
            offset = meta.get(_META_OFFSET)
            self._offset = -1 if offset is None else _from_i64(offset)
            status: dict[CounterKey, int] = {}
            waiting: dict[Queue, int] = {}
            for key, value in self._scan("counters", b"", None, None):
                n = _from_i64(value)
                if key[:1] == _STATUS_COUNTER:
                    status[_parse_status_counter_key(key)] = n
                elif key[:1] == _WAITING_COUNTER:
                    waiting[_parse_waiting_counter_key(key)] = n
                else:
                    raise StoreError(f"task store {self._path}: unknown counter {key!r}")
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"task store {self._path}: unreadable: {exc}") from exc
        self._counters = _Counters(status, waiting)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        db, self._db = self._db, None
        if db is None:
            return
        # Column-family handles keep the database (and its LOCK) alive.
        for cf in self._cf.values():
            cf.close()
        self._cf.clear()
        self._handle.clear()
        self._cache.clear()
        db.close()

    def _live(self) -> Rdict:
        if self._db is None:
            raise StoreError(f"task store {self._path} is closed")
        return self._db

    # -- reads

    def _first_key(self, cf_name: str) -> bytes | None:
        for key, _ in self._scan(cf_name, b"", None, 1):
            return key
        return None

    def _scan(
        self, cf_name: str, lower: bytes, upper: bytes | None, limit: int | None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Entries with ``lower <= key < upper``, read in chunks.

        No RocksDB iterator outlives a chunk, so an abandoned scan never keeps
        the database open after :meth:`close`.
        """
        remaining = limit
        start = lower
        skip_start = False
        while remaining is None or remaining > 0:
            chunk = _SCAN_CHUNK if remaining is None else min(remaining, _SCAN_CHUNK)
            entries = self._read_chunk(cf_name, start, upper, chunk + int(skip_start))
            if skip_start:
                entries = entries[1:] if entries and entries[0][0] == start else entries[:chunk]
            yield from entries
            if len(entries) < chunk:
                return
            if remaining is not None:
                remaining -= len(entries)
            start = entries[-1][0]
            skip_start = True

    def _read_chunk(
        self, cf_name: str, start: bytes, upper: bytes | None, count: int
    ) -> list[tuple[bytes, bytes]]:
        self._live()
        read_options = ReadOptions()
        if upper is not None:
            read_options.set_iterate_upper_bound(upper)
        it = self._cf[cf_name].iter(read_options)
        try:
            it.seek(start)
            entries: list[tuple[bytes, bytes]] = []
            while len(entries) < count and it.valid():
                entries.append((it.key(), it.value()))
                it.next()
            return entries
        finally:
            del it

    def last_id_with_prefix(self, prefix: str) -> str | None:
        self._live()
        start = prefix.encode()
        it = self._cf["tasks"].iter(ReadOptions())
        try:
            # No UTF-8 text holds the byte 0xff: every id with the prefix sorts below this.
            it.seek_for_prev(start + b"\xff")
            if it.valid() and (key := it.key()).startswith(start):
                return str(key.decode())
            return None
        finally:
            del it

    def _decode(self, task_id: str, data: bytes) -> Task:
        try:
            return decode_task(data)
        except DecodeError as exc:
            raise StoreError(f"task store {self._path}: row {task_id!r}: {exc}") from exc

    def _remember(self, task: Task) -> None:
        cache = self._cache
        cache[task.task_id] = task
        cache.move_to_end(task.task_id)
        if len(cache) > self._cache_size:
            cache.popitem(last=False)

    def get(self, task_id: str) -> Task | None:
        self._live()
        task = self._cache.get(task_id)
        if task is not None:
            return task
        data = self._cf["tasks"].get(task_id.encode())
        if data is None:
            return None
        task = self._decode(task_id, data)
        self._remember(task)
        return task

    def _get_many(self, task_ids: list[str]) -> dict[str, Task]:
        found: dict[str, Task] = {}
        missing: list[str] = []
        for task_id in task_ids:
            task = self._cache.get(task_id)
            if task is None:
                missing.append(task_id)
            else:
                found[task_id] = task
        if missing:
            keys: list[str | int | float | bytes | bool] = [t.encode() for t in missing]
            rows = cast("list[bytes | None]", self._cf["tasks"][keys])
            for task_id, data in zip(missing, rows, strict=True):
                if data is not None:
                    found[task_id] = self._decode(task_id, data)
        return found

    # -- the write

    def commit(
        self,
        tasks: Iterable[Task],
        events_offset: int | None,
        *,
        replace_equal: bool = False,
        deleted: Iterable[str] = (),
    ) -> None:
        db = self._live()
        latest = _latest_by_id(tasks, replace_equal)
        gone = _deleted_ids(deleted)
        advance = events_offset is not None and events_offset > self._offset
        if not latest and not gone and not advance:
            return
        stored = self._get_many(list({**gone, **dict.fromkeys(latest)}))
        tasks_cf = self._handle["tasks"]
        batch = WriteBatch(raw_mode=True)
        delta = _Delta()
        removed: list[str] = []
        applied: list[Task] = []
        added: list[tuple[str, bytes, bytes]] = []
        """(column family, index range, key) of every index key written."""
        for task_id in gone:
            old = stored.get(task_id)
            if old is None:
                continue
            batch.delete(task_id.encode(), tasks_cf)
            self._unindex(batch, old)
            delta.remove(old)
            removed.append(task_id)
        for task_id, new in latest.items():
            old = None if task_id in gone else stored.get(task_id)
            if old is not None:
                if _superseded(new, old, replace_equal):
                    continue
                self._unindex(batch, old)
            # A delete followed by a put of the same key in one batch is a put.
            batch.put(task_id.encode(), encode_task(new), tasks_cf)
            added.extend(self._index(batch, new))
            delta.move(old, new)
            applied.append(new)
        status = _apply_counts(self._counters.status, delta.status)
        waiting = _apply_counts(self._counters.waiting, delta.waiting)
        counters_cf = self._handle["counters"]
        for key, value in status.items():
            if value:
                batch.put(_status_counter_key(key), _i64(value), counters_cf)
            else:
                batch.delete(_status_counter_key(key), counters_cf)
        for queue, value in waiting.items():
            if value:
                batch.put(_waiting_counter_key(queue), _i64(value), counters_cf)
            else:
                batch.delete(_waiting_counter_key(queue), counters_cf)
        if advance:
            assert events_offset is not None
            batch.put(_META_OFFSET, _i64(events_offset), self._handle["meta"])
        if batch.is_empty():
            return
        try:
            db.write(batch)
        except Exception as exc:
            raise StoreError(f"task store {self._path}: write failed: {exc}") from exc
        for task_id in removed:
            self._cache.pop(task_id, None)
        for task in applied:
            self._remember(task)
        for cf_name, space, index_key in added:
            self._lower_floor(cf_name, space, index_key)
        self._counters.update(status, waiting)
        if advance:
            assert events_offset is not None
            self._offset = events_offset

    def _index(self, batch: WriteBatch, task: Task) -> list[tuple[str, bytes, bytes]]:
        """Put ``task``'s index entries into ``batch``; returns (cf, range, key) of each."""
        added: list[tuple[str, bytes, bytes]] = []
        if _is_ready(task):
            added.append(("ready", _ready_prefix(_queue(task)), _ready_key(task)))
        elif _is_timeout(task):
            added.append(("timeouts", b"", _timeout_key(task)))
        if _is_finished(task):
            added.append(("finished", _finished_space(task), _finished_key(task)))
        for cf_name, _, key in added:
            batch.put(key, b"", self._handle[cf_name])
        return added

    def _unindex(self, batch: WriteBatch, task: Task) -> None:
        """Delete ``task``'s index entries in ``batch``."""
        if _is_ready(task):
            batch.delete(_ready_key(task), self._handle["ready"])
        elif _is_timeout(task):
            batch.delete(_timeout_key(task), self._handle["timeouts"])
        if _is_finished(task):
            batch.delete(_finished_key(task), self._handle["finished"])

    # -- the indexes

    def due_timeouts(self, now: int, limit: int) -> list[tuple[int, str]]:
        self._live()
        if limit <= 0 or now < _I64_MIN:
            return []
        floor = self._floor("timeouts", b"")
        if floor is None:
            return []
        upper = None if now >= _I64_MAX else _i64(now + 1)
        return [
            (_from_i64(key[:8]), key[8:].decode())
            for key, _ in self._scan("timeouts", floor, upper, limit)
        ]

    def due_ready(self, queue: Queue, now: int, limit: int) -> list[tuple[int, str]]:
        self._live()
        _check_queue(queue)
        if limit <= 0 or now < _I64_MIN:
            return []
        prefix = _ready_prefix(queue)
        floor = self._floor("ready", prefix)
        if floor is None:
            return []
        upper = prefix + _i64(now + 1) if now < _I64_MAX else _prefix_end(prefix)
        start = len(prefix)
        return [
            (_from_i64(key[start : start + 8]), key[start + 8 :].decode())
            for key, _ in self._scan("ready", floor, upper, limit)
        ]

    def finished_by(
        self, at: int, limit: int, *, dead_letters: bool = False
    ) -> list[tuple[int, str]]:
        self._live()
        if limit <= 0 or at < _I64_MIN:
            return []
        space = _DEAD_LETTERS if dead_letters else _FINISHED
        floor = self._floor("finished", space)
        if floor is None:
            return []
        upper = space + _i64(at + 1) if at < _I64_MAX else _prefix_end(space)
        keys = [key for key, _ in self._scan("finished", floor, upper, limit)]
        # Nothing live lies below the first key found, or below ``upper`` if
        # none was: the next call starts there. This index has no
        # next_trigger() to raise its floors, and it is scanned on every poll.
        if keys:
            self._floors["finished", space] = keys[0]
        elif at >= _I64_MAX:
            self._floors["finished", space] = None
        elif upper > floor:
            self._floors["finished", space] = upper
        return [(_from_i64(key[1:9]), key[9:].decode()) for key in keys]

    def waiting(self) -> dict[Queue, int]:
        self._live()
        return dict(self._counters.waiting)

    def enqueued(self, lambda_name: str, priority: int) -> int:
        return self._counters.enqueued.get((lambda_name, priority), 0)

    def next_trigger(self) -> int | None:
        self._live()
        firsts: list[int] = []
        first = self._first_in("timeouts", b"", None)
        if first is not None:
            firsts.append(_from_i64(first[:8]))
        # One seek per (lambda, collection, priority) queue: there are few of them.
        for queue in self._counters.waiting:
            prefix = _ready_prefix(queue)
            first = self._first_in("ready", prefix, _prefix_end(prefix))
            if first is not None:
                firsts.append(_from_i64(first[len(prefix) : len(prefix) + 8]))
        return min(firsts, default=None)

    def _first_in(self, cf_name: str, space: bytes, upper: bytes | None) -> bytes | None:
        """The first live key of an index range; raises its floor to it."""
        floor = self._floor(cf_name, space)
        if floor is None:
            return None
        found = next((key for key, _ in self._scan(cf_name, floor, upper, 1)), None)
        self._floors[cf_name, space] = found
        return found

    def counts(self) -> dict[CounterKey, int]:
        self._live()
        return dict(self._counters.status)

    def last_offset(self) -> int:
        self._live()
        return self._offset

    def tasks(self) -> Iterator[Task]:
        self._live()
        for key, data in self._scan("tasks", b"", None, None):
            yield self._decode(key.decode(), data)


def _prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        raise ValueError("a prefix of only 0xff bytes has no end")
    return stripped[:-1] + bytes([stripped[-1] + 1])


# -- recovery --------------------------------------------------------------------------


def _aside_path(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    candidate = path.with_name(f"{path.name}.broken-{stamp}")
    n = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.broken-{stamp}-{n}")
        n += 1
    return candidate


def open_or_rebuild(
    path: str | os.PathLike[str], *, cache_size: int = 16384
) -> tuple[RocksTaskStore, bool]:
    """Open the store at ``path``; if it is unreadable, set it aside and start empty.

    The broken directory is renamed to ``<path>.broken-<UTC timestamp>``, never
    deleted, and a fresh store is opened; ``rebuilt`` is then True and the
    caller restores the projection from the events log (a fresh store's
    :meth:`~RocksTaskStore.last_offset` is -1). A store held open by someone
    else is not broken: :class:`StoreLockedError` propagates.
    """
    where = Path(path)
    try:
        return RocksTaskStore.open(where, cache_size=cache_size), False
    except StoreLockedError:
        raise
    except StoreError as exc:
        aside = _aside_path(where)
        log.warning("task store %s is unusable (%s); moving it to %s", where, exc, aside)
        try:
            where.rename(aside)
        except OSError as move_exc:
            raise StoreError(
                f"task store {where} is unusable ({exc}) and cannot be moved aside: {move_exc}"
            ) from move_exc
    return RocksTaskStore.open(where, cache_size=cache_size), True
