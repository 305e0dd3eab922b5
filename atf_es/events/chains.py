"""Task chains: a small DAG of tasks scheduled in one call.

A chain is a list of nodes, each a task to schedule (lambda, collection,
priority, payload, a delay) and the names of the nodes it depends on. Every
node's task carries the whole chain (:class:`ChainLink`), so the processor
that records a node's end can schedule its children without reading
anything but the tasks themselves. Every node's task id is placed on the
partition of the chain's first task, the root, ``chain:<chain id>``
(:func:`chain_task_ids`): one processor owns the whole chain and schedules
a child in the same transaction that records its last parent's end.

When a child is scheduled depends on the chain's failure policy:

- ``stop`` (the default): when every parent succeeded. A parent that ends
  otherwise (failed fatally, dead-lettered, cancelled, dropped) blocks its
  descendants; if it is redriven and then succeeds they go ahead.
- ``continue``: when every parent has ended, however it ended.

The nodes after the root that have no parents are scheduled with the root.
Everything here is pure: the status of a chain (:func:`chain_status`) is a
function of its definition and its tasks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from atf_es.events.placement import id_on_partition, partition_of
from atf_es.events.policy import COLLECTION_NAME, LAMBDA_NAME
from atf_es.events.status import TaskStatus

if TYPE_CHECKING:
    from atf_es.events.task import Task

TASK_ID_PREFIX = "chain:"
"""Task ids of chain nodes, ``chain:<chain id>`` (the root) and
``chain:<chain id>/<node>[~N]``; reserved."""
CHAIN_ID = re.compile(r"[A-Za-z0-9_.-]{1,100}")
NODE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
MAX_NODES = 100
MAX_CHAIN_BYTES = 256 * 1_024
"""The most a chain's definition may hold (payloads and names): every event
of every node carries it, and must stay well inside one Kafka record."""


class ChainError(ValueError):
    """A chain definition that cannot be scheduled."""


class OnFailure(StrEnum):
    """What a node that ends without success does to its dependents."""

    STOP = "stop"
    """They are not scheduled (unless the node is redriven and succeeds)."""
    CONTINUE = "continue"
    """They are scheduled once all their parents ended, however."""


@dataclass(frozen=True, slots=True)
class ChainNode:
    name: str
    task_id: str
    lambda_name: str
    collection: str
    priority: int
    payload: bytes
    delay_ms: int = 0
    """From the moment the node may run (its parents done; the chain's start for
    a node without parents) to its scheduled time."""
    parents: tuple[str, ...] = ()
    """Names of the nodes it depends on."""


@dataclass(frozen=True, slots=True)
class Chain:
    chain_id: str
    on_failure: OnFailure
    nodes: tuple[ChainNode, ...]
    """In dependency order: every node after its parents; the first is the root."""

    @property
    def root(self) -> ChainNode:
        return self.nodes[0]

    def node(self, name: str) -> ChainNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def children(self, name: str) -> list[ChainNode]:
        return [node for node in self.nodes if name in node.parents]


@dataclass(frozen=True, slots=True)
class ChainLink:
    """What a node's task knows of its chain: the chain and which node it is."""

    chain: Chain
    node: str

    @property
    def root_id(self) -> str:
        return self.chain.root.task_id

    @property
    def parent_ids(self) -> tuple[str, ...]:
        parents = self.chain.node(self.node).parents
        return tuple(self.chain.node(name).task_id for name in parents)


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A node as a caller gives it, before its task id is chosen."""

    name: str
    lambda_name: str
    collection: str = "default"
    priority: int = 0
    payload: bytes = b""
    delay_ms: int = 0
    parents: tuple[str, ...] = ()


def root_task_id(chain_id: str) -> str:
    return f"{TASK_ID_PREFIX}{chain_id}"


def chain_task_ids(chain_id: str, names: Sequence[str], partitions: int) -> list[str]:
    """The task id of each node (the first is the root), all on the root's partition."""
    root = root_task_id(chain_id)
    home = partition_of(root, partitions)
    return [root] + [id_on_partition(f"{root}/{name}", home, partitions) for name in names[1:]]


