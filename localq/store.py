"""The store: the only place that speaks SQL (this module, rows.py and store_*.py).

This module holds the connection and the life of a job (enqueue, lookup,
revoke, claim, outcomes); store_workers.py, store_maps.py and store_flow.py
add the SQL of workers and upkeep, maps, and flow control as mixins.

A Store holds two connections, each opened on first use and guarded by one
lock so that threads may share them: one for reads, which waits for locks the
SQLite way, and one for writes, which does not. SQLite's own busy wait sleeps
at least a millisecond, then 2, 5, 10 ms..., each time a write finds the write
lock taken: on a busy host that was the producers' and the supervisor's main
stall (half the wall time of a streaming run went into those sleeps). Writes
therefore fail fast and retry here after 20 us, doubling to 1 ms, for up to
a minute (see ``_retry_busy``). A Store never crosses a fork: before any fork in
the process its connections are closed (and reopened on next use on either
side), because a forked copy of an open SQLite connection can release locks
or checkpoint the WAL under the parent.

Every state change is one guarded UPDATE (``WHERE ... AND state = ?`` and,
for a worker's reports, ``AND owner = ?``), so a late or repeated report never
moves a job that was already finished, recovered or revoked.
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from contextlib import contextmanager
from operator import itemgetter
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

from .ids import format_id, parse_id
from .rows import JOB_COLUMNS, READY_WHERE, WAITING_STATES, column_names, job_dict, record_attempt
from .schema import BUSY_TIMEOUT_MS, open_database
from .schema import database_error as _database_error
from .store_flow import FlowRecords
from .store_maps import MapRecords
from .store_workers import WorkerRecords

__all__ = ["Claimed", "NewJob", "Outcome", "Store"]


class NewJob(NamedTuple):
    id: str
    task: str
    queue: str
    lane: str | None
    priority: int
    serializer: str
    payload: Any
    options: str | None
    eta: float
    expires: float | None
    created: float
    group_id: str | None = None
    group_index: int | None = None


class Claimed(NamedTuple):
    seq: int
    custom_id: str | None        # the id a user chose; None for a generated one
    task: str
    serializer: str
    payload: Any
    options: str | None
    retries: int
    expires: float | None
    revoke: int

    @property
    def id(self) -> str:
        """The job's public id (formatted here, not in the claim: only logs need it)."""
        return self.custom_id or format_id(self.seq)


class Outcome(NamedTuple):
    """A finished attempt as a worker reports it."""
    seq: int
    state: str                   # SUCCESS, FAILURE, RETRY, REVOKED, or PENDING (put back)
    result: Any = None           # encoded value, or encoded exception
    exc_type: str | None = None
    traceback: str | None = None
    started: float | None = None
    ended: float = 0.0
    pid: int | None = None
    eta: float = 0.0             # RETRY: when to run again
    exc_message: str | None = None


_INSERT = ("INSERT INTO jobs (seq, id, task, queue, lane, priority, state, serializer, "
           "payload, options, eta, expires, created, group_id, group_index) "
           "VALUES (?, ?, ?, ?, ?, ?, 'PENDING', ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")
_LIVE_STORES: weakref.WeakSet[Store] = weakref.WeakSet()
_PRIORITY, _SEQ = itemgetter(0), itemgetter(1)


