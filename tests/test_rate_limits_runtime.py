"""Rate limits set at run time: no job is stranded, the rate holds, and the override
is visible in ``status`` and can be reset to the declared limit."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

from conftest import HERE, ROOT

from localq import Localq
from localq.limits import limits_in_force

ENV = dict(os.environ, PYTHONPATH=f"{HERE}:{ROOT}")
SETTLE = 0.5   # let the worker take the new limit in and go idle before any job comes


def assert_rate_held(results, since: float, burst: float, per_second: float) -> None:
    """The jobs' own start times: at most burst + rate * elapsed had started by each one.

    A job starts at or after its claim, and the bucket was full at ``since`` (before the
    limit was set), so the k-th start must satisfy k <= burst + rate * (start - since)."""
    starts = sorted(r.attempts[-1]["started"] for r in results)
    for k, started in enumerate(starts, 1):
        assert k <= burst + per_second * (started - since) + 1e-6, \
            f"job {k} of {len(starts)} started {started - since:.3f}s after the limit was set"


def localq_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "localq", *args], capture_output=True,
                          text=True, timeout=60, env=ENV)


def test_a_limit_set_at_run_time_on_an_idle_worker_runs_every_job(app):
    from sample_tasks import add  # no declared limit
    with app.worker(concurrency=2):
        since = time.time()
        app.control.rate_limit(add.name, "2/s")
        time.sleep(SETTLE)
        results = [add.delay(i, 0) for i in range(6)]     # then no other traffic at all
        assert [r.get(timeout=30) for r in results] == list(range(6))
    assert_rate_held(results, since, burst=2, per_second=2)


def test_a_limit_set_from_the_cli_on_a_running_worker_process_runs_every_job(app, start_worker):
    from sample_tasks import add
    start_worker("-c", "2").ready()
    since = time.time()
    out = localq_cli("rate-limit", "--app", "sample_tasks:app", "--db", app.path, add.name, "2/s")
    assert out.returncode == 0, out.stderr
    time.sleep(SETTLE)
    results = [add.delay(i, 1) for i in range(6)]
    assert [r.get(timeout=30) for r in results] == [i + 1 for i in range(6)]
    assert_rate_held(results, since, burst=2, per_second=2)


def test_a_delayed_job_of_a_task_limited_at_run_time_runs_when_due(app):
    from sample_tasks import add
    with app.worker(concurrency=2):
        app.control.rate_limit(add.name, "5/s")
        time.sleep(SETTLE)
        later = [add.apply_async((i, 0), countdown=0.5) for i in range(3)]
        assert [r.get(timeout=30) for r in later] == list(range(3))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_token_due_while_every_child_is_busy_does_not_spin_the_supervisor(app, start_worker):
    from sample_tasks import sleep_then
    app.control.rate_limit(sleep_then.name, "1/s")
    worker = start_worker("-c", "2").ready()
    before = cpu_seconds(worker.pid)
    # Two children busy for 4 s each while the next tokens come due (at 1/s): nothing to
    # do but wait for a child. A wake-up time left in the past would make the supervisor
    # loop without sleeping until then, seconds of CPU.
    results = [sleep_then.delay(4, i) for i in range(4)]
    assert [r.get(timeout=60) for r in results] == list(range(4))
    assert cpu_seconds(worker.pid) - before < 1.0


def status_line(db_path: str, task: str, *app_args: str) -> str:
    out = localq_cli("status", *app_args, "--db", db_path)
    assert out.returncode == 0, out.stderr
    found = [line for line in out.stdout.splitlines()
             if task in line and ("rate_limit" in line or "max_concurrency" in line)]
    assert len(found) == 1, out.stdout
    return found[0]


def test_status_shows_a_run_time_override_until_it_is_reset_to_the_declared_limit(app):
    from sample_tasks import limited  # rate_limit="10/s" on the task
    app.control.rate_limit(limited.name, "100/s")
    line = status_line(app.path, limited.name, "--app", "sample_tasks:app")
    assert "100/s" in line and "run-time override set" in line
    assert "in place of 10/s (declared on the task)" in line
    # without the app, the file still tells which overrides are in force
    assert "100/s" in status_line(app.path, limited.name)
    out = localq_cli("rate-limit", "--db", app.path, limited.name, "none")
    assert out.returncode == 0, out.stderr
    line = status_line(app.path, limited.name, "--app", "sample_tasks:app")
    assert "10/s" in line and "declared on the task" in line and "override" not in line


def test_status_says_where_each_limit_comes_from(app):
    from sample_tasks import add, capped
    app.control.rate_limit(add.name, 0)      # no limit, stated at run time
    line = status_line(app.path, add.name, "--app", "sample_tasks:app")
    assert "no limit" in line and "run-time override" in line and "in place of no limit" in line
    line = status_line(app.path, capped.name, "--app", "sample_tasks:app")
    assert "max_concurrency  1" in line and "declared on the task" in line
    app.conf.task_annotations = {add.name: {"rate_limit": "3/m"}}
    app.control.rate_limit(add.name, None)
    assert [(r["value"], r["source"]) for r in limits_in_force(app) if r["task"] == add.name] \
        == [("3/m", "task_annotations['sample_tasks.add']")]


def test_a_database_of_schema_1_gets_the_override_time_column(app):
    from sample_tasks import add
    app.control.rate_limit(add.name, "5/s")
    app.close()
    con = sqlite3.connect(app.path)     # make it what localq 1 wrote
    con.execute("ALTER TABLE rate_limits DROP COLUMN override_set")
    from test_canvas import strip_canvas
    strip_canvas(con)
    from test_dashboard import strip_monitoring
    strip_monitoring(con)
    con.execute("UPDATE localq_meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    app.control.rate_limit(add.name, "7/s")
    assert "7/s" in status_line(app.path, add.name)


def test_a_job_in_a_lane_the_worker_does_not_know_runs_without_other_traffic(
        app, start_worker):
    # A producer whose code declares a limit the worker's code does not (a deploy in
    # progress): its jobs go to the task's lane, which the worker finds only on a sweep.
    newer = Localq(app.path)

    @newer.task(name="sample_tasks.add", rate_limit="5/s")
    def add(x, y):
        return x + y

    try:
        start_worker("-c", "2").ready()
        results = [add.delay(i, 1) for i in range(3)]
        assert [r.get(timeout=30) for r in results] == [1, 2, 3]
    finally:
        newer.close()


def test_a_bucket_whose_time_lies_ahead_after_the_clock_went_back_still_refills(app):
    from sample_tasks import limited  # rate_limit="10/s"
    out = app.path + ".runs"
    with app.worker(concurrency=2):
        assert limited.delay(out, 0).get(timeout=30) == 0
        # What the bucket holds after the wall clock is set back an hour (no test can
        # move the clock): empty, updated "in the future".
        con = sqlite3.connect(app.path, timeout=60)
        with con:
            con.execute("UPDATE rate_limits SET tokens = 0, updated = ? WHERE task = ?",
                        (time.time() + 3600, limited.name))
        con.close()
        results = [limited.delay(out, i) for i in range(1, 4)]
        assert [r.get(timeout=30) for r in results] == [1, 2, 3]


def test_a_worker_says_at_start_which_override_beats_the_code(app, start_worker):
    from sample_tasks import add, limited  # limited: rate_limit="10/s"
    app.control.rate_limit(limited.name, "100/s")
    app.control.rate_limit(add.name, "5/s")
    worker = start_worker("-c", "1").ready()
    said = [line for line in worker.stderr().splitlines() if "set at run time" in line]
    assert len(said) == 2, worker.stderr()
    assert "100/s" in said[1] and "in place of 10/s (declared on the task)" in said[1]
    assert f"rate-limit {limited.name} none" in said[1]
    assert "5/s" in said[0] and "in place of no limit" in said[0]