def build_chain(
    chain_id: str, nodes: Sequence[NodeSpec], on_failure: OnFailure, partitions: int
) -> Chain:
    """Check ``nodes`` and order them, parents first (otherwise keeping the given
    order); raises ChainError naming every problem found."""
    if not CHAIN_ID.fullmatch(chain_id):
        raise ChainError(
            f"chain id {chain_id[:120]!r} must be 1-100 letters, digits, '_', '.' or '-'"
        )
    if not nodes:
        raise ChainError("a chain needs at least one node")
    if len(nodes) > MAX_NODES:
        raise ChainError(f"a chain has at most {MAX_NODES} nodes, got {len(nodes)}")
    problems: list[str] = []
    names = [node.name for node in nodes]
    known = set(names)
    seen: set[str] = set()
    for index, node in enumerate(nodes):
        where = f"nodes[{index}]"
        if not NODE_NAME.fullmatch(node.name):
            problems.append(
                f"{where}.name {node.name[:120]!r} must be 1-100 letters, digits, '_', '.' or '-'"
            )
        elif node.name in seen:
            problems.append(f"{where}.name {node.name!r} is used twice")
        seen.add(node.name)
        if not LAMBDA_NAME.fullmatch(node.lambda_name):
            problems.append(
                f"{where}.lambda_name {node.lambda_name[:120]!r} must be 1-100 letters, "
                "digits, '_' or '-'"
            )
        if not COLLECTION_NAME.fullmatch(node.collection):
            problems.append(
                f"{where}.collection {node.collection[:120]!r} must be 1-100 letters, "
                "digits, '_', '.' or '-'"
            )
        if node.delay_ms < 0:
            problems.append(f"{where}.delay_ms must not be negative, got {node.delay_ms}")
        for parent in node.parents:
            if parent not in known:
                problems.append(f"{where} ({node.name!r}) depends on unknown node {parent!r}")
            elif parent == node.name:
                problems.append(f"{where} ({node.name!r}) depends on itself")
        if len(set(node.parents)) != len(node.parents):
            problems.append(f"{where} ({node.name!r}) names a parent twice")
    if problems:
        raise ChainError("; ".join(problems))
    ordered = _dependency_order(nodes)
    size = chain_bytes(nodes)
    if size > MAX_CHAIN_BYTES:
        raise ChainError(
            f"the chain holds {size} bytes of payloads and names; a chain holds at most "
            f"{MAX_CHAIN_BYTES} (every event of every node carries it)"
        )
    ids = chain_task_ids(chain_id, [n.name for n in ordered], partitions)
    return Chain(
        chain_id,
        on_failure,
        tuple(
            ChainNode(
                n.name,
                task_id,
                n.lambda_name,
                n.collection,
                n.priority,
                n.payload,
                n.delay_ms,
                tuple(n.parents),
            )
            for n, task_id in zip(ordered, ids, strict=True)
        ),
    )


def _dependency_order(nodes: Sequence[NodeSpec]) -> list[NodeSpec]:
    """Kahn's algorithm, taking the earliest given node that is ready each time."""
    placed: set[str] = set()
    left = list(nodes)
    ordered: list[NodeSpec] = []
    while left:
        for index, node in enumerate(left):
            if placed.issuperset(node.parents):
                ordered.append(left.pop(index))
                placed.add(node.name)
                break
        else:
            cycle = ", ".join(repr(n.name) for n in left)
            raise ChainError(f"the nodes {cycle} depend on each other in a cycle")
    return ordered


class _Sized(Protocol):
    """A node as given or as stored: what counts towards the chain's size."""

    @property
    def name(self) -> str: ...
    @property
    def lambda_name(self) -> str: ...
    @property
    def collection(self) -> str: ...
    @property
    def payload(self) -> bytes: ...


def chain_bytes(nodes: Iterable[_Sized]) -> int:
    """What a chain's nodes weigh in every event that carries it: payloads and names."""
    return sum(len(n.payload) + len(n.name) + len(n.lambda_name) + len(n.collection) for n in nodes)


def link_problem(link: ChainLink, cmd: _Scheduling) -> str | None:
    """Why ``cmd`` (a ``ScheduleTask``) is not the task of node ``link.node``, if it is not."""
    chain = link.chain
    if not chain.nodes or len(chain.nodes) > MAX_NODES:
        return f"a chain has 1-{MAX_NODES} nodes, got {len(chain.nodes)}"
    size = chain_bytes(chain.nodes)
    if size > MAX_CHAIN_BYTES:
        return f"the chain holds {size} bytes of payloads and names; at most {MAX_CHAIN_BYTES}"
    earlier: set[str] = set()
    ids: set[str] = set()
    for index, each in enumerate(chain.nodes):
        if each.name in earlier or each.task_id in ids:
            return f"chain {chain.chain_id!r} names node {each.name!r} or its task twice"
        if not earlier.issuperset(each.parents):
            return (
                f"chain {chain.chain_id!r}: node {index} ({each.name!r}) depends on a node "
                "that does not come before it"
            )
        earlier.add(each.name)
        ids.add(each.task_id)
    try:
        node = chain.node(link.node)
    except KeyError:
        return f"chain {chain.chain_id!r} has no node {link.node!r}"
    mine = (node.task_id, node.lambda_name, node.collection, node.priority, node.payload)
    if mine != (cmd.task_id, cmd.lambda_name, cmd.collection, cmd.priority, cmd.payload):
        return f"the task is not the one node {link.node!r} of chain {chain.chain_id!r} defines"
    return None


