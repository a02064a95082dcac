"""Producers' inboxes: ``delay()`` off the shared write lock.

While a worker runs, every ``delay()`` of a process goes into an inbox of its own:
a small SQLite file in WAL mode in the database's private folder
(``<db>.d/inbox-<pid>-<token>.db``, 0600), one commit per job as before
(durable when ``delay()`` returns), but under a write lock that no other process
takes. Supervisors only read inboxes, attached ``mode=ro``: a writable attachment
would make their ``BEGIN IMMEDIATE`` take the inbox's write lock as well. A
supervisor copies an inbox's new rows into ``jobs`` inside its claim transaction
(``absorb``) and records how far it has read (``inboxes.pos``) in that same
transaction of the main file: a kill -9 anywhere copies each row exactly once.
The producer deletes rows at or below that position now and then (``TRIM_EVERY``),
always keeping the last one, so that ``n`` (the inbox's rowid, max + 1) never
goes back.

Trade-off: a job is written twice (inbox, then jobs), but the second write is
batched in a transaction the supervisor runs anyway, and the producer no longer
meets the supervisor's lock (BUSY retries) nor the main file's index pages.

Row numbers: an inbox's jobs take their ``seq`` from the inbox's slot
(``ids.SlotSeqs``; slots are unique among registered inboxes, ``inboxes`` table),
so no two producers can draw the same number although the row reaches ``jobs``
later; a seq that is already there when the row is copied is a REVOKED tombstone
(``revoke`` of a job still in an inbox), which wins. Jobs with an id the caller
chose never go through an inbox: their insert checks the id at once.

Readers: a job still in an inbox is found by ``find`` (the slot is in its seq),
counted by ``pending_counts``; ``revoke`` and ``purge`` copy every inbox first
(``absorb`` in their own transaction). A registered inbox whose producer is gone
is copied by the next supervisor and then removed (``free``), as is a producer's
own, drained inbox when its app closes or the process exits. Gone means that the
flock its producer took on ``<inbox>.lock`` before registering can be taken
(``owner_gone``): the kernel drops it when the process ends, in whatever pid
namespace it ran, so a producer in a container is never taken for dead. Files
that no registered inbox names (a producer killed between making them and
registering, or between freeing its slot and removing them) are removed by a
worker once ORPHAN_AGE old (``orphans``).
"""
from __future__ import annotations

import fcntl
import os
import secrets
import sqlite3
import threading
import weakref
from typing import Any, Iterable

from ..ids import SLOTS, SlotSeqs, current_pid, inbox_slot
from .records import JOB_COLUMNS, JobRow, _columns, job_dict
from .schema import BUSY_TIMEOUT_MS, database_error

_FIELDS = _columns(JobRow._fields)
_JOB_NAMES = JOB_COLUMNS.replace(" ", "").split(",")
# A row of an inbox as jobs.job reads one of jobs (JOB_COLUMNS, in order).
_AS_JOB = ", ".join(
    c if c in _FIELDS.split(", ") else "'PENDING'" if c == "state"
    else "0" if c in ("retries", "revoke") else "NULL"
    for c in _JOB_NAMES)
INBOX_DDL = f"CREATE TABLE IF NOT EXISTS inbox (n INTEGER PRIMARY KEY, {_FIELDS})"
_INSERT = f"INSERT INTO inbox ({_FIELDS}) VALUES ({', '.join('?' * len(JobRow._fields))})"
TRIM_EVERY = 256        # delay()s between two trims (a read of pos, a DELETE)
COPY_MAX = 2048         # rows copied from one inbox per transaction (~10 ms of the lock)
MAX_ATTACHED = 8        # SQLite attaches at most 10 files by default
PREFIX = "inbox-"
LOCK_SUFFIX = ".lock"
ORPHAN_AGE = 60.0       # seconds before unregistered inbox files may be taken for orphans
_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of a process: tells a live pid from a reused one."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2:].split()[19].decode()
    except (OSError, IndexError, ValueError):
        return None


