"""The store's SQL for the life of a job: lookup, revoke, forget, claim, outcomes.

Functions over an open connection (the reading one, or a write transaction's):
the Store facade and the Transaction decide where the transaction begins and
ends; this module only says what the statements are.

Every state change is one guarded UPDATE (``WHERE ... AND state = ?`` and,
for a worker's reports, ``AND owner = ?``), so a late or repeated report never
moves a job that was already finished, recovered or revoked.
"""
from __future__ import annotations

import sqlite3
from collections import Counter
from itertools import chain
from operator import itemgetter
from typing import Any, Sequence

from ..ids import parse_id
from . import canvas
from .records import (
    CLAIM_RETURNING,
    FINAL_SQL,
    JOB_COLUMNS,
    READY_WHERE,
    WAITING_STATES,
    Claimed,
    Outcome,
    column_names,
    in_list,
    job_dict,
)

_PRIORITY, _SEQ = itemgetter(0), itemgetter(1)


_BY_SEQ = "seq = ? AND id IS NULL"     # a generated id: its row number
_BY_ID = "id = ?"                      # an id the sender chose


def where_id(job_id: str) -> tuple[str, Any]:
    """The WHERE clause that finds a job by its public id, and its parameter."""
    seq = parse_id(job_id)
    if seq is not None:
        return _BY_SEQ, seq
    return _BY_ID, job_id


def job(conn: sqlite3.Connection, job_id: str) -> dict | None:
    where, key = where_id(job_id)
    cur = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE {where}", (key,))
    row = cur.fetchone()
    return None if row is None else job_dict(column_names(cur), row)


def final_job(conn: sqlite3.Connection, job_id: str) -> dict | None:
    """A job's row if it is final, else None (also when there is no such job yet): what a
    waiter reads after each ring, one lookup that materializes nothing until the end."""
    where, key = where_id(job_id)
    cur = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE {where} AND state IN "
                       f"{FINAL_SQL}", (key,))
    row = cur.fetchone()
    return None if row is None else job_dict(column_names(cur), row)


def seq_of(conn: sqlite3.Connection, job_id: str) -> int | None:
    where, key = where_id(job_id)
    row = conn.execute(f"SELECT seq FROM jobs WHERE {where}", (key,)).fetchone()
    return None if row is None else row[0]


_STATE_BY_SEQ = f"SELECT state FROM jobs WHERE {_BY_SEQ}"
_STATE_BY_ID = f"SELECT state FROM jobs WHERE {_BY_ID}"


def state_query(job_id: str) -> tuple[str, tuple]:
    """The statement and parameters that read one job's state (see where_id)."""
    where, key = where_id(job_id)
    return (_STATE_BY_SEQ if where == _BY_SEQ else _STATE_BY_ID), (key,)


