"""Schedules (localq/schedules.py): crontab fields, next_run against a brute-force walk in zones
with DST, interval schedules, and Celery's is_due / remaining_estimate on an injected clock."""
from __future__ import annotations

import doctest
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import localq
import localq.schedules
from localq import ConfigurationError, crontab, schedule
from localq.schedules import as_schedule, schedstate

UTC = timezone.utc
try:
    BERLIN, NEW_YORK = ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")
    ZONES = [BERLIN, NEW_YORK, ZoneInfo("UTC")]
except ZoneInfoNotFoundError:     # no system tz database (and no tzdata package)
    ZONES = []
needs_tz = pytest.mark.skipif(not ZONES, reason="zoneinfo has no time zone database here")


def at(zone, *fields, fold=0):
    return datetime(*fields, tzinfo=zone, fold=fold)


# ---------------------------------------------------------------- next_run vs a plain walk

HORIZON = timedelta(days=2 * 366)


def brute_force_next_run(cron, after):
    """The first minute strictly after `after` that the crontab matches, found by walking time.

    It walks real time in UTC, so local times that do not exist never come up, and it skips
    the second occurrence of a repeated local time (fold=1). Hours whose local date or hour do
    not match are stepped over whole (the zones tested have whole-hour offsets, so a UTC hour
    is a local hour); in the others every minute is tried. None if nothing within HORIZON.
    """
    zone = after.tzinfo
    after_utc = after.astimezone(UTC)
    hour = after_utc.replace(minute=0, second=0, microsecond=0)
    while hour < after_utc + HORIZON:
        local = hour.astimezone(zone)
        assert local.minute == 0
        if (local.fold == 0 and local.month in cron.month_of_year
                and local.day in cron.day_of_month and local.isoweekday() % 7 in cron.day_of_week
                and local.hour in cron.hour):
            for minute in range(60):
                moment = hour + timedelta(minutes=minute)
                if minute in cron.minute and moment > after_utc:
                    return moment.astimezone(zone)
        hour += timedelta(hours=1)
    return None


def dst_changes(zone):
    """The instants in 2024-2025 when `zone`'s offset changes."""
    hour, end, changes = datetime(2024, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC), []
    while hour < end:
        if hour.astimezone(zone).utcoffset() != (hour - timedelta(hours=1)).astimezone(
                zone).utcoffset():
            changes.append(hour)
        hour += timedelta(hours=1)
    return changes


DST_CHANGES = {zone: dst_changes(zone) for zone in ZONES}

DAY_NAMES = ["sun", "Mon", "TUESDAY", "wed", "thursday", "fri", "sat", "Saturday", "sunday"]
MONTH_NAMES = ["jan", "Feb", "march", "APR", "may", "jun", "july", "aug", "sep", "oct", "nov",
               "December"]


def field(low, high, names=()):
    number = st.integers(low, high)
    token = number.map(str) | st.sampled_from(names) if names else number.map(str)
    part = st.one_of(
        st.just("*"),
        token,
        st.builds("{}-{}".format, token, token),
        st.builds("*/{}".format, st.integers(1, high - low + 1)),
        st.builds("{}-{}/{}".format, token, token, st.integers(1, 10)),
    )
    return st.one_of(st.just("*"), number, st.sets(number, min_size=1, max_size=4),
                     st.lists(part, min_size=1, max_size=3).map(",".join))


@st.composite
def anywhen(draw):
    """Any crontab, and an aware `after` anywhere in 2024-2025."""
    zone = draw(st.sampled_from(ZONES))
    naive = draw(st.datetimes(datetime(2024, 1, 1), datetime(2025, 12, 31, 23, 59, 59)))
    # A wall time that does not exist is normalized to the instant it names.
    after = naive.replace(tzinfo=zone, fold=draw(st.sampled_from([0, 1]))).astimezone(UTC)
    spec = dict(minute=draw(field(0, 59)), hour=draw(field(0, 23)),
                day_of_week=draw(field(0, 6, DAY_NAMES)), day_of_month=draw(field(1, 31)),
                month_of_year=draw(field(1, 12, MONTH_NAMES)))
    try:
        return crontab(**spec), after.astimezone(zone)
    except ConfigurationError:      # e.g. day_of_month=31 in months of 30 days
        assume(False)


