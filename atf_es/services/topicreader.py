"""Reading every partition of a topic to its end as it is now, for read-side views.

:class:`TopicReader` is the reading half of the read-side views (the
overview, ``atf_es.services.overview``, and the dead letters,
``atf_es.services.deadletters``): a plain consumer (no group, nothing
committed) assigned every partition from the beginning, and
:meth:`TopicReader.catch_up`, which hands every record up to each
partition's end, as it is when called, to the view's ``apply`` callback.
It reads with one ``ListOffsets`` request for the ends (open transactions
included, see ``kafka_clients.log_ends``), then reading until each consumer
position reaches its end, never waiting for records written since.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from confluent_kafka import (
    OFFSET_BEGINNING,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from atf_es import kafka_clients
from atf_es.config import Settings

log = logging.getLogger(__name__)

READ_CHUNK = 5_000
_DRAIN_PASSES = 100
PREFETCH_KBYTES = 16_384
"""librdkafka's local prefetch queue per reader (its default is 64 MB)."""

Apply = Callable[[bytes | None, bytes | None], None]
"""Takes one record's key and value (None: a tombstone)."""


class TopicReader:
    """Every partition of ``topic`` from the beginning, read on demand.

    Not thread-safe: the view that owns it holds its own lock around each call.
    """

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        topic: str,
        partitions: int,
        apply: Apply,
        *,
        client_id: str,
    ) -> None:
        self.topic = topic
        self.records = 0
        """Records read so far (events and tombstones)."""
        self._apply = apply
        self._partitions = list(range(partitions))
        self._consumer = kafka_clients.consumer(
            bootstrap,
            kafka_config=settings.kafka_config,
            overrides={"client.id": client_id, "queued.max.messages.kbytes": PREFETCH_KBYTES},
        )
        self._consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in self._partitions]
        )
        self._end_reader = kafka_clients.end_reader(bootstrap, kafka_config=settings.kafka_config)
        self._closed = False

    def catch_up(self, timeout: float) -> None:
        """Read every partition to its end as it is now.

        Raises TimeoutError (keeping what was read: the next call goes on from
        there) if that takes more than ``timeout`` seconds, and KafkaException
        if the broker cannot tell where the ends are.
        """
        deadline = time.monotonic() + timeout
        ends = self._ends(max(0.1, deadline - time.monotonic()))
        # Done when each position reaches its end, not when a record at the end
        # arrives: a transactional log ends in a commit marker, which no
        # consumer ever receives.
        while behind := self._behind(ends):
            if time.monotonic() > deadline:
                left = sum(ends[p] - max(0, position) for p, position in behind.items())
                raise TimeoutError(
                    f"{timeout:g}s were not enough to read {self.topic} to its end: "
                    f"{self.records} records read so far, about {left} to go"
                )
            self._apply_all(kafka_clients.consume(self._consumer, READ_CHUNK, 0.05))
        # The embedded broker reports the end as the last batch's base offset + 1:
        # the rest of that batch has arrived with it. Take what is here, never
        # waiting (that would chase records written since).
        for _ in range(_DRAIN_PASSES):
            messages = kafka_clients.consume(self._consumer, READ_CHUNK, 0.0)
            if not messages:
                break
            self._apply_all(messages)

    def _ends(self, timeout: float) -> dict[int, int]:
        """Each partition's end offset, leaving out those with nothing to read."""
        # Not the reader's own end: see kafka_clients.log_ends.
        ends = kafka_clients.log_ends(self._end_reader, self.topic, self._partitions, timeout)
        positions = self._consumer.position([TopicPartition(self.topic, p) for p in ends])
        unread = [tp.partition for tp in positions if tp.offset < 0]
        if unread:
            starts = self._offsets(OFFSET_BEGINNING, unread, timeout)
            for partition, start in starts.items():
                if ends[partition] <= start:
                    del ends[partition]
        return ends

    def _offsets(self, which: int, partitions: list[int], timeout: float) -> dict[int, int]:
        found = self._consumer.offsets_for_times(
            [TopicPartition(self.topic, p, which) for p in partitions], timeout=timeout
        )
        offsets = {}
        for tp in found:
            if tp.error is not None:
                raise KafkaException(tp.error)
            offsets[tp.partition] = tp.offset
        return offsets

    def _behind(self, ends: dict[int, int]) -> dict[int, int]:
        if not ends:
            return {}
        positions = self._consumer.position([TopicPartition(self.topic, p) for p in ends])
        return {tp.partition: tp.offset for tp in positions if tp.offset < ends[tp.partition]}

    def _apply_all(self, messages: Iterable[Message]) -> None:
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("%s: %s", self.topic, error)
                continue
            self.records += 1
            self._apply(message.key(), message.value())

    def close(self) -> None:
        """Close the consumer. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._consumer.close()
            self._end_reader.close()


__all__ = ["Apply", "TopicReader"]
