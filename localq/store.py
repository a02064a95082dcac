"""The only module that speaks SQL: every read and write of the database file.

A Store holds one connection, opened on first use and guarded by a lock so
that threads may share it. A Store never crosses a fork: before any fork in
the process its connection is closed (and reopened on next use on either
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

import weakref
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

from .exceptions import ConfigurationError, DatabaseError
from .ids import format_id, parse_id
from .schema import open_database

FINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED")
WAITING_STATES = ("PENDING", "RETRY")
READY_WHERE = "state IN ('PENDING', 'RETRY')"


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
    id: str
    task: str
    serializer: str
    payload: Any
    options: str | None
    retries: int
    expires: float | None
    revoke: int


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
_JOB_COLUMNS = ("seq, id, task, queue, priority, state, serializer, payload, options, eta, "
                "expires, retries, owner, pid, created, started, done, result, exc_type, "
                "traceback, revoke, group_id, group_index")

_LIVE_STORES: weakref.WeakSet[Store] = weakref.WeakSet()


class Store:
    def __init__(self, path: str, synchronous: str = "NORMAL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        _LIVE_STORES.add(self)

    # -------------------------------------------------------------- plumbing

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = open_database(self.path, self.synchronous)
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, _errors(self.path):
            yield self._db()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: take the write lock up front)."""
        with self._lock, _errors(self.path):
            conn = self._db()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def data_version(self) -> int:
        """Changes when another connection commits: a ~2 µs "anything new?" check."""
        with self._read() as conn:
            return conn.execute("PRAGMA data_version").fetchone()[0]

    # -------------------------------------------------------------- producers

    def enqueue(self, job: NewJob) -> bool:
        """Insert one job in its own transaction; False when its id already exists."""
        # The hot path of delay(): no context managers, one statement (autocommit).
        with self._lock:
            try:
                conn = self._conn or self._db()
                return conn.execute(_INSERT, _insert_params(job)).rowcount == 1
            except sqlite3.Error:
                pass
        with self._read() as conn:    # again, to turn the error into a clear one
            return conn.execute(_INSERT, _insert_params(job)).rowcount == 1

    def enqueue_many(self, jobs: Iterable[NewJob]) -> None:
        with self.transaction() as conn:
            conn.executemany(_INSERT, map(_insert_params, jobs))

    def enqueue_rows(self, rows: Iterable[tuple]) -> int:
        """Insert prepared rows (NewJob's fields in order) in one transaction; returns
        how many were new (a row whose id exists already is skipped)."""
        with self.transaction() as conn:
            return conn.executemany(_INSERT, (_insert_params(NewJob(*r)) for r in rows)).rowcount

    def group_indexes(self, group: str, lo: int, hi: int) -> set[int]:
        with self._read() as conn:
            return {r[0] for r in conn.execute(
                "SELECT group_index FROM jobs WHERE group_id = ? AND group_index >= ? AND "
                "group_index < ?", (group, lo, hi))}

    def begin_map(self, name: str, task: str, digest: str, total: int, now: float) -> bool:
        """Record a resumable map, or check that a recorded one has the same inputs; on
        resume, its failed items are made to run again. True when it resumes one."""
        with self.transaction() as conn:
            row = conn.execute("SELECT task, digest FROM maps WHERE name = ?",
                               (name,)).fetchone()
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
                         "WHERE group_id = ? AND state IN ('FAILURE', 'REVOKED')",
                         (f"map:{name}",))
            return True

    def drop_map(self, name: str) -> int:
        with self.transaction() as conn:
            conn.execute("DELETE FROM maps WHERE name = ?", (name,))
            return self._drop_group(conn, f"map:{name}")

    def drop_group(self, group: str) -> int:
        with self.transaction() as conn:
            return self._drop_group(conn, group)

    @staticmethod
    def _drop_group(conn: sqlite3.Connection, group: str) -> int:
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

    def map_results(self, group: str, lo: int, hi: int) -> list[tuple]:
        """(index, state, serializer, result, exc_type, traceback) of the finished jobs
        of a map whose index is in [lo, hi)."""
        with self._read() as conn:
            return conn.execute("SELECT group_index, state, serializer, result, exc_type, "
                                "traceback FROM jobs WHERE group_id = ? AND group_index >= ? "
                                "AND group_index < ? AND state IN ('SUCCESS', 'FAILURE', "
                                "'REVOKED')", (group, lo, hi)).fetchall()

    # -------------------------------------------------------------- rate limits

    def set_rate_override(self, task: str, rate: str | None) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT INTO rate_limits (task, override) VALUES (?, ?) "
                         "ON CONFLICT(task) DO UPDATE SET override = excluded.override",
                         (task, rate))

    @staticmethod
    def buckets(conn: sqlite3.Connection) -> dict[str, tuple]:
        """task -> (override, tokens, updated), inside the caller's transaction."""
        return {row[0]: row[1:] for row in conn.execute(
            "SELECT task, override, tokens, updated FROM rate_limits")}

    @staticmethod
    def has_rate_overrides(conn: sqlite3.Connection) -> bool:
        return conn.execute("SELECT 1 FROM rate_limits WHERE override IS NOT NULL "
                            "LIMIT 1").fetchone() is not None

    @staticmethod
    def save_bucket(conn: sqlite3.Connection, task: str, tokens: float, now: float) -> None:
        conn.execute("INSERT INTO rate_limits (task, tokens, updated) VALUES (?, ?, ?) "
                     "ON CONFLICT(task) DO UPDATE SET tokens = excluded.tokens, "
                     "updated = excluded.updated", (task, tokens, now))

    def job(self, job_id: str) -> dict | None:
        with self._read() as conn:
            where, key = _where_id(job_id)
            cur = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {where}", (key,))
            row = cur.fetchone()
            return None if row is None else _job_dict(_column_names(cur), row)

    def job_state(self, job_id: str) -> str | None:
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
            names = _column_names(cur)
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

    def register_worker(self, pid: int, pid_start: str | None, hostname: str,
                        queues: Sequence[str], concurrency: int, now: float) -> int:
        with self.transaction() as conn:
            cur = conn.execute("INSERT INTO workers (pid, pid_start, hostname, started, "
                               "heartbeat, queues, concurrency) VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (pid, pid_start, hostname, now, now, ",".join(queues),
                                concurrency))
            return int(cur.lastrowid or 0)

    def heartbeat(self, worker_id: int, now: float) -> bool:
        """False when this worker's row is gone (another presumed it dead)."""
        with self._read() as conn:
            return conn.execute("UPDATE workers SET heartbeat = ? WHERE id = ?",
                                (now, worker_id)).rowcount == 1

    def unregister_worker(self, worker_id: int) -> None:
        with self._read() as conn:
            conn.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

    def workers(self) -> list[dict]:
        with self._read() as conn:
            cur = conn.execute("SELECT id, pid, pid_start, hostname, started, heartbeat, "
                               "queues, concurrency FROM workers ORDER BY id")
            names = _column_names(cur)
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def release_worker_jobs(self, worker_ids: Sequence[int], now: float,
                            lost_reason: Any) -> tuple[int, int]:
        """Put back the STARTED jobs of workers that are gone, and forget the workers.

        A job whose options say ``acks_late: false`` ends FAILURE/WorkerLostError
        instead, and a job revoked meanwhile ends REVOKED. Returns (put back, failed).
        """
        if not worker_ids:
            return 0, 0
        back = failed = 0
        with self.transaction() as conn:
            for wid in worker_ids:
                rows = conn.execute("SELECT seq, options, revoke, started, pid FROM "
                                    "jobs WHERE state = 'STARTED' AND owner = ?",
                                    (wid,)).fetchall()
                for seq, options, revoke, started, pid in rows:
                    if revoke:
                        conn.execute("UPDATE jobs SET state = 'REVOKED', done = ?, owner = NULL,"
                                     " exc_type = 'TaskRevokedError' WHERE seq = ? AND "
                                     "state = 'STARTED'", (now, seq))
                    elif options and '"acks_late":false' in options:
                        conn.execute("UPDATE jobs SET state = 'FAILURE', done = ?, result = ?, "
                                     "exc_type = 'localq.exceptions.WorkerLostError', "
                                     "owner = NULL WHERE seq = ? AND state = 'STARTED'",
                                     (now, lost_reason, seq))
                        failed += 1
                    else:
                        _record_attempt(conn, seq, started, now, pid, "LOST",
                                        "localq.exceptions.WorkerLostError",
                                        "the worker running this job died")
                        conn.execute("UPDATE jobs SET state = 'PENDING', owner = NULL, "
                                     "started = NULL, pid = NULL WHERE seq = ? AND "
                                     "state = 'STARTED'", (seq,))
                        back += 1
                conn.execute("DELETE FROM workers WHERE id = ?", (wid,))
        return back, failed

    # -------------------------------------------------------------- claiming

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
        rows.sort(key=lambda r: (-r[0], r[1]))
        return [Claimed(r[1], r[2] or format_id(r[1]), *r[3:]) for r in rows]

    @staticmethod
    def move_to_lane(conn: sqlite3.Connection, task: str) -> int:
        """Move a task's waiting jobs out of the main claim order into its own lane."""
        return conn.execute(f"UPDATE jobs SET lane = task WHERE {READY_WHERE} AND lane IS NULL "
                            "AND task = ?", (task,)).rowcount

    @staticmethod
    def waiting_lanes(conn: sqlite3.Connection) -> list[str]:
        """Every lane that has waiting jobs: one index seek per lane."""
        lanes: list[str] = []
        while True:
            row = conn.execute(f"SELECT lane FROM jobs WHERE {READY_WHERE} AND lane IS NOT NULL "
                               "AND eta = 0 AND lane > ? ORDER BY lane LIMIT 1",
                               (lanes[-1] if lanes else "",)).fetchone()
            if row is None:
                return lanes
            lanes.append(row[0])

    @staticmethod
    def release_due(conn: sqlite3.Connection, now: float) -> int:
        """Make delayed jobs whose time has come claimable (inside the claim transaction)."""
        return conn.execute(f"UPDATE jobs SET eta = 0 WHERE {READY_WHERE} AND eta > 0 AND "
                            "eta <= ?", (now,)).rowcount

    def next_due(self, queues: Sequence[str]) -> float | None:
        """The earliest ETA of a delayed job in these queues, if any."""
        marks = ",".join("?" * len(queues))
        with self._read() as conn:
            row = conn.execute(f"SELECT min(eta) FROM jobs WHERE {READY_WHERE} AND eta > 0 "
                               f"AND queue IN ({marks})", list(queues)).fetchone()
        return row[0] if row else None

    def revoke_requests(self, owner: int) -> list[tuple[int, int]]:
        """(seq, revoke) of this worker's running jobs that were revoked meanwhile."""
        with self._read() as conn:
            return conn.execute("SELECT seq, revoke FROM jobs WHERE state = 'STARTED' AND "
                                "owner = ? AND revoke > 0", (owner,)).fetchall()

    def running_counts(self, conn: sqlite3.Connection, tasks: Sequence[str]) -> dict[str, int]:
        marks = ",".join("?" * len(tasks))
        return dict(conn.execute(f"SELECT task, count(*) FROM jobs WHERE state = 'STARTED' "
                                 f"AND task IN ({marks}) GROUP BY task", list(tasks)).fetchall())

    # -------------------------------------------------------------- outcomes

    def finish(self, owner: int, outcomes: Sequence[Outcome]) -> None:
        """Write a batch of outcomes in one transaction; each is guarded by owner."""
        if not outcomes:
            return
        with self.transaction() as conn:
            self.finish_in(conn, owner, outcomes)

    def finish_in(self, conn: sqlite3.Connection, owner: int,
                  outcomes: Sequence[Outcome]) -> None:
        done, retry, back = [], [], []
        for o in outcomes:
            if o.state == "RETRY":
                retry.append(o)
            elif o.state == "PENDING":
                back.append((o.seq, owner))
            else:
                done.append((o.state, o.result, o.exc_type, o.traceback, o.ended, o.pid,
                             o.started, o.seq, owner))
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
                _record_attempt(conn, o.seq, o.started, o.ended, o.pid, "RETRY", o.exc_type,
                                o.exc_message)
        if back:
            conn.executemany("UPDATE jobs SET state = CASE WHEN revoke > 0 THEN 'REVOKED' "
                             "ELSE 'PENDING' END, owner = NULL, started = NULL "
                             "WHERE seq = ? AND state = 'STARTED' AND owner = ?", back)

    def put_back(self, owner: int, seqs: Sequence[int]) -> None:
        self.finish(owner, [Outcome(s, "PENDING") for s in seqs])

    # -------------------------------------------------------------- maintenance

    def purge(self, queues: Sequence[str] | None) -> int:
        with self.transaction() as conn:
            if queues:
                marks = ",".join("?" * len(queues))
                return conn.execute(f"DELETE FROM jobs WHERE {READY_WHERE} AND "
                                    f"queue IN ({marks})", list(queues)).rowcount
            return conn.execute(f"DELETE FROM jobs WHERE {READY_WHERE}").rowcount

    def expire_results(self, before: float, after_seq: int, scan: int) -> tuple[int, int]:
        """Delete finished jobs that finished before ``before``, among the next ``scan``
        jobs in creation order after ``after_seq``. Returns (deleted, next cursor; 0 at
        the end). A cursor over the table instead of an index on ``done`` keeps every
        job's completion one index write cheaper; old jobs finish first, so the scan
        finds them in order."""
        with self.transaction() as conn:
            last = conn.execute("SELECT seq, created FROM jobs WHERE seq > ? ORDER BY seq "
                                "LIMIT 1 OFFSET ?", (after_seq, scan - 1)).fetchone()
            hi = last[0] if last else (1 << 63) - 1
            span = (after_seq, hi, before)
            conn.execute("DELETE FROM attempts WHERE job_seq IN (SELECT seq FROM jobs WHERE "
                         "seq > ? AND seq <= ? AND done < ?)", span)
            deleted = conn.execute("DELETE FROM jobs WHERE seq > ? AND seq <= ? AND done < ?",
                                   span).rowcount
        # Jobs created after the cutoff cannot have finished before it: the pass ends there.
        more = last is not None and last[1] < before
        return deleted, (hi if more else 0)

    def counts(self) -> list[tuple[str, str, str, int]]:
        """(queue, task, state, count) over every job."""
        with self._read() as conn:
            return conn.execute("SELECT queue, task, state, count(*) FROM jobs "
                                "GROUP BY queue, task, state ORDER BY queue, task").fetchall()

    def recent(self, states: Sequence[str], limit: int) -> list[dict]:
        marks = ",".join("?" * len(states))
        with self._read() as conn:
            cur = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN ({marks}) "
                               "ORDER BY seq DESC LIMIT ?", [*states, limit])
            names = _column_names(cur)
            return [_job_dict(names, r) for r in cur.fetchall()]


