"""The supervisor's clock and its one list of deadlines.

Every timed concern of a worker is a timer in one ``Timers``: the time limits of
the children, the next token of a rate-limited task, the ETA of the next delayed
job, the retry of a failed write, the fallback check of the file, the heartbeat,
the recovery of dead workers, result expiry. A timer is two callables:

- ``next_due(now) -> float | None``: when it next wants to run, on the clock it
  was added with (``Now.mono`` or ``Now.wall``); None: it has nothing to do;
- ``run_due(now) -> bool | None``: do what is due; True when that may have made
  jobs claimable (the supervisor then claims in the same turn). It must move
  ``next_due`` past ``now`` (or to None), or the loop would not sleep.

The supervisor sleeps until ``wait(now)`` says (or an event comes first), then
calls ``run_due(now)``. ``now`` is passed in everywhere, read from a clock given
to the supervisor (``system_clock`` in production), so that a test can drive the
supervisor's turns on a fake clock.

Two clocks, because the file's times are wall-clock times shared by every process
(ETAs, buckets, expiry, beat's schedules) and intervals are not (time limits,
heartbeats, backoff). A wall-clock deadline is compared with the wall clock at
every turn, not converted once, so a clock that is stepped moves it at once, as
it would move the producers' ETAs.
"""
from __future__ import annotations

import time
from typing import Callable, NamedTuple


class Now(NamedTuple):
    mono: float     # time.monotonic(): intervals (time limits, heartbeat, backoff)
    wall: float     # time.time(): the file's times (ETAs, buckets, expiry, schedules)


Clock = Callable[[], Now]
NextDue = Callable[[Now], "float | None"]
RunDue = Callable[[Now], "bool | None"]

_now = tuple.__new__
_monotonic, _time = time.monotonic, time.time


def system_clock() -> Now:
    return _now(Now, (_monotonic(), _time()))


class Every:
    """A timer that runs ``action(now)`` every ``interval`` seconds of the monotonic
    clock, the first time one interval after ``start``."""

    def __init__(self, interval: float, action: RunDue, start: float) -> None:
        self.interval = interval
        self.action = action
        self.last = start

    def next_due(self, now: Now) -> float:
        return self.last + self.interval

    def run_due(self, now: Now) -> bool | None:
        self.last = now.mono
        return self.action(now)


class Once:
    """A timer with one settable deadline (``at``, on the clock it is added with):
    when it comes, it is cleared and the timer says that jobs may be claimable."""

    def __init__(self) -> None:
        self.at: float | None = None

    def next_due(self, now: Now) -> float | None:
        return self.at

    def run_due(self, now: Now) -> bool:
        self.at = None
        return True


class Timers:
    """The single list of deadlines: timers run in the order they were added."""

    def __init__(self) -> None:
        # (name, next_due, run_due, index of the clock in Now)
        self._timers: list[tuple[str, NextDue, RunDue, int]] = []

    def add(self, name: str, next_due: NextDue, run_due: RunDue, *,
            wall: bool = False) -> None:
        """One more timer; ``wall``: its times are on the wall clock (``time.time()``)."""
        if any(t[0] == name for t in self._timers):
            raise ValueError(f"a timer named {name!r} is already there")
        self._timers.append((name, next_due, run_due, 1 if wall else 0))

    def every(self, name: str, interval: float, action: RunDue, now: Now) -> Every:
        timer = Every(interval, action, now.mono)
        self.add(name, timer.next_due, timer.run_due)
        return timer

    def once(self, name: str, *, wall: bool = False) -> Once:
        timer = Once()
        self.add(name, timer.next_due, timer.run_due, wall=wall)
        return timer

    def deadlines(self, now: Now) -> dict[str, float]:
        """Seconds from ``now`` to each timer's deadline (negative: overdue); for tests
        and for reading, not for the loop."""
        due = {}
        for name, next_due, _, clock in self._timers:
            at = next_due(now)
            if at is not None:
                due[name] = at - now[clock]
        return due

    def wait(self, now: Now) -> float | None:
        """Seconds from ``now`` to the nearest deadline (0 if one has passed); None if
        no timer has one."""
        nearest = None
        for _, next_due, _, clock in self._timers:
            at = next_due(now)
            if at is not None:
                left = at - now[clock]
                if nearest is None or left < nearest:
                    nearest = left
        return None if nearest is None else max(0.0, nearest)

    def run_due(self, now: Now) -> bool:
        """Run every timer whose deadline has come, in order; True if one of them says
        that jobs may be claimable."""
        claim = False
        for _, next_due, run_due, clock in self._timers:
            at = next_due(now)
            if at is not None and at <= now[clock] and run_due(now):
                claim = True
        return claim
