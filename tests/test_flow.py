"""Flow control with real workers: global rate limits, caps, ETA, expiry, revoke, purge."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import HERE, ROOT, wait_for

import localq


def lines(path) -> list[list[str]]:
    try:
        with open(path) as f:
            return [line.split() for line in f]
    except FileNotFoundError:
        return []


def max_in_window(stamps: list[float], window: float) -> int:
    stamps = sorted(stamps)
    best, lo = 0, 0
    for hi, t in enumerate(stamps):
        while t - stamps[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_rate_limit_is_global_across_two_workers(app, start_worker):
    from sample_tasks import limited  # rate_limit="10/s"
    out = app.path + ".runs"
    results = [limited.delay(out, i) for i in range(40)]
    start_worker("-c", "2")
    start_worker("-c", "2")
    assert sorted(r.get(timeout=60) for r in results) == list(range(40))
    stamps = [float(x[1]) for x in lines(out)]
    assert len(stamps) == 40
    # a burst of at most 10, then 10 per second: no one-second window holds more than 20
    assert max_in_window(stamps, 1.0) <= 20
    assert max(stamps) - min(stamps) >= 2.0    # 40 jobs at 10/s after a burst of 10


def test_rate_limited_backlog_does_not_slow_other_tasks(app):
    from sample_tasks import add, limited
    out = app.path + ".runs"
    app.control.rate_limit("sample_tasks.limited", "1/s")
    waiting = [limited.delay(out, i) for i in range(300)]
    with app.worker(concurrency=2):
        t0 = time.monotonic()
        assert [add.delay(i, 1).get(timeout=10) for i in range(50)] == [i + 1 for i in range(50)]
        assert time.monotonic() - t0 < 10
        assert sum(r.state == "SUCCESS" for r in waiting) <= 5
        states = app.store.states([r.id for r in waiting])
        assert sum(s == "PENDING" for s in states.values()) >= 290   # waiting in the db


def test_rate_limit_set_at_run_time_from_the_cli(app):
    from sample_tasks import add
    out = subprocess.run([sys.executable, "-m", "localq", "rate-limit", "--db", app.path,
                          "sample_tasks.add", "2/s"], capture_output=True, text=True,
                         timeout=30, env=dict(os.environ, PYTHONPATH=f"{HERE}:{ROOT}"))
    assert out.returncode == 0, out.stderr
    bad = subprocess.run([sys.executable, "-m", "localq", "rate-limit", "--db", app.path,
                          "sample_tasks.add", "lots"], capture_output=True, text=True,
                         timeout=30, env=dict(os.environ, PYTHONPATH=f"{HERE}:{ROOT}"))
    assert bad.returncode == 1 and "N/s" in bad.stderr
    results = [add.delay(i, 0) for i in range(6)]
    with app.worker(concurrency=2):
        t0 = time.monotonic()
        for r in results:
            r.get(timeout=30)
        assert time.monotonic() - t0 >= 1.0     # burst of 2, then 2 per second


def test_concurrency_cap_holds_across_workers(app, start_worker):
    from sample_tasks import capped  # max_concurrency=1
    out = app.path + ".runs"
    results = [capped.delay(out, i, 0.1) for i in range(8)]
    start_worker("-c", "2")
    start_worker("-c", "2")
    assert sorted(r.get(timeout=60) for r in results) == list(range(8))
    running = 0
    for kind, _, _, _ in sorted(lines(out), key=lambda x: float(x[2])):
        running += 1 if kind == "in" else -1
        assert running <= 1


def test_eta_starts_on_time_not_on_a_poll(app):
    from sample_tasks import add
    with app.worker(concurrency=1):
        add.delay(0, 0).get(timeout=10)
        for delay in (0.2, 0.4):
            t0 = time.time()
            r = add.apply_async((1, 1), countdown=delay)
            r.get(timeout=10)
            started = app.store.job(r.id)["started"]
            assert t0 + delay <= started < t0 + delay + 0.5


def test_revoke_terminate_kills_a_running_job(app):
    from sample_tasks import add, sleep_then
    with app.worker(concurrency=1):
        r = sleep_then.delay(60)
        wait_for(lambda: r.state == "STARTED", what="the job to start")
        t0 = time.monotonic()
        r.revoke(terminate=True)
        with pytest.raises(localq.TaskRevokedError):
            r.get(timeout=10)
        assert time.monotonic() - t0 < 2
        assert r.state == "REVOKED"
        assert add.delay(1, 1).get(timeout=10) == 2     # a new child took its place


@pytest.mark.parametrize("terminate", [False, True])
def test_a_job_revoked_after_it_was_claimed_but_before_it_started_never_runs(app, terminate):
    from sample_tasks import add, record, sleep_then
    out = app.path + ".runs"
    with app.worker(concurrency=1):
        for r in [add.delay(i, i) for i in range(300)]:   # fast jobs: the child prefetches
            r.get(timeout=20)
        eta = time.time() + 0.5          # due together: claimed and handed over together
        first = sleep_then.apply_async((1.0,), eta=eta, priority=9)
        second = record.apply_async((out, "second"), eta=eta)
        wait_for(lambda: second.state == "STARTED", what="the second job to be claimed")
        assert first.state == "STARTED"
        second.revoke(terminate=terminate)
        assert first.get(timeout=20) is None              # the running job finishes
        with pytest.raises(localq.TaskRevokedError):
            second.get(timeout=20)
    assert not os.path.exists(out), "a job revoked before it started ran"


def test_revocations_hold_across_worker_restarts(app):
    from sample_tasks import add
    r = add.delay(1, 1)
    app.control.revoke(r.id)
    with app.worker(concurrency=1):
        assert add.delay(2, 2).get(timeout=10) == 4
    assert r.state == "REVOKED"


def test_purge_deletes_waiting_jobs_and_says_how_many(app):
    from sample_tasks import add
    for i in range(5):
        add.delay(i, i)
    add.apply_async((1, 1), queue="other")
    env = dict(os.environ, PYTHONPATH=f"{HERE}:{ROOT}")
    refuse = subprocess.run([sys.executable, "-m", "localq", "purge", "--db", app.path],
                            capture_output=True, text=True, timeout=30, env=env,
                            stdin=subprocess.DEVNULL)
    assert refuse.returncode != 0 and "-f" in refuse.stderr
    out = subprocess.run([sys.executable, "-m", "localq", "purge", "--db", app.path,
                          "-Q", "default", "-f"], capture_output=True, text=True, timeout=30,
                         env=env)
    assert out.returncode == 0 and "purged 5" in out.stdout
    assert [s for _, _, s, _ in app.store.counts()] == ["PENDING"]


def test_status_shows_running_waiting_and_failing(app):
    from sample_tasks import add, boom, sleep_then
    with app.worker(concurrency=1):
        with pytest.raises(ValueError):
            boom.delay().get(timeout=10)
        r = sleep_then.delay(30)
        wait_for(lambda: r.state == "STARTED", what="the job to start")
        add.delay(1, 1)
        out = subprocess.run([sys.executable, "-m", "localq", "status", "--db", app.path],
                             capture_output=True, text=True, timeout=30,
                             env=dict(os.environ, PYTHONPATH=f"{HERE}:{ROOT}"))
        r.revoke(terminate=True)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "workers  1" in text and "sample_tasks.sleep_then" in text
    assert "running" in text and r.id in text
    assert "latest failures" in text and "ValueError" in text


def test_result_expires_deletes_old_results_in_the_background(app):
    from sample_tasks import add
    app.conf.result_expires = 0.5
    with app.worker(concurrency=1):
        old = add.delay(1, 1)
        assert old.get(timeout=10) == 2
        wait_for(lambda: app.store.job(old.id) is None, timeout=30, what="the result to expire")
        fresh = add.delay(2, 2)
        assert fresh.get(timeout=10) == 4


def test_a_limit_set_and_lifted_at_run_time_strands_no_job(app):
    from sample_tasks import add
    app.control.rate_limit("sample_tasks.add", "2/s")
    results = [add.delay(i, 0) for i in range(40)]
    with app.worker(concurrency=2):
        results[0].get(timeout=30)
        assert sum(r.state == "SUCCESS" for r in results) < 20     # throttled
        app.control.rate_limit("sample_tasks.add", None)           # back to no limit
        assert [r.get(timeout=30) for r in results] == list(range(40))


def test_scheduled_jobs_wait_apart_from_ready_ones(app):
    from sample_tasks import add
    later = [add.apply_async((i, 0), countdown=3600) for i in range(2000)]
    with app.worker(concurrency=2):
        assert [add.delay(i, 1).get(timeout=10) for i in range(100)] == \
            [i + 1 for i in range(100)]
        soon = add.apply_async((5, 5), countdown=0.2)
        assert soon.get(timeout=10) == 10
    assert set(app.store.states([r.id for r in later]).values()) == {"PENDING"}


def test_read_commands_never_create_a_database(tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{HERE}:{ROOT}")
    env.pop("LOCALQ_DB", None)
    for command in (["status"], ["show", "some-id"], ["purge", "-f"]):
        proc = subprocess.run([sys.executable, "-m", "localq", *command], cwd=tmp_path,
                              capture_output=True, text=True, timeout=30, env=env)
        assert proc.returncode == 1 and "no localq database" in proc.stderr
    assert list(tmp_path.iterdir()) == []
