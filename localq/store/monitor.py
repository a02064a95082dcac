"""The store's SQL for monitoring: what the dashboard, ``inspect``, ``events`` and
``/metrics`` read, and the report each worker writes with its heartbeat.

Every read here is bounded whatever the size of the jobs table: pages of jobs go
newest first by key (``seq``), a filtered page reads windows of rows for at
most SCAN_BUDGET and says where to go on from; depths come from the partial indexes of waiting
jobs; throughput and totals come from the small tables the workers keep
(``throughput``, ``task_totals``), never from counting jobs. Reads use the
reading connection: in WAL mode they never take the write lock.
"""
from __future__ import annotations

import json
import sqlite3
import time
from typing import Any, Sequence

from .jobs import record_attempt, where_id
from .records import READY_WHERE, column_names, in_list, job_dict

SCAN_WINDOW = 5_000            # rows a filtered page of jobs reads at a time
SCAN_BUDGET = 0.025            # seconds a filtered page goes on reading windows, at most
THROUGHPUT_KEPT = 3600         # seconds of per-second counts kept
# task_totals' kinds: a state (outcomes), "runtime_sum", and "le:B" for each bound B here
# and "+Inf": the runs whose runtime fell in that bucket (Prometheus's default bounds).
RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LIST_COLUMNS = ("seq, id, task, queue, priority, state, serializer, payload, eta, expires, "
                "retries, owner, pid, created, started, done, exc_type")


# ------------------------------------------------------------------ written by workers

def write_report(conn: sqlite3.Connection, worker_id: int, now: float,
                 report: dict[str, Any]) -> bool:
    """The heartbeat with a worker's report (worker/tally.py); False when the worker's
    row is gone (another presumed it dead), and then nothing is written."""
    if not conn.execute("UPDATE workers SET heartbeat = ?, processed = ?, failed = ?, "
                        "children = ? WHERE id = ?",
                        (now, report["processed"], report["failed"],
                         json.dumps(report["children"]), worker_id)).rowcount:
        return False
    if report["seconds"]:
        conn.executemany(
            "INSERT INTO throughput (second, succeeded, failed, retried) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (second) DO UPDATE SET succeeded = succeeded + excluded.succeeded, "
            "failed = failed + excluded.failed, retried = retried + excluded.retried",
            report["seconds"])
        conn.execute("DELETE FROM throughput WHERE second < ?", (int(now) - THROUGHPUT_KEPT,))
    if report["totals"]:
        conn.executemany("INSERT INTO task_totals (task, kind, n) VALUES (?, ?, ?) "
                         "ON CONFLICT (task, kind) DO UPDATE SET n = n + excluded.n",
                         report["totals"])
    return True


def requeue_failed(conn: sqlite3.Connection, job_id: str, exc_message: str | None) -> bool:
    """Run a FAILURE again under its own id (the dashboard's "retry"): the failure is
    kept as an attempt, and the job goes back to PENDING with its arguments, its
    result and error cleared. False when the job is not (or no longer) a FAILURE."""
    where, key = where_id(job_id)
    row = conn.execute(f"SELECT seq, started, done, pid, exc_type FROM jobs WHERE {where} "
                       "AND state = 'FAILURE'", (key,)).fetchone()
    if row is None:
        return False
    seq, started, done, pid, exc_type = row
    record_attempt(conn, seq, started, done, pid, "FAILURE", exc_type, exc_message)
    return conn.execute(
        "UPDATE jobs SET state = 'PENDING', eta = 0, owner = NULL, pid = NULL, "
        "started = NULL, done = NULL, result = NULL, exc_type = NULL, traceback = NULL, "
        "revoke = 0 WHERE seq = ? AND state = 'FAILURE'", (seq,)).rowcount == 1


# ------------------------------------------------------------------ read

def workers(conn: sqlite3.Connection) -> list[dict]:
    cur = conn.execute("SELECT id, pid, hostname, started, heartbeat, queues, concurrency, "
                       "processed, failed, children FROM workers ORDER BY id")
    names = column_names(cur)
    out = []
    for row in cur.fetchall():
        w = dict(zip(names, row))
        w["queues"] = w["queues"].split(",")
        w["children"] = json.loads(w["children"]) if w["children"] else []
        out.append(w)
    return out


