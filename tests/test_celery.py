"""make_celery (localq/celery.py): a localq app as a real Celery app.

The fast tests read the Celery app and its task objects, with no broker. The slow one runs
one task module (celery_tasks.py) on a localq worker, then on a real Celery worker
(``celery -A celery_tasks:celery_app worker --pool=prefork -c 2 -B``, its beat sending the
module's periodic task) against a real Redis server that it starts, and compares what came
back.

Without redis-server (or Celery) these skip, saying what to install; with ``CI`` set in
the environment they fail instead, so that CI never passes without running them.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import HERE, ROOT, child_pids, need, pid_alive, wait_for

from localq import ConfigurationError, Localq, Task, crontab, schedule

try:
    import celery
    import celery.result
    import celery.schedules
except ImportError:          # the README's test command installs it (the [test] extra)
    celery = None


@pytest.fixture
def with_celery() -> None:
    need(celery, "Celery", "pip install -e '.[test]' (or pip install 'localq[celery]')")


# ------------------------------------------------------------------ fast: the mapping

def full_app(tmp_path: Path) -> tuple[Localq, list[str]]:
    app = Localq(str(tmp_path / "jobs.db"))
    app.conf.update(
        task_default_queue="work", task_acks_late=True, task_time_limit=60,
        result_expires=0, worker_max_tasks_per_child=50,
        task_routes={"proj.routed*": {"queue": "routed"}},
        task_annotations={"proj.annotated": {"rate_limit": "3/m", "soft_time_limit": 5,
                                             "max_concurrency": 2, "priority": 6},
                          "*": {"retry_backoff_max": 120}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # "nothing runs beat_schedule yet", until beat
        app.conf.beat_schedule = {
            "hourly": {"task": "proj.plain", "schedule": crontab(minute=1, hour="*/2"),
                       "args": (1, 2), "options": {"priority": 9}},
            "weekdays": {"task": "proj.plain",
                         "schedule": crontab(0, 9, day_of_week="mon-fri")},
            "every 30 s": {"task": "proj.plain", "schedule": schedule(30)},
            "every minute": {"task": "proj.plain", "schedule": 60.0},
        }
    calls: list[str] = []

    class Audited(Task):
        max_retries = 7
        time_limit = 20

        def label(self) -> str:
            return f"{type(self).__name__} {self.name}"

        def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict,
                       einfo: Any) -> None:
            calls.append(f"{self.label()} {type(exc).__name__} {task_id}")
            super().on_failure(exc, task_id, args, kwargs, einfo)

        @classmethod
        def family(cls) -> str:
            return "audited"

    class Strict(Audited):
        max_retries = 0

        @property
        def label_twice(self) -> str:
            return f"{super().label()} twice"

        @classmethod
        def family(cls) -> str:
            return super().family() + "+strict"

    @app.task(name="proj.plain")
    def plain(x, y):
        return x + y

    @app.task(name="proj.full", bind=True, max_retries=5, default_retry_delay=2,
              time_limit=30, soft_time_limit=10, rate_limit="10/s", queue="images",
              priority=8, acks_late=False, ignore_result=True, serializer="pickle",
              autoretry_for=(KeyError,), dont_autoretry_for=(IndexError,),
              retry_kwargs={"countdown": 3}, retry_backoff=2, retry_backoff_max=60,
              retry_jitter=False, expires=300, reject_on_worker_lost=True)
    def full(self, x):
        return x

    @app.task(name="proj.annotated")
    def annotated():
        return None

    @app.task(name="proj.routed_one")
    def routed_one():
        return None

    @app.task(name="proj.audited", base=Audited)
    def audited():
        return None

    @app.task(name="proj.strict", base=Strict, time_limit=5)
    def strict():
        return None

    return app, calls


OPTIONS = ("max_retries", "default_retry_delay", "time_limit", "soft_time_limit", "rate_limit",
           "acks_late", "ignore_result", "serializer", "autoretry_for", "dont_autoretry_for",
           "retry_kwargs", "retry_backoff", "retry_backoff_max", "retry_jitter", "expires",
           "reject_on_worker_lost")

# What Celery's autoretry reads when a task does not set it (celery/app/autoretry.py).
AUTORETRY_DEFAULTS = {"autoretry_for": (), "dont_autoretry_for": (), "retry_kwargs": {},
                      "retry_backoff": False, "retry_backoff_max": 600, "retry_jitter": True}


def route(capp: Any, name: str) -> tuple[str, Any]:
    """The queue and priority Celery's own router gives a message of task ``name``."""
    options = capp.amqp.router.route({}, name)
    return options["queue"].name, options.get("priority")


