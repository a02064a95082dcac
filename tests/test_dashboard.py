"""The dashboard's JSON API, /metrics, the action token, escaping, and the inspect and
events commands, through HTTP and the CLI against a live worker (real processes)."""
from __future__ import annotations

import json
import queue
import sqlite3
import subprocess
import sys
import threading
from typing import Any, Iterator

import pytest
import sample_tasks
from conftest import wait_for
from dashboard_proc import DashboardProcess

from localq.store import monitor

XSS = "<script>alert(1)</script>"


@pytest.fixture
def start_dashboard(db_path: str) -> Iterator:
    started: list[DashboardProcess] = []

    def start(*args: str) -> DashboardProcess:
        d = DashboardProcess(db_path, *args)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def live(app, start_worker, start_dashboard):
    worker = start_worker("--app", "dash_tasks:app", "-c", "2").ready()
    return worker, start_dashboard("--app", "dash_tasks:app")


def test_api_shows_the_worker_its_tasks_and_metrics(app, live):
    worker, dash = live
    ok = sample_tasks.add.delay(XSS, "!")
    bad = sample_tasks.boom.delay("went wrong")
    assert ok.get(timeout=20) == XSS + "!"
    with pytest.raises(ValueError):
        bad.get(timeout=20)
    long = sample_tasks.sleep_then.delay(30)

    def worker_row():
        ws = dash.get("/api/workers")
        w = next(iter(ws.values()), None)
        return w if w and w["processed"] >= 2 and any(c["id"] == long.id
                                                      for c in w["children"]) else None
    w = wait_for(worker_row, what="the worker's counts and running child")
    assert w["pid"] == worker.pid and w["concurrency"] == 2 and w["failed"] == 1
    assert sorted(c["pid"] for c in w["children"]) == sorted(worker.children())
    running = next(c for c in w["children"] if c["id"] == long.id)
    assert running["task"] == "sample_tasks.sleep_then" and running["rss"] > 0

    # Flower's shape: task id -> task, newest first; the next page's cursor in a header.
    assert list(dash.get("/api/tasks?limit=10")) == [long.id, bad.id, ok.id]
    assert list(dash.get("/api/tasks?state=FAILURE")) == [bad.id]
    named = dash.get("/api/tasks?taskname=sample_tasks.add")
    assert list(named) == [ok.id] and named[ok.id]["state"] == "SUCCESS"
    assert list(dash.get(f"/api/tasks?search={ok.id}")) == [ok.id]
    assert list(dash.get("/api/tasks?limit=1&offset=1")) == [bad.id]
    _, headers, body = dash.request("/api/tasks?limit=2")
    assert list(json.loads(body)) == [long.id, bad.id]
    rest = dash.get(f"/api/tasks?limit=2&before={headers['X-Localq-Next']}")
    assert list(rest) == [ok.id]
    assert dash.request("/api/tasks?before=x")[0] == 400

    info = dash.get(f"/api/task/info/{ok.id}")
    assert info["args"] == [XSS, "!"] and info["result"] == XSS + "!"
    assert info["state"] == "SUCCESS" and info["runtime"] >= 0
    failed = dash.get(f"/api/task/info/{bad.id}")
    assert failed["exception"].endswith("ValueError") and "went wrong" in failed["traceback"]
    assert dash.request("/api/task/info/no-such-id")[0] == 404

    assert dash.get("/api/queues/length") == {"active_queues": []}
    metrics = wait_for(lambda: (m := dash.request("/metrics")[2].decode()) and
                       'localq_tasks_total{task="sample_tasks.add",state="SUCCESS"} 1' in m
                       and m, what="metrics")
    assert 'localq_tasks_total{task="sample_tasks.boom",state="FAILURE"} 1' in metrics
    assert 'localq_task_runtime_seconds_count{task="sample_tasks.add"} 1' in metrics
    assert "localq_workers 1" in metrics
    assert sum(dash.get("/api/throughput")["succeeded"]) >= 1


def test_actions_need_the_pages_token(app, live):
    _, dash = live
    later = sample_tasks.add.apply_async((1, 2), countdown=600)
    form = b"terminate=false"
    cross_site = {"Content-Type": "application/x-www-form-urlencoded",
                  "Origin": "http://evil.example"}
    assert dash.request(f"/api/task/revoke/{later.id}", form, cross_site)[0] == 403
    assert dash.request(f"/api/task/revoke/{later.id}", b"token=guess", cross_site)[0] == 403
    assert later.state == "PENDING"
    status, _, body = dash.request(f"/api/task/revoke/{later.id}", form,
                                   {"X-Localq-Token": dash.token()})
    assert status == 200, body
    assert later.state == "REVOKED"


