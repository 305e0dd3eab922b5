"""The overview: task counts, queue depth and delivery latency per lambda.

What the dashboard's first page shows (docs/dashboard.md), answered by
``atf.v1.Admin/Overview`` from a read-side view of ``<prefix>.task-events``,
like the dead letters' (docs/dead-letters.md): the log is the only source.

:class:`OverviewState` is the pure fold. Per task it keeps the lambda, the
collection, the status, the ``seq`` of the last record applied, and two
times: ``trigger`` (the next trigger of a task waiting in ``new`` or
``retriable_failure``) and ``due`` (when the task last became due and has
not started since). From those it maintains:

- **counts** per ``(lambda, collection, status)``, changed on every record;
  a tombstone (retention ran out) removes the task and its count;
- **queue depth** per lambda, sampled by :meth:`OverviewState.sample`:
  tasks ``enqueued`` or ``claimed`` (on the queue, not started), and tasks
  *due but not enqueued*: waiting in ``new`` or ``retriable_failure`` with
  their trigger in the past (a pause gate holds them, or the processor waits
  for flow-control credit). Due tasks are found with a heap of triggers, so a
  sample costs the tasks that became due since the last one, not every
  waiting task;
- **delivery latency** per lambda: on each ``TaskStarted``, the start time
  minus ``due`` (the task's scheduled time, its retry time, or, for a task
  enqueued again after a claim or heartbeat timeout, that enqueue), counted
  in a histogram of the sample interval the start falls in (bins 10 % wide,
  so a percentile is within 5 % of the exact one). Intervals are by event
  time, so the first read of the topic fills the last hour.

Records are folded as the dead-letter view folds them: a lower ``seq`` than
the one held is stale and ignored; at equal ``seq`` the later record wins
(the embedded broker shows aborted transactions' records), but its start is
not counted twice.

:class:`OverviewView` wraps the fold with a :class:`TopicReader` and a
sampling thread: every ``interval_ms`` it reads the topic to its end and
takes a depth sample, keeping ``window_ms`` of them. Depth is sampled live,
so it starts when the view does (at the first ``Overview`` call of a
Frontend); latency covers the whole window at once.

Memory (measured with tracemalloc, docs/dashboard.md): about 200 bytes per
finished task and 270 per waiting one (the dict entry, a 32-character id, a
slotted row, and for a waiting task its heap entry; lambda and collection
names are shared), plus per lambda 720 depth samples and up to 720
histograms of a few dozen bins: at most about 2 MB per lambda for an hour
at 5 s, usually a few hundred KB.
"""

from __future__ import annotations

import heapq
import logging
import math
import sys
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from confluent_kafka import KafkaException

from atf_es.clock import now_ms
from atf_es.config import Settings
from atf_es.events import Task, TaskStatus
from atf_es.events.codec import DecodeError, decode_event
from atf_es.events.records import task_id_of_key
from atf_es.events.transitions import TaskStarted
from atf_es.services.topicreader import TopicReader
from atf_es.topics import Topics

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_MS = 5_000
"""How often queue depth is sampled, and the width of a latency interval."""
WINDOW_MS = 3_600_000
"""How far back samples are kept: an hour."""

_WAITING = frozenset({TaskStatus.NEW, TaskStatus.RETRIABLE_FAILURE})
_QUEUED = frozenset({TaskStatus.ENQUEUED, TaskStatus.CLAIMED})
_BIN_RATIO = 1.1
_LOG_RATIO = math.log(_BIN_RATIO)


def _bin(latency_ms: int) -> int:
    """The histogram bin of a latency: 0 for at most 1 ms, then bins 10 % wide."""
    return 0 if latency_ms <= 1 else 1 + int(math.log(latency_ms) / _LOG_RATIO)


def _bin_value(index: int) -> int:
    """A bin's representative latency: the geometric middle of its bounds."""
    return 1 if index == 0 else round(_BIN_RATIO ** (index - 0.5))


@dataclass(slots=True)
class LatencyHistogram:
    """Delivery latencies of one lambda in one interval."""

    bins: dict[int, int] = field(default_factory=dict)
    count: int = 0
    max_ms: int = 0

    def add(self, latency_ms: int) -> None:
        latency_ms = max(0, latency_ms)
        index = _bin(latency_ms)
        self.bins[index] = self.bins.get(index, 0) + 1
        self.count += 1
        self.max_ms = max(self.max_ms, latency_ms)

    def percentile(self, fraction: float) -> int:
        """The latency ``fraction`` (0-1) of the starts were at or below; 0 if none."""
        if not self.count:
            return 0
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for index in sorted(self.bins):
            seen += self.bins[index]
            if seen >= rank:
                return min(_bin_value(index), self.max_ms)
        return self.max_ms


@dataclass(frozen=True, slots=True)
class DepthPoint:
    """A lambda's queue depth at one instant."""

    at_ms: int
    enqueued: int
    """Enqueued or claimed, not started."""
    due: int
    """Due but not enqueued (held by a pause gate, or waiting for flow-control credit)."""


