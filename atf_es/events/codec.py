"""Avro single-object encoding of events, commands, work items, replies and poison.

Each message is ``C3 01`` + the 8-byte little-endian CRC-64-AVRO fingerprint
of the writer schema's Parsing Canonical Form + the schemaless Avro body, as
the Avro specification defines it, so any Avro library holding
``schemas/avro/*.avsc`` can read what this module writes.

A :class:`Codec` serves one record name and knows every version of it
(``<Name>.v<N>.avsc``): it writes with the highest version and reads any
known version, resolving it to the highest. Schemas are parsed once, when a
codec is first used. Decoding never raises anything but :class:`DecodeError`.

Schemas are found in ``atf_es/schemas/avro`` (a link to the repository's
``schemas/`` directory in a checkout, a copy in a built wheel), falling back
to ``schemas/avro`` next to the package in a source checkout.
"""

from __future__ import annotations

import functools
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import fastavro
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from atf_es.events.commands import Command
from atf_es.events.compiled import compile_reader, compile_writer
from atf_es.events.gates import Gate
from atf_es.events.periodic import PeriodicSchedule
from atf_es.events.policy import LambdaPolicy
from atf_es.events.records import (
    CommandEnvelope,
    Record,
    command_from_record,
    command_to_record,
    control_from_record,
    event_from_record,
    event_to_record,
    gate_to_record,
    lambda_to_record,
    periodic_to_record,
    poison_from_record,
    poison_to_record,
    reply_from_record,
    reply_to_record,
    task_from_record,
    task_to_record,
    work_from_record,
    work_to_record,
)
from atf_es.events.replies import PoisonRecord, Reply
from atf_es.events.task import Task
from atf_es.events.transitions import Event
from atf_es.events.work import WorkItem

__all__ = [
    "HEADER_SIZE",
    "MARKER",
    "Codec",
    "DecodeError",
    "EncodeError",
    "SchemaError",
    "SchemaVersion",
    "crc64_avro",
    "decode_command",
    "decode_control",
    "decode_event",
    "decode_poison",
    "decode_reply",
    "decode_task",
    "decode_work",
    "encode_command",
    "encode_event",
    "encode_gate",
    "encode_lambda",
    "encode_periodic",
    "encode_poison",
    "encode_reply",
    "encode_task",
    "encode_work",
    "find_schema_dir",
    "get_codec",
]

MARKER: Final = b"\xc3\x01"
HEADER_SIZE: Final = len(MARKER) + 8


class DecodeError(Exception):
    """Bytes that are not a valid message of the expected record.

    Wraps every cause: a bad marker, an unknown fingerprint, a truncated body,
    trailing bytes, an invalid enum symbol or union branch, bad UTF-8, or a
    record that means nothing in the domain.
    """


class EncodeError(ValueError):
    """A domain object that cannot be written (e.g. a value out of its Avro range)."""


class SchemaError(Exception):
    """The schema files on disk are missing, malformed or not contiguous."""


def find_schema_dir() -> Path:
    """The directory holding the ``*.avsc`` files."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "schemas" / "avro", package.parent / "schemas" / "avro"):
        if candidate.is_dir():
            return candidate
    raise SchemaError(f"no schemas/avro directory in or next to {package}")


def crc64_avro(schema: dict[str, Any]) -> bytes:
    """The CRC-64-AVRO (Rabin) fingerprint of a schema, little-endian, as the spec says."""
    canonical = to_parsing_canonical_form(fastavro.parse_schema(schema))
    # fastavro spells the fingerprint as hex of the little-endian bytes.
    return bytes.fromhex(_fastavro_fingerprint(canonical, "CRC-64-AVRO"))


def _without_logical_types(node: Any) -> Any:
    # Times stay plain epoch-millisecond ints in Python; the logical type
    # matters to other readers only and is not part of the canonical form,
    # so the fingerprint is unchanged.
    if isinstance(node, dict):
        return {k: _without_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_without_logical_types(v) for v in node]
    return node


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One ``<Name>.v<N>.avsc`` file, parsed."""

    version: int
    path: Path
    schema: dict[str, Any]
    """The JSON as written in the file."""
    fingerprint: bytes
    parsed: Any
    """The fastavro-parsed schema, without logical types."""


