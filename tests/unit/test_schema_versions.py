"""Schema files: naming, contiguous versions, and old writers read by the current reader."""

from __future__ import annotations

import io
import json
import re
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import avro.schema
import fastavro
import pytest
from fastavro.schema import to_parsing_canonical_form
from fastavro.utils import generate_many

from atf_es.events.codec import MARKER, Codec, SchemaError, find_schema_dir, get_codec
from atf_es.events.records import task_from_record
from tests.unit.avro_samples import EVENTS

FILE_NAME = re.compile(r"^(?P<name>[A-Z][A-Za-z0-9]*)\.v(?P<version>[1-9][0-9]*)\.avsc$")


def _versions(directory: Path) -> dict[str, list[int]]:
    found: dict[str, list[int]] = defaultdict(list)
    for path in directory.glob("*.avsc"):
        match = FILE_NAME.match(path.name)
        assert match, f"{path.name} is not <Name>.v<N>.avsc"
        found[match["name"]].append(int(match["version"]))
    return {name: sorted(v) for name, v in found.items()}


SCHEMA_DIR = find_schema_dir()
NAMES = sorted(_versions(SCHEMA_DIR))


def test_the_expected_records_exist() -> None:
    assert set(NAMES) >= {"Task", "TaskEvent", "Command", "WorkItem", "Reply", "PoisonRecord"}


@pytest.mark.parametrize("path", sorted(SCHEMA_DIR.glob("*.avsc")), ids=lambda p: p.name)
def test_every_file_parses_and_names_its_record(path: Path) -> None:
    schema = json.loads(path.read_text(encoding="utf-8"))
    fastavro.parse_schema(schema)
    avro.schema.parse(json.dumps(schema))
    name = FILE_NAME.match(path.name)
    assert name
    assert schema["type"] == "record"
    assert schema["namespace"] == "atf.v1"
    assert schema["name"] == name["name"]


@pytest.mark.parametrize("name", NAMES)
def test_versions_are_contiguous_from_one(name: str) -> None:
    versions = _versions(SCHEMA_DIR)[name]
    assert versions == list(range(1, len(versions) + 1))


def _encode_with(version: Any, datum: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    out.write(MARKER + version.fingerprint)
    fastavro.schemaless_writer(out, version.parsed, datum)
    return out.getvalue()


def assert_past_writers_decode(directory: Path, name: str) -> int:
    """Every version's writer is read by the current reader; returns versions checked."""
    codec = Codec(name, directory)
    for version in codec.versions:
        for datum in generate_many(version.parsed, 5):
            codec.decode(_encode_with(version, datum))
    return len(codec.versions)


@pytest.mark.parametrize("name", NAMES)
def test_every_past_version_decodes_with_the_current_reader(name: str) -> None:
    assert assert_past_writers_decode(SCHEMA_DIR, name) >= 1


def _named_types(node: Any, into: dict[str, Any]) -> dict[str, Any]:
    if isinstance(node, dict):
        if node.get("type") in ("record", "enum", "fixed"):
            into.setdefault(node["name"], []).append(node)
        for value in node.values():
            _named_types(value, into)
    elif isinstance(node, list):
        for value in node:
            _named_types(value, into)
    return into


def test_shared_named_types_agree_across_current_files() -> None:
    # Each file is self-contained, so Task (say) is spelled out in Task,
    # TaskEvent and Reply; the copies must not drift apart.
    seen: dict[str, set[str]] = defaultdict(set)
    for name in NAMES:
        schema = get_codec(name).current.schema
        for type_name, definitions in _named_types(schema, {}).items():
            for definition in definitions:
                standalone = {"namespace": "atf.v1", **definition}
                seen[type_name].add(to_parsing_canonical_form(fastavro.parse_schema(standalone)))
    drifted = {k: v for k, v in seen.items() if len(v) > 1}
    assert not drifted, f"named types defined differently in different files: {sorted(drifted)}"


# --- a test-local next version proves the machinery ---------------------------


TASK_VERSIONS = _versions(SCHEMA_DIR)["Task"]
NEXT = TASK_VERSIONS[-1] + 1


@pytest.fixture
def with_task_next(tmp_path: Path) -> Path:
    directory = tmp_path / "avro"
    shutil.copytree(SCHEMA_DIR, directory)
    current = json.loads((directory / f"Task.v{NEXT - 1}.avsc").read_text())
    following = {
        **current,
        "fields": [
            *current["fields"],
            {"name": "note", "type": ["null", "string"], "default": None},
        ],
    }
    (directory / f"Task.v{NEXT}.avsc").write_text(json.dumps(following))
    return directory


def test_next_reader_decodes_current_writer(with_task_next: Path) -> None:
    codec = Codec("Task", with_task_next)
    assert [v.version for v in codec.versions] == [*TASK_VERSIONS, NEXT]
    assert codec.current.version == NEXT
    task = EVENTS[4][1]
    written_now = get_codec("Task").encode(_task_record(task))
    record = codec.decode(written_now)
    assert record["note"] is None
    del record["note"]
    assert task_from_record(record) == task
    # The next version writes with its own fingerprint, and older data still decodes.
    assert codec.encode({**_task_record(task), "note": "x"})[2:10] == codec.current.fingerprint
    assert assert_past_writers_decode(with_task_next, "Task") == NEXT


def test_gap_in_versions_is_refused(with_task_next: Path) -> None:
    (with_task_next / f"Task.v{NEXT}.avsc").rename(with_task_next / f"Task.v{NEXT + 1}.avsc")
    with pytest.raises(SchemaError, match=r"not 1\.\.N"):
        Codec("Task", with_task_next)


def _task_record(task: Any) -> dict[str, Any]:
    from atf_es.events.records import task_to_record

    return task_to_record(task)


def test_a_lambda_defined_before_quotas_existed_has_no_quota() -> None:
    from atf_es.events.codec import decode_control
    from atf_es.events.policy import LambdaPolicy
    from atf_es.events.records import lambda_to_record

    codec = get_codec("ControlRecord")
    v1 = codec.versions[0]
    assert v1.version == 1 and codec.current.version >= 2
    record = lambda_to_record(LambdaPolicy("old", schedule_rate=5.0, schedule_burst=7), 123)
    body = record["body"][1]
    del body["schedule_rate"], body["schedule_burst"]  # what a v1 writer wrote
    policy = decode_control(_encode_with(v1, {**record, "body": body}))
    assert policy == LambdaPolicy("old")
    assert (policy.schedule_rate, policy.schedule_burst) == (0.0, 1_000)
