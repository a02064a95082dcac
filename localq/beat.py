"""Periodic tasks (Celery's beat): the entries of ``beat_schedule``, and the scheduler that
sends each due run once, however many schedulers run on the file.

This module owns *when an entry is sent*: the entries as checked at start
(``entries_of``), each entry's last due time in the file, the catch-up rule, the
zone crontabs are evaluated in (``zone_of``), the standalone loop (``python -m localq
beat``) and ``beat --list``. What a schedule means is ``schedules.py``'s; the SQL is
``store/beat.py``'s. The supervisor runs a ``Scheduler`` as one more deadline of its loop
(``worker -B``, ``app.worker(beat=True)``).

The scheduler is a component with an injected clock: ``start(now)`` syncs the entries
with the file, ``next_due()`` is the earliest due time (wall clock, from memory: no
query), ``run_due(now)`` sends what is due at ``now``. It costs nothing between due times.

Once per due time: the file holds each entry's ``last_due``; a scheduler sends a run
only in the transaction that moves ``last_due`` from the value it knows to the run's due
time (compare-and-set), and one that finds it moved re-reads it and sends nothing. A
new entry is anchored at the moment it is first seen (its first run is one period
later, as in Celery); a removed entry is forgotten (a scheduler still running with it
puts it back where it stood); a changed schedule applies from the
stored last due time at the next start. After downtime that missed several due times,
the entry runs once and then keeps its schedule (an interval keeps its phase).
"""
from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from typing import TYPE_CHECKING, Any, Mapping

from .exceptions import ConfigurationError
from .schedules import BaseSchedule, as_schedule, schedule
from .task import check_call
from .wakeup import Ringer, wake_folder

if TYPE_CHECKING:
    from .config import Settings
    from .store import Store
    from .task import Task
    from .worker.options import WorkerApp

log = logging.getLogger("localq.beat")

ENTRY_KEYS = frozenset({"task", "schedule", "args", "kwargs", "options", "relative"})
# apply_async's options that make sense for a run sent again and again.
SEND_OPTIONS = frozenset({"queue", "priority", "expires", "countdown", "time_limit",
                          "soft_time_limit", "serializer"})
CATCH_UP_WALK = 10_000     # due times counted one by one after downtime, at most
RETRY_AFTER = 1.0          # seconds before a run whose transaction failed is tried again


def zone_of(conf: Settings) -> tzinfo:
    """The zone crontabs run in: ``timezone`` if set, else UTC (``enable_utc``, the
    default) or the host's local zone (``enable_utc=False``), as in Celery."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
    if conf.timezone:
        try:
            return ZoneInfo(str(conf.timezone))
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigurationError(
                f"timezone {conf.timezone!r} cannot be loaded: this host has no time zone "
                f"database (install the tzdata package) or no such zone") from None
    if conf.enable_utc:
        return timezone.utc
    name = os.environ.get("TZ", "").lstrip(":")
    try:
        if name:
            return ZoneInfo(name)
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return datetime.now().astimezone().tzinfo or timezone.utc


@dataclass
class ScheduleEntry:
    """One entry of ``beat_schedule`` as checked at start, and where it stands."""
    name: str
    task: Task
    schedule: BaseSchedule
    args: tuple
    kwargs: dict
    options: dict[str, Any]
    last_due: float = 0.0              # wall-clock seconds; from the file
    last_run: float | None = None      # when the last run was sent, if ever
    due: float = 0.0                   # the next due time after last_due
    retry_at: float = 0.0              # after a failed transaction, not before this
    zone: tzinfo = field(default=timezone.utc)

    def next_after(self, moment: float) -> float:
        """The first due time strictly after ``moment``, in the scheduler's zone."""
        if isinstance(self.schedule, schedule):
            return moment + self.schedule.seconds
        after = datetime.fromtimestamp(moment, self.zone)
        return self.schedule.next_run(after).timestamp()

    def anchor(self, last_due: float, last_run: float | None) -> None:
        self.last_due, self.last_run = last_due, last_run
        self.due = self.next_after(last_due)

    def catch_up(self, now: float) -> tuple[float, int | None]:
        """The due time to record for a run sent at ``now``, and how many due times it
        stands for (None: more than CATCH_UP_WALK). Several missed ones run once; an
        interval keeps its phase, a crontab its own grid."""
        if isinstance(self.schedule, schedule):
            missed = math.floor((now - self.due) / self.schedule.seconds)
            return self.due + missed * self.schedule.seconds, missed + 1
        latest, count = self.due, 1
        following = self.next_after(latest)
        while following <= now:
            if count >= CATCH_UP_WALK:
                return now, None
            latest, count = following, count + 1
            following = self.next_after(latest)
        return latest, count

    def describe(self) -> str:
        return f"{self.name!r} ({self.task.name})"


