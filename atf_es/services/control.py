"""The control topic: lambda definitions every service reads.

The topic is compacted and keyed ``lambda/<name>``; the latest record per key
is the lambda's policy, a tombstone removes it. A record that does not decode
as a valid policy of the lambda its key names is counted in ``bad_records``,
logged and ignored: the definition read before it stays in force. Defining a
lambda also creates its execution topics, one per priority, so the processor
never writes to a topic that is not there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from confluent_kafka import KafkaError, TopicPartition

from atf_es import kafka_clients
from atf_es.broker import ensure_topics
from atf_es.clock import now_ms
from atf_es.config import Settings
from atf_es.events import LambdaPolicy
from atf_es.events.codec import DecodeError, decode_control, encode_lambda
from atf_es.events.records import control_key
from atf_es.topics import Topics, exec_topic_spec

log = logging.getLogger(__name__)


def define_lambda(settings: Settings, bootstrap: str, policy: LambdaPolicy) -> None:
    """Publish ``policy`` and make sure its execution topics exist."""
    ensure_topics(
        bootstrap,
        [exec_topic_spec(settings, policy.name, p) for p in range(policy.priorities)],
        settings.kafka_config,
        replication_factor=settings.replication_factor,
    )
    producer = kafka_clients.producer(bootstrap, settings.kafka_config)
    producer.produce(
        Topics(settings.topic_prefix).control,
        key=control_key(policy.name).encode(),
        value=encode_lambda(policy, now_ms()),
    )
    if producer.flush(30) != 0:
        raise RuntimeError(f"could not publish lambda {policy.name!r} to the control topic")


class ControlView:
    """An up-to-date, in-memory copy of the control topic."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self._topic = Topics(settings.topic_prefix).control
        self._consumer = kafka_clients.consumer(
            bootstrap,
            kafka_config=settings.kafka_config,
            overrides={"enable.partition.eof": True},
        )
        self._consumer.assign([TopicPartition(self._topic, 0, 0)])
        self._policies: dict[str, LambdaPolicy] = {}
        self.bad_records = 0
        self._closed = False

    @property
    def policies(self) -> Mapping[str, LambdaPolicy]:
        return self._policies

    def get(self, lambda_name: str) -> LambdaPolicy | None:
        return self._policies.get(lambda_name)

    def poll(self, timeout: float = 0.0) -> int:
        """Apply what has arrived; returns how many records were read."""
        read = 0
        for message in kafka_clients.consume(self._consumer, 1000, timeout):
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("control topic: %s", error)
                continue
            read += 1
            self._apply(message.key(), message.value())
        return read

    def catch_up(self, timeout: float = 30.0) -> None:
        """Read to the end of the topic as it is now."""
        partition = TopicPartition(self._topic, 0)
        low, high = self._consumer.get_watermark_offsets(partition, timeout=timeout)
        deadline = time.monotonic() + timeout
        while high > low:
            self.poll(0.05)
            if self._consumer.position([partition])[0].offset >= high:
                # The embedded broker reports the end as the last batch's base
                # offset + 1; the rest of that batch has arrived: apply it too.
                self.poll(0)
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {self._topic} to its end in {timeout:g}s")

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        name = (key or b"").decode("utf-8", "replace")
        if not name.startswith("lambda/"):
            return  # other control entries (gates, schedules) belong to other readers
        if value is None:
            self._policies.pop(name.removeprefix("lambda/"), None)
            return
        try:
            policy = decode_control(value)
        except (DecodeError, ValueError) as exc:
            self.bad_records += 1
            log.warning("control topic: ignoring unreadable record %.200r: %s", name, exc)
            return
        if control_key(policy.name) != name:
            # Compaction keeps one record per key: a definition under another
            # lambda's key would outlive or replace the wrong one.
            self.bad_records += 1
            log.warning(
                "control topic: ignoring record %.200r: it defines lambda %r", name, policy.name
            )
            return
        self._policies[policy.name] = policy

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._consumer.close()
