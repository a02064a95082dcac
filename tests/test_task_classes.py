"""Task classes (``@app.task(base=MyTask)``), and Celery's options and settings that
were accepted and ignored: each works, or warns once by name.

The hooks run in the worker's child, so they report to a file that the test reads.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest

from localq import Localq, Task

app = Localq(main="test_task_classes")


def note(args: tuple, line: str) -> None:
    with open(args[0], "a") as f:
        f.write(line + "\n")


class Recorder(app.Task):
    """Writes every hook call to the file named by the task's first argument."""

    max_retries = 1             # class attributes are the tasks' default options
    default_retry_delay = 0

    def on_success(self, retval: Any, task_id: str, args: tuple, kwargs: dict) -> None:
        note(args, f"on_success {retval!r} {task_id} {os.getpid()} {self.request.id}")

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict,
                   einfo: Any) -> None:
        note(args, f"on_failure {type(exc).__name__} {task_id} {einfo.type.__name__} "
                   f"{'ValueError: bad' in einfo.traceback}")

    def on_retry(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict,
                 einfo: Any) -> None:
        note(args, f"on_retry {type(exc).__name__} {task_id} {self.request.retries}")

    def after_return(self, status: str, retval: Any, task_id: str, args: tuple, kwargs: dict,
                     einfo: Any) -> None:
        note(args, f"after_return {status} {retval!r} {task_id}")


@app.task(base=Recorder)
def double(log: str, x: int) -> int:
    return 2 * x


@app.task(base=Recorder)
def bad(log: str) -> None:
    raise ValueError("bad")


@app.task(base=Recorder, bind=True)
def flaky(self: Task, log: str) -> str:
    if self.request.retries == 0:
        raise self.retry(exc=KeyError("once"))
    return "second"


@app.task(base=Recorder, bind=True)
def always_retries(self: Task, log: str) -> None:
    raise self.retry(exc=OSError("again"))


@app.task(base=Recorder, max_retries=3)
def declared(log: str) -> None:
    pass


class FailsOnSuccess(Task):
    def on_success(self, retval: Any, task_id: str, args: tuple, kwargs: dict) -> None:
        raise RuntimeError(f"on_success saw {retval!r}")


@app.task(base=FailsOnSuccess)
def fine() -> int:
    return 1


@pytest.fixture
def worker_app(tmp_path: Path) -> Iterator[Localq]:
    app.path = tmp_path / "jobs.db"
    try:
        with app.worker(concurrency=1):
            yield app
    finally:
        app.close()


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_hooks_run_in_the_worker_child_with_celerys_arguments(worker_app, tmp_path):
    log = tmp_path / "hooks.log"
    ok = double.delay(str(log), 21)
    assert ok.get(timeout=60) == 42
    failed = bad.delay(str(log))
    with pytest.raises(ValueError, match="bad"):
        failed.get(timeout=60)
    retried = flaky.delay(str(log))
    assert retried.get(timeout=60) == "second"
    seen = lines(log)
    success, after_ok = seen[0].split(), seen[1]
    assert success[:3] == ["on_success", "42", ok.id]
    assert int(success[3]) != os.getpid()          # in the child, not here
    assert success[4] == ok.id                     # self.request is the job's
    assert after_ok == f"after_return SUCCESS 42 {ok.id}"
    assert seen[2] == f"on_failure ValueError {failed.id} ValueError True"
    assert seen[3] == f"after_return FAILURE ValueError('bad') {failed.id}"
    # on_retry, then (as in Celery) no after_return for the retry; then the success
    assert seen[4:] == [f"on_retry KeyError {retried.id} 0",
                        f"on_success 'second' {retried.id} {success[3]} {retried.id}",
                        f"after_return SUCCESS 'second' {retried.id}"]


def test_class_attributes_are_default_options(worker_app, tmp_path):
    assert always_retries.max_retries == 1 and always_retries.default_retry_delay == 0
    assert declared.max_retries == 3                 # the decorator wins over the class
    assert Task.__dict__.get("max_retries") is None and "max_retries" not in Recorder.__dict__
    log = tmp_path / "retries.log"
    result = always_retries.delay(str(log))
    with pytest.raises(OSError, match="again"):
        result.get(timeout=60)
    assert result.retries == 1                       # max_retries = 1, from the class
    assert [line.split()[0] for line in lines(log)] == ["on_retry", "on_failure",
                                                        "after_return"]
    app.conf.task_annotations = {always_retries.name: {"max_retries": 0}}
    try:
        assert always_retries.max_retries == 0       # annotations win over everything
    finally:
        app.conf.task_annotations = None


