"""A torture run: steady load, random faults, then the checker's verdict.

    python -m torture --duration 1800          # the long run
    python -m torture --duration 60 --rate 5   # a short one

Without ``--bootstrap`` it starts the embedded broker. The run starts every
service as its own process (``torture.system``), offers tasks at ``--rate``
per second through the Frontend, and every few seconds injects one fault,
going round every kind in a shuffled order so each kind recurs evenly:

- ``kill-processor``, ``kill-frontend``, ``kill-hsc``, ``kill-controller``,
  ``kill-executor``: SIGKILL, then a restart (executors are restarted by
  their supervisor, as a process manager would);
- ``stop-processor``: SIGSTOP past the session timeout, then SIGCONT (a
  zombie that must be fenced);
- ``stop-hsc``: SIGSTOP for longer than 3 heartbeat intervals, so executors
  lose their heartbeats and end themselves;
- ``stop-controller``: SIGSTOP past the heartbeat timeout, then SIGCONT, so
  tasks its claims started are handed on while their answers wait in it;
- ``garbage``: undecodable records and malformed or oversized requests at
  every public interface (``torture.garbage``).

When the time is up it heals everything, waits until every scheduled task is
terminal, stops the processors, and checks the ledger, the event log and the
stores (``torture.checker``). The figures go to stdout and ``report.json``;
the exit status is 0 only when nothing was lost and no guarantee was broken.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from confluent_kafka import TopicPartition

from atf_es import kafka_clients
from atf_es.broker import EmbeddedBroker
from atf_es.client import AtfError, Client
from atf_es.config import Settings, load_settings
from atf_es.events import Event, Task, TaskSucceeded
from atf_es.events.codec import DecodeError, decode_event
from atf_es.projections.store import RocksTaskStore
from atf_es.topics import Topics
from torture.app import POLICY, app, encode_payload
from torture.checker import Fault, Report, check, counts, parse_ledger
from torture.system import LAMBDA, Service, ServiceError, System

FAULT_KINDS = (
    "kill-processor",
    "stop-processor",
    "kill-frontend",
    "kill-hsc",
    "stop-hsc",
    "stop-controller",
    "kill-controller",
    "kill-executor",
    "garbage",
)


@dataclass(frozen=True)
class Options:
    duration: float = 60.0
    """Seconds of load and faults (the drain comes on top)."""
    rate: float = 5.0
    """Tasks offered per second."""
    seed: int = 1
    fault_gap: tuple[float, float] = (2.0, 5.0)
    """Seconds between one fault's heal and the next fault, drawn uniformly."""
    kinds: tuple[str, ...] = FAULT_KINDS
    drain_timeout: float = 240.0
    """Seconds the confirmed tasks get to end once the faults stop."""
    finish_timeout: float = 120.0
    """Seconds the tasks still being offered get to be confirmed once the faults stop."""
    owned_timeout: float = 120.0
    """Seconds every partition gets to have an owner again at the end."""
    partitions: int = 4
    processors: int = 2
    executors: int = 2
    threads: int = 4
    progress_every: float = 10.0


# -- load ----------------------------------------------------------------------


