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


class Retry(LocalqError):
    """Raised by ``self.retry()``: tells the worker to run the job again later.

    Like Celery's ``celery.exceptions.Retry``: ``raise self.retry(...)``.
    """

    def __init__(self, message: str | None = None, exc: BaseException | None = None,
                 when: float | None = None) -> None:
        self.message = message
        self.exc = exc
        self.when = when  # absolute time (epoch seconds) of the next attempt
        super().__init__(message or (f"Retry: {exc!r}" if exc is not None else "Retry"))


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
