"""Periodic-task schedules, ``crontab`` and ``schedule`` (an interval): pure date arithmetic.

This module owns what a schedule *means*: parsing Celery's crontab fields, the first due time
after a given moment (``next_run``), and Celery's ``is_due`` / ``remaining_estimate`` built on
it. It owns no clock beyond an injectable ``nowfun``, no storage and no loop: the scheduler
(beat) calls ``as_schedule()`` on what users wrote and ``next_run()`` on the result.

Usage::

    >>> from datetime import datetime, timedelta, timezone
    >>> from zoneinfo import ZoneInfo
    >>> from localq import crontab, schedule
    >>> from localq.schedules import as_schedule
    >>> berlin = ZoneInfo("Europe/Berlin")
    >>> weekdays_9am = crontab(minute=0, hour=9, day_of_week="mon-fri")
    >>> print(weekdays_9am)
    <crontab: 0 9 * * mon-fri (m/h/dM/MY/d)>
    >>> weekdays_9am.next_run(datetime(2024, 3, 29, 9, 0, tzinfo=berlin)).isoformat()  # a Friday
    '2024-04-01T09:00:00+02:00'
    >>> crontab(minute="*/15").next_run(datetime(2024, 1, 1, 10, 7, tzinfo=timezone.utc)).time()
    datetime.time(10, 15)
    >>> quarterly = crontab(0, 0, day_of_month=1, month_of_year="jan,apr,jul,oct")
    >>> quarterly.next_run(datetime(2024, 5, 2, tzinfo=berlin)).date()
    datetime.date(2024, 7, 1)
    >>> schedule(30) == schedule(timedelta(seconds=30)) == as_schedule(30.0)
    True
    >>> schedule(90).next_run(datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)).time()
    datetime.time(12, 1, 30)
    >>> clock = lambda: datetime(2024, 1, 1, 12, 10, tzinfo=timezone.utc)
    >>> crontab(minute=0, nowfun=clock).is_due(datetime(2024, 1, 1, 11, 0, tzinfo=timezone.utc))
    schedstate(is_due=True, next=3000.0)

Crontab fields (Celery's syntax and meanings):

- each field takes ``'*'``, a number, ``'*/15'`` (every 15th value from the field's first),
  ``'1-5'``, ``'1-10/2'``, ``'1,15'`` and comma-separated mixes of those, an int, or a
  set/list/tuple/range of ints (or of such strings). Spaces around parts are ignored.
- ``minute`` 0-59, ``hour`` 0-23, ``day_of_month`` 1-31, ``month_of_year`` 1-12 (or ``jan`` ..
  ``dec``, ``january`` .. ``december``), ``day_of_week`` 0-6 with **0 = Sunday** (or ``sun`` ..
  ``sat``, ``sunday`` .. ``saturday``); names are case-insensitive and only valid in their own
  field. 7 is not Sunday: as in Celery it is out of range.
- a range whose end is below its start wraps around, as in Celery: ``day_of_week='fri-mon'``
  is Friday, Saturday, Sunday, Monday; ``hour='22-2'`` is 22, 23, 0, 1, 2.
- ``day_of_week='*/2'`` means days whose number divides by two (Sun, Tue, Thu, Sat), not
  every other day.
- **A day must match every day field.** When ``day_of_month`` and ``day_of_week`` are both
  restricted, a day runs only if it matches both (Celery's rule): ``crontab(0, 9,
  day_of_week='mon', day_of_month='1-7')`` is the first Monday of each month. Classic cron
  (crontab(5)) runs on either match instead; localq follows Celery.
- a bad field raises ``ConfigurationError`` (a ``ValueError``) naming the field and the value;
  so does a spec that no date can ever match (``day_of_month=30, month_of_year=2``).

Time zones and daylight saving time:

- ``next_run(after)`` wants an aware datetime and evaluates the crontab on the wall clock of
  ``after``'s time zone (the scheduler passes ``app.conf.timezone``); the result is in that
  zone. A naive datetime is an error: localq never guesses a zone.
- a wall-clock time that does not exist (the hour skipped when clocks spring forward) is
  skipped, not moved: ``crontab(minute=30, hour=2)`` in Europe/Berlin does not run on the last
  Sunday of March.
- a wall-clock time that happens twice (the hour repeated when clocks fall back) runs once, at
  its first occurrence (``fold=0``). So ``crontab(minute=0)`` in Europe/Berlin runs at 02:00
  CEST and next at 03:00 CET on that day, two hours apart. Schedules that must keep a steady
  pace through DST changes are intervals, or crontabs evaluated in UTC.
- an interval ``schedule`` is elapsed time and ignores the wall clock: ``schedule(3600)``
  stays 3600 s apart across DST changes.

``is_due(last_run_at)`` returns Celery's ``schedstate(is_due, next)``: whether the first due
time after ``last_run_at`` has come (by ``nowfun()``, default the real clock), and the seconds
to wait before checking again (when due: until the due time after now). Celery's ``relative``
intervals, ``app`` argument and ``beat_cron_starting_deadline`` are not provided.
"""
from __future__ import annotations

