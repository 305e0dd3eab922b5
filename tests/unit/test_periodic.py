"""Periodic schedules in the pure core: cron, occurrences, misfires, firing.

The partition core runs on the in-memory store here (no Kafka). The same
schedules fired by real processors, killed mid-run, are in
tests/faults/test_periodic_faults.py and tests/integration/test_periodic.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atf_es.events import Gate, GateAction, LambdaPolicy, TaskStatus
from atf_es.events.codec import decode_control, encode_periodic
from atf_es.events.periodic import (
    MAX_LOOKBACK_MS,
    Cron,
    Misfire,
    PeriodicError,
    PeriodicSchedule,
    due,
    occurrence_of,
    occurrence_task_id,
    schedule_partition,
)
from atf_es.events.placement import partition_of
from atf_es.projections import MemoryTaskStore
from atf_es.services.partition import Batch, PartitionCore, new_batch
from atf_es.topics import Topics

T0 = 1_764_720_000_000  # 2025-12-03 00:00:00 UTC
PARTITIONS = 8
POLICY = LambdaPolicy(name="report")


def ms(text: str, zone: str = "UTC") -> int:
    local = datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone))
    return int(local.timestamp() * 1000)


def every(interval: int, **kwargs: object) -> PeriodicSchedule:
    values: dict[object, object] = {"defined_at": T0, **kwargs}
    return PeriodicSchedule("tick", "report", every_ms=interval, **values)  # type: ignore[arg-type]


# -- cron ------------------------------------------------------------------------


def test_cron_fields_ranges_steps_lists_and_names() -> None:
    cron = Cron.parse("*/15 9-17 * jan,Jul mon-fri")
    assert cron.minutes == {0, 15, 30, 45}
    assert cron.hours == set(range(9, 18))
    assert cron.months == {1, 7}
    assert cron.weekdays == {1, 2, 3, 4, 5}
    assert Cron.parse("0 0 * * 7").weekdays == {0}, "7 is Sunday too"
    assert Cron.parse("5/20 * * * *").minutes == {5, 25, 45}
    assert Cron.parse("@daily") == Cron.parse("0 0 * * *").__class__.parse("@daily")
    assert Cron.parse("@hourly").minutes == {0}


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("* * * *", "must have 5 fields"),
        ("60 * * * *", "minute: 60 is outside 0-59"),
        ("* 24 * * *", "hour: 24 is outside 0-23"),
        ("* * 0 * *", "day of month: 0 is outside 1-31"),
        ("* * * foo *", "month: 'foo' is not a number or a name"),
        ("*/0 * * * *", "step '0' must be a positive number"),
        ("5-1 * * * *", "range '5-1' runs backwards"),
        ("", "must have 5 fields"),
    ],
)
def test_bad_cron_expressions_say_what_is_wrong(expression: str, message: str) -> None:
    with pytest.raises(PeriodicError, match=message):
        Cron.parse(expression)


def test_next_after_in_a_zone_and_across_months() -> None:
    paris = ZoneInfo("Europe/Paris")
    cron = Cron.parse("30 8 * * *")
    assert cron.next_after(ms("2025-12-03T08:29", "Europe/Paris"), paris) == ms(
        "2025-12-03T08:30", "Europe/Paris"
    )
    assert cron.next_after(ms("2025-12-03T08:30", "Europe/Paris"), paris) == ms(
        "2025-12-04T08:30", "Europe/Paris"
    )
    leap = Cron.parse("0 12 29 2 *")
    assert leap.next_after(ms("2025-03-01T00:00"), ZoneInfo("UTC")) == ms("2028-02-29T12:00")
    assert Cron.parse("0 0 31 2 *").next_after(T0, ZoneInfo("UTC")) is None, "no 31 February"


def test_either_restricted_day_field_matches_as_in_vixie_cron() -> None:
    # The 13th of the month, or any Friday.
    cron = Cron.parse("0 0 13 * fri")
    utc = ZoneInfo("UTC")
    found = []
    at = ms("2025-12-01T00:00")
    for _ in range(4):
        at = cron.next_after(at, utc) or 0
        found.append(datetime.fromtimestamp(at / 1000, UTC).date().isoformat())
    assert found == ["2025-12-05", "2025-12-12", "2025-12-13", "2025-12-19"]


def test_daylight_saving_gaps_fire_late_and_repeated_hours_fire_once() -> None:
    new_york = ZoneInfo("America/New_York")
    cron = Cron.parse("30 2 * * *")
    # 2026-03-08: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist.
    spring = cron.next_after(ms("2026-03-08T00:00", "America/New_York"), new_york)
    assert spring == ms("2026-03-08T07:30")  # 03:30 EDT
    half_hourly = Cron.parse("30 1 * * *")
    # 2026-11-01: 01:00-02:00 happens twice; 01:30 fires the first time only.
    first = half_hourly.next_after(ms("2026-11-01T00:00", "America/New_York"), new_york)
    assert first == ms("2026-11-01T05:30")  # 01:30 EDT
    again = half_hourly.next_after(first or 0, new_york)
    assert again == ms("2026-11-02T06:30"), "not 01:30 EST an hour later"


def _brute_next(cron: Cron, after: int, zone: ZoneInfo) -> int | None:
    """The first matching wall-clock minute after ``after``, found day by day."""
    day = datetime.fromtimestamp(after / 1000, zone).date()
    for _ in range(366 * 9):
        midnight = datetime(day.year, day.month, day.day)
        if midnight.month in cron.months and cron._day_matches(midnight):
            for hour in sorted(cron.hours):
                for minute in sorted(cron.minutes):
                    local = midnight.replace(hour=hour, minute=minute, tzinfo=zone)
                    if (at := int(local.timestamp() * 1000)) > after:
                        return at
        day += timedelta(days=1)
    return None


def _cron_field(low: int, high: int) -> st.SearchStrategy[str]:
    number = st.integers(low, high)
    return st.one_of(
        st.just("*"),
        number.map(str),
        st.tuples(number, number).map(lambda r: f"{min(r)}-{max(r)}"),
        st.integers(1, 5).map(lambda step: f"*/{step}"),
        st.lists(number, min_size=1, max_size=3).map(lambda v: ",".join(map(str, v))),
    )


@settings(max_examples=60, deadline=None)
@given(
    minute=_cron_field(0, 59),
    hour=_cron_field(0, 23),
    day=st.one_of(st.just("*"), _cron_field(1, 28)),
    month=st.one_of(st.just("*"), _cron_field(1, 12)),
    weekday=st.one_of(st.just("*"), _cron_field(0, 6)),
    after=st.integers(T0, T0 + 366 * 86_400_000),
    zone=st.sampled_from(["UTC", "Asia/Kolkata", "Asia/Tokyo"]),
)
def test_next_after_agrees_with_a_day_by_day_search(
    *, minute: str, hour: str, day: str, month: str, weekday: str, after: int, zone: str
) -> None:
    cron = Cron.parse(f"{minute} {hour} {day} {month} {weekday}")
    assert cron.next_after(after, ZoneInfo(zone)) == _brute_next(cron, after, ZoneInfo(zone))


# -- schedules -------------------------------------------------------------------


def test_a_schedule_round_trips_through_the_control_record() -> None:
    schedule = PeriodicSchedule(
        "nightly.report",
        "report",
        collection="eu",
        priority=2,
        payload=b"\x00{}",
        cron="0 3 * * *",
        timezone="Europe/Paris",
        start_ms=T0,
        end_ms=T0 + 86_400_000,
        misfire=Misfire.SKIP,
        catch_up_max=7,
        misfire_grace_ms=60_000,
        paused=True,
        set_by="ops",
        defined_at=T0 - 5,
    )
    assert decode_control(encode_periodic(schedule)) == schedule


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every_ms": None}, "exactly one of a cron expression and an interval"),
        ({"cron": "@daily"}, "exactly one of a cron expression and an interval"),
        ({"every_ms": 10}, "at least 100 ms"),
        ({"timezone": "Mars/Olympus"}, "time zone 'Mars/Olympus' is not known"),
        ({"start_ms": 10, "end_ms": 5}, "end of a schedule must not be before its start"),
        ({"catch_up_max": 0}, "catch_up_max must be 1-1000"),
        ({"misfire_grace_ms": -1}, "must not be negative"),
        ({"collection": "a b"}, "collection 'a b'"),
    ],
)
def test_bad_schedules_say_what_is_wrong(kwargs: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"every_ms": 1_000, **kwargs}
    with pytest.raises(PeriodicError, match=message):
        PeriodicSchedule("tick", "report", **values)  # type: ignore[arg-type]
    with pytest.raises(PeriodicError, match="schedule name 'a:b'"):
        PeriodicSchedule("a:b", "report", every_ms=1_000)


def test_intervals_are_anchored_to_the_start_or_to_the_epoch() -> None:
    assert every(60_000).next_after(T0 + 1) == T0 + 60_000, "on the minute"
    anchored = every(60_000, start_ms=T0 + 7)
    assert anchored.next_after(T0 - 10**9) == T0 + 7
    assert anchored.next_after(T0 + 7) == T0 + 60_007
    ending = every(1_000, end_ms=T0 + 2_000)
    assert list(ending.occurrences(T0 - 1, T0 + 10_000)) == [T0, T0 + 1_000, T0 + 2_000]


def test_catch_up_fires_the_latest_missed_occurrences_up_to_its_cap() -> None:
    schedule = every(1_000, catch_up_max=3)
    result = due(schedule, T0 + 1_000, T0 + 10_500)
    assert result.fire == (T0 + 8_000, T0 + 9_000, T0 + 10_000)
    assert result.skipped == 6 and result.through == T0 + 10_000
    assert due(schedule, T0 + 10_000, T0 + 10_999).fire == ()


def test_skip_fires_only_what_is_within_the_grace() -> None:
    schedule = every(1_000, misfire=Misfire.SKIP, misfire_grace_ms=1_500)
    result = due(schedule, T0 + 1_000, T0 + 10_500)
    assert result.fire == (T0 + 9_000, T0 + 10_000)
    assert result.skipped == 7


def test_nothing_before_the_definition_or_while_paused_is_due() -> None:
    assert due(every(1_000, catch_up_max=100), None, T0 + 2_500).fire == (
        T0,
        T0 + 1_000,
        T0 + 2_000,
    )
    assert due(every(1_000, paused=True), None, T0 + 2_500) == due(every(1_000), None, T0 - 1)
    old = every(1_000, catch_up_max=1_000, defined_at=0)
    assert due(old, None, T0).fire[0] >= T0 - MAX_LOOKBACK_MS


def _naive_due(schedule: PeriodicSchedule, after: int | None, now: int) -> tuple[int, ...]:
    assert schedule.every_ms is not None
    floor = max(schedule.defined_at, now - MAX_LOOKBACK_MS)
    anchor = schedule.start_ms or 0
    found = [
        at
        for at in range(anchor, now + 1, schedule.every_ms)
        if at >= floor
        and (after is None or at > after)
        and (schedule.end_ms is None or at <= schedule.end_ms)
    ]
    if schedule.misfire is Misfire.SKIP:
        return tuple(at for at in found if at >= now - schedule.misfire_grace_ms)
    return tuple(found[-schedule.catch_up_max :])


@settings(max_examples=200, deadline=None)
@given(
    interval=st.integers(100, 5_000),
    start=st.one_of(st.none(), st.integers(0, 50_000)),
    end=st.one_of(st.none(), st.integers(50_000, 200_000)),
    after=st.one_of(st.none(), st.integers(0, 200_000)),
    now=st.integers(0, 200_000),
    skip=st.booleans(),
    cap=st.integers(1, 20),
    grace=st.integers(0, 10_000),
    defined=st.integers(0, 100_000),
)
def test_interval_due_agrees_with_counting_every_occurrence(
    *,
    interval: int,
    start: int | None,
    end: int | None,
    after: int | None,
    now: int,
    skip: bool,
    cap: int,
    grace: int,
    defined: int,
) -> None:
    schedule = PeriodicSchedule(
        "tick",
        "report",
        every_ms=interval,
        start_ms=start,
        end_ms=end,
        misfire=Misfire.SKIP if skip else Misfire.CATCH_UP,
        catch_up_max=cap,
        misfire_grace_ms=grace,
        defined_at=defined,
    )
    assert due(schedule, after, now).fire == _naive_due(schedule, after, now)


def test_occurrence_ids_are_stable_on_the_schedule_partition_and_sort_by_time() -> None:
    ids = [occurrence_task_id("tick", T0 + i * 1_000, PARTITIONS) for i in range(50)]
    assert ids == [occurrence_task_id("tick", T0 + i * 1_000, PARTITIONS) for i in range(50)]
    home = schedule_partition("tick", PARTITIONS)
    assert {partition_of(task_id, PARTITIONS) for task_id in ids} == {home}
    assert sorted(ids, key=str.encode) == ids
    assert [occurrence_of(task_id) for task_id in ids] == [
        ("tick", T0 + i * 1_000) for i in range(50)
    ]
    assert occurrence_of("periodic:tick:123") is None
    assert occurrence_of("some-task") is None


# -- firing in the partition core ------------------------------------------------


class Owner:
    """The owner of a schedule's partition on the in-memory store; each poll
    commits (as the processor does after its transaction), unless told that
    the transaction failed."""

    def __init__(
        self,
        *schedules: PeriodicSchedule,
        store: MemoryTaskStore | None = None,
        gate: Gate | None = None,
    ) -> None:
        self.schedules = list(schedules)
        self.store = store or MemoryTaskStore()
        self.partition = schedule_partition("tick", PARTITIONS)
        self.gate = gate
        self.core = self._core()

    def _core(self) -> PartitionCore:
        return PartitionCore(
            self.partition,
            self.store,
            {"report": POLICY}.get,
            Topics("atf"),
            gates=lambda _lambda, _collection: self.gate,
            schedules=lambda: self.schedules,
            partitions=PARTITIONS,
        )

    def poll(self, now: int, *, commit: bool = True) -> Batch:
        batch = new_batch(self.partition, now)
        self.core.fire_due(batch)
        if commit:
            self.store.commit(batch.tasks.values(), None)
        return batch

    def restart(self) -> None:
        """A new owner on the same store: nothing kept in memory."""
        self.core = self._core()

    def fired(self, name: str = "tick") -> list[int]:
        times = [occurrence_of(task.task_id) for task in self.store.tasks()]
        return sorted(
            at for found in times if found is not None and found[0] == name for at in [found[1]]
        )


def test_each_due_occurrence_becomes_one_enqueued_task() -> None:
    owner = Owner(every(1_000, payload=b"p", collection="eu", priority=1))
    batch = owner.poll(T0 + 20)
    assert batch.occurrences == 1 and len(batch.work) == 1
    task = owner.store.get(occurrence_task_id("tick", T0, PARTITIONS))
    assert task is not None
    assert (task.status, task.payload, task.collection, task.priority) == (
        TaskStatus.ENQUEUED,
        b"p",
        "eu",
        1,
    )
    assert task.scheduled_at == T0
    assert owner.poll(T0 + 70).occurrences == 0, "the same occurrence is not fired twice"
    owner.poll(T0 + 1_010)
    assert owner.fired() == [T0, T0 + 1_000]


class CountingStore(MemoryTaskStore):
    """Counts the seeks for a schedule's latest occurrence."""

    def __init__(self) -> None:
        super().__init__()
        self.seeks = 0

    def last_id_with_prefix(self, prefix: str) -> str | None:
        self.seeks += 1
        return super().last_id_with_prefix(prefix)


