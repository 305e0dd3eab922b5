"""Log output of every ``atf-es`` command: text lines or one JSON object per line.

Context travels in the standard ``extra=`` mapping, never only inside the
sentence, so that a log pipeline can select every line about a task::

    log.warning("task %s dead-lettered", task.task_id,
                extra={"task_id": task.task_id, "lambda": task.lambda_name})

``settings.log_format`` (``ATF_LOG_FORMAT``, ``--log-format``) chooses:

- ``text``: ``time level logger: message``, followed by ``[key=value ...]``
  for the context fields the message does not already show (as a word);
- ``json``: ``{"time", "level", "logger", "message", ...context,
  "exception"}``, one object per line (docs/metrics.md).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["CONTEXT_FIELDS", "JsonFormatter", "TextFormatter", "configure", "context_of"]

CONTEXT_FIELDS = ("task_id", "lambda", "partition", "lease", "attempt", "worker", "status")
"""The context fields atf-es passes; any other ``extra=`` key is kept as well."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Every attribute a LogRecord has before ``extra=`` adds its own.
_STANDARD = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)


def context_of(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of ``record``, the known ones first."""
    extra = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
    known = {k: extra.pop(k) for k in CONTEXT_FIELDS if k in extra}
    return known | extra


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in context_of(record).items():
            if key not in entry:
                entry[key] = _jsonable(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The classic line, plus the context fields its sentence does not show."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        line = super().formatMessage(record)
        shown = [
            f"{key}={value}"
            for key, value in context_of(record).items()
            if not re.search(rf"(?<![\w-]){re.escape(str(value))}(?![\w-])", record.message)
        ]
        return f"{line} [{' '.join(shown)}]" if shown else line


def configure(
    log_format: str = "text", *, verbose: bool = False, stream: TextIO | None = None
) -> None:
    """Send every log record to stderr (or ``stream``) in ``log_format``."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
