"""Connections to the database file: opening, locking, retrying, errors, forks.

A Database holds two connections, each opened on first use and guarded by one
lock so that threads may share them: one for reads, which waits for locks the
SQLite way, and one for writes, which does not. SQLite's own busy wait sleeps
at least a millisecond, then 2, 5, 10 ms..., each time a write finds the write
lock taken: on a busy host that was the producers' and the supervisor's main
stall. Writes therefore fail fast and retry here, yielding the CPU between tries at
first, then sleeping from 50 us doubling to 1 ms, for up to a minute (see
``_retry_busy``). A Database never crosses a fork:
before any fork in the process its connections are closed (and reopened on
next use on either side), because a forked copy of an open SQLite connection
can release locks or checkpoint the WAL under the parent.

Every sqlite3 error leaves this module as localq's DatabaseError, naming the
file. Only the store's modules use this class; they hand the rest of localq
their own objects (Store, Transaction), never a raw connection.
"""
from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from ..exceptions import DatabaseError
from .inbox import Attachments
from .schema import (
    BUSY_TIMEOUT_MS,
    WAL_RESET_BUG,
    checkpoint_guarded,
    database_error,
    open_database,
)

_LIVE: weakref.WeakSet[Database] = weakref.WeakSet()
# A commit that takes the WAL past this size checkpoints it (copies it into the file,
# with an fsync: milliseconds), in the committing process. SQLite's default, 1,000
# pages, put that on producers' delay() every few hundred jobs, also with a worker
# running whose checkpoint thread (worker/upkeep.py) does it off everyone's path. At
# this size a producer checkpoints only when no worker keeps up, or when the thread's
# checkpoints cannot reset the WAL (writers never pause): the WAL stays bounded.
# With SQLite's WAL-reset bug (schema.py's WAL_RESET_BUG) SQLite's own checkpoint is off
# and the Database does it, under the write lock, when it sees the -wal file past this
# size: it looks every WAL_LOOK_EVERY writes (an os.stat, ~1 us), so a process's own
# writes add at most a few hundred KiB past it before it looks. It must be above
# schema.py's WAL_FILE_KEPT, the size the file never shrinks under.
WAL_CHECKPOINT_BYTES = 8 << 20
WAL_LOOK_EVERY = 64


