"""Producers' inboxes (store/inbox.py): while a worker runs, delay() writes into a file of
the producer's own and supervisors copy it into the database. Real processes and real
SQLite files; faults by kill -9 and SIGSTOP."""
from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from conftest import HERE, ROOT, wait_for

from localq.ids import inbox_slot, parse_id
from localq.wakeup import Doorbell, supervisor_name, wake_folder


@pytest.fixture(autouse=True)
def always_through_the_inbox(monkeypatch):
    """Every send while a worker runs goes through the inbox here (by default the first
    send after a get() that waited goes straight into the file)."""
    monkeypatch.setattr("localq.app.DIRECT_AFTER_WAIT", False)


@contextmanager
def bell_nobody_answers(db_path: str) -> Iterator[None]:
    """A supervisor's bell that no supervisor reads: producers see a worker and use
    their inboxes, and nothing copies them (no worker runs, and none holds a lock)."""
    bell = Doorbell(wake_folder(db_path), supervisor_name())
    assert bell.bound
    try:
        yield
    finally:
        bell.close()


def inbox_files(db_path: str) -> list[str]:
    folder = os.path.realpath(db_path) + ".d"
    try:
        return sorted(n for n in os.listdir(folder) if n.startswith("inbox-")
                      and n.endswith(".db"))
    except FileNotFoundError:
        return []


def registered(db_path: str) -> list[tuple]:
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return con.execute("SELECT slot, name, pid, pos FROM inboxes "
                           "WHERE name IS NOT NULL").fetchall()
    finally:
        con.close()


def states(db_path: str) -> dict[int, str]:
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return dict(con.execute("SELECT seq, state FROM jobs"))
    finally:
        con.close()


PRODUCER = textwrap.dedent("""\
    import os, sys, time
    import localq.app
    import sample_tasks
    localq.app.DIRECT_AFTER_WAIT = False     # every send through the inbox
    ids = open(sys.argv[1], "a", buffering=1)
    n = int(sys.argv[2])
    for i in range(n):
        r = sample_tasks.add.delay(i, i)
        ids.write(r.id + "\\n")          # only once delay() has returned
    ids.write("done\\n")
    if len(sys.argv) > 3:
        time.sleep(float(sys.argv[3]))   # stay alive (a registered inbox), then exit
    """)


def start_producer(db_path: str, tmp_path: Path, ids: Path, n: int, linger: float = 0
                   ) -> subprocess.Popen:
    script = tmp_path / "producer.py"
    if not script.exists():               # not rewritten while another one starts
        script.write_text(PRODUCER)
    env = dict(os.environ, LOCALQ_DB=db_path,
               PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]))
    args = [sys.executable, str(script), str(ids), str(n)] + ([str(linger)] if linger else [])
    return subprocess.Popen(args, env=env, start_new_session=True)


def all_succeeded(db_path: str, seqs: list) -> bool:
    now = states(db_path)
    return all(now.get(s) == "SUCCESS" for s in seqs)


def sent_ids(ids: Path) -> list[str]:
    return [line for line in ids.read_text().splitlines() if line and line != "done"]


def test_delay_goes_through_an_inbox_while_a_worker_runs(app, db_path, start_worker):
    assert parse_id(app.tasks["sample_tasks.add"].delay(0, 0).id) is not None
    assert inbox_files(db_path) == []                # no worker: straight into the file
    start_worker("-c", "1").ready()
    results = [app.tasks["sample_tasks.add"].delay(i, i) for i in range(50)]
    assert [r.get(timeout=30) for r in results] == [2 * i for i in range(50)]
    assert any(inbox_slot(parse_id(r.id)) is not None for r in results)
    (name,) = inbox_files(db_path)
    folder = os.path.realpath(db_path) + ".d"
    assert stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    app.close()                                      # drained: removed, slot freed
    assert inbox_files(db_path) == [] and registered(db_path) == []


