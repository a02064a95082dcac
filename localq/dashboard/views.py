"""What the dashboard shows, as JSON-ready data: one function per page or API path.

Each reads through ``app.store.monitor`` (bounded reads: see store/monitor.py) and
returns plain dicts and lists. Seqs, which pass 2**53, travel as strings (a
browser's numbers would round them). Arguments and results are shown decoded only
when they are JSON, never unpickled here; the message of a final attempt comes
from ``AsyncResult.attempts``, as ``show`` prints it (which decodes only what the
app accepts).
"""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from ..limits import limits_in_force
from ..serializer import stored_exception_info
from ..store.monitor import RUNTIME_BUCKETS
from ..store.records import FINAL_STATES

if TYPE_CHECKING:
    from ..app import Localq

STATES = ("PENDING", "RECEIVED", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED")
THROUGHPUT_SPAN = 600         # seconds of history on the throughput page
SHORT = 80                    # characters of arguments in a list


def _decoded(serializer: str | None, payload: Any) -> tuple[bool, Any]:
    """(True, value) for a JSON payload that decodes; (False, what it is) otherwise."""
    if payload is None:
        return True, None
    if serializer != "json" or isinstance(payload, bytes):
        return False, f"({serializer}, {len(payload)} bytes, not decoded here)"
    try:
        return True, json.loads(payload)
    except ValueError:
        return False, "(undecodable JSON)"


def _call(job: dict) -> tuple[Any, Any]:
    ok, value = _decoded(job.get("serializer"), job.get("payload"))
    if ok and isinstance(value, list) and len(value) == 2:
        return value[0], value[1]
    return value, {}


def short_args(job: dict) -> str:
    args, kwargs = _call(job)
    if isinstance(args, str):
        return args[:SHORT]
    parts = [json.dumps(a, default=repr) for a in args or ()]
    parts += [f"{k}={json.dumps(v, default=repr)}" for k, v in (kwargs or {}).items()]
    text = ", ".join(parts)
    return text if len(text) <= SHORT else text[:SHORT - 1] + "…"


def _worker_pids(app: Localq) -> dict[int, int]:
    return {w["id"]: w["pid"] for w in app.store.monitor.workers()}


def task_row(job: dict, pids: dict[int, int]) -> dict[str, Any]:
    started, done = job.get("started"), job.get("done")
    return {"uuid": job["id"], "name": job["task"], "state": job["state"],
            "queue": job["queue"], "args": short_args(job), "received": job["created"],
            "started": started, "succeeded" if job["state"] == "SUCCESS" else "done": done,
            "runtime": (done - started) if started and done else None,
            "worker": pids.get(job["owner"]) if job.get("owner") else None,
            "pid": job.get("pid"), "eta": job.get("eta") or None, "retries": job["retries"],
            "exception": job.get("exc_type")}


def workers(app: Localq) -> dict[str, Any]:
    """Every registered worker: Flower's /api/workers is a dict keyed by worker name."""
    now = time.time()
    out = {}
    for w in app.store.monitor.workers():
        name = f"localq@{w['hostname']}:{w['pid']}"
        out[name] = {"hostname": w["hostname"], "pid": w["pid"], "queues": w["queues"],
                     "concurrency": w["concurrency"], "started": w["started"],
                     "heartbeat": w["heartbeat"], "processed": w["processed"],
                     "failed": w["failed"],
                     "silent": now - w["heartbeat"] >= app.conf.worker_lost_after,
                     "children": [dict(c, runtime=(now - c["since"]) if c.get("since") else None)
                                  for c in w["children"]]}
    return out


def tasks(app: Localq, state: str | None = None, taskname: str | None = None,
          queue: str | None = None, limit: int = 50, offset: int = 0,
          before: str | None = None, search: str | None = None) -> dict[str, Any]:
    """A page of jobs, newest first; ``next`` is the cursor of the page after (or None)."""
    pids = _worker_pids(app)
    monitor = app.store.monitor
    if search:
        job = monitor.job(search.strip())
        return {"tasks": [task_row(job, pids)] if job else [], "next": None}
    rows, nxt = monitor.jobs_page(state=state, task=taskname, queue=queue, limit=limit,
                                  offset=offset, before=int(before) if before else None)
    return {"tasks": [task_row(j, pids) for j in rows],
            "next": None if nxt is None else str(nxt)}


def task_info(app: Localq, job_id: str) -> dict[str, Any] | None:
    """One job, all of it: Flower's /api/task/info/<id>, plus its attempts and any
    canvas links (parent, group, chord) the file holds."""
    monitor = app.store.monitor
    job = monitor.job(job_id)
    if job is None:
        job = app.store.job(job_id)          # still in a producer's inbox?
    if job is None:
        return None
    args, kwargs = _call(job)
    info = task_row(job, _worker_pids(app))
    info.update(args=args, kwargs=kwargs, expires=job.get("expires"),
                priority=job.get("priority"), traceback=job.get("traceback"),
                revoked=bool(job.get("revoke")), final=job["state"] in FINAL_STATES)
    if job["state"] == "SUCCESS":
        ok, value = _decoded(job.get("serializer"), job.get("result"))
        info["result"] = value if ok else str(value)
        info["result_decoded"] = ok
    elif job["state"] in ("FAILURE", "REVOKED", "RETRY"):
        raw = job.get("result")
        exc = stored_exception_info(raw) if isinstance(raw, str) else {}
        info["exception"] = job.get("exc_type") or exc.get("exc_type")
        info["exception_message"] = exc.get("exc_message")
    info["attempts"] = app.AsyncResult(job["id"]).attempts   # the final one as `show` has it
    links: dict[str, Any] = {}
    for key in ("parent_id", "root_id", "chord_id", "chord", "group_id", "group_index"):
        if job.get(key) is not None:
            links[key] = job[key]
    if job.get("group_id"):
        links["group"] = [task_row(j, {}) for j in monitor.group_members(job["group_id"], 50)]
    info["links"] = links
    return info


def queues(app: Localq) -> dict[str, Any]:
    """Depth per queue and priority, delayed jobs, jobs waiting in a rate-limited lane,
    and every limit in force."""
    depths, in_inboxes = app.store.queue_depths()
    by_queue: dict[str, int] = {}
    for queue, _, count in depths["ready"]:
        by_queue[queue] = by_queue.get(queue, 0) + count
    for _, queue, count in depths["lanes"]:
        by_queue[queue] = by_queue.get(queue, 0) + count
    for queue, _, _, count in in_inboxes:     # not copied into the file yet
        by_queue[queue] = by_queue.get(queue, 0) + count
    return {
        "active_queues": [{"name": q, "messages": n} for q, n in sorted(by_queue.items())],
        "ready": [{"queue": q, "priority": p, "jobs": n} for q, p, n in depths["ready"]],
        "delayed": [{"queue": q, "jobs": n, "next_eta": eta} for q, n, eta in depths["delayed"]],
        "rate_limited": [{"task": lane, "queue": q, "jobs": n} for lane, q, n in depths["lanes"]],
        "limits": limits_in_force(app),
        "tasks_loaded": bool(app.tasks),
    }


def throughput(app: Localq, span: int = THROUGHPUT_SPAN) -> dict[str, Any]:
    """Succeeded, failed and retried per second over the last ``span`` seconds, one
    entry per second (zeros filled in), oldest first."""
    now = int(time.time())
    start = now - span + 1
    seen = {s: (a, b, c) for s, a, b, c in app.store.monitor.throughput(start)}
    series = {"succeeded": [], "failed": [], "retried": []}   # type: dict[str, list[int]]
    for second in range(start, now + 1):
        a, b, c = seen.get(second, (0, 0, 0))
        series["succeeded"].append(a)
        series["failed"].append(b)
        series["retried"].append(c)
    return {"start": start, "end": now, **series}


def names(app: Localq) -> list[str]:
    """Task names: the app's, and those the workers have counted in this file."""
    seen = {t for t, _, _ in app.store.monitor.task_totals()}
    return sorted(seen | set(app.tasks))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def metrics(app: Localq) -> str:
    """Prometheus's text format (version 0.0.4)."""
    monitor = app.store.monitor
    lines = ["# HELP localq_tasks_total Task outcomes recorded by workers, by task and state.",
             "# TYPE localq_tasks_total counter"]
    hist: dict[str, dict[str, float]] = {}
    for task, kind, n in monitor.task_totals():
        if kind.startswith("le:") or kind == "runtime_sum":
            hist.setdefault(task, {})[kind] = n
        else:
            lines.append(f'localq_tasks_total{{task="{_label(task)}",state="{_label(kind)}"}} '
                         f'{n:.0f}')
    lines += ["# HELP localq_task_runtime_seconds How long each run of a task took.",
              "# TYPE localq_task_runtime_seconds histogram"]
    for task, kinds in hist.items():
        label, total = _label(task), 0.0
        for bound in (*(str(b) for b in RUNTIME_BUCKETS), "+Inf"):
            total += kinds.get(f"le:{bound}", 0)
            lines.append(f'localq_task_runtime_seconds_bucket{{task="{label}",le="{bound}"}} '
                         f'{total:.0f}')
        lines.append(f'localq_task_runtime_seconds_sum{{task="{label}"}} '
                     f'{kinds.get("runtime_sum", 0.0)}')
        lines.append(f'localq_task_runtime_seconds_count{{task="{label}"}} {total:.0f}')
    q = queues(app)
    lines += ["# HELP localq_queue_length Jobs ready to run, by queue.",
              "# TYPE localq_queue_length gauge"]
    lines += [f'localq_queue_length{{queue="{_label(row["name"])}"}} {row["messages"]}'
              for row in q["active_queues"]]
    lines += ["# HELP localq_delayed_jobs Jobs waiting for their ETA or retry countdown.",
              "# TYPE localq_delayed_jobs gauge"]
    lines += [f'localq_delayed_jobs{{queue="{_label(row["queue"])}"}} {row["jobs"]}'
              for row in q["delayed"]]
    ws = monitor.workers()
    running = monitor.running()
    lines += ["# HELP localq_workers Registered workers.", "# TYPE localq_workers gauge",
              f"localq_workers {len(ws)}",
              "# HELP localq_worker_children Child processes of all workers.",
              "# TYPE localq_worker_children gauge",
              f"localq_worker_children {sum(len(w['children']) for w in ws)}",
              "# HELP localq_tasks_started Jobs claimed by a worker (running or reserved).",
              "# TYPE localq_tasks_started gauge", f"localq_tasks_started {len(running)}"]
    return "\n".join(lines) + "\n"
