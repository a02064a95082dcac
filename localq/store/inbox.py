"""PROTOTYPE: a per-producer inbox file (issue 18). Measure-only, not the final design.

A producer writes its delay() rows into its own SQLite file in ``<db>.d/`` (its own WAL,
its own write lock); the supervisor ATTACHes it and, inside its claim transaction, copies
the rows past its read position into ``jobs`` and records the new position in the main
file in the same transaction.
"""
from __future__ import annotations

import os
import sqlite3
import threading

from .records import JobRow, _columns

COLUMNS = _columns(JobRow._fields)
INBOX_DDL = (f"CREATE TABLE IF NOT EXISTS inbox (n INTEGER PRIMARY KEY, "
             f"{COLUMNS})")
INSERT_INBOX = (f"INSERT INTO inbox ({COLUMNS}) VALUES "
                f"({', '.join('?' * len(JobRow._fields))})")
TRIM_EVERY = 512


class Inbox:
    """The producer's side: one file, one connection, one writer."""

    def __init__(self, folder: str, db_path: str) -> None:
        self.pid = os.getpid()
        self.name = f"inbox.{self.pid}.{id(self) & 0xFFFF}.db"
        self.path = os.path.join(folder, self.name)
        self.db_path = db_path
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.close(fd)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=60)
        conn.execute("PRAGMA page_size=1024")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(INBOX_DDL)
        self.conn = conn
        self.lock = threading.Lock()
        self.until_trim = TRIM_EVERY
        self.message = b"I" + self.name.encode()

    def put(self, row: tuple, read_pos) -> None:
        with self.lock:
            self.conn.execute(INSERT_INBOX, row)
            self.until_trim -= 1
            if self.until_trim <= 0:
                self.until_trim = TRIM_EVERY
                pos = read_pos(self.name)
                if pos:
                    # keep the last row, so that n never goes back (max(n) + 1)
                    self.conn.execute("DELETE FROM inbox WHERE n <= ? AND n < "
                                      "(SELECT max(n) FROM inbox)", (pos,))

    def close(self) -> None:
        self.conn.close()


def attach(conn: sqlite3.Connection, folder: str, name: str, alias: str) -> None:
    # Read-only: BEGIN IMMEDIATE takes the write lock of every writable attached file.
    path = os.path.join(folder, name).replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    conn.execute("ATTACH DATABASE ? AS " + alias, (f"file:{path}?mode=ro",))


def drain(conn: sqlite3.Connection, name: str, alias: str) -> int:
    """Inside the supervisor's write transaction: copy new rows, record the position."""
    row = conn.execute("SELECT pos FROM inboxes WHERE name = ?", (name,)).fetchone()
    pos = row[0] if row else 0
    top = conn.execute(f"SELECT max(n) FROM {alias}.inbox").fetchone()[0]
    if top is None or top <= pos:
        return 0
    n = conn.execute(f"INSERT INTO main.jobs (state, {COLUMNS}) SELECT 'PENDING', {COLUMNS} "
                     f"FROM {alias}.inbox WHERE n > ? AND n <= ? ON CONFLICT DO NOTHING",
                     (pos, top)).rowcount
    conn.execute("INSERT OR REPLACE INTO inboxes (name, pos) VALUES (?, ?)", (name, top))
    return n
