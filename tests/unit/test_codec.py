"""Round trips and failure modes of the Avro single-object codec."""

from __future__ import annotations

import contextlib
import dataclasses
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atf_es.events import codec
from atf_es.events.codec import (
    HEADER_SIZE,
    MARKER,
    DecodeError,
    EncodeError,
    decode_command,
    decode_event,
    decode_poison,
    decode_reply,
    decode_task,
    decode_work,
    encode_command,
    encode_event,
    encode_poison,
    encode_reply,
    encode_task,
    encode_work,
    get_codec,
)
from atf_es.events.commands import (
    COMMAND_TYPES,
    CancelTask,
    ClaimTask,
    Command,
    DropTask,
    Heartbeat,
    Outcome,
    RedriveTask,
    ScheduleTask,
    SetResult,
)
from atf_es.events.records import (
    EVENT_DETAIL_FIELDS,
    EVENT_KINDS,
    CommandEnvelope,
    event_to_record,
)
from atf_es.events.replies import PoisonRecord
from atf_es.events.status import TaskStatus
from atf_es.events.task import Task
from atf_es.events.transitions import EVENT_TYPES, TaskEnqueued, TaskScheduled
from atf_es.events.work import WorkItem
from tests.unit.avro_samples import COMMANDS, ENQUEUED, EVENTS, NEW, POISON, REPLIES, WORK

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text()
BLOB = st.binary()

DECODERS: list[Callable[[bytes], object]] = [
    decode_event,
    decode_command,
    decode_task,
    decode_work,
    decode_reply,
    decode_poison,
]


# --- round trips --------------------------------------------------------------


def test_samples_cover_every_event_and_command_type() -> None:
    assert {type(e) for e, _ in EVENTS} == set(EVENT_TYPES)
    assert {type(c) for c in COMMANDS} == set(COMMAND_TYPES)
    assert set(EVENT_KINDS) == set(EVENT_TYPES) == set(EVENT_DETAIL_FIELDS)


@pytest.mark.parametrize("event_cls", EVENT_TYPES, ids=lambda c: c.__name__)
def test_detail_table_matches_event_fields(event_cls: type) -> None:
    own = {f.name for f in dataclasses.fields(event_cls)} - {"task_id", "seq", "at", "cause"}
    required, nullable = EVENT_DETAIL_FIELDS[event_cls]
    if event_cls is TaskScheduled:
        assert {f.name for f in dataclasses.fields(Task)} >= own
    else:
        assert own == set(required) | set(nullable)


@pytest.mark.parametrize(("event", "task"), EVENTS, ids=lambda x: type(x).__name__)
def test_event_round_trip(event: Any, task: Task) -> None:
    assert decode_event(encode_event(event, task)) == (event, task)


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: f"{type(c).__name__}-{c.command_id}")
@pytest.mark.parametrize("reply_to", [None, "atf.replies.gw-1:3"])
def test_command_round_trip(cmd: Command, reply_to: str | None) -> None:
    data = encode_command(cmd, reply_to, 1_700_000_000_123)
    assert decode_command(data) == CommandEnvelope(cmd, reply_to, 1_700_000_000_123)


def test_claim_and_heartbeat_stay_distinct() -> None:
    # Same fields, different union branches: the branch must survive.
    claim, beat = ClaimTask("c", "t", 1, "w"), Heartbeat("c", "t", 1, "w")
    assert type(decode_command(encode_command(claim, None, 0)).command) is ClaimTask
    assert type(decode_command(encode_command(beat, None, 0)).command) is Heartbeat


def test_work_reply_poison_task_round_trip() -> None:
    assert decode_work(encode_work(WORK)) == WORK
    for reply in REPLIES:
        assert decode_reply(encode_reply(reply)) == reply
    for poison in POISON:
        assert decode_poison(encode_poison(poison)) == poison
    for _, task in EVENTS:
        assert decode_task(encode_task(task)) == task


def test_decode_accepts_bytearray_and_memoryview() -> None:
    data = encode_work(WORK)
    assert decode_work(bytearray(data)) == WORK
    assert decode_work(memoryview(data)) == WORK


optional_text = st.none() | TEXT
optional_blob = st.none() | BLOB
optional_time = st.none() | INT64

