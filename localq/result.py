"""AsyncResult: the state and outcome of one job, from any process.

``get()`` sleeps on a doorbell that the supervisor rings after it writes
outcomes, and re-checks the database on a backoff timer in case a ring is
lost, so a waiting ``get()`` costs close to no CPU and sees its result within
about a millisecond of it landing. A ring that carries the job's outcome (a short
SUCCESS, see wakeup.outcomes_message) saves the read of the file: the result then
holds only what ``result`` needs, and anything else reads the whole row once. The
doorbells are the process's, lent to a thread for one wait (see ``_take_bell``), so
threads that come and go cost no descriptors.

``ResultSet`` is Celery's set of AsyncResults waited on together (``GroupResult``
derives from it); ``allow_join_result()`` lets a task wait on a result.
"""
from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterable, Iterator, TypeVar

from .exceptions import ConfigurationError, TaskRevokedError, TimeoutError
from .ids import parse_id
from .serializer import (
    check_accepted,
    decode_call,
    decode_exception,
    decode_value,
    safe_text,
    stored_exception_info,
)
from .store.records import FINAL_STATES
from .task import content_accepted
from .wakeup import Doorbell, carried_outcomes, waiter_name, wake_folder

if TYPE_CHECKING:
    from .app import Localq

R = TypeVar("R")

# Waiter bells are shared by the threads of a process: a thread takes an idle one
# for the length of one wait and gives it back, so a process holds as many as it
# has threads waiting at once (plus MAX_IDLE), however many threads come and go.
MAX_IDLE = 4
_CARRIED = "carried"      # a row built from a ring: only what ``result`` reads
NO_WORKER_GRACE = 1.0     # seconds a get() waits before it warns that no worker is running
_idle: dict[str, list[Doorbell]] = {}       # per wake-up folder
_live: weakref.WeakSet[Doorbell] = weakref.WeakSet()
_bells_pid = os.getpid()
_bells_lock = threading.Lock()
_at_exit: list[bool] = []


def _forked() -> bool:
    """True in a forked copy (once): the parent's bells are not ours to use or close."""
    global _bells_pid
    if _bells_pid == os.getpid():
        return False
    _bells_pid = os.getpid()
    _idle.clear()
    _live.clear()
    return True


def _take_bell(db_path: str) -> Doorbell:
    _forked()
    folder = wake_folder(db_path)
    with _bells_lock:
        idle = _idle.get(folder)
        bell = idle.pop() if idle else None
    if bell is None:
        bell = Doorbell(folder, waiter_name())
        with _bells_lock:
            if not _at_exit:
                _at_exit.append(True)
                atexit.register(close_bells)
            _live.add(bell)
    return bell


def _give_back(bell: Doorbell) -> None:
    if _forked() or bell.pid != _bells_pid:
        return      # the parent's: not ours to use or close
    with _bells_lock:
        idle = _idle.setdefault(bell.folder, [])
        if len(idle) < MAX_IDLE and bell.sock.fileno() >= 0:
            idle.append(bell)
            return
    bell.close()


def close_bells(folder: str | None = None) -> None:
    """Close this process's waiter bells: all of them, or those in one wake-up folder
    (the pytest plugin does this before it deletes a test's database)."""
    if _forked():
        return
    with _bells_lock:
        for bell in [b for b in _live if folder is None or b.folder == folder]:
            bell.close()
            _live.discard(bell)
        for key in [k for k in _idle if folder is None or k == folder]:
            del _idle[key]