def _load_versions(name: str, directory: Path) -> tuple[SchemaVersion, ...]:
    pattern = re.compile(rf"^{re.escape(name)}\.v([1-9][0-9]*)\.avsc$")
    found: dict[int, Path] = {}
    for path in directory.iterdir():
        match = pattern.match(path.name)
        if match:
            found[int(match.group(1))] = path
    if not found:
        raise SchemaError(f"no {name}.v<N>.avsc in {directory}")
    if sorted(found) != list(range(1, len(found) + 1)):
        raise SchemaError(f"{name} versions in {directory} are not 1..N: {sorted(found)}")
    versions = []
    for number in sorted(found):
        path = found[number]
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
            versions.append(
                SchemaVersion(
                    version=number,
                    path=path,
                    schema=schema,
                    fingerprint=crc64_avro(schema),
                    parsed=fastavro.parse_schema(_without_logical_types(schema)),
                )
            )
        except Exception as exc:
            raise SchemaError(f"{path}: {exc}") from exc
    return tuple(versions)


class Codec:
    """Single-object encoding of one record name, across all its versions."""

    __slots__ = ("_by_fingerprint", "_current", "_header", "_read", "_write", "name", "versions")

    def __init__(self, name: str, directory: Path | None = None) -> None:
        self.name = name
        self.versions = _load_versions(name, directory or find_schema_dir())
        self._current = self.versions[-1]
        self._header = MARKER + self._current.fingerprint
        self._by_fingerprint = {v.fingerprint: v for v in self.versions}
        if len(self._by_fingerprint) != len(self.versions):
            raise SchemaError(f"two versions of {name} have the same canonical form")
        # The current version compiled (atf_es.events.compiled); None keeps fastavro.
        plain = _without_logical_types(self._current.schema)
        self._write = compile_writer(plain)
        self._read = compile_reader(plain)

    @property
    def current(self) -> SchemaVersion:
        """The version this codec writes and resolves every read to."""
        return self._current

    def encode(self, record: Record) -> bytes:
        if self._write is not None:
            buffer = bytearray(self._header)
            try:
                self._write(buffer, record)
            except Exception as exc:
                raise EncodeError(f"cannot encode {self.name}: {exc}") from exc
            return bytes(buffer)
        out = io.BytesIO()
        out.write(self._header)
        try:
            fastavro.schemaless_writer(out, self._current.parsed, record)
        except Exception as exc:
            raise EncodeError(f"cannot encode {self.name}: {exc}") from exc
        return out.getvalue()

    def decode(self, data: bytes | bytearray | memoryview) -> Record:
        try:
            buf = bytes(data)
        except Exception as exc:
            raise DecodeError(f"{self.name}: not bytes ({type(data).__name__})") from exc
        if len(buf) < HEADER_SIZE:
            raise DecodeError(f"{self.name}: {len(buf)} bytes is shorter than the header")
        if buf[:2] != MARKER:
            raise DecodeError(f"{self.name}: bad marker {buf[:2].hex()}, want c301")
        writer = self._by_fingerprint.get(buf[2:HEADER_SIZE])
        if writer is None:
            raise DecodeError(f"{self.name}: unknown schema fingerprint {buf[2:HEADER_SIZE].hex()}")
        if writer is self._current and self._read is not None:
            try:
                record, end = self._read(buf, HEADER_SIZE)
            except Exception as exc:
                raise DecodeError(
                    f"{self.name} v{writer.version}: {type(exc).__name__}: {exc}"
                ) from exc
            if end != len(buf):
                raise DecodeError(f"{self.name}: {len(buf) - end} trailing bytes")
            if not isinstance(record, dict):  # pragma: no cover - a compiled record is a dict
                raise DecodeError(f"{self.name}: body is not a record")
            return record
        reader = None if writer is self._current else self._current.parsed
        body = io.BytesIO(buf)
        body.seek(HEADER_SIZE)
        try:
            record = fastavro.schemaless_reader(
                body,
                writer.parsed,
                reader,
                return_record_name=True,
                return_record_name_override=True,
            )
        except Exception as exc:
            raise DecodeError(
                f"{self.name} v{writer.version}: {type(exc).__name__}: {exc}"
            ) from exc
        if body.tell() != len(buf):
            raise DecodeError(f"{self.name}: {len(buf) - body.tell()} trailing bytes")
        if not isinstance(record, dict):
            raise DecodeError(f"{self.name}: body is not a record")
        return record


