"""The benchmark's no-op task body, shared by every peer.

``record(key)`` appends ``"<key> <time.time_ns()>"`` to ``<BENCH_LEDGER_DIR>/ledger-<pid>.txt`` and
returns ``key``. The timestamp is taken first thing, so the ledger holds when each task started
executing, measured the same way for every system. The file is opened once per process (lazily,
so forked worker processes open their own), writes are serialised by a lock and flushed per line.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from typing import TextIO

LEDGER_DIR_ENV = "BENCH_LEDGER_DIR"


class _Ledger:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.file: TextIO | None = None

    def reset_after_fork(self) -> None:
        # The parent's handle (flushed after every line, so nothing is buffered) stays the
        # parent's: the child writes to a file named after its own pid.
        self.lock = threading.Lock()
        self.file = None

    def write(self, key: str, started_ns: int) -> None:
        with self.lock:
            if self.file is None:
                directory = os.environ[LEDGER_DIR_ENV]
                path = os.path.join(directory, f"ledger-{os.getpid()}.txt")
                self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
            self.file.write(f"{key} {started_ns}\n")
            self.file.flush()

    def close(self) -> None:
        with self.lock:
            if self.file is not None:
                self.file.close()
                self.file = None


_LEDGER = _Ledger()
os.register_at_fork(after_in_child=_LEDGER.reset_after_fork)
atexit.register(_LEDGER.close)


def record(key: str) -> str:
    """Record that the task for ``key`` started now; return ``key``."""
    started_ns = time.time_ns()
    _LEDGER.write(key, started_ns)
    return key
