"""Faults of the lock: another process holds the write lock, and the file stays sound.

A worker waits out a write lock held elsewhere at every step of its life (starting,
claiming, writing outcomes, heartbeat and its report, result expiry, beat, the
checkpoint thread) and carries on. And nothing localq does to a file while it opens
it (the checks before SQLite may write) drops a lock another connection of the same
process holds: POSIX locks belong to the process, and closing any descriptor of the
file releases them all.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from conftest import wait_for

from localq.store import Store
from localq.store.schema import open_database

# Holds the write lock for HOLD seconds, lets go for GAP, again and again, until the
# stop file appears; prints "locked" once it first holds it.
LOCKER = """
import os, sqlite3, sys, time
path, stop, hold, gap = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
conn = sqlite3.connect(path, timeout=60, isolation_level=None)
first = True
while not os.path.exists(stop):
    conn.execute("BEGIN IMMEDIATE")
    if first:
        print("locked", flush=True)
        first = False
    time.sleep(hold)
    conn.execute("COMMIT")
    time.sleep(gap)
"""


class Locker:
    """Another process that keeps taking the write lock (stopped by its pid)."""

    def __init__(self, path: str, hold: float, gap: float) -> None:
        self.stop_file = path + ".stop-locker"
        self.proc = subprocess.Popen([sys.executable, "-c", LOCKER, path, self.stop_file,
                                      str(hold), str(gap)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "locked"

    def stop(self) -> None:
        with open(self.stop_file, "w"):
            pass
        try:
            self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            os.unlink(self.stop_file)


def test_a_worker_waits_out_a_write_lock_held_elsewhere_at_each_step_and_carries_on(
        app, tmp_path):
    # Every step that writes meets the lock held for longer than a turn's half second:
    # registration (the worker starts while it is held), claims and outcomes, the
    # heartbeat and its report (every 0.1 s), result expiry (results kept 1 s), beat
    # (every 0.3 s) and the checkpoint thread. The worker must neither exit nor lose
    # or repeat a job.
    from sample_tasks import add, record
    app.conf.update(worker_heartbeat_interval=0.1, result_expires=timedelta(seconds=1),
                    beat_schedule={"tick": {"task": add.name, "schedule": 0.3,
                                            "args": (1, 2)}})
    runs = tmp_path / "runs.txt"
    early = [record.delay(str(runs), f"a{i}") for i in range(20)]
    locker = Locker(app.path, hold=0.8, gap=0.05)
    try:
        with app.worker(concurrency=2, beat=True) as worker:
            late = [record.delay(str(runs), f"b{i}") for i in range(20)]
            assert [r.get(timeout=120) for r in early + late] == \
                [f"a{i}" for i in range(20)] + [f"b{i}" for i in range(20)]
            # Past one result expiry and a few heartbeats, beats and checkpoints more.
            ticks = app.store.monitor.task_totals
            wait_for(lambda: sum(n for task, kind, n in ticks()
                                 if task == add.name and kind == "SUCCESS") >= 3,
                     timeout=60, what="three beat runs written through the lock")
            assert worker.alive, "the worker exited on a lock held elsewhere"
    finally:
        locker.stop()
    ran = [line.split()[0] for line in runs.read_text().splitlines()]
    assert sorted(ran) == sorted([f"a{i}" for i in range(20)] + [f"b{i}" for i in range(20)])
    con = sqlite3.connect(app.path)
    try:
        assert con.execute("SELECT count(*) FROM jobs WHERE state NOT IN ('SUCCESS')"
                           ).fetchone()[0] == 0
    finally:
        con.close()


# ------------------------------------------------------- the locks of one process

PROBE = """
import fcntl, os, struct, sys
def holder(path, start, length):
    # Which process holds a lock that a write lock on these bytes would meet (0: none)?
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return 0
    try:
        query = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, start, length, 0) + bytes(4)
        kind, _, _, _, pid = struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, query)[:28])
        return 0 if kind == fcntl.F_UNLCK else pid
    finally:
        os.close(fd)
path = sys.argv[1]
# SQLite's lock bytes: the shared range of the main file (a reader's lock, held for
# as long as a connection is open in WAL mode) and the -shm's "DMS" byte.
print(holder(path, 0x40000002, 510), holder(path + "-shm", 128, 1))
"""


def _lock_holders(path: str) -> list[int]:
    """From another process (whose own descriptors do not matter): the pids holding
    SQLite's reader lock on ``path`` and its -shm's in-use lock."""
    out = subprocess.run([sys.executable, "-c", PROBE, path], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return [int(x) for x in out.split()]


def test_opening_and_checking_the_file_never_drops_a_lock_this_process_holds(tmp_path):
    # POSIX locks belong to the process: if localq ever opened the file with a
    # descriptor of its own and closed it (to read its header, say), every lock the
    # process holds on it would go, those of a live connection in another thread too,
    # and another process could checkpoint and reset the WAL under that connection.
    # Every way localq opens the file runs here, in threads, while one connection
    # stays open: by other path strings (through a symlink, with a "/./"), with the
    # schema still in the WAL only (so the pre-check reads it through a read-only
    # connection), and the dashboard's way (a Store per thread, reading pages).
    path = str(tmp_path / "jobs.db")
    code = (f"import sqlite3, os, sys; sys.path[:0] = {sys.path!r}\n"
            f"from localq.store.schema import DDL, SCHEMA_VERSION\n"
            f"c = sqlite3.connect({path!r}, isolation_level=None)\n"
            f"c.execute('PRAGMA journal_mode=WAL'); c.execute('PRAGMA wal_autocheckpoint=0')\n"
            f"c.executescript('BEGIN;' + DDL + 'COMMIT;')\n"
            f"c.execute(\"INSERT INTO localq_meta VALUES ('schema_version', ?)\", "
            f"(str(SCHEMA_VERSION),))\n"
            f"os._exit(0)   # no checkpoint: the schema is in the WAL only\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    os.chmod(path, 0o600)
    alias = str(tmp_path / "alias.db")
    os.symlink(path, alias)
    holder = Store(path)
    try:
        assert holder.counts() == []                   # its connection is open
        me = os.getpid()
        assert _lock_holders(path) == [me, me]
        errors: list[BaseException] = []

        def opens(target: str) -> None:
            try:
                for _ in range(5):
                    open_database(target).close()
                    store = Store(target)
                    store.monitor.jobs_page(limit=50)
                    store.monitor.workers()
                    store.close()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=opens, args=(t,))
                   for t in (path, path, alias, str(tmp_path) + "/./jobs.db")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[0]
        assert _lock_holders(path) == [me, me], "a lock of this process's connection was dropped"
    finally:
        holder.close()
    assert _lock_holders(path) == [0, 0]


def test_a_database_file_with_a_second_hard_link_is_refused_and_left_untouched(tmp_path):
    # SQLite keeps the WAL and the lock file (-shm) beside the name a file is opened
    # by: through two hard links, two processes would each write their own WAL and
    # take their own locks, and corrupt the file. Refused before SQLite opens it.
    from localq import DatabaseError, Localq
    path = str(tmp_path / "jobs.db")
    app = Localq(path)
    try:
        app.task(lambda: 1, name="t").delay()
    finally:
        app.close()
    os.link(path, str(tmp_path / "other-name.db"))
    files = lambda: {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}  # noqa: E731
    before = files()
    for name in ("jobs.db", "other-name.db"):
        other = Localq(str(tmp_path / name))
        try:
            with pytest.raises(DatabaseError, match=r"2 names \(hard links\).*one name"):
                other.task(lambda: 1, name="t").delay()
        finally:
            other.close()
    assert files() == before
