"""Replay: rebuild projections from the event log, as of now or as of a time, and verify them.

Every transition of a task is one record of ``<prefix>.task-events`` carrying
the event and the full snapshot after it, so a projection is a fold over the
log that keeps, per task, the snapshot of its highest ``seq``.
:func:`replay` does that fold into a directory of its own, one
:class:`~atf_es.projections.store.RocksTaskStore` per partition under
``<into>/p<N>`` (the layout of a processor's ``<data_dir>/processor/<ID>``),
without touching any processor:

* ``until``: the state as of that time (epoch ms). A task's state is the
  snapshot of its highest-``seq`` event with ``at <= until``; a task whose
  first event is later did not exist. Compaction keeps every event for
  ``min.compaction.lag.ms`` (the audit window) only, so the state as of a time
  before the window may be incomplete.
* ``lambda_name``: only that lambda's tasks.

:func:`verify` compares a rebuilt directory with a live processor's, opened
read-only (:func:`open_read_only`), so the processor may keep running: rows
field by field, counters, waiting counts and the indexes (ready, timeouts and,
in stores that have it, finished).
:func:`replay_and_verify` rebuilds up to exactly the offsets the live stores
had applied, so the two are compared at one position of the log.

Reading a partition ends at its end as a ``read_committed`` reader sees it
(the last stable offset) when it starts; records of transactions still open
then are not part of the rebuild. As when a processor restores, at equal
``seq`` the later record wins (brokers that do not filter aborted
transactions, the embedded one, show both copies of a retried batch). A
tombstone (a record without value) deletes its task; for ``until`` it counts
at its record timestamp.

See docs/replay.md.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TextIO

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaException,
    Message,
    TopicPartition,
)
from rocksdict import AccessType, Rdict
from rocksdict import Options as RocksOptions

from atf_es import history, kafka_clients
from atf_es.config import Settings
from atf_es.events import Task
from atf_es.events.codec import DecodeError, decode_event
from atf_es.events.records import task_id_of_key
from atf_es.projections.store import CounterKey, Queue, RocksTaskStore, StoreError
from atf_es.topics import Topics

__all__ = [
    "FieldDiff",
    "PartitionReplay",
    "PartitionVerify",
    "ProgressPrinter",
    "ReplayError",
    "ReplayProgress",
    "ReplayResult",
    "TaskDiff",
    "VerifyReport",
    "compare_stores",
    "live_offsets",
    "open_read_only",
    "partition_dirs",
    "replay",
    "replay_and_verify",
    "state_as_of",
    "verify",
]

log = logging.getLogger(__name__)

CHUNK: Final = 5_000
"""Tasks per store commit while replaying."""
READ_BATCH: Final = 5_000
"""Records asked of the consumer at a time."""
_DRAIN_PASSES: Final = 100
STALL_TIMEOUT_S: Final = 60.0
"""How long a partition may bring nothing while short of its end before replay gives up."""
DEFAULT_MAX_DIFFS: Final = 20
_FOREVER: Final = 2**63 - 1
_ALL: Final = 2**62
_METADATA_TIMEOUT_S: Final = 30.0


class ReplayError(Exception):
    """The log cannot be replayed, or a directory cannot be used."""


# -- replay --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayProgress:
    """Where a replay is, handed to the ``progress`` callback after every read."""

    partition: int
    index: int
    """Which of the partitions being replayed this is (0-based)."""
    partitions: int
    """How many partitions the replay reads."""
    records: int
    """Records read from this partition so far."""
    records_total: int
    """Records read from every partition so far."""
    done: int
    """Offsets of this partition covered so far."""
    total: int
    """Offsets to cover in this partition: an estimate of its records (transaction
    markers and what compaction removed take offsets too)."""
    finished: bool
    """True on the last report of a partition."""
    elapsed: float
    """Seconds since the replay started."""


@dataclass(frozen=True, slots=True)
class PartitionReplay:
    """What replaying one partition did."""

    partition: int
    records: int
    """Records read (tombstones and unreadable ones included)."""
    applied: int
    """Records that went into the projection (events and tombstones)."""
    after_until: int
    """Records left out because they came after ``until``."""
    other_lambdas: int
    """Events left out because their task is another lambda's."""
    tombstones: int
    """Tombstones applied: the tasks they name are not in the projection."""
    unreadable: int
    """Records that did not decode as task events; skipped and logged."""
    tasks: int
    """Tasks in the rebuilt store."""
    last_offset: int
    """The last offset read: the rebuilt store's ``last_offset()`` (-1: none)."""
    seconds: float