@dataclass(frozen=True, slots=True)
class LatencyPoint:
    """Delivery latency of the starts of one lambda in ``[at_ms - interval, at_ms)``."""

    at_ms: int
    started: int
    p50_ms: int
    p95_ms: int
    max_ms: int


@dataclass(frozen=True, slots=True)
class LambdaOverview:
    """What the overview knows of one lambda."""

    lambda_name: str
    counts: dict[tuple[str, TaskStatus], int]
    """Non-zero counts by ``(collection, status)``."""
    depth: list[DepthPoint]
    latency: list[LatencyPoint]


@dataclass(slots=True)
class _Row:
    lambda_name: str
    collection: str
    status: TaskStatus
    seq: int
    trigger: int | None
    """The next trigger while the task waits in new or retriable_failure."""
    due: int | None
    """When the task last became due, until it starts."""


class OverviewState:
    """The fold of task-events records into counts, depth samples and latency histograms.

    Pure: no Kafka and no clock; :class:`OverviewView` feeds it records and
    sample times.
    """

    def __init__(
        self, *, interval_ms: int = SAMPLE_INTERVAL_MS, window_ms: int = WINDOW_MS
    ) -> None:
        self.interval_ms = interval_ms
        self.window_ms = window_ms
        self._rows: dict[str, _Row] = {}
        self._counts: dict[tuple[str, str, TaskStatus], int] = {}
        self._names: dict[str, str] = {}
        """Interned lambda and collection names: every row shares one string."""
        self._triggers: list[tuple[int, str]] = []
        """Heap of (trigger, task_id) of waiting tasks; entries go stale as tasks move on."""
        self._due: set[str] = set()
        """Waiting tasks whose trigger had passed at the last sample."""
        self._due_counts: dict[str, int] = {}
        self._depth: deque[tuple[int, dict[str, tuple[int, int]]]] = deque(
            maxlen=max(1, window_ms // interval_ms)
        )
        self._latency: dict[int, dict[str, LatencyHistogram]] = {}
        """Histograms by interval number (start time // interval_ms), then lambda."""
        self.sampling_since: int | None = None
        self.bad_records = 0
        self.horizon = 0
        """Starts before this time are not counted: older than the window at the last sample."""

    def __len__(self) -> int:
        return len(self._rows)

    # -- folding ---------------------------------------------------------

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Fold one task-events record (``value`` None: a tombstone)."""
        if value is None:
            task_id = task_id_of_key(key)
            if task_id is not None and (row := self._rows.pop(task_id, None)) is not None:
                self._leave(task_id, row)
            return
        try:
            event, task = decode_event(value)
        except DecodeError as exc:
            self.bad_records += 1
            log.warning("task-events: ignoring an unreadable record: %s", exc)
            return
        self.apply_task(task, event if isinstance(event, TaskStarted) else None)

    def apply_task(self, task: Task, started: TaskStarted | None = None) -> None:
        """Fold the snapshot ``task``; ``started`` is its event when that was a start."""
        held = self._rows.get(task.task_id)
        if held is not None and task.seq < held.seq:
            return
        repeat = held is not None and task.seq == held.seq
        due = None if held is None else held.due
        if held is not None:
            self._leave(task.task_id, held)
        if started is not None:
            if due is not None and not repeat and started.at >= self.horizon:
                self._latency_at(started.at, task.lambda_name).add(started.at - due)
            due = None
        trigger = task.next_trigger_at if task.status in _WAITING else None
        if task.status in _WAITING:
            if due is None and trigger is not None:
                due = trigger
        elif task.status is TaskStatus.ENQUEUED:
            if due is None:
                due = task.enqueued_at
        elif task.status is not TaskStatus.CLAIMED:
            due = None
        row = _Row(
            self._intern(task.lambda_name),
            self._intern(task.collection),
            task.status,
            task.seq,
            trigger,
            due,
        )
        self._rows[task.task_id] = row
        key = (row.lambda_name, row.collection, row.status)
        self._counts[key] = self._counts.get(key, 0) + 1
        if trigger is not None:
            heapq.heappush(self._triggers, (trigger, task.task_id))

    def _leave(self, task_id: str, row: _Row) -> None:
        """Take ``row`` (being replaced or deleted) out of the counts and the due set."""
        key = (row.lambda_name, row.collection, row.status)
        left = self._counts[key] - 1
        if left:
            self._counts[key] = left
        else:
            del self._counts[key]
        if task_id in self._due:
            self._due.discard(task_id)
            self._due_counts[row.lambda_name] -= 1

    def _intern(self, name: str) -> str:
        return self._names.setdefault(name, sys.intern(name))

    def _latency_at(self, at: int, lambda_name: str) -> LatencyHistogram:
        per_lambda = self._latency.setdefault(at // self.interval_ms, {})
        histogram = per_lambda.get(lambda_name)
        if histogram is None:
            histogram = per_lambda[self._intern(lambda_name)] = LatencyHistogram()
        return histogram

    # -- sampling --------------------------------------------------------

    def sample(self, now: int) -> None:
        """Take a depth sample at ``now`` and forget what is older than the window."""
        while self._triggers and self._triggers[0][0] <= now:
            trigger, task_id = heapq.heappop(self._triggers)
            row = self._rows.get(task_id)
            if row is None or row.trigger != trigger or task_id in self._due:
                continue  # stale: the task moved on (or was pushed twice at one seq)
            self._due.add(task_id)
            self._due_counts[row.lambda_name] = self._due_counts.get(row.lambda_name, 0) + 1
        if len(self._triggers) > 2 * len(self._rows) + 1_000:
            # Stale entries of tasks that left before their trigger.
            self._triggers = [
                (row.trigger, task_id)
                for task_id, row in self._rows.items()
                if row.trigger is not None and task_id not in self._due
            ]
            heapq.heapify(self._triggers)
        queued: dict[str, int] = {}
        for (lambda_name, _, status), count in self._counts.items():
            if status in _QUEUED:
                queued[lambda_name] = queued.get(lambda_name, 0) + count
        names = set(queued) | {name for name, count in self._due_counts.items() if count}
        self._depth.append(
            (now, {name: (queued.get(name, 0), self._due_counts.get(name, 0)) for name in names})
        )
        if self.sampling_since is None:
            self.sampling_since = now
        self.horizon = now - self.window_ms
        oldest = self.horizon // self.interval_ms
        for interval in [i for i in self._latency if i < oldest]:
            del self._latency[interval]

    # -- answering -------------------------------------------------------

    def lambdas(self) -> list[str]:
        """The lambdas with tasks, by name."""
        return sorted({lambda_name for lambda_name, _, _ in self._counts})

    def overview(self, lambda_name: str, now: int) -> LambdaOverview:
        """The counts and the last window's samples of ``lambda_name``."""
        counts = {
            (collection, status): count
            for (name, collection, status), count in sorted(self._counts.items())
            if name == lambda_name
        }
        since = now - self.window_ms
        depth = [
            DepthPoint(at, *per_lambda.get(lambda_name, (0, 0)))
            for at, per_lambda in self._depth
            if at > since
        ]
        latency = []
        for interval in sorted(self._latency):
            histogram = self._latency[interval].get(lambda_name)
            end = (interval + 1) * self.interval_ms
            if histogram is None or end <= since:
                continue
            latency.append(
                LatencyPoint(
                    end,
                    histogram.count,
                    histogram.percentile(0.5),
                    histogram.percentile(0.95),
                    histogram.max_ms,
                )
            )
        return LambdaOverview(lambda_name, counts, depth, latency)


class OverviewView:
    """The overview of the task-events topic, kept up to date by a sampling thread.

    Thread-safe: every method takes one lock. ``start`` begins sampling;
    ``close`` stops it and closes the consumer (safe to call twice, and
    without ``start``).
    """

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        *,
        interval_ms: int = SAMPLE_INTERVAL_MS,
        window_ms: int = WINDOW_MS,
    ) -> None:
        self.state = OverviewState(interval_ms=interval_ms, window_ms=window_ms)
        self._reader = TopicReader(
            settings,
            bootstrap,
            Topics(settings.topic_prefix).task_events,
            settings.partitions,
            self.state.apply,
            client_id="overview",
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def interval_ms(self) -> int:
        return self.state.interval_ms

    def start(self) -> None:
        """Sample every ``interval_ms``, on multiples of it, until ``close``."""
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="overview", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        interval = self.state.interval_ms
        while not self._stop.is_set():
            try:
                self.catch_up(timeout=interval / 1000)
            except (TimeoutError, KafkaException) as exc:
                log.warning("overview: %s", exc)
            with self._lock:
                if self._closed:
                    return
                self.state.sample(now_ms())
            now = now_ms()
            self._stop.wait((interval - now % interval) / 1000)

    def catch_up(self, timeout: float = 30.0) -> None:
        """Read the topic to its end as it is now (see :meth:`TopicReader.catch_up`)."""
        with self._lock:
            if not self._closed:
                self._reader.catch_up(timeout)

    def lambdas(self) -> list[str]:
        with self._lock:
            return self.state.lambdas()

    def overviews(self, names: Iterable[str], now: int) -> list[LambdaOverview]:
        with self._lock:
            return [self.state.overview(name, now) for name in names]

    @property
    def sampling_since(self) -> int | None:
        with self._lock:
            return self.state.sampling_since

    def __len__(self) -> int:
        with self._lock:
            return len(self.state)

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)
        with self._lock:
            if not self._closed:
                self._closed = True
                self._reader.close()


__all__ = [
    "SAMPLE_INTERVAL_MS",
    "WINDOW_MS",
    "DepthPoint",
    "LambdaOverview",
    "LatencyHistogram",
    "LatencyPoint",
    "OverviewState",
    "OverviewView",
]
