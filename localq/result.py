"""AsyncResult: the state and outcome of one job, from any process.

``get()`` sleeps on a doorbell that the supervisor rings after it writes
outcomes, and re-checks the database on a backoff timer in case a ring is
lost, so a waiting ``get()`` costs close to no CPU and sees its result within
about a millisecond of it landing.
"""
from __future__ import annotations

import atexit
import os
import select
import threading
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .exceptions import TaskRevokedError, TimeoutError
from .rows import FINAL_STATES
from .serializer import (
    check_accepted,
    decode_exception,
    decode_value,
    safe_text,
    stored_exception_info,
)
from .task import content_accepted
from .wakeup import Doorbell, waiter_name, wake_folder

if TYPE_CHECKING:
    from .app import Localq

_bells = threading.local()
_all_bells: list[Doorbell] = []
_bells_pid = os.getpid()
_bells_lock = threading.Lock()


def _my_bell(db_path: str) -> Doorbell:
    """This thread's doorbell for the database's wake-up folder (made once)."""
    global _bells_pid
    if _bells_pid != os.getpid():          # a forked copy: the parent's bells are not ours
        _bells_pid = os.getpid()
        _bells.__dict__.clear()
        _all_bells.clear()
    folder = wake_folder(db_path)
    bells = _bells.__dict__.setdefault("by_folder", {})
    bell = bells.get(folder)
    if bell is None:
        bell = Doorbell(folder, waiter_name())
        bells[folder] = bell
        with _bells_lock:
            if not _all_bells:
                atexit.register(close_bells)
            _all_bells.append(bell)
    return bell


def close_bells(folder: str | None = None) -> None:
    """Close this process's waiter bells: all of them, or those in one wake-up folder
    (the pytest plugin does this before it deletes a test's database)."""
    if _bells_pid != os.getpid():
        return
    with _bells_lock:
        for bell in [b for b in _all_bells if folder is None or b.folder == folder]:
            bell.close()
            _all_bells.remove(bell)
    by_folder = _bells.__dict__.get("by_folder", {})
    for key in [k for k in by_folder if folder is None or k == folder]:
        del by_folder[key]


class Waiter:
    """Sleep until a supervisor rings (outcomes were written) or a backoff timer
    passes; the caller re-checks the database after each :meth:`wait`."""

    def __init__(self, db_path: str, timeout: float | None) -> None:
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.bell = _my_bell(db_path)
        self.bell.drain_messages()     # rings from before this wait mean nothing now
        self.fallback = 0.005

    def wait(self) -> bool:
        """False once the deadline has passed."""
        wait = self.fallback
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                return False
            wait = min(wait, remaining)
        ready, _, _ = select.select([self.bell], [], [], wait)
        if ready:
            self.bell.drain_messages()
        else:
            self.fallback = min(self.fallback * 2, 0.5)
        return True


