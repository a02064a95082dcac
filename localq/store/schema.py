"""The database file: opening, checking, creating and migrating it.

One SQLite file holds everything. This module decides whether a file may be
used at all (a localq database of this or an older schema version, or a new
or empty file) and never writes a byte to a file it refuses. It creates new
files readable by their owner only, in WAL mode.
"""
from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time

from ..exceptions import DatabaseError

SCHEMA_VERSION = 9
BUSY_TIMEOUT_MS = 60_000
# Every delay() commits a table page and an index page to the WAL; at 1 KiB they
# cost ~4 us less to checksum, copy and write than at SQLite's default 4 KiB:
# delay() ~30k/s -> ~35k/s on our 2-core VM, streaming ~+15 %. A job row (~140 B)
# fits either way; a database made with another page size keeps it.
PAGE_SIZE = 1024


def has_wal_reset_bug(version: tuple[int, int, int]) -> bool:
    """Whether this SQLite has the WAL-reset bug (https://sqlite.org/wal.html#walresetbug):
    a checkpoint that starts while another connection's first write resets the WAL can
    later make a checkpoint skip committed frames (a corrupt file). 3.7.0 to 3.51.2 have
    it; 3.51.3 fixed it, with backports to 3.44.6 and 3.50.7."""
    if version >= (3, 51, 3):
        return False
    if version[:2] == (3, 50):
        return version < (3, 50, 7)
    if version[:2] == (3, 44):
        return version < (3, 44, 6)
    return version >= (3, 7, 0)


# With the bug, localq never lets a WAL reset coincide with a checkpoint: a reset is done
# only by a writer holding the write lock, at the start of its write transaction, so every
# checkpoint localq runs is taken while this process holds the write lock on another
# connection (checkpoint_guarded), and SQLite's automatic checkpoints, which run in
# whichever connection commits with no such lock, are off on every connection. The
# Database checkpoints instead when the -wal file's size says so.
WAL_RESET_BUG = has_wal_reset_bug(sqlite3.sqlite_version_info)
# journal_size_limit with the bug: the first commit after a reset cuts the -wal file back
# to this size, so the file is larger than this only while its content is, and whether
# the WAL has grown past a size above this one (the checkpoint thread's, a producer's) is
# read with an os.stat. Under it the file is kept allocated and written over in place: a
# -wal cut to nothing was grown again frame by frame, with the filesystem's block
# allocation on every commit and more for each fsync to record.
WAL_FILE_KEPT = 4 << 20