class Waiter:
    """Sleep until a supervisor rings (outcomes were written) or a backoff timer
    passes; the caller re-checks the database after each :meth:`wait` unless a ring
    carried the outcome of job ``seq`` (``carried``: task, serializer, result), and
    calls :meth:`close` when done (garbage collection closes the bell otherwise)."""

    def __init__(self, db_path: str, timeout: float | None, seq: int | None = None) -> None:
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.seq = seq
        self.carried: tuple[str, str, str] | None = None
        self.bell: Doorbell | None = _take_bell(db_path)
        # Rings from before this wait: only a carried outcome means something now
        # (it is final); the caller checks the file after this anyway.
        self._look(self.bell.drain_messages())
        self.fallback = 0.005

    def _look(self, messages: list[bytes]) -> None:
        if self.seq is None:
            return
        for message in messages:
            for seq, task, serializer, result in carried_outcomes(message):
                if seq == self.seq:
                    self.carried = task, serializer, result

    def wait(self) -> bool:
        """False once the deadline has passed."""
        wait = self.fallback
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                return False
            wait = min(wait, remaining)
        assert self.bell is not None, "wait() after close()"
        if self.bell.poller.poll(wait * 1000):
            self._look(self.bell.drain_messages())
        else:
            self.fallback = min(self.fallback * 2, 0.5)
        return True

    def close(self) -> None:
        bell, self.bell = self.bell, None
        if bell is not None:
            _give_back(bell)

    def __del__(self) -> None:
        # Not back to the pool: the collector may run this while this very thread
        # holds _bells_lock. Closing the bell needs no lock.
        bell, self.bell = self.bell, None
        if bell is not None and bell.pid == os.getpid():
            try:
                bell.close()
            except Exception:   # interpreter shutdown: the atexit hook closes the bells
                pass


class AsyncResult(Generic[R]):
    """A job's state and outcome; ``AsyncResult[R]`` for type checkers, ``R`` being what
    ``get()`` returns (a task's ``delay()`` gives ``AsyncResult[<its return type>]``)."""

    parent: Any = None      # the canvas: the previous step of a chain, a chord's header
    _final_state: str | None = None     # the state, once read final (it never changes)

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
        """The whole row (kept once final: it never changes again)."""
        row = self._row
        if row is not None and row["state"] in FINAL_STATES and not row.get(_CARRIED):
            return row
        self._row = self.app.store.job(self.id)
        return self._row

    def _final(self) -> dict | None:
        """The row if the job is final (kept: it never changes again), else None: one
        lookup, made after each ring while waiting."""
        if self._row is None or self._row["state"] not in FINAL_STATES:
            row = self.app.store.final_job(self.id)
            if row is None:
                return None
            self._row = row
        return self._row

    @property
    def state(self) -> str:
        # Only the state column until the job is final (ready() is polled in loops),
        # then kept; the whole row is read once, when something asks for more.
        row = self._row
        if row is not None and row["state"] in FINAL_STATES:
            return row["state"]
        if self._final_state is not None:
            return self._final_state
        state = self.app.store.state(self.id)
        if state in FINAL_STATES:
            self._final_state = state
        if state == "STARTED":      # a custom state the task set (update_state)?
            custom = self.app.store.task_state(self.id)
            if custom is not None:
                return custom[0]
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
        """The value when SUCCESS, the exception when FAILURE or REVOKED, the meta of a
        custom state (update_state) while the job runs, else None (as Celery's,
        ``info`` is the same)."""
        row = self._row
        if row is None or row["state"] not in FINAL_STATES:
            row = self._load()
        if row is not None and row["state"] == "STARTED":
            custom = self.app.store.task_state(self.id)
            if custom is not None:
                _, meta, serializer, task = custom
                serializer = self.app.conf.result_serializer or serializer
                check_accepted(serializer, result_content(self.app, task),
                               f"the meta of job {self.id}", "result_accept_content")
                return decode_value(serializer, meta)
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
    def args(self) -> tuple | None:
        """The job's positional arguments (of its next attempt, after a retry with new
        ones); None for an unknown id."""
        call = self._call()
        return None if call is None else tuple(call[0])

    @property
    def kwargs(self) -> dict | None:
        call = self._call()
        return None if call is None else call[1]

    def _call(self) -> tuple | None:
        row = self._load()
        if row is None or row.get("payload") is None:
            return None
        task = self.app.tasks.get(row["task"] or "")
        accept = task.accepted_content() if task is not None \
            else content_accepted(self.app.conf)[0]
        check_accepted(row["serializer"], accept, f"the arguments of job {self.id}",
                       "accept_content")
        return decode_call(row["serializer"], row["payload"])

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
            interval: float | None = None, disable_sync_subtasks: bool = True,
            **ignored: Any) -> R:
        """Wait for the job to finish; return its value or raise its exception.

        Inside a task running on a worker it raises RuntimeError, as Celery's does: the
        task would hold a child while it waits, and with every child waiting no job
        could ever finish. ``disable_sync_subtasks=False`` waits anyway (Celery's), as
        does every ``get()`` under ``allow_join_result()``."""
        if disable_sync_subtasks:
            assert_will_not_block(self.id)
        row = self.wait_for_final(timeout)
        if row["state"] == "SUCCESS":
            return self.result
        exc = self._exception(row)
        if propagate:
            raise exc
        return exc      # type: ignore[return-value]  # typed for the usual propagate=True

    wait = get

    def wait_for_final(self, timeout: float | None) -> dict:
        row = self._final()
        if row is not None:
            return row
        seq = parse_id(self.id)
        waiter = Waiter(self.app.path, timeout, seq)
        # A worker started together with this wait registers within a fraction of a
        # second: only a wait that outlasts NO_WORKER_GRACE (or times out) looks for one.
        look_at: float | None = time.monotonic() + NO_WORKER_GRACE
        try:
            while True:
                if waiter.carried is not None:
                    task, serializer, result = waiter.carried
                    self._row = {"seq": seq, "id": None, "state": "SUCCESS", "task": task,
                                 "serializer": serializer, "result": result, _CARRIED: True}
                    self.app.note_waited()
                    return self._row
                if (row := self._final()) is not None:
                    self.app.note_waited()
                    return row
                waited = waiter.wait()
                if look_at is not None and (not waited or time.monotonic() >= look_at):
                    look_at = None
                    from .status import warn_if_no_worker
                    warn_if_no_worker(self, self.app, "get()", stacklevel=3)
                if not waited:
                    raise TimeoutError(f"the operation timed out: task {self.id} is still "
                                       f"{self.state} after {timeout}s")
        finally:
            waiter.close()

    @property
    def children(self) -> list[AsyncResult]:
        """The jobs this job's outcome sent (the canvas: a chain's next step, links)."""
        from .ids import format_id
        return [AsyncResult(custom or format_id(seq), self.app)
                for seq, custom in self.app.store.children(self.id)]

    def forget(self) -> None:
        """Delete a finished job's stored result."""
        self.app.store.forget(self.id)
        self._row = self._final_state = None

    def revoke(self, terminate: bool = False, signal: Any = None) -> None:
        self.app.control.revoke(self.id, terminate=terminate)
        self._row = None