def entries_of(app: WorkerApp, now: float | None = None) -> list[ScheduleEntry]:
    """``app.conf.beat_schedule`` checked: each entry's keys, schedule, arguments, options
    and task (registered in this process). A problem is one ConfigurationError naming the
    entry; an option that means nothing here is logged once and dropped."""
    finalize = getattr(app, "finalize", None)
    if finalize is not None:    # Celery's on_after_configure handlers add entries there
        finalize()
    zone = zone_of(app.conf)
    now = time.time() if now is None else now
    found = []
    for name, spec in (app.conf.beat_schedule or {}).items():
        where = f"beat_schedule entry {name!r}"
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"beat_schedule: entry names must be non-empty strings, "
                                     f"not {name!r}")
        if not isinstance(spec, Mapping) or "task" not in spec or "schedule" not in spec:
            raise ConfigurationError(f"{where} must be a dict with 'task' and 'schedule', "
                                     f"e.g. {{'task': 'tasks.report', 'schedule': 3600}}")
        unknown = set(spec) - ENTRY_KEYS
        if unknown:
            raise ConfigurationError(f"{where} has unknown key(s) {', '.join(sorted(unknown))}"
                                     f": an entry takes {', '.join(sorted(ENTRY_KEYS))}")
        if spec.get("relative"):
            log.warning("%s: localq ignores relative=True (Celery's rounding of an interval "
                        "to its unit): due times are the last one plus the interval", where)
        task = app.tasks.get(spec["task"])
        if task is None:
            import difflib
            close = difflib.get_close_matches(str(spec["task"]), list(app.tasks), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigurationError(
                f"{where} names the task {spec['task']!r}, which is not registered in this "
                f"app{hint}: import the module that defines it (the imports or include "
                f"setting) or fix the name")
        try:
            sched = as_schedule(spec["schedule"])
            args, kwargs = check_call(task.name, spec.get("args"), spec.get("kwargs"))
            task.check_arguments(args, kwargs)
            options = dict(spec.get("options") or {})
            if "task_id" in options:
                raise ConfigurationError("options may not fix a task_id: every run is a "
                                         "new job with its own id")
            for option in sorted(set(options) - SEND_OPTIONS):
                log.warning("%s: localq ignores the option %r (it sends with %s)", where,
                            option, ", ".join(sorted(SEND_OPTIONS)))
                del options[option]
            task.app.new_job(task, args, kwargs, now=now, **options)    # every check
        except (ConfigurationError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
        found.append(ScheduleEntry(name, task, sched, args, kwargs, options, zone=zone))
    return found


class Scheduler:
    """Sends the due runs of the app's entries through ``store`` (see the module
    docstring); with ``wake_workers``, rings the workers' doorbells after a send."""

    def __init__(self, app: WorkerApp, store: Store, *, wake_workers: bool = True) -> None:
        self.app = app
        self.store = store
        self.entries = entries_of(app)
        self.ringer = Ringer(wake_folder(app.path), "w") if wake_workers else None

    def close(self) -> None:
        if self.ringer is not None:
            self.ringer.close()

    def start(self, now: float) -> None:
        """Sync the file's entries with the app's, and learn where each stands."""
        stored = self.store.sync_beat_entries([e.name for e in self.entries], now)
        for entry in self.entries:
            entry.anchor(*stored[entry.name])
            log.info("beat: %s %s, next run %s", entry.describe(), entry.schedule,
                     when(entry.due, entry.zone))

    def next_due(self) -> float | None:
        """The earliest moment (wall clock) at which ``run_due`` has something to do."""
        return min((max(e.due, e.retry_at) for e in self.entries), default=None)

    def run_due(self, now: float) -> int:
        """Send every run due at ``now``; returns how many this scheduler sent. Never
        raises: a run that cannot be recorded now is tried again RETRY_AFTER later."""
        sent = 0
        for entry in self.entries:
            if entry.due <= now and entry.retry_at <= now:
                try:
                    sent += self._send(entry, now)
                except Exception as exc:  # noqa: BLE001 - the file may fail; the loop goes on
                    log.warning("beat: cannot record the run of %s due %s (%s); trying "
                                "again in %.0fs", entry.describe(), when(entry.due, entry.zone),
                                exc, RETRY_AFTER)
                    entry.retry_at = now + RETRY_AFTER
        if sent and self.ringer is not None:
            self.ringer.ring()
        return sent

    def _send(self, entry: ScheduleEntry, now: float) -> bool:
        due, count = entry.catch_up(now)
        try:
            job = entry.task.app.new_job(entry.task, entry.args, entry.kwargs, now=now,
                                         **entry.options)
        except Exception:  # noqa: BLE001 - checked at start; never stop the loop
            log.exception("beat: cannot send %s; skipping its run due %s", entry.describe(),
                          when(entry.due, entry.zone))
            entry.due = entry.next_after(due)
            return False
        for _ in range(2):     # a second time after putting a forgotten entry back
            with self.store.transaction() as tx:
                won = tx.advance_beat_entry(entry.name, entry.last_due, due, now)
                if won:
                    while not tx.enqueue(job):     # two producers drew the same row number
                        job = entry.task.app.new_job(entry.task, entry.args, entry.kwargs,
                                                     now=now, **entry.options)
            if won:
                break
            stored = self.store.beat_entries()
            if entry.name in stored:     # another scheduler sent it: go on from there
                entry.anchor(*stored[entry.name])
                return False
            # Forgotten by a scheduler started with a schedule without it (another app on
            # the file, or a newer deploy of this one): this one still has it, so it puts
            # it back where it stood and sends the run, rather than skip it.
            self.store.restore_beat_entry(entry.name, entry.last_due, entry.last_run)
        if not won:
            return False
        if count != 1:
            log.warning("beat: %s missed %s due times from %s to %s while no scheduler "
                        "ran: sent once now, then on schedule", entry.describe(),
                        count or f"more than {CATCH_UP_WALK}", when(entry.due, entry.zone),
                        when(due, entry.zone))
        log.info("Scheduler: Sending due task %s (%s) due %s: job %s", entry.name,
                 entry.task.name, when(due, entry.zone), job.id)
        entry.anchor(due, now)
        return True


def when(moment: float | None, zone: tzinfo) -> str:
    """A wall-clock moment as an ISO time in ``zone`` (microseconds: logs are compared)."""
    if moment is None:
        return "never"
    return datetime.fromtimestamp(moment, zone).isoformat(" ")


# ------------------------------------------------------------------ the commands


def listing(app: WorkerApp, store: Store | None, now: float) -> list[dict[str, Any]]:
    """Each entry with its schedule, last run and next run (``beat --list``). Reads the
    file (``store``; None: there is none yet) and changes nothing."""
    stored = store.beat_entries() if store is not None else {}
    rows = []
    for entry in entries_of(app, now):
        entry.anchor(*stored.get(entry.name, (now, None)))
        rows.append({"name": entry.name, "task": entry.task.name,
                     "schedule": str(entry.schedule), "last_run": entry.last_run,
                     "next_run": entry.due, "zone": str(entry.zone)})
    return rows


def render_listing(rows: list[dict[str, Any]], zone: tzinfo) -> str:
    if not rows:
        return "no periodic tasks: beat_schedule is empty"
    lines = []
    for row in rows:
        lines.append(f"{row['name']}: {row['task']} {row['schedule']}\n"
                     f"    last run: {when(row['last_run'], zone)}\n"
                     f"    next run: {when(row['next_run'], zone)}")
    return "\n".join(lines)


def serve(app: WorkerApp, store: Store) -> int:
    """``python -m localq beat``: run the scheduler alone until SIGTERM or SIGINT,
    asleep until the next due time."""
    scheduler = Scheduler(app, store)
    print(f"localq beat (pid {os.getpid()}): app={app.main_name} database={app.path} "
          f"entries={len(scheduler.entries)} zone={zone_of(app.conf)}", file=sys.stderr,
          flush=True)
    scheduler.start(time.time())
    stops = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        while True:
            due = scheduler.next_due()
            timeout = None if due is None else max(0.0, due - time.time())
            got = (signal.sigwaitinfo(stops) if timeout is None
                   else signal.sigtimedwait(stops, timeout))
            if got is not None:
                log.info("beat: stopping (signal %d)", got.si_signo)
                return 0
            scheduler.run_due(time.time())
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
        scheduler.close()