class Load:
    """Offers tasks at a steady rate; a task counts once ``Schedule`` confirmed it.

    Every task has an idempotency key, so a schedule that failed (the
    Frontend was down, Kafka did not answer in time) is simply retried with
    the same key until it is confirmed: retrying never makes a second task.
    """

    def __init__(self, address: str, options: Options, rng: random.Random, run_id: str) -> None:
        self.address = address
        self.options = options
        self.run_id = run_id
        self.payloads = [self._payload(rng) for _ in range(int(options.rate * options.duration))]
        self.scheduled: dict[str, int] = {}
        """Task id -> when ``Schedule`` confirmed it (ns)."""
        self.errors: Counter[str] = Counter()
        self._next = 0
        self._lock = threading.Lock()
        self._stop_offering = threading.Event()
        self._give_up = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = 0.0

    @staticmethod
    def _payload(rng: random.Random) -> bytes:
        failures = rng.choices((0, 1, 2), weights=(80, 15, 5))[0]
        # Mostly short work; some long enough to span 3 heartbeats, so a stalled
        # HSC makes executors end themselves mid-task.
        work_ms = rng.randint(20, 400) if rng.random() < 0.7 else rng.randint(400, 1500)
        return encode_payload(work_ms, failures)

    def start(self, workers: int = 4) -> None:
        self._started = time.monotonic()
        for n in range(workers):
            thread = threading.Thread(target=self._work, name=f"load-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _take(self) -> int | None:
        with self._lock:
            if self._stop_offering.is_set() or self._next >= len(self.payloads):
                return None
            index = self._next
            self._next += 1
        due = self._started + index / self.options.rate
        self._stop_offering.wait(max(0.0, due - time.monotonic()))
        return index

    def _work(self) -> None:
        with Client(self.address, timeout=15) as client:
            while (index := self._take()) is not None:
                key = f"{self.run_id}-{index}"
                while not self._give_up.is_set():
                    try:
                        task_id = client.schedule(LAMBDA, self.payloads[index], idempotency_key=key)
                    except AtfError as exc:
                        self.errors[type(exc).__name__] += 1
                        self._give_up.wait(0.2)
                        continue
                    with self._lock:
                        self.scheduled[task_id] = time.time_ns()
                    break

    @property
    def offered(self) -> int:
        return self._next

    def finish(self, timeout: float) -> int:
        """Stop offering; wait for the tasks in flight; returns how many never got confirmed."""
        self._stop_offering.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._give_up.set()
        for thread in self._threads:
            thread.join(20)
        return self._next - len(self.scheduled)


# -- the event log ---------------------------------------------------------------


class EventWatcher:
    """Reads the task-events topic from the start, all the run long."""

    def __init__(self, settings: Settings) -> None:
        assert settings.kafka_bootstrap is not None
        self.settings = settings
        self.history: dict[str, list[tuple[Event, Task]]] = defaultdict(list)
        self.terminal: dict[str, int] = {}
        self.successes: list[int] = []
        """When each TaskSucceeded was seen (ns), in order."""
        self.undecodable = 0
        self.last_record = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = kafka_clients.consumer(
            settings.kafka_bootstrap, kafka_config=settings.kafka_config
        )
        topic = Topics(settings.topic_prefix).task_events
        self._consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.partitions)])
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in kafka_clients.consume(self._consumer, 500, 0.2):
                value = message.value()
                if message.error() is not None or value is None:
                    continue
                try:
                    event, task = decode_event(value)
                except DecodeError:
                    self.undecodable += 1
                    continue
                now = time.time_ns()
                with self._lock:
                    self.history[event.task_id].append((event, task))
                    if task.status.terminal:
                        self.terminal.setdefault(task.task_id, now)
                    if isinstance(event, TaskSucceeded):
                        self.successes.append(now)
                self.last_record = time.monotonic()

    def done(self, task_ids: Sequence[str]) -> int:
        with self._lock:
            return sum(1 for t in task_ids if t in self.terminal)

    def first_success_after(self, at_ns: int) -> int | None:
        with self._lock:
            return next((s for s in self.successes if s > at_ns), None)

    def settle(self, quiet: float = 3.0, timeout: float = 60.0) -> None:
        """Until no new record came for ``quiet`` seconds (the producers are stopped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() - self.last_record < quiet and time.monotonic() < deadline:
            self._stop.wait(0.2)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


# -- faults ----------------------------------------------------------------------


@dataclass
class Injector:
    """Injects one fault at a time, each kind in turn (shuffled per round)."""

    system: System
    options: Options
    rng: random.Random
    faults: list[Fault] = field(default_factory=list)
    healed: list[tuple[str, int]] = field(default_factory=list)
    garbage_answers: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="faults", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(120)

    def _run(self) -> None:
        round_: list[str] = []
        while not self._stop.wait(self.rng.uniform(*self.options.fault_gap)):
            if not round_:
                round_ = list(self.options.kinds)
                self.rng.shuffle(round_)
            kind = round_.pop()
            start = time.time_ns()
            try:
                target, disruptive = self._inject(kind)
            except Exception as exc:  # a failed injection is a finding, not a crash
                self.problems.append(f"{kind}: injecting failed: {type(exc).__name__}: {exc}")
                self.system.heal()
                target, disruptive = "?", True
            end = time.time_ns()
            self.faults.append(Fault(kind, target, start, end, disruptive))
            self.healed.append((kind, end))

    def _pause(self, low: float, high: float) -> None:
        time.sleep(self.rng.uniform(low, high))  # a fault's duration, not a wait on a condition

    def _restart(self, service: Service, low: float = 0.5, high: float = 2.0) -> None:
        service.kill()
        self._pause(low, high)
        service.start()

    def _inject(self, kind: str) -> tuple[str, bool]:
        system = self.system
        if kind == "kill-processor":
            victim = self.rng.choice(system.processors)
            self._restart(victim, 0.5, 3.0)
            # The fault lasts until its partitions have an owner again.
            system.wait_partitions_owned()
            return victim.name, True
        if kind == "stop-processor":
            victim = self.rng.choice(system.processors)
            victim.signal(signal.SIGSTOP)
            # Past the session timeout, so the group takes its partitions away.
            self._pause(
                system.settings.session_timeout_ms / 1000 + 1,
                system.settings.session_timeout_ms / 1000 + 4,
            )
            victim.signal(signal.SIGCONT)
            system.wait_partitions_owned()
            return victim.name, True
        if kind in ("kill-frontend", "kill-hsc", "kill-controller"):
            victim = {"kill-frontend": system.frontend, "kill-hsc": system.hsc}.get(
                kind, system.controller
            )
            self._restart(victim)
            return victim.name, True
        if kind == "stop-hsc":
            system.hsc.signal(signal.SIGSTOP)
            self._pause(2.0, 4.0)  # > 3 heartbeat intervals + a deadline: executors give up
            system.hsc.signal(signal.SIGCONT)
            return system.hsc.name, True
        if kind == "stop-controller":
            system.controller.signal(signal.SIGSTOP)
            # Past the heartbeat timeout (3 s) and short of the session timeout.
            self._pause(3.5, 5.0)
            system.controller.signal(signal.SIGCONT)
            return system.controller.name, True
        if kind == "kill-executor":
            victim = self.rng.choice([e for e in system.executors if e.alive] or system.executors)
            victim.kill()
            return victim.name, True
        if kind == "garbage":
            self._garbage()
            return "every interface", False
        raise ValueError(f"unknown fault kind {kind!r}")

    def _garbage(self) -> None:
        from torture import garbage

        system = self.system
        garbage.garbage_commands(system.settings, 20, self.rng)
        garbage.garbage_exec_records(system.settings, LAMBDA, self.rng)
        garbage.garbage_control_records(system.settings, self.rng)
        for service, address in (
            ("Frontend", system.frontend_address),
            ("HeartbeatStatus", system.hsc_address),
            ("Controller", system.controller_address),
            ("Admin", system.frontend_address),
        ):
            for method, code, details in garbage.garbage_grpc(address, service, self.rng):
                self.garbage_answers[code] += 1
                if code in ("UNKNOWN", "INTERNAL") or not details:
                    self.problems.append(f"garbage to {service}.{method}: {code} {details!r}")


# -- the run ---------------------------------------------------------------------


@dataclass
class Outcome:
    report: Report
    figures: dict[str, object]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.problems


def pinned_partitions(settings: Settings) -> list[str]:
    """Partitions whose last stable offset lags their end: an unfinished transaction pins them.

    Called once every processor has stopped, when no transaction should be
    unfinished: a pinned partition hides everything after the pin from every
    ``read_committed`` reader (replies, work items, events). The embedded
    broker answers 0 for a partition with an unfinished transaction, and it
    leaves transactions unfinished for good when two transactional producers
    share a partition and one of them dies mid-transaction
    (bench/txn_shared_partition.py).
    """
    assert settings.kafka_bootstrap is not None
    committed = kafka_clients.consumer(settings.kafka_bootstrap, kafka_config=settings.kafka_config)
    everything = kafka_clients.consumer(
        settings.kafka_bootstrap,
        kafka_config=settings.kafka_config,
        overrides={"isolation.level": "read_uncommitted"},
    )
    found: list[str] = []
    try:
        topics = committed.list_topics(timeout=10).topics
        for name, topic in sorted(topics.items()):
            if not name.startswith(f"{settings.topic_prefix}."):
                continue
            for partition in sorted(topic.partitions):
                tp = TopicPartition(name, partition)
                stable = committed.get_watermark_offsets(tp, timeout=10)[1]
                end = everything.get_watermark_offsets(tp, timeout=10)[1]
                if stable < end:
                    found.append(f"{name}[{partition}]: stable to {stable}, ends at {end}")
    finally:
        committed.close()
        everything.close()
    return found


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 2),
        "max": round(ordered[-1], 2),
    }


def _stores(system: System) -> dict[str, Task]:
    """The projection of each partition, read from its final owner's RocksDB."""
    found: dict[str, Task] = {}
    for partition, owner in sorted(system.owners().items()):
        path = system.data_dir(owner) / f"p{partition}"
        with RocksTaskStore.open(path) as store:
            for task in store.tasks():
                found[task.task_id] = task
    return found