@st.composite
def around_dst_changes(draw):
    """A crontab of every day at some of the hours 1-3, and an `after` within two and a half
    hours of a DST change in Berlin or New York: where nonexistent and repeated wall times are
    (both zones skip 02:xx in spring and repeat 02:xx or 01:xx in the fall)."""
    zone = draw(st.sampled_from(ZONES[:2]))
    change = draw(st.sampled_from(DST_CHANGES[zone]))
    after = change + timedelta(seconds=draw(st.integers(-150 * 60, 150 * 60)))
    hours = draw(st.sets(st.integers(1, 3), min_size=1, max_size=2))
    return crontab(minute=draw(field(0, 59)), hour=hours), after.astimezone(zone)


def check_next_run(cron, after):
    got = cron.next_run(after)
    expected = brute_force_next_run(cron, after)
    assert got.tzinfo is after.tzinfo
    if expected is None:
        assert got.astimezone(UTC) > after.astimezone(UTC) + HORIZON
    else:
        # Same instant, same wall clock: compare in UTC (Python ignores fold when comparing
        # two datetimes of one zone) and the wall fields with fold.
        assert got.astimezone(UTC) == expected.astimezone(UTC)
        assert (got.replace(tzinfo=None), got.fold) == (expected.replace(tzinfo=None), 0)


@needs_tz
@settings(max_examples=100, deadline=None)
@given(case=anywhen())
def test_next_run_is_the_first_match_of_a_brute_force_walk(case):
    check_next_run(*case)


@needs_tz
@settings(max_examples=150, deadline=None)
@given(case=around_dst_changes())
def test_next_run_around_dst_changes_is_the_first_match_of_a_brute_force_walk(case):
    check_next_run(*case)


@needs_tz
@pytest.mark.parametrize("zone, day", [("Europe/Berlin", 31), ("America/New_York", 10)])
def test_a_wall_time_that_does_not_exist_is_skipped(zone, day):
    tz = ZoneInfo(zone)
    half_past_two = crontab(minute=30, hour=2)
    # 02:00-03:00 does not exist on the spring-forward day; the next 02:30 is the day after.
    got = half_past_two.next_run(at(tz, 2024, 3, day, 0, 0))
    assert (got.date() - at(tz, 2024, 3, day).date(), got.hour, got.minute) == \
        (timedelta(days=1), 2, 30)
    every_minute = crontab()
    got = every_minute.next_run(at(tz, 2024, 3, day, 1, 59))
    assert got.astimezone(UTC) - at(tz, 2024, 3, day, 1, 59).astimezone(UTC) == \
        timedelta(minutes=1)
    assert (got.hour, got.minute) == (3, 0)


@needs_tz
@pytest.mark.parametrize("zone, month, day, hour", [("Europe/Berlin", 10, 27, 2),
                                                    ("America/New_York", 11, 3, 1)])
def test_a_wall_time_that_happens_twice_runs_once_at_its_first_occurrence(zone, month, day, hour):
    tz = ZoneInfo(zone)
    cron = crontab(minute=30, hour=hour)
    first = cron.next_run(at(tz, 2024, month, day, 0, 0))
    assert (first.hour, first.minute, first.fold) == (hour, 30, 0)
    following = cron.next_run(first)
    assert following.day == day + 1 and (following.hour, following.minute) == (hour, 30)
    # From inside the second occurrence of the hour, the run already happened: next day.
    second_occurrence = first.replace(fold=1, minute=10)
    assert second_occurrence.astimezone(UTC) > first.astimezone(UTC)
    assert cron.next_run(second_occurrence) == following
    # An hourly crontab skips the repeated hour: two real hours between its runs.
    hourly = crontab(minute=0)
    one = hourly.next_run(first.replace(minute=0, fold=0) - timedelta(minutes=1))
    two = hourly.next_run(one)
    assert (one.hour, one.fold, two.hour) == (hour, 0, hour + 1)
    assert two.astimezone(UTC) - one.astimezone(UTC) == timedelta(hours=2)


