"""Faults in and around the supervisor: children that die, writes that fail, a worker
that was presumed dead. Each test runs real workers on a real file."""
from __future__ import annotations

import collections
import os
import signal
import sqlite3
import time

import pytest
from conftest import pid_alive, wait_for

import localq.store
import localq.worker.supervisor
from localq.exceptions import WorkerLostError
from localq.store import Store

FINAL = ("SUCCESS", "FAILURE", "REVOKED")


def runs(path) -> collections.Counter:
    with open(path) as f:
        return collections.Counter(int(line) for line in f)


def states(app, results) -> list[str]:
    found = app.store.states([r.id for r in results])
    return [found.get(r.id, "?") for r in results]


def all_final(app, results) -> bool:
    return all(s in FINAL for s in states(app, results))


def test_children_dying_under_load_keep_the_worker_and_blame_only_their_job(app, tmp_path):
    """Items 1 and 6: in a backlog of fast jobs, a child dies every 25 jobs while more
    are queued for it (the supervisor finds some dead only when it sends them work)."""
    from sample_tasks import add, crash_every
    log, every, n = str(tmp_path / "runs"), 25, 10_000
    results = [crash_every.delay(log, i, every) for i in range(1, n + 1)]
    with app.worker(concurrency=2) as worker:
        wait_for(lambda: not worker.alive or all_final(app, results), timeout=180,
                 what="every job to end")
        assert worker.alive, "a child's death took the worker with it"
        assert add.delay(1, 2).get(timeout=10) == 3
    by_state = collections.defaultdict(set)
    for i, state in enumerate(states(app, results), 1):
        by_state[state].add(i)
    crashers = set(range(every, n + 1, every))
    assert by_state["FAILURE"] == crashers          # no other job is blamed
    assert by_state["SUCCESS"] == set(range(1, n + 1)) - crashers
    for i in sorted(crashers)[:3]:
        with pytest.raises(WorkerLostError):
            results[i - 1].get(timeout=5)
    ran = runs(log)
    assert set(ran) == set(range(1, n + 1))
    assert all(ran[i] == 1 for i in crashers)        # the job that crashed is not re-run