def _in_worker_task() -> bool:
    """Is this a worker's child running a job right now?"""
    from .worker import execute
    return execute.channel[0] is not None and execute._current[0] != 0


# allow_join_result / denied_join_result: None as the process is (a get() inside a task
# running on a worker raises), True allowed, False denied. For the whole process, as
# Celery's (a worker's child runs one job at a time).
_join_allowed: list[bool | None] = [None]


@contextmanager
def allow_join_result() -> Iterator[None]:
    """Celery's ``celery.result.allow_join_result``: under it, ``get()`` inside a task
    waits instead of raising (``get(disable_sync_subtasks=False)`` for every call). The
    risk is the task's: jobs already queued behind it in its own child (a child takes
    several short jobs at a time) wait with it, and with every child waiting no job can
    finish."""
    previous, _join_allowed[0] = _join_allowed[0], True
    try:
        yield
    finally:
        _join_allowed[0] = previous


@contextmanager
def denied_join_result() -> Iterator[None]:
    """Celery's ``celery.result.denied_join_result``: under it, ``get()`` raises
    RuntimeError anywhere (unless called with ``disable_sync_subtasks=False``)."""
    previous, _join_allowed[0] = _join_allowed[0], False
    try:
        yield
    finally:
        _join_allowed[0] = previous


def assert_will_not_block(what: str) -> None:
    """Raise RuntimeError where waiting for ``what`` would block a task (Celery's)."""
    allowed = _join_allowed[0]
    if allowed or (allowed is None and not _in_worker_task()):
        return
    raise RuntimeError(
        f"Never call result.get() within a task (waiting for {what}): the child running "
        f"this task would be blocked, and with every child waiting no job can finish. "
        f"Chain the work instead, return the id, or wait under allow_join_result() (or "
        f"get(disable_sync_subtasks=False)) if you are sure another child is free.")


