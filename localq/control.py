"""``app.control``: revoke jobs and change rate limits at run time, from any process.

Everything here is written to the database and then workers are rung, so
it holds across worker restarts (Celery keeps revocations in worker memory).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterable

from .exceptions import TaskRevokedError
from .limits import parse_rate
from .serializer import encode_exception

if TYPE_CHECKING:
    from .app import Localq
    from .inspect import Inspect


class Control:
    def __init__(self, app: Localq) -> None:
        self.app = app

    def revoke(self, task_id: str | Iterable[str], terminate: bool = False,
               signal: object = None) -> None:
        """Revoke: a waiting job never runs; with ``terminate=True`` a running one is
        killed (its child is replaced). Unknown ids are remembered as revoked."""
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        reason = encode_exception("json", TaskRevokedError("revoked"))
        running = False
        for job_id in ids:
            state = self.app.store.revoke(job_id, terminate, reason, time.time())
            running = running or state == "STARTED"
        if running:
            self.app.nudge_workers(b"R")
        self.app.nudge_waiters()

    def rate_limit(self, task_name: str, rate: str | int | float | None) -> None:
        """Set a task's global rate limit at run time (``None`` restores the declared one;
        ``0`` removes any limit). It is stored in the file: it holds for every worker, and
        across restarts, until it is reset with ``None``; ``status`` lists it."""
        parsed = parse_rate(rate, where=f"rate limit for {task_name}")
        text = None if rate is None else (parsed.text if parsed else "0")
        self.app.store.set_rate_override(task_name, text, time.time())
        self.app.nudge_workers(b"L")

    def inspect(self, destination: Iterable[str] | None = None, timeout: float = 1.0,
                **ignored: object) -> Inspect:
        """Celery's ``app.control.inspect()``: what the workers run, hold and know, read
        from the file (no broadcast: ``timeout`` is accepted and not needed)."""
        from .inspect import Inspect
        return Inspect(self.app, None if destination is None else list(destination))

    def ping(self, destination: Iterable[str] | None = None, timeout: float = 1.0,
             **ignored: object) -> list[dict[str, dict[str, str]]]:
        """Celery's ``app.control.ping()``: ``[{worker name: {"ok": "pong"}}]`` for each
        worker alive on the file (by its heartbeat)."""
        answer = self.inspect(destination).ping() or {}
        return [{name: pong} for name, pong in answer.items()]

    def purge(self, queues: Iterable[str] | None = None) -> int:
        """Delete waiting jobs (of these queues, or all); returns how many."""
        return self.app.store.purge(list(queues) if queues else None)