def run(settings: Settings, workdir: Path, options: Options, out: TextIO = sys.stdout) -> Outcome:
    """One torture run against the broker in ``settings``; see the module docstring."""
    rng = random.Random(options.seed)
    run_id = uuid.uuid4().hex[:8]
    assert settings.kafka_bootstrap is not None
    from atf_es.broker import ensure_topics
    from atf_es.topics import core_topic_specs

    ensure_topics(settings.kafka_bootstrap, core_topic_specs(settings), settings.kafka_config)
    app.define(settings, settings.kafka_bootstrap)

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    system = System(
        settings,
        workdir,
        processors=options.processors,
        executors=options.executors,
        threads=options.threads,
    )
    say(f"torture {run_id}: starting the system (logs in {system.logs})")
    system.start()
    watcher = EventWatcher(settings)
    watcher.start()
    load = Load(system.frontend_address, options, rng, run_id)
    injector = Injector(system, options, random.Random(rng.random()))
    problems: list[str] = []
    began = time.monotonic()
    try:
        load.start()
        injector.start()
        say(
            f"torture {run_id}: {options.rate:g} tasks/s for {options.duration:g}s, "
            f"faults every {options.fault_gap[0]:g}-{options.fault_gap[1]:g}s: "
            f"{', '.join(options.kinds)}"
        )
        _progress(
            say,
            began=began,
            duration=options.duration,
            load=load,
            watcher=watcher,
            injector=injector,
            every=options.progress_every,
        )
        injector.stop()
        system.heal()
        say(f"torture {run_id}: faults stopped; {len(injector.faults)} injected; draining")
        unconfirmed = load.finish(timeout=options.finish_timeout)
        if unconfirmed:
            problems.append(f"{unconfirmed} offered tasks were never confirmed by Schedule")
        drain_began = time.monotonic()
        scheduled = list(load.scheduled)
        deadline = drain_began + options.drain_timeout
        while watcher.done(scheduled) < len(scheduled) and time.monotonic() < deadline:
            time.sleep(0.5)  # polling the watcher; bounded by the drain timeout
        drain = time.monotonic() - drain_began
        say(
            f"torture {run_id}: {watcher.done(scheduled)}/{len(scheduled)} terminal "
            f"after {drain:.1f}s"
        )
        try:
            system.wait_partitions_owned(options.owned_timeout)
            owned = True
        except ServiceError as exc:
            # Still check what can be checked: the ledger and the log.
            owned = False
            problems.append(f"not every partition has an owner at the end: {exc}"[:2000])
        for processor in system.processors:
            code = processor.terminate()
            if code not in (0, None):
                problems.append(f"{processor.name} exited with {code} on SIGTERM")
        watcher.settle()
        stores = _stores(system) if owned else None
        executions = parse_ledger(system.ledger.read_text().splitlines())
        report = check(
            scheduled,
            watcher.history,
            executions,
            deaths=system.deaths,
            faults=injector.faults,
            stores=stores,
            grace_ns=int(POLICY["heartbeat_timeout_ms"]) * 1_000_000,
        )
        problems += injector.problems
        pinned = pinned_partitions(settings)
        if pinned:
            problems.append(
                f"the broker pins {len(pinned)} partitions behind an open transaction "
                f"(read_committed readers see nothing after it): {'; '.join(pinned[:6])}"
            )
        if watcher.undecodable:
            problems.append(f"{watcher.undecodable} undecodable records on the events topic")
        figures = _figures(
            load=load,
            watcher=watcher,
            injector=injector,
            system=system,
            report=report,
            began=began,
            drain=drain,
        )
        return Outcome(report, figures, problems)
    finally:
        injector.stop()
        watcher.close()
        system.stop()