def owner_gone(folder: str, name: str) -> bool:
    """Has the process that registered this inbox exited? Its producer holds an exclusive
    flock on the inbox's lock file from before it registers until it exits (the kernel
    drops it then, in whatever pid namespace the producer ran, where a pid would mean
    nothing here): gone when the lock can be taken, or when there is no lock file."""
    try:
        fd = os.open(os.path.join(folder, name + LOCK_SUFFIX),
                     os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return True
    except OSError:
        return False                  # cannot tell: keep it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:                   # held: its producer lives
        return False
    finally:
        os.close(fd)                  # (which drops the lock, if taken)
    return True


def ours(name: str) -> bool:
    """Is this a name of localq's inbox scheme (a plain file name in the folder)?"""
    return name.startswith(PREFIX) and name.endswith(".db") and "/" not in name


def remove(folder: str, name: str) -> None:
    """Unlink an inbox file and SQLite's files beside it (names of our scheme only)."""
    if not ours(name):
        return
    for suffix in ("", "-wal", "-shm", LOCK_SUFFIX):     # the lock last: see owner_gone
        try:
            os.unlink(os.path.join(folder, name + suffix))
        except OSError:
            pass


def orphans(folder: str, registered: Iterable[str], now: float) -> list[str]:
    """Inbox files that no registered inbox names, of a producer that is gone, made
    ORPHAN_AGE ago at least: a producer killed between making its files and
    registering them (or between freeing its slot and removing them) left them. They
    hold no job (rows are written only once registered, and a slot is freed only once
    copied). A producer holds its lock from just after making it until it exits; the
    age covers the moment in between (and the producer checks, once locked, that its
    lock file is still there)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    known = set(registered)
    found = []
    for entry in names:
        name = entry[:-len(LOCK_SUFFIX)] if entry.endswith(LOCK_SUFFIX) else entry
        if not ours(name) or name in known:
            continue
        known.add(name)                           # once per name (its file or its lock)
        try:
            made = os.lstat(os.path.join(folder, entry)).st_mtime
        except OSError:
            continue
        if now - made >= ORPHAN_AGE and owner_gone(folder, name):
            found.append(name)
    return found


# ------------------------------------------------------------------ the producer's side

_LIVE: weakref.WeakSet[Inbox] = weakref.WeakSet()
# A supervisor's own sends (a task or a timer of its process calling delay()) go straight
# into the file: an inbox there would wait for a ring that process never reads.
_no_inbox_in: set[int] = set()


def no_inbox_here(off: bool = True) -> None:
    """No inbox for this process (a supervisor), or again one (``off=False``)."""
    (_no_inbox_in.add if off else _no_inbox_in.discard)(os.getpid())


def allowed() -> bool:
    return current_pid() not in _no_inbox_in


class Inbox:
    """This process's inbox: registered in the main file, then created 0600."""

    def __init__(self, main: Any, folder: str, synchronous: str) -> None:
        """``main``: the Database of the main file (connection.py)."""
        self.pid = os.getpid()
        self.folder = folder
        self.lock = threading.Lock()
        self.conn: sqlite3.Connection | None = None
        self.synchronous = synchronous
        self.until_trim = TRIM_EVERY
        self.top = 0                      # the last n written
        token = secrets.token_hex(4)
        self.name = f"{PREFIX}{self.pid}-{token}.db"
        self.path = os.path.join(folder, self.name)
        self.lock_fd: int | None = None
        registered = False
        try:
            # The lock file first, locked for as long as this process lives (owner_gone);
            # then the inbox file; then the registration that makes supervisors look.
            self.lock_fd = os.open(self.path + LOCK_SUFFIX, _CREATE, 0o600)
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
            if os.stat(self.path + LOCK_SUFFIX, follow_symlinks=False).st_ino != \
                    os.fstat(self.lock_fd).st_ino:   # swept (orphans) before it was locked
                raise OSError(f"the lock file of inbox {self.name} was removed")
            os.close(os.open(self.path, _CREATE, 0o600))
            with main.transaction() as conn:
                row = conn.execute("SELECT slot, floor FROM inboxes WHERE name IS NULL "
                                   "ORDER BY slot LIMIT 1").fetchone()
                if row is None:
                    slot = conn.execute("SELECT coalesce(max(slot) + 1, 0) FROM inboxes"
                                        ).fetchone()[0]
                    if slot >= SLOTS:
                        raise OverflowError("every inbox slot is taken")
                    row = (slot, 0)
                self.slot, floor = row
                conn.execute("INSERT OR REPLACE INTO inboxes (slot, name, pid, pid_start, "
                             "pos, floor) VALUES (?, ?, ?, ?, 0, ?)",
                             (self.slot, self.name, self.pid, process_start_time(self.pid),
                              floor))
            registered = True
            self.seqs = SlotSeqs(self.slot, floor)
            self.message = b"I" + self.name.encode()
            self._open()
        except BaseException:
            self.conn = None
            try:                      # give the slot back (else: once this process exits)
                if registered:
                    with main.transaction() as conn:
                        conn.execute("UPDATE inboxes SET name = NULL, pid = NULL, "
                                     "pid_start = NULL WHERE slot = ? AND name = ?",
                                     (self.slot, self.name))
                remove(folder, self.name)
            except Exception:  # noqa: BLE001 - the first error is the one to raise
                pass
            self._unlock()
            raise
        _LIVE.add(self)

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=BUSY_TIMEOUT_MS / 1000, cached_statements=16)
        except sqlite3.Error as exc:
            raise database_error(self.path, exc) from None
        try:
            conn.execute("PRAGMA page_size=1024")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute(INBOX_DDL)
            self.top = conn.execute("SELECT coalesce(max(n), 0) FROM inbox").fetchone()[0]
        except sqlite3.Error as exc:
            conn.close()
            raise database_error(self.path, exc) from None
        except BaseException:
            conn.close()
            raise
        self.conn = conn
        return conn

    def put(self, job: JobRow, read_pos: Any) -> int:
        """Write one job (its seq drawn here); returns the seq. ``read_pos()``: the
        inbox's position in the main file, read now and then to trim."""
        with self.lock:
            conn = self.conn or self._open()
            seq = self.seqs.take()
            try:
                conn.execute(_INSERT, (seq, *job[1:]))
                self.top += 1
                self.until_trim -= 1
                if self.until_trim <= 0:
                    self.until_trim = TRIM_EVERY
                    self._trim(read_pos(self.slot))
            except sqlite3.Error as exc:
                raise database_error(self.path, exc) from None
        return seq

    def _trim(self, pos: int | None) -> None:
        if pos:   # the last row stays, so that the next n is max(n) + 1 still
            assert self.conn is not None
            self.conn.execute("DELETE FROM inbox WHERE n <= ? AND n < ?", (pos, self.top))

    def close(self, main: Any) -> None:
        """Close; when every row has been copied, free the slot and remove the file."""
        with self.lock:
            if self.conn is not None:
                self.conn.close()
                self.conn = None
            if self.pid != os.getpid():
                return
            with main.transaction() as conn:
                freed = conn.execute(
                    "UPDATE inboxes SET name = NULL, pid = NULL, pid_start = NULL, "
                    "floor = max(floor, ?) WHERE slot = ? AND name = ? AND pos >= ?",
                    (self.seqs.last, self.slot, self.name, self.top)).rowcount
            if freed:
                remove(self.folder, self.name)
            self._unlock()        # not freed: the next supervisor finds it gone, copies it
            _LIVE.discard(self)

    def _unlock(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def _before_fork() -> None:
    for box in list(_LIVE):
        box.lock.acquire()
        if box.conn is not None:
            box.conn.close()
            box.conn = None


def _after_fork_parent() -> None:
    for box in list(_LIVE):
        box.lock.release()


def _after_fork_child() -> None:
    for box in list(_LIVE):
        box.lock = threading.Lock()     # its pid is not ours: never written here
        # The parent's lock is on the open file, which this copy of the descriptor
        # shares: closed here, so that the parent's inbox is seen gone when it exits.
        if box.lock_fd is not None:
            os.close(box.lock_fd)
            box.lock_fd = None


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_parent,
                    after_in_child=_after_fork_child)


