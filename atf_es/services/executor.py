"""The executor: runs one lambda's callbacks on a pool of threads.

Each thread loops ``w = next_work(); run(w)``, as in ATF. Running a task:

1. a thread without prefetch asks ``NextWork`` for its tasks started: the
   claim moves them enqueued -> claimed -> processing, and the callback runs
   at once if the answer is fresh (``_fresh``). Otherwise, and for a
   prefetched task, a first ``Heartbeat`` moves it from claimed to
   processing (or checks that it is still ours), and the callback is called
   only after the HSC accepted it. While the lambda's callbacks are short, a
   thread claims several tasks in one ``NextWork`` (``_batch_size``) and runs
   them one after the other;
2. while the callback runs, a heartbeat thread beats every
   ``heartbeat_interval_ms``, each RPC with a deadline of half the smaller of
   the interval and the margin;
3. the callback's outcome goes to the reporter thread, which sends the
   outcomes of every thread in ``SetResults`` batches, and the worker thread
   asks for its next task at once. The task's heartbeats go on until its
   result is recorded, so a slow report never lets its heartbeat timeout
   run it again.

A heartbeat answered "cancelled" or "stale lease" sets ``task.cancelled``;
the callback should stop, and nothing is reported (the task is no longer
ours to finish). **Three consecutive failed heartbeats end the process**
(``os._exit(EXIT_HEARTBEAT_LOST)``): the HSC may be unable to record our
heartbeats, so the processor will soon give the task to someone else, and
exiting within 3 intervals plus one RPC deadline of the last good heartbeat
-- less than ``heartbeat_timeout_ms``, which the policy checks -- is what
keeps a task from ever running twice at once. Run executors under a
supervisor that restarts them. ``on_heartbeats_lost`` replaces the exit in
tests.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from types import FrameType

import grpc

from atf_es import metrics
from atf_es._proto.atf.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from atf_es.app import App, Callback, FatalError, RetriableError, TaskContext
from atf_es.clock import now_ms
from atf_es.events import FailureKind, LambdaPolicy, Outcome
from atf_es.services.channels import NO_CREDENTIALS, Credentials, service_channel
from atf_es.services.hsc import REFUSAL_CODES, REPLY_CODE_KEY

__all__ = [
    "EXIT_HEARTBEAT_LOST",
    "HEARTBEATS_LOST_AFTER",
    "Executor",
    "ExecutorStats",
    "exit_on_heartbeats_lost",
]

log = logging.getLogger(__name__)

EXIT_HEARTBEAT_LOST = 75
"""Exit status after 3 failed heartbeats (EX_TEMPFAIL: restart me)."""
HEARTBEATS_LOST_AFTER = 3
MAX_ERROR_CHARS = 4_000
NEXT_WORK_WAIT_MS = 5_000
RESULT_ATTEMPTS = 5
RESULT_DEADLINE_S = 10.0
RESULT_BATCH = 200
"""Results sent in one ``SetResults`` call at most."""
BATCH_WAIT_S = 0.05
"""How long, by the estimate of a callback's time, the last task of a claimed
batch may wait behind the others."""
ESTIMATE_DECAY = 0.2
"""How fast the estimate of a callback's time comes down (a slower callback
raises it at once)."""

# The HSC answered: this task is not ours to run any more.
_OUTCOME_PROTO = {
    Outcome.SUCCESS: worker_pb2.OUTCOME_SUCCESS,
    Outcome.RETRIABLE: worker_pb2.OUTCOME_RETRIABLE,
    Outcome.FATAL: worker_pb2.OUTCOME_FATAL,
}


def exit_on_heartbeats_lost(task: TaskContext) -> None:
    """The default reaction to 3 failed heartbeats: end the process at once."""
    log.critical(
        "%d consecutive heartbeats of task %s (lease %d) failed; exiting with status %d so "
        "that it can never run twice at once",
        HEARTBEATS_LOST_AFTER,
        task.task_id,
        task.lease,
        EXIT_HEARTBEAT_LOST,
        extra=_context(task),
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(EXIT_HEARTBEAT_LOST)


@dataclass
class ExecutorStats:
    """Counters an operator reads (and metrics will export)."""

    started: int = 0
    succeeded: int = 0
    failed: int = 0
    stopped: int = 0
    """Tasks whose work stopped because they were cancelled or their lease was lost."""
    not_started: int = 0
    batches: int = 0
    """``NextWork`` answers that brought more than one task."""
    heartbeats: int = 0
    heartbeat_failures: int = 0
    heartbeats_lost: int = 0
    unreported: int = 0


@dataclass
class _Finished:
    """A task whose callback returned, waiting for its result to be recorded."""

    task: TaskContext
    worker: str
    outcome: Outcome
    error: str | None
    result: bytes | None
    beating: threading.Event
    """Set to end the task's heartbeats."""
    beats: threading.Thread
    attempts: int = 0
    retry_at: float = 0.0
    """When to send it again after a failed attempt (``time.monotonic()``)."""
    settled: bool = False


