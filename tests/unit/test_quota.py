"""The scheduling quota's token bucket, on a hand-driven clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atf_es.events.policy import LambdaPolicy, PolicyError
from atf_es.services.quota import Quotas, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_admits_its_burst_then_says_when_to_retry() -> None:
    bucket = TokenBucket.full(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(1, 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(1, 0.0) == pytest.approx(0.5)
    assert bucket.take(1, 0.25) == pytest.approx(0.25)  # half a token came back
    assert bucket.take(1, 0.5) == 0.0


def test_a_refusal_takes_nothing() -> None:
    bucket = TokenBucket.full(rate=1.0, burst=2, now=0.0)
    assert bucket.take(2, 0.0) == 0.0
    for _ in range(5):
        assert bucket.take(1, 0.5) == pytest.approx(0.5)
    assert bucket.take(1, 1.0) == 0.0


def test_more_than_the_burst_is_never_admitted_at_once() -> None:
    bucket = TokenBucket.full(rate=1000.0, burst=5, now=0.0)
    assert math.isinf(bucket.take(6, 0.0))
    assert bucket.take(5, 0.0) == 0.0


def test_tokens_never_exceed_the_burst_however_long_the_idle() -> None:
    bucket = TokenBucket.full(rate=10.0, burst=4, now=0.0)
    assert bucket.take(4, 0.0) == 0.0
    assert bucket.take(5, 1e6) == math.inf
    assert bucket.take(4, 1e6) == 0.0
    assert bucket.take(1, 1e6) > 0.0


def test_a_clock_going_backwards_grants_nothing() -> None:
    bucket = TokenBucket.full(rate=1.0, burst=1, now=10.0)
    assert bucket.take(1, 10.0) == 0.0
    assert bucket.take(1, 5.0) == pytest.approx(1.0)


@given(
    rate=st.floats(0.1, 1000.0),
    burst=st.integers(1, 50),
    steps=st.lists(st.tuples(st.floats(0.0, 2.0), st.integers(1, 10)), max_size=60),
)
def test_admitted_never_exceeds_burst_plus_rate_times_elapsed(
    rate: float, burst: int, steps: list[tuple[float, int]]
) -> None:
    bucket = TokenBucket.full(rate, burst, 0.0)
    now, admitted = 0.0, 0
    for advance, count in steps:
        now += advance
        wait = bucket.take(count, now)
        if wait == 0.0:
            admitted += count
        else:
            assert wait > 0.0
            # Waiting as told admits the same request (unless it is larger than the burst).
            if not math.isinf(wait):
                probe = TokenBucket(bucket.rate, bucket.burst, bucket.tokens, bucket.updated)
                assert probe.take(count, now + wait + 1e-9) == 0.0
        assert admitted <= burst + rate * now + 1e-6


def test_quotas_follow_the_lambda_policy() -> None:
    clock = Clock()
    quotas = Quotas(clock)
    free = LambdaPolicy("free")
    metered = LambdaPolicy("metered", schedule_rate=1.0, schedule_burst=2)
    assert all(quotas.take(free) is None for _ in range(10_000))
    assert quotas.take(metered) is None and quotas.take(metered) is None
    over = quotas.take(metered)
    assert over is not None
    assert (over.lambda_name, over.retry_after_ms) == ("metered", 1000)
    assert "over its scheduling quota of 1 tasks/s with bursts of 2" in over.message()
    assert "retry in 1000 ms" in over.message()
    clock.now += 1.0
    assert quotas.take(metered) is None
    # A redefined quota starts afresh, full.
    raised = LambdaPolicy("metered", schedule_rate=1.0, schedule_burst=5)
    assert all(quotas.take(raised) is None for _ in range(5))
    assert quotas.take(raised) is not None


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"schedule_rate": -1.0}, "schedule_rate must be a finite number"),
        ({"schedule_rate": math.nan}, "schedule_rate must be a finite number"),
        ({"schedule_rate": math.inf}, "schedule_rate must be a finite number"),
        ({"schedule_burst": 0}, "schedule_burst must be at least 1"),
    ],
)
def test_a_quota_that_cannot_work_is_refused(fields: dict[str, float], problem: str) -> None:
    with pytest.raises(PolicyError, match=problem):
        LambdaPolicy("bad", **fields)  # type: ignore[arg-type]