def test_retry_rate_limit_and_purge_through_the_api(app, live):
    _, dash = live
    token = {"X-Localq-Token": dash.token()}
    bad = sample_tasks.boom.delay("again")
    with pytest.raises(ValueError):
        bad.get(timeout=20)
    first_done = dash.get(f"/api/task/info/{bad.id}")["done"]
    assert dash.request(f"/api/task/retry/{bad.id}", b"", token)[0] == 200
    again = wait_for(lambda: (i := dash.get(f"/api/task/info/{bad.id}"))["state"] == "FAILURE"
                     and i["done"] != first_done and i, what="the retried task to fail again")
    assert [a["outcome"] for a in again["attempts"]] == ["FAILURE", "FAILURE"]   # type: ignore
    assert again["attempts"][0]["exc_message"] == "again"                        # type: ignore
    assert dash.request(f"/api/task/retry/{bad.id}x", b"", token)[0] == 409

    assert dash.request("/api/task/rate-limit/sample_tasks.add", b"ratelimit=5/s",
                        token)[0] == 200
    limits = dash.get("/api/queues")["limits"]
    assert {"task": "sample_tasks.add", "value": "5/s"}.items() <= next(
        r for r in limits if r["task"] == "sample_tasks.add").items()
    assert dash.request("/api/task/rate-limit/sample_tasks.add", b"ratelimit=fast",
                        token)[0] == 400

    for i in range(3):
        sample_tasks.add.apply_async((i, i), queue="nobody")
    assert dash.get("/api/queues/length") == {"active_queues": [{"name": "nobody",
                                                                 "messages": 3}]}
    status, _, body = dash.request("/api/queues/purge/nobody", b"", token)
    assert status == 200 and b"purged 3" in body
    assert dash.get("/api/queues/length") == {"active_queues": []}


def test_readonly_serves_no_actions_and_pages_carry_no_data(app, db_path, start_dashboard):
    job = sample_tasks.add.apply_async((XSS, 1), countdown=600)
    dash = start_dashboard("--readonly")
    assert dash.token() == ""
    status, _, _ = dash.request(f"/api/task/revoke/{job.id}", b"", {"X-Localq-Token": ""})
    assert status == 403 and job.state == "PENDING"
    status, headers, body = dash.request("/")
    # The page is a shell: data comes as JSON and is put in the page as text only.
    assert XSS.encode() not in body and b"<script>" not in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    status, headers, body = dash.request("/api/tasks")
    assert headers["Content-Type"].startswith("application/json")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert dash.request("/", headers={"Host": "attacker.example:5555"})[0] == 403


def test_basic_auth_and_the_warning_off_loopback(app, db_path, start_dashboard):
    app.store.workers()              # the file exists
    dash = start_dashboard("--basic-auth", "ann:s3cret")
    assert dash.url.startswith("http://127.0.0.1:")          # this host only, by default
    assert dash.request("/api/workers")[0] == 401
    assert dash.get("/api/workers", Authorization="Basic YW5uOnMzY3JldA==") == {}
    open_dash = start_dashboard("--address", "0.0.0.0")
    assert "WARNING" in open_dash.stderr() and "--basic-auth" in open_dash.stderr()
    assert "WARNING" not in dash.stderr()


def test_inspect_and_events(app, db_path, start_worker):
    app.store.workers()              # the file exists
    events = subprocess.Popen([sys.executable, "-m", "localq", "events", "--db", db_path],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert events.stdout is not None
    printed: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [printed.put(line) for line in events.stdout],  # type: ignore[union-attr]
                     daemon=True).start()
    lines: list[str] = []

    def next_line() -> str:
        try:
            lines.append(printed.get(timeout=30))
        except queue.Empty:
            raise AssertionError(f"events printed nothing for 30s after {lines}") from None
        return lines[-1]
    try:
        # Jobs sent before it has read where to start from are not its to show.
        assert next_line().startswith("-> localq events: watching ")
        start_worker("--app", "dash_tasks:app", "-c", "2").ready()
        long = sample_tasks.sleep_then.delay(30)
        quick = sample_tasks.add.delay(2, 3)
        assert quick.get(timeout=20) == 5

        def inspect(what: str, *flags: str) -> Any:
            out = subprocess.run([sys.executable, "-m", "localq", "inspect", what, *flags,
                                  "--db", db_path], capture_output=True, text=True,
                                 check=True).stdout
            return json.loads(out) if flags else out
        wait_for(lambda: any(j["id"] == long.id for jobs in inspect("active", "--json").values()
                             for j in jobs), what="inspect active to show the running job")
        stats = next(iter(inspect("stats", "--json").values()))
        assert stats["pool"]["max-concurrency"] == 2
        plain = inspect("active")                 # Celery's layout: -> name: OK, then items
        assert plain.startswith("-> localq@") and long.id in plain
        wait_for(lambda: "sample_tasks.add" in next(iter(
            inspect("registered", "--json").values())),
            what="the task's name among those counted in the file")
        later = sample_tasks.add.apply_async((1, 1), countdown=600)
        scheduled = next(iter(inspect("scheduled", "--json").values()))
        assert [s["request"]["id"] for s in scheduled] == [later.id]
        while not any("task-succeeded" in line and quick.id in line for line in lines):
            next_line()
        assert any("task-received" in line and quick.id in line for line in lines)
        assert any("task-started" in line and long.id in line for line in lines)
    finally:
        events.kill()
        events.wait(10)


