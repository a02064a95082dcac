"""The supervisor's turns on a fake clock: rate limits, ETAs, expiry, retries, time limits.

A real Supervisor on a real database file, its real selector, doorbell and channels;
only the clock and the child processes are stand-ins. ``FakeChild`` is a ``pool.Child``
with no process behind it: the test reads the jobs handed to it from the other end of
its channel and sends outcomes back in the wire format, and signals are recorded, not
sent. Each step of a test is ``settle``: turns of the loop, with the events a zero-length
wait returns, until nothing moves; time passes only when the test advances the clock.
Times are sums of binary fractions of whole seconds, so comparisons at a deadline are
exact.
"""
from __future__ import annotations

import signal
import time
from datetime import datetime, timezone
from multiprocessing import Pipe
from typing import Any, Iterator

import pytest

from localq import Localq, TimeLimitExceeded
from localq.ids import inbox_slot, parse_id
from localq.serializer import encode_value
from localq.store import records
from localq.store.inbox import no_inbox_here
from localq.wakeup import INBOX_RING_EVERY, INBOX_WATCH
from localq.worker import protocol
from localq.worker.options import resolve
from localq.worker.pool import KILL_GRACE, Child
from localq.worker.supervisor import (
    CLAIM_MAX,
    DRAIN_HOLD,
    FALLBACK_CHECK,
    HOLD_QUEUED,
    LONE_SPIN,
    Supervisor,
)
from localq.worker.timers import Now, Timers


class FakeClock:
    def __init__(self) -> None:
        self.mono = 1000.0
        # A minute ahead of the producers' clock (whose past ETAs mean "now"), so
        # that an ETA the test takes from this clock is in the future for them too.
        self.wall = float(int(time.time()) + 60)

    def __call__(self) -> Now:
        return Now(self.mono, self.wall)

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


class FakeChild(Child):
    """A child without a process: what it is handed waits in ``theirs`` (its end of the
    channel) until the test reads it; what it sends, the test writes there."""

    def __init__(self, pid: int) -> None:
        ours, self.theirs = Pipe(duplex=True)
        super().__init__(pid, ours, protocol.new_slot(), None)
        self.signals: list[int] = []
        self.jobs: list[protocol.ChildJob] = []     # handed over, not yet answered

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)

    def reap(self) -> str:
        return f"signal {self.signals[-1]}" if self.signals else "exitcode 0"

    def received(self) -> list[protocol.ChildJob]:
        if self.theirs.closed:          # it died
            return []
        new = []
        while self.theirs.poll():
            message = self.theirs.recv()
            if message is not protocol.STOP:
                new += [protocol.ChildJob(*job) for job in message]
        self.jobs += new
        self._running()
        return new

    def answer(self, job: protocol.ChildJob, outcome: records.Outcome) -> None:
        self.jobs.remove(job)
        self._running()
        self.theirs.send(protocol.outcomes_message([outcome]))

    def _running(self) -> None:
        """As a real child does, it runs its jobs in order and says which in its slot."""
        self.words[protocol.RUNNING] = self.jobs[0].seq if self.jobs else 0

    def die(self) -> None:
        self.jobs.clear()
        self.theirs.close()


class Turns:
    """A supervisor, its fake children and the clock, driven one settle at a time."""

    def __init__(self, app: Localq, clock: FakeClock, concurrency: int) -> None:
        self.app = app
        self.clock = clock
        self.children: list[FakeChild] = []
        self.sup = Supervisor(app, resolve(app.conf, concurrency=concurrency), clock=clock,
                              fork=self._fork)
        self.sup.open()

    def _fork(self, *args: Any) -> FakeChild:
        child = FakeChild(10_000_000 + len(self.children))    # above any pid_max
        self.children.append(child)
        return child

    def settle(self, succeed: bool = True) -> list[protocol.ChildJob]:
        """Turns of the loop until it would sleep (no event, and a wait longer than 0 on
        the clock that does not move meanwhile); the jobs handed out in them.
        ``succeed``: every job handed out succeeds at once."""
        handed: list[protocol.ChildJob] = []
        events = [key.data for key, _ in self.sup.selector.select(0)]
        for _ in range(100):
            self.sup.turn(events)
            new = [job for child in self.children for job in child.received()]
            handed += new
            if succeed:
                for child in self.children:
                    for job in list(child.jobs):
                        child.answer(job, self.success(job))
            events = [key.data for key, _ in self.sup.selector.select(0)]
            if not events and self.wait() != 0:
                return handed
        raise AssertionError("the supervisor never settled")

    def success(self, job: protocol.ChildJob) -> records.Outcome:
        return records.succeeded(job.seq, encode_value(job.serializer, job.seq),
                                 self.clock.wall, self.clock.wall, 1)

    def wait(self) -> float | None:
        """How long the loop would sleep now, were there no event."""
        timeout, coalescing = self.sup._wait_time(self.clock())
        assert not coalescing
        return timeout

    def close(self) -> None:
        self.sup.close()
        for child in self.children:
            child.theirs.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(tmp_path: Any) -> Iterator[Localq]:
    a = Localq(str(tmp_path / "turns.db"), main="turns")

    @a.task(name="plain")
    def plain(i: int) -> int:
        return i

    @a.task(name="four_per_second", rate_limit="4/s")
    def four_per_second(i: int) -> int:
        return i

    try:
        yield a
    finally:
        a.close()