import calendar
import math
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone, tzinfo
from numbers import Real
from typing import Any, NamedTuple

from .exceptions import ConfigurationError

__all__ = ["BaseSchedule", "as_schedule", "crontab", "schedstate", "schedule"]

NowFun = Callable[[], datetime]


class schedstate(NamedTuple):
    """Celery's answer of ``is_due``: due now or not, and seconds until the next check."""
    is_due: bool
    next: float


def _real_now() -> datetime:
    return datetime.now(timezone.utc)


def _require_aware(value: object, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise ConfigurationError(f"{what} must be a datetime, got {value!r}")
    if value.utcoffset() is None:
        raise ConfigurationError(
            f"{what} {value!r} is naive: schedules need an aware datetime, e.g. "
            "datetime.now(ZoneInfo('Europe/Berlin')) or datetime.now(timezone.utc)")
    return value


def _until(start: datetime, end: datetime) -> timedelta:
    # Both in UTC first: Python subtracts two datetimes sharing a tzinfo on the wall clock,
    # which is wrong by the DST shift across a change.
    return end.astimezone(timezone.utc) - start.astimezone(timezone.utc)


class BaseSchedule:
    """What every schedule offers: ``next_run`` (its own), ``is_due`` and
    ``remaining_estimate`` (Celery's, derived from ``next_run`` and ``now()``)."""

    def __init__(self, nowfun: NowFun | None = None) -> None:
        self.nowfun = nowfun

    def now(self) -> datetime:
        """The current time from ``nowfun`` (an aware datetime), else the real clock."""
        return _require_aware((self.nowfun or _real_now)(), "nowfun() returned")

    def next_run(self, after: datetime) -> datetime:
        """The first due time strictly after the aware datetime ``after``, in its zone."""
        raise NotImplementedError

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        """Time from now until the first due time after ``last_run_at`` (negative if past)."""
        return _until(self.now(), self.next_run(last_run_at))

    def is_due(self, last_run_at: datetime) -> schedstate:
        """Celery's ``(is_due, next)``: is a run due now, and in how many seconds to look again.

        When due, ``next`` counts to the due time after now (the scheduler records the run
        as of now), evaluated in ``last_run_at``'s zone.
        """
        now = self.now()
        remaining = _until(now, self.next_run(last_run_at)).total_seconds()
        if remaining > 0:
            return schedstate(False, remaining)
        following = self.next_run(now.astimezone(last_run_at.tzinfo))
        return schedstate(True, max(_until(now, following).total_seconds(), 0.0))


# ---------------------------------------------------------------- interval schedules

_UNITS = (("week", 604800.0), ("day", 86400.0), ("hour", 3600.0), ("minute", 60.0),
          ("second", 1.0))


def _humanize(seconds: float) -> str:
    for name, size in _UNITS:
        if seconds >= size or size == 1.0:
            count = seconds / size
            return f"{count:.2f} {name}{'' if count == 1 else 's'}"
    raise AssertionError("unreachable")


def _as_interval(value: object) -> timedelta:
    if isinstance(value, timedelta):
        interval = value
    elif isinstance(value, Real) and not isinstance(value, bool):
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ConfigurationError(f"schedule interval {value!r} is not a finite number of "
                                     "seconds")
        try:
            interval = timedelta(seconds=seconds)
        except OverflowError:
            raise ConfigurationError(f"schedule interval {value!r} seconds is too large") from None
    else:
        raise ConfigurationError(
            f"schedule interval {value!r} is neither a number of seconds nor a timedelta")
    if interval <= timedelta(0):
        raise ConfigurationError(
            f"schedule interval {value!r} must be positive (at least one microsecond)")
    return interval


class schedule(BaseSchedule):
    """Every ``run_every`` (seconds, or a ``timedelta``) of elapsed time, whatever the clocks say.

    ``next_run(after)`` is ``after + run_every``, computed in UTC and given back in
    ``after``'s zone.
    """

    def __init__(self, run_every: float | timedelta, nowfun: NowFun | None = None) -> None:
        super().__init__(nowfun)
        self.run_every = _as_interval(run_every)

    @property
    def seconds(self) -> float:
        """The interval in seconds (Celery's name)."""
        return self.run_every.total_seconds()

    def next_run(self, after: datetime) -> datetime:
        zone = _require_aware(after, "after").tzinfo
        return (after.astimezone(timezone.utc) + self.run_every).astimezone(zone)

    def __repr__(self) -> str:
        return f"<freq: {_humanize(self.seconds)}>"

    def __eq__(self, other: object) -> bool:
        # Celery's schedule also equals its interval as a timedelta.
        if isinstance(other, schedule):
            return self.run_every == other.run_every
        if isinstance(other, timedelta):
            return self.run_every == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.run_every)


