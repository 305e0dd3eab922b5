"""How long does a task's history take to read as its partition grows?

``History`` and ``GetTask --as-of`` read the task's task-events partition from
its start (atf_es/history.py). This writes ``--events`` events of ``--tasks``
tasks to a one-partition task-events topic on a fresh embedded broker, then
times ``read_task_events`` for one task several times.

    .venv/bin/python -m bench.history_read [--events 100000] [--tasks 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from atf_es import kafka_clients
from atf_es.broker import EmbeddedBroker, ensure_topics
from atf_es.config import Settings
from atf_es.events import Cause, HeartbeatRecorded, TaskScheduled, evolve
from atf_es.events.codec import encode_event
from atf_es.history import read_task_events
from atf_es.topics import Topics, core_topic_specs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        broker = EmbeddedBroker(Path(workdir) / "broker")
        broker.start()
        try:
            settings = replace(
                Settings(),
                kafka_bootstrap=broker.bootstrap,
                topic_prefix="bench",
                partitions=1,
            )
            ensure_topics(broker.bootstrap, core_topic_specs(settings))
            write(settings, broker.bootstrap, args.events, args.tasks)
            timings = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                found = read_task_events(settings, broker.bootstrap, "task-0", timeout=300)
                timings.append(time.perf_counter() - started)
            print(
                f"{args.events:,} events on the partition, {len(found)} of them task-0's: "
                f"read in median {statistics.median(timings):.2f} s "
                f"(min {min(timings):.2f}, max {max(timings):.2f}; {args.repeat} reads), "
                f"{args.events / statistics.median(timings):,.0f} events/s"
            )
        finally:
            broker.stop()
    return 0


def write(settings: Settings, bootstrap: str, events: int, tasks: int) -> None:
    """``events`` records round-robin over ``tasks`` tasks: a schedule, then heartbeats."""
    producer = kafka_clients.producer(bootstrap, settings.kafka_config)
    topic = Topics(settings.topic_prefix).task_events
    snapshots = {}
    started = time.perf_counter()
    for n in range(events):
        task_id = f"task-{n % tasks}"
        task = snapshots.get(task_id)
        if task is None:
            event: TaskScheduled | HeartbeatRecorded = TaskScheduled(
                task_id=task_id,
                seq=1,
                at=n,
                cause=Cause.command("ScheduleTask", f"c{n}"),
                lambda_name="bench",
                collection="default",
                priority=0,
                payload=b"x" * 100,
                scheduled_at=n,
                idempotency_key=None,
            )
        else:
            event = HeartbeatRecorded(
                task_id, task.seq + 1, n, Cause.command("Heartbeat", f"c{n}"), 1, n + 30_000
            )
        task = evolve(task, event)
        snapshots[task_id] = task
        producer.produce(topic, encode_event(event, task), task_id.encode())
        if n % 10_000 == 0:
            producer.poll(0)
            print(f"  wrote {n:,} of {events:,} events", flush=True)
    assert producer.flush(60) == 0, "events were not delivered"
    print(f"  wrote {events:,} events in {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