def jobs_page(conn: sqlite3.Connection, *, state: str | None = None, task: str | None = None,
              queue: str | None = None, before: int | None = None, limit: int = 50,
              offset: int = 0) -> tuple[list[dict], int | None]:
    """Jobs newest first, filtered, from before ``before`` (a seq): (rows, where the next
    page starts, or None at the end). A filtered page reads the table backwards
    SCAN_WINDOW rows at a time and stops once it has ``limit`` rows or has spent
    SCAN_BUDGET seconds, so that a rare state in a big table costs no more than a common
    one: the page may then hold fewer rows than ``limit`` and still have a next one."""
    key, params = ("WHERE seq < ?", [before]) if before is not None else ("", [])
    wanted = {name: value for name, value in (("state", state), ("task", task),
                                               ("queue", queue)) if value}
    if not wanted:
        cur = conn.execute(f"SELECT {LIST_COLUMNS} FROM jobs {key} ORDER BY seq DESC "
                           "LIMIT ? OFFSET ?", [*params, limit, offset])
        names = column_names(cur)
        rows = [job_dict(names, r) for r in cur.fetchall()]
        return rows, (rows[-1]["seq"] if len(rows) == limit else None)
    want = (wanted.get("state"), wanted.get("task"), wanted.get("queue"))
    found: list[int] = []
    skip = offset
    give_up = time.monotonic() + SCAN_BUDGET
    cursor = before
    while True:
        window = conn.execute(
            "SELECT seq, state, task, queue FROM jobs "
            f"{'WHERE seq < ?' if cursor is not None else ''} ORDER BY seq DESC LIMIT ?",
            [*([cursor] if cursor is not None else []), SCAN_WINDOW]).fetchall()
        for seq, *values in window:
            if all(w is None or w == v for w, v in zip(want, values)):
                if skip:
                    skip -= 1
                elif len(found) < limit:
                    found.append(seq)
        if len(found) == limit:
            nxt: int | None = found[-1]
            break
        if len(window) < SCAN_WINDOW:       # the oldest row was read
            nxt = None
            break
        cursor = window[-1][0]
        if time.monotonic() > give_up:
            nxt = cursor
            break
    if not found:
        return [], nxt
    cur = conn.execute(f"SELECT {LIST_COLUMNS} FROM jobs WHERE seq IN "
                       f"({','.join('?' * len(found))}) ORDER BY seq DESC", found)
    names = column_names(cur)
    return [job_dict(names, r) for r in cur.fetchall()], nxt


def job(conn: sqlite3.Connection, job_id: str) -> dict | None:
    """Every column of one job (those other features add too), with its public id."""
    where, key = where_id(job_id)
    cur = conn.execute(f"SELECT * FROM jobs WHERE {where}", (key,))
    row = cur.fetchone()
    return None if row is None else job_dict(column_names(cur), row)


def group_members(conn: sqlite3.Connection, group_id: str, limit: int) -> list[dict]:
    cur = conn.execute(f"SELECT {LIST_COLUMNS} FROM jobs WHERE group_id = ? "
                       "ORDER BY group_index LIMIT ?", (group_id, limit))
    names = column_names(cur)
    return [job_dict(names, r) for r in cur.fetchall()]


def queue_depths(conn: sqlite3.Connection) -> dict[str, list]:
    """Waiting jobs by queue and priority (ready now), delayed ones (an ETA or a retry's
    countdown) and those in a rate-limited or capped task's lane. Each from a partial
    index of waiting jobs: the cost follows the backlog, not the table."""
    ready = conn.execute(f"SELECT queue, priority, count(*) FROM jobs WHERE {READY_WHERE} "
                         "AND lane IS NULL AND eta = 0 GROUP BY queue, priority "
                         "ORDER BY queue, priority DESC").fetchall()
    delayed = conn.execute(f"SELECT queue, count(*), min(eta) FROM jobs WHERE {READY_WHERE} "
                           "AND eta > 0 GROUP BY queue ORDER BY queue").fetchall()
    lanes = conn.execute(f"SELECT lane, queue, count(*) FROM jobs WHERE {READY_WHERE} AND "
                         "lane IS NOT NULL AND eta = 0 GROUP BY lane, queue "
                         "ORDER BY lane").fetchall()
    return {"ready": ready, "delayed": delayed, "lanes": lanes}


