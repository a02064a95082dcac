"""What goes in and comes out: bad arguments and options at the call, strings that are
not valid UTF-8, content an app never accepted, and what a finished job reports.

Real SQLite files and real workers (``app.worker()``, ``python -m localq``); rows an
attacker could write are written with sqlite3 directly.
"""
from __future__ import annotations

import math
import os
import pickle
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest

from localq import (
    ConfigurationError,
    ContentDisallowed,
    EncodeError,
    Localq,
    TaskError,
)

ROOT = Path(__file__).resolve().parent.parent
SURROGATE = "caf\udce9.txt"        # os.listdir's name for b"caf\xe9.txt" on a UTF-8 system

app = Localq(main="test_inputs")


@app.task
def echo(value):
    return value


@app.task
def add(x, y=0):
    return x + y


@app.task
def listing(folder):
    return sorted(os.listdir(folder))


@app.task
def raise_surrogate():
    raise ValueError(f"cannot open {SURROGATE}")


@app.task(bind=True, max_retries=3)
def retry_with(self, countdown):
    if self.request.retries == 0:
        raise self.retry(countdown=countdown)
    return self.request.retries


@app.task(bind=True, max_retries=1)
def retry_surrogate(self):
    if self.request.retries == 0:
        raise self.retry(exc=OSError(f"no {SURROGATE}"), countdown=0)
    return "second try"


@app.task(bind=True, max_retries=3, default_retry_delay=0)
def fetch(self, url):                     # the README's example
    if self.request.retries < 2:
        raise self.retry(exc=ConnectionError(f"{url} timed out"))
    return f"body of {url}"


@app.task
def boom(message):
    raise ValueError(message)


@app.task(bind=True)
def whoami(self, tag):
    return tag


@app.task
def keyword_only(x, *, scale):
    return x * scale


@app.task(typing=False)
def unchecked(x):
    return x


@app.task(serializer="pickle")
def pickled(value):
    return value


@pytest.fixture
def qapp(tmp_path: Path) -> Iterator[Localq]:
    saved = dict(app.conf)
    app.path = tmp_path / "jobs.db"
    try:
        yield app
    finally:
        app.close()
        app.conf.update(saved)


def stored_rows(a: Localq) -> int:
    if not os.path.exists(a.path):
        return 0
    with sqlite3.connect(a.path) as conn:
        return conn.execute("SELECT count(*) FROM jobs").fetchone()[0]


