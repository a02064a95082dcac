"""Real workers: the embedded one and ``python -m localq worker`` subprocesses."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import HERE, ROOT, pid_alive, wait_for

import localq
from localq import Localq
from localq.worker.pool import PREFETCH_MAX


def runs_of(path) -> list[str]:
    try:
        with open(path) as f:
            return [line.split()[0] for line in f]
    except FileNotFoundError:
        return []


def test_embedded_worker_round_trip_and_no_process_left(app):
    from sample_tasks import add, getpid
    with app.worker(concurrency=2) as worker:
        assert add.delay(2, 3).get(timeout=10) == 5
        child = getpid.delay().get(timeout=10)
        supervisor = worker.pid
        assert pid_alive(child) and pid_alive(supervisor)
    assert not pid_alive(supervisor)
    wait_for(lambda: not pid_alive(child), what="child to exit")


def test_results_states_and_metadata(app):
    from sample_tasks import add, whoami
    r = add.delay(1, 2)
    assert r.state == "PENDING" and not r.ready()
    with app.worker(concurrency=1):
        assert r.get(timeout=10) == 3
        me = whoami.delay().get(timeout=10)
    assert r.state == r.status == "SUCCESS"
    assert r.ready() and r.successful() and not r.failed()
    assert r.result == 3 and r.date_done is not None and r.traceback is None
    assert me["retries"] == 0 and len(me["id"]) == 36
    again = app.AsyncResult(r.id)
    assert again.get() == 3
    r.forget()
    assert app.AsyncResult(r.id).state == "PENDING"


def test_failure_reraises_the_original_type(app):
    from sample_tasks import CustomError, boom, custom_boom
    with app.worker(concurrency=2):
        r = boom.delay("bad input")
        with pytest.raises(ValueError, match="bad input"):
            r.get(timeout=10)
        assert r.failed() and "ValueError" in r.traceback
        exc = r.get(timeout=10, propagate=False)
        assert isinstance(exc, ValueError)
        with pytest.raises(CustomError) as err:
            custom_boom.delay().get(timeout=10)
        assert err.value.args == ("custom", 42)


def test_unknown_task_fails_with_a_clear_error_and_the_worker_goes_on(app):
    from sample_tasks import add
    with app.worker(concurrency=1):
        r = app.send_task("nowhere.missing", (1,))
        with pytest.raises(localq.NotRegistered, match="nowhere.missing.*not registered"):
            r.get(timeout=10)
        assert add.delay(1, 1).get(timeout=10) == 2


def test_eta_countdown_and_expires(app):
    from sample_tasks import add
    with app.worker(concurrency=1):
        t0 = time.time()
        r = add.apply_async((1, 1), countdown=0.3)
        assert r.get(timeout=10) == 2
        assert app.store.job(r.id)["started"] >= t0 + 0.3
        expired = add.apply_async((1, 1), countdown=0.3, expires=0.1)
        with pytest.raises(localq.TaskRevokedError):
            expired.get(timeout=10)
        assert expired.state == "REVOKED"


def test_priority_higher_first(app):
    from sample_tasks import record
    out = app.path + ".runs"
    for i in range(5):
        record.apply_async((out, f"low{i}"), priority=0)
    for i in range(5):
        record.apply_async((out, f"high{i}"), priority=9)
    last = record.apply_async((out, "end"), priority=0)
    with app.worker(concurrency=1):
        last.get(timeout=10)
    order = runs_of(out)
    assert order[:5] == [f"high{i}" for i in range(5)]
    assert order[5:] == [f"low{i}" for i in range(5)] + ["end"]


def test_queues_route_jobs_to_the_workers_that_listen(app):
    from sample_tasks import add
    r = add.apply_async((1, 1), queue="other")
    with app.worker(concurrency=1, queues=["default"]):
        assert add.delay(2, 2).get(timeout=10) == 4
        assert r.state == "PENDING"
    with app.worker(concurrency=1, queues="other,default"):
        assert r.get(timeout=10) == 2


def test_get_is_woken_by_the_workers_ring_not_by_a_poll(app):
    """A waiter sleeps on its doorbell; the worker rings it once the outcome is written.
    With its poll interval set to an hour, only that ring can end its wait."""
    import threading

    from sample_tasks import add, sleep_then

    from localq.result import Waiter
    with app.worker(concurrency=1):
        add.delay(0, 0).get(timeout=10)
        r = sleep_then.delay(0.2, "done")
        waiter = Waiter(app.path, timeout=None)
        woke: list[bool] = []

        def wait_for_the_outcome() -> None:
            while not r.ready():        # (the first job's ring may come late: once more)
                waiter.fallback = 3600.0
                woke.append(waiter.wait())

        thread = threading.Thread(target=wait_for_the_outcome, daemon=True)
        thread.start()
        thread.join(60)
        assert not thread.is_alive(), "no ring woke the waiter"
        waiter.close()
        assert woke and all(woke) and r.get(timeout=10) == "done"


def test_a_ring_carries_a_short_result_and_the_rest_is_read_from_the_file(app):
    """The worker's ring after a lone job carries its result, so get() need not read the
    file; what the ring does not carry (when it ended, its arguments, its retries) is
    read from the file as before."""
    from sample_tasks import add, flaky

    from localq.ids import parse_id
    from localq.result import Waiter
    with app.worker(concurrency=1):
        add.delay(0, 0).get(timeout=10)
        r = add.delay(2, 3)
        waiter = Waiter(app.path, timeout=30, seq=parse_id(r.id))
        try:
            while waiter.carried is None and waiter.wait():
                pass
            carried = waiter.carried
        finally:
            waiter.close()
        assert carried == ("sample_tasks.add", "json", "5")
        assert r.get(timeout=10) == 5
        assert r.args == (2, 3) and r.kwargs == {} and r.name == "sample_tasks.add"
        assert r.date_done is not None and r.traceback is None and r.retries == 0
        retried = flaky.delay(1)
        assert retried.get(timeout=10) == 1
        assert retried.retries == 1 and len(retried.attempts) == 2
        assert [a["outcome"] for a in retried.attempts] == ["RETRY", "SUCCESS"]
        big = add.delay("x" * 5000, "y")                  # too long to carry: read
        assert big.get(timeout=10) == "x" * 5000 + "y"
        chosen = add.apply_async((1, 1), task_id="my-own-id")   # not carried: read
        assert chosen.get(timeout=10) == 2


def worker_running_a_job(app, start_worker, concurrency: str, label: str, seconds: float):
    """A CLI worker, and a job of ``seconds`` that it has started."""
    from sample_tasks import slow_record
    out = app.path + ".runs"
    w = start_worker("-c", concurrency)
    r = slow_record.delay(out, label, seconds)
    wait_for(lambda: f"start-{label}" in runs_of(out), what="job to start")
    return w, r


def test_cli_worker_runs_jobs_and_warm_shutdown_finishes_the_running_job(app, start_worker):
    w, r = worker_running_a_job(app, start_worker, "2", "done", 1.0)
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0
    assert r.get(timeout=1) == "done"
    err = w.stderr()
    assert "localq worker ready" in err and "concurrency=2" in err and "sample_tasks:app" in err


def test_sigterm_to_the_whole_process_group_is_a_warm_shutdown_too(app, start_worker):
    """systemd's default KillMode, `timeout` and `kill -TERM -PGID` signal every process of
    the worker, its children too: the running job still finishes."""
    w, r = worker_running_a_job(app, start_worker, "2", "done", 1.0)
    os.killpg(w.pid, signal.SIGTERM)
    assert w.wait(30) == 0
    assert r.get(timeout=1) == "done"
    assert "exited unexpectedly" not in w.stderr()


def test_second_signal_is_a_cold_shutdown_that_puts_the_job_back(app, start_worker):
    w, r = worker_running_a_job(app, start_worker, "1", "long", 30)
    w.signal(signal.SIGTERM)
    wait_for(lambda: "warm shutdown" in w.stderr(), what="the first signal to be seen")
    w.signal(signal.SIGTERM)
    assert w.wait(30) != 0
    assert "cold shutdown" in w.stderr()
    assert r.state == "PENDING"


def test_kill_9_mid_run_loses_nothing(app, start_worker):
    from sample_tasks import record
    out = app.path + ".runs"
    results = [record.delay(out, i) for i in range(3000)]
    w = start_worker("-c", "2")
    wait_for(lambda: len(runs_of(out)) >= 50, what="some jobs to run")
    os.killpg(w.pid, signal.SIGKILL)
    w.wait(10)
    done_before = {r.id for r in results if r.state == "SUCCESS"}
    assert len(done_before) < 3000, "the kill came too late to test anything"
    w2 = start_worker("-c", "2")
    assert [r.get(timeout=60) for r in results] == list(range(3000))
    runs = runs_of(out)
    assert sorted(set(runs), key=int) == [str(i) for i in range(3000)]
    twice = [v for v in set(runs) if runs.count(v) > 1]
    # Only jobs handed to a child whose outcome was not yet committed can run twice:
    # at most a child's prefetch each.
    assert len(twice) <= 2 * PREFETCH_MAX
    for r in results:
        if r.id in done_before:
            assert runs.count(str(r.get())) == 1
    w2.ready().signal(signal.SIGTERM)
    assert w2.wait(30) == 0


def test_two_workers_share_the_work_and_each_job_runs_once(app, start_worker):
    from sample_tasks import record
    out = app.path + ".runs"
    w1, w2 = start_worker("-c", "2"), start_worker("-c", "2")
    results = [record.delay(out, i) for i in range(400)]
    assert [r.get(timeout=60) for r in results] == list(range(400))
    runs = runs_of(out)
    assert len(runs) == 400 and len(set(runs)) == 400
    for w in (w1, w2):
        w.ready().signal(signal.SIGTERM)
        assert w.wait(30) == 0


def test_eight_producers_beside_two_workers_never_see_locked(app, start_worker):
    from sample_tasks import add
    start_worker("-c", "2")
    start_worker("-c", "2")
    errors: list[BaseException] = []
    results: list = []

    def produce():
        try:
            mine = Localq(app.path)
            task = mine.task(add.run, name=add.name)
            results.extend(task.delay(i, 1) for i in range(250))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=produce) for _ in range(4)]
    procs = [subprocess.Popen([sys.executable, "-c",
                               "import sample_tasks as s\n"
                               "for i in range(250): s.add.delay(i, 1)\n"],
                              env=dict(os.environ, LOCALQ_DB=app.path,
                                       PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)])),
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert "locked" not in err
    assert not errors
    assert all(r.get(timeout=60) == int(r.get()) for r in results)
    wait_for(lambda: dict(((s, c) for _, _, s, c in app.store.counts())).get("SUCCESS") == 2000,
             timeout=60, what="all 2000 jobs")
    assert integrity(app.path) == "ok"


def integrity(path: str) -> str:
    """SQLite's own check of the file: one 'ok', or what is broken."""
    import sqlite3
    con = sqlite3.connect(path)
    try:
        return "\n".join(r[0] for r in con.execute("PRAGMA integrity_check"))
    finally:
        con.close()


