"""The control topic: lambda definitions, gates and periodic schedules.

The topic is compacted. A key ``lambda/<name>`` holds the lambda's policy; a
key ``gate/<lambda>`` or ``gate/<lambda>/<collection>`` holds a gate
(:mod:`atf_es.events.gates`); a key ``periodic/<name>`` holds a periodic
schedule (:mod:`atf_es.events.periodic`). The latest record per key is in force, a
tombstone removes it. A record that does not decode as what its key names
is counted in ``bad_records``, logged and ignored: what was read before it
stays in force. Defining a lambda also creates its execution topics, one per
priority, so the processor never writes to a topic that is not there.
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
from atf_es.events import Gate, LambdaPolicy
from atf_es.events.codec import (
    DecodeError,
    decode_control,
    encode_gate,
    encode_lambda,
    encode_periodic,
)
from atf_es.events.gates import GATE_PREFIX, GateKey, covering
from atf_es.events.periodic import PERIODIC_PREFIX, PeriodicSchedule
from atf_es.events.records import control_key
from atf_es.topics import Topics, exec_topic_spec

log = logging.getLogger(__name__)


def define_lambda(settings: Settings, bootstrap: str, *policies: LambdaPolicy) -> None:
    """Publish ``policies`` and make sure their execution topics exist.

    One topic-creation round and one producer for them all: defining an app's
    lambdas one call each costs a producer's start and a flush per lambda.
    """
    if not policies:
        return
    ensure_topics(
        bootstrap,
        [
            exec_topic_spec(settings, policy.name, p)
            for policy in policies
            for p in range(policy.priorities)
        ],
        settings.kafka_config,
        replication_factor=settings.replication_factor,
    )
    producer = kafka_clients.producer(bootstrap, settings.kafka_config)
    at = now_ms()
    for policy in policies:
        producer.produce(
            Topics(settings.topic_prefix).control,
            key=control_key(policy.name).encode(),
            value=encode_lambda(policy, at),
        )
    if producer.flush(30) != 0:
        names = ", ".join(repr(policy.name) for policy in policies)
        raise RuntimeError(f"could not publish lambda {names} to the control topic")


def publish_gate(settings: Settings, bootstrap: str, gate: Gate) -> None:
    """Write ``gate`` to the control topic; raises RuntimeError if it is not stored."""
    _publish(settings, bootstrap, gate.key, encode_gate(gate), f"gate {gate.name!r}")


def publish_periodic(
    settings: Settings, bootstrap: str, name: str, schedule: PeriodicSchedule | None
) -> None:
    """Write schedule ``name`` (None: its tombstone, removing it) to the control
    topic; raises RuntimeError if it is not stored."""
    value = None if schedule is None else encode_periodic(schedule)
    _publish(settings, bootstrap, PERIODIC_PREFIX + name, value, f"periodic schedule {name!r}")


def _publish(settings: Settings, bootstrap: str, key: str, value: bytes | None, what: str) -> None:
    producer = kafka_clients.producer(bootstrap, settings.kafka_config)
    failed: list[str] = []

    def delivered(error: KafkaError | None, _message: object) -> None:
        if error is not None:
            failed.append(str(error))

    producer.produce(
        Topics(settings.topic_prefix).control,
        key=key.encode(),
        value=value,
        on_delivery=delivered,
    )
    if producer.flush(30) != 0 or failed:
        raise RuntimeError(
            f"could not write {what} to the control topic: "
            + ("; ".join(failed) or "not delivered within 30 s")
        )


class ControlView:
    """An up-to-date, in-memory copy of the control topic."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self._topic = Topics(settings.topic_prefix).control
        self._consumer = kafka_clients.consumer(
            bootstrap,
            kafka_config=settings.kafka_config,
            overrides={"enable.partition.eof": True},
        )
        self._consumer.assign([TopicPartition(self._topic, 0, 0)])
        self._policies: dict[str, LambdaPolicy] = {}
        self._gates: dict[GateKey, Gate] = {}
        self._schedules: dict[str, PeriodicSchedule] = {}
        self.bad_records = 0
        self._closed = False

    @property
    def policies(self) -> Mapping[str, LambdaPolicy]:
        return self._policies

    def get(self, lambda_name: str) -> LambdaPolicy | None:
        return self._policies.get(lambda_name)

    @property
    def gates(self) -> Mapping[GateKey, Gate]:
        """Every gate read, open ones included, by (lambda, collection or None)."""
        return self._gates

    def gate(self, lambda_name: str, collection: str) -> Gate | None:
        """The closed gate that holds tasks of ``lambda_name``/``collection``, if any."""
        if not self._gates:
            return None
        return covering(self._gates, lambda_name, collection)

    @property
    def schedules(self) -> Mapping[str, PeriodicSchedule]:
        """Every periodic schedule, paused ones included, by name."""
        return self._schedules

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
        is_gate = name.startswith(GATE_PREFIX)
        is_periodic = name.startswith(PERIODIC_PREFIX)
        if not (is_gate or is_periodic or name.startswith("lambda/")):
            return  # an entry of a later version, or not ours
        if value is None:
            if is_periodic:
                self._schedules.pop(name.removeprefix(PERIODIC_PREFIX), None)
            elif is_gate:
                lambda_name, _, collection = name.removeprefix(GATE_PREFIX).partition("/")
                self._gates.pop((lambda_name, collection or None), None)
            else:
                self._policies.pop(name.removeprefix("lambda/"), None)
            return
        try:
            entry = decode_control(value)
        except (DecodeError, ValueError) as exc:
            self.bad_records += 1
            log.warning("control topic: ignoring unreadable record %.200r: %s", name, exc)
            return
        if isinstance(entry, PeriodicSchedule):
            if entry.key != name:
                self.bad_records += 1
                log.warning(
                    "control topic: ignoring record %.200r: it is schedule %r", name, entry.name
                )
                return
            self._schedules[entry.name] = entry
            return
        if isinstance(entry, Gate):
            if entry.key != name:
                self.bad_records += 1
                log.warning("control topic: ignoring record %.200r: it is gate %r", name, entry.key)
                return
            self._gates[(entry.lambda_name, entry.collection)] = entry
            return
        policy = entry
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