# ------------------------------------------------------------------ helpers

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


def _job_dict(names: list[str], row: tuple) -> dict:
    job = dict(zip(names, row))
    if job["id"] is None:
        job["id"] = format_id(job["seq"])
    return job


def _column_names(cur: sqlite3.Cursor) -> list[str]:
    return [d[0] for d in cur.description]


def _record_attempt(conn: sqlite3.Connection, seq: int, started: float | None, ended: float,
                    pid: int | None, outcome: str, exc_type: str | None,
                    exc_message: str | None) -> None:
    conn.execute("INSERT OR REPLACE INTO attempts (job_seq, attempt, started, ended, pid, "
                 "outcome, exc_type, exc_message) VALUES (?, (SELECT count(*) FROM attempts "
                 "WHERE job_seq = ?), ?, ?, ?, ?, ?, ?)",
                 (seq, seq, started, ended, pid, outcome, exc_type, exc_message))


@contextmanager
def _errors(path: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise DatabaseError(
                f"{path} stayed locked by another process for over a minute ({exc}). "
                f"Nothing was lost; find the process holding it (fuser {path}) and retry."
            ) from None
        raise DatabaseError(f"{path}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(f"{path} cannot be used ({exc}): it may be corrupt. Restore it "
                            f"from a backup or point localq at another path.") from None


def _before_fork() -> None:
    for store in list(_LIVE_STORES):
        store._lock.acquire()
        if store._conn is not None:
            store._conn.close()
            store._conn = None


def _after_fork_parent() -> None:
    for store in list(_LIVE_STORES):
        store._lock.release()


def _after_fork_child() -> None:
    for store in list(_LIVE_STORES):
        store._lock = threading.RLock()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_parent,
                    after_in_child=_after_fork_child)