def test_next_run_is_strictly_after_and_in_the_zone_of_after():
    india = timezone(timedelta(hours=5, minutes=30))
    nine = crontab(minute=0, hour=9)
    assert nine.next_run(datetime(2024, 1, 1, 9, 0, tzinfo=india)) == \
        datetime(2024, 1, 2, 9, 0, tzinfo=india)
    assert nine.next_run(datetime(2024, 1, 1, 8, 59, 59, 999999, tzinfo=india)) == \
        datetime(2024, 1, 1, 9, 0, tzinfo=india)
    assert nine.next_run(datetime(2024, 1, 1, 3, 0, tzinfo=UTC)) == \
        datetime(2024, 1, 1, 9, 0, tzinfo=UTC)      # 08:30 in India: UTC's wall clock counts


def test_a_day_must_match_both_day_of_month_and_day_of_week():
    # Celery's rule (classic cron would also run on every Monday and on days 1-7).
    first_monday = crontab(minute=0, hour=9, day_of_week="mon", day_of_month="1-7")
    runs = [datetime(2024, 1, 1, 9, 0, tzinfo=UTC)]       # 2024-01-01 is a Monday
    for _ in range(3):
        runs.append(first_monday.next_run(runs[-1]))
    assert [r.date().isoformat() for r in runs] == \
        ["2024-01-01", "2024-02-05", "2024-03-04", "2024-04-01"]


def test_naive_datetimes_are_refused():
    for cron in (crontab(), schedule(10)):
        with pytest.raises(ConfigurationError, match="naive"):
            cron.next_run(datetime(2024, 1, 1))
        with pytest.raises(ConfigurationError, match="naive"):
            cron.is_due(datetime(2024, 1, 1))
    with pytest.raises(ConfigurationError, match="nowfun.*naive"):
        crontab(nowfun=lambda: datetime(2024, 1, 1)).remaining_estimate(
            datetime(2024, 1, 1, tzinfo=UTC))


# ---------------------------------------------------------------- fields

@pytest.mark.parametrize("name, spec, values", [
    ("minute", "*", set(range(60))),
    ("minute", "*/15", {0, 15, 30, 45}),
    ("minute", "1-10/2", {1, 3, 5, 7, 9}),
    ("minute", "1,15", {1, 15}),
    ("minute", "1,13,30-33,50-59/4", {1, 13, 30, 31, 32, 33, 50, 54, 58}),
    ("minute", 7, {7}),
    ("minute", {0, 30}, {0, 30}),
    ("hour", range(8, 12), {8, 9, 10, 11}),
    ("hour", "0, 6, 12", {0, 6, 12}),
    ("hour", "22-2", {22, 23, 0, 1, 2}),
    ("hour", "22-2/2", {22, 0, 2}),
    ("day_of_week", "mon-fri", {1, 2, 3, 4, 5}),
    ("day_of_week", "fri-mon", {5, 6, 0, 1}),
    ("day_of_week", "Sunday,SAT", {0, 6}),
    ("day_of_week", "*/2", {0, 2, 4, 6}),
    ("day_of_week", ["mon", 3, "friday"], {1, 3, 5}),
    ("day_of_month", "*/10", {1, 11, 21, 31}),
    ("day_of_month", "2-30/14", {2, 16, 30}),
    ("month_of_year", "jan,Dec", {1, 12}),
    ("month_of_year", "september-november", {9, 10, 11}),
    ("month_of_year", "*/3", {1, 4, 7, 10}),
])
def test_field_syntax(name, spec, values):
    assert getattr(crontab(**{name: spec}), name) == values


@pytest.mark.parametrize("name, spec, shown", [
    ("minute", "61", "'61'"),
    ("minute", 60, "60"),
    ("minute", "5/15", "'5/15'"),
    ("minute", "*/0", "'*/0'"),
    ("minute", "", "''"),
    ("minute", "1,,2", "'1,,2'"),
    ("minute", "1-", "'1-'"),
    ("minute", "-1", "'-1'"),
    ("minute", "*-5", "'*-5'"),
    ("minute", "mon", "'mon'"),
    ("minute", 1.5, "1.5"),
    ("minute", True, "True"),
    ("minute", None, "None"),
    ("minute", [], "[]"),
    ("minute", [1, 99], "[1, 99]"),
    ("hour", 24, "24"),
    ("day_of_week", 7, "7"),
    ("day_of_week", "funday", "'funday'"),
    ("day_of_week", "jan", "'jan'"),
    ("day_of_month", 0, "0"),
    ("day_of_month", "1-32", "'1-32'"),
    ("month_of_year", 13, "13"),
    ("month_of_year", "mon", "'mon'"),
])
def test_a_bad_field_is_a_value_error_naming_field_and_value(name, spec, shown):
    with pytest.raises(ValueError) as caught:
        crontab(**{name: spec})
    assert isinstance(caught.value, ConfigurationError)
    assert f"crontab {name}={shown} is not valid" in str(caught.value)


