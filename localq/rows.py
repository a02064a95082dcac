"""What a row of the database means to Python: states, the ready predicate, rows as dicts.

Shared by the store's modules (store.py and store_*.py), which are the only ones
that speak SQL.
"""
from __future__ import annotations

import sqlite3

from .ids import format_id

FINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED")
WAITING_STATES = ("PENDING", "RETRY")
READY_WHERE = "state IN ('PENDING', 'RETRY')"

JOB_COLUMNS = ("seq, id, task, queue, priority, state, serializer, payload, options, eta, "
               "expires, retries, owner, pid, created, started, done, result, exc_type, "
               "traceback, revoke, group_id, group_index")


def job_dict(names: list[str], row: tuple) -> dict:
    """A job row as a dict, with its public id (generated ids are not stored)."""
    job = dict(zip(names, row))
    if job["id"] is None:
        job["id"] = format_id(job["seq"])
    return job


def column_names(cur: sqlite3.Cursor) -> list[str]:
    return [d[0] for d in cur.description]


def record_attempt(conn: sqlite3.Connection, seq: int, started: float | None, ended: float,
                   pid: int | None, outcome: str, exc_type: str | None,
                   exc_message: str | None) -> None:
    conn.execute("INSERT OR REPLACE INTO attempts (job_seq, attempt, started, ended, pid, "
                 "outcome, exc_type, exc_message) VALUES (?, (SELECT count(*) FROM attempts "
                 "WHERE job_seq = ?), ?, ?, ?, ?, ?, ?)",
                 (seq, seq, started, ended, pid, outcome, exc_type, exc_message))