def test_an_owner_reads_nothing_for_a_schedule_until_its_next_occurrence() -> None:
    store = CountingStore()
    owner = Owner(every(1_000), store=store)
    owner.poll(T0 + 10)  # fires T0
    owner.poll(T0 + 60)  # sees T0 stored, nothing due: remembers T0 + 1000
    seeks = store.seeks
    for now in range(T0 + 110, T0 + 1_000, 50):
        assert owner.poll(now).occurrences == 0
    assert store.seeks == seeks, "no read per poll while nothing can be due"
    assert owner.poll(T0 + 1_000).occurrences == 1
    assert store.seeks == seeks + 1
    assert owner.fired() == [T0, T0 + 1_000]


def test_a_failed_batch_is_fired_again_at_the_next_poll_not_the_next_occurrence() -> None:
    owner = Owner(every(1_000))
    owner.poll(T0 + 10, commit=False)  # the transaction failed
    owner.poll(T0 + 60)
    assert owner.fired() == [T0]


def test_a_failed_batch_leaves_no_gap_and_a_restart_no_duplicate() -> None:
    owner = Owner(every(1_000, catch_up_max=100))
    owner.poll(T0 + 10)
    owner.poll(T0 + 1_010, commit=False)  # the transaction failed
    owner.restart()
    owner.poll(T0 + 2_010)
    owner.restart()
    owner.poll(T0 + 2_020)
    assert owner.fired() == [T0, T0 + 1_000, T0 + 2_000]