def running(conn: sqlite3.Connection) -> list[dict]:
    """Jobs claimed by a worker (STARTED: running or reserved in a child's queue)."""
    # Sorted here: ORDER BY seq would let SQLite walk the whole table in seq order
    # rather than the small partial index of STARTED jobs.
    cur = conn.execute("SELECT seq, id, task, queue, owner, started, payload, serializer, "
                       "revoke FROM jobs WHERE state = 'STARTED'")
    names = column_names(cur)
    return sorted((job_dict(names, r) for r in cur.fetchall()), key=lambda j: j["seq"])


def scheduled(conn: sqlite3.Connection, limit: int) -> list[dict]:
    cur = conn.execute(f"SELECT seq, id, task, queue, eta, priority FROM jobs WHERE "
                       f"{READY_WHERE} AND eta > 0 ORDER BY eta LIMIT ?", (limit,))
    names = column_names(cur)
    return [job_dict(names, r) for r in cur.fetchall()]


def throughput(conn: sqlite3.Connection, since: int) -> list[tuple[int, int, int, int]]:
    return conn.execute("SELECT second, succeeded, failed, retried FROM throughput "
                        "WHERE second >= ? ORDER BY second", (since,)).fetchall()


def task_totals(conn: sqlite3.Connection) -> list[tuple[str, str, float]]:
    return conn.execute("SELECT task, kind, n FROM task_totals ORDER BY task, kind").fetchall()


def newest_seq(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT coalesce(max(seq), 0) FROM jobs").fetchone()[0]


def jobs_after(conn: sqlite3.Connection, seq: int, limit: int) -> list[tuple]:
    """(seq, id, task, state) of jobs added after ``seq``, oldest first."""
    return [(s, job_dict(["seq", "id"], (s, i))["id"], t, st) for s, i, t, st in conn.execute(
        "SELECT seq, id, task, state FROM jobs WHERE seq > ? ORDER BY seq LIMIT ?",
        (seq, limit))]


def states_of(conn: sqlite3.Connection, seqs: Sequence[int]) -> dict[int, tuple]:
    """seq -> (state, exc_type, started, done) of these jobs (gone ones are left out)."""
    out: dict[int, tuple] = {}
    seqs = list(seqs)
    for start in range(0, len(seqs), 500):
        marks, chunk = in_list(seqs[start:start + 500])
        for seq, *rest in conn.execute(
                f"SELECT seq, state, exc_type, started, done FROM jobs WHERE seq IN "
                f"({marks})", chunk):
            out[seq] = tuple(rest)
    return out


class Monitor:
    """The reads above, each in its own read transaction (``Store.monitor``)."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def workers(self) -> list[dict]:
        with self.db.read() as conn:
            return workers(conn)

    def jobs_page(self, **filters: Any) -> tuple[list[dict], int | None]:
        with self.db.read() as conn:
            return jobs_page(conn, **filters)

    def job(self, job_id: str) -> dict | None:
        with self.db.read() as conn:
            return job(conn, job_id)

    def group_members(self, group_id: str, limit: int = 100) -> list[dict]:
        with self.db.read() as conn:
            return group_members(conn, group_id, limit)

    def running(self) -> list[dict]:
        with self.db.read() as conn:
            return running(conn)

    def scheduled(self, limit: int = 1000) -> list[dict]:
        with self.db.read() as conn:
            return scheduled(conn, limit)

    def throughput(self, since: int) -> list[tuple[int, int, int, int]]:
        with self.db.read() as conn:
            return throughput(conn, since)

    def task_totals(self) -> list[tuple[str, str, float]]:
        with self.db.read() as conn:
            return task_totals(conn)

    def newest_seq(self) -> int:
        with self.db.read() as conn:
            return newest_seq(conn)

    def jobs_after(self, seq: int, limit: int = 1000) -> list[tuple]:
        with self.db.read() as conn:
            return jobs_after(conn, seq, limit)

    def states_of(self, seqs: Sequence[int]) -> dict[int, tuple]:
        with self.db.read() as conn:
            return states_of(conn, seqs)