def states(conn: sqlite3.Connection, job_ids: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    by_seq = {seq: i for i in job_ids if (seq := parse_id(i)) is not None}
    custom = [i for i in job_ids if parse_id(i) is None]
    seqs = list(by_seq)
    for start in range(0, len(seqs), 500):
        marks, chunk = in_list(seqs[start:start + 500])
        for seq, st in conn.execute(f"SELECT seq, state FROM jobs WHERE id IS NULL "
                                    f"AND seq IN ({marks})", chunk):
            out[by_seq[seq]] = st
    for start in range(0, len(custom), 500):
        names = custom[start:start + 500]
        marks = ",".join("?" * len(names))
        out.update(conn.execute(
            f"SELECT id, state FROM jobs WHERE id IN ({marks})", names).fetchall())
    return out


def attempts(conn: sqlite3.Connection, seq: int) -> list[dict]:
    cur = conn.execute("SELECT attempt, started, ended, pid, outcome, exc_type, "
                       "exc_message FROM attempts WHERE job_seq = ? ORDER BY attempt", (seq,))
    names = column_names(cur)
    return [dict(zip(names, r)) for r in cur.fetchall()]


def forget(conn: sqlite3.Connection, job_id: str) -> None:
    where, key = where_id(job_id)
    row = conn.execute(f"SELECT seq FROM jobs WHERE {where} AND state IN "
                       f"{FINAL_SQL}", (key,)).fetchone()
    if row:
        conn.execute("DELETE FROM attempts WHERE job_seq = ?", row)
        conn.execute("DELETE FROM task_states WHERE seq = ?", row)
        conn.execute("DELETE FROM jobs WHERE seq = ?", row)


def revoke(conn: sqlite3.Connection, job_id: str, terminate: bool, reason: Any,
           now: float) -> str:
    where, key = where_id(job_id)
    row = conn.execute(f"SELECT state FROM jobs WHERE {where}", (key,)).fetchone()
    if row is None:
        seq = parse_id(job_id)
        conn.execute("INSERT INTO jobs (seq, id, task, queue, state, serializer, "
                     "created, done, result, exc_type) VALUES (?, ?, '', '', 'REVOKED', "
                     "'json', ?, ?, ?, 'TaskRevokedError')",
                     (seq, None if seq is not None else job_id, now, now, reason))
        return "REVOKED"
    current = row[0]
    if current in WAITING_STATES:
        seq = conn.execute("UPDATE jobs SET state = 'REVOKED', done = ?, result = ?, "
                           f"exc_type = 'TaskRevokedError', owner = NULL WHERE {where} AND "
                           f"{READY_WHERE} RETURNING seq", (now, reason, key)).fetchone()
        if seq is not None:
            canvas.settle(conn, [seq[0]])
        return "REVOKED"
    if current == "STARTED":
        conn.execute(f"UPDATE jobs SET revoke = ? WHERE {where} AND state = 'STARTED'",
                     (2 if terminate else 1, key))
    return current


def claim(conn: sqlite3.Connection, owner: int, queue: str, limit: int, now: float,
          lane: str | None = None, exclude: Sequence[str] = ()) -> list[Claimed]:
    if lane is None:
        where = f"{READY_WHERE} AND lane IS NULL AND eta = 0 AND queue = ?"
        params: list[Any] = [queue]
    else:
        where = f"{READY_WHERE} AND lane IS NOT NULL AND eta = 0 AND lane = ? AND queue = ?"
        params = [lane, queue]
    if exclude:
        where += f" AND task NOT IN ({','.join('?' * len(exclude))})"
        params.extend(exclude)
    rows = conn.execute(
        "UPDATE jobs SET state = 'STARTED', owner = ?, started = ? WHERE seq IN "
        f"(SELECT seq FROM jobs WHERE {where} ORDER BY priority DESC, seq LIMIT ?) "
        f"RETURNING priority, {CLAIM_RETURNING}", [owner, now, *params, limit]).fetchall()
    # Highest priority first, then oldest (RETURNING has no order): two stable sorts.
    rows.sort(key=_SEQ)
    rows.sort(key=_PRIORITY, reverse=True)
    make = tuple.__new__
    return [make(Claimed, r[1:]) for r in rows]


def revoke_requests(conn: sqlite3.Connection, owner: int) -> list[tuple[int, int]]:
    return conn.execute("SELECT seq, revoke FROM jobs WHERE state = 'STARTED' AND "
                        "owner = ? AND revoke > 0", (owner,)).fetchall()


def finish(conn: sqlite3.Connection, owner: int, outcomes: Sequence[Outcome],
           written: list[int] | None = None) -> int:
    """Write outcomes, each guarded by ``owner``; returns how many jobs they made ready
    (the canvas's follow-ups: 0 means none). ``written``, if given, gets the seqs of
    the SUCCESS outcomes written, when there are at most ONE_BY_ONE of them (written one
    statement each, see _succeed); with more it stays empty."""
    success, done, retry, back = [], [], [], []
    for o in outcomes:
        st = o.state
        if st == "SUCCESS":
            success.append((o.seq, o.result, o.ended, o.pid, o.started))
        elif st == "RETRY":
            retry.append(o)
        elif st == "PENDING":
            back.append((o.seq, owner))
        else:
            done.append((st, o.result, o.exc_type, o.traceback, o.ended, o.pid,
                         o.started, o.seq, owner))
    # What the canvas needs of the jobs that succeeded here: see _succeed
    succeeded = _succeed(conn, owner, success, written) if success else []
    if done:
        conn.executemany(
            "UPDATE jobs SET state = ?, result = ?, exc_type = ?, traceback = ?, done = ?, "
            "pid = ?, started = coalesce(?, started), owner = NULL "
            "WHERE seq = ? AND state = 'STARTED' AND owner = ?", done)
    for o in retry:
        changed = conn.execute(
            "UPDATE jobs SET state = CASE WHEN revoke > 0 THEN 'REVOKED' ELSE 'RETRY' END, "
            "eta = ?, retries = retries + 1, owner = NULL, started = NULL, pid = NULL, "
            "exc_type = ?, traceback = ?, payload = coalesce(?, payload), "
            "options = coalesce(?, options) WHERE seq = ? AND state = 'STARTED' AND owner = ?",
            (o.eta, o.exc_type, o.traceback,
             *(o.result if type(o.result) is tuple else (None, None)),   # see retrying()
             o.seq, owner)).rowcount
        if changed:
            record_attempt(conn, o.seq, o.started, o.ended, o.pid, "RETRY", o.exc_type,
                           o.exc_message)
    if back:
        conn.executemany("UPDATE jobs SET state = CASE WHEN revoke > 0 THEN 'REVOKED' "
                         "ELSE 'PENDING' END, owner = NULL, started = NULL "
                         "WHERE seq = ? AND state = 'STARTED' AND owner = ?", back)
    # What these outcomes set off (a chain's next step, a chord's body), in this
    # same transaction: written exactly when the outcome is. Only a job sent in a
    # workflow (root_id) may have a canvas row; a bulk-sent group member (no root_id)
    # is counted by its group id, once: it is in ``succeeded`` only when this
    # transaction made it SUCCESS.
    ended = [seq for seq, _, _, _ in succeeded if seq is not None]
    ended.extend(o.seq for o in outcomes if o.state != "SUCCESS")
    return canvas.settle(conn, ended, [(group, part, n) for seq, group, part, n in succeeded
                                       if seq is None])


# SUCCESS outcomes: (seq, result, done, pid, started) each. Chunks of a fixed size are
# one statement each, joined to their values (UPDATE ... FROM (VALUES ...)): ~20 %
# cheaper per row than one execution per row; fixed sizes, so that a handful of
# statements is prepared once and stays in the connection's statement cache. The rest
# (fewer than the smallest chunk) is one execution per row; a transaction of at most
# ONE_BY_ONE of them, one UPDATE ... RETURNING per row, which also says what the canvas
# needs to know of it (no read first).
_SUCCESS_SET = ("state = 'SUCCESS', result = {0}2, done = {0}3, pid = {0}4, "
                "started = coalesce({0}5, started), owner = NULL, exc_type = NULL, "
                "traceback = NULL")   # and an earlier retry's
_SUCCESS_ONE = (f"UPDATE jobs SET {_SUCCESS_SET.format('?')} "
                "WHERE seq = ?1 AND state = 'STARTED' AND owner = ?6")
# A bulk-sent group member (no root_id) whose group's chord still waits for members.
_CHORD_WAITS = ("EXISTS (SELECT 1 FROM canvas_groups c WHERE c.id = jobs.group_id "
                "AND c.remaining > 0)")
ONE_BY_ONE = 8      # SUCCESS outcomes in a transaction written one UPDATE each, at most
_SUCCESS_RETURNING = (
    f"{_SUCCESS_ONE} RETURNING root_id IS NOT NULL, group_id, group_index / {canvas.PART}, "
    f"group_id IS NOT NULL AND root_id IS NULL AND {_CHORD_WAITS}")
_SUCCESS_CHUNKS = {
    size: (f"UPDATE jobs SET {_SUCCESS_SET.format('v.column')} FROM (VALUES "
           f"{','.join(['(?,?,?,?,?)'] * size)}) AS v WHERE jobs.seq = v.column1 "
           "AND jobs.state = 'STARTED' AND jobs.owner = ?")
    for size in (256, 64, 16)}


def _succeed(conn: sqlite3.Connection, owner: int, rows: list[tuple],
             written: list[int] | None = None) -> list[tuple]:
    """Write SUCCESS outcomes. Returns what the canvas needs of the jobs they change:
    (seq, None, None, None) of each job sent in a workflow (root_id: it may have a
    canvas row), and (None, group id, part, how many) of the bulk-sent members of a
    chord that waits (store/canvas.py's settle counts them; a plain group's members
    cost a probe of canvas_groups here, and nothing more). Exactly the jobs that change
    count: up to ONE_BY_ONE rows are written one statement each, which returns them;
    more are read first under the same guard as the UPDATE, in this transaction."""
    if len(rows) <= ONE_BY_ONE:
        return _succeed_one_by_one(conn, owner, rows, written)
    changed: list[tuple] = []
    for start in range(0, len(rows), 256):
        marks, seqs = in_list([row[0] for row in rows[start:start + 256]])
        seqs.append(owner)
        changed.extend(conn.execute(
            "SELECT CASE WHEN root_id IS NOT NULL THEN seq END, CASE WHEN root_id IS NULL "
            f"THEN group_id END, CASE WHEN root_id IS NULL THEN group_index / {canvas.PART} "
            f"END, count(*) FROM jobs WHERE seq IN ({marks}) AND "
            "state = 'STARTED' AND owner = ? AND (root_id IS NOT NULL OR (group_id IS NOT "
            f"NULL AND {_CHORD_WAITS})) GROUP BY 1, 2, 3",
            seqs).fetchall())
    start, count = 0, len(rows)
    for size, sql in _SUCCESS_CHUNKS.items():
        while count - start >= size:
            params = list(chain.from_iterable(rows[start:start + size]))
            params.append(owner)
            conn.execute(sql, params)
            start += size
    if start < count:
        own = (owner,)
        conn.executemany(_SUCCESS_ONE, [row + own for row in rows[start:]])
    return changed


def _succeed_one_by_one(conn: sqlite3.Connection, owner: int, rows: list[tuple],
                        written: list[int] | None) -> list[tuple]:
    """_succeed for a few rows: one UPDATE ... RETURNING each, no read before."""
    changed: list[tuple] = []
    members: Counter[tuple[str, int]] = Counter()
    own = (owner,)
    for row in rows:
        found = conn.execute(_SUCCESS_RETURNING, row + own).fetchone()
        if found is None:             # not this worker's job any more
            continue
        if written is not None:
            written.append(row[0])
        in_workflow, group_id, part, chord_waits = found
        if in_workflow:
            changed.append((row[0], None, None, 1))
        elif chord_waits:
            members[(group_id, part)] += 1
    changed.extend((None, group_id, part, n) for (group_id, part), n in members.items())
    return changed


def record_attempt(conn: sqlite3.Connection, seq: int, started: float | None, ended: float,
                   pid: int | None, outcome: str, exc_type: str | None,
                   exc_message: str | None) -> None:
    conn.execute("INSERT OR REPLACE INTO attempts (job_seq, attempt, started, ended, pid, "
                 "outcome, exc_type, exc_message) VALUES (?, (SELECT count(*) FROM attempts "
                 "WHERE job_seq = ?), ?, ?, ?, ?, ?, ?)",
                 (seq, seq, started, ended, pid, outcome, exc_type, exc_message))


def set_task_states(conn: sqlite3.Connection, owner: int | None,
                    states: Sequence[tuple[int, str, Any]], now: float) -> None:
    """Custom states (``update_state``) of running jobs: (seq, state, encoded meta).
    Guarded: only a job still STARTED (under ``owner``, for a worker's reports), and
    only for its current attempt (a later attempt does not see an earlier one's)."""
    guard = "" if owner is None else " AND owner = ?"
    conn.executemany(
        "INSERT OR REPLACE INTO task_states (seq, attempt, state, meta, updated) "
        f"SELECT seq, retries, ?, ?, ? FROM jobs WHERE seq = ? AND state = 'STARTED'{guard}",
        [(state, meta, now, seq, *(() if owner is None else (owner,)))
         for seq, state, meta in states])


def task_state(conn: sqlite3.Connection, job_id: str) -> tuple | None:
    """(state, meta, job serializer, task) of a running job's custom state, or None."""
    where, key = where_id(job_id)
    return conn.execute(
        "SELECT t.state, t.meta, j.serializer, j.task FROM task_states t JOIN jobs j "
        f"ON j.seq = t.seq WHERE t.seq = (SELECT seq FROM jobs WHERE {where}) "
        "AND t.attempt = j.retries AND j.state = 'STARTED'", (key,)).fetchone()
