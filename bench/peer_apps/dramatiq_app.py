"""The Dramatiq peer: one no-op actor on a RedisBroker, results in a Redis ``Results`` backend.

Workers load this module with ``dramatiq bench.peer_apps.dramatiq_app ...``, which uses the
module-level broker (also made the global broker) on ``BENCH_REDIS_URL``. The benchmark's client
builds its own broker with ``make_broker(url)``. Apart from the ``Results`` middleware (needed to
observe completion, ``store_results=True`` on the actor, default result TTL of 10 minutes)
everything is Dramatiq's default.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

from bench.peer_apps.ledger import record

REDIS_URL_ENV = "BENCH_REDIS_URL"
ACTOR_NAME = "bench_noop"
_DEFAULT_URL = "redis://127.0.0.1:6379/0"


def _noop(key: str) -> str:
    return record(key)


def make_broker(redis_url: str) -> tuple[RedisBroker, dramatiq.Actor[[str], str], RedisBackend]:
    """Return ``(broker, noop_actor, result_backend)`` on ``redis_url``."""
    # Dramatiq's constructors are unannotated.
    backend = RedisBackend(url=redis_url)  # type: ignore[no-untyped-call]
    broker = RedisBroker(url=redis_url)  # type: ignore[no-untyped-call]
    broker.add_middleware(Results(backend=backend))  # type: ignore[no-untyped-call]
    actor = dramatiq.actor(actor_name=ACTOR_NAME, broker=broker, store_results=True)(_noop)
    return broker, actor, backend


broker, noop, result_backend = make_broker(os.environ.get(REDIS_URL_ENV, _DEFAULT_URL))
dramatiq.set_broker(broker)