def test_an_on_success_that_raises_fails_the_job_as_in_celery(worker_app):
    result = fine.delay()
    with pytest.raises(RuntimeError, match="on_success saw 1"):
        result.get(timeout=60)
    assert result.state == "FAILURE"


def test_hooks_run_in_eager_mode_too(tmp_path):
    eager = Localq(tmp_path / "eager.db", task_always_eager=True)
    log = tmp_path / "eager.log"
    task = eager.task(base=Recorder, name="eager_double")(double.run)
    assert task.delay(str(log), 2).get() == 4
    assert lines(log)[0].startswith("on_success 4 ")
    assert not (tmp_path / "eager.db").exists()


def test_base_must_be_a_task_class():
    with pytest.raises(TypeError, match="base must be a subclass of localq.Task"):
        app.task(base=object)(lambda: None)
    assert app.Task is Task


def test_options_that_cannot_take_effect_warn_once_by_name(tmp_path):
    other = Localq(tmp_path / "w.db")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")

        @other.task(track_started=True, shared=True, typing=True)
        def accepted() -> None:
            pass

        assert said == []                # True is what localq does; shared is Celery's flag

        @other.task(track_started=False)
        def untracked() -> None:
            pass

        @other.task(track_started=False)
        def untracked_too() -> None:
            pass

        other.conf.update(task_store_eager_result=True)
        other.conf.update(task_store_eager_result=True)
        other.conf.update(task_store_eager_result=False, worker_hijack_root_logger=False)
    messages = [str(w.message) for w in said]
    assert len(messages) == 2, messages
    assert "track_started=False" in messages[0] and "always records STARTED" in messages[0]
    assert "task_store_eager_result=True" in messages[1] and "opens no database" in messages[1]
    assert all(w.filename == __file__ for w in said)


log_app = Localq(main="test_task_classes_logging")


@log_app.task
def speak(word: str) -> str:
    logging.getLogger("user.tasks").warning("task says %s", word)
    return word


@pytest.mark.parametrize("hijack", [True, False])
def test_worker_hijack_root_logger_false_leaves_the_users_root_logger(tmp_path, hijack):
    """Celery's worker_hijack_root_logger: by default the worker replaces the root
    logger's handlers; False keeps the user's (here a file), which gets the tasks'
    records, written in the worker's child."""
    log_app.path = tmp_path / "jobs.db"
    log_app.conf.worker_hijack_root_logger = hijack
    handler = logging.FileHandler(tmp_path / "user.log")
    logging.getLogger().addHandler(handler)
    try:
        with log_app.worker(concurrency=1):
            assert speak.delay("hi").get(timeout=60) == "hi"
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
        log_app.close()
    assert ("task says hi" in (tmp_path / "user.log").read_text()) is (not hijack)


class BrokenHooks(Task):
    retried: list[str] = []

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict,
                   einfo: Any) -> None:
        raise RuntimeError("the hook itself is broken")

    def on_retry(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict,
                 einfo: Any) -> None:
        self.retried.append(type(exc).__name__)     # retry() without exc=: the Retry itself


def test_an_error_in_another_hook_is_logged_and_the_outcome_stands(tmp_path, caplog):
    eager = Localq(tmp_path / "eager.db", task_always_eager=True)

    @eager.task(base=BrokenHooks, bind=True, max_retries=1, default_retry_delay=0)
    def fails(self: Task) -> None:
        if self.request.retries == 0:
            raise self.retry()
        raise LookupError("the task's own error")

    with caplog.at_level("ERROR", logger="localq.worker"):
        result = fails.delay()
    assert result.state == "FAILURE" and isinstance(result.result, LookupError)
    assert "the hook itself is broken" in caplog.text and "on_failure" in caplog.text
    assert BrokenHooks.retried == ["Retry"]