@pytest.mark.parametrize("day, month", [(30, 2), (31, "feb"), (31, "apr,jun,sep,nov"),
                                        ("30-31", "2")])
def test_a_spec_no_date_can_match_is_refused_at_construction(day, month):
    with pytest.raises(ConfigurationError, match="matches no date"):
        crontab(day_of_month=day, month_of_year=month)


def test_rare_but_possible_dates_are_found():
    leap_day = crontab(minute=0, hour=0, day_of_month=29, month_of_year=2)
    assert leap_day.next_run(datetime(2024, 3, 1, tzinfo=UTC)) == \
        datetime(2028, 2, 29, tzinfo=UTC)
    leap_monday = crontab(minute=0, hour=0, day_of_month=29, month_of_year=2, day_of_week=1)
    assert leap_monday.next_run(datetime(2024, 3, 1, tzinfo=UTC)) == \
        datetime(2044, 2, 29, tzinfo=UTC)
    # Across 2100, which is not a leap year.
    assert leap_day.next_run(datetime(2096, 3, 1, tzinfo=UTC)) == \
        datetime(2104, 2, 29, tzinfo=UTC)
    with pytest.raises(ConfigurationError, match="no due time .* before the year 10000"):
        leap_day.next_run(datetime(9996, 3, 1, tzinfo=UTC))
    with pytest.raises(ConfigurationError, match="no due time .* before the year 10000"):
        crontab().next_run(datetime(9999, 12, 31, 23, 59, tzinfo=UTC))


def test_repr_str_equality_and_hash():
    assert str(crontab(minute=1)) == "<crontab: 1 * * * * (m/h/dM/MY/d)>"
    assert repr(crontab("*/15", "9-17", "mon-fri", "1,15", "jan")) == \
        "<crontab: */15 9-17 1,15 jan mon-fri (m/h/dM/MY/d)>"
    assert repr(crontab(minute={0, 1, 2, 3, 30}, hour=range(24), day_of_week=[5, 1])) == \
        "<crontab: 0-3,30 * * * 1,5 (m/h/dM/MY/d)>"
    assert crontab(minute="*/15") == crontab(minute="0,15,30,45") == crontab(minute=[45, 30, 15, 0])
    assert hash(crontab(minute="*/15")) == hash(crontab(minute={0, 15, 30, 45}))
    assert crontab(day_of_week="sun") == crontab(day_of_week=0)
    assert crontab(minute=1) != crontab(minute=2)
    assert crontab(minute=0, hour=0) != crontab(minute=0, hour=0, day_of_week="mon")
    assert crontab() != schedule(60)
    assert repr(schedule(30)) == str(schedule(30)) == "<freq: 30.00 seconds>"
    assert repr(schedule(90)) == "<freq: 1.50 minutes>"
    assert repr(schedule(timedelta(days=1))) == "<freq: 1.00 day>"
    assert schedule(60) == schedule(60.0) == schedule(timedelta(minutes=1)) == timedelta(minutes=1)
    assert schedule(60) != schedule(61)
    assert len({schedule(30), schedule(30.0), crontab(), crontab("*")}) == 2


def test_exported_from_localq():
    assert localq.crontab is localq.schedules.crontab
    assert localq.schedule is localq.schedules.schedule
    assert {"crontab", "schedule"} <= set(localq.__all__)


@needs_tz
def test_the_module_docstring_examples_run():
    assert doctest.testmod(localq.schedules).failed == 0


# ---------------------------------------------------------------- intervals

def test_intervals_from_seconds_and_timedeltas():
    assert schedule(30).run_every == timedelta(seconds=30)
    assert schedule(0.25).seconds == 0.25
    assert schedule(timedelta(hours=2)).seconds == 7200
    start = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    assert schedule(90).next_run(start) == datetime(2024, 1, 1, 12, 1, 30, tzinfo=UTC)
    assert as_schedule(30) == schedule(30)
    assert as_schedule(timedelta(minutes=5)) == schedule(300)
    cron = crontab(minute=5)
    assert as_schedule(cron) is cron
    sched = schedule(5)
    assert as_schedule(sched) is sched


