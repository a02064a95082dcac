"""``python -m localq status``: what is running, waiting and failing, at a glance."""
from __future__ import annotations

import time
from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import Localq

STATES = ("PENDING", "RETRY", "STARTED", "SUCCESS", "FAILURE", "REVOKED")


def age(seconds: float) -> str:
    """A duration the way a person reads it: 250ms, 12s, 5m, 1.5h."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def render_status(app: Localq) -> str:
    store = app.store
    now = time.time()
    lines = [f"database {app.path}"]
    workers = store.workers()
    if workers:
        lines.append(f"workers  {len(workers)}")
        for w in workers:
            stale = now - w["heartbeat"]
            health = "ok" if stale < app.conf.worker_lost_after else "SILENT"
            lines.append(f"  pid {w['pid']:<7} -c {w['concurrency']:<3} queues {w['queues']:<20} "
                         f"up {age(now - w['started']):<6} heartbeat {age(stale)} ago {health}")
    else:
        lines.append("workers  none running (start one: python -m localq worker -A module:app)")
    by_task: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    totals: dict[str, int] = defaultdict(int)
    for queue, task, state, count in store.counts():
        if not task:
            continue         # revoke tombstones
        by_task[(queue, task)][state] += count
        totals[state] += count
    lines.append("jobs     " + "  ".join(f"{s.lower()} {totals.get(s, 0)}" for s in STATES))
    if by_task:
        lines.append("")
        header = f"{'queue':<12} {'task':<36}" + "".join(f"{s.lower():>9}" for s in STATES)
        lines.append(header)
        for (queue, task), states in sorted(by_task.items()):
            lines.append(f"{queue[:12]:<12} {task[:36]:<36}"
                         + "".join(f"{states.get(s, 0):>9}" for s in STATES))
    lines += render_limits(app, now)
    running = store.recent(["STARTED"], 10)
    if running:
        lines.append("")
        lines.append("running")
        worker_pids = {w["id"]: w["pid"] for w in workers}
        for job in running:
            lines.append(f"  {job['id']}  {job['task']}  for {age(now - (job['started'] or now))}"
                         f"  worker pid {worker_pids.get(job['owner'], '-')}")
    failed = store.recent(["FAILURE"], 5)
    if failed:
        lines.append("")
        lines.append("latest failures (python -m localq show ID for the traceback)")
        for job in failed:
            lines.append(f"  {job['id']}  {job['task']}  {job['exc_type']}  "
                         f"{age(now - (job['done'] or now))} ago")
    return "\n".join(lines)


def render_limits(app: Localq, now: float) -> list[str]:
    """Every rate limit and cap in force and where it comes from (flow.limits_in_force)."""
    from .flow import limits_in_force
    limits = limits_in_force(app)
    if not limits:
        return []
    lines = ["", "limits (a run-time override stays in the file until reset: "
             "python -m localq rate-limit TASK none)"]
    for row in limits:
        source = row["source"]
        if row["set"] is not None:
            source += f" set {age(now - row['set'])} ago"
        if "replaces" in row:
            own = row["replaces"]
            source += f", in place of {own['value']} ({own['source']})" if own \
                else ", in place of no limit"
        lines.append(f"  {row['task']:<36} {row['limit']:<16} {row['value'] or 'no limit':<10} "
                     f"{source}")
    if not app.tasks:
        lines.append("  (limits declared in code are listed with --app module:app)")
    return lines