def test_a_send_after_a_get_that_waited_goes_straight_into_the_file(app, monkeypatch):
    """While a worker runs, the first send after a get() that waited goes straight into
    the file (call and wait: the worker claims it without copying an inbox); the sends
    of a loop go through the inbox."""
    monkeypatch.setattr("localq.app.DIRECT_AFTER_WAIT", True)
    add, sleep_then = app.tasks["sample_tasks.add"], app.tasks["sample_tasks.sleep_then"]
    with app.worker(concurrency=1):
        assert sleep_then.delay(0.2, "a").get(timeout=10) == "a"      # it waited
        lone = add.delay(1, 1)
        loop = [add.delay(i, i) for i in range(20)]
        assert sleep_then.delay(0.2, "b").get(timeout=10) == "b"      # it waited
        after = add.delay(2, 2)
        assert [r.get(timeout=10) for r in (lone, *loop, after)] == \
            [2, *(2 * i for i in range(20)), 4]
    assert inbox_slot(parse_id(lone.id)) is None
    assert [inbox_slot(parse_id(r.id)) is not None for r in loop] == [True] * 20
    assert inbox_slot(parse_id(after.id)) is None


def test_a_job_waiting_in_an_inbox_is_seen_revoked_and_purged(app, db_path, start_worker,
                                                              tmp_path):
    """Jobs that wait in an inbox, not copied yet, are seen by status, AsyncResult, show,
    revoke and purge."""
    add = app.tasks["sample_tasks.add"]
    with bell_nobody_answers(db_path):
        kept, revoked, also = add.delay(2, 2), add.delay(3, 3), add.delay(4, 4)
        assert inbox_slot(parse_id(kept.id)) is not None
        assert parse_id(kept.id) not in states(db_path)        # not copied yet
        assert kept.state == "PENDING"
        job = app.store.job(kept.id)
        assert job is not None and job["task"] == "sample_tasks.add" and job["id"] == kept.id
        assert app.store.states([kept.id, also.id]) == {kept.id: "PENDING",
                                                        also.id: "PENDING"}
        pending = sum(n for _q, task, st, n in app.store.counts()
                      if task == "sample_tasks.add" and st == "PENDING")
        assert pending == 3
        revoked.revoke()
        assert revoked.state == "REVOKED"
        assert app.store.job(revoked.id)["task"] == "sample_tasks.add"
        assert len(inbox_files(db_path)) == 1
    worker = start_worker("-c", "1").ready()
    assert kept.get(timeout=30) == 4 and also.get(timeout=30) == 8
    assert revoked.state == "REVOKED"
    worker.kill_all()
    # purge: jobs in an inbox are purged with the others
    with bell_nobody_answers(db_path):
        queued = [add.delay(i, i) for i in range(5)]
        assert inbox_slot(parse_id(queued[-1].id)) is not None
        assert app.control.purge() == 5
    assert all(app.store.job(r.id) is None for r in queued)
    start_worker("-c", "1").ready()
    assert add.delay(9, 9).get(timeout=30) == 18
    assert all(app.store.job(r.id) is None for r in queued)


def test_kill9_of_producers_loses_nothing_and_their_inboxes_are_drained(
        app, db_path, start_worker, tmp_path):
    """Producers killed (-9) in the middle of their delay() loop: every id delay()
    returned ends SUCCESS, and their inboxes are copied, then removed."""
    worker = start_worker("-c", "2").ready()
    everything: list[str] = []
    for round_ in range(3):
        ids = tmp_path / f"ids-{round_}.txt"
        ids.touch()
        proc = start_producer(db_path, tmp_path, ids, 1_000_000)
        wait_for(lambda: len(sent_ids(ids)) > 2000, what="the producer to send")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        everything += sent_ids(ids)
    wait_for(lambda: inbox_files(db_path) == [] and registered(db_path) == [], timeout=60,
             what="the dead producers' inboxes to be drained and removed")
    seqs = [parse_id(i) for i in everything]
    wait_for(lambda: all_succeeded(db_path, seqs), timeout=60,
             what="every job sent to end SUCCESS")
    assert worker.proc.poll() is None


def test_kill9_of_the_supervisor_while_it_copies_an_inbox(app, db_path, start_worker,
                                                           tmp_path):
    """A dead producer's inbox of 30,000 jobs; the worker that copies it is killed (-9)
    at random points, again and again: each job is copied once and runs."""
    ids = tmp_path / "ids.txt"
    ids.touch()
    with bell_nobody_answers(db_path):
        proc = start_producer(db_path, tmp_path, ids, 30_000)
        assert proc.wait(120) == 0
    assert len(inbox_files(db_path)) == 1
    sent = [parse_id(i) for i in sent_ids(ids)]
    assert len(sent) == 30_000 and all(inbox_slot(s) is not None for s in sent)
    for delay in (0.05, 0.15, 0.3, 0.5):
        worker = start_worker("-c", "1")
        time.sleep(delay)
        worker.kill_all()
    start_worker("-c", "2").ready()
    wait_for(lambda: all_succeeded(db_path, sent), timeout=120,
             what="every job of the inbox to end SUCCESS")
    wait_for(lambda: inbox_files(db_path) == [], what="the inbox to be removed")
    assert len(states(db_path)) == 30_000


