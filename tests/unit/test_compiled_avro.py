"""The compiled Avro writers and readers against fastavro, for every schema file.

For records generated from each ``schemas/avro/*.avsc`` (every version, not
only the current one), the compiled writer must produce fastavro's bytes and
the compiled reader must return what fastavro reads, and a body cut short
anywhere must be refused, never read as a different record.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atf_es.events import compiled
from atf_es.events.codec import _without_logical_types, find_schema_dir

SCHEMA_FILES = sorted(find_schema_dir().glob("*.avsc"))
PRIMITIVES = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1),
    "float": st.floats(width=32, allow_nan=False),
    "double": st.floats(allow_nan=False),
    "string": st.text(max_size=80),
    "bytes": st.binary(max_size=80),
}


def _records(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Valid records of ``schema``, as fastavro writes and reads them."""
    named: dict[str, Any] = {}

    def full(name: str, namespace: str | None) -> str:
        return name if "." in name or not namespace else f"{namespace}.{name}"

    def build(node: Any, namespace: str | None) -> st.SearchStrategy[Any]:
        if isinstance(node, str):
            if node in PRIMITIVES:
                return PRIMITIVES[node]
            fullname = full(node, namespace)
            return st.deferred(lambda: build(named[fullname], fullname.rpartition(".")[0]))
        if isinstance(node, list):
            branches = [_resolved(b, namespace) for b in node]
            if all(kind == "record" for kind, _ in branches) and len(branches) > 1:
                return st.one_of(
                    [
                        st.tuples(st.just(name), build(b, namespace))
                        for b, (_, name) in zip(node, branches, strict=True)
                    ]
                )
            return st.one_of([build(b, namespace) for b in node])
        kind = node["type"]
        if kind in ("record", "enum"):
            fullname = full(node["name"], node.get("namespace", namespace))
            named[fullname] = node
            ns = fullname.rpartition(".")[0]
            if kind == "enum":
                return st.sampled_from(node["symbols"])
            fields = {f["name"]: build(f["type"], ns) for f in node["fields"]}
            return st.fixed_dictionaries(fields)
        if kind == "array":
            return st.lists(build(node["items"], namespace), max_size=3)
        return build(kind, namespace)

    def _resolved(node: Any, namespace: str | None) -> tuple[str, str]:
        if isinstance(node, dict) and node["type"] == "record":
            return "record", full(node["name"], node.get("namespace", namespace))
        if isinstance(node, str) and node not in PRIMITIVES:
            fullname = full(node, namespace)
            return named[fullname]["type"], fullname
        return "other", ""

    return build(schema, None)


def _fastavro_bytes(parsed: Any, record: Any) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, parsed, record)
    return out.getvalue()


def _fastavro_read(parsed: Any, data: bytes) -> Any:
    return fastavro.schemaless_reader(
        io.BytesIO(data), parsed, None, return_record_name=True, return_record_name_override=True
    )


@pytest.fixture(scope="module", params=SCHEMA_FILES, ids=lambda p: p.name)
def schema_file(request: pytest.FixtureRequest) -> Path:
    path: Path = request.param
    return path


def test_every_schema_file_compiles(schema_file: Path) -> None:
    schema = _without_logical_types(json.loads(schema_file.read_text()))
    assert compiled.compile_writer(schema) is not None
    assert compiled.compile_reader(schema) is not None


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compiled_code_writes_and_reads_what_fastavro_does(path: Path, data: st.DataObject) -> None:
    schema = _without_logical_types(json.loads(path.read_text()))
    write = compiled.compile_writer(schema)
    read = compiled.compile_reader(schema)
    assert write is not None and read is not None
    parsed = fastavro.parse_schema(schema)
    record = data.draw(_records(schema))
    expected = _fastavro_bytes(parsed, record)
    out = bytearray()
    write(out, record)
    assert bytes(out) == expected
    value, end = read(expected, 0)
    assert end == len(expected)
    assert value == _fastavro_read(parsed, expected)
    cut = data.draw(st.integers(0, len(expected) - 1))
    with pytest.raises((IndexError, EOFError, ValueError)):
        read(expected[:cut], 0)


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("long", 2**63),
        ("long", -(2**63) - 1),
        ("long", "5"),
        ("string", b"bytes"),
        ("string", None),
        ("bytes", "text"),
        ("bytes", 5),
        ({"type": "enum", "name": "E", "symbols": ["A"]}, "B"),
        (["null", "string"], 5),
    ],
)
def test_a_value_fastavro_refuses_is_refused(kind: Any, value: Any) -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "f", "type": kind}]}
    write = compiled.compile_writer(schema)
    assert write is not None
    with pytest.raises(Exception):  # noqa: B017 - fastavro raises several types; so do we
        _fastavro_bytes(fastavro.parse_schema(schema), {"f": value})
    with pytest.raises((TypeError, ValueError, OverflowError, KeyError)):
        write(bytearray(), {"f": value})


def test_a_missing_field_takes_its_default_or_is_refused() -> None:
    schema = {
        "type": "record",
        "name": "R",
        "fields": [{"name": "f", "type": "long"}, {"name": "g", "type": "long", "default": 7}],
    }
    write = compiled.compile_writer(schema)
    assert write is not None
    out = bytearray()
    write(out, {"f": 1})
    assert bytes(out) == _fastavro_bytes(fastavro.parse_schema(schema), {"f": 1})
    with pytest.raises(KeyError):
        write(bytearray(), {"g": 1})


def test_a_shape_it_does_not_compile_is_left_to_fastavro() -> None:
    schema = {
        "type": "record",
        "name": "R",
        "fields": [{"name": "m", "type": {"type": "map", "values": "long"}}],
    }
    assert compiled.compile_writer(schema) is None
    assert compiled.compile_reader(schema) is None
