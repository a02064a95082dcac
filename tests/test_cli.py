"""``python -m localq``: bad input, output for people and scripts, revoke, pipes.

Every command runs as a real process on a real database in tmp_path.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import sample_tasks
from conftest import HERE, ROOT, pid_alive, wait_for

import localq


def cli(*args: str, cwd: Path | str | None = None, **env: str) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]), **env)
    return subprocess.run([sys.executable, "-m", "localq", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=120)


def one_line_error(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr.strip()


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("flag, value, says", [
    ("--time-limit", "-1", "above 0"),
    ("--soft-time-limit", "0", "above 0"),
    ("-c", "-2", "1 or more"),
    ("-c", "0", "1 or more"),
    ("-c", "two", "not a whole number"),
    ("--max-tasks-per-child", "0", "1 or more"),
    ("-l", "bogus", "DEBUG, INFO, WARNING"),
])
def test_bad_worker_flags_are_one_line_usage_errors(db_path, flag, value, says):
    proc = cli("worker", "-A", "sample_tasks:app", flag, value, LOCALQ_DB=db_path)
    line = one_line_error(proc)
    assert f"argument {flag}" in line or flag in line.split("argument ")[1], line
    assert says in line
    assert not os.path.exists(db_path)          # nothing was started or created


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "tasks.py").write_text(textwrap.dedent("""
        from localq import Localq

        app = Localq("jobs.db")

        @app.task
        def echo(x):
            return x
    """))
    return tmp_path


def test_app_naming_a_task_says_it_is_not_an_app(project):
    line = one_line_error(cli("worker", "--app", "tasks:echo", cwd=project))
    assert "tasks:echo is a task (tasks.echo), not a Localq app" in line
    assert "--app tasks:app" in line


def test_app_given_as_a_file_suggests_the_module(project):
    line = one_line_error(cli("status", "--app", "tasks.py", cwd=project))
    assert "--app tasks" in line and "not a file" in line


def test_app_in_a_missing_module_says_what_to_do(project):
    line = one_line_error(cli("worker", "--app", "taskz:app", cwd=project))
    assert "no module named 'taskz'" in line and "PYTHONPATH" in line


def test_app_with_a_wrong_attribute_names_the_apps_there(project):
    line = one_line_error(cli("worker", "--app", "tasks:ap", cwd=project))
    assert "no attribute 'ap'" in line and "its Localq apps: app" in line


def test_rate_limit_help_says_what_0_and_none_mean():
    out = " ".join(cli("rate-limit", "--help").stdout.split())
    assert "0: no limit at all" in out
    assert "none: back to the task's declared rate_limit" in out


# ------------------------------------------------------------------ revoke

def test_revoking_an_unknown_id_says_so_and_stays_out_of_status(app, db_path):
    sample_tasks.add.delay(1, 2)
    proc = cli("revoke", "--db", db_path, "bogus-id")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ("bogus-id: unknown id, recorded as revoked "
                                   "(a job sent with it never runs)")
    status = json.loads(cli("status", "--db", db_path, "--json").stdout)
    assert [t["task"] for t in status["tasks"]] == ["sample_tasks.add"]
    assert status["jobs"]["REVOKED"] == 0 and status["revoked_unknown_ids"] == 1
    text = cli("status", "--db", db_path).stdout
    assert "revoked 0" in text
    assert not [line for line in text.splitlines() if line.startswith("  ") and "   1" in line
                and "sample_tasks.add" not in line]


def test_revoke_terminate_prints_the_final_state(app, db_path, start_worker):
    worker = start_worker("-c", "1").ready()
    r = sample_tasks.sleep_then.delay(60)
    wait_for(lambda: r.state == "STARTED", what="the job to start")
    proc = cli("revoke", "--db", db_path, "--terminate", r.id)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{r.id}: REVOKED"
    assert worker.proc.poll() is None


# ------------------------------------------------------------------ status and show

def test_status_prints_full_names_and_json(app, db_path):
    names = ["tasks.report_for_customer_accounts_quarterly_v1",
             "tasks.report_for_customer_accounts_quarterly_v2"]
    for queue in ("priority.high", "priority.higher"):
        for name in names:
            app.send_task(name, (), queue=queue)
    text = cli("status", "--db", db_path).stdout
    assert f"database {os.path.abspath(db_path)}" in text.splitlines()[0]
    rows = [line.split()[:2] for line in text.splitlines() if line.startswith("priority.")]
    assert sorted(rows) == sorted([q, n] for q in ("priority.high", "priority.higher")
                                  for n in names)
    data = json.loads(cli("status", "--db", db_path, "--json").stdout)
    assert set(data) >= {"database", "workers", "jobs", "tasks", "running", "failures"}
    assert data["database"] == os.path.abspath(db_path)
    assert data["jobs"]["PENDING"] == 4 and data["workers"] == []
    assert {(t["queue"], t["task"], t["jobs"]["PENDING"]) for t in data["tasks"]} == {
        (q, n, 1) for q in ("priority.high", "priority.higher") for n in names}


def test_show_json(app, db_path):
    with app.worker(concurrency=1):
        ok = sample_tasks.add.delay(2, 3)
        assert ok.get(timeout=20) == 5
        bad = sample_tasks.boom.delay("no")
        with pytest.raises(ValueError):
            bad.get(timeout=20)
    job = json.loads(cli("show", "--db", db_path, ok.id, "--json").stdout)
    assert job["id"] == ok.id and job["state"] == "SUCCESS" and job["result"] == 5
    assert job["task"] == "sample_tasks.add" and job["error"] is None
    assert [a["outcome"] for a in job["attempts"]] == ["SUCCESS"]
    job = json.loads(cli("show", "--db", db_path, bad.id, "--json").stdout)
    assert job["state"] == "FAILURE" and "no" in job["error"]
    assert "ValueError" in job["traceback"]


def test_call_sends_by_name_and_result_prints_it_as_celery_does(app, db_path):
    sent = cli("call", "--db", db_path, "sample_tasks.add", "-a", "[2, 3]")
    assert sent.returncode == 0, sent.stderr
    job_id = sent.stdout.strip()
    bad = cli("call", "--db", db_path, "sample_tasks.add", "--args", "[2]", "--countdown", "0.1")
    with app.worker(concurrency=1):
        assert app.AsyncResult(job_id).get(timeout=20) == 5
        done = cli("result", "--db", db_path, job_id, "--timeout", "20")
        assert (done.returncode, done.stdout) == (0, "5\n"), done.stderr
        failed = cli("result", "--db", db_path, bad.stdout.strip(), "--timeout", "20")
    assert "ended FAILURE: TypeError" in one_line_error(failed, 1)
    tb = cli("result", "--db", db_path, bad.stdout.strip(), "--traceback")
    assert "Traceback" in tb.stdout and "TypeError" in tb.stdout
    assert "no job nope" in one_line_error(cli("result", "--db", db_path, "nope"), 1)


def test_call_with_arguments_that_are_not_json_says_so_and_sends_nothing(app, db_path):
    assert "--args is not JSON" in one_line_error(
        cli("call", "--db", db_path, "sample_tasks.add", "-a", "2, 3"))
    assert "--kwargs must be a JSON object, not list" in one_line_error(
        cli("call", "--db", db_path, "sample_tasks.add", "-k", "[1]"))
    assert "not an ISO 8601" in one_line_error(
        cli("call", "--db", db_path, "sample_tasks.add", "--eta", "tomorrow"))
    assert not os.path.exists(db_path)        # nothing was sent: not even the file is made


def test_status_into_a_closed_pipe_exits_quietly(app, db_path):
    for i in range(50):
        app.send_task(f"tasks.t{i}", ())
    r, w = os.pipe()
    os.close(r)                         # `| head -1` that has already gone
    try:
        proc = subprocess.run([sys.executable, "-m", "localq", "status", "--db", db_path],
                              stdout=w, stderr=subprocess.PIPE, text=True, timeout=120,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    finally:
        os.close(w)
    assert proc.stderr == ""
    assert proc.returncode == 141


# ------------------------------------------------------------------ waiting, sockets

def test_get_without_a_worker_warns_once_naming_the_file(app, db_path):
    r = sample_tasks.add.delay(1, 1)
    with pytest.warns(RuntimeWarning, match=f"no localq worker is running on {db_path}"):
        with pytest.raises(localq.TimeoutError):
            r.get(timeout=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(localq.TimeoutError):
            r.get(timeout=0.05)
    with app.worker(concurrency=1):
        assert r.get(timeout=20) == 2


def test_get_with_a_worker_or_a_final_job_does_not_warn(app):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with app.worker(concurrency=1):
            r = sample_tasks.add.delay(1, 1)
            assert r.get(timeout=20) == 2
        assert r.get(timeout=1) == 2          # finished: nothing to wait for


def test_get_of_a_job_in_a_queue_no_worker_takes_warns_naming_the_queue(app):
    with app.worker(concurrency=1):      # takes "default" only
        r = sample_tasks.add.apply_async((1, 1), queue="celery")    # Celery's default name
        with pytest.warns(RuntimeWarning, match="no localq worker on .* takes queue 'celery' "
                          r"\(they take: default\).*-Q celery"):
            with pytest.raises(localq.TimeoutError):
                r.get(timeout=0.05)
        with warnings.catch_warnings():      # once per queue
            warnings.simplefilter("error")
            with pytest.raises(localq.TimeoutError):
                r.get(timeout=0.05)
    with app.worker(concurrency=1, queues=["celery"]):
        assert r.get(timeout=20) == 2


def test_revoke_leaves_no_unclosed_socket(tmp_path):
    script = textwrap.dedent(f"""
        import gc
        import localq

        app = localq.Localq({str(tmp_path / "jobs.db")!r})
        try:
            app.AsyncResult("x").get(timeout=0.01)    # a waiter's bell: revoke rings it
        except localq.TimeoutError:
            pass
        for i in range(3):
            app.control.revoke(f"id-{{i}}")
            gc.collect()
        print("done")                                  # and no app.close(): exit closes it
    """)
    proc = subprocess.run([sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-W",
                           "ignore::RuntimeWarning", "-c", script], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0 and proc.stdout == "done\n", proc.stderr
    assert "ResourceWarning" not in proc.stderr and "unclosed" not in proc.stderr, proc.stderr


# ------------------------------------------------------------------ Celery's order

def test_app_before_the_command_as_celery_takes_it(app, db_path):
    sample_tasks.add.delay(1, 2)
    for argv in (["--app=sample_tasks:app", "status", "--json"],
                 ["-A", "sample_tasks:app", "status", "--json"],
                 ["status", "--app", "sample_tasks:app", "--json"]):
        proc = cli(*argv, LOCALQ_DB=db_path)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["database"] == db_path, argv


def test_the_localq_console_script_is_installed_beside_python(app, db_path):
    sample_tasks.add.delay(1, 2)
    script = Path(sys.executable).parent / "localq"       # pyproject's [project.scripts]
    proc = subprocess.run([str(script), "--app=sample_tasks:app", "status", "--json"],
                          env=dict(os.environ, LOCALQ_DB=db_path,
                                   PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)])),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout)["database"] == db_path, \
        proc.stderr


def test_worker_without_app_anywhere_is_one_line_saying_both_places(db_path):
    line = one_line_error(cli("worker", "-l", "INFO", LOCALQ_DB=db_path))
    assert "--app=tasks:app worker" in line and "worker -A tasks:app" in line


def test_worker_in_celerys_order_with_pidfile_logfile_hostname_and_O_fair(app, db_path,
                                                                       tmp_path):
    pidfile, logfile = tmp_path / "w.pid", tmp_path / "w.log"
    env = dict(os.environ, LOCALQ_DB=db_path,
               PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "localq", "--app=sample_tasks:app", "worker", "-l", "INFO",
         "-c", "1", "-n", "w1@%h", "--pidfile", str(pidfile), "--logfile", str(logfile),
         "-O", "fair"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        wait_for(lambda: "localq worker ready" in logfile.read_text()
                 if logfile.exists() else False, what="the worker's log")
        assert pidfile.read_text().strip() == str(proc.pid)
        assert pidfile.stat().st_mode & 0o777 == 0o600
        assert logfile.stat().st_mode & 0o777 == 0o600
        assert sample_tasks.add.delay(2, 2).get(timeout=30) == 4
        assert "Task sample_tasks.add" in logfile.read_text()      # -l INFO applied
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    assert not pidfile.exists()                                    # removed: it was ours


def test_a_pidfile_held_by_a_live_process_is_refused_and_left_alone(db_path, tmp_path):
    pidfile = tmp_path / "w.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    line = one_line_error(cli("worker", "-A", "sample_tasks:app", "--pidfile", str(pidfile),
                              LOCALQ_DB=db_path), code=1)
    assert f"names process {os.getpid()}, which is running" in line
    assert pidfile.read_text() == f"{os.getpid()}\n"


def test_detach_runs_in_the_background_until_stopped_by_its_pid(app, db_path, tmp_path):
    pidfile, logfile = tmp_path / "d.pid", tmp_path / "d.log"
    proc = cli("worker", "-A", "sample_tasks:app", "-D", "--pidfile", str(pidfile),
               "--logfile", str(logfile), "-c", "1", LOCALQ_DB=db_path)
    assert proc.returncode == 0, proc.stderr
    pid = int(pidfile.read_text())
    assert f"pid {pid}" in proc.stdout
    try:
        assert sample_tasks.add.delay(3, 4).get(timeout=30) == 7
        # a session of its own, of which it is not the leader (it forked twice)
        assert os.getsid(pid) not in (os.getsid(0), pid)
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pid_alive(pid), what="the detached worker to stop")
    assert not pidfile.exists()
    assert f"localq worker (pid {pid})" in logfile.read_text()      # its banner, logged
    assert one_line_error(cli("worker", "-A", "sample_tasks:app", "-D", LOCALQ_DB=db_path)) \
        .endswith("(kill $(cat PATH))")


def test_celeryd_log_level_in_the_config_is_the_workers_level(tmp_path):
    (tmp_path / "loud.py").write_text(textwrap.dedent("""
        import logging
        from localq import Localq

        app = Localq("jobs.db")
        app.config_from_object({"CELERYD_LOG_LEVEL": "DEBUG"})

        @app.task
        def chatty():
            logging.getLogger("loud").debug("a debug line from the task")
    """))
    logfile = tmp_path / "w.log"
    proc = subprocess.Popen([sys.executable, "-m", "localq", "worker", "-A", "loud:app",
                             "-c", "1", "--logfile", str(logfile)], cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_for(lambda: logfile.exists() and "localq worker ready" in logfile.read_text(),
                 what="the worker (its ready line is INFO: DEBUG includes it)")
        sys.path.insert(0, str(tmp_path))
        try:
            import loud
        finally:
            sys.path.remove(str(tmp_path))
        loud.app.path = tmp_path / "jobs.db"
        loud.chatty.delay().get(timeout=30)
        loud.app.close()
        del sys.modules["loud"]
        assert "a debug line from the task" in logfile.read_text()
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_celery_worker_command_line_starts_as_it_is(app, start_worker):
    w = start_worker("-E", "--without-gossip", "--without-mingle", "--without-heartbeat",
                     "-P", "prefork", "--autoscale=3,1", "--prefetch-multiplier", "1").ready()
    assert sample_tasks.add.delay(1, 2).get(timeout=20) == 3
    err = w.stderr()
    assert "concurrency=3" in err
    assert err.count("localq ignores these Celery flags") == 1
    assert "--without-gossip (there is no cluster" in err and "--autoscale (it keeps 3" in err
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0


def test_a_pool_localq_cannot_run_is_refused_in_one_line(db_path):
    err = one_line_error(cli("worker", "--app", "sample_tasks:app", "--db", db_path,
                             "-P", "gevent"))
    assert "child processes only" in err and "'gevent'" in err
    solo = cli("beat", "--app", "sample_tasks:app", "--db", db_path, "-s", "x", "--list")
    assert solo.returncode == 0, solo.stderr