# ------------------------------------------------------------------ readers' side

class Attachments:
    """The inboxes attached (read-only) to one connection, by name -> alias. ATTACH
    and DETACH run outside a transaction; a new connection starts with none."""

    def __init__(self) -> None:
        self.conn: sqlite3.Connection | None = None
        self.names: dict[str, str] = {}

    def ensure(self, conn: sqlite3.Connection, folder: str, names: Iterable[str]
               ) -> dict[str, str]:
        """Attach these inboxes (up to MAX_ATTACHED, the first ones first), detaching
        others when there is no room; returns what is attached, name -> alias."""
        if conn is not self.conn:
            self.conn, self.names = conn, {}
        wanted = [n for n in dict.fromkeys(names) if ours(n)][:MAX_ATTACHED]
        if conn.in_transaction:         # a snapshot (Database.snapshot): those attached
            return {n: a for n, a in self.names.items() if n in wanted}
        missing = [n for n in wanted if n not in self.names]
        short = len(missing) - (MAX_ATTACHED - len(self.names))
        if short > 0:                   # make room: detach some that are not wanted now
            for name in [n for n in self.names if n not in wanted][:short]:
                self._detach(conn, name)
        for name in missing:
            used = set(self.names.values())
            alias = next(f"inbox{i}" for i in range(MAX_ATTACHED) if f"inbox{i}" not in used)
            path = os.path.join(folder, name)
            uri = "file:" + path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
            try:
                conn.execute(f"ATTACH DATABASE ? AS {alias}", (uri + "?mode=ro",))
                conn.execute(f"SELECT 1 FROM {alias}.inbox LIMIT 0")
            except sqlite3.Error:       # not there (yet, or any more), or not an inbox
                try:
                    conn.execute(f"DETACH DATABASE {alias}")
                except sqlite3.Error:
                    pass
                continue
            self.names[name] = alias
        return self.names

    def drop(self, conn: sqlite3.Connection, name: str) -> None:
        if conn is self.conn and name in self.names:
            self._detach(conn, name)

    def _detach(self, conn: sqlite3.Connection, name: str) -> None:
        alias = self.names.pop(name)
        try:
            conn.execute(f"DETACH DATABASE {alias}")
        except sqlite3.Error:
            pass


