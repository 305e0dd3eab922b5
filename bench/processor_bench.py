"""Partition-processor benchmark on the embedded broker.

Runs five phases, each on its own topic prefix of one EmbeddedBroker:

1. throughput: N ScheduleTask commands are produced BEFORE the processor
   starts, so the clock measures processing only (first batch to the last
   task recorded and enqueued). ``max_enqueued`` is raised to N so flow
   control does not throttle it.
2. rebuild: the processor is stopped, its data directory deleted, and every
   partition is restored from the events log into fresh stores with
   ``restore_partition``, the processor's own restore; the rebuilt counts are
   checked against the live stores.
3. flow control: the same preload with the default ``max_enqueued``; checks
   that exactly ``max_enqueued`` tasks per (lambda, priority) and partition
   are enqueued and the rest wait.
4. latency: a sender schedules immediate tasks at a steady rate; latency is
   command ``sent_at`` -> ``TaskEnqueued.at`` (the batch clock), and
   ``sent_at`` -> the work item read from the exec topic (what a controller
   sees, after the transaction commits).
5. lateness: tasks scheduled 1-3 s ahead; ``TaskEnqueued.at - scheduled_at``
   and exec-topic arrival - ``scheduled_at``.

    .venv/bin/python bench/processor_bench.py [--tasks N] [--partitions P] [--json out.json]
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import logging
import platform
import pstats
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition

from atf_es import kafka_clients
from atf_es.broker import EmbeddedBroker, ensure_topics
from atf_es.clock import now_ms
from atf_es.config import Settings, load_settings
from atf_es.events import LambdaPolicy, ScheduleTask, TaskEnqueued
from atf_es.events.codec import decode_event, decode_work, encode_command
from atf_es.projections.store import RocksTaskStore
from atf_es.services.control import define_lambda
from atf_es.services.processor import Processor, restore_partition
from atf_es.topics import Topics, core_topic_specs

LAMBDA = "bench"


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p95": pct(values, 95),
        "p99": pct(values, 99),
        "max": max(values, default=float("nan")),
    }


@dataclass
class Bench:
    bootstrap: str
    root: Path
    partitions: int
    session_timeout_ms: int
    profile: Path | None = None
    results: dict[str, Any] = field(default_factory=dict)

    def settings(self, phase: str, **overrides: Any) -> Settings:
        return load_settings(
            env={},
            overrides={
                "kafka_bootstrap": self.bootstrap,
                "topic_prefix": f"bench-{phase}-{uuid.uuid4().hex[:6]}",
                "data_dir": self.root / phase,
                "partitions": self.partitions,
                "session_timeout_ms": self.session_timeout_ms,
                **overrides,
            },
            override_source="processor_bench",
        )

    def prepare(self, settings: Settings) -> Topics:
        assert settings.kafka_bootstrap is not None
        ensure_topics(settings.kafka_bootstrap, core_topic_specs(settings), settings.kafka_config)
        define_lambda(settings, settings.kafka_bootstrap, LambdaPolicy(name=LAMBDA, priorities=1))
        return Topics(settings.topic_prefix)

    def preload(self, settings: Settings, n: int, *, ahead_ms: int = 0) -> None:
        """Put ``n`` ScheduleTask commands on the topic, due ``ahead_ms`` from now."""
        topics = Topics(settings.topic_prefix)
        producer = kafka_clients.producer(
            self.bootstrap,
            settings.kafka_config,
            overrides={"linger.ms": 20, "batch.num.messages": 10_000},
        )
        started = time.monotonic()
        for i in range(n):
            task_id = f"t{i:08d}"
            sent = now_ms()
            command = ScheduleTask(
                uuid.uuid4().hex, task_id, LAMBDA, "default", 0, b"x" * 64, sent + ahead_ms
            )
            while True:
                try:
                    producer.produce(
                        topics.commands, encode_command(command, None, sent), task_id.encode()
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
            if (i + 1) % 20_000 == 0:
                say(f"  preloaded {i + 1}/{n} commands")
        assert producer.flush(60) == 0, "commands were not delivered"
        say(f"  preloaded {n} commands in {time.monotonic() - started:.1f}s")

    def start(self, settings: Settings, instance: str) -> Processor:
        assert settings.kafka_bootstrap is not None
        processor = Processor(settings, settings.kafka_bootstrap, instance_id=instance)
        if self.profile is None:
            processor.start()
        else:
            # The processor thread itself, under cProfile (start() is only a thread).
            profiler = cProfile.Profile()

            def run() -> None:
                profiler.runcall(processor.run)
                profiler.dump_stats(str(self.profile))

            processor._thread = threading.Thread(target=run, name="processor", daemon=True)
            processor._thread.start()
        started = time.monotonic()
        while not processor.ready.wait(0.5):
            if processor.failed:
                raise RuntimeError("processor crashed while joining")
            if time.monotonic() - started > 60:
                raise RuntimeError("processor did not get its partitions in 60 s")
        say(
            f"  processor {instance} owns {processor.stats.owned} "
            f"after {time.monotonic() - started:.1f}s"
        )
        return processor

    def wait(
        self, processor: Processor, done: Callable[[], bool], what: str, timeout: float = 600
    ) -> None:
        started = last = time.monotonic()
        while not done():
            if processor.failed:
                raise RuntimeError(f"processor crashed while waiting for {what}")
            now = time.monotonic()
            if now - started > timeout:
                raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
            if now - last >= 2:
                s = processor.stats
                say(
                    f"  ... {what}: commands={s.commands} events={s.events} "
                    f"work={s.work} timers={s.timers}"
                )
                last = now
            time.sleep(0.005)

    # -- 1 + 2 ----------------------------------------------------------

    def throughput_and_rebuild(self, n: int) -> None:
        # The processor splits max_enqueued evenly between partitions, and hashing
        # is uneven: N x partitions guarantees that no partition is throttled.
        cap = min(1_000_000, max(n, 1000) * self.partitions)
        say(
            f"throughput: {n} ScheduleTask (immediate), {self.partitions} partitions, "
            f"max_enqueued={cap} (flow control cannot throttle)"
        )
        settings = self.settings("throughput", max_enqueued=cap)
        self.prepare(settings)
        self.preload(settings, n)
        processor = self.start(settings, "bench-live")
        stats = processor.stats
        t_ready = time.monotonic()
        # stats change after each committed batch: the first change marks the first batch.
        while stats.batches == 0:
            time.sleep(0.001)
        t_first = time.monotonic()
        self.wait(processor, lambda: stats.commands >= n and stats.work >= n, "processing")
        t_done = time.monotonic()
        processor.stop()
        elapsed = t_done - t_ready
        result = {
            "tasks": n,
            "partitions": self.partitions,
            "max_enqueued": cap,
            "seconds": round(elapsed, 3),
            "first_batch_s": round(t_first - t_ready, 3),
            "commands_per_s": round(stats.commands / elapsed),
            "events_per_s": round(stats.events / elapsed),
            "events": stats.events,
            "work": stats.work,
            "batches": stats.batches,
            "aborted": stats.aborted,
        }
        self.results["throughput"] = result
        say(
            f"  done: {stats.commands} commands, {stats.events} events, "
            f"{stats.work} enqueued in {elapsed:.2f}s "
            f"-> {result['commands_per_s']} commands/s, {result['events_per_s']} events/s "
            f"({stats.batches} batches)"
        )

        say("rebuild: delete the data dir, restore every partition from the events log")
        live_counts: dict[int, dict[Any, int]] = {}
        live_rows: dict[int, int] = {}
        for partition in range(self.partitions):
            with RocksTaskStore.open(processor.data_dir / f"p{partition}") as store:
                live_counts[partition] = store.counts()
                live_rows[partition] = sum(live_counts[partition].values())
        shutil.rmtree(processor.data_dir)
        # The processor's own restore, into fresh stores.
        where = self.root / "rebuild"
        started = time.monotonic()
        restored = 0
        mismatched = []
        for partition in range(self.partitions):
            with RocksTaskStore.open(where / f"p{partition}") as store:
                restored += restore_partition(settings, self.bootstrap, partition, store).events
                if store.counts() != live_counts[partition]:
                    mismatched.append(partition)
            say(f"  ... partition {partition}: {restored} events replayed so far")
        seconds = time.monotonic() - started
        self.results["rebuild"] = {
            "events": restored,
            "tasks": sum(live_rows.values()),
            "seconds": round(seconds, 3),
            "events_per_s": round(restored / seconds),
            "counts_equal": not mismatched,
        }
        say(
            f"  rebuilt {sum(live_rows.values())} tasks from {restored} events in {seconds:.2f}s "
            f"-> {restored / seconds:.0f} events/s; counts equal: {not mismatched}"
        )
        shutil.rmtree(where)

    # -- 3 --------------------------------------------------------------

    def flow_control(self, n: int) -> None:
        settings = self.settings("flow")
        # The processor gives each partition an even share of the cluster-wide cap.
        cap = max(1, settings.max_enqueued // self.partitions)
        say(
            f"flow control: {n} ScheduleTask with the default max_enqueued={settings.max_enqueued} "
            f"({cap} per partition), no consumers"
        )
        self.prepare(settings)
        self.preload(settings, n)
        processor = self.start(settings, "bench-flow")
        stats = processor.stats
        self.wait(processor, lambda: stats.commands >= n, "processing")
        time.sleep(1.0)  # several more polls: nothing else may be enqueued
        processor.stop()
        per_partition = []
        for partition in range(self.partitions):
            with RocksTaskStore.open(processor.data_dir / f"p{partition}") as store:
                counts = store.counts()
                enqueued = sum(v for k, v in counts.items() if k[3] == "enqueued")
                waiting = sum(v for k, v in counts.items() if k[3] == "new")
                per_partition.append({"partition": partition, "enqueued": enqueued, "new": waiting})
        enqueued = sum(p["enqueued"] for p in per_partition)
        holds = all(p["enqueued"] == min(cap, p["enqueued"] + p["new"]) for p in per_partition)
        self.results["flow_control"] = {
            "tasks": n,
            "max_enqueued": settings.max_enqueued,
            "per_partition_cap": cap,
            "enqueued_total": enqueued,
            "work_records": stats.work,
            "waiting_total": sum(p["new"] for p in per_partition),
            "per_partition": per_partition,
            "cap_holds_per_partition": holds,
        }
        say(
            f"  enqueued {enqueued} (work records {stats.work}), waiting "
            f"{sum(p['new'] for p in per_partition)}; per partition: "
            + ", ".join(
                f"p{p['partition']}={p['enqueued']}/{p['enqueued'] + p['new']}"
                for p in per_partition
            )
        )

    # -- 4 + 5 ----------------------------------------------------------

    def _paced(
        self,
        settings: Settings,
        rate: float,
        seconds: float,
        delay: Callable[[], int],
        name: str,
        *,
        processor: Processor | None = None,
    ) -> tuple[dict[str, tuple[int, int]], dict[str, int], dict[str, int]]:
        """Send at ``rate``/s for ``seconds``; measure enqueue time vs send and schedule time.

        Starts a processor unless one is given; stops it at the end.
        """
        topics = Topics(settings.topic_prefix)
        processor = processor or self.start(settings, f"bench-{name}")
        stop_reading = threading.Event()
        arrived: dict[str, int] = {}

        def read_exec() -> None:
            reader = kafka_clients.consumer(self.bootstrap, kafka_config=settings.kafka_config)
            reader.assign(
                [TopicPartition(topics.exec(LAMBDA, 0), p, 0) for p in range(self.partitions)]
            )
            while not stop_reading.is_set():
                for message in kafka_clients.consume(reader, 1000, 0.05):
                    value = message.value()
                    if message.error() is None and value is not None:
                        at = now_ms()
                        arrived.setdefault(decode_work(value).task_id, at)
            reader.close()

        exec_reader = threading.Thread(target=read_exec, daemon=True)
        exec_reader.start()
        time.sleep(1.0)  # let the exec reader get its first fetch in
        producer = kafka_clients.producer(self.bootstrap, settings.kafka_config)
        sent: dict[str, tuple[int, int]] = {}
        total = int(rate * seconds)
        say(f"  sending {total} ScheduleTask at {rate:g}/s for {seconds:g}s")
        begin = time.monotonic()
        for i in range(total):
            target = begin + i / rate
            pause = target - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            task_id = f"{name}{i:07d}"
            sent_at = now_ms()
            run_at = sent_at + delay()
            command = ScheduleTask(
                uuid.uuid4().hex, task_id, LAMBDA, "default", 0, b"x" * 64, run_at
            )
            producer.produce(
                topics.commands, encode_command(command, None, sent_at), task_id.encode()
            )
            producer.poll(0)
            sent[task_id] = (sent_at, run_at)
            if (i + 1) % int(rate * 2) == 0:
                say(f"  ... sent {i + 1}/{total}, enqueued {processor.stats.work}")
        assert producer.flush(30) == 0
        self.wait(
            processor,
            lambda: len(arrived) >= total,
            "enqueue",
            120,
        )
        stop_reading.set()
        exec_reader.join(5)
        processor.stop()

        enqueued_at: dict[str, int] = {}
        reader = kafka_clients.consumer(self.bootstrap, kafka_config=settings.kafka_config)
        reader.assign([TopicPartition(topics.task_events, p, 0) for p in range(self.partitions)])
        idle = 0
        wanted = set(sent)
        while len(wanted & enqueued_at.keys()) < total and idle < 20:
            batch = kafka_clients.consume(reader, 10_000, 0.2)
            idle = 0 if batch else idle + 1
            for message in batch:
                value = message.value()
                if message.error() is None and value is not None:
                    event, task = decode_event(value)
                    if isinstance(event, TaskEnqueued):
                        enqueued_at.setdefault(task.task_id, event.at)
        reader.close()
        return sent, enqueued_at, arrived

    def latency(self, rate: float, seconds: float) -> None:
        say(f"latency: immediate tasks at {rate:g}/s for {seconds:g}s, poll_interval_ms=50")
        settings = self.settings("latency", max_enqueued=1_000_000)
        self.prepare(settings)
        sent, enqueued_at, arrived = self._paced(settings, rate, seconds, lambda: 0, "lat")
        to_event = [enqueued_at[t] - s for t, (s, _) in sent.items() if t in enqueued_at]
        to_exec = [arrived[t] - s for t, (s, _) in sent.items() if t in arrived]
        first = min(s for s, _ in sent.values())
        slowest = sorted(
            ((enqueued_at[t] - s, s) for t, (s, _) in sent.items() if t in enqueued_at),
            reverse=True,
        )[: max(1, len(sent) // 100)]
        self.results["latency"] = {
            "slowest_1pct_sent_at_s": sorted({round((s - first) / 1000, 1) for _, s in slowest}),
            "rate_per_s": rate,
            "seconds": seconds,
            "sent_to_enqueued_event_ms": summary(to_event),
            "sent_to_exec_topic_ms": summary(to_exec),
            # The first fetches after the processor's idle start pay a warm-up;
            # this is the steady state.
            "after_first_second": {
                "sent_to_enqueued_event_ms": summary(
                    [
                        enqueued_at[t] - s
                        for t, (s, _) in sent.items()
                        if t in enqueued_at and s - first >= 1000
                    ]
                ),
                "sent_to_exec_topic_ms": summary(
                    [
                        arrived[t] - s
                        for t, (s, _) in sent.items()
                        if t in arrived and s - first >= 1000
                    ]
                ),
            },
        }
        say(f"  sent -> TaskEnqueued.at: {fmt(summary(to_event))}")
        say(f"  sent -> exec topic read: {fmt(summary(to_exec))}")
        steady = self.results["latency"]["after_first_second"]
        say(
            f"  after the first second: sent -> TaskEnqueued.at "
            f"{fmt(steady['sent_to_enqueued_event_ms'])}; "
            f"sent -> exec topic {fmt(steady['sent_to_exec_topic_ms'])}"
        )
        say(
            f"  the slowest 1% were sent at (s into the run): "
            f"{self.results['latency']['slowest_1pct_sent_at_s']}"
        )

    def index(self, sizes: Sequence[int], rate: float, seconds: float) -> None:
        """Immediate tasks' latency and the process's memory with ``size`` tasks waiting."""
        rows = []
        for size in sizes:
            say(f"index: {size} tasks waiting a day ahead, then immediate tasks at {rate:g}/s")
            settings = self.settings(f"index{size}", max_enqueued=1_000_000)
            self.prepare(settings)
            self.preload(settings, size, ahead_ms=DAY_MS)
            processor = self.start(settings, f"bench-index-{size}")
            began = time.monotonic()
            self.wait(
                processor,
                functools.partial(lambda st, n: st.commands >= n, processor.stats, size),
                "the preload",
                3600,
            )
            loaded = time.monotonic() - began
            rss_loaded = rss_mb()
            say(f"  {size} waiting tasks recorded in {loaded:.1f}s; process RSS {rss_loaded} MB")
            sent, enqueued_at, arrived = self._paced(
                settings, rate, seconds, lambda: 0, f"i{size}-", processor=processor
            )
            first = min(s for s, _ in sent.values())
            steady = [t for t, (s, _) in sent.items() if s - first >= 1000]
            row = {
                "waiting": size,
                "load_seconds": round(loaded, 1),
                "rss_mb_loaded": rss_loaded,
                "rss_mb_after": rss_mb(),
                "store_mb": round(_du(Path(settings.data_dir)) / 2**20, 1),
                "sent_to_enqueued_event_ms": summary(
                    [enqueued_at[t] - sent[t][0] for t in steady if t in enqueued_at]
                ),
                "sent_to_exec_topic_ms": summary(
                    [arrived[t] - sent[t][0] for t in steady if t in arrived]
                ),
            }
            rows.append(row)
            say(
                f"  sent -> TaskEnqueued.at {fmt(row['sent_to_enqueued_event_ms'])}; "
                f"sent -> exec topic {fmt(row['sent_to_exec_topic_ms'])}; "
                f"store {row['store_mb']} MB on disk"
            )
            shutil.rmtree(settings.data_dir, ignore_errors=True)
        self.results["index"] = rows

    def lateness(self, rate: float, seconds: float) -> None:
        say(f"lateness: tasks 1-3 s ahead at {rate:g}/s for {seconds:g}s, poll_interval_ms=50")
        settings = self.settings("lateness", max_enqueued=1_000_000)
        self.prepare(settings)
        rng = random.Random(7)
        sent, enqueued_at, arrived = self._paced(
            settings, rate, seconds, lambda: rng.randint(1000, 3000), "late"
        )
        late_event = [enqueued_at[t] - r for t, (_, r) in sent.items() if t in enqueued_at]
        late_exec = [arrived[t] - r for t, (_, r) in sent.items() if t in arrived]
        self.results["lateness"] = {
            "rate_per_s": rate,
            "seconds": seconds,
            "enqueued_event_minus_scheduled_ms": summary(late_event),
            "exec_topic_minus_scheduled_ms": summary(late_exec),
            "early": sum(1 for v in late_event if v < 0),
        }
        say(f"  TaskEnqueued.at - scheduled_at: {fmt(summary(late_event))}")
        say(f"  exec topic read - scheduled_at: {fmt(summary(late_exec))}")


DAY_MS = 86_400_000


def rss_mb() -> float:
    """This process's resident memory (the processor runs in it), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def fmt(s: dict[str, float]) -> str:
    return (
        f"n={s['n']} p50={s['p50']:.0f} p95={s['p95']:.0f} p99={s['p99']:.0f} max={s['max']:.0f} ms"
    )


