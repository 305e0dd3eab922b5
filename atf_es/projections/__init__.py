"""RocksDB projections of the task log: the task store, its indexes and counters."""

from atf_es.projections.store import (
    FORMAT_VERSION,
    CounterKey,
    MemoryTaskStore,
    RocksTaskStore,
    StoreError,
    StoreLockedError,
    TaskStore,
    open_or_rebuild,
)

__all__ = [
    "FORMAT_VERSION",
    "CounterKey",
    "MemoryTaskStore",
    "RocksTaskStore",
    "StoreError",
    "StoreLockedError",
    "TaskStore",
    "open_or_rebuild",
]
