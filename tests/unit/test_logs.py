"""The log formats: one JSON object per line, or text with the context fields it lacks."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from atf_es import logs


@pytest.fixture
def root_handlers() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("atf_es.services.processor", logging.WARNING, "x.py", 1, message,
                               args, None)  # fmt: skip
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_is_one_object_per_line_with_the_context_fields() -> None:
    record = _record(
        "task %s dead-lettered\nafter %d attempts",
        "t-1",
        3,
        task_id="t-1",
        partition=4,
        payload=b"\xffraw",
        **{"lambda": "send_email"},
    )
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "atf_es.services.processor"
    assert entry["message"] == "task t-1 dead-lettered\nafter 3 attempts"
    assert entry["task_id"] == "t-1"
    assert entry["lambda"] == "send_email"
    assert entry["partition"] == 4
    assert entry["payload"] == "\ufffdraw"
    assert entry["time"].endswith("+00:00")
    # The known context comes first, after the fixed fields.
    assert list(entry)[:6] == ["time", "level", "logger", "message", "task_id", "lambda"]
    assert "args" not in entry and "msg" not in entry


def test_json_carries_the_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, "x.py", 1, "failed", None, sys.exc_info())
    entry = json.loads(logs.JsonFormatter().format(record))
    assert entry["message"] == "failed"
    assert "ValueError: boom" in entry["exception"]


def test_text_adds_only_the_context_its_sentence_lacks() -> None:
    record = _record("task %s failed", "abc4", task_id="abc4", partition=4, **{"lambda": "echo"})
    line = logs.TextFormatter().format(record)
    assert line.endswith("atf_es.services.processor: task abc4 failed [lambda=echo partition=4]")
    plain = logs.TextFormatter().format(_record("nothing to add"))
    assert plain.endswith("WARNING atf_es.services.processor: nothing to add")


def test_configure_selects_the_format(root_handlers: None) -> None:
    stream = io.StringIO()
    logs.configure("json", verbose=True, stream=stream)
    logging.getLogger("atf_es.test").info(
        "claim refused", extra={"task_id": "t-9", "worker": "w-1"}
    )
    entry = json.loads(stream.getvalue().strip())
    assert entry["task_id"] == "t-9" and entry["worker"] == "w-1"
    assert entry["level"] == "INFO"

    stream = io.StringIO()
    logs.configure("text", verbose=False, stream=stream)
    log = logging.getLogger("atf_es.test")
    log.info("hidden")
    log.warning("shown", extra={"task_id": "t-9"})
    assert stream.getvalue().splitlines()[-1].endswith("atf_es.test: shown [task_id=t-9]")
    assert "hidden" not in stream.getvalue()


def test_the_command_line_selects_the_format(
    root_handlers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from atf_es.cli import main

    monkeypatch.delenv("ATF_LOG_FORMAT", raising=False)
    assert main(["--log-format", "json", "config"]) == 0
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler.formatter, logs.JsonFormatter)
    monkeypatch.setenv("ATF_LOG_FORMAT", "text")
    assert main(["config"]) == 0
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler.formatter, logs.TextFormatter)