def as_schedule(value: object) -> BaseSchedule:
    """A schedule from what a user may write: a schedule as is, a number of seconds or a
    ``timedelta`` as ``schedule(value)``; anything else is a ``ConfigurationError``.

    (Celery's ``maybe_schedule``, without its pass-through of ``None``.)
    """
    if isinstance(value, BaseSchedule):
        return value
    if isinstance(value, (Real, timedelta)) and not isinstance(value, bool):
        return schedule(value)  # type: ignore[arg-type]   # Real: any number, checked there
    raise ConfigurationError(
        f"{value!r} is not a schedule: use crontab(...), schedule(...), a number of seconds "
        "or a timedelta")


# ---------------------------------------------------------------- crontab

_DAY_NAMES = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
_MONTH_NAMES = ("january", "february", "march", "april", "may", "june", "july", "august",
                "september", "october", "november", "december")


def _name_table(names: tuple[str, ...], first: int) -> dict[str, int]:
    table = {}
    for number, name in enumerate(names, first):
        table[name] = table[name[:3]] = number
    return table


class _Field(NamedTuple):
    name: str
    low: int
    high: int
    names: dict[str, int]
    forms: str      # for error messages: what the field accepts


_FIELDS = {
    "minute": _Field("minute", 0, 59, {}, "0-59"),
    "hour": _Field("hour", 0, 23, {}, "0-23"),
    "day_of_week": _Field("day_of_week", 0, 6, _name_table(_DAY_NAMES, 0),
                          "0-6 with 0 = Sunday, or sun-sat"),
    "day_of_month": _Field("day_of_month", 1, 31, {}, "1-31"),
    "month_of_year": _Field("month_of_year", 1, 12, _name_table(_MONTH_NAMES, 1),
                            "1-12, or jan-dec"),
}
_LONGEST_MONTH = {month: 29 if month == 2 else calendar.monthrange(2001, month)[1]
                  for month in range(1, 13)}
_TOKEN = r"([0-9]+|[A-Za-z]+)"
_PART = re.compile(rf"(\*|{_TOKEN})(?:-{_TOKEN})?(?:/([0-9]+))?")


class _BadField(Exception):
    """Why a field's text is wrong; crontab() turns it into one ConfigurationError."""


