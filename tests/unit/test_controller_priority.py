"""The Controller's choice among its buffers: strict priority, and aging.

:class:`PrioritySelector` is pure (buffers and the time are given to it), so
these tests drive it with explicit clocks and plain deques; no Kafka is
involved or imitated. The end-to-end order on a real broker is tested in
tests/integration/test_worker_path.py.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace

import pytest

from atf_es.config import ConfigError, Settings, load_settings
from atf_es.services.controller import Controller, PrioritySelector

Key = tuple[str, int]


@dataclass(frozen=True)
class Item:
    name: str
    arrived: float


class Host:
    """Buffers plus a selector, popping the way the Controller does."""

    def __init__(self, keys: Iterable[Key], policy: str, aging_ms: int = 1_000) -> None:
        self.buffers: dict[Key, deque[Item]] = {key: deque() for key in keys}
        self.selector = PrioritySelector(self.buffers, policy, aging_ms)
        self.aged = 0

    def add(self, key: Key, name: str, at: float) -> None:
        self.buffers[key].append(Item(name, at))

    def pop(self, now: float, lambdas: Iterable[str] | None = None) -> Item | None:
        served = frozenset(lambdas) if lambdas is not None else {k[0] for k in self.buffers}
        picked = self.selector.pick(self.buffers, served, now)
        if picked is None:
            return None
        key, aged = picked
        self.aged += aged
        return self.buffers[key].popleft()

    def drain(self, now: float, lambdas: Iterable[str] | None = None) -> list[str]:
        names = []
        while (item := self.pop(now, lambdas)) is not None:
            names.append(item.name)
        return names


KEYS = [("a", 0), ("a", 1), ("a", 2)]


@pytest.mark.parametrize("policy", ["strict", "aging"])
def test_highest_priority_first_and_fifo_within_a_level(policy: str) -> None:
    host = Host(KEYS, policy, aging_ms=60_000)
    rng = random.Random(7)
    backlog = [(p, n) for p in range(3) for n in range(10)]
    rng.shuffle(backlog)
    for at, (priority, n) in enumerate(backlog):
        host.add(("a", priority), f"p{priority}-{n:02d}", at / 1000)
    order = host.drain(now=1.0)
    # Within a level, arrival order; the n's arrived shuffled, so compare to that.
    expected = [f"p{p}-{n:02d}" for p in (2, 1, 0) for q, n in backlog if q == p]
    assert order == expected
    assert host.aged == 0


def test_strict_never_lets_an_old_item_jump_the_queue() -> None:
    host = Host(KEYS, "strict", aging_ms=1)
    host.add(("a", 0), "old-low", 0.0)
    for n in range(5):
        host.add(("a", 2), f"high-{n}", 1_000.0)
    assert host.drain(now=10_000.0) == [*(f"high-{n}" for n in range(5)), "old-low"]
    assert host.aged == 0


def test_aging_serves_a_low_item_that_waited_too_long_before_fresh_high_ones() -> None:
    host = Host(KEYS, "aging", aging_ms=500)
    host.add(("a", 0), "old-low", 0.0)
    host.add(("a", 1), "fresh-mid", 0.9)
    host.add(("a", 2), "fresh-high", 0.9)
    assert [item.name for item in [host.pop(now=1.0)] if item] == ["old-low"]
    assert host.aged == 1
    assert host.drain(now=1.0) == ["fresh-high", "fresh-mid"]


def test_an_item_exactly_at_the_aging_time_has_not_waited_longer() -> None:
    host = Host(KEYS, "aging", aging_ms=500)
    host.add(("a", 0), "low", 0.5)
    host.add(("a", 2), "high", 0.9)
    assert host.drain(now=1.0) == ["high", "low"]
    host.add(("a", 0), "low", 0.5)
    host.add(("a", 2), "high", 0.9)
    assert host.drain(now=1.0001) == ["low", "high"]


def test_aged_items_go_oldest_first_across_priorities_and_lambdas() -> None:
    keys = [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    host = Host(keys, "aging", aging_ms=100)
    host.add(("b", 2), "b2-old", 0.0)
    host.add(("a", 0), "a0-old", 0.1)
    host.add(("b", 0), "b0-old", 0.2)
    host.add(("a", 2), "a2-old", 0.3)
    host.add(("a", 1), "a1-fresh", 0.95)
    host.add(("b", 0), "b0-fresh", 0.95)
    assert host.drain(now=1.0)[:4] == ["b2-old", "a0-old", "b0-old", "a2-old"]
    assert host.aged == 4


def test_equal_arrival_among_aged_items_prefers_the_higher_priority() -> None:
    host = Host(KEYS, "aging", aging_ms=100)
    for priority in range(3):
        host.add(("a", priority), f"p{priority}", 0.0)
    assert host.drain(now=1.0) == ["p2", "p1", "p0"]


def test_aging_only_looks_at_the_lambdas_asked_for() -> None:
    keys = [("a", 0), ("a", 2), ("b", 0), ("b", 2)]
    host = Host(keys, "aging", aging_ms=100)
    host.add(("b", 0), "b-old", 0.0)
    host.add(("a", 2), "a-fresh", 0.95)
    host.add(("a", 0), "a-low-fresh", 0.95)
    assert host.drain(now=1.0, lambdas=["a"]) == ["a-fresh", "a-low-fresh"]
    assert host.drain(now=1.0, lambdas=["b"]) == ["b-old"]


def test_lambdas_at_the_same_level_take_turns() -> None:
    keys = [("a", 1), ("b", 1), ("c", 1), ("a", 0)]
    host = Host(keys, "strict")
    for name in "abc":
        for n in range(3):
            host.add((name, 1), f"{name}{n}", 0.0)
    host.add(("a", 0), "low", 0.0)
    order = host.drain(now=0.0)
    assert order[-1] == "low"
    # Every window of three consecutive picks has one item of each lambda.
    firsts = [name[0] for name in order[:-1]]
    for start in range(0, 9, 3):
        assert sorted(firsts[start : start + 3]) == ["a", "b", "c"]


def test_an_item_put_back_keeps_its_age() -> None:
    host = Host(KEYS, "aging", aging_ms=100)
    host.add(("a", 0), "low", 0.0)
    taken = host.pop(now=1.0)
    assert taken is not None and taken.name == "low"
    # The claim failed for now: the controller puts it back at the front.
    host.buffers[("a", 0)].appendleft(taken)
    host.add(("a", 2), "high", 0.99)
    assert host.drain(now=1.0) == ["low", "high"]


def test_a_flood_of_high_priority_starves_low_under_strict_but_not_under_aging() -> None:
    """One executor takes one item every 10 ms; two high items arrive every 10 ms."""
    results: dict[str, float | None] = {}
    for policy in ("strict", "aging"):
        host = Host(KEYS, policy, aging_ms=2_000)
        host.add(("a", 0), "low", 0.0)
        served_at = None
        for tick in range(1, 2_001):  # 20 s
            now = tick / 100
            host.add(("a", 2), f"high-{tick}-0", now)
            host.add(("a", 2), f"high-{tick}-1", now)
            item = host.pop(now)
            if item is not None and item.name == "low":
                served_at = now
                break
        results[policy] = served_at
    assert results["strict"] is None
    assert results["aging"] is not None and 2.0 < results["aging"] <= 2.02


def _reference(
    buffers: dict[Key, deque[Item]], lambdas: frozenset[str], now: float, aging_s: float | None
) -> tuple[set[float], int | None]:
    """What a full scan allows: (arrival of the oldest aged item, else the top priority)."""
    items = [(key, item) for key, buffer in buffers.items() if key[0] in lambdas for item in buffer]
    if not items:
        return set(), None
    if aging_s is not None:
        aged = [item.arrived for _, item in items if item.arrived < now - aging_s]
        if aged:
            return {min(aged)}, None
    return set(), max(key[1] for key, _ in items)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("policy", ["strict", "aging"])
def test_front_only_selection_matches_a_full_scan(policy: str, seed: int) -> None:
    """Random arrivals, pops, put-backs and clock jumps, checked against a full scan."""
    rng = random.Random(seed)
    keys = [(name, p) for name in "abc" for p in range(rng.randint(1, 4))]
    host = Host(keys, policy, aging_ms=rng.choice([1, 50, 300]))
    aging_s = host.selector.aging_ms / 1000 if policy == "aging" else None
    now = 0.0
    names = 0
    for _ in range(600):
        op = rng.random()
        if op < 0.45:
            now += rng.choice([0.0, 0.001, 0.02, 0.2])
            names += 1
            host.add(rng.choice(keys), f"i{names}", now)
        elif op < 0.55:
            now += rng.choice([0.1, 0.5])
        else:
            lambdas = frozenset(rng.sample("abc", rng.randint(1, 3)))
            oldest, top = _reference(host.buffers, lambdas, now, aging_s)
            picked = host.selector.pick(host.buffers, lambdas, now)
            if picked is None:
                assert oldest == set() and top is None
                continue
            key, aged = picked
            item = host.buffers[key].popleft()
            assert key[0] in lambdas
            if oldest:
                assert aged and {item.arrived} == oldest
            else:
                assert not aged and key[1] == top
            if rng.random() < 0.2:  # a claim that could not be made: put back
                host.buffers[key].appendleft(item)


def test_the_selector_refuses_unknown_policies() -> None:
    with pytest.raises(ValueError, match="priority policy"):
        PrioritySelector([("a", 0)], "weighted", 1_000)
    with pytest.raises(ValueError, match="at least 1 ms"):
        PrioritySelector([("a", 0)], "aging", 0)


def test_the_controller_takes_its_policy_from_the_settings() -> None:
    default = Controller(Settings(), "127.0.0.1:9092", ["a"], "127.0.0.1:1")
    assert (default.priority_policy, default.priority_aging_ms) == ("aging", 60_000)
    strict = Controller(
        replace(Settings(), priority_policy="strict", priority_aging_ms=5),
        "127.0.0.1:9092",
        ["a"],
        "127.0.0.1:1",
    )
    assert (strict.priority_policy, strict.priority_aging_ms) == ("strict", 5)


def test_priority_settings_from_the_environment() -> None:
    settings = load_settings(
        env={"ATF_PRIORITY_POLICY": "strict", "ATF_PRIORITY_AGING_MS": "5_000"}
    )
    assert (settings.priority_policy, settings.priority_aging_ms) == ("strict", 5_000)
    assert settings.source_of("priority_policy") == "environment variable ATF_PRIORITY_POLICY"


def test_bad_priority_settings_are_reported_with_their_source() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(env={"ATF_PRIORITY_POLICY": "weighted", "ATF_PRIORITY_AGING_MS": "0"})
    assert sorted(raised.value.problems) == [
        "priority_aging_ms must be between 1 and 86400000, got 0 "
        "(from environment variable ATF_PRIORITY_AGING_MS).",
        "priority_policy must be 'strict' or 'aging', got 'weighted' "
        "(from environment variable ATF_PRIORITY_POLICY).",
    ]