class Database:
    def __init__(self, path: str, synchronous: str = "NORMAL") -> None:
        self.path = path
        # SQLite keeps the WAL beside the file a symlink leads to (it resolves the name).
        self.wal_path = os.path.realpath(path) + "-wal"
        self.synchronous = synchronous
        # Seconds a write waits for the write lock before DatabaseError: a supervisor
        # waits less and tries again later, so that its loop goes on meanwhile.
        self.patience = BUSY_TIMEOUT_MS / 1000
        self._conn: sqlite3.Connection | None = None     # reads
        self._wconn: sqlite3.Connection | None = None    # writes: fails fast when locked
        self._lock = threading.RLock()
        # Writes until the next look at the WAL's size (never, if SQLite checkpoints).
        self._until_look = WAL_LOOK_EVERY if WAL_RESET_BUG else 1 << 62
        # Producers' inboxes attached to each connection (store/inbox.py).
        self.read_inboxes = Attachments()
        self.write_inboxes = Attachments()
        _LIVE.add(self)

    @property
    def lock(self) -> threading.RLock:
        """The lock of this Database's connections (reentrant)."""
        return self._lock

    def _reader(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = open_database(self.path, self.synchronous)
        return self._conn

    def _writer(self) -> sqlite3.Connection:
        if self._wconn is None:
            conn = open_database(self.path, self.synchronous)
            conn.execute("PRAGMA busy_timeout=0")
            if not WAL_RESET_BUG:
                page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_BYTES // page_size}")
            self._wconn = conn
        return self._wconn

    def close(self) -> None:
        with self._lock:
            for conn in (self._conn, self._wconn):
                if conn is not None:
                    conn.close()
            self._conn = self._wconn = None

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The reading connection (each statement its own read transaction)."""
        with self._lock, _errors(self.path):
            yield self._reader()

    def read_one(self, sql: str, params: Any = ()) -> Any:
        """One statement's first row (None if none) on the reading connection: the hot
        path of ``AsyncResult.ready()`` polled in a loop, without context managers."""
        with self._lock:
            try:
                return (self._conn or self._reader()).execute(sql, params).fetchone()
            except sqlite3.Error as exc:
                raise database_error(self.path, exc) from None

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """The reading connection inside one read transaction: every statement of the
        block sees the same state of the file (ATTACH is refused meanwhile)."""
        with self._lock, _errors(self.path):
            conn = self._reader()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:       # a read transaction: nothing to write
                    conn.execute("COMMIT")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: take the write lock up front),
        committed at the end of the block, rolled back if it raises."""
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
            self._until_look -= 1
            if self._until_look <= 0:
                self._look_at_wal()

    def write(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        """One statement in its own transaction, on the writing connection."""
        # The hot path of delay(): no context managers, one statement (autocommit).
        with self._lock:
            try:
                conn = self._wconn or self._writer()
                # Before the statement: its cursor may still hold the statement open.
                self._until_look -= 1
                if self._until_look <= 0:
                    self._look_at_wal()
                return _retry_busy(conn.execute, sql, params, self.patience)
            except sqlite3.Error as exc:
                raise database_error(self.path, exc) from None

    def attach_inboxes(self, folder: str, names: Iterable[str], writer: bool = True
                       ) -> dict[str, str]:
        """Attach producers' inboxes (read-only) to the writing or the reading
        connection, outside any transaction; name -> alias of those attached."""
        with self._lock, _errors(self.path):
            if writer:
                return self.write_inboxes.ensure(self._wconn or self._writer(), folder, names)
            return self.read_inboxes.ensure(self._reader(), folder, names)

    def detach_inbox(self, name: str) -> None:
        with self._lock, _errors(self.path):
            for conn, att in ((self._wconn, self.write_inboxes),
                              (self._conn, self.read_inboxes)):
                if conn is not None:
                    att.drop(conn, name)

    def write_many(self, sql: str, rows: Iterable[Any]) -> int:
        """One statement over many rows in one transaction; how many rows it changed."""
        with self.transaction() as conn:
            return conn.executemany(sql, rows).rowcount

    def checkpoint(self, past: int = 0) -> None:
        """Copy committed pages from the WAL into the database file (PASSIVE: it never
        waits for readers and writers). With SQLite's WAL-reset bug it is taken while
        the writing connection holds the write lock (waiting for it as long as a write
        does), so writers wait for it, and only if the -wal file is larger than ``past``
        bytes. The WAL is flushed to disk first, without the lock (``sync_wal``): the
        checkpoint's own flush of it, under the lock, then finds little left to do."""
        with self._lock, _errors(self.path):
            writer = self._wconn or self._writer()
            if not WAL_RESET_BUG:
                writer.execute("PRAGMA main.wal_checkpoint(PASSIVE)")   # not inboxes
                return
            if past:
                try:
                    if os.stat(self.wal_path).st_size <= past:
                        return
                except FileNotFoundError:
                    return
            # The reader first: opening it may fail, and nothing may fail between
            # BEGIN and the rollback that checkpoint_guarded's finally takes.
            reader = self._reader()
            sync_wal(self.wal_path)
            _retry_busy(writer.execute, "BEGIN IMMEDIATE", (), self.patience)
            checkpoint_guarded(reader, writer)

    def _look_at_wal(self) -> None:
        """Checkpoint if the WAL has grown past WAL_CHECKPOINT_BYTES (only with the bug,
        where SQLite's automatic checkpoint is off)."""
        self._until_look = WAL_LOOK_EVERY
        try:
            self.checkpoint(past=WAL_CHECKPOINT_BYTES)
        except DatabaseError:  # the write itself stands; the next look tries again
            pass

    def data_version(self) -> int:
        """Changes when another connection commits: a cheap "anything new?" check.
        Asked of the writing connection, so that this process's own writes do not count."""
        with self._lock, _errors(self.path):
            conn = self._wconn or self._writer()
            return _retry_busy(conn.execute, "PRAGMA data_version").fetchone()[0]


def sync_wal(wal_path: str) -> None:
    """Flush the -wal file's written pages to disk (fdatasync), as a checkpoint does
    first, but while others may still write: most of a guarded checkpoint's time under
    the write lock was this flush. Best effort: any error leaves it to the checkpoint.

    The file is opened with a descriptor of this module's own, read-only, and closed,
    which would release every POSIX lock this process holds on it (see schema.py's
    open_database); SQLite holds none on the -wal file: its WAL locks are on the -shm
    and the database file. A symlink, a FIFO or a missing file is left alone."""
    try:
        fd = os.open(wal_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fdatasync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_SQLITE_BUSY = 5


# The first retries yield the CPU instead of sleeping: a write holds the lock for tens
# of microseconds, and time.sleep(20e-6) really sleeps ~100 us (the timer's slack and
# the wake-up), so a sleeping producer lost several lock releases per BUSY. Yielding
# lets a child run meanwhile on a busy host, and costs ~1 us when nothing else waits.
SPIN_FOR = 300e-6


def _retry_busy(execute: Any, sql: str, params: Any = (),
                patience: float = BUSY_TIMEOUT_MS / 1000) -> sqlite3.Cursor:
    """Run one statement that takes the write lock, retrying while another process holds
    it. A statement that found the lock taken changed nothing, so running it again is
    safe. For the first SPIN_FOR seconds it is tried again after each sched_yield; then
    after sleeps from 50 us doubling to 1 ms; after ``patience`` seconds (a minute) the
    error goes up."""
    pause, spin_until, give_up = 50e-6, 0.0, 0.0
    while True:
        try:
            return execute(sql, params)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != _SQLITE_BUSY:
                raise
            now = time.monotonic()
            if not give_up:
                spin_until, give_up = now + SPIN_FOR, now + patience
            elif now > give_up:
                raise
        if now < spin_until:
            os.sched_yield()
        else:
            time.sleep(pause)
            pause = min(pause * 2, 0.001)


@contextmanager
def _errors(path: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise database_error(path, exc) from None


def _before_fork() -> None:
    for db in list(_LIVE):
        db._lock.acquire()
        for conn in (db._conn, db._wconn):
            if conn is not None:
                conn.close()
        db._conn = db._wconn = None


def _after_fork_parent() -> None:
    for db in list(_LIVE):
        db._lock.release()


def _after_fork_child() -> None:
    for db in list(_LIVE):
        db._lock = threading.RLock()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_parent,
                    after_in_child=_after_fork_child)