class Store(WorkerRecords, MapRecords, FlowRecords):
    # Seconds a write waits for the write lock before DatabaseError: a supervisor
    # waits less and tries again later, so that its loop goes on meanwhile.
    patience = BUSY_TIMEOUT_MS / 1000

    def __init__(self, path: str, synchronous: str = "NORMAL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._conn: sqlite3.Connection | None = None     # reads
        self._wconn: sqlite3.Connection | None = None    # writes: fails fast when locked
        self._lock = threading.RLock()
        _LIVE_STORES.add(self)

    # -------------------------------------------------------------- plumbing

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = open_database(self.path, self.synchronous)
        return self._conn

    def _writer(self) -> sqlite3.Connection:
        if self._wconn is None:
            conn = open_database(self.path, self.synchronous)
            conn.execute("PRAGMA busy_timeout=0")
            self._wconn = conn
        return self._wconn

    def close(self) -> None:
        with self._lock:
            for conn in (self._conn, self._wconn):
                if conn is not None:
                    conn.close()
            self._conn = self._wconn = None

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, _errors(self.path):
            yield self._db()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: take the write lock up front)."""
        with self._lock, _errors(self.path):
            conn = self._wconn or self._writer()
            _retry_busy(conn.execute, "BEGIN IMMEDIATE", (), self.patience)
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def write(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        """One statement in its own transaction, on the writing connection."""
        with self._lock, _errors(self.path):
            conn = self._wconn or self._writer()
            return _retry_busy(conn.execute, sql, params, self.patience)

    def checkpoint(self) -> None:
        """Copy committed pages from the WAL into the database file (PASSIVE: it never
        waits for, nor blocks, readers and writers)."""
        with self._lock, _errors(self.path):
            (self._wconn or self._writer()).execute("PRAGMA wal_checkpoint(PASSIVE)")

    def data_version(self) -> int:
        """Changes when another connection commits: a cheap "anything new?" check.
        Asked of the writing connection, so that this Store's own writes do not count."""
        with self._lock, _errors(self.path):
            conn = self._wconn or self._writer()
            return _retry_busy(conn.execute, "PRAGMA data_version").fetchone()[0]

    # -------------------------------------------------------------- producers

    def enqueue(self, job: NewJob) -> bool:
        """Insert one job in its own transaction; False when its id already exists."""
        return self.insert_row(_insert_params(job))

    def insert_row(self, row: tuple) -> bool:
        """The same with a row in the table's order (see insert_rows)."""
        # The hot path of delay(): no context managers, one statement (autocommit).
        with self._lock:
            try:
                conn = self._wconn or self._writer()
                return _retry_busy(conn.execute, _INSERT, row).rowcount == 1
            except sqlite3.Error as exc:
                raise _database_error(self.path, exc) from None

    def enqueue_rows(self, rows: Iterable[tuple]) -> int:
        """Insert rows of NewJob's fields in one transaction; returns how many were new
        (a row whose id exists already is skipped)."""
        return self.insert_rows(_insert_params(NewJob(*r)) for r in rows)

    def insert_rows(self, rows: Iterable[tuple]) -> int:
        """The same with rows already in the table's order: (seq, id, task, queue, lane,
        priority, serializer, payload, options, eta, expires, created, group_id,
        group_index), seq None for a chosen id, id None for a generated one."""
        with self.transaction() as conn:
            return conn.executemany(_INSERT, rows).rowcount

    def job(self, job_id: str) -> dict | None:
        with self._read() as conn:
            where, key = _where_id(job_id)
            cur = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE {where}", (key,))
            row = cur.fetchone()
            return None if row is None else job_dict(column_names(cur), row)

    def state(self, job_id: str) -> str | None:
        """One job's state (None when there is no such job): a fraction of job()'s cost."""
        with self._read() as conn:
            where, key = _where_id(job_id)
            row = conn.execute(f"SELECT state FROM jobs WHERE {where}", (key,)).fetchone()
            return None if row is None else row[0]

    def states(self, job_ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        by_seq = {seq: i for i in job_ids if (seq := parse_id(i)) is not None}
        custom = [i for i in job_ids if parse_id(i) is None]
        with self._read() as conn:
            seqs = list(by_seq)
            for start in range(0, len(seqs), 500):
                chunk = seqs[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for seq, state in conn.execute(f"SELECT seq, state FROM jobs WHERE id IS NULL "
                                               f"AND seq IN ({marks})", chunk):
                    out[by_seq[seq]] = state
            for start in range(0, len(custom), 500):
                names = custom[start:start + 500]
                marks = ",".join("?" * len(names))
                out.update(conn.execute(
                    f"SELECT id, state FROM jobs WHERE id IN ({marks})", names).fetchall())
        return out

    def attempts(self, seq: int) -> list[dict]:
        with self._read() as conn:
            cur = conn.execute("SELECT attempt, started, ended, pid, outcome, exc_type, "
                               "exc_message FROM attempts WHERE job_seq = ? ORDER BY attempt",
                               (seq,))
            names = column_names(cur)
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def forget(self, job_id: str) -> None:
        with self.transaction() as conn:
            where, key = _where_id(job_id)
            row = conn.execute(f"SELECT seq FROM jobs WHERE {where} AND state IN "
                               "('SUCCESS', 'FAILURE', 'REVOKED')", (key,)).fetchone()
            if row:
                conn.execute("DELETE FROM attempts WHERE job_seq = ?", row)
                conn.execute("DELETE FROM jobs WHERE seq = ?", row)

    def revoke(self, job_id: str, terminate: bool, reason: Any, now: float) -> str:
        """Revoke a job: waiting -> REVOKED at once; running -> marked (and killed if
        ``terminate``); unknown -> a REVOKED tombstone, so a later send with that id
        never runs. Returns the state after the call."""
        with self.transaction() as conn:
            where, key = _where_id(job_id)
            row = conn.execute(f"SELECT state FROM jobs WHERE {where}", (key,)).fetchone()
            if row is None:
                seq = parse_id(job_id)
                conn.execute("INSERT INTO jobs (seq, id, task, queue, state, serializer, "
                             "created, done, result, exc_type) VALUES (?, ?, '', '', 'REVOKED', "
                             "'json', ?, ?, ?, 'TaskRevokedError')",
                             (seq, None if seq is not None else job_id, now, now, reason))
                return "REVOKED"
            state = row[0]
            if state in WAITING_STATES:
                conn.execute("UPDATE jobs SET state = 'REVOKED', done = ?, result = ?, "
                             f"exc_type = 'TaskRevokedError', owner = NULL WHERE {where} AND "
                             f"{READY_WHERE}", (now, reason, key))
                return "REVOKED"
            if state == "STARTED":
                conn.execute(f"UPDATE jobs SET revoke = ? WHERE {where} AND state = 'STARTED'",
                             (2 if terminate else 1, key))
            return state

    # -------------------------------------------------------------- workers

    def claim(self, conn: sqlite3.Connection, owner: int, queue: str, limit: int, now: float,
              lane: str | None = None, exclude: Sequence[str] = ()) -> list[Claimed]:
        """Claim up to ``limit`` due jobs of one queue (or one lane) inside ``conn``'s
        transaction, highest priority first, then oldest first."""
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
            "RETURNING priority, seq, id, task, serializer, payload, options, retries, "
            "expires, revoke", [owner, now, *params, limit]).fetchall()
        # Highest priority first, then oldest (RETURNING has no order): two stable sorts.
        rows.sort(key=_SEQ)
        rows.sort(key=_PRIORITY, reverse=True)
        make = tuple.__new__
        return [make(Claimed, r[1:]) for r in rows]

    def revoke_requests(self, owner: int) -> list[tuple[int, int]]:
        """(seq, revoke) of this worker's running jobs that were revoked meanwhile."""
        with self._read() as conn:
            return conn.execute("SELECT seq, revoke FROM jobs WHERE state = 'STARTED' AND "
                                "owner = ? AND revoke > 0", (owner,)).fetchall()

    def finish(self, owner: int, outcomes: Sequence[Outcome]) -> None:
        """Write a batch of outcomes in one transaction; each is guarded by owner."""
        if not outcomes:
            return
        with self.transaction() as conn:
            self.finish_in(conn, owner, outcomes)

    def finish_in(self, conn: sqlite3.Connection, owner: int,
                  outcomes: Sequence[Outcome]) -> None:
        success, done, retry, back = [], [], [], []
        for o in outcomes:
            state = o.state
            if state == "SUCCESS" and o.started is not None:
                success.append((o.result, o.ended, o.pid, o.started, o.seq, owner))
            elif state == "RETRY":
                retry.append(o)
            elif state == "PENDING":
                back.append((o.seq, owner))
            else:
                done.append((state, o.result, o.exc_type, o.traceback, o.ended, o.pid,
                             o.started, o.seq, owner))
        if success:    # the common case, with fewer columns to bind (~20% faster)
            conn.executemany(
                "UPDATE jobs SET state = 'SUCCESS', result = ?, done = ?, pid = ?, started = ?, "
                "owner = NULL, exc_type = NULL, traceback = NULL "    # an earlier retry's
                "WHERE seq = ? AND state = 'STARTED' AND owner = ?", success)
        if done:
            conn.executemany(
                "UPDATE jobs SET state = ?, result = ?, exc_type = ?, traceback = ?, done = ?, "
                "pid = ?, started = coalesce(?, started), owner = NULL "
                "WHERE seq = ? AND state = 'STARTED' AND owner = ?", done)
        for o in retry:
            changed = conn.execute(
                "UPDATE jobs SET state = CASE WHEN revoke > 0 THEN 'REVOKED' ELSE 'RETRY' END, "
                "eta = ?, retries = retries + 1, owner = NULL, started = NULL, pid = NULL, "
                "exc_type = ?, traceback = ? WHERE seq = ? AND state = 'STARTED' AND owner = ?",
                (o.eta, o.exc_type, o.traceback, o.seq, owner)).rowcount
            if changed:
                record_attempt(conn, o.seq, o.started, o.ended, o.pid, "RETRY", o.exc_type,
                                o.exc_message)
        if back:
            conn.executemany("UPDATE jobs SET state = CASE WHEN revoke > 0 THEN 'REVOKED' "
                             "ELSE 'PENDING' END, owner = NULL, started = NULL "
                             "WHERE seq = ? AND state = 'STARTED' AND owner = ?", back)

    # -------------------------------------------------------------- maintenance

def _insert_params(j: NewJob) -> tuple:
    seq = parse_id(j.id)
    return (seq, None if seq is not None else j.id, j.task, j.queue, j.lane, j.priority,
            j.serializer, j.payload, j.options, j.eta, j.expires, j.created, j.group_id,
            j.group_index)


def _where_id(job_id: str) -> tuple[str, Any]:
    """The WHERE clause that finds a job by its public id, and its parameter."""
    seq = parse_id(job_id)
    if seq is not None:
        return "seq = ? AND id IS NULL", seq
    return "id = ?", job_id


_SQLITE_BUSY = 5


def _retry_busy(execute: Any, sql: str, params: Any = (),
                patience: float = BUSY_TIMEOUT_MS / 1000) -> sqlite3.Cursor:
    """Run one statement that takes the write lock, retrying while another process holds
    it. A statement that found the lock taken changed nothing, so running it again is
    safe. The first retries come within tens of microseconds (a write holds the lock
    for ~30 us to a few ms); the pause doubles up to 1 ms, and after ``patience``
    seconds (a minute) the error goes up."""
    pause, give_up = 20e-6, None
    while True:
        try:
            return execute(sql, params)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != _SQLITE_BUSY:
                raise
            now = time.monotonic()
            give_up = give_up or now + patience
            if now > give_up:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.001)


@contextmanager
def _errors(path: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise _database_error(path, exc) from None


def _before_fork() -> None:
    for store in list(_LIVE_STORES):
        store._lock.acquire()
        for conn in (store._conn, store._wconn):
            if conn is not None:
                conn.close()
        store._conn = store._wconn = None


def _after_fork_parent() -> None:
    for store in list(_LIVE_STORES):
        store._lock.release()


def _after_fork_child() -> None:
    for store in list(_LIVE_STORES):
        store._lock = threading.RLock()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_parent,
                    after_in_child=_after_fork_child)