def test_an_owner_fires_only_the_schedules_of_its_partition() -> None:
    other = next(
        name
        for name in (f"other{i}" for i in range(100))
        if schedule_partition(name, PARTITIONS) != schedule_partition("tick", PARTITIONS)
    )
    owner = Owner(PeriodicSchedule(other, "report", every_ms=1_000, defined_at=T0))
    assert owner.poll(T0 + 10).occurrences == 0


def test_a_paused_gate_holds_occurrences_and_a_drop_gate_drops_them() -> None:
    owner = Owner(every(1_000), gate=Gate("report", None, GateAction.PAUSE))
    owner.poll(T0 + 10)
    held = owner.store.get(occurrence_task_id("tick", T0, PARTITIONS))
    assert held is not None and held.status is TaskStatus.NEW
    owner.gate = Gate("report", None, GateAction.DROP)
    owner.poll(T0 + 1_010)
    statuses = {task.status for task in owner.store.tasks()}
    assert statuses == {TaskStatus.DROPPED}


def test_occurrences_of_an_undefined_lambda_wait_within_the_misfire_policy() -> None:
    owner = Owner(PeriodicSchedule("tick", "missing", every_ms=1_000, defined_at=T0))
    assert owner.poll(T0 + 10).occurrences == 0
    owner.schedules = [PeriodicSchedule("tick", "report", every_ms=1_000, defined_at=T0)]
    owner.poll(T0 + 3_500)
    assert owner.fired() == [T0 + 3_000], "catch up, at most one (the default)"


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(1, 4_000), st.sampled_from(["commit", "fail", "restart"])),
        min_size=1,
        max_size=40,
    )
)
def test_every_occurrence_is_fired_exactly_once_whatever_fails(
    steps: list[tuple[int, str]],
) -> None:
    """Polls at random times, some of whose transactions fail, and owners that
    restart: with catch-up, the tasks are exactly the occurrences up to the last
    committed poll."""
    owner = Owner(every(700, catch_up_max=1_000))
    now = T0
    committed = None
    for gap, what in steps:
        now += gap
        if what == "restart":
            owner.restart()
        owner.poll(now, commit=what != "fail")
        if what != "fail":
            committed = now
    first = -(-T0 // 700) * 700  # on the interval since the epoch, from the definition on
    expected = [] if committed is None else list(range(first, committed + 1, 700))
    assert owner.fired() == expected