@dataclass(frozen=True, slots=True)
class ReplayResult:
    into: Path
    until: int | None
    lambda_name: str | None
    partitions: tuple[PartitionReplay, ...]
    seconds: float

    @property
    def records(self) -> int:
        return sum(p.records for p in self.partitions)

    @property
    def tasks(self) -> int:
        return sum(p.tasks for p in self.partitions)

    @property
    def unreadable(self) -> int:
        return sum(p.unreadable for p in self.partitions)

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """A few lines for a human: what was read, what was built, where."""
        scope = []
        if self.until is not None:
            when = datetime.fromtimestamp(self.until / 1000, tz=UTC)
            stamp = when.strftime("%Y-%m-%d %H:%M:%S.") + f"{self.until % 1000:03d} UTC"
            scope.append(f"as of {stamp} ({self.until} epoch ms)")
        if self.lambda_name is not None:
            scope.append(f"lambda {self.lambda_name!r} only")
        lines = [
            f"replayed {self.records:,} records of {len(self.partitions)} "
            f"partition{'' if len(self.partitions) == 1 else 's'} in "
            f"{self.seconds:.1f}s ({self.records_per_second:,.0f} records/s)"
            + (f", {', '.join(scope)}" if scope else ""),
            f"rebuilt {self.tasks:,} tasks into {self.into}",
        ]
        for p in self.partitions:
            lines.append(
                f"  p{p.partition}: {p.tasks:,} tasks from {p.records:,} records "
                f"(through offset {p.last_offset}; left out: {p.after_until:,} after --until, "
                f"{p.other_lambdas:,} of other lambdas; {p.tombstones:,} tombstones, "
                f"{p.unreadable:,} unreadable)"
            )
        return "\n".join(lines)


def partition_dirs(root: Path) -> dict[int, Path]:
    """The ``p<N>`` store directories under ``root``, by partition."""
    found: dict[int, Path] = {}
    if not root.is_dir():
        return found
    for child in root.iterdir():
        name = child.name
        if child.is_dir() and name[:1] == "p" and name[1:].isdigit():
            found[int(name[1:])] = child
    return dict(sorted(found.items()))


def replay(
    settings: Settings,
    bootstrap: str,
    into: Path,
    *,
    until: int | None = None,
    lambda_name: str | None = None,
    partitions: Sequence[int] | None = None,
    progress: Callable[[ReplayProgress], None] | None = None,
    through: Mapping[int, int] | None = None,
) -> ReplayResult:
    """Rebuild the projection of every (or each given) partition into ``into/p<N>``.

    Each partition is read from its start to its end as it is when its read
    starts (or through offset ``through[N]``, inclusive, when given: where a
    live store stood; -1 reads nothing). ``until`` (epoch ms) and
    ``lambda_name`` narrow what is rebuilt (see the module's docstring).
    ``into/p<N>`` must not exist or be empty: a replay never writes over a
    store. Raises :class:`ReplayError`.
    """
    started = time.monotonic()
    into = Path(into)
    topic = Topics(settings.topic_prefix).task_events
    available = _partitions_of(settings, bootstrap, topic)
    chosen = sorted(set(available if partitions is None else partitions))
    if not chosen:
        raise ReplayError(f"{topic}: no partitions to replay")
    missing = [p for p in chosen if p not in available]
    if missing:
        raise ReplayError(f"{topic} has no partition {missing} (it has {len(available)})")
    for partition in chosen:
        where = into / f"p{partition}"
        if where.exists() and (not where.is_dir() or any(where.iterdir())):
            raise ReplayError(
                f"{where} exists and is not empty: replay writes into a new directory only"
            )
    results: list[PartitionReplay] = []
    for index, partition in enumerate(chosen):
        stop_at = None if through is None else through.get(partition)
        reader = _Reader(
            settings,
            bootstrap,
            topic,
            partition,
            into / f"p{partition}",
            until=until,
            lambda_name=lambda_name,
            stop_at=stop_at,
            report=_reporter(
                progress,
                partition=partition,
                index=index,
                count=len(chosen),
                started=started,
                before=sum(r.records for r in results),
            ),
        )
        results.append(reader.run())
    return ReplayResult(into, until, lambda_name, tuple(results), time.monotonic() - started)


