"""app.map / app.starmap / as_completed / resume / drop_map, on real workers.

In-process tests use the plugin's ``localq_worker`` fixture (a real embedded
worker on a fresh database, imported here so these tests run whether or not
the plugin is installed). Scripts that must be killed or that need a worker
started elsewhere run as subprocesses in ``tmp_path``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import child_pids as children_of
from conftest import pid_alive, wait_for

import localq
from localq import ConfigurationError, EncodeError, Localq, as_completed
from localq.pytest_plugin import localq_worker  # noqa: F401 - the fixture, used by name

ROOT = Path(__file__).resolve().parent.parent

app = Localq(main="test_map")


class ItemError(Exception):
    pass


@app.task
def square(x):
    if x % 7 == 0:
        time.sleep(0.003)       # some items finish after later ones
    return x * x


@app.task
def add(x, y):
    return x + y


def _record(path: str, value: object) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{value}\n".encode())
    finally:
        os.close(fd)


@app.task
def record(path, value, bad=None, pause=0.0):
    """Append one line per execution; fail on ``bad`` (while the file ``bad`` names
    exists, when ``bad`` is a path)."""
    _record(path, value)
    if pause:
        time.sleep(pause)
    if bad is not None and (value == bad or (isinstance(bad, str) and os.path.exists(bad))):
        raise ItemError(f"item {value} is bad", value)
    return value


@app.task
def gated(gate, value):
    """Return once the file ``gate`` exists (at most 30 s)."""
    deadline = time.monotonic() + 30
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise RuntimeError("the gate never opened")
        time.sleep(0.002)
    return value


@pytest.fixture
def localq_app() -> Localq:
    return app


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def env_with_root(**extra: str) -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), extra.pop("PYTHONPATH", ""),
                                       os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


# ------------------------------------------------------------------ map, starmap

def test_map_and_starmap_return_results_in_input_order(localq_worker):
    assert app.map(square, range(300)) == [x * x for x in range(300)]
    assert app.map(square, iter([3, 1, 2])) == [9, 1, 4]
    assert app.starmap(add, [(1, 2), (3, 4), ("a", "b")]) == [3, 7, "ab"]
    assert app.map(square, []) == []


def test_first_failure_is_raised_with_its_type_and_the_rest_is_cancelled(localq_worker,
                                                                          tmp_path):
    out = tmp_path / "ran"
    with pytest.raises(ItemError, match="item 3 is bad"):
        app.starmap(record, [(str(out), i, 3, 0.002) for i in range(400)])
    localq_worker.stop()
    ran = lines(out)
    assert "3" in ran and len(ran) < 400
    # Were the jobs not started cancelled? A worker with one child takes jobs in the
    # order they were sent: any job of the map still queued would run before this one.
    with app.worker(concurrency=1):
        assert record.delay(str(out), "sentinel").get(timeout=30) == "sentinel"
    assert lines(out) == ran + ["sentinel"]


def test_an_item_that_cannot_be_encoded_is_named_and_nothing_runs(localq_worker, tmp_path):
    out = tmp_path / "ran"
    with pytest.raises(EncodeError, match="item 2 of the map"):
        app.starmap(record, [(str(out), 0), (str(out), 1), (str(out), object())])
    assert record.delay(str(out), "after").get(timeout=30) == "after"
    assert lines(out) == ["after"]


def test_timeout_bounds_the_wait(localq_worker, tmp_path):
    gate = tmp_path / "gate"
    try:
        with pytest.raises(localq.TimeoutError) as caught:
            app.starmap(gated, [(str(gate), i) for i in range(4)], timeout=0.2)
        assert isinstance(caught.value, TimeoutError)
    finally:
        gate.touch()


def test_a_map_without_any_worker_warns(localq_worker):
    localq_worker.stop()
    with pytest.warns(RuntimeWarning, match="no localq worker is running"):
        with pytest.raises(localq.TimeoutError):
            app.map(square, [1, 2], timeout=0.05)


# ------------------------------------------------------------------ resume, drop

def test_resume_reuses_stored_results_and_refuses_other_inputs(localq_worker, tmp_path):
    out = tmp_path / "ran"
    calls = [(str(out), i) for i in range(50)]
    assert app.starmap(record, calls, resume="r") == list(range(50))
    assert app.starmap(record, calls, resume="r") == list(range(50))
    assert sorted(lines(out), key=int) == [str(i) for i in range(50)]    # each ran once
    assert app.AsyncResult("map:r:7").get(timeout=1) == 7

    with pytest.raises(ConfigurationError, match="'r' was already started with other inputs"):
        app.starmap(record, calls[:-1], resume="r")
    with pytest.raises(ConfigurationError, match="other inputs"):
        app.map(square, range(50), resume="r")

    assert app.drop_map("r") == 50
    assert app.map(square, range(5), resume="r") == [0, 1, 4, 9, 16]


def test_resume_runs_failed_items_again(localq_worker, tmp_path):
    out, flag = tmp_path / "ran", tmp_path / "broken"
    calls = [(str(out), i, str(flag)) for i in range(20)]
    flag.touch()                                    # every item fails while it exists
    with pytest.raises(ItemError):
        app.starmap(record, calls, resume="again")
    # With resume= nothing is cancelled: every item runs (and fails) in the background.
    wait_for(lambda: all(app.AsyncResult(f"map:again:{i}").ready() for i in range(20)),
             what="all 20 items to have run")
    assert len(lines(out)) == 20
    flag.unlink()
    assert app.starmap(record, calls, resume="again") == list(range(20))
    assert Counter(lines(out)) == {str(i): 2 for i in range(20)}


def test_drop_map_frees_the_name_even_while_its_jobs_run(localq_worker, tmp_path):
    gate = tmp_path / "gate"
    try:
        with pytest.raises(localq.TimeoutError):
            app.starmap(gated, [(str(gate), f"old {i}") for i in range(6)], resume="d",
                        timeout=0.2)
        app.drop_map("d")       # two jobs are running, held by the gate
    finally:
        gate.touch()
    # The jobs that were running finish now, but they are no longer items of "d".
    assert app.starmap(gated, [(str(gate), f"new {i}") for i in range(6)],
                       resume="d") == [f"new {i}" for i in range(6)]


def test_resume_after_kill_9_of_the_script(tmp_path):
    """Items finished before the kill are not computed again; only items in flight
    at the kill may run twice; the killed script's workers die with it."""
    db, out, n = tmp_path / "k.db", tmp_path / "ran", 300
    script = tmp_path / "resumable.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys, time
        from localq import Localq

        app = Localq({str(db)!r})

        @app.task
        def slow_square(x):
            fd = os.open({str(out)!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.write(fd, f"{{x}}\\n".encode())
            os.close(fd)
            time.sleep(0.01)
            return x * x

        with app.worker(concurrency=2) as worker:
            print(worker.pid, flush=True)
            results = app.map(slow_square, range({n}), resume="x")
        print(json.dumps(results), flush=True)
    """))
    first = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                             env=env_with_root(), cwd=tmp_path)
    try:
        supervisor = int(first.stdout.readline())
        pids = [supervisor, *wait_for(lambda: len(children_of(supervisor)) == 2
                                      and children_of(supervisor), what="two children")]
        wait_for(lambda: len(lines(out)) >= 60, what="some items to be done")
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(30)
        first.stdout.close()
    wait_for(lambda: not any(pid_alive(p) for p in pids), what="the killed script's workers")

    before = Counter(lines(out))
    reader = Localq(db)
    finished = {i for i in range(n) if reader.AsyncResult(f"map:x:{i}").state == "SUCCESS"}
    reader.close()
    assert 0 < len(finished) < n
    assert finished <= {int(i) for i in before}

    second = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            env=env_with_root(), cwd=tmp_path, timeout=120)
    assert second.returncode == 0, second.stderr
    supervisor2, results = second.stdout.splitlines()
    assert json.loads(results) == [x * x for x in range(n)]
    wait_for(lambda: not pid_alive(int(supervisor2)), what="the second run's worker")

    runs = Counter(int(i) for i in lines(out))
    assert set(runs) == set(range(n))                       # every item ran
    again = sorted(i for i in finished if runs[i] != 1)
    assert not again, f"finished before the kill, yet computed again: {again}"
    twice = {i for i, count in runs.items() if count > 1}
    in_flight = {int(i) for i in before} - finished
    assert twice <= in_flight, f"ran twice: {sorted(twice)}; in flight: {sorted(in_flight)}"
    assert len(twice) <= 8, twice


# ------------------------------------------------------------------ as_completed

def test_as_completed_yields_each_result_as_it_finishes(localq_worker, tmp_path):
    gate = tmp_path / "gate"
    try:
        slow = gated.delay(str(gate), "slow")
        fast = square.delay(3)
        results = as_completed([slow, fast, fast])
        assert next(results) == fast and fast.get() == 9
        with pytest.raises(localq.TimeoutError):
            next(as_completed([slow], timeout=0.1))
        gate.touch()
        assert next(results) == slow and slow.get() == "slow"
        assert list(results) == []
    finally:
        gate.touch()


def test_as_completed_of_eager_results(tmp_path):
    eager = Localq(tmp_path / "never.db", task_always_eager=True)
    double = eager.task(name="double")(lambda x: 2 * x)
    assert [r.get() for r in as_completed([double.delay(1), double.delay(2)])] == [2, 4]
    assert list(as_completed([])) == []
    assert not (tmp_path / "never.db").exists()


# ------------------------------------------------------------------ workers elsewhere

def test_map_with_a_worker_started_elsewhere(tmp_path):
    (tmp_path / "cubes.py").write_text(textwrap.dedent("""
        from localq import Localq
        app = Localq()

        @app.task
        def cube(x):
            return x ** 3
    """))
    env = env_with_root(PYTHONPATH=str(tmp_path), LOCALQ_DB=str(tmp_path / "c.db"))
    with open(tmp_path / "worker.log", "w") as log:
        worker = subprocess.Popen([sys.executable, "-m", "localq", "worker", "-A", "cubes:app",
                                   "-c", "2", "-l", "INFO"], env=env, cwd=tmp_path,
                                  stderr=log, start_new_session=True)
    try:
        wait_for(lambda: "ready" in (tmp_path / "worker.log").read_text() or
                 worker.poll() is not None, what="the worker to start")
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()
        kids = children_of(worker.pid)
        script = subprocess.run(
            [sys.executable, "-c", "import json, cubes; "
             "print(json.dumps(cubes.app.map(cubes.cube, range(100), timeout=60)))"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert script.returncode == 0, script.stderr
        assert json.loads(script.stdout) == [x ** 3 for x in range(100)]
        assert "no localq worker" not in script.stderr
    finally:
        worker.terminate()
        worker.wait(30)
    wait_for(lambda: not any(pid_alive(p) for p in kids), what="the worker's children")