def checkpoint_guarded(conn: sqlite3.Connection, holder: sqlite3.Connection) -> None:
    """A PASSIVE checkpoint on ``conn`` while ``holder`` (another connection of this
    process, which has just run BEGIN IMMEDIATE) holds the write lock, so that no WAL
    reset can start meanwhile; the holder then rolls back, having written nothing."""
    try:
        conn.execute("PRAGMA main.wal_checkpoint(PASSIVE)").fetchall()   # not inboxes
    finally:
        holder.execute("ROLLBACK")

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
    group_index INTEGER,
    parent_id   TEXT,
    root_id     TEXT
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
    concurrency INTEGER NOT NULL,
    processed   INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    children    TEXT
);
CREATE TABLE rate_limits (
    task      TEXT PRIMARY KEY,
    declared  TEXT,
    override  TEXT,
    override_set REAL,
    tokens    REAL NOT NULL DEFAULT 0,
    updated   REAL NOT NULL DEFAULT 0
);
CREATE TABLE task_states (
    seq       INTEGER PRIMARY KEY,      -- the job's
    attempt   INTEGER NOT NULL,         -- its retries when set: a later attempt ignores it
    state     TEXT NOT NULL,            -- a custom state, e.g. PROGRESS (update_state)
    meta      BLOB,                     -- encoded with the job's result serializer
    updated   REAL NOT NULL
);
CREATE TABLE maps (
    name      TEXT PRIMARY KEY,
    task      TEXT NOT NULL,
    digest    TEXT NOT NULL,
    total     INTEGER NOT NULL,
    created   REAL NOT NULL
);
-- Periodic tasks (beat.py): per entry, the due time last sent (or when the entry was
-- first seen), and when that run was sent. Sending moves last_due by compare-and-set.
CREATE TABLE beat_entries (
    name      TEXT PRIMARY KEY,
    last_due  REAL NOT NULL,
    last_run  REAL
);
-- Monitoring, written by each supervisor with its heartbeat (store/monitor.py): outcomes
-- per second for the last hour, and per task since the file was made.
CREATE TABLE throughput (
    second    INTEGER PRIMARY KEY,
    succeeded INTEGER NOT NULL DEFAULT 0,
    failed    INTEGER NOT NULL DEFAULT 0,
    retried   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE task_totals (
    task      TEXT NOT NULL,
    kind      TEXT NOT NULL,
    n         REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (task, kind)
) WITHOUT ROWID;
"""
CANVAS_DDL = """
CREATE INDEX jobs_parent ON jobs(parent_id) WHERE parent_id IS NOT NULL;
-- The canvas (store/canvas.py): what a job's outcome sets off, fired and deleted in
-- the transaction that writes the outcome, and groups and chords with their counters.
CREATE TABLE canvas (seq INTEGER PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE canvas_groups (
    id        TEXT PRIMARY KEY,
    total     INTEGER NOT NULL,
    remaining INTEGER,
    body      INTEGER,
    splice    INTEGER NOT NULL DEFAULT 0,
    created   REAL NOT NULL
);
"""
DDL += CANVAS_DDL

# A chord's body waits while its header's results are joined into one list: with every
# result this short, the join reads this index alone (no lookup of the header's table
# rows, about 3x faster for a chord of 10,000). Each short result of a group member is
# written twice: the cost that buys it; long results are left out and read the slow way.
SHORT_RESULT = 256
GROUP_RESULTS_DDL = (
    "CREATE INDEX IF NOT EXISTS jobs_group_results ON jobs(group_id, group_index, result) "
    f"WHERE group_id IS NOT NULL AND length(result) <= {SHORT_RESULT};")
DDL += GROUP_RESULTS_DDL + "\n"

# Producers' inboxes (store/inbox.py): one row per slot ever used. ``name`` is the
# inbox file in <db>.d/ (NULL: the slot is free), ``pos`` how far its rows have been
# copied into jobs, ``floor`` the highest row number the slot has given out.
INBOXES_DDL = """CREATE TABLE IF NOT EXISTS inboxes (
    slot      INTEGER PRIMARY KEY,
    name      TEXT UNIQUE,
    pid       INTEGER,
    pid_start TEXT,
    pos       INTEGER NOT NULL DEFAULT 0,
    floor     INTEGER NOT NULL DEFAULT 0
)"""
DDL += INBOXES_DDL + ";\n"

# A chord's header results, joined a part (store/canvas.py's PART members) at a time as
# the header runs, so that the body's release joins the last part, not the whole header.
CHORD_PARTS_DDL = """
CREATE TABLE IF NOT EXISTS canvas_parts (
    group_id  TEXT NOT NULL,
    part      INTEGER NOT NULL,
    remaining INTEGER NOT NULL,
    results   TEXT,
    PRIMARY KEY (group_id, part)
) WITHOUT ROWID"""
DDL += CHORD_PARTS_DDL + ";\n"

# From version N to N+1.
MIGRATIONS: dict[int, str] = {
    1: "ALTER TABLE rate_limits ADD COLUMN override_set REAL",   # when an override was set
    2: ("ALTER TABLE jobs ADD COLUMN parent_id TEXT; ALTER TABLE jobs ADD COLUMN root_id TEXT;"
        + CANVAS_DDL),      # the canvas
    3: """CREATE TABLE IF NOT EXISTS beat_entries (
    name      TEXT PRIMARY KEY,
    last_due  REAL NOT NULL,
    last_run  REAL
)""",   # periodic tasks
    4: "CREATE TABLE IF NOT EXISTS task_states (seq INTEGER PRIMARY KEY, "   # update_state
       "attempt INTEGER NOT NULL, state TEXT NOT NULL, meta BLOB, updated REAL NOT NULL)",
    5: """ALTER TABLE workers ADD COLUMN processed INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE workers ADD COLUMN failed INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE workers ADD COLUMN children TEXT;
        CREATE TABLE throughput (second INTEGER PRIMARY KEY,
            succeeded INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
            retried INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE task_totals (task TEXT NOT NULL, kind TEXT NOT NULL,
            n REAL NOT NULL DEFAULT 0, PRIMARY KEY (task, kind)) WITHOUT ROWID""",  # monitoring
    6: GROUP_RESULTS_DDL,       # a chord's header results, read by its body's release
    # ... joined a part at a time while the header runs; a bulk-sent chord member (no
    # root_id) is counted by its group id, no longer by a canvas row of its own
    7: CHORD_PARTS_DDL + ";DELETE FROM canvas WHERE seq > 0 AND EXISTS (SELECT 1 FROM jobs "
       "WHERE jobs.seq = canvas.seq AND jobs.root_id IS NULL)",
    8: INBOXES_DDL,             # producers' inboxes
}


# RETURNING (the claim, the canvas) is the newest SQL feature localq uses.
MIN_SQLITE = (3, 35, 0)


def check_sqlite_version(version: tuple[int, int, int] = sqlite3.sqlite_version_info) -> None:
    """Refuse, with one clear message, an SQLite too old for localq's SQL, before any
    statement of it fails with a bare syntax error."""
    if version < MIN_SQLITE:
        have = ".".join(map(str, version))
        need = ".".join(map(str, MIN_SQLITE))
        raise DatabaseError(
            f"localq needs SQLite {need} or newer, and this Python ({sqlite3.__file__}) is "
            f"linked with SQLite {have}: use a Python built against a newer SQLite "
            f"(python.org's installers, pyenv or a current distribution all are)")


def open_database(path: str, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """Open (creating if new) the localq database at ``path``, or raise DatabaseError.

    The file is only ever opened through SQLite, but for its creation (below).
    Opening it with a file descriptor of our own (to read its header, say) and
    closing it would release every POSIX lock this process holds on it, including
    those of another thread's connection in the middle of a transaction: two
    writers at once, and a corrupt file. SQLite's own close keeps those locks.
    """
    check_sqlite_version()
    _inspect(path)
    # SQLite may answer a connection's first reads "locked" at once, without its busy
    # handler (while another process is stopped in the middle of a commit or checkpoint,
    # say): opening is tried again, from the start, as long as a call waits for the lock.
    give_up = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.001
    while True:
        try:
            return _open_once(path, synchronous)
        except _Busy as busy:
            if time.monotonic() + pause > give_up:
                raise database_error(path, busy.error) from None
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


class _Busy(Exception):
    def __init__(self, error: sqlite3.Error) -> None:
        self.error = error


def _open_once(path: str, synchronous: str) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False, cached_statements=256)
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot open localq database {path}: "
                            f"{unwritable(path) or exc}") from None
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if WAL_RESET_BUG:          # before anything it does could checkpoint
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute(f"PRAGMA journal_size_limit={WAL_FILE_KEPT}")
        _check_or_create_schema(conn, path)
        conn.execute(f"PRAGMA synchronous={synchronous}")
    except sqlite3.Error as exc:
        conn.close()
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF == 5:     # SQLITE_BUSY
            raise _Busy(exc) from None
        raise database_error(path, exc) from None
    except BaseException:
        conn.close()
        raise
    return conn


# Held while this process creates a file with a descriptor of its own, so that no
# other thread opens it with SQLite before that descriptor is closed (see above).
_create_lock = threading.Lock()
os.register_at_fork(after_in_child=lambda: globals().update(_create_lock=threading.Lock()))


def _inspect(path: str) -> None:
    """Decide whether ``path`` may be used, before SQLite may write a byte to it.

    A new file is created here, owner-only from its first instant; an empty file
    is made owner-only if it is ours; a localq database is used as it is.
    Anything else raises, the
    file and its -wal and -journal untouched: a plain SQLite open would roll
    back another program's hot journal, or checkpoint and delete its WAL.
    """
    with _create_lock:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            pass
        except FileNotFoundError:
            directory = os.path.dirname(os.path.abspath(path))
            raise DatabaseError(f"cannot create localq database {path}: "
                                f"folder {directory} does not exist") from None
        except OSError as exc:
            raise DatabaseError(f"cannot create localq database {path}: "
                                f"{unwritable(path) or exc.strerror}") from None
        else:
            os.close(fd)
            return
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DatabaseError(f"cannot open localq database {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise DatabaseError(f"{path} is not a regular file, so it cannot be a localq "
                            f"database. Point localq at another path (Localq(path) or "
                            f"$LOCALQ_DB).")
    if st.st_nlink > 1:
        # SQLite keeps the WAL and the lock file (-shm) beside the name it opens: two
        # processes using two names of one file would each have their own, two writers
        # at once, and a corrupt file. (A symlink is fine: SQLite resolves it.)
        raise DatabaseError(f"{path} has {st.st_nlink} names (hard links): SQLite keeps a "
                            f"database's WAL and locks beside the name it is opened by, so "
                            f"two names would corrupt it. The file was left untouched: "
                            f"keep one name only (remove the other links), or point "
                            f"localq at a copy.")
    # The main file alone, as SQLite sees it with no locks, journal or WAL: cannot
    # write anything, not even a -shm.
    names = _objects(path, "immutable=1") if st.st_size else []
    if names is None or (not names and _has_log(path)):
        # Inconclusive: the schema may live in the WAL only (a new localq database
        # not yet checkpointed), or the file was mid-checkpoint. A read-only
        # connection reads through the WAL; it may rebuild the -shm index, but
        # never rolls back a journal nor writes the file or its WAL.
        names = _objects(path, "mode=ro", final=True)
    assert names is not None
    if "localq_meta" in names:
        return
    if names:
        raise DatabaseError(
            f"{path} is a SQLite database of another program (it holds "
            f"{', '.join(sorted(names)[:5])}), not a localq database. The file was left "
            f"untouched: point localq at another path.")
    # An empty file or an empty SQLite database: ours to fill, so ours to keep private.
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
        try:
            os.chmod(path, 0o600)
        except OSError as exc:
            raise DatabaseError(f"cannot make {path} private to its owner: {exc}") from None


def _has_log(path: str) -> bool:
    """True when a -wal or -journal beside the file holds something."""
    for suffix in ("-wal", "-journal"):
        try:
            if os.stat(path + suffix).st_size:
                return True
        except OSError:
            pass
    return False


def _objects(path: str, how: str, final: bool = False) -> list[str] | None:
    """The names in the file's schema, read through a read-only connection.

    None when it cannot be read and ``final`` is false (ask again another way);
    otherwise an unreadable file raises its one clear message."""
    uri = "file://" + path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    try:
        conn = sqlite3.connect(f"{uri}?{how}", uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                               isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot open localq database {path}: "
                            f"{unwritable(path) or exc}") from None
    try:
        return [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
    except sqlite3.Error as exc:
        if "not a database" in str(exc):
            raise DatabaseError(
                f"{path} is not a SQLite database, so it cannot be a localq database. "
                f"The file was left untouched: point localq at another path "
                f"(Localq(path) or $LOCALQ_DB).") from None
        if not final:
            return None
        if "readonly" in str(exc) and os.path.exists(path + "-journal"):
            raise DatabaseError(
                f"{path} has a hot journal ({path}-journal): the program that wrote it "
                f"stopped in the middle of a transaction, and it is not a localq database "
                f"as far as can be read. Both files were left untouched: open it with the "
                f"program that made it (or the sqlite3 shell) to recover it, or point "
                f"localq at another path.") from None
        raise database_error(path, exc) from None
    finally:
        conn.close()


def unwritable(path: str) -> str | None:
    """Why this user cannot write the database or the files SQLite keeps beside it,
    with what to do; None when nothing is in the way."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.exists(path) and not os.access(path, os.R_OK):
        return (f"permission denied: this user cannot read {path}. Run as the user who "
                f"owns it, or point localq at a database of your own")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return (f"permission denied: {path} is read-only for this user. localq writes "
                f"to its database (even to read results, SQLite needs write access): "
                f"make it writable (chmod u+w) or run as its owner")
    if not os.access(directory, os.W_OK | os.X_OK):
        return (f"permission denied: the folder {directory} is read-only for this user, "
                f"and SQLite must create {os.path.basename(path)}-wal and -shm beside the "
                f"file. Make the folder writable, or move the database to a folder you "
                f"can write to")
    return None


def database_error(path: str, exc: sqlite3.Error) -> DatabaseError:
    """One message that says what is wrong with the file and what to do."""
    if isinstance(exc, sqlite3.OperationalError):
        if "locked" in str(exc) or "busy" in str(exc):
            return DatabaseError(
                f"{path} stayed locked by another process longer than localq waits "
                f"(a minute for a call, half a second for a worker's turn) ({exc}). "
                f"Nothing was lost; find the process holding it (fuser {path}) and retry.")
        reason = unwritable(path)
        if reason:
            return DatabaseError(f"cannot use localq database {path}: {reason}. "
                                 f"Nothing in it was changed.")
        return DatabaseError(f"{path}: {exc}")
    return DatabaseError(f"{path} cannot be used ({exc}): it may be corrupt. Nothing in it "
                         f"was changed; restore it from a backup or point localq at another "
                         f"path.")


def _check_or_create_schema(conn: sqlite3.Connection, path: str) -> None:
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name='localq_meta'").fetchone():
        _check_version(conn, path)
        return
    # A new or empty file (_inspect said so). WAL must be set outside a transaction;
    # SQLite gives -wal and -shm the database file's mode (0600) when it makes them.
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
        if "localq_meta" in names:
            conn.execute("COMMIT")   # another process created it meanwhile
            _check_version(conn, path)
            return
        if names:                    # another program filled it meanwhile
            raise DatabaseError(f"{path} became a SQLite database of another program "
                                f"while localq was opening it; point localq at another path.")
        for statement in DDL.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT INTO localq_meta VALUES ('schema_version', ?), ('app', 'localq')",
                     (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    # The schema into the file itself, so that the next open knows it from the main
    # file alone (see _inspect) rather than reading through the WAL.
    if not WAL_RESET_BUG:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        return
    holder = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        holder.execute("PRAGMA wal_autocheckpoint=0")
        holder.execute("BEGIN IMMEDIATE")
        checkpoint_guarded(conn, holder)
    finally:
        holder.close()


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
