"""A hypothesis state machine that drives the pure lifecycle like a cluster would.

Commands and timer firings arrive in random order, with random (often stale)
lease tokens, from several workers, while a clock moves forward. After every
step the machine checks the lifecycle's invariants. The functions under test
are class attributes so that tests can swap in deliberately broken versions
and show that the checks catch them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from atf_es.events import (
    Accepted,
    CancelTask,
    ClaimTask,
    Decision,
    DropTask,
    Event,
    Gate,
    GateAction,
    Heartbeat,
    LambdaPolicy,
    Outcome,
    RedriveTask,
    Rejected,
    ScheduleTask,
    SetResult,
    Task,
    TaskClaimed,
    TaskDropped,
    TaskEnqueued,
    TaskHeld,
    TaskStarted,
    TaskStatus,
    TimerFired,
    TimerReason,
    covering,
    decide,
    evolve,
)
from atf_es.events.gates import GateKey
from atf_es.events.lifecycle import Input

POLICY = LambdaPolicy(
    name="send_email",
    priorities=3,
    max_attempts=2,
    backoff_base_ms=100,
    backoff_max_ms=2_000,
    enqueue_timeout_ms=5_000,
    claim_timeout_ms=2_000,
    heartbeat_interval_ms=500,
    heartbeat_timeout_ms=3_000,
    heartbeat_margin_ms=1_000,
)
WORKERS = ("w1", "w2", "w3")
TASK_IDS = ("t1", "t2")

DecideFn = Callable[[Task | None, Input, int, LambdaPolicy | None, Gate | None], Decision]
EvolveFn = Callable[[Task | None, Event], Task]


@dataclass
class Ledger:
    """What an outside observer records while the machine runs."""

    events: dict[str, list[Event]] = field(default_factory=dict)
    claims: dict[tuple[str, int], set[str]] = field(default_factory=dict)
    last_heartbeat: dict[tuple[str, int], int] = field(default_factory=dict)


def expected_trigger(task: Task, policy: LambdaPolicy, last: Event | None = None) -> int | None:
    """The seed's next-trigger table, restated independently of the lifecycle.

    ``last`` is the task's latest event: a task held by a gate is due from then.
    """
    match task.status:
        case TaskStatus.NEW if isinstance(last, TaskHeld):
            return last.at
        case TaskStatus.NEW:
            return task.scheduled_at
        case TaskStatus.ENQUEUED:
            assert task.enqueued_at is not None
            return task.enqueued_at + policy.enqueue_timeout_ms
        case TaskStatus.CLAIMED:
            assert task.claimed_at is not None
            return task.claimed_at + policy.claim_timeout_ms
        case TaskStatus.PROCESSING:
            assert task.heartbeat_at is not None
            return task.heartbeat_at + policy.heartbeat_timeout_ms
        case TaskStatus.RETRIABLE_FAILURE:
            return task.next_trigger_at  # backoff: checked against its bounds below
        case _:
            return None


class LifecycleMachine(RuleBasedStateMachine):
    decide_fn: DecideFn = staticmethod(decide)  # type: ignore[assignment]
    evolve_fn: EvolveFn = staticmethod(evolve)  # type: ignore[assignment]
    policy: LambdaPolicy = POLICY

    def __init__(self) -> None:
        super().__init__()
        self.now = 1_000_000
        self.tasks: dict[str, Task] = {}
        self.index: dict[str, int] = {}  # the next-trigger index, maintained like a projection
        self.ledger = Ledger()
        self.counter = 0
        self.gates: dict[GateKey, Gate] = {}

    # -- plumbing ---------------------------------------------------------

    def _command_id(self) -> str:
        self.counter += 1
        return f"c{self.counter}"

    def apply(self, task_id: str, item: Input) -> Decision:
        before = self.tasks.get(task_id)
        gate = None if before is None else covering(self.gates, "send_email", before.collection)
        decision = self.decide_fn(before, item, self.now, self.policy, gate)
        if isinstance(decision, Rejected) and not decision.events:
            return decision
        task = before
        for event in decision.events:
            self._check_event(task, item, event)
            self._check_gate(gate, item, event)
            task = self.evolve_fn(task, event)
            self.ledger.events.setdefault(task_id, []).append(event)
        if task is not None:
            self.tasks[task_id] = task
            if task.next_trigger_at is None:
                self.index.pop(task_id, None)
            else:
                self.index[task_id] = task.next_trigger_at
        return decision

    def _check_event(self, before: Task | None, item: Input, event: Event) -> None:
        # Every accepted claim, heartbeat and result carries the current lease.
        if isinstance(item, ClaimTask | Heartbeat | SetResult):
            assert before is not None
            assert item.lease == before.lease, (
                f"{type(item).__name__} with lease {item.lease} accepted; current is {before.lease}"
            )
        if before is not None:
            assert event.seq == before.seq + 1, "events must number a task's history without gaps"
            assert not before.status.terminal or before.status is TaskStatus.DEAD_LETTERED, (
                f"terminal {before.status} task produced {type(event).__name__}"
            )
        if isinstance(event, TaskClaimed):
            holders = self.ledger.claims.setdefault((event.task_id, event.lease), set())
            holders.add(event.worker)
            assert len(holders) == 1, f"two live claims on one lease: {holders}"
        if isinstance(event, TaskEnqueued):
            assert before is None or event.lease > before.lease, "re-enqueue must bump the lease"
            if event.cause.name == TimerReason.HEARTBEAT_TIMEOUT and before is not None:
                # Never concurrently: the executor that stopped heartbeating has
                # killed its work (3 failed beats) before this can happen.
                last = self.ledger.last_heartbeat[(before.task_id, before.lease)]
                floor = 3 * self.policy.heartbeat_interval_ms + self.policy.heartbeat_margin_ms
                assert event.at - last > floor, "re-enqueued while the old executor may still run"

    def _check_gate(self, gate: Gate | None, item: Input, event: Event) -> None:
        """Nothing covered by a closed gate is handed out; what the gate does names it."""
        if gate is not None:
            assert not isinstance(event, TaskClaimed | TaskEnqueued), (
                f"{type(event).__name__} under the {gate.action} gate {gate.name}"
            )
        if isinstance(event, TaskHeld):
            assert gate is not None and gate.action is GateAction.PAUSE
            assert event.gate == gate.name
        if isinstance(event, TaskDropped) and isinstance(item, TimerFired):
            assert gate is not None and gate.action is GateAction.DROP
            assert event.gate == gate.name

    # -- rules ------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        self.now = 1_000_000

    @rule(
        task_id=st.sampled_from(TASK_IDS),
        delay=st.integers(min_value=-1_000, max_value=10_000),
        priority=st.integers(min_value=0, max_value=3),
        payload=st.binary(max_size=8),
    )
    def schedule(self, task_id: str, delay: int, priority: int, payload: bytes) -> None:
        self.apply(
            task_id,
            ScheduleTask(
                self._command_id(),
                task_id,
                "send_email",
                "default",
                priority,
                payload,
                max(0, self.now + delay),
            ),
        )

    @rule(
        ms=st.one_of(
            st.integers(min_value=1, max_value=4_000),
            # Jumps just past each timeout, which random small steps rarely reach.
            st.sampled_from([2_001, 3_001, 5_001, 10_000]),
        )
    )
    def advance_clock(self, ms: int) -> None:
        self.now += ms

    @rule(task_id=st.sampled_from(TASK_IDS))
    def fire_timer(self, task_id: str) -> None:
        self.apply(task_id, TimerFired(task_id))

    @precondition(lambda self: bool(self.index))
    @rule()
    def fire_all_due(self) -> None:
        """What the store consumer does on each poll."""
        for task_id, due in sorted(self.index.items(), key=lambda kv: (kv[1], kv[0])):
            if due <= self.now:
                self.apply(task_id, TimerFired(task_id))

    @precondition(lambda self: bool(self.index))
    @rule()
    def sleep_until_next_trigger(self) -> None:
        """Idle until the earliest trigger, then poll: the way time passes in a quiet system."""
        self.now = max(self.now, min(self.index.values()))
        self.fire_all_due()

    @rule(
        task_id=st.sampled_from(TASK_IDS),
        worker=st.sampled_from(WORKERS),
        lease_delta=st.sampled_from([0, 0, 0, -1, 1]),
        start=st.booleans(),
    )
    def claim(self, task_id: str, worker: str, lease_delta: int, start: bool) -> None:
        lease = self._lease(task_id) + lease_delta
        decision = self.apply(task_id, ClaimTask(self._command_id(), task_id, lease, worker, start))
        self._note_start(decision, task_id, lease)

    def _note_start(self, decision: Decision, task_id: str, lease: int) -> None:
        """A claim that started the task is the executor's first heartbeat."""
        if isinstance(decision, Accepted) and any(
            isinstance(event, TaskStarted) for event in decision.events
        ):
            self.ledger.last_heartbeat[(task_id, lease)] = self.now

    @rule(
        task_id=st.sampled_from(TASK_IDS),
        worker=st.sampled_from(WORKERS),
        lease_delta=st.sampled_from([0, 0, 0, -1]),
    )
    def heartbeat(self, task_id: str, worker: str, lease_delta: int) -> None:
        lease = self._lease(task_id) + lease_delta
        decision = self.apply(task_id, Heartbeat(self._command_id(), task_id, lease, worker))
        if isinstance(decision, Accepted) and decision.events:
            self.ledger.last_heartbeat[(task_id, lease)] = self.now

    @rule(
        task_id=st.sampled_from(TASK_IDS),
        worker=st.sampled_from(WORKERS),
        outcome=st.sampled_from(list(Outcome)),
        lease_delta=st.sampled_from([0, 0, 0, -1]),
    )
    def set_result(self, task_id: str, worker: str, outcome: Outcome, lease_delta: int) -> None:
        lease = self._lease(task_id) + lease_delta
        error = None if outcome is Outcome.SUCCESS else "boom"
        self.apply(
            task_id,
            SetResult(self._command_id(), task_id, lease, worker, outcome, error, b"ok"),
        )

    @rule(
        task_id=st.sampled_from(TASK_IDS),
        worker=st.sampled_from(WORKERS),
        ending=st.sampled_from(["success", "retriable", "retriable", "fatal", "crash", "stall"]),
        beats=st.integers(min_value=0, max_value=2),
        zombie=st.booleans(),
        start=st.booleans(),
    )
    def run_attempt(
        self, *, task_id: str, worker: str, ending: str, beats: int, zombie: bool, start: bool
    ) -> None:
        """A whole attempt by one executor, as the happy path (or a crash) would run it;
        ``start``: its claim starts the task (the executor asks NextWork so)."""
        lease = self._lease(task_id)
        command = ClaimTask(self._command_id(), task_id, lease, worker, start)
        claimed = self.apply(task_id, command)
        if not (isinstance(claimed, Accepted) and claimed.events):
            return
        self._note_start(claimed, task_id, lease)
        if ending == "stall":
            return  # the controller (or, started, the executor) dies holding the claim
        if start and ending == "success" and beats == 2:
            # The claim's reply was lost: the same worker claims again, and holds it.
            again = self.apply(task_id, replace(command, command_id=self._command_id()))
            assert isinstance(again, Accepted) and not again.events, again
        if not start:
            started = self.apply(task_id, Heartbeat(self._command_id(), task_id, lease, worker))
            if isinstance(started, Accepted) and started.events:
                self.ledger.last_heartbeat[(task_id, lease)] = self.now
        if zombie:
            # An executor still holding the previous lease beats and reports.
            old = lease - 1
            self.apply(task_id, Heartbeat(self._command_id(), task_id, old, "zombie"))
            self.apply(
                task_id,
                SetResult(self._command_id(), task_id, old, "zombie", Outcome.SUCCESS),
            )
        for _ in range(beats):
            self.now += self.policy.heartbeat_interval_ms
            beat = self.apply(task_id, Heartbeat(self._command_id(), task_id, lease, worker))
            if isinstance(beat, Accepted) and beat.events:
                self.ledger.last_heartbeat[(task_id, lease)] = self.now
        if ending == "crash":
            return  # the executor dies mid-task: only the heartbeat timeout notices
        outcome = Outcome(ending)
        error = None if outcome is Outcome.SUCCESS else "boom"
        self.apply(task_id, SetResult(self._command_id(), task_id, lease, worker, outcome, error))

    @rule(
        task_id=st.sampled_from(TASK_IDS),
        action=st.sampled_from(["cancel", "drop", "redrive"]),
        odds=st.integers(min_value=0, max_value=5),
    )
    def interfere(self, task_id: str, action: str, odds: int) -> None:
        """Admin actions, rarer than work so that tasks live long enough to fail."""
        if action == "redrive":
            self.apply(task_id, RedriveTask(self._command_id(), task_id, "tester", "fixed"))
        elif odds == 0 and action == "cancel":
            self.apply(task_id, CancelTask(self._command_id(), task_id, "tester", "test"))
        elif odds == 0:
            self.apply(task_id, DropTask(self._command_id(), task_id, "send_email/default"))

    @rule(
        collection=st.sampled_from([None, "default", "other"]),
        action=st.sampled_from(list(GateAction)),
        odds=st.integers(min_value=0, max_value=3),
    )
    def set_gate(self, collection: str | None, action: GateAction, odds: int) -> None:
        """An operator pauses, drops or resumes the lambda or a collection; closing
        is rarer than opening, so that tasks still live long enough to fail."""
        if action is GateAction.OPEN or odds == 0:
            self.gates[("send_email", collection)] = Gate("send_email", collection, action)

    @precondition(lambda self: any(t.status.terminal for t in self.tasks.values()))
    @rule(data=st.data())
    def poke_finished(self, data: st.DataObject) -> None:
        """Every kind of command at a finished task: none may change it (but a redrive)."""
        finished = sorted(t for t, task in self.tasks.items() if task.status.terminal)
        task_id = data.draw(st.sampled_from(finished))
        lease = self._lease(task_id)
        worker = data.draw(st.sampled_from(WORKERS))
        command = data.draw(
            st.sampled_from(
                [
                    CancelTask(self._command_id(), task_id, "tester", "late"),
                    DropTask(self._command_id(), task_id, "send_email"),
                    ClaimTask(self._command_id(), task_id, lease, worker),
                    Heartbeat(self._command_id(), task_id, lease, worker),
                    SetResult(self._command_id(), task_id, lease, worker, Outcome.SUCCESS),
                    SetResult(self._command_id(), task_id, lease, worker, Outcome.FATAL, "x"),
                ]
            )
        )
        self.apply(task_id, command)
        self.apply(task_id, TimerFired(task_id))

    def _lease(self, task_id: str) -> int:
        task = self.tasks.get(task_id)
        return task.lease if task is not None else 0

    # -- invariants -------------------------------------------------------

    @invariant()
    def one_trigger_per_live_task(self) -> None:
        for task_id, task in self.tasks.items():
            if task.status.live:
                assert task_id in self.index, f"live {task.status} task {task_id} has no trigger"
                assert self.index[task_id] == task.next_trigger_at
                expected = expected_trigger(task, self.policy, self.ledger.events[task_id][-1])
                assert task.next_trigger_at == expected, (
                    f"{task.status} task {task_id} triggers at {task.next_trigger_at}, "
                    f"the table says {expected}"
                )
            else:
                assert task_id not in self.index, f"{task.status} task {task_id} has a trigger"
                assert task.next_trigger_at is None

    @invariant()
    def retry_waits_out_its_backoff(self) -> None:
        for task in self.tasks.values():
            if task.status is TaskStatus.RETRIABLE_FAILURE:
                assert task.next_trigger_at is not None
                failed_at = self.ledger.events[task.task_id][-1].at
                wait = task.next_trigger_at - failed_at
                assert 0 < wait <= self.policy.backoff_max_ms

    @invariant()
    def replay_gives_the_same_state(self) -> None:
        for task_id, task in self.tasks.items():
            replayed: Task | None = None
            for event in self.ledger.events[task_id]:
                replayed = self.evolve_fn(replayed, event)
            assert replayed == task, f"replaying {task_id} gives a different state"
            again = replayed
            for event in self.ledger.events[task_id]:
                again = self.evolve_fn(again, event)
            assert again == task, "applying an event twice must change nothing"

    @invariant()
    def attempts_within_policy(self) -> None:
        for task in self.tasks.values():
            assert 0 <= task.attempts <= self.policy.max_attempts
            running = task.status in (TaskStatus.CLAIMED, TaskStatus.PROCESSING)
            assert (task.worker is not None) or not running
