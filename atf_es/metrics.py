"""Prometheus metrics of every service, and the ``/metrics`` endpoint that serves them.

Every series is defined here, so that docs/metrics.md has one place to be
checked against. Services update them in two ways, both cheap on the hot path:

- **events** (counters, histograms) are updated once per batch or per task,
  through label children bound ahead (:class:`Children`), never per record;
- **state** (queue depths, credit, lag, tasks by status) is not pushed at all:
  a service registers a *source* (:func:`add_source`), a function returning
  its current values, which is called only when ``/metrics`` is scraped. The
  values of every live source are added up, so two processors in one process
  (tests) report their partitions together, and a stopped service's series
  disappear with it.

Labels are bounded: lambda names, priorities, partitions, statuses, gRPC
methods and codes. A task id is never a label (it goes in the logs, see
``atf_es.logs``).

:func:`serve` starts the HTTP endpoint (``settings.metrics_address``, port 0
for any free port) and returns a :class:`MetricsServer` with the bound port.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "Children",
    "GrpcMetrics",
    "MetricsServer",
    "StateSnapshot",
    "add_source",
    "parse_address",
    "serve",
    "serve_from",
]

log = logging.getLogger(__name__)

_M = TypeVar("_M", Counter, Gauge, Histogram)

# Seconds, from a fast local hop to a long wait behind a backlog or a pause.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
"""Buckets of the latency histograms (seconds)."""
SIZE_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000)
"""Buckets of the batch size histograms (records)."""


class Children(Generic[_M]):
    """The label children of one metric, bound on first use and kept.

    ``metric.labels(...)`` takes a lock and builds a key on every call; a hot
    path looks its child up here instead (a dict get).
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: _M) -> None:
        self._metric: _M = metric
        self._children: dict[tuple[str, ...], _M] = {}

    def __call__(self, *labels: str) -> _M:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._metric.labels(*labels)
        return child


# -- the Frontend ---------------------------------------------------------------

FRONTEND_SCHEDULED = Counter(
    "atf_frontend_scheduled",
    "Tasks the Frontend accepted, by RPC (Schedule, ScheduleBatch, ScheduleChain) and lambda.",
    ["method", "lambda"],
)
FRONTEND_SCHEDULE_ERRORS = Counter(
    "atf_frontend_schedule_errors",
    "Tasks the Frontend refused, by RPC, lambda ('other' for an undefined one) and gRPC code "
    "(a ScheduleBatch result's reply code is counted as the code Schedule would give).",
    ["method", "lambda", "code"],
)

# -- the HSC --------------------------------------------------------------------

HSC_REFUSALS = Counter(
    "atf_hsc_refusals",
    "Claims and heartbeats the HSC refused, by call and reply code (stale_lease, cancelled...).",
    ["call", "reason"],
)

# -- the processor --------------------------------------------------------------

PROCESSOR_COMMANDS = Counter(
    "atf_processor_commands", "Commands the processor handled (committed batches)."
)
PROCESSOR_TRANSITIONS = Counter(
    "atf_processor_transitions",
    "Status transitions the processor committed, by lambda and the status entered.",
    ["lambda", "status"],
)
PROCESSOR_DEAD_LETTERED = Counter(
    "atf_processor_dead_lettered", "Tasks dead-lettered, by lambda.", ["lambda"]
)
PROCESSOR_POISON = Counter(
    "atf_processor_poison_records",
    "Command records set aside to the poison topic (undecodable, empty, invalid, unknown lambda).",
)
PROCESSOR_BAD_EVENTS = Counter(
    "atf_processor_bad_event_records",
    "Event-log records a restore could not read (skipped).",
)
PROCESSOR_BATCH_SIZE = Histogram(
    "atf_processor_batch_size",
    "Records per committed transaction, by kind: commands read, events and work items written.",
    ["kind"],
    buckets=SIZE_BUCKETS,
)
PROCESSOR_TRANSACTION_SECONDS = Histogram(
    "atf_processor_transaction_seconds",
    "From begin_transaction to a successful commit_transaction.",
    buckets=LATENCY_BUCKETS,
)
PROCESSOR_TRANSACTIONS = Counter(
    "atf_processor_transactions",
    "Transactions by outcome: committed, aborted (retried) or fenced (partition released).",
    ["outcome"],
)
PROCESSOR_REPLIES_UNDELIVERED = Counter(
    "atf_processor_replies_undelivered", "Replies Kafka refused after their commit."
)
PROCESSOR_RESTORED_EVENTS = Counter(
    "atf_processor_restored_events", "Event-log records replayed while restoring partitions."
)

# -- the Controller -------------------------------------------------------------

CONTROLLER_ITEMS = Counter(
    "atf_controller_items",
    "Work items the Controller handed out (claimed) or discarded (claim refused), by lambda.",
    ["lambda", "outcome"],
)
CONTROLLER_CLAIM_ERRORS = Counter(
    "atf_controller_claim_errors", "Claims that failed and were retried (HSC unreachable...)."
)
CONTROLLER_BAD_RECORDS = Counter(
    "atf_controller_bad_records", "Exec-topic records skipped: unreadable or foreign."
)

