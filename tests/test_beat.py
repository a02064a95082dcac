"""Periodic tasks (localq/beat.py): beat_schedule and add_periodic_task, the scheduler on an
injected clock (once per due time, catch-up, changed and removed entries, time zones), and
real processes: three workers with -B on one file, `beat` alone, `beat --list`,
app.worker(beat=True)."""
from __future__ import annotations

import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from conftest import ROOT, wait_for

from localq import ConfigurationError, Localq, crontab, schedule
from localq.beat import RETRY_AFTER, Scheduler
from localq.store import Store

UTC = timezone.utc
T0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC).timestamp()


@pytest.fixture
def beat_app(db_path):
    app = Localq(db_path)

    @app.task(name="test_beat.tick")
    def tick(n=0):
        return n

    @app.task(name="test_beat.report")
    def report(kind, lang="en"):
        return kind

    yield app
    app.close()


def jobs_of(app, task_name):
    return sum(n for _, task, _, n in app.store.counts() if task == task_name)


def scheduler(app, now=T0):
    s = Scheduler(app, Store(app.path), wake_workers=False)
    s.start(now)
    return s


# ------------------------------------------------------------------ entries

def test_entries_from_beat_schedule_and_add_periodic_task(beat_app):
    app = beat_app
    app.conf.beat_schedule = {"every ten": {"task": "test_beat.tick", "schedule": 10,
                                            "args": (1,), "options": {"queue": "beats",
                                                                      "priority": 5}}}
    assert app.add_periodic_task(30.0, app.tasks["test_beat.report"], args=("daily",),
                                 name="daily") == "daily"
    # No name: Celery's repr of the call. A signature-like object and a Celery-shaped dict.

    class Sig:
        name, args, kwargs, options = "test_beat.report", ("weekly",), {"lang": "de"}, \
            {"queue": "reports"}
    assert app.add_periodic_task(timedelta(hours=1), Sig(), expires=60) == \
        "test_beat.report('weekly', lang='de')"
    assert app.add_periodic_task(crontab(minute=1), {"task": "test_beat.report",
                                                     "kwargs": {"lang": "fr"}},
                                 args=("monthly",)) == "test_beat.report('monthly', lang='fr')"
    entries = app.conf.beat_schedule
    assert set(entries) == {"every ten", "daily", "test_beat.report('weekly', lang='de')",
                            "test_beat.report('monthly', lang='fr')"}
    assert entries["test_beat.report('weekly', lang='de')"]["options"] == \
        {"queue": "reports", "expires": 60}
    assert entries["daily"]["schedule"] == schedule(30)
    s = scheduler(app)
    assert {e.name: e.due - T0 for e in s.entries} == {
        "every ten": 10, "daily": 30, "test_beat.report('weekly', lang='de')": 3600,
        "test_beat.report('monthly', lang='fr')": 60}
    assert s.next_due() == T0 + 10
    assert s.run_due(T0 + 9.999) == 0
    assert s.run_due(T0 + 10) == 1
    row = app.store.recent(["PENDING"], 5)[0]
    assert (row["task"], row["queue"], row["priority"]) == ("test_beat.tick", "beats", 5)
    assert s.next_due() == T0 + 20


@pytest.mark.parametrize("entry, says", [
    ({"task": "test_beat.tock", "schedule": 10}, "names the task 'test_beat.tock', which is not "
                                                 "registered in this app (did you mean "
                                                 "'test_beat.tick'?)"),
    ({"task": "test_beat.report", "schedule": 10}, "called with the wrong arguments"),
    ({"task": "test_beat.tick", "schedule": 10, "args": 5}, "args must be a list or tuple"),
    ({"task": "test_beat.tick", "schedule": 10, "every": 5}, "unknown key(s) every"),
    ({"task": "test_beat.tick", "schedule": 10, "options": {"priority": "high"}}, "priority"),
    ({"task": "test_beat.tick", "schedule": 10, "options": {"task_id": "x"}}, "task_id"),
])
def test_a_bad_entry_is_an_error_at_start_naming_the_entry(beat_app, entry, says):
    beat_app.conf.beat_schedule = {"nightly": entry}
    with pytest.raises(ConfigurationError) as caught:
        Scheduler(beat_app, Store(beat_app.path), wake_workers=False)
    assert "beat_schedule entry 'nightly'" in str(caught.value)
    assert says in str(caught.value)
    with pytest.raises(ConfigurationError, match="entry 'nightly'"):   # before any fork
        beat_app.worker(beat=True, concurrency=1).start()