class Evil:
    """Unpickling it creates a file: what a hostile row would do, made visible."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


# ------------------------------------------------------------------ lone surrogates

def test_a_lone_surrogate_argument_is_an_encode_error_naming_it(qapp):
    with pytest.raises(EncodeError, match=r"'test_inputs.echo'.*positional argument 0.*"
                                          r"lone surrogate"):
        echo.delay(SURROGATE)
    with pytest.raises(EncodeError, match="keyword argument 'y'"):
        add.apply_async((1,), {"y": SURROGATE}, countdown=5)
    with pytest.raises(EncodeError, match="item 2400 of the map"):
        qapp.map(echo, ["fine"] * 2400 + [SURROGATE])   # past the first insert chunk
    assert stored_rows(qapp) == 0


def test_a_lone_surrogate_result_fails_its_job_and_the_batch_goes_on(qapp, tmp_path):
    folder = tmp_path / "names"
    folder.mkdir()
    (folder / "plain.txt").write_text("")
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.txt"), "w"):
        pass
    before = [add.delay(i, 1) for i in range(20)]
    bad = listing.delay(str(folder))
    message = raise_surrogate.delay()
    retried = retry_surrogate.delay()
    after = [add.delay(i, 2) for i in range(40)]
    with qapp.worker(concurrency=1) as worker:       # all of them in the first claim
        with pytest.raises(EncodeError, match="lone surrogate") as caught:
            bad.get(timeout=30)
        assert isinstance(caught.value, TypeError)
        assert bad.state == "FAILURE"
        assert [r.get(timeout=30) for r in before] == [i + 1 for i in range(20)]
        assert [r.get(timeout=30) for r in after] == [i + 2 for i in range(40)]
        with pytest.raises(ValueError) as caught_message:
            message.get(timeout=30)
        assert str(caught_message.value) == f"cannot open {SURROGATE}"  # kept exactly
        assert "caf\\udce9" in (message.traceback or "")                 # escaped text
        assert message.attempts[-1]["exc_message"] == "cannot open caf\\udce9.txt"
        assert retried.get(timeout=30) == "second try"
        assert retried.attempts[0]["exc_message"] == "no caf\\udce9.txt"
        assert add.delay(2, 2).get(timeout=30) == 4       # the same worker, still alive
        assert worker.alive


# ------------------------------------------------------------------ options at the call

@pytest.mark.parametrize("options, error, words", [
    ({"countdown": math.nan}, ValueError, "countdown=nan"),
    ({"countdown": math.inf}, ValueError, "countdown=inf"),
    ({"countdown": "5"}, TypeError, "countdown must be a number"),
    ({"eta": math.nan}, ValueError, "eta=nan"),
    ({"eta": "tomorrow"}, TypeError, "eta must be a number"),
    ({"expires": math.nan}, ValueError, "expires=nan"),
    ({"priority": True}, TypeError, "priority must be an integer"),
    ({"priority": 10}, ValueError, "priority must be an integer"),
    ({"task_id": ""}, ValueError, "task_id=''"),
    ({"task_id": 7}, TypeError, "task_id must be a str"),
    ({"queue": ""}, ValueError, "queue=''"),
    ({"time_limit": math.nan}, ValueError, "time_limit=nan"),
    ({"soft_time_limit": -1}, ValueError, "soft_time_limit=-1"),
    ({"args": "abc"}, TypeError, "args must be a list or tuple, not str 'abc'"),
    ({"args": (1,), "kwargs": {1: 2}}, TypeError, "keyword argument names must be strings"),
    ({"args": (1,), "kwargs": [("y", 2)]}, TypeError, "kwargs must be a dict"),
    ({"serializer": "pickle"}, ValueError, "not accepted by this app"),
])
def test_a_bad_option_is_a_clear_error_at_the_call(qapp, options, error, words):
    options = {"args": (1,), **options}
    with pytest.raises(error, match="test_inputs.add") as caught:
        add.apply_async(**options)
    assert words in str(caught.value)
    qapp.conf.task_always_eager = True                      # the same checks in eager mode
    with pytest.raises(error):
        add.apply_async(**options)
    qapp.conf.task_always_eager = False
    assert stored_rows(qapp) == 0


def test_a_past_eta_or_a_negative_countdown_runs_now(qapp):
    past = datetime.now(timezone.utc) - timedelta(days=1)
    results = [add.apply_async((1,), eta=-5), add.apply_async((2,), countdown=-1e10),
               add.apply_async((3,), eta=past), add.apply_async((4,), countdown=0)]
    retried = retry_with.delay(-1e10)
    with qapp.worker(concurrency=2):
        assert [r.get(timeout=30) for r in results] == [1, 2, 3, 4]
        assert retried.get(timeout=30) == 1


def test_a_retry_with_a_countdown_of_nan_fails_the_job(qapp):
    bad = retry_with.delay(math.nan)
    bad_type = retry_with.delay("soon")
    with qapp.worker(concurrency=1) as worker:
        with pytest.raises(ValueError, match=r"retry\(\): countdown=nan"):
            bad.get(timeout=30)
        with pytest.raises(TypeError, match="countdown must be a number"):
            bad_type.get(timeout=30)
        assert bad.state == "FAILURE" and bad.retries == 0
        assert retry_with.delay(0).get(timeout=30) == 1
        assert worker.alive


# ------------------------------------------------------------------ the signature

def test_the_wrong_number_of_arguments_is_a_type_error_at_the_call(qapp):
    with pytest.raises(TypeError, match=r"'test_inputs.add' called with the wrong arguments: "
                                        r"missing a required argument: 'x'"):
        add.delay()
    with pytest.raises(TypeError, match="too many positional arguments"):
        add.delay(1, 2, 3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        add.apply_async((1,), {"z": 2}, countdown=1)
    with pytest.raises(TypeError, match="multiple values for argument 'x'"):
        add.delay(1, x=2)
    with pytest.raises(TypeError, match="missing a required argument: 'tag'"):
        whoami.delay()                                  # bind=True: self is not counted
    with pytest.raises(TypeError, match="too many positional arguments"):
        whoami.delay(1, 2)
    with pytest.raises(TypeError, match="missing a required argument: 'scale'"):
        keyword_only.delay(2)
    with pytest.raises(TypeError, match=r"item 1 of the map: .*too many positional"):
        qapp.starmap(add, [(1,), (1, 2, 3)])
    assert stored_rows(qapp) == 0
    add.delay(1), add.delay(1, 2), add.delay(x=1, y=2), whoami.delay("t")
    keyword_only.delay(2, scale=3)
    unchecked.delay(1, 2, 3)                            # typing=False: fails on the worker
    assert stored_rows(qapp) == 6


# ------------------------------------------------------------------ accept_content

def test_a_json_only_worker_never_unpickles_a_row(qapp, tmp_path):
    marker = tmp_path / "unpickled"
    hostile = Localq(qapp.path, main="hostile")         # another app on the same file
    hostile.task(name="test_inputs.echo", serializer="pickle")(lambda value: value)
    job = hostile.tasks["test_inputs.echo"].delay(Evil(str(marker)))
    with qapp.worker(concurrency=1):
        r = qapp.AsyncResult(job.id)
        with pytest.raises(ContentDisallowed, match="'pickle', which this app does not "
                                                    "accept"):
            r.get(timeout=30)
        assert r.state == "FAILURE"
        assert echo.delay("ok").get(timeout=30) == "ok"
    hostile.close()
    assert not marker.exists()


def _hostile_failure(a: Localq, result: bytes | str, exc_type: str) -> str:
    """A FAILURE row whose stored exception is ``result``, written with sqlite3."""
    job = echo.delay(1)
    with sqlite3.connect(a.path) as conn:
        conn.execute("UPDATE jobs SET state = 'FAILURE', result = ?, exc_type = ?, "
                     "traceback = 'Traceback (most recent call last):\nValueError: bad' "
                     "WHERE seq = (SELECT max(seq) FROM jobs)", (result, exc_type))
    return job.id


def test_get_and_show_never_unpickle_a_stored_exception(qapp, tmp_path):
    marker = tmp_path / "unpickled"
    job_id = _hostile_failure(qapp, pickle.dumps(Evil(str(marker))), "ValueError")
    with pytest.raises(TaskError, match="ValueError: bad") as caught:
        qapp.AsyncResult(job_id).get(timeout=5)
    assert "Traceback" in (caught.value.remote_traceback or "")
    shown = subprocess.run([sys.executable, "-m", "localq", "show", job_id, "--app",
                            "test_inputs:app"], capture_output=True, text=True,
                           env=dict(os.environ, LOCALQ_DB=str(qapp.path),
                                    PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{ROOT}"))
    assert "TaskError" in shown.stdout, shown.stderr
    assert not marker.exists()


def test_an_exception_type_from_the_file_is_never_imported(qapp):
    job_id = _hostile_failure(
        qapp, '{"exc_type":"this.Zen","exc_message":"x","exc_args":["x"]}', "this.Zen")
    script = ("import sys\nfrom localq import Localq, TaskError\n"
              f"r = Localq({str(qapp.path)!r}).AsyncResult({job_id!r})\n"
              "exc = r.get(timeout=5, propagate=False)\n"
              "print(type(exc).__name__, exc.exc_type, 'this' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.stdout == "TaskError this.Zen False\n", out.stdout + out.stderr


def test_an_exception_class_already_imported_is_rebuilt(qapp):
    job_id = _hostile_failure(
        qapp, '{"exc_type":"json.decoder.JSONDecodeError","exc_message":"m",'
              '"exc_args":["m", "doc", 1]}', "json.decoder.JSONDecodeError")
    from json import JSONDecodeError
    with pytest.raises(JSONDecodeError):
        qapp.AsyncResult(job_id).get(timeout=5)


def test_accept_content_opts_in_and_results_are_checked_too(qapp, tmp_path):
    with pytest.raises(ConfigurationError, match="accept_content must list"):
        qapp.conf.accept_content = ["yaml"]
    qapp.conf.accept_content = ["application/json", "application/x-python-serialize"]
    assert qapp.conf.accept_content == ("json", "pickle")
    on_json = echo.apply_async(({1, 2},), serializer="pickle")   # now allowed per call
    by_task = pickled.delay({3})                                   # the task opted in itself
    with qapp.worker(concurrency=1):
        assert on_json.get(timeout=30) == {1, 2}
        assert by_task.get(timeout=30) == {3}
    reader = Localq(qapp.path, main="reader")        # JSON only, knows neither task
    with pytest.raises(ContentDisallowed, match="result_accept_content"):
        reader.AsyncResult(on_json.id).get(timeout=5)
    reader.conf.result_accept_content = ["json", "pickle"]
    assert reader.AsyncResult(by_task.id).get(timeout=5) == {3}
    reader.close()


# ------------------------------------------------------------------ what a finished job says

def test_a_success_after_retries_carries_no_error(qapp):
    r = fetch.delay("http://example.com")
    failed = boom.delay("it broke")
    with qapp.worker(concurrency=1):
        assert r.get(timeout=30) == "body of http://example.com"
        with pytest.raises(ValueError):
            failed.get(timeout=30)
    assert r.retries == 2 and r.traceback is None
    attempts = r.attempts
    assert [a["outcome"] for a in attempts] == ["RETRY", "RETRY", "SUCCESS"]
    assert attempts[-1]["exc_type"] is None and attempts[-1]["exc_message"] is None
    assert attempts[0]["exc_message"] == "http://example.com timed out"
    last = failed.attempts[-1]
    assert last["outcome"] == "FAILURE" and last["exc_type"] == "ValueError"
    assert last["exc_message"] == "it broke"


def test_the_quick_signature_check_agrees_with_bind(qapp):
    import inspect
    import itertools

    def f1(a, b=1): ...
    def f2(a, *args, c=2, **kw): ...
    def f3(a, /, b, *, c): ...
    def f4(*args): ...
    def f5(a, b, c=3, *, d=4): ...
    calls = [((), {}), ((1,), {}), ((1, 2), {}), ((1, 2, 3), {}), ((1, 2, 3, 4, 5), {}),
             ((), {"a": 1}), ((), {"a": 1, "b": 2}), ((1,), {"a": 1}), ((1,), {"b": 2}),
             ((1,), {"c": 3}), ((1,), {"z": 0}), ((1, 2), {"c": 3, "d": 4}),
             ((), {"b": 2}), ((1,), {"b": 2, "c": 3}), ((), {"args": 1})]
    for number, (fn, (args, kwargs)) in enumerate(itertools.product(
            [f1, f2, f3, f4, f5], calls)):
        task = qapp.task(name=f"shape{number}")(fn)
        try:
            inspect.signature(fn).bind(*args, **kwargs)
            fits = True
        except TypeError:
            fits = False
        try:
            task.check_arguments(args, kwargs)
            passed = True
        except TypeError:
            passed = False
        assert passed == fits, (fn.__name__, args, kwargs)


def test_a_bad_map_option_stores_nothing(qapp):
    with pytest.raises(TypeError, match="priority must be an integer"):
        qapp.map(echo, [1, 2], priority=True, resume="nightly")
    with pytest.raises(ValueError, match="queue=''"):
        qapp.map(echo, [1, 2], queue="", resume="nightly")
    assert stored_rows(qapp) == 0
    if os.path.exists(qapp.path):
        with sqlite3.connect(qapp.path) as conn:
            assert conn.execute("SELECT count(*) FROM maps").fetchone()[0] == 0
