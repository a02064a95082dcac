"""``python -m localq inspect`` and ``python -m localq events``: Celery's names for what
scripts ask of the workers, answered from the file.

``inspect active|reserved|scheduled|registered|stats`` prints, per worker, what
Celery's command of the same name prints (JSON with ``--json``). Workers write
what their children run with each heartbeat (worker/tally.py), so ``active`` is
at most a heartbeat old; ``reserved`` is what a worker claimed and has not
started. ``events`` prints task state changes as they happen, one plain line
each with Celery's event names (task-received, task-started, task-succeeded,
task-failed, task-retried, task-revoked), by polling the newest rows and the
rows it saw that had not finished yet.
"""
from __future__ import annotations

import json
import signal
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, TextIO

from .dashboard.views import names, short_args
from .store.records import FINAL_STATES

if TYPE_CHECKING:
    from .app import Localq

COMMANDS = ("active", "reserved", "scheduled", "registered", "stats")
EVENT = {"STARTED": "task-started", "SUCCESS": "task-succeeded", "FAILURE": "task-failed",
         "RETRY": "task-retried", "REVOKED": "task-revoked", "PENDING": "task-received"}
OPEN_MAX = 100_000       # unfinished jobs `events` follows at most


def _name(w: dict) -> str:
    return f"localq@{w['hostname']}:{w['pid']}"


def _job(j: dict, w: dict | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": j["id"], "name": j["task"], "args": short_args(j),
            "hostname": _name(w) if w else None, **extra}


def inspect(app: Localq, command: str, ws: list[dict] | None = None) -> dict[str, Any]:
    """{worker name: answer} as Celery's ``inspect <command>`` gives it (``ws``: the
    workers, as the monitor reads them, if read already)."""
    monitor = app.store.monitor
    ws = monitor.workers() if ws is None else ws
    if command == "registered":
        return {_name(w): names(app) for w in ws} or {"(no worker)": names(app)}
    if command == "scheduled":
        jobs = monitor.scheduled()
        return {"(the file: jobs are claimed when due)": [
            {"eta": datetime.fromtimestamp(j["eta"]).isoformat(), "priority": j["priority"],
             "request": {"id": j["id"], "name": j["task"]}} for j in jobs]}
    if command == "stats":
        now = time.time()
        return {_name(w): {"pid": w["pid"], "hostname": w["hostname"],
                           "uptime": round(now - w["started"]), "queues": w["queues"],
                           "pool": {"max-concurrency": w["concurrency"],
                                    "processes": [c["pid"] for c in w["children"]],
                                    "rss": {str(c["pid"]): c["rss"] for c in w["children"]}},
                           "total": {"processed": w["processed"], "failed": w["failed"]},
                           "heartbeat": w["heartbeat"]} for w in ws}
    running = monitor.running()
    out: dict[str, Any] = {}
    for w in ws:
        in_child = {c["id"]: c for c in w["children"] if c.get("id")}
        mine = [j for j in running if j["owner"] == w["id"]]
        if command == "active":
            out[_name(w)] = [_job(j, w, time_start=in_child[j["id"]]["since"],
                                  worker_pid=in_child[j["id"]]["pid"], acknowledged=True)
                             for j in mine if j["id"] in in_child]
        else:
            out[_name(w)] = [_job(j, w, acknowledged=False) for j in mine
                             if j["id"] not in in_child]
    return out


class Inspect:
    """``app.control.inspect()``: Celery's Python API for the same answers, each a dict
    {worker name: answer}, or None when no worker runs (as Celery's, when none replies).
    ``destination``: only these worker names."""

    def __init__(self, app: Localq, destination: list[str] | None = None) -> None:
        self.app = app
        self.destination = destination

    def _ask(self, command: str) -> dict[str, Any] | None:
        ws = self.app.store.monitor.workers()
        if not ws:
            return None
        answer = inspect(self.app, command, ws)
        if self.destination is not None:
            answer = {k: v for k, v in answer.items() if k in self.destination}
        return answer or None

    def active(self) -> dict[str, Any] | None:
        return self._ask("active")

    def reserved(self) -> dict[str, Any] | None:
        return self._ask("reserved")

    def scheduled(self) -> dict[str, Any] | None:
        return self._ask("scheduled")

    def registered(self) -> dict[str, Any] | None:
        return self._ask("registered")

    def stats(self) -> dict[str, Any] | None:
        return self._ask("stats")

    def ping(self) -> dict[str, Any] | None:
        names = [_name(w) for w in self.app.store.monitor.workers()]
        pongs = {name: {"ok": "pong"} for name in names
                 if self.destination is None or name in self.destination}
        return pongs or None


def render(answer: dict[str, Any]) -> str:
    """Celery's layout: ``-> name: OK`` then one line per item (or ``- empty -``)."""
    lines = []
    for name, items in answer.items():
        lines.append(f"-> {name}: OK")
        if isinstance(items, dict):
            lines += ["    " + line for line in json.dumps(items, indent=2).splitlines()]
        elif not items:
            lines.append("    - empty -")
        else:
            lines += [f"    * {json.dumps(item, default=repr)}" for item in items]
    return "\n".join(lines) if lines else "Error: No nodes replied (no worker is running)."


def events(app: Localq, out: TextIO, poll: float = 0.2,
           stop: Callable[[], bool] = lambda: False) -> int:
    """Print task state changes from now on, one line each, until ``stop()`` or a signal."""
    monitor = app.store.monitor
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(1))
    last = monitor.newest_seq()
    # seq -> [id, task, state, started]: jobs seen unfinished
    follow: dict[int, list] = {j["seq"]: [j["id"], j["task"], "STARTED", True]
                               for j in monitor.running()}

    # Said once the starting point is read, so that a caller knows from when it sees.
    out.write(f"-> localq events: watching {app.path} (Ctrl-C stops)\n")
    out.flush()

    def emit(event: str, job_id: str, task: str, detail: str = "") -> None:
        stamp = datetime.now().isoformat(" ", "milliseconds")
        out.write(f"{stamp} {event} {task}[{job_id}]{' ' + detail if detail else ''}\n")

    while not stopping and not stop():
        for seq, job_id, task, state in monitor.jobs_after(last, 1000):
            last = seq
            if not task:               # a revoke of an id never sent: not a task
                continue
            emit("task-received", job_id, task)
            if len(follow) < OPEN_MAX:
                follow[seq] = [job_id, task, "PENDING", False]
        if follow:
            now = monitor.states_of(list(follow))
            for seq in [s for s in follow if s not in now]:     # purged or expired
                del follow[seq]
            for seq, (state, exc_type, started, done) in now.items():
                seen = follow[seq]
                if state == seen[2] and bool(started) == seen[3]:
                    continue
                if started and not seen[3] and state not in ("PENDING", "RETRY"):
                    emit("task-started", seen[0], seen[1])
                if state not in ("STARTED", seen[2]):
                    detail = ""
                    if state == "SUCCESS" and started and done:
                        detail = f"runtime={done - started:.3f}s"
                    elif exc_type:
                        detail = exc_type
                    emit(EVENT[state], seen[0], seen[1], detail)
                seen[2], seen[3] = state, bool(started)
                if state in FINAL_STATES:
                    del follow[seq]
        out.flush()
        time.sleep(poll)
    return 0
