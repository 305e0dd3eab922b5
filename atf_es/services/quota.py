"""Per-lambda scheduling quotas: a token bucket per lambda, kept by each Frontend.

A lambda's policy sets ``schedule_rate`` (tasks per second, sustained) and
``schedule_burst`` (how many tasks may arrive at once). A Frontend admits a
task when its lambda's bucket holds a token and otherwise refuses it with
``RESOURCE_EXHAUSTED`` and the time after which a retry would be admitted.

The buckets live in each Frontend process, like Sidekiq Enterprise's local
rate limiters and unlike a shared counter in a database: the lambda's quota is
per Frontend instance, so a deployment with N Frontends admits up to N times
the rate. That keeps ``Schedule`` free of a round trip to a shared store; a
cluster-wide quota would need one (see ``docs/design.md``).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from atf_es.events.policy import LambdaPolicy


@dataclass(slots=True)
class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate`` tokens per second."""

    rate: float
    burst: int
    tokens: float
    updated: float
    """The clock reading (seconds) ``tokens`` was computed at."""

    @classmethod
    def full(cls, rate: float, burst: int, now: float) -> TokenBucket:
        return cls(rate, burst, float(burst), now)

    def take(self, count: int, now: float) -> float:
        """Take ``count`` tokens: 0.0 if taken, else the seconds until they would be there.

        Nothing is taken when the answer is not 0.0. A request for more than
        ``burst`` tokens can never be admitted whole and gets ``math.inf``.
        """
        if now > self.updated:
            self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
            self.updated = now
        if count <= self.tokens:
            self.tokens -= count
            return 0.0
        if count > self.burst:
            return math.inf
        return (count - self.tokens) / self.rate


@dataclass(frozen=True, slots=True)
class OverQuota:
    """Why a task was refused, and when a retry would be admitted."""

    lambda_name: str
    rate: float
    burst: int
    retry_after: float
    """Seconds; ``math.inf`` when the request is larger than the burst."""

    @property
    def retry_after_ms(self) -> int:
        return 0 if math.isinf(self.retry_after) else max(1, math.ceil(self.retry_after * 1000))

    def message(self) -> str:
        quota = f"{self.rate:g} tasks/s with bursts of {self.burst}"
        if math.isinf(self.retry_after):
            return (
                f"lambda {self.lambda_name!r} admits {quota}; a batch this large can never "
                "be admitted at once, split it"
            )
        return (
            f"lambda {self.lambda_name!r} is over its scheduling quota of {quota}; "
            f"retry in {self.retry_after_ms} ms"
        )


class Quotas:
    """The buckets of every lambda with a quota; safe to call from many threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def take(self, policy: LambdaPolicy, count: int = 1) -> OverQuota | None:
        """Admit ``count`` tasks of ``policy``'s lambda (``None``) or say why not."""
        if policy.schedule_rate <= 0:
            return None
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(policy.name)
            if (
                bucket is None
                or bucket.rate != policy.schedule_rate
                or bucket.burst != policy.schedule_burst
            ):
                # A new or redefined quota starts full, as a freshly started Frontend would.
                bucket = TokenBucket.full(policy.schedule_rate, policy.schedule_burst, now)
                self._buckets[policy.name] = bucket
            wait = bucket.take(count, now)
        if wait == 0.0:
            return None
        return OverQuota(policy.name, policy.schedule_rate, policy.schedule_burst, wait)


__all__ = ["OverQuota", "Quotas", "TokenBucket"]