def test_every_task_is_registered_with_its_options(with_celery, tmp_path):
    from localq.celery import make_celery
    app, calls = full_app(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        capp = make_celery(app, broker="redis://127.0.0.1:9/0", backend="redis://127.0.0.1:9/1",
                           forward=False, worker_prefetch_multiplier=1)
    messages = [str(w.message) for w in caught]
    assert any("max_concurrency does not carry over" in m and "proj.annotated" in m
               for m in messages), messages
    assert any("rate limits hold per Celery worker" in m and "proj.annotated, proj.full" in m
               for m in messages), messages
    assert not [m for m in messages if "deprecated" in m], messages

    assert isinstance(capp, celery.Celery)
    assert set(app.tasks) <= set(capp.tasks)
    full = capp.tasks["proj.full"]
    assert (full.name, full.max_retries, full.default_retry_delay, full.time_limit,
            full.soft_time_limit, full.rate_limit, full.acks_late, full.ignore_result,
            full.serializer, full.autoretry_for, full.dont_autoretry_for, full.retry_kwargs,
            full.retry_backoff, full.retry_backoff_max, full.retry_jitter, full.expires,
            full.reject_on_worker_lost, full.track_started) == (
        "proj.full", 5, 2, 30, 10, "10/s", False, True, "pickle", (KeyError,),
        (IndexError,), {"countdown": 3}, 2, 120, False, 300, True, True)  # 120: annotation "*"
    for name, task in app.tasks.items():      # Celery resolves each option as localq does
        for key in OPTIONS:
            want = task.option(key)
            if want is None and key == "retry_kwargs":
                want = {}                         # localq's None, Celery's {}
            assert getattr(capp.tasks[name], key, AUTORETRY_DEFAULTS.get(key)) == want, (
                name, key)
    assert capp.tasks["proj.plain"].run is app.tasks["proj.plain"].run     # the function
    # Redis runs priority 0 first, localq 9: a 8 is sent as 1, the default 0 as 9.
    assert route(capp, "proj.full") == ("images", 1)
    assert route(capp, "proj.plain") == ("work", 9)
    assert route(capp, "proj.routed_one") == ("routed", 9)      # localq's task_routes
    assert route(capp, "proj.annotated") == ("work", 3)         # and its annotations
    assert capp.conf.broker_transport_options["priority_steps"] == list(range(10))

    plain = capp.tasks["proj.plain"]                  # the settings, read by Celery
    assert (plain.time_limit, plain.acks_late, plain.max_retries) == (60, True, 3)
    assert (capp.conf.task_default_queue, capp.conf.result_expires,
            capp.conf.worker_max_tasks_per_child, capp.conf.worker_prefetch_multiplier) == (
        "work", None, 50, 1)
    assert set(capp.conf.accept_content) == {"json", "pickle"}   # proj.full's serializer
    annotated = capp.tasks["proj.annotated"]
    assert (annotated.rate_limit, annotated.soft_time_limit, annotated.retry_backoff_max) == (
        "3/m", 5, 120)
    assert not hasattr(annotated, "max_concurrency")

    beat = capp.conf.beat_schedule
    assert beat["hourly"]["schedule"] == celery.schedules.crontab(minute=1, hour="*/2")
    assert beat["hourly"]["options"] == {"priority": 0} and beat["hourly"]["args"] == (1, 2)
    assert beat["weekdays"]["schedule"] == celery.schedules.crontab(
        minute=0, hour=9, day_of_week="mon-fri")
    assert beat["every 30 s"]["schedule"] == celery.schedules.schedule(timedelta(seconds=30))
    assert beat["every minute"]["schedule"] == 60.0

    audited, strict = capp.tasks["proj.audited"], capp.tasks["proj.strict"]
    audited_class = type(audited).__mro__[1]     # type(audited) is Celery's, per task
    assert audited_class.__name__ == "Audited" and issubclass(audited_class, capp.Task)
    assert isinstance(strict, audited_class)
    assert (audited.max_retries, audited.time_limit, strict.max_retries, strict.time_limit) == (
        7, 20, 0, 5)
    strict.on_failure(ValueError("x"), "job-1", (), {}, None)    # super() reaches Celery's
    assert calls == ["strict proj.strict ValueError job-1"]
    assert (strict.label_twice, strict.family()) == ("strict proj.strict twice", "audited+strict")

    # forward=False: the localq app still sends to its file.
    assert type(app.AsyncResult("x")).__module__ == "localq.result"
    assert "delay" not in vars(app.tasks["proj.plain"])


def test_priority_is_kept_on_brokers_that_run_9_first(with_celery, tmp_path):
    from localq.celery import make_celery
    app, _ = full_app(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        capp = make_celery(app, broker="amqp://guest@127.0.0.1:9//", forward=False)
    assert route(capp, "proj.full") == ("images", 8)
    assert "priority_steps" not in (capp.conf.broker_transport_options or {})


def test_forwarded_app_sends_through_celery(with_celery, tmp_path):
    """forward=True: the localq objects the code already uses now send through Celery
    (eagerly here: Celery's task_always_eager needs no broker)."""
    from localq.celery import make_celery
    app = Localq(str(tmp_path / "jobs.db"))

    @app.task
    def square(x):
        return x * x

    @app.task(bind=True)
    def whoami(self):
        return self.request.id

    capp = make_celery(app, task_always_eager=True)
    result = square.delay(7)
    assert isinstance(result, celery.result.EagerResult) and result.get() == 49
    assert square.apply_async((3,), priority=9, countdown=0).get() == 9
    job = whoami.apply_async(task_id="my-id")
    assert job.get() == "my-id"
    assert app.map(square, range(4)) == [0, 1, 4, 9]           # a Celery group
    assert app.starmap(square, [(5,)]) == [25]
    assert celery.group(square.s(2), square.s(3))().get() == [4, 9]      # canvas: Celery's
    assert celery.chain(square.s(2), square.s(), square.si(3))().get() == 9
    assert app.control is capp.control
    with pytest.raises(ConfigurationError, match=r"app.map\(resume=...\) needs localq's"):
        app.map(square, [1], resume="nightly")
    assert not os.path.exists(tmp_path / "jobs.db")             # localq's file: untouched


def test_localq_ignore_and_reject_are_celerys_own_on_celery(with_celery, tmp_path):
    """A task raising localq's Ignore or Reject is ignored or rejected by Celery (its
    tracer knows its own classes only): eagerly here, with no broker."""
    from localq import Ignore, Reject
    from localq.celery import make_celery
    app = Localq(str(tmp_path / "jobs.db"))
    started: list[str] = []

    class Hooked(Task):
        def before_start(self, task_id: str, args: tuple, kwargs: dict) -> None:
            started.append(task_id)

    @app.task(bind=True)
    def by_hand(self, x):
        self.update_state(state="SUCCESS", meta=x * 2)      # Celery's own update_state
        raise Ignore()

    @app.task(base=Hooked)
    def rejects(requeue):
        raise Reject("bad input", requeue=requeue)

    capp = make_celery(app, task_always_eager=True)
    assert by_hand.delay(21).state == "IGNORED"
    rejected = rejects.apply_async((False,), task_id="r1")
    assert rejected.state == "REJECTED" and started == ["r1"]    # before_start: Celery's
    with pytest.raises(celery.exceptions.Reject) as info:
        capp.tasks[rejects.name](True)                  # called as Celery's tracer calls it
    assert (info.value.reason, info.value.requeue) == ("bad input", True)
    assert isinstance(info.value.__cause__, Reject)


def test_a_task_class_with_init_is_refused_by_name(with_celery, tmp_path):
    from localq.celery import make_celery
    app = Localq(str(tmp_path / "jobs.db"))

    class Setup(Task):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)

    @app.task(base=Setup)
    def job():
        return None

    with pytest.raises(ConfigurationError, match="task class .*Setup defines __init__"):
        make_celery(app, forward=False)


# ------------------------------------------------------------------ slow: on real servers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def stop(proc: subprocess.Popen, children: list[int], timeout: float = 30.0) -> None:
    """SIGTERM (a warm shutdown), then SIGKILL for whatever is left; by pid."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for pid in children:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(pid_alive(p) for p in children), what="children to exit")


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test's own: a free loopback port, a password, a data folder
    in tmp_path, nothing saved; stopped by pid."""
    server = shutil.which("redis-server")
    need(server, "redis-server", "apt-get install redis-server (.ci/run installs it)")
    import redis
    folder = tmp_path / "redis"
    folder.mkdir(mode=0o700)
    port, password = free_port(), secrets.token_hex(16)
    write_private(folder / "redis.conf",
                  f"port {port}\nbind 127.0.0.1\ndir {folder}\nsave \"\"\nappendonly no\n"
                  f"requirepass {password}\nlogfile {folder / 'redis.log'}\n")
    proc = subprocess.Popen([server, str(folder / "redis.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    client = redis.Redis(host="127.0.0.1", port=port, password=password)

    def ready() -> bool:
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:
            assert proc.poll() is None, (folder / "redis.log").read_text()
            return False
    try:
        wait_for(ready, what="redis-server to answer")
        client.close()
        yield f"redis://:{password}@127.0.0.1:{port}/0"
    finally:
        client.close()
        stop(proc, [])
        assert proc.returncode == 0


class CeleryWorker:
    """``celery -A celery_tasks:celery_app worker`` as a real subprocess."""

    def __init__(self, broker: str, folder: Path, name: str = "worker", *options: str) -> None:
        self.log = folder / f"celery-{name}.log"
        self.ticks = folder / f"ticks-{name}.txt"
        env = dict(os.environ, CELERY_TASKS_BROKER=broker, LOCALQ_DB=str(folder / "unused.db"),
                   CELERY_TASKS_TICKS=str(self.ticks),
                   PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]))
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "celery_tasks:celery_app", "worker",
                 *(options or ("--pool=prefork", "-c", "2", "-Q", "default,other",
                               "-B", "-s", str(folder / "celerybeat-schedule"))),
                 "-l", "INFO", "-n", f"localq-test-{os.getpid()}-{name}@%h",
                 "--without-gossip", "--without-mingle", "--without-heartbeat"],
                cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def ready(self) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, self.log.read_text()
            return " ready." in self.log.read_text()
        wait_for(up, timeout=60, what="the Celery worker to be ready")

    def stop(self) -> None:
        stop(self.proc, child_pids(self.proc.pid))


def outcome(result: Any) -> tuple[str, Any]:
    """(state, value), an exception as its type's name: what the two runs must share."""
    value = result.get(timeout=30, propagate=False)
    if isinstance(value, BaseException):
        value = type(value).__name__
    return result.state, value


def run_cases(tasks: Any, folder: Path) -> dict[str, Any]:
    """celery_tasks' cases, sent with localq's API: the same lines for both runs."""
    hooks, marker = folder / "hooks.log", folder / "fire_and_forget"
    sent = {
        "add": tasks.add.delay(2, 3),
        "flaky": tasks.flaky.delay(2),
        "gives_up": tasks.gives_up.delay(),
        "autoretry": tasks.always_key_error.delay("k"),
        "soft limit": tasks.careful.delay(30),
        "hard limit (annotation)": tasks.runaway.delay(),
        "fails": tasks.fails.delay("bad input"),
        "hooked ok": tasks.hooked.delay(3, log=str(hooks)),
        "hooked fails": tasks.hooked.apply_async((-1,), {"log": str(hooks)}, priority=9),
        "sends": tasks.sends.delay(4),
        "ignore_result": tasks.fire_and_forget.delay(str(marker)),
        "stored by hand, then Ignore": tasks.stores_by_hand.delay(21),
        "failed by hand, then Ignore": tasks.fails_by_hand.delay("by hand"),
    }
    limited = [tasks.limited.delay(i) for i in range(8)]
    got = {name: outcome(result) for name, result in sent.items()}
    flaky = sent["flaky"].get(timeout=30)
    got["flaky"] = (got["flaky"][0], flaky["retries"], flaky["task"],
                    flaky["id"] == sent["flaky"].id)
    got["fails"] += (str(sent["fails"].get(timeout=30, propagate=False)),)
    got["sends"] = tasks.app.AsyncResult(got["sends"][1]).get(timeout=30)
    got["limited"] = [r.get(timeout=30) for r in limited]
    got["map"] = tasks.app.map(tasks.limited, range(5), timeout=30)
    wait_for(marker.exists, what="the ignore_result task to run")
    wait_for(lambda: hooks.exists() and len(hooks.read_text().splitlines()) == 2,
             what="both hooks to run")          # Celery stores the state before on_failure
    got["hooks"] = sorted(hooks.read_text().splitlines())
    # Read afresh, now that the tasks have long ended (a Celery result caches what it saw
    # first): on Celery, an Ignore that Celery did not know would have stored its own
    # failure over the one set by hand (Celery keeps a SUCCESS, whatever follows).
    for name in ("stored by hand, then Ignore", "failed by hand, then Ignore"):
        got[name] = outcome(tasks.app.AsyncResult(sent[name].id))
    return got


def check_progress(tasks: Any, folder: Path) -> None:
    """``self.update_state(state="PROGRESS", meta=...)`` read from this process."""
    go = folder / "go"
    result = tasks.progress.delay(str(go))
    wait_for(lambda: result.state == "PROGRESS", what="the PROGRESS state")
    assert result.info == {"done": 1}
    go.touch()
    assert result.get(timeout=30) == "finished"


PRIORITIES = [("p0", 0), ("p9", 9), ("p5", 5), ("p0 again", 0), ("p9 again", 9)]


def queue_by_priority(tasks: Any, folder: Path) -> Path:
    """Jobs of several priorities, in a queue that no worker serves yet."""
    path = folder / "order.txt"
    for label, priority in PRIORITIES:
        tasks.note.apply_async((str(path), label), queue="held", priority=priority)
    return path


def run_order(path: Path) -> list[str]:
    wait_for(lambda: path.exists() and len(path.read_text().splitlines()) == len(PRIORITIES),
             what="every job of the queue 'held' to run")
    return path.read_text().splitlines()


@pytest.mark.slow
def test_the_same_tasks_run_on_localq_and_on_celery_with_redis(with_celery, redis_url,
                                                               tmp_path):
    import celery_tasks as tasks

    from localq.celery import make_celery
    on_localq, on_celery = tmp_path / "localq", tmp_path / "celery"
    on_localq.mkdir()
    on_celery.mkdir()
    saved = [(obj, dict(vars(obj))) for obj in (tasks.app, *tasks.app.tasks.values())]
    tasks.app.path = tmp_path / "jobs.db"      # imported in this test: the plugin's too late
    worker = CeleryWorker(redis_url, on_celery)      # starts while localq runs
    try:
        with tasks.app.worker(concurrency=2, queues=["default", "other"]):
            local = run_cases(tasks, on_localq)
            if hasattr(Task, "update_state"):     # localq's comes with issue 15's idioms
                check_progress(tasks, on_localq)
        order = queue_by_priority(tasks, on_localq)
        with tasks.app.worker(concurrency=1, queues=["held"]):
            local["priority"] = run_order(order)
        worker.ready()
        with pytest.warns(UserWarning, match="per Celery worker.*celery_tasks.limited"):
            make_celery(tasks.app, broker=redis_url, backend=redis_url)   # the one line
        remote = run_cases(tasks, on_celery)
        check_progress(tasks, on_celery)
        # beat_schedule with localq's schedule(0.2), sent by Celery's beat (worker -B)
        wait_for(lambda: worker.ticks.exists() and worker.ticks.read_text().count("tick") >= 2,
                 what="Celery's beat to send the periodic task twice")
        order = queue_by_priority(tasks, on_celery)
        one_by_one = CeleryWorker(redis_url, on_celery, "held", "--pool=solo", "-Q", "held",
                                  "--prefetch-multiplier=1")
        try:
            remote["priority"] = run_order(order)
        finally:
            one_by_one.stop()
    finally:
        worker.stop()
        tasks.app.close()
        for obj, attributes in saved:     # the localq app and tasks as they were
            vars(obj).clear()
            vars(obj).update(attributes)

    expected = {
        "add": ("SUCCESS", 5),
        "flaky": ("SUCCESS", 2, "celery_tasks.flaky", True),
        "gives_up": ("SUCCESS", "gave up after 1"),
        "autoretry": ("FAILURE", "KeyError"),
        "soft limit": ("SUCCESS", "cleaned up"),
        "hard limit (annotation)": ("FAILURE", "TimeLimitExceeded"),
        "fails": ("FAILURE", "BadInput", "bad input"),
        "hooked ok": ("SUCCESS", 3),
        "hooked fails": ("FAILURE", "ValueError"),
        "stored by hand, then Ignore": ("SUCCESS", 42),
        "failed by hand, then Ignore": ("FAILURE", "BadInput"),
        "sends": 5,
        "limited": [i * i for i in range(8)],
        "map": [0, 1, 4, 9, 16],
        "priority": ["p9", "p9 again", "p5", "p0", "p0 again"],     # 9 first, on Redis too
        "hooks": ["failure celery_tasks.hooked ValueError negative: -1",
                  "success celery_tasks.hooked 3"],
    }
    # What differs, as the README says: Celery stores nothing for ignore_result=True.
    assert local.pop("ignore_result") == ("SUCCESS", None)
    assert remote.pop("ignore_result") == ("PENDING", None)
    assert local == expected
    assert remote == expected