# ------------------------------------------------------------------ once per due time

def test_schedulers_on_one_file_send_each_due_run_once(beat_app):
    beat_app.conf.beat_schedule = {"tick": {"task": "test_beat.tick", "schedule": 10}}
    first, second, third = scheduler(beat_app), scheduler(beat_app, T0 + 3), \
        scheduler(beat_app, T0 + 7)
    assert {s.next_due() for s in (first, second, third)} == {T0 + 10}   # anchored once
    for due in (T0 + 10, T0 + 20, T0 + 30):
        sent = [s.run_due(due + 0.001) for s in (third, first, second)]
        assert sum(sent) == 1
        assert {s.next_due() for s in (first, second, third)} == {due + 10}
    assert jobs_of(beat_app, "test_beat.tick") == 3
    assert beat_app.store.beat_entries()["tick"] == (T0 + 30, T0 + 30.001)


def test_after_downtime_a_missed_entry_runs_once_then_keeps_its_schedule(beat_app, caplog):
    beat_app.conf.beat_schedule = {
        "tick": {"task": "test_beat.tick", "schedule": 10},
        "hourly": {"task": "test_beat.tick", "schedule": crontab(minute=0)}}
    before = scheduler(beat_app)
    assert before.run_due(T0 + 10) == 1
    caplog.set_level(logging.INFO, "localq.beat")
    # Down from T0 + 10 until T0 + 5 h 3 min 25 s: a new scheduler starts.
    now = T0 + 5 * 3600 + 205
    after = scheduler(beat_app, now)
    assert after.next_due() == T0 + 20                      # overdue
    assert after.run_due(now) == 2                          # each entry once
    assert after.run_due(now + 1) == 0
    entries = {e.name: e for e in after.entries}
    assert entries["tick"].due == T0 + 5 * 3600 + 210       # its phase: T0 + 10 k
    assert entries["hourly"].due == T0 + 6 * 3600           # its grid: on the hour
    missed = [r.getMessage() for r in caplog.records if "missed" in r.getMessage()]
    assert len(missed) == 2
    assert "'tick' (test_beat.tick) missed 1819 due times from 2024-01-01 12:00:20" in missed[0]
    assert "'hourly' (test_beat.tick) missed 5 due times from 2024-01-01 13:00:00" in missed[1]
    assert jobs_of(beat_app, "test_beat.tick") == 3


def test_a_changed_schedule_applies_at_the_next_start_and_removed_entries_are_forgotten(
        beat_app):
    beat_app.conf.beat_schedule = {"a": {"task": "test_beat.tick", "schedule": 100},
                                   "b": {"task": "test_beat.tick", "schedule": 100}}
    s = scheduler(beat_app)
    assert s.run_due(T0 + 100) == 2
    beat_app.conf.beat_schedule = {"a": {"task": "test_beat.tick", "schedule": 30}}
    assert s.next_due() == T0 + 200                # a running scheduler keeps what it has
    s = scheduler(beat_app, T0 + 110)
    assert s.next_due() == T0 + 130                # from the last due time, every 30 s
    assert set(beat_app.store.beat_entries()) == {"a"}
    beat_app.conf.beat_schedule = {"a": {"task": "test_beat.tick", "schedule": 30},
                                   "b": {"task": "test_beat.tick", "schedule": 100}}
    s = scheduler(beat_app, T0 + 120)
    assert {e.name: e.due for e in s.entries}["b"] == T0 + 220   # new again: from now


