"""The store's SQL for maps: a map's jobs, resumable maps by name, collecting results.

Functions over an open connection; the Store facade opens the transaction."""
from __future__ import annotations

import sqlite3

from ..exceptions import ConfigurationError


def group_indexes(conn: sqlite3.Connection, group: str, lo: int, hi: int) -> set[int]:
    return {r[0] for r in conn.execute(
        "SELECT group_index FROM jobs WHERE group_id = ? AND group_index >= ? AND "
        "group_index < ?", (group, lo, hi))}


def begin_map(conn: sqlite3.Connection, name: str, task: str, digest: str, total: int,
              now: float) -> bool:
    """Record a resumable map, or check that a recorded one has the same inputs; on
    resume, its failed items are made to run again. True when it resumes one."""
    row = conn.execute("SELECT task, digest FROM maps WHERE name = ?", (name,)).fetchone()
    if row is None:
        conn.execute("INSERT INTO maps (name, task, digest, total, created) VALUES "
                     "(?, ?, ?, ?, ?)", (name, task, digest, total, now))
        return False
    if tuple(row) != (task, digest):
        raise ConfigurationError(
            f"a map named {name!r} was already started with other inputs (or another "
            f"task): resume it with the same inputs, use another name, or drop it "
            f"first with app.drop_map({name!r})")
    conn.execute("UPDATE jobs SET state = 'PENDING', result = NULL, exc_type = NULL, "
                 "traceback = NULL, done = NULL, retries = 0, revoke = 0, eta = 0 "
                 "WHERE group_id = ? AND state IN ('FAILURE', 'REVOKED')", (f"map:{name}",))
    return True


def drop_map(conn: sqlite3.Connection, name: str) -> int:
    conn.execute("DELETE FROM maps WHERE name = ?", (name,))
    return drop_group(conn, f"map:{name}")


def drop_group(conn: sqlite3.Connection, group: str) -> int:
    conn.execute("DELETE FROM attempts WHERE job_seq IN (SELECT seq FROM jobs WHERE "
                 "group_id = ? AND state <> 'STARTED')", (group,))
    deleted = conn.execute("DELETE FROM jobs WHERE group_id = ? AND state <> 'STARTED'",
                           (group,)).rowcount
    # A running job keeps its row (its seq is in a worker's hands: deleting the row
    # could let SQLite hand that seq to a new job), but leaves the group and frees
    # its id, so a new map under the same name never inherits its late result.
    conn.execute("UPDATE jobs SET group_id = NULL, id = id || '~dropped~' || seq, "
                 "revoke = max(revoke, 1) WHERE group_id = ? AND state = 'STARTED'",
                 (group,))
    return deleted


def map_results(conn: sqlite3.Connection, group: str, lo: int, hi: int) -> list[tuple]:
    """(index, state, serializer, result, exc_type, traceback) of the finished jobs
    of a map whose index is in [lo, hi)."""
    return conn.execute("SELECT group_index, state, serializer, result, exc_type, "
                        "traceback FROM jobs WHERE group_id = ? AND group_index >= ? "
                        "AND group_index < ? AND state IN ('SUCCESS', 'FAILURE', "
                        "'REVOKED')", (group, lo, hi)).fetchall()