# -- the executor ---------------------------------------------------------------

EXECUTOR_DELIVERY_SECONDS = Histogram(
    "atf_executor_delivery_latency_seconds",
    "From a task's due time to the start of its execution, by lambda. The due time is the "
    "scheduled time for a first attempt (or a redrive) and the enqueue time for a later one.",
    ["lambda"],
    buckets=LATENCY_BUCKETS,
)
EXECUTOR_RUN_SECONDS = Histogram(
    "atf_executor_run_seconds",
    "How long callbacks ran, by lambda.",
    ["lambda"],
    buckets=LATENCY_BUCKETS,
)
EXECUTOR_TASKS = Counter(
    "atf_executor_tasks",
    "Executions by lambda and outcome: success, retriable, fatal (callback returned), "
    "stopped (cancelled or lease lost), not_started (first heartbeat refused or failed).",
    ["lambda", "outcome"],
)
EXECUTOR_HEARTBEAT_FAILURES = Counter(
    "atf_executor_heartbeat_failures",
    "Heartbeats that failed (no answer, HSC unavailable...), by lambda; 3 in a row end the "
    "process.",
    ["lambda"],
)
EXECUTOR_HEARTBEAT_REFUSALS = Counter(
    "atf_executor_heartbeat_refusals",
    "Heartbeats the HSC refused (cancelled, stale lease: the task stops), by lambda.",
    ["lambda"],
)
EXECUTOR_SELF_TERMINATIONS = Counter(
    "atf_executor_self_terminations",
    "Times this executor lost 3 heartbeats in a row and ended itself (counted just before).",
    ["lambda"],
)
EXECUTOR_UNREPORTED = Counter(
    "atf_executor_unreported",
    "Results refused or given up after retries, by lambda.",
    ["lambda"],
)

# -- atf-es dev's supervisor ----------------------------------------------------

DEV_EXECUTOR_RESTARTS = Counter(
    "atf_dev_executor_restarts",
    "Executor child processes restarted by atf-es dev, by lambda and why they ended "
    "(heartbeats_lost: exit status 75; exited: any other).",
    ["lambda", "reason"],
)

# -- gRPC servers ---------------------------------------------------------------

GRPC_HANDLED = Counter(
    "atf_grpc_server_handled",
    "gRPC calls served, by server, method and status code.",
    ["server", "method", "code"],
)
GRPC_SECONDS = Histogram(
    "atf_grpc_server_handling_seconds",
    "How long gRPC calls took to serve, by server and method (a stream: until it ended).",
    ["server", "method"],
    buckets=LATENCY_BUCKETS,
)


# -- state read at scrape time --------------------------------------------------

Labels = tuple[str, ...]
StateSnapshot = Mapping[str, Mapping[Labels, float]]
"""Gauge name -> label values -> value, as a source returns it."""

_STATE_FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "atf_processor_tasks": (
        "Tasks in this processor's projections, by lambda and status.",
        ("lambda", "status"),
    ),
    "atf_processor_enqueued": (
        "Enqueued tasks not yet claimed, by lambda and priority.",
        ("lambda", "priority"),
    ),
    "atf_processor_enqueue_credit": (
        "How many more tasks flow control lets this processor enqueue, by lambda and priority.",
        ("lambda", "priority"),
    ),
    "atf_processor_waiting": (
        "Tasks in the ready index (new or waiting for a retry, due or not), by lambda and "
        "priority.",
        ("lambda", "priority"),
    ),
    "atf_processor_consumer_lag": (
        "Commands not yet read, per commands partition: high watermark minus position.",
        ("partition",),
    ),
    "atf_processor_owned_partitions": ("Commands partitions this processor owns.", ()),
    "atf_processor_restore_replayed": (
        "Events replayed by the last (or current) restore of a partition.",
        ("partition",),
    ),
    "atf_processor_restore_total": (
        "Events the last (or current) restore of a partition has to replay.",
        ("partition",),
    ),
    "atf_controller_buffered": (
        "Work items waiting in the Controller's buffers, by lambda and priority.",
        ("lambda", "priority"),
    ),
    "atf_controller_buffer_credit": (
        "Free room in each buffer: items the Controller may still read before pausing.",
        ("lambda", "priority"),
    ),
    "atf_controller_paused": (
        "1 if the buffer is full and its exec topic's partitions are paused.",
        ("lambda", "priority"),
    ),
    "atf_controller_idle_calls": ("NextWork calls waiting for work (idle executor threads).", ()),
    "atf_executor_running": ("Tasks whose callback is running now, by lambda.", ("lambda",)),
}


