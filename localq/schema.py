"""The database file: opening, checking, creating and migrating it.

One SQLite file holds everything. This module decides whether a file may be
used at all (a localq database of this or an older schema version, or a new
or empty file) and never writes a byte to a file it refuses. It creates new
files readable by their owner only, in WAL mode.
"""
from __future__ import annotations

import os
import sqlite3

from .exceptions import DatabaseError

SCHEMA_VERSION = 2
BUSY_TIMEOUT_MS = 60_000
# Every delay() commits a table page and an index page to the WAL; at 1 KiB they
# cost ~4 us less to checksum, copy and write than at SQLite's default 4 KiB:
# delay() ~30k/s -> ~35k/s on our 2-core VM, streaming ~+15 %. A job row (~140 B)
# fits either way; a database made with another page size keeps it.
PAGE_SIZE = 1024

# Partial indexes keep the claim query's index as small as the backlog:
# rows leave jobs_ready as soon as they are claimed. A job with an ETA waits in
# jobs_delayed only, and the claim moves it to jobs_ready (eta = 0) once due, so
# a million scheduled jobs cost the claim of ready ones nothing. Rate-limited and capped
# tasks go to their own lane (jobs_lane) so that a deep backlog of throttled
# jobs is never scanned by the claim of other tasks.
DDL = """
CREATE TABLE localq_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE jobs (
    seq         INTEGER PRIMARY KEY,
    id          TEXT,
    task        TEXT NOT NULL,
    queue       TEXT NOT NULL,
    lane        TEXT,
    priority    INTEGER NOT NULL DEFAULT 0,
    state       TEXT NOT NULL,
    serializer  TEXT NOT NULL,
    payload,
    options     TEXT,
    eta         REAL NOT NULL DEFAULT 0,
    expires     REAL,
    retries     INTEGER NOT NULL DEFAULT 0,
    owner       INTEGER,
    pid         INTEGER,
    created     REAL NOT NULL,
    started     REAL,
    done        REAL,
    result,
    exc_type    TEXT,
    traceback   TEXT,
    revoke      INTEGER NOT NULL DEFAULT 0,
    group_id    TEXT,
    group_index INTEGER
);
-- Generated ids encode seq (ids.py): only ids a user chose are stored and indexed.
CREATE UNIQUE INDEX jobs_custom_id ON jobs(id) WHERE id IS NOT NULL;
CREATE INDEX jobs_ready ON jobs(queue, priority DESC, seq)
    WHERE state IN ('PENDING', 'RETRY') AND lane IS NULL AND eta = 0;
CREATE INDEX jobs_lane ON jobs(lane, priority DESC, seq)
    WHERE state IN ('PENDING', 'RETRY') AND lane IS NOT NULL AND eta = 0;
CREATE INDEX jobs_delayed ON jobs(eta) WHERE state IN ('PENDING', 'RETRY') AND eta > 0;
CREATE INDEX jobs_running ON jobs(task) WHERE state = 'STARTED';
CREATE INDEX jobs_group ON jobs(group_id, group_index) WHERE group_id IS NOT NULL;
CREATE TABLE attempts (
    job_seq   INTEGER NOT NULL,
    attempt   INTEGER NOT NULL,
    started   REAL,
    ended     REAL NOT NULL,
    pid       INTEGER,
    outcome   TEXT NOT NULL,
    exc_type  TEXT,
    exc_message TEXT,
    PRIMARY KEY (job_seq, attempt)
) WITHOUT ROWID;
CREATE TABLE workers (
    id          INTEGER PRIMARY KEY,
    pid         INTEGER NOT NULL,
    pid_start   TEXT,
    hostname    TEXT NOT NULL,
    started     REAL NOT NULL,
    heartbeat   REAL NOT NULL,
    queues      TEXT NOT NULL,
    concurrency INTEGER NOT NULL
);
CREATE TABLE rate_limits (
    task      TEXT PRIMARY KEY,
    declared  TEXT,
    override  TEXT,
    override_set REAL,
    tokens    REAL NOT NULL DEFAULT 0,
    updated   REAL NOT NULL DEFAULT 0
);
CREATE TABLE maps (
    name      TEXT PRIMARY KEY,
    task      TEXT NOT NULL,
    digest    TEXT NOT NULL,
    total     INTEGER NOT NULL,
    created   REAL NOT NULL
);
"""

# From version N to N+1.
MIGRATIONS: dict[int, str] = {
    1: "ALTER TABLE rate_limits ADD COLUMN override_set REAL",   # when an override was set
}


def open_database(path: str, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """Open (creating if new) the localq database at ``path``, or raise DatabaseError.

    The file is only ever opened through SQLite. Opening it with a file descriptor
    of our own (to read its header, say) and closing it would release every POSIX
    lock this process holds on it, including those of another thread's connection
    in the middle of a transaction: two writers at once, and a corrupt file.
    """
    new = _check_folder(path)
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False, cached_statements=256)
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot open localq database {path}: {exc}") from None
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _check_or_create_schema(conn, path, new)
        conn.execute(f"PRAGMA synchronous={synchronous}")
    except BaseException:
        conn.close()
        raise
    return conn


def _check_folder(path: str) -> bool:
    """True when the file does not exist yet; an error when it cannot be created."""
    if os.path.exists(path):
        return False
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise DatabaseError(f"cannot create localq database {path}: "
                            f"folder {directory} does not exist")
    return True


def _check_or_create_schema(conn: sqlite3.Connection, path: str, new: bool) -> None:
    try:
        tables = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            raise DatabaseError(
                f"{path} is not a SQLite database, so it cannot be a localq database. "
                f"The file was left untouched: point localq at another path "
                f"(Localq(path) or $LOCALQ_DB).") from None
        raise DatabaseError(
            f"{path} cannot be read as a SQLite database ({exc}): it may be corrupt. "
            f"The file was left untouched; restore it from a backup or use another path.") from None
    if "localq_meta" in tables:
        _check_version(conn, path)
        return
    if tables:
        raise DatabaseError(
            f"{path} is a SQLite database of another program (tables: "
            f"{', '.join(sorted(tables)[:5])}), not a localq database. The file was left "
            f"untouched: point localq at another path.")
    if new:
        # Owner-only before anything is written; SQLite gives -wal and -shm the
        # database file's mode when it creates them, just below.
        try:
            os.chmod(path, 0o600)
        except OSError as exc:
            raise DatabaseError(f"cannot make {path} private to its owner: {exc}") from None
    # A new, empty file. WAL must be set outside a transaction.
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name='localq_meta'").fetchone():
            conn.execute("COMMIT")   # another process created it meanwhile
            _check_version(conn, path)
            return
        for statement in DDL.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT INTO localq_meta VALUES ('schema_version', ?), ('app', 'localq')",
                     (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _check_version(conn: sqlite3.Connection, path: str) -> None:
    row = conn.execute("SELECT value FROM localq_meta WHERE key='schema_version'").fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise DatabaseError(
            f"{path} was written by a newer localq (schema version {version}; this localq "
            f"reads up to {SCHEMA_VERSION}). Upgrade localq; the file was left untouched.")
    if version < SCHEMA_VERSION:
        _migrate(conn, version)


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = int(conn.execute(
            "SELECT value FROM localq_meta WHERE key='schema_version'").fetchone()[0])
        while current < SCHEMA_VERSION:
            for statement in MIGRATIONS[current].split(";"):
                if statement.strip():
                    conn.execute(statement)
            current += 1
        conn.execute("UPDATE localq_meta SET value=? WHERE key='schema_version'", (str(current),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