class AsyncResult:
    def __init__(self, id: str, app: Localq) -> None:
        self.id = id
        self.task_id = id
        self.app = app
        self._row: dict | None = None

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -------------------------------------------------------------- reading

    def _load(self) -> dict | None:
        if self._row is not None and self._row["state"] in FINAL_STATES:
            return self._row      # final: it never changes again
        self._row = self.app.store.job(self.id)
        return self._row

    @property
    def state(self) -> str:
        # Only the state column until the job is final (ready() is polled in loops);
        # the whole row is read once, when something asks for more than the state.
        row = self._row
        if row is not None and row["state"] in FINAL_STATES:
            return row["state"]
        state = self.app.store.state(self.id)
        return "PENDING" if state is None else state

    status = state

    def ready(self) -> bool:
        return self.state in FINAL_STATES

    def successful(self) -> bool:
        return self.state == "SUCCESS"

    def failed(self) -> bool:
        return self.state == "FAILURE"

    @property
    def result(self) -> Any:
        """The value when SUCCESS, the exception when FAILURE or REVOKED, else None."""
        row = self._load()
        if row is None or row["state"] not in FINAL_STATES:
            return None
        if row["state"] == "SUCCESS":
            serializer = self.app.conf.result_serializer or row["serializer"]
            check_accepted(serializer, result_content(self.app, row["task"]),
                           f"the result of job {self.id}", "result_accept_content")
            return decode_value(serializer, row["result"])
        return self._exception(row)

    info = result

    @property
    def traceback(self) -> str | None:
        row = self._load()
        return None if row is None else row["traceback"]

    @property
    def date_done(self) -> datetime | None:
        row = self._load()
        if row is None or row["done"] is None:
            return None
        return datetime.fromtimestamp(row["done"], tz=timezone.utc)

    @property
    def retries(self) -> int:
        row = self._load()
        return 0 if row is None else row["retries"]

    @property
    def name(self) -> str | None:
        row = self._load()
        return None if row is None else row["task"]

    @property
    def attempts(self) -> list[dict]:
        """Every attempt: earlier ones as recorded, then the current or final one."""
        row = self._load()
        if row is None:
            return []
        attempts = self.app.store.attempts(row["seq"])
        if row["state"] in FINAL_STATES or row["state"] == "STARTED":
            message = None
            if row["state"] in ("FAILURE", "REVOKED"):
                message = stored_exception_info(row["result"]).get("exc_message")
                if message is None and row["result"] is not None:
                    message = str(self._exception(row))      # pickled, when accepted
            attempts.append({"attempt": len(attempts), "started": row["started"],
                             "ended": row["done"], "pid": row["pid"], "outcome": row["state"],
                             "exc_type": row["exc_type"],
                             "exc_message": safe_text(message) if message is not None
                             else None})
        return attempts

    def _exception(self, row: dict) -> BaseException:
        accept = result_content(self.app, row["task"])
        if row["state"] == "REVOKED":
            exc = decode_exception(row["result"], row["exc_type"], None, accept) \
                if row["result"] else None
            message = str(exc) if exc is not None else "revoked"
            return TaskRevokedError(f"task {self.id} was {message}" if message in
                                    ("revoked", "expired", "terminated") else message)
        return decode_exception(row["result"], row["exc_type"], row["traceback"], accept)

    # -------------------------------------------------------------- waiting

    def get(self, timeout: float | None = None, propagate: bool = True,
            interval: float | None = None, **ignored: Any) -> Any:
        """Wait for the job to finish; return its value or raise its exception."""
        row = self.wait_for_final(timeout)
        if row["state"] == "SUCCESS":
            return self.result
        exc = self._exception(row)
        if propagate:
            raise exc
        return exc

    wait = get

    def wait_for_final(self, timeout: float | None) -> dict:
        row = self._load()
        if row is not None and row["state"] in FINAL_STATES:
            return row
        waiter = Waiter(self.app.path, timeout)
        while True:
            state = self.state
            if state in FINAL_STATES and (row := self._load()) is not None:
                return row
            if not waiter.wait():
                raise TimeoutError(f"the operation timed out: task {self.id} is still "
                                   f"{state} after {timeout}s")

    def forget(self) -> None:
        """Delete a finished job's stored result."""
        self.app.store.forget(self.id)
        self._row = None

    def revoke(self, terminate: bool = False, signal: Any = None) -> None:
        self.app.control.revoke(self.id, terminate=terminate)
        self._row = None


def result_content(app: Localq, task_name: str | None) -> frozenset[str]:
    """The serializers results of ``task_name`` may be decoded with in ``app``: its
    ``result_accept_content`` plus what it declares (a task it does not define
    declares nothing)."""
    task = app.tasks.get(task_name or "")
    if task is not None:
        return task.accepted_content(result=True)
    return content_accepted(app.conf)[1]


class EagerResult(AsyncResult):
    """The result of a job run eagerly: held in memory, never stored."""

    def __init__(self, id: str, app: Localq, state: str, serializer: str, result: Any,
                 exc_type: str | None, traceback: str | None, retries: int,
                 task: str | None = None) -> None:
        super().__init__(id, app)
        self._row = {"seq": 0, "id": id, "state": state, "serializer": serializer,
                     "result": result, "exc_type": exc_type, "traceback": traceback,
                     "done": time.time(), "retries": retries, "task": task, "started": None,
                     "pid": os.getpid()}

    def _load(self) -> dict | None:
        return self._row

    @property
    def attempts(self) -> list[dict]:
        return []

    def forget(self) -> None:
        pass
