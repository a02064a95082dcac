"""localq: a task queue for one host, on one SQLite file, with Celery's API.

The public names, nothing else.
"""
from . import signals
from .app import Localq, current_app, shared_task
from .canvas import (
    GroupResult,
    Signature,
    chain,
    chord,
    chunks,
    group,
    maybe_signature,
    signature,
    xmap,
    xstarmap,
)
from .exceptions import (
                         ChordError,
                         ConfigurationError,
                         ContentDisallowed,
                         DatabaseError,
                         EncodeError,
                         Ignore,
                         LocalqError,
                         MaxRetriesExceededError,
                         NotRegistered,
                         Reject,
                         Retry,
                         SoftTimeLimitExceeded,
                         TaskError,
                         TaskRevokedError,
                         TimeLimitExceeded,
                         TimeoutError,
                         WorkerLostError,
)
from .log import get_task_logger
from .mapping import as_completed
from .result import AsyncResult, EagerResult, ResultSet
from .schedules import crontab, schedule
from .task import Task

__version__ = "0.1.0"
__all__ = [
    "AsyncResult", "ChordError", "ConfigurationError", "GroupResult", "Signature", "chain",
    "chord", "chunks", "group", "maybe_signature", "signature", "xmap", "xstarmap",
    "ContentDisallowed", "DatabaseError", "EagerResult",
    "EncodeError", "Ignore", "Reject", "ResultSet",
    "Localq", "LocalqError", "MaxRetriesExceededError", "NotRegistered", "Retry",
    "SoftTimeLimitExceeded", "Task", "TaskError", "TaskRevokedError", "TimeLimitExceeded",
    "TimeoutError", "WorkerLostError", "as_completed", "crontab", "get_task_logger",
    "schedule", "shared_task", "current_app", "signals",
]