def test_app_that_does_not_import_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "localq", "worker", "--app", "no_such_mod:app"],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no_such_mod" in lines[0] and "Traceback" not in proc.stderr


def test_worker_started_on_a_file_recovers_jobs_of_a_dead_worker(app, start_worker):
    from sample_tasks import early_ack, slow_record
    out = app.path + ".runs"
    w = start_worker("-c", "2")
    again = slow_record.delay(out, "again", 5)
    lost = early_ack.delay(5)
    wait_for(lambda: app.store.job(lost.id)["state"] == "STARTED" and
             "start-again" in runs_of(out), what="both jobs to start")
    os.killpg(w.pid, signal.SIGKILL)
    w.wait(10)
    start_worker("-c", "2")
    with pytest.raises(localq.WorkerLostError):
        lost.get(timeout=30)                 # acks_late=False: it ends, it does not rerun
    assert again.get(timeout=30) == "again"  # acks_late (default): it runs again


def test_chaos_repeated_kill_9_of_workers_and_children_loses_nothing(app, start_worker):
    import random

    from sample_tasks import record
    rng = random.Random(7)
    out = app.path + ".runs"
    results = [record.delay(out, i) for i in range(4000)]
    for round_ in range(4):
        w = start_worker("-c", "2")
        target = len(runs_of(out)) + rng.randint(50, 600)
        wait_for(lambda: len(runs_of(out)) >= min(target, 3900), what=f"progress {round_}")
        if round_ % 2:                       # kill a child first, then the whole worker
            kids = w.children()
            if kids:
                os.kill(rng.choice(kids), signal.SIGKILL)
        os.killpg(w.pid, signal.SIGKILL)
        w.wait(10)
    last = start_worker("-c", "2")
    values = []
    for r in results:
        try:
            values.append(r.get(timeout=120))
        except localq.WorkerLostError:       # a child killed mid-job: its job failed, once
            values.append(None)
    assert values.count(None) <= 2
    assert all(v == i for i, v in enumerate(values) if v is not None)
    runs = runs_of(out)
    assert set(runs) >= {str(i) for i, v in enumerate(values) if v is not None}
    assert all(r.state in ("SUCCESS", "FAILURE") for r in results)
    last.ready().signal(signal.SIGTERM)
    assert last.wait(30) == 0
    assert integrity(app.path) == "ok"
