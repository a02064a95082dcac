"""Eager mode (task_always_eager) behaves like a real worker.

Every test runs twice: once eagerly, once on a real worker (the plugin's
``localq_worker``), with the same assertions, so an eager test cannot pass
where a worker would fail. In eager mode the database is never opened.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from localq import EncodeError, Localq, NotRegistered
from localq.pytest_plugin import localq_worker  # noqa: F401 - the fixture, used by name

app = Localq(main="test_eager")


class Refused(Exception):
    pass


@app.task
def ident(x):
    return x


@app.task
def returns_a_set():
    return {1, 2}


@app.task
def returns_a_tuple():
    return (1, 2)


@app.task
def refuse(reason):
    raise Refused(reason, 7)


@app.task(bind=True, max_retries=3)
def flaky(self, failures):
    if self.request.retries < failures:
        raise self.retry(countdown=0)
    return self.request.retries


@app.task(autoretry_for=(ValueError,), max_retries=2, default_retry_delay=0)
def always_fails():
    raise ValueError("still failing")


@app.task(ignore_result=True)
def quiet(x):
    return x


@app.task
def returns_a_lone_surrogate():
    return "caf\udce9.txt"          # os.listdir's name for b"caf\xe9.txt"


@app.task(bind=True, max_retries=3)
def retry_at_nan(self):
    raise self.retry(countdown=float("nan"))


@app.task
def record(path, value):
    with open(path, "a") as f:
        f.write(f"{value}\n")
    return value


@pytest.fixture
def localq_app() -> Localq:
    return app


@pytest.fixture(params=["eager", "worker"])
def mode(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "worker":
        request.getfixturevalue("localq_worker")
        yield "worker"
        return
    original = app.path
    app.path = tmp_path / "never.db"
    app.conf.task_always_eager = True
    try:
        yield "eager"
    finally:
        app.conf.task_always_eager = False
        app.path = original
    assert not [name for name in os.listdir(tmp_path) if name.startswith("never.db")]


def test_results_are_what_the_serializer_gives_back(mode):
    assert ident.delay({"a": [1, 2.5, None, True]}).get(timeout=10) == {
        "a": [1, 2.5, None, True]}
    assert returns_a_tuple.delay().get(timeout=10) == [1, 2]           # JSON: a list
    assert ident.delay({1: "x"}).get(timeout=10) == {"1": "x"}         # JSON: str keys
    assert quiet.delay(5).get(timeout=10) is None                      # ignore_result


def test_an_argument_that_cannot_be_encoded_fails_at_the_call(mode, tmp_path):
    out = tmp_path / "ran"
    with pytest.raises(EncodeError, match="positional argument 1") as caught:
        record.delay(str(out), {1, 2})
    assert isinstance(caught.value, TypeError)
    assert not out.exists()


def test_a_result_that_cannot_be_encoded_fails_the_job(mode):
    result = returns_a_set.delay()
    with pytest.raises(TypeError, match="cannot be encoded"):
        result.get(timeout=10)
    assert result.state == "FAILURE" and result.failed()


def test_a_task_error_keeps_its_type_and_arguments(mode):
    result = refuse.delay("no")
    with pytest.raises(Refused) as caught:
        result.get(timeout=10)
    assert caught.value.args == ("no", 7)
    assert isinstance(result.get(timeout=10, propagate=False), Refused)
    assert "Refused" in (result.traceback or "")


def test_retries_follow_the_same_rules(mode):
    result = flaky.delay(2)
    assert result.get(timeout=10) == 2 and result.retries == 2
    with pytest.raises(ValueError, match="still failing"):
        always_fails.delay().get(timeout=10)


def test_an_unknown_task_is_not_registered(mode):
    with pytest.raises(NotRegistered):
        app.send_task("nowhere.to_be_found", (1,)).get(timeout=10)


def test_map_and_starmap(mode):
    assert app.map(ident, [3, 1, 2]) == [3, 1, 2]
    assert app.starmap(ident, [("a",), ((1, 2),)]) == ["a", [1, 2]]
    with pytest.raises(Refused):
        app.map(refuse, ["x"])
    with pytest.raises(EncodeError, match="item 1 of the map"):
        app.map(ident, [1, object()])


def test_eager_propagates_raises_at_the_call(tmp_path):
    eager = Localq(tmp_path / "never.db", task_always_eager=True, task_eager_propagates=True)
    fail = eager.task(name="fail")(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        fail.delay()
    assert eager.map(eager.task(name="double")(lambda x: 2 * x), [1, 2], progress=True,
                     resume="ignored in eager mode") == [2, 4]
    assert not (tmp_path / "never.db").exists()


def test_the_wrong_arguments_fail_at_the_call(mode, tmp_path):
    out = tmp_path / "ran"
    with pytest.raises(TypeError, match="'test_eager.record' called with the wrong arguments"):
        record.delay(str(out))
    with pytest.raises(TypeError, match="item 0 of the map"):
        app.starmap(ident, [(1, 2)])
    assert not out.exists()


def test_a_result_that_is_not_valid_utf8_fails_the_job(mode):
    result = returns_a_lone_surrogate.delay()
    with pytest.raises(EncodeError, match="lone surrogate"):
        result.get(timeout=10)
    assert result.state == "FAILURE"
    assert ident.delay("after").get(timeout=10) == "after"


def test_a_retry_at_nan_fails_the_job(mode):
    result = retry_at_nan.delay()
    with pytest.raises(ValueError, match="countdown=nan"):
        result.get(timeout=10)
    assert result.state == "FAILURE" and result.retries == 0


def test_a_setting_changed_between_two_jobs_applies_to_the_second(tmp_path):
    """What running a job asks of its task (ignore_result, the accepted serializers,
    the result serializer) is kept per version of the settings: a change between two
    jobs run in one process applies to the second."""
    here = Localq(str(tmp_path / "never.db"), main="settings_between_jobs")
    here.conf.task_always_eager = True

    @here.task
    def echo(x):
        return x

    assert echo.delay([1]).get(timeout=10) == [1]
    here.conf.task_ignore_result = True
    assert echo.delay([1]).get(timeout=10) is None
    here.conf.task_ignore_result = False
    assert echo.delay([1]).get(timeout=10) == [1]
    assert not os.path.exists(tmp_path / "never.db")
