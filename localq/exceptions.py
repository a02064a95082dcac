"""The error hierarchy: every error localq raises on its own account.

All of them derive from :class:`LocalqError`, and the names follow Celery's
(``celery.exceptions``) so that ``except`` clauses move across unchanged.
"""
from __future__ import annotations

import builtins


class LocalqError(Exception):
    """Base class of every localq error."""


class TimeoutError(LocalqError, builtins.TimeoutError):  # noqa: A001 - Celery's name
    """``AsyncResult.get`` waited longer than its timeout."""


class ConfigurationError(LocalqError, ValueError):
    """A setting, option or argument that localq cannot use."""


ImproperlyConfigured = ConfigurationError    # Celery's name (celery.exceptions)


class DatabaseError(LocalqError):
    """The database file cannot be used: not a localq file, corrupt, newer, or locked."""


class NotRegistered(LocalqError, KeyError):
    """A task name the app does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "task not registered"


class TaskRevokedError(LocalqError):
    """The job was revoked, expired before it started, or was terminated."""


class SoftTimeLimitExceeded(LocalqError):
    """Raised inside a task when its soft time limit passes; the task may catch it."""


class TimeLimitExceeded(LocalqError):
    """The task ran past its hard time limit and its child process was killed."""


class WorkerLostError(LocalqError):
    """The process running the task died before it reported an outcome."""


class MaxRetriesExceededError(LocalqError):
    """``self.retry()`` was called after the task's last allowed retry."""


class EncodeError(LocalqError, TypeError):
    """A value could not be encoded by the task's serializer."""


class ContentDisallowed(LocalqError):
    """A payload's serializer is not one the app accepts (Celery's ``accept_content``).

    Kombu's ``kombu.exceptions.ContentDisallowed``: a worker refuses to decode a
    job, and ``get()`` a result, written with a serializer the app did not opt in to.
    """


class TaskPredicate(LocalqError):
    """Base of the exceptions a task raises to tell the worker what to do with its job
    (Celery's ``celery.exceptions.TaskPredicate``): :class:`Retry`, :class:`Ignore`,
    :class:`Reject`."""


class Retry(TaskPredicate):
    """Raised by ``self.retry()``: tells the worker to run the job again later.

    Like Celery's ``celery.exceptions.Retry``: ``raise self.retry(...)``.
    """

    def __init__(self, message: str | None = None, exc: BaseException | None = None,
                 when: float | None = None) -> None:
        self.message = message
        self.exc = exc
        self.when = when  # absolute time (epoch seconds) of the next attempt
        super().__init__(message or (f"Retry: {exc!r}" if exc is not None else "Retry"))


class Ignore(TaskPredicate):
    """Raised by a task to ignore its own outcome (Celery's ``celery.exceptions.Ignore``).

    Celery's idioms work: ``self.update_state(state="SUCCESS", meta=value)`` (or
    ``state="FAILURE"``, ``meta=`` an exception) then ``raise Ignore()`` ends the job in
    that state, ``get()`` returning ``value`` (or raising the exception). Without such a
    state, where Celery leaves the job as it was (STARTED, for ever), localq ends it
    REVOKED, with a :class:`TaskRevokedError` saying that the task ignored itself: a job
    always ends, and a chain or chord waiting on it goes on (or fails) as for that state.
    No retry, no autoretry, no ``on_success``/``on_failure``/errbacks (as Celery's:
    ``after_return`` and task_postrun alone); the worker logs "ignored".
    """


class Reject(TaskPredicate):
    """Raised by a task to reject its job (Celery's ``celery.exceptions.Reject``).

    ``requeue=True``: the job goes back to its queue and runs again, as if never
    claimed (not counted as a retry, no retry limit: a task that always rejects loops
    for ever, as it does on Celery; in eager mode it runs again at once). A revoke
    that arrives meanwhile wins. ``requeue=False``: where Celery drops the message and
    leaves its result PENDING for ever, localq ends the job REVOKED with
    ``TaskRevokedError("rejected: <reason>")``. On Celery (``make_celery``) this is
    Celery's Reject, which requeues only with ``acks_late``.
    """

    def __init__(self, reason: object = None, requeue: bool = False) -> None:
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)

    def __str__(self) -> str:
        return f"reject requeue={self.requeue}: {self.reason}"

    __repr__ = __str__      # Celery's repr, which its worker logs


class TaskError(LocalqError):
    """A task failed with an exception that cannot be rebuilt in this process.

    ``exc_type`` is the original type's dotted name, ``exc_message`` its
    message and ``remote_traceback`` the traceback text from the worker.
    """

    def __init__(self, exc_type: str, exc_message: str, remote_traceback: str | None = None):
        self.exc_type = exc_type
        self.exc_message = exc_message
        self.remote_traceback = remote_traceback
        super().__init__(f"{exc_type}: {exc_message}")


class ChordError(LocalqError):
    """A chord's body did not run: a task of its header failed (Celery's name). The
    message names the failed task's id and its exception."""