def _number(token: str, field: _Field) -> int:
    if token.isdigit():
        number = int(token)
    elif token.lower() in field.names:
        number = field.names[token.lower()]
    else:
        raise _BadField(f"{token!r} is not a number or a name of a {field.name}")
    if not field.low <= number <= field.high:
        raise _BadField(f"{number} is out of range")
    return number


def _parse_part(part: str, field: _Field) -> list[int]:
    match = _PART.fullmatch(part)
    if not match:
        raise _BadField(f"{part!r} is not '*', N, 'N-M', '*/S' or 'N-M/S'")
    start, _, end, step_text = match.groups()
    if start == "*":
        if end is not None:
            raise _BadField(f"{part!r}: '*' takes no range")
        values = list(range(field.low, field.high + 1))
    else:
        first = _number(start, field)
        if end is None:
            if step_text is not None:
                raise _BadField(f"{part!r}: a step needs '*' or a range, "
                                f"e.g. '{start}-{field.high}/{step_text}'")
            return [first]
        last = _number(end, field)
        if first <= last:
            values = list(range(first, last + 1))
        else:       # Celery's wrap-around: 'fri-mon', '22-2'
            values = list(range(first, field.high + 1)) + list(range(field.low, last + 1))
    step = 1 if step_text is None else int(step_text)
    if step == 0:
        raise _BadField(f"{part!r}: the step must be at least 1")
    return values[::step]


def _expand(spec: object, field: _Field) -> frozenset[int]:
    if isinstance(spec, bool):
        raise _BadField("a bool is not a value")
    if isinstance(spec, int):
        if not field.low <= spec <= field.high:
            raise _BadField(f"{spec} is out of range")
        return frozenset((spec,))
    if isinstance(spec, str):
        values: set[int] = set()
        for part in spec.split(","):
            part = part.strip()
            if not part:
                raise _BadField("an empty part")
            values.update(_parse_part(part, field))
        return frozenset(values)
    if isinstance(spec, Iterable) and not isinstance(spec, (bytes, bytearray)):
        items = list(spec)
        if not items:
            raise _BadField("it is empty, so nothing would ever match")
        values = set()
        for item in items:
            if not isinstance(item, (int, str)):
                raise _BadField(f"{item!r} is not an int or a string")
            values |= _expand(item, field)
        return frozenset(values)
    raise _BadField("use a string, an int, or a set/list/range of ints")


def _compact(values: frozenset[int], field: _Field) -> str:
    """Cron text for a set: '*' when full, runs of three or more as 'a-b'."""
    if values == frozenset(range(field.low, field.high + 1)):
        return "*"
    ordered, parts, i = sorted(values), [], 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{ordered[i]}-{ordered[j]}")
        else:
            parts.extend(str(v) for v in ordered[i:j + 1])
        i = j + 1
    return ",".join(parts)


def _first_at_least(ordered: tuple[int, ...], value: int) -> int | None:
    i = bisect_left(ordered, value)
    return ordered[i] if i < len(ordered) else None