@pytest.fixture
def turns(app: Localq, clock: FakeClock) -> Iterator[Turns]:
    t = Turns(app, clock, concurrency=2)
    try:
        yield t
    finally:
        t.close()


def test_a_rate_limit_lets_through_the_burst_then_one_job_per_token(app, clock, turns):
    results = [app.tasks["four_per_second"].delay(i) for i in range(12)]
    # A full bucket: the burst (capacity 4), then nothing until the next token.
    assert len(turns.settle()) == 4
    assert turns.sup.timers.deadlines(clock())["rate limits"] == 0.25
    clock.advance(0.125)
    assert turns.settle() == []
    clock.advance(0.125)                # the next token, exactly
    assert len(turns.settle()) == 1
    clock.advance(0.75)                 # three tokens
    assert len(turns.settle()) == 3
    clock.advance(0.5 + 0.125)          # two and a half: two now, the half kept
    assert len(turns.settle()) == 2
    clock.advance(0.125)
    assert len(turns.settle()) == 1     # the half and a half
    clock.advance(10)                   # the bucket refills to its capacity, no more
    assert len(turns.settle()) == 1
    assert [r.state for r in results] == ["SUCCESS"] * 12


def test_a_delayed_job_is_handed_out_at_its_eta_not_before(app, clock, turns):
    plain = app.tasks["plain"]
    later = plain.apply_async((1,), eta=clock.wall + 5)
    now = plain.delay(2)
    assert [job.seq for job in turns.settle()] == [records.split_id(now.id)[0]]
    assert turns.sup.timers.deadlines(clock())["delayed jobs"] == 5
    clock.advance(4.75)
    assert turns.settle() == []
    assert later.state == "PENDING"
    clock.advance(0.25)
    assert [job.seq for job in turns.settle()] == [records.split_id(later.id)[0]]
    assert later.state == "SUCCESS"
    assert "delayed jobs" not in turns.sup.timers.deadlines(clock())


def test_the_loop_sleeps_until_the_nearest_deadline(app, clock, turns):
    turns.settle()
    assert turns.wait() == FALLBACK_CHECK       # idle: the fallback check of the file
    app.tasks["plain"].apply_async((1,), eta=clock.wall + 0.25)
    turns.settle()
    assert turns.wait() == 0.25
    clock.advance(0.25)
    assert turns.wait() == 0.0
    assert len(turns.settle()) == 1


def test_the_loop_polls_for_a_lone_short_job_and_just_after_it_and_sleeps_otherwise(
        app, clock, turns):
    """A lone job of a child whose jobs are short is polled for (its outcome is due
    within LONE_SPIN) until LONE_SPIN after it was handed over, and again until LONE_SPIN
    after its outcome came (a caller that waited for it sends its next one then); with
    two jobs in flight, or a child whose jobs take longer, the loop sleeps."""
    plain = app.tasks["plain"]
    sup = turns.sup
    plain.delay(0)
    turns.settle()                           # a duration is known: jobs take no time
    plain.delay(1)
    [job] = turns.settle(succeed=False)
    handed = clock.mono
    assert sup._lone_job_due(clock.mono) == handed + LONE_SPIN
    clock.advance(LONE_SPIN)
    assert sup._lone_job_due(clock.mono) is None            # overdue: a long job
    [child] = [c for c in turns.children if c.jobs]
    child.answer(job, turns.success(job))
    turns.settle()
    assert sup._lone_job_due(clock.mono) == clock.mono + LONE_SPIN   # its outcome came now
    clock.advance(LONE_SPIN)
    assert sup._lone_job_due(clock.mono) is None
    plain.delay(2)
    assert len(turns.settle(succeed=False)) == 1
    plain.delay(3)
    assert len(turns.settle(succeed=False)) == 1
    assert sup._lone_job_due(clock.mono) is None            # two in flight
    for child in turns.children:
        for waiting in list(child.jobs):
            child.answer(waiting, turns.success(waiting))
    turns.settle()
    for child in turns.children:
        child.note_duration(10 * LONE_SPIN)                  # their jobs take long
    plain.delay(4)
    [job] = turns.settle(succeed=False)
    assert sup._lone_job_due(clock.mono) is None
    [child] = [c for c in turns.children if c.jobs]
    child.answer(job, turns.success(job))
    turns.settle()
    assert sup._lone_job_due(clock.mono) is None            # nor after a long one's


