"""Parallel map for scripts: ``app.map``, ``app.starmap`` and ``as_completed``.

A map enqueues all its jobs in a few large transactions, then collects the
results in input order. With ``resume="name"`` the map is recorded in the
database; run again after a crash (even kill -9) with the same name and
inputs, it reuses every stored success and runs only the rest.
"""
from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from .exceptions import ConfigurationError, TimeoutError
from .progress import Progress
from .result import AsyncResult, Waiter
from .serializer import decode_exception, decode_value, encode_call
from .store import FINAL_STATES
from .task import job_options, new_id

if TYPE_CHECKING:
    from .app import Localq
    from .task import Task

CHUNK = 20_000     # jobs per enqueue transaction


def run_map(app: Localq, task: Task, calls: Iterable[tuple], *, progress: bool = False,
            resume: str | None = None, timeout: float | None = None,
            queue: str | None = None, priority: int | None = None) -> list:
    """Run ``task`` over every argument tuple; return the results in input order.

    The first failure (in input order of discovery) is raised with its original
    type. The other jobs are not cancelled: they finish in the background and
    their results stay stored, so a resumed map (``resume=``) reuses them and
    runs again only what failed or never ran.
    """
    calls = [tuple(c) for c in calls]
    if app.conf.task_always_eager:
        return [task.apply(c).get() for c in calls]
    serializer = task.option("serializer")
    payloads = [encode_call(serializer, task.name, c, {}) for c in calls]
    if resume:
        group = f"map:{resume}"
        ids = [f"{group}:{i}" for i in range(len(calls))]
        digest = _digest(task.name, serializer, payloads)
        app.store.begin_map(resume, task.name, digest, len(calls), time.time())
    else:
        group = f"map:{new_id()}"
        ids = [new_id() for _ in calls]
    now = time.time()
    template = app.new_job(task, (), {}, queue=queue, priority=priority, now=now)
    options = job_options(task, None, None)
    for start in range(0, len(calls), CHUNK):
        app.store.enqueue_rows(
            (ids[i], template.task, template.queue, template.lane, template.priority,
             serializer, payloads[i], options, 0.0, None, now, group, i)
            for i in range(start, min(start + CHUNK, len(calls))))
    app.nudge_workers()
    results = _collect(app, group, len(calls), progress, timeout)
    if not resume:
        app.store.drop_group(group)   # nothing else can ask for these results
    return results


def drop_map(app: Localq, name: str) -> int:
    """Forget a resumable map and its stored results; returns the jobs deleted."""
    return app.store.drop_map(name)


def _digest(task_name: str, serializer: str, payloads: list) -> str:
    h = hashlib.sha256(f"{task_name}\0{serializer}\0{len(payloads)}".encode())
    for p in payloads:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


def _collect(app: Localq, group: str, total: int, progress: bool,
             timeout: float | None) -> list:
    results: list[Any] = [None] * total
    have = [False] * total
    done = 0
    failures = 0
    watermark = 0
    bar = Progress(total) if progress else None
    waiter = Waiter(app.path, timeout)
    try:
        while True:
            first_failure = None
            for index, state, serializer, result, exc_type, tb in app.store.group_rows(
                    group, watermark):
                if have[index] or state not in FINAL_STATES:
                    continue
                if state == "SUCCESS":
                    results[index] = decode_value(app.conf.result_serializer or serializer,
                                                  result)
                    have[index] = True
                    done += 1
                elif first_failure is None:
                    first_failure = decode_exception(result, exc_type, tb)
                    failures += 1
            while watermark < total and have[watermark]:
                watermark += 1
            if bar is not None:
                bar.update(done, failures)
            if first_failure is not None:
                raise first_failure
            if done == total:
                return results
            if not waiter.wait():
                raise TimeoutError(f"map of {total} items: {total - done} not finished after "
                                   f"{timeout}s")
    finally:
        if bar is not None:
            bar.close(done, failures)


def as_completed(results: Iterable[AsyncResult], timeout: float | None = None
                 ) -> Iterator[AsyncResult]:
    """Yield each result as its job finishes (like concurrent.futures.as_completed)."""
    pending = {r.id: r for r in results}
    if not pending:
        return
    app = next(iter(pending.values())).app
    waiter = Waiter(app.path, timeout)
    while pending:
        states = app.store.states(list(pending))
        for job_id, state in states.items():
            if state in FINAL_STATES:
                yield pending.pop(job_id)
        if pending and not waiter.wait():
            raise TimeoutError(f"{len(pending)} of the results were not ready after {timeout}s")


def check_map_name(name: str) -> str:
    if not name or not isinstance(name, str):
        raise ConfigurationError("resume= takes a non-empty name for the map")
    return name