def test_a_scheduler_that_lost_the_race_or_its_entry_sends_nothing_and_goes_on(beat_app):
    beat_app.conf.beat_schedule = {"a": {"task": "test_beat.tick", "schedule": 10}}
    one, two = scheduler(beat_app), scheduler(beat_app)
    assert one.run_due(T0 + 10) == 1
    # Another scheduler, started with other code, forgot the entry: the ones that still
    # have it put it back where it stood (after the run sent at T0 + 10) and go on.
    beat_app.store.sync_beat_entries([], T0 + 11)
    assert two.run_due(T0 + 12) == 0
    assert two.next_due() == T0 + 20
    assert two.run_due(T0 + 20) == 1 and one.run_due(T0 + 20) == 0
    assert jobs_of(beat_app, "test_beat.tick") == 2


def test_apps_sharing_a_file_forget_each_others_entries_yet_lose_no_run(beat_app, db_path):
    other = Localq(db_path, main="reports")

    @other.task(name="reports.build")
    def build():
        return 1

    beat_app.conf.beat_schedule = {"a": {"task": "test_beat.tick", "schedule": 10}}
    other.conf.beat_schedule = {"nightly": {"task": "reports.build", "schedule": 10}}
    mine = scheduler(beat_app)
    theirs = scheduler(other, T0 + 1)                # forgets "a": not in its schedule
    assert mine.run_due(T0 + 10) == 1                # puts it back, sends its run
    mine = scheduler(beat_app, T0 + 10.5)            # a restart forgets "nightly"
    assert theirs.run_due(T0 + 11) == 1
    for t in (20, 30):
        assert mine.run_due(T0 + t) == 1 and theirs.run_due(T0 + t + 1) == 1
    assert jobs_of(beat_app, "test_beat.tick") == 3 and jobs_of(other, "reports.build") == 3
    other.close()


# ------------------------------------------------------------------ time zones

@pytest.mark.parametrize("zone, expected", [
    (None, datetime(2024, 3, 9, 9, 0, tzinfo=UTC)),
    ("America/New_York", datetime(2024, 3, 9, 14, 0, tzinfo=UTC)),   # EST
    ("Europe/Berlin", datetime(2024, 3, 9, 8, 0, tzinfo=UTC)),       # CET
])
def test_crontabs_run_on_the_wall_clock_of_the_timezone_setting(beat_app, zone, expected):
    beat_app.conf.timezone = zone
    beat_app.conf.beat_schedule = {"nine": {"task": "test_beat.tick",
                                            "schedule": crontab(minute=0, hour=9)}}
    s = scheduler(beat_app, datetime(2024, 3, 9, 1, 0, tzinfo=UTC).timestamp())
    assert s.next_due() == expected.timestamp()
    assert beat_app.now().tzinfo == (ZoneInfo(zone) if zone else UTC)


def test_dst_a_skipped_wall_time_does_not_run_and_a_repeated_one_runs_once(beat_app):
    beat_app.conf.timezone = "America/New_York"
    beat_app.conf.beat_schedule = {"half past two": {
        "task": "test_beat.tick", "schedule": crontab(minute=30, hour=2)},
        "half past one": {"task": "test_beat.tick", "schedule": crontab(minute=30, hour=1)}}
    ny = ZoneInfo("America/New_York")
    spring = datetime(2024, 3, 10, 0, 0, tzinfo=ny).timestamp()    # 02:xx does not exist
    s = scheduler(beat_app, spring)
    due = {e.name: datetime.fromtimestamp(e.due, ny) for e in s.entries}
    assert due["half past two"].date().day == 11                      # not on the 10th
    fall = datetime(2024, 11, 3, 0, 0, tzinfo=ny).timestamp()      # 01:xx happens twice
    beat_app.conf.beat_schedule = {"in the fall": beat_app.conf.beat_schedule[
        "half past one"]}
    s = scheduler(beat_app, fall)
    runs = []
    now = fall
    while now < fall + 26 * 3600:
        now = s.next_due()
        if s.run_due(now):
            runs.append(datetime.fromtimestamp(now, ny))
    assert [(r.day, r.hour, r.minute, r.fold) for r in runs] == [(3, 1, 30, 0), (4, 1, 30, 0)]