def print_table(results: dict[str, Any]) -> None:
    rows: list[tuple[str, str]] = []
    if t := results.get("throughput"):
        rows += [
            (
                "throughput: tasks / partitions",
                f"{t['tasks']} / {t['partitions']} (max_enqueued={t['max_enqueued']})",
            ),
            ("throughput: commands/s", f"{t['commands_per_s']}  ({t['seconds']} s)"),
            (
                "throughput: events/s",
                f"{t['events_per_s']}  ({t['events']} events, {t['batches']} batches)",
            ),
        ]
    if r := results.get("rebuild"):
        rows += [
            (
                "rebuild: events replayed/s",
                f"{r['events_per_s']}  ({r['events']} events, {r['seconds']} s, "
                f"counts equal: {r['counts_equal']})",
            ),
        ]
    if f := results.get("flow_control"):
        rows += [
            (
                "flow control (default cap)",
                f"enqueued {f['enqueued_total']}, waiting {f['waiting_total']}, "
                f"max_enqueued {f['max_enqueued']} ({f['per_partition_cap']}/partition) "
                f"holds: {f['cap_holds_per_partition']}",
            )
        ]
    if lat := results.get("latency"):
        rows += [
            (
                f"latency @{lat['rate_per_s']:g}/s: sent->TaskEnqueued.at",
                fmt(lat["sent_to_enqueued_event_ms"]),
            ),
            (
                f"latency @{lat['rate_per_s']:g}/s: sent->exec topic",
                fmt(lat["sent_to_exec_topic_ms"]),
            ),
            (
                "  same, after the first second",
                fmt(lat["after_first_second"]["sent_to_enqueued_event_ms"]),
            ),
            (
                "  same (exec topic), after the first second",
                fmt(lat["after_first_second"]["sent_to_exec_topic_ms"]),
            ),
        ]
    if late := results.get("lateness"):
        rows += [
            (
                "delayed lateness: TaskEnqueued.at-sched",
                fmt(late["enqueued_event_minus_scheduled_ms"]),
            ),
            ("delayed lateness: exec topic-sched", fmt(late["exec_topic_minus_scheduled_ms"])),
        ]
    for row in results.get("index", []):
        rows.append(
            (
                f"{row['waiting']} waiting: sent->exec topic",
                f"{fmt(row['sent_to_exec_topic_ms'])}; RSS {row['rss_mb_after']} MB",
            )
        )
    if not rows:
        return
    width = max(len(k) for k, _ in rows)
    print("\n" + "=" * (width + 60))
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    print("=" * (width + 60))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tasks", type=int, default=20_000, help="tasks in the throughput run (default 20000)"
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=8,
        help="partitions of the commands/events topics (default 8)",
    )
    parser.add_argument(
        "--flow-tasks",
        type=int,
        default=None,
        help="tasks in the flow-control run (default: 2 x partitions x 1000)",
    )
    parser.add_argument(
        "--rate", type=float, default=200.0, help="commands/s in the latency runs (default 200)"
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="length of the latency runs (default 10)"
    )
    parser.add_argument(
        "--phases", default="throughput,flow,latency,lateness", help="comma-separated subset to run"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="cProfile the processor thread of each phase into this file (the last phase wins)",
    )
    parser.add_argument(
        "--index-sizes",
        default="10000,100000,1000000",
        help="waiting tasks in the index phase (default 10000,100000,1000000)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--session-timeout-ms", type=int, default=6000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    phases = set(args.phases.split(","))
    root = Path(tempfile.mkdtemp(prefix="atf-bench-"))
    try:
        with EmbeddedBroker(root / "broker") as broker:
            say(f"embedded broker at {broker.bootstrap}; data under {root}")
            bench = Bench(
                broker.bootstrap, root, args.partitions, args.session_timeout_ms, args.profile
            )
            if "throughput" in phases:
                bench.throughput_and_rebuild(args.tasks)
            if "flow" in phases:
                bench.flow_control(args.flow_tasks or 2 * args.partitions * 1000)
            if "latency" in phases:
                bench.latency(args.rate, args.seconds)
            if "lateness" in phases:
                bench.lateness(args.rate / 2, args.seconds)
            if "index" in phases:
                sizes = [int(x) for x in args.index_sizes.split(",") if x.strip()]
                bench.index(sizes, args.rate / 2, args.seconds / 2)
        bench.results["machine"] = {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": __import__("os").cpu_count(),
            "broker": "embedded Tansu (in-memory)",
        }
        print_table(bench.results)
        if args.json:
            args.json.write_text(json.dumps(bench.results, indent=2))
            say(f"results written to {args.json}")
        if args.profile:
            pstats.Stats(str(args.profile)).sort_stats("cumulative").print_stats(25)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
