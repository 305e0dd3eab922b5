"""Task chains: the definition, its checks, its status, and the partition core
scheduling children as their parents end (on the in-memory store)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atf_es.events import LambdaPolicy, ScheduleTask, SetResult, TaskStatus
from atf_es.events.chains import (
    BLOCKED,
    MAX_CHAIN_BYTES,
    PENDING,
    ChainError,
    ChainLink,
    ChainState,
    NodeSpec,
    OnFailure,
    build_chain,
    chain_status,
    link_problem,
    root_task_id,
)
from atf_es.events.codec import (
    decode_command,
    decode_poison,
    decode_task,
    decode_work,
    encode_command,
    encode_task,
)
from atf_es.events.commands import ClaimTask, Outcome
from atf_es.events.placement import partition_of
from atf_es.projections.store import MemoryTaskStore
from atf_es.services.partition import Batch, PartitionCore, RawCommand, new_batch
from atf_es.topics import Topics

PARTITIONS = 8
T0 = 1_800_000_000_000
POLICY = LambdaPolicy("step", max_attempts=1)


def three_levels(on_failure: OnFailure = OnFailure.STOP):
    return build_chain(
        "etl",
        [
            NodeSpec("load", "step", payload=b"3", parents=("extract",)),
            NodeSpec("extract", "step", payload=b"1"),
            NodeSpec("transform", "step", payload=b"2", parents=("extract",)),
            NodeSpec("report", "step", payload=b"4", parents=("load", "transform")),
        ],
        on_failure,
        PARTITIONS,
    )


# -- the definition ------------------------------------------------------------


def test_nodes_are_put_in_dependency_order_on_the_root_partition() -> None:
    chain = three_levels()
    assert [n.name for n in chain.nodes] == ["extract", "load", "transform", "report"]
    assert chain.root.task_id == root_task_id("etl") == "chain:etl"
    home = partition_of("chain:etl", PARTITIONS)
    assert {partition_of(n.task_id, PARTITIONS) for n in chain.nodes} == {home}
    assert all(n.task_id.startswith("chain:etl") for n in chain.nodes)
    link = ChainLink(chain, "report")
    assert link.root_id == "chain:etl"
    assert link.parent_ids == (chain.node("load").task_id, chain.node("transform").task_id)


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ([], "at least one node"),
        ([NodeSpec("a", "step"), NodeSpec("a", "step")], "used twice"),
        ([NodeSpec("a", "step", parents=("zzz",))], "unknown node 'zzz'"),
        ([NodeSpec("a", "step", parents=("a",))], "depends on itself"),
        (
            [NodeSpec("a", "step", parents=("b",)), NodeSpec("b", "step", parents=("a",))],
            "cycle",
        ),
        ([NodeSpec("a b", "step")], "name 'a b'"),
        ([NodeSpec("a", "no such!")], "lambda_name"),
        ([NodeSpec("a", "step", delay_ms=-1)], "delay_ms"),
        ([NodeSpec("a", "step", payload=b"x" * (MAX_CHAIN_BYTES + 1))], "at most"),
        ([NodeSpec(f"n{i}", "step") for i in range(101)], "at most 100 nodes"),
    ],
)
def test_a_bad_chain_is_refused_with_the_reason(nodes: list[NodeSpec], message: str) -> None:
    with pytest.raises(ChainError, match=message):
        build_chain("c", nodes, OnFailure.STOP, PARTITIONS)


@given(
    st.lists(st.lists(st.integers(0, 7), max_size=3), min_size=1, max_size=8),
)
@settings(max_examples=200, deadline=None)
def test_any_acyclic_graph_is_ordered_parents_first(parent_picks: list[list[int]]) -> None:
    # Node i may only depend on nodes before it, so the graph is acyclic;
    # the nodes are given in reverse so that the order has to be computed.
    specs = [
        NodeSpec(f"n{i}", "step", parents=tuple(sorted({f"n{p}" for p in picks if p < i})))
        for i, picks in enumerate(parent_picks)
    ]
    chain = build_chain("g", list(reversed(specs)), OnFailure.STOP, PARTITIONS)
    seen: set[str] = set()
    for node in chain.nodes:
        assert seen.issuperset(node.parents)
        seen.add(node.name)
    assert chain.root.parents == ()
    assert len({n.task_id for n in chain.nodes}) == len(chain.nodes)


def test_a_schedule_that_is_not_its_node_is_refused() -> None:
    chain = three_levels()
    root = chain.root
    good = ScheduleTask(
        "c", root.task_id, "step", "default", 0, b"1", T0, None, ChainLink(chain, "extract")
    )
    assert link_problem(good.chain, good) is None  # type: ignore[arg-type]
    for bad in (
        replace(good, payload=b"other"),
        replace(good, task_id="chain:elsewhere"),
        replace(good, chain=ChainLink(chain, "nope")),
        replace(good, chain=ChainLink(replace(chain, nodes=chain.nodes[::-1]), "extract")),
    ):
        assert link_problem(bad.chain, bad) is not None  # type: ignore[arg-type]


def test_a_chain_survives_the_wire() -> None:
    chain = three_levels(OnFailure.CONTINUE)
    link = ChainLink(chain, "load")
    node = chain.node("load")
    command = ScheduleTask("c", node.task_id, "step", "default", 0, b"3", T0, None, link)
    assert decode_command(encode_command(command, None, T0)).command == command
    core = Owner()
    core.start(chain)
    task = core.store.get(chain.root.task_id)
    assert task is not None and task.chain is not None
    assert decode_task(encode_task(task)) == task


# -- the status of a chain -------------------------------------------------------


def test_status_names_where_a_stopped_chain_failed_and_what_will_not_run() -> None:
    owner = Owner()
    chain = owner.start(three_levels())
    owner.run("extract", Outcome.SUCCESS)
    owner.run("transform", Outcome.FATAL, error="bad row 17")
    status = owner.status(chain)
    assert status.state is ChainState.RUNNING  # load still runs
    owner.run("load", Outcome.SUCCESS)
    status = owner.status(chain)
    states = {n.name: n.state for n in status.nodes}
    assert states == {
        "extract": "success",
        "load": "success",
        "transform": "fatal_failure",
        "report": BLOCKED,
    }
    assert status.state is ChainState.FAILED
    assert [n.name for n in status.failed] == ["transform"]
    assert status.nodes[3].blocked_by == "transform"
    assert "'transform' ended fatal_failure (bad row 17)" in status.summary
    assert "'report' will not run" in status.summary


# -- the partition core --------------------------------------------------------


class Owner:
    """The owner of the chain's partition on the in-memory store."""

    def __init__(self) -> None:
        self.store = MemoryTaskStore()
        self.partition = partition_of("chain:etl", PARTITIONS)
        self.core = PartitionCore(
            self.partition,
            self.store,
            {"step": POLICY}.get,
            Topics("atf"),
            partitions=PARTITIONS,
        )
        self.offset = 0
        self.now = T0
        self.chain = three_levels()

    def start(self, chain, *, run_at: int | None = None):  # type: ignore[no-untyped-def]
        self.chain = chain
        root = chain.root
        command = ScheduleTask(
            "schedule-root",
            root.task_id,
            root.lambda_name,
            root.collection,
            root.priority,
            root.payload,
            self.now if run_at is None else run_at,
            None,
            ChainLink(chain, root.name),
        )
        self.commands(command)
        return chain

    def commands(self, *commands: object) -> Batch:
        batch = new_batch(self.partition, self.now)
        records = []
        for command in commands:
            records.append(RawCommand(self.offset, b"k", encode_command(command, None, self.now)))  # type: ignore[arg-type]
            self.offset += 1
        self.core.handle(batch, records)
        self.store.commit(batch.tasks.values(), None)
        self.last = batch
        return batch

    def poll(self) -> Batch:
        batch = new_batch(self.partition, self.now)
        self.core.fire_due(batch)
        self.store.commit(batch.tasks.values(), None)
        return batch

    def task(self, name: str):  # type: ignore[no-untyped-def]
        return self.store.get(self.chain.node(name).task_id)

    def run(self, name: str, outcome: Outcome, *, error: str | None = None) -> Batch:
        self.now += 10
        task = self.task(name)
        assert task is not None and task.status is TaskStatus.ENQUEUED, (name, task)
        self.commands(ClaimTask(f"claim-{name}", task.task_id, task.lease, "w"))
        return self.commands(
            SetResult(f"result-{name}", task.task_id, task.lease, "w", outcome, error)
        )

    def status(self, chain):  # type: ignore[no-untyped-def]
        return chain_status(chain, {n.task_id: self.store.get(n.task_id) for n in chain.nodes})


