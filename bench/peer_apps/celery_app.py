"""The Celery peer: one no-op task, Redis as broker and result backend.

Workers load this module with ``celery -A bench.peer_apps.celery_app worker ...``; the module-level
``app`` reads its Redis URL from ``BENCH_REDIS_URL``. The benchmark's client builds its own app
with ``make_app(url)``.

Settings: only ``broker_url`` and ``result_backend`` (both the benchmark's Redis) are set.
Everything else is Celery's default, on purpose, so the comparison is against Celery as shipped:
``task_acks_late`` off (ack before execution), ``worker_prefetch_multiplier`` 4, JSON
serialisation, ``result_expires`` one day (the benchmark's Redis is thrown away anyway), the Redis
transport's ``visibility_timeout`` one hour (far above any countdown used), and the client's
subscription to each task's result channel at send time.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery  # type: ignore[import-untyped]

from bench.peer_apps.ledger import record

REDIS_URL_ENV = "BENCH_REDIS_URL"
TASK_NAME = "bench.noop"
_DEFAULT_URL = "redis://127.0.0.1:6379/0"


def _noop(key: str) -> str:
    return record(key)


def make_app(redis_url: str) -> tuple[Any, Any]:
    """Return ``(app, noop_task)`` for a Celery app on ``redis_url``."""
    app = Celery("bench_peer", broker=redis_url, backend=redis_url)
    task = app.task(name=TASK_NAME)(_noop)
    return app, task


app, noop = make_app(os.environ.get(REDIS_URL_ENV, _DEFAULT_URL))
