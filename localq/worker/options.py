"""A worker's options, resolved once: from the CLI's flags or ``app.worker()``'s
arguments, else the app's settings, else the defaults.

``python -m localq worker`` and ``app.worker()`` both call ``resolve``, so that
the same flag and the same setting mean the same thing in both, and the
supervisor is given one settled ``WorkerOptions``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Mapping, Protocol

from ..exceptions import ConfigurationError
from ..log import check_level

if TYPE_CHECKING:
    from ..config import Settings
    from ..task import Task


class WorkerApp(Protocol):
    """What the worker uses of the app it serves (``Localq`` is one): its name, its
    file, its settings and its tasks. The worker layer is typed against this, not
    against the app module, which imports the worker to start one."""

    @property
    def main_name(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def conf(self) -> Settings: ...

    @property
    def tasks(self) -> Mapping[str, Task]: ...


@dataclass(frozen=True)
class WorkerOptions:
    concurrency: int                     # child processes
    queues: list[str]                    # consumed in this order
    max_tasks_per_child: int | None      # None: no recycling by count
    max_memory_per_child: int | None     # KiB of resident memory; None: no limit
    time_limit: float | None             # overrides task_time_limit when given
    soft_time_limit: float | None        # overrides task_soft_time_limit when given
    loglevel: str | int
    hostname: str = ""                   # the node name: request.hostname, worker signals
    beat: bool = False                   # also run the periodic-task scheduler (-B)

    def apply_time_limits(self, conf: Settings) -> None:
        """The worker's time limits become the settings' (Celery's --time-limit)."""
        if self.time_limit is not None:
            conf.task_time_limit = self.time_limit
        if self.soft_time_limit is not None:
            conf.task_soft_time_limit = self.soft_time_limit


def resolve(conf: Settings, *, concurrency: int | None = None,
            queues: Iterable[str] | str | None = None, max_tasks_per_child: int | None = None,
            max_memory_per_child: int | None = None, time_limit: float | None = None,
            soft_time_limit: float | None = None,
            loglevel: str | int | None = None,
            hostname: str | None = None, beat: bool = False) -> WorkerOptions:
    """Each option as given, else its setting (``worker_concurrency``,
    ``task_default_queue``, ``worker_max_tasks_per_child``,
    ``worker_max_memory_per_child``), else the default (one child per CPU).
    ``queues`` may be a comma-separated string."""
    if not queues:
        queues = conf.task_default_queue
    if isinstance(queues, str):
        queues = queues.split(",")
    try:
        level = check_level(loglevel or conf.worker_log_level or "WARNING")
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    return WorkerOptions(
        concurrency=concurrency or conf.worker_concurrency or os.cpu_count() or 1,
        queues=[q.strip() for q in queues if q.strip()],
        max_tasks_per_child=max_tasks_per_child or conf.worker_max_tasks_per_child,
        max_memory_per_child=max_memory_per_child or conf.worker_max_memory_per_child,
        time_limit=time_limit, soft_time_limit=soft_time_limit, loglevel=level,
        hostname=node_name(hostname), beat=bool(beat))


def node_name(template: str | None) -> str:
    """Celery's ``-n/--hostname``: ``%h`` the host name, ``%n`` its first part, ``%d``
    its domain, ``%%`` a percent sign; default ``localq@%h``."""
    import socket
    host = socket.gethostname()
    name, _, domain = host.partition(".")
    out, text, i = [], template or "localq@%h", 0
    while i < len(text):
        pair = text[i:i + 2]
        if pair in ("%h", "%n", "%d", "%%"):
            out.append({"%h": host, "%n": name, "%d": domain, "%%": "%"}[pair])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)