def test_enable_utc_false_without_timezone_is_the_hosts_zone(beat_app):
    beat_app.conf.enable_utc = False
    os.environ["TZ"], old = "Asia/Tokyo", os.environ.get("TZ")
    try:
        assert beat_app.timezone == ZoneInfo("Asia/Tokyo")
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old


# ------------------------------------------------------------------ real processes

PROJECT = """
    from localq import Localq, crontab

    app = Localq()

    @app.task
    def tick(n=0):
        return n

    app.conf.beat_schedule = {{"tick": {{"task": "beatproj.tick", "schedule": {every},
                                        "args": (1,)}}}}
    app.add_periodic_task(crontab(minute=1, hour="*"), tick, args=(2,), name="hourly")
"""


@pytest.fixture
def project(tmp_path, db_path):
    def write(every=0.25, extra=""):
        (tmp_path / "beatproj.py").write_text(textwrap.dedent(PROJECT.format(every=every))
                                              + textwrap.dedent(extra))
        return dict(os.environ, LOCALQ_DB=db_path,
                    PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    return write


class Proc:
    def __init__(self, env, tmp_path, *args):
        self.log = tmp_path / f"proc-{len(list(tmp_path.glob('proc-*')))}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "localq", *args,
                                          "--app", "beatproj:app"], env=env, cwd=tmp_path,
                                         stderr=log, stdout=subprocess.DEVNULL,
                                         start_new_session=True)

    def text(self):
        return self.log.read_text()

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(60)

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def procs():
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


SENT = re.compile(r"Sending due task (\S+) \((\S+)\) due (\S+ \S+): job (\S+)")


def test_three_workers_with_beat_on_one_file_send_each_due_run_once(project, procs, tmp_path,
                                                                     db_path):
    env = project(every=0.25)
    for _ in range(3):
        procs.append(Proc(env, tmp_path, "worker", "-B", "-c", "1", "-l", "info"))
    app = Localq(db_path)
    try:
        wait_for(lambda: jobs_of(app, "beatproj.tick") >= 6, timeout=60,
                 what="six runs of the 0.25 s entry")
        procs[0].kill()                               # kill -9: the others go on
        wait_for(lambda: jobs_of(app, "beatproj.tick") >= 14, timeout=60,
                 what="eight more runs")
        assert [p.stop() for p in procs[1:]] == [0, 0]
        sent = [m.groups() for p in procs for m in SENT.finditer(p.text())]
        dues = [datetime.fromisoformat(due).timestamp() for name, _, due, _ in sent
                if name == "tick"]
        assert len(dues) == len(set(dues)), "a due time was sent twice"
        # Each send is logged after its commit: the killed worker may have died between.
        assert 0 <= jobs_of(app, "beatproj.tick") - len(dues) <= 1
        # Every due time is on the entry's grid: first seen + k * 0.25 s.
        steps = [(b - a) / 0.25 for a, b in zip(sorted(dues), sorted(dues)[1:])]
        assert all(abs(s - round(s)) < 1e-6 and round(s) >= 1 for s in steps), steps
        # A job the killed worker had claimed is put back by a worker that starts (the
        # two stopped ones may have stopped before they saw it dead).
        procs.append(Proc(env, tmp_path, "worker", "-c", "1"))
        assert all(app.AsyncResult(job).get(timeout=60) == 1 for name, _, _, job in sent
                   if name == "tick"), "every run was run by a worker"
        procs[-1].stop()       # (it may still be starting: no exit status to check)
        assert "hourly" in app.store.beat_entries()
    finally:
        app.close()