class crontab(BaseSchedule):
    """A cron-like schedule with Celery's fields, syntax and rules (see the module docstring).

    The expanded fields are frozensets under Celery's names: ``minute``, ``hour``,
    ``day_of_week`` (0 = Sunday), ``day_of_month``, ``month_of_year``. Two crontabs are equal
    when these are (however they were written; ``nowfun`` is not compared).
    """

    def __init__(self, minute: Any = "*", hour: Any = "*", day_of_week: Any = "*",
                 day_of_month: Any = "*", month_of_year: Any = "*",
                 nowfun: NowFun | None = None) -> None:
        super().__init__(nowfun)
        given = {"minute": minute, "hour": hour, "day_of_week": day_of_week,
                 "day_of_month": day_of_month, "month_of_year": month_of_year}
        expanded: dict[str, frozenset[int]] = {}
        self._text: dict[str, str] = {}
        for name, spec in given.items():
            field = _FIELDS[name]
            try:
                expanded[name] = _expand(spec, field)
            except _BadField as exc:
                raise ConfigurationError(
                    f"crontab {name}={spec!r} is not valid: {exc}; {name} takes {field.forms} "
                    "as '*', 'N', 'N-M', '*/S', 'N-M/S', 'A,B', an int or a set of ints") from None
            self._text[name] = ("".join(spec.split()) if isinstance(spec, str)
                                else _compact(expanded[name], field))
        self.minute = expanded["minute"]
        self.hour = expanded["hour"]
        self.day_of_week = expanded["day_of_week"]
        self.day_of_month = expanded["day_of_month"]
        self.month_of_year = expanded["month_of_year"]
        # Every real date falls on each weekday somewhere in the 400-year Gregorian cycle,
        # so a spec can match iff one of its (month, day) pairs exists in some year.
        if not any(day <= _LONGEST_MONTH[month]
                   for month in self.month_of_year for day in self.day_of_month):
            raise ConfigurationError(
                f"crontab day_of_month={day_of_month!r} with month_of_year={month_of_year!r} "
                "matches no date (those months are shorter): no run would ever be due")
        self._minutes = tuple(sorted(self.minute))
        self._hours = tuple(sorted(self.hour))
        self._days = tuple(sorted(self.day_of_month))
        self._months = tuple(sorted(self.month_of_year))

    def next_run(self, after: datetime) -> datetime:
        zone: tzinfo = _require_aware(after, "after").tzinfo  # type: ignore[assignment]
        after_utc = after.astimezone(timezone.utc)
        local = after_utc.astimezone(zone)      # a real wall time even if `after` was not
        try:
            wall = local.replace(tzinfo=None, second=0, microsecond=0) + timedelta(minutes=1)
            while True:
                candidate = self._next_wall_time(wall)
                at = candidate.replace(tzinfo=zone, fold=0).astimezone(timezone.utc)
                exists = at.astimezone(zone).replace(tzinfo=None) == candidate
                # Wall times in the repeated hour come after `after` on the wall but may be
                # before it in fact (when `after` is the second occurrence): compare in UTC.
                if exists and at > after_utc:
                    return at.astimezone(zone)
                wall = candidate + timedelta(minutes=1)
        except OverflowError:
            pass
        raise ConfigurationError(f"{self} has no due time after {after} before the year 10000")

    def _next_wall_time(self, start: datetime) -> datetime:
        """The first naive wall-clock minute at or after ``start`` that every field matches,
        found by jumping field by field (month, day, hour, minute), never minute by minute."""
        year, month, day, hour, minute = start.year, start.month, start.day, start.hour, \
            start.minute
        while year <= 9999:
            found = _first_at_least(self._months, month)
            if found is None:
                year, month, day, hour, minute = year + 1, self._months[0], 1, 0, 0
                continue
            if found != month:
                month, day, hour, minute = found, 1, 0, 0
            found = self._first_day(year, month, day)
            if found is None:
                month, day, hour, minute = month + 1, 1, 0, 0
                continue
            if found != day:
                day, hour, minute = found, 0, 0
            found = _first_at_least(self._hours, hour)
            if found is None:
                day, hour, minute = day + 1, 0, 0
                continue
            if found != hour:
                hour, minute = found, 0
            found = _first_at_least(self._minutes, minute)
            if found is None:
                hour, minute = hour + 1, 0
                continue
            return datetime(year, month, day, hour, found)
        raise OverflowError("past the year 9999")

    def _first_day(self, year: int, month: int, day: int) -> int | None:
        """The first day >= ``day`` of the month matching day_of_month and day_of_week."""
        last = calendar.monthrange(year, month)[1]
        for candidate in self._days[bisect_left(self._days, day):]:
            if candidate > last:
                return None
            if (calendar.weekday(year, month, candidate) + 1) % 7 in self.day_of_week:
                return candidate
        return None

    def _key(self) -> tuple[frozenset[int], ...]:
        return (self.minute, self.hour, self.day_of_week, self.day_of_month, self.month_of_year)

    def __repr__(self) -> str:
        t = self._text
        return (f"<crontab: {t['minute']} {t['hour']} {t['day_of_month']} {t['month_of_year']} "
                f"{t['day_of_week']} (m/h/dM/MY/d)>")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, crontab):
            return self._key() == other._key()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())
