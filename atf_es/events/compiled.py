"""Avro writers and readers compiled from a schema into Python functions.

fastavro interprets the schema for every message: for each field it looks
the type up, and for each ``["null", X]`` union it tests the value against
the branches. Our records are wide (a ``TaskEvent`` is 16 fields and a
41-field snapshot, most of them nullable), so that interpretation was the
largest single cost in the processor's profile (``bench/stages.py`` under
py-spy, docs/benchmarks.md "Compiled Avro"). Here a schema is turned once
into the source of one function per named record, in which every field is a
few straight-line statements, and ``exec``'d.

The output is the Avro binary encoding, byte for byte what fastavro writes
(``tests/unit/test_compiled_avro.py`` checks both directions against
fastavro for generated records of every schema). Only the shapes our schemas
use are compiled: records, enums, arrays, the primitives, ``["null", X]``
unions and unions of records (written and read as ``(full name, record)``
pairs, fastavro's ``return_record_name`` convention). For anything else
:func:`compile_writer` and :func:`compile_reader` return None and the codec
keeps fastavro. A reader is compiled for a writer schema read as itself;
reading an older version goes through fastavro's schema resolution.

Invalid values raise (``TypeError``, ``ValueError``, ``OverflowError``,
``KeyError``), as fastavro does, and the codec wraps them; a value fastavro
accepts by conversion (a float for a long, any object for a boolean) is
converted the same way.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

__all__ = ["UnsupportedSchemaError", "compile_reader", "compile_writer"]

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_BYTES_LIKE = (bytes, bytearray, memoryview)


class UnsupportedSchemaError(Exception):
    """A schema shape this module does not compile (the codec uses fastavro)."""


def _as_long(value: Any) -> int:
    # fastavro casts to a C long: an int (or bool) as is, a float truncated.
    if isinstance(value, (int, float)):
        number = int(value)
    else:
        raise TypeError(f"an integer is required, not {type(value).__name__}")
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise OverflowError(f"{number} does not fit in a 64-bit long")
    return number


def _write_long(out: bytearray, value: Any) -> None:
    number = value if type(value) is int and _INT64_MIN <= value <= _INT64_MAX else _as_long(value)
    if 0 <= number < 64:
        out.append(number << 1)
        return
    n = (number << 1) ^ (number >> 63)
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _write_string(out: bytearray, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"must be string, not {type(value).__name__}")
    data = value.encode()
    size = len(data)
    if size < 64:
        out.append(size << 1)
    else:
        _write_long(out, size)
    out += data


def _write_bytes(out: bytearray, value: Any) -> None:
    if not isinstance(value, _BYTES_LIKE):
        raise TypeError(f"a bytes-like object is required, not {type(value).__name__}")
    size = len(value) if not isinstance(value, memoryview) else value.nbytes
    if size < 64:
        out.append(size << 1)
    else:
        _write_long(out, size)
    out += value


def _fullname(name: str, namespace: str | None) -> str:
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


class _Compiler:
    """Collects generated functions, one per named record, keyed by full name."""

    def __init__(self) -> None:
        self.named: dict[str, dict[str, Any]] = {}
        self.functions: dict[str, str] = {}
        self.sources: list[str] = []
        self.constants: dict[str, Any] = {}

    def constant(self, value: Any) -> str:
        name = f"_k{len(self.constants)}"
        self.constants[name] = value
        return name

    def resolve(self, schema: Any, namespace: str | None) -> tuple[Any, str | None]:
        """A type with named references looked up, and the namespace it is in."""
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            full = _fullname(schema, namespace)
            if full not in self.named:
                raise UnsupportedSchemaError(f"unknown named type {schema!r}")
            node = self.named[full]
            return node, full.rpartition(".")[0] or None
        if isinstance(schema, dict) and schema.get("type") in ("record", "enum", "fixed"):
            full = _fullname(schema["name"], schema.get("namespace", namespace))
            self.named.setdefault(full, schema)
            return schema, full.rpartition(".")[0] or None
        return schema, namespace

    def type_name(self, schema: Any, namespace: str | None) -> str:
        node, ns = self.resolve(schema, namespace)
        if isinstance(node, str):
            return node
        if isinstance(node, list):
            return "union"
        kind = node["type"]
        if kind in ("record", "enum", "fixed"):
            return _fullname(node["name"], node.get("namespace", ns))
        if isinstance(kind, (dict, list)) or kind in _PRIMITIVES:
            return self.type_name(kind, ns) if not isinstance(kind, str) else kind
        return str(kind)

    prefix = "_f"

    def record_function(self, node: dict[str, Any], namespace: str | None) -> str:
        """The name of the generated function for a record, generating it once."""
        full = _fullname(node["name"], node.get("namespace", namespace))
        if full in self.functions:
            return self.functions[full]
        function = f"{self.prefix}{len(self.functions)}"
        self.functions[full] = function
        self.sources.append(self.record_source(function, node, full.rpartition(".")[0] or None))
        return function

    def record_source(self, function: str, node: dict[str, Any], ns: str | None) -> str:
        """The source of ``function`` for one record whose fields are in ``ns``."""
        raise NotImplementedError

    def emit(
        self, lines: list[str], schema: Any, namespace: str | None, value: str, pad: str
    ) -> None:
        node, ns = self.resolve(schema, namespace)
        if isinstance(node, list):
            self.emit_union(lines, node, ns, value, pad)
            return
        kind = node if isinstance(node, str) else node["type"]
        if isinstance(kind, (dict, list)):
            self.emit(lines, kind, ns, value, pad)
            return
        self.emit_type(lines, node, ns, value, pad)

    def emit_type(self, lines: list[str], node: Any, ns: str | None, value: str, pad: str) -> None:
        """Lines that write (or read) ``value`` of a type that is not a union."""
        raise NotImplementedError

    def emit_union(
        self, lines: list[str], branches: list[Any], namespace: str | None, value: str, pad: str
    ) -> None:
        """Lines that write (or read) ``value`` of a union type."""
        raise NotImplementedError

    def union_names(self, branches: list[Any], namespace: str | None) -> tuple[list[str], bool]:
        """The branches' type names, and whether the union is ``["null", X]``.

        Any other union must be of records only.
        """
        names = [self.type_name(b, namespace) for b in branches]
        if len(branches) == 2 and names[0] == "null" and names[1] not in ("null", "union"):
            return names, True
        resolved = [self.resolve(b, namespace)[0] for b in branches]
        if not all(isinstance(r, dict) and r.get("type") == "record" for r in resolved):
            raise UnsupportedSchemaError(f"union {names}")
        return names, False

    def compile(self, schema: Any, helpers: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
        """The executed module's namespace and the root function's name, or None."""
        if not isinstance(schema, dict) or schema.get("type") != "record":
            return None
        try:
            node, ns = self.resolve(schema, None)
            root = self.record_function(node, ns)
        except UnsupportedSchemaError:
            return None
        namespace = {**helpers, **self.constants}
        # Record-union tables name functions; the callers bind them once all exist.
        exec("\n\n".join(self.sources), namespace)  # our own generated source
        return namespace, root


class _WriterCompiler(_Compiler):
    prefix = "_w"

    def record_source(self, function: str, node: dict[str, Any], ns: str | None) -> str:
        lines = [f"def {function}(out, d):"]
        for field in node["fields"]:
            value = f"v{len(lines)}"
            if "default" in field:
                lines.append(
                    f"    {value} = d.get({field['name']!r}, {self.constant(field['default'])})"
                )
            else:
                lines.append(f"    {value} = d[{field['name']!r}]")
            self.emit(lines, field["type"], ns, value, "    ")
        if len(lines) == 1:
            lines.append("    pass")
        return "\n".join(lines)

    def emit_type(self, lines: list[str], node: Any, ns: str | None, value: str, pad: str) -> None:
        kind = node if isinstance(node, str) else node["type"]
        match kind:
            case "null":
                lines.append(f"{pad}if {value} is not None: raise TypeError('null expected')")
            case "boolean":
                lines.append(f"{pad}out.append(1 if {value} else 0)")
            case "int" | "long":
                lines.append(f"{pad}_write_long(out, {value})")
            case "float":
                lines.append(f"{pad}out += _pack_float({value})")
            case "double":
                lines.append(f"{pad}out += _pack_double({value})")
            case "string":
                lines.append(f"{pad}_write_string(out, {value})")
            case "bytes":
                lines.append(f"{pad}_write_bytes(out, {value})")
            case "enum":
                index = self.constant({s: i for i, s in enumerate(node["symbols"])})
                lines.append(f"{pad}out.append({index}[{value}] << 1)")
                if len(node["symbols"]) > 64:
                    raise UnsupportedSchemaError("an enum of more than 64 symbols")
            case "array":
                item = f"i{len(lines)}"
                lines.append(f"{pad}if {value}:")
                lines.append(f"{pad}    _write_long(out, len({value}))")
                lines.append(f"{pad}    for {item} in {value}:")
                self.emit(lines, node["items"], ns, item, pad + "        ")
                lines.append(f"{pad}out.append(0)")
            case "record":
                function = self.record_function(node, ns)
                lines.append(f"{pad}{function}(out, {value})")
            case _:
                raise UnsupportedSchemaError(f"type {kind!r}")

    def emit_union(
        self, lines: list[str], branches: list[Any], namespace: str | None, value: str, pad: str
    ) -> None:
        names, nullable = self.union_names(branches, namespace)
        if nullable:
            lines.append(f"{pad}if {value} is None:")
            lines.append(f"{pad}    out.append(0)")
            lines.append(f"{pad}else:")
            lines.append(f"{pad}    out.append(2)")
            self.emit(lines, branches[1], namespace, value, pad + "    ")
            return
        if len(branches) == 1:
            lines.append(f"{pad}out.append(0)")
            lines.append(f"{pad}if type({value}) is tuple: {value} = {value}[1]")
            self.emit(lines, branches[0], namespace, value, pad)
            return
        # Several records: written from fastavro's (full name, record) pairs.
        table = self.constant({})
        entries = self.constants[table]
        for index, branch in enumerate(branches):
            node, ns = self.resolve(branch, namespace)
            entries[names[index]] = (index << 1, self.record_function(node, ns))
        lines.append(f"{pad}_n, _r = {value}")
        lines.append(f"{pad}_i, _f = {table}[_n]")
        lines.append(f"{pad}out.append(_i)")
        lines.append(f"{pad}_f(out, _r)")


def compile_writer(schema: dict[str, Any]) -> Callable[[bytearray, Any], None] | None:
    """``write(out, record)`` appending the record's Avro body to ``out``, or None."""
    compiler = _WriterCompiler()
    helpers = {
        "_write_long": _write_long,
        "_write_string": _write_string,
        "_write_bytes": _write_bytes,
        "_pack_float": struct.Struct("<f").pack,
        "_pack_double": struct.Struct("<d").pack,
    }
    compiled = compiler.compile(schema, helpers)
    if compiled is None:
        return None
    namespace, root = compiled
    for value in compiler.constants.values():
        if isinstance(value, dict):
            for key, entry in list(value.items()):
                if isinstance(entry, tuple) and isinstance(entry[1], str):
                    value[key] = (entry[0], namespace[entry[1]])
    writer: Callable[[bytearray, Any], None] = namespace[root]
    return writer


