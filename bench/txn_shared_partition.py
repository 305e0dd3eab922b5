"""Does committed data stay readable when transactional producers share a partition?

Several transactional producers commit back-to-back transactions, each
writing two records to its own partition and one to a third partition that
is either shared by all of them (``--layout shared``) or also their own
(``--layout separate``). Every few seconds producer 0 dies in the middle of
a transaction: it has written, never ends the transaction, and a new
producer with the same ``transactional.id`` takes over 2 s later, which
aborts the open transaction (``InitProducerId``), as a processor's successor
does. A ``read_committed`` consumer reads everything the whole time.

What it prints: for each 2-second step the records committed so far and the
records the ``read_committed`` consumer has read; at the end, once every
producer has stopped, whether the consumer can read all of it.

On Apache Kafka both layouts read everything. On the embedded broker
(Tansu 0.6.0) the shared layout strands committed records for good: Tansu
finalises a transaction only when no other transaction that wrote the same
partition is still open, and a producer that died mid-transaction leaves
the others' transactions unfinalised, holding the partition's last stable
offset behind them (docs/reliability.md, "The long runs"). This is why the
processor's transactions write only partitions that their owner alone writes.

    .venv/bin/python bench/txn_shared_partition.py [--layout shared|separate]
        [--producers N] [--seconds S] [--bootstrap HOST:PORT]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from atf_es import kafka_clients
from atf_es.broker import EmbeddedBroker

DEATH_EVERY_S = 3.0
DEAD_FOR_S = 2.0


class Producers:
    def __init__(self, bootstrap: str, topic: str, count: int, *, shared: bool) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.shared = shared
        self.committed = [0] * count
        self.deaths = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(count)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(40)

    @property
    def records(self) -> int:
        return 3 * sum(self.committed)

    def _run(self, n: int) -> None:
        third = 0 if self.shared else n + 1
        try:
            while not self._stop.is_set():
                producer = Producer(
                    {
                        "bootstrap.servers": self.bootstrap,
                        "transactional.id": f"{self.topic}-{n}",
                        "linger.ms": 1,
                    }
                )
                producer.init_transactions(30)
                dies_at = time.monotonic() + DEATH_EVERY_S if n == 0 else float("inf")
                while not self._stop.is_set():
                    producer.begin_transaction()
                    producer.produce(self.topic, b"x", b"k", n + 1)
                    producer.produce(self.topic, b"x", b"k", n + 1)
                    producer.produce(self.topic, b"x", b"k", third)
                    producer.flush(30)
                    if time.monotonic() > dies_at:
                        self.deaths += 1
                        self._stop.wait(DEAD_FOR_S)  # dead, its transaction left open
                        break
                    producer.commit_transaction(30)
                    self.committed[n] += 1
        except KafkaException as exc:
            self.errors.append(f"producer {n}: {exc}")


def run(bootstrap: str, layout: str, producers: int, seconds: float) -> int:
    topic = f"txn-shared-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, producers + 1, 1)]).values():
        future.result()
    writers = Producers(bootstrap, topic, producers, shared=layout == "shared")
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}-reader",
            "isolation.level": "read_committed",
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(producers + 1)])
    read = 0

    def read_for(duration: float) -> None:
        nonlocal read
        until = time.monotonic() + duration
        while time.monotonic() < until:
            read += sum(m.error() is None for m in kafka_clients.consume(consumer, 1000, 0.1))

    print(f"{layout}: {producers} producers, producer 0 dies every {DEATH_EVERY_S:g}s")
    writers.start()
    began = time.monotonic()
    while (elapsed := time.monotonic() - began) < seconds:
        read_for(2.0)
        print(
            f"  t={elapsed + 2:4.0f}s deaths {writers.deaths:2d} "
            f"committed {writers.records:7d} read {read:7d}",
            flush=True,
        )
    writers.stop()
    read_for(10.0)
    consumer.close()
    committed = writers.records
    stranded = max(0, committed - read)
    print(
        f"after every producer stopped: committed {committed}, read {read} "
        f"within 10 s: {stranded} committed records unreadable"
    )
    for error in writers.errors:
        print(f"  {error}")
    return 1 if stranded else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layout", choices=["shared", "separate"], default="shared")
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--bootstrap", help="a broker to use instead of the embedded one")
    args = parser.parse_args(argv)
    if args.producers < 2 or args.seconds <= 0:
        parser.error("--producers must be at least 2 and --seconds positive")
    if args.bootstrap:
        return run(args.bootstrap, args.layout, args.producers, args.seconds)
    with tempfile.TemporaryDirectory() as logs, EmbeddedBroker(logs) as broker:
        return run(broker.bootstrap, args.layout, args.producers, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