def test_beat_alone_and_beat_list(project, procs, tmp_path, db_path):
    env = project(every=0.2)
    listed = subprocess.run([sys.executable, "-m", "localq", "beat", "--app", "beatproj:app",
                             "--list"], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "tick: beatproj.tick <freq: 0.20 seconds>" in listed.stdout
    assert "hourly: beatproj.tick <crontab: 1 * * * * (m/h/dM/MY/d)>" in listed.stdout
    assert listed.stdout.count("last run: never") == 2
    assert not os.path.exists(db_path)             # --list changes nothing
    beat = Proc(env, tmp_path, "beat")
    procs.append(beat)
    app = Localq(db_path)
    try:
        wait_for(lambda: os.path.exists(db_path) and jobs_of(app, "beatproj.tick") >= 2,
                 timeout=60, what="two runs sent by beat alone")
        assert beat.stop() == 0
        assert "Sending due task tick (beatproj.tick)" in beat.text()
        listed = subprocess.run([sys.executable, "-m", "localq", "beat", "--app",
                                 "beatproj:app", "--list"], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=60)
        tick = listed.stdout.split("hourly:")[0]
        assert "last run: never" not in tick and re.search(r"last run: 20\d\d-", tick)
        assert re.search(r"next run: 20\d\d-", tick)
    finally:
        app.close()


def test_an_unregistered_task_stops_the_worker_at_start_naming_the_entry(project, tmp_path,
                                                                          db_path):
    env = project(extra="""
        app.conf.beat_schedule["typo"] = {"task": "beatproj.tock", "schedule": 1}
    """)
    for command in (["worker", "-B"], ["beat"], ["beat", "--list"]):
        proc = subprocess.run([sys.executable, "-m", "localq", *command, "--app",
                               "beatproj:app"], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "beat_schedule entry 'typo' names the task 'beatproj.tock', which is not " \
               "registered" in proc.stderr.strip().splitlines()[-1]


def test_an_embedded_worker_with_beat_sends_the_runs(beat_app):
    beat_app.add_periodic_task(0.1, beat_app.tasks["test_beat.tick"], args=(7,), name="fast")
    with beat_app.worker(beat=True, concurrency=1):
        wait_for(lambda: jobs_of(beat_app, "test_beat.tick") >= 2, what="two runs")
    assert beat_app.store.beat_entries()["fast"][1] is not None


def test_a_run_whose_write_fails_is_tried_again_and_sent_once(beat_app, caplog):
    beat_app.conf.beat_schedule = {"tick": {"task": "test_beat.tick", "schedule": 10}}
    s = scheduler(beat_app)
    s.store.patience = 0.05
    blocker = sqlite3.connect(beat_app.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")            # another process holds the write lock
    try:
        with caplog.at_level(logging.WARNING, "localq.beat"):
            assert s.run_due(T0 + 10) == 0
        assert "cannot record the run of 'tick' (test_beat.tick)" in caplog.text
        assert s.next_due() == T0 + 10 + RETRY_AFTER    # not a busy loop meanwhile
        assert s.run_due(T0 + 10.5) == 0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert s.run_due(T0 + 11) == 1
    assert s.next_due() == T0 + 20
    assert jobs_of(beat_app, "test_beat.tick") == 1


def test_a_database_from_before_beat_gets_the_beat_table(beat_app):
    beat_app.store.beat_entries()
    beat_app.close()
    con = sqlite3.connect(beat_app.path)          # make it what localq wrote before beat
    con.execute("DROP TABLE beat_entries")
    from test_dashboard import strip_monitoring  # and of every later version
    strip_monitoring(con)
    con.execute("UPDATE localq_meta SET value = '3' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    beat_app.conf.beat_schedule = {"tick": {"task": "test_beat.tick", "schedule": 10}}
    assert scheduler(beat_app).run_due(T0 + 10) == 1