def test_a_grandchild_holding_the_channel_does_not_hide_the_childs_death(app, tmp_path):
    """Item 12a: the child forks a long-lived grandchild, then dies."""
    from sample_tasks import add, orphan_grandchild_then_die
    pidfile = tmp_path / "grandchild.pid"
    try:
        with app.worker(concurrency=1) as worker:
            r = orphan_grandchild_then_die.delay(str(pidfile))
            with pytest.raises(WorkerLostError):
                r.get(timeout=20)
            assert add.delay(2, 2).get(timeout=10) == 4
            assert worker.alive
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_write_lock_held_past_the_retry_window_loses_nothing(app, monkeypatch):
    """Item 2: outcomes that cannot be written are kept and written later. The store's
    minute-long wait for the lock is cut to 1 s here so that the lock can be held past
    it in a short test; the supervisor waits less than either and tries again."""
    from sample_tasks import add, sleep_then
    monkeypatch.setattr(localq.store.connection, "BUSY_TIMEOUT_MS", 1000)
    with app.worker(concurrency=2) as worker:
        results = [sleep_then.delay(0.3, i) for i in range(6)]
        wait_for(lambda: states(app, results).count("STARTED") == 2, what="two running")
        blocker = sqlite3.connect(app.path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            deadline = time.monotonic() + 3.0      # jobs finish meanwhile
            while time.monotonic() < deadline:
                assert worker.alive
                time.sleep(0.1)
            blocker.execute("COMMIT")
        finally:
            blocker.close()
        assert [r.get(timeout=20) for r in results] == list(range(6))
        assert worker.alive
        assert add.delay(1, 1).get(timeout=10) == 2


def test_one_bad_outcome_does_not_poison_its_batch(app):
    """Item 2: retry(countdown=nan) cannot be stored as such; it ends FAILURE, and the
    jobs whose outcomes travel with it end normally."""
    from sample_tasks import add, retry_nan
    results = [add.delay(i, 0) for i in range(20)]
    bad = retry_nan.delay()
    results += [add.delay(i, 0) for i in range(20, 40)]
    with app.worker(concurrency=1) as worker:
        assert [r.get(timeout=20) for r in results] == list(range(40))
        wait_for(lambda: bad.state in FINAL, what="the bad job to end")
        assert bad.state == "FAILURE"
        with pytest.raises(Exception) as info:
            bad.get(timeout=5)
        assert "nan" in str(info.value).lower() or "stored" in str(info.value)
        assert worker.alive
        assert add.delay(5, 5).get(timeout=10) == 10


def test_worker_ids_are_never_reused(app):
    """Item 2: a job left STARTED under a vanished worker's id must never look like a
    new worker's own."""
    from sample_tasks import add
    ids = []
    for _ in range(2):
        with app.worker(concurrency=1):
            assert add.delay(1, 1).get(timeout=10) == 2
            ids.append([w["id"] for w in Store(app.path).workers()])
    assert len(ids[0]) == len(ids[1]) == 1
    assert ids[1][0] > ids[0][0]


def test_a_worker_presumed_dead_never_runs_jobs_without_an_owner(app, tmp_path):
    """Item 5: worker A is stopped (SIGSTOP) long enough for worker B to presume it dead
    and take its jobs back; A then wakes up. Whatever it claims must belong to a
    registered worker, so that when A dies for good its jobs are recovered."""
    from sample_tasks import sleep_then
    store = Store(app.path)
    results = [sleep_then.delay(0.2, i) for i in range(60)]
    app.conf.worker_heartbeat_interval = 60      # A: silent once registered
    a = app.worker(concurrency=1).start()
    a_pid = a.pid
    assert a_pid is not None
    b = None
    try:
        wait_for(lambda: "STARTED" in states(app, results), what="A to run a job")
        (a_id,) = [w["id"] for w in store.workers()]
        os.kill(a_pid, signal.SIGSTOP)
        app.conf.worker_heartbeat_interval = 0.2
        app.conf.worker_lost_after = 1.0           # B: presumes A dead after 1 s
        b = app.worker(concurrency=1).start()
        wait_for(lambda: a_id not in [w["id"] for w in store.workers()], timeout=30,
                 what="B to presume A dead")
        b_ids = {w["id"] for w in store.workers()}
        os.kill(a_pid, signal.SIGCONT)

        def a_claimed():
            with store.db.read() as conn:
                return conn.execute("SELECT owner FROM jobs WHERE state = 'STARTED'"
                                    ).fetchall()
        owners = wait_for(lambda: [o for (o,) in a_claimed() if o not in b_ids],
                          what="A to claim again")
        registered = {w["id"] for w in store.workers()}
        assert set(owners) <= registered, "A claimed under an id no worker holds"
        os.kill(a_pid, signal.SIGKILL)              # A dies for good: B recovers its jobs
        wait_for(lambda: all_final(app, results), timeout=60, what="every job to end")
        assert states(app, results) == ["SUCCESS"] * len(results)
        assert b.alive
    finally:
        try:
            os.kill(a_pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        a.stop(timeout=5)
        if b is not None:
            b.stop(timeout=10)
        store.close()
    assert not pid_alive(a_pid)


def test_a_worker_that_cannot_write_back_at_exit_stays_registered(app, monkeypatch):
    """Item 2: a worker stopping while the write lock is held elsewhere cannot write its
    last outcome; it keeps its row, so the next worker finds its job and runs it."""
    from sample_tasks import sleep_then
    monkeypatch.setattr(localq.worker.supervisor, "BUSY_TIMEOUT_MS", 1000)   # its last wait
    store = Store(app.path)
    worker = app.worker(concurrency=1).start()
    r = sleep_then.delay(0.3, "done")
    wait_for(lambda: r.state == "STARTED", what="the job to be claimed")
    (wid,) = [w["id"] for w in store.workers()]
    blocker = sqlite3.connect(app.path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        worker.stop(timeout=30)                 # it finishes the job, then exits
        blocker.execute("COMMIT")
    finally:
        blocker.close()
    assert r.state == "STARTED"
    assert wid in [w["id"] for w in store.workers()]
    with app.worker(concurrency=1):
        assert r.get(timeout=30) == "done"
    store.close()
