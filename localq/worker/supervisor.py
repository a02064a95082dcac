"""The supervisor: one event loop that claims jobs, feeds children, writes outcomes.

It is the only process that claims jobs and writes their outcomes. Its loop is
a few named steps, in the manner of ``concurrent.futures``' process pool
manager::

    while not done:
        turn(events):  handle events  ->  run due timers  ->  write and claim  ->  dispatch
        events = wait():  until the nearest timer, or an event

- **handle events**: outcomes and exit notices from children, a child's death,
  the doorbell (rung by producers, by ``revoke`` and by run-time rate limits),
  signals, the parent's pipe when embedded;
- **run due timers**: ``self.timers`` (timers.py) is the one list of deadlines:
  the children's time limits, the retry of a failed write, a rate limit's next
  token, the next delayed job's ETA, a fallback check of ``PRAGMA data_version``
  in case a ring was lost, the heartbeat, recovery of dead workers, result expiry;
- **write and claim**: every outcome that arrived and a claim for the free slots,
  in one transaction, then the waiters' doorbells are rung;
- **dispatch**: claimed jobs to children with room;
- **wait**: one epoll selector (kept for the supervisor's whole life) over the
  children's channels and sentinels, the doorbell, a signal pipe and the parent's
  pipe, with a timeout to the nearest deadline (0 when there is work to write).

Time is read from ``clock`` (given at construction, ``timers.system_clock`` in
production) at the start of a turn and after a write (which may wait for the
lock), and passed down as ``now``: tests drive ``turn`` with fake children and a
fake clock (tests/test_supervisor_turns.py).

A transaction costs ~80 us however few jobs it carries, so writes are held back
while that costs no one anything (``_held``):

- while jobs stream in (several rings since the last write), it writes at most
  once per COALESCE and sleeps deaf in between: a stream of single enqueues then
  meets one claim per millisecond, not one per job, and the producers find the
  write lock free far more often;
- while a backlog drains (every child has at least half its prefetch, and
  HOLD_QUEUED jobs, still queued), outcomes wait up to DRAIN_HOLD after the last
  write, so that one transaction carries a few milliseconds of outcomes and claims
  rather than each child's batch on its own. A child running low ends the hold.

A lone job (a round trip) is never held back: its ring is the only one, and its
outcome finds its child with nothing queued. While it runs (the only job in flight,
of a child whose jobs are short), the loop polls for its outcome for up to LONE_SPIN
instead of sleeping: a wake-up from sleep costs the round trip tens of microseconds.
(A ring while jobs are in flight is not taken for a stream: with two clients each
waiting on its own job, that would hold one client's job back for the other's.)
"""
from __future__ import annotations

import logging
import os
import selectors
import signal
import sqlite3
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .. import signals
from ..exceptions import DatabaseError
from ..profiling import run_profiled
from ..serializer import encode_exception, exception_type_name
from ..store import Claimed, Outcome, Store, records
from ..store.inbox import ORPHAN_AGE, no_inbox_here, owner_gone
from ..store.jobs import ONE_BY_ONE
from ..store.schema import BUSY_TIMEOUT_MS
from ..task import Request
from ..wakeup import (
    INBOX_RING_EVERY,
    INBOX_WATCH,
    Doorbell,
    Ringer,
    outcomes_message,
    supervisor_name,
    wake_folder,
)
from . import execute, protocol
from .execute import LimitCache, revoked_outcome
from .pool import DIED, Child, Inflight, death_outcome, fork_child
from .tally import Tally
from .throttle import FlowControl
from .timers import Clock, Now, Timers, system_clock
from .upkeep import RECOVERY_EVERY, Checkpointer, Upkeep, safely

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from ..beat import Scheduler
    from .options import WorkerApp, WorkerOptions

    # fork_child's signature: (app, siblings' channels, fds to close, max_tasks,
    # max_memory) -> a started Child
    ForkChild = Callable[[WorkerApp, list[Connection], list[int], int | None, int | None],
                         Child]

log = logging.getLogger("localq.worker")

FALLBACK_CHECK = 0.5     # seconds between data_version checks when idle
MAX_QUEUED_BYTES = 64 * 1024   # arguments queued in a busy child's channel, at most
CLAIM_MAX = 256         # jobs claimed in one transaction, at most: holds the write lock ~2 ms
COALESCE = 0.001         # seconds: while jobs stream in, one write per this, at most
DRAIN_HOLD = 0.002       # seconds: while a backlog drains, one write per this, at most
HOLD_QUEUED = 16         # ... if every child still has this many jobs queued, at least
# Seconds after handing over a lone job (nothing else in flight) of a child whose jobs
# take less than this, during which the loop polls for its outcome instead of sleeping,
# and again after its outcome came (a caller that waited for it sends the next one
# about then): a round trip is spared two wake-ups, for at most twice this much CPU
# per lone job.
LONE_SPIN = 0.0003
# A transaction with this many outcomes at most rings the waiters with the short
# SUCCESS results among them (CARRY_RESULT characters at most each): a waiter on one
# of them skips its read of the file. More outcomes mean a stream or a drain, where
# the ring rarely finds its waiter still waiting and the reads cost less than the
# carrying would. It is the bound up to which jobs.finish says which it wrote.
CARRY_JOBS = ONE_BY_ONE
CARRY_RESULT = 512
# A write that finds the lock held this long gives up, and the loop goes on (children
# report, time limits are enforced) until it tries again, at most WRITE_BACKOFF_MAX later.
WRITE_PATIENCE = 0.5
WRITE_BACKOFF_MAX = 2.0
# SQLite's primary result codes of a passing fault: busy, locked, out of memory,
# read-only, I/O error, disk full, cannot open, locking protocol.
TRANSIENT_CODES = frozenset((5, 6, 7, 8, 10, 13, 14, 15))


