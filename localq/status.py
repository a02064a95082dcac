"""``python -m localq status``: what is running, waiting and failing, at a glance.

:func:`collect` reads everything ``status`` shows into plain data (the keys of
``status --json``, documented in the README; add keys, never rename them), and
:func:`render_status` prints it as the sections listed in ``SECTIONS``, each a
function of that data returning its lines: a new section is one function more.
Also :func:`warn_if_no_worker`, the warning of a caller about to wait for a
worker while none is registered on the file.
"""
from __future__ import annotations

import time
import warnings
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Callable

from .store.records import FINAL_STATES

if TYPE_CHECKING:
    from .app import Localq
    from .result import AsyncResult

STATES = ("PENDING", "RETRY", "STARTED", "SUCCESS", "FAILURE", "REVOKED")
RECHECK = 1.0            # seconds: once a worker is seen, look again only this often


def age(seconds: float) -> str:
    """A duration the way a person reads it: 250ms, 12s, 5m, 1.5h."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def collect(app: Localq) -> dict[str, Any]:
    """Everything ``status`` shows, as JSON-ready data (times are Unix timestamps)."""
    from .limits import limits_in_force
    store = app.store
    now = time.time()
    workers = store.workers()
    by_task: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    totals = dict.fromkeys(STATES, 0)
    unknown_revoked = 0
    for queue, task, state, count in store.counts():
        if not task:             # `revoke` of an id that was never sent: not a task
            unknown_revoked += count
            continue
        by_task[(queue, task)][state] += count
        totals[state] = totals.get(state, 0) + count
    worker_pids = {w["id"]: w["pid"] for w in workers}
    return {
        "database": app.path,
        "time": now,
        "workers": [{"pid": w["pid"], "concurrency": w["concurrency"],
                     "queues": w["queues"].split(","), "started": w["started"],
                     "heartbeat": w["heartbeat"],
                     "silent": now - w["heartbeat"] >= app.conf.worker_lost_after}
                    for w in workers],
        "jobs": totals,
        "tasks": [{"queue": queue, "task": task, "jobs": {s: states.get(s, 0) for s in STATES}}
                  for (queue, task), states in sorted(by_task.items())],
        "running": [{"id": j["id"], "task": j["task"], "started": j["started"],
                     "worker_pid": worker_pids.get(j["owner"])}
                    for j in store.recent(["STARTED"], 10)],
        "failures": [{"id": j["id"], "task": j["task"], "exc_type": j["exc_type"],
                      "done": j["done"]} for j in store.recent(["FAILURE"], 5)],
        "revoked_unknown_ids": unknown_revoked,
        "limits": limits_in_force(app),
        "tasks_loaded": bool(app.tasks),     # False: limits declared in code are not known
    }


def _workers(data: dict, now: float) -> list[str]:
    workers = data["workers"]
    if not workers:
        return ["workers  none running (start one: python -m localq worker -A module:app)"]
    lines = [f"workers  {len(workers)}"]
    for w in workers:
        lines.append(f"  pid {w['pid']:<7} -c {w['concurrency']:<3} queues "
                     f"{','.join(w['queues']):<20} up {age(now - w['started']):<6} heartbeat "
                     f"{age(now - w['heartbeat'])} ago {'SILENT' if w['silent'] else 'ok'}")
    return lines


def _jobs(data: dict, now: float) -> list[str]:
    lines = ["jobs     " + "  ".join(f"{s.lower()} {data['jobs'].get(s, 0)}" for s in STATES)]
    tasks = data["tasks"]
    if tasks:
        # Full names, however long: two tasks must never look the same.
        qw = max(len("queue"), *(len(t["queue"]) for t in tasks))
        tw = max(len("task"), *(len(t["task"]) for t in tasks))
        lines.append("")
        lines.append(f"{'queue':<{qw}}  {'task':<{tw}}"
                     + "".join(f"{s.lower():>9}" for s in STATES))
        for t in tasks:
            lines.append(f"{t['queue']:<{qw}}  {t['task']:<{tw}}"
                         + "".join(f"{t['jobs'][s]:>9}" for s in STATES))
    return lines


def _limits(data: dict, now: float) -> list[str]:
    """Every rate limit and cap in force and where it comes from (limits.limits_in_force)."""
    if not data["limits"]:
        return []
    lines = ["limits (a run-time override stays in the file until reset: "
             "python -m localq rate-limit TASK none)"]
    for row in data["limits"]:
        source = row["source"]
        if row["set"] is not None:
            source += f" set {age(now - row['set'])} ago"
        if "replaces" in row:
            own = row["replaces"]
            source += f", in place of {own['value']} ({own['source']})" if own \
                else ", in place of no limit"
        lines.append(f"  {row['task']:<36} {row['limit']:<16} {row['value'] or 'no limit':<10} "
                     f"{source}")
    if not data["tasks_loaded"]:
        lines.append("  (limits declared in code are listed with --app module:app)")
    return lines


def _running(data: dict, now: float) -> list[str]:
    if not data["running"]:
        return []
    return ["running"] + [f"  {j['id']}  {j['task']}  for {age(now - (j['started'] or now))}"
                          f"  worker pid {j['worker_pid'] or '-'}" for j in data["running"]]


def _failures(data: dict, now: float) -> list[str]:
    if not data["failures"]:
        return []
    return ["latest failures (python -m localq show ID for the traceback)"] + [
        f"  {j['id']}  {j['task']}  {j['exc_type']}  {age(now - (j['done'] or now))} ago"
        for j in data["failures"]]


SECTIONS: list[Callable[[dict, float], list[str]]] = [_workers, _jobs, _limits, _running,
                                                      _failures]


def render_status(app: Localq, data: dict | None = None) -> str:
    data = collect(app) if data is None else data
    now = data["time"]
    blocks = [[f"database {data['database']}", *_workers(data, now), *_jobs(data, now)]]
    blocks += [lines for section in SECTIONS[2:] if (lines := section(data, now))]
    return "\n\n".join("\n".join(block) for block in blocks)


_warned: set[str] = set()
_warned_queues: set[tuple[str, str]] = set()
_seen_worker: dict[str, float] = {}


def warn_if_no_worker(result: AsyncResult | None, app: Localq, waiter: str,
                      stacklevel: int = 2) -> None:
    """Warn once per database file when a caller is about to wait (for ``result``, or
    for jobs just sent when None) and no worker is registered on the file; and once per
    queue when workers are, but none takes ``result``'s queue."""
    path = app.path
    if result is not None and result.state in FINAL_STATES:
        return
    if path not in _warned and time.monotonic() - _seen_worker.get(path, -RECHECK) >= RECHECK:
        running = app.store.workers()
        if not running:
            _warned.add(path)
            warnings.warn(f"no localq worker is running on {path}: {waiter} waits for one "
                          f"(start one with `with app.worker():` or `python -m localq "
                          f"worker`)", RuntimeWarning, stacklevel=stacklevel + 1)
            return
        _seen_worker[path] = time.monotonic()
    elif result is None or path in _warned:
        return
    else:
        running = app.store.workers()
    if result is None or not running or (row := app.store.job(result.id)) is None:
        return
    # Workers run, but maybe none that takes this job's queue (Celery's default queue is
    # named "celery", localq's "default": a copied queue="celery" would wait forever).
    queue = row["queue"]
    taken = {q for w in running for q in w["queues"].split(",")}
    if queue not in taken and (path, queue) not in _warned_queues:
        _warned_queues.add((path, queue))
        warnings.warn(f"no localq worker on {path} takes queue {queue!r} (they take: "
                      f"{', '.join(sorted(taken))}): {waiter} waits for one (start one "
                      f"with `python -m localq worker -Q {queue}`, or send to a queue they "
                      f"take)", RuntimeWarning, stacklevel=stacklevel + 1)
