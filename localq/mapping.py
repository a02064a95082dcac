"""Parallel map for scripts: ``app.map``, ``app.starmap`` and ``as_completed``.

A map encodes every call first (a bad argument fails before anything is
stored), enqueues the jobs in a few large transactions (``CHUNK`` rows each,
well over 100,000 jobs/s), then collects the results in input order.

Each job carries its map (``group_id``) and its place in it (``group_index``),
so collecting reads the finished rows of a window of indexes, never the whole
map: the window starts at the first result still missing and ends a little
past the furthest result seen. Reads are paced so that the collecting process
takes a small share of the CPU (it shares the machine with the children):
after a read that cost ``c`` seconds the next one waits at least ``PACE * c``,
which keeps a short map's latency under a millisecond and a 100,000-item map's
collecting cost to a few percent.

With ``resume="name"`` the jobs get fixed ids (``map:<name>:<index>``) and the
map is recorded (``maps`` table) with a digest of the task and of every
encoded call. Run again with the same name, the inserts of jobs that exist
are no-ops, so stored results are reused and only the rest run; the same name
with other inputs is an error. This survives kill -9 of the script: the
embedded worker sees its parent's pipe close and puts its running jobs back,
and a worker that died too is recovered by the next one to start.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from .exceptions import ConfigurationError, EncodeError, TaskRevokedError, TimeoutError
from .ids import new_id, new_seq, new_seqs
from .progress import Progress
from .result import AsyncResult, EagerResult, Waiter
from .serializer import (
    check_accepted,
    check_serializer,
    decode_exception,
    decode_value,
    encode_call,
    encode_value,
)
from .status import warn_if_no_worker
from .store.records import FINAL_STATES, JobRow

if TYPE_CHECKING:
    from .app import Localq
    from .task import Task

CHUNK = 2_000       # jobs per enqueue transaction: long enough to be cheap, short
                    # enough not to hold the write lock from the workers for long
WINDOW = 4096       # indexes looked at past the furthest finished one
PACE = 8.0          # wait at least PACE x the cost of a read before the next one
MAX_PAUSE = 0.05    # ... but never longer than this (seconds)


def run_map(app: Localq, task: Task, calls: Iterable[tuple], *, progress: bool = False,
            resume: str | None = None, timeout: float | None = None,
            queue: str | None = None, priority: int | None = None) -> list:
    """Run ``task`` once per argument tuple in ``calls``; return the results in input order.

    ``progress=True`` shows done/total, rate, time left and failures on stderr.
    ``resume="name"`` records the map in the database under that name: run
    again with the same name and inputs (after a crash, even kill -9), finished
    items are not computed again and only the rest run. ``timeout`` bounds the
    whole wait (``localq.TimeoutError``).

    The first failure seen (the lowest index among the failures found by then)
    is raised with its original type, as ``get()`` would raise it. What happens
    to the rest: without ``resume``, the jobs not started yet are cancelled, the
    ones running finish and their results are discarded. With ``resume``,
    nothing is cancelled: queued jobs stay queued (any worker on the file may
    run them) and a second run with the same name reuses every stored success
    and runs again the failed items and those never run. The same holds when
    the wait ends by ``timeout`` or by Ctrl-C.

    In eager mode (``task_always_eager``) the calls run here, one after the
    other, through the serializer; ``progress`` is shown, ``resume`` is ignored.
    """
    calls = [c if type(c) is tuple else tuple(c) for c in calls]
    if resume is not None:
        check_map_name(resume)
    serializer = check_serializer(task.option("serializer"))
    payloads = _encode_calls(task, serializer, calls)   # a bad item fails before any runs
    template = app.new_job(task, (), {}, queue=queue, priority=priority)  # checks them too
    if app.conf.task_always_eager:
        return _run_eager(task, calls, progress)
    total = len(calls)
    if resume is not None:
        group = f"map:{resume}"
        resumed = app.store.begin_map(resume, task.name,
                                      _digest(task.name, serializer, payloads), total,
                                      time.time())
    else:
        group = f"map:{new_id()}"
        resumed = False
    if total == 0:
        if progress:
            Progress(0).close(0, 0)
        return []
    finished = False
    try:
        _enqueue(app, template, group, serializer, payloads, resumable=resume is not None)
        warn_if_no_worker(None, app, "the map", stacklevel=3)
        results = _collect(app, group, total, Progress(total) if progress else None,
                           task.accepted_content(result=True), resumed=resumed,
                           timeout=timeout)
        finished = True
        return results
    finally:
        if resume is None:
            # Nothing else can ask for these results: forget them, and on a failure,
            # a timeout or Ctrl-C, cancel the jobs that have not started.
            try:
                app.store.drop_group(group)
            except Exception:
                if finished:
                    raise


def drop_map(app: Localq, name: str) -> int:
    """Forget a resumable map and its stored results; returns the jobs deleted.

    Jobs of the map still queued are deleted too; jobs running finish, but
    their results are no longer part of any map.
    """
    check_map_name(name)
    return app.store.drop_map(name)


def check_map_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"resume= takes a non-empty string naming the map, "
                                 f"not {name!r}")
    return name


# ------------------------------------------------------------------ sending

def _encode_calls(task: Task, serializer: str, calls: list[tuple]) -> list:
    for n in sorted({len(c) for c in calls}):   # the signature check, once per length
        try:
            task.check_arguments((None,) * n, {})
        except TypeError as exc:
            index = next(i for i, c in enumerate(calls) if len(c) == n)
            raise TypeError(f"item {index} of the map: {exc}") from None
    try:
        return [encode_value(serializer, [list(c), {}]) for c in calls]
    except Exception:
        pass
    for index, call in enumerate(calls):   # find the item at fault and name it
        try:
            encode_call(serializer, task.name, call, {})
        except EncodeError as exc:
            raise EncodeError(f"item {index} of the map: {exc}") from None
    raise EncodeError(f"cannot encode the calls of task {task.name!r}")  # pragma: no cover


def _digest(task_name: str, serializer: str, payloads: list) -> str:
    import hashlib  # here, not at the top: `import localq` stays ~3 ms quicker
    h = hashlib.sha256(f"{task_name}\0{serializer}\0{len(payloads)}\0".encode())
    update = h.update
    for p in payloads:
        update(p.encode() if isinstance(p, str) else p)
        update(b"\0")
    return h.hexdigest()


def _enqueue(app: Localq, t: JobRow, group: str, serializer: str, payloads: list,
             resumable: bool) -> None:
    # A resumable map's items have fixed ids, so a rerun finds them; a one-off map's
    # items get generated ids, which cost no index write. ``t``: the fixed part of a row.
    now = t.created
    total = len(payloads)
    for start in range(0, total, CHUNK):
        end = min(start + CHUNK, total)
        # (seq, id): a resumable item has a chosen id, a one-off item a generated seq.
        seqs = new_seqs(end - start) if not resumable else [None] * (end - start)
        rows = [JobRow(seq, f"{group}:{i}" if resumable else None,
                       t.task, t.queue, t.lane, t.priority, serializer, payloads[i], t.options,
                       0.0, t.expires, now, group, i)
                for seq, i in zip(seqs, range(start, end))]
        inserted = app.store.enqueue_rows(rows)
        while not resumable and inserted < len(rows):
            # Another producer drew the same row number in the same millisecond (rare):
            # send the items that are missing again, with fresh ids.
            present = app.store.group_indexes(group, start, end)
            rows = [r._replace(seq=new_seq()) for r in rows if r.group_index not in present]
            inserted = app.store.enqueue_rows(rows)
        if start == 0:
            app.nudge_workers()     # let the workers start on the first chunk
    if total > CHUNK:
        app.nudge_workers()


# ------------------------------------------------------------------ collecting

def _collect(app: Localq, group: str, total: int, bar: Progress | None,
             accept: frozenset[str], *, resumed: bool, timeout: float | None) -> list:
    results: list[Any] = [None] * total
    have = bytearray(total)
    done = failures = 0
    lo = 0       # every index below lo has its result
    hi = 0       # one past the furthest finished index seen
    result_serializer = app.conf.result_serializer
    waiter = Waiter(app.path, timeout)
    catching_up = resumed     # reading results stored by an earlier run
    try:
        while True:
            t0 = time.perf_counter()
            rows = app.store.map_results(group, lo, max(hi, lo) + WINDOW)
            new = 0
            failure: tuple[int, BaseException] | None = None
            for index, state, serializer, result, exc_type, tb in rows:
                if have[index]:
                    continue
                have[index] = 1
                new += 1
                if index >= hi:
                    hi = index + 1
                if state == "SUCCESS":
                    serializer = result_serializer or serializer
                    if serializer not in accept:
                        check_accepted(serializer, accept, f"the result of item {index} of "
                                       f"the map", "result_accept_content")
                    results[index] = decode_value(serializer, result)
                    done += 1
                else:
                    failures += 1
                    if failure is None or index < failure[0]:
                        failure = (index, _exception(state, result, exc_type, tb, index,
                                                     accept))
            while lo < total and have[lo]:
                lo += 1
            if bar is not None:
                if catching_up:
                    bar.reused(done)
                bar.update(done, failures)
            catching_up = catching_up and new >= WINDOW // 2
            if failure is not None:
                raise failure[1]
            if lo == total:
                return results
            if new >= WINDOW // 2:
                continue          # a backlog of stored results (a resumed map): read on
            if not _paced_wait(waiter, t0):
                raise TimeoutError(f"map of {total} items: {total - done} not finished "
                                   f"after {waiter_timeout(timeout)}s")
    finally:
        waiter.close()
        if bar is not None:
            bar.close(done, failures)


def waiter_timeout(timeout: float | None) -> str:
    return f"{timeout:g}" if timeout is not None else "?"


def _exception(state: str, result: Any, exc_type: str | None, tb: str | None, index: int,
               accept: frozenset[str]) -> BaseException:
    if state == "REVOKED":
        reason = decode_exception(result, exc_type, None, accept) if result else None
        return TaskRevokedError(f"item {index} of the map was "
                                f"{reason if reason is not None else 'revoked'}")
    return decode_exception(result, exc_type, tb, accept)


def _run_eager(task: Task, calls: list[tuple], progress: bool) -> list:
    """Eager mode: each call through the serializer, in order, here."""
    from .worker.execute import run_eager
    bar = Progress(len(calls)) if progress else None
    out = []
    failures = 0
    try:
        for call in calls:
            result = run_eager(task, call, {}, {})
            if result.state != "SUCCESS":
                failures += 1
            out.append(result.get())
            if bar is not None:
                bar.update(len(out), failures)
        return out
    finally:
        if bar is not None:
            bar.close(len(out), failures)


# ------------------------------------------------------------------ as_completed

def as_completed(results: Iterable[AsyncResult], timeout: float | None = None
                 ) -> Iterator[AsyncResult]:
    """Yield each result as its job finishes, like ``concurrent.futures.as_completed``.

    Results already finished come first. ``timeout`` (seconds, from the first
    ``next()``) bounds the whole wait: past it, ``localq.TimeoutError`` (a
    ``TimeoutError``) is raised. A result given twice is yielded once.
    """
    pending: dict[str, AsyncResult] = {}
    for r in results:
        if isinstance(r, EagerResult):      # held in memory: finished already
            yield r
        else:
            pending.setdefault(r.id, r)
    if not pending:
        return
    apps = {id(r.app): r.app for r in pending.values()}
    waiter = Waiter(next(iter(apps.values())).path, timeout)
    while True:
        t0 = time.perf_counter()
        finished: list[str] = []
        for app in apps.values():
            ids = [i for i, r in pending.items() if r.app is app]
            states = app.store.states(ids)
            finished.extend(i for i in ids if states.get(i) in FINAL_STATES)
        for job_id in finished:
            yield pending.pop(job_id)
        if not pending:
            return
        if not _paced_wait(waiter, t0):
            raise TimeoutError(f"{len(pending)} of the results were not ready after "
                               f"{waiter_timeout(timeout)}s")


def _paced_wait(waiter: Waiter, t0: float) -> bool:
    """Wait for a ring, then pause so that reads cost at most 1/PACE of the time:
    pacing, not waiting, to keep the CPU for the children. False past the deadline."""
    spent = time.perf_counter() - t0
    if not waiter.wait():
        return False
    rest = min(MAX_PAUSE, PACE * spent) - (time.perf_counter() - t0 - spent)
    if rest > 0:
        time.sleep(rest)
    return True

__all__ = ["as_completed", "drop_map", "run_map"]
