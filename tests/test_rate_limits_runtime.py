"""Rate limits set at run time: no job is stranded, the rate holds, and the override
is visible in ``status`` and can be reset to the declared limit."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from conftest import HERE, ROOT

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