def test_a_three_level_chain_schedules_each_level_when_the_last_parent_succeeds() -> None:
    owner = Owner()
    chain = owner.start(three_levels())
    assert owner.task("extract").status is TaskStatus.ENQUEUED
    assert [owner.task(n) for n in ("load", "transform", "report")] == [None, None, None]
    batch = owner.run("extract", Outcome.SUCCESS)
    # Both children go out in the transaction that records their parent's success.
    enqueued = {decode_work(out.value).task_id for out in batch.work}
    assert enqueued == {chain.node("load").task_id, chain.node("transform").task_id}
    owner.run("load", Outcome.SUCCESS)
    assert owner.task("report") is None  # transform is not done yet
    owner.run("transform", Outcome.SUCCESS)
    report = owner.task("report")
    assert report is not None and report.status is TaskStatus.ENQUEUED
    assert report.chain == ChainLink(chain, "report")
    assert report.payload == b"4"
    owner.run("report", Outcome.SUCCESS)
    assert owner.status(chain).state is ChainState.SUCCEEDED
    # Each scheduled once: its first event is its only TaskScheduled.
    assert all(
        owner.task(n.name).seq == 4 for n in chain.nodes
    )  # scheduled, enqueued, claimed, succeeded


def test_a_failure_stops_the_dependents_and_a_successful_redrive_resumes_them() -> None:
    from atf_es.events.commands import RedriveTask

    owner = Owner()
    chain = owner.start(three_levels())
    owner.run("extract", Outcome.SUCCESS)
    owner.run("load", Outcome.RETRIABLE, error="timeout")  # one attempt: dead-lettered
    owner.run("transform", Outcome.SUCCESS)
    assert owner.task("load").status is TaskStatus.DEAD_LETTERED
    assert owner.task("report") is None
    assert owner.status(chain).state is ChainState.FAILED
    owner.commands(RedriveTask("redrive", chain.node("load").task_id, "ops", "fixed"))
    owner.now += 10
    owner.poll()
    owner.run("load", Outcome.SUCCESS)
    assert owner.task("report").status is TaskStatus.ENQUEUED


