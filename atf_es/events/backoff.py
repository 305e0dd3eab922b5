"""Retry delays: exponential, capped, with jitter that is a pure function."""

from __future__ import annotations

import hashlib

from atf_es.events.policy import LambdaPolicy


def backoff_ms(policy: LambdaPolicy, attempt: int, task_id: str) -> int:
    """Delay before retrying after failed execution ``attempt`` (1-based).

    The jitter is drawn from a hash of the task and attempt rather than a
    random source, so the same inputs always give the same delay: the
    processor and a replay agree, and tests need no seeding.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be at least 1, got {attempt}")
    exponent = min(attempt - 1, 64)
    ceiling = min(
        float(policy.backoff_max_ms), policy.backoff_base_ms * policy.backoff_multiplier**exponent
    )
    digest = hashlib.blake2b(f"{task_id}:{attempt}".encode(), digest_size=8).digest()
    unit = int.from_bytes(digest, "big") / 2**64
    delay = ceiling * (1.0 - policy.backoff_jitter * unit)
    return max(1, int(delay))
