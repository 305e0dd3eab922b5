"""atf-es as a benchmark peer: every service its own process on one embedded broker.

The same shape as the peers in ``bench/peers.py``: ``start`` brings up the
broker, one processor, the HSC, the Frontend, the Controller and ``workers``
executor processes of ``threads`` threads each, running the no-op lambda of
``bench/peer_apps/atf_app.py``; ``submit`` is one ``Schedule`` call;
``wait_all`` waits until each task's terminal event is on the task-events
topic, which is how downstream services observe results.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from atf_es.broker import EmbeddedBroker, ensure_topics
from atf_es.client import Client, TaskRequest
from atf_es.config import Settings
from atf_es.topics import core_topic_specs
from bench.peer_apps.atf_app import app
from torture.run import EventWatcher
from torture.system import System

APP = "bench.peer_apps.atf_app:app"
LAMBDA = "noop"
SUBMIT_TIMEOUT_S = 30.0
BATCH = 500
"""Tasks per ``ScheduleBatch`` call in ``submit_many``."""


class AtfPeer:
    name = "atf-es"
    submit_threads = 32
    """``Schedule`` calls in flight at most in the paced runs."""

    def __init__(
        self,
        workdir: Path,
        workers: int,
        threads: int,
        ledger_dir: Path,
        *,
        partitions: int = 4,
        processors: int = 1,
        service_env: dict[str, str] | None = None,
    ) -> None:
        """``service_env``: more environment for every service, e.g. ``ATF_*`` settings."""
        self.workdir = workdir
        self.workers = workers
        self.threads = threads
        self.ledger_dir = ledger_dir
        self.partitions = partitions
        self.processors = processors
        self.service_env = dict(service_env or {})
        self.broker = EmbeddedBroker(workdir / "broker")
        self.system: System | None = None
        self.watcher: EventWatcher | None = None
        self._local = threading.local()
        self._clients: list[Client] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        self.broker.start()
        settings = replace(
            Settings(),
            kafka_bootstrap=self.broker.bootstrap,
            topic_prefix="bench",
            partitions=self.partitions,
            data_dir=str(self.workdir / "data"),
            session_timeout_ms=6000,
        )
        ensure_topics(self.broker.bootstrap, core_topic_specs(settings))
        app.define(settings, self.broker.bootstrap)
        self.system = System(
            settings,
            self.workdir,
            processors=self.processors,
            executors=self.workers,
            threads=self.threads,
            app=APP,
            lambdas=(LAMBDA,),
            env={"BENCH_LEDGER_DIR": str(self.ledger_dir), **self.service_env},
        )
        self.system.start()
        self.watcher = EventWatcher(settings)
        self.watcher.start()
        probe = self.submit("probe")
        if self.wait_all([probe], timeout=60) != 1:
            raise RuntimeError(f"atf-es: the probe task did not end within 60 s ({self.workdir})")

    def _client(self) -> Client:
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            assert self.system is not None
            client = Client(self.system.frontend_address, timeout=SUBMIT_TIMEOUT_S)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def submit(self, key: str, delay_s: float = 0.0) -> object:
        return self._client().schedule(LAMBDA, key.encode(), delay=delay_s or None)

    def submit_many(self, keys: Sequence[str]) -> list[object]:
        """Schedule in ``ScheduleBatch`` calls of ``BATCH`` tasks."""
        ids: list[object] = []
        client = self._client()
        for start in range(0, len(keys), BATCH):
            chunk = keys[start : start + BATCH]
            outcomes = client.schedule_many(TaskRequest(LAMBDA, k.encode()) for k in chunk)
            refused = [o for o in outcomes if not o.ok]
            if refused:
                raise RuntimeError(f"atf-es refused {len(refused)} tasks: {refused[0]}")
            ids += [o.task_id for o in outcomes]
        return ids

    def wait_all(self, handles: Sequence[object], timeout: float) -> int:
        assert self.watcher is not None
        ids = [str(h) for h in handles]
        deadline = time.monotonic() + timeout
        while (done := self.watcher.done(ids)) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.01)  # polling the events reader; bounded by the deadline
        return done

    def pids(self) -> list[int]:
        """The atf-es services' processes (the broker is counted apart, like Redis)."""
        if self.system is None:
            return []
        return [s.pid for s in self.system.services if s.alive and s.pid is not None]

    def broker_pids(self) -> list[int]:
        return [self.broker.pid] if self.broker.pid is not None and self.broker.running else []

    def stop(self) -> None:
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients.clear()
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None
        if self.system is not None:
            self.system.stop()
            self.system = None
        self.broker.stop()


__all__ = ["AtfPeer"]

if __name__ == "__main__":  # pragma: no cover - a smoke run: python -m bench.atf_peer
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ledger = Path(tmp) / "ledger"
        ledger.mkdir()
        os.environ["BENCH_LEDGER_DIR"] = str(ledger)
        peer = AtfPeer(Path(tmp), workers=2, threads=4, ledger_dir=ledger)
        try:
            began = time.monotonic()
            peer.start()
            print(f"started in {time.monotonic() - began:.1f}s")
            keys = [f"k{i}" for i in range(2000)]
            began = time.monotonic()
            handles = peer.submit_many(keys)
            scheduled = time.monotonic() - began
            done = peer.wait_all(handles, timeout=120)
            took = time.monotonic() - began
            rate = done / took
            print(f"{done}/{len(keys)} in {took:.1f}s ({rate:.0f}/s); sent in {scheduled:.1f}s")
        finally:
            peer.stop()