tasks = st.builds(
    Task,
    task_id=TEXT,
    lambda_name=TEXT,
    collection=TEXT,
    priority=INT32,
    payload=BLOB,
    status=st.sampled_from(TaskStatus),
    seq=INT64,
    created_at=INT64,
    scheduled_at=INT64,
    next_trigger_at=optional_time,
    lease=INT64,
    attempts=INT32,
    enqueued_at=optional_time,
    claimed_at=optional_time,
    started_at=optional_time,
    heartbeat_at=optional_time,
    finished_at=optional_time,
    worker=optional_text,
    last_error=optional_text,
    result=optional_blob,
    idempotency_key=optional_text,
    scheduled_by=optional_text,
)

commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(
        ScheduleTask,
        TEXT,
        TEXT,
        TEXT,
        TEXT,
        INT32,
        BLOB,
        INT64,
        optional_text,
        scheduled_by=optional_text,
    ),
    st.builds(ClaimTask, TEXT, TEXT, INT64, TEXT),
    st.builds(Heartbeat, TEXT, TEXT, INT64, TEXT),
    st.builds(
        SetResult, TEXT, TEXT, INT64, TEXT, st.sampled_from(Outcome), optional_text, optional_blob
    ),
    st.builds(CancelTask, TEXT, TEXT, TEXT, TEXT),
    st.builds(RedriveTask, TEXT, TEXT, TEXT, TEXT),
    st.builds(DropTask, TEXT, TEXT, TEXT),
)


@given(tasks)
def test_any_task_round_trips(task: Task) -> None:
    assert decode_task(encode_task(task)) == task


@given(tasks, INT64, INT64)
def test_any_snapshot_round_trips_inside_an_event(task: Task, lease: int, deadline: int) -> None:
    event = TaskEnqueued(task.task_id, task.seq, task.created_at, NEW_CAUSE, lease, deadline)
    assert decode_event(encode_event(event, task)) == (event, task)


NEW_CAUSE = EVENTS[0][0].cause


@given(commands, st.none() | TEXT, INT64)
def test_any_command_round_trips(cmd: Command, reply_to: str | None, sent_at: int) -> None:
    assert decode_command(encode_command(cmd, reply_to, sent_at)) == CommandEnvelope(
        cmd, reply_to, sent_at
    )


@given(st.builds(WorkItem, TEXT, INT64, TEXT, TEXT, INT32, BLOB, INT64, INT64, INT32))
def test_any_work_item_round_trips(item: WorkItem) -> None:
    assert decode_work(encode_work(item)) == item


@given(st.builds(PoisonRecord, TEXT, INT32, INT64, optional_blob, BLOB, TEXT, INT64))
def test_any_poison_record_round_trips(poison: PoisonRecord) -> None:
    assert decode_poison(encode_poison(poison)) == poison


# --- encoding refusals --------------------------------------------------------


def test_out_of_range_ints_are_refused_not_truncated() -> None:
    with pytest.raises(EncodeError):
        encode_task(dataclasses.replace(NEW, priority=2**31))
    with pytest.raises(EncodeError):
        encode_task(dataclasses.replace(NEW, lease=2**63))
    with pytest.raises(EncodeError):
        encode_work(dataclasses.replace(WORK, attempt=-(2**31) - 1))


def test_event_with_a_foreign_snapshot_is_refused() -> None:
    event, task = EVENTS[1]
    with pytest.raises(ValueError, match="does not follow"):
        event_to_record(event, dataclasses.replace(task, seq=task.seq + 1))
    scheduled, new = EVENTS[0]
    with pytest.raises(EncodeError, match="priority"):
        encode_event(scheduled, dataclasses.replace(new, priority=new.priority + 1))


# --- header -------------------------------------------------------------------


def test_header_layout() -> None:
    data = encode_work(WORK)
    assert data[:2] == b"\xc3\x01" == MARKER
    current = get_codec("WorkItem").current
    assert data[2:HEADER_SIZE] == current.fingerprint
    # The spec's fingerprint is a 64-bit number written little-endian.
    (number,) = struct.unpack("<Q", data[2:HEADER_SIZE])
    assert number.to_bytes(8, "little") == current.fingerprint


def test_crc64_avro_matches_the_spec_for_a_primitive() -> None:
    # The Rabin fingerprint of the canonical form '"int"', computed by hand
    # from the spec's reference algorithm.
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in b'"int"':
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    assert codec.crc64_avro("int") == fp.to_bytes(8, "little")  # type: ignore[arg-type]


