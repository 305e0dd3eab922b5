"""Gates in the pure core: the lifecycle's rules and the store consumer's scans.

The partition core runs here on the in-memory store (the pure core, no
Kafka); the same gates over the real broker and processes are in
tests/integration/test_gates.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from atf_es.events import (
    Accepted,
    ClaimTask,
    Gate,
    GateAction,
    GateError,
    Heartbeat,
    LambdaPolicy,
    Outcome,
    RejectCode,
    Rejected,
    ScheduleTask,
    SetResult,
    Task,
    TaskDropped,
    TaskHeld,
    TaskStatus,
    TimerFired,
    covering,
    decide,
    evolve,
)
from atf_es.events.codec import decode_control, decode_work, encode_command, encode_gate
from atf_es.events.gates import GateKey
from atf_es.projections import MemoryTaskStore
from atf_es.services.partition import Limits, PartitionCore, RawCommand, new_batch
from atf_es.topics import Topics

POLICY = LambdaPolicy(name="mail", enqueue_timeout_ms=60_000)
T0 = 1_700_000_000_000
PAUSE_MAIL = Gate("mail", None, GateAction.PAUSE, "smtp down", "ops")
DROP_NEWS = Gate("mail", "news", GateAction.DROP)


def test_a_gate_names_a_valid_lambda_and_collection() -> None:
    assert PAUSE_MAIL.name == "mail" and PAUSE_MAIL.key == "gate/mail"
    assert DROP_NEWS.name == "mail/news" and DROP_NEWS.key == "gate/mail/news"
    with pytest.raises(GateError, match="lambda name"):
        Gate("a/b", None, GateAction.PAUSE)
    with pytest.raises(GateError, match="collection"):
        Gate("mail", "x/y", GateAction.PAUSE)


def test_the_stronger_of_the_lambda_and_collection_gates_applies() -> None:
    gates: dict[GateKey, Gate] = {("mail", None): PAUSE_MAIL, ("mail", "news"): DROP_NEWS}
    assert covering(gates, "mail", "news") == DROP_NEWS
    assert covering(gates, "mail", "reset") == PAUSE_MAIL
    assert covering(gates, "other", "news") is None
    gates[("mail", None)] = Gate("mail", None, GateAction.OPEN)
    assert covering(gates, "mail", "reset") is None
    # Resuming a collection while its lambda is paused releases nothing.
    gates[("mail", None)] = PAUSE_MAIL
    gates[("mail", "news")] = Gate("mail", "news", GateAction.OPEN)
    assert covering(gates, "mail", "news") == PAUSE_MAIL


def test_a_gate_round_trips_through_the_control_record() -> None:
    gate = Gate("mail", "news", GateAction.DROP, "spam wave", "alice", T0)
    assert decode_control(encode_gate(gate)) == gate
    assert decode_control(encode_gate(PAUSE_MAIL)) == PAUSE_MAIL


# -- the lifecycle ---------------------------------------------------------------------


def _fold(task: Task | None, events: tuple[object, ...]) -> Task:
    for event in events:
        task = evolve(task, event)  # type: ignore[arg-type]
    assert task is not None
    return task


def _scheduled(run_at: int = T0) -> Task:
    decision = decide(None, ScheduleTask("c1", "t1", "mail", "news", 0, b"", run_at), T0, POLICY)
    assert isinstance(decision, Accepted)
    return _fold(None, decision.events)


def _enqueued() -> Task:
    task = _scheduled()
    decision = decide(task, TimerFired("t1"), T0, POLICY)
    assert isinstance(decision, Accepted)
    return _fold(task, decision.events)


def test_a_due_task_under_a_pause_gate_stays_where_it_is() -> None:
    task = _scheduled()
    assert decide(task, TimerFired("t1"), T0 + 5, POLICY, PAUSE_MAIL) == Accepted()
    # Not due yet: nothing, gate or not.
    assert decide(_scheduled(T0 + 10), TimerFired("t1"), T0, POLICY, DROP_NEWS) == Accepted()


def test_a_due_task_under_a_drop_gate_ends_dropped_naming_the_gate() -> None:
    task = _scheduled()
    decision = decide(task, TimerFired("t1"), T0 + 5, POLICY, DROP_NEWS)
    assert isinstance(decision, Accepted)
    (event,) = decision.events
    assert isinstance(event, TaskDropped) and event.gate == "mail/news"
    assert _fold(task, decision.events).status is TaskStatus.DROPPED


def test_an_open_gate_changes_nothing() -> None:
    task = _scheduled()
    opened = Gate("mail", None, GateAction.OPEN)
    assert decide(task, TimerFired("t1"), T0, POLICY, opened) == decide(
        task, TimerFired("t1"), T0, POLICY
    )


def test_an_enqueued_task_timing_out_under_a_pause_gate_is_held() -> None:
    task = _enqueued()
    later = T0 + POLICY.enqueue_timeout_ms
    decision = decide(task, TimerFired("t1"), later, POLICY, PAUSE_MAIL)
    assert isinstance(decision, Accepted)
    (event,) = decision.events
    assert isinstance(event, TaskHeld) and event.gate == "mail"
    held = _fold(task, decision.events)
    assert held.status is TaskStatus.NEW
    assert held.next_trigger_at == later
    assert held.lease == task.lease and held.enqueued_at is None
    # Once the gate opens, the next poll enqueues it with a new lease.
    released = decide(held, TimerFired("t1"), later + 1, POLICY)
    assert isinstance(released, Accepted)
    assert _fold(held, released.events).lease == task.lease + 1


def test_a_claim_under_a_closed_gate_is_refused_and_takes_the_task_off_the_queue() -> None:
    task = _enqueued()
    claim = ClaimTask("c2", "t1", task.lease, "w1")
    paused = decide(task, claim, T0 + 1, POLICY, PAUSE_MAIL)
    assert isinstance(paused, Rejected) and paused.code is RejectCode.WRONG_STATE
    assert "gate 'mail' is pause" in paused.message
    assert _fold(task, paused.events).status is TaskStatus.NEW
    dropped = decide(task, claim, T0 + 1, POLICY, DROP_NEWS)
    assert isinstance(dropped, Rejected)
    assert _fold(task, dropped.events).status is TaskStatus.DROPPED
    # A stale claim is refused for its lease, and records nothing.
    stale = decide(task, ClaimTask("c3", "t1", task.lease - 1, "w1"), T0 + 1, POLICY, PAUSE_MAIL)
    assert isinstance(stale, Rejected) and stale.code is RejectCode.STALE_LEASE
    assert stale.events == ()


def test_a_task_already_running_finishes_normally_under_a_gate() -> None:
    task = _enqueued()
    for item in (
        ClaimTask("c2", "t1", task.lease, "w1"),
        Heartbeat("c3", "t1", task.lease, "w1"),
        SetResult("c4", "t1", task.lease, "w1", Outcome.SUCCESS, None, b"done"),
    ):
        decision = decide(
            task, item, T0 + 2, POLICY, None if isinstance(item, ClaimTask) else DROP_NEWS
        )
        assert isinstance(decision, Accepted) and decision.events, decision
        task = _fold(task, decision.events)
    assert task.status is TaskStatus.SUCCESS


# -- the store consumer ------------------------------------------------------------------


@dataclass
class Partition:
    """One partition's core on the in-memory store, committing each batch."""

    max_enqueued: int = 100
    gates: dict[GateKey, Gate] = field(default_factory=dict)
    store: MemoryTaskStore = field(default_factory=MemoryTaskStore)
    offset: int = 0

    def __post_init__(self) -> None:
        self.core = PartitionCore(
            0,
            self.store,
            {"mail": POLICY}.get,
            Topics("atf"),
            Limits(max_enqueued=self.max_enqueued),
            gates=lambda name, collection: covering(self.gates, name, collection),
        )

    def schedule(self, now: int, *specs: tuple[str, str, int]) -> list[str]:
        """(task_id, collection, priority) tasks due at once; returns the ids enqueued."""
        records = []
        for task_id, collection, priority in specs:
            command = ScheduleTask(f"c-{task_id}", task_id, "mail", collection, priority, b"", now)
            records.append(
                RawCommand(self.offset, task_id.encode(), encode_command(command, None, now))
            )
            self.offset += 1
        batch = new_batch(0, now)
        self.core.handle(batch, records)
        return self._commit(batch)

    def poll(self, now: int) -> list[str]:
        batch = new_batch(0, now)
        self.core.fire_due(batch)
        return self._commit(batch)

    def _commit(self, batch: object) -> list[str]:
        self.store.commit(batch.tasks.values(), None)  # type: ignore[attr-defined]
        return [decode_work(out.value).task_id for out in batch.work]  # type: ignore[attr-defined]

    def status(self, task_id: str) -> TaskStatus:
        task = self.store.get(task_id)
        assert task is not None
        return task.status