def _reporter(
    progress: Callable[[ReplayProgress], None] | None,
    *,
    partition: int,
    index: int,
    count: int,
    started: float,
    before: int,
) -> Callable[[int, int, int, bool], None]:
    def report(records: int, done: int, total: int, finished: bool) -> None:
        if progress is not None:
            progress(
                ReplayProgress(
                    partition,
                    index,
                    count,
                    records,
                    before + records,
                    min(done, total),
                    total,
                    finished,
                    time.monotonic() - started,
                )
            )

    return report


def _partitions_of(settings: Settings, bootstrap: str, topic: str) -> list[int]:
    reader = kafka_clients.consumer(bootstrap, kafka_config=settings.kafka_config)
    try:
        metadata = reader.list_topics(topic, timeout=_METADATA_TIMEOUT_S)
    except KafkaException as exc:
        raise ReplayError(f"cannot read the partitions of {topic}: {exc}") from exc
    finally:
        reader.close()
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        why = "it does not exist" if found is None or found.error is None else found.error
        raise ReplayError(f"cannot read the partitions of {topic}: {why}")
    return sorted(found.partitions)


class _Reader:
    """Replays one partition into one new store."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        topic: str,
        partition: int,
        path: Path,
        *,
        until: int | None,
        lambda_name: str | None,
        stop_at: int | None,
        report: Callable[[int, int, int, bool], None],
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.source = TopicPartition(topic, partition)
        self.path = path
        self.until = until
        self.lambda_name = lambda_name
        self.stop_at = stop_at
        self.report = report
        self.pending: dict[str, Task] = {}
        self.deleted: set[str] = set()
        """Ids tombstoned since the last commit: deleted by the next one, before
        ``pending`` (which may hold a new life of the same id) is applied."""
        self.records = self.applied = self.after_until = self.other_lambdas = 0
        self.tombstones = self.unreadable = 0
        self.last = -1

    def run(self) -> PartitionReplay:
        """Build the store in ``p<N>.partial`` and rename it ``p<N>`` once complete,
        so an interrupted replay never leaves what looks like a finished store."""
        started = time.monotonic()
        work = self.path.with_name(self.path.name + ".partial")
        try:
            if work.exists():
                shutil.rmtree(work)  # what an interrupted replay left
            store = RocksTaskStore.open(work)
        except (OSError, StoreError) as exc:
            raise ReplayError(f"{work}: {exc}") from exc
        try:
            reader = kafka_clients.consumer(self.bootstrap, kafka_config=self.settings.kafka_config)
            try:
                self._read(reader, store)
            finally:
                reader.close()
            self._commit(store, self.last if self.last >= 0 else None)
            tasks = sum(store.counts().values())
        finally:
            store.close()
        if self.path.exists():
            self.path.rmdir()  # checked empty before the replay started
        work.rename(self.path)
        return PartitionReplay(
            self.source.partition,
            self.records,
            self.applied,
            self.after_until,
            self.other_lambdas,
            self.tombstones,
            self.unreadable,
            tasks,
            self.last,
            time.monotonic() - started,
        )

    def _read(self, reader: Consumer, store: RocksTaskStore) -> None:
        source = self.source
        ends = kafka_clients.end_reader(self.bootstrap, kafka_config=self.settings.kafka_config)
        try:
            low, _ = reader.get_watermark_offsets(source, timeout=_METADATA_TIMEOUT_S)
            # Not the reader's own end: see kafka_clients.log_ends.
            end = kafka_clients.log_ends(
                ends, source.topic, [source.partition], _METADATA_TIMEOUT_S
            )[source.partition]
        except KafkaException as exc:
            raise ReplayError(f"{source.topic}[{source.partition}]: {exc}") from exc
        finally:
            ends.close()
        target = end if self.stop_at is None else self.stop_at + 1
        total = max(0, target - low)
        self.report(0, 0, total, False)
        if target <= low:
            self.report(0, total, total, True)
            return
        reader.assign([TopicPartition(source.topic, source.partition, low)])
        position = low
        idle_since = time.monotonic()
        # Done when the position reaches the end, not when a record at the end
        # arrives: a transactional log ends in a commit marker, which no
        # consumer ever receives.
        while position < target:
            messages = kafka_clients.consume(reader, READ_BATCH, 0.1)
            self._take_all(messages, store)
            position = max(position, reader.position([source])[0].offset)
            now = time.monotonic()
            if messages:
                idle_since = now
                self.report(self.records, position - low, total, False)
            elif now - idle_since > STALL_TIMEOUT_S:
                raise ReplayError(
                    f"{source.topic}[{source.partition}]: nothing arrived for "
                    f"{STALL_TIMEOUT_S:g}s at offset {position}, short of offset {target}"
                )
        # The embedded broker reports the end as the last batch's base offset
        # + 1: the rest of that batch has arrived with it. Take what is here,
        # never waiting (that would chase records written since).
        for _ in range(_DRAIN_PASSES):
            messages = kafka_clients.consume(reader, READ_BATCH, 0.0)
            if not messages:
                break
            self._take_all(messages, store)
        self.report(self.records, total, total, True)

    def _take_all(self, messages: list[Message], store: RocksTaskStore) -> None:
        for message in messages:
            if message.error() is None:
                self._take(message)
        if len(self.pending) + len(self.deleted) >= CHUNK:
            self._commit(store, self.last)

    def _commit(self, store: RocksTaskStore, offset: int | None) -> None:
        store.commit(self.pending.values(), offset, replace_equal=True, deleted=self.deleted)
        self.pending.clear()
        self.deleted.clear()

    def _take(self, message: Message) -> None:
        offset = message.offset()
        assert offset is not None
        if self.stop_at is not None and offset > self.stop_at:
            return
        self.records += 1
        self.last = offset
        value = message.value()
        if value is None:
            key = message.key()
            kind, stamp = message.timestamp()
            if self.until is not None and kind != TIMESTAMP_NOT_AVAILABLE and stamp > self.until:
                self.after_until += 1
                return
            task_id = task_id_of_key(key)
            if task_id is None:
                self.unreadable += 1
                log.warning(
                    "p%d offset %d: a tombstone without a task id key", self.partition, offset
                )
                return
            self._forget(task_id)
            return
        try:
            event, task = decode_event(value)
        except DecodeError as exc:
            self.unreadable += 1
            log.warning("p%d offset %d: %s", self.partition, offset, exc)
            return
        if self.until is not None and event.at > self.until:
            self.after_until += 1
            return
        if self.lambda_name is not None and task.lambda_name != self.lambda_name:
            self.other_lambdas += 1
            return
        self.applied += 1
        current = self.pending.get(task.task_id)
        # At equal seq the later record wins, as in restore_partition.
        if current is None or task.seq >= current.seq:
            self.pending[task.task_id] = task

    @property
    def partition(self) -> int:
        return self.source.partition

    def _forget(self, task_id: str) -> None:
        self.tombstones += 1
        self.applied += 1
        self.pending.pop(task_id, None)
        self.deleted.add(task_id)


# -- progress --------------------------------------------------------------------------


class ProgressPrinter:
    """Draws :class:`ReplayProgress` on a stream: a redrawn bar on a terminal, lines otherwise.

    On a terminal the bar is redrawn at most every ``tty_interval`` seconds;
    elsewhere (a log file, CI) one line is printed at most every
    ``interval`` seconds, plus one when each partition finishes.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interval: float = 0.5,
        tty_interval: float = 0.1,
        width: int = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty()) if callable(isatty) else False
        self.interval = tty_interval if self.tty else interval
        self.width = width
        self.clock = clock
        self._last = -float("inf")

    def __call__(self, progress: ReplayProgress) -> None:
        now = self.clock()
        if not progress.finished and now - self._last < self.interval:
            return
        self._last = now
        line = self.render(progress)
        if self.tty:
            end = "\n" if progress.finished else ""
            self.stream.write(f"\r\x1b[2K{line}{end}")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def render(self, progress: ReplayProgress) -> str:
        fraction = 1.0 if progress.total <= 0 else min(1.0, progress.done / progress.total)
        if progress.finished:
            fraction = 1.0
        filled = round(fraction * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        rate = progress.records_total / progress.elapsed if progress.elapsed > 0 else 0.0
        return (
            f"p{progress.partition} ({progress.index + 1}/{progress.partitions}) [{bar}] "
            f"{fraction:4.0%} {progress.records:,} records ({progress.records_total:,} in all, "
            f"{rate:,.0f}/s)" + (" done" if progress.finished else "")
        )


# -- read-only stores ----------------------------------------------------------------


def open_read_only(path: Path, *, cache_size: int = 1024) -> RocksTaskStore:
    """Open the store at ``path`` read-only, without its lock: a running processor keeps it.

    What is read is the store as it was when opened (RocksDB's read-only
    mode sees no later write). Raises :class:`StoreError` if there is no
    store at ``path`` or it cannot be read. Every write raises.
    """
    path = Path(path)
    if not (path / "CURRENT").is_file():
        raise StoreError(f"task store {path}: no RocksDB store there (no CURRENT file)")
    last: Exception | None = None
    # The writer may delete a log file while we open it: try again.
    for attempt in range(3):
        if attempt:
            time.sleep(0.1 * attempt)
        try:
            names = [n for n in Rdict.list_cf(str(path)) if n != "default"]
            db = Rdict(
                str(path),
                RocksOptions(raw_mode=True),
                column_families={n: RocksOptions(raw_mode=True) for n in names},
                access_type=AccessType.read_only(),
            )
        except Exception as exc:
            last = exc
            continue
        try:
            store = RocksTaskStore(db, path, cache_size)
        except Exception as exc:
            db.close()
            raise StoreError(f"task store {path}: not an atf-es task store: {exc}") from exc
        try:
            # Reads the format version, the offset and the counters; writes
            # only to a store without a format version, which a processor's
            # store always has (writing would raise StoreError here).
            store._load()
        except BaseException:
            store.close()
            raise
        return store
    raise StoreError(f"task store {path}: cannot open it read-only: {last}")


def live_offsets(live_dir: Path) -> dict[int, int]:
    """The last applied events offset of each ``p<N>`` store under ``live_dir``."""
    offsets = {}
    for partition, path in partition_dirs(Path(live_dir)).items():
        with open_read_only(path) as store:
            offsets[partition] = store.last_offset()
    return offsets


# -- verify --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldDiff:
    name: str
    rebuilt: object
    live: object


@dataclass(frozen=True, slots=True)
class TaskDiff:
    """One task the two projections disagree on."""

    partition: int
    task_id: str
    kind: str
    """``only_rebuilt``, ``only_live`` or ``differs``."""
    fields: tuple[FieldDiff, ...] = ()

    def describe(self) -> str:
        if self.kind == "only_rebuilt":
            return f"p{self.partition} {self.task_id}: only in the rebuild"
        if self.kind == "only_live":
            return f"p{self.partition} {self.task_id}: only in the live projection"
        changes = ", ".join(
            f"{f.name} {_short(f.rebuilt)} (rebuilt) != {_short(f.live)} (live)"
            for f in self.fields
        )
        return f"p{self.partition} {self.task_id}: {changes}"


def _short(value: object, limit: int = 60) -> str:
    text = repr(value.value if hasattr(value, "value") else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class PartitionVerify:
    """One partition's comparison."""

    partition: int
    rebuilt_offset: int
    live_offset: int
    rebuilt_tasks: int = 0
    live_tasks: int = 0
    equal: int = 0
    """Tasks found equal on both sides."""
    only_rebuilt: int = 0
    only_live: int = 0
    differing: int = 0
    newer_in_live: int = 0
    """Tolerated, live ahead: tasks the live store has with a higher ``seq``, or only it has."""
    newer_in_rebuild: int = 0
    """Tolerated, live behind: tasks the rebuild has with a higher ``seq``, or only it has."""
    aggregates: list[str] = field(default_factory=list)
    """Differences of counters, waiting counts and trigger indexes."""
    missing: str | None = None
    """Why this partition could not be compared at all."""

    @property
    def exact(self) -> bool:
        """Both sides stand at the same offset: every difference is one."""
        return self.rebuilt_offset == self.live_offset

    @property
    def differences(self) -> int:
        return (
            self.only_rebuilt
            + self.only_live
            + self.differing
            + len(self.aggregates)
            + (self.missing is not None)
        )

    def describe(self) -> str:
        if self.missing is not None:
            return f"p{self.partition}: {self.missing}"
        text = (
            f"p{self.partition}: {self.rebuilt_tasks:,} rebuilt / {self.live_tasks:,} live tasks, "
            f"offset {self.rebuilt_offset} / {self.live_offset}: "
            f"{self.differences} differences"
        )
        if self.rebuilt_offset < self.live_offset:
            text += (
                f"; the live store is ahead of the rebuild: {self.newer_in_live:,} newer tasks "
                "not compared, counters and indexes not compared"
            )
        elif self.rebuilt_offset > self.live_offset:
            text += (
                f"; the live store is behind the rebuild: {self.newer_in_rebuild:,} tasks it "
                "has not caught up on not compared, counters and indexes not compared"
            )
        return text


@dataclass
class VerifyReport:
    rebuilt_dir: Path
    live_dir: Path
    lambda_name: str | None
    partitions: list[PartitionVerify]
    diffs: list[TaskDiff]
    """The first ``max_diffs`` task differences."""
    seconds: float = 0.0

    @property
    def differences(self) -> int:
        return sum(p.differences for p in self.partitions)

    @property
    def ok(self) -> bool:
        return self.differences == 0

    def render(self) -> str:
        scope = "" if self.lambda_name is None else f" (lambda {self.lambda_name!r})"
        lines = [
            f"verify {self.rebuilt_dir} (rebuilt) against {self.live_dir} (live){scope}: "
            f"{self.differences} differences in {self.seconds:.1f}s"
        ]
        lines += [f"  {p.describe()}" for p in self.partitions]
        for p in self.partitions:
            lines += [f"  p{p.partition} {line}" for line in p.aggregates]
        lines += [f"  {d.describe()}" for d in self.diffs]
        shown = len(self.diffs)
        tasks = sum(p.only_rebuilt + p.only_live + p.differing for p in self.partitions)
        if tasks > shown:
            lines.append(f"  ... and {tasks - shown} more task differences")
        return "\n".join(lines)


def verify(
    rebuilt_dir: Path,
    live_dir: Path,
    *,
    lambda_name: str | None = None,
    partitions: Sequence[int] | None = None,
    max_diffs: int = DEFAULT_MAX_DIFFS,
) -> VerifyReport:
    """Compare the stores under ``rebuilt_dir`` with a live processor's under ``live_dir``.

    Both are opened read-only. Partitions are those of ``rebuilt_dir`` (or
    ``partitions``); one the live directory lacks is a difference. How a
    live store that has moved on is handled: :func:`compare_stores`.
    """
    started = time.monotonic()
    rebuilt = partition_dirs(Path(rebuilt_dir))
    live = partition_dirs(Path(live_dir))
    chosen = sorted(rebuilt) if partitions is None else sorted(set(partitions))
    results: list[PartitionVerify] = []
    diffs: list[TaskDiff] = []
    for partition in chosen:
        if partition not in rebuilt or partition not in live:
            side = "rebuild" if partition not in rebuilt else "live directory"
            result = PartitionVerify(partition, -1, -1, missing=f"no store in the {side}")
            results.append(result)
            continue
        with open_read_only(rebuilt[partition]) as a, open_read_only(live[partition]) as b:
            result = compare_stores(
                partition, a, b, lambda_name=lambda_name, diffs=diffs, max_diffs=max_diffs
            )
        results.append(result)
    return VerifyReport(
        Path(rebuilt_dir), Path(live_dir), lambda_name, results, diffs, time.monotonic() - started
    )


def replay_and_verify(
    settings: Settings,
    bootstrap: str,
    into: Path,
    live_dir: Path,
    *,
    lambda_name: str | None = None,
    partitions: Sequence[int] | None = None,
    progress: Callable[[ReplayProgress], None] | None = None,
    max_diffs: int = DEFAULT_MAX_DIFFS,
) -> tuple[ReplayResult, VerifyReport]:
    """Rebuild the live stores' partitions up to the offsets they stand at, and compare.

    The live stores are opened read-only first and kept open, so the rebuild
    and the comparison see each at one position of the log however far the
    processor moves meanwhile: every difference is one.
    """
    live_dirs = partition_dirs(Path(live_dir))
    chosen = sorted(live_dirs) if partitions is None else sorted(set(partitions))
    absent = [p for p in chosen if p not in live_dirs]
    if absent:
        raise ReplayError(f"{live_dir} has no store for partitions {absent}")
    if not chosen:
        raise ReplayError(f"{live_dir} holds no partition stores (p<N> directories)")
    live: dict[int, RocksTaskStore] = {}
    try:
        for partition in chosen:
            live[partition] = open_read_only(live_dirs[partition])
        through = {partition: store.last_offset() for partition, store in live.items()}
        result = replay(
            settings,
            bootstrap,
            into,
            lambda_name=lambda_name,
            partitions=chosen,
            progress=progress,
            through=through,
        )
        started = time.monotonic()
        results: list[PartitionVerify] = []
        diffs: list[TaskDiff] = []
        for partition in chosen:
            with open_read_only(Path(into) / f"p{partition}") as rebuilt:
                results.append(
                    compare_stores(
                        partition,
                        rebuilt,
                        live[partition],
                        lambda_name=lambda_name,
                        diffs=diffs,
                        max_diffs=max_diffs,
                    )
                )
    finally:
        for store in live.values():
            store.close()
    report = VerifyReport(
        Path(into), Path(live_dir), lambda_name, results, diffs, time.monotonic() - started
    )
    return result, report


def compare_stores(
    partition: int,
    rebuilt: RocksTaskStore,
    live: RocksTaskStore,
    *,
    lambda_name: str | None = None,
    diffs: list[TaskDiff] | None = None,
    max_diffs: int = DEFAULT_MAX_DIFFS,
) -> PartitionVerify:
    """Compare two stores of one partition; appends task differences to ``diffs``.

    When both stand at the same offset every difference counts: rows, and
    then counters, waiting counts and both trigger indexes. When the live
    store is ahead (it applied events the rebuild did not read), a task it
    has with a higher ``seq``, or that only it has, is newer, not different,
    and the counters and indexes cannot be compared; a task it has with a
    lower ``seq``, or lacks, still is a difference. Behind, the other way
    round. A row that differs at the same ``seq`` is always a difference.
    """
    sink: list[TaskDiff] = [] if diffs is None else diffs
    result = PartitionVerify(partition, rebuilt.last_offset(), live.last_offset())
    live_ahead = result.live_offset > result.rebuilt_offset
    live_behind = result.live_offset < result.rebuilt_offset
    ids: set[str] | None = set() if lambda_name is not None else None

    def note(diff: TaskDiff) -> None:
        if len(sink) < max_diffs:
            sink.append(diff)

    for a, b in _merge(
        _of_lambda(rebuilt.tasks(), lambda_name), _of_lambda(live.tasks(), lambda_name)
    ):
        task_id = a.task_id if a is not None else b.task_id  # type: ignore[union-attr]
        if ids is not None:
            ids.add(task_id)
        result.rebuilt_tasks += a is not None
        result.live_tasks += b is not None
        if a is None:
            if live_ahead:
                result.newer_in_live += 1
            else:
                result.only_live += 1
                note(TaskDiff(partition, task_id, "only_live"))
        elif b is None:
            if live_behind:
                result.newer_in_rebuild += 1
            else:
                result.only_rebuilt += 1
                note(TaskDiff(partition, task_id, "only_rebuilt"))
        elif a == b:
            result.equal += 1
        elif live_ahead and b.seq > a.seq:
            result.newer_in_live += 1
        elif live_behind and a.seq > b.seq:
            result.newer_in_rebuild += 1
        else:
            result.differing += 1
            note(TaskDiff(partition, task_id, "differs", _field_diffs(a, b)))
    if result.exact:
        result.aggregates = _compare_aggregates(rebuilt, live, lambda_name, ids)
    return result


def _of_lambda(tasks: Iterable[Task], lambda_name: str | None) -> Iterator[Task]:
    if lambda_name is None:
        yield from tasks
    else:
        yield from (task for task in tasks if task.lambda_name == lambda_name)


def _merge(
    left: Iterator[Task], right: Iterator[Task]
) -> Iterator[tuple[Task | None, Task | None]]:
    """Pairs of tasks by id from two iterators in task_id order (code point = UTF-8 order)."""
    a = next(left, None)
    b = next(right, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a.task_id < b.task_id):
            yield a, None
            a = next(left, None)
        elif a is None or b.task_id < a.task_id:
            yield None, b
            b = next(right, None)
        else:
            yield a, b
            a = next(left, None)
            b = next(right, None)


def _field_diffs(a: Task, b: Task) -> tuple[FieldDiff, ...]:
    return tuple(
        FieldDiff(f.name, getattr(a, f.name), getattr(b, f.name))
        for f in dataclasses.fields(Task)
        if getattr(a, f.name) != getattr(b, f.name)
    )


def _compare_aggregates(
    rebuilt: RocksTaskStore, live: RocksTaskStore, lambda_name: str | None, ids: set[str] | None
) -> list[str]:
    found: list[str] = []

    def mine(queue: CounterKey | Queue) -> bool:
        return lambda_name is None or queue[0] == lambda_name

    counts_a = {k: v for k, v in rebuilt.counts().items() if mine(k)}
    counts_b = {k: v for k, v in live.counts().items() if mine(k)}
    for key in sorted(counts_a.keys() | counts_b.keys()):
        if counts_a.get(key, 0) != counts_b.get(key, 0):
            found.append(
                f"count of {key}: {counts_a.get(key, 0)} (rebuilt) != {counts_b.get(key, 0)} (live)"
            )
    waiting_a = {k: v for k, v in rebuilt.waiting().items() if mine(k)}
    waiting_b = {k: v for k, v in live.waiting().items() if mine(k)}
    for queue in sorted(waiting_a.keys() | waiting_b.keys()):
        if waiting_a.get(queue, 0) != waiting_b.get(queue, 0):
            found.append(
                f"waiting in {queue}: {waiting_a.get(queue, 0)} (rebuilt) != "
                f"{waiting_b.get(queue, 0)} (live)"
            )
        ready_a = rebuilt.due_ready(queue, _FOREVER, _ALL)
        ready_b = live.due_ready(queue, _FOREVER, _ALL)
        found += _index_diffs(f"ready index of {queue}", ready_a, ready_b)
    timeouts_a = rebuilt.due_timeouts(_FOREVER, _ALL)
    timeouts_b = live.due_timeouts(_FOREVER, _ALL)
    if ids is not None:
        timeouts_a = [entry for entry in timeouts_a if entry[1] in ids]
        timeouts_b = [entry for entry in timeouts_b if entry[1] in ids]
    found += _index_diffs("timeout index", timeouts_a, timeouts_b)
    # The finished index (retention) exists in stores of format 3 and later.
    finished_a = getattr(rebuilt, "finished_by", None)
    finished_b = getattr(live, "finished_by", None)
    if finished_a is not None and finished_b is not None:
        for dead_letters in (False, True):
            entries_a = finished_a(_FOREVER, _ALL, dead_letters=dead_letters)
            entries_b = finished_b(_FOREVER, _ALL, dead_letters=dead_letters)
            if ids is not None:
                entries_a = [entry for entry in entries_a if entry[1] in ids]
                entries_b = [entry for entry in entries_b if entry[1] in ids]
            what = "dead-letter index" if dead_letters else "finished index"
            found += _index_diffs(what, entries_a, entries_b)
    if lambda_name is None and rebuilt.next_trigger() != live.next_trigger():
        found.append(
            f"next trigger: {rebuilt.next_trigger()} (rebuilt) != {live.next_trigger()} (live)"
        )
    return found


def _index_diffs(
    what: str, a: list[tuple[int, str]], b: list[tuple[int, str]], limit: int = 3
) -> list[str]:
    if a == b:
        return []
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    text = f"{what}: {len(a)} entries (rebuilt) != {len(b)} (live)"
    if only_a:
        text += f"; only rebuilt: {only_a[:limit]}"
    if only_b:
        text += f"; only live: {only_b[:limit]}"
    return [text]


# -- one task --------------------------------------------------------------------------


def state_as_of(settings: Settings, bootstrap: str, task_id: str, at: int) -> Task | None:
    """The task as it was at ``at`` (epoch ms), or None if it did not exist yet.

    Reads only the task's partition (its key's murmur2 partition, as the
    producers place it); the same rule as a replay with ``until=at``.
    """
    return history.state_as_of(settings, bootstrap, task_id, at)