def test_with_continue_dependents_run_after_a_failure() -> None:
    owner = Owner()
    chain = owner.start(three_levels(OnFailure.CONTINUE))
    owner.run("extract", Outcome.FATAL, error="boom")
    owner.run("load", Outcome.SUCCESS)
    owner.run("transform", Outcome.SUCCESS)
    owner.run("report", Outcome.SUCCESS)
    status = owner.status(chain)
    assert status.state is ChainState.FAILED
    assert status.summary == "finished with failures: 'extract' ended fatal_failure (boom)"


def test_other_roots_start_with_the_chain_and_delays_count_from_the_parents() -> None:
    owner = Owner()
    chain = build_chain(
        "etl",
        [
            NodeSpec("a", "step"),
            NodeSpec("b", "step", delay_ms=5_000),
            NodeSpec("c", "step", parents=("a",), delay_ms=1_000),
        ],
        OnFailure.STOP,
        PARTITIONS,
    )
    owner.start(chain, run_at=T0 + 60_000)
    assert owner.task("a").scheduled_at == T0 + 60_000
    assert owner.task("b").scheduled_at == T0 + 65_000
    assert owner.task("b").status is TaskStatus.NEW
    owner.now = T0 + 60_000
    owner.poll()
    owner.run("a", Outcome.SUCCESS)
    assert owner.task("c").scheduled_at == owner.now + 1_000


def test_scheduling_the_root_twice_schedules_nothing_more() -> None:
    owner = Owner()
    chain = owner.start(three_levels())
    owner.start(chain)
    assert owner.task("extract").seq == 2
    assert owner.status(chain).nodes[1].state == PENDING


def test_a_chain_placed_for_another_partition_count_is_refused() -> None:
    owner = Owner()
    elsewhere = build_chain(
        "etl",
        [NodeSpec("a", "step"), *(NodeSpec(f"n{i}", "step") for i in range(20))],
        OnFailure.STOP,
        5,
    )
    owner.start(elsewhere)
    assert owner.store.get(elsewhere.root.task_id) is None
    (poison,) = owner.last.poison
    reason = decode_poison(poison.value).reason
    assert "another partition count than this deployment's 8" in reason