def test_after_an_inbox_ring_the_inboxes_are_looked_at_until_the_watch_ends(
        app, clock, turns, monkeypatch):
    """A producer streaming into its inbox rings at most once per INBOX_RING_EVERY; the
    supervisor that heard it looks at the inboxes every INBOX_RING_EVERY until INBOX_WATCH
    has passed, so a job sent without a ring meanwhile is copied and run all the same.
    After the watch, only a ring (or the fallback check) brings one in."""
    monkeypatch.setattr("localq.app.INBOX_RING_EVERY", 3600.0)    # this producer: one ring
    no_inbox_here(False)                 # this process sends as a producer would, too
    plain = app.tasks["plain"]
    plain.delay(0)                       # a process's first send goes into the file
    turns.settle()
    first = plain.delay(1)               # into the inbox, with a ring
    assert records.split_id(first.id)[0] in [job.seq for job in turns.settle()]
    assert turns.sup.timers.deadlines(clock())["inbox watch"] == pytest.approx(INBOX_RING_EVERY)
    quiet = plain.delay(2)               # into the inbox, no ring
    assert turns.settle() == [] and quiet.state == "PENDING"
    clock.advance(INBOX_RING_EVERY)
    assert [job.seq for job in turns.settle()] == [records.split_id(quiet.id)[0]]
    assert quiet.state == "SUCCESS"
    clock.advance(INBOX_WATCH)           # past the watch: the last look
    turns.settle()
    assert "inbox watch" not in turns.sup.timers.deadlines(clock())
    late = plain.delay(3)                # no ring, no watch: the fallback check finds it
    assert turns.settle() == [] and late.state == "PENDING"
    clock.advance(FALLBACK_CHECK)
    assert [job.seq for job in turns.settle()] == [records.split_id(late.id)[0]]
    assert all(inbox_slot(parse_id(r.id)) is not None for r in (first, quiet, late))


def test_a_job_claimed_after_it_expired_ends_revoked_and_is_never_handed_out(app, clock,
                                                                             turns):
    plain = app.tasks["plain"]
    expires = datetime.fromtimestamp(clock.wall + 2, timezone.utc)
    late = plain.apply_async((1,), eta=clock.wall + 3, expires=expires)
    in_time = plain.apply_async((2,), eta=clock.wall + 1, expires=expires)
    turns.settle()
    clock.advance(1)
    assert [job.seq for job in turns.settle()] == [records.split_id(in_time.id)[0]]
    clock.advance(2)
    assert turns.settle() == []
    assert late.state == "REVOKED"
    assert in_time.state == "SUCCESS"
    assert "expired" in str(app.store.job(late.id))


def _retry(turns: Turns, job: protocol.ChildJob, countdown: float) -> records.Outcome:
    wall = turns.clock.wall
    return records.retrying(job.seq, "localq.exceptions.Retry", None, wall, wall, 1,
                            wall + countdown, "Retry in %ss" % countdown)


def test_a_retry_is_handed_out_again_after_its_countdown_not_before(app, clock, turns):
    r = app.tasks["plain"].delay(1)
    [job] = turns.settle(succeed=False)
    child = next(c for c in turns.children if c.jobs)
    child.answer(job, _retry(turns, job, 3))
    assert turns.settle() == []
    assert r.state == "RETRY"
    assert turns.sup.timers.deadlines(clock())["delayed jobs"] == 3
    clock.advance(2.75)
    assert turns.settle() == []
    clock.advance(0.25)
    [again] = turns.settle()
    assert (again.seq, again.retries) == (job.seq, 1)
    assert r.state == "SUCCESS"


def test_a_waiting_retry_survives_a_restart_and_runs_at_its_time(app, clock, tmp_path):
    r = app.tasks["plain"].delay(1)
    first = Turns(app, clock, concurrency=1)
    try:
        [job] = first.settle(succeed=False)
        first.children[0].answer(job, _retry(first, job, 0.25))
        assert first.settle() == []
    finally:
        first.close()
    assert r.state == "RETRY"
    second = Turns(app, clock, concurrency=1)
    try:
        assert second.settle() == []
        clock.advance(0.25)
        [again] = second.settle()
        assert (again.seq, again.retries) == (job.seq, 1)
    finally:
        second.close()
    assert r.state == "SUCCESS"


