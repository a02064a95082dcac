"""Celery's idioms through real workers: shared_task, send_task, autodiscover_tasks,
signals (each in the process Celery sends it in), the app's on_after_configure,
update_state with custom states, retry with new arguments, the request's hostname and
eta, AsyncResult's args/kwargs/forget/wait/traceback, get() inside a task and
allow_join_result, Ignore and Reject (and the final states localq gives them where
Celery leaves the job in limbo), ResultSet, and the before_start hook.

What runs in a worker's child reports to a file the test reads (a pid, a line).
"""
from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import wait_for

from localq import Ignore, Localq, Reject, Task, chain, chord, group, shared_task, signals
from localq.result import allow_join_result, denied_join_result

app = Localq(main="test_celery_idioms")


def note(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def lines(path: Path | str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


@shared_task
def shared_add(x: int, y: int) -> int:
    return x + y


@shared_task(bind=True, name="idioms.shared_who")
def shared_who(self: Task) -> str:
    return self.name


@app.task(name="idioms.echo")
def echo(x: Any) -> Any:
    return x


@app.task(name="idioms.fail")
def fail() -> None:
    raise KeyError("nope")


@app.task(bind=True, name="idioms.progress")
def progress(self: Task, gate: str) -> str:
    self.update_state(state="PROGRESS", meta={"done": 1, "total": 2})
    while not os.path.exists(gate):       # the test looks at the state, then opens the gate
        time.sleep(0.01)
    return "finished"


@app.task(bind=True, name="idioms.countdown", max_retries=5, default_retry_delay=0)
def countdown_task(self: Task, n: int, label: str = "start") -> str:
    if n > 0:
        raise self.retry(args=(n - 1,), kwargs={"label": f"from {n}"})
    return f"{n} {label} {self.request.retries}"


@app.task(bind=True, name="idioms.request")
def request_info(self: Task) -> list:
    return [self.request.hostname, self.request.eta]


@app.task(bind=True, name="idioms.waits")
def waits_on_another(self: Task) -> str:
    try:
        echo.delay(1).get(timeout=5)
    except RuntimeError as exc:
        return str(exc)
    return "waited"


@app.task(name="idioms.slow")
def slow(started: str) -> None:
    Path(started).touch()
    time.sleep(60)


@pytest.fixture
def worker_app(tmp_path: Path) -> Iterator[Localq]:
    app.path = tmp_path / "jobs.db"
    app.set_current()
    try:
        yield app
    finally:
        app.close()


# ------------------------------------------------------------------ shared_task, send_task

def test_shared_task_binds_to_the_app_in_use(worker_app):
    assert shared_add.name in worker_app.tasks and "idioms.shared_who" in worker_app.tasks
    late = Localq(worker_app.path)                 # an app made after the decorator
    assert shared_add.name in late.tasks
    worker_app.set_current()
    with worker_app.worker(concurrency=1):
        assert shared_add.delay(2, 3).get(timeout=30) == 5
        assert shared_who.apply_async().get(timeout=30) == "idioms.shared_who"
    assert shared_add(1, 1) == 2                      # called directly, as a function
    late.close()


def test_send_task_by_name_of_a_task_this_process_does_not_define(worker_app, tmp_path):
    producer = Localq(worker_app.path)              # knows no tasks at all
    result = producer.send_task("idioms.echo", args=["hi"], kwargs={}, countdown=0.01,
                                priority=5)
    with worker_app.worker(concurrency=1):
        assert result.get(timeout=30) == "hi"
    assert result.name == "idioms.echo" and result.args == ("hi",) and result.kwargs == {}
    producer.close()


def test_autodiscover_tasks_imports_each_packages_tasks_lazily(tmp_path, monkeypatch):
    for pkg in ("disc_a", "disc_b"):
        folder = tmp_path / "src" / pkg
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text("")
    (tmp_path / "src" / "disc_a" / "tasks.py").write_text(textwrap.dedent("""
        from localq import shared_task

        @shared_task(name="disc_a.hello")
        def hello():
            return "hello from disc_a"
    """))                                        # disc_b has no tasks module: skipped
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    disc = Localq(tmp_path / "jobs.db")
    try:
        disc.autodiscover_tasks(["disc_a", "disc_b"])
        assert "disc_a.tasks" not in sys.modules       # lazy, as in Celery
        with disc.worker(concurrency=1):               # the worker finalizes the app
            assert "disc_a.hello" in disc.tasks
            assert disc.send_task("disc_a.hello").get(timeout=30) == "hello from disc_a"
    finally:
        disc.close()
        for name in [m for m in sys.modules if m.startswith("disc_")]:
            del sys.modules[name]


def test_on_after_configure_runs_once_before_the_worker_starts(tmp_path):
    made = Localq(tmp_path / "jobs.db")
    seen: list[Any] = []

    @made.on_after_configure.connect
    def configured(sender: Localq, **kwargs: Any) -> None:
        seen.append(("configure", sender, kwargs["source"] is sender.conf))

        @sender.task(name="idioms.defined_late")
        def defined_late() -> str:
            return "late"

    made.on_after_finalize.connect(lambda sender, **kw: seen.append(("finalize", sender)))
    assert seen == []
    with made.worker(concurrency=1):
        assert made.send_task("idioms.defined_late").get(timeout=30) == "late"
    assert seen == [("configure", made, True), ("finalize", made)]
    made.close()


# ------------------------------------------------------------------ signals

SIGNAL_NAMES = ("task_prerun", "task_postrun", "task_success", "task_failure",
                "worker_init", "worker_ready", "worker_shutdown", "worker_process_init",
                "worker_process_shutdown")


def test_signals_fire_in_the_process_celery_sends_them_in(worker_app, tmp_path):
    log = str(tmp_path / "signals.log")
    published: list[tuple] = []

    def record(signal: Any, sender: Any, **kwargs: Any) -> None:
        extra = ""
        if signal.name == "task_success":
            extra = repr(kwargs["result"])
        elif signal.name == "task_failure":
            extra = f"{type(kwargs['exception']).__name__} {kwargs['task_id']} " \
                    f"{kwargs['einfo'].type.__name__}"
        elif signal.name == "task_postrun":
            extra = f"{kwargs['state']} {kwargs['task_id']}"
        elif signal.name == "worker_process_shutdown":
            extra = str(kwargs["pid"] == os.getpid())
        name = getattr(sender, "name", None) if signal.name.startswith("task_") else ""
        note(log, f"{signal.name} {os.getpid()} {name} {extra}".rstrip())

    receivers = [(getattr(signals, name), record) for name in SIGNAL_NAMES]
    for sig, receiver in receivers:
        sig.connect(receiver)

    @signals.before_task_publish.connect(sender="idioms.echo")
    def before(sender: str, headers: dict, body: tuple, routing_key: str, **kw: Any) -> None:
        published.append(("before", sender, headers["task"], body[0], routing_key))

    @signals.after_task_publish.connect
    def after(sender: str, headers: dict, **kw: Any) -> None:
        published.append(("after", sender, headers["id"]))

    try:
        with worker_app.worker(concurrency=2) as w:
            ok = echo.delay(7)
            bad = fail.delay()
            assert ok.get(timeout=30) == 7
            bad.get(timeout=30, propagate=False)
            supervisor = w.pid
        children = {int(line.split()[1]) for line in lines(log)
                    if line.startswith("worker_process_init")}
    finally:
        for sig, receiver in receivers:
            sig.disconnect(receiver)
        assert signals.before_task_publish.disconnect(before, sender="idioms.echo")
        assert signals.after_task_publish.disconnect(after)
    got = lines(log)
    # each child ran worker_process_init once, in itself (not the supervisor)
    assert len(children) == 2 and supervisor not in children, got
    assert sum(line.startswith("worker_process_init") for line in got) == 2
    for name in ("worker_init", "worker_ready", "worker_shutdown"):
        assert [line.split()[1] for line in got if line.startswith(name + " ")] \
            == [str(supervisor)], name
    by_child = {line.split()[1] for line in got if line.startswith("task_")}
    assert by_child <= {str(p) for p in children}, got     # task signals in the children
    assert f"task_success {ok_pid(got, 'idioms.echo')} idioms.echo 7" in got
    assert any(line.endswith(f"idioms.fail KeyError {bad.id} KeyError") for line in got)
    assert any(f"idioms.echo SUCCESS {ok.id}" in line for line in got)
    assert any(f"idioms.fail FAILURE {bad.id}" in line for line in got)
    assert sum(line.startswith("task_prerun") for line in got) == 2
    assert sum(line.startswith("worker_process_shutdown") and line.endswith("True")
               for line in got) == 2
    # publish signals in this process; sender="idioms.echo" filtered out idioms.fail
    assert published == [("before", "idioms.echo", "idioms.echo", (7,), "default"),
                         ("after", "idioms.echo", ok.id), ("after", "idioms.fail", bad.id)]


def ok_pid(got: list[str], task: str) -> str:
    return next(line.split()[1] for line in got if line.startswith("task_prerun")
                and line.split()[2] == task)


def test_task_retry_and_task_revoked_signals(worker_app, tmp_path):
    log = str(tmp_path / "signals.log")

    def on_retry(sender: Any, request: Any, reason: Any, **kw: Any) -> None:
        note(log, f"retry {os.getpid()} {sender.name} {request.id} {reason!r}")

    def on_revoked(sender: Any, request: Any, terminated: bool, expired: bool,
                   **kw: Any) -> None:
        note(log, f"revoked {os.getpid()} {sender.name} {request.id} {terminated} {expired}")

    signals.task_retry.connect(on_retry)
    signals.task_revoked.connect(on_revoked)
    try:
        with worker_app.worker(concurrency=1) as w:
            r = countdown_task.delay(1)
            assert r.get(timeout=30) == "0 from 1 1"
            job = slow.delay(str(tmp_path / "started"))
            wait_for((tmp_path / "started").exists, what="the slow job to run")
            job.revoke(terminate=True)
            with pytest.raises(Exception):
                job.get(timeout=30)
            supervisor = w.pid
    finally:
        signals.task_retry.disconnect(on_retry)
        signals.task_revoked.disconnect(on_revoked)
    got = lines(log)
    assert any(line.startswith("retry ") and f"idioms.countdown {r.id} Retry" in line
               for line in got), got
    assert f"revoked {supervisor} idioms.slow {job.id} True False" in got, got


# ------------------------------------------------------------------ results and requests

def test_update_state_is_readable_from_another_process_while_the_job_runs(worker_app,
                                                                          tmp_path):
    gate = tmp_path / "gate"
    with worker_app.worker(concurrency=1):
        r = progress.delay(str(gate))
        wait_for(lambda: r.state == "PROGRESS", what="the PROGRESS state")
        other = Localq(worker_app.path).AsyncResult(r.id)    # another reader
        assert other.state == "PROGRESS"
        assert other.info == {"done": 1, "total": 2} == r.result
        gate.touch()
        assert r.get(timeout=30) == "finished"
    assert r.state == "SUCCESS" and r.info == "finished"
    other.app.close()


def test_update_state_refuses_the_states_localq_records(worker_app):
    with pytest.raises(ValueError, match="PROGRESS"):
        echo.update_state(task_id="x", state="SUCCESS", meta={})


def test_retry_with_new_arguments_runs_the_next_attempt_with_them(worker_app):
    with worker_app.worker(concurrency=1):
        r = countdown_task.delay(3)
        assert r.get(timeout=30) == "0 from 1 3"
    assert r.args == (0,) and r.kwargs == {"label": "from 1"}
    assert [a["outcome"] for a in r.attempts] == ["RETRY", "RETRY", "RETRY", "SUCCESS"]


def test_retry_with_new_arguments_in_eager_mode(worker_app):
    assert countdown_task.apply(args=(2,)).get() == "0 from 1 2"


def test_request_carries_the_worker_hostname_and_the_eta(worker_app):
    from datetime import datetime
    with worker_app.worker(concurrency=1, hostname="w1@%h"):
        host, none = request_info.delay().get(timeout=30)
        eta = time.time() + 0.2
        _, when = request_info.apply_async(eta=eta).get(timeout=30)
    import socket
    assert host == f"w1@{socket.gethostname()}" and none is None
    assert abs(datetime.fromisoformat(when).timestamp() - eta) < 0.001


def test_get_inside_a_task_raises_instead_of_deadlocking_one_child(worker_app):
    with worker_app.worker(concurrency=1):
        said = waits_on_another.delay().get(timeout=30)
    assert said.startswith("Never call result.get() within a task")
    assert "disable_sync_subtasks=False" in said


def test_async_result_forget_wait_traceback(worker_app):
    with worker_app.worker(concurrency=1):
        ok, bad = echo.delay({"a": 1}), fail.delay()
        assert ok.wait(timeout=30) == {"a": 1}
        assert isinstance(bad.get(timeout=30, propagate=False), KeyError)
    assert "KeyError: 'nope'" in bad.traceback and isinstance(bad.info, KeyError)
    assert ok.name == "idioms.echo" and ok.args == ({"a": 1},) and ok.kwargs == {}
    ok.forget()
    assert ok.state == "PENDING" and ok.result is None


def test_a_database_from_before_custom_states_gets_the_task_states_table(worker_app, tmp_path):
    import sqlite3
    echo.delay(1)
    worker_app.close()
    con = sqlite3.connect(worker_app.path)       # make it what the previous version wrote
    con.execute("DROP TABLE task_states")
    from test_dashboard import strip_monitoring  # and of every later version
    strip_monitoring(con)
    con.execute("UPDATE localq_meta SET value = '4' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    gate = tmp_path / "gate"
    with worker_app.worker(concurrency=1):
        r = progress.delay(str(gate))
        wait_for(lambda: r.state == "PROGRESS", what="the PROGRESS state")
        gate.touch()
        assert r.get(timeout=30) == "finished"


@app.task(bind=True, name="idioms.bad_meta")
def bad_meta(self: Task) -> str:
    try:
        self.update_state(state="PROGRESS", meta={"seen": {1, 2}})
    except TypeError as exc:              # EncodeError is a TypeError
        return str(exc)
    return "encoded"


@app.task(bind=True, name="idioms.bad_retry", max_retries=3)
def bad_retry(self: Task) -> None:
    raise self.retry(args=({1, 2},), countdown=0)


def test_bad_meta_or_retry_arguments_are_one_clear_error(worker_app):
    with worker_app.worker(concurrency=1):
        said = bad_meta.delay().get(timeout=30)
        failed = bad_retry.delay()
        exc = failed.get(timeout=30, propagate=False)
    assert "idioms.bad_meta.update_state(state='PROGRESS')" in said and "json" in said
    assert type(exc).__name__ == "EncodeError" and "positional argument 0" in str(exc)
    assert failed.state == "FAILURE" and failed.args == ()     # the old arguments, kept


def test_a_signal_handler_that_raises_is_logged_and_the_job_succeeds(worker_app, tmp_path):
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("handler bug")

    signals.task_prerun.connect(broken)
    signals.worker_ready.connect(broken)
    try:
        with worker_app.worker(concurrency=1, loglevel="CRITICAL"):
            assert echo.delay(5).get(timeout=30) == 5
    finally:
        signals.task_prerun.disconnect(broken)
        signals.worker_ready.disconnect(broken)
    assert signals.task_prerun.send(echo) == []


@app.task(bind=True, name="idioms.retry_eta", max_retries=1)
def retry_eta(self: Task) -> Any:
    if self.request.retries == 0:
        raise self.retry(countdown=0.2)
    return self.request.eta


def test_request_eta_of_a_retried_attempt_is_its_retry_time(worker_app):
    from datetime import datetime
    with worker_app.worker(concurrency=1):
        sent = time.time()
        eta = datetime.fromisoformat(retry_eta.delay().get(timeout=30)).timestamp()
    assert sent + 0.2 <= eta <= time.time()


def test_a_state_report_is_guarded_like_an_outcome(worker_app):
    """Only the worker that owns a running job sets its custom state; it shows only
    while that attempt runs, and forget() deletes it with the job."""
    from localq.store import records
    from localq.worker import protocol
    store = worker_app.store
    r = echo.delay(1)
    now = time.time()
    owner = store.register_worker(os.getpid(), None, "h", ["default"], 1, now)
    other = store.register_worker(os.getpid(), None, "h", ["default"], 1, now)
    with store.transaction() as tx:
        (job,) = tx.claim(owner, "default", 1, now)
        tx.set_task_states(other, [(job.seq, "PROGRESS", '{"by": "other"}')], now)
    assert r.state == "STARTED" and r.info is None          # not the owner: dropped
    seq, state, meta = protocol.task_state(protocol.state_message(job.seq, "PROGRESS",
                                                                  '{"by": "owner"}'))
    with store.transaction() as tx:
        tx.set_task_states(owner, [(seq, state, meta)], now)
    assert r.state == "PROGRESS" and r.info == {"by": "owner"}
    store.finish(owner, [records.succeeded(job.seq, "1", now, now, os.getpid())])
    assert r.state == "SUCCESS" and r.info == 1
    with store.transaction() as tx:                          # too late: finished
        tx.set_task_states(owner, [(seq, "PROGRESS", meta)], now)
    assert r.state == "SUCCESS"
    r.forget()
    with store.db.read() as conn:
        assert conn.execute("SELECT count(*) FROM task_states").fetchone() == (0,)


# ------------------------------------------------------------------ Ignore and Reject

@app.task(bind=True, name="idioms.stores_by_hand")
def stores_by_hand(self: Task, x: int) -> None:
    """Celery's documented idiom: store the result by hand, then ignore the outcome."""
    self.update_state(state="SUCCESS", meta=x * 2)
    raise Ignore()


@app.task(bind=True, name="idioms.fails_by_hand")
def fails_by_hand(self: Task, how: str) -> None:
    if how == "exception":
        self.update_state(state="FAILURE", meta=ValueError("by hand"))
    else:       # the form Celery stores, written out as Celery users do
        self.update_state(state="FAILURE", meta={"exc_type": "ValueError",
                                                 "exc_message": ["by dict"]})
    raise Ignore()


@app.task(bind=True, name="idioms.changes_its_mind")
def changes_its_mind(self: Task) -> str:
    self.update_state(state="SUCCESS", meta="held")
    self.update_state(state="PROGRESS", meta={"later": True})     # the last state wins
    raise Ignore()


@app.task(bind=True, name="idioms.nested_apply")
def nested_apply(self: Task) -> None:
    self.update_state(state="SUCCESS", meta="outer")
    assert returns_anyway.apply().get() == "returned"     # its own held state is its own
    raise Ignore()


@app.task(bind=True, name="idioms.returns_anyway")
def returns_anyway(self: Task) -> str:
    self.update_state(state="SUCCESS", meta="held")
    return "returned"                   # the value returned wins, as on Celery


class Audited(Task):
    """Writes each hook call to the file named by the job's ``log`` keyword argument."""

    def record(self, line: str) -> None:
        note(self.request.kwargs["log"], line)

    def on_success(self, retval: Any, task_id: str, args: tuple, kwargs: dict) -> None:
        self.record("on_success")

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict,
                   einfo: Any) -> None:
        self.record("on_failure")

    def on_retry(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict,
                 einfo: Any) -> None:
        self.record("on_retry")

    def after_return(self, status: str, retval: Any, task_id: str, args: tuple, kwargs: dict,
                     einfo: Any) -> None:
        self.record(f"after_return {status} {type(retval).__name__}")


@app.task(base=Audited, name="idioms.ignores_itself", autoretry_for=(Exception,),
          max_retries=3, default_retry_delay=0)
def ignores_itself(log: str) -> None:
    raise Ignore()          # no final state first: localq ends the job REVOKED


@app.task(name="idioms.collect")
def collect(values: list) -> list:
    return values


@app.task(bind=True, name="idioms.rejects_once")
def rejects_once(self: Task, marker: str) -> str:
    note(marker, f"run {self.request.retries}")
    if len(lines(marker)) == 1:
        raise Reject("not yet", requeue=True)
    return "second run"


@app.task(base=Audited, name="idioms.rejects")
def rejects(log: str) -> None:
    raise Reject("bad input")


def test_ignore_after_update_state_success_ends_the_job_with_that_value(worker_app):
    with worker_app.worker(concurrency=2):
        r = stores_by_hand.delay(21)
        assert r.get(timeout=30) == 42
        assert r.state == "SUCCESS" and r.successful()
        # a chain goes on with the value, a chord counts the member as a success
        assert chain(stores_by_hand.s(5), echo.s()).apply_async().get(timeout=30) == 10
        both = chord([echo.s(1), stores_by_hand.s(2)], collect.s()).apply_async()
        assert both.get(timeout=30) == [1, 4]
        assert returns_anyway.delay().get(timeout=30) == "returned"
        assert nested_apply.delay().get(timeout=30) == "outer"
    assert [a["outcome"] for a in r.attempts] == ["SUCCESS"]


def test_ignore_after_update_state_failure_fails_the_job(worker_app):
    with worker_app.worker(concurrency=1):
        exc = fails_by_hand.delay("exception").get(timeout=30, propagate=False)
        by_dict = fails_by_hand.delay("dict")
        with pytest.raises(ValueError, match="by dict"):
            by_dict.get(timeout=30)
        then = chain(fails_by_hand.s("exception"), echo.s()).apply_async()
        with pytest.raises(ValueError, match="by hand"):
            then.get(timeout=30)            # the chain's next step fails with it
    assert isinstance(exc, ValueError) and str(exc) == "by hand"
    assert by_dict.state == "FAILURE"


def test_ignore_without_a_final_state_ends_revoked_and_the_canvas_goes_on(worker_app,
                                                                        tmp_path):
    from localq import ChordError
    log = str(tmp_path / "hooks.log")
    revoked_log = str(tmp_path / "revoked.log")

    def on_revoked(sender: Any, request: Any, **kw: Any) -> None:
        note(revoked_log, request.id)

    signals.task_revoked.connect(on_revoked)
    try:
        with worker_app.worker(concurrency=2):
            r, after = ends_revoked_alone_and_in_a_chain(ignores_itself, "ignored", log=log)
            header = chord([echo.s(1), ignores_itself.si(log=log), echo.s(3)], collect.s())
            with pytest.raises(ChordError, match="ignored"):
                header.apply_async().get(timeout=30)
            assert changes_its_mind.delay().get(timeout=30, propagate=False).args[0] \
                .startswith("ignored")
    finally:
        signals.task_revoked.disconnect(on_revoked)
    assert r.state == "REVOKED" and r.retries == 0      # autoretry_for=(Exception,): no
    assert [a["outcome"] for a in r.attempts] == ["REVOKED"]
    assert after.state == "FAILURE"
    # Celery's hooks for an ignored job: after_return alone, with the Ignore
    assert set(lines(log)) == {"after_return REVOKED Ignore"}, lines(log)
    assert lines(revoked_log) == []        # it was not revoked: task_revoked is not sent


def ends_revoked_alone_and_in_a_chain(task: Task, said: str, **kwargs: Any) -> tuple:
    """Send ``task`` alone, then as a chain's first step: both end with a
    TaskRevokedError saying ``said`` (the chain's next step too: nothing waits)."""
    from localq import TaskRevokedError
    alone = task.delay(**kwargs)
    with pytest.raises(TaskRevokedError, match=said):
        alone.get(timeout=30)
    after = chain(task.si(**kwargs), echo.s()).apply_async()
    with pytest.raises(TaskRevokedError, match=said):
        after.get(timeout=30)
    return alone, after


def test_reject_with_requeue_runs_the_job_again(worker_app, tmp_path):
    marker = str(tmp_path / "runs")
    with worker_app.worker(concurrency=1):
        r = rejects_once.delay(marker)
        assert r.get(timeout=30) == "second run"
    assert lines(marker) == ["run 0", "run 0"]         # not counted as a retry
    assert r.retries == 0 and [a["outcome"] for a in r.attempts] == ["SUCCESS"]


def test_reject_without_requeue_ends_revoked_with_the_reason(worker_app, tmp_path):
    log = str(tmp_path / "hooks.log")
    with worker_app.worker(concurrency=1):
        r, then = ends_revoked_alone_and_in_a_chain(rejects, "rejected: bad input", log=log)
    assert r.state == "REVOKED" and then.state == "FAILURE"
    assert set(lines(log)) == {"after_return REVOKED Reject"}


def test_ignore_and_reject_in_eager_mode_end_in_the_same_states(worker_app, tmp_path, caplog):
    from localq import TaskRevokedError
    caplog.set_level("INFO", logger="localq.worker")
    done = stores_by_hand.apply(args=(21,))
    assert done.state == "SUCCESS" and done.get() == 42
    assert "idioms.stores_by_hand" in caplog.text and "ignored" in caplog.text
    failed = fails_by_hand.apply(args=("exception",))
    assert failed.state == "FAILURE" and isinstance(failed.result, ValueError)
    ignored = ignores_itself.apply(kwargs={"log": str(tmp_path / "eager.log")})
    assert ignored.state == "REVOKED"
    with pytest.raises(TaskRevokedError, match="ignored"):
        ignored.get()
    marker = str(tmp_path / "runs")
    assert rejects_once.apply(args=(marker,)).get() == "second run"
    assert lines(marker) == ["run 0", "run 0"]
    rejected = rejects.apply(kwargs={"log": str(tmp_path / "eager.log")})
    assert rejected.state == "REVOKED" and "rejected: bad input" in str(rejected.result)
    assert "reject requeue=False: bad input" in caplog.text
    worker_app.conf.task_always_eager = True
    try:
        assert stores_by_hand.delay(4).get() == 8
        assert chain(stores_by_hand.s(5), echo.s()).apply_async().get() == 10
    finally:
        worker_app.conf.task_always_eager = False


# ------------------------------------------------------------------ allow_join_result

@app.task(name="idioms.waits_allowed")
def waits_allowed(x: int) -> int:
    with allow_join_result():
        return echo.delay(x).get(timeout=30) + 1


def test_allow_join_result_lets_a_task_wait_and_denied_join_result_refuses(worker_app):
    with worker_app.worker(concurrency=2):
        # Short jobs first: the children then take several jobs at a time. The job the
        # waiting task sends still goes to the free child, not behind its sender.
        assert [echo.delay(i).get(timeout=30) for i in range(20)] == list(range(20))
        assert waits_allowed.delay(4).get(timeout=30) == 5
        assert waits_on_another.delay().get(timeout=30).startswith("Never call")  # as before
        r = echo.delay(1)
        with denied_join_result():
            with pytest.raises(RuntimeError, match="allow_join_result"):
                r.get(timeout=30)
            assert r.get(timeout=30, disable_sync_subtasks=False) == 1
        assert r.get(timeout=30) == 1


@app.task(name="idioms.waits_on_a_group")
def waits_on_a_group(allowed: bool) -> Any:
    results = group(echo.s(i) for i in range(3)).apply_async()
    if allowed:
        with allow_join_result():
            return results.get(timeout=30)
    try:
        results.get(timeout=5)
    except RuntimeError as exc:
        return str(exc)
    return "waited"


def test_a_groups_get_inside_a_task_raises_like_a_jobs_unless_allowed(worker_app):
    with worker_app.worker(concurrency=2):
        assert waits_on_a_group.delay(False).get(timeout=30).startswith("Never call")
        # Short jobs first, so that the free child takes the whole group: a child new to
        # a task takes one job at a time, and the rest would queue behind the waiting
        # task in its own child (allow_join_result's risk, as Celery's prefetch's).
        assert [echo.delay(i).get(timeout=30) for i in range(20)] == list(range(20))
        assert waits_on_a_group.delay(True).get(timeout=30) == [0, 1, 2]


# ------------------------------------------------------------------ ResultSet

def test_result_set(worker_app):
    from localq import ResultSet, TimeoutError
    from localq.result import ResultSet as FromResult
    assert ResultSet is FromResult
    ones = [echo.delay(i) for i in range(3)]
    rs = ResultSet(ones)
    assert len(rs) == 3 and list(rs) == ones and rs[1] == ones[1] and rs.results == ones
    assert rs.waiting() and not rs.ready() and rs.completed_count() == 0
    with pytest.raises(TimeoutError), pytest.warns(RuntimeWarning, match="no localq worker"):
        rs.get(timeout=0.05)                 # no worker yet
    with worker_app.worker(concurrency=1):
        assert rs.get(timeout=30) == [0, 1, 2] == rs.join(timeout=30)
        assert rs.ready() and rs.successful() and not rs.failed() and not rs.waiting()
        assert rs.completed_count() == 3
        bad = fail.delay()
        rs.add(bad)
        rs.add(bad)                          # once only
        assert len(rs) == 4
        with pytest.raises(KeyError, match="nope"):
            rs.get(timeout=30)
        assert isinstance(rs.get(timeout=30, propagate=False)[3], KeyError)
        assert rs.failed() and not rs.successful() and rs.completed_count() == 3
        seen: list[tuple] = []
        ResultSet(ones).get(timeout=30, callback=lambda i, v: seen.append((i, v)))
        assert seen == [(r.id, i) for i, r in enumerate(ones)]
    rs.remove(bad.id)                        # by id, as Celery's
    rs.discard(bad)                          # not in: nothing
    with pytest.raises(KeyError):
        rs.remove(bad)
    more = echo.delay(9)
    rs.update([ones[0], more])
    assert rs.results == [*ones, more]
    rs.revoke()                              # no worker: the pending one ends REVOKED
    assert more.state == "REVOKED" and ones[0].state == "SUCCESS"
    rs.forget()
    assert ones[0].state == "PENDING"
    rs.clear()
    assert len(rs) == 0 and rs.get() == [] and rs.ready()


def test_a_group_result_is_a_result_set_and_may_be_edited(worker_app):
    from localq import GroupResult, ResultSet
    with worker_app.worker(concurrency=1):
        res = group(echo.s(i) for i in range(3)).apply_async()
        assert isinstance(res, ResultSet) and isinstance(res, GroupResult)
        assert res.get(timeout=30) == [0, 1, 2] and res.completed_count() == 3
        extra = echo.delay(3)
        res.add(extra)                       # no longer the stored group: member by member
        assert res.get(timeout=30) == [0, 1, 2, 3] and res.completed_count() == 4
        res.remove(extra)
        assert len(res) == 3 and res.ready()


# ------------------------------------------------------------------ before_start

class Started(Task):
    def before_start(self, task_id: str, args: tuple, kwargs: dict) -> None:
        note(args[0], f"before_start {os.getpid()} {task_id == self.request.id} {args} "
                      f"{kwargs}")


@app.task(base=Started, name="idioms.started")
def started_task(path: str, x: int = 0) -> int:
    note(path, f"run {os.getpid()}")
    return x


def test_before_start_runs_in_the_worker_before_the_task_and_eagerly(worker_app, tmp_path):
    path = str(tmp_path / "log")
    with worker_app.worker(concurrency=1):
        assert started_task.delay(path, x=1).get(timeout=30) == 1
    (before, run) = lines(path)
    child = run.split()[1]
    assert before == f"before_start {child} True ('{path}',) {{'x': 1}}"
    assert child != str(os.getpid())
    eager = str(tmp_path / "eager")
    assert started_task.apply(args=(eager,)).get() == 0
    assert lines(eager) == [f"before_start {os.getpid()} True ('{eager}',) {{}}",
                            f"run {os.getpid()}"]