class _State(Collector):
    """The gauges of every registered source, added up at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: dict[int, Callable[[], StateSnapshot]] = {}
        self._next = 0

    def add(self, source: Callable[[], StateSnapshot]) -> Callable[[], None]:
        with self._lock:
            key = self._next
            self._next += 1
            self._sources[key] = source

        def remove() -> None:
            with self._lock:
                self._sources.pop(key, None)

        return remove

    def describe(self) -> list[Metric]:
        return [
            GaugeMetricFamily(name, doc, labels=labels)
            for name, (doc, labels) in _STATE_FAMILIES.items()
        ]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            sources = list(self._sources.values())
        totals: dict[str, dict[Labels, float]] = {}
        for source in sources:
            try:
                snapshot = source()
            except Exception:  # a scrape must not fail because one service is stopping
                log.debug("a metrics source failed", exc_info=True)
                continue
            for name, values in snapshot.items():
                into = totals.setdefault(name, {})
                for labels, value in values.items():
                    into[labels] = into.get(labels, 0.0) + value
        for name, (doc, labels) in _STATE_FAMILIES.items():
            family = GaugeMetricFamily(name, doc, labels=labels)
            for label_values, value in sorted(totals.get(name, {}).items()):
                family.add_metric(list(label_values), value)
            yield family


_STATE = _State()
REGISTRY.register(_STATE)


def add_source(source: Callable[[], StateSnapshot]) -> Callable[[], None]:
    """Report ``source()``'s gauges on every scrape; returns the function that stops it.

    ``source`` runs on the scrape thread: it must only read (under the
    service's own lock if it needs one), and be quick.
    """
    unknown = [name for name in source() if name not in _STATE_FAMILIES]
    if unknown:
        raise ValueError(f"undeclared state gauges: {unknown}")
    return _STATE.add(source)


# -- gRPC -----------------------------------------------------------------------


class GrpcMetrics(grpc.ServerInterceptor):  # type: ignore[misc]
    """Counts every call of a server by method and status code, and times it.

    First in the interceptor list, so that it sees the calls the later
    interceptors refuse too. Unknown methods (no handler) are not counted:
    their names come from the caller and are unbounded.
    """

    def __init__(self, server: str) -> None:
        self.server = server
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        """method -> (the handler, its timed wrapper)."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _timed(handler, self.server, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def _code_of(context: grpc.ServicerContext, failed: bool) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return "UNKNOWN" if failed else "OK"


def _timed(handler: grpc.RpcMethodHandler, server: str, method: str) -> grpc.RpcMethodHandler:
    seconds = GRPC_SECONDS.labels(server, method)
    handled = Children(GRPC_HANDLED)

    def done(started: float, context: grpc.ServicerContext, failed: bool) -> None:
        seconds.observe(time.perf_counter() - started)
        handled(server, method, _code_of(context, failed)).inc()

    def unary(behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            failed = True
            try:
                response = behavior(request, context)
                failed = False
                return response
            finally:
                done(started, context, failed)

        return call

    def streaming(behavior: Callable[[Any, grpc.ServicerContext], Iterable[Any]]) -> Any:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.perf_counter()
            failed = True
            try:
                yield from behavior(request, context)
                failed = False
            finally:
                done(started, context, failed)

        return call

    make: Callable[..., grpc.RpcMethodHandler]
    if handler.unary_unary is not None:
        make, behavior = grpc.unary_unary_rpc_method_handler, unary(handler.unary_unary)
    elif handler.unary_stream is not None:
        make, behavior = grpc.unary_stream_rpc_method_handler, streaming(handler.unary_stream)
    elif handler.stream_unary is not None:
        make, behavior = grpc.stream_unary_rpc_method_handler, unary(handler.stream_unary)
    else:
        make, behavior = grpc.stream_stream_rpc_method_handler, streaming(handler.stream_stream)
    wrapped: grpc.RpcMethodHandler = make(
        behavior, handler.request_deserializer, handler.response_serializer
    )
    return wrapped


# -- the endpoint ---------------------------------------------------------------


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); raises ``ValueError`` with a sentence."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"a metrics address must be host:port (port 0: any), got {address!r}")
    return host.strip("[]"), int(port)


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint; ``stop()`` is safe twice."""

    host: str
    port: int
    _server: WSGIServer | None
    _thread: threading.Thread | None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)


def serve(address: str) -> MetricsServer:
    """Serve every metric of this process at ``http://address/metrics``.

    Port 0 picks a free port; the returned server says which. Raises
    ``OSError`` when the address cannot be bound and ``ValueError`` when it is
    not host:port.
    """
    host, port = parse_address(address)
    server, thread = start_http_server(port, host)
    bound = int(server.server_address[1])
    log.info("metrics at http://%s:%d/metrics", host, bound)
    return MetricsServer(host, bound, server, thread)


def serve_from(settings_address: str | None) -> MetricsServer | None:
    """:func:`serve` when an address is configured; None when it is not."""
    return None if not settings_address else serve(settings_address)