def result_content(app: Localq, task_name: str | None) -> frozenset[str]:
    """The serializers results of ``task_name`` may be decoded with in ``app``: its
    ``result_accept_content`` plus what it declares (a task it does not define
    declares nothing)."""
    task = app.tasks.get(task_name or "")
    if task is not None:
        return task.accepted_content(result=True)
    return content_accepted(app.conf)[1]


class EagerResult(AsyncResult[R]):
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


class ResultSet:
    """Celery's ``ResultSet``: AsyncResults waited on and looked at together, in order.
    ``GroupResult`` derives from it (a group's members, read from the file)."""

    def __init__(self, results: Iterable[Any], app: Localq | None = None,
                 **ignored: Any) -> None:
        self._results: list | None = list(results)
        self._app = app

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: [{', '.join(r.id for r in self.results)}]>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ResultSet) and other.results == self.results

    @property
    def app(self) -> Localq:
        if self._app is None and self._results and not isinstance(self._results[0], str):
            self._app = self._results[0].app
        if self._app is None:
            raise ConfigurationError(f"{type(self).__name__}: pass app=")
        return self._app

    @property
    def results(self) -> list:
        assert self._results is not None
        return self._results

    def _edited(self) -> None:
        """The members changed (add, remove, ...): see GroupResult."""

    # -------------------------------------------------------------- the members

    def add(self, result: AsyncResult) -> None:
        """Add ``result`` unless it is in already."""
        if result not in self.results:
            self.results.append(result)
            self._edited()

    def remove(self, result: AsyncResult | str) -> None:
        """Remove ``result`` (or the result of that id); KeyError if it is not in."""
        if isinstance(result, str):
            result = AsyncResult(result, self.app)
        try:
            self.results.remove(result)
        except ValueError:
            raise KeyError(result) from None
        self._edited()

    def discard(self, result: AsyncResult | str) -> None:
        """Remove ``result`` if it is in."""
        try:
            self.remove(result)
        except KeyError:
            pass

    def update(self, results: Iterable[AsyncResult]) -> None:
        """Add each of ``results`` that is not in already."""
        self.results.extend(r for r in results if r not in self.results)
        self._edited()

    def clear(self) -> None:
        self.results[:] = []
        self._edited()

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator:
        return iter(self.results)

    def __getitem__(self, index: int) -> Any:
        return self.results[index]

    # -------------------------------------------------------------- states

    def ready(self) -> bool:
        """Has every member finished?"""
        return all(r.ready() for r in self.results)

    def successful(self) -> bool:
        """Has every member succeeded?"""
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
        """Has any member failed?"""
        return any(r.failed() for r in self.results)

    def waiting(self) -> bool:
        """Is any member not finished yet?"""
        return not self.ready()

    def completed_count(self) -> int:
        """How many members succeeded (Celery's)."""
        return sum(r.successful() for r in self.results)

    def revoke(self, terminate: bool = False, signal: Any = None) -> None:
        for r in self.results:
            r.revoke(terminate=terminate)

    def forget(self) -> None:
        """Forget every member's result."""
        for r in self.results:
            r.forget()

    # -------------------------------------------------------------- waiting

    def get(self, timeout: float | None = None, propagate: bool = True,
            interval: float | None = None, callback: Callable[[str, Any], None] | None = None,
            disable_sync_subtasks: bool = True, **ignored: Any) -> list:
        """Every member's value, in order, waiting for each in turn: the first failure in
        that order raises (``propagate=False``: is returned in its place). ``timeout``
        holds for the whole wait. ``callback(id, value)`` takes each value instead of the
        list (Celery's). Raises inside a task, as ``AsyncResult.get``."""
        if disable_sync_subtasks:
            assert_will_not_block(f"the results of {self!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        values: list = []
        for result in self.results:
            remaining = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"the operation timed out: {len(values)} of "
                                       f"{len(self.results)} results after {timeout}s")
            value = result.get(timeout=remaining, propagate=propagate,
                               disable_sync_subtasks=False)
            if callback is not None:
                callback(result.id, value)
            else:
                values.append(value)
        return values

    join = get
    join_native = get