class _Beat(Enum):
    OK = "ok"
    STOP = "stop"
    FAILED = "failed"


class Executor:
    """Runs ``lambda_name`` of ``app`` with ``threads`` worker threads."""

    name = "executor"

    def __init__(
        self,
        app: App,
        lambda_name: str,
        controller_address: str,
        hsc_address: str,
        *,
        threads: int = 4,
        worker_id: str | None = None,
        wait_ms: int = NEXT_WORK_WAIT_MS,
        prefetch: bool = False,
        batch: int = 32,
        on_heartbeats_lost: Callable[[TaskContext], object] = exit_on_heartbeats_lost,
        credentials: Credentials = NO_CREDENTIALS,
    ) -> None:
        """``credentials``: the worker token and TLS roots for the Controller and HSC."""
        registered = app.lambdas.get(lambda_name)
        if registered is None:
            known = ", ".join(sorted(app.lambdas)) or "none"
            raise ValueError(f"app {app.name!r} has no lambda {lambda_name!r} (it has: {known})")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if wait_ms < 1:
            raise ValueError(f"wait_ms must be positive, got {wait_ms}")
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        self.policy: LambdaPolicy = registered.policy
        _check_heartbeat_policy(self.policy)
        self.fn: Callback = registered.fn
        self.lambda_name = lambda_name
        self.controller_address = controller_address
        self.hsc_address = hsc_address
        self.threads = threads
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.wait_ms = wait_ms
        self.prefetch = prefetch
        """Each thread claims its next task while it runs the current one
        (``Settings.executor_prefetch``; docs/benchmarks.md)."""
        self.batch = batch
        """The most tasks a thread without prefetch claims at once
        (``Settings.executor_batch``)."""
        self._run_estimate: float | None = None
        """Seconds a callback takes, as far as this executor has seen."""
        self.on_heartbeats_lost = on_heartbeats_lost
        self._credentials = credentials
        # The policy guarantees heartbeat_timeout > 3 x interval + margin, and the
        # margin exists to cover one heartbeat RPC: a deadline up to
        # min(interval, margin) keeps self-termination ahead of the timeout while
        # tolerating a slow processor (each beat is a transaction round trip).
        self.heartbeat_deadline = (
            min(self.policy.heartbeat_interval_ms, self.policy.heartbeat_margin_ms) / 1000
        )
        self.stats = ExecutorStats()
        # Stats that are metrics too (heartbeats_lost is counted just before
        # on_heartbeats_lost, which ends the process by default).
        self._metric_of = {
            "not_started": metrics.EXECUTOR_TASKS.labels(lambda_name, "not_started"),
            "stopped": metrics.EXECUTOR_TASKS.labels(lambda_name, "stopped"),
            "heartbeat_failures": metrics.EXECUTOR_HEARTBEAT_FAILURES.labels(lambda_name),
            "heartbeats_lost": metrics.EXECUTOR_SELF_TERMINATIONS.labels(lambda_name),
            "unreported": metrics.EXECUTOR_UNREPORTED.labels(lambda_name),
        }
        self._outcome_metric = {
            outcome: metrics.EXECUTOR_TASKS.labels(lambda_name, outcome.value)
            for outcome in Outcome
        }
        self._delivery = metrics.EXECUTOR_DELIVERY_SECONDS.labels(lambda_name)
        self._run_seconds = metrics.EXECUTOR_RUN_SECONDS.labels(lambda_name)
        self._refusals = metrics.EXECUTOR_HEARTBEAT_REFUSALS.labels(lambda_name)
        self._unregister: Callable[[], None] | None = None
        self._stats_lock = threading.Lock()
        self._stopping = threading.Event()
        self._abandoning = threading.Event()
        """Set when ``stop()``'s grace is over: no more tasks of a batch start."""
        self._threads: list[threading.Thread] = []
        self._calls: set[grpc.Future] = set()
        self._running: dict[str, TaskContext] = {}
        self._finished: queue.Queue[_Finished | None] = queue.Queue()
        """Finished tasks for the reporter; ``None`` ends it."""
        self._reporter: threading.Thread | None = None
        self._reporting = 0
        """Results handed to the reporter and not yet settled."""
        self._lock = threading.Lock()
        self._controller_channel: grpc.Channel | None = None
        self._hsc_channel: grpc.Channel | None = None
        self._controller: worker_pb2_grpc.ControllerStub | None = None
        self._hsc: worker_pb2_grpc.HeartbeatStatusStub | None = None

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        if self._threads or self._stopping.is_set():
            return
        self._controller_channel = service_channel(self.controller_address, self._credentials)
        self._hsc_channel = service_channel(self.hsc_address, self._credentials)
        self._controller = worker_pb2_grpc.ControllerStub(self._controller_channel)
        self._hsc = worker_pb2_grpc.HeartbeatStatusStub(self._hsc_channel)
        self._unregister = metrics.add_source(self._gauges)
        for index in range(self.threads):
            thread = threading.Thread(
                target=self._work_loop,
                args=(f"{self.worker_id}.{index}",),
                name=f"executor-{self.lambda_name}-{index}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        self._reporter = threading.Thread(
            target=self._report_loop, name=f"executor-{self.lambda_name}-results", daemon=True
        )
        self._reporter.start()
        log.info(
            "executor %s runs %s with %d threads (controller %s, hsc %s)",
            self.worker_id,
            self.lambda_name,
            self.threads,
            self.controller_address,
            self.hsc_address,
        )

    def stop(self, grace: float = 10.0) -> None:
        """Take no more work; give running tasks ``grace`` seconds, then ask them to stop.

        Safe unstarted and twice. A thread runs the rest of its claimed batch
        within the grace, and starts none of it after. A task still running
        when this returns is not reported, and one of a batch not started is
        not run; their heartbeat timeout gives them to another executor.
        """
        self._stopping.set()
        with self._lock:
            calls = list(self._calls)
        for call in calls:
            call.cancel()
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._abandoning.set()
        with self._lock:
            running = list(self._running.values())
        for task in running:
            task.cancelled.set()
        for thread in self._threads:
            thread.join(max(1.0, deadline - time.monotonic()))
        # The results already in hand are still reported, within the grace.
        while self._unsettled() and time.monotonic() < deadline:
            time.sleep(0.01)  # the reporter settles them; bounded by the grace
        if self._reporter is not None:
            self._finished.put_nowait(None)
            self._reporter.join(max(1.0, deadline - time.monotonic()))
        for channel in (self._controller_channel, self._hsc_channel):
            if channel is not None:
                channel.close()
        self._controller_channel = self._hsc_channel = None
        if self._unregister is not None:
            self._unregister()
            self._unregister = None

    def _gauges(self) -> metrics.StateSnapshot:
        return {"atf_executor_running": {(self.lambda_name,): len(self._running)}}

    def run_forever(self) -> None:
        """Run until SIGTERM or SIGINT (or ``stop()`` from another thread)."""
        done = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("executor %s: signal %d, stopping", self.worker_id, signum)
            done.set()

        restore: list[tuple[signal.Signals, object]] = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                restore.append((sig, signal.signal(sig, on_signal)))
        self.start()
        try:
            while not done.wait(0.5) and not self._stopping.is_set():
                pass
        finally:
            self.stop()
            for sig, previous in restore:
                signal.signal(sig, previous)  # type: ignore[arg-type]

    # -- the worker threads ----------------------------------------------

    def _count(self, **increments: int) -> None:
        with self._stats_lock:
            for name, value in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)
        for name, value in increments.items():
            metric = self._metric_of.get(name)
            if metric is not None:
                metric.inc(value)

    def _work_loop(self, worker: str) -> None:
        errors = 0
        # With prefetch: the NextWork call for this thread's next task, made
        # while it runs the current one.
        ahead: grpc.Future | None = None
        while not self._stopping.is_set():
            try:
                call, ahead = ahead or self._ask(worker), None
                items, claimed_at = self._answer(call)
            except (grpc.RpcError, grpc.FutureCancelledError) as exc:
                if self._stopping.is_set():
                    return
                errors += 1
                delay = min(1.0, 0.05 * 2**errors)  # a local controller: come back soon
                log.warning("NextWork failed (%s); retrying in %.1fs", _describe_rpc(exc), delay)
                self._stopping.wait(delay)
                continue
            errors = 0
            if len(items) > 1:
                self._count(batches=1)
            for index, item in enumerate(items):
                if self._abandoning.is_set():
                    # stop()'s grace is over: what the batch has left is not
                    # started here, and its heartbeat timeout enqueues it again.
                    log.info(
                        "executor %s stopping: %d claimed tasks not run; their heartbeat "
                        "timeout will enqueue them again",
                        self.worker_id,
                        len(items) - index,
                    )
                    break
                if self.prefetch and index == len(items) - 1 and not self._stopping.is_set():
                    # The claim of the next task overlaps this one's start and
                    # run: one processor round trip fewer on the thread's path.
                    ahead = self._ask(worker)
                self._run(item, worker, claimed_at)
        if ahead is not None:
            # A task it claimed anyway comes back after its claim timeout.
            ahead.cancel()
            with self._lock:
                self._calls.discard(ahead)

    def _ask(self, worker: str) -> grpc.Future:
        """Start a NextWork long poll for ``worker``; ``stop()`` cancels it."""
        controller = self._controller
        assert controller is not None
        # Without prefetch the thread runs what it gets at once, so the claim
        # can start it: one round trip (the first heartbeat) fewer per task.
        request = worker_pb2.NextWorkRequest(
            worker=worker,
            max_tasks=self._batch_size(),
            wait_ms=self.wait_ms,
            lambda_names=[self.lambda_name],
            start=not self.prefetch,
        )
        call = controller.NextWork.future(request, timeout=self.wait_ms / 1000 + 10)
        with self._lock:
            self._calls.add(call)
        if self._stopping.is_set():
            call.cancel()
        return call

    def _batch_size(self) -> int:
        """How many tasks a thread asks for: more than one only without
        prefetch, and only so many that, by the estimate of a callback's time,
        the last starts within ``BATCH_WAIT_S`` -- and far within the
        freshness window of a started claim (``_fresh``)."""
        estimate = self._run_estimate
        if self.prefetch or self.batch == 1 or estimate is None:
            return 1
        wait = min(BATCH_WAIT_S, self.heartbeat_deadline / 4)
        return max(1, min(self.batch, 1 + int(wait / max(estimate, 1e-6))))

    def _estimate(self, seconds: float) -> None:
        """Count a callback's time into the estimate: a slower one at once, a
        faster one by ``ESTIMATE_DECAY``."""
        estimate = self._run_estimate
        if estimate is None or seconds >= estimate:
            self._run_estimate = seconds
        else:
            self._run_estimate = estimate + (seconds - estimate) * ESTIMATE_DECAY

    def _answer(self, call: grpc.Future) -> tuple[list[common_pb2.WorkItem], int | None]:
        """The items of a NextWork call, and when they were claimed started (or None)."""
        try:
            response = call.result()
            return list(response.items), response.claimed_at_ms if response.started else None
        finally:
            with self._lock:
                self._calls.discard(call)

    def _run(self, item: common_pb2.WorkItem, worker: str, claimed_at: int | None = None) -> None:
        """Run ``item``; ``claimed_at``: when the Controller sent its claim, if that started it."""
        task = TaskContext(
            task_id=item.task_id,
            lease=item.lease,
            attempt=item.attempt,
            lambda_name=item.lambda_name,
            collection=item.collection,
            priority=item.priority,
            payload=item.payload,
        )
        if not self._fresh(claimed_at) and not self._start_task(task, worker):
            self._count(not_started=1)
            return
        self._count(started=1)
        # Due: the scheduled time of a first attempt, the enqueue of a later one
        # (a retry is enqueued when its backoff ends).
        due = item.scheduled_at_ms if item.attempt == 0 else item.enqueued_at_ms
        self._delivery.observe(max(0, now_ms() - due) / 1000)
        with self._lock:
            self._running[task.task_id] = task
        beating = threading.Event()
        returned = threading.Event()
        beats = threading.Thread(
            target=self._heartbeat_loop,
            args=(task, worker, beating, returned),
            name=f"heartbeat-{task.task_id}",
            daemon=True,
        )
        beats.start()
        handed_over = False
        try:
            began = time.perf_counter()
            outcome, error, result = self._call(task)
            seconds = time.perf_counter() - began
            self._run_seconds.observe(seconds)
            self._estimate(seconds)
            returned.set()
            if not task.cancelled.is_set():
                with self._lock:
                    self._reporting += 1
                self._finished.put(_Finished(task, worker, outcome, error, result, beating, beats))
                handed_over = True
        finally:
            if not handed_over:
                beating.set()
                beats.join()
            with self._lock:
                self._running.pop(task.task_id, None)
        if not handed_over:
            self._count(stopped=1)
            log.info(
                "task %s (lease %d) stopped: cancelled or no longer ours; nothing reported",
                task.task_id,
                task.lease,
                extra=_context(task),
            )
        else:
            self._outcome_metric[outcome].inc()

    def _fresh(self, claimed_at: int | None) -> bool:
        """Whether a task its claim started may run at once.

        The processor's heartbeat timeout runs from the claim. A first heartbeat
        is answered within ``heartbeat_deadline`` or counts as failed, so a task
        that started with one began at most that long after the processor's
        clock; a started claim that took longer to get here (a paused
        Controller, a slow hop) gets a heartbeat first, which its lease passes
        only if the task was not handed on.
        """
        if claimed_at is None:
            return False
        return 0 <= now_ms() - claimed_at <= self.heartbeat_deadline * 1000

    def _start_task(self, task: TaskContext, worker: str) -> bool:
        """The first heartbeat (claimed -> processing, or a late started claim's
        check); the callback runs only after it."""
        for attempt in range(HEARTBEATS_LOST_AFTER):
            beat = self._beat(task, worker)
            if beat is _Beat.OK:
                return True
            if beat is _Beat.STOP:
                return False
            if self._stopping.wait(self.policy.heartbeat_interval_ms / 1000 / 3 * (attempt + 1)):
                break
        log.warning(
            "task %s (lease %d) not started: its first heartbeat failed; its claim (or "
            "heartbeat) timeout will enqueue it again",
            task.task_id,
            task.lease,
            extra=_context(task),
        )
        return False

    def _beat(self, task: TaskContext, worker: str) -> _Beat:
        hsc = self._hsc
        assert hsc is not None
        request = worker_pb2.HeartbeatRequest(task_id=task.task_id, lease=task.lease, worker=worker)
        try:
            hsc.Heartbeat(request, timeout=self.heartbeat_deadline)
        except grpc.RpcError as error:
            code = error.code()
            if code in REFUSAL_CODES:
                reason = dict(error.trailing_metadata() or ()).get(REPLY_CODE_KEY, code.name)
                self._refusals.inc()
                log.info(
                    "task %s (lease %d) must stop: %s (%s)",
                    task.task_id,
                    task.lease,
                    reason,
                    error.details(),
                    extra=_context(task),
                )
                return _Beat.STOP
            self._count(heartbeat_failures=1)
            log.warning(
                "heartbeat of task %s failed: %s",
                task.task_id,
                _describe_rpc(error),
                extra=_context(task),
            )
            return _Beat.FAILED
        self._count(heartbeats=1)
        return _Beat.OK

    def _heartbeat_loop(
        self, task: TaskContext, worker: str, finished: threading.Event, returned: threading.Event
    ) -> None:
        """Beat until ``finished``; after the callback ``returned``, only until the result is in.

        Losing the heartbeats of a task whose callback has returned ends
        nothing: there is no work left to stop, and its result may still be
        recorded (or its heartbeat timeout runs it again).
        """
        interval = self.policy.heartbeat_interval_ms / 1000
        failures = 0
        next_at = time.monotonic() + interval
        while not finished.wait(max(0.0, next_at - time.monotonic())):
            next_at += interval
            beat = self._beat(task, worker)
            if beat is _Beat.OK:
                failures = 0
            elif beat is _Beat.STOP:
                task.cancelled.set()
                return
            else:
                failures += 1
                if failures >= HEARTBEATS_LOST_AFTER and returned.is_set():
                    return
                if failures >= HEARTBEATS_LOST_AFTER:
                    task.cancelled.set()
                    self._count(heartbeats_lost=1)
                    self.on_heartbeats_lost(task)
                    return

    def _call(self, task: TaskContext) -> tuple[Outcome, str | None, bytes | None]:
        try:
            value = self.fn(task)
            if value is None or isinstance(value, bytes):
                return Outcome.SUCCESS, None, value
            if isinstance(value, str):
                return Outcome.SUCCESS, None, value.encode("utf-8")
            raise TypeError(
                f"lambda {self.lambda_name!r} returned a {type(value).__name__}; "
                "return bytes, str or None"
            )
        except RetriableError as exc:
            return Outcome.RETRIABLE, _describe(exc), None
        except FatalError as exc:
            return Outcome.FATAL, _describe(exc), None
        except Exception as exc:
            if not task.cancelled.is_set():
                log.exception(
                    "task %s failed with an unexpected error", task.task_id, extra=_context(task)
                )
            outcome = (
                Outcome.FATAL
                if self.policy.default_failure is FailureKind.FATAL
                else Outcome.RETRIABLE
            )
            return outcome, _describe(exc), None

    # -- the reporter ----------------------------------------------------

    def _unsettled(self) -> int:
        with self._lock:
            return self._reporting

    def _settle(self, item: _Finished) -> None:
        if item.settled:
            return
        item.settled = True
        # Not joined: a heartbeat in flight ends on its own, and waiting for
        # its deadline would hold up every other result behind it.
        item.beating.set()
        with self._lock:
            self._reporting -= 1

    def _report_loop(self) -> None:
        """Send finished tasks' results in batches; retry each one up to ``RESULT_ATTEMPTS``."""
        retry: list[_Finished] = []
        while True:
            soonest = min((item.retry_at for item in retry), default=None)
            pause = None if soonest is None else max(0.0, soonest - time.monotonic())
            batch, stop = self._take(pause)
            now = time.monotonic()
            due = [item for item in retry if stop or item.retry_at <= now]
            retry = [item for item in retry if not (stop or item.retry_at <= now)]
            batch = due + batch
            if batch:
                try:
                    retry += self._report(batch)
                except Exception:  # the reporter must outlive any one batch
                    log.exception("reporting %d results failed; giving them up", len(batch))
                    for item in batch:
                        if not item.settled:
                            self._give_up(item)
            if stop:
                for item in retry:
                    self._give_up(item)
                return

    def _take(self, wait: float | None) -> tuple[list[_Finished], bool]:
        """What has finished: waits up to ``wait`` (None: for ever) for the first.

        Also says whether ``stop()`` asked the reporter to end.
        """
        taken: list[_Finished] = []
        try:
            item = self._finished.get(timeout=wait)
        except queue.Empty:
            return taken, False
        while item is not None:
            taken.append(item)
            if len(taken) >= RESULT_BATCH:
                return taken, False
            try:
                item = self._finished.get_nowait()
            except queue.Empty:
                return taken, False
        return taken, True

    def _report(self, batch: list[_Finished]) -> list[_Finished]:
        """One ``SetResults`` call for ``batch``; returns the items to try again."""
        hsc = self._hsc
        assert hsc is not None
        request = worker_pb2.SetResultsRequest(
            results=[
                worker_pb2.TaskResult(
                    task_id=item.task.task_id,
                    lease=item.task.lease,
                    worker=item.worker,
                    outcome=_OUTCOME_PROTO[item.outcome],
                    error=item.error,
                    result=item.result,
                )
                for item in batch
            ]
        )
        failed: list[tuple[_Finished, str]] = []
        try:
            response = hsc.SetResults(request, timeout=RESULT_DEADLINE_S)
        except (grpc.RpcError, ValueError) as exc:  # ValueError: the channel closed at stop()
            problem = _describe_rpc(exc)
            failed = [(item, problem) for item in batch]
        else:
            for item, reply in zip(batch, response.replies, strict=True):
                if reply.code == common_pb2.REPLY_CODE_OK:
                    self._count(**{"succeeded" if item.outcome is Outcome.SUCCESS else "failed": 1})
                    self._settle(item)
                elif reply.code != common_pb2.REPLY_CODE_UNSPECIFIED:
                    self._count(unreported=1)
                    log.warning(
                        "the %s result of task %s (lease %d) was refused: %s",
                        item.outcome,
                        item.task.task_id,
                        item.task.lease,
                        reply.message,
                        extra=_context(item.task),
                    )
                    self._settle(item)
                else:
                    failed.append((item, reply.message))
        again: list[_Finished] = []
        for item, problem in failed:
            item.attempts += 1
            log.warning(
                "reporting task %s (try %d of %d) failed: %s",
                item.task.task_id,
                item.attempts,
                RESULT_ATTEMPTS,
                problem,
                extra=_context(item.task),
            )
            if item.attempts < RESULT_ATTEMPTS:
                item.retry_at = time.monotonic() + min(2.0, 0.1 * 2**item.attempts)
                again.append(item)
            else:
                self._give_up(item)
        return again

    def _give_up(self, item: _Finished) -> None:
        self._count(unreported=1)
        log.error(
            "gave up reporting task %s (lease %d); its heartbeat timeout will run it again",
            item.task.task_id,
            item.task.lease,
            extra=_context(item.task),
        )
        self._settle(item)


def _context(task: TaskContext) -> dict[str, object]:
    """The ``extra=`` of a log line about ``task`` (see ``atf_es.logs``)."""
    return {
        "task_id": task.task_id,
        "lambda": task.lambda_name,
        "lease": task.lease,
        "attempt": task.attempt,
    }


def _check_heartbeat_policy(policy: LambdaPolicy) -> None:
    floor = HEARTBEATS_LOST_AFTER * policy.heartbeat_interval_ms + policy.heartbeat_margin_ms
    if policy.heartbeat_timeout_ms <= floor:
        raise ValueError(
            f"lambda {policy.name!r}: heartbeat_timeout_ms ({policy.heartbeat_timeout_ms}) "
            f"must exceed {HEARTBEATS_LOST_AFTER} x heartbeat_interval_ms + "
            f"heartbeat_margin_ms = {floor}, or a task could run twice at once"
        )


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 15] + "... [truncated]"
    return text


def _describe_rpc(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        return f"{exc.code().name}: {exc.details()}"
    return type(exc).__name__
