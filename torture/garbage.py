"""Garbage at every public interface of a running system.

Each function sends one round of bad input and returns what it sent or what
came back, so that a caller (the torture run, ``tests/integration/
test_garbage_input.py``) can check the system's answer:

- ``garbage_commands``: records on the commands topic that the processor
  must set aside as poison, with a reason, without stopping its partition;
- ``garbage_grpc``: every method of a gRPC service called with random bytes,
  a request over the size limit and valid but absurd requests; every answer
  must be a status with a sentence (never ``UNKNOWN`` or ``INTERNAL``);
- ``garbage_exec_records``: records on a lambda's exec topic that the
  controller must skip or discard without stalling;
- ``garbage_control_records``: records on the control topic that every
  reader must ignore, keeping the definitions it had.

Every function is deterministic given its ``random.Random`` (the bytes sent
and the requests made; not, of course, the answers), returns within about a
second (``garbage_grpc``: its ``budget``; the others take milliseconds), and
never raises because of an answer: a status is data here.

None of it can create, claim or run a real task: commands are undecodable,
invalid or name lambdas that do not exist; gRPC requests name random task
ids and lambdas, and a ``NextWork`` request is always one the controller
refuses before it claims anything; exec records name random task ids.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc
from confluent_kafka import KafkaError, Message, Producer

from atf_es import kafka_clients
from atf_es._proto.atf.v1 import admin_pb2, common_pb2, frontend_pb2, worker_pb2
from atf_es.clock import now_ms
from atf_es.config import Settings
from atf_es.events import (
    ClaimTask,
    Command,
    Gate,
    GateAction,
    LambdaPolicy,
    Outcome,
    QueryTask,
    ScheduleTask,
    SetResult,
    WorkItem,
)
from atf_es.events.codec import (
    HEADER_SIZE,
    MARKER,
    encode_command,
    encode_gate,
    encode_lambda,
    encode_work,
    get_codec,
)
from atf_es.events.records import control_key, lambda_to_record
from atf_es.services.grpc_server import MAX_MESSAGE_BYTES
from atf_es.services.processor import record_limit
from atf_es.topics import Topics

__all__ = [
    "SERVICES",
    "GrpcAnswer",
    "SentRecord",
    "garbage_commands",
    "garbage_control_records",
    "garbage_exec_records",
    "garbage_grpc",
]

_Record = tuple[str, int, bytes | None, bytes | None, bool]
"""(kind, partition, key, value, poison expected) of a record to send."""
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UNKNOWN_OUTCOME: Any = 99
"""An ``Outcome`` enum value the proto does not define."""
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_REFUSED_NEXT_WORK = worker_pb2.NextWorkRequest(max_tasks=-1).SerializeToString()
"""Appended to every raw ``NextWork`` request: whatever the bytes before it
parse to, the last ``max_tasks`` wins and is negative, so the controller
refuses the call before it claims anything."""


# -- what was sent -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SentRecord:
    """One garbage record as it landed (``offset`` is -1 if it was not delivered)."""

    kind: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    poison: bool
    """Whether the processor must set it aside (commands topic only)."""


class GrpcAnswer(NamedTuple):
    """One call's answer.

    ``method`` is the method and what was sent (``"Schedule: huge task id"``);
    ``code`` the status name (``"INVALID_ARGUMENT"``); ``details`` the status
    message or, for a call answered ``OK``, a summary of the response (the
    per-item codes of a batch). A clear answer has a code other than
    ``UNKNOWN`` and ``INTERNAL`` and non-empty details.
    """

    method: str
    code: str
    details: str

    @property
    def clear(self) -> bool:
        return self.code not in ("UNKNOWN", "INTERNAL") and bool(self.details)


def _rid(rng: random.Random, prefix: str = "garbage") -> str:
    return f"{prefix}-{rng.getrandbits(64):016x}"


def _send(producer: Producer, topic: str, records: Sequence[_Record]) -> list[SentRecord]:
    """Produce ``records`` (kind, partition, key, value, poison) and wait for them."""
    offsets: list[int] = [-1] * len(records)

    def delivered(index: int) -> Callable[[KafkaError | None, Message], None]:
        def callback(error: KafkaError | None, message: Message) -> None:
            offset = message.offset()
            if error is None and offset is not None:
                offsets[index] = offset

        return callback

    for index, (_, partition, key, value, _) in enumerate(records):
        producer.produce(topic, value, key, partition, on_delivery=delivered(index))
        producer.poll(0)
    producer.flush(10)
    return [
        SentRecord(kind, topic, partition, offsets[index], key, value, poison)
        for index, (kind, partition, key, value, poison) in enumerate(records)
    ]


def _producer(settings: Settings) -> Producer:
    assert settings.kafka_bootstrap is not None, "settings need kafka_bootstrap"
    return kafka_clients.producer(
        settings.kafka_bootstrap,
        settings.kafka_config,
        # Not idempotent: its start alone (getting a producer id) takes 0.5 s.
        overrides={"enable.idempotence": False, "acks": "all", "client.id": "garbage"},
    )


# -- the commands topic -------------------------------------------------------

_COMMAND_KINDS = (
    "random-bytes",
    "truncated",
    "bad-marker",
    "unknown-fingerprint",
    "header-then-random-body",
    "another-record-type",
    "trailing-bytes",
    "empty-value",
    "null-value",
    "huge-key",
    "near-size-limit",
    "unknown-lambda",
    "reply-too-large",
    "bad-reply-to",
)
_LAMBDA_COMMAND_KINDS = (
    "unprintable-task-id",
    "too-long-task-id",
    "bad-collection",
    "bad-priority",
    "negative-run-at",
    "payload-too-large-to-record",
)


def _any_command(rng: random.Random) -> Command:
    task_id = _rid(rng, "gt")
    if rng.random() < 0.5:
        return ScheduleTask(
            _rid(rng, "c"), task_id, _rid(rng, "nolambda"), "default", 0, rng.randbytes(16), 0
        )
    return SetResult(
        _rid(rng, "c"), task_id, rng.randint(1, 9), "w", Outcome.SUCCESS, None, rng.randbytes(8)
    )


def _command_record(
    kind: str, rng: random.Random, settings: Settings, lambda_names: Sequence[str]
) -> tuple[bytes | None, bytes | None, bool]:
    """(key, value, poison expected) for one kind of garbage command."""
    topics = Topics(settings.topic_prefix)
    now = now_ms()
    valid = encode_command(_any_command(rng), None, now)
    key = _rid(rng, "gk").encode()
    if kind == "random-bytes":
        return key, rng.randbytes(rng.randint(1, 512)), True
    if kind == "truncated":
        return key, valid[: rng.randrange(len(valid))], True
    if kind == "bad-marker":
        return key, bytes([valid[0] ^ 0xFF]) + valid[1:], True
    if kind == "unknown-fingerprint":
        return key, MARKER + rng.randbytes(8) + valid[HEADER_SIZE:], True
    if kind == "header-then-random-body":
        return key, valid[:HEADER_SIZE] + rng.randbytes(rng.randint(0, 256)), True
    if kind == "another-record-type":
        item = WorkItem(_rid(rng, "gt"), 1, "nolambda", "default", 0, b"", now, now, 0)
        return key, encode_work(item), True
    if kind == "trailing-bytes":
        return key, valid + rng.randbytes(rng.randint(1, 64)), True
    if kind == "empty-value":
        return key, b"", True
    if kind == "null-value":
        return key, None, True
    if kind == "huge-key":
        return rng.randbytes(300_000), rng.randbytes(rng.randint(1, 64)), True
    if kind == "near-size-limit":
        # Kafka just takes it; a poison record quoting all of it would not fit.
        size = record_limit(settings) - 64 - len(key)
        return key, valid[:HEADER_SIZE] + rng.randbytes(size - HEADER_SIZE), True
    if kind == "unknown-lambda":
        command = ScheduleTask(
            _rid(rng, "c"), _rid(rng, "gt"), _rid(rng, "nolambda"), "default", 0, b"", now
        )
        return key, encode_command(command, None, now), True
    if kind == "reply-too-large":
        # A task id so long that the "no such task" reply quoting it cannot be written.
        task_id = _rid(rng, "gt") + "x" * 400_000
        claim = ClaimTask(_rid(rng, "c"), task_id, 1, "w")
        return key, encode_command(claim, f"{topics.replies}:0", now), True
    if kind == "bad-reply-to":
        # Valid, harmless (a read of a task that does not exist), unanswerable.
        reply_to = rng.choice(
            [
                f"{topics.replies}:{2**31}",
                f"{topics.replies}:99999",
                f"{topics.replies}:\u00b2",
                f"{topics.replies}:{'9' * 5_000}",
                f"{topics.task_events}:0",
                f"{topics.commands}:0",
                "no-such-topic:0",
                ":",
                "",
            ]
        )
        query = QueryTask(_rid(rng, "c"), _rid(rng, "gt"))
        return key, encode_command(query, reply_to or None, now), False
    # Invalid commands for a lambda that exists: refused before any task is recorded.
    lambda_name = rng.choice(list(lambda_names))
    task_id, collection, priority, payload, run_at = _rid(rng, "gt"), "default", 0, b"", now
    if kind == "unprintable-task-id":
        task_id = rng.choice(["a\x00b", "\x00", "tab\there", "nl\n", "\x1b[31m"])
    elif kind == "too-long-task-id":
        task_id = "t" * rng.randint(201, 5_000)
    elif kind == "bad-collection":
        collection = rng.choice(["", "../etc", "a b", "x" * 101, "\u00e9"])
    elif kind == "bad-priority":
        priority = rng.choice([-1, 999, _INT32_MIN, _INT32_MAX])
    elif kind == "negative-run-at":
        run_at = rng.choice([-1, _INT64_MIN])
    elif kind == "payload-too-large-to-record":
        payload = rng.randbytes(record_limit(settings) - 40_000)
    else:  # pragma: no cover - the kinds are listed above
        raise ValueError(f"unknown garbage kind {kind!r}")
    command = ScheduleTask(
        _rid(rng, "c"), task_id, lambda_name, collection, priority, payload, run_at
    )
    return key, encode_command(command, None, now), True


def garbage_commands(
    settings: Settings,
    n: int,
    rng: random.Random,
    *,
    lambda_names: Sequence[str] = (),
    kinds: Sequence[str] | None = None,
) -> list[SentRecord]:
    """Send ``n`` garbage records to the commands topic; returns them as delivered.

    Kinds are drawn from ``kinds`` (default: all); with ``lambda_names`` also
    invalid commands for those lambdas (never valid ones). Each record has
    ``poison`` set if the processor must set it aside; the others (an
    unanswerable ``reply_to``) are handled without an answer.
    """
    if kinds is None:
        kinds = _COMMAND_KINDS + (_LAMBDA_COMMAND_KINDS if lambda_names else ())
    elif not lambda_names and set(kinds) & set(_LAMBDA_COMMAND_KINDS):
        raise ValueError("these kinds need lambda_names")
    chosen = [kinds[i % len(kinds)] for i in range(n)] if n >= len(kinds) else []
    chosen += [rng.choice(list(kinds)) for _ in range(n - len(chosen))]
    rng.shuffle(chosen)
    records: list[_Record] = []
    for kind in chosen:
        key, value, poison = _command_record(kind, rng, settings, lambda_names)
        records.append((kind, rng.randrange(settings.partitions), key, value, poison))
    producer = _producer(settings)
    return _send(producer, Topics(settings.topic_prefix).commands, records)


# -- the exec topics ----------------------------------------------------------


def _work_item(rng: random.Random, lambda_name: str, priority: int, **changes: Any) -> WorkItem:
    now = now_ms()
    fields: dict[str, Any] = {
        "task_id": _rid(rng, "gt"),
        "lease": rng.randint(1, 100),
        "lambda_name": lambda_name,
        "collection": "default",
        "priority": priority,
        "payload": rng.randbytes(16),
        "scheduled_at": now,
        "enqueued_at": now,
        "attempt": 0,
        **changes,
    }
    return WorkItem(**fields)


def garbage_exec_records(
    settings: Settings,
    lambda_name: str,
    rng: random.Random,
    *,
    priority: int = 0,
    n: int | None = None,
    kinds: Collection[str] | None = None,
) -> list[SentRecord]:
    """Send ``n`` garbage records (default: one of each kind, or of each of
    ``kinds``) to ``lambda_name``'s exec topic at ``priority``.

    Undecodable records, and work items no HSC accepts a claim for: random task
    ids, bad leases, an empty or a huge task id, another lambda's or priority's
    item. None names a real task. ``priority`` must be one of the lambda's
    levels (its exec topic must exist).
    """
    topic = Topics(settings.topic_prefix).exec(lambda_name, priority)
    other = 1 if priority == 0 else 0
    makers: list[tuple[str, Callable[[], bytes | None]]] = [
        ("random-bytes", lambda: rng.randbytes(rng.randint(1, 256))),
        ("empty-value", lambda: b""),
        ("null-value", lambda: None),
        ("truncated", lambda: encode_work(_work_item(rng, lambda_name, priority))[:-3]),
        ("trailing-bytes", lambda: encode_work(_work_item(rng, lambda_name, priority)) + b"x"),
        (
            "header-then-random-body",
            lambda: encode_work(_work_item(rng, "x", 0))[:HEADER_SIZE] + rng.randbytes(64),
        ),
        ("unknown-task", lambda: encode_work(_work_item(rng, lambda_name, priority))),
        ("zero-lease", lambda: encode_work(_work_item(rng, lambda_name, priority, lease=0))),
        (
            "negative-lease",
            lambda: encode_work(_work_item(rng, lambda_name, priority, lease=_INT64_MIN)),
        ),
        ("empty-task-id", lambda: encode_work(_work_item(rng, lambda_name, priority, task_id=""))),
        (
            "huge-task-id",
            lambda: encode_work(_work_item(rng, lambda_name, priority, task_id="t" * 400_000)),
        ),
        ("other-lambda", lambda: encode_work(_work_item(rng, _rid(rng, "nolambda"), priority))),
        ("other-priority", lambda: encode_work(_work_item(rng, lambda_name, other))),
    ]
    if kinds is not None:
        unknown = set(kinds) - {kind for kind, _ in makers}
        if unknown:
            raise ValueError(f"no such garbage kinds: {', '.join(sorted(unknown))}")
        makers = [(kind, make) for kind, make in makers if kind in kinds]
    records: list[_Record] = []
    for index in range(len(makers) if n is None else n):
        kind, make = makers[index] if index < len(makers) else rng.choice(makers)
        key = _rid(rng, "gk").encode() if rng.random() < 0.8 else None
        records.append((kind, rng.randrange(settings.partitions), key, make(), False))
    return _send(_producer(settings), topic, records)


# -- the control topic --------------------------------------------------------


def garbage_control_records(
    settings: Settings,
    rng: random.Random,
    *,
    lambda_names: Sequence[str] = (),
    n: int | None = None,
) -> list[SentRecord]:
    """Send ``n`` garbage records (default: one of each kind), and three odd
    entries, to the control topic.

    Unreadable values and invalid definitions under ``lambda/<random>`` keys.
    With ``lambda_names``, also garbage under those lambdas' own keys, and a
    different definition of one of them under another lambda's key: a reader
    must keep the definitions it read before. (On a compacted topic a record
    under a lambda's own key does replace its definition once compaction runs;
    pass ``lambda_names`` only where that cannot happen in time.)
    """
    codec = get_codec("ControlRecord")
    names = list(lambda_names)

    def definition(name: str, **changes: Any) -> bytes:
        # Encoded by hand: a LambdaPolicy with these values cannot be built.
        record = lambda_to_record(LambdaPolicy(name=name), now_ms())
        branch, body = record["body"]
        record["body"] = (branch, {**body, **changes})
        return codec.encode(record)

    def key() -> str:
        return rng.choice(names) if names and rng.random() < 0.5 else _rid(rng, "nolambda")

    def foreign() -> tuple[str, bytes]:
        # Someone else's definition under this key: with a real lambda's name
        # and a payload limit of 1 byte, it would break that lambda if applied.
        return _rid(rng, "nolambda"), definition(
            rng.choice(names) if names else _rid(rng, "nolambda"), max_payload_bytes=1
        )

    def policy_bytes(name: str) -> bytes:
        return encode_lambda(LambdaPolicy(name=name), now_ms())

    makers: list[tuple[str, Callable[[], tuple[str, bytes]]]] = [
        ("random-bytes", lambda: (key(), rng.randbytes(rng.randint(1, 256)))),
        ("empty-value", lambda: (key(), b"")),
        ("truncated", lambda: ((name := key()), policy_bytes(name)[:-5])),
        (
            "header-then-random-body",
            lambda: (key(), policy_bytes("x")[:HEADER_SIZE] + rng.randbytes(64)),
        ),
        ("invalid-policy", lambda: ((name := key()), definition(name, priorities=0))),
        ("absurd-policy", lambda: ((name := key()), definition(name, max_attempts=-1))),
        ("foreign-definition", foreign),
        ("another-record-type", lambda: (key(), encode_work(_work_item(rng, "x", 0)))),
    ]
    topic = Topics(settings.topic_prefix).control
    records: list[_Record] = []
    for index in range(len(makers) if n is None else n):
        kind, make = makers[index] if index < len(makers) else rng.choice(makers)
        name, value = make()
        records.append((kind, 0, control_key(name).encode(), value, False))
    # Gates that must not apply: unreadable, and a drop gate of a real lambda
    # filed under another key (applied, it would drop every task of it).
    gated = names[0] if names else "x"
    records.append(("unreadable-gate", 0, f"gate/{gated}".encode(), rng.randbytes(32), False))
    misfiled = Gate(gated, None, GateAction.DROP, "misfiled", "garbage", now_ms())
    records.append(
        ("misfiled-gate", 0, f"gate/{_rid(rng, 'nolambda')}".encode(), encode_gate(misfiled), False)
    )
    # Entries that are neither lambdas nor gates (other readers' keys, no key
    # at all) and a tombstone for a lambda that never existed.
    records.append(("foreign-key", 0, b"schedule/" + rng.randbytes(8), rng.randbytes(32), False))
    records.append(("no-key", 0, None, rng.randbytes(32), False))
    records.append(("tombstone", 0, control_key(_rid(rng, "nolambda")).encode(), None, False))
    return _send(_producer(settings), topic, records)


# -- gRPC ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Method:
    name: str
    request: type[Any]
    response: type[Any]
    streaming: bool = False


SERVICES: dict[str, tuple[str, tuple[_Method, ...]]] = {
    "Frontend": (
        "atf.v1.Frontend",
        (
            _Method("Schedule", frontend_pb2.ScheduleRequest, frontend_pb2.ScheduleResponse),
            _Method(
                "ScheduleBatch",
                frontend_pb2.ScheduleBatchRequest,
                frontend_pb2.ScheduleBatchResponse,
            ),
            _Method("GetTask", frontend_pb2.GetTaskRequest, frontend_pb2.GetTaskResponse),
            _Method("Cancel", frontend_pb2.CancelRequest, frontend_pb2.CancelResponse),
            _Method("History", frontend_pb2.HistoryRequest, frontend_pb2.HistoryResponse),
            _Method("Watch", frontend_pb2.WatchRequest, frontend_pb2.WatchResponse, True),
        ),
    ),
    "HeartbeatStatus": (
        "atf.v1.HeartbeatStatus",
        (
            _Method("ClaimTask", worker_pb2.ClaimTaskRequest, worker_pb2.ClaimTaskResponse),
            _Method("ClaimTasks", worker_pb2.ClaimTasksRequest, worker_pb2.ClaimTasksResponse),
            _Method("Heartbeat", worker_pb2.HeartbeatRequest, worker_pb2.HeartbeatResponse),
            _Method("SetResults", worker_pb2.SetResultsRequest, worker_pb2.SetResultsResponse),
        ),
    ),
    "Controller": (
        "atf.v1.Controller",
        (_Method("NextWork", worker_pb2.NextWorkRequest, worker_pb2.NextWorkResponse),),
    ),
    "Admin": (
        "atf.v1.Admin",
        (
            _Method("SetGate", admin_pb2.SetGateRequest, admin_pb2.SetGateResponse),
            _Method("ListGates", admin_pb2.ListGatesRequest, admin_pb2.ListGatesResponse),
            _Method(
                "ListDeadLetters",
                admin_pb2.ListDeadLettersRequest,
                admin_pb2.ListDeadLettersResponse,
            ),
            _Method(
                "DeadLetterCounts",
                admin_pb2.DeadLetterCountsRequest,
                admin_pb2.DeadLetterCountsResponse,
            ),
            _Method("Redrive", admin_pb2.RedriveRequest, admin_pb2.RedriveResponse),
        ),
    ),
}
"""Every public service, by short name: its full name and its methods."""


def _spec(rng: random.Random, **fields: Any) -> frontend_pb2.TaskSpec:
    values: dict[str, Any] = {"lambda_name": _rid(rng, "nolambda"), **fields}
    return frontend_pb2.TaskSpec(**values)


def _absurd_requests(method: str, rng: random.Random) -> list[tuple[str, Any]]:
    """Valid messages with absurd values, none of which can touch a real task."""
    # Longer than any id or name may be; ``big``: more than Kafka takes in a record.
    long = "x" * rng.randint(20_000, 100_000)
    big = "x" * rng.randint(1_100_000, 1_500_000)
    lease = rng.choice([0, -1, _INT64_MIN])
    match method:
        case "Schedule":
            specs = [
                ("empty spec", _spec(rng, lambda_name="")),
                ("huge lambda name", _spec(rng, lambda_name=long)),
                ("unprintable lambda name", _spec(rng, lambda_name="a\x00b")),
                ("huge collection", _spec(rng, collection=long)),
                ("negative run_at", _spec(rng, run_at_ms=_INT64_MIN)),
                ("huge delay", _spec(rng, delay_ms=_INT64_MAX)),
                ("huge idempotency key", _spec(rng, idempotency_key=long)),
                ("unprintable task id", _spec(rng, task_id="a\x00b")),
                ("huge task id", _spec(rng, task_id=long)),
                ("huge payload, unknown lambda", _spec(rng, payload=big.encode())),
                ("absurd priority, unknown lambda", _spec(rng, priority=_INT32_MIN)),
            ]
            return [(what, frontend_pb2.ScheduleRequest(spec=spec)) for what, spec in specs]
        case "ScheduleBatch":
            return [
                ("too many specs", frontend_pb2.ScheduleBatchRequest(specs=[_spec(rng)] * 1_001)),
                (
                    "absurd specs",
                    frontend_pb2.ScheduleBatchRequest(
                        specs=[
                            _spec(rng, lambda_name=""),
                            _spec(rng, priority=_INT32_MAX),
                            _spec(rng, run_at_ms=-5),
                            _spec(rng, task_id="t" * 201),
                        ]
                    ),
                ),
            ]
        case "GetTask":
            return [
                ("empty task id", frontend_pb2.GetTaskRequest()),
                ("huge task id", frontend_pb2.GetTaskRequest(task_id=long)),
                (
                    "unknown task",
                    frontend_pb2.GetTaskRequest(task_id=_rid(rng), include_payload=True),
                ),
            ]
        case "Cancel":
            return [
                ("empty task id", frontend_pb2.CancelRequest(reason="r")),
                ("huge task id", frontend_pb2.CancelRequest(task_id=long)),
                ("unknown task", frontend_pb2.CancelRequest(task_id=_rid(rng), requested_by="g")),
                ("huge reason", frontend_pb2.CancelRequest(task_id=_rid(rng), reason=big)),
            ]
        case "SetGate":
            nolambda = _rid(rng, "nolambda")
            return [
                ("no action", admin_pb2.SetGateRequest(gate=admin_pb2.Gate(lambda_name=nolambda))),
                (
                    "bad collection",
                    admin_pb2.SetGateRequest(
                        gate=admin_pb2.Gate(
                            lambda_name=nolambda,
                            collection="a/b",
                            action=admin_pb2.GATE_ACTION_DROP,
                        )
                    ),
                ),
                (
                    "unknown lambda",
                    admin_pb2.SetGateRequest(
                        gate=admin_pb2.Gate(lambda_name=nolambda, action=admin_pb2.GATE_ACTION_DROP)
                    ),
                ),
                (
                    "huge reason",
                    admin_pb2.SetGateRequest(
                        gate=admin_pb2.Gate(
                            lambda_name=nolambda, action=admin_pb2.GATE_ACTION_PAUSE, reason=big
                        )
                    ),
                ),
            ]
        case "ListGates":
            return [("huge lambda", admin_pb2.ListGatesRequest(lambda_name=long))]
        case "ListDeadLetters":
            return [
                ("negative page size", admin_pb2.ListDeadLettersRequest(page_size=-1)),
                ("foreign page token", admin_pb2.ListDeadLettersRequest(page_token=long)),
            ]
        case "DeadLetterCounts":
            return [("huge lambda", admin_pb2.DeadLetterCountsRequest(lambda_name=long))]
        case "Redrive":
            return [
                ("no reason", admin_pb2.RedriveRequest(task_ids=[_rid(rng)])),
                (
                    "unknown tasks",
                    admin_pb2.RedriveRequest(task_ids=[_rid(rng), _rid(rng)], reason="garbage"),
                ),
                ("nothing to redrive", admin_pb2.RedriveRequest(reason="garbage")),
            ]
        case "History":
            return [
                ("empty task id", frontend_pb2.HistoryRequest()),
                ("huge task id", frontend_pb2.HistoryRequest(task_id=long)),
                ("unknown task", frontend_pb2.HistoryRequest(task_id=_rid(rng))),
            ]
        case "Watch":
            return [
                ("huge task id", frontend_pb2.WatchRequest(task_id=long)),
                ("two starts", frontend_pb2.WatchRequest(from_start=True, from_ms=1)),
                (
                    "unspecified status",
                    frontend_pb2.WatchRequest(statuses=[common_pb2.TASK_STATUS_UNSPECIFIED]),
                ),
            ]
        case "ClaimTask" | "Heartbeat":
            message = (
                worker_pb2.ClaimTaskRequest
                if method == "ClaimTask"
                else worker_pb2.HeartbeatRequest
            )
            return [
                ("empty request", message()),
                ("bad lease", message(task_id=_rid(rng), lease=lease, worker="g")),
                ("huge task id", message(task_id=long, lease=1, worker="g")),
                ("huge worker", message(task_id=_rid(rng), lease=1, worker=long)),
                ("unknown task", message(task_id=_rid(rng), lease=_INT64_MAX, worker="g")),
            ]
        case "ClaimTasks":
            claim = worker_pb2.ClaimTaskRequest
            return [
                (
                    "too many claims",
                    worker_pb2.ClaimTasksRequest(
                        claims=[claim(task_id="t", lease=1, worker="g")] * 101
                    ),
                ),
                (
                    "bad lease",
                    worker_pb2.ClaimTasksRequest(
                        claims=[claim(task_id=_rid(rng), lease=lease, worker="g", start=True)]
                    ),
                ),
                (
                    "huge worker",
                    worker_pb2.ClaimTasksRequest(
                        claims=[claim(task_id=_rid(rng), lease=1, worker=long)]
                    ),
                ),
                (
                    "unknown tasks",
                    worker_pb2.ClaimTasksRequest(
                        claims=[
                            claim(task_id=_rid(rng), lease=_INT64_MAX, worker="g", start=True),
                            claim(task_id=_rid(rng), lease=1, worker="g"),
                        ]
                    ),
                ),
            ]
        case "SetResults":
            result = worker_pb2.TaskResult
            return [
                (
                    "too many results",
                    worker_pb2.SetResultsRequest(
                        results=[
                            result(
                                task_id="t", lease=1, worker="g", outcome=worker_pb2.OUTCOME_SUCCESS
                            )
                        ]
                        * 1_001
                    ),
                ),
                (
                    "unknown outcome",
                    worker_pb2.SetResultsRequest(
                        results=[
                            result(task_id=_rid(rng), lease=1, worker="g", outcome=_UNKNOWN_OUTCOME)
                        ]
                    ),
                ),
                (
                    "bad lease",
                    worker_pb2.SetResultsRequest(
                        results=[
                            result(
                                task_id=_rid(rng),
                                lease=lease,
                                worker="g",
                                outcome=worker_pb2.OUTCOME_SUCCESS,
                            )
                        ]
                    ),
                ),
                (
                    "huge error and result, unknown tasks",
                    worker_pb2.SetResultsRequest(
                        results=[
                            result(
                                task_id=_rid(rng),
                                lease=1,
                                worker="g",
                                outcome=worker_pb2.OUTCOME_RETRIABLE,
                                error=big,
                            ),
                            result(
                                task_id=_rid(rng),
                                lease=1,
                                worker="g",
                                outcome=worker_pb2.OUTCOME_SUCCESS,
                                result=big.encode(),
                            ),
                        ]
                    ),
                ),
            ]
        case "NextWork":
            # Each one refused before any claim: never takes a real item.
            request = worker_pb2.NextWorkRequest
            return [
                ("empty request", request()),
                ("negative max_tasks", request(worker="g", max_tasks=_INT32_MIN)),
                ("negative wait", request(worker="g", wait_ms=_INT64_MIN)),
                ("huge worker", request(worker=long, wait_ms=0)),
                (
                    "unknown lambdas",
                    request(worker="g", wait_ms=0, lambda_names=[_rid(rng), long, "", "a\x00"]),
                ),
            ]
    return []  # pragma: no cover - every method is listed above


def _summary(response: Any) -> str:
    """What an ``OK`` answer said, short: per-item codes of a batch, or its size."""
    if isinstance(response, bytes):
        return f"OK with a {len(response)}-byte response"
    items = getattr(response, "replies", None) or getattr(response, "results", None)
    if items:
        return "OK; " + "; ".join(
            f"[{i}] {common_pb2.ReplyCode.Name(item.code)}: {item.message[:200]}"
            for i, item in enumerate(items)
        )
    return f"OK: {str(response)[:300] or 'empty response'}"


def garbage_grpc(
    address: str,
    service: str,
    rng: random.Random,
    *,
    budget: float = 1.0,
    call_timeout: float = 0.5,
) -> list[GrpcAnswer]:
    """Call every method of ``service`` (a key of ``SERVICES``) with garbage.

    Per method: random bytes, bytes that are no valid protobuf, a truncated
    field, a string field holding invalid UTF-8, and valid requests with
    absurd values; then one method (drawn from ``rng``) with a request one
    byte over ``MAX_MESSAGE_BYTES`` (grpc checks the size before any method
    sees it, and sending 4 MiB takes a while). Each call may take
    ``call_timeout`` seconds, and all share ``budget`` seconds (a call past it
    answers ``DEADLINE_EXCEEDED`` at once), so a round takes that long at worst.
    """
    full_name, methods = SERVICES[service.removeprefix("atf.v1.")]
    limits = (time.monotonic() + budget, call_timeout)
    answers: list[GrpcAnswer] = []

    def call(method: _Method, request: Any, *, raw: bool, what: str) -> None:
        path = f"/{full_name}/{method.name}"
        answers.append(_call(channel, path, method, request, raw=raw, what=what, limits=limits))

    with grpc.insecure_channel(
        address, options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES * 2)]
    ) as channel:
        for method in methods:
            suffix = _REFUSED_NEXT_WORK if method.name == "NextWork" else b""
            raw: list[tuple[str, bytes]] = [
                ("random bytes", rng.randbytes(rng.randint(1, 256)) + suffix),
                ("not protobuf", b"\xff" * rng.randint(1, 16) + suffix),
                ("truncated field", b"\x0a\x7f" + rng.randbytes(8)),
                ("invalid UTF-8", b"\x0a\x04\xff\xfe\xc0\x80" + suffix),
            ]
            for what, data in raw:
                call(method, data, raw=True, what=what)
            for what, request in _absurd_requests(method.name, rng):
                call(method, request, raw=False, what=what)
        oversized = b"\x00" * (MAX_MESSAGE_BYTES + 1)
        call(rng.choice(methods), oversized, raw=True, what="over the size limit")
    return answers


def _call(
    channel: grpc.Channel,
    path: str,
    method: _Method,
    request: Any,
    *,
    raw: bool,
    what: str,
    limits: tuple[float, float],
) -> GrpcAnswer:
    """One call; ``request`` is bytes sent as they are if ``raw``, else a message."""
    deadline, call_timeout = limits
    timeout = max(0.001, min(call_timeout, deadline - time.monotonic()))
    serializer = None if raw else method.request.SerializeToString
    deserializer = None if raw else method.response.FromString
    try:
        if method.streaming:
            stream = channel.unary_stream(
                path, request_serializer=serializer, response_deserializer=deserializer
            )
            responses = list(stream(request, timeout=timeout))
            details = f"OK with {len(responses)} responses"
        else:
            unary = channel.unary_unary(
                path, request_serializer=serializer, response_deserializer=deserializer
            )
            details = _summary(unary(request, timeout=timeout))
        code = "OK"
    except grpc.RpcError as error:
        code = error.code().name
        details = error.details() or ""
    return GrpcAnswer(f"{method.name}: {what}", code, details)