def _progress(
    say: Callable[[str], None],
    *,
    began: float,
    duration: float,
    load: Load,
    watcher: EventWatcher,
    injector: Injector,
    every: float,
) -> None:
    while (left := began + duration - time.monotonic()) > 0:
        time.sleep(min(every, left))  # the run's duration: progress lines at a fixed cadence
        scheduled = list(load.scheduled)
        say(
            f"  t={time.monotonic() - began:5.0f}s offered {load.offered} "
            f"scheduled {len(scheduled)} terminal {watcher.done(scheduled)} "
            f"faults {len(injector.faults)} ({dict(Counter(f.kind for f in injector.faults))})"
        )


def _figures(
    *,
    load: Load,
    watcher: EventWatcher,
    injector: Injector,
    system: System,
    report: Report,
    began: float,
    drain: float,
) -> dict[str, object]:
    recovery: dict[str, list[float]] = defaultdict(list)
    for kind, healed in injector.healed:
        first = watcher.first_success_after(healed)
        if first is not None:
            recovery[kind].append((first - healed) / 1e9)
    latency = [
        (watcher.terminal[t] - at) / 1e9
        for t, at in load.scheduled.items()
        if t in watcher.terminal
    ]
    return {
        **counts(report),
        "statuses": dict(report.statuses),
        "faults": dict(Counter(f.kind for f in injector.faults)),
        "deaths": dict(Counter(d.how for d in system.deaths)),
        "schedule errors retried": dict(load.errors),
        "garbage answers": dict(injector.garbage_answers),
        "recovery s (heal -> next success)": {k: _percentiles(v) for k, v in recovery.items()},
        "scheduled -> terminal s": _percentiles(latency),
        "run s": round(time.monotonic() - began, 1),
        "drain s": round(drain, 1),
    }