def test_control_inspect_and_ping_answer_as_celerys_python_api(app):
    assert app.control.inspect().active() is None and app.control.ping() == []  # no worker
    with app.worker(concurrency=2):
        long = sample_tasks.sleep_then.delay(30)
        i = app.control.inspect()
        wait_for(lambda: any(j["id"] == long.id for jobs in (i.active() or {}).values()
                             for j in jobs), what="inspect().active() to show the running job")
        (name, jobs), = i.active().items()
        assert name.startswith("localq@") and jobs[0]["name"] == "sample_tasks.sleep_then"
        assert app.control.ping() == [{name: {"ok": "pong"}}]
        assert i.stats()[name]["pool"]["max-concurrency"] == 2
        assert app.control.inspect(destination=["localq@elsewhere:1"]).active() is None
        long.revoke(terminate=True)       # so that the worker stops at once
        wait_for(lambda: long.state == "REVOKED", what="the running job revoked")


def test_filtered_pages_look_at_a_bounded_window_and_go_on_by_key(app, monkeypatch):
    monkeypatch.setattr(monitor, "SCAN_WINDOW", 10)
    monkeypatch.setattr(monitor, "SCAN_BUDGET", 0)     # one window per page
    a = [sample_tasks.add.apply_async((i, 0), queue="a").id for i in range(25)]
    for i in range(30):
        sample_tasks.add.apply_async((i, 1), queue="b")
    found, before, pages = [], None, 0
    while True:
        rows, before = app.store.monitor.jobs_page(queue="a", limit=20, before=before)
        found += [r["id"] for r in rows]
        pages += 1
        if before is None:
            break
    assert found == a[::-1] and pages > 2
    monkeypatch.setattr(monitor, "SCAN_BUDGET", 10)    # a generous budget: one page
    rows, _ = app.store.monitor.jobs_page(queue="a", limit=5, offset=3)
    assert [r["id"] for r in rows] == a[::-1][3:8]
    rows, before = app.store.monitor.jobs_page(queue="a", limit=20)
    assert [r["id"] for r in rows] == a[::-1][:20]
    rows, before = app.store.monitor.jobs_page(queue="a", limit=20, offset=20)
    assert [r["id"] for r in rows] == a[::-1][20:] and before is None


def test_pages_answer_while_another_process_holds_the_write_lock(app, live, db_path):
    _, dash = live
    sample_tasks.add.delay(1, 1).get(timeout=20)
    locker = sqlite3.connect(db_path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")        # the write lock, held for the whole test
    try:
        for path in ("/api/workers", "/api/tasks?state=SUCCESS", "/api/queues", "/metrics",
                     "/api/throughput"):
            status, _, body = dash.request(path)  # waiting for the lock would time out
            assert status == 200, (path, body)
    finally:
        locker.execute("ROLLBACK")
        locker.close()


def strip_monitoring(con: sqlite3.Connection) -> None:
    """Make a database what localq wrote before the monitoring tables (schema 5)."""
    con.executescript("DROP TABLE IF EXISTS inboxes; "             # of schema 9
                      "DROP INDEX IF EXISTS jobs_group_results; "  # of schema 7
                      "DROP TABLE throughput; DROP TABLE task_totals; "
                      "ALTER TABLE workers DROP COLUMN processed; "
                      "ALTER TABLE workers DROP COLUMN failed; "
                      "ALTER TABLE workers DROP COLUMN children")


def test_a_file_of_the_previous_schema_gets_the_monitoring_tables(app, db_path, start_worker):
    app.store.workers()
    app.close()
    con = sqlite3.connect(db_path, isolation_level=None)
    strip_monitoring(con)
    con.execute("UPDATE localq_meta SET value = '5' WHERE key = 'schema_version'")
    con.close()
    start_worker("--app", "dash_tasks:app").ready()
    assert sample_tasks.add.delay(2, 2).get(timeout=20) == 4
    wait_for(lambda: [w["processed"] for w in app.store.monitor.workers()] == [1],
             what="the worker's count in the migrated file")


def test_counts_of_a_heartbeat_that_failed_go_with_the_next():
    from localq.store import records
    from localq.worker.tally import Tally
    tally = Tally()
    tally.note("t", records.succeeded(1, "1", 100.0, 100.002, 7))
    tally.note("t", records.failed(2, "e", "ValueError", None, 100.1, 100.5, 7, "no"))
    tally.note("t", records.put_back(3))                     # not run: not counted
    first = tally.report([])                                 # ... and its write failed
    tally.note("t", records.succeeded(4, "1", 101.0, 101.001, 7))
    second = tally.report([])
    assert second["processed"] == 3 and second["failed"] == 1
    assert second["seconds"] == [(100, 1, 1, 0), (101, 1, 0, 0)]
    assert ("t", "SUCCESS", 2) in second["totals"] and ("t", "le:0.5", 1) in second["totals"]
    assert first["processed"] == 2
    tally.written()
    assert tally.report([])["seconds"] == [] and tally.processed == 3