def registered(conn: sqlite3.Connection) -> list[tuple[int, str, int | None, str | None, int]]:
    """(slot, name, pid, pid_start, pos) of every registered inbox."""
    return conn.execute("SELECT slot, name, pid, pid_start, pos FROM inboxes "
                        "WHERE name IS NOT NULL ORDER BY slot").fetchall()


def position(conn: sqlite3.Connection, slot: int) -> int | None:
    row = conn.execute("SELECT pos FROM inboxes WHERE slot = ?", (slot,)).fetchone()
    return None if row is None else row[0]


def absorb(conn: sqlite3.Connection, name: str, alias: str, limit: int = COPY_MAX
           ) -> tuple[int, bool]:
    """Inside a write transaction: copy the inbox's rows past its position into jobs
    (at most ``limit``) and move the position. Returns (rows copied, more left)."""
    row = conn.execute("SELECT slot, pos FROM inboxes WHERE name = ?", (name,)).fetchone()
    if row is None:
        return 0, False
    slot, pos = row
    top = conn.execute(f"SELECT max(n) FROM {alias}.inbox").fetchone()[0]
    if top is None or top <= pos:
        return 0, False
    end = min(top, pos + limit)
    copied = conn.execute(
        f"INSERT INTO main.jobs (state, {_FIELDS}) SELECT 'PENDING', {_FIELDS} "
        f"FROM {alias}.inbox WHERE n > ? AND n <= ? ON CONFLICT DO NOTHING",
        (pos, end)).rowcount
    conn.execute("UPDATE inboxes SET pos = ? WHERE slot = ?", (end, slot))
    return copied, end < top


def free(conn: sqlite3.Connection, name: str, alias: str) -> bool:
    """Inside a write transaction: free a gone producer's slot if its inbox has been
    copied whole (the file is removed by the caller after the commit)."""
    top, last = conn.execute(f"SELECT max(n), max(seq) FROM {alias}.inbox").fetchone()
    return conn.execute(
        "UPDATE inboxes SET name = NULL, pid = NULL, pid_start = NULL, "
        "floor = max(floor, ?) WHERE name = ? AND pos >= ?",
        (last or 0, name, top or 0)).rowcount == 1


def find(conn: sqlite3.Connection, attachments: Attachments, folder: str, seq: int
         ) -> dict | None:
    """A job still waiting in an inbox, as jobs.job would show it; None if not there."""
    slot = inbox_slot(seq)
    if slot is None:
        return None
    row = conn.execute("SELECT name, pos FROM inboxes WHERE slot = ?", (slot,)).fetchone()
    if row is None or row[0] is None:
        return None
    name, pos = row
    alias = attachments.ensure(conn, folder, [name, *attachments.names]).get(name)
    if alias is None:
        return None
    cur = conn.execute(f"SELECT {_AS_JOB} FROM {alias}.inbox WHERE seq = ? AND n > ?",
                       (seq, pos))
    found = cur.fetchone()
    return None if found is None else job_dict(_JOB_NAMES, found)


def waiting(conn: sqlite3.Connection, attachments: Attachments, folder: str,
            rows: list[tuple[int, str, int | None, str | None, int]]) -> bool:
    """Has any of these registered inboxes (``registered``'s rows) rows past its
    position? An inbox that cannot be attached counts as having some."""
    attached = attachments.ensure(conn, folder, [r[1] for r in rows])
    for _slot, name, _pid, _start, pos in rows:
        alias = attached.get(name)
        if alias is None or (conn.execute(f"SELECT max(n) FROM {alias}.inbox"
                                          ).fetchone()[0] or 0) > pos:
            return True
    return False


def attach_registered(conn: sqlite3.Connection, attachments: Attachments, folder: str
                      ) -> tuple[list[tuple[int, str, int | None, str | None, int]],
                                 dict[str, str]]:
    """The registered inboxes (``registered``'s rows) and those of them attached to
    ``conn`` (name -> alias), attached now if need be and if there is room."""
    rows = registered(conn)
    return rows, attachments.ensure(conn, folder, [r[1] for r in rows])


def pending_counts(conn: sqlite3.Connection, attachments: Attachments, folder: str
                   ) -> list[tuple[str, str, str, int]]:
    """(queue, task, 'PENDING', count) of the jobs still in inboxes."""
    rows, attached = attach_registered(conn, attachments, folder)
    out = []
    for _slot, name, _pid, _start, pos in rows:
        alias = attached.get(name)
        if alias is not None:
            out.extend(conn.execute(
                f"SELECT queue, task, 'PENDING', count(*) FROM {alias}.inbox "
                "WHERE n > ? GROUP BY queue, task", (pos,)).fetchall())
    return out
