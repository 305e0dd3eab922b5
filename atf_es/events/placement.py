"""Where a key lands: Kafka's default partitioner, in pure Python.

Every keyed producer here uses librdkafka's ``murmur2_random``, which is
Java's default, so ``partition_of`` names the partition a task id's commands
and events go to, and ids made to land on a chosen partition
(:func:`id_on_partition`) stay there whatever client sends them.
"""

from __future__ import annotations


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (as Java's and librdkafka's partitioners compute it)."""
    m = 0x5BD1E995
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    extra = length % 4
    if extra == 3:
        h ^= data[whole + 2] << 16
    if extra >= 2:
        h ^= data[whole + 1] << 8
    if extra >= 1:
        h ^= data[whole]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_of(task_id: str, partitions: int) -> int:
    """The commands and task-events partition of ``task_id``."""
    return (murmur2(task_id.encode()) & 0x7FFFFFFF) % partitions


def id_on_partition(base: str, partition: int, partitions: int) -> str:
    """``base``, or ``base~N`` with the smallest N, such that the id lands on ``partition``.

    Deterministic: the same base, partition and count always give the same
    id. About ``partitions`` tries on average.
    """
    if not 0 <= partition < partitions:
        raise ValueError(f"partition {partition} is not one of 0..{partitions - 1}")
    candidate, n = base, 0
    while partition_of(candidate, partitions) != partition:
        n += 1
        candidate = f"{base}~{n}"
    return candidate


__all__ = ["id_on_partition", "murmur2", "partition_of"]
