"""The property tests must fail when an invariant is broken on purpose.

Each mutant below is the lifecycle with one deliberate bug. Running the same
state machine against it must end in a falsifying example; a check that
passes against a broken lifecycle would be a test that cannot fail.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from atf_es.events import (
    EVENT_TYPES,
    Accepted,
    CancelTask,
    Cause,
    ClaimTask,
    Decision,
    Event,
    Gate,
    GateAction,
    Heartbeat,
    LambdaPolicy,
    Task,
    TaskCancelled,
    TaskClaimed,
    TaskEnqueued,
    TaskStatus,
    TaskSucceeded,
    decide,
    evolve,
)
from atf_es.events.lifecycle import Input
from tests.property.lifecycle_machine import POLICY, DecideFn, EvolveFn, LifecycleMachine

SEARCH = settings(
    max_examples=1_500,
    # Finding the bug is the point; shrinking it to a minimal example only costs time.
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    stateful_step_count=60,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def claims_from_any_state(
    task: Task | None,
    item: Input,
    now: int,
    policy: LambdaPolicy | None,
    gate: Gate | None = None,
) -> Decision:
    """Bug: a second worker may claim a task that is already claimed."""
    if (
        isinstance(item, ClaimTask)
        and task is not None
        and task.status is TaskStatus.CLAIMED
        and task.lease == item.lease
        and task.worker != item.worker
    ):
        cause = Cause.command("ClaimTask", item.command_id)
        claim = TaskClaimed(task.task_id, task.seq + 1, now, cause, item.lease, item.worker, now)
        return Accepted((claim,))
    return decide(task, item, now, policy, gate)


def accepts_stale_heartbeats(
    task: Task | None,
    item: Input,
    now: int,
    policy: LambdaPolicy | None,
    gate: Gate | None = None,
) -> Decision:
    """Bug: a heartbeat with an old lease keeps the task alive."""
    if isinstance(item, Heartbeat) and task is not None and item.lease != task.lease:
        return decide(task, replace(item, lease=task.lease), now, policy, gate)
    return decide(task, item, now, policy, gate)


def cancels_finished_tasks(
    task: Task | None,
    item: Input,
    now: int,
    policy: LambdaPolicy | None,
    gate: Gate | None = None,
) -> Decision:
    """Bug: cancelling a finished task rewrites its history."""
    if isinstance(item, CancelTask) and task is not None and task.status is TaskStatus.SUCCESS:
        cause = Cause.command("CancelTask", item.command_id)
        return Accepted((TaskCancelled(task.task_id, task.seq + 1, now, cause, "x", "late"),))
    return decide(task, item, now, policy, gate)


def reuses_lease_on_reenqueue(
    task: Task | None,
    item: Input,
    now: int,
    policy: LambdaPolicy | None,
    gate: Gate | None = None,
) -> Decision:
    """Bug: a re-enqueue keeps the old lease, so an old claim stays valid."""
    decision = decide(task, item, now, policy, gate)
    if isinstance(decision, Accepted) and task is not None:
        return Accepted(
            tuple(
                replace(e, lease=task.lease) if isinstance(e, TaskEnqueued) else e
                for e in decision.events
            )
        )
    return decision


def ignores_pause_gates(
    task: Task | None,
    item: Input,
    now: int,
    policy: LambdaPolicy | None,
    gate: Gate | None = None,
) -> Decision:
    """Bug: a paused gate is not passed on, so held tasks are handed out."""
    if gate is not None and gate.action is GateAction.PAUSE:
        gate = None
    return decide(task, item, now, policy, gate)


def policy_without_heartbeat_margin() -> LambdaPolicy:
    """Bug: a policy whose heartbeat timeout slipped past validation.

    The lifecycle follows the policy faithfully, so only the timing check (an
    old executor may still be running when the task is handed out again) can
    notice.
    """
    policy = replace(POLICY, heartbeat_timeout_ms=POLICY.heartbeat_timeout_ms)
    object.__setattr__(policy, "heartbeat_timeout_ms", 2 * POLICY.heartbeat_interval_ms)
    assert policy.problems(), "the validator itself must reject this policy"
    return policy


def keeps_trigger_after_success(task: Task | None, event: Event) -> Task:
    """Bug: a finished task stays in the next-trigger index."""
    after = evolve(task, event)
    if isinstance(event, TaskSucceeded) and task is not None and after.seq != task.seq:
        return replace(after, next_trigger_at=event.at + 1)
    return after


def applies_events_twice(task: Task | None, event: Event) -> Task:
    """Bug: no sequence check, so a replayed claim counts an attempt again."""
    if isinstance(event, TaskClaimed) and task is not None and event.seq <= task.seq:
        return replace(task, attempts=task.attempts + 1)
    return evolve(task, event)


def machine(
    decide_fn: DecideFn | None = None,
    evolve_fn: EvolveFn | None = None,
    policy: LambdaPolicy | None = None,
) -> type[LifecycleMachine]:
    attrs: dict[str, object] = {}
    if policy is not None:
        attrs["policy"] = policy
    if decide_fn is not None:
        attrs["decide_fn"] = staticmethod(decide_fn)
    if evolve_fn is not None:
        attrs["evolve_fn"] = staticmethod(evolve_fn)
    return type("Mutant", (LifecycleMachine,), attrs)


MUTANTS = [
    pytest.param(
        machine(decide_fn=claims_from_any_state), "two live claims", id="never-two-claims"
    ),
    pytest.param(
        machine(decide_fn=accepts_stale_heartbeats), "current is", id="current-lease-only"
    ),
    pytest.param(
        machine(decide_fn=reuses_lease_on_reenqueue), "bump the lease", id="new-lease-on-reenqueue"
    ),
    pytest.param(
        machine(decide_fn=ignores_pause_gates), "under the pause gate", id="gates-hold-work"
    ),
    pytest.param(
        machine(policy=policy_without_heartbeat_margin()),
        "old executor may still run",
        id="never-concurrently-timing",
    ),
    pytest.param(
        machine(decide_fn=cancels_finished_tasks),
        "terminal success task produced",
        id="terminal-states-absorb",
    ),
    pytest.param(
        machine(evolve_fn=keeps_trigger_after_success),
        "has a trigger",
        id="one-trigger-per-live-task",
    ),
    pytest.param(
        machine(evolve_fn=applies_events_twice), "twice must change nothing", id="idempotent-replay"
    ),
]


@pytest.mark.parametrize(("mutant", "message"), MUTANTS)
def test_broken_lifecycle_is_caught(mutant: type[LifecycleMachine], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        run_state_machine_as_test(mutant, settings=SEARCH)


def test_machine_reaches_every_transition() -> None:
    seen: Counter[str] = Counter()

    class Counting(LifecycleMachine):
        def teardown(self) -> None:
            for events in self.ledger.events.values():
                seen.update(type(e).__name__ for e in events)

    run_state_machine_as_test(Counting, settings=SEARCH)
    missing = {t.__name__ for t in EVENT_TYPES} - set(seen)
    assert not missing, f"the property tests never produced {sorted(missing)}"
