"""What the codec writes, read by the official Apache ``avro`` package.

The schemas come straight from ``schemas/avro/*.avsc``, so this proves a
reader in any language holding those files can decode the log.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import pytest

from atf_es.events.codec import (
    HEADER_SIZE,
    MARKER,
    encode_command,
    encode_event,
    encode_poison,
    encode_reply,
    encode_task,
    encode_work,
    find_schema_dir,
    get_codec,
)
from atf_es.events.commands import Command
from atf_es.events.records import (
    command_to_record,
    event_to_record,
    poison_to_record,
    reply_to_record,
    task_to_record,
    work_to_record,
)
from atf_es.events.task import Task
from atf_es.events.transitions import Event
from tests.unit.avro_samples import COMMANDS, EVENTS, POISON, REPLIES, WORK

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _NamingDatumReader(avro.io.DatumReader):
    """Returns ``(full name, record)`` for a union with several record branches.

    That is how fastavro (``return_record_name_override``) and records.py
    spell such unions; without it ClaimTask and Heartbeat look the same.
    """

    def read_union(self, writers_schema: Any, readers_schema: Any, decoder: Any) -> object:
        index = int(decoder.read_long())
        selected = writers_schema.schemas[index]
        datum = self.read_data(selected, selected, decoder)
        records = [s for s in writers_schema.schemas if isinstance(s, avro.schema.RecordSchema)]
        if len(records) > 1 and isinstance(selected, avro.schema.RecordSchema):
            return (selected.fullname, datum)
        return datum


def _official_schema(name: str) -> avro.schema.Schema:
    path = _current_file(find_schema_dir(), name)
    return avro.schema.parse(path.read_text(encoding="utf-8"))


def _without_logical_types(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_without_logical_types(v) for v in node]
    return node


def _official_fingerprint(name: str) -> bytes:
    """CRC-64-AVRO of the schema's Parsing Canonical Form, computed by ``avro``.

    avro-python (1.12) writes a logical-type primitive in the canonical form
    as ``{"type":"long"}`` where the spec's [PRIMITIVES]/[STRIP] rules, and
    fastavro, give ``"long"``. Removing the logical types first makes both
    libraries agree on the canonical form, so this checks the CRC-64-AVRO
    algorithm and its byte order against the official implementation.
    """
    path = _current_file(find_schema_dir(), name)
    plain = _without_logical_types(json.loads(path.read_text(encoding="utf-8")))
    return avro.schema.parse(json.dumps(plain)).fingerprint("CRC-64-AVRO")


def _current_file(directory: Path, name: str) -> Path:
    versions = sorted(
        directory.glob(f"{name}.v*.avsc"), key=lambda p: int(p.name.split(".v")[1][:-5])
    )
    return versions[-1]


def _millis(value: Any) -> Any:
    """The official reader turns timestamp-millis into datetimes; turn them back."""
    if isinstance(value, datetime):
        return (value - EPOCH) // timedelta(milliseconds=1)
    if isinstance(value, dict):
        return {k: _millis(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_millis(v) for v in value)
    return value


def _official_decode(name: str, data: bytes) -> dict[str, Any]:
    schema = _official_schema(name)
    assert data[:2] == MARKER
    assert data[2:HEADER_SIZE] == _official_fingerprint(name)
    body = io.BytesIO(data[HEADER_SIZE:])
    decoded = _NamingDatumReader(schema, schema).read(avro.io.BinaryDecoder(body))
    assert body.tell() == len(data) - HEADER_SIZE, "trailing bytes"
    return _millis(decoded)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "name", ["Task", "TaskEvent", "Command", "WorkItem", "Reply", "PoisonRecord", "ControlRecord"]
)
def test_fingerprints_agree_with_the_official_library(name: str) -> None:
    from fastavro.schema import parse_schema, to_parsing_canonical_form

    official = _official_schema(name)
    ours = get_codec(name).current
    assert len(ours.fingerprint) == 8
    assert ours.fingerprint == _official_fingerprint(name)
    # The canonical forms differ only in avro-python's spelling of logical-type
    # primitives (see _official_fingerprint).
    canonical = to_parsing_canonical_form(parse_schema(ours.schema))
    assert official.canonical_form.replace('{"type":"long"}', '"long"') == canonical
    assert json.loads(canonical)["name"] == f"atf.v1.{name}"


@pytest.mark.parametrize(("event", "task"), EVENTS, ids=lambda x: type(x).__name__)
def test_events(event: Event, task: Task) -> None:
    assert _official_decode("TaskEvent", encode_event(event, task)) == event_to_record(event, task)


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: f"{type(c).__name__}-{c.command_id}")
@pytest.mark.parametrize("reply_to", [None, "atf.replies.gw-1:3"])
def test_commands(cmd: Command, reply_to: str | None) -> None:
    data = encode_command(cmd, reply_to, 1_700_000_000_123)
    assert _official_decode("Command", data) == command_to_record(cmd, reply_to, 1_700_000_000_123)


def test_work_replies_poison_tasks() -> None:
    assert _official_decode("WorkItem", encode_work(WORK)) == work_to_record(WORK)
    for reply in REPLIES:
        assert _official_decode("Reply", encode_reply(reply)) == reply_to_record(reply)
    for poison in POISON:
        assert _official_decode("PoisonRecord", encode_poison(poison)) == poison_to_record(poison)
    for _, task in EVENTS:
        assert _official_decode("Task", encode_task(task)) == task_to_record(task)


def test_control_records() -> None:
    from atf_es.events import LambdaPolicy
    from atf_es.events.codec import encode_lambda

    policy = LambdaPolicy(name="send_email", priorities=4, max_attempts=9, backoff_jitter=0.1)
    decoded = _official_decode("ControlRecord", encode_lambda(policy, 1_700_000_000_000))
    body = decoded["body"][1] if isinstance(decoded["body"], tuple) else decoded["body"]
    assert decoded["name"] == "lambda/send_email"
    assert body["lambda_name"] == "send_email"
    assert (body["priorities"], body["max_attempts"], body["backoff_jitter"]) == (4, 9, 0.1)
    assert body["heartbeat_timeout_ms"] == policy.heartbeat_timeout_ms
    assert body["default_failure"] == "RETRIABLE"


def test_official_writer_is_read_by_the_codec() -> None:
    # The other direction: bytes from the official library decode here.
    from atf_es.events.codec import decode_event

    event, task = EVENTS[2]
    schema = _official_schema("TaskEvent")
    record = event_to_record(event, task)
    out = io.BytesIO()
    writable = {
        **record,
        "at": EPOCH + timedelta(milliseconds=record["at"]),
        "deadline": EPOCH + timedelta(milliseconds=record["deadline"]),
        "task": _as_datetimes(record["task"]),
    }
    avro.io.DatumWriter(schema).write(writable, avro.io.BinaryEncoder(out))
    data = MARKER + _official_fingerprint("TaskEvent") + out.getvalue()
    assert decode_event(data) == (event, task)


def _as_datetimes(task_record: dict[str, Any]) -> dict[str, Any]:
    times = {
        "created_at",
        "scheduled_at",
        "next_trigger_at",
        "enqueued_at",
        "claimed_at",
        "started_at",
        "heartbeat_at",
        "finished_at",
    }
    return {
        k: EPOCH + timedelta(milliseconds=v) if k in times and v is not None else v
        for k, v in task_record.items()
    }