@functools.cache
def get_codec(name: str) -> Codec:
    """The shared codec for a record name in the installed schemas."""
    return Codec(name)


def _encode(codec_name: str, to_record: Callable[..., Record], *args: Any) -> bytes:
    try:
        record = to_record(*args)
    except Exception as exc:
        raise EncodeError(f"cannot encode {codec_name}: {exc}") from exc
    return get_codec(codec_name).encode(record)


def encode_event(event: Event, task_after: Task) -> bytes:
    return _encode("TaskEvent", event_to_record, event, task_after)


def decode_event(data: bytes | bytearray | memoryview) -> tuple[Event, Task]:
    record = get_codec("TaskEvent").decode(data)
    try:
        return event_from_record(record)
    except Exception as exc:
        raise DecodeError(f"TaskEvent: {exc}") from exc


def encode_command(cmd: Command, reply_to: str | None, sent_at: int) -> bytes:
    return _encode("Command", command_to_record, cmd, reply_to, sent_at)


def decode_command(data: bytes | bytearray | memoryview) -> CommandEnvelope:
    record = get_codec("Command").decode(data)
    try:
        return command_from_record(record)
    except Exception as exc:
        raise DecodeError(f"Command: {exc}") from exc


def encode_task(task: Task) -> bytes:
    return _encode("Task", task_to_record, task)


def decode_task(data: bytes | bytearray | memoryview) -> Task:
    record = get_codec("Task").decode(data)
    try:
        return task_from_record(record)
    except Exception as exc:
        raise DecodeError(f"Task: {exc}") from exc


def encode_work(item: WorkItem) -> bytes:
    return _encode("WorkItem", work_to_record, item)


def decode_work(data: bytes | bytearray | memoryview) -> WorkItem:
    record = get_codec("WorkItem").decode(data)
    try:
        return work_from_record(record)
    except Exception as exc:
        raise DecodeError(f"WorkItem: {exc}") from exc


def encode_reply(reply: Reply) -> bytes:
    return _encode("Reply", reply_to_record, reply)


def decode_reply(data: bytes | bytearray | memoryview) -> Reply:
    record = get_codec("Reply").decode(data)
    try:
        return reply_from_record(record)
    except Exception as exc:
        raise DecodeError(f"Reply: {exc}") from exc


def encode_poison(poison: PoisonRecord) -> bytes:
    return _encode("PoisonRecord", poison_to_record, poison)


def decode_poison(data: bytes | bytearray | memoryview) -> PoisonRecord:
    record = get_codec("PoisonRecord").decode(data)
    try:
        return poison_from_record(record)
    except Exception as exc:
        raise DecodeError(f"PoisonRecord: {exc}") from exc


def encode_lambda(policy: LambdaPolicy, at: int) -> bytes:
    return _encode("ControlRecord", lambda_to_record, policy, at)


def encode_gate(gate: Gate) -> bytes:
    return _encode("ControlRecord", gate_to_record, gate)


def encode_periodic(schedule: PeriodicSchedule) -> bytes:
    return _encode("ControlRecord", periodic_to_record, schedule)


def decode_control(data: bytes | bytearray | memoryview) -> LambdaPolicy | Gate | PeriodicSchedule:
    record = get_codec("ControlRecord").decode(data)
    try:
        return control_from_record(record)
    except Exception as exc:
        raise DecodeError(f"ControlRecord: {exc}") from exc