# ---- reading ---------------------------------------------------------------------------------


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    b = data[pos]
    pos += 1
    n = b & 0x7F
    shift = 7
    while b & 0x80:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if shift > 70:
            raise ValueError("a varint longer than 10 bytes")
    return (n >> 1) ^ -(n & 1), pos


def _read_size(data: bytes, pos: int) -> tuple[int, int]:
    b = data[pos]
    if b < 0x80:
        size = b >> 1
        if b & 1:
            raise ValueError(f"negative length {-(size + 1)}")
        pos += 1
    else:
        size, pos = _read_long(data, pos)
        if size < 0:
            raise ValueError(f"negative length {size}")
    if pos + size > len(data):
        raise EOFError(f"Expected {size} bytes, read {len(data) - pos}")
    return size, pos


class _ReaderCompiler(_Compiler):
    prefix = "_r"

    def record_source(self, function: str, node: dict[str, Any], ns: str | None) -> str:
        lines = [f"def {function}(data, pos):"]
        names = []
        for field in node["fields"]:
            value = f"v{len(lines)}"
            self.emit(lines, field["type"], ns, value, "    ")
            names.append((field["name"], value))
        body = ", ".join(f"{name!r}: {value}" for name, value in names)
        lines.append(f"    return {{{body}}}, pos")
        return "\n".join(lines)

    def emit_type(self, lines: list[str], node: Any, ns: str | None, value: str, pad: str) -> None:
        kind = node if isinstance(node, str) else node["type"]
        match kind:
            case "null":
                lines.append(f"{pad}{value} = None")
            case "boolean":
                lines.append(f"{pad}_b = data[pos]; pos += 1")
                lines.append(f"{pad}if _b > 1: raise ValueError(f'bad boolean byte {{_b}}')")
                lines.append(f"{pad}{value} = _b == 1")
            case "int" | "long":
                lines.append(f"{pad}_b = data[pos]")
                lines.append(f"{pad}if _b < 0x80:")
                lines.append(f"{pad}    {value} = (_b >> 1) ^ -(_b & 1); pos += 1")
                lines.append(f"{pad}else:")
                lines.append(f"{pad}    {value}, pos = _read_long(data, pos)")
            case "float" | "double":
                size, unpack = (4, "_unpack_float") if kind == "float" else (8, "_unpack_double")
                lines.append(f"{pad}if pos + {size} > len(data):")
                lines.append(
                    f"{pad}    raise EOFError(f'Expected {size} bytes, read {{len(data) - pos}}')"
                )
                lines.append(f"{pad}{value}, = {unpack}(data, pos); pos += {size}")
            case "string":
                lines.append(f"{pad}_n, pos = _read_size(data, pos)")
                lines.append(f"{pad}{value} = data[pos:pos + _n].decode(); pos += _n")
            case "bytes":
                lines.append(f"{pad}_n, pos = _read_size(data, pos)")
                lines.append(f"{pad}{value} = data[pos:pos + _n]; pos += _n")
            case "enum":
                symbols = self.constant(tuple(node["symbols"]))
                lines.append(f"{pad}_i, pos = _read_long(data, pos)")
                lines.append(f"{pad}if _i < 0: raise IndexError(f'enum index {{_i}}')")
                lines.append(f"{pad}{value} = {symbols}[_i]")
            case "array":
                item = f"i{len(lines)}"
                lines.append(f"{pad}{value} = []")
                lines.append(f"{pad}while True:")
                lines.append(f"{pad}    _c, pos = _read_long(data, pos)")
                lines.append(f"{pad}    if _c == 0: break")
                lines.append(f"{pad}    if _c < 0:")
                lines.append(f"{pad}        _c = -_c")
                lines.append(f"{pad}        _, pos = _read_long(data, pos)")
                # An item takes a byte at least (arrays of null are not compiled):
                # a count beyond the bytes left is garbage, refused before looping.
                if self.type_name(node["items"], ns) == "null":
                    raise UnsupportedSchemaError("an array of null")
                left = "len(data) - pos"
                lines.append(f"{pad}    if _c > {left}:")
                lines.append(f"{pad}        raise EOFError(f'{{_c}} items in {{{left}}} bytes')")
                lines.append(f"{pad}    for _ in range(_c):")
                self.emit(lines, node["items"], ns, item, pad + "        ")
                lines.append(f"{pad}        {value}.append({item})")
            case "record":
                function = self.record_function(node, ns)
                lines.append(f"{pad}{value}, pos = {function}(data, pos)")
            case _:
                raise UnsupportedSchemaError(f"type {kind!r}")

    def emit_union(
        self, lines: list[str], branches: list[Any], namespace: str | None, value: str, pad: str
    ) -> None:
        names, nullable = self.union_names(branches, namespace)
        if nullable:
            lines.append(f"{pad}_u = data[pos]; pos += 1")
            lines.append(f"{pad}if _u == 0:")
            lines.append(f"{pad}    {value} = None")
            lines.append(f"{pad}elif _u == 2:")
            self.emit(lines, branches[1], namespace, value, pad + "    ")
            lines.append(f"{pad}else:")
            lines.append(
                f"{pad}    raise IndexError(f'union index {{(_u >> 1) ^ -(_u & 1)}} of 2 branches')"
            )
            return
        if len(branches) == 1:
            lines.append(f"{pad}_u = data[pos]; pos += 1")
            lines.append(f"{pad}if _u != 0: raise IndexError('union index of 1 branch')")
            self.emit(lines, branches[0], namespace, value, pad)
            return
        table = self.constant([])
        entries = self.constants[table]
        for branch, name in zip(branches, names, strict=True):
            node, ns = self.resolve(branch, namespace)
            entries.append((name, self.record_function(node, ns)))
        lines.append(f"{pad}_u, pos = _read_long(data, pos)")
        lines.append(f"{pad}if _u < 0: raise IndexError(f'union index {{_u}}')")
        lines.append(f"{pad}_n, _f = {table}[_u]")
        lines.append(f"{pad}_r, pos = _f(data, pos)")
        lines.append(f"{pad}{value} = (_n, _r)")


def compile_reader(schema: dict[str, Any]) -> Callable[[bytes, int], tuple[Any, int]] | None:
    """``read(data, pos) -> (record, end)`` for bodies written with ``schema``, or None.

    Records come back as fastavro returns them with ``return_record_name`` and
    ``return_record_name_override``: a union of several records as a
    ``(full name, record)`` pair, any other value plain. Truncated input
    raises ``IndexError`` or ``EOFError``; bad UTF-8, ``UnicodeDecodeError``.
    """
    compiler = _ReaderCompiler()
    helpers = {
        "_read_long": _read_long,
        "_read_size": _read_size,
        "_unpack_float": struct.Struct("<f").unpack_from,
        "_unpack_double": struct.Struct("<d").unpack_from,
    }
    compiled = compiler.compile(schema, helpers)
    if compiled is None:
        return None
    namespace, root = compiled
    for value in compiler.constants.values():
        if isinstance(value, list):
            value[:] = [(name, namespace[function]) for name, function in value]
    reader: Callable[[bytes, int], tuple[Any, int]] = namespace[root]
    return reader