def test_a_live_producers_inbox_is_left_alone(app, db_path, start_worker, tmp_path):
    """A producer still running keeps its (drained) inbox; it goes when the producer
    exits, freed by the worker if the producer could not."""
    start_worker("-c", "1").ready()
    ids = tmp_path / "ids.txt"
    ids.touch()
    proc = start_producer(db_path, tmp_path, ids, 200, linger=60)
    wait_for(lambda: ids.read_text().endswith("done\n"), what="the producer to send")
    sent = [parse_id(i) for i in sent_ids(ids)]
    wait_for(lambda: all_succeeded(db_path, sent),
             what="its jobs to run")
    time.sleep(1.2)                       # two fallback checks of the worker
    assert len(inbox_files(db_path)) == 1 and len(registered(db_path)) == 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    wait_for(lambda: inbox_files(db_path) == [] and registered(db_path) == [],
             what="the gone producer's inbox to be removed")


def test_a_producer_whose_pid_means_nothing_here_is_not_taken_for_dead(
        app, db_path, start_worker, tmp_path):
    """A producer in another pid namespace (a container sharing the file) registers a pid
    that names no process here: its inbox is its own while it lives (its lock is held),
    and every job it sends runs; it goes once the producer exits."""
    start_worker("-c", "1").ready()
    ids = tmp_path / "ids.txt"
    ids.touch()
    proc = start_producer(db_path, tmp_path, ids, 200, linger=60)
    wait_for(lambda: ids.read_text().endswith("done\n"), what="the producer to send")
    con = sqlite3.connect(db_path)
    with con:
        con.execute("UPDATE inboxes SET pid = 2147483000, pid_start = NULL "
                    "WHERE name IS NOT NULL")   # what a pid from elsewhere looks like here
    con.close()
    time.sleep(1.2)                       # two fallback checks of the worker
    assert len(inbox_files(db_path)) == 1 and len(registered(db_path)) == 1
    sent = [parse_id(i) for i in sent_ids(ids)]
    wait_for(lambda: all_succeeded(db_path, sent), what="its jobs to run")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    wait_for(lambda: inbox_files(db_path) == [] and registered(db_path) == [],
             what="the gone producer's inbox to be removed")
    folder = os.path.realpath(db_path) + ".d"
    assert not [n for n in os.listdir(folder) if n.startswith("inbox-")], "its lock file too"


@pytest.mark.parametrize("forked", [False, True])
def test_a_forked_process_gets_an_inbox_of_its_own(app, db_path, start_worker, forked):
    start_worker("-c", "2").ready()
    add = app.tasks["sample_tasks.add"]
    first = add.delay(1, 2)
    assert first.get(timeout=30) == 3
    if not forked:
        return
    pid = os.fork()
    if pid == 0:                          # the child: its own slot, its jobs run
        code = 1
        try:
            r = add.delay(5, 5)
            code = 0 if r.get(timeout=30) == 10 and \
                inbox_slot(parse_id(r.id)) != inbox_slot(parse_id(first.id)) else 2
            app.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert add.delay(2, 2).get(timeout=30) == 4      # the parent's inbox still works


def test_more_producers_than_sqlite_attaches_files(app, db_path, start_worker, tmp_path):
    """Twelve producers at once (SQLite attaches at most 10 files): every inbox is
    copied in turn, every job runs, every inbox goes once its producer has exited."""
    start_worker("-c", "2").ready()
    files = [tmp_path / f"ids-{i}.txt" for i in range(12)]
    procs = []
    for ids in files:
        ids.touch()
        procs.append(start_producer(db_path, tmp_path, ids, 300))
    for proc in procs:
        assert proc.wait(60) == 0
    sent = [parse_id(i) for ids in files for i in sent_ids(ids)]
    assert len(sent) == 12 * 300
    assert all(inbox_slot(s) is not None for s in sent)   # (a slot freed may be reused)
    wait_for(lambda: all_succeeded(db_path, sent), timeout=60, what="every job to run")
    wait_for(lambda: inbox_files(db_path) == [] and registered(db_path) == [],
             what="the inboxes to be removed")


