"""Talking to a real broker in tests: send commands, read topics, fold events.

Everything here goes through real Kafka clients against the test's broker;
nothing is mocked.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, TopicPartition

from atf_es import kafka_clients
from atf_es.broker import admin_client, ensure_topics
from atf_es.clock import now_ms
from atf_es.config import Settings
from atf_es.events import Command, Event, LambdaPolicy, ScheduleTask, Task, WorkItem, replay
from atf_es.events.codec import (
    decode_event,
    decode_poison,
    decode_reply,
    decode_work,
    encode_command,
)
from atf_es.events.replies import PoisonRecord, Reply
from atf_es.services.control import define_lambda
from atf_es.topics import Topics, core_topic_specs


def prepare(settings: Settings, *policies: LambdaPolicy) -> Topics:
    """Create the core topics and define ``policies``."""
    assert settings.kafka_bootstrap is not None
    ensure_topics(settings.kafka_bootstrap, core_topic_specs(settings), settings.kafka_config)
    define_lambda(settings, settings.kafka_bootstrap, *policies)
    return Topics(settings.topic_prefix)


class CommandSender:
    """Produces commands the way a gateway would (keyed by task_id)."""

    def __init__(self, settings: Settings) -> None:
        assert settings.kafka_bootstrap is not None
        self.topics = Topics(settings.topic_prefix)
        self._producer = kafka_clients.producer(settings.kafka_bootstrap, settings.kafka_config)

    def send(self, command: Command, reply_to: str | None = None) -> None:
        self._producer.produce(
            self.topics.commands,
            encode_command(command, reply_to, now_ms()),
            command.task_id.encode(),
        )
        self._producer.poll(0)

    def send_raw(self, value: bytes | None, key: bytes | None = None, partition: int = 0) -> None:
        self._producer.produce(self.topics.commands, value, key, partition)

    def flush(self) -> None:
        assert self._producer.flush(30) == 0, "commands were not delivered"

    def schedule(
        self,
        lambda_name: str,
        *,
        task_id: str | None = None,
        delay_ms: int = 0,
        priority: int = 0,
        collection: str = "default",
        payload: bytes = b"",
        reply_to: str | None = None,
    ) -> str:
        task_id = task_id or uuid.uuid4().hex
        command = ScheduleTask(
            uuid.uuid4().hex,
            task_id,
            lambda_name,
            collection,
            priority,
            payload,
            now_ms() + delay_ms,
        )
        self.send(command, reply_to)
        return task_id


@dataclass
class TopicReader:
    """Reads whole topics from the beginning, incrementally."""

    settings: Settings
    topic: str
    _consumer: object = field(init=False)
    records: list[tuple[int, int, bytes | None, bytes | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        assert self.settings.kafka_bootstrap is not None
        consumer = kafka_clients.consumer(
            self.settings.kafka_bootstrap, kafka_config=self.settings.kafka_config
        )
        metadata = admin_client(self.settings.kafka_bootstrap).list_topics(self.topic, timeout=10)
        partitions = list(metadata.topics[self.topic].partitions)
        consumer.assign([TopicPartition(self.topic, p, 0) for p in partitions])
        self._consumer = consumer

    def poll(self, timeout: float = 0.2) -> int:
        consumer = self._consumer
        got = 0
        for message in kafka_clients.consume(consumer, 10_000, timeout):  # type: ignore[arg-type]
            error = message.error()
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, error
                continue
            self.records.append(
                (message.partition(), message.offset(), message.key(), message.value())
            )
            got += 1
        return got

    def wait_for_count(self, count: int, timeout: float = 20.0) -> int:
        """Read until at least ``count`` records arrived; returns how many there are."""
        deadline = time.monotonic() + timeout
        while len(self.records) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:g}s: {len(self.records)} of {count} records "
                    f"on {self.topic}"
                )
            self.poll(0.1)
        return len(self.records)

    def close(self) -> None:
        self._consumer.close()  # type: ignore[attr-defined]


class EventLog(TopicReader):
    """The task-events topic, decoded and grouped per task."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, Topics(settings.topic_prefix).task_events)

    def history(self) -> dict[str, list[tuple[Event, Task]]]:
        per_task: dict[str, list[tuple[Event, Task]]] = defaultdict(list)
        for _, _, _, value in self.records:
            if value is None:
                continue  # a tombstone: the task's retention ran out
            event, task = decode_event(value)
            per_task[event.task_id].append((event, task))
        return per_task

    def latest(self) -> dict[str, Task]:
        """The projection a compacted log rebuilds: the highest seq per task."""
        return {
            task_id: max(entries, key=lambda e: e[1].seq)[1]
            for task_id, entries in self.history().items()
        }

    def folded(self) -> dict[str, Task | None]:
        """Each task's events folded with the pure lifecycle, in log order."""
        return {
            task_id: replay(dedupe_by_seq(e for e, _ in entries))
            for task_id, entries in self.history().items()
        }

    def wait_until(self, predicate, timeout: float = 20.0, message: str = "events"):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while True:
            self.poll(0.1)
            result = predicate(self)
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {message}")


def dedupe_by_seq(events: Iterable[Event]) -> list[Event]:
    """Events in seq order with exact repeats dropped; a conflicting repeat fails."""
    by_seq: dict[int, Event] = {}
    for event in events:
        seen = by_seq.get(event.seq)
        assert seen is None or seen == event, f"two different events with seq {event.seq}"
        by_seq[event.seq] = event
    return [by_seq[s] for s in sorted(by_seq)]


def decode_work_records(reader: TopicReader) -> list[WorkItem]:
    return [decode_work(v) for _, _, _, v in reader.records if v is not None]


def decode_replies(reader: TopicReader) -> list[Reply]:
    return [decode_reply(v) for _, _, _, v in reader.records if v is not None]


def decode_poison_records(reader: TopicReader) -> list[PoisonRecord]:
    return [decode_poison(v) for _, _, _, v in reader.records if v is not None]