# --- garbage ------------------------------------------------------------------


@pytest.mark.parametrize("decode", DECODERS, ids=lambda d: d.__name__)
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_decode_error(
    decode: Callable[[bytes], object], data: bytes
) -> None:
    with contextlib.suppress(DecodeError):
        decode(data)


@pytest.mark.parametrize(
    ("name", "decode"),
    [
        ("TaskEvent", decode_event),
        ("Command", decode_command),
        ("Task", decode_task),
        ("WorkItem", decode_work),
        ("Reply", decode_reply),
        ("PoisonRecord", decode_poison),
    ],
)
@given(body=st.binary(max_size=300))
def test_valid_header_random_body_raises_only_decode_error(
    name: str, decode: Callable[[bytes], object], body: bytes
) -> None:
    with contextlib.suppress(DecodeError):
        decode(MARKER + get_codec(name).current.fingerprint + body)


def _valid() -> bytes:
    event, task = EVENTS[5]
    return encode_event(event, task)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "shorter than the header"),
        (MARKER, "shorter than the header"),
        (b"\xc3\x02" + _valid()[2:], "bad marker"),
        (b"\x00\x01" + _valid()[2:], "bad marker"),
        (MARKER + b"\x00" * 8 + _valid()[HEADER_SIZE:], "unknown schema fingerprint"),
        (encode_work(WORK), "unknown schema fingerprint"),
        (_valid()[:-1], "TaskEvent"),
        (_valid()[: HEADER_SIZE + 3], "TaskEvent"),
        (_valid()[:HEADER_SIZE], "TaskEvent"),
        (_valid() + b"\x00", "trailing bytes"),
        (_valid()[:HEADER_SIZE] + b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01", "TaskEvent"),
        (_valid()[:HEADER_SIZE] + b"\x01", "TaskEvent"),
    ],
    ids=[
        "empty",
        "marker-only",
        "wrong-marker-version",
        "wrong-marker",
        "unknown-fingerprint",
        "other-record-type",
        "truncated-by-one",
        "truncated-early",
        "header-only",
        "trailing-byte",
        "huge-string-length",
        "negative-string-length",
    ],
)
def test_targeted_garbage(data: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        decode_event(data)


def test_not_bytes_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode_event(None)  # type: ignore[arg-type]
    with pytest.raises(DecodeError):
        decode_event("c301")  # type: ignore[arg-type]


def _task_event_with(**changes: Any) -> bytes:
    event, task = EVENTS[1]
    record = event_to_record(event, task)
    record.update(changes)
    return get_codec("TaskEvent").encode(record)


def test_record_that_means_nothing_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="without lease"):
        decode_event(_task_event_with(lease=None))
    with pytest.raises(DecodeError, match="does not follow"):
        decode_event(_task_event_with(seq=99))


def test_invalid_enum_index_is_a_decode_error() -> None:
    data = bytearray(encode_task(ENQUEUED))
    # Two tasks that differ only in status differ in exactly the status byte.
    other = encode_task(dataclasses.replace(ENQUEUED, status=TaskStatus.NEW))
    diffs = [i for i, (a, b) in enumerate(zip(data, other, strict=True)) if a != b]
    assert len(diffs) == 1
    data[diffs[0]] = 2 * len(TaskStatus)  # zig-zag varint: one past the last symbol
    with pytest.raises(DecodeError):
        decode_task(bytes(data))


def test_invalid_utf8_is_a_decode_error() -> None:
    data = bytearray(encode_work(dataclasses.replace(WORK, task_id="abc")))
    at = data.index(b"abc")
    data[at] = 0xFF
    with pytest.raises(DecodeError, match=r"UnicodeDecodeError|utf"):
        decode_work(bytes(data))


def test_invalid_union_branch_is_a_decode_error() -> None:
    data = bytearray(encode_command(DropTask("c", "t", "g"), None, 0))
    # Envelope: command_id "c" (2 bytes), reply_to null branch (1 byte),
    # sent_at 0 (1 byte), then the body's branch index.
    body_index = HEADER_SIZE + 4
    assert data[body_index] == 2 * 6  # DropTask is branch 6
    data[body_index] = 2 * 7
    with pytest.raises(DecodeError):
        decode_command(bytes(data))