@needs_tz
def test_an_interval_is_elapsed_time_across_a_dst_change():
    before = at(BERLIN, 2024, 3, 31, 1, 30)                     # CET, 00:30 UTC
    after = schedule(3600).next_run(before)
    assert after.tzinfo is BERLIN
    assert after.astimezone(UTC) == datetime(2024, 3, 31, 1, 30, tzinfo=UTC)
    assert (after.hour, after.minute) == (3, 30)                 # CEST: 02:30 does not exist
    fall = at(BERLIN, 2024, 10, 27, 2, 30, fold=0)               # CEST, first 02:30
    again = schedule(3600).next_run(fall)
    assert (again.hour, again.minute, again.fold) == (2, 30, 1)  # the second 02:30, CET


@pytest.mark.parametrize("value", [0, -5, timedelta(0), timedelta(seconds=-1), float("nan"),
                                   float("inf"), 1e30, True, "30", None, "*/5 * * * *",
                                   timedelta(microseconds=0.4)])
def test_a_bad_interval_is_a_clear_error(value):
    with pytest.raises(ConfigurationError, match="schedule"):
        as_schedule(value)
    if isinstance(value, (int, float, timedelta)) and not isinstance(value, bool):
        with pytest.raises(ConfigurationError, match="schedule interval"):
            schedule(value)


# ---------------------------------------------------------------- is_due / remaining_estimate

class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def test_crontab_is_due_and_remaining_estimate_on_an_injected_clock():
    clock = Clock(datetime(2024, 1, 1, 11, 59, 30, tzinfo=UTC))
    hourly = crontab(minute=0, nowfun=clock)
    last = datetime(2024, 1, 1, 11, 0, tzinfo=UTC)
    assert hourly.remaining_estimate(last) == timedelta(seconds=30)
    assert hourly.is_due(last) == schedstate(is_due=False, next=30.0)
    clock.now = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    assert hourly.is_due(last) == (True, 3600.0)
    clock.now = datetime(2024, 1, 1, 12, 10, tzinfo=UTC)
    assert hourly.remaining_estimate(last) == timedelta(minutes=-10)
    state = hourly.is_due(last)
    assert state.is_due and state.next == 3000.0
    # After downtime that missed many due times, it is due (once: the scheduler records now).
    clock.now = datetime(2024, 1, 3, 7, 45, tzinfo=UTC)
    assert hourly.is_due(last) == (True, 900.0)
    assert hourly.is_due(clock.now) == (False, 900.0)


@needs_tz
def test_remaining_estimate_counts_real_time_across_a_dst_change():
    clock = Clock(datetime(2024, 3, 31, 0, 0, tzinfo=UTC))     # 01:00 CET
    three_am = crontab(minute=0, hour=3, nowfun=clock)
    last = at(BERLIN, 2024, 3, 30, 3, 0)
    # 03:00 CEST is 01:00 UTC: one real hour away, though the wall clock says two.
    assert three_am.remaining_estimate(last) == timedelta(hours=1)
    clock.now = datetime(2024, 3, 31, 1, 0, tzinfo=UTC)
    assert three_am.is_due(last) == (True, 24 * 3600.0)      # the next 03:00 is 24 h later


def test_interval_is_due_and_remaining_estimate_on_an_injected_clock():
    clock = Clock(datetime(2024, 1, 1, 12, 0, 10, tzinfo=UTC))
    every_30s = schedule(30, nowfun=clock)
    last = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert every_30s.remaining_estimate(last) == timedelta(seconds=20)
    assert every_30s.is_due(last) == (False, 20.0)
    clock.now = datetime(2024, 1, 1, 12, 0, 30, tzinfo=UTC)
    assert every_30s.is_due(last) == (True, 30.0)
    clock.now = datetime(2024, 1, 1, 12, 5, 0, tzinfo=UTC)
    assert every_30s.remaining_estimate(last) == timedelta(seconds=-270)
    assert every_30s.is_due(last) == (True, 30.0)


def test_is_due_uses_the_real_clock_without_nowfun():
    now = datetime.now(UTC)
    state = crontab().is_due(now - timedelta(minutes=2))
    assert state.is_due and 0 < state.next <= 60
    state = schedule(3600).is_due(now)
    assert not state.is_due and 3500 < state.next <= 3600
