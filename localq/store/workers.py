"""The store's SQL for workers and upkeep: the registry, recovery of a dead worker's
jobs, purge, result expiry, and the counts behind `status`.

Functions over an open connection; the Store facade opens the transaction."""
from __future__ import annotations

import sqlite3
from typing import Any, Sequence

from . import canvas
from .jobs import record_attempt
from .records import JOB_COLUMNS, READY_WHERE, acks_late, column_names, job_dict


def register(conn: sqlite3.Connection, pid: int, pid_start: str | None, hostname: str,
             queues: Sequence[str], concurrency: int, now: float) -> int:
    """Add a worker under an id never used before in this file (kept in localq_meta):
    a job left STARTED under a vanished worker's id must never seem to be a new
    worker's, or no one would ever recover it."""
    last = conn.execute("SELECT value FROM localq_meta WHERE key = "
                        "'last_worker_id'").fetchone()
    used = conn.execute("SELECT max(coalesce((SELECT max(id) FROM workers), 0), "
                        "coalesce((SELECT max(owner) FROM jobs WHERE state = "
                        "'STARTED'), 0))").fetchone()[0]
    worker_id = max(int(last[0]) if last else 0, used) + 1
    conn.execute("INSERT INTO workers (id, pid, pid_start, hostname, started, "
                 "heartbeat, queues, concurrency) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                 (worker_id, pid, pid_start, hostname, now, now, ",".join(queues),
                  concurrency))
    conn.execute("INSERT INTO localq_meta (key, value) VALUES ('last_worker_id', ?) "
                 "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                 (str(worker_id),))
    return worker_id


def is_registered(conn: sqlite3.Connection, worker_id: int) -> bool:
    return conn.execute("SELECT 1 FROM workers WHERE id = ?",
                        (worker_id,)).fetchone() is not None


HEARTBEAT = "UPDATE workers SET heartbeat = ? WHERE id = ?"
UNREGISTER = "DELETE FROM workers WHERE id = ?"


def workers(conn: sqlite3.Connection) -> list[dict]:
    cur = conn.execute("SELECT id, pid, pid_start, hostname, started, heartbeat, "
                       "queues, concurrency FROM workers ORDER BY id")
    names = column_names(cur)
    return [dict(zip(names, r)) for r in cur.fetchall()]


def release_jobs(conn: sqlite3.Connection, worker_ids: Sequence[int], now: float,
                 lost_reason: Any) -> tuple[int, int]:
    """Put back the STARTED jobs of workers that are gone, and forget the workers.
    Returns (put back, failed)."""
    back = failed = 0
    for wid in worker_ids:
        rows = conn.execute("SELECT seq, options, revoke, started, pid FROM "
                            "jobs WHERE state = 'STARTED' AND owner = ?",
                            (wid,)).fetchall()
        for seq, options, revoke, started, pid in rows:
            if revoke:
                conn.execute("UPDATE jobs SET state = 'REVOKED', done = ?, owner = NULL,"
                             " exc_type = 'TaskRevokedError' WHERE seq = ? AND "
                             "state = 'STARTED'", (now, seq))
            elif not acks_late(options):
                conn.execute("UPDATE jobs SET state = 'FAILURE', done = ?, result = ?, "
                             "exc_type = 'localq.exceptions.WorkerLostError', "
                             "owner = NULL WHERE seq = ? AND state = 'STARTED'",
                             (now, lost_reason, seq))
                failed += 1
            else:
                record_attempt(conn, seq, started, now, pid, "LOST",
                               "localq.exceptions.WorkerLostError",
                               "the worker running this job died")
                conn.execute("UPDATE jobs SET state = 'PENDING', owner = NULL, "
                             "started = NULL, pid = NULL WHERE seq = ? AND "
                             "state = 'STARTED'", (seq,))
                back += 1
        conn.execute("DELETE FROM workers WHERE id = ?", (wid,))
        canvas.settle(conn, [r[0] for r in rows])     # those that ended here
    return back, failed


def purge(conn: sqlite3.Connection, queues: Sequence[str] | None) -> int:
    if queues:
        marks = ",".join("?" * len(queues))
        return conn.execute(f"DELETE FROM jobs WHERE {READY_WHERE} AND "
                            f"queue IN ({marks})", list(queues)).rowcount
    return conn.execute(f"DELETE FROM jobs WHERE {READY_WHERE}").rowcount


def expire_results(conn: sqlite3.Connection, before: float, after_seq: int,
                   scan: int) -> tuple[int, int]:
    """Delete finished jobs that finished before ``before``, among the next ``scan``
    jobs in creation order after ``after_seq``. Returns (deleted, next cursor; 0 at
    the end). A cursor over the table instead of an index on ``done`` keeps every
    job's completion one index write cheaper; old jobs finish first, so the scan
    finds them in order."""
    last = conn.execute("SELECT seq, created FROM jobs WHERE seq > ? ORDER BY seq "
                        "LIMIT 1 OFFSET ?", (after_seq, scan - 1)).fetchone()
    hi = last[0] if last else (1 << 63) - 1
    span = (after_seq, hi, before)
    expired = "seq > ? AND seq <= ? AND done < ?" + canvas.awaited(conn)
    conn.execute(f"DELETE FROM attempts WHERE job_seq IN (SELECT seq FROM jobs WHERE "
                 f"{expired})", span)
    conn.execute(f"DELETE FROM task_states WHERE seq IN (SELECT seq FROM jobs WHERE "
                 f"{expired})", span)
    deleted = conn.execute(f"DELETE FROM jobs WHERE {expired}", span).rowcount
    # Jobs created after the cutoff cannot have finished before it: the pass ends there.
    more = last is not None and last[1] < before
    if not more:
        canvas.expire_groups(conn, before)
    return deleted, (hi if more else 0)


def counts(conn: sqlite3.Connection) -> list[tuple[str, str, str, int]]:
    return conn.execute("SELECT queue, task, state, count(*) FROM jobs "
                        "GROUP BY queue, task, state ORDER BY queue, task").fetchall()


def recent(conn: sqlite3.Connection, states: Sequence[str], limit: int) -> list[dict]:
    marks = ",".join("?" * len(states))
    cur = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ({marks}) "
                       "ORDER BY seq DESC LIMIT ?", [*states, limit])
    names = column_names(cur)
    return [job_dict(names, r) for r in cur.fetchall()]
