"""One task module, run on localq and on Celery by test_celery.py (``celery_tasks``).

Written against localq's API only. The last lines are the one-line move to Celery, as the
README shows it; here they run only in the Celery worker that the test starts
(``$CELERY_TASKS_BROKER`` set), so that the test process can run the same tasks on
localq first.
"""
from __future__ import annotations

import os
import time

from localq import Ignore, Localq, MaxRetriesExceededError, SoftTimeLimitExceeded, Task, schedule

app = Localq()      # the path: the pytest plugin's temporary file, or $LOCALQ_DB
app.conf.task_annotations = {"celery_tasks.runaway": {"time_limit": 1}}
if os.environ.get("CELERY_TASKS_TICKS"):     # a periodic task, for the test's beat
    app.conf.beat_schedule = {"tick": {"task": "celery_tasks.note", "schedule": schedule(0.2),
                                       "args": (os.environ["CELERY_TASKS_TICKS"], "tick")}}


@app.task
def add(x, y):
    return x + y


@app.task(bind=True, max_retries=3, default_retry_delay=0.05)
def flaky(self, succeed_at):
    if self.request.retries < succeed_at:
        raise self.retry(exc=ConnectionError("not yet"))
    return {"retries": self.request.retries, "id": self.request.id, "task": self.request.task}


@app.task(bind=True, max_retries=1, default_retry_delay=0.05)
def gives_up(self):
    try:
        raise self.retry()              # the first run asks for another one
    except MaxRetriesExceededError:     # localq's class, caught on Celery too
        return f"gave up after {self.request.retries}"


@app.task(autoretry_for=(KeyError,), retry_kwargs={"countdown": 0.05}, max_retries=2)
def always_key_error(key):
    raise KeyError(key)


@app.task(soft_time_limit=1, time_limit=20)
def careful(seconds):
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:       # localq's class, caught on Celery too
        return "cleaned up"
    return "slept"


@app.task
def runaway():                          # its time_limit comes from task_annotations
    while True:
        time.sleep(0.01)


@app.task(rate_limit="50/s")
def limited(i):
    return i * i


@app.task(ignore_result=True)
def fire_and_forget(path):
    with open(path, "w") as f:
        f.write("done")
    return "not stored"


class BadInput(Exception):
    pass


@app.task
def fails(message):
    raise BadInput(message)


class Recorded(Task):
    max_retries = 0

    def record(self, line):
        with open(self.request.kwargs["log"], "a") as f:
            f.write(line + "\n")

    def on_success(self, retval, task_id, args, kwargs):
        self.record(f"success {self.name} {retval}")
        super().on_success(retval, task_id, args, kwargs)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        self.record(f"failure {self.name} {type(exc).__name__} {exc}")
        super().on_failure(exc, task_id, args, kwargs, einfo)


@app.task(base=Recorded, queue="other", priority=7)
def hooked(x, log):
    if x < 0:
        raise ValueError(f"negative: {x}")
    return x


@app.task
def sends(x):
    """Sends another task from inside a task: on Celery that goes through Celery too."""
    return add.delay(x, 1).id


@app.task
def note(path, label):
    with open(path, "a") as f:
        f.write(label + "\n")


@app.task(bind=True)
def progress(self, go):
    """Reports progress with Celery's idiom, then waits for the file ``go``."""
    self.update_state(state="PROGRESS", meta={"done": 1})
    deadline = time.monotonic() + 30
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "finished"


@app.task(bind=True)
def stores_by_hand(self, x):
    """Celery's documented idiom: the result stored by hand, the outcome ignored."""
    self.update_state(state="SUCCESS", meta=x * 2)
    raise Ignore()


@app.task(bind=True)
def fails_by_hand(self, message):
    """The same, for a failure stored by hand."""
    self.update_state(state="FAILURE", meta=BadInput(message))
    raise Ignore()


# -- the move to Celery: one line (the condition is the test's, not the move's) --------
if os.environ.get("CELERY_TASKS_BROKER"):
    from localq.celery import make_celery
    celery_app = make_celery(app, broker=os.environ["CELERY_TASKS_BROKER"],
                             backend=os.environ["CELERY_TASKS_BROKER"])
