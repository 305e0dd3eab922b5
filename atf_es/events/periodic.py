"""Periodic schedules: when their occurrences fall, and which ones to fire.

A schedule names a lambda, the task to schedule (collection, priority,
payload) and when: a cron expression in a time zone, or a fixed interval.
It lives in the control topic under ``periodic/<name>`` and is fired by the
processor that owns partition ``partition_of(name)``: there is no scheduler
process to run, or to run twice. Each occurrence becomes one task whose id
is a function of the schedule and the occurrence time
(:func:`occurrence_task_id`), placed on the schedule's own partition, so
the owner records it in its own transaction and a second attempt to fire
it (after a crash, a takeover, a replay) finds the task already there.

Everything here is pure: times are epoch milliseconds passed in, never read.

Cron expressions have the five classic fields (minute, hour, day of month,
month, day of week) with ``*``, lists, ranges, steps and English names, and
the macros ``@hourly``, ``@daily``, ``@weekly``, ``@monthly`` and
``@yearly``. As in Vixie cron, when both day fields are restricted a day
matching either one matches. Times are wall-clock times in the schedule's
zone: an occurrence that falls in a daylight-saving gap fires at the same
wall-clock time under the earlier offset (so, an hour later than written:
02:30 on a spring-forward night fires at 03:30), and one in a repeated
hour fires once, the first time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from atf_es.events.placement import id_on_partition, partition_of
from atf_es.events.policy import COLLECTION_NAME, LAMBDA_NAME

PERIODIC_PREFIX = "periodic/"
"""Control-topic keys of schedules: ``periodic/<name>``."""
TASK_ID_PREFIX = "periodic:"
"""Task ids of occurrences, ``periodic:<name>:<13-digit ms>[~N]``; reserved."""
SCHEDULE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
MAX_LOOKBACK_MS = 7 * 24 * 3_600_000
"""How far back an owner looks for occurrences it has not fired (a week)."""
MAX_CATCH_UP = 1_000
MIN_EVERY_MS = 100


class PeriodicError(ValueError):
    """A schedule, cron expression or time zone that cannot be used."""


class Misfire(StrEnum):
    """What an owner does with occurrences it reaches late (after an outage)."""

    SKIP = "skip"
    """Fire only occurrences at most ``misfire_grace_ms`` late; skip the rest."""
    CATCH_UP = "catch_up"
    """Fire the missed occurrences, at most the ``catch_up_max`` latest of them."""


# -- cron ------------------------------------------------------------------------

_MONTHS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
        start=1,
    )
}
_DAYS = {
    name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
}
_MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
_MAX_STEPS = 200_000
"""Bound on one search (no expression needs it: the worst, Feb 29 on a
given weekday, is found within 28 years of days)."""
_MAX_YEARS = 30


def _value(text: str, low: int, high: int, names: dict[str, int], field: str) -> int:
    number = names.get(text.lower())
    if number is None:
        if not text.isdigit():
            raise PeriodicError(f"cron {field}: {text!r} is not a number or a name")
        number = int(text)
    if not low <= number <= high:
        raise PeriodicError(f"cron {field}: {number} is outside {low}-{high}")
    return number


def _field(text: str, low: int, high: int, names: dict[str, int], field: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        spec, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise PeriodicError(f"cron {field}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if spec == "*":
            start, end = low, high
        elif "-" in spec:
            first, _, last = spec.partition("-")
            start = _value(first, low, high, names, field)
            end = _value(last, low, high, names, field)
            if end < start:
                raise PeriodicError(f"cron {field}: range {spec!r} runs backwards")
        else:
            start = _value(spec, low, high, names, field)
            end = high if slash else start
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True, slots=True)
class Cron:
    """A parsed five-field cron expression."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    """0 is Sunday (7, also Sunday, is folded into 0)."""
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, expression: str) -> Cron:
        text = " ".join(expression.split())
        text = _MACROS.get(text.lower(), text)
        parts = text.split(" ")
        if len(parts) != 5 or not text:
            raise PeriodicError(
                f"cron expression {expression!r} must have 5 fields "
                "(minute hour day-of-month month day-of-week) or be a macro such as @daily"
            )
        minutes, hours, days, months, weekdays = (
            _field(part, low, high, names, field)
            for part, (field, low, high, names) in zip(parts, _FIELDS, strict=True)
        )
        weekdays = frozenset(day % 7 for day in weekdays)
        return cls(
            expression,
            minutes,
            hours,
            days,
            months,
            weekdays,
            any_day=parts[2].startswith("*"),
            any_weekday=parts[4].startswith("*"),
        )

    def _day_matches(self, day: datetime) -> bool:
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            # One of them is '*' (or '*/n'): both must match.
            return in_month and in_week
        return in_month or in_week

    def next_after(self, after_ms: int, zone: ZoneInfo) -> int | None:
        """The first occurrence strictly after ``after_ms``; None if there is none."""
        local = datetime.fromtimestamp(after_ms / 1000, UTC).astimezone(zone)
        t = local.replace(second=0, microsecond=0, tzinfo=None, fold=0) + timedelta(minutes=1)
        last_year = t.year + _MAX_YEARS
        for _ in range(_MAX_STEPS):
            if t.year > last_year:
                return None
            if t.month not in self.months:
                t = datetime(t.year + (t.month == 12), t.month % 12 + 1, 1)
            elif not self._day_matches(t):
                t = datetime(t.year, t.month, t.day) + timedelta(days=1)
            elif t.hour not in self.hours:
                t = datetime(t.year, t.month, t.day, t.hour) + timedelta(hours=1)
            elif t.minute not in self.minutes:
                t += timedelta(minutes=1)
            else:
                at = int(t.replace(tzinfo=zone).timestamp() * 1000)
                if at > after_ms:
                    return at
                t += timedelta(minutes=1)
        return None


@lru_cache(maxsize=256)
def parse_cron(expression: str) -> Cron:
    return Cron.parse(expression)


@lru_cache(maxsize=64)
def zone_of(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise PeriodicError(
            f"time zone {name!r} is not known (an IANA name such as 'Europe/Paris')"
        ) from exc


# -- schedules -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeriodicSchedule:
    """A periodic schedule as the control topic holds it.

    Exactly one of ``cron`` and ``every_ms`` is set. Interval occurrences
    fall at ``start_ms + k * every_ms`` (at multiples of ``every_ms`` since
    the epoch when there is no start, so every minute is on the minute).
    ``defined_at`` is when the record was written: the schedule was added,
    changed, paused or resumed then, and no occurrence before it fires.
    """

    name: str
    lambda_name: str
    collection: str = "default"
    priority: int = 0
    payload: bytes = b""
    cron: str | None = None
    every_ms: int | None = None
    timezone: str = "UTC"
    start_ms: int | None = None
    end_ms: int | None = None
    misfire: Misfire = Misfire.CATCH_UP
    catch_up_max: int = 1
    misfire_grace_ms: int = 5_000
    paused: bool = False
    set_by: str = ""
    defined_at: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not SCHEDULE_NAME.fullmatch(self.name):
            raise PeriodicError(
                f"schedule name {self.name!r} must be 1-100 letters, digits, '_', '.' or '-'"
            )
        if not isinstance(self.lambda_name, str) or not LAMBDA_NAME.fullmatch(self.lambda_name):
            raise PeriodicError(
                f"lambda name {self.lambda_name!r} must be 1-100 letters, digits, '_' or '-'"
            )
        if not COLLECTION_NAME.fullmatch(self.collection):
            raise PeriodicError(
                f"collection {self.collection!r} must be 1-100 letters, digits, '_', '.' or '-'"
            )
        if (self.cron is None) == (self.every_ms is None):
            raise PeriodicError("a schedule needs exactly one of a cron expression and an interval")
        if self.cron is not None:
            parse_cron(self.cron)
        if self.every_ms is not None and self.every_ms < MIN_EVERY_MS:
            raise PeriodicError(
                f"the interval must be at least {MIN_EVERY_MS} ms, got {self.every_ms}"
            )
        zone_of(self.timezone)
        if self.start_ms is not None and self.end_ms is not None and self.end_ms < self.start_ms:
            raise PeriodicError("the end of a schedule must not be before its start")
        if not 1 <= self.catch_up_max <= MAX_CATCH_UP:
            raise PeriodicError(f"catch_up_max must be 1-{MAX_CATCH_UP}, got {self.catch_up_max}")
        if self.misfire_grace_ms < 0:
            raise PeriodicError(
                f"misfire_grace_ms must not be negative, got {self.misfire_grace_ms}"
            )

    @property
    def key(self) -> str:
        """The control-topic key."""
        return PERIODIC_PREFIX + self.name

    @property
    def when(self) -> str:
        """How a person would say when it fires."""
        if self.cron is not None:
            return f"cron {self.cron!r} ({self.timezone})"
        return f"every {self.every_ms} ms"

    def next_after(self, after_ms: int) -> int | None:
        """The first occurrence strictly after ``after_ms`` and within start and end."""
        floor = self.start_ms if self.start_ms is not None else None
        if floor is not None and after_ms < floor:
            after_ms = floor - 1
        if self.every_ms is not None:
            anchor = self.start_ms or 0
            k = (after_ms - anchor) // self.every_ms + 1
            at = anchor + k * self.every_ms
        else:
            assert self.cron is not None
            found = parse_cron(self.cron).next_after(after_ms, zone_of(self.timezone))
            if found is None:
                return None
            at = found
        if self.end_ms is not None and at > self.end_ms:
            return None
        return at

    def occurrences(self, after_ms: int, until_ms: int) -> Iterator[int]:
        """Occurrences in ``(after_ms, until_ms]``, in order."""
        at = self.next_after(after_ms)
        while at is not None and at <= until_ms:
            yield at
            at = self.next_after(at)

    def next_fire(self, now: int) -> int | None:
        """When the schedule fires next, as of ``now``; None if paused or ended."""
        if self.paused:
            return None
        return self.next_after(max(now, self.defined_at - 1))


@dataclass(frozen=True, slots=True)
class Due:
    """What an owner does for one schedule on one poll."""

    fire: tuple[int, ...]
    """Occurrences to fire now, oldest first."""
    skipped: int
    """Missed occurrences the misfire policy skips."""
    through: int | None
    """The latest occurrence considered (fired or skipped); None: none was due."""


def due(schedule: PeriodicSchedule, after_ms: int | None, now: int) -> Due:
    """The occurrences of ``schedule`` due at ``now`` that follow ``after_ms``.

    ``after_ms`` is the latest occurrence already fired or skipped (None:
    none). Occurrences before the schedule was last defined (added, changed
    or resumed), before ``now - MAX_LOOKBACK_MS``, or while it is paused are
    never due.
    """
    if schedule.paused:
        return Due((), 0, None)
    floor = max(schedule.defined_at, now - MAX_LOOKBACK_MS)
    after = floor - 1 if after_ms is None else max(after_ms, floor - 1)
    keep = schedule.misfire_grace_ms + 1 if schedule.misfire is Misfire.SKIP else None
    if schedule.every_ms is not None:
        return _due_interval(schedule, schedule.every_ms, after, now, keep)
    # Cron has minute resolution: a week of lookback is at most 10,080 steps.
    found = list(schedule.occurrences(after, now))
    if not found:
        return Due((), 0, None)
    fire = (
        [at for at in found if at > now - keep]
        if keep is not None
        else found[-schedule.catch_up_max :]
    )
    return Due(tuple(fire), len(found) - len(fire), found[-1])


def _due_interval(
    schedule: PeriodicSchedule, every: int, after: int, now: int, keep: int | None
) -> Due:
    # Arithmetic, not a walk: a 100 ms interval has six million occurrences a week.
    first = schedule.next_after(after)
    until = now if schedule.end_ms is None else min(now, schedule.end_ms)
    if first is None or first > until:
        return Due((), 0, None)
    last = first + (until - first) // every * every
    count = (last - first) // every + 1
    if keep is not None:
        kept_from = max(first, now - keep + 1)
        start = first + -(-(kept_from - first) // every) * every
        n = 0 if start > last else (last - start) // every + 1
    else:
        n = min(schedule.catch_up_max, count)
    fire = tuple(last - i * every for i in reversed(range(n)))
    return Due(fire, count - n, last)


def schedule_partition(name: str, partitions: int) -> int:
    """The partition whose owner fires schedule ``name``."""
    return partition_of(PERIODIC_PREFIX + name, partitions)


def occurrence_prefix(name: str) -> str:
    """The start every occurrence task id of schedule ``name`` shares."""
    return f"{TASK_ID_PREFIX}{name}:"


def occurrence_task_id(name: str, at: int, partitions: int) -> str:
    """The task id of the occurrence of ``name`` at ``at``: the same every time,
    and on the schedule's partition."""
    if not 0 <= at < 10**13:
        raise PeriodicError(f"occurrence time {at} is outside the years 1970-2286")
    base = f"{occurrence_prefix(name)}{at:013d}"
    return id_on_partition(base, schedule_partition(name, partitions), partitions)


def occurrence_of(task_id: str) -> tuple[str, int] | None:
    """(schedule name, occurrence time) of an occurrence's task id; None for other ids."""
    if not task_id.startswith(TASK_ID_PREFIX):
        return None
    name, _, rest = task_id.removeprefix(TASK_ID_PREFIX).rpartition(":")
    digits = rest.partition("~")[0]
    if not SCHEDULE_NAME.fullmatch(name) or len(digits) != 13 or not digits.isdigit():
        return None
    return name, int(digits)


__all__ = [
    "MAX_LOOKBACK_MS",
    "PERIODIC_PREFIX",
    "TASK_ID_PREFIX",
    "Cron",
    "Due",
    "Misfire",
    "PeriodicError",
    "PeriodicSchedule",
    "due",
    "occurrence_of",
    "occurrence_prefix",
    "occurrence_task_id",
    "parse_cron",
    "schedule_partition",
    "zone_of",
]