def test_a_paused_collection_holds_its_tasks_and_the_others_run() -> None:
    p = Partition(gates={("mail", "news"): Gate("mail", "news", GateAction.PAUSE)})
    enqueued = p.schedule(T0, ("n1", "news", 0), ("r1", "reset", 0), ("n2", "news", 2))
    assert enqueued == ["r1"]
    for step in range(1, 4):
        assert p.poll(T0 + step * 1_000) == []
    assert p.status("n1") is TaskStatus.NEW and p.status("n2") is TaskStatus.NEW
    # Resume: the next poll releases them, higher priority first.
    p.gates[("mail", "news")] = Gate("mail", "news", GateAction.OPEN)
    assert p.poll(T0 + 5_000) == ["n2", "n1"]


def test_resume_releases_no_more_than_the_flow_control_credit() -> None:
    p = Partition(max_enqueued=3, gates={("mail", None): PAUSE_MAIL})
    p.schedule(T0, *((f"t{i:02}", "news", 0) for i in range(10)))
    assert p.poll(T0 + 1) == []
    p.gates[("mail", None)] = Gate("mail", None, GateAction.OPEN)
    assert p.poll(T0 + 2) == ["t00", "t01", "t02"]
    assert p.poll(T0 + 3) == []  # the queue holds its 3 until they are claimed


