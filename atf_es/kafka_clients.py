"""Factories for the Kafka clients every service uses, configured alike.

Producers to keyed topics use librdkafka's ``murmur2_random`` partitioner,
which is Java's default: a client in any language (or Kafka Streams) places a
task_id on the same partition as we do, which keeps ``commands`` and
``task-events`` co-partitioned no matter who writes the commands.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, KafkaException, Message, Producer, TopicPartition

PARTITIONER = "murmur2_random"
FETCH_WAIT_MS = 20


# librdkafka's own log lines go through Python logging, not straight to stderr.
kafka_log = logging.getLogger("atf_es.kafka")


def _base(bootstrap: str, kafka_config: Mapping[str, str]) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, **kafka_config, "logger": kafka_log}


Overrides = Mapping[str, Any]
_NONE: Overrides = {}


def producer(
    bootstrap: str, kafka_config: Mapping[str, str] = _NONE, *, overrides: Overrides = _NONE
) -> Producer:
    config = {
        **_base(bootstrap, kafka_config),
        "partitioner": PARTITIONER,
        "enable.idempotence": True,
        "linger.ms": 1,
        **overrides,
    }
    return Producer(config)


def transactional_producer(
    bootstrap: str,
    transactional_id: str,
    kafka_config: Mapping[str, str] = _NONE,
    *,
    overrides: Overrides = _NONE,
) -> Producer:
    return producer(
        bootstrap,
        kafka_config,
        overrides={
            "transactional.id": transactional_id,
            "transaction.timeout.ms": 60_000,
            **overrides,
        },
    )


def consume(consumer: Consumer, max_messages: int, timeout: float) -> list[Message]:
    """Up to ``max_messages`` records: waits at most ``timeout`` for the first, not for more.

    librdkafka's ``consume(n, timeout)`` returns only when ``n`` records have
    arrived or the whole timeout has passed: one record waited 950 ms of a
    1 s timeout, where ``poll`` returned it in 4 ms. Every hop that read that
    way cost its full poll timeout (a reply waited up to 100 ms).
    """
    first = consumer.poll(timeout)
    if first is None:
        return []
    if max_messages <= 1:
        return [first]
    return [first, *consumer.consume(num_messages=max_messages - 1, timeout=0)]


def consumer(
    bootstrap: str,
    group_id: str | None = None,
    kafka_config: Mapping[str, str] = _NONE,
    *,
    overrides: Overrides = _NONE,
) -> Consumer:
    """A consumer that never auto-commits and reads only committed transactions.

    Without ``group_id`` it is a plain reader for ``assign()``: it gets a
    throwaway group id that it never joins or commits to.
    """
    config = {
        **_base(bootstrap, kafka_config),
        "group.id": group_id or f"atf-reader-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        # librdkafka's default lets the broker hold an empty fetch for 500 ms,
        # which would be the floor of every hop's latency.
        "fetch.wait.max.ms": FETCH_WAIT_MS,
        **overrides,
    }
    return Consumer(config)


def end_reader(bootstrap: str, kafka_config: Mapping[str, str] = _NONE) -> Consumer:
    """A consumer to ask for log ends with (:func:`log_ends`); it never reads."""
    return consumer(
        bootstrap, kafka_config=kafka_config, overrides={"isolation.level": "read_uncommitted"}
    )


def log_ends(reader: Consumer, topic: str, partitions: list[int], timeout: float) -> dict[int, int]:
    """The end offset of each partition, open transactions included.

    A ``read_committed`` consumer's own idea of the end is the last stable
    offset, and the embedded broker (Tansu) answers 0 for it while a
    transaction is open on the partition: a reader that stopped there saw an
    empty log about one time in ten under load. Asked with ``reader`` (from
    :func:`end_reader`), the end includes the open transaction's records; a
    ``read_committed`` consumer gets there once the transaction ends, so
    everything committed before the call is read. On Kafka the same holds.
    """
    found = reader.offsets_for_times(
        [TopicPartition(topic, p, OFFSET_END) for p in partitions], timeout=timeout
    )
    ends = {}
    for tp in found:
        if tp.error is not None:
            raise KafkaException(tp.error)
        ends[tp.partition] = tp.offset
    return ends
