"""Tasks used by the tests; importable by worker subprocesses (``sample_tasks:app``)."""
from __future__ import annotations

import os
import signal
import time

from localq import Localq, SoftTimeLimitExceeded

app = Localq()   # the path comes from $LOCALQ_DB (subprocesses) or the app fixture


@app.task
def add(x, y):
    return x + y


@app.task
def boom(message="boom"):
    raise ValueError(message)


class CustomError(Exception):
    pass


@app.task
def custom_boom():
    raise CustomError("custom", 42)


@app.task
def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return value


@app.task
def record(path, value):
    """Append one line per execution: tests count how often each job ran."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{value} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return value


@app.task
def slow_record(path, value, seconds):
    record(path, f"start-{value}")
    time.sleep(seconds)
    record(path, value)
    return value


@app.task(bind=True)
def whoami(self):
    return {"id": self.request.id, "retries": self.request.retries, "pid": os.getpid()}


@app.task
def getpid():
    return os.getpid()


@app.task(bind=True, max_retries=3, default_retry_delay=0.01)
def flaky(self, fails, path=None):
    if path:
        record(path, self.request.retries)
    if self.request.retries < fails:
        raise self.retry(exc=ConnectionError(f"attempt {self.request.retries}"))
    return self.request.retries


@app.task(bind=True, max_retries=1)
def retry_once_when_told(self, folder, countdown):
    """The first attempt says it runs (``folder/running``), waits for ``folder/go``, then
    asks for a retry after ``countdown``; the second returns 1."""
    if self.request.retries == 0:
        open(os.path.join(folder, "running"), "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(folder, "go")) and time.monotonic() < deadline:
            time.sleep(0.005)
        raise self.retry(countdown=countdown)
    return self.request.retries


@app.task(bind=True, max_retries=2, default_retry_delay=0.01)
def retry_no_exc(self):
    raise self.retry()


@app.task(autoretry_for=(KeyError,), retry_backoff=0.01, retry_jitter=False, max_retries=4,
          bind=True)
def auto(self, fails):
    if self.request.retries < fails:
        raise KeyError(f"missing {self.request.retries}")
    return "ok"


@app.task(time_limit=0.5)
def hard_limited(seconds):
    time.sleep(seconds)
    return "finished"


@app.task(soft_time_limit=0.3)
def soft_limited(seconds):
    try:
        time.sleep(seconds)
        return "finished"
    except SoftTimeLimitExceeded:
        return "cleaned up"


@app.task(time_limit=0.5)
def stubborn():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        pass


@app.task
def die(code=1):
    os._exit(code)


@app.task(reject_on_worker_lost=True)
def die_once(path):
    if not os.path.exists(path):
        open(path, "w").close()
        os._exit(1)
    return "second time"


@app.task(acks_late=False)
def early_ack(seconds):
    time.sleep(seconds)
    return "done"


_hoard: list[bytearray] = []


@app.task
def allocate(mb):
    """Leak ``mb`` MiB (touched, so resident) in this child, as a leaky task would."""
    data = bytearray(mb * 1024 * 1024)
    data[::4096] = b"x" * len(data[::4096])
    _hoard.append(data)
    return os.getpid()


@app.task(rate_limit="10/s")
def limited(path, i):
    record(path, f"{i} {time.time()}")
    return i


@app.task(max_concurrency=1)
def capped(path, i, seconds):
    record(path, f"in {i} {time.time()}")
    time.sleep(seconds)
    record(path, f"out {i} {time.time()}")
    return i


@app.task(serializer="pickle")
def pickled(value):
    return value


@app.task
def crash_every(path, i, every):
    """Log this run, then kill the child on every ``every``-th job."""
    with open(path, "a") as f:
        f.write(f"{i}\n")
    if i % every == 0:
        os._exit(1)
    return i


@app.task
def orphan_grandchild_then_die(pidfile):
    """Fork a grandchild that outlives the child (holding its channel open), then die."""
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    with open(pidfile, "w") as f:
        f.write(str(pid))
    os._exit(1)


@app.task(bind=True)
def retry_nan(self):
    raise self.retry(countdown=float("nan"))


# ------------------------------------------------------------------ the canvas

@app.task
def tsum(values, extra=0):
    return sum(values) + extra


@app.task
def mul(x, y):
    return x * y


@app.task
def listed(*values):
    """Its arguments as a list: shows what a chain or chord passed on."""
    return list(values)


@app.task
def noop():
    return None


@app.task
def body_record(results, path):
    """A chord body that appends one line per run: tests count how often it ran."""
    with open(path, "a") as f:
        f.write(f"{len(results)} {sum(results)}\n")
    return sum(results)


@app.task
def error_id(task_id, path):
    """Celery's old-style errback: gets the failed task's id."""
    with open(path, "a") as f:
        f.write(f"{task_id}\n")
    return task_id


@app.task
def on_error(request, exc, traceback, path):
    """Celery's new-style errback: called in the worker with the failed job's request."""
    with open(path, "a") as f:
        f.write(f"{request.id} {type(exc).__name__} {exc}\n")


@app.task
def send_signature(sig, value):
    """A signature passed as an argument, rebuilt and sent from inside a task."""
    from localq import signature
    return signature(sig, app=app).delay(value).id


@app.task(bind=True)
def lineage(self, *ignored):
    return [self.request.parent_id, self.request.root_id]


@app.task
def wait_file(path, value=None):
    """Return ``value`` once ``path`` exists (at most a minute): the test decides when."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value