def test_a_drop_gate_ends_every_due_task_whatever_the_credit() -> None:
    p = Partition(max_enqueued=2, gates={("mail", "news"): DROP_NEWS})
    enqueued = p.schedule(T0, *((f"n{i}", "news", 0) for i in range(5)), ("r1", "reset", 0))
    assert enqueued == ["r1"]
    p.poll(T0 + 1)
    assert [p.status(f"n{i}") for i in range(5)] == [TaskStatus.DROPPED] * 5
    assert p.status("r1") is TaskStatus.ENQUEUED


def test_lambdas_at_the_same_priority_take_turns_at_a_short_budget() -> None:
    """Not a gate, but the same scan: no lambda is always first in line."""
    policies = {name: LambdaPolicy(name=name, enqueue_timeout_ms=60_000) for name in ("a", "b")}
    store = MemoryTaskStore()
    core = PartitionCore(0, store, policies.get, Topics("atf"), Limits(max_timers=1))
    records = [
        RawCommand(
            n,
            task_id.encode(),
            encode_command(
                ScheduleTask(f"c{n}", task_id, task_id[0], "x", 0, b"", T0 + 10), None, T0
            ),
        )
        for n, task_id in enumerate(["a1", "a2", "b1", "b2"])
    ]
    batch = new_batch(0, T0)
    core.handle(batch, records)
    store.commit(batch.tasks.values(), None)
    fired = []
    for step in range(4):
        batch = new_batch(0, T0 + 10 + step)
        core.fire_due(batch)
        store.commit(batch.tasks.values(), None)
        fired += [decode_work(out.value).task_id for out in batch.work]
    assert sorted(fired) == ["a1", "a2", "b1", "b2"]
    assert {fired[0][0], fired[1][0]} == {"a", "b"}, fired
