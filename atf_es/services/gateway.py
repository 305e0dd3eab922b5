"""Sending commands and waiting for their replies.

Every gRPC service that changes a task (Frontend, HSC, Admin) is a thin shell
over a ``CommandGateway``: it produces a command keyed by task id with a
``reply_to`` address naming one partition of the replies topic, and a reader
thread on that partition resolves the caller's future when the processor's
reply arrives. Several gateways may share a reply partition; each ignores
replies to commands it did not send.

Two kinds of wait, both bounded:

- ``send(..., wait_reply=False)`` resolves when the command is durably in
  Kafka (all in-sync replicas have it): enough for Schedule, which promises
  only that the task will be processed.
- ``send(...)`` resolves with the processor's ``Reply``: what Claim,
  Heartbeat and SetResult need.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from confluent_kafka import OFFSET_END, KafkaError, KafkaException, Message, TopicPartition

from atf_es import kafka_clients
from atf_es.clock import now_ms
from atf_es.config import Settings
from atf_es.events import Command
from atf_es.events.codec import DecodeError, EncodeError, decode_reply, encode_command
from atf_es.events.replies import Reply
from atf_es.services.processor import record_limit
from atf_es.topics import Topics

log = logging.getLogger(__name__)


class GatewayError(Exception):
    """A command could not be delivered or answered in time."""


class KafkaUnavailableError(GatewayError):
    """Kafka did not take the command in time (a broker outage)."""


class NoReplyError(GatewayError):
    """The command is in Kafka but no reply came in time (no processor?)."""


class CommandRejectedError(GatewayError):
    """The command itself cannot be sent (too large for Kafka, or unencodable).

    Sending it again fails the same way: the caller's request is at fault,
    not the system (``INVALID_ARGUMENT``, not ``UNAVAILABLE``).
    """


@dataclass(frozen=True, slots=True)
class Delivered:
    """Where a command landed: what a later read-your-writes query can wait for."""

    partition: int
    offset: int


class CommandGateway:
    """Produces commands and matches replies to them."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        *,
        reply_partition: int | None = None,
        client_id: str = "gateway",
    ) -> None:
        self.topics = Topics(settings.topic_prefix)
        self.max_record_bytes = record_limit(settings)
        """The largest record Kafka takes here: what a front door checks sizes against."""
        self._producer = kafka_clients.producer(
            bootstrap,
            settings.kafka_config,
            overrides={"acks": "all", "client.id": client_id, "message.timeout.ms": 30_000},
        )
        partition = (
            reply_partition
            if reply_partition is not None
            else random.randrange(settings.partitions)
        )
        self.reply_to = f"{self.topics.replies}:{partition}"
        self._replies = kafka_clients.consumer(
            bootstrap, kafka_config=settings.kafka_config, overrides={"client.id": client_id}
        )
        # Replies written before we started answer someone else's commands. The
        # end is resolved lazily, so a gateway starts even while Kafka is down.
        self._replies.assign([TopicPartition(self.topics.replies, partition, OFFSET_END)])
        self._pending: dict[str, Future[Reply]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._read_replies, name=f"{client_id}-replies", daemon=True),
            threading.Thread(target=self._serve_producer, name=f"{client_id}-acks", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def send(
        self, command: Command, *, timeout: float = 10.0, wait_reply: bool = True
    ) -> Reply | Delivered:
        """Send ``command``; return its reply (or, without ``wait_reply``, where it landed).

        Raises ``KafkaUnavailableError`` when Kafka does not take it and ``NoReplyError`` when
        nobody answers, each within ``timeout`` seconds.
        """
        return self._finish(self._start(command, wait_reply), time.monotonic() + timeout)

    def send_many(
        self, commands: list[Command], *, timeout: float = 10.0, wait_reply: bool = True
    ) -> list[Reply | Delivered | GatewayError]:
        """Send a batch at once and collect each outcome under one deadline."""
        started = [self._start(command, wait_reply) for command in commands]
        deadline = time.monotonic() + timeout
        results: list[Reply | Delivered | GatewayError] = []
        for pending in started:
            try:
                results.append(self._finish(pending, deadline))
            except GatewayError as exc:
                results.append(exc)
        return results

    def _start(self, command: Command, wait_reply: bool) -> _Pending:
        pending = _Pending(command.command_id, wait_reply)
        if pending.reply is not None:
            with self._lock:
                self._pending[command.command_id] = pending.reply
        try:
            value = encode_command(command, self.reply_to if wait_reply else None, now_ms())
            key = command.task_id.encode()
        except (EncodeError, UnicodeError) as exc:
            pending.fail(CommandRejectedError(f"the command cannot be encoded: {exc}"))
            return pending
        try:
            self._producer.produce(self.topics.commands, value, key, on_delivery=pending.delivered)
        except BufferError as exc:
            pending.fail(
                KafkaUnavailableError(
                    f"the producer queue is full ({exc}); Kafka is not keeping up"
                )
            )
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if error is not None and error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                # The record itself is refused, before anything is sent: not an outage.
                pending.fail(
                    CommandRejectedError(
                        f"the command is {len(key) + len(value)} bytes with its key, more "
                        f"than Kafka takes in one record ({error.str()})"
                    )
                )
            else:
                pending.fail(KafkaUnavailableError(f"Kafka did not take the command: {exc}"))
        return pending

    def _finish(self, pending: _Pending, deadline: float) -> Reply | Delivered:
        try:
            delivered = pending.delivery.result(max(0.0, deadline - time.monotonic()))
            if pending.reply is None:
                return delivered
            try:
                return pending.reply.result(max(0.0, deadline - time.monotonic()))
            except TimeoutError as exc:
                raise NoReplyError(
                    f"command {pending.command_id} is in Kafka but was not answered in time; "
                    "is a processor running?"
                ) from exc
        except TimeoutError as exc:
            raise KafkaUnavailableError("Kafka did not acknowledge the command in time") from exc
        finally:
            self._forget(pending.command_id)

    def _forget(self, command_id: str) -> None:
        with self._lock:
            self._pending.pop(command_id, None)

    def _serve_producer(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def _read_replies(self) -> None:
        while not self._stop.is_set():
            for message in kafka_clients.consume(self._replies, 500, 0.1):
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("replies: %s", error)
                    continue
                value = message.value()
                if value is None:
                    continue
                try:
                    reply = decode_reply(value)
                except DecodeError as exc:
                    log.warning("replies: ignoring an unreadable record: %s", exc)
                    continue
                with self._lock:
                    future = self._pending.pop(reply.command_id, None)
                if future is not None and not future.done():
                    future.set_result(reply)

    def close(self) -> None:
        """Stop the reader threads and flush what was sent. Safe to call twice."""
        if self._stop.is_set():
            return
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self._producer.flush(5)
        self._replies.close()
        with self._lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(NoReplyError("the gateway closed before the reply came"))


class _Pending:
    """What one sent command waits for: its delivery and, maybe, its reply."""

    def __init__(self, command_id: str, wait_reply: bool) -> None:
        self.command_id = command_id
        self.delivery: Future[Delivered] = Future()
        self.reply: Future[Reply] | None = Future() if wait_reply else None

    def fail(self, error: GatewayError) -> None:
        for future in (self.delivery, self.reply):
            if future is not None and not future.done():
                future.set_exception(error)

    def delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.fail(KafkaUnavailableError(f"Kafka did not take the command: {error}"))
            return
        partition, offset = message.partition(), message.offset()
        assert partition is not None and offset is not None
        self.delivery.set_result(Delivered(partition, offset))