def _has_inflight(child: Child) -> bool:
    return bool(child.inflight)


class _PresumedDead(Exception):
    """Another worker found this one silent for too long and took its jobs back."""


class _Passing(Exception):
    """A write failed for a passing reason: try again later."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _transient(exc: BaseException) -> bool:
    """Is this failed write worth trying again as it is?"""
    cause = exc.__context__ if isinstance(exc, DatabaseError) else exc
    if isinstance(cause, sqlite3.Error):
        code = getattr(cause, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF in TRANSIENT_CODES
        return isinstance(cause, sqlite3.OperationalError)
    return isinstance(exc, (DatabaseError, OSError))


def _unstorable(outcome: Outcome, exc: BaseException) -> Outcome:
    """A FAILURE that stands for an outcome SQLite refused, saying why."""
    error = DatabaseError(f"this job ended {outcome.state}, but its outcome could not be "
                          f"stored ({exc}); check what the task returns or passes to retry()")
    return records.failed(outcome.seq, encode_exception("json", error),
                          exception_type_name(error), None, outcome.started,
                          outcome.ended or time.time(), outcome.pid, str(error))


class Supervisor:
    def __init__(self, app: WorkerApp, options: WorkerOptions, *, parent_fd: int | None = None,
                 ready_fd: int | None = None, clock: Clock = system_clock,
                 fork: ForkChild = fork_child) -> None:
        self.app = app
        self.concurrency = max(1, int(options.concurrency))
        self.queues = options.queues
        self.max_tasks = options.max_tasks_per_child or None
        self.max_memory = options.max_memory_per_child or None
        self.hostname = options.hostname          # Celery's node name: the signals' worker
        self.parent_fd = parent_fd
        self.ready_fd = ready_fd
        self.clock = clock
        self._fork = fork
        self.children: dict[int, Child] = {}
        self.ready: deque[Claimed] = deque()      # claimed, not yet handed to a child
        self.outcomes: list[Outcome] = []
        self.task_states: dict[int, tuple[int, str, Any]] = {}   # update_state, by seq
        self.final_outcomes = False
        self.lone_done = 0.0                      # monotonic time a lone job's outcome came
        self.carry: list[tuple[int, str, str, str]] = []   # outcomes a ring may carry
        self.want_work = True                     # there may be claimable jobs
        self.checkpointer: Checkpointer | None = None
        self.rings = 0                            # producers' rings since the last write
        self.last_write = 0.0                     # monotonic time of the last transaction
        self.stopping = False
        self.cold = False
        self.exit_code = 0
        self._signals: list[int] = []
        self._signal_pipe: tuple[int, int] | None = None
        self.limits = LimitCache(app)
        self.write_failures = 0                   # failed writes in a row
        self.stranded = 0                         # jobs whose outcome could not be stored
        self.write_again_at = 0.0                 # monotonic time of the next attempt
        self.timers = Timers()
        self.selector = selectors.DefaultSelector()
        self.run_beat = options.beat              # also run the periodic tasks (-B)
        self.beat: Scheduler | None = None
        self.tally = Tally()                      # outcomes, for the monitoring tools

    # -------------------------------------------------------------- lifecycle

    def run(self) -> int:
        self._catch_signals()
        self.open()          # a file it cannot use: one clear message, no traceback
        try:
            app = self.app
            self.checkpointer = Checkpointer(Store(app.path, app.conf.database_synchronous))
            self._banner()
            signals.worker_ready.send(self)
            if self.ready_fd is not None:
                os.write(self.ready_fd, b"ready\n")
                os.close(self.ready_fd)
                self.ready_fd = None
            try:
                run_profiled("supervisor", self._loop)
            except DatabaseError:
                # Every database call of the loop waits, or fails and is tried again
                # later: one that ends up here is a bug, and the traceback names it.
                log.critical("the worker stops on a database error:", exc_info=True)
                raise
        finally:
            self.close()
        return self.exit_code

    def open(self) -> None:
        """Register this worker, open what the loop uses and start the children (``run``
        adds the signal handlers and the checkpoint thread)."""
        app = self.app
        now = self.clock()
        self.store = Store(app.path, app.conf.database_synchronous)
        self.flow = FlowControl(app, self.store)
        if self.run_beat:
            from ..beat import Scheduler
            self.beat = Scheduler(app, self.store, wake_workers=True)
            self.beat.start(now.wall)
        self.upkeep = Upkeep(self.store, app.conf, self.queues, self.concurrency)
        self.worker_id = self.upkeep.register(now.wall)
        if self.upkeep.recover(self.worker_id, now.wall):
            self.want_work = True
        self.store.patience = WRITE_PATIENCE
        self.bell = Doorbell(wake_folder(app.path), supervisor_name())
        self.waiters = Ringer(wake_folder(app.path), "g")
        self.peers = Ringer(wake_folder(app.path), "w", skip=self.bell.path)   # other workers
        self.peers_have_work = False    # the canvas made more jobs ready than we took
        self.selector.register(self.bell, selectors.EVENT_READ, "bell")
        if self.parent_fd is not None:
            self.selector.register(self.parent_fd, selectors.EVENT_READ, "parent")
        self._version = self.store.data_version()
        if self.bell.bound and self.bell.folder.endswith(".d"):   # private, beside the file
            self.store.inbox_folder = self.bell.folder
        no_inbox_here()
        self.inbox_names: list[str] = []
        self.inbox_rung: list[str] = []     # rang since the last write: attached first
        self.inbox_look_at: float | None = None   # next look at the inboxes (monotonic)
        self.inbox_watch_until = 0.0              # ... while before this
        self.absorb_due = False
        self._refresh_inboxes()
        self._sweep_inboxes(now)
        self._add_timers(now)
        execute.hostname[0] = self.hostname        # the children's request.hostname
        try:
            signals.worker_init.send(self)
            self._keep_pool_whole()
        except BaseException:
            self.close()
            raise

    def _add_timers(self, now: Now) -> None:
        """Every deadline of the loop, in the order they run when due together. One more
        (beat's, say) is one more ``self.timers.add(...)`` here: see timers.py."""
        timers = self.timers
        timers.add("time limits", self._next_time_limit, self._run_time_limits)
        timers.add("write retry", self._next_write_retry, lambda now: None)
        timers.add("rate limits", self.flow.next_due, self.flow.run_due, wall=True)
        self.next_eta = timers.once("delayed jobs", wall=True)
        timers.every("fallback check", FALLBACK_CHECK, self._fallback_check, now)
        timers.every("heartbeat", self.app.conf.worker_heartbeat_interval, self._heartbeat,
                     now)
        timers.every("recovery", RECOVERY_EVERY, self._recover, now)
        timers.every("inbox orphans", ORPHAN_AGE, self._sweep_inboxes, now)
        timers.add("inbox watch", lambda now: self.inbox_look_at, self._look_at_inboxes)
        timers.add("result expiry", lambda now: self.upkeep.next_expiry, self._expire)
        if (beat := self.beat) is not None:
            timers.add("beat", lambda now: None if self.stopping else beat.next_due(),
                       lambda now: beat.run_due(now.wall) > 0, wall=True)

    def _catch_signals(self) -> None:
        """SIGTERM/SIGINT (warm, then cold shutdown) and SIGQUIT (cold), through a pipe
        the loop waits on."""
        sig_r, sig_w = self._signal_pipe = os.pipe()
        os.set_blocking(sig_r, False)
        os.set_blocking(sig_w, False)
        signal.set_wakeup_fd(sig_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, self._on_signal)
        self.selector.register(sig_r, selectors.EVENT_READ, "signal")
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    def _banner(self) -> None:
        log.info("localq worker ready: app=%s database=%s queues=%s concurrency=%d pid=%d",
                 self.app.main_name, os.path.abspath(self.app.path), ",".join(self.queues),
                 self.concurrency, os.getpid())

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)

    def _start_child(self) -> Child:
        close = [self.bell.fileno(), self.selector.fileno(), *(self._signal_pipe or ())]
        close.extend(c.sentinel for c in self.children.values() if c.sentinel is not None)
        if self.parent_fd is not None:
            close.append(self.parent_fd)
        if self.checkpointer is not None:
            self.checkpointer.pause()        # fork with one thread only
        try:
            child = self._fork(self.app, [c.conn for c in self.children.values()], close,
                               self.max_tasks, self.max_memory)
        finally:
            if self.checkpointer is not None:
                self.checkpointer.resume()
        self.children[child.pid] = child
        self.selector.register(child.conn, selectors.EVENT_READ, child)
        if child.sentinel is not None:
            self.selector.register(child.sentinel, selectors.EVENT_READ, (DIED, child))
        return child

    def _active_children(self) -> int:
        return sum(1 for c in self.children.values()
                   if c.takes_work)

    def _keep_pool_whole(self) -> None:
        if self.stopping:
            return
        while self._active_children() < self.concurrency:
            self._start_child()

    # -------------------------------------------------------------- the loop

    def _loop(self) -> None:
        events: list[Any] = []
        while True:
            self.turn(events)
            if self.stopping and not self.children:
                break
            events = self._wait()

    def turn(self, events: Iterable[Any] = ()) -> None:
        """One turn of the loop: handle the events the wait returned (selector keys'
        data), run the timers that are due, write and claim, hand work out."""
        now = self.clock()
        for what in events:
            self._handle(what, now)
        self._handle_signals()
        if self.timers.run_due(now):
            self.want_work = True
        now = self._write_and_claim(now)
        self._dispatch(now)

    def _wait(self) -> list[Any]:
        """Wait for an event, at most until the nearest deadline; the events' data."""
        now = self.clock()
        timeout, coalescing = self._wait_time(now)
        if coalescing and timeout:
            # Sleep out the (sub-millisecond) window deaf: rings and outcomes that
            # come meanwhile are read all at once after it, not one wake-up each.
            time.sleep(timeout)
            timeout = 0.0
        elif timeout != 0.0 and (until := self._lone_job_due(now.mono)) is not None:
            # Poll instead of sleeping while a lone short job runs (its outcome is due
            # within LONE_SPIN) and just after (the next job of a caller that waited
            # for it): a wake-up from sleep costs tens of us.
            select = self.selector.select
            spin_end = min(until, now.mono + timeout) if timeout is not None else until
            while (mono := time.monotonic()) < spin_end:
                events = select(0)
                if events:
                    return [key.data for key, _ in events]
            if timeout is not None:
                timeout = max(0.0, timeout - (mono - now.mono))
        return [key.data for key, _ in self.selector.select(timeout)]

    def _lone_job_due(self, mono: float) -> float | None:
        """Until when to poll: for a lone job's outcome (one job in flight in the whole
        pool, of a child whose jobs take under LONE_SPIN, handed over under LONE_SPIN
        ago), or for the next job after a lone job's outcome came under LONE_SPIN ago
        (nothing in flight). None: sleep (several jobs in flight keep the loop busy
        anyway; a long job is worth no one's CPU)."""
        if self.ready or self.stopping:
            return None
        lone = None
        for child in self.children.values():
            if child.inflight:
                if lone is not None or len(child.inflight) > 1:
                    return None
                lone = child
        if lone is None:
            until = self.lone_done + LONE_SPIN
        elif (lone.avg_duration or 0.0) > LONE_SPIN:
            return None
        else:
            until = lone.inflight[0].sent + LONE_SPIN
        return until if until > mono else None

    def _wait_time(self, now: Now) -> tuple[float | None, bool]:
        """How long to wait for events (None: until one comes), and whether that is a
        coalescing window (to be slept through deaf) rather than an ordinary wait that
        any event ends. No wait while there is something to write, unless a failed
        write waits for its retry (a timer)."""
        if (self.outcomes or self.task_states or self.absorb_due
                or self._should_claim()) and now.mono >= self.write_again_at:
            held = self._held(now.mono)
            if held is None:
                return 0.0, False
            until, deaf = held
            if deaf:
                return max(0.0, until - now.mono), True
            timeout = self.timers.wait(now)
            wait = max(0.0, until - now.mono)
            return (wait if timeout is None else min(wait, timeout)), False
        return self.timers.wait(now), False

    def _should_claim(self, slots: int | None = None) -> bool:
        """Claim now? Only if there may be work and room for it (``slots``: the free
        slots, counted here if not given), and either outcomes are to be written anyway
        (one transaction does both) or a child sits idle. A ring while every child still
        has work waits for the next batch of outcomes, so a stream of enqueues does not
        turn into a stream of claim transactions that compete with the producer for the
        write lock."""
        if not self.want_work or self.stopping:
            return False
        if slots is None:
            slots = self._free_slots()
        if slots <= 0:
            return False
        return bool(self.outcomes) or any(not c.inflight and self._room(c) > 0
                                          for c in self.children.values())

    def _held(self, mono: float) -> tuple[float, bool] | None:
        """Should the write wait? None: write now; else (until when, deaf): deaf waits
        are slept through, the others end early if an event comes (see the module's
        docstring)."""
        if self.stopping:
            return None
        rings = self.rings
        if rings > 1 and mono < self.last_write + COALESCE:
            return self.last_write + COALESCE, True       # jobs stream in
        if self.outcomes and not rings and mono < self.last_write + DRAIN_HOLD \
                and self._all_busy():
            return self.last_write + DRAIN_HOLD, False     # a backlog drains
        return None

    def _all_busy(self) -> bool:
        """Has every child taking work at least half its prefetch (and HOLD_QUEUED)
        still queued?"""
        busy = False
        for child in self.children.values():
            if child.takes_work:
                queued = len(child.inflight)
                if queued < HOLD_QUEUED or 2 * queued < child.prefetch():
                    return False
                busy = True
        return busy

    # -------------------------------------------------------------- timers

    def _next_time_limit(self, now: Now) -> float | None:
        nearest = None
        for child in self.children.values():
            at = child.deadline()
            if at is not None and (nearest is None or at < nearest):
                nearest = at
        return nearest

    def _run_time_limits(self, now: Now) -> None:
        for child in list(self.children.values()):
            if child.run_deadline(now.mono):
                self._keep_pool_whole()      # the replacement starts now, not after death

    def _next_write_retry(self, now: Now) -> float | None:
        """A failed write is tried again at ``write_again_at`` (by the write step), if
        there is still something to write."""
        if self.write_failures and (self.outcomes or self.task_states or self.absorb_due
                                    or self._should_claim()):
            return self.write_again_at
        return None

    def _refresh_inboxes(self) -> None:
        """Read which producers' inboxes are registered; copy them at the next write.
        An inbox whose producer is gone is copied whole and removed."""
        if self.store.inbox_folder is None:
            return
        rows = safely(self.store.inboxes)
        if rows is None:
            return
        self.inbox_names = [r[1] for r in rows]
        if safely(self.store.inboxes_waiting, rows) is not False:
            self.absorb_due = True      # (a read that failed: the write will tell)
        folder = self.store.inbox_folder
        for _slot, name, _pid, _pid_start, _pos in rows:
            if owner_gone(folder, name):
                safely(self._free_inbox, name)

    def _watch_inboxes(self, now: Now) -> None:
        """An inbox ring: look at the inboxes every INBOX_RING_EVERY until INBOX_WATCH
        after the last one (its producer rings no more often: see wakeup.py)."""
        self.inbox_watch_until = now.mono + INBOX_WATCH
        if self.inbox_look_at is None:
            self.inbox_look_at = now.mono + INBOX_RING_EVERY

    def _look_at_inboxes(self, now: Now) -> bool:
        """Copy what the inboxes hold at the next write; the last look comes after the
        watch has ended, so a job sent before its end without a ring is copied."""
        self.absorb_due = True
        self.inbox_look_at = None if now.mono >= self.inbox_watch_until \
            else now.mono + INBOX_RING_EVERY
        return False

    def _sweep_inboxes(self, now: Now) -> None:
        """Remove inbox files that no registered inbox names, left by producers killed
        as they made or removed them (store/inbox.py's ``orphans``)."""
        safely(self.store.remove_orphan_inboxes, now.wall)

    def _free_inbox(self, name: str) -> None:
        """Copy a gone producer's inbox whole, free its slot, remove its file."""
        store = self.store
        alias = store.attach_inboxes([name, *self.inbox_names]).get(name)
        if alias is None:          # no file (it died before making it): free the slot
            store.free_missing_inbox(name)
            return
        freed = more = True
        while more:              # a transaction per COPY_MAX rows: others get the lock
            with store.transaction() as tx:
                more = tx.absorb(name, alias)[1]
                freed = not more and tx.free_inbox(name, alias)
        store.detach_inbox(name)
        if freed:
            store.remove_inbox(name)
        self.want_work = True

    def _fallback_check(self, now: Now) -> bool:
        """Has the file changed without a ring reaching this worker? Then claim, and look
        for revokes. Registered inboxes are looked at too."""
        self._refresh_inboxes()
        version = safely(self.store.data_version)
        if version is None or version == self._version:
            return self.absorb_due
        self._version = version
        self._check_revokes(now)
        return True

    def _heartbeat(self, now: Now) -> None:
        if safely(self.upkeep.heartbeat, self.worker_id, now.wall, self.tally,
                  list(self.children.values())) is False:
            safely(self._rejoin, now)

    def _recover(self, now: Now) -> bool:
        return bool(safely(self.upkeep.recover, self.worker_id, now.wall))

    def _expire(self, now: Now) -> None:
        busy = bool(self.outcomes or self.ready or self.want_work or
                    any(c.inflight for c in self.children.values()))
        self.upkeep.expiry_step(now, busy, self.stopping)

    # -------------------------------------------------------------- events

    def _handle(self, what: Any, now: Now) -> None:
        if what == "bell":
            for message in self.bell.drain_messages():
                if message == b"R":
                    self._check_revokes(now)
                elif message == b"L":
                    self.flow.refresh()
                elif message[:1] == b"I":         # a producer's inbox has work
                    self.absorb_due = True
                    self.rings += 1
                    self._watch_inboxes(now)
                    name = message[1:].decode(errors="replace")
                    if name not in self.inbox_names:
                        self._refresh_inboxes()
                    if name not in self.inbox_rung:
                        self.inbox_rung.append(name)
                else:
                    self.rings += 1
            self.want_work = True
        elif what == "signal":
            try:
                os.read(self._signal_pipe[0] if self._signal_pipe else -1, 512)
            except OSError:
                pass
        elif what == "parent":
            log.warning("the process that started this worker is gone: shutting down")
            if self.parent_fd is not None:
                self.selector.unregister(self.parent_fd)
                os.close(self.parent_fd)
                self.parent_fd = None
            self._shutdown(cold=True)
        elif type(what) is tuple:                  # (DIED, child): its process has exited
            if self._current(what[1]):
                self._child_died(what[1], now)
        elif self._current(what):
            self._read_child(what, now)

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if sig == signal.SIGQUIT or self.stopping:
                log.warning("cold shutdown (%s): killing children, putting their jobs back",
                            signal.Signals(sig).name)
                self._shutdown(cold=True)
            else:
                log.info("warm shutdown (%s): finishing running jobs; signal again to stop now",
                         signal.Signals(sig).name)
                self._shutdown(cold=False)

    # -------------------------------------------------------------- children

    def _read_child(self, child: Child, now: Now) -> None:
        conn = child.conn
        try:
            while True:
                message = conn.recv()
                if (state := protocol.task_state(message)) is not None:
                    self.task_states[state[0]] = state     # written with the next turn
                    if child.has_more():
                        continue
                    break
                outcomes, leaves = protocol.read(message)
                self._take_outcomes(child, outcomes, now)
                if leaves is not None:                 # it leaves on its own
                    child.leave()
                    leftover = set(leaves.not_started)
                    back = [i.job for i in child.inflight if i.job.seq in leftover]
                    child.keep_only([i for i in child.inflight if i.job.seq not in leftover])
                    self.ready.extendleft(reversed(back))
                    log.info("child %d recycled: %s", child.pid, leaves.reason)
                    self._keep_pool_whole()
                if not child.has_more():
                    break
        except (EOFError, OSError):
            self._child_exited(child, now)

    def _current(self, child: Child) -> bool:
        """Is this child still one of ours (not already cleaned up)?"""
        return self.children.get(child.pid) is child

    def _rejoin(self, now: Now) -> None:
        """This worker was presumed dead (its row is gone) and its jobs were put back
        for others, who may be running them already: it drops every job it held, kills
        the children running them (their outcomes would be dropped anyway: every write
        is guarded by owner), and registers again under a new id."""
        log.warning("this worker was presumed dead by another (silent for over %ss), which "
                    "put its jobs back: dropping them and registering again",
                    self.app.conf.worker_lost_after)
        for child in self.children.values():
            if child.inflight:
                child.keep_only(())
                child.kill("presumed dead")
        self.ready.clear()
        self.outcomes = []
        self.carry.clear()
        self.want_work = True
        self.worker_id = self.upkeep.register(now.wall)
        self._keep_pool_whole()

    def _child_died(self, child: Child, now: Now) -> None:
        """Its process exited: read what it sent before dying, without waiting for an EOF
        that a grandchild holding the channel open would withhold, then clean up."""
        try:
            os.set_blocking(child.conn.fileno(), False)
            if child.has_more():
                self._read_child(child, now)    # a message cut short raises: it is dropped
        except OSError:
            pass
        if self._current(child):
            self._child_exited(child, now)

    def _take_outcomes(self, child: Child, outcomes: list[Outcome], now: Now) -> None:
        """Outcomes from a child."""
        child.last_report = now.mono
        busy = 0.0
        pop = child.pop
        note = self.tally.note
        stale = None
        carry = self.carry
        for o in outcomes:
            job = pop(o.seq)
            if job is None:            # no longer this worker's (see _rejoin): dropped
                stale = stale or set()
                stale.add(o.seq)
                continue
            note(job.task, o)
            if len(carry) < CARRY_JOBS and o.state == "SUCCESS" and job.custom_id is None \
                    and type(o.result) is str and len(o.result) <= CARRY_RESULT:
                carry.append((o.seq, job.task, job.serializer, o.result))
            busy += o.ended - (o.started or o.ended)
            if o.state == "REVOKED":
                if o.started is None:       # skipped by the child: revoked meanwhile
                    self._signal_revoked(job)
                # else it ran and ended itself so (Ignore, Reject): not a revoke
            elif o.state == "FAILURE":
                log.error("Task %s[%s] raised: %s\n%s", job.task if job else "?",
                          job.id if job else "?", o.exc_message, (o.traceback or "").rstrip())
        if stale:
            outcomes = [o for o in outcomes if o.seq not in stale]
        self.outcomes.extend(outcomes)
        if outcomes:
            child.note_duration(max(0.0, busy / len(outcomes)))
            # A lone short job's outcome: poll a while for the next (_lone_job_due)
            avg = child.avg_duration
            lone = len(outcomes) == 1 and not child.inflight and avg is not None \
                and avg <= LONE_SPIN
            self.lone_done = now.mono if lone else 0.0
        self.final_outcomes = True

    def _child_exited(self, child: Child, now: Now) -> None:
        unexpected = child.exits_unexpectedly()
        how = child.reap()
        running = child.running_seq()
        del self.children[child.pid]
        self.selector.unregister(child.conn)
        if child.sentinel is not None:
            self.selector.unregister(child.sentinel)
        child.close()
        # Only the job it was running when it died is blamed (or run again). The others
        # on its list go to another child: those after it never started; those before
        # it finished, but their outcomes died with the child, so they run again.
        # A child stopped to terminate a revoked job may die before it marks that job as
        # running: the job still ends REVOKED, never runs again.
        revoked = child.kill_job if child.kill_reason == "revoke" else None
        again = []
        for item in child.inflight:
            if item.job.seq == running or item.job.seq == revoked:
                self.outcomes.append(death_outcome(child, item, self.app.tasks.get(item.job.task),
                                                   how, now.wall))
                self.final_outcomes = True
                if item.job.seq == revoked:
                    self._signal_revoked(item.job, terminated=True)
            else:
                again.append(item.job)
        self.ready.extendleft(reversed(again))
        if self.stopping and self.cold:
            self.outcomes.extend(records.put_back(j.seq) for j in self.ready)
            self.ready.clear()
        if unexpected and not self.stopping:
            log.warning("child %d exited unexpectedly (%s); starting a new one", child.pid, how)
        self._keep_pool_whole()

    def _check_revokes(self, now: Now) -> None:
        """Act on revokes of jobs this worker holds: one claimed but not handed out ends
        REVOKED here; one handed to a child but not started is skipped by the child; one
        running is killed if the revoke says terminate, else it finishes (as in Celery)."""
        if not self.ready and not any(c.inflight for c in self.children.values()):
            return
        requests = dict(safely(self.store.revoke_requests, self.worker_id) or ())
        if not requests:
            return
        if self.ready:
            kept: deque[Claimed] = deque()
            for job in self.ready:
                if job.seq in requests:
                    self.outcomes.append(revoked_outcome(job.seq, job.serializer, "revoked",
                                                         now.wall))
                    self.final_outcomes = True
                    self._signal_revoked(job)
                else:
                    kept.append(job)
            self.ready = kept
        for child in list(self.children.values()):
            if child.stopping:
                continue
            for item in list(child.inflight):
                seq = item.job.seq
                how = requests.get(seq)
                if how is None:
                    continue
                if child.running_seq() != seq:
                    child.skip(seq)          # harmless if it already finished
                if how == 2 and child.running_seq() == seq:    # (it may have just started)
                    child.stop("revoke", seq, now.mono)
                    self._keep_pool_whole()
                    break

    def _signal_revoked(self, job: Claimed, terminated: bool = False,
                        expired: bool = False) -> None:
        """Celery's task_revoked, sent here, where the worker decides (sender: the task)."""
        if signals.task_revoked.receivers:
            signals.task_revoked.send(
                self.app.tasks.get(job.task), request=Request(id=job.id, task=job.task),
                terminated=terminated, signum=signal.SIGKILL if terminated else None,
                expired=expired)

    def _free_slots(self) -> int:
        free = sum(self._room(child) for child in self.children.values())
        return max(0, free - len(self.ready))

    # -------------------------------------------------------------- write and claim

    def _write_and_claim(self, now: Now) -> Now:
        """Write outcomes and claim work in one transaction, if there is either to do and
        neither coalescing nor a failed write's pause says wait. Returns the time after
        the write (it may have waited for the lock)."""
        slots = 0 if self.stopping else min(self._free_slots(), CLAIM_MAX)
        claim = self._should_claim(slots)
        mono = now.mono
        if (self.outcomes or claim or self.task_states or self.absorb_due) \
                and mono >= self.write_again_at and self._held(mono) is None:
            # The outcomes stay in self.outcomes until the transaction that writes them
            # commits: a write that fails loses nothing and is tried again.
            outcomes = self.outcomes
            # The SUCCESS outcomes this write is known to write, if the ring may carry them
            written: list[int] | None = \
                [] if self.carry and len(outcomes) <= CARRY_JOBS else None
            try:
                claimed, revoked, drained, due = self._write(outcomes, claim, slots, written)
            except _PresumedDead:
                now = self.clock()
                safely(self._rejoin, now)
                return now
            except Exception as exc:  # noqa: BLE001 - the worker outlives any failed write
                now = self.clock()
                self._write_failed(exc, now)
                return now
            now = self.clock()
            if self.write_failures:
                log.warning("writing to the database works again after %d failed attempt(s)",
                            self.write_failures)
                self.write_failures = 0
            if not self.want_work and any(o.state in ("RETRY", "PENDING") for o in outcomes):
                self.want_work = True     # a job to run again: its ETA sets the next wake
            self.outcomes = []
            self.task_states.clear()
            if self.final_outcomes or revoked:   # first: someone may be waiting on these
                self.final_outcomes = False
                self.waiters.ring(outcomes_message(c for c in self.carry if c[0] in written)
                                  if written else b"!")
            self.carry.clear()
            if self.peers_have_work:
                self.peers_have_work = False
                self.peers.ring()
            for job in revoked:
                self._signal_revoked(job, expired=not job.revoke)
            if self.checkpointer is not None:
                self.checkpointer.poke()
            self.rings = 0
            self.last_write = now.mono
            self.ready.extend(claimed)
            if drained:                  # every claimable job is claimed: sleep till told
                self.want_work = False
                self.next_eta.at = due
        return now

    def _write(self, outcomes: list[Outcome], claim: bool, slots: int,
               written: list[int] | None = None
               ) -> tuple[list[Claimed], list[Claimed], bool, float | None]:
        """One transaction: the outcomes, then the claim. Raises _PresumedDead, without
        writing anything, when another worker has taken this one's jobs back.
        ``written``: see jobs.finish."""
        attached = {}
        if self.absorb_due:
            # Those that rang first, then the others; SQLite attaches a few files at most,
            # so with more inboxes than that the others take turns (see below).
            rung = [n for n in self.inbox_rung if n in self.inbox_names]
            attached = self.store.attach_inboxes(
                rung + [n for n in self.inbox_names if n not in rung])
        more = False
        with self.store.transaction() as tx:
            if not tx.is_registered(self.worker_id):
                raise _PresumedDead
            # The time of this transaction, read once it holds the lock: every job it
            # sees was sent before, so no claim's start precedes its job's send (a
            # rate limit's bucket, too, counts from the moment of the claim).
            now = self.clock().wall
            for name, alias in attached.items():    # producers' new jobs, into jobs
                copied, left = tx.absorb(name, alias)
                more = more or left
                if copied:
                    self.want_work = True
                    claim = slots > 0
            if self.task_states:      # before the outcomes: a finished job takes none
                tx.set_task_states(self.worker_id, list(self.task_states.values()), now)
            released = tx.finish(self.worker_id, outcomes, written) if outcomes else 0
            if released:                  # the canvas made jobs ready
                self.want_work = True
                claim = slots > 0
            claimed = self.flow.claim(tx, self.worker_id, self.queues, slots, now) \
                if claim else []
            revoked = [c for c in claimed if c.revoke or (c.expires and c.expires < now)]
            if revoked:
                tx.finish(self.worker_id, [
                    revoked_outcome(c.seq, c.serializer, "revoked" if c.revoke else "expired",
                                    now)
                    for c in revoked])
                claimed = [c for c in claimed if c not in revoked]
            drained = claim and len(claimed) + len(revoked) < slots
            due = tx.next_due(self.queues) if drained else None
        # More released than this worker took: ring the others (after the commit), or
        # they would find those jobs only at their fallback check.
        self.peers_have_work = bool(released) and not drained
        self.absorb_due = more
        if attached:
            self.inbox_rung.clear()
            if len(self.inbox_names) > len(attached):   # the next write: the next ones
                self.inbox_names = [n for n in self.inbox_names if n not in attached] \
                    + [n for n in self.inbox_names if n in attached]
        if more:
            self.want_work = True
        return claimed, revoked, drained, due

    def _write_failed(self, exc: Exception, now: Now) -> None:
        """A transaction of outcomes (and claims) failed and was rolled back: the next
        comes after a growing pause. A passing fault (the write lock held elsewhere, a
        full disk, an I/O error) just waits for it. Otherwise one outcome is likely at
        fault (a value SQLite refuses): the outcomes are written one at a time now, and
        one that still fails is written as a FAILURE that says why."""
        self.write_failures += 1
        pause = min(WRITE_BACKOFF_MAX, 0.05 * 2 ** min(self.write_failures, 10))
        self.write_again_at = now.mono + pause
        (log.warning if self.write_failures == 1 else log.debug)(
            "cannot write to the database (%s); %d outcome(s) kept, trying again in %.0f ms",
            exc, len(self.outcomes), pause * 1000)
        if not _transient(exc):
            self._write_one_by_one()

    def _write_one_by_one(self) -> None:
        try:
            while self.outcomes:
                outcome = self.outcomes[0]
                error = self._refused(outcome)
                if error is not None:
                    log.error("the outcome of job %d cannot be stored (%s): it is recorded "
                              "as a failure instead", outcome.seq, error)
                    again = self._refused(_unstorable(outcome, error))
                    if again is not None:
                        log.error("job %d: even its failure cannot be stored (%s); it stays "
                                  "STARTED until this worker is gone", outcome.seq, again)
                        self.stranded += 1
                self.outcomes.pop(0)
                self.final_outcomes = True
        except _Passing as fault:
            self._write_failed(fault.error, self.clock())

    def _refused(self, outcome: Outcome) -> Exception | None:
        """Write one outcome alone: None once written, the error if SQLite refuses it.
        Raises _Passing on a passing fault (the outcome is kept)."""
        try:
            self.store.finish(self.worker_id, [outcome])
        except Exception as exc:  # noqa: BLE001 - any value SQLite cannot take
            if _transient(exc):
                raise _Passing(exc) from exc
            return exc
        return None

    def _room(self, child: Child) -> int:
        """How many more jobs this child should be handed now."""
        if not child.takes_work:
            return 0
        room = child.prefetch() - len(child.inflight)
        if self.max_tasks:
            room = min(room, self.max_tasks - child.handed)
        return max(0, room)

    # -------------------------------------------------------------- dispatch

    def _dispatch(self, now: Now) -> None:
        # A child found dead while handing out work gives its jobs back at once, and
        # its successor (started meanwhile) is handed them in the next pass.
        for _ in range(self.concurrency + 1):
            if not self.ready or not self._dispatch_once(now):
                return

    def _dispatch_once(self, now: Now) -> bool:
        """Hand ready jobs to children with room, idle ones first; True if a child was
        found dead. Idle first: a job sent by a running task that waits for it
        (``allow_join_result``) goes to a free child, not behind its sender in a busy
        one's queue, where it would wait for ever (Celery's ``-O fair``)."""
        lost_child = False
        mono = now.mono
        ready = self.ready
        for child in sorted(self.children.values(), key=_has_inflight):
            if not ready:
                break
            room = min(self._room(child), len(ready))
            if room <= 0:
                continue
            # Never block the loop on a full channel: a busy child is handed at most
            # MAX_QUEUED_BYTES of arguments; an idle one (reading) takes any size.
            budget = MAX_QUEUED_BYTES - child.queued_bytes
            limits = self.limits.get
            items: list[Inflight] = []
            for _ in range(room):
                job = ready[0]
                item = Inflight(job, limits(job.task, job.options)[2], mono)
                if item.size > budget and (items or child.inflight):
                    break
                budget -= item.size
                items.append(item)
                ready.popleft()
            if not items:
                continue
            child.hand(items)
            try:
                protocol.send(child.conn, protocol.jobs_message(item.job for item in items))
            except OSError:          # it died: what it was handed goes to the others
                self._child_exited(child, now)
                lost_child = True
                continue
            child.handed += len(items)
            if self.max_tasks and child.handed >= self.max_tasks and child.retire():
                self._keep_pool_whole()    # it leaves after these: start its successor now
        return lost_child

    # -------------------------------------------------------------- stopping

    def _shutdown(self, cold: bool) -> None:
        first = not self.stopping
        self.stopping = True
        if first:
            self.outcomes.extend(records.put_back(j.seq) for j in self.ready)
            self.ready.clear()
        if cold:
            self.cold = True
            self.exit_code = 1
            for child in self.children.values():
                child.kill("shutdown")
        elif first:
            for child in self.children.values():
                try:
                    protocol.send(child.conn, protocol.STOP)
                except OSError:
                    pass

    def close(self) -> None:
        """Stop what is left, write back every job still held, unregister, close."""
        no_inbox_here(False)
        signals.worker_shutdown.send(self)
        for child in list(self.children.values()):
            child.escalate()
            child.reap()
            child.close()
            self.outcomes.extend(records.put_back(i.job.seq) for i in child.inflight)
        self.children.clear()
        self.outcomes.extend(records.put_back(j.seq) for j in self.ready)
        self.store.patience = BUSY_TIMEOUT_MS / 1000
        try:
            try:
                self.store.finish(self.worker_id, self.outcomes)
                self.outcomes = []
            except Exception:  # noqa: BLE001 - a bad outcome must not strand the others
                self._write_one_by_one()
            if self.outcomes or self.stranded:
                # Its row stays: the jobs it still owns are recovered by the next worker
                # that finds this process gone.
                log.error("%d job(s) could not be written back; they stay STARTED under "
                          "worker %d until another worker recovers them",
                          len(self.outcomes) + self.stranded, self.worker_id)
            else:
                safely(self.upkeep.heartbeat, self.worker_id, time.time(), self.tally,
                       ())  # last counts
                self.store.unregister_worker(self.worker_id)
        finally:
            self.waiters.ring()
            self.peers.ring()      # what it put back or released: the others take it now
            if self.checkpointer is not None:
                self.checkpointer.stop()
            self.bell.close()
            self.waiters.close()
            self.peers.close()
            if self.beat is not None:
                self.beat.close()
            self.store.close()
            self.selector.close()
            if self._signal_pipe is not None:
                signal.set_wakeup_fd(-1)
                for fd in self._signal_pipe:
                    os.close(fd)
                self._signal_pipe = None
            log.info("localq worker stopped (pid %d)", os.getpid())