def test_a_hard_time_limit_stops_the_child_at_its_deadline(app, clock, turns):
    r = app.tasks["plain"].apply_async((1,), time_limit=2)
    [job] = turns.settle(succeed=False)
    child = next(c for c in turns.children if c.jobs)
    assert turns.sup.timers.deadlines(clock())["time limits"] == 2
    clock.advance(1.875)
    turns.settle(succeed=False)
    assert child.signals == []
    clock.advance(0.125)
    turns.settle(succeed=False)
    assert child.signals == [signal.SIGTERM]
    assert len(turns.children) == 3      # its successor started at once
    clock.advance(KILL_GRACE)
    turns.settle(succeed=False)
    assert child.signals == [signal.SIGTERM, signal.SIGKILL]
    child.die()
    turns.settle()
    assert r.state == "FAILURE"
    with pytest.raises(TimeLimitExceeded):
        r.get(timeout=0)


class Every5s:
    """A periodic component as beat would be: it sends a job when due."""

    def __init__(self, app: Localq, start: float) -> None:
        self.app = app
        self.at = start + 5
        self.sent: list[Any] = []

    def next_due(self, now: Now) -> float:
        return self.at

    def run_due(self, now: Now) -> bool:
        self.sent.append(self.app.tasks["plain"].delay(len(self.sent)))
        self.at += 5
        return True


def test_a_component_with_a_deadline_plugs_into_the_turn(app, clock, turns):
    component = Every5s(app, clock.wall)
    turns.sup.timers.add("every 5 s", component.next_due, component.run_due, wall=True)
    turns.settle()
    assert turns.sup.timers.deadlines(clock())["every 5 s"] == 5
    clock.advance(4.75)
    assert turns.settle() == [] and component.sent == []
    clock.advance(0.25)
    turns.sup.turn([])                  # one turn, without the doorbell's event: it sends,
    [job] = [job for c in turns.children for job in c.received()]   # claims and hands out
    assert [job.seq] == [records.split_id(r.id)[0] for r in component.sent]
    turns.settle()
    assert turns.sup.timers.deadlines(clock())["every 5 s"] == 5


def test_timers_run_in_order_and_say_when_jobs_may_be_claimable():
    ran = []
    timers = Timers()
    once = timers.once("eta", wall=True)
    every = timers.every("tick", 1.0, lambda now: ran.append(("tick", now.mono)), Now(0, 0))
    timers.add("never", lambda now: None, lambda now: ran.append("never"))
    with pytest.raises(ValueError, match="already"):
        timers.add("tick", every.next_due, every.run_due)
    assert timers.wait(Now(0, 100)) == 1.0
    once.at = 100.5
    assert timers.wait(Now(0, 100)) == 0.5
    assert timers.run_due(Now(0.5, 100.5)) is True and once.at is None
    assert ran == []
    assert timers.run_due(Now(1.0, 101)) is False
    assert ran == [("tick", 1.0)]
    assert timers.wait(Now(1.0, 101)) == 1.0
    assert timers.wait(Now(3.0, 103)) == 0.0


def test_while_a_backlog_drains_outcomes_wait_for_a_fuller_transaction(app, clock):
    """A child's batch of outcomes is not a transaction of its own while every child
    has plenty queued: it waits, at most DRAIN_HOLD after the last write (any event
    ends the wait early, to look again), and a child running low ends it at once."""
    turns = Turns(app, clock, concurrency=1)
    try:
        results = [app.tasks["plain"].delay(i) for i in range(600)]
        [child] = turns.children
        [first] = turns.settle(succeed=False)      # one job until a duration is known
        child.answer(first, turns.success(first))
        handed = turns.settle(succeed=False)       # written; CLAIM_MAX handed over
        for job in handed[:10]:                    # 246 left: under half its prefetch
            child.answer(job, turns.success(job))
        handed += turns.settle(succeed=False)      # written at once, and topped up
        assert results[10].state == "SUCCESS" and len(handed) == 2 * CLAIM_MAX
        queued = len(handed) - 10
        assert 2 * (queued - 40) >= child.prefetch() and queued - 40 >= HOLD_QUEUED
        for job in handed[10:50]:
            child.answer(job, turns.success(job))
        assert turns.settle(succeed=False) == []
        assert results[11].state == results[50].state == "STARTED"     # held
        assert 0 < turns.wait() <= DRAIN_HOLD
        clock.advance(DRAIN_HOLD)
        handed += turns.settle(succeed=False)      # written, and topped up
        assert [r.state for r in results[11:51]] == ["SUCCESS"] * 40
        # Running low (under half its prefetch queued) ends the hold at once.
        low = len(handed) - child.prefetch() // 2 + 1
        for job in handed[50:low]:
            child.answer(job, turns.success(job))
        assert len(handed) - low < child.prefetch() // 2          # left queued
        turns.settle(succeed=False)
        assert results[low].state == "SUCCESS"
    finally:
        turns.close()
