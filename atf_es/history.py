"""A task's history, read from the task-events topic.

Every transition of a task is one record of ``<prefix>.task-events``, keyed by
its id, on the partition the producer's partitioner picks for that key
(``murmur2_random``, Java's default; :func:`partition_of` computes it). So a
task's history is the records with its key on that one partition, in offset
order, for as long as compaction keeps them (the audit window,
``min.compaction.lag.ms``); after it, only the latest record per task is left.

Reading scans the partition from its start to its stable end: it costs one
pass over the partition (measured in docs/audit.md), which is what a
debugging tool can afford, not what a hot path should do.

Brokers that do not filter aborted transactions (the embedded one) show an
aborted batch's events next to the retried batch's: for each ``seq`` the
later record wins, as when the processor restores its projection.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import TopicPartition

from atf_es import kafka_clients
from atf_es.config import Settings
from atf_es.events import Event, Task
from atf_es.events.codec import DecodeError, decode_event
from atf_es.events.placement import murmur2, partition_of
from atf_es.topics import Topics

READ_CHUNK = 5_000
DRAIN_PASSES = 100
"""At most this many reads of what already arrived, once the end is reached."""


@dataclass(frozen=True, slots=True)
class Recorded:
    """One transition as the log holds it."""

    event: Event
    task: Task
    """The snapshot after the event."""
    offset: int


def read_task_events(
    settings: Settings,
    bootstrap: str,
    task_id: str,
    *,
    until: int | None = None,
    timeout: float = 30.0,
) -> list[Recorded]:
    """Every recorded transition of ``task_id`` (at or before ``until``, if given), by seq.

    Raises TimeoutError if the partition cannot be read to its end in
    ``timeout`` seconds. Records that do not decode are skipped (the processor
    set nothing aside for them, they are not this code base's).
    """
    topic = Topics(settings.topic_prefix).task_events
    source = TopicPartition(topic, partition_of(task_id, settings.partitions))
    key = task_id.encode()
    reader = kafka_clients.consumer(bootstrap, kafka_config=settings.kafka_config)
    ends = kafka_clients.end_reader(bootstrap, kafka_config=settings.kafka_config)
    try:
        low, _ = reader.get_watermark_offsets(source, timeout=timeout)
        # Not the reader's own end: see kafka_clients.log_ends.
        high = kafka_clients.log_ends(ends, topic, [source.partition], timeout)[source.partition]
        if high <= low:
            return []
        reader.assign([TopicPartition(topic, source.partition, low)])
        by_seq: dict[int, Recorded] = {}
        ended = False
        """A tombstone was read: the next event of the key starts a new task."""
        deadline = time.monotonic() + timeout
        # Done when the position reaches the end: a transactional log ends in a
        # commit marker, which no consumer receives. Then what arrived with the
        # last fetch is taken too, never waiting: the embedded broker reports
        # the end as the last batch's base offset + 1.
        drains = 0
        while (behind := reader.position([source])[0].offset < high) or drains < DRAIN_PASSES:
            if behind and time.monotonic() > deadline:
                raise TimeoutError(
                    f"could not read {topic}[{source.partition}] to its end in {timeout:g}s"
                )
            messages = kafka_clients.consume(reader, READ_CHUNK, 0.1 if behind else 0.0)
            if not behind:
                drains = drains + 1 if messages else DRAIN_PASSES
            for message in messages:
                value = message.value()
                if message.error() is not None or message.key() != key:
                    continue
                if value is None:
                    # The task's retention ran out (docs/retention.md): its
                    # history stays readable, and an id scheduled again after
                    # the tombstone is a new task, starting at seq 1.
                    ended = True
                    continue
                try:
                    event, task = decode_event(value)
                except DecodeError:
                    continue
                offset = message.offset()
                if event.task_id == task_id and (until is None or event.at <= until):
                    if ended:
                        by_seq.clear()
                        ended = False
                    by_seq[event.seq] = Recorded(event, task, -1 if offset is None else offset)
        return [by_seq[seq] for seq in sorted(by_seq)]
    finally:
        reader.close()
        ends.close()


def state_as_of(settings: Settings, bootstrap: str, task_id: str, at: int) -> Task | None:
    """The task as it was at ``at`` (epoch ms), or None if it did not exist yet."""
    recorded = read_task_events(settings, bootstrap, task_id, until=at)
    return recorded[-1].task if recorded else None


__all__ = ["Recorded", "murmur2", "partition_of", "read_task_events", "state_as_of"]