def test_purge_reaches_every_inbox_beyond_those_sqlite_attaches_at_once(
        app, db_path, start_worker, tmp_path):
    """Twelve live producers' inboxes hold jobs nobody copied yet (SQLite attaches ten
    files at most): purge removes every one of them, and none runs later."""
    files = [tmp_path / f"ids-{i}.txt" for i in range(12)]
    procs = []
    try:
        with bell_nobody_answers(db_path):
            for ids in files:
                ids.touch()
                procs.append(start_producer(db_path, tmp_path, ids, 3, linger=120))
            wait_for(lambda: all(ids.read_text().endswith("done\n") for ids in files),
                     timeout=60, what="every producer to have sent its jobs")
            sent = [i for ids in files for i in sent_ids(ids)]
            assert len(registered(db_path)) == 12 and len(sent) == 36
            assert all(parse_id(i) not in states(db_path) for i in sent)   # in inboxes
            assert app.control.purge() == 36
        start_worker("-c", "1").ready()
        assert app.tasks["sample_tasks.add"].delay(1, 1).get(timeout=30) == 2
        wait_for(lambda: all(pos > 0 for _slot, _name, _pid, pos in registered(db_path)),
                 timeout=30, what="the worker to read every inbox")
        assert [i for i in sent if app.store.job(i) is not None] == []
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(30)


def test_files_of_a_producer_killed_before_it_registered_are_removed(app, db_path,
                                                                     start_worker):
    """A producer killed between making its inbox files and registering them left them
    behind: a worker removes them once they are ORPHAN_AGE old and their lock is free.
    A fresh pair (a producer about to register) and an old pair whose lock is held (a
    producer stopped just before it registers) stay."""
    import fcntl

    from localq.store.inbox import LOCK_SUFFIX, ORPHAN_AGE

    folder = wake_folder(db_path)
    os.mkdir(folder, 0o700)
    old = time.time() - ORPHAN_AGE - 60

    def leave(name: str, age: float | None) -> str:
        for suffix in ("", LOCK_SUFFIX):
            path = os.path.join(folder, name + suffix)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            if age is not None:
                os.utime(path, (age, age))
        return name

    orphan = leave("inbox-999999-0badf00d.db", old)
    fresh = leave("inbox-999998-0badf00d.db", None)
    held = leave("inbox-999997-0badf00d.db", old)
    other = os.path.join(folder, "notes-inbox.db")     # not of the inbox scheme
    os.close(os.open(other, os.O_CREAT | os.O_WRONLY, 0o600))
    os.utime(other, (old, old))
    fd = os.open(os.path.join(folder, held + LOCK_SUFFIX), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        start_worker("-c", "1").ready()
        wait_for(lambda: orphan not in inbox_files(db_path), timeout=30,
                 what="the orphaned inbox to be removed")
        assert not os.path.exists(os.path.join(folder, orphan + LOCK_SUFFIX))
        assert fresh in inbox_files(db_path) and held in inbox_files(db_path)
        assert os.path.exists(other)
        assert app.tasks["sample_tasks.add"].delay(2, 2).get(timeout=30) == 4
    finally:
        os.close(fd)


def test_counts_see_each_job_once_while_a_worker_copies_it_from_an_inbox(
        app, db_path, start_worker):
    """status and the dashboard's queue lengths count jobs in the file and in inboxes:
    from one state of the file, so a job the worker copies between the two reads is
    counted once, not missed (or twice). Jobs in a queue no worker takes stay waiting."""
    from localq.dashboard import views

    add = app.tasks["sample_tasks.add"]
    start_worker("-c", "1").ready()
    sent = 0
    for _ in range(60):
        for i in range(5):
            add.apply_async((i, i), queue="nobody")
        sent += 5
        pending = sum(n for q, _t, st, n in app.store.counts()
                      if q == "nobody" and st == "PENDING")
        lengths = {q["name"]: q["messages"] for q in views.queues(app)["active_queues"]}
        assert pending == sent and lengths.get("nobody") == sent
