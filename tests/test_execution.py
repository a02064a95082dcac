"""Execution controls with real workers: retries, time limits, lost children, recycling."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import HERE, ROOT, pid_alive, wait_for

import localq


def test_retry_until_success_records_every_attempt(app):
    from sample_tasks import flaky
    with app.worker(concurrency=2):
        r = flaky.delay(2)
        assert r.get(timeout=20) == 2
    assert r.retries == 2
    attempts = r.attempts
    assert [a["outcome"] for a in attempts] == ["RETRY", "RETRY", "SUCCESS"]
    assert attempts[0]["exc_type"] == "ConnectionError" and attempts[0]["pid"]
    assert all(a["started"] and a["ended"] >= a["started"] for a in attempts)


def test_past_max_retries_the_original_exception_is_raised(app):
    from sample_tasks import flaky, retry_no_exc
    with app.worker(concurrency=2):
        r = flaky.delay(10)
        with pytest.raises(ConnectionError, match="attempt 3"):
            r.get(timeout=20)
        assert r.state == "FAILURE" and r.retries == 3
        with pytest.raises(localq.MaxRetriesExceededError):
            retry_no_exc.delay().get(timeout=20)


def test_autoretry_for_with_backoff(app):
    from sample_tasks import auto
    with app.worker(concurrency=1):
        r = auto.delay(2)
        assert r.get(timeout=20) == "ok"
        assert r.retries == 2
        with pytest.raises(KeyError):
            auto.delay(10).get(timeout=30)


def test_a_waiting_retry_survives_a_worker_restart(app, tmp_path):
    from sample_tasks import retry_once_when_told
    with app.worker(concurrency=1) as worker:
        r = retry_once_when_told.delay(str(tmp_path), 0.01)
        wait_for(lambda: (tmp_path / "running").exists(), what="the first attempt to run")
        # Warm shutdown before the retry is asked for: the worker writes it, and claims
        # nothing more, however soon the retry is due and however slow this test is.
        os.kill(worker.pid, signal.SIGTERM)
        (tmp_path / "go").touch()
        wait_for(lambda: r.state == "RETRY", what="the first attempt to ask for a retry")
    # the worker is gone; the retry waits in the database
    assert r.state == "RETRY"
    with app.worker(concurrency=1):
        assert r.get(timeout=20) == 1


def test_hard_time_limit_kills_the_child_and_the_pool_stays_whole(app):
    from sample_tasks import add, getpid, hard_limited
    with app.worker(concurrency=2) as worker:
        t0 = time.monotonic()
        r = hard_limited.delay(30)
        with pytest.raises(localq.TimeLimitExceeded):
            r.get(timeout=20)
        assert time.monotonic() - t0 < 10
        assert r.state == "FAILURE"
        assert add.delay(1, 1).get(timeout=10) == 2
        wait_for(lambda: len(_children(worker.pid)) == 2, what="the pool to be whole")
        assert getpid.delay().get(timeout=10) in _children(worker.pid)


def test_per_call_and_worker_time_limits(app):
    from sample_tasks import sleep_then
    with app.worker(concurrency=1):
        r = sleep_then.apply_async((30,), time_limit=0.3)
        with pytest.raises(localq.TimeLimitExceeded):
            r.get(timeout=20)
    with app.worker(concurrency=1, time_limit=0.3):
        with pytest.raises(localq.TimeLimitExceeded):
            sleep_then.delay(30).get(timeout=20)


def test_annotations_override_task_options(app):
    from sample_tasks import sleep_then
    app.conf.task_annotations = {"sample_tasks.sleep_then": {"time_limit": 0.3}}
    with app.worker(concurrency=1):
        with pytest.raises(localq.TimeLimitExceeded):
            sleep_then.delay(30).get(timeout=20)
    app.conf.task_annotations = {"*": {"soft_time_limit": 0.2}}
    assert sleep_then.soft_time_limit == 0.2


def test_soft_time_limit_is_raised_inside_the_task(app):
    from sample_tasks import soft_limited
    with app.worker(concurrency=1):
        t0 = time.monotonic()
        assert soft_limited.delay(30).get(timeout=20) == "cleaned up"
        assert time.monotonic() - t0 < 10


def test_a_task_that_ignores_sigterm_and_spins_is_killed(app):
    from sample_tasks import add, stubborn
    with app.worker(concurrency=1):
        with pytest.raises(localq.TimeLimitExceeded):
            stubborn.delay().get(timeout=20)
        assert add.delay(2, 2).get(timeout=10) == 4


def test_a_child_that_dies_fails_its_job_with_worker_lost_and_is_replaced(app):
    from sample_tasks import add, die
    with app.worker(concurrency=2) as worker:
        r = die.delay()
        with pytest.raises(localq.WorkerLostError, match="exited prematurely"):
            r.get(timeout=20)
        assert add.delay(1, 2).get(timeout=10) == 3
        wait_for(lambda: len(_children(worker.pid)) == 2, what="the pool to be whole")


def test_reject_on_worker_lost_runs_the_job_again(app, tmp_path):
    from sample_tasks import die_once
    with app.worker(concurrency=1):
        assert die_once.delay(str(tmp_path / "marker")).get(timeout=20) == "second time"


def test_a_child_killed_by_hand(app):
    from sample_tasks import add, slow_record
    out = app.path + ".runs"
    with app.worker(concurrency=2) as worker:
        r = slow_record.delay(out, 1, 30)
        # Running in its child, not only claimed: a job that never started is not blamed.
        wait_for(lambda: os.path.exists(out), what="the job to start")
        running = app.store.job(r.id)
        victims = _children(worker.pid)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(localq.WorkerLostError):
            r.get(timeout=20)
        assert running["state"] == "STARTED"
        assert add.delay(1, 1).get(timeout=10) == 2
        wait_for(lambda: len(_children(worker.pid)) == 2, what="the pool to be whole")


def test_max_tasks_per_child_recycles(app):
    from sample_tasks import getpid
    with app.worker(concurrency=1, max_tasks_per_child=2):
        pids = [getpid.delay().get(timeout=10) for _ in range(6)]
    assert len(set(pids)) == 3
    assert [pids.count(p) for p in dict.fromkeys(pids)] == [2, 2, 2]


def test_max_memory_per_child_recycles_after_the_task(app):
    from sample_tasks import allocate, getpid
    with app.worker(concurrency=1, max_memory_per_child=150_000):
        first = allocate.delay(200).get(timeout=20)
        assert first > 0
        second = getpid.delay().get(timeout=10)
    assert second != first


def test_show_prints_every_attempt(app):
    from sample_tasks import flaky
    with app.worker(concurrency=1):
        r = flaky.delay(1)
        r.get(timeout=20)
    out = subprocess.run([sys.executable, "-m", "localq", "show", r.id, "--db", app.path],
                         capture_output=True, text=True, timeout=30,
                         env=dict(os.environ, PYTHONPATH=f"{HERE}:{ROOT}"))
    assert out.returncode == 0, out.stderr
    assert "SUCCESS" in out.stdout and "RETRY" in out.stdout and "ConnectionError" in out.stdout


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split() if pid_alive(int(p))]
    except OSError:
        return []