def render(outcome: Outcome) -> str:
    lines = ["", "figures:"]
    for name, value in outcome.figures.items():
        lines.append(f"  {name}: {value}")
    problems = {**outcome.report.problems()}
    if outcome.problems:
        problems["harness"] = outcome.problems
    if problems:
        lines.append("problems:")
        for name, found in problems.items():
            lines.append(f"  {name}: {len(found)}")
            lines += [f"    {p}" for p in found[:20]]
    lines.append("verdict: " + ("OK" if outcome.ok else "FAILED"))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m torture", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load and faults")
    parser.add_argument("--rate", type=float, default=5.0, help="tasks offered per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bootstrap", help="a running broker (default: start the embedded one)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where logs, ledger and stores go (default: tmp)"
    )
    parser.add_argument(
        "--kinds",
        default=",".join(FAULT_KINDS),
        help=f"fault kinds, comma-separated: {FAULT_KINDS}",
    )
    parser.add_argument(
        "--fault-gap",
        default="2,5",
        metavar="LOW,HIGH",
        help="seconds between one fault's heal and the next, drawn uniformly (default 2,5)",
    )
    parser.add_argument("--executors", type=int, default=2, help="executor processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per executor")
    args = parser.parse_args(argv)
    try:
        low, high = (float(x) for x in args.fault_gap.split(","))
    except ValueError:
        parser.error(f"--fault-gap takes two numbers, LOW,HIGH; got {args.fault_gap!r}")
    if not 0 <= low <= high:
        parser.error(f"--fault-gap needs 0 <= LOW <= HIGH; got {args.fault_gap!r}")
    kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = sorted(set(kinds) - set(FAULT_KINDS))
    if unknown or not kinds:
        parser.error(f"unknown fault kinds {unknown}; choose from {', '.join(FAULT_KINDS)}")
    if args.duration <= 0 or args.rate <= 0:
        parser.error("--duration and --rate must be positive")
    options = Options(
        duration=args.duration,
        rate=args.rate,
        seed=args.seed,
        kinds=kinds,
        fault_gap=(low, high),
        executors=args.executors,
        threads=args.threads,
    )
    import tempfile

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="atf-torture-"))
    workdir.mkdir(parents=True, exist_ok=True)
    broker: EmbeddedBroker | None = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker = EmbeddedBroker(workdir / "broker").start()
        bootstrap = broker.bootstrap
    try:
        settings = load_settings(
            env={},
            overrides={
                "kafka_bootstrap": bootstrap,
                "topic_prefix": f"torture-{uuid.uuid4().hex[:8]}",
                "partitions": options.partitions,
                "data_dir": workdir / "data",
                "session_timeout_ms": 6000,
            },
            override_source="python -m torture",
        )
        outcome = run(settings, workdir, options)
    finally:
        if broker is not None:
            broker.stop()
    print(render(outcome))
    (workdir / "report.json").write_text(
        json.dumps({"figures": outcome.figures, "ok": outcome.ok}, indent=2, default=str)
    )
    print(f"report: {workdir / 'report.json'}")
    return 0 if outcome.ok else 1


__all__ = ["FAULT_KINDS", "Options", "Outcome", "main", "render", "run"]