class _Scheduling(Protocol):
    @property
    def task_id(self) -> str: ...
    @property
    def lambda_name(self) -> str: ...
    @property
    def collection(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def payload(self) -> bytes: ...


def check_placement(chain: Chain, partition: int, partitions: int) -> str | None:
    """Why the chain's tasks do not all live on ``partition``, if they do not."""
    stray = [n.task_id for n in chain.nodes if partition_of(n.task_id, partitions) != partition]
    if not stray:
        return None
    return (
        f"the task ids of chain {chain.chain_id!r} were chosen for another partition count "
        f"than this deployment's {partitions}: {', '.join(stray[:5])} "
        f"{'are' if len(stray) > 1 else 'is'} not on partition {partition}"
    )


def ready(node: ChainNode, chain: Chain, tasks: Mapping[str, Task | None]) -> bool:
    """Whether ``node`` may be scheduled, given its parents' tasks (by task id)."""
    for name in node.parents:
        parent = tasks.get(chain.node(name).task_id)
        if parent is None or parent.status.live:
            return False
        if chain.on_failure is OnFailure.STOP and parent.status is not TaskStatus.SUCCESS:
            return False
    return True


# -- the status of a whole chain ------------------------------------------------


class ChainState(StrEnum):
    RUNNING = "running"
    """Some node is live, or will be scheduled."""
    SUCCEEDED = "succeeded"
    """Every node succeeded."""
    FAILED = "failed"
    """Nothing more will run (unless a node is redriven) and some node did not succeed."""


PENDING = "pending"
"""A node not scheduled yet: it waits for its parents."""
BLOCKED = "blocked"
"""A node that will not be scheduled: an ancestor ended without success (``stop``)."""


@dataclass(frozen=True, slots=True)
class NodeStatus:
    name: str
    task_id: str
    state: str
    """The task's status, or ``pending`` or ``blocked`` before it is a task."""
    parents: tuple[str, ...]
    task: Task | None
    blocked_by: str | None = None
    """For a blocked node: the node whose end blocks it."""


@dataclass(frozen=True, slots=True)
class ChainStatus:
    chain_id: str
    on_failure: OnFailure
    state: ChainState
    nodes: tuple[NodeStatus, ...]
    summary: str
    """Where the chain is and, if it failed, where and why, in one sentence."""

    @property
    def failed(self) -> list[NodeStatus]:
        return [
            n
            for n in self.nodes
            if n.task is not None
            and n.task.status.terminal
            and n.task.status is not TaskStatus.SUCCESS
        ]


def chain_status(chain: Chain, tasks: Mapping[str, Task | None]) -> ChainStatus:
    """The state of ``chain`` given what is known of its tasks (by task id)."""
    nodes: list[NodeStatus] = []
    by_name: dict[str, NodeStatus] = {}
    for node in chain.nodes:
        task = tasks.get(node.task_id)
        blocked_by = None
        if task is not None:
            state = task.status.value
        else:
            state = PENDING
            if chain.on_failure is OnFailure.STOP:
                for name in node.parents:
                    parent = by_name[name]
                    if parent.state == BLOCKED:
                        blocked_by = parent.blocked_by
                    elif parent.task is not None and (
                        parent.task.status.terminal and parent.task.status is not TaskStatus.SUCCESS
                    ):
                        blocked_by = name
                    if blocked_by is not None:
                        state = BLOCKED
                        break
        status = NodeStatus(node.name, node.task_id, state, node.parents, task, blocked_by)
        nodes.append(status)
        by_name[node.name] = status
    result = ChainStatus(chain.chain_id, chain.on_failure, ChainState.RUNNING, tuple(nodes), "")
    failed = result.failed
    live = [n for n in nodes if n.state == PENDING or (n.task is not None and n.task.status.live)]
    succeeded = sum(1 for n in nodes if n.state == TaskStatus.SUCCESS.value)
    if succeeded == len(nodes):
        state, summary = ChainState.SUCCEEDED, f"all {len(nodes)} tasks succeeded"
    else:
        where = "; ".join(
            f"{n.name!r} ended {n.state}"
            + (f" ({n.task.last_error})" if n.task is not None and n.task.last_error else "")
            for n in failed
        )
        blocked = [n.name for n in nodes if n.state == BLOCKED]
        if blocked:
            where += f"; {', '.join(repr(b) for b in blocked)} will not run"
        if live:
            state = ChainState.RUNNING
            summary = f"{succeeded} of {len(nodes)} tasks succeeded, {len(live)} to go"
            if where:
                summary += f"; {where}"
        else:
            state = ChainState.FAILED
            summary = f"stopped: {where}" if blocked else f"finished with failures: {where}"
    return ChainStatus(chain.chain_id, chain.on_failure, state, tuple(nodes), summary)


__all__ = [
    "BLOCKED",
    "CHAIN_ID",
    "MAX_CHAIN_BYTES",
    "MAX_NODES",
    "PENDING",
    "TASK_ID_PREFIX",
    "Chain",
    "ChainError",
    "ChainLink",
    "ChainNode",
    "ChainState",
    "ChainStatus",
    "NodeSpec",
    "NodeStatus",
    "OnFailure",
    "build_chain",
    "chain_bytes",
    "chain_status",
    "chain_task_ids",
    "check_placement",
    "link_problem",
    "ready",
    "root_task_id",
]
