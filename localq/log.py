"""Worker logging: the handler and format of a worker's processes, and task loggers.

A worker (``python -m localq worker`` or the embedded one) takes over the root
logger of its own processes, as Celery's worker does: one stderr handler at the
worker's level, so that ``logging.getLogger(__name__).info(...)`` inside a task
shows at ``--loglevel INFO``. The children are forks of the supervisor and
inherit it. While a child runs a job, :func:`now_running` names it, and every
record logged meanwhile carries ``task_name`` and ``task_id`` and is printed in
Celery's task format::

    [2026-01-01 12:00:00,000: INFO/MainProcess 1234] tasks.add[17]: adding 2 and 2

The per-job lines (``Task tasks.add[17] received``, ``... succeeded in 0.001s: 4``,
``... retry: Retry in 5s: ...``) are logged at INFO by the child; it asks
:func:`per_job_lines` once per batch, so at the default WARNING level they cost
one attribute check per batch, not a call per job.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store.records import Outcome

WORKER_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s %(process)d] %(message)s"
TASK_FORMAT = ("[%(asctime)s: %(levelname)s/%(processName)s %(process)d] "
               "%(task_name)s[%(task_id)s]: %(message)s")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

log = logging.getLogger("localq.worker")
_job: list[Any] = [None, None]          # (task name, job id) of the job running here
_main_pid = [0]                         # the supervisor's: other processes are its children


def now_running(task_name: str | None, job_id: str | None) -> None:
    """Say which job this process runs now (None, None once it has finished)."""
    _job[0] = task_name
    _job[1] = job_id


def get_task_logger(name: str) -> logging.Logger:
    """Celery's ``celery.utils.log.get_task_logger``: a logger whose records, logged
    while a job runs, carry the job's task name and id (every logger's do)."""
    return logging.getLogger(name)


def per_job_lines() -> bool:
    """Whether the per-job INFO lines are on (ask once per batch)."""
    return log.isEnabledFor(logging.INFO)


class TaskFormatter(logging.Formatter):
    """The worker format, or Celery's task format for records logged during a job."""

    def __init__(self) -> None:
        super().__init__(WORKER_FORMAT)
        self.task_style = logging.Formatter(TASK_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if record.process != _main_pid[0]:
            record.processName = "Child"
        if _job[0] is not None and record.name != "localq" \
                and not record.name.startswith("localq."):
            record.task_name, record.task_id = _job[0], _job[1]
            return self.task_style.format(record)
        return super().format(record)


def check_level(text: str | int) -> str | int:
    """A log level name (any case) or number; ValueError says which names exist."""
    if isinstance(text, int):
        return text
    name = text.strip().upper()
    if name.isdigit():
        return int(name)
    if name not in LEVELS:
        raise ValueError(f"unknown log level {text!r}: use one of {', '.join(LEVELS)}")
    return name


def setup_worker_logging(level: str | int, hijack_root: bool = True) -> None:
    """Point this process's root logger at stderr, at ``level``, in the worker format.

    Called in the worker's own process (the CLI's, or the embedded worker's fork),
    never in the user's: the user's handlers are dropped there, as Celery's worker
    does (``worker_hijack_root_logger``). With ``hijack_root=False`` the root logger
    is left as the user configured it, and only the ``localq`` logger gets the
    worker's handler and level.
    """
    _main_pid[0] = os.getpid()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TaskFormatter())
    localq_logger = logging.getLogger("localq")
    if hijack_root:
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(check_level(level))
        localq_logger.handlers[:] = []
        localq_logger.setLevel(logging.NOTSET)
        localq_logger.propagate = True
    else:
        localq_logger.handlers[:] = [handler]
        localq_logger.setLevel(check_level(level))
        localq_logger.propagate = False


def log_outcome(outcome: Outcome, task_name: str, job_id: str, serializer: str) -> None:
    """The INFO line of a job that succeeded or asked for a retry (failures are logged
    at ERROR, with their traceback, by the supervisor)."""
    state = outcome.state
    if state == "SUCCESS":
        log.info("Task %s[%s] succeeded in %.3fs: %s", task_name, job_id,
                 outcome.ended - (outcome.started or outcome.ended),
                 _value(serializer, outcome.result))
    elif state == "RETRY":
        log.info("Task %s[%s] retry: Retry in %.0fs: %s(%r)", task_name, job_id,
                 max(0.0, outcome.eta - outcome.ended),
                 (outcome.exc_type or "Retry").rsplit(".", 1)[-1], outcome.exc_message)


def _value(serializer: str, payload: Any) -> str:
    from .serializer import decode_value
    try:
        text = repr(decode_value(serializer, payload))
    except Exception:       # noqa: BLE001 - a log line must never fail the job
        text = repr(payload)
    return text if len(text) <= 256 else text[:253] + "..."
